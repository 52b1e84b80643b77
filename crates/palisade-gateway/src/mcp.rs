//! The MCP proxy: authentication, DNS-rebinding protection, JSON-RPC validation, header/body
//! consistency, fail-closed tool approval, policy checks of tool arguments and results, and the
//! tool inventory fed by every `tools/list` answer.
//!
//! The upstream speaks Streamable HTTP. Clients speak Streamable HTTP or, through
//! `mcp_legacy.rs`, the legacy HTTP+SSE transport; both run the phases here: [`gate`],
//! [`read_body`], [`parse_post`], [`check_post`], then [`send`], which also processes the answer.
//!
//! Every decision keys on the JSON-RPC body; `Mcp-*` headers are only checked against it.

use crate::buffers::{BufferError, Held};
use crate::remembered::Locked;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use palisade_core::identity::KeyInfo;
use palisade_core::now_ms;
use palisade_core::record::RequestRecord;
use palisade_policy::Target;
use serde_json::{Value, json};

use crate::body::{EventMapper, ProxyBody};
use crate::inspect::{Findings, tool_call_text};
use crate::manager::{GatewayShared, ProxyRuntime};
use crate::mcp_tools::Kind;
use crate::redact::{RedactionMap, mask_new_everywhere, unmask_value};
use crate::sse::{for_each_event, raw_events};
use crate::upstream::{OVERHEAD_HEADER, is_json};

const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// JSON-RPC error codes the gateway answers with.
pub(crate) mod code {
    pub const PARSE: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const HEADER_MISMATCH: i64 = -32020;
    /// The requested protocol version is not one the gateway knows.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
    /// The tool is not approved (pending, quarantined or disabled).
    pub const NOT_APPROVED: i64 = -32003;
    /// A policy blocked the call or its result.
    pub const POLICY: i64 = -32002;
    /// The upstream failed, or the gateway could not reach it.
    pub const UPSTREAM: i64 = -32000;
    /// The params of a method are missing or of the wrong shape.
    pub const INVALID_PARAMS: i64 = -32602;
}

pub(crate) fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub(crate) fn json_response(
    status: StatusCode,
    v: &Value,
    request_id: &str,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// Strips an optional `:port` and IPv6 brackets from a Host value.
fn host_name(host: &str) -> &str {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    name.trim_start_matches('[').trim_end_matches(']')
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1"
}

/// Whether a `Host` header names this listener: a loopback name, the listener's own address, or
/// an operator-allowed name. A listener on every interface with no allowed names answers to any
/// Host (its API key still guards it); anything else is a DNS-rebinding attempt.
pub(crate) fn host_allowed(host: &str, listen: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let name = host_name(host);
    let listen_ip = host_name(listen);
    if is_loopback_name(name) || name == listen_ip {
        return true;
    }
    if allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
    {
        return true;
    }
    allowed.is_empty() && (listen_ip == "0.0.0.0" || listen_ip == "::")
}

/// Whether a browser `Origin` may call this listener: loopback origins and operator-allowed ones.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    is_loopback_name(host_name(rest.split('/').next().unwrap_or("")))
}

/// Per-POST context: what each request id asked for, to process its response.
#[derive(Clone, Default)]
pub(crate) struct Pending {
    by_id: HashMap<String, (String, Option<String>, bool)>,
    /// Request ids the gateway gave messages it carries in its own upstream session (era
    /// translation), with the client's ids to put back.
    rename: HashMap<String, Value>,
    /// Placeholders put into tool arguments, restored in the results.
    unmask: RedactionMap,
}

/// What to do with a POST after the gateway's checks.
pub(crate) enum PostOutcome {
    /// Answer the client directly (every request in it was refused).
    Answer(Value),
    /// Forward it: the body rewritten when tool arguments were redacted, and the message as
    /// forwarded.
    Forward(Option<Bytes>, Value),
}

/// A refusal before or instead of the upstream: HTTP status and a JSON-RPC error body.
pub(crate) type Refusal = (StatusCode, Value);

fn refuse(status: StatusCode, code: i64, msg: &str) -> Refusal {
    (status, rpc_error(&Value::Null, code, msg))
}

/// An upstream failure as the answer to the request it concerns: with the request's id when the
/// message carried exactly one request, so the client can match the error to it.
fn refuse_pending(pending: &Pending, status: StatusCode, msg: &str) -> Refusal {
    let id = match pending.by_id.keys().next() {
        Some(id) if pending.by_id.len() == 1 => serde_json::from_str(id).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, rpc_error(&id, code::UPSTREAM, msg))
}

/// Serves one request on an MCP proxy: the legacy HTTP+SSE routes, or Streamable HTTP.
pub async fn handle(
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if let Some(route) = crate::mcp_legacy::route(&req) {
        return Ok(crate::mcp_legacy::handle(route, shared, rt, req, peer).await);
    }
    let t0 = Instant::now();
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut rec = new_record(&rt, req.method(), req.uri().path(), peer, session);
    rec.trace_parent = trace_parent(req.headers());
    let challenge = unauthorized_challenge(&rt, req.headers());
    let mut findings = Findings::default();
    let result = serve(&shared, &rt, req, &mut rec, &mut findings, t0).await;
    Ok(with_challenge(
        finish(&shared, rec, findings, t0, result),
        challenge,
    ))
}

/// A proxy with OAuth names its protected-resource metadata in a `401`'s `WWW-Authenticate`
/// (RFC 9728 §5.1), so an MCP client finds where to sign its user in.
pub(crate) fn unauthorized_challenge(
    rt: &ProxyRuntime,
    headers: &http::HeaderMap,
) -> Option<HeaderValue> {
    if !rt.spec.oauth {
        return None;
    }
    let presented = headers.contains_key(http::header::AUTHORIZATION);
    crate::oauth::challenge(rt, headers, presented)
}

/// Adds the challenge to a `401`.
pub(crate) fn with_challenge(
    mut resp: Response<ProxyBody>,
    challenge: Option<HeaderValue>,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::UNAUTHORIZED
        && let Some(c) = challenge
    {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, c);
    }
    resp
}

/// A request's valid W3C `traceparent` header (for the trace export); two of them are none
/// (W3C Trace Context: the caller's context is then invalid).
pub(crate) fn trace_parent(headers: &http::HeaderMap) -> Option<String> {
    let mut all = headers.get_all("traceparent").iter();
    let first = all.next();
    if all.next().is_some() {
        return None;
    }
    first
        .and_then(|v| v.to_str().ok())
        .filter(|v| palisade_core::otlp::parse_traceparent(v).is_some())
        .map(|v| v.trim().to_string())
}

/// A request record for a message on `rt`, before anything is known of its body.
pub(crate) fn new_record(
    rt: &ProxyRuntime,
    method: &Method,
    path: &str,
    peer: SocketAddr,
    session: Option<String>,
) -> RequestRecord {
    RequestRecord {
        id: palisade_core::crypto::record_id(),
        ts_ms: now_ms(),
        proxy: rt.spec.name.clone(),
        api: "mcp".into(),
        method: method.to_string(),
        path: path.chars().take(512).collect(),
        endpoint: method.as_str().to_lowercase(),
        client: peer.to_string(),
        session,
        ..Default::default()
    }
}

/// Turns the outcome of a request into the client's response and writes the request record,
/// unless a streaming relay took it over (it records when the stream ends).
pub(crate) fn finish(
    shared: &GatewayShared,
    mut rec: RequestRecord,
    findings: Findings,
    t0: Instant,
    result: Result<Response<ProxyBody>, Refusal>,
) -> Response<ProxyBody> {
    let mut resp = match result {
        Ok(r) => r,
        Err((status, body)) => {
            rec.status = status.as_u16();
            rec.error = body["error"]["message"].as_str().map(str::to_string);
            json_response(status, &body, &rec.id)
        }
    };
    if !rec.id.is_empty() {
        if rec.status == 0 {
            rec.status = resp.status().as_u16();
        }
        rec.latency_us = t0.elapsed().as_micros() as i64;
        if rec.overhead_us == 0 {
            rec.overhead_us = rec.latency_us;
        }
        // Answers the gateway gave itself (refusals, cards, session replies) say its time too.
        resp.headers_mut()
            .entry(OVERHEAD_HEADER)
            .or_insert_with(|| HeaderValue::from(rec.overhead_us.max(0) as u64));
        findings.finalize(&mut rec, shared.alert.as_ref());
        (shared.record)(rec);
    }
    resp
}

/// Most Streamable HTTP sessions whose opening key the gateway remembers; past it the oldest
/// is forgotten (and bound again to the next key that uses it).
const MAX_SESSION_OWNERS: usize = 20_000;

