//! Groups (teams) and gateway API keys.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::crypto::{generate_api_key, hash_api_key, key_display_prefix};
use palisade_core::identity::KeyIndex;
use palisade_core::model::validate_name;
use palisade_store::{Actor, ApiKeyRow, GroupRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ValidJson;

impl AppState {
    /// Rebuilds the data plane's key index from the store; called after every key change so a
    /// revoked key is refused by the very next request on every proxy.
    pub async fn reload_keys(&self) -> ApiResult<()> {
        let keys = self.store.active_keys().await?;
        self.manager
            .shared()
            .keys
            .store(Arc::new(KeyIndex::new(keys)));
        Ok(())
    }

    /// Creates (or with `upsert`, updates) a group.
    pub async fn put_group(
        &self,
        name: &str,
        description: &str,
        upsert: bool,
        actor: Actor,
    ) -> ApiResult<GroupRow> {
        validate_name("name", name)?;
        if description.len() > 1024 {
            return Err(ApiError::field("description", "must be at most 1024 bytes"));
        }
        Ok(self
            .store
            .put_group(name, description, upsert, actor)
            .await?)
    }

    /// Stores a key given in full (config files); replaces the digest of a same-named key.
    pub async fn put_fixed_key(
        &self,
        name: &str,
        group: Option<String>,
        key: &str,
        actor: Actor,
    ) -> ApiResult<ApiKeyRow> {
        validate_name("name", name)?;
        if key.len() < 20 {
            return Err(ApiError::field("key", "must be at least 20 characters"));
        }
        let row = self
            .store
            .put_key(
                name,
                group,
                hash_api_key(key),
                key_display_prefix(key),
                "config",
                None,
                true,
                actor,
            )
            .await?;
        self.reload_keys().await?;
        Ok(row)
    }
}

/// Group creation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// List groups.
#[utoipa::path(get, path = "/api/v1/groups", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = [GroupRow]), (status = 401, body = ErrorBody)))]
pub async fn list_groups(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<GroupRow>>> {
    Ok(Json(s.store.list_groups().await?))
}

/// Create a group.
#[utoipa::path(post, path = "/api/v1/groups", tag = "identity", security(("bearer" = [])), request_body = GroupInput,
    responses((status = 201, body = GroupRow), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_group(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(g): ValidJson<GroupInput>,
) -> ApiResult<(StatusCode, Json<GroupRow>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.put_group(&g.name, &g.description, false, u.actor())
                .await?,
        ),
    ))
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
    Ok(StatusCode::NO_CONTENT)
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
    let key = generate_api_key();
    let record = s
        .store
        .put_key(
            &k.name,
            k.group,
            hash_api_key(&key),
            key_display_prefix(&key),
            "api",
            k.expires_at,
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
    s.reload_keys().await?;
    Ok(Json(row))
}
