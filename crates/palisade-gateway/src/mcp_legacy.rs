//! The legacy HTTP+SSE transport of MCP (protocol revision 2024-11-05) on the client side of an
//! MCP proxy, on the same listener as Streamable HTTP.
//!
//! `GET /sse` opens a session: its first event names the endpoint to post to
//! (`/messages?session_id=…`), and every server→client message follows as an `event: message`.
//! A `POST /messages` runs the same phases as a Streamable HTTP POST (`mcp.rs`: gate, body,
//! checks), is sent upstream as Streamable HTTP with the upstream session learned from the
//! `initialize` answer, and the processed answer is queued on the session's stream; the POST
//! itself answers 202 at once. Once `initialize` succeeds the upstream's GET stream is relayed
//! onto the session too. When the client leaves, the upstream session is deleted.
//!
//! Each session's queue is bounded: a client that does not keep up is disconnected, never
//! buffered for without limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use palisade_core::identity::KeyInfo;
use palisade_core::record::RequestRecord;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::body::{BoxError, ProxyBody};
use crate::inspect::Findings;
use crate::manager::{GatewayShared, ProxyRuntime};
use crate::mcp::{self, PostOutcome, Refusal, Upstream, code, rpc_error};
use crate::sse::{SseSplitter, for_each_event};

/// Messages a session's stream may have waiting for a slow client before it is disconnected.
const QUEUE: usize = 256;
/// A comment line keeps idle streams (and the proxies between) from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Open legacy sessions per gateway; more are refused with 503.
const MAX_SESSIONS: usize = 4096;
/// Messages of one session being forwarded at once; more are refused with 429.
const MAX_IN_FLIGHT: usize = 64;
/// Largest unfinished SSE event read from the upstream (as in the Streamable relay).
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Status recorded for a message whose client left before it was answered (nginx's 499).
const CLIENT_GONE: u16 = 499;
/// Accept header of the requests the gateway sends upstream for a legacy session.
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// What a request on an MCP listener asks of the legacy transport.
pub(crate) enum Route {
    /// `GET /sse`: open a session.
    Open,
    /// `POST /messages?session_id=…`: a message for that session.
    Message(String),
}

/// The legacy route of a request, if it is one. A `GET /sse` carrying `Mcp-Session-Id` is a
/// Streamable HTTP client's stream and a POST without a session id is Streamable HTTP too.
pub(crate) fn route<B>(req: &Request<B>) -> Option<Route> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/sse") if !req.headers().contains_key("mcp-session-id") => {
            Some(Route::Open)
        }
        (&Method::POST, "/messages") => session_param(req.uri().query()).map(Route::Message),
        _ => None,
    }
}

/// The session id of the endpoint's query (`session_id`, or `sessionId` as some SDKs write it).
fn session_param(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session_id" || k == "sessionId").then(|| v.to_string())
    })
}

/// Serves a legacy route.
pub(crate) async fn handle(
    route: Route,
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    match route {
        Route::Open => open(shared, rt, req, peer),
        Route::Message(id) => post(shared, rt, req, peer, &id).await,
    }
}

/// The open legacy sessions of every MCP proxy, by session id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    fn insert(&self, s: Arc<Session>) -> bool {
        let mut map = lock(&self.map);
        if map.len() >= MAX_SESSIONS {
            return false;
        }
        map.insert(s.id.clone(), s);
        true
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(id).cloned()
    }

    fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// Disconnects every legacy session opened with a key that `active` no longer holds
    /// (revoked, expired): revocation ends the key's open streams too.
    pub fn close_revoked(&self, active: impl Fn(&str, i64) -> bool) {
        let now = palisade_core::now_ms();
        let sessions: Vec<Arc<Session>> = lock(&self.map)
            .values()
            .filter(|s| !active(&s.key.id, now))
            .cloned()
            .collect();
        for s in sessions {
            s.disconnect();
        }
    }

    /// Disconnects every legacy session of a proxy (it is stopping).
    pub fn close_proxy(&self, proxy: &str) {
        let sessions: Vec<Arc<Session>> = lock(&self.map)
            .values()
            .filter(|s| s.proxy == proxy)
            .cloned()
            .collect();
        for s in sessions {
            s.disconnect();
        }
    }
}

