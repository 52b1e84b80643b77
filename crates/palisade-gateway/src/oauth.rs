//! The gateway as an OAuth 2.1 authorization server for its MCP and A2A proxies (`oauth =
//! true`): what an MCP client needs to sign its user in and call the proxy with a token.
//!
//! On the proxy's own listener: protected-resource metadata (RFC 9728) and the `401`
//! challenge naming it, authorization-server metadata (RFC 8414), dynamic client registration
//! (RFC 7591), the authorization endpoint (a sign-in page for the gateway's users; PKCE with
//! S256 required) and the token endpoint (authorization codes and refresh tokens, both bound
//! to the proxy as the resource, RFC 8707).
//!
//! Access tokens are random, live an hour, and are held in memory by digest like API keys: a
//! token resolves to the identity of one sign-in (`oauth:<client>:<sign-in>`, named after the
//! user, in the proxy's `oauth_group`) that may use this proxy only; a sign-in holds one access
//! token at a time. Refresh tokens are stored by digest and rotate on every use within their
//! sign-in's 30 days; a used one presented again, or a code presented twice, revokes the
//! sign-in (its access token too). Codes live a minute, once. Every grant carries its user's
//! id and last change: a user deleted, recreated or changed since has no grant left.

// An endpoint's early answer is its error: one response per request, not worth boxing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use palisade_core::crypto::{ct_eq, hash_api_key, random_token};
use palisade_core::identity::{KeyIndex, KeyInfo};
use palisade_core::now_ms;
use palisade_core::oauth::{OAuthClientRow, RefreshGrant, RefreshUse, UserStamp};
use palisade_core::oidc::{IdentityClaims, IdentityProviderSpec};
use serde_json::{Value, json};

use crate::body::ProxyBody;
use crate::manager::{GatewayShared, ProxyRuntime};

mod provider;
pub(crate) use provider::ProviderSignIns;

/// A boxed future of the backend.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A user whose password checked out.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The user as they are now.
    pub user: UserStamp,
    /// An administrator set their password: they choose their own before going on.
    pub must_change_password: bool,
}

/// What the authorization server needs of the rest of the gateway: its users and what it
/// stores. Implemented by the admin side over the store. `Err` carries a message fit for the
/// client (store details are logged, not shown).
pub trait OAuthBackend: Send + Sync {
    /// Checks a user's name and password (throttled apart from console logins, audited).
    fn sign_in<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
        ip: IpAddr,
        client: &'a str,
        proxy: &'a str,
    ) -> BoxFut<'a, Result<SignedIn, String>>;
    /// Replaces a user's password set by an administrator with their own (the current one
    /// checked as in [`OAuthBackend::sign_in`]); the user as they are afterwards.
    fn change_password<'a>(
        &'a self,
        username: &'a str,
        current: &'a str,
        new: &'a str,
        ip: IpAddr,
    ) -> BoxFut<'a, Result<UserStamp, String>>;
    /// Registers a client (audited).
    fn register(&self, row: OAuthClientRow, from: IpAddr) -> BoxFut<'_, Result<(), String>>;
    /// A registered client.
    fn client<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<OAuthClientRow>, String>>;
    /// Stores a sign-in's first refresh token; `Ok(false)` when its user changed since.
    fn put_refresh(&self, hash: [u8; 32], grant: RefreshGrant) -> BoxFut<'_, Result<bool, String>>;
    /// A refresh token's grant and whether it was used.
    fn peek_refresh(
        &self,
        hash: [u8; 32],
    ) -> BoxFut<'_, Result<Option<(RefreshGrant, bool)>, String>>;
    /// Rotates a refresh token to `next`.
    fn rotate_refresh(
        &self,
        old: [u8; 32],
        next: [u8; 32],
    ) -> BoxFut<'_, Result<RefreshUse, String>>;
    /// Revokes a sign-in's refresh tokens.
    fn revoke_family<'a>(&'a self, family: &'a str) -> BoxFut<'a, Result<(), String>>;
    /// The identity provider `name` with its client secret; `Ok(None)` when there is none.
    fn provider<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<(IdentityProviderSpec, String)>, String>>;
    /// The user an identity provider vouched for — the one its account is linked to, else a
    /// `member` named by its address, else, when the provider creates users and `oauth_users`
    /// (the proxy's list, empty: anyone) names the address, a new member — with their name as
    /// they are now; `Err` is the message for the sign-in page (audited).
    fn provider_sign_in<'a>(
        &'a self,
        provider: &'a IdentityProviderSpec,
        who: &'a IdentityClaims,
        ip: IpAddr,
        proxy: &'a str,
        oauth_users: &'a [String],
    ) -> BoxFut<'a, Result<(String, UserStamp), String>>;
    /// Records an event in the audit log (a grant, a replayed code or refresh token) as
    /// `actor`, about the proxy `target`.
    fn audit<'a>(
        &'a self,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        detail: Value,
    ) -> BoxFut<'a, Result<(), String>>;
}

/// How long an access token lives.
pub const ACCESS_TTL: Duration = Duration::from_secs(3600);
/// How long a sign-in's refresh tokens live, all rotations together.
const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an authorization code lives.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Most access tokens held at once (past it, issuing waits for some to expire).
const MAX_TOKENS: usize = 100_000;
/// Most codes waiting to be exchanged.
const MAX_CODES: usize = 10_000;
/// Most registrations a minute from one address, and from all.
const REGISTRATIONS_PER_MINUTE: u32 = 10;
const ALL_REGISTRATIONS_PER_MINUTE: u32 = 120;
/// Largest body an OAuth endpoint reads.
const MAX_FORM: usize = 16 * 1024;
/// The one scope: calling the proxy.
const SCOPE: &str = "mcp";

/// Access tokens in force and authorization codes waiting, in memory.
#[derive(Default)]
pub struct Tokens {
    live: Mutex<HashMap<[u8; 32], Arc<KeyInfo>>>,
    index: ArcSwap<KeyIndex>,
    codes: Mutex<HashMap<[u8; 32], Code>>,
    /// Codes exchanged lately, with their sign-in: one presented again revokes it.
    spent: Mutex<HashMap<[u8; 32], (String, String, i64)>>,
    /// Sign-ins revoked by a replayed code lately (an exchange finishing then undoes itself).
    revoked: Mutex<HashMap<String, i64>>,
    registrations: Mutex<(i64, u32, HashMap<IpAddr, u32>)>,
}

