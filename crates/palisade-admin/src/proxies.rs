//! Proxy management: the service operations (shared by the API and the config file) and handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::model::{McpTransport, ProxySpec};
use palisade_gateway::{ProxyRuntime, ProxyStatus};
use palisade_store::{Actor, ProxyRow, SealedUpdate};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{SecretChange, ValidJson, ValidQuery, parse, take_secret};

/// A proxy as the API shows it: its spec, whether it holds an upstream key, and its run state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProxyView {
    /// Configuration.
    #[serde(flatten)]
    pub spec: ProxySpec,
    /// Whether an upstream credential is stored (it is never shown).
    pub has_upstream_key: bool,
    /// `running`, `stopped` or `failed`.
    pub status: &'static str,
    /// Address actually bound while running.
    pub bound_addr: Option<String>,
    /// Why the last start failed.
    pub error: Option<String>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

/// Body of create/update: the proxy fields plus an optional `upstream_key`
/// (on update: absent keeps the stored key, `""` removes it).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ProxyInput {
    #[serde(flatten)]
    spec: ProxySpec,
    /// Provider credential injected upstream; stored encrypted, never returned.
    upstream_key: Option<String>,
}

impl AppState {
    async fn view(&self, row: ProxyRow) -> ProxyView {
        let (status, bound_addr, error) = match self.manager.status(&row.spec.name).await {
            ProxyStatus::Running(a) => ("running", Some(a.to_string()), None),
            ProxyStatus::Stopped => ("stopped", None, None),
            ProxyStatus::Failed(e) => ("failed", None, Some(e)),
        };
        ProxyView {
            has_upstream_key: row.upstream_key_sealed.is_some(),
            spec: row.spec,
            status,
            bound_addr,
            error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    /// Compiles a proxy's runtime: decrypted upstream key and compiled policies.
    pub(crate) async fn runtime(
        &self,
        spec: &ProxySpec,
        sealed: Option<&str>,
    ) -> ApiResult<ProxyRuntime> {
        let key = sealed
            .map(|s| self.master.open(s))
            .transpose()
            .map_err(ApiError::internal)?;
        let policies = self.compile_policies(&spec.policies).await?;
        ProxyRuntime::new(spec.clone(), key.as_deref(), policies)
            .map_err(|e| ApiError::field("upstream_key", e.to_string()))
    }

    async fn get_row(&self, name: &str) -> ApiResult<ProxyRow> {
        self.store
            .get_proxy(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("proxy `{name}`")))
    }

    /// Creates a proxy. An enabled proxy's listener is bound before anything is stored, so a
    /// taken port is an error that leaves no trace.
    pub async fn create_proxy(
        &self,
        spec: ProxySpec,
        key: Option<String>,
        actor: Actor,
    ) -> ApiResult<ProxyView> {
        spec.validate()?;
        self.check_listen(&spec.listen)?;
        self.check_provider_of(&spec).await?;
        let _turn = crate::policies::policy_change_turn().await;
        if self.store.get_proxy(&spec.name).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "proxy `{}` already exists",
                spec.name
            )));
        }
        let sealed = key.filter(|k| !k.is_empty()).map(|k| self.master.seal(&k));
        let rt = self.runtime(&spec, sealed.as_deref()).await?;
        if spec.enabled {
            self.manager
                .start(rt)
                .await
                .map_err(|e| ApiError::conflict(e.to_string()))?;
        }
        match self.store.create_proxy(spec.clone(), sealed, actor).await {
            Ok(row) => Ok(self.view(row).await),
            Err(e) => {
                self.manager.stop(&spec.name).await;
                Err(e.into())
            }
        }
    }

    /// Replaces a proxy's configuration and brings the running listener in line with it.
    pub async fn update_proxy(
        &self,
        spec: ProxySpec,
        key: SecretChange,
        actor: Actor,
    ) -> ApiResult<ProxyView> {
        spec.validate()?;
        self.check_listen(&spec.listen)?;
        self.check_provider_of(&spec).await?;
        let _turn = crate::policies::policy_change_turn().await;
        let current = self.get_row(&spec.name).await?;
        let (sealed, upd) = match key {
            SecretChange::Keep => (current.upstream_key_sealed.clone(), SealedUpdate::Keep),
            SecretChange::Clear => (None, SealedUpdate::Clear),
            SecretChange::Set(k) => {
                let s = self.master.seal(&k);
                (Some(s.clone()), SealedUpdate::Set(s))
            }
        };
        if current.spec == spec && matches!(upd, SealedUpdate::Keep) {
            return Ok(self.view(current).await);
        }
        let rt = self.runtime(&spec, sealed.as_deref()).await?;
        let running = matches!(
            self.manager.status(&spec.name).await,
            ProxyStatus::Running(_)
        );
        match (spec.enabled, running) {
            (true, true) => self.manager.reconfigure(rt).await,
            (true, false) => self.manager.start(rt).await.map(|_| ()),
            (false, true) => {
                self.manager.stop(&spec.name).await;
                Ok(())
            }
            (false, false) => Ok(()),
        }
        .map_err(|e| ApiError::conflict(e.to_string()))?;
        let stored = self
            .store
            .update_proxy(spec, upd, "proxy.update", actor)
            .await;
        let (_, after) = self.stored_or_restored(stored, &current, running).await?;
        // Signed in one way, a user keeps no grant once the proxy signs users in another.
        if current.spec.oauth_provider != after.spec.oauth_provider
            || (current.spec.oauth && !after.spec.oauth)
        {
            self.end_proxy_sign_ins(&after.spec.name).await?;
        }
        Ok(self.view(after).await)
    }

    /// A change the store refused (a busy or full database) leaves no trace: the running proxy
    /// goes back to the configuration and run state the store still holds, so what serves
    /// traffic is what the audit log says.
    async fn stored_or_restored<T>(
        &self,
        stored: Result<T, palisade_store::StoreError>,
        before: &ProxyRow,
        was_running: bool,
    ) -> ApiResult<T> {
        let e = match stored {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let name = &before.spec.name;
        let running = matches!(self.manager.status(name).await, ProxyStatus::Running(_));
        let restored = match self
            .runtime(&before.spec, before.upstream_key_sealed.as_deref())
            .await
        {
            Ok(rt) => match (was_running, running) {
                (true, true) => self.manager.reconfigure(rt).await,
                (true, false) => self.manager.start(rt).await.map(|_| ()),
                (false, true) => {
                    self.manager.stop(name).await;
                    Ok(())
                }
                (false, false) => Ok(()),
            }
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.message),
        };
        if let Err(r) = restored {
            tracing::error!(proxy = %name, error = %r, "a change the database refused could not be undone on the running proxy");
        }
        Err(e.into())
    }

    /// Creates or updates a proxy from the config file. `keep_run_state`: the file does not say
    /// `enabled`, so an existing proxy keeps the run state an administrator gave it (a proxy
    /// stopped during an incident is not restarted by an unrelated reload).
    pub async fn apply_proxy(
        &self,
        mut spec: ProxySpec,
        key: Option<String>,
        keep_run_state: bool,
        actor: Actor,
    ) -> ApiResult<ProxyView> {
        match self.store.get_proxy(&spec.name).await? {
            None => self.create_proxy(spec, key, actor).await,
            Some(row) => {
                if keep_run_state {
                    spec.enabled = row.spec.enabled;
                }
                let change = match key {
                    None => SecretChange::Clear,
                    Some(k) => {
                        let same = row
                            .upstream_key_sealed
                            .as_deref()
                            .and_then(|s| self.master.open(s).ok())
                            .as_deref()
                            == Some(k.as_str());
                        if same {
                            SecretChange::Keep
                        } else {
                            SecretChange::Set(k)
                        }
                    }
                };
                let change = match (&change, &row.upstream_key_sealed) {
                    (SecretChange::Clear, None) => SecretChange::Keep,
                    _ => change,
                };
                self.update_proxy(spec, change, actor).await
            }
        }
    }

    async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        action: &'static str,
        actor: Actor,
    ) -> ApiResult<ProxyView> {
        let _turn = crate::policies::policy_change_turn().await;
        let row = self.get_row(name).await?;
        // A running proxy started again, a stopped one stopped again: nothing changes, nothing
        // is audited. (Starting a proxy that failed to bind tries again.)
        let running = matches!(self.manager.status(name).await, ProxyStatus::Running(_));
        if row.spec.enabled == enabled && running == enabled {
            return Ok(self.view(row).await);
        }
        if enabled {
            let rt = self
                .runtime(&row.spec, row.upstream_key_sealed.as_deref())
                .await?;
            self.manager
                .start(rt)
                .await
                .map_err(|e| ApiError::conflict(e.to_string()))?;
        } else {
            self.manager.stop(name).await;
        }
        let spec = ProxySpec {
            enabled,
            ..row.spec.clone()
        };
        let stored = self
            .store
            .update_proxy(spec, SealedUpdate::Keep, action, actor)
            .await;
        let (_, after) = self.stored_or_restored(stored, &row, running).await?;
        Ok(self.view(after).await)
    }

    /// Starts every enabled proxy (at process start). Failures are reported per proxy.
    pub async fn boot_proxies(&self) -> Result<Vec<(String, Result<String, String>)>, ApiError> {
        let mut out = Vec::new();
        for row in self.store.list_proxies().await? {
            if !row.spec.enabled {
                continue;
            }
            let name = row.spec.name.clone();
            let res = match self
                .runtime(&row.spec, row.upstream_key_sealed.as_deref())
                .await
            {
                Ok(rt) => self
                    .manager
                    .start(rt)
                    .await
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.message),
            };
            out.push((name, res));
        }
        Ok(out)
    }
}

