//! The gateway as the OAuth 2.1 authorization server of an MCP proxy, end to end: discovery from
//! the 401, registration, sign-in with PKCE, tokens bound to the proxy, refresh rotation with
//! replay detection, and revocation when the user goes.

mod common;

use std::collections::HashMap;
use std::process::Command;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use sha2::Digest as _;

fn mock_mcp() -> (Proc, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["mock-mcp", "--addr", "127.0.0.1:0"]);
    let proc = Proc::spawn_cmd(cmd);
    let url = proc.wait_for("listening on");
    (proc, url)
}

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const VERIFIER: &str = "a-verifier-of-forty-three-characters-or-more-0123456789";

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

async fn call(url: &str, token: &str) -> reqwest::Response {
    http()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .unwrap()
}

/// The query parameters of a redirect's `Location`.
fn location_query(r: &reqwest::Response) -> HashMap<String, String> {
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let q = loc.split_once('?').unwrap().1;
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

async fn token(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http()
        .post(format!("{base}/oauth/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn an_mcp_client_signs_its_user_in_and_calls_the_proxy_with_a_token() {
    let (_mcp, upstream) = mock_mcp();
    let gw = Gateway::start(&format!(
        "{}\n[[proxies]]\nname = \"tools\"\nkind = \"mcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
         oauth = true\noauth_group = \"engineering\"\ntool_approval = \"auto\"\n\
         \n[[proxies]]\nname = \"other\"\nkind = \"mcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\noauth = true\noauth_users = [\"someone\", \"mia\"]\n",
        config_for("http://127.0.0.1:9")
    ))
    .await;
    let (s, v) = gw
        .post(
            "/api/v1/users",
            json!({"username": "mia", "password": "member-password-0001", "role": "member", "must_change_password": false}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // A member cannot use the console.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", gw.admin))
        .json(&json!({"username": "mia", "password": "member-password-0001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let base = gw.proxy_url("tools").await;
    let mcp = format!("{base}/mcp");
    // Discovery starts at the 401.
    let r = http()
        .post(&mcp)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge_header = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let prm_url = format!("{base}/.well-known/oauth-protected-resource");
    assert!(
        challenge_header.contains(&format!("resource_metadata=\"{prm_url}\"")),
        "{challenge_header}"
    );
    let prm: Value = http()
        .get(&prm_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], format!("{base}/"));
    assert_eq!(prm["authorization_servers"], json!([base]));
    let meta: Value = http()
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], base);
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));

    // Registration: a public client with a loopback redirect; bad redirects refused.
    let r = http()
        .post(meta["registration_endpoint"].as_str().unwrap())
        .json(&json!({"redirect_uris": ["http://evil.example/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let reg: Value = http()
        .post(meta["registration_endpoint"].as_str().unwrap())
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Test <Agent>", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap().to_string();
    assert!(reg.get("client_secret").is_none(), "{reg}");
    let (s, audit) = gw.get("/api/v1/audit?action=oauth.client_register").await;
    assert_eq!(s, 200);
    assert!(audit.to_string().contains(&client_id), "{audit}");

    // The sign-in page: the client's name escaped, framing refused; PKCE required.
    let ch = challenge(VERIFIER);
    let params = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", ch.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st-1"),
        ("resource", prm["resource"].as_str().unwrap()),
        ("scope", "mcp"),
    ];
    let authorize = format!("{base}/oauth/authorize");
    let r = http().get(&authorize).query(&params).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    assert!(html.contains("Test &lt;Agent&gt;"), "{html}");
    let r = http()
        .get(&authorize)
        .query(&params[..3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let q = location_query(&r);
    assert_eq!(q["error"], "invalid_request");
    let r = http()
        .get(&authorize)
        .query(&[
            ("client_id", client_id.as_str()),
            ("redirect_uri", "http://127.0.0.1:9/other"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "an unregistered redirect is shown, not followed"
    );

    // Wrong password: the page again; right one: back to the client with a code.
    let mut form: Vec<(&str, &str)> = params.to_vec();
    form.push(("username", "mia"));
    form.push(("password", "wrong-password-0000"));
    let r = http().post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Wrong user name or password")
    );
    form.pop();
    form.push(("password", "member-password-0001"));
    let sign_in = || async {
        let r = http().post(&authorize).form(&form).send().await.unwrap();
        assert_eq!(r.status(), 303);
        location_query(&r)
    };
    let q = sign_in().await;
    assert_eq!(q["state"], "st-1");
    assert_eq!(q["iss"], base);

    // The code, with its verifier.
    let exchange = |code: String, verifier: &'static str| {
        let client_id = client_id.clone();
        let base = base.clone();
        async move {
            token(
                &base,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", &client_id),
                    ("code_verifier", verifier),
                ],
            )
            .await
        }
    };
    let (s, tokens) = exchange(q["code"].clone(), VERIFIER).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap().to_string();

    // The token works on its proxy, as the user, in the proxy's OAuth group; not elsewhere.
    let r = call(&mcp, &access).await;
    assert_eq!(r.status(), 200);
    let rows = gw.wait_requests("proxy=tools&status=200", 1).await;
    assert_eq!(rows[0]["key_name"], "mia", "{rows:?}");
    assert_eq!(rows[0]["group"], "engineering");
    let other = format!("{}/mcp", gw.proxy_url("other").await);
    assert_eq!(call(&other, &access).await.status(), 403);
    let r = call(&mcp, "pat_not-a-token").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    // The same code again (stolen): refused, and the sign-in it made ends.
    let (s, v) = exchange(q["code"].clone(), VERIFIER).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(call(&mcp, &access).await.status(), 401);
    // A code with the wrong verifier is refused.
    let (s, v) = exchange(sign_in().await["code"].clone(), "x".repeat(43).leak()).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));

    // Refresh: rotated, the sign-in's earlier access token ends; the old refresh token again
    // revokes the sign-in.
    let (_, tokens) = exchange(sign_in().await["code"].clone(), VERIFIER).await;
    let (access, refresh) = (
        tokens["access_token"].as_str().unwrap().to_string(),
        tokens["refresh_token"].as_str().unwrap().to_string(),
    );
    let refresh_with = |rt: String, client: String| {
        let base = base.clone();
        async move {
            token(
                &base,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", &client),
                ],
            )
            .await
        }
    };
    // Another client cannot use it (nor use it up).
    let (s, _) = refresh_with(refresh.clone(), "pcl_someone-else".into()).await;
    assert_eq!(s, 401);
    let (s, second) = refresh_with(refresh.clone(), client_id.clone()).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(call(&mcp, &access).await.status(), 401);
    let (s, third) = refresh_with(
        second["refresh_token"].as_str().unwrap().to_string(),
        client_id.clone(),
    )
    .await;
    assert_eq!(s, 200, "{third}");
    let access3 = third["access_token"].as_str().unwrap().to_string();
    assert_eq!(call(&mcp, &access3).await.status(), 200);
    // The first refresh token, two rotations on: the sign-in ends.
    let (s, v) = refresh_with(refresh, client_id.clone()).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(
        call(&mcp, &access3).await.status(),
        401,
        "the replay ended the sign-in"
    );
    let (s, _) = refresh_with(
        third["refresh_token"].as_str().unwrap().to_string(),
        client_id.clone(),
    )
    .await;
    assert_eq!(s, 400);
    let (_, audit) = gw.get("/api/v1/audit?action=oauth.refresh_replayed").await;
    assert!(audit.to_string().contains("mia"), "{audit}");

    // The user deleted: their tokens end at once, and a code waiting is void.
    let (_, tokens) = exchange(sign_in().await["code"].clone(), VERIFIER).await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let waiting = sign_in().await["code"].clone();
    let (s, _) = gw
        .api(reqwest::Method::DELETE, "/api/v1/users/mia", None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(call(&mcp, &access).await.status(), 401);
    let (s, _) = exchange(waiting, VERIFIER).await;
    assert_eq!(s, 400);
    // Sign-ins are audited.
    let (_, audit) = gw.get("/api/v1/audit?action=oauth.authorize").await;
    assert!(audit.to_string().contains("\"tools\""), "{audit}");

    // A password an administrator set is changed on the page before going on.
    let (s, v) = gw
        .post(
            "/api/v1/users",
            json!({"username": "neo", "password": "initial-password-0001", "role": "member"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut neo: Vec<(&str, &str)> = params.to_vec();
    neo.extend([("username", "neo"), ("password", "initial-password-0001")]);
    let r = http().post(&authorize).form(&neo).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("choose your own"));
    neo.extend([
        ("new_password", "neo-own-password-0001"),
        ("new_password_again", "neo-own-password-0001"),
    ]);
    let r = http().post(&authorize).form(&neo).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let (s, neo_tokens) = exchange(location_query(&r)["code"].clone(), VERIFIER).await;
    assert_eq!(s, 200);
    // Once changed, the page changes no password (the step is for an administrator's only).
    neo.retain(|(k, _)| *k != "password" && !k.starts_with("new_password"));
    neo.extend([
        ("password", "neo-own-password-0001"),
        ("new_password", "neo-third-password-01"),
        ("new_password_again", "neo-third-password-01"),
    ]);
    let r = http().post(&authorize).form(&neo).send().await.unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Only a password an administrator set")
    );
    let neo_access = neo_tokens["access_token"].as_str().unwrap().to_string();
    assert_eq!(call(&mcp, &neo_access).await.status(), 200);
    // Administrators see the client and its live sign-in.
    let (s, clients) = gw.get("/api/v1/oauth/clients").await;
    assert_eq!(s, 200);
    let listed = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == client_id.as_str())
        .unwrap();
    assert_eq!(listed["name"], "Test <Agent>");
    assert_eq!(listed["sign_ins"], 1, "{clients}");

    // A proxy open to some users only.
    let other_base = gw.proxy_url("other").await;
    let mut on_other: Vec<(&str, &str)> = params.to_vec();
    let other_resource = format!("{other_base}/");
    on_other.retain(|(k, _)| *k != "resource");
    on_other.extend([
        ("resource", other_resource.as_str()),
        ("username", "neo"),
        ("password", "neo-own-password-0001"),
    ]);
    let r = http()
        .post(format!("{other_base}/oauth/authorize"))
        .form(&on_other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("may not use this proxy"));
    // The proxy narrowed to other users: the user's tokens stop working at once.
    let (s, v) = gw
        .api(
            reqwest::Method::PATCH,
            "/api/v1/proxies/tools",
            Some(json!({"oauth_users": ["someone"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mcp = format!("{}/mcp", gw.proxy_url("tools").await);
    assert_eq!(call(&mcp, &neo_access).await.status(), 401);
    let (s, _) = refresh_with(
        neo_tokens["refresh_token"].as_str().unwrap().to_string(),
        client_id.clone(),
    )
    .await;
    assert_eq!(s, 400);

    // Guesses on the OAuth page lock out neither the console nor its administrator.
    form.retain(|(k, _)| *k != "username" && *k != "password");
    form.extend([("username", "admin"), ("password", "not-the-password-00")]);
    for _ in 0..12 {
        http().post(&authorize).form(&form).send().await.unwrap();
    }
    let r = http().post(&authorize).form(&form).send().await.unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Too many failed password attempts")
    );
    gw.login("admin", ADMIN_PASSWORD).await;

    // An administrator deletes the client: gone, audited.
    let path = format!("/api/v1/oauth/clients/{client_id}");
    let (s, _) = gw.api(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(s, 204);
    let (s, _) = gw.api(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(s, 404);
    let (_, clients) = gw.get("/api/v1/oauth/clients").await;
    assert!(!clients.to_string().contains(&client_id));
    let (_, audit) = gw.get("/api/v1/audit?action=oauth.client_delete").await;
    assert!(audit.to_string().contains(&client_id), "{audit}");
}

/// The `name=value` of the cookie an answer sets, with its attributes checked.
fn set_cookie(r: &reqwest::Response, name: &str) -> String {
    let c = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no cookie {name}: {:?}", r.headers()));
    assert!(c.contains("HttpOnly") && c.contains("SameSite="), "{c}");
    c.split(';').next().unwrap().to_string()
}

fn mock_oidc() -> (Proc, String) {
    let mut cmd = Command::new(bin());
    cmd.args([
        "mock-oidc",
        "--addr",
        "127.0.0.1:0",
        "--client-secret",
        "provider-given-secret-0001",
    ]);
    let proc = Proc::spawn_cmd(cmd);
    let url = proc.wait_for("listening on");
    let issuer = url.split_whitespace().next().unwrap().trim_end_matches('/');
    (proc, issuer.to_string())
}

#[tokio::test]
async fn users_sign_in_through_an_openid_connect_provider() {
    let (_mcp, upstream) = mock_mcp();
    let (_idp, issuer) = mock_oidc();
    let gw = Gateway::start(&format!(
        "{}\n[[identity_providers]]\nname = \"corp\"\nissuer = \"{issuer}\"\nclient_id = \"palisade\"\n\
         client_secret = \"provider-given-secret-0001\"\nallowed_domains = [\"example.com\"]\ncreate_users = true\n\
         \n[[proxies]]\nname = \"tools\"\nkind = \"mcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
         oauth = true\noauth_provider = \"corp\"\ntool_approval = \"auto\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
        config_for("http://127.0.0.1:9")
    ))
    .await;
    let (s, v) = gw
        .post(
            "/api/v1/users",
            json!({"username": "boss@example.com", "password": "boss-password-0001", "role": "admin"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // The stored secret goes only to the issuer it was given for.
    let r = gw
        .http
        .put(format!("{}/api/v1/identity-providers/corp", gw.admin))
        .bearer_auth(&gw.token)
        .json(&json!({"name": "corp", "issuer": "http://127.0.0.1:9", "client_id": "palisade"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let base = gw.proxy_url("tools").await;
    let set_identity = |v: Value| {
        let issuer = issuer.clone();
        async move {
            let r = http()
                .post(format!("{issuer}/_mock/identity"))
                .json(&v)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };

    // The provider as the API shows it: no secret; it cannot go while a proxy uses it.
    let (s, v) = gw.get("/api/v1/identity-providers").await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["name"], "corp");
    assert_eq!(v[0]["callback_path"], "/oauth/callback");
    assert!(!v.to_string().contains("provider-given-secret"), "{v}");
    let r = gw
        .http
        .delete(format!("{}/api/v1/identity-providers/corp", gw.admin))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let (s, v) = gw
        .post(
            "/api/v1/identity-providers",
            json!({"name": "other", "issuer": "http://idp.example.com", "client_id": "x", "client_secret": "s"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("issuer")),
        "{v}"
    );
    let (s, v) = gw
        .post(
            "/api/v1/identity-providers",
            json!({"name": "other", "issuer": "https://idp.example.com", "client_id": "x"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("client_secret")),
        "{v}"
    );
    let (s, v) = gw
        .post(
            "/api/v1/proxies",
            json!({"name": "p2", "kind": "mcp", "listen": "127.0.0.1:0", "upstream": upstream,
                "oauth": true, "oauth_provider": "nobody"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("oauth_provider")),
        "{v}"
    );

    let reg: Value = http()
        .post(format!("{base}/oauth/register"))
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Agent", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap().to_string();
    let ch = challenge(VERIFIER);
    let params = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", ch.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st-9"),
    ];
    let authorize = format!("{base}/oauth/authorize");
    // The gateway's page names the client; its button (a form with a token also in a cookie)
    // goes to the provider, which comes back to the callback in the same browser.
    let page_form = || async {
        let r = http().get(&authorize).query(&params).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let cookie = set_cookie(&r, "palisade_oauth_form");
        let html = r.text().await.unwrap();
        assert!(
            html.contains("<b>Agent</b>") && html.contains("Sign in with corp"),
            "{html}"
        );
        let token = html
            .split("name=\"form_token\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let mut form: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        form.push(("form_token".into(), token));
        (form, cookie)
    };
    let to_provider = |form: Vec<(String, String)>, cookie: String| {
        let authorize = authorize.clone();
        async move {
            http()
                .post(&authorize)
                .header("cookie", cookie)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    // Through the provider and back: the last answer is the callback's.
    let sign_in = || async {
        let (form, cookie) = page_form().await;
        let r = to_provider(form, cookie).await;
        assert_eq!(r.status(), 303);
        let browser = set_cookie(&r, "palisade_oauth_signin");
        let to_idp = r.headers()["location"].to_str().unwrap().to_string();
        assert!(
            to_idp.starts_with(&format!("{issuer}/authorize?")),
            "{to_idp}"
        );
        let q: HashMap<String, String> =
            form_urlencoded::parse(to_idp.split_once('?').unwrap().1.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(q["client_id"], "palisade");
        assert_eq!(q["redirect_uri"], format!("{base}/oauth/callback"));
        assert_eq!(q["scope"], "openid email profile");
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(q["nonce"].len() >= 32 && q["state"].len() >= 32);
        let r = http().get(&to_idp).send().await.unwrap();
        assert_eq!(r.status(), 302);
        let back = r.headers()["location"].to_str().unwrap().to_string();
        assert!(
            back.starts_with(&format!("{base}/oauth/callback?")),
            "{back}"
        );
        // As a TLS terminator on this machine would send it: the client's address is believed.
        let r = http()
            .get(&back)
            .header("cookie", browser.clone())
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap();
        (r, back, browser)
    };

    // A form another site submits (no cookie, a wrong one, a password form) does not go on.
    let (form, cookie) = page_form().await;
    assert_eq!(to_provider(form.clone(), String::new()).await.status(), 403);
    let forged = format!("palisade_oauth_form={}", "x".repeat(43));
    assert_eq!(to_provider(form.clone(), forged).await.status(), 403);
    let mut password = form.clone();
    password.retain(|(k, _)| k != "form_token");
    password.extend([
        ("username".into(), "admin".into()),
        ("password".into(), "x".into()),
    ]);
    assert_eq!(to_provider(password, cookie.clone()).await.status(), 403);
    // A link to the provider with this sign-in in it, followed in another browser, completes
    // nothing (the callback comes without the cookie).
    let r = to_provider(form, cookie).await;
    let to_idp = r.headers()["location"].to_str().unwrap().to_string();
    let r = http().get(&to_idp).send().await.unwrap();
    let back = r.headers()["location"].to_str().unwrap().to_string();
    let r = http().get(&back).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("another browser"));

    let (r, callback, browser) = sign_in().await;
    assert_eq!(r.status(), 302);
    let q = location_query(&r);
    assert_eq!(q["state"], "st-9");
    assert_eq!(q["iss"], base);
    let (s, tokens) = token(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(s, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(call(&format!("{base}/mcp"), access).await.status(), 200);
    let rows = gw.wait_requests("proxy=tools&status=200", 1).await;
    assert_eq!(rows[0]["key_name"], "mia@example.com", "{rows:?}");
    // The user was created as a member by the provider's sign-in; the grant names it.
    let (_, users) = gw.get("/api/v1/users").await;
    let mia = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "mia@example.com")
        .unwrap_or_else(|| panic!("{users}"));
    assert_eq!(mia["role"], "member");
    let (_, audit) = gw.get("/api/v1/audit?action=oauth.authorize").await;
    assert!(
        audit.to_string().contains("\"provider\":\"corp\""),
        "{audit}"
    );
    assert!(audit.to_string().contains("203.0.113.9"), "{audit}");
    let (_, audit) = gw.get("/api/v1/audit?action=user.create").await;
    assert!(audit.to_string().contains("oidc:corp"), "{audit}");
    // The gateway authenticated itself with the secret, and sent the PKCE verifier.
    let seen: Value = http()
        .get(format!("{issuer}/_mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let exchange = seen
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["path"] == "/token")
        .unwrap();
    assert_eq!(exchange["basic_auth"], true);
    assert!(exchange["form"]["code_verifier"].as_str().unwrap().len() >= 43);

    // A change of the provider ends the sign-ins made through it (its access and refresh
    // tokens); who it vouched for before may not be whom it would vouch for now.
    let r = gw
        .http
        .put(format!("{}/api/v1/identity-providers/corp", gw.admin))
        .bearer_auth(&gw.token)
        .json(
            &json!({"name": "corp", "issuer": issuer, "client_id": "palisade",
            "allowed_domains": ["example.com", "example.org"], "create_users": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(call(&format!("{base}/mcp"), access).await.status(), 401);
    let (s, v) = token(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));

    // The callback again: that sign-in is over.
    let r = http()
        .get(&callback)
        .header("cookie", browser)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("expired or was completed"));

    // Refusals: a forged signature, another domain, an unverified address, a token for
    // another sign-in, a provider that says no. Each is a page with a way back that tells the
    // client.
    for (identity, status, says) in [
        (json!({"forge": true}), 502, "signature is wrong"),
        (
            json!({"forge": false, "email": "eve@evil.example.org"}),
            403,
            "not in a domain",
        ),
        (
            json!({"email": "mia@example.com", "email_verified": false}),
            502,
            "not verified",
        ),
        (
            json!({"email_verified": true, "nonce": "another-sign-in"}),
            502,
            "nonce",
        ),
        (
            json!({"nonce": null, "aud": "someone-else"}),
            502,
            "another client",
        ),
        (
            json!({"aud": null, "deny": true}),
            403,
            "did not sign you in",
        ),
        // Another account of the provider with Mia's address is not Mia; an administrator
        // named by an address is never signed in through a provider.
        (
            json!({"deny": false, "sub": "another-account"}),
            403,
            "another account",
        ),
        // (Signed with the client secret: accepted, and refused for who it names.)
        (
            json!({"email": "boss@example.com", "alg": "HS256"}),
            403,
            "members only",
        ),
        (json!({"forge": true}), 502, "signature is wrong"),
    ] {
        set_identity(identity.clone()).await;
        let (r, _, _) = sign_in().await;
        assert_eq!(r.status(), status, "{identity}");
        let html = r.text().await.unwrap();
        assert!(html.contains(says), "{identity}: {html}");
        assert!(html.contains("error=access_denied"), "{html}");
        assert!(html.contains("state=st-9"), "{html}");
    }
    let (_, audit) = gw.get("/api/v1/audit?action=auth.login_failed").await;
    assert!(
        audit.to_string().contains("eve@evil.example.org"),
        "{audit}"
    );
}