/// A code's grant.
#[derive(Clone)]
struct Code {
    client_id: String,
    /// The redirect URI the request named, if it named one (the token request must repeat it).
    redirect_uri: Option<String>,
    challenge: String,
    username: String,
    user: UserStamp,
    family: String,
    proxy: String,
    resource: String,
    expires_at: i64,
}

/// The identity of a sign-in's access tokens.
fn sign_in_id(client_id: &str, family: &str) -> String {
    format!("oauth:{client_id}:{family}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tokens {
    /// The identity an access token stands for, if it is in force.
    pub fn lookup(&self, presented: &str, now: i64) -> Option<Arc<KeyInfo>> {
        if !presented.starts_with("pat_") {
            return None;
        }
        self.index.load().lookup(presented, now)
    }

    /// Whether an identity has a token in force.
    pub fn holds(&self, id: &str, now: i64) -> bool {
        id.starts_with("oauth:") && self.index.load().holds(id, now)
    }

    fn publish(&self, live: &mut HashMap<[u8; 32], Arc<KeyInfo>>) {
        let now = now_ms();
        live.retain(|_, k| k.expires_at_ms.is_none_or(|e| e > now));
        self.index.store(Arc::new(KeyIndex::of(live.clone())));
    }

    /// Issues an access token; the sign-in's earlier one ends.
    fn issue(&self, info: KeyInfo) -> Result<String, String> {
        let token = format!("pat_{}", random_token(32));
        let mut live = lock(&self.live);
        live.retain(|_, k| k.id != info.id);
        if live.len() >= MAX_TOKENS {
            self.publish(&mut live);
            if live.len() >= MAX_TOKENS {
                return Err(
                    "the gateway holds as many access tokens as it may; retry later".into(),
                );
            }
        }
        live.insert(hash_api_key(&token), Arc::new(info));
        self.publish(&mut live);
        Ok(token)
    }

    /// Ends every access token and waiting code of a user (deleted, password or role changed).
    pub fn revoke_user(&self, username: &str) {
        lock(&self.codes).retain(|_, c| c.username != username);
        let mut live = lock(&self.live);
        live.retain(|_, k| k.name != username);
        self.publish(&mut live);
    }

    /// Ends every access token and waiting code for a proxy (how its users sign in changed).
    pub fn revoke_proxy(&self, proxy: &str) {
        lock(&self.codes).retain(|_, c| c.proxy != proxy);
        let mut live = lock(&self.live);
        live.retain(|_, k| {
            !(k.id.starts_with("oauth:") && k.allowed_proxies.iter().any(|p| p == proxy))
        });
        self.publish(&mut live);
    }

    /// Ends every access token and waiting code of a client (deleted).
    pub fn revoke_client(&self, client_id: &str) {
        lock(&self.codes).retain(|_, c| c.client_id != client_id);
        let prefix = format!("oauth:{client_id}:");
        let mut live = lock(&self.live);
        live.retain(|_, k| !k.id.starts_with(&prefix));
        self.publish(&mut live);
    }

    /// Ends a sign-in's access token.
    fn revoke_id(&self, id: &str) {
        let mut live = lock(&self.live);
        live.retain(|_, k| k.id != id);
        self.publish(&mut live);
    }

    fn put_code(&self, code: &str, grant: Code) -> Result<(), String> {
        let mut codes = lock(&self.codes);
        let now = now_ms();
        codes.retain(|_, c| c.expires_at > now);
        if codes.len() >= MAX_CODES {
            return Err("too many sign-ins are waiting to be completed; retry shortly".into());
        }
        codes.insert(hash_api_key(code), grant);
        Ok(())
    }

    /// Takes a code once. `Err` with its client and sign-in when it was exchanged before.
    fn take_code(&self, code: &str) -> Result<Option<Code>, (String, String)> {
        let h = hash_api_key(code);
        let now = now_ms();
        let Some(c) = lock(&self.codes).remove(&h) else {
            let spent = lock(&self.spent);
            return match spent.get(&h) {
                Some((client, family, until)) if *until > now => {
                    Err((client.clone(), family.clone()))
                }
                _ => Ok(None),
            };
        };
        let mut spent = lock(&self.spent);
        spent.retain(|_, (_, _, until)| *until > now);
        if spent.len() < MAX_CODES {
            // Kept a while past the code's life: a stolen code tried late still revokes.
            spent.insert(
                h,
                (
                    c.client_id.clone(),
                    c.family.clone(),
                    now + 10 * CODE_TTL.as_millis() as i64,
                ),
            );
        }
        Ok((c.expires_at > now).then_some(c))
    }

    fn mark_revoked(&self, family: &str) {
        let now = now_ms();
        let mut r = lock(&self.revoked);
        r.retain(|_, until| *until > now);
        if r.len() < MAX_CODES {
            r.insert(family.to_string(), now + 10 * CODE_TTL.as_millis() as i64);
        }
    }

    fn is_revoked(&self, family: &str) -> bool {
        lock(&self.revoked)
            .get(family)
            .is_some_and(|until| *until > now_ms())
    }

    fn may_register(&self, from: IpAddr) -> bool {
        let mut r = lock(&self.registrations);
        let minute = now_ms() / 60_000;
        if r.0 != minute {
            *r = (minute, 0, HashMap::new());
        }
        r.1 += 1;
        let mine = r.2.entry(from).or_insert(0);
        *mine += 1;
        *mine <= REGISTRATIONS_PER_MINUTE && r.1 <= ALL_REGISTRATIONS_PER_MINUTE
    }
}

/// Whether a path is one of the authorization server's.
pub(crate) fn is_oauth_path(path: &str) -> bool {
    path.starts_with("/.well-known/oauth-")
        || path.starts_with("/.well-known/openid-configuration")
        || path.starts_with("/oauth/")
}

/// Where clients reach the proxy: its `public_url`, else `http://` and the `Host` it was asked
/// by (checked against the proxy's allowed hosts).
pub(crate) fn base_url(rt: &ProxyRuntime, headers: &http::HeaderMap) -> Option<String> {
    if let Some(u) = &rt.spec.public_url {
        return Some(u.trim_end_matches('/').to_string());
    }
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    // Only a well-formed authority is written into metadata and challenges.
    let well_formed =
        host.parse::<http::uri::Authority>().is_ok() && !host.contains(['"', '@', '\\', ' ']);
    // Plain HTTP only on this machine: a proxy reached by name through a TLS terminator names
    // itself with `public_url`.
    let name = host
        .parse::<http::uri::Authority>()
        .map(|a| a.host().to_string())
        .unwrap_or_default();
    (well_formed
        && is_loopback_host(&name)
        && crate::mcp::host_allowed(host, &rt.spec.listen, &rt.spec.allowed_hosts))
    .then(|| format!("http://{host}"))
}

/// The `WWW-Authenticate` challenge of a proxy with OAuth: where its metadata is.
pub(crate) fn challenge(
    rt: &ProxyRuntime,
    headers: &http::HeaderMap,
    presented: bool,
) -> Option<HeaderValue> {
    let base = base_url(rt, headers)?;
    let error = if presented {
        ", error=\"invalid_token\""
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource\", scope=\"{SCOPE}\"{error}"
    ))
    .ok()
}