/// What the gateway learned of the upstream's session from its `initialize` answer.
#[derive(Default)]
struct UpstreamState {
    session: Option<String>,
    version: Option<String>,
    listening: bool,
}

/// One client's legacy session.
pub(crate) struct Session {
    id: String,
    proxy: String,
    key: Arc<KeyInfo>,
    peer: SocketAddr,
    /// The stream's queue; its receiver lives in the client's response body.
    tx: mpsc::Sender<Bytes>,
    /// Ends the client's stream at once (a slow client, a stopping proxy).
    kill: Mutex<Option<oneshot::Sender<()>>>,
    upstream: Mutex<UpstreamState>,
    in_flight: Arc<Semaphore>,
}

impl Session {
    /// Queues one server→client message; false when the client is gone or was too slow.
    fn push(&self, data: &[u8]) -> bool {
        let mut ev = Vec::with_capacity(data.len() + 24);
        ev.extend_from_slice(b"event: message\n");
        // JSON has no raw line breaks outside whitespace; each line is one `data:` field.
        for line in data.split(|&b| b == b'\n') {
            ev.extend_from_slice(b"data: ");
            ev.extend(line.iter().filter(|&&b| b != b'\r'));
            ev.push(b'\n');
        }
        ev.push(b'\n');
        match self.tx.try_send(Bytes::from(ev)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    proxy = %self.proxy,
                    client = %self.peer,
                    queued = QUEUE,
                    "legacy SSE client does not keep up with its stream; disconnecting it"
                );
                self.disconnect();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn disconnect(&self) {
        if let Some(k) = lock(&self.kill).take() {
            let _ = k.send(());
        }
    }

    /// Resolves when the client's stream is gone.
    async fn gone(&self) {
        self.tx.closed().await
    }

    /// The Streamable HTTP headers of a request for this session: the client's own headers
    /// (checked and forwarded as for Streamable HTTP clients) with the upstream session and
    /// protocol version the gateway holds, which the client cannot choose.
    fn upstream_headers(&self, client: &HeaderMap, accept: &'static str) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(client.len() + 3);
        for (name, value) in client {
            if !matches!(
                name.as_str(),
                "mcp-session-id" | "mcp-protocol-version" | "last-event-id" | "accept"
            ) {
                h.append(name.clone(), value.clone());
            }
        }
        h.insert(ACCEPT, HeaderValue::from_static(accept));
        let up = lock(&self.upstream);
        if let Some(v) = up
            .session
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            h.insert("mcp-session-id", v);
        }
        if let Some(v) = up
            .version
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            h.insert("mcp-protocol-version", v);
        }
        h
    }

    fn upstream_session(&self) -> Option<String> {
        lock(&self.upstream).session.clone()
    }

    /// A record for a request the gateway makes on this session's behalf.
    fn record(&self, rt: &ProxyRuntime, method: &Method, path: &str) -> RequestRecord {
        let mut rec = mcp::new_record(rt, method, path, self.peer, self.upstream_session());
        mcp::set_identity(&mut rec, &self.key);
        rec
    }
}