/// List proxies.
#[utoipa::path(get, path = "/api/v1/proxies", tag = "proxies", security(("bearer" = [])),
    responses((status = 200, body = [ProxyView]), (status = 401, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<ProxyView>>> {
    let mut out = Vec::new();
    for row in s.store.list_proxies().await? {
        out.push(s.view(row).await);
    }
    Ok(Json(out))
}

/// Get one proxy.
#[utoipa::path(get, path = "/api/v1/proxies/{name}", tag = "proxies", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = ProxyView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    _v: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyView>> {
    let row = s.get_row(&name).await?;
    Ok(Json(s.view(row).await))
}

/// What a stdio proxy runs on the gateway host.
fn launch(spec: &ProxySpec) -> Option<impl PartialEq + '_> {
    (spec.transport == McpTransport::Stdio).then_some((
        &spec.command,
        &spec.env,
        &spec.inherit_env,
        &spec.cwd,
    ))
}

/// Programs run on the gateway host come from the config file only: the API may start, stop and
/// retune a stdio proxy, but not create one or change what it runs, so an admin session (or a
/// stolen one) cannot turn into command execution on the host.
fn check_launch(before: Option<&ProxySpec>, after: &ProxySpec) -> ApiResult<()> {
    let Some(new) = launch(after) else {
        return Ok(());
    };
    if before.and_then(launch).is_some_and(|old| old == new) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "stdio MCP servers run programs on the gateway host: declare them in the config file \
         (transport, command, env, inherit_env and cwd cannot be set through the API)",
    ))
}

