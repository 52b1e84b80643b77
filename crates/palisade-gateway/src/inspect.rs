//! Policy inspection of LLM traffic: which text of a request or answer is scanned as which
//! target, the findings of one request, and the alerts they raise.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use palisade_core::model::PolicyMode;
use palisade_core::now_ms;
use palisade_core::record::{AlertRecord, RequestRecord};
use palisade_policy::{Action, Decision, PolicySet, RuleMatch, Scope, Scoped, Target};
use serde_json::Value;

/// A proxy's compiled policies and how they act.
#[derive(Clone)]
pub struct Inspector {
    /// All rules of the proxy's policies, compiled once.
    pub set: Arc<PolicySet>,
    /// Enforce or monitor.
    pub mode: PolicyMode,
    inspect_responses: bool,
    /// Some `llm_response` rule blocks (decided once, not per streamed answer).
    blocks_responses: bool,
}

impl Inspector {
    /// Wraps a compiled set.
    pub fn new(set: Arc<PolicySet>, mode: PolicyMode) -> Self {
        let inspect_responses = set.rule_count_for(Target::LlmResponse) > 0;
        let blocks_responses = set.blocks(Target::LlmResponse);
        Self {
            set,
            mode,
            inspect_responses,
            blocks_responses,
        }
    }

    /// Whether answers need scanning at all (some rule targets `llm_response`).
    pub fn inspects_responses(&self) -> bool {
        self.inspect_responses
    }

    /// Whether some `llm_response` rule blocks.
    pub fn blocks_responses(&self) -> bool {
        self.blocks_responses
    }

    /// Whether a blocking finding stops the request.
    pub fn enforces(&self) -> bool {
        self.mode == PolicyMode::Enforce
    }
}

/// The decision a rule's action asks for.
fn decision_of(a: Action) -> Decision {
    match a {
        Action::Block => Decision::Block,
        Action::Redact => Decision::Redact,
        Action::Alert => Decision::Alert,
        Action::Log => Decision::Log,
    }
}

/// Name of a decision, as stored in the request log.
pub fn decision_str(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Log => "log",
        Decision::Alert => "alert",
        Decision::Redact => "redact",
        Decision::Block => "block",
    }
}

/// Everything the policies found in one request, across phases and stream windows.
#[derive(Default)]
pub struct Findings {
    /// Each rule's first match in the request and its first in the answer: where, what, and
    /// whether it was in the answer (a value the answer leaks is its own finding even when the
    /// request matched the same rule).
    matches: Vec<(Target, RuleMatch, bool)>,
    seen: HashSet<(Arc<str>, Arc<str>, bool)>,
    score: u8,
    decision: Decision,
    evaluated: bool,
    blocked: bool,
    /// Sensitive values in the answer were masked (`redact` rules acted there too).
    answer_redacted: bool,
    /// Labels of the values replaced in the request before it left (`EMAIL`, `CARD`…).
    request_labels: HashSet<String>,
    /// Why the gateway withheld part of the exchange on its own (not a rule): it is logged as
    /// blocked with this error.
    withheld: Option<String>,
    /// Whose request this is: texts the same caller had scanned lately are answered from the
    /// compiled set's memo (never another caller's; see `palisade_policy::Scope`).
    scope: Option<Scope>,
}

impl Findings {
    /// Scans the rest of this request as the API key `key_id`'s.
    pub fn set_caller(&mut self, key_id: &str) {
        self.scope = Some(Scope::of(key_id));
    }