/// `GET /sse`: checks the client like any other request, then opens its session's stream.
fn open(
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let t0 = Instant::now();
    let mut rec = mcp::new_record(&rt, req.method(), req.uri().path(), peer, None);
    rec.trace_parent = mcp::trace_parent(req.headers());
    rec.endpoint = "sse".into();
    let refused = |rec, r| mcp::finish(&shared, rec, Findings::default(), t0, Err(r));
    let key = match mcp::gate(&shared, &rt, req.headers(), &mut rec) {
        Ok(k) => k,
        Err(r) => return refused(rec, r),
    };
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    if !["text/event-stream", "text/*", "*/*"]
        .iter()
        .any(|t| accept.contains(t))
    {
        let r = (
            StatusCode::NOT_ACCEPTABLE,
            rpc_error(
                &Value::Null,
                code::INVALID_REQUEST,
                "GET /sse answers with text/event-stream",
            ),
        );
        return refused(rec, r);
    }
    let id = palisade_core::crypto::hex(&palisade_core::crypto::random_bytes::<16>());
    let (tx, rx) = mpsc::channel(QUEUE);
    let (kill_tx, kill_rx) = oneshot::channel();
    let endpoint = format!("event: endpoint\ndata: /messages?session_id={id}\n\n");
    // The queue is empty: the first event always fits.
    let _ = tx.try_send(Bytes::from(endpoint));
    let session = Arc::new(Session {
        id,
        proxy: rt.spec.name.clone(),
        key,
        peer,
        tx,
        kill: Mutex::new(Some(kill_tx)),
        upstream: Mutex::new(UpstreamState::default()),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
    });
    if !shared.legacy.insert(session.clone()) {
        let r = (
            StatusCode::SERVICE_UNAVAILABLE,
            rpc_error(
                &Value::Null,
                code::UPSTREAM,
                "too many legacy SSE sessions are open; retry later",
            ),
        );
        return refused(rec, r);
    }
    tracing::debug!(proxy = %rt.spec.name, client = %peer, "legacy SSE session opened");
    rec.status = StatusCode::OK.as_u16();
    rec.stream = true;
    rec.overhead_us = t0.elapsed().as_micros().max(1) as i64;
    let request_id = rec.id.clone();
    let stream = SessionStream {
        rx,
        kill: kill_rx,
        keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        done: false,
        closer: Some(Closer {
            shared,
            rt,
            session,
            rec,
            t0,
        }),
    };
    let mut r = Response::new(ProxyBody::Events(Box::new(stream)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    r
}

/// `POST /messages`: the checks of a Streamable HTTP POST, then 202 at once; the message is
/// forwarded and its answer queued on the session's stream in the background.
async fn post(
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    req: Request<Incoming>,
    peer: SocketAddr,
    id: &str,
) -> Response<ProxyBody> {
    let t0 = Instant::now();
    let mut rec = mcp::new_record(&rt, req.method(), req.uri().path(), peer, None);
    rec.trace_parent = mcp::trace_parent(req.headers());
    let mut findings = Findings::default();
    let msg = match accept_message(&shared, &rt, req, id, &mut rec, &mut findings).await {
        Ok(m) => m,
        Err(r) => return mcp::finish(&shared, rec, findings, t0, Err(r)),
    };
    let mut accepted = Response::new(ProxyBody::full(Bytes::new()));
    *accepted.status_mut() = StatusCode::ACCEPTED;
    if let Ok(v) = HeaderValue::from_str(&rec.id) {
        accepted.headers_mut().insert("x-request-id", v);
    }
    tokio::spawn(forward(shared, rt, msg, rec, findings, t0));
    accepted
}

/// A message that passed the checks that can answer on the POST itself.
struct Message {
    session: Arc<Session>,
    _permit: OwnedSemaphorePermit,
    headers: HeaderMap,
    body: Bytes,
    /// What the gateway's checks decided (a refusal here goes on the stream).
    outcome: Result<PostOutcome, Refusal>,
    pending: mcp::Pending,
    /// Ids and methods of the requests in the message, to answer each one on the stream.
    requests: Vec<(Value, String)>,
}

async fn accept_message(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    req: Request<Incoming>,
    id: &str,
    rec: &mut RequestRecord,
    findings: &mut Findings,
) -> Result<Message, Refusal> {
    let key = mcp::gate(shared, rt, req.headers(), rec)?;
    findings.set_caller(&key.id);
    let Some(session) = shared.legacy.get(id).filter(|s| s.proxy == rt.spec.name) else {
        return Err((
            StatusCode::NOT_FOUND,
            rpc_error(
                &Value::Null,
                code::INVALID_REQUEST,
                "unknown session; open one with GET /sse",
            ),
        ));
    };
    // Key ids are not secret; comparing them reveals nothing a caller does not already hold.
    if session.key.id != key.id {
        return Err((
            StatusCode::FORBIDDEN,
            rpc_error(
                &Value::Null,
                code::INVALID_REQUEST,
                "this session was opened with another API key",
            ),
        ));
    }
    rec.session = session.upstream_session();
    let Ok(permit) = session.in_flight.clone().try_acquire_owned() else {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            rpc_error(
                &Value::Null,
                code::INVALID_REQUEST,
                &format!("more than {MAX_IN_FLIGHT} messages of this session are in flight"),
            ),
        ));
    };
    let (parts, body) = req.into_parts();
    let headers = session.upstream_headers(&parts.headers, ACCEPT_BOTH);
    let (bytes, _held) = mcp::read_body(rt, &parts.headers, body).await?;
    let v = mcp::parse_post(&bytes)?;
    let requests = requests_of(&v);
    let mut pending = mcp::Pending::default();
    let outcome = match mcp::check_post(shared, rt, &headers, v, rec, findings, &mut pending) {
        // Nothing on the stream could carry it: the refusal is the POST's answer.
        Err(r) if r.1["id"].is_null() && requests.is_empty() => return Err(r),
        other => other,
    };
    Ok(Message {
        session,
        _permit: permit,
        headers,
        body: bytes,
        outcome,
        pending,
        requests,
    })
}

