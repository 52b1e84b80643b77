//! Groups (teams) with budgets and limits, gateway API keys, prices and usage.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::crypto::{generate_api_key, hash_api_key, key_display_prefix};
use palisade_core::identity::KeyIndex;
use palisade_core::model::validate_name;
use palisade_core::spend::{GroupSpec, Price, PriceTable};
use palisade_store::{Actor, ApiKeyRow, BudgetStatus, GroupRow, KeyOptions, UsageQuery, UsageRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{ValidJson, ValidQuery, parse};

impl AppState {
    fn now(&self) -> i64 {
        (self.manager.shared().accounting.clock)()
    }

    /// Rebuilds the data plane's key index from the store; called after every key or group
    /// change so a revoked key is refused by the very next request on every proxy.
    pub async fn reload_keys(&self) -> ApiResult<()> {
        self.reload_keys_revoking(None).await
    }

    /// [`Self::reload_keys`] after the key named `revoked` was revoked in the store: it leaves
    /// the data plane's index first, so a failure to read the store again (answered 500) does
    /// not leave it usable.
    async fn reload_keys_revoking(&self, revoked: Option<&str>) -> ApiResult<()> {
        // One reload at a time, each reading the store after the one before it swapped: a
        // reload that read before a revocation cannot swap its older index in after the
        // revocation's own reload.
        static RELOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = RELOADING.lock().await;
        let shared = self.manager.shared();
        if let Some(name) = revoked {
            shared.set_keys(Arc::new(shared.keys.load().without(name)));
        }
        shared.set_keys(Arc::new(KeyIndex::new(self.store.active_keys().await?)));
        Ok(())
    }

    /// Reloads groups (budgets, limits) into the data plane, and the keys that inherit limits.
    pub async fn reload_groups(&self) -> ApiResult<()> {
        let groups: HashMap<String, GroupSpec> = self
            .store
            .list_groups()
            .await?
            .into_iter()
            .map(|g| (g.spec.name.clone(), g.spec))
            .collect();
        self.manager
            .shared()
            .accounting
            .groups
            .store(Arc::new(groups));
        self.reload_keys().await
    }

    /// Reloads the price table into the data plane.
    pub async fn reload_prices(&self) -> ApiResult<()> {
        let prices = self.store.list_prices().await?;
        self.manager
            .shared()
            .accounting
            .prices
            .store(Arc::new(PriceTable::new(prices)));
        Ok(())
    }

    /// Loads each group's spend this month from the request log (at start).
    pub async fn seed_spend(&self) -> ApiResult<()> {
        let now = self.now();
        for (group, nano) in self.store.month_spend(now).await? {
            let row = self.store.group(&group).await?;
            let reset_at = row.as_ref().and_then(|g| g.budget_reset_at).unwrap_or(0);
            let budget = row.as_ref().and_then(|g| {
                g.spec
                    .budget_nano()
                    .map(|limit| (limit, g.spec.budget_warn_percent))
            });
            self.manager
                .shared()
                .accounting
                .spend
                .set(&group, nano, reset_at, now, budget);
        }
        Ok(())
    }

    /// Creates (or with `upsert`, replaces) a group and applies it to the data plane.
    pub async fn put_group(
        &self,
        spec: GroupSpec,
        upsert: bool,
        actor: Actor,
    ) -> ApiResult<GroupRow> {
        spec.validate()?;
        let row = self.store.put_group(spec, upsert, actor).await?;
        self.reload_groups().await?;
        Ok(row)
    }

    /// Stores a key given in full (config files); replaces the digest of a same-named key.
    pub async fn put_fixed_key(
        &self,
        name: &str,
        group: Option<String>,
        key: &str,
        opts: KeyOptions,
        actor: Actor,
    ) -> ApiResult<ApiKeyRow> {
        validate_name("name", name)?;
        if key.len() < 20 {
            return Err(ApiError::field("key", "must be at least 20 characters"));
        }
        validate_key_options(&opts)?;
        let row = self
            .store
            .put_key(
                name,
                group,
                hash_api_key(key),
                key_display_prefix(key),
                "config",
                opts,
                true,
                actor,
            )
            .await?;
        self.reload_keys().await?;
        Ok(row)
    }

    /// Sets a price and applies it.
    pub async fn put_price(&self, p: Price, source: &'static str, actor: Actor) -> ApiResult<()> {
        p.validate()?;
        self.store.put_price(p, source, actor).await?;
        self.reload_prices().await
    }
}

/// Checks a key's scope and limits (the API and config files alike).
pub fn validate_key_options(o: &KeyOptions) -> ApiResult<()> {
    for (i, p) in o.allowed_proxies.iter().enumerate() {
        validate_name(&format!("allowed_proxies[{i}]"), p)?;
        if o.allowed_proxies[..i].contains(p) {
            return Err(ApiError::field(
                format!("allowed_proxies[{i}]"),
                format!("`{p}` is listed twice"),
            ));
        }
    }
    if !o
        .allowed_models
        .iter()
        .all(|m| palisade_core::spend::is_model_name(m))
    {
        return Err(ApiError::field(
            "allowed_models",
            "entries must be 1-200 characters, without spaces or control characters",
        ));
    }
    if o.rpm == Some(0) || o.tpm == Some(0) {
        return Err(ApiError::field(
            if o.rpm == Some(0) { "rpm" } else { "tpm" },
            "must be at least 1",
        ));
    }
    Ok(())
}

/// List groups.
#[utoipa::path(get, path = "/api/v1/groups", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = [GroupRow]), (status = 401, body = ErrorBody)))]
pub async fn list_groups(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<GroupRow>>> {
    Ok(Json(s.store.list_groups().await?))
}

/// Create a group, with optional budget and rate limits.
#[utoipa::path(post, path = "/api/v1/groups", tag = "identity", security(("bearer" = [])), request_body = GroupSpec,
    responses((status = 201, body = GroupRow), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(g): ValidJson<GroupSpec>,
) -> ApiResult<(StatusCode, Json<GroupRow>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.put_group(g, false, u.actor()).await?),
    ))
}

