//! Governance prompts: CRUD, applied to the data plane at once.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::model::PromptSpec;
use palisade_store::Actor;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ValidJson;

impl AppState {
    /// Reloads prompts into the data plane.
    pub async fn reload_prompts(&self) -> ApiResult<()> {
        let prompts = self.store.list_prompts().await?;
        self.manager.shared().prompts.store(Arc::new(prompts));
        Ok(())
    }

    /// Creates or replaces a prompt and applies it.
    pub async fn put_prompt(
        &self,
        spec: PromptSpec,
        upsert: bool,
        actor: Actor,
    ) -> ApiResult<PromptSpec> {
        spec.validate()?;
        self.store.put_prompt(spec.clone(), upsert, actor).await?;
        self.reload_prompts().await?;
        Ok(spec)
    }
}

/// List governance prompts.
#[utoipa::path(get, path = "/api/v1/prompts", tag = "prompts", security(("bearer" = [])),
    responses((status = 200, body = [PromptSpec]), (status = 401, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<PromptSpec>>> {
    Ok(Json(s.store.list_prompts().await?))
}

/// Create a governance prompt.
#[utoipa::path(post, path = "/api/v1/prompts", tag = "prompts", security(("bearer" = [])), request_body = PromptSpec,
    responses((status = 201, body = PromptSpec), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(p): ValidJson<PromptSpec>,
) -> ApiResult<(StatusCode, Json<PromptSpec>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.put_prompt(p, false, u.actor()).await?),
    ))
}

/// Replace a governance prompt.
#[utoipa::path(put, path = "/api/v1/prompts/{name}", tag = "prompts", security(("bearer" = [])), request_body = PromptSpec,
    params(("name" = String, Path, description = "Prompt name")),
    responses((status = 200, body = PromptSpec), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replace(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(p): ValidJson<PromptSpec>,
) -> ApiResult<Json<PromptSpec>> {
    if p.name != name {
        return Err(ApiError::field("name", "must match the path"));
    }
    if !s.store.list_prompts().await?.iter().any(|x| x.name == name) {
        return Err(ApiError::not_found(format!("prompt `{name}`")));
    }
    Ok(Json(s.put_prompt(p, true, u.actor()).await?))
}

/// Delete a governance prompt.
#[utoipa::path(delete, path = "/api/v1/prompts/{name}", tag = "prompts", security(("bearer" = [])),
    params(("name" = String, Path, description = "Prompt name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_prompt(&name, u.actor()).await?;
    s.reload_prompts().await?;
    Ok(StatusCode::NO_CONTENT)
}