/// Most tasks (the tasks extension) whose key and tool the gateway remembers; past it the
/// oldest is forgotten, and its `tasks/*` requests are refused as for an unknown task.
const MAX_TASKS: usize = 20_000;

/// Which API key opened each Streamable HTTP session (`Mcp-Session-Id`) on each proxy: a session
/// belongs to the key that opened it, as on the legacy transport. A session the gateway does not
/// know (opened before a restart, or forgotten) is bound to the first key that uses it.
pub(crate) struct SessionOwners(Locked<String>);

impl Default for SessionOwners {
    fn default() -> Self {
        SessionOwners(Locked::new(MAX_SESSION_OWNERS))
    }
}

impl SessionOwners {
    /// Whether `key` may use `session` on `proxy`: the session is its own, or not known.
    pub(crate) fn allows(&self, proxy: &str, session: &str, key: &str) -> bool {
        self.0
            .lock()
            .get(proxy, session)
            .is_none_or(|owner| owner == key)
    }

    /// Whether `key` may use `session` on `proxy`; binds the session to it when it is new.
    pub(crate) fn claim(&self, proxy: &str, session: &str, key: &str) -> bool {
        let mut t = self.0.lock();
        // Key ids are not secret; comparing them reveals nothing a caller does not hold.
        if let Some(owner) = t.get(proxy, session) {
            return owner == key;
        }
        t.insert(proxy, session, key.to_string());
        true
    }

    /// Forgets a session that was ended.
    pub(crate) fn forget(&self, proxy: &str, session: &str) {
        self.0.lock().remove(proxy, session);
    }
}

/// Most sessions with requests left open on a stream the upstream closed early.
const MAX_RESUMABLE: usize = 20_000;

/// Requests whose answers may come on a resumed stream: when an upstream closes a POST's event
/// stream with requests unanswered and its events had ids, the client resumes it with a GET
/// carrying `Last-Event-ID`, and the answers arrive there. They are checked against these
/// requests as they would have been on the POST's stream (an answer to no open request is
/// withheld).
pub(crate) struct Resumable(Locked<Pending>);

impl Default for Resumable {
    fn default() -> Self {
        Resumable(Locked::new(MAX_RESUMABLE))
    }
}

impl Resumable {
    /// Keeps `open` (the unanswered requests of a stream) for the session's next resumption.
    fn keep(&self, proxy: &str, session: &str, open: Pending) {
        let mut t = self.0.lock();
        let mut merged = t.remove(proxy, session).unwrap_or_default();
        merged.by_id.extend(open.by_id);
        merged.rename.extend(open.rename);
        if merged.unmask.is_empty() {
            merged.unmask = open.unmask;
        }
        t.insert(proxy, session, merged);
    }

    /// Whether request `id` of the session still waits for its answer on a stream to resume.
    fn is_open(&self, proxy: &str, session: &str, id: &str) -> bool {
        self.0
            .lock()
            .get(proxy, session)
            .is_some_and(|p| p.by_id.contains_key(id))
    }

    /// The requests a resumed stream of the session may answer.
    fn take(&self, proxy: &str, session: &str) -> Pending {
        self.0.lock().remove(proxy, session).unwrap_or_default()
    }
}

/// Tasks (the `io.modelcontextprotocol/tasks` extension) an upstream created for a `tools/call`
/// through the gateway: the key that made the call and the tool. Only that key may reach a task
/// (`tasks/get`, `tasks/update`, `tasks/cancel`), only while the tool is approved, and its
/// result is checked like the call's would have been. A request for a task the gateway did not
/// see created (before a restart, forgotten, or none at all) goes to the upstream, whose error
/// (unknown task, extension not declared, method removed) the client gets; a result for it is
/// withheld: nothing says whose task it is or which tool made it.
pub(crate) struct TaskOwners(Locked<(String, String)>);

impl Default for TaskOwners {
    fn default() -> Self {
        TaskOwners(Locked::new(MAX_TASKS))
    }
}

impl TaskOwners {
    fn record(&self, proxy: &str, task: &str, key: &str, tool: &str) {
        self.0
            .lock()
            .insert(proxy, task, (key.to_string(), tool.to_string()));
    }

    /// The key that created `task` on `proxy`, and its tool.
    fn lookup(&self, proxy: &str, task: &str) -> Option<(String, String)> {
        self.0.lock().get(proxy, task).cloned()
    }
}

async fn serve(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    req: Request<Incoming>,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    t0: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    let key = gate(shared, rt, req.headers(), rec)?;
    findings.set_caller(&key.id);
    let proxy = rt.spec.name.as_str();
    if let Some(s) = rec.session.as_deref()
        && !shared.session_owners.allows(proxy, s, &key.id)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            "this session was opened with another API key",
        ));
    }
    let ending = req.method() == Method::DELETE;
    let resp = serve_checked(shared, rt, req, rec, findings, t0).await?;
    // A session the upstream just opened belongs to this key, and so does one the gateway did
    // not know that the upstream accepted (opened before a restart, or forgotten); session ids
    // the upstream refuses are never remembered (they would crowd out real ones).
    if let Some(s) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        shared.session_owners.claim(proxy, s, &key.id);
    } else if resp.status().is_success()
        && !ending
        && let Some(s) = rec.session.as_deref()
    {
        shared.session_owners.claim(proxy, s, &key.id);
    }
    if ending
        && resp.status().is_success()
        && let Some(s) = rec.session.as_deref()
    {
        shared.session_owners.forget(proxy, s);
    }
    Ok(resp)
}

/// [`serve`] once the key and the session are checked.
async fn serve_checked(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    req: Request<Incoming>,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    t0: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query();
    match parts.method {
        Method::POST => {
            // Its bytes stay counted against the shared buffer budget until the answer is made.
            let (bytes, _held) = read_body(rt, &parts.headers, body).await?;
            let v = parse_post(&bytes)?;
            let stateless = crate::mcp_era::is_stateless_request(&parts.headers, &v);
            let mut pending = Pending::default();
            let (body, msg) =
                match check_post(shared, rt, &parts.headers, v, rec, findings, &mut pending)? {
                    PostOutcome::Answer(answer) => {
                        return Ok(json_response(StatusCode::OK, &answer, &rec.id));
                    }
                    PostOutcome::Forward(rewritten, msg) => (rewritten.unwrap_or(bytes), msg),
                };
            if stateless {
                return send_stateless(
                    shared,
                    rt,
                    &parts.headers,
                    query,
                    (body, msg),
                    pending,
                    rec,
                    findings,
                    t0,
                )
                .await;
            }
            let up = Upstream::new(Method::POST, &parts.headers, query, Some(body));
            send(shared, rt, up, pending, rec, findings, t0).await
        }
        Method::GET | Method::DELETE => {
            // A resumed stream (`Last-Event-ID`) may carry the answers its POST did not get.
            let pending = match rec.session.as_deref() {
                Some(session)
                    if parts.method == Method::GET
                        && parts.headers.contains_key("last-event-id") =>
                {
                    shared.resumable.take(&rt.spec.name, session)
                }
                _ => Pending::default(),
            };
            let up = Upstream::new(parts.method.clone(), &parts.headers, query, None);
            send(shared, rt, up, pending, rec, findings, t0).await
        }
        _ => Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            code::INVALID_REQUEST,
            "use POST, GET or DELETE",
        )),
    }
}

/// Sends a stateless-era client's message: unchanged to an upstream of the same era, or
/// translated into the gateway's own session with a session-era upstream (see `mcp_era`).
#[allow(clippy::too_many_arguments)]
async fn send_stateless(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    headers: &http::HeaderMap,
    query: Option<&str>,
    (body, msg): (Bytes, Value),
    pending: Pending,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    t0: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    use crate::mcp_era::Translation;
    let untranslatable = |e: String| {
        refuse(
            StatusCode::BAD_GATEWAY,
            code::UPSTREAM,
            &format!("cannot reach the session-era MCP server for a stateless-era client: {e}"),
        )
    };
    // A session the upstream has forgotten (404) is replaced once.
    for attempt in 0..2 {
        let t = rt
            .era
            .translate(shared, rt, headers, &msg, body.clone())
            .await
            .map_err(untranslatable)?;
        match t {
            Translation::AsIs => {
                let up = Upstream::new(Method::POST, headers, query, Some(body));
                return send(shared, rt, up, pending, rec, findings, t0).await;
            }
            Translation::NotFound(e) => {
                return Ok(json_response(StatusCode::NOT_FOUND, &e, &rec.id));
            }
            Translation::Answer(mut answer) => {
                let mut ctx = Ctx::new(shared, rt, pending, RequestRecord::default());
                ctx.process(&mut answer, rec, findings);
                return Ok(json_response(StatusCode::OK, &answer, &rec.id));
            }
            Translation::Session {
                headers: inner,
                body: inner_body,
                rename,
            } => {
                let mut pending = pending.clone();
                if let Some((ours, theirs)) = rename {
                    pending.rename.insert(ours, theirs);
                }
                let mut up = Upstream::new(Method::POST, &inner, query, Some(inner_body));
                up.hide_session = true;
                let r = send(shared, rt, up, pending, rec, findings, t0).await?;
                if r.status() == StatusCode::NOT_FOUND && attempt == 0 {
                    rt.era.drop_session().await;
                    continue;
                }
                return Ok(r);
            }
        }
    }
    Err(untranslatable(
        "the upstream keeps refusing the gateway's session".into(),
    ))
}

