//! The validated configuration model of proxies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A validation failure that names the offending field, so API and config errors point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, ToSchema)]
#[error("invalid `{field}`: {message}")]
pub struct FieldError {
    /// Name of the field (dotted path for nested fields).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a proxy carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    /// LLM provider APIs (OpenAI / Anthropic shapes).
    Llm,
    /// Model Context Protocol servers.
    Mcp,
    /// Agent-to-Agent agents.
    A2a,
}

impl ProxyKind {
    /// Lower-case name as used in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Llm => "llm",
            ProxyKind::Mcp => "mcp",
            ProxyKind::A2a => "a2a",
        }
    }
}

/// The API dialect an LLM proxy speaks; it decides error shapes and credential headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LlmApi {
    /// OpenAI-compatible (`/v1/chat/completions`, `/v1/responses`, `/v1/embeddings`, `/v1/models`).
    #[default]
    Openai,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

impl LlmApi {
    /// Lower-case name as used in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LlmApi::Openai => "openai",
            LlmApi::Anthropic => "anthropic",
        }
    }
}

/// Default cap on a request body the gateway buffers for inspection (10 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default time the gateway waits for an upstream's response headers.
pub const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 300;

/// A proxy's configuration as stored and served (the upstream credential is kept apart, sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Unique name: lower-case letters, digits, `-` and `_`, 1–64 characters.
    pub name: String,
    /// Traffic kind.
    pub kind: ProxyKind,
    /// Listener address, `host:port` (port 0 picks a free port).
    pub listen: String,
    /// Upstream base URL, `http://` or `https://` (for `transport = "sse"`, the SSE endpoint;
    /// empty for `transport = "stdio"`).
    #[serde(default)]
    pub upstream: String,
    /// API dialect (LLM proxies).
    #[serde(default)]
    pub api: LlmApi,
    /// Whether the proxy should be running; start/stop change it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds to wait for upstream response headers (and between stream chunks).
    #[serde(default = "default_timeout")]
    pub upstream_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// Ids of the policies checked on this proxy's traffic.
    #[serde(default)]
    pub policies: Vec<String>,
    /// `enforce` blocks on a blocking rule; `monitor` only records alerts (dry run).
    #[serde(default)]
    pub policy_mode: PolicyMode,
    /// Restore redacted values in answers (`false`: one-way redaction).
    #[serde(default = "default_true")]
    pub unmask: bool,
    /// MCP: `manual` (new tools wait for an administrator; the default) or `auto` (trusted servers).
    #[serde(default)]
    pub tool_approval: ToolApproval,
    /// MCP: tools approved from the start.
    #[serde(default)]
    pub approved_tools: Vec<String>,
    /// MCP: `Host` names (`name` or `name:port`) the listener answers to besides loopback names
    /// and its own address (DNS-rebinding protection); `"*"` accepts any Host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// MCP: browser origins (`https://app.example.com`) allowed besides loopback origins; `"*"`
    /// accepts any Origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// MCP: how the gateway reaches the server — `streamable_http` (the default), `sse` (the
    /// legacy HTTP+SSE transport) or `stdio` (a process the gateway launches and supervises).
    #[serde(default)]
    pub transport: McpTransport,
    /// MCP stdio: the program and its arguments, e.g. `["npx", "-y", "some-mcp-server"]`.
    #[serde(default)]
    pub command: Vec<String>,
    /// MCP stdio: environment variables set for the process. Stored with the proxy in plain
    /// text: pass secrets with `inherit_env` instead.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// MCP stdio: names of the gateway's own environment variables handed to the process (the
    /// process starts with a clean environment: only `PATH`, `HOME`, locale and temp-dir
    /// variables, these, and `env`).
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// MCP stdio: working directory of the process (default: the gateway's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Groups whose keys may use the proxy (empty: every key; a key outside every group is
    /// then refused too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_groups: Vec<String>,
    /// Requests per minute the proxy takes from all callers together (an agent's or a
    /// server's capacity), on top of each key's and group's own limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// A2A: the URL clients reach the proxy at (`https://agents.example.com`, behind a proxy
    /// that ends TLS), written into the agent card; default `http://` and the `Host` the
    /// client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// MCP and A2A: the gateway is the proxy's OAuth 2.1 authorization server, and clients may
    /// present the access tokens it issues (a user who signed in) besides API keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oauth: bool,
    /// The group OAuth callers count under (its budget, rate limits and `allowed_groups`); none
    /// by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_group: Option<String>,
    /// The users who may sign in for the proxy (empty: every user of the gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_users: Vec<String>,
    /// The identity provider (OpenID Connect) users sign in through on the proxy's OAuth page,
    /// by name; none: they sign in with their gateway password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_provider: Option<String>,
    /// Addresses or networks (`10.0.0.5`, `10.0.0.0/8`) of the reverse proxies in front of the
    /// listener, whose `X-Forwarded-For` names the client the OAuth pages throttle and audit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

