//! Token usage as reported by providers, merged across the shapes of OpenAI and Anthropic.

use serde_json::Value;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt / input tokens.
    pub prompt: Option<i64>,
    /// Completion / output tokens.
    pub completion: Option<i64>,
    /// Cached input tokens.
    pub cached: Option<i64>,
    /// Total tokens (computed when the provider omits it).
    pub total: Option<i64>,
    /// Prompt tokens written to a prompt cache (Anthropic `cache_creation_input_tokens`; part
    /// of `prompt`, priced apart).
    pub cache_write: Option<i64>,
}

/// The members of an answer or stream event that can carry a token count.
#[derive(serde::Deserialize)]
struct UsageDoc {
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    response: Option<Wrapped>,
    #[serde(default)]
    message: Option<Wrapped>,
}

/// A Responses `response` or an Anthropic `message`: only its usage is read.
#[derive(serde::Deserialize)]
struct Wrapped {
    #[serde(default)]
    usage: Option<Value>,
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

impl Usage {
    /// Merges any usage object found in a response body or stream event. Knows OpenAI Chat
    /// (`usage.prompt_tokens`), Responses (`response.usage.input_tokens`), Embeddings, and
    /// Anthropic (`message.usage` in `message_start`, cumulative `usage` in `message_delta`).
    pub fn absorb(&mut self, v: &Value) {
        let u = v
            .get("usage")
            .or_else(|| v.get("response").and_then(|r| r.get("usage")))
            .or_else(|| v.get("message").and_then(|m| m.get("usage")));
        if let Some(u) = u.filter(|u| u.is_object()) {
            self.absorb_usage(u);
        }
    }

    /// Merges one usage object.
    fn absorb_usage(&mut self, u: &Value) {
        if let Some(p) = int(u, "prompt_tokens") {
            self.prompt = Some(p);
        } else if let Some(p) = int(u, "input_tokens") {
            // Anthropic counts cache reads and writes apart from `input_tokens`; fold them in so
            // `prompt` always includes cached tokens (OpenAI's convention, used for pricing).
            let written = int(u, "cache_creation_input_tokens");
            let extra = int(u, "cache_read_input_tokens").unwrap_or(0) + written.unwrap_or(0);
            self.prompt = Some(p + extra);
            if written.is_some() {
                self.cache_write = written;
            }
        }
        if let Some(c) = int(u, "completion_tokens").or_else(|| int(u, "output_tokens")) {
            self.completion = Some(c);
        }
        let cached = u
            .get("prompt_tokens_details")
            .and_then(|d| int(d, "cached_tokens"))
            .or_else(|| {
                u.get("input_tokens_details")
                    .and_then(|d| int(d, "cached_tokens"))
            })
            .or_else(|| int(u, "cache_read_input_tokens"));
        if cached.is_some() {
            self.cached = cached;
        }
        if let Some(t) = int(u, "total_tokens") {
            self.total = Some(t);
        }
    }

    /// Parses a JSON document and absorbs its usage, if the text mentions one at all. Returns
    /// whether it was a stream's final count: an OpenAI usage chunk (chat, completions: a
    /// `usage` object at the top), a Responses `response.completed` (or `.incomplete`,
    /// `.failed`), an Anthropic `message_delta` with its usage.
    pub fn absorb_json(&mut self, bytes: &[u8]) -> bool {
        if !contains(bytes, b"\"usage\"") {
            return false;
        }
        // Only the members that can hold a count are built; the rest (the answer's text,
        // choices, tool calls) is skipped by the parser without being allocated.
        let Ok(doc) = serde_json::from_slice::<UsageDoc>(bytes) else {
            return self.absorb_json_value(bytes);
        };
        fn object(u: &Option<Value>) -> Option<&Value> {
            u.as_ref().filter(|u| u.is_object())
        }
        let top = object(&doc.usage);
        let response = doc.response.as_ref().and_then(|r| object(&r.usage));
        let found = top
            .or(response)
            .or_else(|| doc.message.as_ref().and_then(|m| object(&m.usage)));
        if let Some(u) = found {
            self.absorb_usage(u);
        }
        match doc.kind.as_deref() {
            // A Responses stream ends with one of these, each with the response's usage.
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                response.is_some()
            }
            Some("message_delta") => top.is_some(),
            Some(_) => false,
            None => top.is_some(),
        }
    }

    /// [`Usage::absorb_json`] through a whole parse, for documents the partial one refuses
    /// (a member named twice).
    fn absorb_json_value(&mut self, bytes: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        self.absorb(&v);
        let top = v.get("usage").is_some_and(Value::is_object);
        match v.get("type").and_then(Value::as_str) {
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                v["response"]["usage"].is_object()
            }
            Some("message_delta") => top,
            Some(_) => false,
            None => top,
        }
    }

    /// Writes the token counts into a request record.
    pub fn record_into(&self, r: &mut palisade_core::record::RequestRecord) {
        r.prompt_tokens = self.prompt;
        r.completion_tokens = self.completion;
        r.cached_tokens = self.cached;
        r.total_tokens = self.total_or_sum();
    }

    /// Total tokens, reported or derived.
    pub fn total_or_sum(&self) -> Option<i64> {
        self.total.or(match (self.prompt, self.completion) {
            (Some(p), Some(c)) => Some(p + c),
            (Some(p), None) => Some(p),
            _ => None,
        })
    }
}

