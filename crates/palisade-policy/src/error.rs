//! Errors raised while loading, validating and compiling policies.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

/// Everything that can go wrong when loading, validating or compiling policies.
///
/// Every variant about a rule names the policy id and the rule id, so an operator can find the
/// offending line without reading the engine's source.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The document is not valid JSON or does not fit the policy format (unknown field, wrong type…).
    #[error("invalid policy document: {message}")]
    Json {
        /// serde_json's message, with line and column.
        message: String,
    },
    /// A problem in a policy's own fields (id, name).
    #[error("policy `{policy}`: {problem}")]
    InvalidPolicy {
        /// Policy id (may be empty when the id itself is missing).
        policy: String,
        /// What is wrong.
        problem: String,
    },
    /// A regular expression of a rule (pattern or allow-pattern) does not compile.
    #[error("policy `{policy}` rule `{rule}`: invalid regex `{pattern}`: {message}")]
    BadRegex {
        /// Policy id.
        policy: String,
        /// Rule id.
        rule: String,
        /// The offending pattern as written in the policy.
        pattern: String,
        /// The regex compiler's explanation.
        message: String,
    },
    /// Two rules of one policy share an id.
    #[error("policy `{policy}` rule `{rule}`: duplicate rule id")]
    DuplicateRule {
        /// Policy id.
        policy: String,
        /// The repeated rule id.
        rule: String,
    },
    /// Any other problem with one rule (empty targets, no patterns, bad label, score > 100…).
    #[error("policy `{policy}` rule `{rule}`: {problem}")]
    InvalidRule {
        /// Policy id.
        policy: String,
        /// Rule id.
        rule: String,
        /// What is wrong.
        problem: String,
    },
    /// Two policies given to one policy set (or found in one directory) share an id.
    #[error("duplicate policy id `{0}`")]
    DuplicatePolicy(String),
    /// The combined multi-pattern matchers could not be built (e.g. size limits exceeded).
    #[error("compiling policy set: {0}")]
    Compile(String),
    /// A policy file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A policy file failed to load; wraps the reason with the file's path.
    #[error("{path}: {source}")]
    File {
        /// The policy file.
        path: PathBuf,
        /// Why it failed.
        source: Box<PolicyError>,
    },
}

impl PolicyError {
    /// The innermost error, looking through [`PolicyError::File`] wrappers.
    pub fn root(&self) -> &PolicyError {
        match self {
            PolicyError::File { source, .. } => source.root(),
            other => other,
        }
    }
}
