//! Redaction of requests and unmasking of answers, streams included.
//!
//! Sensitive values in a request are replaced by typed placeholders (`[EMAIL_1]`) before it
//! leaves; the placeholder map lives only in this request's memory. Answers get the originals
//! back: buffered JSON in one pass, streams event by event, holding back only a tail that could
//! still be the beginning of a placeholder split across events. With `redact` rules on answers,
//! new sensitive values in an answer are masked too, in streams as well (see `StreamMasker`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use palisade_policy::{PolicySet, Scoped, Target, placeholder_label, placeholder_number, unmask};
use serde_json::{Map, Value, json};

use crate::inspect::{
    escaped_json, is_meta_member, is_role_word, key_is_text, looks_escaped_json, reads_whole,
};
use crate::remembered::Locked;
use crate::sse::{for_each_event, raw_events};

/// The placeholder → original pairs of one request.
pub type RedactionMap = Vec<(String, String)>;

/// Replaces sensitive values in the strings of `v` as `target`. `request`: `v` is (part of) an
/// LLM request body, where the end-user id, metadata and URLs are content too (they leave for
/// the provider) and tool definitions get the request's rules as well as their own.
fn walk_mut(
    set: &Scoped<'_>,
    v: &mut Value,
    target: Target,
    map: &mut RedactionMap,
    request: bool,
) {
    match v {
        Value::String(s) => {
            let mut red = set.redacts(target).then(|| set.redact_into(target, s, map));
            if request && target == Target::ToolDescription && set.redacts(Target::LlmRequest) {
                let text = red.as_deref().unwrap_or(s);
                red = Some(set.redact_into(Target::LlmRequest, text, map));
            }
            if let Some(red) = red
                && red != *s
            {
                *s = red;
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| walk_mut(set, x, target, map, request)),
        Value::Object(m) => {
            mask_keys(set, m, target, map, request);
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
            // What the scan reads (`inspect::walk`), this masks: the two must not differ, or a
            // value would be found and sent on in clear.
            let tool_use = matches!(
                ty,
                Some("tool_use") | Some("server_tool_use") | Some("mcp_tool_use")
            );
            let text_type = is_text_type(m);
            for (k, x) in m.iter_mut() {
                // A role that is not one of the APIs' words is text the model may read.
                let odd_role = k == "role" && x.as_str().is_some_and(|r| !is_role_word(r));
                if !odd_role && kept_in_clear(k, x, request, text_type) {
                    continue;
                }
                let t = if k == "tools" || k == "functions" {
                    Target::ToolDescription
                } else {
                    target
                };
                match x {
                    Value::String(s) if is_json_text_key(k) || looks_escaped_json(s) => {
                        redact_json_text(set, s, t, map, request);
                    }
                    // A tool call's input as an object (Anthropic `tool_use`), arguments given
                    // as an object, an MCP tool's structured result, tool definitions and JSON
                    // schemas: every member is content (`url`, `data`, `id`, `format` too),
                    // and its name is context, as in JSON-text arguments.
                    Value::Object(_) | Value::Array(_)
                        if tool_use && k == "input"
                            || k == "structuredContent"
                            || reads_whole(k, x) =>
                    {
                        redact_members(set, x, t, map, request);
                    }
                    _ => walk_mut(set, x, t, map, request),
                }
            }
        }
        _ => {}
    }
}

/// Masks sensitive values in the member names of `m` (`{"sk-proj-…": 1}`): a name that is not
/// a plain field name ([`key_is_text`]) is redacted like text, and the member renamed.
fn mask_keys(
    set: &Scoped<'_>,
    m: &mut serde_json::Map<String, Value>,
    target: Target,
    map: &mut RedactionMap,
    request: bool,
) {
    let renames: Vec<(String, String)> = m
        .keys()
        .filter(|k| key_is_text(k))
        .filter_map(|k| redacted(set, k, target, map, request).map(|red| (k.clone(), red)))
        .collect();
    for (old, new) in renames {
        if let Some(x) = m.remove(&old) {
            m.insert(new, x);
        }
    }
}

/// Redacts a string that is JSON text (a tool call's arguments) so that it stays JSON: as text
/// when the replacements leave it valid (rules that mask only a value keep its quotes), else
/// member by member in its parsed form, since a match that took a quote with it broke it.
fn redact_json_text(
    set: &Scoped<'_>,
    s: &mut String,
    target: Target,
    map: &mut RedactionMap,
    request: bool,
) {
    let before = map.len();
    // Escapes (`\u0073k-…`) hide a value from a pass over the text: such text is read parsed.
    if let Some(mut parsed) = escaped_json(s) {
        redact_members(set, &mut parsed, target, map, request);
        if map.len() > before {
            *s = parsed.to_string();
        }
        return;
    }
    let Some(red) = redacted(set, s, target, map, request) else {
        return;
    };
    if serde_json::from_str::<Value>(&red).is_ok() {
        *s = red;
        unescape_found(&mut map[before..]);
        return;
    }
    let Ok(mut parsed) = serde_json::from_str::<Value>(s) else {
        // Not JSON before either: the text's replacements stand.
        *s = red;
        return;
    };
    map.truncate(before);
    redact_members(set, &mut parsed, target, map, request);
    *s = parsed.to_string();
}

/// Values found in JSON text were taken as written there: one with an escape (`p\"q`) is kept
/// as the string holds it (`p"q`), which unmasking escapes again where it restores into JSON.
fn unescape_found(found: &mut [(String, String)]) {
    for (_, original) in found {
        if original.contains('\\')
            && let Ok(s) = serde_json::from_str::<String>(&format!("\"{original}\""))
        {
            *original = s;
        }
    }
}

/// `text` with its sensitive values replaced, `None` when it has none.
fn redacted(
    set: &Scoped<'_>,
    text: &str,
    target: Target,
    map: &mut RedactionMap,
    request: bool,
) -> Option<String> {
    let mut v = Value::String(text.to_owned());
    walk_mut(set, &mut v, target, map, request);
    match v {
        Value::String(red) if red != text => Some(red),
        _ => None,
    }
}

/// Redacts the strings of parsed JSON, each object member's value with its name as context
/// (`"password": "…"`): what the match covers of the value is masked, and a match that covers
/// more (the name, the quotes) masks the whole value.
fn redact_members(
    set: &Scoped<'_>,
    v: &mut Value,
    target: Target,
    map: &mut RedactionMap,
    request: bool,
) {
    members(set, v, target, map, request, false);
}

/// [`redact_members`]; `skip_media`: inline media (`data` of an image or audio item, a
/// resource's `blob`) are left as they are (an MCP result or server message).
fn members(
    set: &Scoped<'_>,
    v: &mut Value,
    target: Target,
    map: &mut RedactionMap,
    request: bool,
    skip_media: bool,
) {
    match v {
        Value::Object(m) => {
            mask_keys(set, m, target, map, request);
            let media = skip_media
                && matches!(
                    m.get("type").and_then(Value::as_str),
                    Some("image") | Some("audio")
                );
            for (k, x) in m.iter_mut() {
                if skip_media && (k == "blob" || media && k == "data") {
                    continue;
                }
                let Value::String(value) = x else {
                    members(set, x, target, map, request, skip_media);
                    continue;
                };
                let name = format!("{}: ", Value::from(k.as_str()));
                let member = format!("{name}{}", Value::from(value.as_str()));
                let before = map.len();
                let Some(red) = redacted(set, &member, target, map, request) else {
                    continue;
                };
                if let Some(Ok(Value::String(masked))) =
                    red.strip_prefix(&name).map(serde_json::from_str::<Value>)
                {
                    *value = masked;
                    unescape_found(&mut map[before..]);
                    continue;
                }
                // The whole value stands for what the match replaced.
                if map.len() > before {
                    map.truncate(before + 1);
                    map[before].1 = value.clone();
                    *value = map[before].0.clone();
                } else if let Some((p, _)) = map.iter().find(|(p, _)| red.contains(p.as_str())) {
                    *value = p.clone();
                }
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| members(set, x, target, map, request, skip_media)),
        _ => walk_mut(set, v, target, map, request),
    }
}
/// Whether an object is `{"type": "text", …}` (see [`kept_in_clear`]).
fn is_text_type(m: &serde_json::Map<String, Value>) -> bool {
    m.get("type").and_then(Value::as_str) == Some("text")
}

/// Fields never redacted: identifiers and settings, and inline media (`data:` URLs). In a
/// request the end-user id and URLs are redacted like any content; so is the `data` of a text
/// source (`text_type`: the object is `{"type": "text", …}`).
fn kept_in_clear(k: &str, v: &Value, request: bool, text_type: bool) -> bool {
    match k {
        "user" | "url" | "image_url" if request => {
            v.as_str().is_some_and(|s| s.starts_with("data:"))
        }
        _ => is_meta_member(k, v, text_type.then_some("text")),
    }
}

/// Replaces sensitive values in every string of `v` as `target`, continuing `map`.
pub fn redact_value<'a>(
    set: impl Into<Scoped<'a>>,
    v: &mut Value,
    target: Target,
    map: &mut RedactionMap,
) {
    walk_mut(&set.into(), v, target, map, false);
}

/// Replaces sensitive values in a tool's arguments (an MCP `tools/call`'s `arguments`): each
/// member's value with its name as context (`"password": "…"`), and a value found anywhere else
/// it occurs in them.
pub fn redact_arguments<'a>(
    set: impl Into<Scoped<'a>>,
    v: &mut Value,
    target: Target,
    map: &mut RedactionMap,
) {
    let before = map.len();
    redact_members(&set.into(), v, target, map, false);
    propagate(v, &map[before..], false);
}

