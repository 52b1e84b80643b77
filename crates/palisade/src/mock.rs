//! `palisade mock-llm`: a deterministic fake of the OpenAI and Anthropic APIs, streaming included.
//! The answer to a prompt is always the same text, so tests can compare streamed and plain
//! answers, and usage is derived from the text so token accounting can be checked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Bodies the mock received, newest last (bounded), served at `GET /_mock/requests` so tests
/// can check exactly what reached the upstream.
static RECEIVED: std::sync::Mutex<std::collections::VecDeque<Value>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn remember(v: &Value) {
    let mut r = RECEIVED.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() >= 200 {
        r.pop_front();
    }
    r.push_back(v.clone());
}

pub struct MockConfig {
    pub addr: SocketAddr,
    pub latency_ms: u64,
    pub chunks: usize,
    pub chunk_delay_ms: u64,
    pub require_key: Option<String>,
}

type MockBody = BoxBody<Bytes, Infallible>;

pub async fn run(cfg: MockConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.addr).await?;
    println!(
        "palisade mock-llm listening on http://{}",
        listener.local_addr()?
    );
    let cfg = Arc::new(cfg);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(cfg.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serves `handle` over HTTP/1 on `listener` until interrupted: the accept loop of the small
/// test servers whose handler answers with a whole body.
pub async fn serve_whole<S: Send + Sync + 'static, F, Fut>(
    listener: tokio::net::TcpListener,
    state: Arc<S>,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<S>, hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, v: Value) -> Response<MockBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Text of the last user turn, across the request shapes.
fn prompt_text(body: &Value) -> String {
    fn content(c: &Value) -> String {
        match c {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        return msgs
            .last()
            .and_then(|m| m.get("content"))
            .map(content)
            .unwrap_or_default();
    }
    match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .last()
            .map(|i| i.get("content").map(content).unwrap_or_else(|| content(i)))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Rough, deterministic token count: one token per 4 characters, at least one.
fn tokens(s: &str) -> i64 {
    ((s.chars().count() as i64 + 3) / 4).max(1)
}

fn whole_input(body: &Value) -> String {
    body.get("messages")
        .or_else(|| body.get("input"))
        .map(Value::to_string)
        .unwrap_or_default()
}

/// The credential `mock-error-leak` quotes in its error (shaped like a provider's key).
pub const LEAKED_KEY: &str = "sk-proj-Leaked0Leaked1Leaked2Leaked3Leaked4Leaked5abcd";

/// The fixed answer to a prompt.
pub fn answer_for(prompt: &str) -> String {
    let p: String = prompt.chars().take(200).collect();
    format!("Mock answer from Palisade's test model. You said: {p}")
}

/// Splits an answer into `n` chunks (by characters), keeping the concatenation exact.
fn split_chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn authorized(cfg: &MockConfig, req: &Request<Incoming>) -> bool {
    let Some(want) = &cfg.require_key else {
        return true;
    };
    let h = req.headers();
    let bearer = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let xkey = h.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer == Some(want.as_str()) || xkey == Some(want.as_str())
}

async fn handle(
    cfg: Arc<MockConfig>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    if !authorized(&cfg, &req) {
        return Ok(full(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "mock: wrong upstream key", "type": "authentication_error"}}),
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "unreadable body"}}),
            ));
        }
    };
    if cfg.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
    }
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Ok(full(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {"message": format!("mock: invalid JSON: {e}"), "type": "invalid_request_error"}}),
                ));
            }
        }
    };
    if !json_body.is_null() {
        remember(&json_body);
    }
    let model = json_body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let stream = json_body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let resp = match (&method, path.as_str()) {
        // A broken upstream's error page (a proxy in front of the provider, say).
        (&Method::POST, _) if model == "mock-html-error" => {
            let mut r = Response::new(
                Full::new(Bytes::from_static(
                    b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
                ))
                .boxed(),
            );
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut()
                .insert("content-type", http::HeaderValue::from_static("text/html"));
            r
        }
        // A provider error that quotes a credential (as "incorrect API key" errors do).
        (&Method::POST, _) if model == "mock-error-leak" => full(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": format!("Incorrect API key provided: {LEAKED_KEY}"),
                "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ),
        (&Method::GET, "/_mock/requests") => {
            let r = RECEIVED.lock().unwrap_or_else(|p| p.into_inner());
            full(StatusCode::OK, Value::Array(r.iter().cloned().collect()))
        }
        (&Method::GET, "/v1/models") => full(
            StatusCode::OK,
            json!({"object": "list", "data": [
                {"id": "mock-gpt", "object": "model", "created": 1700000000, "owned_by": "palisade"},
                {"id": "mock-claude", "object": "model", "created": 1700000000, "owned_by": "palisade"}
            ]}),
        ),
        (&Method::POST, "/v1/chat/completions") => chat(&cfg, &json_body, &model, stream),
        (&Method::POST, "/v1/responses") => responses(&cfg, &json_body, &model, stream),
        // A background response fetched by id: the answer names the model and its usage.
        (&Method::GET, p) if p.starts_with("/v1/responses/resp_") => {
            let mut r = responses(&cfg, &json!({"input": "background"}), "mock-gpt", false);
            r.headers_mut()
                .insert("x-mock-fetched", http::HeaderValue::from_static("1"));
            r
        }
        (&Method::POST, "/v1/messages") => messages(&cfg, &json_body, &model, stream),
        (&Method::POST, "/v1/embeddings") => embeddings(&json_body, &model),
        (&Method::POST, "/v1/completions") => completions(&cfg, &json_body, &model, stream),
        _ => full(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("mock: no route {method} {path}"), "type": "not_found"}}),
        ),
    };
    Ok(resp)
}