fn json_answer(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(v.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Metadata, registration and tokens are for clients in browsers too (no cookies are
    // involved: every call carries what it needs).
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    r
}

/// A CORS preflight of the JSON endpoints.
fn preflight() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(String::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<ProxyBody> {
    json_answer(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// Serves an authorization-server path on a proxy with `oauth = true`.
pub(crate) async fn handle(
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let Some(base) = base_url(&rt, req.headers()) else {
        return Ok(oauth_error(
            StatusCode::FORBIDDEN,
            "invalid_request",
            "this Host is not allowed here: in plain HTTP the authorization server answers only on this machine (127.0.0.1, [::1], localhost); reached by name, the proxy needs an https public_url",
        ));
    };
    let Some(backend) = shared.oauth_backend.get().cloned() else {
        return Ok(oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway's authorization server is not running",
        ));
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let cookies = provider::cookies(req.headers());
    let s = Server {
        shared: &shared,
        rt: &rt,
        backend: backend.as_ref(),
        base,
        peer: client_address(&rt.spec.trusted_proxies, peer.ip(), req.headers()),
    };
    Ok(match (method, path.as_str()) {
        (Method::OPTIONS, p) if p != "/oauth/authorize" => preflight(),
        (Method::GET, p) if p.starts_with("/.well-known/oauth-protected-resource") => {
            json_answer(StatusCode::OK, &s.resource_metadata())
        }
        (Method::GET, p) if p.starts_with("/.well-known/oauth-authorization-server") => {
            json_answer(StatusCode::OK, &s.server_metadata())
        }
        (Method::POST, "/oauth/register") => s.register(req).await,
        (Method::GET, "/oauth/authorize") => {
            let q = req.uri().query().unwrap_or("").to_string();
            s.authorize(&pairs(q.as_bytes()), false, &cookies).await
        }
        (Method::POST, "/oauth/authorize") => match read_form(req).await {
            Ok(form) => s.authorize(&form, true, &cookies).await,
            Err(r) => r,
        },
        (Method::POST, "/oauth/token") => s.token(req).await,
        (Method::GET, "/oauth/callback") if rt.spec.oauth_provider.is_some() => {
            let q = req.uri().query().unwrap_or("").to_string();
            s.callback(&pairs(q.as_bytes()), &cookies).await
        }
        _ => oauth_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "no such endpoint of the authorization server",
        ),
    })
}

/// The client's address: the connection's, or, when that is one of the proxy's
/// `trusted_proxies`, the last address in `X-Forwarded-For` that is not (each trusted proxy
/// appends the address it was reached from; what comes before it was written by the client).
fn client_address(trusted: &[String], peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    use palisade_core::model::{in_network, parse_network};
    if trusted.is_empty() {
        return peer;
    }
    let nets: Vec<_> = trusted.iter().filter_map(|t| parse_network(t)).collect();
    let is_trusted = |ip: IpAddr| nets.iter().any(|n| in_network(ip, *n));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else { return peer };
        hops.extend(v.split(',').map(str::trim));
    }
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip,
            // A hop that is not an address: nothing before it can be believed.
            Err(_) => return peer,
        }
    }
    peer
}

/// The parameters of a query or form; a parameter given twice is refused (RFC 6749 §3.1).
fn pairs(raw: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut twice = Vec::new();
    for (k, v) in form_urlencoded::parse(raw) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            twice.push(k.to_string());
        }
    }
    for k in twice {
        out.insert(k, String::from('\u{0}'));
    }
    out
}

async fn read_body(
    req: Request<Incoming>,
) -> Result<(http::HeaderMap, Bytes), Response<ProxyBody>> {
    let (parts, body) = req.into_parts();
    match crate::buffers::collect(body, MAX_FORM, false).await {
        Ok((b, _)) => Ok((parts.headers, b)),
        Err(crate::buffers::BufferError::TooLarge) => Err(oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            &format!("the request body must be at most {MAX_FORM} bytes"),
        )),
        Err(crate::buffers::BufferError::Busy) => Err(oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway is busy; retry shortly",
        )),
        Err(_) => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )),
    }
}

async fn read_form(req: Request<Incoming>) -> Result<HashMap<String, String>, Response<ProxyBody>> {
    let form_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let (_, body) = read_body(req).await?;
    if !form_type {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    Ok(pairs(&body))
}

/// Whether a redirect URI may be registered: `https`, `http` only to this machine (a native
/// client's loopback listener, RFC 8252 §7.3), or a private-use scheme of an app (§7.1); never a
/// fragment, credentials, or a scheme a browser would run.
fn redirect_uri_ok(u: &str) -> bool {
    if u.len() > 512
        || u.contains('#')
        || !u.bytes().all(|b| b.is_ascii_graphic())
        || HeaderValue::from_str(u).is_err()
    {
        return false;
    }
    let Some((scheme, rest)) = u.split_once(':') else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return false;
    }
    match scheme.as_str() {
        "https" | "http" => {
            let Ok(uri) = u.parse::<http::Uri>() else {
                return false;
            };
            let Some(auth) = uri.authority() else {
                return false;
            };
            if !rest.starts_with("//")
                || auth.as_str().contains('@')
                || auth.host().is_empty()
                || !port_ok(auth.as_str())
            {
                return false;
            }
            scheme == "https" || is_loopback_host(auth.host())
        }
        // An app's own scheme is a reverse domain name (RFC 8252 §7.1: `com.example.app:/cb`),
        // so it is not a scheme the system hands to another program (`ms-msdt:`,
        // `search-ms:`); besides those, the schemes of well-known MCP clients.
        _ if scheme.contains('.') => !rest.is_empty(),
        // Those clients' schemes drive the whole application: only a callback path.
        _ if APP_SCHEMES.contains(&scheme.as_str()) => {
            let path = rest.split(['?', '#']).next().unwrap_or("");
            path.contains("/callback") || path.contains("/oauth")
        }
        _ => false,
    }
}