    /// The set as this request's caller sees it (its memo scope).
    pub fn scoped<'a>(&self, insp: &'a Inspector) -> Scoped<'a> {
        insp.set.scoped(self.scope)
    }

    /// Scans `text` of a request as `target`; returns true when a blocking rule matched.
    pub fn scan(&mut self, insp: &Inspector, target: Target, text: &str) -> bool {
        self.scan_in(insp, target, text, false)
    }

    /// Scans `text` of an answer (an LLM's, a tool's result) as `target`.
    pub fn scan_answer(&mut self, insp: &Inspector, target: Target, text: &str) -> bool {
        self.scan_in(insp, target, text, true)
    }

    /// Scans a window of a streamed answer: like [`Findings::scan_answer`], but never through
    /// the memo (each window is new text; remembering them would only push out what repeats).
    pub fn scan_stream(&mut self, insp: &Inspector, target: Target, text: &str) -> bool {
        let scope = self.scope.take();
        let blocks = self.scan_in(insp, target, text, true);
        self.scope = scope;
        blocks
    }

    fn scan_in(&mut self, insp: &Inspector, target: Target, text: &str, answer: bool) -> bool {
        if text.is_empty() {
            return false;
        }
        self.evaluated = true;
        let ev = self.scoped(insp).evaluate(target, text);
        self.decision = self.decision.max(ev.decision);
        let mut blocks = false;
        for m in ev.matches {
            blocks |= m.action == Action::Block;
            // The risk score is the engine's, over the whole exchange: the sum of the scores of
            // the rules that matched anywhere in it (each rule once), at most 100.
            let seen = |answer| {
                self.seen
                    .contains(&(m.policy_id.clone(), m.rule_id.clone(), answer))
            };
            let new_rule = !seen(false) && !seen(true);
            if new_rule {
                self.score = self.score.saturating_add(m.score).min(100);
            }
            if self
                .seen
                .insert((m.policy_id.clone(), m.rule_id.clone(), answer))
            {
                self.matches.push((target, m, answer));
            }
        }
        blocks
    }

    /// Marks the request as stopped by policy.
    pub fn set_blocked(&mut self) {
        self.blocked = true;
    }

    /// Whether a rule with `action` matched text of `target` (in this request or its answer).
    pub fn matched(&self, target: Target, action: Action) -> bool {
        self.matches
            .iter()
            .any(|(t, m, _)| *t == target && m.action == action)
    }

    /// Records that the gateway withheld something it could not check (an MCP answer).
    pub fn set_withheld(&mut self, why: &str) {
        self.evaluated = true;
        self.blocked = true;
        self.withheld.get_or_insert_with(|| why.to_string());
    }

    /// Marks that values in the answer were masked by `redact` rules.
    pub fn set_answer_redacted(&mut self) {
        self.answer_redacted = true;
    }

    /// Records the values `redact` rules replaced in the request before it left (its map).
    pub fn set_request_redacted(&mut self, map: &[(String, String)]) {
        for (placeholder, _) in map {
            let label = palisade_policy::placeholder_label(placeholder);
            self.request_labels.insert(label.to_string());
        }
    }

    /// Whether a match did what its rule asks: a block stopped the request, a redaction
    /// replaced a value (a redact rule matched where nothing was replaced — a value disguised
    /// in the raw text, which only the normalised scan recognised — did not act).
    fn acted(&self, m: &RuleMatch, answer: bool) -> bool {
        match m.action {
            Action::Block => self.blocked,
            Action::Redact if answer => self.answer_redacted,
            Action::Redact => self.request_redacted(m),
            _ => true,
        }
    }

    /// Whether a request-side `redact` match had a value of its kind replaced. A match whose
    /// kind nothing was replaced for saw a value the raw text does not show as such (disguised),
    /// or a body whose shape is unknown.
    fn request_redacted(&self, m: &RuleMatch) -> bool {
        m.redact_label
            .as_ref()
            .is_some_and(|label| self.request_labels.contains(&**label))
    }

    /// `policy/rule` ids of blocking matches (for the client's error message; no patterns).
    pub fn blocking_rules(&self) -> String {
        self.rule_ids(|m| m.action == Action::Block).join(", ")
    }

    /// `policy/rule: name` of every rule that matched, each once, in order of finding.
    pub fn rule_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, m, _) in &self.matches {
            let s = format!("{}/{}: {}", m.policy_id, m.rule_id, m.rule_name);
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// `policy/rule` ids of the matches `keep` selects, each once, in order of finding.
    fn rule_ids(&self, keep: impl Fn(&RuleMatch) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for (_, m, _) in self.matches.iter().filter(|(_, m, _)| keep(m)) {
            let id = format!("{}/{}", m.policy_id, m.rule_id);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Writes the verdict into the request record and emits one alert per matched rule whose
    /// action asks for attention: block and alert rules, and redact rules of critical severity
    /// (credentials and keys on their way out). A routine redaction (an email address, a phone
    /// number) is the policy doing its job: it is in the request log (decision, matched rules)
    /// and the metrics, not in the alert queue, which it would otherwise flood on every request
    /// that carries personal data. `log` matches stay in the request log.
    ///
    /// The recorded decision is what the gateway did, not what the rules asked for: a block
    /// rule that did not stop the request (monitor mode) and a redact rule in an answer that was
    /// not rewritten (a stream) count as alerts, and alert whatever their severity.
    pub fn finalize(mut self, rec: &mut RequestRecord, alert: &dyn Fn(AlertRecord)) {
        if !self.evaluated {
            return;
        }
        // Something withheld is a block; else the matches decide (with none, what the
        // evaluation said: allow).
        let decision = if self.withheld.is_some() {
            Decision::Block
        } else if self.matches.is_empty() {
            self.decision
        } else {
            self.matches
                .iter()
                .map(|(_, m, answer)| {
                    if self.acted(m, *answer) {
                        decision_of(m.action)
                    } else {
                        Decision::Alert
                    }
                })
                .max()
                .unwrap_or(Decision::Allow)
        };
        if rec.error.is_none() {
            rec.error = self.withheld.take();
        }
        // A block the gateway recorded itself (a refused MCP call) stays.
        if rec.decision.as_deref() != Some("block") {
            rec.decision = Some(decision_str(decision).to_string());
        }
        rec.risk_score = Some(self.score as i64);
        if !self.matches.is_empty() {
            rec.matched_rules = Some(self.rule_ids(|_| true).join(","));
        }
        let matches = std::mem::take(&mut self.matches);
        for (target, m, answer) in matches {
            let unredacted = m.action == Action::Redact && !self.acted(&m, answer);
            if m.action == Action::Log
                || (m.action == Action::Redact
                    && !unredacted
                    && m.severity != palisade_policy::Severity::Critical)
            {
                continue;
            }
            let blocked = self.blocked && m.action == Action::Block;
            let verb = if blocked {
                "blocked"
            } else if unredacted && answer {
                "matched, but the value could not be masked: it reached the client"
            } else if unredacted {
                "matched, but the value was not replaced (disguised in the raw text, or a body whose shape is unknown): it reached the upstream"
            } else {
                "matched"
            };
            alert(AlertRecord {
                id: palisade_core::crypto::record_id(),
                ts_ms: now_ms(),
                kind: "policy".into(),
                policy_id: Some(m.policy_id.to_string()),
                rule_id: Some(m.rule_id.to_string()),
                title: m.rule_name.to_string(),
                category: Some(m.category.to_string()),
                severity: m.severity.as_str().to_string(),
                action: Some(m.action.as_str().to_string()),
                blocked,
                target: Some(target.as_str().to_string()),
                proxy: Some(rec.proxy.clone()),
                group: rec.group.clone(),
                key_name: rec.key_name.clone(),
                request_id: Some(rec.id.clone()),
                excerpt: Some(m.excerpt.clone()),
                decoded: m.decoded.map(|e| e.as_str().to_owned()),
                message: format!(
                    "{} rule {}/{} in {}: {}",
                    m.severity.as_str(),
                    m.policy_id,
                    m.rule_id,
                    target.as_str(),
                    verb
                ),
                status: "new".into(),
                dedup_key: None,
            });
        }
    }
}

/// Text of a request, split by what it is.
#[derive(Default, Debug)]
pub struct RequestTexts {
    /// Prompt text: system, user and assistant turns.
    pub prompt: String,
    /// Results of tools, fed back into the prompt.
    pub tool_results: String,
    /// Tool definitions offered to the model.
    pub tool_descriptions: String,
}

/// Keys whose values are identifiers or settings, never content.
pub(crate) fn is_meta_key(k: &str) -> bool {
    matches!(
        k,
        "model"
            | "role"
            | "type"
            | "id"
            | "tool_call_id"
            | "tool_use_id"
            | "call_id"
            | "object"
            | "finish_reason"
            | "stop_reason"
            | "system_fingerprint"
            | "service_tier"
            | "media_type"
            | "detail"
            | "format"
            | "encoding_format"
            | "status"
            | "user"
            | "image_url"
            | "url"
            | "data"
            | "signature"
    )
}

/// Whether member `k` (value `v`) of an object of type `ty` holds no content: a [`is_meta_key`]
/// name with a plain value (an id, a setting, inline media), except the `data` of a text source
/// (an Anthropic plain-text document, `{"type": "text", "data": …}`), which is text the model
/// reads. A meta name holding an object or array is structure the model reads: a tool schema's
/// property named `data` or `url` and its description, a response format's JSON schema
/// (`text.format`), a `data` object in a tool's input.
pub(crate) fn is_meta_member(k: &str, v: &Value, ty: Option<&str>) -> bool {
    is_meta_key(k)
        && !matches!(v, Value::Object(_) | Value::Array(_))
        && !(k == "data" && ty == Some("text"))
}

fn push(out: &mut String, s: &str) {
    if !s.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(s);
    }
}

#[derive(Clone, Copy)]
enum Bucket {
    Prompt,
    ToolResult,
    ToolDef,
}

fn bucket_text(out: &mut RequestTexts, bucket: Bucket) -> &mut String {
    match bucket {
        Bucket::Prompt => &mut out.prompt,
        Bucket::ToolResult => &mut out.tool_results,
        Bucket::ToolDef => &mut out.tool_descriptions,
    }
}

/// A string that is JSON text written with `\u` escapes (`{"q": "\u0073k-…"}`, a tool call's
/// arguments or a tool's output), parsed: what the escapes spell is what the model reads, and
/// what a pattern must see.
pub(crate) fn escaped_json(s: &str) -> Option<Value> {
    looks_escaped_json(s)
        .then(|| serde_json::from_str(s).ok())
        .flatten()
}

/// Whether `s` may be [`escaped_json`] (no parse: a guard for the walks).
pub(crate) fn looks_escaped_json(s: &str) -> bool {
    s.contains("\\u") && s.trim_start().starts_with(['{', '['])
}

/// Whether `r` is one of the role words of the APIs; anything else in a `role` is text (some
/// servers' chat templates write the role out into the prompt).
pub(crate) fn is_role_word(r: &str) -> bool {
    matches!(
        r,
        "system" | "user" | "assistant" | "tool" | "developer" | "function" | "model"
    )
}

/// Whether a member name can carry text worth reading: anything but a plain field name (lower
/// case letters, digits, `_`), such as the API's own. A secret or an address used as a name
/// (`{"sk-proj-…": 1}`) is read, and masked, like a value.
pub(crate) fn key_is_text(k: &str) -> bool {
    !k.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn walk(v: &Value, bucket: Bucket, out: &mut RequestTexts) {
    match v {
        Value::String(s) => match escaped_json(s) {
            // Read as the model reads it: decoded (the escaped spelling matches no pattern,
            // and an alert's excerpt must not show it).
            Some(parsed) => keys_and_strings(&parsed, bucket_text(out, bucket)),
            None => push(bucket_text(out, bucket), s),
        },
        Value::Array(a) => a.iter().for_each(|x| walk(x, bucket, out)),
        Value::Object(m) => {
            // Tool output fed back to the model: OpenAI `role: tool`, Anthropic `tool_result`
            // blocks, Responses `function_call_output` items.
            let role = m.get("role").and_then(Value::as_str);
            let ty = m.get("type").and_then(Value::as_str);
            let bucket = if role == Some("tool")
                || matches!(
                    ty,
                    Some("tool_result") | Some("function_call_output") | Some("mcp_tool_result")
                ) {
                Bucket::ToolResult
            } else {
                bucket
            };
            // A tool call's input as an object (Anthropic `tool_use`): every string is content,
            // whatever its member is named (`url`, `data`, `id` are arguments here).
            let tool_use = matches!(
                ty,
                Some("tool_use") | Some("server_tool_use") | Some("mcp_tool_use")
            );
            for (k, x) in m {
                let b = if k == "tools" || k == "functions" {
                    Bucket::ToolDef
                } else {
                    bucket
                };
                if key_is_text(k) {
                    push(bucket_text(out, b), k);
                }
                if tool_use && k == "input" || reads_whole(k, x) {
                    keys_and_strings(x, bucket_text(out, b));
                    continue;
                }
                // A role is one of a few words; anything else in it is text some servers put
                // into the prompt (their chat template writes the role out).
                if k == "role"
                    && let Value::String(r) = x
                    && !is_role_word(r)
                {
                    push(bucket_text(out, b), r);
                    continue;
                }
                if is_meta_member(k, x, ty) {
                    continue;
                }
                walk(x, b, out);
            }
        }
        _ => {}
    }
}

/// Members whose value the model reads whole, names included: tool definitions and the JSON
/// schemas of tools and answer formats (a property's name, its `format` or `id`, are words the
/// model sees), and a tool call's arguments given as an object.
pub(crate) fn reads_whole(k: &str, v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
        && matches!(
            k,
            "tools"
                | "functions"
                | "parameters"
                | "input_schema"
                | "schema"
                | "json_schema"
                | "response_format"
                | "format"
                | "arguments"
        )
}

/// Appends every object member's name and every string of `v`, one per line.
fn keys_and_strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => push(out, s),
        Value::Array(a) => a.iter().for_each(|x| keys_and_strings(x, out)),
        Value::Object(m) => {
            for (k, x) in m {
                push(out, k);
                keys_and_strings(x, out);
            }
        }
        _ => {}
    }
}

