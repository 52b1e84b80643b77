//! The scanner's MCP client: one JSON-RPC exchange at a time over Streamable HTTP (answers as
//! JSON or as an event stream, session or stateless era) or a stdio server it launches.
//! Everything read is bounded: answers, lines, events and time.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::bridge::stdio::{GroupGuard, read_line};
use crate::upstream::{GuardedClient, HttpClient, is_json};

/// Largest answer (a JSON body, an event or a stdio line) the scanner reads.
pub(crate) const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// The session-era revision the scanner asks for.
pub(crate) const SESSION_ERA: &str = "2025-11-25";
/// The stateless-era revision the scanner falls back to.
pub(crate) const STATELESS_ERA: &str = "2026-07-28";

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the exchange broke off.
    #[error("{0}")]
    Transport(String),
    /// No answer in time.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The server answered with an HTTP error status and no JSON-RPC message.
    #[error("HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        /// The status.
        status: u16,
        /// A short reason (the `WWW-Authenticate` challenge of a 401).
        detail: String,
    },
    /// What the server sent is not a JSON-RPC answer to the request.
    #[error("{0}")]
    Protocol(String),
    /// The server answered with a JSON-RPC error.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The error's code.
        code: i64,
        /// Its message (cut to 200 characters).
        message: String,
    },
}

/// The HTTP client a scan uses: the plain one (the CLI scans what its user names, loopback
/// included) or the guarded one (the admin API: no link-local or unspecified addresses).
#[derive(Clone)]
pub enum AnyClient {
    /// [`crate::build_client`].
    Plain(HttpClient),
    /// [`crate::build_guarded_client`].
    Guarded(GuardedClient),
}

impl AnyClient {
    async fn request(&self, req: Request<Full<Bytes>>) -> Result<http::Response<Incoming>, String> {
        let r = match self {
            AnyClient::Plain(c) => c.request(req).await,
            AnyClient::Guarded(c) => c.request(req).await,
        };
        r.map_err(|e| crate::upstream::error_chain(&e))
    }
}

/// One answer: the HTTP status and headers (none for stdio) and the JSON-RPC message answering
/// the request, when there was one.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub message: Option<Value>,
}

/// A Streamable HTTP endpoint.
pub(crate) struct HttpPeer {
    client: AnyClient,
    url: Uri,
    /// Headers the user gave (credentials); left out by [`HttpPeer::without_credentials`].
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    pub session: Option<HeaderValue>,
    pub version: Option<HeaderValue>,
}

