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
}