/// Splits a request body into prompt text, tool results and tool definitions.
pub fn request_texts(body: &Value) -> RequestTexts {
    let mut out = RequestTexts::default();
    if let Value::Object(m) = body {
        for (k, v) in m {
            if key_is_text(k) {
                push(&mut out.prompt, k);
            }
            if is_meta_key(k) || matches!(k.as_str(), "stream" | "stream_options" | "metadata") {
                continue;
            }
            if reads_whole(k, v) {
                let b = if k == "tools" || k == "functions" {
                    Bucket::ToolDef
                } else {
                    Bucket::Prompt
                };
                keys_and_strings(v, bucket_text(&mut out, b));
                continue;
            }
            walk(v, Bucket::Prompt, &mut out);
        }
    }
    out
}

/// Appends every string of `v` to `out`, one per line, except under the members named in
/// `skip` (at any depth): the text of JSON whose every string is content (tool arguments and
/// results, bodies of unmodelled paths, messages an MCP server sends on its own).
pub(crate) fn strings_except(v: &Value, skip: &[&str], out: &mut String) {
    match v {
        Value::String(s) => push(out, s),
        Value::Array(a) => a.iter().for_each(|x| strings_except(x, skip, out)),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .for_each(|(_, x)| strings_except(x, skip, out)),
        _ => {}
    }
}

