//! Run-time control of proxies: start, stop, restart and live reconfiguration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use palisade_core::identity::KeyIndex;
use palisade_core::model::{LlmApi, McpTransport, PromptSpec, ProxySpec};
use palisade_core::record::{AlertRecord, McpTool, RequestRecord};
use tokio::sync::Mutex;

use crate::accounting::Accounting;
use crate::bridge::{Bridge, BridgeKey};
use crate::inspect::Inspector;
use crate::listener::RunningListener;
use crate::mcp_tools::McpRegistry;
use crate::upstream::{HttpClient, UpstreamTarget, build_client};
use palisade_policy::PolicySet;

/// Where finished request records go (the store's batched writer, in the binary).
pub type RecordFn = Arc<dyn Fn(RequestRecord) + Send + Sync>;
/// Where alerts go (the same writer; alerts are never dropped).
pub type AlertFn = Arc<dyn Fn(AlertRecord) + Send + Sync>;
/// Where changes to the MCP tool inventory go (the store).
pub type ToolFn = Arc<dyn Fn(McpTool) + Send + Sync>;

/// State shared by every proxy: identities, the upstream client and the record sink.
pub struct GatewayShared {
    /// Active API keys; swapped whole on every key change.
    pub keys: ArcSwap<KeyIndex>,
    /// Pooled upstream client.
    pub(crate) client: HttpClient,
    /// Request record sink.
    pub record: RecordFn,
    /// Alert sink.
    pub alert: AlertFn,
    /// Budgets, prices and rate limits.
    pub accounting: Arc<Accounting>,
    /// Governance prompts.
    pub prompts: ArcSwap<Vec<PromptSpec>>,
    /// Organisation name for the `{{organization}}` prompt variable.
    pub organization: ArcSwap<String>,
    /// MCP tool inventory and approvals.
    pub mcp: McpRegistry,
    /// Persists inventory changes.
    pub tool_sink: ToolFn,
    /// Open sessions of MCP clients on the legacy HTTP+SSE transport.
    pub(crate) legacy: crate::mcp_legacy::Sessions,
    /// The API key that opened each Streamable HTTP session, so no other key can use it.
    pub(crate) session_owners: crate::mcp::SessionOwners,
    pub(crate) task_owners: crate::mcp::TaskOwners,
    /// Which key each A2A task and context belongs to.
    pub(crate) a2a_owners: crate::a2a::Owners,
    pub(crate) resumable: crate::mcp::Resumable,
    /// Placeholder maps of stateful LLM conversations (Responses API).
    pub(crate) conversations: Arc<crate::redact::Conversations>,
    /// Model calls keep what they sent and got (masked) on their record, for a trace export
    /// that asks for content (Langfuse with `LANGFUSE_CAPTURE_CONTENT`).
    pub capture_content: std::sync::atomic::AtomicBool,
    /// Traces are exported to an OpenTelemetry collector: LLM calls note their upstream call
    /// on their record (the client span) and send its `traceparent` upstream.
    pub trace_upstream: std::sync::atomic::AtomicBool,
    /// OAuth access tokens in force and codes waiting (proxies with `oauth = true`).
    pub oauth_tokens: crate::oauth::Tokens,
    /// The users and storage of the OAuth authorization server, set once at start.
    pub oauth_backend: std::sync::OnceLock<Arc<dyn crate::oauth::OAuthBackend>>,
    /// Sign-ins waiting at identity providers (proxies with `oauth_provider`).
    pub(crate) provider_sign_ins: crate::oauth::ProviderSignIns,
}

impl GatewayShared {
    /// Puts a new key index in force; the legacy MCP sessions of keys it no longer holds
    /// (revoked, expired) are disconnected.
    pub fn set_keys(&self, index: Arc<KeyIndex>) {
        self.keys.store(index);
        self.close_revoked();
    }

    /// Whether a caller's identity (an API key, or an OAuth grant's tokens) is still in force.
    pub(crate) fn key_active(&self, id: &str, now: i64) -> bool {
        self.keys.load().holds(id, now) || self.oauth_tokens.holds(id, now)
    }