/// Streams pre-rendered SSE events with the configured delay between them.
fn sse(cfg: &MockConfig, events: Vec<String>) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let delay = Duration::from_millis(cfg.chunk_delay_ms);
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Bytes::from(ev)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(BodyExt::boxed(ChannelBody(rx)));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-cache"));
    r
}

/// A body fed by a channel, one frame per SSE event.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

fn chat(cfg: &MockConfig, body: &Value, model: &str, stream: bool) -> Response<MockBody> {
    // `mock-leak` answers with a credential of its own (one the client never sent).
    let text = if model == "mock-leak" {
        format!("Here it is: {LEAKED_KEY}")
    } else {
        answer_for(&prompt_text(body))
    };
    let (pt, ct) = (tokens(&whole_input(body)), tokens(&text));
    let usage = json!({"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct,
        "prompt_tokens_details": {"cached_tokens": 0}});
    let id = "chatcmpl-mock";
    if !stream {
        // `"logprobs": true`: the text again, token by token (four characters each), as
        // strings and as bytes.
        let logprobs = if body.get("logprobs") == Some(&Value::Bool(true)) {
            let content: Vec<Value> = split_chunks(&text, text.len().div_ceil(4).max(1))
                .into_iter()
                .map(|t| json!({"token": t, "logprob": -0.01, "bytes": t.as_bytes(), "top_logprobs": []}))
                .collect();
            json!({"content": content})
        } else {
            Value::Null
        };
        return full(
            StatusCode::OK,
            json!({"id": id, "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": logprobs}],
                "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        data(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]}),
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in split_chunks(&text, cfg.chunks) {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if include_usage {
        events.push(data(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 1700000000,
            "model": model, "choices": [], "usage": usage}),
        ));
    }
    events.push("data: [DONE]\n\n".into());
    sse(cfg, events)
}

/// A legacy text completion with its token count; streamed, the count comes in a last chunk.
/// `mock_pad_bytes` in the request pads the answer's text to about that many bytes (a long
/// answer).
fn completions(cfg: &MockConfig, body: &Value, model: &str, stream: bool) -> Response<MockBody> {
    let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("");
    let mut text = answer_for(prompt);
    if let Some(n) = body.get("mock_pad_bytes").and_then(Value::as_u64) {
        let n = (n as usize).min(8 << 20);
        while text.len() < n {
            text.push_str(" and more");
        }
    }
    let (pt, ct) = (tokens(prompt), tokens(&text));
    let usage = json!({"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct});
    if !stream {
        return full(
            StatusCode::OK,
            json!({"id": "cmpl-mock", "object": "text_completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
                "usage": usage}),
        );
    }
    let mut events: Vec<String> = split_chunks(&text, cfg.chunks)
        .into_iter()
        .map(|piece| {
            data(
                &json!({"id": "cmpl-mock", "object": "text_completion", "created": 1700000000,
                "model": model, "choices": [{"index": 0, "text": piece, "finish_reason": null}]}),
            )
        })
        .collect();
    events.push(data(
        &json!({"id": "cmpl-mock", "object": "text_completion",
        "created": 1700000000, "model": model, "choices": [], "usage": usage}),
    ));
    events.push("data: [DONE]\n\n".into());
    sse(cfg, events)
}

fn responses(cfg: &MockConfig, body: &Value, model: &str, stream: bool) -> Response<MockBody> {
    let text = answer_for(&prompt_text(body));
    let (pt, ct) = (tokens(&whole_input(body)), tokens(&text));
    let response = |status: &str, content: Value| {
        json!({"id": "resp_mock", "object": "response", "created_at": 1700000000, "status": status, "model": model,
            "output": content, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": pt, "output_tokens": ct, "total_tokens": pt + ct,
                "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
    };
    let message = json!([{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]}]);
    if !stream {
        return full(StatusCode::OK, response("completed", message));
    }
    let mut seq = 0;
    let mut next = |mut v: Value| {
        v["sequence_number"] = json!(seq);
        seq += 1;
        let name = v["type"].as_str().unwrap_or("message").to_string();
        event(&name, &v)
    };
    let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
    let mut events = vec![
        next(json!({"type": "response.created", "response": response("in_progress", json!([]))})),
        next(
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message",
            "id": "msg_mock", "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        next(
            json!({"type": "response.content_part.added", "item_id": "msg_mock", "output_index": 0,
            "content_index": 0, "part": part("")}),
        ),
    ];
    for piece in split_chunks(&text, cfg.chunks) {
        events.push(next(
            json!({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0,
            "content_index": 0, "delta": piece, "logprobs": []}),
        ));
    }
    events.push(next(
        json!({"type": "response.output_text.done", "item_id": "msg_mock", "output_index": 0,
        "content_index": 0, "text": text, "logprobs": []}),
    ));
    events.push(next(
        json!({"type": "response.content_part.done", "item_id": "msg_mock", "output_index": 0,
        "content_index": 0, "part": part(&text)}),
    ));
    events.push(next(
        json!({"type": "response.output_item.done", "output_index": 0, "item": message[0].clone()}),
    ));
    events.push(next(
        json!({"type": "response.completed", "response": response("completed", message)}),
    ));
    sse(cfg, events)
}

fn messages(cfg: &MockConfig, body: &Value, model: &str, stream: bool) -> Response<MockBody> {
    let text = answer_for(&prompt_text(body));
    let (it, ot) = (tokens(&whole_input(body)), tokens(&text));
    if !stream {
        return full(
            StatusCode::OK,
            json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": it, "output_tokens": ot, "cache_read_input_tokens": 0}}),
        );
    }
    let mut events = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": it, "output_tokens": 1, "cache_read_input_tokens": 0}}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for piece in split_chunks(&text, cfg.chunks) {
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event("message_delta", &json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": ot}})));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    sse(cfg, events)
}

fn embeddings(body: &Value, model: &str) -> Response<MockBody> {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        _ => {
            return full(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "mock: `input` is required", "type": "invalid_request_error"}}),
            );
        }
    };
    let mut total = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            total += tokens(s);
            // A deterministic 8-dimensional vector derived from the text.
            let mut h: u64 = 0xcbf29ce484222325;
            let v: Vec<f64> = (0..8)
                .map(|_| {
                    for b in s.bytes() {
                        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
                    }
                    ((h >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    full(
        StatusCode::OK,
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": total, "total_tokens": total}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_to_the_answer() {
        let a = answer_for("héllo wörld");
        for n in [1, 3, 8, 50, 500] {
            assert_eq!(split_chunks(&a, n).concat(), a);
        }
    }

    #[test]
    fn prompt_text_across_shapes() {
        assert_eq!(
            prompt_text(&json!({"messages": [{"role": "user", "content": "hi"}]})),
            "hi"
        );
        assert_eq!(
            prompt_text(
                &json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]})
            ),
            "a"
        );
        assert_eq!(prompt_text(&json!({"input": "x"})), "x");
        assert_eq!(
            prompt_text(&json!({"input": [{"role": "user", "content": "y"}]})),
            "y"
        );
    }
}