impl HttpPeer {
    pub fn new(
        client: AnyClient,
        url: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            url,
            headers,
            timeout,
            session: None,
            version: None,
        }
    }

    /// A fresh peer for the same URL with none of the user's headers and no session.
    pub fn without_credentials(&self) -> Self {
        Self::new(
            self.client.clone(),
            self.url.clone(),
            Vec::new(),
            self.timeout,
        )
    }

    /// A fresh peer for the same URL with the same headers and no session.
    pub fn fresh(&self) -> Self {
        Self::new(
            self.client.clone(),
            self.url.clone(),
            self.headers.clone(),
            self.timeout,
        )
    }

    /// Adds a header to every request.
    pub fn add_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.push((name, value));
    }

    /// POSTs one message with `extra` headers and reads the answer to `msg`'s id (none for a
    /// notification): a JSON body, or the first event of a stream that answers it.
    pub async fn post(
        &mut self,
        msg: &Value,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, ClientError> {
        let secs = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, self.post_inner(msg, extra))
            .await
            .map_err(|_| ClientError::Timeout(secs))?
    }

    async fn post_inner(
        &mut self,
        msg: &Value,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, ClientError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .header(
                http::header::USER_AGENT,
                concat!("palisade-scan/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s.clone());
        }
        if let Some(v) = &self.version {
            req = req.header("mcp-protocol-version", v.clone());
        }
        for (k, v) in self.headers.iter().chain(extra) {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(msg.to_string())))
            .map_err(|e| ClientError::Transport(format!("bad request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(ClientError::Transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let id = msg.get("id").filter(|i| !i.is_null()).cloned();
        let ctype = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = resp.into_body();
        let message = if ctype.starts_with("text/event-stream") {
            match &id {
                Some(id) => answer_in_stream(&mut body, id).await?,
                None => None,
            }
        } else {
            let bytes = read_bounded(&mut body).await?;
            if is_json(&ctype) && !bytes.is_empty() {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ClientError::Protocol(format!("the answer is not valid JSON: {e}"))
                })?;
                // Only the answer to this request counts (not a batch, not another id).
                id.as_ref().filter(|id| is_answer_to(&v, id)).map(|_| v)
            } else {
                None
            }
        };
        // A refusal of credentials is that, whatever JSON-RPC error the body adds.
        let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        if refused || (message.is_none() && !status.is_success()) {
            let said = message
                .as_ref()
                .and_then(|m| m.pointer("/error/message"))
                .and_then(Value::as_str);
            let header = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
            let detail = if status.is_redirection() {
                format!(
                    "redirects are not followed (Location: {}); scan the URL it names",
                    header(http::header::LOCATION).map_or("none".into(), super::shown_location)
                )
            } else {
                header(http::header::WWW_AUTHENTICATE)
                    .filter(|_| status == StatusCode::UNAUTHORIZED)
                    .or(said)
                    .unwrap_or_default()
                    .to_string()
            };
            return Err(ClientError::Status {
                status: status.as_u16(),
                detail: detail.chars().take(300).collect(),
            });
        }
        if let (None, Some(id)) = (&message, &id) {
            return Err(ClientError::Protocol(format!(
                "HTTP {} with no JSON-RPC answer to request {id}",
                status.as_u16()
            )));
        }
        Ok(Answer {
            status: status.as_u16(),
            headers,
            message,
        })
    }

    /// Ends the session (`DELETE`), when there is one; errors do not matter.
    pub async fn close(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        let mut req = Request::builder()
            .method(Method::DELETE)
            .uri(self.url.clone())
            .header("mcp-session-id", s);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Ok(req) = req.body(Full::new(Bytes::new())) {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.client.request(req)).await;
        }
    }
}

async fn read_bounded(body: &mut Incoming) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?;
        if let Some(d) = frame.data_ref() {
            if out.len() + d.len() > MAX_ANSWER {
                return Err(ClientError::Protocol(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER >> 20
                )));
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out)
}

/// Reads events until one carries the answer to `id` (other messages, such as notifications or
/// the server's own requests, are skipped).
async fn answer_in_stream(body: &mut Incoming, id: &Value) -> Result<Option<Value>, ClientError> {
    let mut splitter = crate::sse::SseSplitter::new(MAX_ANSWER);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ClientError::Transport(format!("reading the stream: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let run = splitter.push(data).map_err(|_| {
            ClientError::Protocol(format!(
                "an event of the stream is larger than {} MiB",
                MAX_ANSWER >> 20
            ))
        })?;
        let mut found = None;
        crate::sse::for_each_event(&run, |_, data| {
            if found.is_none()
                && let Ok(v) = serde_json::from_slice::<Value>(data)
                && is_answer_to(&v, id)
            {
                found = Some(v);
            }
        });
        if found.is_some() {
            return Ok(found);
        }
    }
    Err(ClientError::Protocol(
        "the event stream ended without an answer to the request".into(),
    ))
}

fn is_answer_to(v: &Value, id: &Value) -> bool {
    v.get("id") == Some(id) && (v.get("result").is_some() || v.get("error").is_some())
}

/// A stdio server the scanner launched (its process group is killed when this is dropped).
pub(crate) struct StdioPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _guard: GroupGuard,
    timeout: Duration,
}

