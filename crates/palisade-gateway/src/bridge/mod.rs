//! Upstream transports other than Streamable HTTP. A bridge serves Streamable HTTP (session era)
//! on a loopback port that only the gateway can use (a random token in a header, compared in
//! constant time) and carries it to a stdio process or a legacy HTTP+SSE server. The MCP proxy
//! then treats the bridge as an ordinary Streamable HTTP upstream, so approval, policies, the
//! inventory and the request log work the same for every transport.
//!
//! A stdio server is one process per proxy, shared by every client session (ids and progress
//! tokens are renumbered), supervised: restarted with back-off when it exits, its sessions kept
//! and re-initialized. A legacy SSE server gets one upstream session per client session.

mod hub;
mod sse_link;
pub(crate) mod stdio;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_core::model::{McpTransport, ProxySpec};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::mcp::rpc_error;
use hub::{Hub, is_response};
pub(crate) use sse_link::SseTarget;
pub(crate) use stdio::StdioSpec;

use crate::upstream::HttpClient;

/// Header that carries the bridge token from the gateway to its bridge.
pub(crate) const TOKEN_HEADER: &str = "x-palisade-bridge";
/// Sessions idle this long, with no stream open, are forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Most sessions a bridge keeps at once (each SSE one holds a connection to the server); past
/// it `initialize` is refused until idle ones are forgotten or ended.
const MAX_SESSIONS: usize = 4096;
/// Comment sent on quiet streams so nothing between gives up on them.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Longest pause before restarting a stdio server that keeps exiting.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a bridge reaches its server.
#[derive(Clone)]
pub(crate) enum BridgeUpstream {
    Stdio(StdioSpec),
    Sse(Box<SseTarget>),
}

/// What identifies a bridge's upstream: a proxy reconfigured with the same one keeps its bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BridgeKey {
    transport: McpTransport,
    upstream: String,
    stdio: Option<StdioSpec>,
    auth: Option<Vec<u8>>,
}

impl BridgeKey {
    /// The key of a spec whose transport needs a bridge (`None` for Streamable HTTP).
    pub(crate) fn of(spec: &ProxySpec, auth: Option<&(HeaderName, HeaderValue)>) -> Option<Self> {
        let stdio = match spec.transport {
            McpTransport::StreamableHttp => return None,
            McpTransport::Sse => None,
            McpTransport::Stdio => Some(StdioSpec {
                command: spec.command.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                inherit_env: spec.inherit_env.clone(),
                cwd: spec.cwd.clone(),
            }),
        };
        Some(Self {
            transport: spec.transport,
            upstream: spec.upstream.clone(),
            stdio,
            auth: auth.map(|(_, v)| v.as_bytes().to_vec()),
        })
    }
}

struct SessionEntry {
    /// The session's own connection (SSE); stdio sessions use the shared one.
    hub: Option<Arc<Hub>>,
    last_seen: Instant,
}

