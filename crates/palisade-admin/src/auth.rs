//! Admin authentication: Argon2id passwords, signed expiring bearer tokens, roles, login throttling.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use palisade_core::crypto::{hash_password, verify_password};
use palisade_core::now_ms;
use palisade_store::Actor;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ValidJson;
use crate::{AppState, RequestId};

/// Lifetime of an admin token.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// Signed claims of an admin token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: i64,
    /// Password change pending: only the password route is allowed.
    #[serde(default)]
    pwc: bool,
    /// Version of the password the token was issued under; a password change revokes it.
    #[serde(default)]
    pv: String,
}

/// A short fingerprint of a stored password hash, carried in tokens.
fn password_version(phc: &str) -> String {
    palisade_core::crypto::sha256_hex(phc.as_bytes())[..16].to_string()
}

/// An authenticated console/API user.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// Request id of this API call.
    pub request_id: String,
    must_change_password: bool,
    /// The token this call came with (a live event stream re-checks it).
    pub(crate) token: String,
}

impl User {
    /// The audit actor for changes this user makes.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.name.clone(),
            request_id: Some(self.request_id.clone()),
        }
    }
}

/// Cookie that carries the console's session token (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "palisade_session";
/// Cookie readable by the console's script, echoed in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "palisade_csrf";
/// Header that must carry the CSRF token on every cookie-authenticated change.
pub const CSRF_HEADER: &str = "x-palisade-csrf";

/// The CSRF token bound to a session token: only a page that can read our cookies knows it,
/// and a cookie planted by another site cannot match a session it does not hold.
pub fn csrf_for(token: &str) -> String {
    palisade_core::crypto::sha256_hex(format!("palisade-csrf\0{token}").as_bytes())[..32]
        .to_string()
}

/// The value of cookie `name` in the request, if it is there once. Sent twice (a cookie of the
/// same name set for another path, by another site on this host), it is ambiguous, and neither
/// copy is taken: a planted session must not be the one the console acts as.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// `Set-Cookie` values that open a console session with `token`.
pub(crate) fn session_cookies(token: &str) -> [(axum::http::HeaderName, String); 2] {
    let age = TOKEN_TTL.as_secs();
    [
        (
            axum::http::header::SET_COOKIE,
            format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}"),
        ),
        (
            axum::http::header::SET_COOKIE,
            format!(
                "{CSRF_COOKIE}={}; Path=/; SameSite=Strict; Max-Age={age}",
                csrf_for(token)
            ),
        ),
    ]
}

pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Checks a token against its signature, expiry and the user's current row; returns the user
/// name, the stored role and the pending-password-change flag.
pub(crate) async fn verify_token(
    state: &AppState,
    token: &str,
) -> Result<(String, String, bool), ApiError> {
    let payload = state
        .signer
        .verify(token)
        .ok_or_else(|| ApiError::unauthorized("invalid token"))?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|_| ApiError::unauthorized("invalid token"))?;
    if claims.exp <= now_ms() {
        return Err(ApiError::unauthorized("token expired; log in again"));
    }
    if state.revoked.is_revoked(token, &claims.sub, claims.exp) {
        return Err(ApiError::unauthorized("logged out; log in again"));
    }
    // The user's current state decides: a deleted user or a changed password revokes the
    // token at once, and the role is the stored one.
    let row = state
        .store
        .user_by_name(&claims.sub)
        .await?
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    if !palisade_core::crypto::ct_eq(
        password_version(&row.password_hash).as_bytes(),
        claims.pv.as_bytes(),
    ) {
        return Err(ApiError::unauthorized(
            "token revoked: the password changed; log in again",
        ));
    }
    if row.role == "member" {
        return Err(ApiError::unauthorized(
            "a member has no access to the console or the admin API",
        ));
    }
    Ok((claims.sub, row.role, claims.pwc))
}

