//! Palisade's control plane: the authenticated REST API under `/api/v1`, its OpenAPI document,
//! and the service operations the binary also uses to apply a config file.
#![forbid(unsafe_code)]

pub mod auth;
pub mod console;
pub mod error;
pub mod events;
pub mod identity;
pub mod json;
pub mod logs;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod oidc;
pub mod policies;
pub mod prometheus;
pub mod prompts;
pub mod proxies;
mod refs;
pub mod scans;
pub mod users;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use palisade_core::crypto::{MasterKey, TokenSigner};
use palisade_gateway::ProxyManager;
use palisade_store::Store;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ApiResult};

/// Largest admin API request body.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The request id of an admin API call (also in audit rows and the `x-request-id` header).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Everything handlers need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Persistence.
    pub store: Store,
    /// Running proxies.
    pub manager: Arc<ProxyManager>,
    /// Seals stored secrets.
    pub master: MasterKey,
    /// Signs admin tokens.
    pub signer: TokenSigner,
    /// Built-in and custom policies, and compiled sets.
    pub policies: Arc<std::sync::Mutex<policies::PolicyRegistry>>,
    /// Live events for consoles.
    pub events: Arc<events::Hub>,
    limiter: Arc<auth::LoginLimiter>,
    /// Failed sign-ins on the proxies' OAuth pages, counted apart from console logins.
    oauth_limiter: Arc<auth::LoginLimiter>,
    revoked: Arc<auth::RevokedTokens>,
    dummy_hash: String,
    /// The scrape token of `GET /metrics` (`PALISADE_METRICS_TOKEN`), if set.
    metrics_token: Option<Arc<str>>,
    /// Host names the admin API answers to besides IP addresses and `localhost`
    /// (`PALISADE_ADMIN_HOSTS`).
    admin_hosts: Arc<[String]>,
    /// The admin API's own address: no proxy may take it.
    admin_addr: Option<SocketAddr>,
    /// Alert delivery to webhooks.
    pub webhooks: Arc<webhooks::Deliveries>,
    /// The roots webhook receivers' certificates are checked against (`PALISADE_WEBHOOK_CA_FILE`).
    webhook_tls: std::sync::Arc<palisade_gateway::TlsSource>,
}

impl AppState {
    /// Builds the state; `master` also keys the token signer; `builtin` are the shipped packs.
    pub fn new(
        store: Store,
        manager: Arc<ProxyManager>,
        master: MasterKey,
        builtin: Vec<palisade_policy::Policy>,
    ) -> Result<Self, ApiError> {
        let signer = TokenSigner::new(&master, "admin-session");
        let dummy_hash =
            palisade_core::crypto::hash_password(&palisade_core::crypto::random_token(16))
                .map_err(ApiError::internal)?;
        Ok(Self {
            store,
            manager,
            master,
            signer,
            policies: Arc::new(std::sync::Mutex::new(policies::PolicyRegistry::new(
                builtin,
            ))),
            events: Default::default(),
            limiter: Default::default(),
            oauth_limiter: Default::default(),
            revoked: Default::default(),
            dummy_hash,
            metrics_token: metrics_token()?,
            admin_hosts: admin_hosts(),
            admin_addr: None,
            webhooks: Default::default(),
            webhook_tls: palisade_gateway::TlsSource::open(None, None)
                .map_err(ApiError::internal)?,
        })
    }

    /// The address the admin API is bound to (proxies may not listen there).
    pub fn with_admin_addr(mut self, addr: SocketAddr) -> Self {
        self.admin_addr = Some(addr);
        self
    }