impl Usage {
    /// Reads the count from the end of a JSON answer too long to keep whole: the last
    /// `"usage"` member in `tail` (a quote inside a string is escaped, so an unescaped
    /// `"usage"` is a member's name) and the object after it. Returns whether one was read.
    pub fn absorb_json_tail(&mut self, tail: &[u8]) -> bool {
        let key = b"\"usage\"";
        let Some(at) = tail.windows(key.len()).rposition(|w| w == key) else {
            return false;
        };
        let rest = tail[at + key.len()..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            return false;
        };
        let mut de = serde_json::Deserializer::from_slice(rest);
        match <Value as serde::Deserialize>::deserialize(&mut de) {
            Ok(u) if u.is_object() => {
                self.absorb_usage(&u);
                true
            }
            _ => false,
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_the_tail_of_a_long_answer() {
        let mut u = Usage::default();
        let tail = br#"ext "usage": {"prompt_tokens": 9}"}], "usage": {"prompt_tokens": 1000, "completion_tokens": 300000, "total_tokens": 301000}}"#;
        assert!(u.absorb_json_tail(tail));
        assert_eq!((u.prompt, u.completion), (Some(1000), Some(300000)));
        assert!(!Usage::default().absorb_json_tail(br#"{"text": "no count"}"#));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_chat_usage() {
        let mut u = Usage::default();
        u.absorb(
            &json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4}}}),
        );
        assert_eq!(
            u,
            Usage {
                prompt: Some(10),
                completion: Some(5),
                cached: Some(4),
                total: Some(15),
                cache_write: None,
            }
        );
    }

    #[test]
    fn anthropic_stream_usage_accumulates() {
        let mut u = Usage::default();
        u.absorb_json(br#"{"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":2}}}"#);
        u.absorb_json(br#"{"type":"content_block_delta","delta":{"text":"hi"}}"#);
        u.absorb_json(br#"{"type":"message_delta","usage":{"output_tokens":30}}"#);
        assert_eq!(u.prompt, Some(14));
        assert_eq!(u.cache_write, None);
        let mut w = Usage::default();
        w.absorb_json(br#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1,"cache_creation_input_tokens":100}}}"#);
        assert_eq!((w.prompt, w.cache_write), (Some(110), Some(100)));
        assert_eq!(u.completion, Some(30));
        assert_eq!(u.cached, Some(2));
        assert_eq!(u.total_or_sum(), Some(44));
    }

    #[test]
    fn responses_usage_and_null_usage() {
        let mut u = Usage::default();
        u.absorb(&json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}}));
        assert_eq!(u.total, Some(7));
        let mut n = Usage::default();
        n.absorb(&json!({"usage": null}));
        assert_eq!(n, Usage::default());
    }
}

#[cfg(test)]
mod final_count_tests {
    use super::Usage;

    #[test]
    fn the_providers_final_count_is_recognised_by_shape() {
        for final_event in [
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":17,"total_tokens":26}}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":9,"output_tokens":17}}}"#,
            r#"{"type":"response.incomplete","response":{"usage":{"input_tokens":9,"output_tokens":3}}}"#,
            r#"{"type":"response.failed","response":{"usage":{"input_tokens":9,"output_tokens":3}}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":17}}"#,
        ] {
            assert!(
                Usage::default().absorb_json(final_event.as_bytes()),
                "{final_event}"
            );
        }
        // Text that merely mentions the words is not a count.
        for other in [
            r#"{"choices":[{"delta":{"content":"say \"completion_tokens"}}],"usage":null}"#,
            r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#,
            r#"{"type":"response.created","response":{"instructions":"say response.completed","usage":null}}"#,
            r#"{"type":"response.output_text.delta","delta":"usage"}"#,
        ] {
            assert!(!Usage::default().absorb_json(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn the_partial_parse_reads_what_the_whole_parse_reads() {
        for doc in [
            r#"{"id":"c1","choices":[{"message":{"role":"assistant","content":"a "usage" word"}}],"usage":{"prompt_tokens":9,"completion_tokens":17,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":3}}}"#,
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1,"cache_creation_input_tokens":5}}}"#,
            r#"{"type":"response.completed","response":{"output":[],"usage":{"input_tokens":3,"output_tokens":4,"input_tokens_details":{"cached_tokens":1}}}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
            r#"{"type":"error","message":"has usage in it","usage":{"output_tokens":4}}"#,
            r#"{"response":"text","usage":{"completion_tokens":8}}"#,
            r#"{"usage":[1,2]}"#,
            r#"{"usage": not json"#,
        ] {
            let (mut partial, mut whole) = (Usage::default(), Usage::default());
            let a = partial.absorb_json(doc.as_bytes());
            let b = whole.absorb_json_value(doc.as_bytes());
            assert_eq!((a, partial), (b, whole), "{doc}");
        }
    }
}