/// Masks sensitive values in an answer (`target`: `llm_response`, `tool_result`) with
/// placeholders that continue `known` (the request's map): a value the client sent keeps its
/// placeholder, which unmasking restores, while new ones get new placeholders, which it leaves
/// alone. Returns how many new values were masked.
pub fn mask_new<'a>(
    set: impl Into<Scoped<'a>>,
    v: &mut Value,
    target: Target,
    known: &RedactionMap,
) -> usize {
    let mut map = known.clone();
    walk_mut(&set.into(), v, target, &mut map, false);
    propagate(v, &map[known.len()..], false);
    map.len() - known.len()
}

/// [`mask_new`] for an MCP tool result or a message an MCP server sends on its own: every
/// string is content there, whatever its member is named (a log line's `data`, a `url`, an
/// `id`, `_meta`), and is masked with its member's name as context; inline media are not.
pub fn mask_new_everywhere<'a>(
    set: impl Into<Scoped<'a>>,
    v: &mut Value,
    target: Target,
    known: &RedactionMap,
) -> usize {
    let mut map = known.clone();
    members(&set.into(), v, target, &mut map, false, true);
    propagate(v, &map[known.len()..], false);
    map.len() - known.len()
}

/// Shortest value replaced wherever else it occurs (shorter ones could be ordinary words).
const MIN_PROPAGATED: usize = 6;

/// Replaces the values of `found` wherever else they occur in the strings of `v`. A rule finds a
/// value where its context says what it is (`"password": "…"`, `password=…`); the same value
/// elsewhere (a copy in a note, a config pasted as text, an array) is just as secret.
fn propagate(v: &mut Value, found: &[(String, String)], request: bool) {
    let mut values: Vec<&(String, String)> = found
        .iter()
        .filter(|(_, o)| o.len() >= MIN_PROPAGATED)
        .collect();
    if values.is_empty() {
        return;
    }
    // Longer values first, so a value inside another is not cut out of it first.
    values.sort_by_key(|(_, o)| std::cmp::Reverse(o.len()));
    propagate_in(v, &values, false, request);
}

fn propagate_in(v: &mut Value, values: &[&(String, String)], json_text: bool, request: bool) {
    match v {
        Value::String(s) => {
            for (placeholder, original) in values {
                let escaped;
                let original = if json_text {
                    escaped = json_escaped(original);
                    escaped.as_str()
                } else {
                    original.as_str()
                };
                if s.contains(original) {
                    *s = s.replace(original, placeholder);
                }
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| propagate_in(x, values, false, request)),
        Value::Object(m) => {
            let text_type = is_text_type(m);
            for (k, x) in m.iter_mut() {
                if !kept_in_clear(k, x, request, text_type) {
                    propagate_in(x, values, is_json_text_key(k), request);
                }
            }
        }
        _ => {}
    }
}

/// Replaces sensitive values in a request body's content; returns the placeholder map.
pub fn redact_request<'a>(set: impl Into<Scoped<'a>>, body: &mut Value) -> RedactionMap {
    redact_request_continuing(set, body, RedactionMap::new())
}

/// [`redact_request`] for a request that continues a conversation whose earlier turns used the
/// placeholders of `map`: its values keep them, new ones are numbered after them.
pub fn redact_request_continuing<'a>(
    set: impl Into<Scoped<'a>>,
    body: &mut Value,
    mut map: RedactionMap,
) -> RedactionMap {
    let set = &set.into();
    if let Value::Object(m) = body {
        mask_keys(set, m, Target::LlmRequest, &mut map, true);
        for (k, v) in m.iter_mut() {
            if kept_in_clear(k, v, true, false) || matches!(k.as_str(), "stream" | "stream_options")
            {
                continue;
            }
            let t = if k == "tools" || k == "functions" {
                Target::ToolDescription
            } else {
                Target::LlmRequest
            };
            match v {
                // A top-level string that is JSON text with escapes (an embeddings `input`).
                Value::String(s) if looks_escaped_json(s) => {
                    redact_json_text(set, s, t, &mut map, true);
                }
                _ => walk_mut(set, v, t, &mut map, true),
            }
        }
    }
    propagate(body, &map, true);
    map
}

/// Most conversations whose placeholders the gateway remembers; past it the oldest is forgotten.
const MAX_CONVERSATIONS: usize = 1024;
/// Most bytes of placeholders and originals remembered per conversation. Past it the oldest
/// values are forgotten but their placeholders kept, each standing for itself, and past that
/// only the highest placeholder of each label: the numbering goes on (a new value never takes a
/// number the provider's history already uses), and forgotten placeholders are not restored.
const MAX_CONVERSATION_BYTES: usize = 64 << 10;

/// Placeholder maps of stateful conversations (the Responses API's `previous_response_id` and
/// `conversation`). The provider keeps the earlier turns, placeholders included, so a later
/// turn must continue their numbering (else `[EMAIL_1]` would stand for two people) and its
/// answer must restore them. Kept per proxy and API key (another key's turn gets nothing), in
/// memory only, bounded.
pub(crate) struct Conversations(Locked<RedactionMap>);

impl Default for Conversations {
    fn default() -> Self {
        Conversations(Locked::new(MAX_CONVERSATIONS))
    }
}

impl Conversations {
    /// The map of the conversation `id` (a response id or a conversation id) in `scope`.
    pub(crate) fn get(&self, scope: &str, id: &str) -> Option<RedactionMap> {
        self.0.lock().get(scope, id).cloned()
    }

    /// Remembers `map` for the conversation `id` in `scope`.
    pub(crate) fn remember(&self, scope: &str, id: &str, map: &RedactionMap) {
        if map.is_empty() || id.is_empty() {
            return;
        }
        let mut kept = map.clone();
        let mut bytes: usize = kept.iter().map(|(p, o)| p.len() + o.len()).sum();
        for (placeholder, original) in kept.iter_mut() {
            if bytes <= MAX_CONVERSATION_BYTES {
                break;
            }
            bytes = bytes - original.len() + placeholder.len();
            original.clone_from(placeholder);
        }
        if bytes > MAX_CONVERSATION_BYTES {
            // Even bare, too many: keep the values that are left and, of the forgotten ones,
            // the highest placeholder of each label (numbering continues after it).
            let mut highest: Vec<(String, String)> = Vec::new();
            for (p, o) in &kept {
                if p == o {
                    let label = placeholder_label(p);
                    match highest
                        .iter_mut()
                        .find(|(q, _)| placeholder_label(q) == label)
                    {
                        Some(h) if placeholder_number(p) > placeholder_number(&h.0) => {
                            *h = (p.clone(), o.clone());
                        }
                        Some(_) => {}
                        None => highest.push((p.clone(), o.clone())),
                    }
                }
            }
            kept.retain(|(p, o)| p != o);
            kept.extend(highest);
            tracing::warn!(
                conversation = id,
                "conversation has too many placeholders to remember each; the oldest are no longer restored"
            );
        }
        let mut table = self.0.lock();
        table.remove(scope, id);
        table.insert(scope, id, kept);
    }
}

/// The stateful conversation a Responses request continues: the response it follows, and the
/// conversation it belongs to (a string or `{"id": …}`).
pub(crate) fn continued(body: &Value) -> (Option<&str>, Option<&str>) {
    let previous = body.get("previous_response_id").and_then(Value::as_str);
    let conversation = body
        .get("conversation")
        .and_then(|c| c.as_str().or_else(|| c.get("id").and_then(Value::as_str)));
    (previous, conversation)
}

/// Restores originals in every string of a JSON value (answers, tool-call arguments). A string
/// that is itself JSON text (a tool call's `arguments`, Anthropic's `partial_json`) gets the
/// originals JSON-escaped, so it stays valid JSON whatever they contain.
pub fn unmask_value(v: &mut Value, map: &RedactionMap) {
    match v {
        Value::String(s) if s.contains('[') => {
            let u = unmask(s, map);
            if u != *s {
                *s = u;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| unmask_value(x, map)),
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if is_json_text_key(k) && s.contains('[') => {
                        let u = unmask(s, &escaped_map(map));
                        if u != *s {
                            *s = u;
                        }
                    }
                    _ => unmask_value(x, map),
                }
            }
        }
        _ => {}
    }
}

/// Keys whose string value is JSON text in the API shapes the gateway rewrites.
fn is_json_text_key(k: &str) -> bool {
    matches!(k, "arguments" | "partial_json")
}