/// The text a tool call is checked as (target `tool_arguments`): every string value of the
/// arguments — all of them: keys that name settings in a chat body (`url`, `data`, `id`,
/// `format`…) are content in a tool's arguments — then the call as compact JSON (tool name,
/// keys, numbers, booleans), so a rule can also judge the tool's name or a structured argument
/// (`"recursive": true` beside `"path": "/"`).
pub fn tool_call_text(tool: &str, args: &Value) -> String {
    #[derive(serde::Serialize)]
    struct Call<'a> {
        name: &'a str,
        arguments: &'a Value,
    }
    let mut out = String::new();
    strings_except(args, &[], &mut out);
    let call = Call {
        name: tool,
        arguments: args,
    };
    // Serialising borrowed values cannot fail.
    push(&mut out, &serde_json::to_string(&call).unwrap_or_default());
    out
}

/// The content of a non-streamed answer (message text, tool-call arguments, refusals).
pub fn response_text(body: &Value) -> String {
    let mut out = RequestTexts::default();
    for key in ["choices", "content", "output", "data"] {
        if let Some(v) = body.get(key) {
            walk(v, Bucket::Prompt, &mut out);
        }
    }
    out.prompt
}

/// New content carried by one stream event: OpenAI chat deltas, Responses `*.delta` events,
/// Anthropic `content_block_delta`. Summary events that repeat the whole text are skipped.
/// The parts of a streamed event that carry answer text, in every supported shape, read
/// without building a JSON tree (strings are borrowed unless they contain escapes).
#[derive(serde::Deserialize)]
struct DeltaEvent<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChatChoice<'a>>>,
    #[serde(rename = "type", default, borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<AnyDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct ChatChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChatDelta<'a>>,
    /// Legacy completions stream their text here.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChatDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(serde::Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnyDelta<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Block(#[serde(borrow)] BlockDelta<'a>),
    Other(serde::de::IgnoredAny),
}