/// Create a proxy (started at once when `enabled`, the default).
#[utoipa::path(post, path = "/api/v1/proxies", tag = "proxies", security(("bearer" = [])), request_body = ProxyInput,
    responses((status = 201, body = ProxyView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<(StatusCode, Json<ProxyView>)> {
    let key = match take_secret(&mut body, "upstream_key")? {
        SecretChange::Set(k) => Some(k),
        _ => None,
    };
    let spec: ProxySpec = parse(body.to_string().as_bytes())?;
    check_launch(None, &spec)?;
    s.check_groups_exist("allowed_groups", &spec.allowed_groups, None)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_proxy(spec, key, u.actor()).await?),
    ))
}

/// Replace a proxy's configuration (omitted optional fields take their defaults).
#[utoipa::path(put, path = "/api/v1/proxies/{name}", tag = "proxies", security(("bearer" = [])), request_body = ProxyInput,
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = ProxyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replace(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<Json<ProxyView>> {
    let key = take_secret(&mut body, "upstream_key")?;
    if let Value::Object(m) = &mut body {
        let named = m
            .entry("name")
            .or_insert_with(|| Value::String(name.clone()));
        if named.as_str() != Some(name.as_str()) {
            return Err(ApiError::field(
                "name",
                "cannot be changed; create a new proxy instead",
            ));
        }
    }
    let spec: ProxySpec = parse(body.to_string().as_bytes())?;
    let before = s.store.get_proxy(&name).await?;
    check_launch(before.as_ref().map(|r| &r.spec), &spec)?;
    let kept = before.as_ref().map(|r| r.spec.allowed_groups.as_slice());
    s.check_groups_exist("allowed_groups", &spec.allowed_groups, kept)
        .await?;
    if let Some(row) = &before {
        check_key_destination(row, &spec, &key)?;
    }
    Ok(Json(s.update_proxy(spec, key, u.actor()).await?))
}

/// Change some fields of a proxy.
#[utoipa::path(patch, path = "/api/v1/proxies/{name}", tag = "proxies", security(("bearer" = [])), request_body = Object,
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = ProxyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<Json<ProxyView>> {
    let key = take_secret(&mut body, "upstream_key")?;
    let row = s.get_row(&name).await?;
    let mut merged = serde_json::to_value(&row.spec).map_err(ApiError::internal)?;
    if let (Value::Object(m), Value::Object(p)) = (&mut merged, body) {
        for (k, v) in p {
            m.insert(k, v);
        }
    }
    if merged.get("name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(ApiError::field(
            "name",
            "cannot be changed; create a new proxy instead",
        ));
    }
    let spec: ProxySpec = crate::json::from_value(merged)?;
    check_launch(Some(&row.spec), &spec)?;
    let kept = Some(row.spec.allowed_groups.as_slice());
    s.check_groups_exist("allowed_groups", &spec.allowed_groups, kept)
        .await?;
    check_key_destination(&row, &spec, &key)?;
    Ok(Json(s.update_proxy(spec, key, u.actor()).await?))
}