async fn user_from_parts(parts: &Parts, state: &AppState) -> Result<User, ApiError> {
    // A bearer header wins; otherwise the console's session cookie, which a browser attaches
    // by itself, so a change made with it must also prove it comes from our own page.
    let token = match bearer(parts) {
        Some(t) => t,
        None => {
            let t = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(|| {
                ApiError::unauthorized(
                    "missing `Authorization: Bearer <token>`; log in at POST /api/v1/auth/login",
                )
            })?;
            if !parts.method.is_safe() {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !palisade_core::crypto::ct_eq(sent.as_bytes(), csrf_for(t).as_bytes()) {
                    return Err(ApiError::forbidden(
                        "missing or wrong CSRF token (header `x-palisade-csrf`); reload the console",
                    ));
                }
            }
            t
        }
    };
    let (name, role, pwc) = verify_token(state, token).await?;
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    Ok(User {
        name,
        role,
        request_id,
        must_change_password: pwc,
        token: token.to_string(),
    })
}

/// Any holder of a valid token, even one whose password change is pending.
pub struct AnyUser(pub User);

impl FromRequestParts<AppState> for AnyUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        user_from_parts(parts, state).await.map(AnyUser)
    }
}

/// Any authenticated user (admin or viewer) — for read-only routes.
pub struct Viewer(pub User);
/// An authenticated admin — for every route that changes state.
pub struct Admin(pub User);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let u = user_from_parts(parts, state).await?;
        if u.must_change_password {
            return Err(ApiError::forbidden(
                "this account's password was set for it and must be changed first: POST /api/v1/auth/password",
            ));
        }
        Ok(Viewer(u))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Viewer(u) = Viewer::from_request_parts(parts, state).await?;
        if u.role != "admin" {
            return Err(ApiError::forbidden("this action needs the admin role"));
        }
        Ok(Admin(u))
    }
}

/// Tokens ended by a logout before their expiry, kept (by digest) until they expire. In
/// memory: a restart forgets them, which leaves them valid at most until their own expiry.
pub struct RevokedTokens {
    /// Most entries kept one by one ([`MAX_REVOKED`]).
    cap: usize,
    /// Digest → (user, expiry).
    map: Mutex<HashMap<String, (String, i64)>>,
    /// Per user: every token of theirs that expires at or before this time is refused. Where
    /// the list overflows, forgotten entries become this (never a logged-out token valid
    /// again: logging in and out in a loop must not push other sessions' logouts out).
    before: Mutex<HashMap<String, i64>>,
}

/// Logged-out tokens remembered one by one at most (beyond it, the earliest expiries are folded
/// into their users' cut-off times).
const MAX_REVOKED: usize = 100_000;

impl Default for RevokedTokens {
    fn default() -> Self {
        Self::with_cap(MAX_REVOKED)
    }
}

impl RevokedTokens {
    fn with_cap(cap: usize) -> Self {
        Self {
            cap,
            map: Default::default(),
            before: Default::default(),
        }
    }

    fn revoke(&self, token: &str, user: &str, exp: i64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        m.retain(|_, (_, e)| *e > now);
        if m.len() >= self.cap {
            let mut exps: Vec<i64> = m.values().map(|(_, e)| *e).collect();
            exps.sort_unstable();
            let cut = exps[exps.len() / 10];
            let mut before = self.before.lock().unwrap_or_else(|p| p.into_inner());
            before.retain(|_, e| *e > now);
            m.retain(|_, (u, e)| {
                if *e > cut {
                    return true;
                }
                let b = before.entry(u.clone()).or_insert(*e);
                *b = (*b).max(*e);
                false
            });
        }
        m.insert(
            palisade_core::crypto::sha256_hex(token.as_bytes()),
            (user.to_string(), exp),
        );
    }

    fn is_revoked(&self, token: &str, user: &str, exp: i64) -> bool {
        {
            let before = self.before.lock().unwrap_or_else(|p| p.into_inner());
            if before.get(user).is_some_and(|b| exp <= *b) {
                return true;
            }
        }
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        !m.is_empty() && m.contains_key(&palisade_core::crypto::sha256_hex(token.as_bytes()))
    }
}