#[derive(serde::Deserialize)]
struct BlockDelta<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
}

/// Appends the answer text of one streamed event's JSON data to `out`, as
/// [`stream_delta_text`] does for a parsed event, but without building a JSON tree (the
/// per-event cost of inspecting a stream). Data that is not an event object is skipped.
pub fn stream_delta_text_json(data: &[u8], out: &mut String) {
    let ev = match serde_json::from_slice::<DeltaEvent>(data) {
        Ok(ev) => ev,
        Err(_) => {
            // An unusual shape (say `choices` that is not a list): the general path decides.
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                stream_delta_text(&v, out);
            }
            return;
        }
    };
    if let Some(choices) = ev.choices {
        for c in choices {
            if let Some(t) = c.text {
                out.push_str(&t);
            }
            let Some(d) = c.delta else { continue };
            for s in [d.content, d.refusal, d.reasoning_content, d.reasoning]
                .into_iter()
                .flatten()
            {
                out.push_str(&s);
            }
            for call in d.tool_calls.into_iter().flatten() {
                if let Some(a) = call.function.and_then(|f| f.arguments) {
                    out.push_str(&a);
                }
            }
        }
        return;
    }
    let ty = ev.ty.as_deref().unwrap_or("");
    match ev.delta {
        Some(AnyDelta::Block(b)) if ty == "content_block_delta" => {
            for s in [b.text, b.partial_json, b.thinking].into_iter().flatten() {
                out.push_str(&s);
            }
        }
        Some(AnyDelta::Text(s)) if ty.ends_with(".delta") => out.push_str(&s),
        _ => {}
    }
}