/// Get a group.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "identity", security(("bearer" = [])),
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupRow), (status = 404, body = ErrorBody)))]
pub async fn get_group(
    State(s): State<AppState>,
    _v: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<GroupRow>> {
    Ok(Json(s.store.group(&name).await?.ok_or_else(|| {
        ApiError::not_found(format!("group `{name}`"))
    })?))
}

/// Change some fields of a group (budget, limits, description).
#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "identity", security(("bearer" = [])), request_body = Object,
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_group(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(body): ValidJson<Value>,
) -> ApiResult<Json<GroupRow>> {
    let row = s
        .store
        .group(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group `{name}`")))?;
    let mut merged = serde_json::to_value(&row.spec).map_err(ApiError::internal)?;
    let (Value::Object(m), Value::Object(p)) = (&mut merged, body) else {
        return Err(ApiError::bad_request("body must be a JSON object"));
    };
    for (k, v) in p {
        m.insert(k, v);
    }
    if merged.get("name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(ApiError::field("name", "cannot be changed"));
    }
    let spec: GroupSpec = crate::json::from_value(merged)?;
    Ok(Json(s.put_group(spec, true, u.actor()).await?))
}

/// Delete a group that has no keys.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "identity", security(("bearer" = [])),
    params(("name" = String, Path, description = "Group name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_group(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_group(&name, u.actor()).await?;
    s.reload_groups().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Live spend and remaining budget of a group this month.
#[utoipa::path(get, path = "/api/v1/groups/{name}/budget", tag = "identity", security(("bearer" = [])),
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = BudgetStatus), (status = 404, body = ErrorBody)))]
pub async fn budget(
    State(s): State<AppState>,
    _v: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<BudgetStatus>> {
    let g = s
        .store
        .group(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group `{name}`")))?;
    let now = s.now();
    // The live figure the data plane enforces (includes requests not yet flushed to the log).
    let spent = s.manager.shared().accounting.spend.spent(&name, now);
    Ok(Json(palisade_store::budget_of(&g, spent, now)))
}

/// Reset a group's budget by hand: spend counts from now (audited).
#[utoipa::path(post, path = "/api/v1/groups/{name}/budget/reset", tag = "identity", security(("bearer" = [])),
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = BudgetStatus), (status = 404, body = ErrorBody)))]
pub async fn reset_budget(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<BudgetStatus>> {
    let now = s.now();
    s.store.reset_budget(&name, now, u.actor()).await?;
    s.manager.shared().accounting.spend.reset(&name, now);
    let g = s
        .store
        .group(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group `{name}`")))?;
    Ok(Json(palisade_store::budget_of(&g, 0, now)))
}

/// Key issuance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// Unique name.
    pub name: String,
    /// Owning group.
    pub group: Option<String>,
    /// Optional expiry, Unix ms (must be in the future).
    pub expires_at: Option<i64>,
    /// Proxies the key may use (empty: all).
    #[serde(default)]
    pub allowed_proxies: Vec<String>,
    /// Models the key may request (empty: all).
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Requests per minute (overrides the group's).
    pub rpm: Option<u32>,
    /// Tokens per minute (overrides the group's).
    pub tpm: Option<u32>,
}

/// A newly issued key: the only time the full key is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    /// The stored record.
    #[serde(flatten)]
    pub record: ApiKeyRow,
    /// The key itself. Store it now: only its hash is kept.
    pub key: String,
}

/// List keys (never the keys themselves).
#[utoipa::path(get, path = "/api/v1/keys", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = [ApiKeyRow]), (status = 401, body = ErrorBody)))]
pub async fn list_keys(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<ApiKeyRow>>> {
    Ok(Json(s.store.list_keys().await?))
}

/// Issue a key; the response shows it once.
#[utoipa::path(post, path = "/api/v1/keys", tag = "identity", security(("bearer" = [])), request_body = KeyInput,
    responses((status = 201, body = IssuedKey), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_key(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(k): ValidJson<KeyInput>,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    validate_name("name", &k.name)?;
    if k.expires_at.is_some_and(|e| e <= palisade_core::now_ms()) {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    let opts = KeyOptions {
        expires_at: k.expires_at,
        allowed_proxies: k.allowed_proxies,
        allowed_models: k.allowed_models,
        rpm: k.rpm,
        tpm: k.tpm,
    };
    validate_key_options(&opts)?;
    // A key scoped to a proxy that does not exist is a typo that would lock the key out.
    if !opts.allowed_proxies.is_empty() {
        let proxies = s.store.proxy_names().await?;
        if let Some((i, p)) = opts
            .allowed_proxies
            .iter()
            .enumerate()
            .find(|(_, p)| !proxies.contains(p))
        {
            return Err(ApiError::field(
                format!("allowed_proxies[{i}]"),
                format!("no proxy named `{p}`"),
            ));
        }
    }
    let key = generate_api_key();
    let record = s
        .store
        .put_key(
            &k.name,
            k.group,
            hash_api_key(&key),
            key_display_prefix(&key),
            "api",
            opts,
            false,
            u.actor(),
        )
        .await?;
    s.reload_keys().await?;
    Ok((StatusCode::CREATED, Json(IssuedKey { record, key })))
}

/// Revoke a key; every proxy refuses it from the next request on.
#[utoipa::path(delete, path = "/api/v1/keys/{name}", tag = "identity", security(("bearer" = [])),
    params(("name" = String, Path, description = "Key name")),
    responses((status = 200, body = ApiKeyRow), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ApiKeyRow>> {
    let row = s.store.revoke_key(&name, u.actor()).await?;
    s.reload_keys_revoking(Some(&name)).await?;
    Ok(Json(row))
}

/// The price table.
#[utoipa::path(get, path = "/api/v1/prices", tag = "spend", security(("bearer" = [])),
    responses((status = 200, body = [Price]), (status = 401, body = ErrorBody)))]
pub async fn list_prices(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<Price>>> {
    Ok(Json(s.store.list_prices().await?))
}

/// Set a model's price (USD per million tokens).
#[utoipa::path(put, path = "/api/v1/prices/{model}", tag = "spend", security(("bearer" = [])), request_body = Price,
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, body = Price), (status = 400, body = ErrorBody)))]
pub async fn put_price(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(model): Path<String>,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<Json<Price>> {
    if let Value::Object(m) = &mut body {
        let named = m
            .entry("model")
            .or_insert_with(|| Value::String(model.clone()));
        if named.as_str() != Some(model.as_str()) {
            return Err(ApiError::field("model", "must match the path"));
        }
    }
    let p: Price = parse(body.to_string().as_bytes())?;
    s.put_price(p.clone(), "api", u.actor()).await?;
    Ok(Json(p))
}

/// Remove a model's price (its requests are then recorded at cost 0 and flagged).
#[utoipa::path(delete, path = "/api/v1/prices/{model}", tag = "spend", security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_price(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(model): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_price(&model, u.actor()).await?;
    s.reload_prices().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Usage and cost by group, key, proxy, model or day (default: this month, by group).
#[utoipa::path(get, path = "/api/v1/usage", tag = "spend", security(("bearer" = [])), params(UsageQuery),
    responses((status = 200, body = [UsageRow]), (status = 400, body = ErrorBody)))]
pub async fn usage(
    State(s): State<AppState>,
    _v: Viewer,
    ValidQuery(q): ValidQuery<UsageQuery>,
) -> ApiResult<Json<Vec<UsageRow>>> {
    let now = s.now();
    s.store.usage(q, now).await.map(Json).map_err(|e| match e {
        palisade_store::StoreError::Conflict(m) => ApiError::field("group_by", m),
        other => other.into(),
    })
}