/// The checks every client request passes before its body is read: a request that came round
/// a proxy loop, DNS-rebinding protection (`Host`, `Origin`), the gateway key, and the key's
/// budget and rate limits.
pub(crate) fn gate(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    headers: &http::HeaderMap,
    rec: &mut RequestRecord,
) -> Result<Arc<KeyInfo>, Refusal> {
    if crate::upstream::came_round(headers) {
        return Err(refuse(
            StatusCode::LOOP_DETECTED,
            code::UPSTREAM,
            "the request came back to this gateway through its upstream (a proxy loop); check the proxy's upstream",
        ));
    }
    // DNS-rebinding protection: the upstream only sees our Host, so the check is ours.
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, &rt.spec.listen, &rt.spec.allowed_hosts) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            &format!("Host `{host}` is not allowed"),
        ));
    }
    if let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        && !origin_allowed(origin, &rt.spec.allowed_origins)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            &format!("Origin `{origin}` is not allowed"),
        ));
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let now = now_ms();
    let found = shared.keys.load().lookup(presented, now).or_else(|| {
        // An access token of a user the proxy takes (its `oauth_users` may have narrowed since).
        rt.spec
            .oauth
            .then(|| shared.oauth_tokens.lookup(presented, now))
            .flatten()
            .filter(|k| rt.spec.oauth_users.is_empty() || rt.spec.oauth_users.contains(&k.name))
    });
    let Some(key) = found else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            code::INVALID_REQUEST,
            if rt.spec.oauth {
                "missing or invalid API key or access token"
            } else {
                "missing or invalid API key"
            },
        ));
    };
    set_identity(rec, &key);
    shared
        .accounting
        .admit_on(&key, &rt.spec, shared.alert.as_ref(), rec)
        .map_err(|e| refuse(e.status(), code::INVALID_REQUEST, &e.to_string()))?;
    Ok(key)
}

/// Puts the key's identity on a request record.
pub(crate) fn set_identity(rec: &mut RequestRecord, key: &KeyInfo) {
    rec.key_id = Some(key.id.clone());
    rec.key_name = Some(key.name.clone());
    rec.group = key.group.clone();
}

/// Reads a POST body: JSON content type, within the proxy's size limit.
pub(crate) async fn read_body<B>(
    rt: &ProxyRuntime,
    headers: &http::HeaderMap,
    body: B,
) -> Result<(Bytes, Held), Refusal>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(ct) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_REQUEST,
            "Content-Type must be application/json",
        ));
    }
    let limit = rt.spec.max_body_bytes as usize;
    crate::buffers::collect(body, limit, true)
        .await
        .map_err(|e| match e {
            BufferError::TooLarge => refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_REQUEST,
                &format!("body exceeds {limit} bytes"),
            ),
            BufferError::Busy => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                code::UPSTREAM,
                "gateway busy: too many large bodies are being buffered at once; retry shortly",
            ),
            BufferError::Body(e) => refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                &format!("cannot read body: {e}"),
            ),
        })
}

/// Parses a POST body as JSON (its JSON-RPC shape is checked by [`check_post`]).
pub(crate) fn parse_post(bytes: &[u8]) -> Result<Value, Refusal> {
    crate::json::parse(bytes).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            code::PARSE,
            &format!("parse error: {e}"),
        )
    })
}

/// A request for the upstream, in Streamable HTTP terms.
pub(crate) struct Upstream<'a> {
    method: Method,
    /// The client's headers (or the legacy transport's equivalent); only `Accept`,
    /// `Content-Type`, `Last-Event-ID` and `Mcp-*` are forwarded.
    headers: &'a http::HeaderMap,
    query: Option<&'a str>,
    body: Option<Bytes>,
    /// The upstream session is the gateway's own (era translation): not shown to the client.
    hide_session: bool,
}

impl<'a> Upstream<'a> {
    pub(crate) fn new(
        method: Method,
        headers: &'a http::HeaderMap,
        query: Option<&'a str>,
        body: Option<Bytes>,
    ) -> Self {
        Self {
            method,
            headers,
            query,
            body,
            hide_session: false,
        }
    }
}