/// Counts failed logins per client address and per user name.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// `(address, user)` pairs that have logged in (bounded; oldest forgotten first). Failures
    /// for a user from elsewhere do not lock these out: anyone can send ten wrong passwords for
    /// `admin`, and that must not keep the administrator out.
    known: Mutex<std::collections::VecDeque<(IpAddr, String)>>,
}

/// Most `(address, user)` pairs a limiter remembers.
const KNOWN_PAIRS: usize = 4_096;

impl LoginLimiter {
    /// Counts an attempt against each key *before* its password is checked, so attempts made
    /// at the same time all count; refuses it (with the wait) when a key has used up its
    /// attempts in the window.
    fn begin(&self, keys: &[String]) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < FAILURE_WINDOW);
        }
        let wait = keys.iter().find_map(|k| {
            let (n, since) = map.get(k)?;
            let age = since.elapsed();
            (*n >= MAX_FAILURES && age < FAILURE_WINDOW).then(|| FAILURE_WINDOW - age)
        });
        if let Some(wait) = wait {
            return Err(wait);
        }
        for k in keys {
            let e = map.entry(k.clone()).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURE_WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
        Ok(())
    }

    /// A right password: the user's count starts over; an address's count only takes this
    /// attempt back (one account's good login must not wipe the guesses made from the same
    /// address at other accounts).
    /// The keys an attempt from `ip` as `user` counts against: the address, and the user — or,
    /// from an address the user has logged in from before, that pair alone, so failures sent
    /// from elsewhere lock out guessers but not the user's own address.
    fn keys(&self, ip: IpAddr, user: &str) -> [String; 2] {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.iter().any(|(i, u)| *i == ip && u == user) {
            [format!("ip:{ip}"), format!("pair:{ip} {user}")]
        } else {
            [format!("ip:{ip}"), format!("user:{user}")]
        }
    }

    /// The keys of an OAuth sign-in: as [`LoginLimiter::keys`], but a known pair alone.
    fn oauth_keys(&self, ip: IpAddr, user: &str) -> Vec<String> {
        let [a, b] = self.keys(ip, user);
        if b.starts_with("pair:") {
            vec![b]
        } else {
            vec![a, b]
        }
    }

    /// Remembers that `user` logged in from `ip`.
    fn remember(&self, ip: IpAddr, user: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = known.iter().position(|(a, u)| *a == ip && u == user) {
            known.remove(i);
        } else if known.len() >= KNOWN_PAIRS {
            known.pop_front();
        }
        known.push_back((ip, user.to_string()));
    }

    fn succeed(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if k.starts_with("user:") || k.starts_with("pair:") {
                map.remove(k);
            } else if let Some((n, _)) = map.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

fn too_many_attempts(wait: Duration) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!(
            "too many failed password attempts; try again in {} s",
            wait.as_secs() + 1
        ),
    )
}

/// Password hashes computed at once (each takes tens of MiB and most of a core for a while).
const HASHING_AT_ONCE: usize = 2;
/// How long a password check waits for its turn before the server says it is busy.
const HASHING_WAIT: Duration = Duration::from_secs(10);

/// Runs a password hash or check off the async threads, at most [`HASHING_AT_ONCE`] at a time,
/// so a burst of logins cannot take the server's memory or every core.
pub(crate) async fn hashing<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHING_AT_ONCE);
    hashing_in(&PERMITS, f).await
}

/// Password checks of the OAuth sign-in pages: a pool of their own, so a flood of them cannot
/// keep the console's logins waiting.
static OAUTH_HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

async fn hashing_in<T: Send + 'static>(
    permits: &'static tokio::sync::Semaphore,
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let _permit = tokio::time::timeout(HASHING_WAIT, permits.acquire())
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many password checks at once; try again shortly",
            )
        })?
        .map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

