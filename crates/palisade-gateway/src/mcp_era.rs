//! Era translation for MCP proxies. A client of the stateless era (2026-07-28: no `initialize`,
//! `server/discover`, the version in every request's `_meta`) may sit in front of a server that
//! only speaks the session era. The gateway probes each upstream's era once (`server/discover`)
//! and caches it; for a session-era upstream it holds one session of its own, answers
//! `server/discover` from that session's `initialize` result, and carries every stateless
//! request inside the session with a request id of its own (restored in the answer), so
//! concurrent clients never collide. Capabilities the translation cannot carry (list-changed
//! subscriptions, resource subscriptions) are not advertised to such clients.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use crate::manager::{GatewayShared, ProxyRuntime};
use crate::mcp::rpc_error;
use crate::sse::for_each_event;

/// The stateless-era protocol version the gateway speaks to clients.
pub(crate) const MODERN: &str = "2026-07-28";
/// The session-era version the gateway asks for when it initializes its own session.
const HANDSHAKE: &str = "2025-11-25";
const META_VERSION: &str = "/params/_meta/io.modelcontextprotocol~1protocolVersion";
/// Largest answer read from a probe or handshake.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The gateway's own session with a session-era upstream.
#[derive(Clone)]
struct GatewaySession {
    id: Option<HeaderValue>,
    version: HeaderValue,
    init: Value,
}

#[derive(Default)]
struct EraInner {
    /// `Some(true)`: the upstream speaks the stateless era; `Some(false)`: session era only.
    modern: Option<bool>,
    session: Option<GatewaySession>,
}

/// Per-proxy era knowledge (reset when the proxy is reconfigured).
#[derive(Default)]
pub(crate) struct EraCache {
    inner: tokio::sync::Mutex<EraInner>,
    /// Versions a stateless-era upstream named in its discover result (those the gateway knows).
    supported: std::sync::Mutex<Option<Vec<String>>>,
}

/// What to do with a client's POST.
pub(crate) enum Translation {
    /// Forward it unchanged (same era on both sides).
    AsIs,
    /// Forward this body with these headers inside the gateway's session; `rename` maps the
    /// gateway's request id back to the client's.
    Session {
        headers: HeaderMap,
        body: Bytes,
        rename: Option<(String, Value)>,
    },
    /// Answer with this message (a `server/discover` answered by the gateway).
    Answer(Value),
    /// Answer 404 with this JSON-RPC error (a method the translation does not carry).
    NotFound(Value),
}

/// Every protocol revision the gateway understands, oldest first.
pub(crate) const KNOWN_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    MODERN,
];

/// The protocol version a message asks for (`MCP-Protocol-Version`, or its `_meta`) when the
/// gateway does not know it: it cannot inspect a protocol it does not understand, so such a
/// request is refused (`-32022`, naming the versions it knows) rather than passed on unchecked.
pub(crate) fn unsupported_version(headers: &HeaderMap, msg: &Value) -> Option<String> {
    let header = headers
        .get("mcp-protocol-version")
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let meta = msg
        .pointer(META_VERSION)
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    [header, meta]
        .into_iter()
        .flatten()
        .find(|v| !KNOWN_VERSIONS.contains(&v.as_str()))
}

/// Whether a POST comes from a stateless-era client: no session, not `initialize`, and a
/// stateless-era version in `_meta` or in `MCP-Protocol-Version`.
pub(crate) fn is_stateless_request(headers: &HeaderMap, msg: &Value) -> bool {
    if headers.contains_key("mcp-session-id") || !msg.is_object() {
        return false;
    }
    if msg.get("method").and_then(Value::as_str) == Some("initialize") {
        return false;
    }
    let modern = |v: &str| v.as_bytes().first().is_some_and(u8::is_ascii_digit) && v >= "2026";
    msg.pointer(META_VERSION)
        .and_then(Value::as_str)
        .is_some_and(modern)
        || headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .is_some_and(modern)
}