    /// Ends every OAuth access token of a user (deleted, password reset, role changed) and
    /// what their identities hold open.
    pub fn revoke_oauth_user(&self, username: &str) {
        self.oauth_tokens.revoke_user(username);
        self.close_revoked();
    }

    /// Ends every OAuth access token, waiting code and waiting sign-in for a proxy (how its users
    /// sign in changed: its identity provider was changed or deleted, or it signs in another
    /// way) and what they hold open.
    pub fn revoke_oauth_proxy(&self, proxy: &str) {
        self.oauth_tokens.revoke_proxy(proxy);
        self.provider_sign_ins.revoke_proxy(proxy);
        self.close_revoked();
    }

    /// Ends every access token and waiting code of an OAuth client (deleted) and what they
    /// hold open.
    pub fn revoke_oauth_client(&self, client_id: &str) {
        self.oauth_tokens.revoke_client(client_id);
        self.provider_sign_ins.revoke_client(client_id);
        self.close_revoked();
    }

    /// Disconnects what identities no longer in force hold open.
    pub(crate) fn close_revoked(&self) {
        self.legacy
            .close_revoked(|id, now| self.key_active(id, now));
    }

    /// Shared state with an empty key index.
    pub fn new(record: RecordFn, alert: AlertFn, tool_sink: ToolFn) -> Self {
        Self {
            keys: ArcSwap::from_pointee(KeyIndex::default()),
            client: build_client(),
            record,
            alert,
            accounting: Arc::new(Accounting::default()),
            prompts: ArcSwap::from_pointee(Vec::new()),
            organization: ArcSwap::from_pointee(String::new()),
            mcp: McpRegistry::default(),
            tool_sink,
            legacy: Default::default(),
            session_owners: Default::default(),
            task_owners: Default::default(),
            a2a_owners: Default::default(),
            resumable: Default::default(),
            conversations: Default::default(),
            capture_content: Default::default(),
            trace_upstream: Default::default(),
            oauth_tokens: Default::default(),
            oauth_backend: Default::default(),
            provider_sign_ins: Default::default(),
        }
    }
}

/// Errors of proxy control.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The spec cannot be turned into a runtime.
    #[error("invalid proxy configuration: {0}")]
    Invalid(String),
}

/// One proxy's compiled, immutable configuration; requests load it once and keep it.
pub struct ProxyRuntime {
    /// The spec it was built from.
    pub spec: ProxySpec,
    pub(crate) target: UpstreamTarget,
    pub(crate) auth_header: Option<(HeaderName, HeaderValue)>,
    pub(crate) inspector: Option<Inspector>,
    /// MCP over stdio or legacy SSE: the bridge's token header, set once its bridge runs
    /// (requests are refused until then).
    pub(crate) bridge_header: Option<(HeaderName, HeaderValue)>,
    pub(crate) bridge_key: Option<BridgeKey>,
    /// MCP: what is known of the upstream's protocol era, and the gateway's own session with a
    /// session-era upstream (for stateless-era clients).
    pub(crate) era: crate::mcp_era::EraCache,
    /// A2A: the paths of the agent's JSON-RPC interfaces, from its card.
    pub(crate) a2a_paths: crate::a2a::Interfaces,
}

impl ProxyRuntime {
    /// Compiles a spec, its (decrypted) upstream credential and its compiled policies.
    pub fn new(
        spec: ProxySpec,
        upstream_key: Option<&str>,
        policies: Option<Arc<PolicySet>>,
    ) -> Result<Self, GatewayError> {
        let inspector = policies.map(|set| Inspector::new(set, spec.policy_mode));
        // A stdio proxy has no URL: its target is the bridge, set when the proxy starts.
        let target = match spec.transport {
            McpTransport::Stdio => UpstreamTarget::parse("http://127.0.0.1/mcp"),
            _ => UpstreamTarget::parse(&spec.upstream),
        }
        .map_err(GatewayError::Invalid)?;
        let auth_header = match upstream_key {
            None => None,
            Some(k) => {
                let (name, value) = match spec.api {
                    LlmApi::Openai => (http::header::AUTHORIZATION, format!("Bearer {k}")),
                    LlmApi::Anthropic => (HeaderName::from_static("x-api-key"), k.to_string()),
                };
                let mut v = HeaderValue::from_str(&value).map_err(|_| {
                    GatewayError::Invalid(
                        "upstream_key contains characters not allowed in a header".into(),
                    )
                })?;
                v.set_sensitive(true);
                Some((name, v))
            }
        };
        let bridge_key = BridgeKey::of(&spec, auth_header.as_ref());
        Ok(Self {
            spec,
            target,
            auth_header,
            inspector,
            bridge_header: None,
            bridge_key,
            era: Default::default(),
            a2a_paths: Default::default(),
        })
    }

