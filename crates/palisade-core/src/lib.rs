//! Palisade's shared core: the validated domain model, identities and crypto primitives.
//!
//! Both the data plane (`palisade-gateway`) and the control plane (`palisade-admin`) speak in
//! these types, so neither has to depend on the other's internals.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod identity;
pub mod model;
pub mod oauth;
pub mod oidc;
pub mod otlp;
pub mod record;
pub mod spend;
pub mod webhook;

/// Milliseconds since the Unix epoch, the timestamp unit used across the store and the API.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