/// An address or network (`addr/prefix`) of `trusted_proxies`.
pub fn parse_network(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some((ip, prefix))
}

/// Whether `ip` is in the network `(net, prefix)` (an IPv4-mapped address counts as IPv4).
pub fn in_network(ip: std::net::IpAddr, (net, prefix): (std::net::IpAddr, u8)) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl ProxySpec {
    /// Whether keys of `group` (or of no group) may use the proxy.
    pub fn admits_group(&self, group: Option<&str>) -> bool {
        self.allowed_groups.is_empty()
            || group.is_some_and(|g| self.allowed_groups.iter().any(|a| a == g))
    }
}

/// How an MCP proxy reaches its upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    /// Streamable HTTP (`upstream` is the endpoint URL).
    #[default]
    StreamableHttp,
    /// The legacy HTTP+SSE transport (`upstream` is the SSE endpoint URL).
    Sse,
    /// A local process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
}

impl McpTransport {
    /// Name as used in config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            McpTransport::StreamableHttp => "streamable_http",
            McpTransport::Sse => "sse",
            McpTransport::Stdio => "stdio",
        }
    }
}

/// How an MCP proxy treats tools it has not seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolApproval {
    /// Fail closed: hidden and refused until approved.
    #[default]
    Manual,
    /// Approved on discovery unless poisoning is detected.
    Auto,
}

/// A governance prompt injected into LLM requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Unique name.
    pub name: String,
    /// Text, with `{{user}}`, `{{group}}`, `{{date}}`, `{{organization}}` and `{{proxy}}`.
    pub text: String,
    /// Proxies it applies to.
    #[serde(default)]
    pub proxies: Vec<String>,
    /// Groups it applies to (a group's prompt outranks a proxy's at equal priority).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Higher wins; only the single highest-priority applicable prompt is injected.
    #[serde(default)]
    pub priority: i32,
}

/// Template variables a prompt may use.
pub const PROMPT_VARIABLES: [&str; 5] = ["user", "group", "date", "organization", "proxy"];

impl PromptSpec {
    /// Checks the fields, including that every `{{variable}}` is known.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name("name", &self.name)?;
        if self.text.trim().is_empty() || self.text.len() > 32 * 1024 {
            return Err(FieldError::new("text", "must be 1 byte to 32 KiB of text"));
        }
        let mut rest = self.text.as_str();
        while let Some(i) = rest.find("{{") {
            let after = &rest[i + 2..];
            let Some(j) = after.find("}}") else {
                return Err(FieldError::new("text", "has an unclosed `{{`"));
            };
            let var = after[..j].trim();
            if !PROMPT_VARIABLES.contains(&var) {
                return Err(FieldError::new(
                    "text",
                    format!(
                        "unknown variable `{{{{{var}}}}}`; known: {}",
                        PROMPT_VARIABLES.join(", ")
                    ),
                ));
            }
            rest = &after[j + 2..];
        }
        if self.proxies.is_empty() && self.groups.is_empty() {
            return Err(FieldError::new(
                "proxies",
                "a prompt must name at least one proxy or group",
            ));
        }
        for (i, p) in self.proxies.iter().enumerate() {
            validate_name(&format!("proxies[{i}]"), p)?;
        }
        for (i, g) in self.groups.iter().enumerate() {
            validate_name(&format!("groups[{i}]"), g)?;
        }
        Ok(())
    }
}

