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

/// Refuses requests that name this server by a host name it was not given (`Host`, or the
/// authority of an HTTP/2 request): a web page whose name an attacker re-points at the
/// gateway's address (DNS rebinding) would otherwise use a visitor's browser to reach an admin
/// API bound to loopback or a private network, guess passwords and read what a token shows. IP
/// addresses, `localhost` and the names in `PALISADE_ADMIN_HOSTS` are accepted; `/healthz`
/// answers any name.
pub async fn host_guard(
    axum::extract::State(s): axum::extract::State<crate::AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host
        && !admin_host_allowed(host, &s.admin_hosts)
    {
        return ApiError::forbidden(format!(
            "host `{}` is not an address of this gateway; to reach the admin API by that name, list it in PALISADE_ADMIN_HOSTS",
            host.chars().take(200).collect::<String>()
        ))
        .into_response();
    }
    next.run(req).await
}

/// Whether `host` (`name[:port]`) may name the admin API: an IP address, `localhost` (or a
/// name under it), or a name the operator listed (`*` for any).
pub(crate) fn admin_host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        },
    };
    let name = name.trim_end_matches('.');
    if name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
    {
        return true;
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
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

#[cfg(test)]
mod host_tests {
    use super::admin_host_allowed;

    #[test]
    fn admin_hosts_are_addresses_localhost_or_listed() {
        let listed = vec!["palisade.internal".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "palisade.internal:8080",
            "Palisade.Internal",
        ] {
            assert!(admin_host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:8080",
            "attacker.example",
            "127.0.0.1.attacker.example",
            "localhost.attacker.example",
            "palisade.internal.attacker.example",
            "",
        ] {
            assert!(!admin_host_allowed(bad, &listed), "{bad}");
        }
        assert!(admin_host_allowed("anything.example", &["*".to_string()]));
    }
}
