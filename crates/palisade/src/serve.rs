//! `palisade serve`: wiring of store, writer, gateway and admin API, with graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palisade_admin::AppState;
use palisade_core::crypto::{MasterKey, hash_password, random_token};
use palisade_gateway::{AlertFn, GatewayShared, ProxyManager, RecordFn, ToolFn};
use palisade_store::{Actor, LogWriter, Store};

mod packs {
    include!(concat!(env!("OUT_DIR"), "/builtin_packs.rs"));
}

/// The shipped policy packs, parsed (a broken pack is a build defect, reported clearly).
pub fn builtin_policies() -> anyhow::Result<Vec<palisade_policy::Policy>> {
    let texts: Vec<&str> = packs::PACKS.iter().map(|(_, text)| *text).collect();
    packs::PACKS
        .iter()
        .zip(palisade_policy::Policy::from_json_many(&texts))
        .map(|((file, _), policy)| policy.with_context(|| format!("built-in pack {file}")))
        .collect()
}

/// Time in-flight requests get to finish when a proxy stops or the process shuts down.

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Declarative TOML config applied at start (and on SIGHUP).
    #[arg(long, env = "PALISADE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded database and the master key.
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Address of the admin API.
    #[arg(long, env = "PALISADE_ADMIN_ADDR", default_value = "127.0.0.1:8080")]
    admin_addr: SocketAddr,
    /// Seconds a stopping proxy (shutdown, admin stop or restart, a changed listen address)
    /// waits for requests in flight before it answers them 503 and closes their connections.
    #[arg(long, env = "PALISADE_DRAIN_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_secs: u64,
    /// Redis shared by several gateway nodes for their rate limits and group spend
    /// (`redis://[[user]:password@]host[:port][/db]`); without it each node counts alone.
    #[arg(long, env = "PALISADE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Milliseconds between a node's exchanges with Redis: nodes overshoot a shared limit by at
    /// most what the others admit in one interval.
    #[arg(long, env = "PALISADE_REDIS_SYNC_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    redis_sync_ms: u64,
    /// Prefix of the gateway's Redis keys (deployments sharing one Redis keep apart by it).
    #[arg(long, env = "PALISADE_REDIS_PREFIX", default_value = "palisade:")]
    redis_prefix: String,
    /// Certificates (PEM) a `rediss://` server's certificate may chain to, besides the public
    /// roots compiled in (a private CA).
    #[arg(long, env = "PALISADE_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) the gateway shows a `rediss://` server that asks for one
    /// (`tls-auth-clients yes`); with `PALISADE_REDIS_CLIENT_KEY`.
    #[arg(long, env = "PALISADE_REDIS_CLIENT_CERT")]
    redis_client_cert: Option<PathBuf>,
    /// The private key (PEM) of `PALISADE_REDIS_CLIENT_CERT`.
    #[arg(long, env = "PALISADE_REDIS_CLIENT_KEY")]
    redis_client_key: Option<PathBuf>,
    /// Certificates (PEM) the servers that alerts are delivered to (`https://` webhooks,
    /// `tls://` syslog collectors) may chain to, besides the public roots compiled in (a
    /// private CA).
    #[arg(long, env = "PALISADE_WEBHOOK_CA_FILE")]
    webhook_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) the gateway shows the servers alerts are delivered to when they
    /// ask for one (mutual TLS); with `PALISADE_WEBHOOK_CLIENT_KEY`.
    #[arg(long, env = "PALISADE_WEBHOOK_CLIENT_CERT")]
    webhook_client_cert: Option<PathBuf>,
    /// The private key (PEM) of `PALISADE_WEBHOOK_CLIENT_CERT`.
    #[arg(long, env = "PALISADE_WEBHOOK_CLIENT_KEY")]
    webhook_client_key: Option<PathBuf>,
}