/// One JSON-RPC exchange with the upstream outside any client request: status, headers and
/// the answer (from a JSON body or the first message of an event stream).
async fn exchange(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    extra: &[(&'static str, HeaderValue)],
    body: &Value,
) -> Result<(StatusCode, HeaderMap, Option<Value>), String> {
    let uri = rt.target.uri_for("").map_err(|e| e.to_string())?;
    let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(http::header::HOST, rt.target.host.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some((n, v)) = rt.upstream_auth() {
        h.insert(n.clone(), v.clone());
    }
    for (n, v) in extra {
        h.insert(*n, v.clone());
    }
    let wait = Duration::from_secs(rt.spec.upstream_timeout_secs.min(30));
    let resp = tokio::time::timeout(wait, shared.client.request(req))
        .await
        .map_err(|_| "the upstream did not answer in time".to_string())?
        .map_err(|e| format!("upstream unavailable: {e}"))?;
    let (parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let bytes = tokio::time::timeout(wait, Limited::new(body, MAX_ANSWER).collect())
        .await
        .map_err(|_| "the upstream's answer did not finish in time".to_string())?
        .map_err(|e| format!("the upstream's answer broke: {e}"))?
        .to_bytes();
    let answer = if sse {
        let mut found = None;
        for_each_event(&bytes, |_, data| {
            if found.is_none()
                && let Ok(v) = serde_json::from_slice::<Value>(data)
                && v.get("id").is_some()
                && v.get("method").is_none()
            {
                found = Some(v);
            }
        });
        found
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    Ok((parts.status, parts.headers, answer))
}

impl EraCache {
    /// Whether the upstream speaks the stateless era (probed once; a failed probe is retried
    /// next time rather than cached).
    async fn upstream_is_modern(
        &self,
        shared: &GatewayShared,
        rt: &ProxyRuntime,
    ) -> Result<bool, String> {
        let mut inner = self.inner.lock().await;
        if let Some(m) = inner.modern {
            return Ok(m);
        }
        let probe = json!({"jsonrpc": "2.0", "id": "palisade-era-probe", "method": "server/discover",
            "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": "palisade-gateway", "version": env!("CARGO_PKG_VERSION")},
                "io.modelcontextprotocol/clientCapabilities": {}}}});
        let extra = [
            ("mcp-method", HeaderValue::from_static("server/discover")),
            ("mcp-protocol-version", HeaderValue::from_static(MODERN)),
        ];
        let (_, _, answer) = exchange(shared, rt, &extra, &probe).await?;
        // The versions it names: in a discover result, or in a -32022 refusal of ours.
        let named: Vec<String> = answer
            .as_ref()
            .and_then(|a| {
                a.pointer("/result/supportedVersions")
                    .or_else(|| a.pointer("/error/data/supported"))
            })
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let modern = named.iter().any(|v| v == MODERN);
        tracing::info!(proxy = %rt.spec.name, modern, versions = ?named, "MCP upstream era probed");
        if modern {
            *self.supported.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                named
                    .into_iter()
                    .filter(|v| KNOWN_VERSIONS.contains(&v.as_str()))
                    .collect(),
            );
        }
        inner.modern = Some(modern);
        Ok(modern)
    }

    /// The gateway's session with the upstream, initialized on first use.
    async fn session(
        &self,
        shared: &GatewayShared,
        rt: &ProxyRuntime,
    ) -> Result<GatewaySession, String> {
        let mut inner = self.inner.lock().await;
        if let Some(s) = &inner.session {
            return Ok(s.clone());
        }
        let init = json!({"jsonrpc": "2.0", "id": "palisade-init", "method": "initialize", "params": {
            "protocolVersion": HANDSHAKE, "capabilities": {},
            "clientInfo": {"name": "palisade-gateway", "version": env!("CARGO_PKG_VERSION")}}});
        let (status, headers, answer) = exchange(shared, rt, &[], &init).await?;
        let result = answer
            .as_ref()
            .and_then(|a| a.get("result"))
            .cloned()
            .ok_or_else(|| format!("the upstream refused initialize ({status})"))?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
            .ok_or("the upstream's initialize result has no protocol version")?;
        let id = headers.get("mcp-session-id").cloned();
        let mut extra = vec![("mcp-protocol-version", version.clone())];
        if let Some(id) = &id {
            extra.push(("mcp-session-id", id.clone()));
        }
        let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        exchange(shared, rt, &extra, &done).await?;
        let s = GatewaySession {
            id,
            version,
            init: result,
        };
        inner.session = Some(s.clone());
        Ok(s)
    }

    /// The versions to offer a client that asked for an unknown one: those the upstream named
    /// (when it speaks the stateless era and was probed), else every version the gateway knows
    /// (it translates the stateless era for session-era servers).
    pub(crate) fn supported(&self) -> Vec<String> {
        self.supported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| KNOWN_VERSIONS.iter().map(|v| v.to_string()).collect())
    }

    /// Forgets the gateway's session (the upstream no longer knows it).
    pub(crate) async fn drop_session(&self) {
        self.inner.lock().await.session = None;
    }

    /// Decides how a stateless-era client's POST (see [`is_stateless_request`]) reaches the
    /// upstream.
    pub(crate) async fn translate(
        &self,
        shared: &GatewayShared,
        rt: &ProxyRuntime,
        headers: &HeaderMap,
        msg: &Value,
        body: Bytes,
    ) -> Result<Translation, String> {
        if self.upstream_is_modern(shared, rt).await? {
            return Ok(Translation::AsIs);
        }
        let id = msg.get("id").filter(|i| !i.is_null()).cloned();
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        if !TRANSLATED_METHODS.contains(&method) {
            return Ok(Translation::NotFound(rpc_error(
                id.as_ref().unwrap_or(&Value::Null),
                -32601,
                &format!("method not found: `{method}`"),
            )));
        }
        let session = self.session(shared, rt).await?;
        if method == "server/discover" {
            return Ok(Translation::Answer(json!({
                "jsonrpc": "2.0", "id": id.unwrap_or(Value::Null), "result": discover_result(&session.init)
            })));
        }
        let mut out = HeaderMap::new();
        for (n, v) in headers {
            out.append(n.clone(), v.clone());
        }
        out.insert("mcp-protocol-version", session.version.clone());
        if let Some(sid) = &session.id {
            out.insert("mcp-session-id", sid.clone());
        }
        let Some(client_id) = id else {
            return Ok(Translation::Session {
                headers: out,
                body,
                rename: None,
            });
        };
        let ours = Value::String(format!("palisade-{}", palisade_core::crypto::random_id()));
        let mut m = msg.clone();
        m["id"] = ours.clone();
        Ok(Translation::Session {
            headers: out,
            body: Bytes::from(m.to_string()),
            rename: Some((ours.to_string(), client_id)),
        })
    }
}

