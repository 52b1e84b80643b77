//! API shapes: endpoint recognition and error bodies in each provider's own format.

use bytes::Bytes;
use http::Method;
use palisade_core::model::LlmApi;
use serde_json::json;

/// The LLM endpoints the gateway understands; anything else passes through after auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// OpenAI `GET /v1/models` (and `/v1/models/{id}`).
    Models,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Any other path.
    Other,
}

impl Endpoint {
    /// Classifies a request by method and path.
    pub fn classify(method: &Method, path: &str) -> Self {
        let p = path.trim_end_matches('/');
        let p = p.strip_prefix("/v1").unwrap_or(p);
        match (method, p) {
            (&Method::POST, "/chat/completions") => Endpoint::ChatCompletions,
            (&Method::POST, "/responses") => Endpoint::Responses,
            (&Method::POST, "/embeddings") => Endpoint::Embeddings,
            (&Method::POST, "/messages") => Endpoint::Messages,
            (&Method::GET, m) if m == "/models" || m.starts_with("/models/") => Endpoint::Models,
            _ => Endpoint::Other,
        }
    }

    /// Name used in the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Messages => "messages",
            Endpoint::Other => "other",
        }
    }

    /// Whether the body is a JSON object the gateway parses (model, stream flag, usage).
    pub fn has_json_body(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Responses
                | Endpoint::Embeddings
                | Endpoint::Messages
        )
    }
}

/// Why a request path is not in the one spelling the gateway recognises, if it is not: an
/// empty segment (`//`), a dot segment (`.`, `..`), or a percent-encoded character that needs no
/// encoding (a letter, digit, `-._~`, `/` or `\`). An upstream may merge, resolve or decode
/// these and serve `/v1/chat/%63ompletions` as chat completions, which the gateway would have
/// taken for a path it does not model (no redaction, no governance prompt, no model check of
/// its shape); such a path is refused instead.
pub fn path_problem(path: &str) -> Option<&'static str> {
    let b = path.as_bytes();
    if path.contains("//") {
        return Some("an empty segment (`//`)");
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Some("a dot segment (`.` or `..`)");
    }
    if path.contains(';') {
        return Some("a `;` parameter");
    }
    let hex = |c: u8| (c as char).to_digit(16);
    for i in 0..b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            let c = (h * 16 + l) as u8;
            if c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c) {
                return Some("a percent-encoded character that needs no encoding");
            }
            if c == b';' || c.is_ascii_control() {
                return Some("a percent-encoded `;` or control character");
            }
        }
    }
    None
}

/// A JSON error body in the API's own shape, carrying the request id.
pub fn error_body(
    api: LlmApi,
    err_type: &str,
    code: &str,
    message: &str,
    request_id: &str,
) -> Bytes {
    let v = match api {
        LlmApi::Openai => json!({
            "error": { "message": message, "type": err_type, "param": null, "code": code, "request_id": request_id }
        }),
        LlmApi::Anthropic => json!({
            "type": "error",
            "error": { "type": err_type, "message": message },
            "request_id": request_id
        }),
    };
    Bytes::from(v.to_string())
}

/// A terminal SSE error event in the API's own streaming shape; SDKs raise it as an error.
pub fn sse_error_event(
    api: LlmApi,
    err_type: &str,
    code: &str,
    message: &str,
    request_id: &str,
) -> Bytes {
    let body = error_body(api, err_type, code, message, request_id);
    let body = String::from_utf8_lossy(&body);
    Bytes::from(match api {
        LlmApi::Openai => format!("data: {body}\n\n"),
        LlmApi::Anthropic => format!("event: error\ndata: {body}\n\n"),
    })
}

/// A terminal error event of a Responses API stream: the event shape of the API (`event:
/// error`, `type`, `code`, `message`, `param`, `sequence_number`) plus the `error` object of
/// its error bodies, which the SDKs raise as an error.
pub fn responses_error_event(
    err_type: &str,
    code: &str,
    message: &str,
    request_id: &str,
    sequence_number: u64,
) -> Bytes {
    let v = json!({
        "type": "error",
        "code": code,
        "message": message,
        "param": null,
        "sequence_number": sequence_number,
        "error": { "message": message, "type": err_type, "param": null, "code": code, "request_id": request_id },
    });
    Bytes::from(format!("event: error\ndata: {v}\n\n"))
}

/// The last `"sequence_number": N` in a run of Responses events (a byte search: events are
/// not parsed for it).
pub fn last_sequence_number(run: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\"";
    let at = run.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = &run[at + KEY.len()..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_endpoints() {
        assert_eq!(
            Endpoint::classify(&Method::POST, "/v1/chat/completions"),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            Endpoint::classify(&Method::POST, "/chat/completions/"),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            Endpoint::classify(&Method::GET, "/v1/models/gpt-4o"),
            Endpoint::Models
        );
        assert_eq!(
            Endpoint::classify(&Method::POST, "/v1/messages"),
            Endpoint::Messages
        );
        assert_eq!(
            Endpoint::classify(&Method::GET, "/v1/chat/completions"),
            Endpoint::Other
        );
        assert_eq!(
            Endpoint::classify(&Method::POST, "/v1/files"),
            Endpoint::Other
        );
    }

    #[test]
    fn paths_in_another_spelling_are_named() {
        for ok in [
            "/v1/chat/completions",
            "/v1/models/ft%3Agpt-4o%3Aorg",
            "/v1/files/a%20b",
            "/",
            "/v1/chat/completions/",
        ] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        for bad in [
            "//v1/chat/completions",
            "/v1//chat/completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/chat/%63ompletions",
            "/v1/chat%2Fcompletions",
            "/v1/chat%2fcompletions",
            "/v1%5Cchat/completions",
            "/v1/chat/completions%2E",
            "/v1/%7Emodels",
            "/v1/chat/completions;x=1",
            "/v1/chat/completions%3Bx=1",
            "/v1/chat/completions%00",
        ] {
            assert!(path_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn error_shapes() {
        let o: serde_json::Value = serde_json::from_slice(&error_body(
            LlmApi::Openai,
            "authentication_error",
            "invalid_api_key",
            "no",
            "r1",
        ))
        .unwrap();
        assert_eq!(o["error"]["type"], "authentication_error");
        assert_eq!(o["error"]["request_id"], "r1");
        let a: serde_json::Value = serde_json::from_slice(&error_body(
            LlmApi::Anthropic,
            "api_error",
            "x",
            "boom",
            "r2",
        ))
        .unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["message"], "boom");
        let e = sse_error_event(LlmApi::Anthropic, "api_error", "x", "boom", "r2");
        assert!(e.starts_with(b"event: error\ndata: {"));
        assert!(e.ends_with(b"\n\n"));
        let e = responses_error_event("upstream_error", "c", "broke", "r3", 7);
        let data = e.strip_prefix(b"event: error\ndata: ").unwrap();
        let v: serde_json::Value = serde_json::from_slice(data.trim_ascii_end()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["sequence_number"], 7);
        assert_eq!(v["code"], "c");
        assert_eq!(v["error"]["message"], "broke");
    }

    #[test]
    fn finds_the_last_sequence_number() {
        let run = b"event: a\ndata: {\"type\":\"a\",\"sequence_number\":3}\n\n\
                    event: b\ndata: {\"sequence_number\": 12,\"x\":1}\n\n";
        assert_eq!(last_sequence_number(run), Some(12));
        assert_eq!(last_sequence_number(b"data: {}\n\n"), None);
    }
}