/// The map with each original as the inside of a JSON string literal.
fn escaped_map(map: &RedactionMap) -> RedactionMap {
    map.iter()
        .map(|(p, o)| (p.clone(), json_escaped(o)))
        .collect()
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
    // Originals go into JSON string literals. When none needs escaping (the usual case) they
    // are put in place in the text; otherwise the answer is rewritten as a tree, since a string
    // that is itself JSON text (tool-call arguments) needs them escaped twice. Either way a
    // body that is not JSON is left alone (one parse decides it).
    let needs_escape = |o: &str| o.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    let out = if map.iter().any(|(_, o)| needs_escape(o)) {
        if !map.iter().any(|(p, _)| text.contains(p.as_str())) {
            return body;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            return body;
        };
        unmask_value(&mut v, map);
        v.to_string()
    } else {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            return body;
        }
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

/// Rewrites the text of one streamed answer: masks new sensitive values (with `redact` rules on
/// answers) and restores the request's placeholders.
pub struct StreamRewriter {
    map: RedactionMap,
    max_len: usize,
    /// Text held per channel (choice, content block, output part) because it may be the start
    /// of a placeholder whose end is in a later event.
    held: HashMap<String, String>,
    /// The map with originals escaped for JSON text (tool-call arguments).
    escaped: RedactionMap,
    masker: Option<StreamMasker>,
    /// The last chat completion chunk's fields but its choices, for chunks made to flush.
    envelope: Option<Map<String, Value>>,
    /// Responses events are numbered (`sequence_number`): how many events the gateway has
    /// added so far (later events move up by as many), and the last number sent.
    seq_added: u64,
    last_seq: Option<u64>,
    /// A Responses stream's response id, and what to do with it once the stream has ended.
    response_id: Option<String>,
    on_end: Option<EndHook>,
    /// The answer repeated placeholders of the request (which were restored).
    echoed: bool,
}

/// Called with a Responses stream's response id when the stream has ended whole.
pub type EndHook = Box<dyn FnOnce(&str) + Send + Sync>;

/// Masks new sensitive values in a streamed answer's text. A value can only be masked while
/// none of it has been sent, so text is held back per channel while a value may still be in
/// progress: the last word (values rarely hold spaces), at least [`HOLD_MIN`] bytes (for those
/// that do: card numbers, IBANs, phone numbers), and a PEM block from its `-----BEGIN` line to
/// its `-----END …-----` line; never more than [`HOLD_MAX`] bytes.
struct StreamMasker {
    set: Arc<PolicySet>,
    /// The request's placeholders, then the answer's new ones (a value the client sent keeps
    /// its placeholder, which unmasking restores).
    map: RedactionMap,
    known: usize,
    held: HashMap<String, String>,
}

/// Bytes of answer text always held back while masking.
const HOLD_MIN: usize = 64;
/// Most bytes of answer text held back while masking.
const HOLD_MAX: usize = 8 * 1024;

/// Most bytes of a tool call's arguments held whole while masking; past that they are masked
/// as text as they flow (a value split at that point may pass).
const JSON_HOLD_MAX: usize = 64 * 1024;

impl StreamMasker {
    /// Takes a channel's new JSON text (tool-call arguments): held until the call's arguments
    /// end, so they are masked whole and stay JSON (a rule's match may take a quote, and only
    /// the whole text shows which member a value belongs to). Returns what can be sent now.
    fn feed_json(&mut self, channel: &str, text: &str) -> String {
        let held = self.held.entry(channel.to_string()).or_default();
        held.push_str(text);
        if held.len() <= JSON_HOLD_MAX {
            return String::new();
        }
        self.feed(channel, "", false)
    }

    /// All of a channel's held JSON text, masked as a whole.
    fn flush_json(&mut self, channel: &str) -> String {
        let mut text = self.held.remove(channel).unwrap_or_default();
        if !text.is_empty() {
            redact_json_text(
                &self.set.scoped(None),
                &mut text,
                Target::LlmResponse,
                &mut self.map,
                false,
            );
        }
        text
    }

    /// Masks a channel's new text; returns what can be sent now (`last`: all of it).
    fn feed(&mut self, channel: &str, text: &str, last: bool) -> String {
        let mut buf = self.held.remove(channel).unwrap_or_default();
        buf.push_str(text);
        let upto = if last { buf.len() } else { release_point(&buf) };
        let (out, used) =
            self.set
                .redact_prefix_into(Target::LlmResponse, &buf, upto, &mut self.map);
        if used < buf.len() {
            self.held
                .insert(channel.to_string(), buf[used..].to_string());
        }
        out
    }
}

/// Where the text that may be sent ends (see [`StreamMasker`]); `redact_prefix_into` moves it
/// back further to the start of any value reaching past it.
fn release_point(buf: &str) -> usize {
    let len = buf.len();
    let word = buf
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let mut cut = word.min(len.saturating_sub(HOLD_MIN));
    if let Some(begin) = buf.rfind("-----BEGIN") {
        let ended = buf[begin..]
            .find("-----END")
            .is_some_and(|end| buf[begin + end + 8..].contains("-----"));
        if !ended {
            cut = cut.min(begin);
        }
    }
    cut.max(len.saturating_sub(HOLD_MAX))
}

/// Whether raw event bytes may contain (the start of) a placeholder.
fn may_hold_placeholder(ev: &[u8]) -> bool {
    ev.windows(2)
        .any(|w| w[0] == b'[' && (w[1].is_ascii_uppercase() || w[1] == b'"'))
        || ev.last() == Some(&b'[')
}

impl StreamRewriter {
    /// A rewriter that restores the placeholders of a request's map.
    pub fn new(map: RedactionMap) -> Self {
        let max_len = map.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        Self {
            escaped: escaped_map(&map),
            map,
            max_len,
            held: HashMap::new(),
            masker: None,
            envelope: None,
            seq_added: 0,
            last_seq: None,
            response_id: None,
            on_end: None,
            echoed: false,
        }
    }

    /// Whether the answer repeated placeholders of the request. A `redact` rule whose match in
    /// the answer is such a placeholder (`"password": "[PASSWORD_1]"`) masked nothing new: the
    /// value is the client's own, still masked upstream, and is restored for the client.
    pub fn echoed(&self) -> bool {
        self.echoed
    }

    /// Calls `hook` with the response id once a Responses stream has ended whole.
    pub fn on_end(mut self, hook: EndHook) -> Self {
        self.on_end = Some(hook);
        self
    }

    /// Also masks new values found by `set`'s `redact` rules for answers; `known` is the
    /// request's map, whose values keep their placeholders.
    pub fn masking(mut self, set: Arc<PolicySet>, known: &RedactionMap) -> Self {
        self.masker = Some(StreamMasker {
            set,
            map: known.clone(),
            known: known.len(),
            held: HashMap::new(),
        });
        self
    }

    /// The stream broke: whatever is held will never be sent. Values in it count as masked
    /// (withheld from the client), so the record does not say they reached it.
    pub fn discard(&mut self) {
        self.on_end = None;
        if let Some(m) = self.masker.as_mut() {
            let channels: Vec<String> = m.held.keys().cloned().collect();
            for ch in channels {
                m.feed(&ch, "", true);
            }
        }
        self.held.clear();
    }

    /// How many new values were masked so far.
    pub fn masked(&self) -> usize {
        self.masker.as_ref().map_or(0, |m| m.map.len() - m.known)
    }

    /// Rewrites the new text of a channel, holding back a tail that may be a split
    /// placeholder or a value still in progress. Answer text is masked as it flows, tool-call
    /// arguments (JSON text) when they end.
    fn feed(&mut self, channel: &str, text: &str) -> String {
        let json = is_json_channel(channel);
        match self.masker.as_mut() {
            Some(m) => {
                let masked = if json {
                    m.feed_json(channel, text)
                } else {
                    m.feed(channel, text, false)
                };
                self.unmask_feed(channel, &masked)
            }
            None => self.unmask_feed(channel, text),
        }
    }

    fn unmask_feed(&mut self, channel: &str, text: &str) -> String {
        let mut s = self.held.remove(channel).unwrap_or_default();
        s.push_str(text);
        let map = if is_json_channel(channel) {
            &self.escaped
        } else {
            &self.map
        };
        let out = unmask(&s, map);
        self.echoed |= out != s;
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

    /// Rewrites the string field `field` of `obj` (if it is one) as new text of `channel`.
    /// Returns whether it was there.
    fn feed_field(&mut self, obj: &mut Map<String, Value>, field: &str, channel: &str) -> bool {
        let Some(text) = obj.get(field).and_then(Value::as_str).map(str::to_string) else {
            return false;
        };
        let new = self.feed(channel, &text);
        obj.insert(field.into(), Value::String(new));
        true
    }

    /// Everything still held for a channel (its text has ended).
    fn flush(&mut self, channel: &str) -> Option<String> {
        let json = is_json_channel(channel);
        let mut out = match self.masker.as_mut() {
            Some(m) => {
                let rest = if json {
                    m.flush_json(channel)
                } else {
                    m.feed(channel, "", true)
                };
                self.unmask_feed(channel, &rest)
            }
            None => String::new(),
        };
        if let Some(rest) = self.held.remove(channel) {
            out.push_str(&rest);
        }
        Some(out).filter(|s| !s.is_empty())
    }

    /// Channels holding text: `which` itself, or those it starts when it ends with `.` or is
    /// empty (all), in order.
    fn held_channels(&self, which: &str) -> Vec<String> {
        let group = which.is_empty() || which.ends_with('.');
        let mut channels: Vec<String> = self
            .held
            .keys()
            .chain(self.masker.iter().flat_map(|m| m.held.keys()))
            .filter(|c| *c == which || group && c.starts_with(which))
            .cloned()
            .collect();
        channels.sort();
        channels.dedup();
        channels
    }

    /// Flushes the channels `which` names (see `held_channels`) into events of their own kind
    /// (`from`: an event whose `item_id` they carry).
    fn flush_into(&mut self, which: &str, from: Option<&Value>, out: &mut Vec<(String, Value)>) {
        for ch in self.held_channels(which) {
            if let Some(rest) = self.flush(&ch) {
                let (name, mut v) = self.channel_event(&ch, rest);
                if let (Some(from), Some(obj)) = (from, v.as_object_mut())
                    && let Some(id) = from.get("item_id")
                {
                    obj.insert("item_id".into(), id.clone());
                }
                out.push((name.to_string(), v));
            }
        }
    }

    /// A channel's remaining text as an event of its kind.
    fn channel_event(&self, ch: &str, rest: String) -> (&'static str, Value) {
        let (kind, index) = ch.split_at(1);
        let n = |s: &str| s.parse::<u64>().unwrap_or(0);
        let chunk = |choice: Value| {
            let mut c = self.envelope.clone().unwrap_or_default();
            c.insert("choices".into(), json!([choice]));
            Value::Object(c)
        };
        match kind {
            "b" => (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": n(index),
                    "delta": {"type": "text_delta", "text": rest}}),
            ),
            "j" => (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": n(index),
                    "delta": {"type": "input_json_delta", "partial_json": rest}}),
            ),
            "r" => {
                let (o, c) = index.split_once(':').unwrap_or(("0", "0"));
                (
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "output_index": n(o),
                        "content_index": n(c), "delta": rest, "logprobs": []}),
                )
            }
            "f" => (
                "response.function_call_arguments.delta",
                json!({"type": "response.function_call_arguments.delta",
                    "output_index": n(index), "delta": rest}),
            ),
            "l" => (
                "",
                chunk(json!({"index": n(index), "text": rest, "finish_reason": null})),
            ),
            "d" => {
                let (c, field) = index.split_once('.').unwrap_or(("0", "refusal"));
                let mut delta = Map::new();
                delta.insert(field.to_string(), Value::String(rest));
                (
                    "",
                    chunk(json!({"index": n(c), "delta": delta, "finish_reason": null})),
                )
            }
            "h" => (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": n(index),
                    "delta": {"type": "thinking_delta", "thinking": rest}}),
            ),
            "s" | "u" => {
                let (o, i) = index.split_once(':').unwrap_or(("0", "0"));
                let (ty, at) = if kind == "s" {
                    ("response.reasoning_summary_text.delta", "summary_index")
                } else {
                    ("response.refusal.delta", "content_index")
                };
                let mut ev = Map::new();
                ev.insert("type".into(), json!(ty));
                ev.insert("output_index".into(), json!(n(o)));
                ev.insert(at.into(), json!(n(i)));
                ev.insert("delta".into(), Value::String(rest));
                (ty, Value::Object(ev))
            }
            "t" => {
                let (c, t) = index.split_once('.').unwrap_or(("0", "0"));
                (
                    "",
                    chunk(
                        json!({"index": n(c), "delta": {"tool_calls": [{"index": n(t),
                        "function": {"arguments": rest}}]}, "finish_reason": null}),
                    ),
                )
            }
            _ => (
                "",
                chunk(json!({"index": n(index), "delta": {"content": rest},
                    "finish_reason": null})),
            ),
        }
    }

    /// The end of the stream: events carrying whatever text is still held (empty if none).
    pub fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        self.flush_all(&mut out);
        if let (Some(id), Some(hook)) = (self.response_id.take(), self.on_end.take()) {
            hook(&id);
        }
        Bytes::from(out)
    }

    /// Writes an event per channel that still holds text; returns whether it wrote any.
    fn flush_all(&mut self, out: &mut Vec<u8>) -> bool {
        let mut events = Vec::new();
        self.flush_into("", None, &mut events);
        if let Some(last) = self.last_seq {
            self.number(&mut events, last + 1 - self.seq_added, None);
        }
        for (name, v) in &events {
            push_event(out, name, v);
        }
        !events.is_empty()
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
            let want_id = self.on_end.is_some() && self.response_id.is_none();
            if self.masker.is_none()
                && self.held.is_empty()
                && self.seq_added == 0
                && !want_id
                && !may_hold_placeholder(ev)
            {
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
                // The end of a chat completion stream: whatever is held goes out before it.
                if data.as_deref().map(<[u8]>::trim_ascii) == Some(b"[DONE]") {
                    changed |= self.flush_all(&mut out);
                }
                out.extend_from_slice(ev);
                continue;
            };
            let mut before: Vec<(String, Value)> = Vec::new();
            self.rewrite_event(&mut v, &mut before);
            if let Some(seq) = v.get("sequence_number").and_then(Value::as_u64) {
                self.number(&mut before, seq, Some(&mut v));
            }
            for (n, extra) in before {
                push_event(&mut out, &n, &extra);
            }
            push_event(&mut out, &name, &v);
            changed = true;
        }
        if changed { Bytes::from(out) } else { run }
    }

    /// Numbers the events `added` ahead of the upstream's event numbered `seq` (`v`, `None` at
    /// the end of the stream), and that event after them: later events move up as many.
    fn number(&mut self, added: &mut [(String, Value)], seq: u64, v: Option<&mut Value>) {
        for (_, e) in added.iter_mut() {
            if let Some(o) = e.as_object_mut() {
                let n = seq + self.seq_added;
                o.insert("sequence_number".into(), n.into());
                self.last_seq = Some(n);
                self.seq_added += 1;
            }
        }
        if let Some(o) = v.and_then(Value::as_object_mut) {
            let n = seq + self.seq_added;
            o.insert("sequence_number".into(), n.into());
            self.last_seq = Some(n);
        }
    }

    /// Rewrites one event; `before` receives events made to flush held text ahead of it.
    fn rewrite_event(&mut self, v: &mut Value, before: &mut Vec<(String, Value)>) {
        if self.response_id.is_none()
            && v.get("type").and_then(Value::as_str) == Some("response.created")
            && let Some(id) = v.pointer("/response/id").and_then(Value::as_str)
        {
            self.response_id = Some(id.to_string());
        }
        // OpenAI chat completions: per-choice content and tool-call argument deltas; flush on
        // finish_reason.
        // The chunk fields (id, model, created…) are the same in every chunk of a stream.
        if self.envelope.is_none()
            && let Some(obj) = v.as_object()
            && obj.contains_key("choices")
        {
            self.envelope = Some(
                obj.iter()
                    .filter(|(k, _)| *k != "choices" && *k != "usage")
                    .map(|(k, x)| (k.clone(), x.clone()))
                    .collect(),
            );
        }
        if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
            for c in choices.iter_mut() {
                let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
                // Legacy completions stream their text beside, not in, a delta.
                if let Some(obj) = c.as_object_mut() {
                    let ch = format!("l{idx}");
                    if self.feed_field(obj, "text", &ch)
                        && finished
                        && let Some(rest) = self.flush(&ch)
                    {
                        let now = obj.get("text").and_then(Value::as_str).unwrap_or("");
                        let all = format!("{now}{rest}");
                        obj.insert("text".into(), Value::String(all));
                    }
                }
                if let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) {
                    let ch = format!("c{idx}");
                    // The text said before a tool call goes out before the call.
                    if delta.contains_key("tool_calls") {
                        self.flush_into(&ch, None, before);
                    }
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
                    // Refusals and reasoning are answer text too, each its own channel.
                    for field in ["refusal", "reasoning_content", "reasoning"] {
                        self.feed_field(delta, field, &format!("d{idx}.{field}"));
                    }
                    for call in delta
                        .get_mut("tool_calls")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        let t = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let Some(f) = call.get_mut("function").and_then(Value::as_object_mut)
                        else {
                            continue;
                        };
                        self.feed_field(f, "arguments", &format!("t{idx}.{t}"));
                    }
                    if finished {
                        self.flush_into(&format!("d{idx}."), None, before);
                        self.flush_into(&format!("t{idx}."), None, before);
                    }
                } else if let Some(m) = c.get_mut("message") {
                    self.mask_whole(m);
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
        // OpenAI Responses: text, refusal, reasoning-summary and argument deltas per output
        // part; a part's `done` first gets what is held, then is masked as a whole.
        if let Some(ch) = responses_channel(&ty, v) {
            if ty.ends_with(".delta") {
                if let Some(obj) = v.as_object_mut() {
                    self.feed_field(obj, "delta", &ch);
                }
            } else {
                self.flush_into(&ch, Some(v), before);
                self.mask_whole(v);
                unmask_value(v, &self.map);
            }
            return;
        }
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match ty.as_str() {
            // Anthropic: text and tool-input deltas per content block; flush before it stops.
            "content_block_delta" => {
                if let Some(d) = v.get_mut("delta").and_then(Value::as_object_mut) {
                    let fed = [("text", "b"), ("partial_json", "j"), ("thinking", "h")]
                        .into_iter()
                        .any(|(field, kind)| self.feed_field(d, field, &format!("{kind}{index}")));
                    if !fed {
                        d.values_mut().for_each(|x| unmask_value(x, &self.map));
                    }
                }
            }
            // Text that opens a block or an output part is the start of its channel: a value
            // begun there and ended in a delta is held like any other.
            "content_block_start" => {
                if let Some(b) = v.get_mut("content_block").and_then(Value::as_object_mut) {
                    let _ = self.feed_field(b, "text", &format!("b{index}"))
                        || self.feed_field(b, "thinking", &format!("h{index}"));
                }
                self.mask_whole(v);
                unmask_value(v, &self.map);
            }
            "response.content_part.added" => {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                let ch = format!("r{}:{}", n("output_index"), n("content_index"));
                if let Some(p) = v.get_mut("part").and_then(Value::as_object_mut) {
                    self.feed_field(p, "text", &ch);
                }
                self.mask_whole(v);
                unmask_value(v, &self.map);
            }
            "content_block_stop" => {
                for kind in ["b", "h", "j"] {
                    self.flush_into(&format!("{kind}{index}"), None, before);
                }
            }
            // An event that ends the answer (or says it failed): whatever is still held was
            // said before it, so it goes out first (a client stops reading at such an event).
            t if ends_answer(t, v) => {
                self.flush_into("", None, before);
                self.mask_whole(v);
                unmask_value(v, &self.map);
            }
            // Whole texts repeated by closing events (`response.content_part.done`,
            // `response.output_item.done`, `response.completed`), Anthropic's opening
            // `content_block_start`, and anything else: masked as a whole.
            _ => {
                self.mask_whole(v);
                unmask_value(v, &self.map);
            }
        }
    }

    /// Masks new values in every string of an event that repeats or carries whole texts (with
    /// the stream's map, so a value gets the placeholder its deltas got), tool-call arguments
    /// as JSON text.
    fn mask_whole(&mut self, v: &mut Value) {
        if let Some(m) = self.masker.as_mut() {
            mask_strings(&m.set, v, &mut m.map);
        }
    }
}

