//! The data path's single error type; each variant knows its HTTP status and API error type.

use http::StatusCode;

/// Everything that can end a proxied request early.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// No or unknown gateway API key.
    #[error(
        "missing or invalid API key; send a Palisade key as `Authorization: Bearer <key>` or `x-api-key`"
    )]
    Unauthorized,
    /// The request body exceeds the proxy's limit.
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The upstream could not be reached or broke the connection.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream did not respond within {0} s")]
    UpstreamTimeout(u64),
    /// The upstream's answer exceeded what the gateway will buffer.
    #[error("upstream response exceeds the limit of {0} bytes")]
    UpstreamTooLarge(u64),
    /// The client's body could not be read.
    #[error("could not read request body: {0}")]
    ClientBody(String),
    /// The key may not do this (proxy or model outside its scope).
    #[error("{0}")]
    Forbidden(String),
    /// A rate limit is exhausted.
    #[error("rate limit reached for {what}; retry in {retry_after} s")]
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after: u64,
        /// Which limit.
        what: String,
    },
    /// The group's monthly budget is spent and its action is `block`.
    #[error("{0}; requests are refused until the budget resets")]
    BudgetExceeded(String),
    /// The gateway holds too many bytes of buffered bodies to take this one now.
    #[error("gateway busy: {0}; retry shortly")]
    Busy(String),
    /// The request body is compressed, and the gateway must read it (policies, model scope).
    #[error(
        "request bodies with `Content-Encoding: {0}` are not accepted here: the gateway reads the body (policies, model scope); send it uncompressed"
    )]
    EncodedBody(String),
    /// The proxy stopped before the answer began (its drain time was over).
    #[error("the proxy stopped before the answer began (drain time over); retry")]
    Stopped,
    /// The request came back to this gateway through its own upstream (a proxy loop).
    #[error(
        "the request came back to this gateway through its upstream (a proxy loop); check the proxy's upstream"
    )]
    Loop,
    /// A policy rule with action `block` matched (the rule ids, never the patterns).
    #[error("{phase} blocked by policy (rules: {rules})")]
    PolicyBlocked {
        /// `request` or `response`.
        phase: &'static str,
        /// `policy/rule` ids.
        rules: String,
    },
}

impl ProxyError {
    /// HTTP status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTooLarge(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::PolicyBlocked { .. } | ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BudgetExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            ProxyError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::EncodedBody(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the request may be refused before its body is read (key, limits, budget, a
    /// declared length over the limit).
    pub fn before_body(&self) -> bool {
        matches!(
            self,
            ProxyError::Unauthorized
                | ProxyError::RateLimited { .. }
                | ProxyError::BudgetExceeded(_)
                | ProxyError::Forbidden(_)
                | ProxyError::BodyTooLarge(_)
                | ProxyError::Busy(_)
                | ProxyError::EncodedBody(_)
                | ProxyError::Loop
        )
    }

    /// Error `type` in the OpenAI shape (also a bounded metric label).
    pub fn openai_type(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "authentication_error",
            ProxyError::BodyTooLarge(_) | ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => {
                "invalid_request_error"
            }
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTooLarge(_) => {
                "upstream_error"
            }
            ProxyError::UpstreamTimeout(_) => "timeout",
            ProxyError::PolicyBlocked { .. } => "policy_violation",
            ProxyError::Forbidden(_) => "permission_error",
            ProxyError::RateLimited { .. } => "rate_limit_error",
            ProxyError::BudgetExceeded(_) => "insufficient_quota",
            ProxyError::Busy(_) => "server_error",
            ProxyError::EncodedBody(_) => "invalid_request_error",
            ProxyError::Loop => "upstream_error",
            ProxyError::Stopped => "server_error",
        }
    }

    /// Error `type` in the Anthropic shape.
    pub fn anthropic_type(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "authentication_error",
            ProxyError::BodyTooLarge(_) => "request_too_large",
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => "invalid_request_error",
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTooLarge(_) => "api_error",
            ProxyError::UpstreamTimeout(_) => "timeout_error",
            ProxyError::PolicyBlocked { .. } | ProxyError::Forbidden(_) => "permission_error",
            ProxyError::RateLimited { .. } => "rate_limit_error",
            ProxyError::BudgetExceeded(_) => "billing_error",
            ProxyError::Busy(_) => "overloaded_error",
            ProxyError::EncodedBody(_) => "invalid_request_error",
            ProxyError::Loop => "api_error",
            ProxyError::Stopped => "api_error",
        }
    }

    /// Machine-readable code (OpenAI `code`).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "invalid_api_key",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::BadRequest(_) => "invalid_request",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamTooLarge(_) => "upstream_response_too_large",
            ProxyError::PolicyBlocked { .. } => "blocked_by_policy",
            ProxyError::Forbidden(_) => "key_scope",
            ProxyError::RateLimited { .. } => "rate_limit_exceeded",
            ProxyError::BudgetExceeded(_) => "budget_exceeded",
            ProxyError::Busy(_) => "gateway_busy",
            ProxyError::EncodedBody(_) => "unsupported_content_encoding",
            ProxyError::Loop => "proxy_loop",
            ProxyError::Stopped => "proxy_stopped",
        }
    }
}
