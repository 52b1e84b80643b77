//! Redaction of requests and unmasking of answers, streams included.
//!
//! Sensitive values in a request are replaced by typed placeholders (`[EMAIL_1]`) before it
//! leaves; the placeholder map lives only in this request's memory. Answers get the originals
//! back: buffered JSON in one pass, streams event by event, holding back only a tail that could
//! still be the beginning of a placeholder split across events.

use std::collections::HashMap;

use bytes::Bytes;
use palisade_policy::{PolicySet, Target, unmask};
use serde_json::{Map, Value, json};

use crate::inspect::is_meta_key;
use crate::sse::{for_each_event, raw_events};

/// The placeholder → original pairs of one request.
pub type RedactionMap = Vec<(String, String)>;

fn walk_mut(set: &PolicySet, v: &mut Value, target: Target, map: &mut RedactionMap) {
    match v {
        Value::String(s) if set.redacts(target) => {
            let red = set.redact_into(target, s, map);
            if red != *s {
                *s = red;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| walk_mut(set, x, target, map)),
        Value::Object(m) => {
            let role = m.get("role").and_then(Value::as_str);
            let ty = m.get("type").and_then(Value::as_str);
            let target = if role == Some("tool")
                || matches!(
                    ty,
                    Some("tool_result") | Some("function_call_output") | Some("mcp_tool_result")
                ) {
                Target::ToolResult
            } else {
                target
            };
            for (k, x) in m.iter_mut() {
                if is_meta_key(k) {
                    continue;
                }
                let t = if k == "tools" || k == "functions" {
                    Target::ToolDescription
                } else {
                    target
                };
                walk_mut(set, x, t, map);
            }
        }
        _ => {}
    }
}

/// Replaces sensitive values in every string of `v` as `target`, continuing `map`.
pub fn redact_value(set: &PolicySet, v: &mut Value, target: Target, map: &mut RedactionMap) {
    walk_mut(set, v, target, map);
}

/// Masks sensitive values in an answer (`target`: `llm_response`, `tool_result`) with
/// placeholders that continue `known` (the request's map): a value the client sent keeps its
/// placeholder, which unmasking restores, while new ones get new placeholders, which it leaves
/// alone. Returns how many new values were masked.
pub fn mask_new(set: &PolicySet, v: &mut Value, target: Target, known: &RedactionMap) -> usize {
    let mut map = known.clone();
    walk_mut(set, v, target, &mut map);
    map.len() - known.len()
}

/// Replaces sensitive values in a request body's content; returns the placeholder map.
pub fn redact_request(set: &PolicySet, body: &mut Value) -> RedactionMap {
    let mut map = RedactionMap::new();
    if let Value::Object(m) = body {
        for (k, v) in m.iter_mut() {
            if is_meta_key(k) || matches!(k.as_str(), "stream" | "stream_options" | "metadata") {
                continue;
            }
            let t = if k == "tools" || k == "functions" {
                Target::ToolDescription
            } else {
                Target::LlmRequest
            };
            walk_mut(set, v, t, &mut map);
        }
    }
    map
}

/// Restores originals in every string of a JSON value (answers, tool-call arguments).
pub fn unmask_value(v: &mut Value, map: &RedactionMap) {
    match v {
        Value::String(s) if s.contains('[') => {
            let u = unmask(s, map);
            if u != *s {
                *s = u;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| unmask_value(x, map)),
        Value::Object(m) => m.values_mut().for_each(|x| unmask_value(x, map)),
        _ => {}
    }
}

/// Unmasks a buffered JSON answer; non-JSON answers are returned unchanged.
///
/// Placeholders are ASCII tokens (`[EMAIL_1]`), and `[` followed by a letter is never JSON
/// syntax, so in a valid JSON answer they only occur inside strings. They are replaced in place
/// by the JSON-escaped original: no tree is built and the answer keeps its exact layout.
pub fn unmask_body(body: Bytes, map: &RedactionMap) -> Bytes {
    if map.is_empty() || !body.contains(&b'[') {
        return body;
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return body;
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return body;
    }
    // Originals go into JSON string literals: escaped, unless none needs it (the usual case).
    let needs_escape = |o: &str| o.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    let out = if map.iter().any(|(_, o)| needs_escape(o)) {
        let escaped: RedactionMap = map
            .iter()
            .map(|(p, o)| (p.clone(), json_escaped(o)))
            .collect();
        unmask(text, &escaped)
    } else {
        unmask(text, map)
    };
    if out.len() == text.len() && out == text {
        return body;
    }
    Bytes::from(out)
}

/// `s` as the inside of a JSON string literal.
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// Streaming unmasker of one answer.
pub struct StreamUnmasker {
    map: RedactionMap,
    max_len: usize,
    /// Text held per channel (choice, content block, output part) because it may be the start
    /// of a placeholder whose end is in a later event.
    held: HashMap<String, String>,
}

/// Whether raw event bytes may contain (the start of) a placeholder.
fn may_hold_placeholder(ev: &[u8]) -> bool {
    ev.windows(2)
        .any(|w| w[0] == b'[' && (w[1].is_ascii_uppercase() || w[1] == b'"'))
        || ev.last() == Some(&b'[')
}

impl StreamUnmasker {
    /// An unmasker for a request's map.
    pub fn new(map: RedactionMap) -> Self {
        let max_len = map.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        Self {
            map,
            max_len,
            held: HashMap::new(),
        }
    }

    /// Unmasks the new text of a channel, holding back a tail that may be a split placeholder.
    fn feed(&mut self, channel: &str, text: &str) -> String {
        let mut s = self.held.remove(channel).unwrap_or_default();
        s.push_str(text);
        let out = unmask(&s, &self.map);
        if let Some(i) = out.rfind('[') {
            let tail = &out[i + 1..];
            if tail.len() + 1 < self.max_len
                && tail
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                self.held.insert(channel.to_string(), out[i..].to_string());
                return out[..i].to_string();
            }
        }
        out
    }

    fn flush(&mut self, channel: &str) -> Option<String> {
        self.held.remove(channel).filter(|s| !s.is_empty())
    }

    /// Rewrites a run of complete SSE events.
    pub fn rewrite(&mut self, run: Bytes) -> Bytes {
        let events = raw_events(&run);
        let mut out: Vec<u8> = Vec::with_capacity(run.len() + 64);
        let mut changed = false;
        for ev in events {
            // Placeholders are `[TYPE_n]`: an event where no `[` is followed by a capital
            // letter or ends a string (a placeholder cut after its `[`), while nothing is held
            // back, comes out exactly as it went in, so it is not parsed. (JSON's own arrays,
            // `"choices":[{`, do not count.)
            if self.held.is_empty() && !may_hold_placeholder(ev) {
                out.extend_from_slice(ev);
                continue;
            }
            let mut name = String::new();
            let mut data: Option<Vec<u8>> = None;
            for_each_event(ev, |n, d| {
                name = n.to_string();
                data = Some(d.to_vec());
            });
            let parsed = data
                .as_deref()
                .and_then(|d| serde_json::from_slice::<Value>(d).ok());
            let Some(mut v) = parsed else {
                out.extend_from_slice(ev);
                continue;
            };
            let mut before: Vec<(String, Value)> = Vec::new();
            self.rewrite_event(&mut v, &mut before);
            for (n, extra) in before {
                push_event(&mut out, &n, &extra);
            }
            push_event(&mut out, &name, &v);
            changed = true;
        }
        if changed { Bytes::from(out) } else { run }
    }

    /// Unmasks one event; `before` receives synthesized events that flush held text ahead of it.
    fn rewrite_event(&mut self, v: &mut Value, before: &mut Vec<(String, Value)>) {
        // OpenAI chat completions: per-choice content deltas; flush on finish_reason.
        if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
            for c in choices.iter_mut() {
                let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let ch = format!("c{idx}");
                let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
                if let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) {
                    let text = delta
                        .get("content")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let mut new = match text {
                        Some(t) => self.feed(&ch, &t),
                        None => String::new(),
                    };
                    if finished && let Some(rest) = self.flush(&ch) {
                        new.push_str(&rest);
                    }
                    if delta.contains_key("content") || !new.is_empty() {
                        delta.insert("content".into(), Value::String(new));
                    }
                    if let Some(calls) = delta.get_mut("tool_calls") {
                        unmask_value(calls, &self.map);
                    }
                } else if let Some(m) = c.get_mut("message") {
                    unmask_value(m, &self.map);
                }
            }
            return;
        }
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match ty.as_str() {
            // Anthropic: text deltas per content block; flush before the block stops.
            "content_block_delta" => {
                let ch = format!("b{}", v.get("index").and_then(Value::as_u64).unwrap_or(0));
                if let Some(d) = v.get_mut("delta").and_then(Value::as_object_mut) {
                    if let Some(t) = d.get("text").and_then(Value::as_str).map(str::to_string) {
                        let new = self.feed(&ch, &t);
                        d.insert("text".into(), Value::String(new));
                    } else {
                        d.values_mut().for_each(|x| unmask_value(x, &self.map));
                    }
                }
            }
            "content_block_stop" => {
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(rest) = self.flush(&format!("b{idx}")) {
                    before.push((
                        "content_block_delta".into(),
                        json!({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": rest}}),
                    ));
                }
            }
            // OpenAI Responses: text deltas per output part; flush before the part's `done`.
            "response.output_text.delta" => {
                let ch = responses_channel(v);
                if let Some(t) = v.get("delta").and_then(Value::as_str).map(str::to_string) {
                    let new = self.feed(&ch, &t);
                    v["delta"] = Value::String(new);
                }
            }
            "response.output_text.done" => {
                let ch = responses_channel(v);
                if let Some(rest) = self.flush(&ch) {
                    let mut d = Map::new();
                    d.insert("type".into(), json!("response.output_text.delta"));
                    for k in ["item_id", "output_index", "content_index"] {
                        if let Some(x) = v.get(k) {
                            d.insert(k.into(), x.clone());
                        }
                    }
                    d.insert("delta".into(), Value::String(rest));
                    before.push(("response.output_text.delta".into(), Value::Object(d)));
                }
                unmask_value(v, &self.map);
            }
            _ => unmask_value(v, &self.map),
        }
    }
}

fn responses_channel(v: &Value) -> String {
    format!(
        "r{}:{}",
        v.get("output_index").and_then(Value::as_u64).unwrap_or(0),
        v.get("content_index").and_then(Value::as_u64).unwrap_or(0)
    )
}

fn push_event(out: &mut Vec<u8>, name: &str, v: &Value) {
    if !name.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> RedactionMap {
        vec![
            ("[EMAIL_1]".into(), "ana@example.com".into()),
            ("[CARD_1]".into(), "4111 1111 1111 1111".into()),
        ]
    }

    fn chat_event(text: &str, finish: bool) -> String {
        let v = json!({"choices": [{"index": 0, "delta": {"content": text},
            "finish_reason": if finish { json!("stop") } else { Value::Null }}]});
        format!("data: {v}\n\n")
    }

    fn collect_chat(out: &[u8]) -> String {
        let mut s = String::new();
        for_each_event(out, |_, d| {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(t) = v["choices"][0]["delta"]["content"].as_str()
            {
                s.push_str(t);
            }
        });
        s
    }

    #[test]
    fn placeholders_split_down_to_single_characters_are_restored() {
        let answer = "Mail [EMAIL_1] or pay with [CARD_1]. [not a placeholder] [EMAIL_9] end [";
        for size in [1, 2, 3, 5, 8, 200] {
            let mut u = StreamUnmasker::new(map());
            let chars: Vec<char> = answer.chars().collect();
            let mut out = Vec::new();
            let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
            for (i, p) in pieces.iter().enumerate() {
                out.extend_from_slice(&u.rewrite(Bytes::from(chat_event(p, false))));
                if i == pieces.len() - 1 {
                    out.extend_from_slice(&u.rewrite(Bytes::from(chat_event("", true))));
                }
            }
            assert_eq!(
                collect_chat(&out),
                "Mail ana@example.com or pay with 4111 1111 1111 1111. [not a placeholder] [EMAIL_9] end [",
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn anthropic_blocks_flush_before_stop() {
        let mut u = StreamUnmasker::new(map());
        let mut out = Vec::new();
        for t in ["to [EM", "AIL_1", "] [CA"] {
            let v = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
            out.extend_from_slice(&u.rewrite(Bytes::from(format!(
                "event: content_block_delta\ndata: {v}\n\n"
            ))));
        }
        out.extend_from_slice(&u.rewrite(Bytes::from(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        )));
        let mut text = String::new();
        for_each_event(&out, |_, d| {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(t) = v["delta"]["text"].as_str()
            {
                text.push_str(t);
            }
        });
        assert_eq!(text, "to ana@example.com [CA");
        assert!(
            String::from_utf8_lossy(&out)
                .trim_end()
                .ends_with("\"content_block_stop\"}")
        );
    }

    #[test]
    fn originals_are_escaped_for_json_and_non_json_bodies_pass_unchanged() {
        let map: RedactionMap = vec![
            ("[SECRET_1]".into(), "pa\"ss\\word\n".into()),
            ("[EMAIL_1]".into(), "ana@example.com".into()),
        ];
        let body = Bytes::from(
            json!({"content": "use [SECRET_1] for [EMAIL_1]", "n": [1, 2]}).to_string(),
        );
        let v: Value = serde_json::from_slice(&unmask_body(body, &map)).unwrap();
        assert_eq!(v["content"], "use pa\"ss\\word\n for ana@example.com");
        assert_eq!(v["n"], json!([1, 2]));
        let text = Bytes::from_static(b"plain [EMAIL_1] {");
        assert_eq!(unmask_body(text.clone(), &map), text);
        let untouched = Bytes::from_static(b"{\"content\": \"[EMAIL_9] [x]\"}");
        assert_eq!(unmask_body(untouched.clone(), &map), untouched);
    }

    #[test]
    fn buffered_answers_are_unmasked_everywhere() {
        let body = Bytes::from(
            json!({"choices": [{"message": {"content": "hi [EMAIL_1]", "tool_calls": [{"function":
                {"arguments": "{\"to\":\"[EMAIL_1]\"}"}}]}}]})
            .to_string(),
        );
        let v: Value = serde_json::from_slice(&unmask_body(body, &map())).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hi ana@example.com");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"to\":\"ana@example.com\"}"
        );
    }
}