/// A user's sign-in on a proxy's OAuth page: the same limits and constant-time check as a
/// console login, a failure audited as one (`auth.login_failed`, `via: oauth`), counted apart
/// from console logins and hashed in a pool of its own, so guesses sent to a proxy lock out
/// neither the console nor its administrators. The grant (`oauth.authorize`) is audited by the
/// authorization server when it issues the code. Any role may authorize a client; `Err` is the
/// message for the sign-in page.
pub(crate) async fn oauth_sign_in(
    state: &AppState,
    username: &str,
    password: &str,
    ip: IpAddr,
    client: &str,
    proxy: &str,
) -> Result<palisade_gateway::oauth::SignedIn, String> {
    let user = oauth_check(state, username, password, ip, Some((client, proxy))).await?;
    // The grant itself is audited by the authorization server once its code exists.
    Ok(palisade_gateway::oauth::SignedIn {
        user: palisade_core::oauth::UserStamp {
            id: user.id,
            updated_at: user.updated_at,
        },
        must_change_password: user.must_change_password,
    })
}

/// A user replaces the password an administrator set, on the OAuth sign-in page.
pub(crate) async fn oauth_change_password(
    state: &AppState,
    username: &str,
    current: &str,
    new: &str,
    ip: IpAddr,
) -> Result<palisade_core::oauth::UserStamp, String> {
    if let Some(why) = crate::users::password_problem(new) {
        return Err(format!("The new password {why}."));
    }
    if new == current {
        return Err("The new password must differ from the current one.".into());
    }
    if new.chars().count() > MAX_PASSWORD {
        return Err("Passwords are at most 1024 characters.".into());
    }
    let user = oauth_check(state, username, current, ip, None).await?;
    if !user.must_change_password {
        return Err(
            "Only a password an administrator set is changed here; sign in with yours.".into(),
        );
    }
    let busy = |e: String| {
        tracing::warn!(error = %e, "OAuth sign-in: password change failed");
        "The gateway cannot change passwords now; try again shortly.".to_string()
    };
    let new = new.to_string();
    let hash = hashing_in(&OAUTH_HASHING, move || hash_password(&new))
        .await
        .map_err(|e| busy(e.message))?
        .map_err(|e| busy(e.to_string()))?;
    let actor = Actor {
        name: username.to_string(),
        request_id: None,
    };
    state
        .store
        .set_password(username, hash, actor)
        .await
        .map_err(|e| busy(e.to_string()))?;
    let user = state
        .store
        .user_by_name(username)
        .await
        .map_err(|e| busy(e.to_string()))?
        .ok_or_else(|| "Wrong user name or password.".to_string())?;
    Ok(palisade_core::oauth::UserStamp {
        id: user.id,
        updated_at: user.updated_at,
    })
}

/// Checks a password for the OAuth pages (audited as a sign-in when `grant` names its client
/// and proxy).
async fn oauth_check(
    state: &AppState,
    username: &str,
    password: &str,
    ip: IpAddr,
    grant: Option<(&str, &str)>,
) -> Result<palisade_store::UserRow, String> {
    let wrong = || "Wrong user name or password.".to_string();
    if username.chars().count() > MAX_LOGIN_NAME || password.chars().count() > MAX_PASSWORD {
        return Err(wrong());
    }
    let limiter = &state.oauth_limiter;
    // From an address the user signed in from before, only that pair counts: guesses at other
    // names from the same address (everyone behind one TLS terminator) do not lock them out.
    let keys = limiter.oauth_keys(ip, username);
    limiter.begin(&keys).map_err(|wait| {
        format!(
            "Too many failed password attempts; try again in {} s.",
            wait.as_secs() + 1
        )
    })?;
    let unavailable = |e: String| {
        tracing::warn!(error = %e, "OAuth sign-in could not be checked");
        "The gateway cannot check passwords now; try again shortly.".to_string()
    };
    let user = state
        .store
        .user_by_name(username)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| state.dummy_hash.clone());
    let pw = password.to_string();
    let ok = hashing_in(&OAUTH_HASHING, move || verify_password(&pw, &phc))
        .await
        .map_err(|e| unavailable(e.message))?;
    let mut detail = serde_json::json!({"ip": ip.to_string(), "via": "oauth"});
    if let Some((client, proxy)) = grant {
        detail["client_id"] = client.into();
        detail["proxy"] = proxy.into();
    }
    let Some(user) = user.filter(|_| ok) else {
        let actor = Actor {
            name: "anonymous".into(),
            request_id: None,
        };
        let _ = state
            .store
            .record_event(actor, "auth.login_failed", "user", username, Some(detail))
            .await;
        return Err(wrong());
    };
    limiter.succeed(&keys);
    limiter.remember(ip, &user.username);
    Ok(user)
}