struct State {
    proxy: String,
    upstream: BridgeUpstream,
    token: String,
    wait: Duration,
    max_body: usize,
    /// The stdio server's current connection.
    shared: Mutex<Option<Arc<Hub>>>,
    /// Why there is no stdio connection (start failure, restart pending).
    down: Mutex<String>,
    /// The first client's `initialize` parameters, replayed when a stdio server restarts.
    init_params: Mutex<Option<Value>>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running bridge.
pub(crate) struct Bridge {
    pub(crate) key: BridgeKey,
    addr: SocketAddr,
    token: HeaderValue,
    state: Arc<State>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Bridge {
    /// Binds a loopback port and starts serving (and, for stdio, launches the server).
    pub(crate) async fn start(
        spec: &ProxySpec,
        key: BridgeKey,
        auth: Option<(HeaderName, HeaderValue)>,
        client: HttpClient,
    ) -> std::io::Result<Bridge> {
        let upstream = match &key.stdio {
            Some(s) => BridgeUpstream::Stdio(s.clone()),
            None => {
                let url: http::Uri = spec.upstream.parse().map_err(std::io::Error::other)?;
                let host = HeaderValue::from_str(
                    url.authority()
                        .map(|a| a.as_str())
                        .ok_or_else(|| std::io::Error::other("upstream URL has no host"))?,
                )
                .map_err(std::io::Error::other)?;
                BridgeUpstream::Sse(Box::new(SseTarget {
                    url,
                    host,
                    auth,
                    client,
                }))
            }
        };
        let token = palisade_core::crypto::random_token(32);
        let state = Arc::new(State {
            proxy: spec.name.clone(),
            upstream,
            token: token.clone(),
            wait: Duration::from_secs(spec.upstream_timeout_secs),
            max_body: spec.max_body_bytes as usize,
            shared: Mutex::new(None),
            down: Mutex::new("the MCP server is starting".into()),
            init_params: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut tasks = vec![tokio::spawn(accept(listener, state.clone())).abort_handle()];
        tasks.push(tokio::spawn(sweep(state.clone())).abort_handle());
        if let BridgeUpstream::Stdio(s) = &state.upstream {
            tasks.push(tokio::spawn(supervise(state.clone(), s.clone())).abort_handle());
        }
        Ok(Bridge {
            key,
            addr,
            token: HeaderValue::from_str(&token).map_err(std::io::Error::other)?,
            state,
            tasks,
        })
    }

    /// The URL the proxy forwards to.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The header that admits the proxy's requests.
    pub(crate) fn header(&self) -> (HeaderName, HeaderValue) {
        let mut v = self.token.clone();
        v.set_sensitive(true);
        (HeaderName::from_static(TOKEN_HEADER), v)
    }

    /// Stops serving and closes every upstream connection (a stdio server is stopped).
    pub(crate) fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(h) = lock(&self.state.shared).take() {
            h.close();
        }
        for (_, s) in lock(&self.state.sessions).drain() {
            if let Some(h) = s.hub {
                h.close();
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs the stdio server: launch, wait for its exit, restart with back-off (reset after a minute
/// of good health); each new process is re-initialized with the first client's parameters.
async fn supervise(state: Arc<State>, spec: StdioSpec) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match stdio::spawn(&state.proxy, &spec) {
            Ok(link) => {
                let hub = Hub::start(&state.proxy, link);
                let params = lock(&state.init_params).clone();
                if let Some(p) = params
                    && let Err(e) = hub.initialize(&p, state.wait).await
                {
                    tracing::warn!(proxy = %state.proxy, "the restarted MCP server refused initialize: {e}");
                }
                *lock(&state.shared) = Some(hub.clone());
                hub.closed().await;
                lock(&state.shared).take();
            }
            Err(e) => {
                tracing::error!(proxy = %state.proxy, command = ?spec.command, "cannot start the MCP server: {e}");
                *lock(&state.down) = format!("the MCP server could not be started: {e}");
            }
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(proxy = %state.proxy, "restarting the MCP server in {} s", backoff.as_secs());
        {
            let mut down = lock(&state.down);
            if !down.starts_with("the MCP server could not") {
                *down = "the MCP server exited".into();
            }
            down.push_str(&format!("; restarting in {} s", backoff.as_secs()));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Forgets idle sessions (closing their SSE connections).
async fn sweep(state: Arc<State>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut idle = Vec::new();
        let mut ended = Vec::new();
        lock(&state.sessions).retain(|sid, s| {
            let keep = s.last_seen.elapsed() < SESSION_IDLE;
            if !keep {
                match s.hub.take() {
                    Some(h) => idle.push(h),
                    None => ended.push(sid.clone()),
                }
            }
            keep
        });
        for h in idle {
            h.close();
        }
        // A forgotten stdio session's streams and waiting server requests go with it.
        if let Some(h) = lock(&state.shared).clone() {
            for sid in ended {
                h.end_session(&sid);
            }
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    // Dropping the set (the task aborted) stops every connection with it.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Body of a bridge answer: a whole JSON document, or an event stream fed by a hub.
enum BridgeBody {
    Full(Full<Bytes>),
    Events(EventStream),
}

struct EventStream {
    rx: mpsc::Receiver<Value>,
    /// Answers still expected (`None`: a GET stream, open until the session ends).
    remaining: Option<usize>,
    ping: tokio::time::Interval,
}

impl http_body::Body for BridgeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            BridgeBody::Full(f) => Pin::new(f).poll_frame(cx),
            BridgeBody::Events(s) => {
                if s.remaining == Some(0) {
                    return Poll::Ready(None);
                }
                match s.rx.poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        if is_response(&m)
                            && let Some(r) = &mut s.remaining
                        {
                            *r = r.saturating_sub(1);
                        }
                        s.ping.reset();
                        let event = format!("event: message\ndata: {m}\n\n");
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => match s.ping.poll_tick(cx) {
                        Poll::Ready(_) => {
                            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": ping\n\n")))))
                        }
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }
}

fn events(rx: mpsc::Receiver<Value>, remaining: Option<usize>) -> BridgeBody {
    let mut ping = tokio::time::interval(KEEPALIVE);
    ping.reset();
    BridgeBody::Events(EventStream {
        rx,
        remaining,
        ping,
    })
}

fn answer(status: StatusCode, body: Option<&Value>) -> Response<BridgeBody> {
    let bytes = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
    let mut r = Response::new(BridgeBody::Full(Full::new(bytes)));
    *r.status_mut() = status;
    if body.is_some() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    r
}

fn refuse(status: StatusCode, code: i64, msg: &str) -> Response<BridgeBody> {
    answer(status, Some(&rpc_error(&Value::Null, code, msg)))
}

fn stream_response(body: BridgeBody) -> Response<BridgeBody> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<BridgeBody> {
    let presented = req
        .headers()
        .get(TOKEN_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or(b"");
    if !palisade_core::crypto::ct_eq(presented, state.token.as_bytes()) {
        return refuse(StatusCode::FORBIDDEN, -32600, "not the gateway");
    }
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let wants_stream = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    match *req.method() {
        Method::POST => {
            let body = match Limited::new(req.into_body(), state.max_body)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, -32600, "body too large"),
            };
            post(&state, session, wants_stream, &body).await
        }
        Method::GET => {
            if !wants_stream {
                return refuse(
                    StatusCode::NOT_ACCEPTABLE,
                    -32600,
                    "GET needs Accept: text/event-stream",
                );
            }
            let hub = match session_hub(&state, session.as_deref()) {
                Ok(h) => h,
                Err(r) => return r,
            };
            let sid = session.unwrap_or_default();
            match hub.open_stream(&sid) {
                Some(rx) => stream_response(events(rx, None)),
                None => refuse(
                    StatusCode::NOT_FOUND,
                    -32001,
                    "session ended: the MCP server connection closed",
                ),
            }
        }
        Method::DELETE => {
            let Some(sid) = session else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    -32000,
                    "Mcp-Session-Id is required",
                );
            };
            let Some(entry) = lock(&state.sessions).remove(&sid) else {
                return refuse(StatusCode::NOT_FOUND, -32001, "Session not found");
            };
            match entry.hub {
                Some(h) => h.close(),
                None => {
                    if let Some(h) = lock(&state.shared).clone() {
                        h.end_session(&sid);
                    }
                }
            }
            answer(StatusCode::OK, None)
        }
        _ => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            -32600,
            "use POST, GET or DELETE",
        ),
    }
}

/// The connection serving a session, or the answer to give when there is none.
#[allow(clippy::result_large_err)]
fn session_hub(state: &State, session: Option<&str>) -> Result<Arc<Hub>, Response<BridgeBody>> {
    let Some(sid) = session else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            -32000,
            "Bad Request: no valid session id provided (initialize first)",
        ));
    };
    let mut sessions = lock(&state.sessions);
    let Some(entry) = sessions.get_mut(sid) else {
        return Err(refuse(StatusCode::NOT_FOUND, -32001, "Session not found"));
    };
    entry.last_seen = Instant::now();
    match &entry.hub {
        Some(h) if h.is_closed() => {
            sessions.remove(sid);
            Err(refuse(
                StatusCode::NOT_FOUND,
                -32001,
                "Session not found: the MCP server connection closed",
            ))
        }
        Some(h) => Ok(h.clone()),
        None => {
            drop(sessions);
            lock(&state.shared).clone().ok_or_else(|| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    -32000,
                    &lock(&state.down).clone(),
                )
            })
        }
    }
}