impl StdioPeer {
    /// Launches `command` (program and arguments) with the scanner's environment.
    pub fn spawn(command: &[String], timeout: Duration) -> Result<Self, ClientError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| ClientError::Transport("no command to launch".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ClientError::Transport(format!("cannot launch `{program}`: {e}")))?;
        let guard = GroupGuard::new(child.id());
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| ClientError::Transport("the server has no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ClientError::Transport("the server has no stdout".into()))?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            _guard: guard,
            timeout,
        })
    }

    /// Writes one message and, for a request, reads lines until its answer.
    pub async fn send(&mut self, msg: &Value) -> Result<Answer, ClientError> {
        let secs = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, self.send_inner(msg))
            .await
            .map_err(|_| ClientError::Timeout(secs))?
    }

    async fn send_inner(&mut self, msg: &Value) -> Result<Answer, ClientError> {
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        let wrote = async {
            self.stdin.write_all(&line).await?;
            self.stdin.flush().await
        }
        .await;
        if let Err(e) = wrote {
            return Err(self.exited(format!("cannot write to the server: {e}")));
        }
        let Some(id) = msg.get("id").filter(|i| !i.is_null()) else {
            return Ok(Answer {
                status: 200,
                headers: HeaderMap::new(),
                message: None,
            });
        };
        let mut buf = Vec::new();
        loop {
            match read_line(&mut self.stdout, &mut buf, MAX_ANSWER).await {
                Err(e) => return Err(ClientError::Transport(format!("reading the server: {e}"))),
                Ok(Ok(false)) => return Err(self.exited("the server closed its output".into())),
                Ok(Err(len)) => {
                    return Err(ClientError::Protocol(format!(
                        "the server wrote a {len}-byte line (more than {} MiB)",
                        MAX_ANSWER >> 20
                    )));
                }
                Ok(Ok(true)) => {
                    // Lines that are not JSON (a server's stray log output) are skipped.
                    if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                        && is_answer_to(&v, id)
                    {
                        return Ok(Answer {
                            status: 200,
                            headers: HeaderMap::new(),
                            message: Some(v),
                        });
                    }
                }
            }
        }
    }

    fn exited(&mut self, what: String) -> ClientError {
        match self.child.try_wait() {
            Ok(Some(st)) => ClientError::Transport(format!("{what} (it exited: {st})")),
            _ => ClientError::Transport(what),
        }
    }
}

/// The transports a scan speaks.
pub(crate) enum Peer {
    Http(HttpPeer),
    Stdio(StdioPeer),
}

impl Peer {
    pub async fn call(&mut self, msg: &Value) -> Result<Answer, ClientError> {
        match self {
            Peer::Http(p) => {
                let extra = stateless_headers(p, msg);
                p.post(msg, &extra).await
            }
            Peer::Stdio(p) => p.send(msg).await,
        }
    }
}

/// The headers a stateless-era request carries (`Mcp-Method`, and `Mcp-Name` for a call).
fn stateless_headers(p: &HttpPeer, msg: &Value) -> Vec<(HeaderName, HeaderValue)> {
    let modern = p
        .version
        .as_ref()
        .is_some_and(|v| v.as_bytes() == STATELESS_ERA.as_bytes());
    let mut out = Vec::new();
    if !modern {
        return out;
    }
    if let Some(m) = msg
        .get("method")
        .and_then(Value::as_str)
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        out.push((HeaderName::from_static("mcp-method"), m));
    }
    let name = msg
        .pointer("/params/name")
        .or_else(|| msg.pointer("/params/uri"))
        .and_then(Value::as_str)
        .and_then(|n| HeaderValue::from_str(n).ok());
    if let Some(n) = name {
        out.push((HeaderName::from_static("mcp-name"), n));
    }
    out
}

/// A request message with the stateless era's `_meta` when `modern`.
pub(crate) fn request(id: u64, method: &str, params: Value, modern: bool) -> Value {
    let mut params = if params.is_object() {
        params
    } else {
        json!({})
    };
    if modern {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": STATELESS_ERA,
            "io.modelcontextprotocol/clientInfo": client_info(),
            "io.modelcontextprotocol/clientCapabilities": {}
        });
    }
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub(crate) fn client_info() -> Value {
    json!({"name": "palisade-scan", "version": env!("CARGO_PKG_VERSION")})
}