/// Whether a stream event of type `ty` ends the answer: Anthropic's `message_delta` (its stop
/// reason), `message_stop` and `error`; the Responses API's terminal events; a chat stream's
/// error chunk (no type, an `error` member).
fn ends_answer(ty: &str, v: &Value) -> bool {
    matches!(
        ty,
        "message_delta"
            | "message_stop"
            | "error"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
    ) || (ty.is_empty() && v.get("error").is_some())
}

/// Masks answer values in every string of `v` but identifiers and inline media; JSON-text
/// fields (tool-call arguments) so that they stay JSON.
fn mask_strings(set: &PolicySet, v: &mut Value, map: &mut RedactionMap) {
    match v {
        Value::String(s) => {
            let red = set.redact_into(Target::LlmResponse, s, map);
            if red != *s {
                *s = red;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask_strings(set, x, map)),
        Value::Object(o) => {
            let text_type = is_text_type(o);
            for (k, x) in o.iter_mut() {
                if kept_in_clear(k, x, false, text_type) {
                    continue;
                }
                match x {
                    Value::String(s) if is_json_text_key(k) => {
                        redact_json_text(&set.scoped(None), s, Target::LlmResponse, map, false);
                    }
                    _ => mask_strings(set, x, map),
                }
            }
        }
        _ => {}
    }
}

/// Channels whose text is JSON (tool-call arguments): unmasked with escaped originals, masked
/// whole when they end.
fn is_json_channel(ch: &str) -> bool {
    matches!(ch.as_bytes().first(), Some(b't' | b'j' | b'f'))
}

/// The channel of an OpenAI Responses text event (`….delta`, `….done`), if it is one.
fn responses_channel(ty: &str, v: &Value) -> Option<String> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let output = n("output_index");
    let kind = ty
        .strip_suffix(".delta")
        .or_else(|| ty.strip_suffix(".done"))?;
    Some(match kind {
        "response.output_text" => format!("r{output}:{}", n("content_index")),
        "response.reasoning_summary_text" => format!("s{output}:{}", n("summary_index")),
        "response.refusal" => format!("u{output}:{}", n("content_index")),
        "response.function_call_arguments" => format!("f{output}"),
        _ => return None,
    })
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
            let mut u = StreamRewriter::new(map());
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
        let mut u = StreamRewriter::new(map());
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

    /// Feeds `events` to a rewriter one by one, then ends the stream; returns all it sent.
    fn run(w: &mut StreamRewriter, events: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            out.extend_from_slice(&w.rewrite(Bytes::from(e.clone())));
        }
        out.extend_from_slice(&w.finish());
        out
    }

    fn pieces(text: &str, size: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(size).map(|c| c.iter().collect()).collect()
    }

    /// A chat completion stream whose one tool call's arguments come `size` characters a chunk.
    fn chat_tool_events(args: &str, size: usize) -> Vec<String> {
        pieces(args, size)
            .iter()
            .map(|p| {
                let v = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                    "function": {"arguments": p}}]}, "finish_reason": null}]});
                format!("data: {v}\n\n")
            })
            .chain([chat_event("", true), "data: [DONE]\n\n".to_string()])
            .collect()
    }

    /// The tool-call arguments a rewritten chat completion stream carries, joined.
    fn chat_tool_arguments(out: &[u8]) -> String {
        let mut got = String::new();
        for_each_event(out, |_, d| {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(a) =
                    v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            {
                got.push_str(a);
            }
        });
        got
    }

    /// Events like `delta` (an Anthropic `input_json_delta` or a Responses arguments delta)
    /// carrying `args` `size` characters at a time, then `stop`.
    fn block_tool_events(args: &str, size: usize, delta: &str, stop: &str) -> Vec<String> {
        pieces(args, size)
            .iter()
            .map(|p| {
                let mut v: Value = serde_json::from_str(delta).unwrap();
                match v.pointer_mut("/delta/partial_json") {
                    Some(x) => *x = json!(p),
                    None => v["delta"] = json!(p),
                }
                format!("data: {v}\n\n")
            })
            .chain([format!("data: {stop}\n\n")])
            .collect()
    }

    #[test]
    fn tool_call_arguments_split_across_events_are_restored_as_valid_json() {
        let key = "-----BEGIN KEY-----\nAB\"C\n-----END KEY-----";
        let map: RedactionMap = vec![
            ("[EMAIL_1]".into(), "ana@example.com".into()),
            ("[KEY_1]".into(), key.into()),
        ];
        let args = r#"{"to":"[EMAIL_1]","k":"[KEY_1]","n":"[EMAIL_1]"}"#;
        let want = json!({"to": "ana@example.com", "k": key, "n": "ana@example.com"});
        for size in [1, 2, 3, 7, 100] {
            // OpenAI chat completions.
            let events = chat_tool_events(args, size);
            let out = run(&mut StreamRewriter::new(map.clone()), &events);
            let got = chat_tool_arguments(&out);
            let parsed: Value = serde_json::from_str(&got).expect(&got);
            assert_eq!(parsed, want, "chat, size {size}");
            // Anthropic tool input, and OpenAI Responses function-call arguments.
            for (delta, stop) in [
                (
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"P"}}"#,
                    r#"{"type":"content_block_stop","index":1}"#,
                ),
                (
                    r#"{"type":"response.function_call_arguments.delta","output_index":2,"item_id":"fc_1","delta":"P"}"#,
                    r#"{"type":"response.function_call_arguments.done","output_index":2,"item_id":"fc_1","arguments":"[EMAIL_1]"}"#,
                ),
            ] {
                let events = block_tool_events(args, size, delta, stop);
                let out = run(&mut StreamRewriter::new(map.clone()), &events);
                let mut got = String::new();
                for_each_event(&out, |_, d| {
                    let v: Value = serde_json::from_slice(d).unwrap();
                    if let Some(a) = v["delta"]["partial_json"].as_str().or(v["delta"].as_str()) {
                        got.push_str(a);
                    }
                    if v["type"] == "response.function_call_arguments.done" {
                        assert_eq!(v["arguments"], "ana@example.com");
                    }
                });
                let parsed: Value = serde_json::from_str(&got).expect(&got);
                assert_eq!(parsed, want, "{delta}, size {size}");
            }
        }
        // A buffered answer: arguments stay valid JSON with an original that needs escaping.
        let body = json!({"choices": [{"message": {"content": "key: [KEY_1]", "tool_calls":
            [{"function": {"arguments": r#"{"k":"[KEY_1]"}"#}}]}}]});
        let v: Value =
            serde_json::from_slice(&unmask_body(Bytes::from(body.to_string()), &map)).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], format!("key: {key}"));
        let args = v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(args).unwrap()["k"], key);
    }

    #[test]
    fn held_text_is_sent_at_the_end_without_a_finish_reason() {
        for end in ["data: [DONE]\n\n", ""] {
            let events = vec![
                chat_event("array x[", false),
                chat_event(" a b [EMA", false),
            ];
            let mut events = events;
            if !end.is_empty() {
                events.push(end.to_string());
            }
            let out = run(&mut StreamRewriter::new(map()), &events);
            assert_eq!(collect_chat(&out), "array x[ a b [EMA", "end {end:?}");
            if !end.is_empty() {
                let text = String::from_utf8_lossy(&out);
                assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            }
        }
    }

    /// A stream that ends (or fails) without closing its text first: what is held goes out
    /// before the event that ends it, not after, where a client no longer reads.
    #[test]
    fn held_text_goes_out_before_the_event_that_ends_the_answer() {
        let named = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap());
        let ant_delta = |t: &str| {
            named(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": t}}))
        };
        let resp_delta = |t: &str| {
            named(
                json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
                "content_index": 0, "delta": t, "sequence_number": 1}),
            )
        };
        let cases: Vec<(Vec<String>, &str)> = vec![
            (
                vec![
                    ant_delta("write to [EMA"),
                    named(json!({"type": "error", "error": {"type": "overloaded_error"}})),
                ],
                "\"error\"",
            ),
            (
                vec![
                    ant_delta("write to [EMA"),
                    named(json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}})),
                ],
                "message_delta",
            ),
            (
                vec![
                    chat_event("write to [EMA", false),
                    format!("data: {}\n\n", json!({"error": {"message": "overloaded"}})),
                ],
                "overloaded",
            ),
            (
                vec![
                    resp_delta("write to [EMA"),
                    named(json!({"type": "response.incomplete", "sequence_number": 2,
                        "response": {"id": "r", "status": "incomplete"}})),
                ],
                "response.incomplete",
            ),
        ];
        for (events, end) in cases {
            let out = run(&mut StreamRewriter::new(map()), &events);
            let text = String::from_utf8_lossy(&out);
            let held = text.find("[EMA").unwrap_or_else(|| panic!("{text}"));
            let ending = text.find(end).unwrap();
            assert!(held < ending, "held text after the end ({end}): {text}");
        }
    }

    /// The shipped secrets pack.
    fn secrets_pack() -> palisade_policy::Policy {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../policies/secrets-detection.json"
        );
        palisade_policy::Policy::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn email_answers() -> Arc<PolicySet> {
        let policy = palisade_policy::Policy::from_json(
            r#"{"id": "pii", "name": "p", "description": "", "version": "1", "rules": [
                {"id": "E-1", "name": "email", "category": "pii", "severity": "low",
                "targets": ["llm_response"], "patterns": {"regex": ["[a-z.]+@[a-z]+\\.(?:com|io)"]},
                "action": "redact", "redact": {"label": "EMAIL"}, "rationale": "r",
                "examples": {"positive": ["a@b.io"], "negative": ["nothing"]}},
                {"id": "K-1", "name": "pem", "category": "secrets", "severity": "high",
                "targets": ["llm_response"], "patterns": {"regex": ["-----BEGIN KEY-----[A-Za-z0-9+/=\\s]+-----END KEY-----"]},
                "action": "redact", "redact": {"label": "KEY"}, "rationale": "r",
                "examples": {"positive": ["-----BEGIN KEY-----\nAAAA\n-----END KEY-----"], "negative": ["nothing"]}}]}"#,
        )
        .unwrap();
        Arc::new(PolicySet::compile(&[policy]).unwrap())
    }

    #[test]
    fn text_said_before_a_tool_call_goes_out_before_it() {
        let call = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
            "id": "c1", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": null}]});
        let events = vec![
            chat_event("Calling the tool", false),
            format!("data: {call}\n\n"),
            chat_event("", true),
            "data: [DONE]\n\n".to_string(),
        ];
        let mut w = StreamRewriter::new(map()).masking(email_answers(), &map());
        let out = String::from_utf8(run(&mut w, &events)).unwrap();
        let text = out.find("Calling the tool").expect(&out);
        let tool = out.find("tool_calls").expect(&out);
        assert!(text < tool, "{out}");
    }

    #[test]
    fn new_values_in_streamed_tool_call_arguments_are_masked_and_stay_json() {
        let args =
            r#"{"to":"[EMAIL_1]","cc":"new.person@corp.io","note":"and new.person@corp.io"}"#;
        let want = json!({"to": "ana@example.com", "cc": "[EMAIL_2]", "note": "and [EMAIL_2]"});
        for size in [1, 3, 7, 1000] {
            // OpenAI chat completions.
            let events = chat_tool_events(args, size);
            let mut w = StreamRewriter::new(map()).masking(email_answers(), &map());
            let out = run(&mut w, &events);
            assert!(
                !String::from_utf8_lossy(&out).contains("new.person"),
                "size {size}"
            );
            let got = chat_tool_arguments(&out);
            let parsed: Value = serde_json::from_str(&got).expect(&got);
            assert_eq!(parsed, want, "chat, size {size}");
            assert_eq!(w.masked(), 1);
            // Anthropic tool input, and OpenAI Responses function-call arguments (whose `done`
            // repeats them whole, masked alike).
            for (delta, stop) in [
                (
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"P"}}"#,
                    r#"{"type":"content_block_stop","index":1}"#.to_string(),
                ),
                (
                    r#"{"type":"response.function_call_arguments.delta","output_index":2,"item_id":"fc_1","delta":"P"}"#,
                    json!({"type": "response.function_call_arguments.done", "output_index": 2,
                        "item_id": "fc_1", "arguments": args})
                    .to_string(),
                ),
            ] {
                let events = block_tool_events(args, size, delta, &stop);
                let mut w = StreamRewriter::new(map()).masking(email_answers(), &map());
                let out = run(&mut w, &events);
                assert!(
                    !String::from_utf8_lossy(&out).contains("new.person"),
                    "{delta}"
                );
                let mut got = String::new();
                for_each_event(&out, |_, d| {
                    let v: Value = serde_json::from_slice(d).unwrap();
                    if let Some(a) = v["delta"]["partial_json"].as_str().or(v["delta"].as_str()) {
                        got.push_str(a);
                    }
                    if v["type"] == "response.function_call_arguments.done" {
                        let done: Value =
                            serde_json::from_str(v["arguments"].as_str().unwrap()).unwrap();
                        assert_eq!(done, want);
                    }
                });
                let parsed: Value = serde_json::from_str(&got).expect(&got);
                assert_eq!(parsed, want, "{delta}, size {size}");
            }
        }
    }

    #[test]
    fn new_values_in_a_streamed_answer_are_masked_and_the_clients_own_restored() {
        let body = "A ".repeat(40);
        let answer = format!(
            "Write to ana@example.com or to new.person@corp.io today. {body}Key:\n-----BEGIN KEY-----\n{}\n{}\n-----END KEY-----\nbye new.person@corp.io",
            "QUJD".repeat(16),
            "REVG".repeat(16)
        );
        let want = format!(
            "Write to ana@example.com or to [EMAIL_2] today. {body}Key:\n[KEY_1]\nbye [EMAIL_2]"
        );
        for size in [1, 2, 5, 13, 64, 1000] {
            let mut w = StreamRewriter::new(map()).masking(email_answers(), &map());
            let events: Vec<String> = pieces(&answer, size)
                .iter()
                .map(|p| chat_event(p, false))
                .chain([chat_event("", true), "data: [DONE]\n\n".to_string()])
                .collect();
            let out = run(&mut w, &events);
            let text = String::from_utf8_lossy(&out);
            for leak in ["new.p", "person@", "QUJD", "REVG", "BEGIN"] {
                assert!(!text.contains(leak), "size {size}: {leak} in {text}");
            }
            assert_eq!(collect_chat(&out), want, "size {size}");
            assert_eq!(w.masked(), 2, "size {size}");
        }
        // Without masking rules for answers, nothing is held: each event goes out as it came.
        let mut w = StreamRewriter::new(map());
        let e = chat_event("new.person@corp.io", false);
        assert_eq!(w.rewrite(Bytes::from(e.clone())), Bytes::from(e));
    }

    #[test]
    fn every_field_that_leaves_is_redacted_but_ids_and_inline_media() {
        let policy = palisade_policy::Policy::from_json(
            r#"{"id": "pii", "name": "p", "description": "", "version": "1", "rules": [
                {"id": "E-1", "name": "email", "category": "pii", "severity": "low",
                "targets": ["llm_request"], "patterns": {"regex": ["[a-z.]+@[a-z]+\\.(?:com|org)"]},
                "action": "redact", "redact": {"label": "EMAIL"}, "rationale": "r",
                "examples": {"positive": ["a@b.com"], "negative": ["nothing"]}}]}"#,
        )
        .unwrap();
        let set = PolicySet::compile(&[policy]).unwrap();
        let inline = "data:image/png;base64,bob@example.org";
        let mut body = json!({
            "model": "m", "user": "bob@example.org",
            "metadata": {"user_id": "bob@example.org", "note": "for ann@corp.com"},
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "mail bob@example.org"},
                {"type": "image_url", "image_url": {"url": "https://img.example/?to=bob@example.org"}},
                {"type": "image_url", "image_url": {"url": inline}}]}],
            "tools": [{"type": "function", "function": {"name": "send", "description":
                "Sends mail from ann@corp.com", "parameters": {"type": "object", "properties":
                {"to": {"type": "string", "description": "e.g. bob@example.org"}}}}}]
        });
        let map = redact_request(&set, &mut body);
        assert_eq!(map.len(), 2, "{map:?}");
        let text = body.to_string();
        assert!(!text.contains("ann@corp.com"), "{text}");
        assert_eq!(body["user"], "[EMAIL_1]");
        assert_eq!(body["metadata"]["user_id"], "[EMAIL_1]");
        assert_eq!(
            body["messages"][0]["content"][1]["image_url"]["url"],
            "https://img.example/?to=[EMAIL_1]"
        );
        assert_eq!(
            body["messages"][0]["content"][2]["image_url"]["url"],
            inline
        );
        assert_eq!(body["model"], "m");
        assert_eq!(body["tools"][0]["function"]["name"], "send");
        assert_eq!(
            body["tools"][0]["function"]["parameters"]["properties"]["to"]["description"],
            "e.g. [EMAIL_1]"
        );
    }

    #[test]
    fn every_text_of_a_streamed_answer_is_masked_closing_events_included() {
        let answer = "START val john.doe@example.com after words END";
        let item = json!({"id": "msg_1", "type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": answer}]});
        let mut events: Vec<String> = pieces(answer, 3)
            .iter()
            .map(|p| {
                let v = json!({"type": "response.output_text.delta", "item_id": "msg_1",
                    "output_index": 0, "content_index": 0, "delta": p});
                format!("event: response.output_text.delta\ndata: {v}\n\n")
            })
            .collect();
        for v in [
            json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "text": answer}),
            json!({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": answer}}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            json!({"type": "response.completed", "response": {"id": "resp_1", "output": [item]}}),
        ] {
            events.push(format!(
                "event: {}\ndata: {v}\n\n",
                v["type"].as_str().unwrap()
            ));
        }
        let mut w = StreamRewriter::new(Vec::new()).masking(email_answers(), &Vec::new());
        let out = run(&mut w, &events);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("john.doe"), "{text}");
        let mut deltas = String::new();
        for_each_event(&out, |_, d| {
            let v: Value = serde_json::from_slice(d).unwrap();
            if v["type"] == "response.output_text.delta" {
                deltas.push_str(v["delta"].as_str().unwrap());
            }
        });
        assert_eq!(deltas, "START val [EMAIL_1] after words END");
        assert_eq!(
            text.matches("START val [EMAIL_1] after words END").count(),
            5,
            "{text}"
        );
        assert_eq!(w.masked(), 1);

        // Chat refusals and reasoning, Anthropic thinking and a block's opening text.
        let events: Vec<String> = [
            json!({"choices": [{"index": 0, "delta": {"reasoning": "mail john.d"}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"reasoning": "oe@example.com now", "refusal": "no, ann@corp.io"}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ]
        .iter()
        .map(|v| format!("data: {v}\n\n"))
        .chain(
            [
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "to ann@corp.io"}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "thinking_delta", "thinking": "ask john.doe@exa"}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "thinking_delta", "thinking": "mple.com later"}}),
                json!({"type": "content_block_stop", "index": 2}),
            ]
            .iter()
            .map(|v| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())),
        )
        .collect();
        let mut w = StreamRewriter::new(Vec::new()).masking(email_answers(), &Vec::new());
        let out = run(&mut w, &events);
        let text = String::from_utf8_lossy(&out);
        for leak in ["john.d", "oe@example", "ann@corp", "@exa"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        let (mut reasoning, mut thinking) = (String::new(), String::new());
        for_each_event(&out, |_, d| {
            let v: Value = serde_json::from_slice(d).unwrap();
            if let Some(r) = v["choices"][0]["delta"]["reasoning"].as_str() {
                reasoning.push_str(r);
            }
            if let Some(t) = v["delta"]["thinking"].as_str() {
                thinking.push_str(t);
            }
        });
        assert_eq!(reasoning, "mail [EMAIL_1] now");
        assert_eq!(thinking, "ask [EMAIL_1] later");
    }

    #[test]
    fn a_stream_that_breaks_withholds_what_it_held_and_counts_it() {
        let mut w = StreamRewriter::new(Vec::new()).masking(email_answers(), &Vec::new());
        let out = w.rewrite(Bytes::from(chat_event(
            "write to new.person@corp.io",
            false,
        )));
        assert!(!String::from_utf8_lossy(&out).contains("new.person"));
        assert_eq!(w.masked(), 0);
        w.discard();
        assert_eq!(w.masked(), 1, "the held value was kept from the client");
        assert!(w.finish().is_empty(), "nothing is sent after a break");
    }

    #[test]
    fn a_value_begun_in_an_opening_event_is_held_too() {
        let events: Vec<String> = [
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "START john.doe@"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "example.com END"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "response.content_part.added", "item_id": "m", "output_index": 1, "content_index": 0, "part": {"type": "output_text", "text": "GO ann@co"}}),
            json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 1, "content_index": 0, "delta": "rp.io STOP"}),
            json!({"type": "response.output_text.done", "item_id": "m", "output_index": 1, "content_index": 0, "text": "GO ann@corp.io STOP"}),
        ]
        .iter()
        .map(|v| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap()))
        .collect();
        let mut w = StreamRewriter::new(Vec::new()).masking(email_answers(), &Vec::new());
        let out = run(&mut w, &events);
        let text = String::from_utf8_lossy(&out);
        for leak in ["john.doe", "example.com", "ann@", "rp.io"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        let (mut block, mut part) = (String::new(), String::new());
        for_each_event(&out, |_, d| {
            let v: Value = serde_json::from_slice(d).unwrap();
            match v["type"].as_str() {
                Some("content_block_start") => {
                    block.push_str(v["content_block"]["text"].as_str().unwrap())
                }
                Some("content_block_delta") => block.push_str(v["delta"]["text"].as_str().unwrap()),
                Some("response.content_part.added") => {
                    part.push_str(v["part"]["text"].as_str().unwrap())
                }
                Some("response.output_text.delta") => part.push_str(v["delta"].as_str().unwrap()),
                _ => {}
            }
        });
        assert_eq!(block, "START [EMAIL_1] END");
        assert_eq!(part, "GO [EMAIL_2] STOP");
    }

    #[test]
    fn legacy_completion_streams_are_masked() {
        let mut w = StreamRewriter::new(Vec::new()).masking(email_answers(), &Vec::new());
        let events: Vec<String> = ["write to new.pe", "rson@corp.io then", " stop"]
            .iter()
            .map(|t| format!("data: {}\n\n", json!({"object": "text_completion", "choices": [{"index": 0, "text": t, "finish_reason": null}]})))
            .chain([format!("data: {}\n\n", json!({"choices": [{"index": 0, "text": "!", "finish_reason": "stop"}]}))])
            .collect();
        let out = run(&mut w, &events);
        let mut text = String::new();
        for_each_event(&out, |_, d| {
            if let Ok(v) = serde_json::from_slice::<Value>(d)
                && let Some(t) = v["choices"][0]["text"].as_str()
            {
                text.push_str(t);
            }
        });
        assert_eq!(text, "write to [EMAIL_1] then stop!");
    }

    #[test]
    fn tool_call_arguments_stay_json_when_values_in_them_are_masked() {
        let secrets = secrets_pack();
        // A rule whose match takes the quotes with it, and no `redact.value`.
        let quoted = palisade_policy::Policy::from_json(
            r#"{"id": "q", "name": "q", "description": "", "version": "1", "rules": [
                {"id": "Q-1", "name": "quoted", "category": "secrets", "severity": "high",
                "targets": ["llm_request", "llm_response"],
                "patterns": {"regex": ["\"pin\":\\s*\"\\d{4}\""]},
                "action": "redact", "redact": {"label": "PIN"}, "rationale": "r",
                "examples": {"positive": ["\"pin\": \"1234\""], "negative": ["pin"]}}]}"#,
        )
        .unwrap();
        let set = PolicySet::compile(&[secrets, quoted]).unwrap();
        let args = json!({
            "password": "Tr0ub4dor&3",
            "api_key": "a8f3k2m9x7q1w5e4r6t0",
            "conn": "postgres://app:s3cretPw@db.internal:5432/app",
            "pin": "4821",
            "note": "ok"
        })
        .to_string();
        let answer = |args: &str| {
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "connect", "arguments": args}}]}}]})
        };
        let check = |v: &Value, pointer: &str| {
            let text = v.pointer(pointer).and_then(Value::as_str).unwrap();
            let parsed: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            for clear in ["Tr0ub4dor&3", "a8f3k2m9x7q1w5e4r6t0", "s3cretPw", "4821"] {
                assert!(!text.contains(clear), "{clear} in {text}");
            }
            assert_eq!(parsed["note"], "ok");
            parsed
        };
        // An answer's new values: masked, the arguments still JSON (the quote-taking rule
        // sends them string by string).
        let mut v = answer(&args);
        assert!(mask_new(&set, &mut v, Target::LlmResponse, &RedactionMap::new()) >= 3);
        let got = check(&v, "/choices/0/message/tool_calls/0/function/arguments");
        assert!(
            got["password"].as_str().unwrap().starts_with("[PASSWORD_"),
            "{got}"
        );
        // Without the quote-taking rule's value the text form stands: the key stays in clear.
        let mut only_secrets =
            answer(&json!({"password": "Tr0ub4dor&3", "note": "ok"}).to_string());
        mask_new(
            &set,
            &mut only_secrets,
            Target::LlmResponse,
            &RedactionMap::new(),
        );
        let text = only_secrets
            .pointer("/choices/0/message/tool_calls/0/function/arguments")
            .and_then(Value::as_str)
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!({"password": "[PASSWORD_1]", "note": "ok"})
        );
        // A request's history: the same, and the map restores the originals.
        let mut body = json!({"model": "m", "messages": [
            {"role": "user", "content": "connect please"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "connect", "arguments": args}}]}]});
        let map = redact_request(&set, &mut body);
        let sent = check(&body, "/messages/1/tool_calls/0/function/arguments");
        let mut back = sent.clone();
        unmask_value(&mut back, &map);
        assert_eq!(back, serde_json::from_str::<Value>(&args).unwrap());
    }

    #[test]
    fn events_added_to_a_responses_stream_are_numbered_in_sequence() {
        let ev = |seq: u64, v: Value| {
            let mut v = v;
            v["sequence_number"] = seq.into();
            format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
        };
        // The held tail is flushed before `output_text.done`; a second part's tail at the end.
        let events = vec![
            ev(
                0,
                json!({"type": "response.created", "response": {"id": "r"}}),
            ),
            ev(
                1,
                json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": "hello there, write to ann@corp.io or [EMA", "logprobs": []}),
            ),
            ev(
                2,
                json!({"type": "response.output_text.done", "item_id": "m", "output_index": 0, "content_index": 0, "text": "hello there, write to ann@corp.io or [EMA"}),
            ),
            ev(
                3,
                json!({"type": "response.output_text.delta", "item_id": "n", "output_index": 1, "content_index": 0, "delta": "and bob@corp.io", "logprobs": []}),
            ),
        ];
        for masking in [true, false] {
            let map = vec![("[EMAIL_1]".to_string(), "ann@corp.io".to_string())];
            let mut w = StreamRewriter::new(map.clone());
            if masking {
                w = w.masking(email_answers(), &map);
            }
            let out = run(&mut w, &events);
            let mut numbers = Vec::new();
            for_each_event(&out, |_, d| {
                let v: Value = serde_json::from_slice(d).unwrap();
                numbers.push(v["sequence_number"].as_u64().expect("numbered"));
                if v["type"] == "response.output_text.delta" {
                    assert_eq!(v["logprobs"], json!([]), "{v}");
                }
            });
            let want: Vec<u64> = (0..numbers.len() as u64).collect();
            assert_eq!(numbers, want, "masking {masking}");
            assert!(
                numbers.len() > events.len(),
                "masking {masking}: held text was flushed"
            );
        }
    }

    #[test]
    fn a_value_found_once_is_masked_wherever_else_it_occurs() {
        let set = PolicySet::compile(&[secrets_pack()]).unwrap();
        let args = json!({
            "cfg": {"password": "Tr0ub4dor&3"},
            "as_text": "{\"password\": \"Tr0ub4dor&3\", \"other\": \"x\"}",
            "arr": [["Tr0ub4dor&3"]],
        })
        .to_string();
        let mut body = json!({"model": "m", "messages": [
            {"role": "user", "content": "password: Tr0ub4dor&3, and once more: Tr0ub4dor&3"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": args}}]}]});
        let original = body.clone();
        let map = redact_request(&set, &mut body);
        let sent = body.to_string();
        assert!(!sent.contains("Tr0ub4dor"), "{sent}");
        let args = body
            .pointer("/messages/1/tool_calls/0/function/arguments")
            .and_then(Value::as_str)
            .unwrap();
        serde_json::from_str::<Value>(args).expect("arguments stay JSON");
        let mut back = body.clone();
        unmask_value(&mut back, &map);
        assert_eq!(back, original);
        // Short values are not chased (they could be ordinary words).
        let mut short = json!({"messages": [{"role": "user", "content": "pwd=ab1cd then ab1cd"}]});
        redact_request(&set, &mut short);
        let text = short.to_string();
        assert_eq!(text.matches("ab1cd").count(), 1, "{text}");
    }

    #[test]
    fn a_conversation_over_its_bound_keeps_numbering_without_its_oldest_values() {
        let c = Conversations::default();
        let mut map: RedactionMap = (1..=3000)
            .map(|i| (format!("[EMAIL_{i}]"), format!("user{i:05}@example.com")))
            .take(2500)
            .collect();
        c.remember("k", "conv", &map);
        let kept = c.get("k", "conv").unwrap();
        assert_eq!(kept.len(), 2500, "every placeholder is kept");
        // The oldest stand for themselves (not restored); the newest keep their values.
        assert_eq!(kept[0], ("[EMAIL_1]".into(), "[EMAIL_1]".into()));
        assert_eq!(kept[2499].1, "user02500@example.com");
        let bytes: usize = kept.iter().map(|(p, o)| p.len() + o.len()).sum();
        assert!(bytes <= MAX_CONVERSATION_BYTES);
        // Far too many even as bare placeholders: the highest forgotten one of each label is
        // kept, and the next value is numbered after everything.
        map.extend((2501..=9000).map(|i| (format!("[EMAIL_{i}]"), "x".repeat(30))));
        map.push(("[PHONE_1]".into(), "+1 415 555 0133".into()));
        c.remember("k", "conv", &map);
        let kept = c.get("k", "conv").unwrap();
        let bytes: usize = kept.iter().map(|(p, o)| p.len() + o.len()).sum();
        assert!(bytes < MAX_CONVERSATION_BYTES * 2, "{bytes}");
        let email = palisade_policy::Policy::from_json(
            r#"{"id": "pii", "name": "p", "description": "", "version": "1", "rules": [
                {"id": "E-1", "name": "email", "category": "pii", "severity": "low",
                "targets": ["llm_request"], "patterns": {"regex": ["[a-z.]+@[a-z]+\\.(?:com|io)"]},
                "action": "redact", "redact": {"label": "EMAIL"}, "rationale": "r",
                "examples": {"positive": ["a@b.io"], "negative": ["nothing"]}}]}"#,
        )
        .unwrap();
        let set = PolicySet::compile(&[email]).unwrap();
        let mut body = json!({"input": "and carol@example.com"});
        let map = redact_request_continuing(&set, &mut body, kept);
        assert_eq!(body["input"], "and [EMAIL_9001]");
        assert_eq!(map.last().unwrap().1, "carol@example.com");
    }

    #[test]
    fn tool_inputs_as_objects_are_redacted_with_their_member_names() {
        let set = PolicySet::compile(&[secrets_pack()]).unwrap();
        let input = json!({"password": "Tr0ub4dor&3", "nested": {"api_key": "a8f3k2m9x7q1w5e4r6t0"},
            "list": ["Tr0ub4dor&3"], "note": "fine"});
        // Anthropic: a `tool_use` block in the history.
        let mut body = json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "connect",
                "input": input.clone()}]}]});
        let original = body.clone();
        let map = redact_request(&set, &mut body);
        let sent = body.to_string();
        assert!(
            !sent.contains("Tr0ub4dor") && !sent.contains("a8f3k2m9"),
            "{sent}"
        );
        assert_eq!(
            body.pointer("/messages/0/content/0/input/note"),
            Some(&json!("fine"))
        );
        let mut back = body.clone();
        unmask_value(&mut back, &map);
        assert_eq!(back, original);
        // MCP: a `tools/call`'s arguments.
        let mut args = input.clone();
        let mut map = RedactionMap::new();
        redact_arguments(&set, &mut args, Target::ToolArguments, &mut map);
        let sent = args.to_string();
        assert!(
            !sent.contains("Tr0ub4dor") && !sent.contains("a8f3k2m9"),
            "{sent}"
        );
        unmask_value(&mut args, &map);
        assert_eq!(args, input);
    }

    /// An MCP tool's structured result is content whatever its members are named: a secret
    /// under `data` or `url` is masked like one under `note`; an image's `data` stays.
    #[test]
    fn structured_tool_results_are_masked_under_every_member_name() {
        let set = PolicySet::compile(&[secrets_pack()]).unwrap();
        let mut result = json!({
            "content": [{"type": "image", "data": "iVBORw0KGgo", "mimeType": "image/png"}],
            "structuredContent": {"data": {"password": "Tr0ub4dor&3"},
                "url": "api_key=a8f3k2m9x7q1w5e4r6t0", "id": "password: Tr0ub4dor&3"}
        });
        assert!(mask_new(&set, &mut result, Target::ToolResult, &RedactionMap::new()) >= 2);
        let sent = result.to_string();
        assert!(
            !sent.contains("Tr0ub4dor") && !sent.contains("a8f3k2m9"),
            "{sent}"
        );
        assert_eq!(result["content"][0]["data"], "iVBORw0KGgo");
    }

    /// In an MCP result or server message every string is masked, a log line's `data` and a
    /// `url` too; inline media are left alone.
    #[test]
    fn mcp_messages_are_masked_under_every_member_name() {
        let set = PolicySet::compile(&[secrets_pack()]).unwrap();
        let mut log = json!({"level": "info", "data": "connecting with password: Tr0ub4dor&3",
            "logger": "db", "url": "api_key=a8f3k2m9x7q1w5e4r6t0"});
        assert!(mask_new_everywhere(&set, &mut log, Target::ToolResult, &RedactionMap::new()) >= 2);
        let sent = log.to_string();
        assert!(
            !sent.contains("Tr0ub4dor") && !sent.contains("a8f3k2m9"),
            "{sent}"
        );
        assert_eq!(log["logger"], "db");
        let mut result = json!({"content": [
            {"type": "image", "data": "iVBORw0KGgo", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "blob": "cGFzc3dvcmQ="}}]});
        let before = result.clone();
        mask_new_everywhere(&set, &mut result, Target::ToolResult, &RedactionMap::new());
        assert_eq!(result, before);
    }

    #[test]
    fn passwords_with_escaped_characters_are_redacted_and_restored_whole() {
        let set = PolicySet::compile(&[secrets_pack()]).unwrap();
        for password in [r#"p"q&w0rd"#, r"back\sl4sh", r#"x"y"z\w9"#] {
            // As an object (tool input), the member is read as JSON text: `p\"q&w0rd`.
            let input = json!({"password": password, "user": "sam"});
            let mut args = input.clone();
            let mut map = RedactionMap::new();
            redact_arguments(&set, &mut args, Target::ToolArguments, &mut map);
            assert_eq!(args["password"], "[PASSWORD_1]", "{password}: {args}");
            assert_eq!(map[0].1, password, "the map keeps the string's value");
            unmask_value(&mut args, &map);
            assert_eq!(args, input);
            // As JSON text in a string (chat completions' tool-call arguments).
            let mut body = json!({"model": "m", "messages": [{"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "login",
                    "arguments": input.to_string()}}]}]});
            let original = body.clone();
            let map = redact_request(&set, &mut body);
            let sent = body
                .pointer("/messages/0/tool_calls/0/function/arguments")
                .unwrap();
            let sent: Value = serde_json::from_str(sent.as_str().unwrap()).unwrap();
            assert_eq!(sent["password"], "[PASSWORD_1]", "{password}: {sent}");
            let mut back = body.clone();
            unmask_value(&mut back, &map);
            assert_eq!(back, original, "{password}");
        }
    }
}