/// Longest user name and password a login may carry (user names are 1–64 characters).
const MAX_LOGIN_NAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

/// Login request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Login answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Bearer token for `Authorization: Bearer <token>`.
    pub token: String,
    /// Expiry, Unix ms.
    pub expires_at: i64,
    /// Role of the user.
    pub role: String,
    /// The password was generated and must be changed before anything else.
    pub must_change_password: bool,
}

/// Log in with user name and password; returns a bearer token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(rid): axum::Extension<RequestId>,
    ValidJson(req): ValidJson<LoginRequest>,
) -> ApiResult<(
    axum::response::AppendHeaders<[(axum::http::HeaderName, String); 2]>,
    Json<LoginResponse>,
)> {
    // No user has a longer name: refused before anything is counted, checked or recorded.
    if req.username.chars().count() > MAX_LOGIN_NAME {
        return Err(ApiError::field(
            "username",
            "is longer than any user name (64 characters)",
        ));
    }
    if req.password.chars().count() > MAX_PASSWORD {
        return Err(ApiError::field(
            "password",
            "is longer than 1024 characters",
        ));
    }
    let ip: IpAddr = peer.ip();
    let keys = state.limiter.keys(ip, &req.username);
    state.limiter.begin(&keys).map_err(too_many_attempts)?;
    let user = state.store.user_by_name(&req.username).await?;
    // Verify against a dummy hash for unknown users so timing does not reveal which names exist.
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| state.dummy_hash.clone());
    let password = req.password;
    let ok = hashing(move || verify_password(&password, &phc)).await?;
    let Some(user) = user.filter(|_| ok) else {
        // Nobody is signed in: the row's actor is not the name a stranger typed (it could
        // read `config` or `admin`); the name is its target.
        let actor = Actor {
            name: "anonymous".into(),
            request_id: Some(rid.0.clone()),
        };
        let _ = state
            .store
            .record_event(
                actor,
                "auth.login_failed",
                "user",
                &req.username,
                Some(serde_json::json!({"ip": ip.to_string()})),
            )
            .await;
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    state.limiter.succeed(&keys);
    if user.role == "member" {
        return Err(ApiError::forbidden(
            "a member signs in only to authorize OAuth clients of the gateway's proxies, not to the console",
        ));
    }
    state.limiter.remember(ip, &user.username);
    let exp = now_ms() + TOKEN_TTL.as_millis() as i64;
    let claims = Claims {
        sub: user.username.clone(),
        role: user.role.clone(),
        exp,
        pwc: user.must_change_password,
        pv: password_version(&user.password_hash),
    };
    let token = state
        .signer
        .sign(&serde_json::to_vec(&claims).map_err(ApiError::internal)?);
    state
        .store
        .record_event(
            Actor {
                name: user.username.clone(),
                request_id: Some(rid.0.clone()),
            },
            "auth.login",
            "user",
            &user.username,
            Some(serde_json::json!({"ip": ip.to_string()})),
        )
        .await?;
    let cookies = axum::response::AppendHeaders(session_cookies(&token));
    Ok((
        cookies,
        Json(LoginResponse {
            token,
            expires_at: exp,
            role: user.role,
            must_change_password: user.must_change_password,
        }),
    ))
}

/// Password change request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// Current password.
    pub current_password: String,
    /// New password (at least 12 characters).
    pub new_password: String,
}

