//! `palisade mock-mcp`: a small MCP server (Streamable HTTP, session era) for tests and demos.
//! Its tool set can be replaced at run time (`POST /_mock/tools`), to play a server whose tools
//! change under the gateway (rug pulls), and it answers in JSON or, with `--sse`, in SSE streams.
//! `POST /_mock/quirks` makes it misbehave the way a broken or hostile server does (answers with
//! ids of another type, malformed bodies, other content types, streams without event ids), to
//! test the gateway's defences.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

struct State {
    tools: Mutex<Value>,
    /// Prompts, resources and instructions (`POST /_mock/catalog`).
    catalog: Mutex<Value>,
    sse: bool,
    /// Accept requests without a session (benchmarks send `tools/call` directly).
    stateless: bool,
    /// Messages received, newest last (bounded), served at `GET /_mock/requests`.
    received: Mutex<Vec<Value>>,
    /// Misbehaviour for every answer but `initialize`'s (`POST /_mock/quirks`): `string_ids`
    /// (answer id 2 as "2"), `body` (this text instead of the answer), `content_type`,
    /// `tool_result` (the result of every `tools/call`), `results` (method → the result of
    /// every request of that method, known or not), `truncated` (the connection closes in the
    /// middle of the answer), `status` (the HTTP status of answers), `notification_body` (this
    /// JSON text as the answer to a notification), `event_ids: false` (SSE events without
    /// an `id:` line, so a stream cannot be resumed; with ids, the answer `body` replaced is sent
    /// on the resumed stream).
    quirks: Mutex<Value>,
    /// The answer a `body` quirk kept off a resumable event stream, sent when the client
    /// resumes the stream (`GET /mcp` with `Last-Event-ID`).
    held: Mutex<Option<String>>,
}

fn default_catalog() -> Value {
    json!({
        "prompts": [{"name": "greet", "description": "Greets someone.",
                     "arguments": [{"name": "who", "required": true}]}],
        "resources": [{"uri": "mock://docs/readme", "name": "readme", "mimeType": "text/markdown"}],
        "instructions": "A test server."
    })
}

fn default_tools() -> Value {
    json!([
        {"name": "echo", "description": "Echoes the message back.",
         "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}},
        {"name": "add", "description": "Adds two numbers.",
         "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}
    ])
}

pub async fn run(addr: SocketAddr, sse: bool, stateless: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "palisade mock-mcp listening on http://{}/mcp",
        listener.local_addr()?
    );
    let state = Arc::new(State {
        tools: Mutex::new(default_tools()),
        catalog: Mutex::new(default_catalog()),
        sse,
        stateless,
        received: Mutex::new(Vec::new()),
        quirks: Mutex::new(json!({})),
        held: Mutex::new(None),
    });
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(cut_if_asked(handle(state, req).await?).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Header by which `handle` asks for its answer to be cut off (the `truncated` quirk).
const CUT: &str = "x-mock-cut";

/// Sends a body's bytes, then (once they had time to leave) fails: the connection closes in
/// the middle of the answer.
struct Cut(Option<Bytes>, std::pin::Pin<Box<tokio::time::Sleep>>);

impl hyper::body::Body for Cut {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        if let Some(b) = self.0.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b))));
        }
        std::task::ready!(self.1.as_mut().poll(cx));
        std::task::Poll::Ready(Some(Err(std::io::Error::other("answer cut off"))))
    }
}

/// The answer as `handle` made it, or cut off after its bytes when it asked so.
async fn cut_if_asked(
    r: Response<Full<Bytes>>,
) -> Response<http_body_util::Either<Full<Bytes>, Cut>> {
    use http_body_util::Either;
    if !r.headers().contains_key(CUT) {
        return r.map(Either::Left);
    }
    let (mut parts, body) = r.into_parts();
    parts.headers.remove(CUT);
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let pause = Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50)));
    Response::from_parts(parts, Either::Right(Cut(Some(bytes), pause)))
}

