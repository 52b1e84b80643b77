//! Sign-in through an identity provider (`oauth_provider` on the proxy): the authorization
//! request of an MCP client is held while its user signs in at the provider (OpenID Connect
//! authorization code flow with PKCE and a nonce, the gateway a confidential client), and the
//! code for the client is issued when the provider sends the user back to
//! `<proxy>/oauth/callback` with the ID token's verified address naming a gateway user.
//!
//! A provider that remembers its user signs them in without a page of its own, so the gateway
//! shows one first: which client asks, and where the code will go, with a button that goes on
//! (a form whose token is also in a same-site-only cookie, so another site cannot submit it for
//! the user). The sign-in is bound to the browser that pressed it (a cookie the callback must
//! carry), so a link to the provider with someone else's sign-in in it, sent to a user who
//! is signed in there, completes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use palisade_core::crypto::{ct_eq, hash_api_key, random_token};
use palisade_core::now_ms;
use palisade_core::oidc::{
    IdentityProviderSpec, ProviderMetadata, SignatureError, check_id_token, provider_metadata,
    verify_id_token_signature,
};
use serde_json::{Value, json};

use super::{
    AuthRequest, Server, hidden_fields, html_escape, lock, page, redirect_with, with_params,
};
use crate::body::ProxyBody;
use crate::upstream::GuardedClient;

/// How long a user has to sign in at the provider.
const PENDING_TTL: Duration = Duration::from_secs(300);
/// Sign-ins at providers waiting at once.
const MAX_PENDING: usize = 10_000;
/// Sign-ins at providers waiting at once from one address.
const MAX_PENDING_PER_ADDRESS: usize = 20;
/// How long a provider whose configuration could not be read is not asked again.
const FAILURE_TTL: Duration = Duration::from_secs(15);
/// How long a provider's configuration is used before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Providers whose configuration is kept.
const MAX_METADATA: usize = 64;
/// How long the provider has to answer.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// A token naming a key the cached set lacks has the set read again, at most this often.
const KEYS_REREAD: Duration = Duration::from_secs(60);
/// While a provider's key set cannot be read, the last one read serves up to this age.
const KEYS_STALE: Duration = Duration::from_secs(24 * 3600);

/// A provider's key set as kept: the last one read (when, and the JWK Set) and the last read
/// that failed (when, and why).
#[derive(Debug, Clone, Default)]
struct KeySet {
    keys: Option<(i64, Value)>,
    failed: Option<(i64, String)>,
}

/// What a sign-in does with the kept key set.
#[derive(Debug, PartialEq)]
enum KeysPlan {
    /// Check with this set (read at).
    Use(i64, Value),
    /// Read the set.
    Read,
    /// A read failed a moment ago and no set younger than a day is kept.
    Fail(String),
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// A set read within the hour is used; after a read that failed in the last 15 s the set is
/// not read again — the last set read serves if it is younger than a day, or the sign-in
/// fails; otherwise the set is read. `newer_than`: only a set read after then will do (a token
/// named a key the set read then lacks).
fn plan_keys(kept: Option<&KeySet>, now: i64, newer_than: Option<i64>) -> KeysPlan {
    let read_within = |age: Duration| {
        kept.and_then(|k| k.keys.as_ref())
            .filter(|(at, _)| now - at < ms(age) && newer_than.is_none_or(|old| *at > old))
            .map(|(at, keys)| KeysPlan::Use(*at, keys.clone()))
    };
    if let Some(fresh) = read_within(METADATA_TTL) {
        return fresh;
    }
    match kept.and_then(|k| k.failed.as_ref()) {
        Some((at, why)) if now - at < ms(FAILURE_TTL) => {
            read_within(KEYS_STALE).unwrap_or_else(|| KeysPlan::Fail(why.clone()))
        }
        _ => KeysPlan::Read,
    }
}
/// Largest answer read from the provider.
const MAX_ANSWER: usize = 256 * 1024;
/// The page's form token, sent back only by pages of this site (`SameSite=Strict`).
const FORM_COOKIE: &str = "palisade_oauth_form";
/// The browser that went to the provider; the callback must come back with it.
const BROWSER_COOKIE: &str = "palisade_oauth_signin";

/// The cookies of a request, by name (the first of a name given twice).
pub(super) fn cookies(headers: &http::HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                out.entry(k.to_string()).or_insert_with(|| val.to_string());
            }
        }
    }
    out
}