/// Appends the answer text of one parsed streamed event to `out`.
pub fn stream_delta_text(v: &Value, out: &mut String) {
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                out.push_str(t);
            }
            if let Some(d) = c.get("delta") {
                for key in ["content", "refusal", "reasoning_content", "reasoning"] {
                    if let Some(s) = d.get(key).and_then(Value::as_str) {
                        out.push_str(s);
                    }
                }
                if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
                    for call in calls {
                        if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str)
                        {
                            out.push_str(a);
                        }
                    }
                }
            }
        }
        return;
    }
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    if ty == "content_block_delta" {
        if let Some(d) = v.get("delta") {
            for key in ["text", "partial_json", "thinking"] {
                if let Some(s) = d.get(key).and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
        }
    } else if ty.ends_with(".delta")
        && let Some(s) = v.get("delta").and_then(Value::as_str)
    {
        out.push_str(s);
    }
}

/// Incremental inspection of a streamed answer. Each run of events is scanned together with
/// the tail of what came before, so a pattern split across chunks is still seen.
pub struct StreamGuard {
    /// The proxy's inspector.
    pub insp: Inspector,
    window: String,
    /// Findings of the whole request (request phase included).
    pub findings: Findings,
    /// Nothing can block the answer (no blocking `llm_response` rule, or monitor mode): text
    /// is scanned in batches rather than event by event, since a finding can no longer change
    /// what is forwarded, only what is recorded.
    batched: bool,
    /// Bytes of answer text not scanned yet.
    unscanned: usize,
}

/// Bytes of earlier answer text kept to catch patterns that span chunk boundaries.
const WINDOW: usize = 1024;
/// With nothing that can block, text is scanned once this much has arrived (and at the end).
const BATCH: usize = 512;

impl StreamGuard {
    /// A guard continuing the request's findings.
    pub fn new(insp: Inspector, findings: Findings) -> Self {
        let batched = !(insp.enforces() && insp.blocks_responses());
        Self {
            insp,
            window: String::new(),
            findings,
            batched,
            unscanned: 0,
        }
    }

    /// Scans what has not been scanned yet (the end of the answer).
    pub fn flush(&mut self) {
        if self.unscanned > 0 {
            self.unscanned = 0;
            self.findings
                .scan_stream(&self.insp, Target::LlmResponse, &self.window);
        }
    }

    /// The findings, once every byte of the answer has been scanned.
    pub fn into_findings(mut self) -> Findings {
        self.flush();
        self.findings
    }

