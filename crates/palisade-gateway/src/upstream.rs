//! The shared upstream HTTP client and per-proxy upstream targets.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The pooled HTTP/1.1 client (TLS via rustls with the Mozilla root set compiled in).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client shared by all proxies.
pub fn build_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .build(https)
}

/// What a [`post_json`] receiver answered: its status and the start of its body (for error
/// messages).
#[derive(Debug)]
pub struct Posted {
    /// HTTP status.
    pub status: u16,
    /// At most the first 512 bytes of the answer, as text.
    pub head: String,
}

/// POSTs a JSON `body` to `url` with extra `headers`, giving up after `timeout` (connect,
/// send and answer). Reads at most 64 KiB of the answer. Errors are one line for an operator.
pub async fn post_json(
    client: &HttpClient,
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Posted, String> {
    use http_body_util::BodyExt;
    let mut req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("palisade/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut head = Vec::new();
        while head.len() < 64 * 1024 {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        head.extend_from_slice(d);
                    }
                }
                Some(Err(e)) => return Err(format!("reading the answer: {e}")),
                None => break,
            }
        }
        head.truncate(512);
        Ok(Posted {
            status,
            head: String::from_utf8_lossy(&head).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// Where a proxy sends its traffic.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    /// `Host` header value for upstream requests.
    pub host: HeaderValue,
}

impl UpstreamTarget {
    /// Parses a validated upstream base URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid upstream URL: {e}"))?;
        let scheme = uri.scheme().cloned().ok_or("upstream URL has no scheme")?;
        let authority = uri.authority().cloned().ok_or("upstream URL has no host")?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            scheme,
            authority,
            base_path,
            host,
        })
    }

    /// The upstream URI for a client path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query({
                // A base given the way SDKs take it (`https://api.openai.com/v1`) and a client
                // path with its own version (`/v1/chat/completions`) name the version once.
                let path = match (
                    self.base_path.ends_with("/v1"),
                    path_and_query.strip_prefix("/v1"),
                ) {
                    (true, Some(rest)) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
                    _ => path_and_query,
                };
                let pq = format!("{}{}", self.base_path, path);
                if pq.starts_with('/') {
                    pq
                } else {
                    format!("/{pq}")
                }
            })
            .build()
    }
}

/// This gateway's `Via` entry (`1.1 palisade-<random>`, one per process), added to every
/// upstream request: a request that comes back with it went round a loop of proxies.
pub(crate) fn via_entry() -> &'static HeaderValue {
    static VIA: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    VIA.get_or_init(|| {
        let id = palisade_core::crypto::random_token(6).to_ascii_lowercase();
        HeaderValue::from_str(&format!("1.1 palisade-{id}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 palisade"))
    })
}

/// Whether a request already passed through this gateway (its `Via` names it): a proxy whose
/// upstream leads back to it, directly or through others.
pub(crate) fn came_round(headers: &HeaderMap) -> bool {
    let Ok(mine) = via_entry().to_str() else {
        return false;
    };
    let mine = mine.trim_start_matches("1.1 ");
    headers
        .get_all(http::header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().ends_with(mine)))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus those the gateway owns on each side.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Whether a `Content-Type` value is JSON (`application/json`, any parameters, any case).
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Copies client headers for the upstream request, dropping hop-by-hop headers, `Host`,
/// the body length (recomputed), compression negotiation (the gateway reads answers), and the
/// client's credentials: a gateway key must never reach a provider.
pub fn upstream_request_headers(src: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len());
    for (name, value) in src {
        if is_hop_by_hop(name)
            || matches!(
                name.as_str(),
                "host"
                    | "content-length"
                    | "authorization"
                    | "x-api-key"
                    | "accept-encoding"
                    | "cookie"
            )
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Copies upstream response headers for the client, dropping hop-by-hop headers and, when the
/// gateway re-frames the body, `Content-Length`.
pub fn client_response_headers(src: &HeaderMap, keep_length: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len() + 4);
    for (name, value) in src {
        if is_hop_by_hop(name) || (!keep_length && name == http::header::CONTENT_LENGTH) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_joins_base_path() {
        let t = UpstreamTarget::parse("https://example.test:8443/openai/").unwrap();
        assert_eq!(
            t.uri_for("/v1/models?x=1").unwrap().to_string(),
            "https://example.test:8443/openai/v1/models?x=1"
        );
        assert_eq!(t.host, "example.test:8443");
        let v1 = UpstreamTarget::parse("https://api.example.test/v1/").unwrap();
        for (client, upstream) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/models?x=1", "/v1/models?x=1"),
            ("/chat/completions", "/v1/chat/completions"),
            ("/v1beta/models", "/v1/v1beta/models"),
        ] {
            assert_eq!(
                v1.uri_for(client).unwrap().to_string(),
                format!("https://api.example.test{upstream}"),
                "{client}"
            );
        }
    }

    #[test]
    fn credentials_and_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer pal_secret"),
        );
        h.insert("x-api-key", HeaderValue::from_static("pal_secret"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let out = upstream_request_headers(&h);
        assert!(out.get("authorization").is_none() && out.get("x-api-key").is_none());
        assert!(out.get("connection").is_none());
        assert_eq!(out.get("anthropic-version").unwrap(), "2023-06-01");
        assert_eq!(out.len(), 2);
    }
}