/// TLS settings for the gateway's own connections from a group of settings
/// (`<prefix>_CA_FILE`, `<prefix>_CLIENT_CERT` and `<prefix>_CLIENT_KEY`; the last two both, or
/// neither); an error names the settings.
fn tls_settings(
    prefix: &str,
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> anyhow::Result<std::sync::Arc<palisade_gateway::TlsSource>> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(palisade_gateway::ClientIdentity { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            anyhow::bail!(
                "{prefix}_CLIENT_CERT is set without {prefix}_CLIENT_KEY: both, or neither"
            )
        }
        (None, Some(_)) => {
            anyhow::bail!(
                "{prefix}_CLIENT_KEY is set without {prefix}_CLIENT_CERT: both, or neither"
            )
        }
    };
    palisade_gateway::TlsSource::open(ca.as_deref(), identity).map_err(|e| {
        let setting = match e.file {
            Some(palisade_gateway::TlsFile::Cert) => "_CLIENT_CERT",
            Some(palisade_gateway::TlsFile::Key) => "_CLIENT_KEY",
            Some(palisade_gateway::TlsFile::Ca) | None => "_CA_FILE",
        };
        anyhow::anyhow!("{prefix}{setting}: {e}")
    })
}

/// Loads the master key from `PALISADE_MASTER_KEY`, or from `<data>/master.key`, creating it
/// (mode 0600) on first run.
fn master_key(data_dir: &Path) -> anyhow::Result<MasterKey> {
    if let Ok(v) = std::env::var("PALISADE_MASTER_KEY") {
        return MasterKey::parse(&v).context("PALISADE_MASTER_KEY");
    }
    let path = data_dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::parse(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A database made with another key: its sealed secrets and the admin tokens need
            // that key; a new one would silently seal new secrets differently.
            let db = data_dir.join("palisade.db");
            if std::fs::metadata(&db).is_ok_and(|m| m.len() > 0) {
                anyhow::bail!(
                    "{} exists but {} is missing: the database's stored secrets need the key \
                     they were sealed with. Restore master.key (or set PALISADE_MASTER_KEY); to \
                     start afresh, move the database away",
                    db.display(),
                    path.display()
                );
            }
            let key = MasterKey::generate();
            write_private(&path, &key.to_hex())?;
            tracing::info!(path = %path.display(), "generated a new master key; back it up with the database");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

async fn ensure_admin(state: &AppState) -> anyhow::Result<()> {
    if state.store.user_count().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match std::env::var("PALISADE_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (random_token(18), true),
    };
    // The same rule as every password set through the API.
    if let Some(why) = palisade_admin::users::password_problem(&password) {
        anyhow::bail!("PALISADE_ADMIN_PASSWORD {why}");
    }
    let p = password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&p)).await??;
    state
        .store
        .create_user("admin", hash, "admin", generated, Actor::system("system"))
        .await?;
    if generated {
        // Printed once, straight to the terminal, never to the log.
        println!("palisade: first run: created user `admin` with password: {password}");
        println!("palisade: (shown only now; you will be asked to change it at first login)");
    } else {
        println!(
            "palisade: first run: created user `admin` with the password from PALISADE_ADMIN_PASSWORD"
        );
    }
    Ok(())
}