/// Change the caller's own password; returns a fresh token.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn change_password(
    State(state): State<AppState>,
    AnyUser(user): AnyUser,
    headers: axum::http::HeaderMap,
    ValidJson(req): ValidJson<PasswordChange>,
) -> ApiResult<axum::response::Response> {
    if let Some(why) = crate::users::password_problem(&req.new_password) {
        return Err(ApiError::field("new_password", why));
    }
    if req.new_password == req.current_password {
        return Err(ApiError::field(
            "new_password",
            "must differ from the current password",
        ));
    }
    let row = state
        .store
        .user_by_name(&user.name)
        .await?
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    if req.current_password.chars().count() > MAX_PASSWORD
        || req.new_password.chars().count() > MAX_PASSWORD
    {
        return Err(ApiError::field(
            "new_password",
            "passwords are at most 1024 characters",
        ));
    }
    // Wrong current passwords count against the user like failed logins (a stolen token must
    // not be a way to guess the password), and are recorded.
    let keys = [format!("user:{}", user.name)];
    state.limiter.begin(&keys).map_err(too_many_attempts)?;
    let (cur, phc) = (req.current_password, row.password_hash);
    let ok = hashing(move || verify_password(&cur, &phc)).await?;
    if !ok {
        let _ = state
            .store
            .record_event(
                user.actor(),
                "auth.password_failed",
                "user",
                &user.name,
                None,
            )
            .await;
        return Err(ApiError::field("current_password", "is wrong"));
    }
    state.limiter.succeed(&keys);
    let new = req.new_password;
    let hash = hashing(move || hash_password(&new))
        .await?
        .map_err(ApiError::internal)?;
    let pv = password_version(&hash);
    state
        .store
        .set_password(&user.name, hash, user.actor())
        .await?;
    state.manager.shared().revoke_oauth_user(&user.name);
    let exp = now_ms() + TOKEN_TTL.as_millis() as i64;
    let claims = Claims {
        sub: user.name.clone(),
        role: user.role.clone(),
        exp,
        pwc: false,
        pv,
    };
    let token = state
        .signer
        .sign(&serde_json::to_vec(&claims).map_err(ApiError::internal)?);
    let body = Json(LoginResponse {
        token: token.clone(),
        expires_at: exp,
        role: user.role,
        must_change_password: false,
    });
    // A console session moves to the new token (the old one is revoked by the change).
    if bearer_header(&headers) {
        Ok(body.into_response())
    } else {
        Ok((axum::response::AppendHeaders(session_cookies(&token)), body).into_response())
    }
}

fn bearer_header(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "))
}

/// Log out: the caller's token (Bearer or session cookie) stops working and the console's
/// cookies are cleared.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204)))]
pub async fn logout(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| cookie(&headers, SESSION_COOKIE));
    // Only a live session is ended and recorded (a second logout with the same token, or one
    // with an expired token, changes nothing).
    if let Some(t) = token
        && let Some(claims) = state
            .signer
            .verify(t)
            .and_then(|p| serde_json::from_slice::<Claims>(&p).ok())
            .filter(|c| c.exp > now_ms())
        && !state.revoked.is_revoked(t, &claims.sub, claims.exp)
    {
        state.revoked.revoke(t, &claims.sub, claims.exp);
        let actor = Actor {
            name: claims.sub.clone(),
            request_id: Some(rid.0),
        };
        let _ = state
            .store
            .record_event(actor, "auth.logout", "user", &claims.sub, None)
            .await;
    }
    (
        axum::http::StatusCode::NO_CONTENT,
        axum::response::AppendHeaders([
            (
                axum::http::header::SET_COOKIE,
                format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (
                axum::http::header::SET_COOKIE,
                format!("{CSRF_COOKIE}=; Path=/; SameSite=Strict; Max-Age=0"),
            ),
        ]),
    )
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// User name.
    pub username: String,
    /// Role.
    pub role: String,
    /// The password must be changed before anything else.
    pub must_change_password: bool,
}