async fn post(
    state: &State,
    session: Option<String>,
    wants_stream: bool,
    body: &[u8],
) -> Response<BridgeBody> {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("Parse error: {e}"),
            );
        }
    };
    let batch = parsed.is_array();
    let msgs = match parsed {
        Value::Array(a) => a,
        v => vec![v],
    };
    if let Some(i) = msgs
        .iter()
        .position(|m| m.get("method").and_then(Value::as_str) == Some("initialize"))
    {
        if msgs.len() != 1 {
            return refuse(
                StatusCode::BAD_REQUEST,
                -32600,
                "initialize must be sent on its own",
            );
        }
        return initialize(state, &msgs[i]).await;
    }
    let hub = match session_hub(state, session.as_deref()) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let sid = session.unwrap_or_default();
    let (mut rx, expected) = match hub.post(&sid, msgs).await {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, -32000, &e),
    };
    if expected == 0 {
        return answer(StatusCode::ACCEPTED, None);
    }
    if wants_stream {
        return stream_response(events(rx, Some(expected)));
    }
    // A client that takes JSON only: wait for every answer.
    let mut answers = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + state.wait;
    while answers.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) if is_response(&m) => answers.push(m),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    -32000,
                    "the MCP server did not answer in time",
                );
            }
        }
    }
    let doc = if batch {
        Value::Array(answers)
    } else {
        answers.swap_remove(0)
    };
    answer(StatusCode::OK, Some(&doc))
}