/// Sends a checked request to the upstream and processes its answer (JSON, or SSE event by
/// event): tool listings are recorded and filtered, tool results checked and unmasked.
pub(crate) async fn send(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    up: Upstream<'_>,
    pending: Pending,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    t0: Instant,
) -> Result<Response<ProxyBody>, Refusal> {
    if !rt.upstream_ready() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            -32000,
            "the MCP transport of this proxy is not running",
        ));
    }
    // Upstream request: the upstream's own Host, our credential (never the client's key). A
    // legacy SSE or stdio server is reached through the gateway's session bridge (messages, not
    // one HTTP call per request): it gets no trace context, and the request no client span.
    let direct = rt.spec.transport == palisade_core::model::McpTransport::StreamableHttp;
    let mut headers = http::HeaderMap::new();
    for (name, value) in up.headers {
        let n = name.as_str();
        if n == "accept"
            || n == "content-type"
            || n == "last-event-id"
            || n == "via"
            || n.starts_with("mcp-")
            || (direct && crate::upstream::is_trace_context(n))
        {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(http::header::HOST, rt.target.host.clone());
    headers.append(http::header::VIA, crate::upstream::via_entry().clone());
    if let Some((name, value)) = rt.upstream_auth() {
        headers.insert(name.clone(), value.clone());
    }
    let uri = rt
        .target
        .uri_for(up.query.map_or(String::new(), |q| format!("?{q}")).as_str())
        .map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                &e.to_string(),
            )
        })?;
    let timeout = Duration::from_secs(rt.spec.upstream_timeout_secs);
    let reply_to = Arc::new(ReplyTo::new(&uri, &headers, timeout));
    let pre = t0.elapsed();
    if direct {
        crate::upstream::join_trace(
            &shared.trace_upstream,
            rec,
            &mut headers,
            &rt.target.host,
            pre,
        );
    }
    let mut req = Request::new(Full::new(up.body.unwrap_or_default()));
    *req.method_mut() = up.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let hide_session = up.hide_session;
    let resp = match tokio::time::timeout(timeout, shared.client.request(req)).await {
        Err(_) => {
            return Err(refuse_pending(
                &pending,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream MCP server did not respond in time",
            ));
        }
        Ok(Err(e)) => {
            return Err(refuse_pending(
                &pending,
                StatusCode::BAD_GATEWAY,
                &format!("upstream MCP server unavailable: {e}"),
            ));
        }
        Ok(Ok(r)) => r,
    };
    let received = Instant::now();
    let (up_parts, up_body) = resp.into_parts();
    rec.status = up_parts.status.as_u16();
    crate::upstream::note_answer(rec);
    if let Some(s) = up_parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .filter(|_| !hide_session)
    {
        rec.session = Some(s.to_string());
    }
    let ct = up_parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut headers = http::HeaderMap::new();
    for (name, value) in &up_parts.headers {
        let n = name.as_str();
        if hide_session && (n == "mcp-session-id" || n == "mcp-protocol-version") {
            continue;
        }
        if matches!(
            n,
            "content-type"
                | "cache-control"
                | "mcp-session-id"
                | "mcp-protocol-version"
                | "www-authenticate"
        ) || n.starts_with("mcp-")
        {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&rec.id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    rec.overhead_us = pre.as_micros() as i64;

    if ct.starts_with("text/event-stream") {
        rec.stream = true;
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        let overhead = pre + received.elapsed();
        headers.insert(
            OVERHEAD_HEADER,
            HeaderValue::from(overhead.as_micros() as u64),
        );
        let mut ctx = Ctx::new(shared, rt, pending, identity_of(rec));
        ctx.reply_to = Some(reply_to);
        let relay =
            crate::body::checked_events(shared, rec, findings, t0, up_body, timeout, Box::new(ctx));
        let mut r = Response::new(ProxyBody::Relay(Box::new(relay)));
        *r.status_mut() = up_parts.status;
        *r.headers_mut() = headers;
        return Ok(r);
    }

    let (bytes, _held) = crate::buffers::collect(up_body, MAX_UPSTREAM_BODY, true)
        .await
        .map_err(|e| {
            let (status, msg) = match e {
                BufferError::TooLarge => (
                    StatusCode::BAD_GATEWAY,
                    format!("upstream response exceeds the limit of {MAX_UPSTREAM_BODY} bytes"),
                ),
                BufferError::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "gateway busy: too many large bodies are being buffered at once; retry shortly"
                        .to_string(),
                ),
                BufferError::Body(e) => {
                    (StatusCode::BAD_GATEWAY, format!("upstream body broke: {e}"))
                }
            };
            refuse_pending(&pending, status, &msg)
        })?;
    crate::upstream::note_answer_read(rec, t0.elapsed().saturating_sub(pre));
    // An answer to requests is checked before the client sees it; one the gateway cannot read
    // (not JSON, malformed JSON) cannot be checked, so a successful one is refused, never relayed.
    let answers_requests = !pending.by_id.is_empty();
    let single = answers_requests && rec.endpoint != "batch";
    let answered_nothing = bytes.is_empty();
    let checkable = is_json(&ct);
    let mut status = up_parts.status;
    let mut ctx = Ctx::new(shared, rt, pending, identity_of(rec));
    if answers_requests && status.is_success() && !bytes.is_empty() && !checkable {
        let msg = format!(
            "upstream MCP server answered with content type `{ct}`; only application/json and text/event-stream answers can be checked"
        );
        ctx.withheld(findings, &msg);
        return Err(refuse_pending(&ctx.pending, StatusCode::BAD_GATEWAY, &msg));
    }
    // Every JSON body is read and checked, whatever its status and whatever the client sent:
    // the answer to a notification, or an error page, can carry messages a client acts on (a
    // server request, an answer timed to beat the real one).
    let bytes = if checkable && !bytes.is_empty() {
        match crate::json::parse(&bytes) {
            Ok(mut v) => {
                let mut changed = ctx.process(&mut v, rec, findings);
                if status.is_success() {
                    changed |= ctx.complete(&mut v, findings);
                }
                // A single request whose answer was withheld fails as an upstream failure.
                if ctx.withheld_any && v.is_object() {
                    status = StatusCode::BAD_GATEWAY;
                }
                // A single request is answered by one message, not a batch of one (what is
                // left when the server's extra copies were withheld).
                if single
                    && let Value::Array(a) = &mut v
                    && a.len() == 1
                {
                    v = a.pop().unwrap_or_default();
                    changed = true;
                }
                match &v {
                    // Everything in it was withheld.
                    Value::Null => Bytes::new(),
                    Value::Array(a) if a.is_empty() => Bytes::new(),
                    _ if changed => Bytes::from(v.to_string()),
                    _ => bytes,
                }
            }
            Err(e) => {
                let msg = if status.is_success() {
                    format!("upstream MCP server answered with malformed JSON: {e}")
                } else {
                    format!(
                        "upstream MCP server answered HTTP {} with malformed JSON: {e}",
                        status.as_u16()
                    )
                };
                ctx.withheld(findings, &msg);
                return Err(refuse_pending(&ctx.pending, StatusCode::BAD_GATEWAY, &msg));
            }
        }
    } else {
        bytes
    };
    let mut unanswered = Value::Null;
    let (bytes, status) = if answers_requests
        && status.is_success()
        && answered_nothing
        && ctx.complete(&mut unanswered, findings)
    {
        // Requests "accepted" without an answer (a 202, an empty 200): each gets an error, as
        // for a stream that ends unanswered, instead of a client waiting for its own timeout.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let status = if unanswered.is_object() {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        };
        (Bytes::from(unanswered.to_string()), status)
    } else if !answers_requests && bytes.is_empty() && status.is_success() && ctx.withheld_any {
        // Notifications whose answer was withheld whole: accepted, with no body.
        headers.remove(CONTENT_TYPE);
        (bytes, StatusCode::ACCEPTED)
    } else {
        (bytes, status)
    };
    // The log says what the client got.
    rec.status = status.as_u16();
    // Time in the gateway: before the upstream call, plus after its answer arrived.
    let overhead = pre + received.elapsed();
    rec.overhead_us = overhead.as_micros() as i64;
    headers.insert(
        OVERHEAD_HEADER,
        HeaderValue::from(overhead.as_micros() as u64),
    );
    let mut r = Response::new(ProxyBody::full(bytes));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

/// Scans what a client sends a tool — a call's `arguments`, and the `inputResponses` of a call
/// retried with answers or of a `tasks/update` — with the `tool_arguments` policies. Returns the
/// refusal's message when they block.
fn scan_call(
    rt: &ProxyRuntime,
    findings: &mut Findings,
    tool: &str,
    params: Option<&Value>,
) -> Option<String> {
    let insp = rt.inspector.as_ref()?;
    let mut blocks = false;
    for field in ["arguments", "inputResponses"] {
        if let Some(v) = params.and_then(|p| p.get(field)) {
            blocks |= findings.scan(insp, Target::ToolArguments, &tool_call_text(tool, v));
        }
    }
    if !(blocks && insp.enforces()) {
        return None;
    }
    findings.set_blocked();
    Some(format!(
        "tool call blocked by policy (rules: {})",
        findings.blocking_rules()
    ))
}

/// Scans a client's answer to a server request as `tool_arguments` (it goes to the server as
/// a tool's arguments do); returns the refusal when a blocking rule matched in enforce mode.
fn scan_answer_to_server(
    rt: &ProxyRuntime,
    findings: &mut Findings,
    result: &Value,
) -> Option<String> {
    let insp = rt.inspector.as_ref()?;
    let mut text = String::new();
    crate::inspect::strings_except(result, &[], &mut text);
    if !(findings.scan(insp, Target::ToolArguments, &text) && insp.enforces()) {
        return None;
    }
    findings.set_blocked();
    Some(format!(
        "the client's answer to the MCP server was blocked by policy at the gateway (rules: {})",
        findings.blocking_rules()
    ))
}

/// Checks a `tasks/*` request: the task must be one the gateway saw this key's `tools/call`
/// create, its tool still approved (except to cancel it), and answers sent to it pass the
/// argument policies. Returns the JSON-RPC error code and message of a refusal.
fn check_task(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    method: &str,
    params: Option<&Value>,
) -> Option<(i64, String)> {
    // A request naming a task must name it as a string: a server may read another form (an
    // array, an object) as some task's id, which the ownership check below would not see.
    let task = params.and_then(|p| p.get("taskId"));
    if method != "list" && !task.is_some_and(Value::is_string) {
        return Some((
            code::INVALID_PARAMS,
            format!("`tasks/{method}` needs `params.taskId` as a string"),
        ));
    }
    // Without a task the gateway knows (`tasks/list`, one made before a restart or forgotten),
    // the upstream answers — its errors (an unknown task, a client that did not negotiate
    // tasks) are the protocol's, and a result for such a task is withheld (see
    // [`TaskOwners`]); what is sent meets the argument policies all the same.
    let task = task.and_then(Value::as_str);
    let Some((owner, tool)) = task.and_then(|t| shared.task_owners.lookup(&rt.spec.name, t)) else {
        return scan_call(rt, findings, "", params).map(|msg| (code::POLICY, msg));
    };
    let task = task.unwrap_or_default();
    // Key ids are not secret; comparing them reveals nothing a caller does not hold.
    if Some(owner.as_str()) != rec.key_id.as_deref() {
        return Some((code::INVALID_PARAMS, unknown_task(task)));
    }
    rec.tool = Some(tool.clone());
    if method != "cancel"
        && let Some(why) = shared.mcp.refusal(&rt.spec.name, &tool)
    {
        return Some((code::NOT_APPROVED, why));
    }
    scan_call(rt, findings, &tool, params).map(|msg| (code::POLICY, msg))
}

fn unknown_task(task: &str) -> String {
    format!("unknown task `{task}`: the gateway did not see a call with this key create it")
}

/// Validates a parsed POST body and applies approval and argument policies. Returns an answer to
/// send instead of forwarding, when every request in it is refused.
pub(crate) fn check_post(
    shared: &GatewayShared,
    rt: &ProxyRuntime,
    headers: &http::HeaderMap,
    mut v: Value,
    rec: &mut RequestRecord,
    findings: &mut Findings,
    pending: &mut Pending,
) -> Result<PostOutcome, Refusal> {
    let batch = v.is_array();
    let msgs: Vec<&Value> = match &v {
        Value::Array(a) if a.is_empty() => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "empty batch",
            ));
        }
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![&v],
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "body must be a JSON-RPC message",
            ));
        }
    };
    if batch && crate::mcp_headers::has_message_headers(headers) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            code::HEADER_MISMATCH,
            "header mismatch: Mcp-Method, Mcp-Name and Mcp-Param-* headers describe one message; a batch may not carry them",
        ));
    }
    let mut refusals = Vec::new();
    // Client answers to server requests (an elicitation's form, a sampling's text) that a
    // policy blocks: they go to the server as errors instead.
    let mut blocked_answers = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "`jsonrpc` must be \"2.0\"",
            ));
        }
        if let Some(id) = m.get("id")
            && !(id.is_string() || id.is_i64() || id.is_u64())
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "`id` must be a string or an integer",
            ));
        }
        let method = m.get("method").and_then(Value::as_str);
        let is_response = m.get("result").is_some() || m.get("error").is_some();
        if method.is_none() && !is_response {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "message has neither `method` nor a result",
            ));
        }
        let Some(method) = method else {
            // What the client tells the server (an elicitation's answer, a sampling result)
            // passes the argument policies, as what it sends a tool does.
            if let Some(result) = m.get("result")
                && let Some(msg) = scan_answer_to_server(rt, findings, result)
            {
                blocked_answers.push((i, msg));
            }
            continue;
        };
        let params = m.get("params");
        // (Every `tasks/*` request names its task, `tasks/result` of 2025-11-25 too, though
        // no routing header mirrors it there.)
        let name = crate::mcp_headers::name_param(method)
            .or_else(|| method.starts_with("tasks/").then_some("taskId"))
            .and_then(|k| params.and_then(|p| p.get(k)))
            .and_then(Value::as_str);
        let id = m.get("id").cloned();
        // Headers may only repeat the body; a mismatch is refused outright.
        if !batch
            && let Err(why) = crate::mcp_headers::check(headers, m, |tool| {
                shared.mcp.header_schema(&rt.spec.name, tool)
            })
        {
            return Err((
                StatusCode::BAD_REQUEST,
                rpc_error(
                    id.as_ref().unwrap_or(&Value::Null),
                    code::HEADER_MISMATCH,
                    &format!("header mismatch: {why}"),
                ),
            ));
        }
        if let Some(requested) = crate::mcp_era::unsupported_version(headers, m) {
            let mut e = rpc_error(
                id.as_ref().unwrap_or(&Value::Null),
                code::UNSUPPORTED_VERSION,
                &format!("unsupported protocol version `{requested}`"),
            );
            e["error"]["data"] = json!({"supported": rt.era.supported(), "requested": requested});
            return Err((StatusCode::BAD_REQUEST, e));
        }
        rec.endpoint = if batch {
            "batch".into()
        } else {
            method.to_string()
        };
        let full_list = method.ends_with("/list") && params.and_then(|p| p.get("cursor")).is_none();
        if let Some(id) = &id {
            let key = id.to_string();
            // Answers are matched to requests by id: two requests with one id would let the
            // answer to one pass as the other's (an unfiltered listing as a ping's answer).
            if pending.by_id.contains_key(&key) {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_REQUEST,
                    &format!("request id {id} appears more than once in the batch"),
                ));
            }
            // Nor may it reuse the id of a request still waiting on a stream to resume.
            if let Some(session) = rec.session.as_deref()
                && shared.resumable.is_open(&rt.spec.name, session, &key)
            {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_REQUEST,
                    &format!(
                        "request id {id} still waits for its answer in this session (resume its stream with Last-Event-ID)"
                    ),
                ));
            }
            pending.by_id.insert(
                key,
                (method.to_string(), name.map(str::to_string), full_list),
            );
        }
        if let Some(task_method) = method.strip_prefix("tasks/") {
            if let Some(why) = check_task(shared, rt, rec, findings, task_method, params) {
                refusals.push(rpc_error(
                    id.as_ref().unwrap_or(&Value::Null),
                    why.0,
                    &why.1,
                ));
            }
            continue;
        }
        let kind = match method {
            "tools/call" => Kind::Tool,
            "prompts/get" => Kind::Prompt,
            "resources/read" => Kind::Resource,
            _ => continue,
        };
        // What is used must be named: `params` an object with the name (or uri) as a string.
        if name.is_none() {
            let field = crate::mcp_headers::name_param(method).unwrap_or("name");
            refusals.push(rpc_error(
                id.as_ref().unwrap_or(&Value::Null),
                code::INVALID_PARAMS,
                &format!("`{method}` needs `params` with `{field}` as a string"),
            ));
            continue;
        }
        if kind != Kind::Tool {
            if let Some(why) = shared
                .mcp
                .refusal_of(&rt.spec.name, kind, name.unwrap_or(""))
            {
                refusals.push(rpc_error(
                    id.as_ref().unwrap_or(&Value::Null),
                    code::NOT_APPROVED,
                    &why,
                ));
            }
            continue;
        }
        let tool = name.unwrap_or("");
        rec.tool = Some(tool.to_string());
        if let Some(why) = shared.mcp.refusal(&rt.spec.name, tool) {
            refusals.push(rpc_error(
                id.as_ref().unwrap_or(&Value::Null),
                code::NOT_APPROVED,
                &why,
            ));
            continue;
        }
        if let Some(msg) = scan_call(rt, findings, tool, params) {
            refusals.push(rpc_error(
                id.as_ref().unwrap_or(&Value::Null),
                code::POLICY,
                &msg,
            ));
        }
    }
    if refusals.is_empty() {
        if !blocked_answers.is_empty() {
            rec.decision = Some("block".into());
            rec.error = Some(blocked_answers[0].1.clone());
            let mut items: Vec<&mut Value> = match &mut v {
                Value::Array(a) => a.iter_mut().collect(),
                other => vec![other],
            };
            for (i, msg) in &blocked_answers {
                if let Some(m) = items.get_mut(*i) {
                    let id = m.get("id").cloned().unwrap_or(Value::Null);
                    **m = rpc_error(&id, code::POLICY, msg);
                }
            }
        }
        let rewritten = redact_arguments(rt, &mut v, pending);
        // An answer replaced by an error above is sent rewritten too.
        let rewritten = match rewritten {
            None if !blocked_answers.is_empty() => Some(Bytes::from(v.to_string())),
            r => r,
        };
        if rewritten.is_some() {
            findings.set_request_redacted(&pending.unmask);
        }
        return Ok(PostOutcome::Forward(rewritten, v));
    }
    rec.decision = Some("block".into());
    rec.error = refusals[0]["error"]["message"].as_str().map(str::to_string);
    // A batch with a refused call is refused whole: forwarding half of it would split its answer.
    if batch {
        let answers: Vec<Value> = msgs
            .iter()
            .filter_map(|m| m.get("id"))
            .map(|id| {
                refusals
                    .iter()
                    .find(|r| &r["id"] == id)
                    .cloned()
                    .unwrap_or_else(|| {
                        rpc_error(
                            id,
                            code::NOT_APPROVED,
                            "batch refused: it contains a refused tool call",
                        )
                    })
            })
            .collect();
        return Ok(PostOutcome::Answer(Value::Array(answers)));
    }
    // One message, so one refusal. A notification gets no JSON-RPC answer: its POST fails
    // with an HTTP error and the error without an id (as Streamable HTTP has it).
    let refusal = refusals.swap_remove(0);
    if msgs[0].get("id").is_none() {
        return Err((StatusCode::FORBIDDEN, refusal));
    }
    Ok(PostOutcome::Answer(refusal))
}

