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
         \n[[proxies]]\nname = \"other\"\nkind = \"mcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\noauth = true\n",
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
    let r = http().post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let q = location_query(&r);
    assert_eq!(q["state"], "st-1");
    assert_eq!(q["iss"], base);
    let code = q["code"].clone();

    // The code, once, with its verifier.
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
    let (s, tokens) = exchange(code.clone(), VERIFIER).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let (s, v) = exchange(code, VERIFIER).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    // A code with the wrong verifier is refused.
    let r = http().post(&authorize).form(&form).send().await.unwrap();
    let (s, v) = exchange(location_query(&r)["code"].clone(), "x".repeat(43).leak()).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));

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

    // Refresh: rotated; the old one again revokes the sign-in.
    let refresh_form = |rt: String| {
        let client_id = client_id.clone();
        let base = base.clone();
        async move {
            token(
                &base,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", &client_id),
                ],
            )
            .await
        }
    };
    let (s, second) = refresh_form(refresh.clone()).await;
    assert_eq!(s, 200, "{second}");
    let access2 = second["access_token"].as_str().unwrap().to_string();
    assert_ne!(access2, access);
    assert_eq!(call(&mcp, &access2).await.status(), 200);
    let (s, v) = refresh_form(refresh).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    let (s, _) = refresh_form(second["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(s, 400, "the replay revoked the whole sign-in");

    // The user deleted: their tokens end at once.
    let (s, _) = gw
        .api(reqwest::Method::DELETE, "/api/v1/users/mia", None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(call(&mcp, &access2).await.status(), 401);
    // Sign-ins are audited.
    let (_, audit) = gw.get("/api/v1/audit?action=oauth.authorize").await;
    assert!(audit.to_string().contains("\"tools\""), "{audit}");
}
