//! The request log record produced by the data plane for every proxied request.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One proxied request, as written to the request log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestRecord {
    /// Request id, echoed to the client in `x-request-id`.
    pub id: String,
    /// Start time, Unix milliseconds.
    pub ts_ms: i64,
    /// Proxy name.
    pub proxy: String,
    /// API dialect (`openai`, `anthropic`).
    pub api: String,
    /// HTTP method.
    pub method: String,
    /// Request path (no query string).
    pub path: String,
    /// Recognised endpoint (`chat_completions`, `responses`, `embeddings`, `models`, `messages`, `other`).
    pub endpoint: String,
    /// Model named in the request body, if any.
    pub model: Option<String>,
    /// Whether the answer was streamed (SSE).
    pub stream: bool,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Key id that authenticated the request.
    pub key_id: Option<String>,
    /// Key name.
    pub key_name: Option<String>,
    /// Group of the key.
    pub group: Option<String>,
    /// Prompt (input) tokens reported by the provider.
    pub prompt_tokens: Option<i64>,
    /// Completion (output) tokens reported by the provider.
    pub completion_tokens: Option<i64>,
    /// Cached input tokens reported by the provider.
    pub cached_tokens: Option<i64>,
    /// Total tokens.
    pub total_tokens: Option<i64>,
    /// End-to-end latency in microseconds (until the last byte was sent).
    pub latency_us: i64,
    /// Time to the first response byte, microseconds.
    pub ttfb_us: Option<i64>,
    /// Time spent inside the gateway, excluding the upstream wait, microseconds.
    pub overhead_us: i64,
    /// Error description when the request failed.
    pub error: Option<String>,
    /// Client socket address.
    pub client: String,
    /// Policy decision (`allow`, `log`, `alert`, `redact`, `block`), when policies ran.
    pub decision: Option<String>,
    /// Highest risk score (0–100) of the policy evaluations.
    pub risk_score: Option<i64>,
    /// Ids of the rules that matched (`policy/rule`), comma-separated.
    pub matched_rules: Option<String>,
    /// Cost in USD from the price table (0 for unknown models, see `cost_unknown`).
    pub cost_usd: Option<f64>,
    /// The model had no price: the cost is recorded as 0 and flagged.
    pub cost_unknown: bool,
    /// Name of the governance prompt injected, if any.
    pub prompt: Option<String>,
    /// Number of distinct sensitive values replaced by placeholders before the request left.
    pub redactions: Option<i64>,
    /// MCP session id.
    pub session: Option<String>,
    /// MCP tool name (for `tools/call`).
    pub tool: Option<String>,
    /// Set on a row that stands for this many requests the log could not take one by one (its
    /// queue was full): their summed tokens and cost, so spend and usage stay whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded: Option<i64>,
    /// The request's W3C `traceparent`, when it carried a valid one (its span joins the
    /// caller's trace in the OpenTelemetry export; not stored in the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// What went to the model and what came back, as the upstream saw them (masked), for the
    /// Langfuse export when it asks for content; never stored in the log.
    #[serde(skip)]
    pub content: Option<std::sync::Arc<Exchanged>>,
    /// The call to the upstream, for the trace export's client span (set only while traces are
    /// exported; never stored in the log).
    #[serde(skip)]
    pub upstream: Option<UpstreamCall>,
}

/// When a request's upstream call ran, and where to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamCall {
    /// Sent this many microseconds after the request arrived.
    pub at_us: i64,
    /// The whole answer was in after this many microseconds more; `None` for an answer relayed
    /// as it came (it ended with the request) or a call that failed.
    pub took_us: Option<i64>,
    /// The upstream's host (and port), as the `Host` header named it.
    pub host: String,
    /// The status the upstream answered with; `None` when it never answered.
    pub status: Option<u16>,
}

/// A model call's text as it crossed the gateway's upstream side: the request body it sent (after
/// redaction and governance prompts) and the answer it got (before values were restored), each
/// cut to [`Exchanged::MAX`] bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exchanged {
    /// The request body sent upstream.
    pub input: String,
    /// The answer's body, when it was read whole (not for streams).
    pub output: Option<String>,
}

impl Exchanged {
    /// Most bytes kept of each side.
    pub const MAX: usize = 32 * 1024;

    /// `bytes` as text, cut at a character boundary within [`Exchanged::MAX`].
    pub fn text(bytes: &[u8]) -> String {
        let s = String::from_utf8_lossy(&bytes[..bytes.len().min(Self::MAX + 4)]);
        let mut end = s.len().min(Self::MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    }
}

/// An MCP tool as the gateway knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct McpTool {
    /// Proxy that offers it.
    pub proxy: String,
    /// Tool name.
    pub name: String,
    /// `pending`, `approved`, `quarantined` or `disabled`.
    pub status: String,
    /// SHA-256 of the canonical definition currently offered.
    pub fingerprint: String,
    /// Fingerprint an administrator approved (pinned).
    pub approved_fingerprint: Option<String>,
    /// The definition as last offered.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// Poisoning findings (`policy/rule: name`, or built-in checks).
    pub findings: Vec<String>,
    /// Whether the last full listing offered it.
    pub present: bool,
    /// First seen, Unix ms.
    pub first_seen_ms: i64,
    /// Last change, Unix ms.
    pub updated_ms: i64,
}

/// A security or spend event worth a human's attention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertRecord {
    /// Alert id.
    pub id: String,
    /// Time, Unix ms.
    pub ts_ms: i64,
    /// `policy` or `budget`.
    pub kind: String,
    /// Policy id of the rule (policy alerts).
    pub policy_id: Option<String>,
    /// Rule id.
    pub rule_id: Option<String>,
    /// Rule name or alert title.
    pub title: String,
    /// Rule category.
    pub category: Option<String>,
    /// `critical`, `high`, `medium` or `low`.
    pub severity: String,
    /// Action of the rule (`block`, `alert`, `redact`, `log`).
    pub action: Option<String>,
    /// Whether the proxy blocked the request (false in monitor mode).
    pub blocked: bool,
    /// Where it was seen (`llm_request`, `llm_response`, …).
    pub target: Option<String>,
    /// Proxy name.
    pub proxy: Option<String>,
    /// Group (team).
    pub group: Option<String>,
    /// Key name.
    pub key_name: Option<String>,
    /// Request id of the request that raised it.
    pub request_id: Option<String>,
    /// The offending excerpt, with secrets masked.
    pub excerpt: Option<String>,
    /// Encoding the match was found under (`base64`, `url`, …), if decoded.
    pub decoded: Option<String>,
    /// Human-readable detail.
    pub message: String,
    /// `new`, `acknowledged`, `resolved` or `false_positive`.
    pub status: String,
    /// Alerts with the same key are stored once (e.g. one budget warning per group and month).
    #[serde(skip)]
    pub dedup_key: Option<String>,
}