/// Replaces sensitive values in `tools/call` arguments (rules with action `redact` for
/// `tool_arguments`); returns the rewritten body when anything changed.
fn redact_arguments(rt: &ProxyRuntime, v: &mut Value, pending: &mut Pending) -> Option<Bytes> {
    let insp = rt.inspector.as_ref()?;
    if !insp.set.redacts(Target::ToolArguments) {
        return None;
    }
    let mut map = RedactionMap::new();
    let calls: Vec<&mut Value> = match &mut *v {
        Value::Array(a) => a.iter_mut().collect(),
        other => vec![other],
    };
    for m in calls {
        if m.get("method").is_none()
            && let Some(result) = m.get_mut("result")
        {
            // A client's answer to a server request.
            crate::redact::redact_arguments(&insp.set, result, Target::ToolArguments, &mut map);
            continue;
        }
        let method = m.get("method").and_then(Value::as_str);
        if !matches!(method, Some("tools/call" | "tasks/update" | "prompts/get")) {
            continue;
        }
        // What the client sends a tool: its arguments, and answers to its questions.
        for field in ["arguments", "inputResponses"] {
            if let Some(v) = m.get_mut("params").and_then(|p| p.get_mut(field)) {
                crate::redact::redact_arguments(&insp.set, v, Target::ToolArguments, &mut map);
            }
        }
    }
    if map.is_empty() {
        return None;
    }
    pending.unmask = map;
    Some(Bytes::from(v.to_string()))
}

