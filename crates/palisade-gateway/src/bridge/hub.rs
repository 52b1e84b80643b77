//! One message connection to an MCP server (a stdio process or a legacy SSE session) shared by
//! the Streamable HTTP sessions the bridge serves. Request ids and progress tokens are renumbered
//! so clients never collide on the shared connection; answers go back to the request that asked,
//! progress to the stream of its request; server requests and log messages only where one client
//! session alone can have caused them (another session's could carry the first one's data), and
//! other notifications (list changes, resource updates) to every session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::mcp::rpc_error;

/// What a link delivers: a message from the server, or the end of the connection.
pub(crate) enum Inbound {
    Message(Value),
    Closed(String),
}

/// A connection to a server: serialized messages out, parsed messages in, and the tasks that
/// carry them (aborted when the hub closes).
pub(crate) struct Link {
    pub out: mpsc::Sender<Bytes>,
    pub inbound: mpsc::Receiver<Inbound>,
    pub tasks: Vec<AbortHandle>,
}

/// Messages queued for one client stream before it counts as stuck.
pub(crate) const STREAM_QUEUE: usize = 1024;

/// Where messages for one client stream go.
pub(crate) type Sink = mpsc::Sender<Value>;

struct Waiter {
    session: String,
    client_id: Value,
    sink: Sink,
    /// The token the gateway put in `_meta.progressToken`, and the client's own.
    token: Option<(String, Value)>,
}

#[derive(Default)]
struct HubState {
    waiters: HashMap<u64, Waiter>,
    tokens: HashMap<String, u64>,
    /// Open GET streams per session.
    streams: HashMap<String, Sink>,
    /// Requests of the server waiting for a client's answer, by the id the gateway gave them:
    /// the session they went to and the server's own id. Only that session's answer is passed
    /// on (another session could otherwise answer a sampling request meant for the first).
    asks: HashMap<String, (String, Value, std::time::Instant)>,
    /// The session each task the server made belongs to (from the call's answer): its status
    /// notifications go there only.
    tasks: HashMap<String, String>,
    closed: Option<String>,
}

/// Most tasks whose session a hub remembers.
const MAX_TASKS: usize = 4096;

/// Most server requests waiting for a client's answer at once, and per session; past either
/// the server's request is answered with an error. One unanswered for [`ASK_TTL`] is forgotten.
const MAX_SERVER_ASKS: usize = 1024;
const MAX_SESSION_ASKS: usize = 64;
const ASK_TTL: Duration = Duration::from_secs(600);