/// The requests (id and method) of a message or batch.
fn requests_of(v: &Value) -> Vec<(Value, String)> {
    let one = |m: &Value| {
        let id = m.get("id").filter(|id| !id.is_null())?;
        let method = m.get("method")?.as_str()?;
        Some((id.clone(), method.to_string()))
    };
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

/// Sends a checked message upstream (or takes the gateway's own answer) and queues what comes
/// back on the session's stream.
async fn forward(
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    msg: Message,
    mut rec: RequestRecord,
    mut findings: Findings,
    t0: Instant,
) {
    let session = msg.session.clone();
    let result = tokio::select! {
        r = async {
            match msg.outcome {
                Err(r) => Err(r),
                Ok(PostOutcome::Answer(a)) => Ok(mcp::json_response(StatusCode::OK, &a, &rec.id)),
                Ok(PostOutcome::Forward(rewritten, _)) => {
                    let body = rewritten.unwrap_or(msg.body);
                    let up = Upstream::new(Method::POST, &msg.headers, None, Some(body));
                    mcp::send(&shared, &rt, up, msg.pending, &mut rec, &mut findings, t0).await
                }
            }
        } => r,
        () = session.gone() => Err((
            StatusCode::from_u16(CLIENT_GONE).unwrap_or(StatusCode::BAD_REQUEST),
            rpc_error(&Value::Null, code::UPSTREAM, "client disconnected before the answer"),
        )),
    };
    let resp = mcp::finish(&shared, rec, findings, t0, result);
    deliver(&shared, &rt, &session, resp, &msg.requests).await;
}

/// Queues the messages of a processed answer (JSON or SSE) on the session's stream; requests of
/// the message that got no answer get a JSON-RPC error, so no client waits forever.
async fn deliver(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    session: &Arc<Session>,
    resp: Response<ProxyBody>,
    requests: &[(Value, String)],
) {
    let status = resp.status();
    let upstream_session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sse = is_event_stream(resp.headers());
    // Only what the gateway read and checked goes on the stream: a JSON or event-stream body
    // (another type is relayed to Streamable HTTP clients as it is, unread).
    let checked = sse
        || resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::upstream::is_json);
    let mut answered = vec![false; requests.len()];
    let mut failure: Option<(i64, String)> = None;
    let mut on_message = |data: &[u8]| -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            tracing::debug!("upstream sent an SSE event that is not JSON; dropped");
            return true;
        };
        // An error the gateway or upstream could not tie to a request answers them all.
        if v.get("error").is_some() && v["id"].is_null() && !requests.is_empty() {
            let e = &v["error"];
            failure = Some((
                e["code"].as_i64().unwrap_or(code::UPSTREAM),
                e["message"]
                    .as_str()
                    .unwrap_or("upstream error")
                    .to_string(),
            ));
            return true;
        }
        let responses: Vec<&Value> = match &v {
            Value::Array(a) => a.iter().collect(),
            m => vec![m],
        };
        for m in responses {
            let Some(i) = requests.iter().position(|(id, _)| Some(id) == m.get("id")) else {
                continue;
            };
            answered[i] = true;
            if requests[i].1 == "initialize"
                && let Some(result) = m.get("result")
            {
                learn(shared, rt, session, upstream_session.clone(), result);
            }
        }
        if data.contains(&b'\r') {
            session.push(v.to_string().as_bytes())
        } else {
            session.push(data)
        }
    };
    let completed = if sse {
        read_events(session, resp.into_body(), &mut on_message).await
    } else {
        match resp.into_body().collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                if checked && !bytes.is_empty() {
                    on_message(&bytes);
                }
                true
            }
            Err(_) => false,
        }
    };
    if session.tx.is_closed() {
        return;
    }
    let (code, message) = failure.unwrap_or_else(|| {
        let why = if !completed {
            "the upstream MCP server's answer broke off".to_string()
        } else if status.is_success() {
            "the upstream MCP server sent no answer".to_string()
        } else {
            format!("the upstream MCP server answered HTTP {}", status.as_u16())
        };
        (code::UPSTREAM, why)
    });
    for ((id, _), done) in requests.iter().zip(answered) {
        if !done && !session.push(rpc_error(id, code, &message).to_string().as_bytes()) {
            return;
        }
    }
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// Reads a processed SSE answer event by event and hands each event's data to `on`, until the
/// stream ends (true), breaks (false), `on` refuses more, or the client leaves.
async fn read_events(
    session: &Session,
    mut body: ProxyBody,
    on: &mut impl FnMut(&[u8]) -> bool,
) -> bool {
    let mut split = SseSplitter::new(MAX_EVENT_BYTES);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = session.gone() => return true,
        };
        let (run, end) = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => match split.push(data) {
                    Ok(run) => (run, false),
                    Err(_) => return false,
                },
                Err(_) => continue,
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upstream stream of a legacy session broke");
                return false;
            }
            None => (split.take_rest(), true),
        };
        let mut more = true;
        for_each_event(&run, |_, data| {
            if more && !data.is_empty() {
                more = on(data);
            }
        });
        if !more || end {
            return true;
        }
    }
}