/// Who a request is (id, proxy, key, group, session, tool): what alerts about its answer name.
fn identity_of(rec: &RequestRecord) -> RequestRecord {
    RequestRecord {
        id: rec.id.clone(),
        proxy: rec.proxy.clone(),
        key_id: rec.key_id.clone(),
        key_name: rec.key_name.clone(),
        group: rec.group.clone(),
        session: rec.session.clone(),
        tool: rec.tool.clone(),
        ..Default::default()
    }
}

/// What response processing needs after the request phase has returned.
struct Ctx {
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    pending: Pending,
    /// Identity of the request (id, proxy, key, group, session) for alerts raised while its
    /// answer streams, after the request record itself has moved into the relay.
    origin: RequestRecord,
    /// Request ids answered so far (JSON text), so a second answer to one is not relayed.
    answered: std::collections::HashSet<String>,
    /// Whether an answer was withheld.
    withheld_any: bool,
    /// Whether the upstream's stream gave its events ids: a client can then resume it after
    /// the upstream closes it early (and be answered on the resumed stream).
    resumable: bool,
    /// Where the gateway answers a request the server sent on its own and the policies
    /// stopped (the upstream's endpoint, with the exchange's session and credential).
    reply_to: Option<Arc<ReplyTo>>,
}

/// The upstream endpoint and headers of an exchange, for the gateway's own answers to the
/// server's requests.
struct ReplyTo {
    uri: http::Uri,
    headers: http::HeaderMap,
    timeout: Duration,
}

impl Ctx {
    fn new(
        shared: &Arc<GatewayShared>,
        rt: &Arc<ProxyRuntime>,
        pending: Pending,
        origin: RequestRecord,
    ) -> Self {
        Self {
            shared: shared.clone(),
            rt: rt.clone(),
            pending,
            origin,
            answered: Default::default(),
            withheld_any: false,
            resumable: false,
            reply_to: None,
        }
    }

    /// Processes one message or batch of responses; returns whether it changed.
    fn process(&mut self, v: &mut Value, rec: &mut RequestRecord, findings: &mut Findings) -> bool {
        match v {
            Value::Array(a) => {
                // Every message is processed (no short circuit): each may need rewriting.
                let mut changed = false;
                for m in a.iter_mut() {
                    changed |= self.process_one(m, rec, findings);
                }
                // Withheld answers (dropped as null) leave the batch.
                a.retain(|m| !m.is_null());
                changed
            }
            _ => self.process_one(v, rec, findings),
        }
    }

    /// Ids (JSON text) of the exchange's requests not answered yet.
    fn open_ids(&self) -> Vec<String> {
        self.pending
            .by_id
            .keys()
            .filter(|k| !self.answered.contains(*k))
            .cloned()
            .collect()
    }

    /// After a whole JSON answer: every request of the exchange gets exactly one answer. One the
    /// upstream did not answer (or whose answer was withheld) gets an error with its own id.
    /// Returns whether `v` changed.
    fn complete(&mut self, v: &mut Value, findings: &mut Findings) -> bool {
        let mut missing: Vec<Value> = self
            .open_ids()
            .iter()
            .filter_map(|id| serde_json::from_str::<Value>(id).ok())
            .collect();
        if missing.is_empty() {
            return false;
        }
        missing.sort_by_key(|id| id.to_string());
        let msg = "the upstream MCP server sent no answer the gateway could check for this request";
        if !self.withheld_any {
            self.withheld(findings, msg);
        }
        let errors: Vec<Value> = missing
            .iter()
            .map(|id| rpc_error(id, code::UPSTREAM, msg))
            .collect();
        match v {
            Value::Array(a) => a.extend(errors),
            Value::Null if errors.len() == 1 => {
                *v = errors.into_iter().next().unwrap_or(Value::Null);
            }
            Value::Null => *v = Value::Array(errors),
            _ => {
                let mut all = vec![v.take()];
                all.extend(errors);
                *v = Value::Array(all);
            }
        }
        true
    }