/// Whether a proxy's policies block or only observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Blocking rules block.
    #[default]
    Enforce,
    /// Nothing is blocked; matches become alerts (dry run).
    Monitor,
}

impl PolicyMode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Monitor => "monitor",
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_timeout() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_SECS
}
fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// Whether two listen addresses take the same port of one address (port 0 picks a free port
/// for each; a wildcard address takes the port on every address; `::ffff:127.0.0.1` is
/// `127.0.0.1`).
pub fn listens_clash(a: &str, b: &str) -> bool {
    match (
        a.parse::<std::net::SocketAddr>(),
        b.parse::<std::net::SocketAddr>(),
    ) {
        (Ok(a), Ok(b)) => {
            let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
            a.port() != 0
                && a.port() == b.port()
                && (ia == ib || ia.is_unspecified() || ib.is_unspecified())
        }
        _ => a == b && !a.ends_with(":0"),
    }
}

/// Whether a listen address is on this machine only (a loopback IP, or `localhost`).
fn listen_is_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => listen
            .rsplit_once(':')
            .is_some_and(|(h, _)| h.eq_ignore_ascii_case("localhost")),
    }
}

/// Validates an object name (proxies, groups, keys): 1–64 of `[a-z0-9_-]`, starting alphanumeric.
pub fn validate_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
        ))
    }
}

/// Checks the shape of a policy id (`[a-z0-9-]+`, at most 64 characters).
pub fn validate_policy_id(id: &str) -> Result<(), String> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a policy id (a-z, 0-9 and '-', at most 64 characters)"
        ))
    }
}

