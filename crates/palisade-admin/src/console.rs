//! The web console: a page and its static assets compiled into the binary, served at `/` and
//! `/ui/…` under a strict Content-Security-Policy, and the guard that refuses cross-site
//! state-changing requests.
//!
//! The console is a small single-page application of our own (vanilla JavaScript modules, no
//! framework, no CDN) that talks to the same `/api/v1` JSON API as every other client; see
//! ARCHITECTURE.md for why it is not server-rendered.

use axum::extract::{Path, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The console's policy: only our own scripts, styles, images and API; no framing, no
/// inline code, forms post only to us.
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const INDEX: &str = include_str!("../console/index.html");

/// Embedded assets: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../console/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/dom.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/pages.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/chart.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../console/favicon.svg"),
    ),
];

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The console page (login, then the application).
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// A console asset.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, body)) => page(ct, body),
        None => ApiError::not_found(format!("console asset `{name}`")).into_response(),
    }
}

/// Refuses state-changing requests that a browser marks as coming from another site, whatever
/// their credentials: `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is
/// not this server. Clients that are not browsers send neither header and are unaffected.
pub async fn cross_site_guard(req: Request, next: Next) -> Response {
    let m = req.method();
    if m == Method::GET || m == Method::HEAD || m == Method::OPTIONS {
        return next.run(req).await;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return ApiError::forbidden(format!(
            "cross-site request refused (Sec-Fetch-Site: {site})"
        ))
        .into_response();
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin = origin.to_str().unwrap_or("null");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if authority.is_none() || authority != host {
            return ApiError::forbidden(format!("cross-origin request refused (Origin: {origin})"))
                .into_response();
        }
    }
    next.run(req).await
}