/// Serves MCP on stdin/stdout. Every `tools/list` reads the tool list from `tools_file` when it
/// exists (so tests can change tools under the gateway); `tools/call` of `exit` ends the process
/// (to test supervision); a call with a progress token gets one progress notification first.
pub async fn run_stdio(tools_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    eprintln!("palisade mock-mcp serving on stdio");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            eprintln!("not JSON: {line}");
            continue;
        };
        let (Some(m), Some(id)) = (msg.get("method").and_then(Value::as_str), msg.get("id")) else {
            continue;
        };
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        if m == "tools/call" && params["name"] == "exit" {
            eprintln!("exiting as asked");
            std::process::exit(3);
        }
        let tools = tools_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(Value::is_array)
            .unwrap_or_else(default_tools);
        let mut text = String::new();
        if let Some(token) = params.pointer("/_meta/progressToken") {
            let p = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": token, "progress": 1, "total": 1}});
            text.push_str(&format!("{p}\n"));
        }
        text.push_str(&format!(
            "{}\n",
            answer(id, m, &params, &tools, &default_catalog())
        ));
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

fn reply(
    status: StatusCode,
    body: String,
    ct: &str,
    session: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ct) {
        r.headers_mut().insert("content-type", v);
    }
    if let Some(s) = session.and_then(|s| http::HeaderValue::from_str(s).ok()) {
        r.headers_mut().insert("mcp-session-id", s);
    }
    r
}