/// Adds a cookie for `path` of the proxy, living as long as a waiting sign-in. Behind https the
/// name carries the prefix browsers hold to its rules ([`Server::cookie_name`]).
fn set_cookie(
    r: &mut Response<ProxyBody>,
    secure: bool,
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
) {
    let cookie = format!(
        "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={same_site}{}",
        PENDING_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(SET_COOKIE, v);
    }
}

/// A sign-in sent to a provider, waiting for the user to come back.
struct Pending {
    auth: AuthRequest,
    /// The address that started it.
    from: std::net::IpAddr,
    /// Digest of the browser cookie the callback must carry.
    browser: [u8; 32],
    proxy: String,
    provider: String,
    nonce: String,
    verifier: String,
    expires_at: i64,
}

/// A provider's configuration, or why it could not be read.
type Discovered = Result<ProviderMetadata, String>;

/// Sign-ins waiting at providers, and the providers' configurations.
#[derive(Default)]
pub(crate) struct ProviderSignIns {
    pending: Mutex<HashMap<[u8; 32], Pending>>,
    /// Each issuer's configuration (or why it could not be read) and until when it holds.
    metadata: Mutex<HashMap<String, (i64, Discovered)>>,
    /// Each provider's signing keys (by `jwks_uri`).
    keys: Mutex<HashMap<String, KeySet>>,
    /// One read of a key set at a time: sign-ins that find it stale wait for that read.
    reading_keys: tokio::sync::Mutex<()>,
    client: std::sync::OnceLock<GuardedClient>,
}

impl ProviderSignIns {
    fn client(&self) -> &GuardedClient {
        self.client
            .get_or_init(crate::upstream::build_guarded_client)
    }

    fn put(&self, state: &str, p: Pending) -> Result<(), String> {
        let mut m = lock(&self.pending);
        let now = now_ms();
        m.retain(|_, x| x.expires_at > now);
        let mine = m.values().filter(|x| x.from == p.from).count();
        if mine >= MAX_PENDING_PER_ADDRESS || m.len() >= MAX_PENDING {
            return Err(
                "Too many sign-ins are waiting at the identity provider; retry shortly.".into(),
            );
        }
        m.insert(hash_api_key(state), p);
        Ok(())
    }

    /// Takes a waiting sign-in once, only for the browser that started it (`Err(())`: another
    /// browser, which leaves it waiting).
    fn take(&self, state: &str, browser: Option<&String>) -> Result<Option<Pending>, ()> {
        let mut m = lock(&self.pending);
        let key = hash_api_key(state);
        let Some(p) = m.get(&key) else {
            return Ok(None);
        };
        if !browser.is_some_and(|c| ct_eq(&hash_api_key(c), &p.browser)) {
            return Err(());
        }
        let p = m.remove(&key).ok_or(())?;
        Ok((p.expires_at > now_ms()).then_some(p))
    }

    /// Ends the waiting sign-ins for a proxy.
    pub(crate) fn revoke_proxy(&self, proxy: &str) {
        lock(&self.pending).retain(|_, p| p.proxy != proxy);
    }

    /// Ends the waiting sign-ins of a client (deleted).
    pub(crate) fn revoke_client(&self, client_id: &str) {
        lock(&self.pending).retain(|_, p| p.auth.client.client_id != client_id);
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let resp = tokio::time::timeout(PROVIDER_TIMEOUT, self.client().request(req))
            .await
            .map_err(|_| "it did not answer in time".to_string())?
            .map_err(|e| {
                // The connection's detail (addresses, TLS) is for the log, not the page.
                tracing::warn!(error = %e, "OAuth: identity provider not reachable");
                "it cannot be reached".to_string()
            })?;
        let status = resp.status();
        let body = tokio::time::timeout(
            PROVIDER_TIMEOUT,
            Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| "its answer did not arrive in time".to_string())?
        .map_err(|_| "its answer could not be read (too large, or cut off)".to_string())?
        .to_bytes();
        Ok((status, body))
    }

    /// The provider's configuration, read from `<issuer>/.well-known/openid-configuration`.
    async fn metadata(&self, issuer: &str) -> Result<ProviderMetadata, String> {
        let now = now_ms();
        if let Some((until, m)) = lock(&self.metadata).get(issuer)
            && *until > now
        {
            return m.clone();
        }
        let read = self.read_metadata(issuer).await;
        let ttl = if read.is_ok() {
            METADATA_TTL
        } else {
            FAILURE_TTL
        };
        let mut cache = lock(&self.metadata);
        if cache.len() >= MAX_METADATA {
            cache.clear();
        }
        cache.insert(
            issuer.to_string(),
            (now + ttl.as_millis() as i64, read.clone()),
        );
        read
    }