async fn initialize(state: &State, msg: &Value) -> Response<BridgeBody> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
    if lock(&state.sessions).len() >= MAX_SESSIONS {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            -32000,
            "too many open sessions on this MCP server; end unused ones (DELETE) or retry later",
        );
    }
    let own_hub = match &state.upstream {
        BridgeUpstream::Stdio(_) => None,
        BridgeUpstream::Sse(t) => match sse_link::connect(&state.proxy, t, state.wait).await {
            Ok(link) => Some(Hub::start(&state.proxy, link)),
            Err(e) => {
                return answer(StatusCode::OK, Some(&rpc_error(&id, -32000, &e)));
            }
        },
    };
    let hub = match &own_hub {
        Some(h) => h.clone(),
        None => match lock(&state.shared).clone() {
            Some(h) => h,
            None => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    -32000,
                    &lock(&state.down).clone(),
                );
            }
        },
    };
    let first = own_hub.is_none() && !hub.initialized().await;
    match hub.initialize(&params, state.wait).await {
        Ok(result) => {
            if first {
                lock(&state.init_params).get_or_insert(params);
            }
            let sid = palisade_core::crypto::random_token(24);
            lock(&state.sessions).insert(
                sid.clone(),
                SessionEntry {
                    hub: own_hub,
                    last_seen: Instant::now(),
                },
            );
            let mut r = answer(
                StatusCode::OK,
                Some(&json!({"jsonrpc": "2.0", "id": id, "result": result})),
            );
            if let Ok(v) = HeaderValue::from_str(&sid) {
                r.headers_mut().insert("mcp-session-id", v);
            }
            r
        }
        Err(e) => {
            if let Some(h) = own_hub {
                h.close();
            }
            answer(
                StatusCode::OK,
                Some(&json!({"jsonrpc": "2.0", "id": id, "error": e})),
            )
        }
    }
}