    /// Refuses a proxy listen address that is the admin API's own.
    pub fn check_listen(&self, listen: &str) -> Result<(), ApiError> {
        match self.admin_addr {
            Some(a) if palisade_core::model::listens_clash(listen, &a.to_string()) => {
                Err(ApiError::field(
                    "listen",
                    format!("`{listen}` is the admin API's address ({a}); choose another"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks webhook receivers' certificates against `tls`'s roots (and shows them its client
    /// certificate, if it has one).
    pub fn with_webhook_tls(mut self, tls: std::sync::Arc<palisade_gateway::TlsSource>) -> Self {
        self.webhook_tls = tls;
        self
    }

    /// Uses `hub` for live events (the one the gateway's record and alert sinks feed).
    pub fn with_events(mut self, hub: Arc<events::Hub>) -> Self {
        self.events = hub;
        self
    }
}

/// `PALISADE_ADMIN_HOSTS`: comma-separated host names (no ports) the admin API answers to.
fn admin_hosts() -> Arc<[String]> {
    std::env::var("PALISADE_ADMIN_HOSTS")
        .unwrap_or_default()
        .split(',')
        .map(|h| {
            // A port written with a name (`palisade.internal:8080`) is not part of it.
            let h = h.trim();
            let h = match h.rsplit_once(':') {
                Some((name, port))
                    if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    name
                }
                _ => h,
            };
            h.trim_end_matches('.').to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty())
        .collect()
}

/// Shortest scrape token accepted.
const MIN_METRICS_TOKEN: usize = 24;

/// The scrape token of `GET /metrics` from `PALISADE_METRICS_TOKEN`: unset or empty for none;
/// a short one is refused (`serve` checks it before it touches the data directory).
pub fn metrics_token() -> Result<Option<Arc<str>>, ApiError> {
    let Ok(t) = std::env::var("PALISADE_METRICS_TOKEN") else {
        return Ok(None);
    };
    let t = t.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() < MIN_METRICS_TOKEN {
        return Err(ApiError::field(
            "PALISADE_METRICS_TOKEN",
            format!("must be at least {MIN_METRICS_TOKEN} characters"),
        ));
    }
    Ok(Some(t.into()))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Palisade admin API", description = "Control plane of the Palisade AI security gateway."),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Log in, tokens, passwords"),
        (name = "proxies", description = "Proxy instances: create, change, start, stop"),
        (name = "identity", description = "Groups and gateway API keys"),
        (name = "logs", description = "Request log and audit log"),
        (name = "policies", description = "Guardrail policies: packs, custom policies, validation, playground"),
        (name = "alerts", description = "Alerts and their status workflow"),
        (name = "spend", description = "Prices, usage and cost"),
        (name = "mcp", description = "MCP tool inventory, approval and history"),
        (name = "prompts", description = "Governance prompts injected into LLM requests"),
        (name = "scans", description = "MCP vulnerability scans of servers and of MCP proxies' upstreams"),
        (name = "webhooks", description = "Alert delivery to webhooks (JSON or Slack), signed, retried until taken"),
        (name = "oauth", description = "Clients registered with the proxies' OAuth authorization server"),
        (name = "console", description = "Web console pages and assets"),
        (name = "health", description = "Liveness")
    )
)]
struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Liveness answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the process serves.
    pub status: &'static str,
    /// Version of the binary.
    pub version: &'static str,
}

/// Liveness probe (no authentication).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Adds a request id and strict security headers to every admin response.
async fn headers_mw(mut req: Request, next: Next) -> Response {
    let id = palisade_core::crypto::random_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    // API answers get the strictest policy; console pages set their own.
    if !h.contains_key("content-security-policy") {
        h.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    resp
}

/// Gives every error the API's JSON shape, including those the router and extractors answer
/// on their own (a method a route does not have, a path that is not UTF-8), which come as
/// plain text or with no body.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let code = match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "body_too_large",
        415 => "unsupported_media_type",
        _ => "error",
    };
    let mut out = axum::response::IntoResponse::into_response(ApiError::new(status, code, message));
    for name in [axum::http::header::ALLOW, axum::http::header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Makes the document's composed schemas (`allOf`, from flattened structs such as a proxy's
/// view: its spec plus run state) valid JSON Schema: a part that says `additionalProperties:
/// false` (the spec refuses unknown fields on input) would make every real answer, which has the
/// other parts' fields too, fail validation. Such parts lose that flag (the server still refuses
/// unknown input fields; errors say so).
fn open_composites(mut doc: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn walk(v: &mut Value, refs: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Array(parts)) = o.get_mut("allOf") {
                    for part in parts.iter_mut() {
                        if let Some(r) = part.get("$ref").and_then(Value::as_str) {
                            refs.push(r.rsplit('/').next().unwrap_or("").to_string());
                        } else if let Some(p) = part.as_object_mut() {
                            p.remove("additionalProperties");
                        }
                    }
                }
                o.values_mut().for_each(|x| walk(x, refs));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, refs)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(&mut doc, &mut refs);
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for name in refs {
            if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
                s.remove("additionalProperties");
            }
        }
    }
    doc
}

/// Builds the API router and its OpenAPI document.
pub fn router(state: AppState) -> Router {
    let guard_state = state.clone();
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(prometheus::metrics))
        .routes(routes!(auth::login))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::update, users::delete))
        .routes(routes!(metrics::summary))
        .routes(routes!(events::stream))
        .routes(routes!(proxies::list, proxies::create))
        .routes(routes!(
            proxies::get,
            proxies::replace,
            proxies::patch,
            proxies::delete
        ))
        .routes(routes!(proxies::start))
        .routes(routes!(proxies::stop))
        .routes(routes!(proxies::restart))
        .routes(routes!(proxies::agent_card))
        .routes(routes!(mcp::list))
        .routes(routes!(mcp::approve))
        .routes(routes!(mcp::disable))
        .routes(routes!(mcp::history))
        .routes(routes!(identity::list_groups, identity::create_group))
        .routes(routes!(
            identity::get_group,
            identity::patch_group,
            identity::delete_group
        ))
        .routes(routes!(identity::budget))
        .routes(routes!(identity::reset_budget))
        .routes(routes!(identity::list_prices))
        .routes(routes!(identity::put_price, identity::delete_price))
        .routes(routes!(identity::usage))
        .routes(routes!(prompts::list, prompts::create))
        .routes(routes!(prompts::replace, prompts::delete))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(webhooks::replace, webhooks::delete))
        .routes(routes!(webhooks::test))
        .routes(routes!(oauth::list_clients))
        .routes(routes!(oauth::delete_client))
        .routes(routes!(oidc::list, oidc::create))
        .routes(routes!(oidc::replace, oidc::delete))
        .routes(routes!(scans::list, scans::create))
        .routes(routes!(scans::get))
        .routes(routes!(identity::list_keys, identity::create_key))
        .routes(routes!(identity::revoke_key))
        .routes(routes!(logs::requests))
        .routes(routes!(logs::audit))
        .routes(routes!(policies::list, policies::create))
        .routes(routes!(policies::get, policies::replace, policies::delete))
        .routes(routes!(policies::validate))
        .routes(routes!(policies::test))
        .routes(routes!(policies::alerts))
        .routes(routes!(policies::update_alert))
        .with_state(state)
        .split_for_parts();
    let doc = Arc::new(open_composites(
        serde_json::to_value(&api).unwrap_or(serde_json::Value::Null),
    ));
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/", axum::routing::get(console::index))
        .route("/ui/{name}", axum::routing::get(console::asset))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .layer(axum::middleware::from_fn(console::cross_site_guard))
        .layer(axum::middleware::from_fn_with_state(
            guard_state,
            console::host_guard,
        ))
        .layer(axum::middleware::from_fn(headers_mw))
}

/// Serves the admin API on `listener` until `shutdown` resolves; in-flight calls finish.
pub fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
    // Built before the future is first polled: once this returns, the admin API's start-up
    // work is done.
    let app = router(state.clone());
    serve_router(listener, state, app, shutdown)
}

async fn serve_router(
    listener: tokio::net::TcpListener,
    state: AppState,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ticker = tokio::spawn(events::ticker(state));
    let res = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    ticker.abort();
    res
}