    /// Scans new answer text; returns true if it must not reach the client.
    pub fn check(&mut self, new_text: &str) -> bool {
        if new_text.is_empty() {
            return false;
        }
        self.window.push_str(new_text);
        self.unscanned += new_text.len();
        if self.batched && self.unscanned < BATCH {
            return false;
        }
        self.unscanned = 0;
        let blocks = self
            .findings
            .scan_stream(&self.insp, Target::LlmResponse, &self.window);
        if self.window.len() > WINDOW {
            let mut cut = self.window.len() - WINDOW;
            while !self.window.is_char_boundary(cut) {
                cut += 1;
            }
            self.window.drain(..cut);
        }
        blocks && self.insp.enforces()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tool_call_text_reads_every_argument_and_the_call() {
        let args = serde_json::json!({
            "url": "http://169.254.169.254/latest/meta-data/",
            "options": {"data": "payload", "recursive": true, "depth": 3},
            "items": ["a b", 7]
        });
        let text = super::tool_call_text("fetch_page", &args);
        // String values one per line (keys such as `url` and `data` included), then the call.
        for want in [
            "http://169.254.169.254/latest/meta-data/",
            "\npayload\n",
            "a b\n",
            r#""name":"fetch_page""#,
            r#""recursive":true"#,
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn request_text_is_split_by_role() {
        let t = request_texts(&json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "tool says hi"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": "does things"}}]
        }));
        assert_eq!(t.prompt, "be nice\nhello");
        assert_eq!(t.tool_results, "tool says hi");
        assert!(t.tool_descriptions.contains("does things"));
        assert!(!t.prompt.contains("gpt-x"));

        let a = request_texts(
            &json!({"system": "sys", "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text", "text": "result text"}]},
            {"type": "text", "text": "question"}]}]}),
        );
        assert!(a.prompt.contains("sys") && a.prompt.contains("question"));
        assert!(!a.prompt.contains("result text"));
        assert_eq!(a.tool_results, "result text");
    }

    /// Members named like settings are skipped only where they hold a plain value: a tool
    /// schema's `data` property, a response format's schema and a `tool_use` input's `url`
    /// are read; an image's `data` and a message's `id` are not.
    #[test]
    fn settings_names_holding_structure_are_read() {
        let t = request_texts(&json!({
            "model": "m",
            "text": {"format": {"type": "json_schema", "name": "r",
                "schema": {"properties": {"a": {"description": "schema words"}}}}},
            "messages": [
                {"role": "assistant", "id": "msg_1", "content": [
                    {"type": "tool_use", "id": "t1", "name": "get",
                     "input": {"url": "input url words", "data": {"note": "input data words"}}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                     "data": "iVBORw0KGgo"}}
                ]}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object",
                "properties": {"data": {"type": "string", "description": "tool data words"},
                               "url": {"type": "string", "description": "tool url words"}}}}}]
        }));
        for want in ["schema words", "input url words", "input data words"] {
            assert!(t.prompt.contains(want), "{want} in {:?}", t.prompt);
        }
        for want in ["tool data words", "tool url words"] {
            assert!(t.tool_descriptions.contains(want), "{want}");
        }
        assert!(!t.prompt.contains("iVBORw0KGgo") && !t.prompt.contains("msg_1"));
        assert!(!t.prompt.contains("image/png"));
        // Names and settings-named strings inside schemas and object arguments are read too.
        let t = request_texts(&json!({
            "model": "m",
            "response_format": {"type": "json_schema", "json_schema": {"schema": {
                "properties": {"named words": {"type": "string", "format": "format words"}}}}},
            "messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": {"url": "argument words"}}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "g",
                    "input": {"key words": 1}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "id": "schema id words",
                "properties": {"property name words": {"type": "string"}}}}}]
        }));
        let odd = request_texts(&json!({"messages": [{"role": "odd role words", "content": "x"}]}));
        assert!(odd.prompt.contains("odd role words"), "{:?}", odd.prompt);
        for want in ["named words", "format words", "argument words", "key words"] {
            assert!(t.prompt.contains(want), "{want} in {:?}", t.prompt);
        }
        for want in ["schema id words", "property name words"] {
            assert!(t.tool_descriptions.contains(want), "{want}");
        }
    }

    #[test]
    fn stream_deltas_across_shapes() {
        let mut s = String::new();
        stream_delta_text(&json!({"choices": [{"delta": {"content": "ab"}}]}), &mut s);
        stream_delta_text(
            &json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "cd"}}),
            &mut s,
        );
        stream_delta_text(
            &json!({"type": "response.output_text.delta", "delta": "ef"}),
            &mut s,
        );
        stream_delta_text(
            &json!({"type": "response.output_text.done", "text": "abcdef"}),
            &mut s,
        );
        assert_eq!(s, "abcdef");
    }

    fn guard(action: &str, mode: PolicyMode) -> StreamGuard {
        let policy = palisade_policy::Policy::from_json(&format!(
            r#"{{"id":"t","name":"t","rules":[{{"id":"R1","name":"marker","category":"test",
            "severity":"high","targets":["llm_response"],"patterns":{{"keywords":["zebra crossing"]}},
            "action":"{action}"}}]}}"#
        ))
        .unwrap();
        let set = Arc::new(PolicySet::compile(&[policy]).unwrap());
        StreamGuard::new(Inspector::new(set, mode), Findings::default())
    }

    #[test]
    fn stream_windows_are_not_remembered_but_the_callers_other_texts_are() {
        let mut g = guard("block", PolicyMode::Enforce);
        g.findings.set_caller("key-1");
        let set = g.insp.set.clone();
        for _ in 0..3 {
            assert!(!g.check("a long stretch of ordinary streamed answer text, "));
        }
        assert_eq!(set.memo_stats(), Default::default());
        let mut f = g.into_findings();
        let text = "an answer of more than thirty-two bytes, buffered";
        f.scan_answer(
            &Inspector::new(set.clone(), PolicyMode::Enforce),
            Target::LlmResponse,
            text,
        );
        f.scan_answer(
            &Inspector::new(set.clone(), PolicyMode::Enforce),
            Target::LlmResponse,
            text,
        );
        assert_eq!((set.memo_stats().hits, set.memo_stats().misses), (1, 1));
    }

    #[test]
    fn stream_guard_blocks_at_once_or_scans_in_batches() {
        // A blocking rule in enforce mode: every event is checked before it is forwarded,
        // including a match split across events.
        let mut g = guard("block", PolicyMode::Enforce);
        assert!(!g.check("look at the zebra "));
        assert!(g.check("crossing now"));
        // Nothing can block: batched, but nothing is missed, at the end at the latest.
        for (action, mode) in [
            ("alert", PolicyMode::Enforce),
            ("block", PolicyMode::Monitor),
        ] {
            let mut g = guard(action, mode);
            assert!(!g.check("look at the zebra "));
            assert!(!g.check("crossing now"));
            let mut rec = RequestRecord::default();
            let alerts = std::cell::RefCell::new(Vec::new());
            g.into_findings()
                .finalize(&mut rec, &|a| alerts.borrow_mut().push(a.rule_id));
            assert_eq!(rec.matched_rules.as_deref(), Some("t/R1"), "{action}");
            assert_eq!(
                alerts.into_inner(),
                vec![Some("R1".to_string())],
                "{action}"
            );
        }
    }

    #[test]
    fn the_risk_score_sums_the_rules_matched_across_the_exchange() {
        let policy = palisade_policy::Policy::from_json(
            r#"{"id":"rs","name":"rs","rules":[
            {"id":"P","name":"p","category":"test","severity":"low","score":40,
             "targets":["llm_request"],"patterns":{"keywords":["alphaq"]},"action":"log"},
            {"id":"T","name":"t","category":"test","severity":"low","score":40,
             "targets":["tool_result"],"patterns":{"keywords":["betaq"]},"action":"log"},
            {"id":"R","name":"r","category":"test","severity":"low","score":30,
             "targets":["llm_response"],"patterns":{"keywords":["gammaq"]},"action":"log"}]}"#,
        )
        .unwrap();
        let insp = Inspector::new(
            Arc::new(PolicySet::compile(&[policy]).unwrap()),
            PolicyMode::Enforce,
        );
        let mut f = Findings::default();
        f.scan(&insp, Target::LlmRequest, "alphaq");
        f.scan(&insp, Target::ToolResult, "betaq");
        // The same rule again adds nothing.
        f.scan(&insp, Target::LlmRequest, "alphaq again");
        f.scan_answer(&insp, Target::LlmResponse, "gammaq");
        let mut rec = RequestRecord::default();
        f.finalize(&mut rec, &|_| {});
        assert_eq!(rec.risk_score, Some(100), "40 + 40 + 30, at most 100");
        let mut f = Findings::default();
        f.scan(&insp, Target::LlmRequest, "alphaq");
        f.scan(&insp, Target::ToolResult, "betaq");
        let mut rec = RequestRecord::default();
        f.finalize(&mut rec, &|_| {});
        assert_eq!(rec.risk_score, Some(80));
    }

    #[test]
    fn a_rule_matched_in_the_request_and_again_in_the_answer_is_two_findings() {
        let mut g = guard("alert", PolicyMode::Enforce);
        let mut f = std::mem::take(&mut g.findings);
        // (The test rule's only target stands for the request's text here.)
        f.scan(&g.insp, Target::LlmResponse, "the zebra crossing");
        f.scan_answer(&g.insp, Target::LlmResponse, "another zebra crossing");
        let mut rec = RequestRecord::default();
        let alerts = std::cell::RefCell::new(Vec::new());
        f.finalize(&mut rec, &|a| alerts.borrow_mut().push(a.excerpt));
        assert_eq!(rec.matched_rules.as_deref(), Some("t/R1"));
        let excerpts = alerts.into_inner();
        assert_eq!(excerpts.len(), 2, "{excerpts:?}");
        assert!(excerpts[1].as_deref().unwrap_or("").contains("another"));
    }

    #[test]
    fn legacy_completion_streams_are_read_too() {
        let mut out = String::new();
        stream_delta_text_json(
            br#"{"id":"c","object":"text_completion","choices":[{"index":0,"text":"mail a@b.io"}]}"#,
            &mut out,
        );
        assert_eq!(out, "mail a@b.io");
    }

    #[test]
    fn typed_delta_reading_agrees_with_the_tree() {
        let events = [
            json!({"choices": [{"index": 0, "delta": {"content": "a\"b\u{e9}"}, "finish_reason": null}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}}]}),
            json!({"choices": [{"delta": {"refusal": "no", "reasoning_content": "hm", "reasoning": "so"}}], "usage": null}),
            json!({"choices": [{"index": 0, "text": "legacy completion"}]}),
            json!({"choices": []}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "cd"}}),
            json!({"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
            json!({"type": "response.output_text.delta", "delta": "ef"}),
            json!({"type": "response.output_text.done", "text": "abcdef"}),
            json!({"choices": "not a list"}),
            json!([1, 2]),
        ];
        for ev in events {
            let (mut a, mut b) = (String::new(), String::new());
            stream_delta_text(&ev, &mut a);
            stream_delta_text_json(ev.to_string().as_bytes(), &mut b);
            assert_eq!(a, b, "{ev}");
        }
    }
}