/// Keeps the upstream session from an `initialize` answer and starts relaying the upstream's
/// own stream of server-initiated messages (once per session).
fn learn(
    shared: &Arc<GatewayShared>,
    rt: &Arc<ProxyRuntime>,
    session: &Arc<Session>,
    upstream_session: Option<String>,
    result: &Value,
) {
    let mut up = lock(&session.upstream);
    up.session = upstream_session;
    // Only a handshake-era version goes upstream as a header: the session era is all a
    // legacy client speaks, whatever the server said.
    up.version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| crate::mcp_headers::is_handshake_version(v))
        .map(str::to_string);
    if !up.listening {
        up.listening = true;
        tokio::spawn(listen(shared.clone(), rt.clone(), session.clone()));
    }
}

/// Relays the upstream's GET stream (server-initiated requests and notifications) onto the
/// session, reopening it when the upstream ends it, until the client leaves. An upstream that
/// offers no such stream (405, or any refusal) is fine: nothing is relayed.
async fn listen(shared: Arc<GatewayShared>, rt: Arc<ProxyRuntime>, session: Arc<Session>) {
    let mut quick_ends = 0;
    while !session.tx.is_closed() && quick_ends < 5 {
        let t0 = Instant::now();
        let mut rec = session.record(&rt, &Method::GET, "/sse");
        let mut findings = Findings::default();
        let headers = session.upstream_headers(&HeaderMap::new(), "text/event-stream");
        let up = Upstream::new(Method::GET, &headers, None, None);
        let result = tokio::select! {
            r = mcp::send(&shared, &rt, up, mcp::Pending::default(), &mut rec, &mut findings, t0) => r,
            () = session.gone() => return,
        };
        let resp = mcp::finish(&shared, rec, findings, t0, result);
        if !resp.status().is_success() || !is_event_stream(resp.headers()) {
            tracing::debug!(status = %resp.status(), "upstream offers no GET stream for the legacy session");
            return;
        }
        read_events(&session, resp.into_body(), &mut |data| session.push(data)).await;
        quick_ends = if t0.elapsed() < Duration::from_secs(5) {
            quick_ends + 1
        } else {
            0
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = session.gone() => return,
        }
    }
}

/// The body of a `GET /sse` response: the session's queue, with keep-alive comments.
pub struct SessionStream {
    rx: mpsc::Receiver<Bytes>,
    kill: oneshot::Receiver<()>,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    closer: Option<Closer>,
}

impl Body for SessionStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if Pin::new(&mut this.kill).poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err("legacy SSE session closed by the gateway".into())));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(ev)) => {
                let next = tokio::time::Instant::now() + KEEP_ALIVE;
                this.keep_alive.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(ev))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.keep_alive.as_mut().poll(cx).is_ready() {
                    let next = tokio::time::Instant::now() + KEEP_ALIVE;
                    this.keep_alive.as_mut().reset(next);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        b": keep-alive\n\n",
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        if let Some(c) = self.closer.take() {
            c.close();
        }
    }
}