impl HubState {
    /// The stream of the one client session a message the server sends on its own can belong
    /// to: the session of every request in flight (the stream of its newest), or, with none in
    /// flight, the only session with a GET stream open. `None` when no session, or several,
    /// could have caused it: a server shared by sessions does not say whose it is.
    fn sole_session(&self) -> Option<&Sink> {
        let mut newest: Option<(u64, &Waiter)> = None;
        for (id, w) in &self.waiters {
            if w.session.is_empty() {
                continue;
            }
            match newest {
                Some((_, n)) if n.session != w.session => return None,
                Some((n, _)) if n > *id => {}
                _ => newest = Some((*id, w)),
            }
        }
        if let Some((_, w)) = newest {
            return Some(&w.sink);
        }
        let mut streams = self.streams.values();
        match (streams.next(), streams.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// The session a sink belongs to (a request's stream or a GET stream).
    fn session_of(&self, sink: &Sink) -> Option<String> {
        self.waiters
            .values()
            .find(|w| w.sink.same_channel(sink) && !w.session.is_empty())
            .map(|w| w.session.clone())
            .or_else(|| {
                self.streams
                    .iter()
                    .find(|(_, s)| s.same_channel(sink))
                    .map(|(k, _)| k.clone())
            })
    }

    /// Whether any client session is connected (a request in flight or a GET stream open).
    fn has_clients(&self) -> bool {
        !self.streams.is_empty() || self.waiters.values().any(|w| !w.session.is_empty())
    }
}

/// Whether a message is a response (an id and no method).
pub(crate) fn is_response(m: &Value) -> bool {
    m.get("method").is_none() && m.get("id").is_some_and(|v| !v.is_null())
}

/// The shared connection.
pub(crate) struct Hub {
    proxy: String,
    out: mpsc::Sender<Bytes>,
    st: Mutex<HubState>,
    next: AtomicU64,
    /// The server's `initialize` result, once one succeeded on this connection.
    init: tokio::sync::Mutex<Option<Value>>,
    closed: watch::Receiver<bool>,
    tasks: Mutex<Vec<AbortHandle>>,
}

fn deliver(proxy: &str, sink: &Sink, m: Value) {
    if let Err(mpsc::error::TrySendError::Full(_)) = sink.try_send(m) {
        tracing::warn!(
            proxy,
            "an MCP client stream is not keeping up; a message was dropped"
        );
    }
}

impl Hub {
    /// Starts routing the link's messages.
    pub(crate) fn start(proxy: &str, link: Link) -> Arc<Hub> {
        let (closed_tx, closed) = watch::channel(false);
        let hub = Arc::new(Hub {
            proxy: proxy.to_string(),
            out: link.out,
            st: Mutex::new(HubState::default()),
            next: AtomicU64::new(1),
            init: tokio::sync::Mutex::new(None),
            closed,
            tasks: Mutex::new(link.tasks),
        });
        let weak = Arc::downgrade(&hub);
        let mut inbound = link.inbound;
        let dispatcher = tokio::spawn(async move {
            let reason = loop {
                match inbound.recv().await {
                    None => break "the connection to the MCP server closed".to_string(),
                    Some(Inbound::Closed(r)) => break r,
                    Some(Inbound::Message(m)) => {
                        let Some(hub) = weak.upgrade() else { return };
                        match m {
                            Value::Array(items) => items.into_iter().for_each(|m| hub.dispatch(m)),
                            m => hub.dispatch(m),
                        }
                    }
                }
            };
            if let Some(hub) = weak.upgrade() {
                hub.shut(&reason);
            }
            let _ = closed_tx.send(true);
        });
        hub.lock_tasks().push(dispatcher.abort_handle());
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection closed: every waiting request gets an error, every stream ends.
    fn shut(&self, reason: &str) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        tracing::warn!(proxy = %self.proxy, "MCP server connection closed: {reason}");
        st.closed = Some(reason.to_string());
        let msg = format!("the MCP server connection closed: {reason}");
        for (_, w) in st.waiters.drain() {
            deliver(&self.proxy, &w.sink, rpc_error(&w.client_id, -32000, &msg));
        }
        st.tokens.clear();
        st.streams.clear();
    }

    /// Closes the connection: its tasks are stopped (a stdio process is killed with them).
    pub(crate) fn close(&self) {
        self.shut("closed by the gateway");
        for t in self.lock_tasks().drain(..) {
            t.abort();
        }
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Waits until the connection ends.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    fn dispatch(&self, mut m: Value) {
        let method = m.get("method").and_then(Value::as_str).map(str::to_owned);
        let has_id = m.get("id").is_some_and(|v| !v.is_null());
        let mut st = self.lock();
        match (method, has_id) {
            (None, true) => {
                let Some(w) = m["id"].as_u64().and_then(|id| st.waiters.remove(&id)) else {
                    tracing::debug!(proxy = %self.proxy, "MCP server answered an unknown request id");
                    return;
                };
                if let Some((token, _)) = &w.token {
                    st.tokens.remove(token);
                }
                // A task made by the call: `resultType: "task"` with its fields, or a `task`.
                let task = m["result"]["taskId"]
                    .as_str()
                    .or_else(|| m["result"]["task"]["taskId"].as_str());
                if let Some(task) = task.filter(|_| !w.session.is_empty()) {
                    if st.tasks.len() >= MAX_TASKS
                        && let Some(old) = st.tasks.keys().next().cloned()
                    {
                        st.tasks.remove(&old);
                    }
                    st.tasks.insert(task.to_string(), w.session.clone());
                }
                m["id"] = w.client_id;
                deliver(&self.proxy, &w.sink, m);
            }
            (Some(_), true) => {
                // A server request (sampling, elicitation, roots): to the one session that can
                // have caused it. When several could, none gets it (a sampling request may
                // carry one client's data to another): the server is told why.
                let to = st
                    .sole_session()
                    .cloned()
                    .and_then(|sink| Some((st.session_of(&sink)?, sink)));
                if st.asks.len() >= MAX_SERVER_ASKS / 2 {
                    st.asks.retain(|_, (_, _, at)| at.elapsed() < ASK_TTL);
                }
                let crowded = |st: &HubState, session: &str| {
                    st.asks.len() >= MAX_SERVER_ASKS
                        || st.asks.values().filter(|(s, _, _)| s == session).count()
                            >= MAX_SESSION_ASKS
                };
                match to {
                    Some((ref session, _)) if crowded(&st, session) => {
                        let answer = rpc_error(
                            &m["id"],
                            -32603,
                            "too many requests of this MCP server are waiting for clients",
                        );
                        let _ = self.out.try_send(Bytes::from(answer.to_string()));
                    }
                    Some((session, sink)) => {
                        // Renumbered, so only the session it went to can answer it.
                        let ours =
                            format!("palisade-ask-{}", self.next.fetch_add(1, Ordering::Relaxed));
                        let theirs = std::mem::replace(&mut m["id"], Value::from(ours.clone()));
                        st.asks
                            .insert(ours, (session, theirs, std::time::Instant::now()));
                        deliver(&self.proxy, &sink, m);
                    }
                    None => {
                        let why = if st.has_clients() {
                            "several client sessions share this MCP server and the gateway cannot tell which one this request is for"
                        } else {
                            "no client is connected to answer"
                        };
                        let answer = rpc_error(&m["id"], -32603, why);
                        let _ = self.out.try_send(Bytes::from(answer.to_string()));
                    }
                }
            }
            // A log message: like a server request, only to the one session that can have
            // caused it (a log line may name another client's files or data).
            (Some(method), false) if method == "notifications/message" => match st.sole_session() {
                Some(s) => deliver(&self.proxy, s, m),
                None => {
                    tracing::debug!(proxy = %self.proxy, "a log message of the MCP server was not relayed: no single client session can have caused it")
                }
            },
            (Some(method), false) => {
                let token = m
                    .pointer("/params/progressToken")
                    .and_then(Value::as_str)
                    .and_then(|t| st.tokens.get(t).copied());
                if let Some(w) = token.and_then(|id| st.waiters.get(&id)) {
                    if let Some((_, client_token)) = &w.token {
                        m["params"]["progressToken"] = client_token.clone();
                    }
                    deliver(&self.proxy, &w.sink, m);
                    return;
                }
                // Progress of a request already answered, and a task's status, belong to one
                // session: the task's, or none (never every session).
                let only = if method == "notifications/progress" {
                    Some(None)
                } else if method == "notifications/tasks"
                    || method.starts_with("notifications/tasks/")
                {
                    let task = m.pointer("/params/taskId").and_then(Value::as_str);
                    Some(task.and_then(|t| st.tasks.get(t)).cloned())
                } else {
                    None
                };
                // Everything else goes to every session: its GET stream, or the stream of its
                // newest request when it has none open.
                let mut sinks: HashMap<&str, (u64, &Sink)> = HashMap::new();
                for (id, w) in &st.waiters {
                    if w.session.is_empty() {
                        continue;
                    }
                    let e = sinks.entry(w.session.as_str()).or_insert((*id, &w.sink));
                    if *id > e.0 {
                        *e = (*id, &w.sink);
                    }
                }
                for (s, sink) in &st.streams {
                    sinks.insert(s.as_str(), (u64::MAX, sink));
                }
                match only {
                    Some(Some(session)) => {
                        if let Some((_, sink)) = sinks.get(session.as_str()) {
                            deliver(&self.proxy, sink, m);
                        }
                    }
                    Some(None) => {
                        tracing::debug!(proxy = %self.proxy, %method, "a notification of the MCP server for no known session was not relayed");
                    }
                    None => {
                        for (_, sink) in sinks.values() {
                            deliver(&self.proxy, sink, m.clone());
                        }
                    }
                }
            }
            (None, false) => {
                tracing::debug!(proxy = %self.proxy, "MCP server sent a message that is neither request, answer nor notification");
            }
        }
    }

    /// Opens a session's GET stream (replacing an earlier one).
    pub(crate) fn open_stream(&self, session: &str) -> Option<mpsc::Receiver<Value>> {
        let mut st = self.lock();
        if st.closed.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        st.streams.insert(session.to_string(), tx);
        Some(rx)
    }

    /// Forgets a session's streams and the server requests waiting for its answer.
    pub(crate) fn end_session(&self, session: &str) {
        let mut st = self.lock();
        st.streams.remove(session);
        st.asks.retain(|_, (s, _, _)| s != session);
    }

    /// Performs the `initialize` handshake on this connection once; later calls get the same
    /// result. `Err` carries the server's JSON-RPC error object.
    pub(crate) async fn initialize(&self, params: &Value, wait: Duration) -> Result<Value, Value> {
        let mut init = self.init.lock().await;
        if let Some(r) = &*init {
            return Ok(r.clone());
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(16);
        {
            let mut st = self.lock();
            if let Some(r) = &st.closed {
                return Err(
                    json!({"code": -32000, "message": format!("the MCP server connection closed: {r}")}),
                );
            }
            st.waiters.insert(
                id,
                Waiter {
                    session: String::new(),
                    client_id: Value::from(id),
                    sink: tx,
                    token: None,
                },
            );
        }
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": params});
        if self.out.send(Bytes::from(msg.to_string())).await.is_err() {
            self.lock().waiters.remove(&id);
            return Err(json!({"code": -32000, "message": "the MCP server connection closed"}));
        }
        let answer = loop {
            match tokio::time::timeout(wait, rx.recv()).await {
                Err(_) => {
                    self.lock().waiters.remove(&id);
                    return Err(
                        json!({"code": -32000, "message": "the MCP server did not answer initialize in time"}),
                    );
                }
                Ok(None) => {
                    return Err(
                        json!({"code": -32000, "message": "the MCP server connection closed"}),
                    );
                }
                Ok(Some(m)) if is_response(&m) => break m,
                Ok(Some(_)) => {}
            }
        };
        match answer.get("result") {
            Some(result) => {
                *init = Some(result.clone());
                let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                let _ = self.out.send(Bytes::from(done.to_string())).await;
                Ok(result.clone())
            }
            None => Err(answer.get("error").cloned().unwrap_or_else(
                || json!({"code": -32603, "message": "malformed initialize answer"}),
            )),
        }
    }

    /// Whether `initialize` has succeeded on this connection.
    pub(crate) async fn initialized(&self) -> bool {
        self.init.lock().await.is_some()
    }

    /// Sends a client's messages (no `initialize` among them). Returns the stream their answers,
    /// progress and related server messages arrive on, and how many answers to expect.
    pub(crate) async fn post(
        &self,
        session: &str,
        msgs: Vec<Value>,
    ) -> Result<(mpsc::Receiver<Value>, usize), String> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut expected = 0;
        let mut outgoing = Vec::with_capacity(msgs.len());
        {
            let mut st = self.lock();
            if let Some(r) = &st.closed {
                return Err(format!("the MCP server connection closed: {r}"));
            }
            for mut m in msgs {
                let method = m.get("method").and_then(Value::as_str).map(str::to_owned);
                let has_id = m.get("id").is_some_and(|v| !v.is_null());
                match (method.as_deref(), has_id) {
                    (Some(_), true) => {
                        let id = self.next.fetch_add(1, Ordering::Relaxed);
                        let client_id = std::mem::replace(&mut m["id"], Value::from(id));
                        let token = match m.pointer_mut("/params/_meta/progressToken") {
                            Some(t) => {
                                let ours = format!("palisade-{id}");
                                let theirs = std::mem::replace(t, Value::String(ours.clone()));
                                st.tokens.insert(ours.clone(), id);
                                Some((ours, theirs))
                            }
                            None => None,
                        };
                        st.waiters.insert(
                            id,
                            Waiter {
                                session: session.to_string(),
                                client_id,
                                sink: tx.clone(),
                                token,
                            },
                        );
                        expected += 1;
                    }
                    // An answer to a server request: only from the session it was sent to,
                    // with the server's own id back.
                    (None, true) => {
                        let ours = m["id"].as_str().map(str::to_owned);
                        match ours.and_then(|id| {
                            let (s, _, _) = st.asks.get(&id)?;
                            (s == session).then_some(id)
                        }) {
                            Some(id) => {
                                if let Some((_, theirs, _)) = st.asks.remove(&id) {
                                    m["id"] = theirs;
                                }
                            }
                            None => {
                                tracing::debug!(proxy = %self.proxy, "a client answered a server request that was not sent to its session; not passed on");
                                continue;
                            }
                        }
                    }
                    // Sent once by the gateway when it initialized the connection.
                    (Some("notifications/initialized"), false) => continue,
                    (Some("notifications/cancelled"), false) => {
                        let asked = m.pointer("/params/requestId").cloned();
                        let ours = st.waiters.iter().find(|(_, w)| {
                            w.session == session && Some(&w.client_id) == asked.as_ref()
                        });
                        match ours {
                            Some((id, _)) => m["params"]["requestId"] = Value::from(*id),
                            None => continue,
                        }
                    }
                    _ => {}
                }
                outgoing.push(Bytes::from(m.to_string()));
            }
        }
        for b in outgoing {
            if self.out.send(b).await.is_err() {
                return Err("the MCP server connection closed".into());
            }
        }
        Ok((rx, expected))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for t in self.lock_tasks().drain(..) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose far end is the test: (hub, what the hub sent, where to answer).
    fn pair() -> (Arc<Hub>, mpsc::Receiver<Bytes>, mpsc::Sender<Inbound>) {
        let (out, sent) = mpsc::channel(64);
        let (answer, inbound) = mpsc::channel(64);
        let hub = Hub::start(
            "t",
            Link {
                out,
                inbound,
                tasks: Vec::new(),
            },
        );
        (hub, sent, answer)
    }

    async fn next_sent(rx: &mut mpsc::Receiver<Bytes>) -> Value {
        serde_json::from_slice(&rx.recv().await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn ids_and_progress_tokens_are_renumbered_per_client() {
        let (hub, mut sent, answer) = pair();
        let call = |tok: &str| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "x", "_meta": {"progressToken": tok}}})
        };
        let (mut a, n) = hub.post("sa", vec![call("p")]).await.unwrap();
        assert_eq!(n, 1);
        let (mut b, _) = hub.post("sb", vec![call("p")]).await.unwrap();
        let ma = next_sent(&mut sent).await;
        let mb = next_sent(&mut sent).await;
        assert_ne!(ma["id"], mb["id"]);
        assert_ne!(
            ma["params"]["_meta"]["progressToken"],
            mb["params"]["_meta"]["progressToken"]
        );
        // Progress for b's call reaches b only, with b's own token.
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": mb["params"]["_meta"]["progressToken"], "progress": 1}});
        answer.send(Inbound::Message(note)).await.unwrap();
        answer
            .send(Inbound::Message(
                json!({"jsonrpc": "2.0", "id": mb["id"], "result": {"b": true}}),
            ))
            .await
            .unwrap();
        let p = b.recv().await.unwrap();
        assert_eq!(p["params"]["progressToken"], "p");
        let r = b.recv().await.unwrap();
        assert_eq!(r, json!({"jsonrpc": "2.0", "id": 1, "result": {"b": true}}));
        assert!(a.try_recv().is_err());
        // The server going away answers a's call with an error.
        answer.send(Inbound::Closed("exited".into())).await.unwrap();
        let e = a.recv().await.unwrap();
        assert_eq!(e["id"], 1);
        assert!(e["error"]["message"].as_str().unwrap().contains("exited"));
        hub.closed().await;
        assert!(hub.is_closed());
        assert!(hub.post("sa", vec![call("p")]).await.is_err());
    }

    #[tokio::test]
    async fn initialize_runs_once_and_notifications_fan_out() {
        let (hub, mut sent, answer) = pair();
        let h = hub.clone();
        let first = tokio::spawn(async move {
            h.initialize(
                &json!({"protocolVersion": "2025-06-18"}),
                Duration::from_secs(5),
            )
            .await
        });
        let init = next_sent(&mut sent).await;
        assert_eq!(init["method"], "initialize");
        answer
            .send(Inbound::Message(
                json!({"jsonrpc": "2.0", "id": init["id"], "result": {"protocolVersion": "2025-06-18"}}),
            ))
            .await
            .unwrap();
        assert_eq!(
            first.await.unwrap().unwrap()["protocolVersion"],
            "2025-06-18"
        );
        assert_eq!(
            next_sent(&mut sent).await["method"],
            "notifications/initialized"
        );
        // A second client gets the same answer without another handshake.
        hub.initialize(&json!({}), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(sent.try_recv().is_err());
        // The clients' own `initialized` notifications are not repeated to the server.
        let (_, n) = hub
            .post(
                "sa",
                vec![json!({"jsonrpc": "2.0", "method": "notifications/initialized"})],
            )
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert!(sent.try_recv().is_err());
        // A list_changed notification reaches both open streams.
        let mut ga = hub.open_stream("sa").unwrap();
        let mut gb = hub.open_stream("sb").unwrap();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        answer.send(Inbound::Message(note.clone())).await.unwrap();
        assert_eq!(ga.recv().await.unwrap(), note);
        assert_eq!(gb.recv().await.unwrap(), note);
        // A server request or log message with nobody in flight and two sessions listening
        // goes to neither: it may belong to either one. The server hears why.
        let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": "reading /home/a/notes.txt"}});
        answer.send(Inbound::Message(log.clone())).await.unwrap();
        let ask = json!({"jsonrpc": "2.0", "id": 7, "method": "roots/list"});
        answer.send(Inbound::Message(ask.clone())).await.unwrap();
        let e = next_sent(&mut sent).await;
        assert_eq!(
            (e["id"].clone(), e["error"]["code"].clone()),
            (json!(7), json!(-32603))
        );
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("several client sessions")
        );
        assert!(ga.try_recv().is_err() && gb.try_recv().is_err());
        // With one session left, both reach it.
        hub.end_session("sb");
        answer.send(Inbound::Message(log.clone())).await.unwrap();
        answer.send(Inbound::Message(ask.clone())).await.unwrap();
        assert_eq!(ga.recv().await.unwrap(), log);
        let got = ga.recv().await.unwrap();
        assert_eq!(got["method"], "roots/list");
        assert!(got["id"].as_str().unwrap().starts_with("palisade-ask-"));
    }

    #[tokio::test]
    async fn server_requests_go_to_the_session_whose_requests_are_in_flight() {
        let (hub, mut sent, answer) = pair();
        let call = |id: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "x"}});
        let mut ga = hub.open_stream("sa").unwrap();
        let mut gb = hub.open_stream("sb").unwrap();
        // Session a calls a tool; while it runs, the server asks for a sampling.
        let h = hub.clone();
        let call_a = tokio::spawn(async move { h.post("sa", vec![call("1")]).await });
        let sent_a = next_sent(&mut sent).await;
        let ask =
            json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage", "params": {}});
        answer.send(Inbound::Message(ask.clone())).await.unwrap();
        let log =
            json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}});
        answer.send(Inbound::Message(log.clone())).await.unwrap();
        // Session b has a stream open but nothing in flight: it sees neither.
        answer
            .send(Inbound::Message(
                json!({"jsonrpc": "2.0", "id": sent_a["id"], "result": {}}),
            ))
            .await
            .unwrap();
        let (mut rx, _) = call_a.await.unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m);
        }
        assert!(got.contains(&log), "{got:?}");
        let relayed = got
            .iter()
            .find(|m| m["method"] == "sampling/createMessage")
            .expect("the server request")
            .clone();
        let ours = relayed["id"].as_str().unwrap().to_string();
        assert!(ours.starts_with("palisade-ask-"), "{relayed}");
        assert!(ga.try_recv().is_err() && gb.try_recv().is_err());
        // Only session a can answer it, and the server gets its own id back.
        let reply = json!({"jsonrpc": "2.0", "id": ours, "result": {"content": "x"}});
        hub.post("sb", vec![reply.clone()]).await.unwrap();
        hub.post("sa", vec![reply]).await.unwrap();
        let passed = next_sent(&mut sent).await;
        assert_eq!(passed["id"], "s1", "{passed}");
        assert_eq!(passed["result"]["content"], "x");
        assert!(
            sent.try_recv().is_err(),
            "session b's answer was not passed on"
        );
        // Requests of two sessions in flight: whose it is cannot be told.
        let h = hub.clone();
        let _a = tokio::spawn(async move { h.post("sa", vec![call("2")]).await });
        next_sent(&mut sent).await;
        let h = hub.clone();
        let _b = tokio::spawn(async move { h.post("sb", vec![call("3")]).await });
        next_sent(&mut sent).await;
        answer
            .send(Inbound::Message(
                json!({"jsonrpc": "2.0", "id": "s2", "method": "elicitation/create"}),
            ))
            .await
            .unwrap();
        let e = next_sent(&mut sent).await;
        assert_eq!(e["id"], "s2");
        assert_eq!(e["error"]["code"], -32603);
    }

    #[tokio::test]
    async fn task_status_goes_to_the_tasks_session_only() {
        let (hub, mut sent, answer) = pair();
        let mut ga = hub.open_stream("sa").unwrap();
        let mut gb = hub.open_stream("sb").unwrap();
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "x", "task": {}}});
        let (mut rx, _) = hub.post("sa", vec![call]).await.unwrap();
        let up = next_sent(&mut sent).await;
        answer
            .send(Inbound::Message(json!({"jsonrpc": "2.0", "id": up["id"],
                "result": {"task": {"taskId": "t-1", "status": "working"}}})))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap()["result"]["task"]["taskId"], "t-1");
        let status = json!({"jsonrpc": "2.0", "method": "notifications/tasks/status",
            "params": {"taskId": "t-1", "status": "completed"}});
        answer.send(Inbound::Message(status.clone())).await.unwrap();
        // Late progress (its request answered) and another task's status go nowhere.
        for m in [
            json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": "palisade-1", "progress": 1}}),
            json!({"jsonrpc": "2.0", "method": "notifications/tasks/status",
                "params": {"taskId": "t-other", "status": "completed"}}),
        ] {
            answer.send(Inbound::Message(m)).await.unwrap();
        }
        let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        answer
            .send(Inbound::Message(changed.clone()))
            .await
            .unwrap();
        assert_eq!(ga.recv().await.unwrap(), status);
        assert_eq!(ga.recv().await.unwrap(), changed);
        assert_eq!(gb.recv().await.unwrap(), changed, "b sees no task of a's");
    }

    #[tokio::test]
    async fn server_request_without_client_is_answered_with_an_error() {
        let (_hub, mut sent, answer) = pair();
        answer
            .send(Inbound::Message(
                json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage"}),
            ))
            .await
            .unwrap();
        let e = next_sent(&mut sent).await;
        assert_eq!(e["id"], "s1");
        assert_eq!(e["error"]["code"], -32603);
    }
}
