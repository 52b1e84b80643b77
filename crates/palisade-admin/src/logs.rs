//! Read-only views: the request log and the audit log.

use axum::Json;
use axum::extract::State;
use palisade_store::{AuditEntry, AuditFilter, RequestFilter, RequestPage};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ValidQuery;

/// Search the request log (newest first).
#[utoipa::path(get, path = "/api/v1/requests", tag = "logs", security(("bearer" = [])), params(RequestFilter),
    responses((status = 200, body = RequestPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn requests(
    State(s): State<AppState>,
    _v: Viewer,
    ValidQuery(f): ValidQuery<RequestFilter>,
) -> ApiResult<Json<RequestPage>> {
    check_limit(f.limit)?;
    const DECISIONS: [&str; 6] = ["allow", "log", "alert", "redact", "block", "none"];
    check_one_of("decision", f.decision.as_deref(), &DECISIONS)?;
    Ok(Json(s.store.query_requests(f).await?))
}

/// A filter value no row can have is a typo, not an empty result: refused, naming the values
/// that exist.
pub(crate) fn check_one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> ApiResult<()> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(ApiError::field(
            field,
            format!("must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// Audit log filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action (e.g. `proxy.create`).
    pub action: Option<String>,
    /// Only this target name.
    pub target: Option<String>,
    /// Page size (1–500, default 100).
    pub limit: Option<u32>,
    /// Entries older than this id (paging).
    pub before_id: Option<i64>,
}

/// Read the append-only audit log (newest first).
#[utoipa::path(get, path = "/api/v1/audit", tag = "logs", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = [AuditEntry]), (status = 401, body = ErrorBody)))]
pub async fn audit(
    State(s): State<AppState>,
    _v: Viewer,
    ValidQuery(q): ValidQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    check_limit(q.limit)?;
    let f = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        limit: q.limit.unwrap_or(100),
        before_id: q.before_id,
    };
    Ok(Json(s.store.list_audit(f).await?))
}

/// A page size must be 1–500 (0 used to be read as 1).
pub(crate) fn check_limit(limit: Option<u32>) -> ApiResult<()> {
    match limit {
        Some(n) if !(1..=500).contains(&n) => Err(ApiError::field("limit", "must be 1 to 500")),
        _ => Ok(()),
    }
}
