//! Palisade's data plane: per-proxy listeners and the LLM proxy pipeline.
//!
//! A request moves through small phases (`llm.rs`): authenticate → read and classify the body →
//! build the upstream request → send → relay the answer (buffered JSON or event-by-event SSE) →
//! record. Everything a phase needs comes from one immutable [`ProxyRuntime`] snapshot that the
//! control plane swaps atomically, so configuration changes never tear a request in half.
#![forbid(unsafe_code)]

pub mod a2a;
mod accounting;
mod body;
mod bridge;
mod buffers;
pub mod cluster;
mod error;
mod inspect;
mod json;
mod listener;
mod llm;
mod manager;
mod mcp;
mod mcp_era;
mod mcp_headers;
mod mcp_legacy;
pub mod mcp_tools;
pub mod oauth;
mod prompts;
pub mod redact;
mod remembered;
pub mod resp;
pub mod scan;
mod shape;
pub mod sse;
mod upstream;
mod usage;

pub use accounting::{Accounting, Clock};
pub use error::ProxyError;
pub use inspect::{Findings, Inspector, StreamGuard, request_texts, response_text};
pub use listener::hurry;
pub use manager::{
    AlertFn, GatewayError, GatewayShared, McpUpstream, ProxyManager, ProxyRuntime, ProxyStatus,
    RecordFn, ToolFn,
};
pub use shape::Endpoint;
pub use sse::SseSplitter;
pub use upstream::{
    ClientIdentity, GuardedClient, HttpClient, Posted, TlsConfig, TlsFile, TlsFileError, TlsSource,
    build_client, build_client_with, build_guarded_client, build_guarded_client_with, post_body,
    post_json, send_syslog, tls_client_config,
};
pub use usage::Usage;