    /// Points the runtime at its bridge.
    fn attach(&mut self, bridge: &Bridge) -> Result<(), GatewayError> {
        self.target = UpstreamTarget::parse(&bridge.url()).map_err(GatewayError::Invalid)?;
        self.bridge_header = Some(bridge.header());
        Ok(())
    }

    /// Whether requests can be forwarded (a bridged transport needs its bridge).
    pub(crate) fn upstream_ready(&self) -> bool {
        self.bridge_key.is_none() || self.bridge_header.is_some()
    }

    /// The credential header for the upstream request: the bridge token when bridged (the
    /// bridge holds the upstream credential itself), else the upstream key.
    pub(crate) fn upstream_auth(&self) -> Option<&(HeaderName, HeaderValue)> {
        self.bridge_header.as_ref().or(self.auth_header.as_ref())
    }
}

/// A proxy's run state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyStatus {
    /// Serving on this address.
    Running(SocketAddr),
    /// Not running.
    Stopped,
    /// Last start failed with this message.
    Failed(String),
}

struct Running {
    runtime: Arc<ArcSwap<ProxyRuntime>>,
    listener: RunningListener,
    /// The transport bridge of a stdio or legacy-SSE MCP proxy.
    bridge: Option<Bridge>,
}

/// A running MCP proxy's upstream, as [`ProxyManager::mcp_upstream`] gives it.
pub struct McpUpstream {
    /// The URL the proxy posts to.
    pub url: String,
    /// The credential header it adds.
    pub auth: Option<(HeaderName, HeaderValue)>,
    /// Whether the URL is the gateway's own bridge to a stdio or legacy-SSE server.
    pub bridged: bool,
}

/// Owns the running proxies.
pub struct ProxyManager {
    shared: Arc<GatewayShared>,
    running: Mutex<HashMap<String, Running>>,
    failures: std::sync::Mutex<HashMap<String, String>>,
    /// Agent cards fetched for the admin view, per proxy: when, for which runtime, what came
    /// (each proxy's behind its own lock, so a slow agent holds up only its own views).
    cards: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<CardFetch>>>>>,
    drain: Duration,
}

/// An agent card view fetched for [`ProxyManager::agent_card`].
struct CardFetch {
    at: std::time::Instant,
    /// The runtime it was fetched for (a weak handle: the address is never reused meanwhile).
    runtime: std::sync::Weak<ProxyRuntime>,
    view: Result<crate::a2a::CardView, String>,
}

/// How long an agent card view is shown again before the agent is asked anew: console views
/// (any viewer's) never make the gateway fetch a card more often than this, per proxy.
const CARD_VIEW_TTL: Duration = Duration::from_secs(15);
/// Longest a card fetch for the admin view may take, body included.
const CARD_VIEW_DEADLINE: Duration = Duration::from_secs(10);

impl ProxyManager {
    /// A manager whose proxies drain for at most `drain` when stopped.
    pub fn new(shared: Arc<GatewayShared>, drain: Duration) -> Self {
        Self {
            shared,
            running: Mutex::new(HashMap::new()),
            failures: Default::default(),
            cards: Default::default(),
            drain,
        }
    }

    /// The shared state (key index, sink).
    pub fn shared(&self) -> &Arc<GatewayShared> {
        &self.shared
    }