    async fn read_metadata(&self, issuer: &str) -> Result<ProviderMetadata, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&url, "configuration").await?;
        provider_metadata(&doc, issuer)
    }

    /// A JSON document of the provider's (`what` names it in errors).
    async fn get_json(&self, url: &str, what: &str) -> Result<Value, String> {
        let req = Request::get(url)
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("its {what} URL is not valid ({e})"))?;
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(format!(
                "it answered HTTP {} for its {what}",
                status.as_u16()
            ));
        }
        serde_json::from_slice(&body).map_err(|_| format!("its {what} is not JSON"))
    }

    /// Checks the ID token's signature: with the client secret (HS256/384/512), or with the
    /// provider's published keys, read from its `jwks_uri` and kept an hour ([`plan_keys`]); a
    /// token naming a key the kept set lacks (the provider rotated its keys) has the set read
    /// again, at most once a minute.
    async fn check_signature(
        &self,
        m: &ProviderMetadata,
        token: &str,
        secret: &str,
    ) -> Result<(), String> {
        let no_key = || "no signing key the provider publishes fits its ID token".to_string();
        let hs = m.signs_with_secret.then_some(secret);
        // A token the client secret signs needs no keys.
        match verify_id_token_signature(token, &json!({"keys": []}), hs) {
            Err(SignatureError::NoKey) => {}
            other => return other.map_err(|e| signature_error(e, no_key)),
        }
        let (read_at, keys) = self.keys_for(&m.jwks_uri, None).await?;
        match verify_id_token_signature(token, &keys, hs) {
            Err(SignatureError::NoKey) if now_ms() - read_at >= ms(KEYS_REREAD) => {
                let (_, keys) = self.keys_for(&m.jwks_uri, Some(read_at)).await?;
                verify_id_token_signature(token, &keys, hs).map_err(|e| signature_error(e, no_key))
            }
            other => other.map_err(|e| signature_error(e, no_key)),
        }
    }

    /// A provider's key set as [`plan_keys`] says, read by one sign-in at a time (the others
    /// wait and use what it read); `newer_than`: the set must have been read after that (a
    /// token named a key the set read then lacks).
    async fn keys_for(
        &self,
        jwks_uri: &str,
        newer_than: Option<i64>,
    ) -> Result<(i64, Value), String> {
        // The answer without a read, if there is one.
        let kept_answer = |now| match plan_keys(lock(&self.keys).get(jwks_uri), now, newer_than) {
            KeysPlan::Use(at, keys) => Some(Ok((at, keys))),
            KeysPlan::Fail(why) => Some(Err(why)),
            KeysPlan::Read => None,
        };
        if let Some(answer) = kept_answer(now_ms()) {
            return answer;
        }
        let _one_reader = self.reading_keys.lock().await;
        let now = now_ms();
        if let Some(answer) = kept_answer(now) {
            return answer;
        }
        let read = self.get_json(jwks_uri, "signing keys").await.and_then(|k| {
            Some(k)
                .filter(|k| k["keys"].is_array())
                .ok_or_else(|| "its signing keys are not a JWK Set".to_string())
        });
        let mut kept = lock(&self.keys);
        if kept.len() >= MAX_METADATA && !kept.contains_key(jwks_uri) {
            kept.clear();
        }
        let entry = kept.entry(jwks_uri.to_string()).or_default();
        match read {
            Ok(keys) => {
                *entry = KeySet {
                    keys: Some((now, keys.clone())),
                    failed: None,
                };
                Ok((now, keys))
            }
            Err(why) => {
                entry.failed = Some((now, why.clone()));
                // The last set read serves while the provider's cannot be read.
                match entry.keys.clone() {
                    Some((at, keys)) if now - at < ms(KEYS_STALE) => {
                        tracing::warn!(error = %why, "OAuth: a provider's signing keys cannot be read; the last ones read are used");
                        Ok((at, keys))
                    }
                    _ => Err(why),
                }
            }
        }
    }

    /// Exchanges the provider's code for its ID token.
    async fn exchange(
        &self,
        p: &IdentityProviderSpec,
        secret: &str,
        m: &ProviderMetadata,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, String> {
        let form = {
            let mut f = form_urlencoded::Serializer::new(String::new());
            f.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code_verifier", verifier);
            if m.secret_in_form {
                f.append_pair("client_id", &p.client_id)
                    .append_pair("client_secret", secret);
            }
            f.finish()
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&m.token_endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if !m.secret_in_form {
            // RFC 6749 §2.3.1: both parts form-encoded before Basic.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(&p.client_id),
                enc(secret)
            ));
            let v = HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|_| "the client credentials cannot be sent".to_string())?;
            req = req.header(AUTHORIZATION, v);
        }
        let req = req
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| format!("its token endpoint is not valid ({e})"))?;
        let (status, body) = self.send(req).await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let what = v["error"].as_str().unwrap_or("no error code");
            return Err(format!(
                "it refused the code (HTTP {}, {})",
                status.as_u16(),
                what.chars().take(64).collect::<String>()
            ));
        }
        v["id_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "it sent no ID token (is `openid` among the scopes?)".to_string())
    }
}

