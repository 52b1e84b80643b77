//! MCP tool inventory and approvals.

use axum::Json;
use axum::extract::{Path, State};
use palisade_core::model::ProxyKind;
use palisade_core::record::McpTool;
use palisade_store::ToolVersion;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::JsonBody;

impl AppState {
    /// Loads the stored tool inventory into the data plane (at start).
    pub async fn load_tools(&self) -> ApiResult<()> {
        self.manager
            .shared()
            .mcp
            .load(self.store.all_tools().await?);
        Ok(())
    }

    async fn mcp_proxy(&self, name: &str) -> ApiResult<()> {
        let row = self
            .store
            .get_proxy(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("proxy `{name}`")))?;
        if row.spec.kind != ProxyKind::Mcp {
            return Err(ApiError::bad_request(format!(
                "proxy `{name}` is not an MCP proxy"
            )));
        }
        Ok(())
    }
}

/// Tools an MCP proxy's upstream has offered, with approval status and findings.
#[utoipa::path(get, path = "/api/v1/proxies/{name}/tools", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name")),
    responses((status = 200, body = [McpTool]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    _v: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<McpTool>>> {
    s.mcp_proxy(&name).await?;
    Ok(Json(s.manager.shared().mcp.list(&name)))
}

async fn decide(
    s: &AppState,
    proxy: &str,
    tool: &str,
    status: &'static str,
    reviewed: Option<String>,
    actor: palisade_store::Actor,
) -> ApiResult<McpTool> {
    s.mcp_proxy(proxy).await?;
    // The decision is about the definition the gateway holds now: its save (queued when the
    // server listed it) is made first, so a listing just before cannot be decided in an older
    // form, nor land afterwards over the decision (saves older than the row are ignored).
    if let Some(current) = s.manager.shared().mcp.get(proxy, tool) {
        s.store.upsert_tool(current).await?;
    }
    let t = s
        .store
        .set_tool_status(proxy, tool, status, reviewed, actor)
        .await?;
    s.manager.shared().mcp.apply(t.clone());
    s.events.changed("tool", proxy);
    Ok(t)
}

/// What an administrator reviewed before approving (optional body of `approve`).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveInput {
    /// The fingerprint of the definition that was reviewed: the approval is refused (409) if the
    /// server has changed the tool since, so an approval never covers a definition nobody saw.
    pub fingerprint: Option<String>,
}

/// Approve a tool (pins its current definition); also re-enables a disabled or quarantined one.
/// With `{"fingerprint": …}` only if the tool's current definition is still that one.
#[utoipa::path(post, path = "/api/v1/proxies/{name}/tools/{tool}/approve", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name"), ("tool" = String, Path, description = "Tool name")),
    request_body(content = Option<ApproveInput>, description = "Optional: the fingerprint that was reviewed"),
    responses((status = 200, body = McpTool), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path((name, tool)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<McpTool>> {
    let input: ApproveInput = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveInput { fingerprint: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid approval: {e}")))?
    };
    s.mcp_proxy(&name).await?;
    let current = s
        .manager
        .shared()
        .mcp
        .list(&name)
        .into_iter()
        .find(|t| t.name == tool);
    // Two definitions under one name cannot be approved: clients may use either.
    if current
        .as_ref()
        .is_some_and(|t| palisade_gateway::mcp_tools::is_ambiguous(&t.definition))
    {
        return Err(ApiError::conflict(format!(
            "tool `{tool}` is listed more than once by its server; it can be approved once the server lists it once"
        )));
    }
    // A reviewed fingerprint is compared where the approval pins the definition (a listing
    // between a check here and the pin could otherwise slip in another definition).
    if input.fingerprint.is_some() && current.is_none() {
        return Err(ApiError::not_found(format!(
            "tool `{tool}` of proxy `{name}`"
        )));
    }
    Ok(Json(
        decide(&s, &name, &tool, "approved", input.fingerprint, u.actor()).await?,
    ))
}

/// Disable a tool: hidden from listings and refused.
#[utoipa::path(post, path = "/api/v1/proxies/{name}/tools/{tool}/disable", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name"), ("tool" = String, Path, description = "Tool name")),
    responses((status = 200, body = McpTool), (status = 404, body = ErrorBody)))]
pub async fn disable(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path((name, tool)): Path<(String, String)>,
) -> ApiResult<Json<McpTool>> {
    Ok(Json(
        decide(&s, &name, &tool, "disabled", None, u.actor()).await?,
    ))
}

/// Definitions a tool has had (newest first), for diffing.
#[utoipa::path(get, path = "/api/v1/proxies/{name}/tools/{tool}/history", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, description = "Proxy name"), ("tool" = String, Path, description = "Tool name")),
    responses((status = 200, body = [ToolVersion]), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(s): State<AppState>,
    _v: Viewer,
    Path((name, tool)): Path<(String, String)>,
) -> ApiResult<Json<Vec<ToolVersion>>> {
    s.mcp_proxy(&name).await?;
    Ok(Json(s.store.tool_history(&name, &tool).await?))
}