/// Whether an authority's port, if it has one, is one (1–65535).
fn port_ok(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((_, p)) if !p.contains(']') => p.parse::<u16>().is_ok_and(|p| p > 0),
        _ => true,
    }
}

/// Redirect schemes of MCP clients that predate reverse-domain schemes.
const APP_SCHEMES: &[&str] = &["cursor", "vscode", "vscode-insiders", "windsurf", "zed"];

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

/// Whether `asked` is the registered `uri`: exactly, or for a loopback redirect on any port
/// (RFC 8252 §7.3: a native app's listener takes whatever port is free).
fn redirect_matches(registered: &str, asked: &str) -> bool {
    if registered == asked {
        return true;
    }
    if !redirect_uri_ok(asked) {
        return false;
    }
    let (Ok(r), Ok(a)) = (registered.parse::<http::Uri>(), asked.parse::<http::Uri>()) else {
        return false;
    };
    r.scheme_str() == Some("http")
        && a.scheme_str() == Some("http")
        && r.host().is_some_and(is_loopback_host)
        && r.host() == a.host()
        && r.path_and_query() == a.path_and_query()
        && asked.starts_with("http://")
        && a.authority().is_some_and(|x| !x.as_str().contains('@'))
}

/// One `application/x-www-form-urlencoded` value (`+` a space, `%XX` a byte), as client
/// credentials in HTTP Basic are encoded (RFC 6749 §2.3.1).
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let computed = URL_SAFE_NO_PAD.encode(hash_api_key(verifier));
    well_formed && ct_eq(computed.as_bytes(), challenge.as_bytes())
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response<ProxyBody> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t}</title><style>body{{font:15px system-ui,sans-serif;background:#f4f5f7;margin:0}}main{{max-width:26rem;margin:8vh auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}}\
h1{{font-size:1.2rem}}label{{display:block;margin:.8rem 0 .2rem}}input[type=text],input[type=password]{{width:100%;padding:.5rem;box-sizing:border-box}}button{{margin-top:1.2rem;padding:.6rem 1.2rem}}\
.err{{color:#a00}}.who{{color:#444}}code{{word-break:break-all}}</style></head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = html_escape(title)
    );
    let mut r = Response::new(ProxyBody::full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The authorization request's parameters as hidden fields of the page's form.
fn hidden_fields(q: &HashMap<String, String>) -> String {
    let mut hidden = String::new();
    for k in [
        "response_type",
        "client_id",
        "redirect_uri",
        "code_challenge",
        "code_challenge_method",
        "state",
        "scope",
        "resource",
    ] {
        if let Some(v) = q.get(k) {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                html_escape(v)
            ));
        }
    }
    hidden
}

/// A redirect back to the client with `params` (`302`; `303` after the sign-in's POST).
fn back_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response<ProxyBody> {
    redirect_with(StatusCode::FOUND, redirect_uri, params)
}

/// `uri` with `params` added to its query.
fn with_params(uri: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", q.finish())
}

fn redirect_with(
    status: StatusCode,
    redirect_uri: &str,
    params: &[(&str, &str)],
) -> Response<ProxyBody> {
    let target = with_params(redirect_uri, params);
    let mut r = Response::new(ProxyBody::full(String::new()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&target) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

struct Server<'a> {
    shared: &'a GatewayShared,
    rt: &'a ProxyRuntime,
    backend: &'a dyn OAuthBackend,
    base: String,
    peer: IpAddr,
}

/// A checked authorization request.
struct AuthRequest {
    client: OAuthClientRow,
    redirect_uri: String,
    /// Whether the request named the redirect URI (then the token request repeats it).
    redirect_given: bool,
    state: Option<String>,
    challenge: String,
}

impl Server<'_> {
    /// The resource identifier: the proxy's base URL (every path under it is the resource).
    fn resource(&self) -> String {
        format!("{}/", self.base)
    }

    fn resource_metadata(&self) -> Value {
        json!({
            "resource": self.resource(),
            "authorization_servers": [self.base],
            "scopes_supported": [SCOPE],
            "bearer_methods_supported": ["header"],
            "resource_name": self.rt.spec.name,
        })
    }

    fn server_metadata(&self) -> Value {
        let b = &self.base;
        json!({
            "issuer": b,
            "authorization_endpoint": format!("{b}/oauth/authorize"),
            "token_endpoint": format!("{b}/oauth/token"),
            "registration_endpoint": format!("{b}/oauth/register"),
            "scopes_supported": [SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    fn same_resource(&self, asked: Option<&String>) -> bool {
        asked.is_none_or(|r| r.trim_end_matches('/') == self.base)
    }

    async fn register(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let bad = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", d);
        let (_, body) = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let Ok(meta) = serde_json::from_slice::<Value>(&body) else {
            return bad("the registration must be a JSON object");
        };
        let Some(meta) = meta.as_object() else {
            return bad("the registration must be a JSON object");
        };
        let uris: Vec<String> = match meta.get("redirect_uris").and_then(Value::as_array) {
            Some(a) if !a.is_empty() && a.len() <= 10 => {
                let uris: Vec<String> = a
                    .iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect();
                if uris.len() != a.len() {
                    return bad("redirect_uris are strings");
                }
                uris
            }
            _ => return bad("redirect_uris: one to ten URIs"),
        };
        if let Some(u) = uris.iter().find(|u| !redirect_uri_ok(u)) {
            let shown: String = u.chars().take(80).collect();
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                &format!(
                    "`{shown}` is not a redirect URI the gateway accepts (https, http to 127.0.0.1, [::1] or localhost, or an app's own scheme; no fragment)"
                ),
            );
        }
        let method = match meta.get("token_endpoint_auth_method") {
            None => "client_secret_basic",
            Some(Value::String(m))
                if matches!(
                    m.as_str(),
                    "none" | "client_secret_post" | "client_secret_basic"
                ) =>
            {
                m.as_str()
            }
            Some(_) => {
                return bad(
                    "token_endpoint_auth_method: none, client_secret_post or client_secret_basic",
                );
            }
        };
        for (field, allowed) in [
            ("grant_types", &["authorization_code", "refresh_token"][..]),
            ("response_types", &["code"][..]),
        ] {
            if let Some(v) = meta.get(field) {
                let ok = v.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|g| g.as_str().is_some_and(|g| allowed.contains(&g)))
                });
                if !ok {
                    return bad(&format!("{field}: only {}", allowed.join(", ")));
                }
            }
        }
        let name = match meta.get("client_name") {
            None => "unnamed client".to_string(),
            Some(Value::String(n)) if !n.trim().is_empty() => {
                n.chars().filter(|c| !c.is_control()).take(100).collect()
            }
            Some(_) => return bad("client_name is a non-empty string"),
        };
        if !self.shared.oauth_tokens.may_register(self.peer) {
            return oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many clients registered in the last minute; retry shortly",
            );
        }
        let client_id = format!("pcl_{}", random_token(18));
        let secret = (method != "none").then(|| format!("pcs_{}", random_token(32)));
        let now = now_ms();
        let row = OAuthClientRow {
            client_id: client_id.clone(),
            name: name.clone(),
            redirect_uris: uris.clone(),
            secret_hash: secret.as_deref().map(hash_api_key),
            created_at: now,
        };
        if let Err(e) = self.backend.register(row, self.peer).await {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &e,
            );
        }
        let mut out = json!({
            "client_id": client_id,
            "client_id_issued_at": now / 1000,
            "client_name": name,
            "redirect_uris": uris,
            "token_endpoint_auth_method": method,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": SCOPE,
        });
        if let Some(s) = secret {
            out["client_secret"] = Value::String(s);
            out["client_secret_expires_at"] = json!(0);
        }
        json_answer(StatusCode::CREATED, &out)
    }

    /// Checks an authorization request: errors about the client or its redirect URI are shown
    /// (never redirected to an unchecked URI), the others go back to the client.
    async fn check_authorization(
        &self,
        q: &HashMap<String, String>,
    ) -> Result<AuthRequest, Response<ProxyBody>> {
        let shown = |m: &str| {
            Err(page(
                StatusCode::BAD_REQUEST,
                "Cannot sign in",
                &format!("<p class=\"err\">{}</p>", html_escape(m)),
            ))
        };
        let Some(client_id) = q.get("client_id") else {
            return shown("The request names no client (client_id).");
        };
        let client = match self.backend.client(client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return shown("The client is not registered with this gateway."),
            Err(e) => return shown(&e),
        };
        let (redirect_uri, redirect_given) = match q.get("redirect_uri") {
            Some(u) if client.redirect_uris.iter().any(|r| redirect_matches(r, u)) => {
                (u.clone(), true)
            }
            None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
            _ => return shown("The redirect URI is not one the client registered."),
        };
        let state = q.get("state").cloned();
        let back = |error: &str, d: &str| {
            let mut p = vec![
                ("error", error),
                ("error_description", d),
                ("iss", self.base.as_str()),
            ];
            if let Some(s) = &state {
                p.push(("state", s));
            }
            Err(back_to(&redirect_uri, &p))
        };
        if q.values().any(|v| v == "\u{0}") {
            return back("invalid_request", "a parameter is given twice");
        }
        if q.get("response_type").map(String::as_str) != Some("code") {
            return back("unsupported_response_type", "only response_type=code");
        }
        let challenge = match (q.get("code_challenge"), q.get("code_challenge_method")) {
            (Some(c), Some(m))
                if m == "S256"
                    && c.len() == 43
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                c.clone()
            }
            _ => {
                return back(
                    "invalid_request",
                    "PKCE with code_challenge_method=S256 is required",
                );
            }
        };
        if !self.same_resource(q.get("resource")) {
            return back("invalid_target", "the resource is not this proxy");
        }
        if q.get("scope")
            .is_some_and(|s| s.split(' ').any(|w| !w.is_empty() && w != SCOPE))
        {
            return back("invalid_scope", "the only scope is `mcp`");
        }
        Ok(AuthRequest {
            client,
            redirect_uri,
            redirect_given,
            state,
            challenge,
        })
    }

    /// The sign-in page (or, with `change`, the page that asks for a new password).
    fn sign_in_page(
        &self,
        q: &HashMap<String, String>,
        a: &AuthRequest,
        error: Option<&str>,
        change: bool,
    ) -> Response<ProxyBody> {
        let hidden = hidden_fields(q);
        let err = error
            .map(|e| format!("<p class=\"err\">{}</p>", html_escape(e)))
            .unwrap_or_default();
        let username = q
            .get("username")
            .map(|u| html_escape(u))
            .unwrap_or_default();
        let fields = if change {
            format!(
                "<p>An administrator set your password: choose your own to go on (12 characters or more).</p>\
<input type=\"hidden\" name=\"username\" value=\"{username}\">\
<label for=\"p\">Current password</label><input type=\"password\" id=\"p\" name=\"password\" autocomplete=\"current-password\" required>\
<label for=\"n\">New password</label><input type=\"password\" id=\"n\" name=\"new_password\" autocomplete=\"new-password\" minlength=\"12\" required>\
<label for=\"r\">New password again</label><input type=\"password\" id=\"r\" name=\"new_password_again\" autocomplete=\"new-password\" required>\
<button type=\"submit\">Change password, sign in and allow</button>"
            )
        } else {
            format!(
                "<label for=\"u\">User name</label><input type=\"text\" id=\"u\" name=\"username\" autocomplete=\"username\" value=\"{username}\" required>\
<label for=\"p\">Password</label><input type=\"password\" id=\"p\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in and allow</button>"
            )
        };
        page(
            if error.is_some() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            },
            &format!("Sign in to {}", self.rt.spec.name),
            &format!(
                "{who}{err}<form method=\"post\" action=\"{action}\">{hidden}{fields}</form>",
                who = self.who_asks(a, ""),
                action = html_escape(&format!("{}/oauth/authorize", self.base)),
            ),
        )
    }

    /// The paragraph of both sign-in pages that says which client asks and where the code goes.
    fn who_asks(&self, a: &AuthRequest, more: &str) -> String {
        format!(
            "<p class=\"who\">A client that calls itself <b>{client}</b> (its name is its own, not checked by the gateway) asks to use <code>{res}</code> as you. \
Signing in lets it, and sends you back to <code>{to}</code>.{more}</p>",
            client = html_escape(&a.client.name),
            res = html_escape(&self.resource()),
            to = html_escape(&a.redirect_uri),
        )
    }

    async fn authorize(
        &self,
        q: &HashMap<String, String>,
        submitted: bool,
        cookies: &HashMap<String, String>,
    ) -> Response<ProxyBody> {
        let a = match self.check_authorization(q).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        if let Some(name) = &self.rt.spec.oauth_provider {
            return if submitted {
                self.to_provider(name, q, a, cookies).await
            } else {
                self.provider_page(name, q, &a)
            };
        }
        if !submitted {
            return self.sign_in_page(q, &a, None, false);
        }
        let (Some(user), Some(password)) = (q.get("username"), q.get("password")) else {
            return self.sign_in_page(q, &a, Some("Enter your user name and password."), false);
        };
        let client_id = a.client.client_id.as_str();
        let allowed =
            self.rt.spec.oauth_users.is_empty() || self.rt.spec.oauth_users.contains(user);
        let not_allowed = "This user may not use this proxy; ask an administrator.";
        let stamp = if let Some(new) = q.get("new_password").filter(|_| allowed) {
            if q.get("new_password_again") != Some(new) {
                return self.sign_in_page(q, &a, Some("The new passwords differ."), true);
            }
            match self
                .backend
                .change_password(user, password, new, self.peer)
                .await
            {
                Ok(stamp) => {
                    // The old password's grants end with it.
                    self.shared.revoke_oauth_user(user);
                    stamp
                }
                Err(e) => return self.sign_in_page(q, &a, Some(&e), true),
            }
        } else {
            match self
                .backend
                .sign_in(user, password, self.peer, client_id, &self.rt.spec.name)
                .await
            {
                // The password was right; the user is not one this proxy takes.
                Ok(_) if !allowed => return self.sign_in_page(q, &a, Some(not_allowed), false),
                Ok(s) if s.must_change_password => {
                    return self.sign_in_page(q, &a, None, true);
                }
                Ok(s) => s.user,
                Err(e) => return self.sign_in_page(q, &a, Some(&e), false),
            }
        };
        match self
            .grant(&a, user, stamp, StatusCode::SEE_OTHER, json!({}))
            .await
        {
            Ok(r) => r,
            Err(e) => self.sign_in_page(q, &a, Some(&e), false),
        }
    }

    /// Issues the client's code for a user who signed in, and sends them back to the client
    /// with it (`status`: `303` after a form, `302` after the provider's redirect). The grant is
    /// recorded (`oauth.authorize`, with `detail`) before its code exists: no code without its
    /// audit record.
    async fn grant(
        &self,
        a: &AuthRequest,
        user: &str,
        stamp: UserStamp,
        status: StatusCode,
        mut detail: Value,
    ) -> Result<Response<ProxyBody>, String> {
        let client_id = a.client.client_id.as_str();
        detail["client_id"] = client_id.into();
        detail["ip"] = self.peer.to_string().into();
        self.backend
            .audit(user, "oauth.authorize", &self.rt.spec.name, detail)
            .await?;
        let code = random_token(32);
        let grant = Code {
            client_id: client_id.to_string(),
            redirect_uri: a.redirect_given.then(|| a.redirect_uri.clone()),
            challenge: a.challenge.clone(),
            username: user.to_string(),
            user: stamp,
            family: palisade_core::crypto::random_id(),
            proxy: self.rt.spec.name.clone(),
            resource: self.resource(),
            expires_at: now_ms() + CODE_TTL.as_millis() as i64,
        };
        self.shared.oauth_tokens.put_code(&code, grant)?;
        let mut p = vec![("code", code.as_str()), ("iss", self.base.as_str())];
        if let Some(s) = &a.state {
            p.push(("state", s));
        }
        Ok(redirect_with(status, &a.redirect_uri, &p))
    }

    /// Authenticates the client at the token endpoint: a confidential client by its secret
    /// (form or Basic), a public one by its id.
    async fn token_client(
        &self,
        headers: &http::HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<OAuthClientRow, Response<ProxyBody>> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let used_basic = authorization.is_some_and(|v| v.starts_with("Basic "));
        let invalid = |d: &str| {
            let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
            if used_basic {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"palisade\""),
                );
            }
            Err(r)
        };
        let basic = authorization
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (id, secret) = s.split_once(':')?;
                Some((form_decode(id)?, form_decode(secret)?))
            });
        if used_basic && basic.is_none() {
            return invalid("the Basic credentials are malformed");
        }
        let (id, secret) = match (&basic, form.get("client_id")) {
            (Some((id, secret)), _) => (id.clone(), Some(secret.clone())),
            (None, Some(id)) => (id.clone(), form.get("client_secret").cloned()),
            (None, None) => return invalid("the client is not named (client_id)"),
        };
        let client = match self.backend.client(&id).await {
            Ok(Some(c)) => c,
            Ok(None) => return invalid("unknown client"),
            Err(e) => {
                return Err(oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    &e,
                ));
            }
        };
        match (&client.secret_hash, secret) {
            (None, _) => Ok(client),
            (Some(h), Some(s)) if ct_eq(h, &hash_api_key(&s)) => Ok(client),
            (Some(_), _) => invalid("the client's secret is missing or wrong"),
        }
    }

    /// Ends a sign-in's access token and what it holds open.
    fn revoke(&self, id: &str) {
        self.shared.oauth_tokens.revoke_id(id);
        self.shared.close_revoked();
    }

    /// An access token for a sign-in, in force at once.
    fn access_for(
        &self,
        client_id: &str,
        family: &str,
        username: &str,
    ) -> Result<(String, String), Response<ProxyBody>> {
        let id = sign_in_id(client_id, family);
        let info = KeyInfo {
            id: id.clone(),
            name: username.to_string(),
            group: self.rt.spec.oauth_group.clone(),
            expires_at_ms: Some(now_ms() + ACCESS_TTL.as_millis() as i64),
            allowed_proxies: vec![self.rt.spec.name.clone()],
            ..Default::default()
        };
        match self.shared.oauth_tokens.issue(info) {
            Ok(t) => Ok((t, id)),
            Err(e) => Err(oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &e,
            )),
        }
    }

    async fn token(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let headers = req.headers().clone();
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        let bad = |e: &str, d: &str| oauth_error(StatusCode::BAD_REQUEST, e, d);
        let unavailable = |e: &str| {
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                e,
            )
        };
        if form.values().any(|v| v == "\u{0}") {
            return bad("invalid_request", "a parameter is given twice");
        }
        let client = match self.token_client(&headers, &form).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !self.same_resource(form.get("resource")) {
            return bad("invalid_target", "the resource is not this proxy");
        }
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let refresh = format!("prt_{}", random_token(32));
        let access = match get("grant_type") {
            "authorization_code" => {
                let code = match self.shared.oauth_tokens.take_code(get("code")) {
                    Ok(Some(c)) => c,
                    Ok(None) => return bad("invalid_grant", "the code is unknown or expired"),
                    Err((client_id, family)) => {
                        // A code presented twice: whoever holds it, the sign-in ends. Marked
                        // first, so an exchange of it finishing at this moment undoes itself.
                        self.shared.oauth_tokens.mark_revoked(&family);
                        self.revoke(&sign_in_id(&client_id, &family));
                        let _ = self.backend.revoke_family(&family).await;
                        let _ = self
                            .backend
                            .audit(
                                "anonymous",
                                "oauth.code_replayed",
                                &self.rt.spec.name,
                                json!({"client_id": client_id, "ip": self.peer.to_string()}),
                            )
                            .await;
                        return bad(
                            "invalid_grant",
                            "the code was used before; its sign-in is revoked",
                        );
                    }
                };
                let redirect_ok = match &code.redirect_uri {
                    Some(u) => form.get("redirect_uri") == Some(u),
                    None => form
                        .get("redirect_uri")
                        .is_none_or(|u| client.redirect_uris.contains(u)),
                };
                if code.client_id != client.client_id
                    || !redirect_ok
                    || code.proxy != self.rt.spec.name
                    || code.resource != self.resource()
                {
                    return bad(
                        "invalid_grant",
                        "the code was issued to another client, redirect URI or resource",
                    );
                }
                if !pkce_ok(get("code_verifier"), &code.challenge) {
                    return bad(
                        "invalid_grant",
                        "the code_verifier does not match the code_challenge",
                    );
                }
                let (access, id) =
                    match self.access_for(&client.client_id, &code.family, &code.username) {
                        Ok(x) => x,
                        Err(r) => return r,
                    };
                let family = code.family.clone();
                let grant = RefreshGrant {
                    family: code.family,
                    client_id: client.client_id.clone(),
                    username: code.username,
                    user: code.user,
                    proxy: self.rt.spec.name.clone(),
                    resource: self.resource(),
                    scope: SCOPE.into(),
                    expires_at: now_ms() + REFRESH_TTL.as_millis() as i64,
                };
                // Stored only while the user is the one who signed in; the access token issued
                // just before ends otherwise (a user deleted in between loses it either way).
                match self
                    .backend
                    .put_refresh(hash_api_key(&refresh), grant)
                    .await
                {
                    Ok(true) if self.shared.oauth_tokens.is_revoked(&family) => {
                        // Its code was presented again while this exchange ran.
                        self.revoke(&id);
                        let _ = self.backend.revoke_family(&family).await;
                        return bad(
                            "invalid_grant",
                            "the code was used before; its sign-in is revoked",
                        );
                    }
                    Ok(true) => access,
                    Ok(false) => {
                        self.revoke(&id);
                        return bad("invalid_grant", "the user changed since signing in");
                    }
                    Err(e) => {
                        self.revoke(&id);
                        return unavailable(&e);
                    }
                }
            }
            "refresh_token" => {
                let presented = get("refresh_token");
                let old = hash_api_key(presented);
                let gone = || bad("invalid_grant", "the refresh token is unknown or expired");
                let grant = match self.backend.peek_refresh(old).await {
                    Ok(Some(g)) if presented.starts_with("prt_") => g,
                    Ok(_) => return gone(),
                    Err(e) => return unavailable(&e),
                };
                let (g, used) = grant;
                // Checked before anything is used up: another client's token is not burnt.
                if g.client_id != client.client_id
                    || g.proxy != self.rt.spec.name
                    || g.resource != self.resource()
                {
                    return bad(
                        "invalid_grant",
                        "the refresh token was issued to another client or resource",
                    );
                }
                if !used && g.expires_at <= now_ms() {
                    return gone();
                }
                let id = sign_in_id(&g.client_id, &g.family);
                // A user the proxy no longer takes keeps nothing.
                if !self.rt.spec.oauth_users.is_empty()
                    && !self.rt.spec.oauth_users.contains(&g.username)
                {
                    self.revoke(&id);
                    let _ = self.backend.revoke_family(&g.family).await;
                    return bad("invalid_grant", "this user may no longer use this proxy");
                }
                let access = if used {
                    None
                } else {
                    match self.access_for(&g.client_id, &g.family, &g.username) {
                        Ok((t, _)) => Some(t),
                        Err(r) => return r,
                    }
                };
                match self
                    .backend
                    .rotate_refresh(old, hash_api_key(&refresh))
                    .await
                {
                    Ok(RefreshUse::Valid(_)) if access.is_some() => access.unwrap_or_default(),
                    Ok(RefreshUse::Replayed(family)) => {
                        self.revoke(&id);
                        let _ = self
                            .backend
                            .audit(
                                "anonymous",
                                "oauth.refresh_replayed",
                                &self.rt.spec.name,
                                json!({"client_id": g.client_id, "user": g.username, "family": family, "ip": self.peer.to_string()}),
                            )
                            .await;
                        return bad(
                            "invalid_grant",
                            "the refresh token was used before; its sign-in is revoked (sign in again)",
                        );
                    }
                    Ok(_) => {
                        self.revoke(&id);
                        return gone();
                    }
                    Err(e) => {
                        // The refresh token was not used up: the client may try it again.
                        self.revoke(&id);
                        return unavailable(&e);
                    }
                }
            }
            "" => return bad("invalid_request", "grant_type is missing"),
            _ => {
                return bad(
                    "unsupported_grant_type",
                    "authorization_code or refresh_token",
                );
            }
        };
        json_answer(
            StatusCode::OK,
            &json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": ACCESS_TTL.as_secs(),
                "refresh_token": refresh,
                "scope": SCOPE,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_loopback_or_an_apps_own_scheme() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1:6274/oauth/callback",
            "http://localhost:33418/callback",
            "http://[::1]:8080/cb",
            "com.example.app:/oauth2redirect",
            "cursor.app://anysphere/oauth/callback",
            "cursor://anysphere.cursor-retrieval/oauth/user-mcp/callback",
        ] {
            assert!(redirect_uri_ok(ok), "{ok}");
        }
        for bad in [
            "http://app.example/cb",
            "http://127.0.0.1.evil.example/cb",
            "https://user:pw@app.example/cb",
            "https://app.example/cb#frag",
            "https:evil.example",
            "http://127.0.0.1:99999/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "ms-msdt:/id",
            "search-ms:query=x",
            "view-source:https://evil.example",
            "intent://evil.example/cb",
            "x:y",
            "app.example:/\u{e9}",
            "no-scheme",
            "https://app.example/a b",
            "",
        ] {
            assert!(!redirect_uri_ok(bad), "{bad}");
        }
        // A loopback redirect matches on any port; others exactly.
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:51234/cb"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1:9/cb",
            "http://127.0.0.1:51234/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5/other"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://localhost:5/cb"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example:8443/cb"
        ));
        assert_eq!(form_decode("a%2Bb+c%26d").as_deref(), Some("a+b c&d"));
        assert_eq!(form_decode("bad%2"), None);
    }

    #[test]
    fn pkce_takes_only_the_verifier_of_the_challenge() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_ok(verifier, challenge));
        assert!(!pkce_ok(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx",
            challenge
        ));
        assert!(!pkce_ok("short", challenge));
    }

    #[test]
    fn tokens_resolve_until_they_expire_or_their_sign_in_or_user_ends() {
        let t = Tokens::default();
        let info = |name: &str, family: &str, exp: i64| KeyInfo {
            id: sign_in_id("c1", family),
            name: name.into(),
            expires_at_ms: Some(exp),
            allowed_proxies: vec!["tools".into()],
            ..Default::default()
        };
        let now = now_ms();
        let a = t.issue(info("mia", "f1", now + 60_000)).unwrap();
        let c = t.issue(info("noa", "f3", now + 60_000)).unwrap();
        assert!(a.starts_with("pat_"));
        assert_eq!(t.lookup(&a, now).unwrap().name, "mia");
        assert!(t.lookup(&a, now + 60_000).is_none());
        // A sign-in holds one token: its next one ends the one before.
        let b = t.issue(info("mia", "f1", now + 120_000)).unwrap();
        assert!(t.lookup(&a, now).is_none());
        assert!(t.holds("oauth:c1:f1", now + 90_000));
        assert!(!t.holds("oauth:c1:f1", now + 120_000));
        assert!(t.lookup("pal_not_an_oauth_token", now).is_none());
        let d = t.issue(info("mia", "f2", now + 60_000)).unwrap();
        t.revoke_id("oauth:c1:f2");
        assert!(t.lookup(&d, now).is_none());
        assert!(t.lookup(&b, now).is_some());
        // Codes: once, while fresh; presented again, they name their sign-in.
        let code = Code {
            client_id: "c1".into(),
            redirect_uri: None,
            challenge: "x".into(),
            username: "mia".into(),
            user: UserStamp::default(),
            family: "f9".into(),
            proxy: "tools".into(),
            resource: "http://127.0.0.1:1/".into(),
            expires_at: now + 60_000,
        };
        t.put_code("abc", code.clone()).unwrap();
        assert!(matches!(t.take_code("abc"), Ok(Some(_))));
        assert_eq!(t.take_code("abc").err(), Some(("c1".into(), "f9".into())));
        assert!(matches!(t.take_code("never"), Ok(None)));
        t.put_code(
            "old",
            Code {
                expires_at: now - 1,
                ..code.clone()
            },
        )
        .unwrap();
        assert!(matches!(t.take_code("old"), Ok(None)));
        // A deleted client's sign-ins end.
        let e = t.issue(info("noa", "f4", now + 60_000)).unwrap();
        let f = KeyInfo {
            id: "oauth:c2:f5".into(),
            ..info("noa", "f5", now + 60_000)
        };
        let f = t.issue(f).unwrap();
        t.revoke_client("c1");
        assert!(t.lookup(&e, now).is_none());
        assert!(t.lookup(&f, now).is_some());
        // A user who goes loses their tokens and waiting codes.
        t.put_code("waiting", code).unwrap();
        t.revoke_user("mia");
        assert!(t.lookup(&b, now).is_none());
        assert!(t.lookup(&c, now).is_none(), "its client was deleted");
        assert!(t.lookup(&f, now).is_some());
        assert!(matches!(t.take_code("waiting"), Ok(None)));
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        let trusted = vec!["10.0.0.0/24".to_string()];
        // From the terminator: the last hop it did not add itself.
        assert_eq!(
            client_address(&trusted, ip("10.0.0.1"), &h),
            ip("203.0.113.7")
        );
        // From anyone else, or with no list: the connection.
        assert_eq!(
            client_address(&trusted, ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
        assert_eq!(client_address(&[], ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // A hop that is not an address stops the walk.
        let mut bad = http::HeaderMap::new();
        bad.append("x-forwarded-for", "203.0.113.7, unknown".parse().unwrap());
        assert_eq!(
            client_address(&trusted, ip("10.0.0.1"), &bad),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(&trusted, ip("10.0.0.1"), &http::HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn repeated_parameters_are_marked() {
        let p = pairs(b"a=1&b=2&a=3");
        assert_eq!(p["b"], "2");
        assert_eq!(p["a"], "\u{0}");
    }
}