fn signature_error(e: SignatureError, no_key: impl Fn() -> String) -> String {
    match e {
        SignatureError::NoKey => no_key(),
        SignatureError::Invalid(why) => why,
    }
}

/// A page that explains why the sign-in stopped and lets the user return to the application
/// (which then hears `access_denied`).
fn stopped(s: &Server<'_>, a: &AuthRequest, status: StatusCode, why: &str) -> Response<ProxyBody> {
    let mut params = vec![
        ("error", "access_denied"),
        ("error_description", why),
        ("iss", s.base.as_str()),
    ];
    if let Some(st) = &a.state {
        params.push(("state", st));
    }
    let back = with_params(&a.redirect_uri, &params);
    page(
        status,
        "Cannot sign in",
        &format!(
            "<p class=\"err\">{}</p><p><a href=\"{}\">Return to the application</a></p>",
            html_escape(why),
            html_escape(&back)
        ),
    )
}

impl Server<'_> {
    fn callback_uri(&self) -> String {
        format!("{}/oauth/callback", self.base)
    }

    fn secure(&self) -> bool {
        self.base.starts_with("https://")
    }

    /// A cookie's name: behind https, `__Host-` (the browser keeps it to this origin, path `/`,
    /// secure: no other site or port can plant it) or, under a `public_url` with a path,
    /// `__Secure-`; on plain-HTTP loopback, the name alone.
    fn cookie_name(&self, name: &str) -> (String, String) {
        let prefix = self.public_path("");
        match (self.secure(), prefix.is_empty()) {
            (true, true) => (format!("__Host-{name}"), "/".into()),
            (true, false) => (format!("__Secure-{name}"), prefix),
            (false, _) => (name.to_string(), prefix),
        }
    }

    /// A path of the proxy as the browser sees it (under `public_url`'s path, if it has one).
    fn public_path(&self, path: &str) -> String {
        let prefix = self
            .base
            .parse::<http::Uri>()
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        format!("{prefix}{path}")
    }

    /// The page before the provider: who asks, where the code goes, and a button on.
    pub(super) fn provider_page(
        &self,
        name: &str,
        q: &HashMap<String, String>,
        a: &AuthRequest,
    ) -> Response<ProxyBody> {
        let token = random_token(32);
        let mut r = page(
            StatusCode::OK,
            &format!("Sign in to {}", self.rt.spec.name),
            &format!(
                "{who}<form method=\"post\" action=\"{action}\">{hidden}<input type=\"hidden\" name=\"form_token\" value=\"{token}\">\
<button type=\"submit\">Sign in with {provider} and allow</button></form>",
                who = self.who_asks(a, " Go on only if you started this."),
                action = html_escape(&format!("{}/oauth/authorize", self.base)),
                hidden = hidden_fields(q),
                provider = html_escape(name),
            ),
        );
        let (cookie, path) = self.cookie_name(FORM_COOKIE);
        let path = if path == "/" {
            path
        } else {
            format!("{path}/oauth/authorize")
        };
        set_cookie(&mut r, self.secure(), &cookie, &token, &path, "Strict");
        r
    }

    /// Sends the user to the provider to sign in, holding the client's request (the button of
    /// [`Server::provider_page`] was pressed).
    pub(super) async fn to_provider(
        &self,
        name: &str,
        q: &HashMap<String, String>,
        a: AuthRequest,
        cookies: &HashMap<String, String>,
    ) -> Response<ProxyBody> {
        let pressed = match (
            q.get("form_token"),
            cookies.get(&self.cookie_name(FORM_COOKIE).0),
        ) {
            (Some(f), Some(c)) => f.len() >= 32 && ct_eq(f.as_bytes(), c.as_bytes()),
            _ => false,
        };
        if !pressed {
            return page(
                StatusCode::FORBIDDEN,
                "Cannot sign in",
                "<p class=\"err\">This form was not sent from the gateway's own page, or has expired; start again from the application.</p>",
            );
        }
        let p = match self.backend.provider(name).await {
            Ok(Some((p, _))) => p,
            Ok(None) => {
                return stopped(
                    self,
                    &a,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "The identity provider `{name}` of this proxy is not configured; ask an administrator."
                    ),
                );
            }
            Err(e) => return stopped(self, &a, StatusCode::SERVICE_UNAVAILABLE, &e),
        };
        let signins = &self.shared.provider_sign_ins;
        let m = match signins.metadata(&p.issuer).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(provider = %p.name, error = %e, "OAuth: identity provider unusable");
                return stopped(
                    self,
                    &a,
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "The identity provider {} cannot be used now; try again later (the gateway's log says why).",
                        p.name
                    ),
                );
            }
        };
        let state = random_token(32);
        let nonce = random_token(32);
        let verifier = random_token(48);
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash_api_key(&verifier));
        let target = with_params(
            &m.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &p.client_id),
                ("redirect_uri", &self.callback_uri()),
                ("scope", &p.scopes.join(" ")),
                ("state", &state),
                ("nonce", &nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        let browser = random_token(32);
        let pending = Pending {
            browser: hash_api_key(&browser),
            from: self.peer,
            proxy: self.rt.spec.name.clone(),
            provider: p.name.clone(),
            nonce,
            verifier,
            expires_at: now_ms() + PENDING_TTL.as_millis() as i64,
            auth: a,
        };
        if let Err(e) = signins.put(&state, pending) {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot sign in",
                &format!("<p class=\"err\">{}</p>", html_escape(&e)),
            );
        }
        let mut r = redirect_with(StatusCode::SEE_OTHER, &target, &[]);
        let (cookie, path) = self.cookie_name(BROWSER_COOKIE);
        let path = if path == "/" {
            path
        } else {
            format!("{path}/oauth/callback")
        };
        set_cookie(&mut r, self.secure(), &cookie, &browser, &path, "Lax");
        r
    }

    /// The provider sends the user back: the code is exchanged for the ID token, its address
    /// names the user, and the client gets its code.
    pub(super) async fn callback(
        &self,
        q: &HashMap<String, String>,
        cookies: &HashMap<String, String>,
    ) -> Response<ProxyBody> {
        let gone = || {
            page(
                StatusCode::BAD_REQUEST,
                "Cannot sign in",
                "<p class=\"err\">This sign-in has expired or was completed already; start again from the application.</p>",
            )
        };
        let Some(state) = q.get("state") else {
            return gone();
        };
        let browser = cookies.get(&self.cookie_name(BROWSER_COOKIE).0);
        let pending = match self.shared.provider_sign_ins.take(state, browser) {
            Ok(Some(p)) => p,
            Ok(None) => return gone(),
            Err(()) => {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Cannot sign in",
                    "<p class=\"err\">This sign-in was started in another browser (or its cookie is gone); start again from the application.</p>",
                );
            }
        };
        let a = &pending.auth;
        if pending.proxy != self.rt.spec.name
            || self.rt.spec.oauth_provider.as_deref() != Some(pending.provider.as_str())
        {
            return gone();
        }
        if let Some(err) = q.get("error") {
            let err: String = err.chars().take(64).collect();
            return stopped(
                self,
                a,
                StatusCode::FORBIDDEN,
                &format!("The identity provider did not sign you in ({err})."),
            );
        }
        let Some(code) = q.get("code").filter(|c| !c.is_empty() && c.len() <= 4096) else {
            return stopped(
                self,
                a,
                StatusCode::BAD_REQUEST,
                "The identity provider sent no code.",
            );
        };
        let unusable = |e: String| {
            tracing::warn!(provider = %pending.provider, error = %e, "OAuth: provider sign-in failed");
            stopped(
                self,
                a,
                StatusCode::BAD_GATEWAY,
                &format!("The identity provider's answer cannot be used: {e}."),
            )
        };
        let (p, secret) = match self.backend.provider(&pending.provider).await {
            Ok(Some(x)) => x,
            Ok(None) => return unusable("it is no longer configured".into()),
            Err(e) => return stopped(self, a, StatusCode::SERVICE_UNAVAILABLE, &e),
        };
        // RFC 9207: a provider that names itself in its answer must be this one.
        if q.get("iss").is_some_and(|iss| *iss != p.issuer) {
            return unusable("it came from another issuer".into());
        }
        let signins = &self.shared.provider_sign_ins;
        let m = match signins.metadata(&p.issuer).await {
            Ok(m) => m,
            Err(e) => return unusable(e),
        };
        let id_token = match signins
            .exchange(
                &p,
                &secret,
                &m,
                code,
                &self.callback_uri(),
                &pending.verifier,
            )
            .await
        {
            Ok(t) => t,
            Err(e) => return unusable(e),
        };
        let who = match check_id_token(
            &id_token,
            &p.issuer,
            &p.client_id,
            &pending.nonce,
            now_ms() / 1000,
        ) {
            Ok(w) => w,
            Err(e) => return unusable(e),
        };
        // (After the claims: a token too long or not for this sign-in is refused before any
        // key is fetched or tried.)
        if let Err(e) = signins.check_signature(&m, &id_token, &secret).await {
            return unusable(e);
        }
        let proxy = self.rt.spec.name.as_str();
        let users = &self.rt.spec.oauth_users;
        let (username, stamp) = match self
            .backend
            .provider_sign_in(&p, &who, self.peer, proxy, users)
            .await
        {
            Ok(s) => s,
            Err(e) => return stopped(self, a, StatusCode::FORBIDDEN, &e),
        };
        if !users.is_empty() && !users.iter().any(|u| u.eq_ignore_ascii_case(&username)) {
            return stopped(
                self,
                a,
                StatusCode::FORBIDDEN,
                &format!("The user {username} may not use this proxy; ask an administrator."),
            );
        }
        let detail = json!({"provider": p.name, "subject": who.subject});
        match self
            .grant(a, &username, stamp, StatusCode::FOUND, detail)
            .await
        {
            Ok(r) => r,
            Err(e) => stopped(self, a, StatusCode::SERVICE_UNAVAILABLE, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_is_kept_an_hour_and_serves_a_day_while_it_cannot_be_read() {
        let hour = ms(METADATA_TTL);
        let set = json!({"keys": [{"kty": "EC"}]});
        let read_at = 1_000_000;
        let kept = |failed: Option<i64>| KeySet {
            keys: Some((read_at, set.clone())),
            failed: failed.map(|at| (at, "it cannot be reached".to_string())),
        };
        assert_eq!(plan_keys(None, read_at, None), KeysPlan::Read);
        assert_eq!(
            plan_keys(Some(&kept(None)), read_at + hour - 1, None),
            KeysPlan::Use(read_at, set.clone())
        );
        assert_eq!(
            plan_keys(Some(&kept(None)), read_at + hour, None),
            KeysPlan::Read
        );
        // A read failed a moment ago: not read again yet; the old set serves, up to a day.
        let now = read_at + 2 * hour;
        assert_eq!(
            plan_keys(Some(&kept(Some(now - 1_000))), now, None),
            KeysPlan::Use(read_at, set.clone())
        );
        assert_eq!(
            plan_keys(Some(&kept(Some(now - 20_000))), now, None),
            KeysPlan::Read
        );
        let day_later = read_at + ms(KEYS_STALE);
        assert_eq!(
            plan_keys(Some(&kept(Some(day_later - 1_000))), day_later, None),
            KeysPlan::Fail("it cannot be reached".into())
        );
        // Never read, and the read failed a moment ago: the sign-in fails without a new read.
        let never = KeySet {
            keys: None,
            failed: Some((read_at, "it answered HTTP 503 for its signing keys".into())),
        };
        assert!(matches!(
            plan_keys(Some(&never), read_at + 5_000, None),
            KeysPlan::Fail(_)
        ));
        assert_eq!(
            plan_keys(Some(&never), read_at + 15_000, None),
            KeysPlan::Read
        );
        // A token named a key the set lacks: only a set read after it will do, not the stale one.
        assert_eq!(
            plan_keys(Some(&kept(None)), read_at + 1, Some(read_at)),
            KeysPlan::Read
        );
        assert!(matches!(
            plan_keys(Some(&kept(Some(now - 1_000))), now, Some(read_at)),
            KeysPlan::Fail(_)
        ));
    }
}