    fn set_failure(&self, name: &str, msg: Option<String>) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match msg {
            Some(m) => f.insert(name.to_string(), m),
            None => f.remove(name),
        };
    }

    /// Starts a proxy (no-op if it is already running); returns the bound address.
    pub async fn start(&self, mut runtime: ProxyRuntime) -> Result<SocketAddr, GatewayError> {
        let name = runtime.spec.name.clone();
        let mut running = self.running.lock().await;
        if let Some(r) = running.get(&name) {
            return Ok(r.listener.local_addr);
        }
        let addr: SocketAddr = runtime.spec.listen.parse().map_err(|_| {
            GatewayError::Invalid(format!("listen address `{}`", runtime.spec.listen))
        })?;
        let bridge = self.bridge_for(&mut runtime, None).await?;
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        match RunningListener::bind(addr, self.shared.clone(), runtime.clone(), self.drain).await {
            Ok(listener) => {
                let local = listener.local_addr;
                tracing::info!(proxy = %name, addr = %local, "proxy started");
                running.insert(
                    name.clone(),
                    Running {
                        runtime,
                        listener,
                        bridge,
                    },
                );
                self.set_failure(&name, None);
                Ok(local)
            }
            Err(source) => {
                let e = GatewayError::Bind {
                    addr: addr.to_string(),
                    source,
                };
                self.set_failure(&name, Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Stops a proxy: it stops accepting at once; in-flight requests finish. Returns whether it ran.
    pub async fn stop(&self, name: &str) -> bool {
        let r = self.running.lock().await.remove(name);
        self.set_failure(name, None);
        match r {
            Some(r) => {
                // Legacy SSE sessions never end by themselves: end them so the drain can.
                self.shared.legacy.close_proxy(name);
                r.listener.shutdown().await;
                drop(r.bridge);
                tracing::info!(proxy = %name, "proxy stopped");
                true
            }
            None => false,
        }
    }

    /// Applies a new configuration to a running proxy: swapped in place when the listener is
    /// unchanged (no dropped connections); otherwise the new address is bound first and only
    /// then is the old listener drained, so a failed rebind leaves the proxy serving as before.
    /// Stopped proxies are left stopped.
    pub async fn reconfigure(&self, mut runtime: ProxyRuntime) -> Result<(), GatewayError> {
        let name = runtime.spec.name.clone();
        let mut running = self.running.lock().await;
        let Some(current) = running.get_mut(&name) else {
            return Ok(());
        };
        // The bridge is kept when the upstream is the same; a new one replaces it otherwise.
        let new_bridge = self
            .bridge_for(&mut runtime, current.bridge.as_ref())
            .await?;
        if current.runtime.load().spec.listen == runtime.spec.listen {
            current.runtime.store(Arc::new(runtime));
            if new_bridge.is_some() || current.runtime.load().bridge_key.is_none() {
                current.bridge = new_bridge;
            }
            return Ok(());
        }
        let addr: SocketAddr = runtime.spec.listen.parse().map_err(|_| {
            GatewayError::Invalid(format!("listen address `{}`", runtime.spec.listen))
        })?;
        let keeps_bridge = new_bridge.is_none() && runtime.bridge_key.is_some();
        let swap = Arc::new(ArcSwap::from_pointee(runtime));
        let listener = RunningListener::bind(addr, self.shared.clone(), swap.clone(), self.drain)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        tracing::info!(proxy = %name, addr = %listener.local_addr, "proxy rebound");
        let mut old = running.remove(&name);
        let bridge = if keeps_bridge {
            old.as_mut().and_then(|o| o.bridge.take())
        } else {
            new_bridge
        };
        running.insert(
            name,
            Running {
                runtime: swap,
                listener,
                bridge,
            },
        );
        drop(running);
        if let Some(old) = old {
            old.listener.shutdown().await;
        }
        Ok(())
    }

    /// Starts the bridge a runtime's transport needs and attaches it; with `current` serving the
    /// same upstream, attaches that one instead and returns `None`.
    async fn bridge_for(
        &self,
        runtime: &mut ProxyRuntime,
        current: Option<&Bridge>,
    ) -> Result<Option<Bridge>, GatewayError> {
        let Some(key) = runtime.bridge_key.clone() else {
            return Ok(None);
        };
        if let Some(b) = current.filter(|b| b.key == key) {
            runtime.attach(b)?;
            return Ok(None);
        }
        let auth = match runtime.spec.transport {
            McpTransport::Sse => runtime.auth_header.clone(),
            _ => None,
        };
        let bridge = Bridge::start(&runtime.spec, key, auth, self.shared.client.clone())
            .await
            .map_err(|e| GatewayError::Invalid(format!("cannot start the MCP transport: {e}")))?;
        runtime.attach(&bridge)?;
        Ok(Some(bridge))
    }

    /// Where a running MCP proxy sends its traffic (the endpoint URL, or its bridge's for a
    /// stdio or legacy-SSE server), the credential header it adds, and whether it is bridged:
    /// for the scanner, so the credential stays in the process.
    pub async fn mcp_upstream(&self, name: &str) -> Option<McpUpstream> {
        let running = self.running.lock().await;
        let rt = running.get(name)?.runtime.load_full();
        if rt.spec.kind != palisade_core::model::ProxyKind::Mcp || !rt.upstream_ready() {
            return None;
        }
        let url = rt.target.uri_for("").ok()?.to_string();
        Some(McpUpstream {
            url,
            auth: rt.upstream_auth().cloned(),
            bridged: rt.bridge_header.is_some(),
        })
    }

    /// A running A2A proxy's agent card, fetched from its agent with the proxy's credential,
    /// with what the proxy's rules find in it. `None`: no such running A2A proxy. Unless
    /// `refresh`, a view (or failure) fetched in the last [`CARD_VIEW_TTL`] for the same
    /// runtime is shown again; fetches happen one at a time: viewers cannot make the gateway
    /// flood an agent.
    pub async fn agent_card(
        &self,
        name: &str,
        refresh: bool,
    ) -> Option<Result<crate::a2a::CardView, String>> {
        let (rt, slot) = {
            let running = self.running.lock().await;
            let rt = running.get(name)?.runtime.load_full();
            if rt.spec.kind != palisade_core::model::ProxyKind::A2a {
                return None;
            }
            let mut cards = self.cards.lock().unwrap_or_else(|p| p.into_inner());
            // Proxies no longer running leave nothing behind.
            cards.retain(|n, _| running.contains_key(n));
            (rt, cards.entry(name.to_string()).or_default().clone())
        };
        let runtime = Arc::downgrade(&rt);
        let mut slot = slot.lock().await;
        if !refresh
            && let Some(c) = slot.as_ref()
            && c.runtime.ptr_eq(&runtime)
            && c.at.elapsed() < CARD_VIEW_TTL
        {
            return Some(c.view.clone());
        }
        let deadline = CARD_VIEW_DEADLINE.min(Duration::from_secs(rt.spec.upstream_timeout_secs));
        let view = tokio::time::timeout(deadline, crate::a2a::card_view(&self.shared, &rt))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the agent did not send its card within {} s",
                    deadline.as_secs()
                ))
            });
        *slot = Some(CardFetch {
            at: std::time::Instant::now(),
            runtime,
            view: view.clone(),
        });
        Some(view)
    }

    /// The policy memo of every running proxy with policies (name order). Proxies with the same
    /// list of policies share one compiled set, and so one memo.
    pub async fn memo_stats(&self) -> Vec<(String, palisade_policy::MemoStats)> {
        let running = self.running.lock().await;
        let mut out: Vec<_> = running
            .iter()
            .filter_map(|(name, r)| {
                let rt = r.runtime.load();
                let insp = rt.inspector.as_ref()?;
                Some((name.clone(), insp.set.memo_stats()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Current status of a proxy.
    pub async fn status(&self, name: &str) -> ProxyStatus {
        if let Some(r) = self.running.lock().await.get(name) {
            return ProxyStatus::Running(r.listener.local_addr);
        }
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match f.get(name) {
            Some(m) => ProxyStatus::Failed(m.clone()),
            None => ProxyStatus::Stopped,
        }
    }

    /// Stops every proxy, draining them in parallel.
    pub async fn stop_all(&self) {
        let all: Vec<(String, Running)> = self.running.lock().await.drain().collect();
        let mut tasks = Vec::new();
        for (name, r) in all {
            self.shared.legacy.close_proxy(&name);
            tasks.push(tokio::spawn(async move {
                r.listener.shutdown().await;
                tracing::info!(proxy = %name, "proxy stopped");
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