fn answer(id: &Value, method: &str, params: &Value, tools: &Value, catalog: &Value) -> Value {
    let result = match method {
        "initialize" => {
            let mut r = json!({"protocolVersion": params.get("protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
            "capabilities": {"tools": {"listChanged": true}, "prompts": {}, "resources": {}},
            "serverInfo": {"name": "palisade-mock-mcp", "version": "1.0.0"}});
            if let Some(i) = catalog.get("instructions") {
                r["instructions"] = i.clone();
            }
            r
        }
        "tools/list" => json!({"tools": tools}),
        "prompts/list" => json!({"prompts": catalog["prompts"]}),
        "resources/list" => json!({"resources": catalog["resources"]}),
        "prompts/get" => json!({"messages": [{"role": "user",
            "content": {"type": "text", "text": format!("prompt {}", params["name"].as_str().unwrap_or(""))}}]}),
        // The catalog's `contents` (URI → text) stands in for what a resource holds.
        "resources/read" => {
            let uri = params["uri"].as_str().unwrap_or("");
            let text = catalog
                .pointer("/contents")
                .and_then(|c| c.get(uri))
                .and_then(Value::as_str)
                .map_or_else(|| format!("contents of {uri}"), str::to_string);
            json!({"contents": [{"uri": params["uri"], "text": text}]})
        }
        "ping" => json!({}),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            let text = match name {
                "echo" => args
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                "add" => format!(
                    "{}",
                    args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0)
                ),
                other => format!("called {other} with {args}"),
            };
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        _ => {
            return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("method not found: {method}")}});
        }
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resuming = req.headers().contains_key("last-event-id");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/_mock/tools" && method == Method::POST {
        return Ok(match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_array() => {
                *state.tools.lock().unwrap_or_else(|p| p.into_inner()) = v;
                reply(StatusCode::OK, "{}".into(), "application/json", None)
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"expected a JSON array of tools\"}".into(),
                "application/json",
                None,
            ),
        });
    }
    if path == "/_mock/catalog" && method == Method::POST {
        return Ok(match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() => {
                *state.catalog.lock().unwrap_or_else(|p| p.into_inner()) = v;
                reply(StatusCode::OK, "{}".into(), "application/json", None)
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"expected an object with prompts, resources and instructions\"}"
                    .into(),
                "application/json",
                None,
            ),
        });
    }
    if path == "/_mock/quirks" && method == Method::POST {
        return Ok(match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() => {
                *state.quirks.lock().unwrap_or_else(|p| p.into_inner()) = v;
                reply(StatusCode::OK, "{}".into(), "application/json", None)
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"expected an object of quirks\"}".into(),
                "application/json",
                None,
            ),
        });
    }
    if path == "/_mock/requests" {
        let r = state.received.lock().unwrap_or_else(|p| p.into_inner());
        return Ok(reply(
            StatusCode::OK,
            Value::Array(r.clone()).to_string(),
            "application/json",
            None,
        ));
    }
    if path != "/mcp" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "{}".into(),
            "application/json",
            None,
        ));
    }
    match method {
        Method::DELETE => return Ok(reply(StatusCode::OK, String::new(), "text/plain", None)),
        Method::GET => {
            let held = state.held.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(answer) = held.filter(|_| resuming) {
                return Ok(reply(
                    StatusCode::OK,
                    format!("id: 2\nevent: message\ndata: {answer}\n\n"),
                    "text/event-stream",
                    None,
                ));
            }
            return Ok(reply(
                StatusCode::METHOD_NOT_ALLOWED,
                String::new(),
                "text/plain",
                None,
            ));
        }
        _ => {}
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "{}".into(),
            "application/json",
            None,
        ));
    };
    {
        let mut r = state.received.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= 200 {
            r.remove(0);
        }
        r.push(msg.clone());
    }
    let Some(m) = msg.get("method").and_then(Value::as_str) else {
        return Ok(reply(
            StatusCode::ACCEPTED,
            String::new(),
            "text/plain",
            None,
        ));
    };
    let Some(id) = msg.get("id") else {
        // The `notification_body` quirk: a JSON body where a notification gets none.
        let quirk = state
            .quirks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get("notification_body")
            .and_then(Value::as_str)
            .map(str::to_string);
        return Ok(match quirk {
            Some(b) => reply(StatusCode::OK, b, "application/json", None),
            None => reply(StatusCode::ACCEPTED, String::new(), "text/plain", None),
        });
    };
    let new_session = (m == "initialize").then(palisade_core::crypto::random_id);
    if m != "initialize" && session.is_none() && !state.stateless {
        let e = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": "missing session"}});
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "application/json",
            None,
        ));
    }
    let tools = state
        .tools
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let catalog = state
        .catalog
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut out = answer(
        id,
        m,
        msg.get("params").unwrap_or(&Value::Null),
        &tools,
        &catalog,
    );
    let quirks = if m == "initialize" {
        json!({})
    } else {
        state
            .quirks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    if let Some(result) = quirks.get("tool_result").filter(|_| m == "tools/call") {
        out["result"] = result.clone();
    }
    if let Some(result) = quirks.get("results").and_then(|r| r.get(m)) {
        out = json!({"jsonrpc": "2.0", "id": id, "result": result});
    }
    // `pages`: `endless` (every page names a new next one) or `cycle` (two pages naming each
    // other): a server whose listing never ends.
    if m == "tools/list"
        && let Some(how) = quirks["pages"].as_str()
    {
        let at = msg
            .pointer("/params/cursor")
            .and_then(Value::as_str)
            .and_then(|c| c.strip_prefix('p'))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let next = if how == "cycle" {
            1 - at.min(1)
        } else {
            at + 1
        };
        out["result"]["nextCursor"] = json!(format!("p{next}"));
    }
    if quirks["string_ids"] == true && !id.is_string() {
        out["id"] = Value::String(id.to_string());
    }
    let text = match quirks["body"].as_str() {
        Some(b) => {
            if state.sse && quirks["event_ids"] != false {
                *state.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(out.to_string());
            }
            b.to_string()
        }
        None => out.to_string(),
    };
    let sid = new_session.as_deref().or(session.as_deref());
    let (body, ct) = if state.sse {
        (
            if quirks["event_ids"] == false {
                format!("event: message\ndata: {text}\n\n")
            } else {
                format!("id: 1\nevent: message\ndata: {text}\n\n")
            },
            "text/event-stream",
        )
    } else {
        (text, "application/json")
    };
    let ct = quirks["content_type"].as_str().unwrap_or(ct);
    let status = quirks["status"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let mut r = reply(status, body, ct, sid);
    if quirks["truncated"] == true {
        r.headers_mut()
            .insert(CUT, http::HeaderValue::from_static("1"));
    }
    Ok(r)
}