/// Ends a session when its stream goes: forgets it, records it, deletes the upstream session.
struct Closer {
    shared: Arc<GatewayShared>,
    rt: Arc<ProxyRuntime>,
    session: Arc<Session>,
    rec: RequestRecord,
    t0: Instant,
}

impl Closer {
    fn close(self) {
        let Closer {
            shared,
            rt,
            session,
            mut rec,
            t0,
        } = self;
        shared.legacy.remove(&session.id);
        tracing::debug!(proxy = %rt.spec.name, client = %session.peer, "legacy SSE session closed");
        rec.session = session.upstream_session();
        rec.latency_us = t0.elapsed().as_micros() as i64;
        (shared.record)(rec);
        if session.upstream_session().is_none() {
            return;
        }
        let Ok(rt_handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt_handle.spawn(async move {
            let t0 = Instant::now();
            let mut rec = session.record(&rt, &Method::DELETE, "/sse");
            let mut findings = Findings::default();
            let headers = session.upstream_headers(&HeaderMap::new(), ACCEPT_BOTH);
            let up = Upstream::new(Method::DELETE, &headers, None, None);
            let result = mcp::send(
                &shared,
                &rt,
                up,
                mcp::Pending::default(),
                &mut rec,
                &mut findings,
                t0,
            )
            .await;
            mcp::finish(&shared, rec, findings, t0, result);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let req = |m: Method, uri: &str| Request::builder().method(m).uri(uri).body(()).unwrap();
        assert!(matches!(
            route(&req(Method::GET, "/sse")),
            Some(Route::Open)
        ));
        assert!(matches!(
            route(&req(Method::POST, "/messages?session_id=ab12")),
            Some(Route::Message(id)) if id == "ab12"
        ));
        assert!(matches!(
            route(&req(Method::POST, "/messages?x=1&sessionId=cd")),
            Some(Route::Message(id)) if id == "cd"
        ));
        // Streamable HTTP keeps every other request, whatever its path.
        assert!(route(&req(Method::POST, "/messages")).is_none());
        assert!(route(&req(Method::POST, "/mcp")).is_none());
        assert!(route(&req(Method::GET, "/mcp")).is_none());
        let mut streamable_get = req(Method::GET, "/sse");
        streamable_get
            .headers_mut()
            .insert("mcp-session-id", HeaderValue::from_static("s1"));
        assert!(route(&streamable_get).is_none());
    }

    #[test]
    fn requests_of_messages_and_batches() {
        let one = serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
        assert_eq!(
            requests_of(&one),
            vec![(Value::from(3), "tools/list".into())]
        );
        let batch = serde_json::json!([
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "a", "method": "ping"},
            {"jsonrpc": "2.0", "id": 1, "result": {}}
        ]);
        assert_eq!(requests_of(&batch), vec![(Value::from("a"), "ping".into())]);
    }

    #[test]
    fn a_client_that_falls_behind_is_disconnected_not_buffered_for() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let (kill_tx, mut kill_rx) = oneshot::channel();
        let s = Session {
            id: "s".into(),
            proxy: "p".into(),
            key: Arc::new(KeyInfo::default()),
            peer: "127.0.0.1:1".parse().unwrap(),
            tx,
            kill: Mutex::new(Some(kill_tx)),
            upstream: Mutex::new(UpstreamState::default()),
            in_flight: Arc::new(Semaphore::new(1)),
        };
        assert!(s.push(b"{\"a\":\r\n1}"));
        assert_eq!(
            &rx.try_recv().unwrap()[..],
            b"event: message\ndata: {\"a\":\ndata: 1}\n\n"
        );
        for _ in 0..QUEUE {
            assert!(s.push(b"{}"));
        }
        assert!(kill_rx.try_recv().is_err(), "not yet killed");
        assert!(!s.push(b"{}"), "the queue is full");
        assert!(kill_rx.try_recv().is_ok(), "the stream is told to end");
        assert_eq!(rx.len(), QUEUE, "nothing beyond the bound was queued");
    }
}
