//! A legacy HTTP+SSE MCP session: a GET stream whose first `endpoint` event names the URL that
//! client messages are POSTed to; every server message arrives as a `message` event.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::mpsc;

use super::hub::{Inbound, Link};
use crate::mcp::rpc_error;
use crate::sse::{SseSplitter, for_each_event};
use crate::upstream::HttpClient;

/// Largest single event accepted from the server.
const MAX_EVENT: usize = 32 * 1024 * 1024;

/// Where and how to reach a legacy SSE server.
#[derive(Clone)]
pub(crate) struct SseTarget {
    pub url: Uri,
    pub host: HeaderValue,
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub client: HttpClient,
}

impl SseTarget {
    fn request(&self, method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(body));
        *r.method_mut() = method;
        *r.uri_mut() = uri;
        let h = r.headers_mut();
        h.insert(HOST, self.host.clone());
        if let Some((n, v)) = &self.auth {
            h.insert(n.clone(), v.clone());
        }
        r
    }
}

/// Resolves the `endpoint` event's URL against the SSE URL; it must stay on the same origin.
pub(crate) fn resolve_endpoint(base: &Uri, endpoint: &str) -> Result<Uri, String> {
    let endpoint = endpoint.trim();
    let same_origin = |u: &Uri| u.scheme() == base.scheme() && u.authority() == base.authority();
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        let u: Uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint `{endpoint}` is not a URL: {e}"))?;
        return if same_origin(&u) {
            Ok(u)
        } else {
            Err(format!(
                "endpoint `{endpoint}` is on another origin than the SSE stream"
            ))
        };
    }
    let path = if endpoint.starts_with('/') {
        endpoint.to_string()
    } else {
        let dir = base
            .path()
            .rsplit_once('/')
            .map_or("", |(d, _)| d)
            .to_string();
        format!("{dir}/{endpoint}")
    };
    Uri::builder()
        .scheme(base.scheme().cloned().ok_or("SSE URL has no scheme")?)
        .authority(base.authority().cloned().ok_or("SSE URL has no host")?)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("endpoint `{endpoint}`: {e}"))
}

/// Opens the stream, waits for its endpoint, and returns the link.
pub(crate) async fn connect(proxy: &str, t: &SseTarget, wait: Duration) -> Result<Link, String> {
    let mut get = t.request(Method::GET, t.url.clone(), Bytes::new());
    get.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let resp = tokio::time::timeout(wait, t.client.request(get))
        .await
        .map_err(|_| "the SSE server did not answer in time".to_string())?
        .map_err(|e| format!("cannot reach the SSE server: {e}"))?;
    let status = resp.status();
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !status.is_success() || !ct.starts_with("text/event-stream") {
        return Err(format!(
            "the SSE endpoint answered {status} with `{ct}`, not an event stream"
        ));
    }
    let mut body = resp.into_body();
    let mut splitter = SseSplitter::new(MAX_EVENT);
    // Events seen before the endpoint (unusual) are kept and delivered after it.
    let mut early: Vec<Value> = Vec::new();
    let endpoint = tokio::time::timeout(wait, async {
        loop {
            let frame = match body.frame().await {
                None => return Err("the SSE stream ended before naming its endpoint".to_string()),
                Some(Err(e)) => return Err(format!("the SSE stream broke: {e}")),
                Some(Ok(f)) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let run = splitter
                .push(data)
                .map_err(|_| "an SSE event is too large".to_string())?;
            let mut endpoint = None;
            for_each_event(&run, |name, data| match name {
                "endpoint" => endpoint = Some(String::from_utf8_lossy(data).into_owned()),
                "" | "message" => {
                    if let Ok(v) = serde_json::from_slice(data) {
                        early.push(v);
                    }
                }
                _ => {}
            });
            if let Some(e) = endpoint {
                return Ok(e);
            }
        }
    })
    .await
    .map_err(|_| "the SSE server did not name its endpoint in time".to_string())??;
    let post_uri = resolve_endpoint(&t.url, &endpoint)?;

    let (out, mut out_rx) = mpsc::channel::<Bytes>(256);
    let (in_tx, inbound) = mpsc::channel(256);

    let reader = tokio::spawn({
        let in_tx = in_tx.clone();
        async move {
            for v in early {
                let _ = in_tx.send(Inbound::Message(v)).await;
            }
            let reason = loop {
                let frame = match body.frame().await {
                    None => break "the SSE stream ended".to_string(),
                    Some(Err(e)) => break format!("the SSE stream broke: {e}"),
                    Some(Ok(f)) => f,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let run = match splitter.push(data) {
                    Ok(r) => r,
                    Err(_) => break "an SSE event is too large".to_string(),
                };
                let mut msgs = Vec::new();
                for_each_event(&run, |name, data| {
                    if name.is_empty() || name == "message" {
                        match serde_json::from_slice::<Value>(data) {
                            Ok(v) => msgs.push(v),
                            Err(_) => tracing::debug!("an SSE message event is not JSON"),
                        }
                    }
                });
                for v in msgs {
                    if in_tx.send(Inbound::Message(v)).await.is_err() {
                        return;
                    }
                }
            };
            let _ = in_tx.send(Inbound::Closed(reason)).await;
        }
    });

    let writer = tokio::spawn({
        let t = t.clone();
        let proxy = proxy.to_string();
        async move {
            while let Some(msg) = out_rx.recv().await {
                let mut post = t.request(Method::POST, post_uri.clone(), msg.clone());
                post.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let failure = match tokio::time::timeout(wait, t.client.request(post)).await {
                    Err(_) => Some("the SSE server did not accept a message in time".to_string()),
                    Ok(Err(e)) => Some(format!("cannot post to the SSE server: {e}")),
                    Ok(Ok(r)) => {
                        let status = r.status();
                        let _ = r.into_body().collect().await;
                        (!status.is_success())
                            .then(|| format!("the SSE server refused a message with {status}"))
                    }
                };
                if let Some(why) = failure {
                    tracing::warn!(proxy, "{why}");
                    // A refused request is answered here, so its caller is not left waiting.
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg)
                        && v.get("method").is_some()
                        && v.get("id").is_some_and(|i| !i.is_null())
                    {
                        let e = rpc_error(&v["id"], -32000, &why);
                        if in_tx.send(Inbound::Message(e)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });

    Ok(Link {
        out,
        inbound,
        tasks: vec![reader.abort_handle(), writer.abort_handle()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_on_the_same_origin_only() {
        let base: Uri = "http://127.0.0.1:3001/sse".parse().unwrap();
        assert_eq!(
            resolve_endpoint(&base, "/message?sessionId=abc")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:3001/message?sessionId=abc"
        );
        let nested: Uri = "http://h:1/mcp/sse".parse().unwrap();
        assert_eq!(
            resolve_endpoint(&nested, "messages?s=1")
                .unwrap()
                .to_string(),
            "http://h:1/mcp/messages?s=1"
        );
        assert!(resolve_endpoint(&base, "http://127.0.0.1:3001/m?x=1").is_ok());
        assert!(resolve_endpoint(&base, "http://evil.example/m").is_err());
        assert!(resolve_endpoint(&base, "https://127.0.0.1:3001/m").is_err());
    }
}
