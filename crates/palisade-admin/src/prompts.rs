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

    /// The groups and proxies a prompt sent to the API names exist (those it adds to the
    /// stored prompt `before`).
    async fn check_prompt_names(
        &self,
        p: &PromptSpec,
        before: Option<&PromptSpec>,
    ) -> ApiResult<()> {
        let groups = before.map(|b| b.groups.as_slice());
        self.check_groups_exist("groups", &p.groups, groups).await?;
        let proxies = before.map(|b| b.proxies.as_slice());
        self.check_proxies_exist("proxies", &p.proxies, proxies)
            .await
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
    s.check_prompt_names(&p, None).await?;
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
    let prompts = s.store.list_prompts().await?;
    let Some(before) = prompts.iter().find(|x| x.name == name) else {
        return Err(ApiError::not_found(format!("prompt `{name}`")));
    };
    s.check_prompt_names(&p, Some(before)).await?;
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