/// A stored upstream key is write-only: it may not follow the proxy to another server. An
/// update that moves the upstream to another origin (scheme, host or port) must give the key
/// again (`upstream_key`, or `""` for none); otherwise anyone holding an admin token could
/// point the proxy at a server of theirs and read the provider's key from its requests.
fn check_key_destination(row: &ProxyRow, spec: &ProxySpec, key: &SecretChange) -> ApiResult<()> {
    if !matches!(key, SecretChange::Keep)
        || row.upstream_key_sealed.is_none()
        || same_origin(&row.spec.upstream, &spec.upstream)
    {
        return Ok(());
    }
    Err(ApiError::field(
        "upstream_key",
        "the upstream moves to another server and the stored upstream key is not sent there unasked; give `upstream_key` again (or \"\" to send none)",
    ))
}

/// Whether two upstream URLs name the same origin (scheme, host, port; ports made explicit).
fn same_origin(a: &str, b: &str) -> bool {
    fn origin(u: &str) -> Option<(String, String, u16)> {
        let uri: axum::http::Uri = u.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some((scheme, uri.host()?.to_ascii_lowercase(), port))
    }
    match (origin(a), origin(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Delete a proxy (stopped first; in-flight requests finish).
#[utoipa::path(delete, path = "/api/v1/proxies/{name}", tag = "proxies", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    // In turn with starts, updates and reloads: one of them between the stop and the delete
    // would start the proxy again, and its listener would outlive its row.
    let _turn = crate::policies::policy_change_turn().await;
    s.get_row(&name).await?;
    s.manager.stop(&name).await;
    s.store.delete_proxy(&name, u.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a proxy.
#[utoipa::path(post, path = "/api/v1/proxies/{name}/start", tag = "proxies", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = ProxyView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyView>> {
    Ok(Json(
        s.set_enabled(&name, true, "proxy.start", u.actor()).await?,
    ))
}

/// Stop a proxy: it stops accepting connections at once; in-flight requests finish.
#[utoipa::path(post, path = "/api/v1/proxies/{name}/stop", tag = "proxies", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = ProxyView), (status = 404, body = ErrorBody)))]
pub async fn stop(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyView>> {
    Ok(Json(
        s.set_enabled(&name, false, "proxy.stop", u.actor()).await?,
    ))
}

/// Restart a proxy (drain, rebind).
#[utoipa::path(post, path = "/api/v1/proxies/{name}/restart", tag = "proxies", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = ProxyView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restart(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ProxyView>> {
    let _turn = crate::policies::policy_change_turn().await;
    let row = s.get_row(&name).await?;
    let rt = s
        .runtime(&row.spec, row.upstream_key_sealed.as_deref())
        .await?;
    let running = matches!(s.manager.status(&name).await, ProxyStatus::Running(_));
    s.manager.stop(&name).await;
    s.manager
        .start(rt)
        .await
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    let spec = ProxySpec {
        enabled: true,
        ..row.spec.clone()
    };
    let stored = s
        .store
        .update_proxy(spec, SealedUpdate::Keep, "proxy.restart", u.actor())
        .await;
    let (_, after) = s.stored_or_restored(stored, &row, running).await?;
    Ok(Json(s.view(after).await))
}

#[cfg(test)]
mod origin_tests {
    use super::same_origin;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert!(same_origin(
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/"
        ));
        assert!(same_origin(
            "https://API.example.com",
            "https://api.example.com:443/v1"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9001"
        ));
        assert!(!same_origin("http://a.example", "https://a.example"));
        assert!(!same_origin("http://a.example", "http://b.example"));
    }
}

/// Query of [`agent_card`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardQuery {
    /// Ask the agent now instead of showing a card fetched in the last 15 s (admins only).
    #[serde(default)]
    pub refresh: bool,
}

/// A running A2A proxy's agent card, fetched from the agent with the proxy's credential, with
/// what the proxy's rules find in it (its skills are what a calling model reads). A card
/// fetched in the last 15 s is shown again (fetches happen one at a time); an admin may ask for
/// a fresh one with `?refresh=true`.
#[utoipa::path(get, path = "/api/v1/proxies/{name}/agent-card", tag = "proxies", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name"),
        ("refresh" = Option<bool>, Query, description = "Fetch now (admins only)")),
    responses((status = 200, description = "`card`, `findings`, `blocked`", body = Object),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn agent_card(
    State(s): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
    ValidQuery(q): ValidQuery<CardQuery>,
) -> ApiResult<Json<palisade_gateway::a2a::CardView>> {
    if q.refresh && v.0.role != "admin" {
        return Err(ApiError::forbidden(
            "only an admin can have the agent asked now (`refresh`)",
        ));
    }
    match s.manager.agent_card(&name, q.refresh).await {
        None => Err(ApiError::not_found(format!("running A2A proxy `{name}`"))),
        Some(Err(e)) => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "agent_unavailable",
            e,
        )),
        Some(Ok(v)) => Ok(Json(v)),
    }
}