/// Methods of the stateless era the translation carries; anything else sent by a stateless-era
/// client to a session-era server is answered 404 / -32601 by the gateway, as a stateless-era
/// server would (methods the era removed, such as `ping` or `logging/setLevel`, included).
pub(crate) const TRANSLATED_METHODS: [&str; 11] = [
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "completion/complete",
    "notifications/cancelled",
    "notifications/progress",
];

/// Methods whose stateless-era results carry caching hints.
const CACHEABLE: [&str; 6] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "server/discover",
];

/// Gives a session-era answer the fields a stateless-era result must have: `resultType`, and
/// for cacheable results `cacheScope` and `ttlMs`. The gateway says "private, do not reuse":
/// what a client may see depends on its key and on approvals that change at any time.
pub(crate) fn to_stateless_result(method: &str, msg: &mut Value) {
    let Some(r) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    r.entry("resultType")
        .or_insert_with(|| Value::String("complete".into()));
    if CACHEABLE.contains(&method) {
        r.entry("cacheScope")
            .or_insert_with(|| Value::String("private".into()));
        r.entry("ttlMs").or_insert_with(|| Value::from(0));
    }
}

/// A `server/discover` result built from a session-era `initialize` result.
fn discover_result(init: &Value) -> Value {
    let mut caps = init
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    // Subscriptions are not translated: do not advertise them.
    for cap in ["tools", "prompts", "resources"] {
        if let Some(c) = caps.get_mut(cap).and_then(Value::as_object_mut) {
            c.remove("listChanged");
            c.remove("subscribe");
        }
    }
    let mut r = json!({"supportedVersions": [MODERN], "capabilities": caps, "resultType": "complete",
        "cacheScope": "private", "ttlMs": 0});
    if let Some(i) = init.get("instructions") {
        r["instructions"] = i.clone();
    }
    if let Some(info) = init.get("serverInfo") {
        r["_meta"] = json!({"io.modelcontextprotocol/serverInfo": info});
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateless_requests_are_recognised() {
        let h = HeaderMap::new();
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        assert!(is_stateless_request(&h, &call));
        let old = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
        assert!(!is_stateless_request(&h, &old));
        let mut with_session = HeaderMap::new();
        with_session.insert("mcp-session-id", HeaderValue::from_static("s"));
        assert!(!is_stateless_request(&with_session, &call));
        let mut by_header = HeaderMap::new();
        by_header.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2026-07-28"),
        );
        assert!(is_stateless_request(&by_header, &old));
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"});
        assert!(!is_stateless_request(&by_header, &init));
    }

    #[test]
    fn unknown_versions_are_named() {
        let mut h = HeaderMap::new();
        let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}}});
        assert_eq!(unsupported_version(&h, &msg).as_deref(), Some("2099-01-01"));
        h.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-06-18"),
        );
        let ok = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        assert_eq!(unsupported_version(&h, &ok), None);
        h.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("1999-01-01"),
        );
        assert_eq!(unsupported_version(&h, &ok).as_deref(), Some("1999-01-01"));
    }

    #[test]
    fn discover_result_drops_what_is_not_translated() {
        let init = json!({"protocolVersion": "2025-06-18", "instructions": "Use it well.",
            "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true, "listChanged": true}, "logging": {}},
            "serverInfo": {"name": "s", "version": "1"}});
        let d = discover_result(&init);
        assert_eq!(d["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(
            d["capabilities"],
            json!({"tools": {}, "resources": {}, "logging": {}})
        );
        assert_eq!(d["instructions"], "Use it well.");
        assert_eq!(
            d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "s"
        );
    }
}