/// Why a config file was not (fully) applied.
#[derive(Debug)]
enum ConfigError {
    /// Found before anything was written: nothing changed.
    Refused(anyhow::Error),
    /// Writing an entry failed (a listener that cannot bind, the database): the entries before
    /// it are applied.
    Partial(anyhow::Error),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "config refused, nothing changed: {e:#}"),
            Self::Partial(e) => write!(
                f,
                "config applied only in part (the other entries are applied): {e:#}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks the file against the gateway before anything is written: what it names without
/// defining it (groups, proxies, custom policies) must exist, so a typo is refused; and its
/// keys must not take over keys issued through the API.
async fn check_references(state: &AppState, cfg: &crate::config::Config) -> anyhow::Result<()> {
    use crate::config::RefKind;
    // A key value already held by a key of another name (an API key, a revoked one) would be
    // refused while writing; it is refused here, before anything is written.
    for k in &cfg.api_keys {
        let hash = palisade_core::crypto::hash_api_key(&k.key);
        if let Some(other) = state.store.key_name_by_hash(hash).await?
            && other != k.name
        {
            anyhow::bail!(
                "api key `{}`: its key value is already registered under the name `{other}`; give this entry its own key",
                k.name
            );
        }
    }
    if !cfg.api_keys.is_empty() {
        for row in state.store.list_keys().await? {
            if row.source != "config" && cfg.api_keys.iter().any(|k| k.name == row.name) {
                anyhow::bail!(
                    "api key `{}`: a key of that name was issued through the API; the file cannot take it over (give the file's key another name)",
                    row.name
                );
            }
        }
    }
    for (p, _) in &cfg.proxies {
        state
            .check_listen(&p.listen)
            .map_err(|e| anyhow::anyhow!("proxy `{}`: {}", p.name, e.message))?;
    }
    // A proxy of the file may not take the port of a running proxy the file does not name (one
    // made through the API, or one an earlier file named): found only at bind time, it would
    // leave the file applied in part.
    if !cfg.proxies.is_empty() {
        for name in state.store.proxy_names().await? {
            if cfg.proxies.iter().any(|(p, _)| p.name == name) {
                continue;
            }
            let palisade_gateway::ProxyStatus::Running(addr) = state.manager.status(&name).await
            else {
                continue;
            };
            let addr = addr.to_string();
            if let Some((p, _)) = cfg
                .proxies
                .iter()
                .find(|(p, _)| palisade_core::model::listens_clash(&p.listen, &addr))
            {
                anyhow::bail!(
                    "proxy `{}`: listens on `{}`, where proxy `{name}` runs on the gateway (it is not in the file); choose another address",
                    p.name,
                    p.listen,
                );
            }
        }
    }
    // Built-in packs are checked here too (`has_policy`), so none is taken as given.
    let refs = cfg.outside_references(&[]);
    if refs.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = state
        .store
        .list_groups()
        .await?
        .into_iter()
        .map(|g| g.spec.name)
        .collect();
    let proxies = state.store.proxy_names().await?;
    for r in refs {
        let exists = match r.kind {
            RefKind::Group => groups.contains(&r.name),
            RefKind::Proxy => proxies.contains(&r.name),
            RefKind::Policy => state.has_policy(&r.name),
        };
        if !exists {
            anyhow::bail!(
                "{}: {} not found (neither in the file nor on the gateway)",
                r.from,
                r.what()
            );
        }
    }
    Ok(())
}

/// Applies a config file: everything is validated first (the file alone, then what it refers
/// to on the gateway), then applied in dependency order.
async fn apply_config(state: &AppState, path: &Path) -> Result<(), ConfigError> {
    let cfg = crate::config::load(path).map_err(ConfigError::Refused)?;
    check_references(state, &cfg)
        .await
        .map_err(ConfigError::Refused)?;
    apply_checked(state, cfg)
        .await
        .map_err(ConfigError::Partial)?;
    tracing::info!(path = %path.display(), "config applied");
    Ok(())
}

/// Writes a checked config.
async fn apply_checked(state: &AppState, cfg: crate::config::Config) -> anyhow::Result<()> {
    let actor = || Actor::system("config");
    for g in cfg.groups {
        let name = g.name.clone();
        state
            .put_group(g, true, actor())
            .await
            .map_err(|e| anyhow::anyhow!("group `{name}`: {}", e.message))?;
    }
    for p in cfg.prices {
        let model = p.model.clone();
        state
            .put_price(p, "config", actor())
            .await
            .map_err(|e| anyhow::anyhow!("price `{model}`: {}", e.message))?;
    }
    // A key the file made and no longer names is revoked: removing a credential from the file
    // that lives in git must end it (keys made through the API are left alone).
    let named: Vec<&str> = cfg.api_keys.iter().map(|k| k.name.as_str()).collect();
    let mut revoked = false;
    for row in state.store.list_keys().await? {
        if row.source == "config" && row.revoked_at.is_none() && !named.contains(&row.name.as_str())
        {
            state
                .store
                .revoke_key(&row.name, actor())
                .await
                .map_err(|e| anyhow::anyhow!("api key `{}`: {e}", row.name))?;
            tracing::info!(key = %row.name, "key revoked: the config file no longer names it");
            revoked = true;
        }
    }
    if revoked {
        state
            .reload_keys()
            .await
            .map_err(|e| anyhow::anyhow!("api keys: {}", e.message))?;
    }
    for k in cfg.api_keys {
        let opts = palisade_store::KeyOptions {
            allowed_proxies: k.allowed_proxies.clone(),
            allowed_models: k.allowed_models.clone(),
            rpm: k.rpm,
            tpm: k.tpm,
            expires_at: None,
        };
        let row = state
            .put_fixed_key(&k.name, k.group.clone(), &k.key, opts, actor())
            .await
            .map_err(|e| anyhow::anyhow!("api key `{}`: {}", k.name, e.message))?;
        if row.revoked_at.is_some() {
            tracing::warn!(
                key = %k.name,
                "key stays revoked: its secret was revoked (on the gateway, or when a file stopped naming it) and a revoked secret is never valid again; give the entry a new secret"
            );
        }
    }
    if let Some(org) = cfg.organization {
        state
            .manager
            .shared()
            .organization
            .store(std::sync::Arc::new(org));
    }
    for p in cfg.prompts {
        let name = p.name.clone();
        state
            .put_prompt(p, true, actor())
            .await
            .map_err(|e| anyhow::anyhow!("prompt `{name}`: {}", e.message))?;
    }
    for (w, secret) in cfg.webhooks {
        let name = w.name.clone();
        state
            .apply_webhook(w, secret, actor())
            .await
            .map_err(|e| anyhow::anyhow!("webhook `{name}`: {}", e.message))?;
    }
    // Before the proxies that sign in through them.
    for (p, secret) in cfg.identity_providers {
        let name = p.name.clone();
        state
            .put_identity_provider(p, Some(secret), actor())
            .await
            .map_err(|e| anyhow::anyhow!("identity provider `{name}`: {}", e.message))?;
    }
    // Proxies that trade addresses in the file (or take one another gives up) cannot move one
    // at a time: the holders are stopped first, then each starts at its new address.
    let mut held_by: Vec<String> = Vec::new();
    for (q, _) in &cfg.proxies {
        let palisade_gateway::ProxyStatus::Running(at) = state.manager.status(&q.name).await else {
            continue;
        };
        let at = at.to_string();
        // Only a proxy the file moves is restarted by its own entry below.
        let stored = state.store.get_proxy(&q.name).await?;
        let moves = stored.is_some_and(|r| r.spec.listen != q.listen)
            && !palisade_core::model::listens_clash(&q.listen, &at);
        let wanted = cfg
            .proxies
            .iter()
            .any(|(p, _)| p.name != q.name && palisade_core::model::listens_clash(&p.listen, &at));
        if moves && wanted {
            held_by.push(q.name.clone());
        }
    }
    for name in &held_by {
        tracing::info!(proxy = %name, "stopping to give its address to another proxy of the file");
        state.manager.stop(name).await;
    }
    // Each proxy is applied even when one before it failed; the failures are reported together.
    let mut failed = Vec::new();
    for (spec, key) in cfg.proxies {
        let name = spec.name.clone();
        let keep_run_state = !cfg.run_state_set.contains(&name);
        if let Err(e) = state.apply_proxy(spec, key, keep_run_state, actor()).await {
            failed.push(format!("proxy `{name}`: {}", e.message));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Bad settings are refused before anything is written.
    palisade_admin::metrics_token().map_err(|e| anyhow::anyhow!(e.message))?;
    let webhook_tls = tls_settings(
        "PALISADE_WEBHOOK",
        &args.webhook_ca_file,
        &args.webhook_client_cert,
        &args.webhook_client_key,
    )?;
    let redis_tls_set = args.redis_ca_file.is_some()
        || args.redis_client_cert.is_some()
        || args.redis_client_key.is_some();
    let cluster = match &args.redis_url {
        Some(url) => {
            let url = palisade_gateway::resp::RedisUrl::parse(url)
                .map_err(|e| anyhow::anyhow!("PALISADE_REDIS_URL: {e}"))?;
            let tls = if url.tls {
                Some(tls_settings(
                    "PALISADE_REDIS",
                    &args.redis_ca_file,
                    &args.redis_client_cert,
                    &args.redis_client_key,
                )?)
            } else if redis_tls_set {
                anyhow::bail!(
                    "PALISADE_REDIS_CA_FILE, PALISADE_REDIS_CLIENT_CERT and PALISADE_REDIS_CLIENT_KEY are for a `rediss://` URL; PALISADE_REDIS_URL is not one"
                );
            } else {
                None
            };
            Some(palisade_gateway::cluster::ClusterConfig {
                url,
                interval: Duration::from_millis(args.redis_sync_ms),
                prefix: args.redis_prefix.clone(),
                tls,
            })
        }
        None if redis_tls_set => anyhow::bail!(
            "PALISADE_REDIS_CA_FILE, PALISADE_REDIS_CLIENT_CERT and PALISADE_REDIS_CLIENT_KEY are for PALISADE_REDIS_URL, which is not set"
        ),
        None => None,
    };
    let env = |k: &str| std::env::var(k).ok();
    let exports = [
        crate::otlp::OtlpConfig::from_env(env)?,
        crate::otlp::OtlpConfig::langfuse_from_env(env)?,
    ];
    let capture_content = exports.iter().flatten().any(|c| c.content);
    let trace_upstream = exports
        .iter()
        .flatten()
        .any(|c| c.flavor == palisade_core::otlp::Flavor::Otel);
    let otlp: Arc<[crate::otlp::Otlp]> = exports
        .into_iter()
        .flatten()
        .map(crate::otlp::Otlp::start)
        .collect();
    // The first run's password, checked before anything is created: a refused start leaves
    // no files behind (later runs do not read it).
    if !args.data_dir.join("palisade.db").exists()
        && let Ok(p) = std::env::var("PALISADE_ADMIN_PASSWORD")
        && !p.is_empty()
        && let Some(why) = palisade_admin::users::password_problem(&p)
    {
        anyhow::bail!("PALISADE_ADMIN_PASSWORD {why}");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    // One gateway per data directory: a second one would apply its own configuration to the
    // same database (revoking the first one's keys) behind its back.
    let lock_path = args.data_dir.join("palisade.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another palisade is running on the data directory {}",
            args.data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
        }
    }
    // The admin API's address is taken first: a proxy may not hold it (one stored with it
    // would otherwise take it at every start, and the gateway could never start again).
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (the admin API)", args.admin_addr))?;
    let local = listener.local_addr()?;
    let master = master_key(&args.data_dir)?;
    let db = args.data_dir.join("palisade.db");
    let store = Store::open(&args.data_dir)
        .with_context(|| format!("cannot open the database {}", db.display()))?;
    check_master_key(&store, &master).await?;
    let writer = LogWriter::start(store.path().to_path_buf())?;
    // Live console events ride along the log sinks; the hub never waits (see events.rs).
    let hub = Arc::new(palisade_admin::events::Hub::new());
    hub.metrics.watch_log(writer.sink().stats_handle());
    let sink = writer.sink();
    let h = hub.clone();
    let traces = otlp.clone();
    let record: RecordFn = Arc::new(move |r| {
        h.request(&r);
        for t in traces.iter() {
            t.push(&r);
        }
        sink.record(r)
    });
    let sink = writer.sink();
    let h = hub.clone();
    let alert: AlertFn = Arc::new(move |a| {
        h.alert(&a);
        sink.alert(a)
    });
    let tools_store = store.clone();
    let tool_sink: ToolFn = Arc::new(move |t| {
        let st = tools_store.clone();
        tokio::spawn(async move {
            if let Err(e) = st.upsert_tool(t).await {
                tracing::error!(error = %e, "MCP tool inventory could not be saved");
            }
        });
    });
    let manager = Arc::new(ProxyManager::new(
        Arc::new(GatewayShared::new(record, alert, tool_sink)),
        Duration::from_secs(args.drain_secs),
    ));
    let state = AppState::new(store, manager.clone(), master, builtin_policies()?)
        .map_err(|e| stored(&db, e))?
        .with_events(hub)
        .with_admin_addr(local)
        .with_webhook_tls(webhook_tls);
    manager
        .shared()
        .capture_content
        .store(capture_content, std::sync::atomic::Ordering::Relaxed);
    manager
        .shared()
        .trace_upstream
        .store(trace_upstream, std::sync::atomic::Ordering::Relaxed);
    // Proxies with `oauth = true` sign the gateway's users in through the admin side.
    let _ = manager
        .shared()
        .oauth_backend
        .set(Arc::new(palisade_admin::oauth::Backend::new(state.clone())));
    state
        .load_custom_policies()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;

    // A database that opened but whose rows cannot be read (damaged pages) names itself.
    ensure_admin(&state)
        .await
        .with_context(|| format!("cannot read {}", db.display()))?;
    state
        .store
        .seed_prices(palisade_core::spend::default_prices())
        .await
        .with_context(|| format!("cannot write {}", db.display()))?;
    let init = async {
        state.reload_prices().await?;
        state.reload_groups().await?;
        state.reload_prompts().await?;
        state.load_tools().await?;
        state.seed_spend().await
    };
    init.await.map_err(|e| stored(&db, e))?;
    state.reload_keys().await.map_err(|e| stored(&db, e))?;
    // A file that is invalid stops the start (nothing was written); one that failed while
    // being applied (a proxy that cannot bind) leaves the rest serving, and says what failed.
    if let Some(path) = &args.config {
        match apply_config(&state, path).await {
            Ok(()) => {}
            Err(e @ ConfigError::Refused(_)) => return Err(e.into()),
            Err(e @ ConfigError::Partial(_)) => tracing::error!(
                error = %e,
                "config applied in part; the gateway serves the rest (fix the file and send SIGHUP)"
            ),
        }
    }
    for (name, res) in state.boot_proxies().await.map_err(|e| stored(&db, e))? {
        match res {
            Ok(addr) => println!("palisade: proxy `{name}` listening on http://{addr}"),
            Err(e) => tracing::error!(proxy = %name, error = %e, "proxy failed to start"),
        }
    }

    // Start-up parsed, checked and dropped much more than it keeps (validating the packs
    // compiled each of their regexes once; the seeded tables, the config): without a trim the
    // idle process keeps those freed pages resident (measured without policies: 11.7 MiB of
    // anonymous memory instead of 4.7).
    palisade_policy::release_free_memory();
    // Spend is seeded from this node's log above: the first exchange starts the shared month
    // from it unless another node has.
    let (cluster_stop, cluster_stopped) = tokio::sync::watch::channel(false);
    let mut cluster_task = None;
    if let Some(cluster) = cluster {
        println!(
            "palisade: rate limits and group spend shared through {}",
            cluster.url
        );
        cluster_task = Some(tokio::spawn(palisade_gateway::cluster::run(
            manager.shared().accounting.clone(),
            cluster,
            cluster_stopped,
        )));
    }
    tokio::spawn(palisade_admin::webhooks::deliver_alerts(state.clone()));
    println!("palisade: admin API listening on http://{local}");
    println!("palisade: web console at http://{local}/");

    #[cfg(unix)]
    if let Some(path) = args.config.clone() {
        let st = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let outcome = apply_config(&st, &path).await;
                // A reload that did not apply whole is in the audit log too, not only on stderr.
                if let Err(e) = &outcome {
                    let action = match e {
                        ConfigError::Refused(_) => "config.reload_refused",
                        ConfigError::Partial(_) => "config.reload_partial",
                    };
                    let _ = st
                        .store
                        .record_event(
                            Actor::system("config"),
                            action,
                            "config",
                            &path.display().to_string(),
                            Some(serde_json::json!({"error": format!("{e:#}")})),
                        )
                        .await;
                }
                match outcome {
                    Ok(()) => tracing::info!("config reloaded"),
                    Err(e @ ConfigError::Refused(_)) => tracing::error!(
                        error = %e,
                        "config reload refused; previous configuration keeps serving"
                    ),
                    Err(e @ ConfigError::Partial(_)) => tracing::error!(
                        error = %e,
                        "config reload failed part-way; fix the file and send SIGHUP again"
                    ),
                }
            }
        });
    }

    // On SIGTERM or Ctrl-C the admin API and the proxies stop taking connections together and
    // drain. The admin API's open connections get a few seconds: a console's live event stream
    // never ends by itself, and must not hold the proxies open.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut admin = tokio::spawn(palisade_admin::serve(listener, state, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    // Start-up ran code and read constants that serving never touches again (~13 MiB of the
    // binary's pages stayed resident): they are dropped now, and once more when the background
    // workers' first rounds are done; what serving runs maps back in.
    release_startup_pages();
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        release_startup_pages();
    });
    let admin_ended = tokio::select! {
        () = shutdown_signal() => None,
        ended = &mut admin => Some(ended),
    };
    let _ = stop_tx.send(true);
    tracing::info!("shutting down: draining proxies (a second signal cuts what is in flight)");
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second signal: requests still in flight are answered 503 now");
        palisade_gateway::hurry();
    });
    manager.stop_all().await;
    // The spend charged since the last exchange reaches the other nodes.
    if let Some(task) = cluster_task {
        let _ = cluster_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("shared counters: the last exchange with Redis did not finish");
        }
    }
    let admin_ended = match admin_ended {
        Some(ended) => ended,
        None => match tokio::time::timeout(ADMIN_DRAIN, &mut admin).await {
            Ok(ended) => ended,
            Err(_) => {
                admin.abort();
                Ok(Ok(()))
            }
        },
    };
    writer.close().await;
    for o in otlp.iter() {
        o.close(Duration::from_secs(5)).await;
    }
    tracing::info!("request log flushed; bye");
    admin_ended.context("admin API task failed")??;
    Ok(())
}