impl ProxySpec {
    /// Checks every field; the first problem found is returned with its field name.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name("name", &self.name)?;
        if self.kind != ProxyKind::Mcp
            && (!self.approved_tools.is_empty() || self.tool_approval == ToolApproval::Auto)
        {
            return Err(FieldError::new(
                "approved_tools",
                "tool approval settings apply to `mcp` proxies only",
            ));
        }
        if self.kind == ProxyKind::Llm
            && (!self.allowed_hosts.is_empty() || !self.allowed_origins.is_empty())
        {
            return Err(FieldError::new(
                "allowed_hosts",
                "allowed hosts and origins apply to `mcp` and `a2a` proxies only",
            ));
        }
        for (i, h) in self.allowed_hosts.iter().enumerate() {
            let ok = h == "*"
                || (!h.is_empty()
                    && h.len() <= 260
                    && h.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')
                    }));
            if !ok {
                return Err(FieldError::new(
                    format!("allowed_hosts[{i}]"),
                    "must be a host name or address, optionally with :port (e.g. mcp.example.com:443), or \"*\"",
                ));
            }
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            let ok = o == "*"
                || rest.is_some_and(|r| {
                    !r.is_empty()
                        && r.len() <= 260
                        && r.chars().all(|c| {
                            c.is_ascii_alphanumeric()
                                || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')
                        })
                });
            if !ok {
                return Err(FieldError::new(
                    format!("allowed_origins[{i}]"),
                    "must be an origin such as https://app.example.com (scheme, host, optional port; no path), or \"*\"",
                ));
            }
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            FieldError::new(
                "listen",
                "must be an IP address and port, e.g. 127.0.0.1:9000",
            )
        })?;
        self.validate_transport()?;
        if self.transport != McpTransport::Stdio {
            self.validate_upstream()?;
        }
        if self.upstream_timeout_secs == 0 || self.upstream_timeout_secs > 3600 {
            return Err(FieldError::new(
                "upstream_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 256 * 1024 * 1024 {
            return Err(FieldError::new(
                "max_body_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        if self.description.len() > 1024 {
            return Err(FieldError::new("description", "must be at most 1024 bytes"));
        }
        for (i, g) in self.allowed_groups.iter().enumerate() {
            validate_name(&format!("allowed_groups[{i}]"), g)?;
        }
        if self.oauth && !matches!(self.kind, ProxyKind::Mcp | ProxyKind::A2a) {
            return Err(FieldError::new(
                "oauth",
                "applies to `mcp` and `a2a` proxies (LLM clients use API keys)",
            ));
        }
        if !self.oauth_users.is_empty() && !self.oauth {
            return Err(FieldError::new(
                "oauth_users",
                "needs `oauth = true` (it lists who may sign in for the proxy)",
            ));
        }
        if let Some((i, _)) = self
            .oauth_users
            .iter()
            .enumerate()
            .find(|(_, u)| u.is_empty() || u.chars().count() > 64)
        {
            return Err(FieldError::new(
                format!("oauth_users[{i}]"),
                "is not a user name (1 to 64 characters)",
            ));
        }
        // Passwords and tokens cross the proxy's listener: in the clear only on this machine.
        if self.oauth {
            let public = self.public_url.as_deref().map(str::to_ascii_lowercase);
            let https = public.as_deref().is_some_and(|u| u.starts_with("https://"));
            let local_http = public.as_deref().is_some_and(|u| {
                u.parse::<http::Uri>()
                    .ok()
                    .and_then(|x| x.host().map(str::to_string))
                    .is_some_and(|h| matches!(h.as_str(), "127.0.0.1" | "[::1]" | "localhost"))
            });
            let ok = match &public {
                Some(_) => https || local_http,
                None => listen_is_loopback(&self.listen),
            };
            if !ok {
                return Err(FieldError::new(
                    if public.is_some() {
                        "public_url"
                    } else {
                        "oauth"
                    },
                    "OAuth needs an https `public_url` (TLS ended in front of the proxy) unless the proxy is reached on this machine only: passwords and tokens must not cross the network in the clear",
                ));
            }
        }
        if self.trusted_proxies.len() > 64 {
            return Err(FieldError::new("trusted_proxies", "at most 64 entries"));
        }
        for (i, t) in self.trusted_proxies.iter().enumerate() {
            if parse_network(t).is_none() {
                return Err(FieldError::new(
                    format!("trusted_proxies[{i}]"),
                    "must be an IP address or a network (`10.0.0.0/8`)",
                ));
            }
        }
        if let Some(p) = &self.oauth_provider {
            if !self.oauth {
                return Err(FieldError::new(
                    "oauth_provider",
                    "needs `oauth = true` (it is where OAuth users sign in)",
                ));
            }
            validate_name("oauth_provider", p)?;
        }
        if let Some(g) = &self.oauth_group {
            if !self.oauth {
                return Err(FieldError::new(
                    "oauth_group",
                    "needs `oauth = true` (it is the group of OAuth callers)",
                ));
            }
            validate_name("oauth_group", g)?;
        }
        if let Some(u) = &self.public_url {
            if self.kind != ProxyKind::A2a && !self.oauth {
                return Err(FieldError::new(
                    "public_url",
                    "applies to `a2a` proxies (it is written into the agent card) and proxies with `oauth` (it names the resource and the issuer)",
                ));
            }
            let uri: http::Uri = u
                .parse()
                .map_err(|_| FieldError::new("public_url", "is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https"))
                || uri.host().is_none_or(str::is_empty)
                || uri.query().is_some()
                || uri.authority().is_some_and(|a| a.as_str().contains('@'))
            {
                return Err(FieldError::new(
                    "public_url",
                    "must be an http(s) URL with a host, without credentials or a query (e.g. https://agents.example.com)",
                ));
            }
        }
        if self.requests_per_minute == Some(0) {
            return Err(FieldError::new(
                "requests_per_minute",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            validate_policy_id(p).map_err(|m| FieldError::new(format!("policies[{i}]"), m))?;
            if !seen.insert(p) {
                return Err(FieldError::new(
                    format!("policies[{i}]"),
                    format!("`{p}` is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

impl ProxySpec {
    fn validate_upstream(&self) -> Result<(), FieldError> {
        let uri: http::Uri = self
            .upstream
            .parse()
            .map_err(|e| FieldError::new("upstream", format!("not a valid URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(FieldError::new(
                    "upstream",
                    "must start with http:// or https://",
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(FieldError::new("upstream", "must include a host"));
        }
        if let Some((_, port)) = uri.authority().and_then(|a| a.as_str().rsplit_once(':'))
            && !port.contains(']')
            && !(port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0))
        {
            return Err(FieldError::new("upstream", "port must be 1 to 65535"));
        }
        // A proxy in front of itself would send each request round until a limit stops it.
        if let (Ok(listen), Some(host), Some(port)) = (
            self.listen.parse::<std::net::SocketAddr>(),
            uri.host(),
            uri.port_u16(),
        ) && port == listen.port()
            && (host.trim_end_matches('.').eq_ignore_ascii_case("localhost")
                || host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| {
                        let (ip, own) = (ip.to_canonical(), listen.ip().to_canonical());
                        ip == own || own.is_unspecified() && ip.is_loopback()
                    }))
        {
            return Err(FieldError::new(
                "upstream",
                "is the proxy's own listen address (it would call itself)",
            ));
        }
        if uri.query().is_some() {
            return Err(FieldError::new("upstream", "must not carry a query string"));
        }
        // Stored and shown as it is (proxy listings, audit rows, logs): no credentials in it.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(FieldError::new(
                "upstream",
                "must not carry credentials (`user:password@`); give the provider's key as `upstream_key`, which is stored encrypted and never shown",
            ));
        }
        Ok(())
    }

    fn validate_transport(&self) -> Result<(), FieldError> {
        let stdio_fields = !self.command.is_empty()
            || !self.env.is_empty()
            || !self.inherit_env.is_empty()
            || self.cwd.is_some();
        if self.kind != ProxyKind::Mcp && self.transport != McpTransport::StreamableHttp {
            return Err(FieldError::new(
                "transport",
                "transports apply to `mcp` proxies only",
            ));
        }
        if self.transport != McpTransport::Stdio {
            if stdio_fields {
                return Err(FieldError::new(
                    "command",
                    "`command`, `env`, `inherit_env` and `cwd` need `transport = \"stdio\"`",
                ));
            }
            return Ok(());
        }
        if !self.upstream.is_empty() {
            return Err(FieldError::new(
                "upstream",
                "a stdio proxy has no upstream URL; the gateway launches `command`",
            ));
        }
        let Some(program) = self.command.first() else {
            return Err(FieldError::new(
                "command",
                "a stdio proxy needs a command, e.g. [\"npx\", \"-y\", \"some-mcp-server\"]",
            ));
        };
        if program.trim().is_empty() {
            return Err(FieldError::new(
                "command[0]",
                "the program must not be empty",
            ));
        }
        if self.command.len() > 256 {
            return Err(FieldError::new("command", "at most 256 arguments"));
        }
        for (i, a) in self.command.iter().enumerate() {
            if a.len() > 4096 || a.contains('\0') {
                return Err(FieldError::new(
                    format!("command[{i}]"),
                    "must be at most 4096 bytes without NUL characters",
                ));
            }
        }
        let env_name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 256
                && !n.starts_with(|c: char| c.is_ascii_digit())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        for (k, v) in &self.env {
            if !env_name_ok(k) {
                return Err(FieldError::new(
                    format!("env.{k}"),
                    "names are letters, digits and `_`, not starting with a digit",
                ));
            }
            if v.len() > 32 * 1024 || v.contains('\0') {
                return Err(FieldError::new(
                    format!("env.{k}"),
                    "values are at most 32 KiB without NUL characters",
                ));
            }
        }
        for (i, n) in self.inherit_env.iter().enumerate() {
            if !env_name_ok(n) {
                return Err(FieldError::new(
                    format!("inherit_env[{i}]"),
                    "names are letters, digits and `_`, not starting with a digit",
                ));
            }
        }
        if let Some(cwd) = &self.cwd
            && (cwd.is_empty() || cwd.len() > 4096 || cwd.contains('\0'))
        {
            return Err(FieldError::new("cwd", "must be a directory path"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProxySpec {
        serde_json::from_value(serde_json::json!({
            "name": "demo-llm", "kind": "llm", "listen": "127.0.0.1:9000",
            "upstream": "http://127.0.0.1:9100"
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_valid_spec() {
        let s = spec();
        assert!(s.enabled);
        assert_eq!(s.api, LlmApi::Openai);
        assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        s.validate().unwrap();
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let net = |s: &str| parse_network(s).unwrap();
        assert!(in_network(ip("10.1.2.3"), net("10.0.0.0/8")));
        assert!(!in_network(ip("11.1.2.3"), net("10.0.0.0/8")));
        assert!(in_network(ip("10.0.0.5"), net("10.0.0.5")));
        assert!(!in_network(ip("10.0.0.6"), net("10.0.0.5")));
        assert!(in_network(ip("::ffff:10.0.0.5"), net("10.0.0.0/24")));
        assert!(in_network(ip("fd00::1"), net("fd00::/8")));
        assert!(!in_network(ip("fe00::1"), net("fd00::/8")));
        assert!(in_network(ip("1.2.3.4"), net("0.0.0.0/0")));
        for bad in ["10.0.0.0/33", "10.0.0", "fd00::/129", "x", "10.0.0.0/"] {
            assert!(parse_network(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn oauth_is_for_mcp_and_a2a_and_leaves_this_machine_only_over_tls() {
        let mcp = |extra: serde_json::Value| -> Result<(), FieldError> {
            let mut v = serde_json::json!({"name": "tools", "kind": "mcp", "listen": "127.0.0.1:9300",
                "upstream": "http://127.0.0.1:3001/mcp", "oauth": true});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            serde_json::from_value::<ProxySpec>(v).unwrap().validate()
        };
        mcp(serde_json::json!({})).unwrap();
        mcp(serde_json::json!({"oauth_group": "eng", "oauth_users": ["mia"]})).unwrap();
        mcp(serde_json::json!({"listen": "0.0.0.0:9300", "public_url": "https://tools.example.com"}))
            .unwrap();
        mcp(serde_json::json!({"public_url": "http://localhost:9300"})).unwrap();
        for (extra, field) in [
            (serde_json::json!({"listen": "0.0.0.0:9300"}), "oauth"),
            (
                serde_json::json!({"public_url": "http://tools.example.com"}),
                "public_url",
            ),
            (
                serde_json::json!({"oauth": false, "oauth_group": "eng"}),
                "oauth_group",
            ),
            (
                serde_json::json!({"oauth": false, "oauth_users": ["mia"]}),
                "oauth_users",
            ),
            (serde_json::json!({"oauth_users": [""]}), "oauth_users[0]"),
            (serde_json::json!({"kind": "llm", "api": "openai"}), "oauth"),
        ] {
            assert_eq!(mcp(extra.clone()).unwrap_err().field, field, "{extra}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = spec();
        s.listen = "localhost".into();
        assert_eq!(s.validate().unwrap_err().field, "listen");
        let mut s = spec();
        s.upstream = "ftp://x".into();
        assert_eq!(s.validate().unwrap_err().field, "upstream");
        for bad in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "http://127.0.0.1:+80",
        ] {
            let mut s = spec();
            s.upstream = bad.into();
            assert_eq!(s.validate().unwrap_err().field, "upstream", "{bad}");
        }
        for itself in [
            "http://127.0.0.1:9000/v1",
            "http://localhost:9000",
            "http://LOCALHOST.:9000",
        ] {
            let mut s = spec();
            s.upstream = itself.into();
            assert_eq!(s.validate().unwrap_err().field, "upstream", "{itself}");
        }
        let mut s = spec();
        s.upstream = "http://127.0.0.1:9001".into();
        assert!(s.validate().is_ok());
        let mut s = spec();
        s.upstream = "http://user:secret@127.0.0.1:9000".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, "upstream");
        assert!(!e.to_string().contains("secret"), "{e}");
        let mut s = spec();
        s.name = "Bad Name".into();
        assert_eq!(s.validate().unwrap_err().field, "name");
        let mut s = spec();
        s.kind = ProxyKind::A2a;
        assert!(s.validate().is_ok());
        s.transport = McpTransport::Stdio;
        assert_eq!(s.validate().unwrap_err().field, "transport");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_value::<ProxySpec>(serde_json::json!({
            "name": "a", "kind": "llm", "listen": "127.0.0.1:1", "upstream": "http://x", "upstrem": 1
        }))
        .unwrap_err();
        assert!(e.to_string().contains("upstrem"));
    }
}