/// Who am I (answers also while a password change is pending, so the console can ask for it).
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", responses((status = 200, body = Me), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(AnyUser(u): AnyUser) -> Json<Me> {
    Json(Me {
        username: u.name,
        role: u.role,
        must_change_password: u.must_change_password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; palisade_session_x=no; palisade_session=tok.sig"
                .parse()
                .unwrap(),
        );
        h.append(
            axum::http::header::COOKIE,
            "palisade_csrf=abc".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok.sig"));
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        // Twice (one planted for another path): ambiguous, neither is taken.
        h.append(
            axum::http::header::COOKIE,
            "palisade_session=planted".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        assert_eq!(csrf_for("t1"), csrf_for("t1"));
        assert_ne!(csrf_for("t1"), csrf_for("t2"));
        assert_eq!(csrf_for("t1").len(), 32);
        let set = session_cookies("tok");
        assert!(set[0].1.contains("HttpOnly") && set[0].1.contains("SameSite=Strict"));
        assert!(!set[1].1.contains("HttpOnly"));
    }

    #[test]
    fn logged_out_tokens_stay_refused_until_they_expire() {
        let r = RevokedTokens::default();
        let later = now_ms() + 60_000;
        assert!(!r.is_revoked("a", "u", later));
        r.revoke("a", "u", later);
        r.revoke("old", "u", now_ms() - 1);
        assert!(r.is_revoked("a", "u", later));
        r.revoke("b", "u", later);
        assert!(
            !r.is_revoked("old", "u", now_ms() - 1),
            "expired entries are pruned"
        );
    }

    #[test]
    fn a_full_list_never_lets_a_logged_out_token_back_in() {
        let r = RevokedTokens::with_cap(1_000);
        let t0 = now_ms() + 3_600_000;
        // The victim's logged-out token, then a flood of logouts by another user.
        r.revoke("victim-token", "victim", t0);
        for i in 0..2_000 {
            r.revoke(&format!("flood-{i}"), "mallory", t0 + 1 + i);
        }
        assert!(r.is_revoked("victim-token", "victim", t0));
        // The fold refuses the victim's tokens that expire no later; newer ones still work.
        assert!(!r.is_revoked("victim-new", "victim", t0 + 10_000_000));
    }

    #[test]
    fn strangers_guessing_a_name_do_not_lock_out_its_known_address() {
        let l = LoginLimiter::default();
        let home: IpAddr = "10.0.0.1".parse().unwrap();
        let keys = l.keys(home, "admin");
        l.begin(&keys).unwrap();
        l.succeed(&keys);
        l.remember(home, "admin");
        // Ten wrong passwords for `admin` from ten addresses lock the name for new addresses...
        for i in 0..MAX_FAILURES {
            let ip: IpAddr = format!("192.0.2.{i}").parse().unwrap();
            l.begin(&l.keys(ip, "admin")).unwrap();
        }
        let stranger: IpAddr = "192.0.2.200".parse().unwrap();
        assert!(l.begin(&l.keys(stranger, "admin")).is_err());
        // ...not for the address the administrator logs in from, which keeps its own count.
        assert!(l.begin(&l.keys(home, "admin")).is_ok());
        for _ in 1..MAX_FAILURES {
            l.begin(&l.keys(home, "admin")).unwrap();
        }
        assert!(
            l.begin(&l.keys(home, "admin")).is_err(),
            "guessing from it still locks"
        );
    }

    #[test]
    fn a_good_login_does_not_wipe_an_address_s_failures() {
        let l = LoginLimiter::default();
        let keys = |user: &str| ["ip:10.0.0.9".to_string(), format!("user:{user}")];
        // Guesses at three accounts, each round ended by the guesser's own good login.
        let mut refused = false;
        'rounds: for _ in 0..4 {
            for victim in ["v1", "v2", "v3"] {
                for _ in 0..3 {
                    if l.begin(&keys(victim)).is_err() {
                        refused = true;
                        break 'rounds;
                    }
                }
            }
            l.begin(&keys("me")).unwrap();
            l.succeed(&keys("me"));
        }
        assert!(refused, "the address reaches its limit");
        // The user's own count starts over after a good login.
        let l = LoginLimiter::default();
        for _ in 0..(MAX_FAILURES - 1) {
            l.begin(&["user:u".to_string()]).unwrap();
        }
        l.begin(&["user:u".to_string()]).unwrap();
        l.succeed(&["user:u".to_string()]);
        l.begin(&["user:u".to_string()]).unwrap();
    }
}