/// Drops the resident pages of the binary's code and constants (see
/// [`palisade_policy::release_binary_pages`]).
fn release_startup_pages() {
    let released = palisade_policy::release_binary_pages();
    tracing::debug!(
        mappings = released.mappings,
        bytes = released.bytes,
        "pages of the binary given back"
    );
}

/// What the check value seals.
const KEY_CHECK: &str = "palisade master key check";

/// Refuses a master key other than the one the database's secrets were sealed with (a wrong
/// `PALISADE_MASTER_KEY`): the database keeps a value sealed with its key, written at its first
/// start (or the first start of a version that writes it).
async fn check_master_key(store: &Store, master: &MasterKey) -> anyhow::Result<()> {
    let db = store.path().display().to_string();
    match store.setting("master_key_check").await? {
        Some(sealed) if master.open(&sealed).is_ok_and(|v| v == KEY_CHECK) => Ok(()),
        Some(_) => anyhow::bail!(
            "the master key (PALISADE_MASTER_KEY or master.key) is not the one {db} was made \
             with: its stored secrets cannot be read with it"
        ),
        None => {
            store
                .set_setting("master_key_check", &master.seal(KEY_CHECK))
                .await
                .with_context(|| format!("cannot write {db}"))?;
            Ok(())
        }
    }
}

/// A start-up step that failed on what the database holds, naming the database (the admin
/// API's errors keep details for the log).
fn stored(db: &Path, e: palisade_admin::ApiError) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot load what {} holds: {} (details in the log above)",
        db.display(),
        e.message
    )
}

/// How long the admin API's open connections may take to finish once shutdown began.
const ADMIN_DRAIN: Duration = Duration::from_secs(5);