    fn process_one(
        &mut self,
        m: &mut Value,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> bool {
        // An answer to a message carried in the gateway's own session gets the client's id back.
        let renamed = match m.get("id").map(Value::to_string) {
            Some(id) if !self.pending.rename.is_empty() => match self.pending.rename.get(&id) {
                Some(theirs) => {
                    m["id"] = theirs.clone();
                    true
                }
                None => false,
            },
            _ => false,
        };
        // An error's text is checked first (its id may yet be renamed or withheld below).
        let changed = self.check_error(m, rec, findings) | self.process_answer(m, rec, findings);
        if renamed {
            let method = self
                .pending
                .by_id
                .get(&m["id"].to_string())
                .map(|p| p.0.clone())
                .unwrap_or_default();
            crate::mcp_era::to_stateless_result(&method, m);
        }
        changed || renamed
    }

    fn process_answer(
        &mut self,
        m: &mut Value,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> bool {
        let is_answer =
            m.get("method").is_none() && (m.get("result").is_some() || m.get("error").is_some());
        if !is_answer {
            return self.check_server_message(m, rec, findings);
        }
        let id = m.get("id").map(Value::to_string).unwrap_or_default();
        let matched = self.pending.by_id.get(&id).cloned();
        if matched.is_none() && m.get("result").is_none() {
            // An error the server did not tie to an open request (`id: null`, e.g. a session it
            // no longer knows, or an id of no request) carries nothing to check: it stands for
            // the one open request, if there is exactly one, and goes back under that request's
            // id (under another the client would wait for its answer forever).
            if let [only] = self.open_ids().as_slice() {
                let only = only.clone();
                self.answered.insert(only.clone());
                m["id"] = serde_json::from_str(&only).unwrap_or(Value::Null);
                return true;
            }
            if m.get("id").is_none_or(Value::is_null) {
                return false;
            }
            // An error with the id of no request, while several wait: withheld below.
        }
        let Some((method, tool, full)) = matched.filter(|_| !self.answered.contains(&id)) else {
            // An answer to no request of this exchange (an id of another type or value, a
            // second answer to one, or a replay on a stream the gateway did not open for it)
            // cannot be checked against its method: it is withheld, so nothing reaches the
            // client unchecked. The request it may have meant gets an error in its place.
            let msg = format!(
                "the upstream MCP server sent an answer with id {} that matches no open request of this exchange; the gateway withheld it",
                if id.is_empty() { "(none)" } else { id.as_str() }
            );
            self.withheld(findings, &msg);
            *m = match self.open_ids().as_slice() {
                // Exactly one request still waits: this was its answer.
                [only] => {
                    let only = only.clone();
                    self.answered.insert(only.clone());
                    let rid = serde_json::from_str(&only).unwrap_or(Value::Null);
                    rpc_error(&rid, code::UPSTREAM, &msg)
                }
                _ => Value::Null,
            };
            return true;
        };
        self.answered.insert(id.clone());
        if m.get("result").is_none() {
            return false;
        }

        match method.as_str() {
            "tools/list" | "prompts/list" | "resources/list" => {
                let (kind, field) = match method.as_str() {
                    "tools/list" => (Kind::Tool, "tools"),
                    "prompts/list" => (Kind::Prompt, "prompts"),
                    _ => (Kind::Resource, "resources"),
                };
                let Some(items) = m["result"][field].as_array() else {
                    return false;
                };
                let paged = m["result"].get("nextCursor").is_some_and(|c| !c.is_null());
                let visible = self.observe(kind, items, full && !paged);
                m["result"][field] = Value::Array(visible);
                true
            }
            // A server shared by keys lists every key's tasks: only the caller's own are shown.
            "tasks/list" => {
                let Some(tasks) = m["result"]["tasks"].as_array() else {
                    return false;
                };
                let key = rec.key_id.as_deref().unwrap_or_default();
                let own: Vec<Value> = tasks
                    .iter()
                    .filter(|t| {
                        t["taskId"].as_str().is_some_and(|id| {
                            self.shared
                                .task_owners
                                .lookup(&self.rt.spec.name, id)
                                .is_some_and(|(owner, _)| owner == key)
                        })
                    })
                    .cloned()
                    .collect();
                let changed = own.len() != tasks.len();
                m["result"]["tasks"] = Value::Array(own);
                changed
            }
            "initialize" | "server/discover" => {
                // The server's instructions reach the model like a tool description does.
                let text = m["result"].get("instructions").and_then(Value::as_str);
                let items: Vec<Value> = text
                    .map(|t| json!({"name": "instructions", "instructions": t}))
                    .into_iter()
                    .collect();
                let visible = self.observe(Kind::Instructions, &items, true);
                if text.is_some()
                    && visible.is_empty()
                    && let Some(r) = m["result"].as_object_mut()
                {
                    r.remove("instructions");
                    return true;
                }
                false
            }
            // A task's result is the call's result, fetched later: checked the same way; so are
            // a prompt's messages and a resource's contents, which go into the model's context
            // just as a tool's result does.
            "tools/call" | "tasks/get" | "tasks/update" | "tasks/cancel" | "tasks/result"
            | "prompts/get" | "resources/read" => {
                // A task made for the call: `resultType: "task"` with its fields (2026-07-28), or
                // a `task` object (2025-11-25).
                let made = if m["result"]["resultType"] == "task" {
                    m["result"]["taskId"].as_str()
                } else {
                    m["result"]["task"]["taskId"].as_str()
                };
                if method == "tools/call"
                    && let Some(task) = made
                {
                    self.shared.task_owners.record(
                        &self.rt.spec.name,
                        task,
                        rec.key_id.as_deref().unwrap_or_default(),
                        tool.as_deref().unwrap_or_default(),
                    );
                }
                if method.starts_with("tasks/") {
                    // (`tool` holds the request's `taskId`.)
                    let task = tool.as_deref().unwrap_or_default();
                    let owned = self
                        .shared
                        .task_owners
                        .lookup(&self.rt.spec.name, task)
                        .is_some_and(|(owner, _)| Some(owner.as_str()) == rec.key_id.as_deref());
                    if !owned {
                        *m = rpc_error(&m["id"], code::INVALID_PARAMS, &unknown_task(task));
                        return true;
                    }
                    if method == "tasks/update" || method == "tasks/cancel" {
                        return false;
                    }
                }
                let Some(insp) = &self.rt.inspector else {
                    return false;
                };
                let unmasking = self.rt.spec.unmask && !self.pending.unmask.is_empty();
                if unmasking {
                    unmask_value(&mut m["result"], &self.pending.unmask);
                }
                // Every string of the result: a member a chat body uses for a setting (`data`,
                // `url`, `type`…) is content in a tool's result.
                let text = server_message_text(&m["result"]);
                let blocks = findings.scan_answer(insp, Target::ToolResult, &text);
                if blocks && insp.enforces() {
                    findings.set_blocked();
                    let msg = format!(
                        "tool result blocked by policy (rules: {})",
                        findings.blocking_rules()
                    );
                    rec.decision = Some("block".into());
                    *m = rpc_error(&m["id"], code::POLICY, &msg);
                    return true;
                }
                let redacted = self.redact_result(insp, &mut m["result"], rec, findings);
                unmasking || redacted
            }
            _ => false,
        }
    }

    /// An upstream's JSON-RPC error: its `message` and `data` reach the client (and its model)
    /// like a result does, so they are checked and masked the same way. Returns whether it
    /// changed.
    fn check_error(
        &mut self,
        m: &mut Value,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> bool {
        let Some(insp) = self.rt.inspector.clone() else {
            return false;
        };
        let Some(error) = m.get_mut("error").filter(|e| e.is_object()) else {
            return false;
        };
        if self.stops(&insp, &server_message_text(error), rec, findings) {
            let code = error.get("code").cloned().unwrap_or(json!(code::UPSTREAM));
            *error = json!({"code": code, "message": format!(
                "the MCP server's error was withheld: blocked by policy at the gateway (rules: {})",
                findings.blocking_rules()
            )});
            return true;
        }
        self.mask_found(&insp, error, rec, findings)
            .unwrap_or(false)
    }

    /// Checks a request or notification the server sends on its own (`sampling/createMessage`,
    /// `elicitation/create`, log messages…): its text reaches the client's model or user just
    /// as a tool's result does, so the `tool_result` policies judge it and mask its secrets.
    /// One they block does not reach the client; a blocked request is answered to the server
    /// with the policy error, so it does not wait for an answer that never comes. Returns
    /// whether the message changed (`Null`: dropped).
    fn check_server_message(
        &mut self,
        m: &mut Value,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> bool {
        let Some(insp) = self.rt.inspector.clone() else {
            return false;
        };
        let Some(method) = m.get("method").and_then(Value::as_str) else {
            return false;
        };
        let text = m.get("params").map(server_message_text).unwrap_or_default();
        if self.stops(&insp, &text, rec, findings) {
            let msg = format!(
                "`{method}` from the MCP server blocked by policy at the gateway (rules: {})",
                findings.blocking_rules()
            );
            if let Some(id) = m.get("id").filter(|id| !id.is_null()) {
                self.refuse_upstream(id, &msg);
            }
            *m = Value::Null;
            return true;
        }
        match m.get_mut("params") {
            Some(params) => self
                .mask_found(&insp, params, rec, findings)
                .unwrap_or(false),
            None => false,
        }
    }

    /// Scans text the server sent (`tool_result` rules); true when a blocking rule matched in
    /// enforce mode, which marks the exchange blocked.
    fn stops(
        &self,
        insp: &crate::inspect::Inspector,
        text: &str,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> bool {
        if text.is_empty() || !findings.scan_answer(insp, Target::ToolResult, text) {
            return false;
        }
        if !insp.enforces() {
            return false;
        }
        findings.set_blocked();
        rec.decision = Some("block".into());
        true
    }

    /// Masks new sensitive values in what the server sent (see [`mask_new_everywhere`]; the
    /// known values are the request's) and records them. `None` when no `redact` rule on
    /// `tool_result` matched in this exchange (nothing to mask); else whether any was masked.
    fn mask_found(
        &self,
        insp: &crate::inspect::Inspector,
        v: &mut Value,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> Option<bool> {
        if !insp.set.redacts(Target::ToolResult)
            || !findings.matched(Target::ToolResult, palisade_policy::Action::Redact)
        {
            return None;
        }
        let new = mask_new_everywhere(&insp.set, v, Target::ToolResult, &self.pending.unmask);
        if new > 0 {
            rec.redactions = Some(rec.redactions.unwrap_or(0) + new as i64);
            findings.set_answer_redacted();
        }
        Some(new > 0)
    }

    /// Answers the server's request `id` with a policy error, in the background (the server
    /// takes it like any client's answer: a POST to its endpoint in the same session).
    fn refuse_upstream(&self, id: &Value, msg: &str) {
        let proxy = self.rt.spec.name.clone();
        let Some(to) = self.reply_to.clone() else {
            tracing::warn!(%proxy, "a request the MCP server sent was blocked, and this exchange has no way back to the server to say so");
            return;
        };
        let body = Bytes::from(rpc_error(id, code::POLICY, msg).to_string());
        let client = self.shared.client.clone();
        tokio::spawn(async move {
            let mut req = Request::new(Full::new(body));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = to.uri.clone();
            *req.headers_mut() = to.headers.clone();
            let why = match tokio::time::timeout(to.timeout, client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => return,
                Ok(Ok(r)) => format!("it answered {}", r.status()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "it did not answer in time".to_string(),
            };
            tracing::warn!(%proxy, error = %why, "the MCP server was not told that the gateway blocked its request");
        });
    }

    /// Masks new sensitive values in a tool's result ([`Self::mask_found`]) and, on a proxy that
    /// unmasks, restores the call's own. Returns whether it changed.
    fn redact_result(
        &self,
        insp: &crate::inspect::Inspector,
        result: &mut Value,
        rec: &mut RequestRecord,
        findings: &mut Findings,
    ) -> bool {
        let Some(masked) = self.mask_found(insp, result, rec, findings) else {
            return false;
        };
        if self.rt.spec.unmask && !self.pending.unmask.is_empty() {
            unmask_value(result, &self.pending.unmask);
        }
        masked
    }

    /// Records a listing in the inventory (persisting changes, raising alerts); returns what
    /// the client may see.
    fn observe(&self, kind: Kind, items: &[Value], full: bool) -> Vec<Value> {
        let shared = &self.shared;
        let obs = shared.mcp.observe_kind(&self.rt, kind, items, full);
        for t in obs.changed {
            (shared.tool_sink)(t);
        }
        for a in obs.alerts {
            (shared.alert)(a);
        }
        obs.visible
    }

    /// Records that an upstream answer was withheld: in the request's findings (its record
    /// shows a block with the reason) and as an alert.
    fn withheld(&mut self, findings: &mut Findings, why: &str) {
        self.withheld_any = true;
        findings.set_withheld(why);
        (self.shared.alert)(palisade_core::record::AlertRecord {
            id: palisade_core::crypto::record_id(),
            ts_ms: now_ms(),
            kind: "mcp_answer".into(),
            title: "MCP answer withheld".into(),
            category: Some("protocol".into()),
            severity: "high".into(),
            action: Some("block".into()),
            blocked: true,
            target: Some("tool_result".into()),
            proxy: Some(self.origin.proxy.clone()),
            group: self.origin.group.clone(),
            key_name: self.origin.key_name.clone(),
            request_id: Some(self.origin.id.clone()),
            message: why.to_string(),
            status: "new".into(),
            ..Default::default()
        });
    }

    /// Processes the JSON-RPC messages of a run of SSE events, keeping `id:`/`retry:` lines.
    /// Policy findings go into the request's own `findings`, so its record shows what was
    /// blocked in the stream.
    fn map_run(&mut self, run: Bytes, findings: &mut Findings) -> Bytes {
        let mut out: Vec<u8> = Vec::with_capacity(run.len());
        let mut changed = false;
        let mut scratch = self.origin.clone();
        for ev in raw_events(&run) {
            self.resumable |= has_event_id(ev);
            let mut data = None;
            let mut messages = 0;
            for_each_event(ev, |_, d| {
                messages += 1;
                data = Some(d.to_vec());
            });
            let Some(data) = data.filter(|d| !d.trim_ascii().is_empty()) else {
                // Comments, and the empty event that primes a resumable stream.
                out.extend_from_slice(ev);
                continue;
            };
            // One event carries one message; text read as several (which `raw_events` does
            // not cut) is not relayed as it came: the gateway checked only the last.
            let parsed = if messages == 1 {
                crate::json::parse(&data).map_err(|e| e.to_string())
            } else {
                Err(format!("{messages} messages in one event"))
            };
            let v = match parsed {
                Ok(mut v) => {
                    if !self.process(&mut v, &mut scratch, findings) {
                        out.extend_from_slice(ev);
                        continue;
                    }
                    if v.is_null() {
                        // A withheld answer no open request could take: the event is dropped.
                        changed = true;
                        continue;
                    }
                    v
                }
                Err(e) => {
                    // A message the gateway cannot read may still be read by a lenient client:
                    // it is replaced, never relayed unchecked.
                    let msg = format!(
                        "the upstream MCP server sent a stream message that is not valid JSON ({e}); the gateway withheld it"
                    );
                    self.withheld(findings, &msg);
                    // On a stream that answers no request (a GET stream) it could only be a
                    // message of the server's own: dropped.
                    if self.pending.by_id.is_empty() {
                        changed = true;
                        continue;
                    }
                    // With one request open it was that request's answer: the error says so
                    // with its id (a client matches errors to requests by id).
                    let id = match self.open_ids().as_slice() {
                        [only] => {
                            self.answered.insert(only.clone());
                            serde_json::from_str(only).unwrap_or(Value::Null)
                        }
                        _ => Value::Null,
                    };
                    rpc_error(&id, code::UPSTREAM, &msg)
                }
            };
            changed = true;
            // The event again, its lines read as a client reads them (any line end), written
            // with `\n`, its data replaced.
            let mut wrote_data = false;
            for l in crate::sse::lines(ev) {
                if l.starts_with(b"data:") {
                    if !wrote_data {
                        out.extend_from_slice(format!("data: {v}\n").as_bytes());
                        wrote_data = true;
                    }
                } else if !l.is_empty() {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                }
            }
            out.push(b'\n');
        }
        if changed { Bytes::from(out) } else { run }
    }
}

impl EventMapper for Ctx {
    fn map(&mut self, run: Bytes, findings: &mut Findings) -> Bytes {
        // A stream of a key revoked (or expired) since it opened carries nothing more.
        if let Some(key) = self.origin.key_id.as_deref()
            && !self.shared.key_active(key, now_ms())
        {
            return Bytes::new();
        }
        self.map_run(run, findings)
    }

    /// A stream that ended with requests unanswered: unless the client can resume it (its
    /// events had ids), each of them gets an error, so the client is not left waiting.
    fn end(&mut self) -> (Bytes, Option<String>) {
        let open = self.open_ids();
        if open.is_empty() {
            return (Bytes::new(), None);
        }
        // Answered, if at all, on the stream the client resumes (which needs a session of its
        // own: a stateless-era client has none): kept for it.
        if self.resumable
            && let Some(session) = self.origin.session.as_deref()
        {
            let mut left = self.pending.clone();
            left.by_id.retain(|id, _| open.contains(id));
            self.shared
                .resumable
                .keep(&self.rt.spec.name, session, left);
            return (Bytes::new(), None);
        }
        let msg = "the upstream MCP server ended its stream without answering this request";
        let mut out = String::new();
        for id in &open {
            let id = serde_json::from_str::<Value>(id).unwrap_or(Value::Null);
            out.push_str(&format!(
                "event: message\ndata: {}\n\n",
                rpc_error(&id, code::UPSTREAM, msg)
            ));
        }
        self.answered.extend(open);
        (Bytes::from(out), Some(msg.to_string()))
    }
}

impl ReplyTo {
    /// From the headers of the exchange's upstream request: its session, version, credential
    /// and `Via`; a JSON-RPC answer's content type.
    fn new(uri: &http::Uri, sent: &http::HeaderMap, timeout: Duration) -> Self {
        let mut headers = sent.clone();
        headers.remove("last-event-id");
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        Self {
            uri: uri.clone(),
            headers,
            timeout,
        }
    }
}

/// The text of a result or of a message the server sends on its own: every string of it (a
/// tool's content and structured content, a sampling request's system prompt and messages, an
/// elicitation's message and schema, a log entry's data) but identifiers and `_meta`.
fn server_message_text(params: &Value) -> String {
    // Every string, whatever its member is named: a client may show any of it (`_meta`, an
    // id) to its model or user, and the server chose all of it.
    let mut out = String::new();
    crate::inspect::strings_except(params, &[], &mut out);
    out
}

/// Whether an SSE event carries a non-empty `id:` field.
fn has_event_id(ev: &[u8]) -> bool {
    ev.split(|&b| b == b'\n' || b == b'\r').any(|line| {
        line.strip_prefix(b"id:")
            .is_some_and(|rest| !rest.trim_ascii().is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_message_text_reads_every_member() {
        let text = server_message_text(&json!({
            "content": [{"type": "text", "text": "shown", "mimeType": "text/plain"}],
            "_meta": {"note": "meta words"},
            "structuredContent": {"requestId": "hidden words", "_meta": {"x": "inner words"}}
        }));
        for want in ["shown", "hidden words", "inner words", "meta words"] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    #[test]
    fn hosts_and_origins() {
        let none: &[String] = &[];
        assert!(host_allowed("127.0.0.1:9300", "127.0.0.1:9300", none));
        assert!(host_allowed("localhost:9300", "127.0.0.1:0", none));
        assert!(host_allowed("LOCALHOST", "127.0.0.1:0", none));
        assert!(host_allowed("[::1]:80", "127.0.0.1:0", none));
        assert!(host_allowed("::1", "127.0.0.1:0", none));
        assert!(!host_allowed("evil.example:9300", "127.0.0.1:9300", none));
        assert!(!host_allowed("", "127.0.0.1:9300", none));
        // A wildcard listener answers to any Host until names are configured.
        assert!(host_allowed("10.0.0.5:9300", "0.0.0.0:9300", none));
        let named = ["mcp.internal".to_string(), "gw.example:8443".to_string()];
        assert!(host_allowed("mcp.internal:9300", "0.0.0.0:9300", &named));
        assert!(host_allowed("gw.example:8443", "0.0.0.0:9300", &named));
        assert!(!host_allowed("evil.example", "0.0.0.0:9300", &named));
        assert!(host_allowed("anything", "127.0.0.1:1", &["*".to_string()]));
        assert!(origin_allowed("http://localhost:3000", none));
        assert!(origin_allowed("http://[::1]:3000", none));
        assert!(!origin_allowed("https://evil.example", none));
        assert!(!origin_allowed("http://localhost.evil.example", none));
        let apps = ["https://app.example.com".to_string()];
        assert!(origin_allowed("https://app.example.com", &apps));
        assert!(!origin_allowed("http://app.example.com", &apps));
        assert!(origin_allowed("null", &["*".to_string()]));
    }
}
