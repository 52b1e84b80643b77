//! MCP scans through the API: scan a URL or a running MCP proxy's upstream (with the proxy's
//! own stored credential, which never leaves the process), keep the reports, compare with an
//! earlier scan.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_gateway::scan::{self, AnyClient, Baseline, Item, ScanError, ScanOptions, ScanTarget};
use palisade_store::ScanRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{ValidJson, ValidQuery};

/// Scans that may run at once (each holds a compiled rule set and a connection).
const CONCURRENT: usize = 2;
/// Time limit of one exchange with the scanned server.
const EXCHANGE: Duration = Duration::from_secs(15);
/// Time limit of a whole scan.
const WHOLE: Duration = Duration::from_secs(120);
/// Largest report stored whole; a larger one is stored without its inventory.
const MAX_STORED: usize = 4 * 1024 * 1024;

fn permits() -> &'static Arc<Semaphore> {
    static P: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    P.get_or_init(|| Arc::new(Semaphore::new(CONCURRENT)))
}

/// What to scan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// URL of a Streamable HTTP MCP endpoint (give this or `proxy`).
    #[serde(default)]
    pub url: Option<String>,
    /// Name of a running MCP proxy whose upstream to scan, with the proxy's own upstream
    /// credential (give this or `url`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Headers sent with every request to `url` (credentials). Used for this scan only: never
    /// stored, logged or shown.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How many text resources to read and check (default 20, at most 100).
    #[serde(default)]
    pub read_resources: Option<usize>,
    /// Ids of the policies whose `tool_description` and `tool_result` rules read what the
    /// server offers (default: every policy).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Id of an earlier scan to compare with (what changed, appeared or went).
    #[serde(default)]
    pub baseline: Option<String>,
}

/// A stored scan.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScanSummary {
    /// Scan id.
    pub id: String,
    /// When it ran, Unix ms.
    pub ts_ms: i64,
    /// Who ran it.
    pub actor: String,
    /// What was scanned.
    pub target: String,
    /// Critical findings.
    pub critical: i64,
    /// High findings.
    pub high: i64,
    /// Medium findings.
    pub medium: i64,
    /// Low findings.
    pub low: i64,
}

impl From<&ScanRow> for ScanSummary {
    fn from(r: &ScanRow) -> Self {
        Self {
            id: r.id.clone(),
            ts_ms: r.ts_ms,
            actor: r.actor.clone(),
            target: r.target.clone(),
            critical: r.counts[0],
            high: r.counts[1],
            medium: r.counts[2],
            low: r.counts[3],
        }
    }
}

/// A report's format.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FormatQuery {
    /// `json` (default: the report) or `sarif` (SARIF 2.1.0).
    pub format: Option<String>,
}

/// The baseline an earlier stored scan makes.
async fn baseline_of(s: &AppState, id: &str) -> ApiResult<Baseline> {
    let row = s
        .store
        .get_scan(id)
        .await?
        .ok_or_else(|| ApiError::field("baseline", format!("no scan `{id}`")))?;
    let report = row.report.unwrap_or(Value::Null);
    let items: Vec<Item> = report
        .get("inventory")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            ApiError::field(
                "baseline",
                format!("scan `{id}` has no usable inventory: {e}"),
            )
        })?
        .ok_or_else(|| {
            ApiError::field(
                "baseline",
                format!("scan `{id}` was stored without its inventory (too large)"),
            )
        })?;
    Ok(Baseline::from_items(
        &row.target,
        &row.ts_ms.to_string(),
        &items,
    ))
}

/// Scan an MCP server now (admin). The report lists findings, counts and the inventory; it is
/// stored (the newest 200 are kept) and the scan is audited.
#[utoipa::path(post, path = "/api/v1/scans", tag = "scans", security(("bearer" = [])),
    request_body = ScanRequest,
    responses((status = 201, description = "the report, with its `id`", body = Object),
        (status = 400, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, description = "the server could not be scanned", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(req): ValidJson<ScanRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let read_resources = req.read_resources.unwrap_or(20);
    if read_resources > 100 {
        return Err(ApiError::field("read_resources", "must be at most 100"));
    }
    if req.headers.len() > 16 || req.headers.values().any(|v| v.len() > 8192) {
        return Err(ApiError::field(
            "headers",
            "at most 16 headers of at most 8 KiB each",
        ));
    }
    let (target, probe_transport, label) = match (&req.url, &req.proxy) {
        (Some(url), None) => (
            {
                palisade_core::webhook::check_outbound_url(url, "give them in `headers`")
                    .map_err(|e| ApiError::field("url", e.message))?;
                ScanTarget::Http {
                    url: url.clone(),
                    headers: req.headers.clone().into_iter().collect(),
                    client: AnyClient::Guarded(palisade_gateway::build_guarded_client()),
                }
            },
            true,
            None,
        ),
        (None, Some(name)) => {
            if !req.headers.is_empty() {
                return Err(ApiError::field(
                    "headers",
                    "a proxy is scanned with its own upstream credential",
                ));
            }
            let up = s.manager.mcp_upstream(name).await.ok_or_else(|| {
                ApiError::field("proxy", format!("`{name}` is not a running MCP proxy"))
            })?;
            let spec = s.store.get_proxy(name).await?;
            let shown = match spec {
                Some(p) if p.spec.transport == palisade_core::model::McpTransport::Stdio => {
                    format!("proxy `{name}`: stdio: {}", p.spec.command.join(" "))
                }
                Some(p) => format!("proxy `{name}`: {}", p.spec.upstream),
                None => format!("proxy `{name}`"),
            };
            let headers = up
                .auth
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            (
                ScanTarget::Http {
                    url: up.url,
                    headers,
                    client: AnyClient::Plain(palisade_gateway::build_client()),
                },
                // The bridge's own answers say nothing of the server behind it.
                !up.bridged,
                Some(shown),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either `url` or `proxy` (one of them)",
            ));
        }
    };
    let baseline = match &req.baseline {
        Some(id) => Some(baseline_of(&s, id).await?),
        None => None,
    };
    let _permit = permits().clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            format!("{CONCURRENT} scans are running; try again when one ends"),
        )
    })?;
    let ids = if req.policies.is_empty() {
        crate::policies::lock(&s.policies).all_ids()
    } else {
        req.policies.clone()
    };
    let set = s
        .compile_policies(&ids)
        .await?
        .ok_or_else(|| ApiError::field("policies", "no policy to scan with"))?;
    let opts = ScanOptions {
        timeout: EXCHANGE,
        read_resources,
        baseline,
        probe_transport,
    };
    let shown = label.clone().unwrap_or_else(|| {
        req.url
            .as_deref()
            .map(|u| u.split('?').next().unwrap_or(u).to_string())
            .unwrap_or_default()
    });
    let failed = match tokio::time::timeout(WHOLE, scan::scan(target, &opts, set)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(ScanError::InvalidTarget(m))) => return Err(ApiError::field("url", m)),
        Ok(Err(ScanError::InvalidHeader(m))) => return Err(ApiError::field("headers", m)),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "scan_failed",
            e.to_string(),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "scan_timeout",
            format!("the scan took longer than {} s", WHOLE.as_secs()),
        )),
    };
    palisade_policy::release_free_memory();
    let mut report = match failed {
        Ok(r) => r,
        Err(e) => {
            // A scan that reached out and failed is audited too.
            let detail = serde_json::json!({"target": shown, "error": e.message});
            s.store
                .record_event(u.actor(), "scan.failed", "scan", "-", Some(detail))
                .await?;
            return Err(e);
        }
    };
    if let Some(l) = label {
        report.target = l;
    }
    let id = palisade_core::crypto::record_id();
    let mut value = serde_json::to_value(&report).map_err(ApiError::internal)?;
    value["id"] = Value::String(id.clone());
    let mut stored = value.clone();
    if stored.to_string().len() > MAX_STORED {
        stored["inventory"] = Value::Null;
        if let Some(n) = stored["notes"].as_array_mut() {
            n.push("the inventory was too large to store (it cannot serve as a baseline)".into());
        }
    }
    let s_ = &report.summary;
    s.store
        .insert_scan(
            ScanRow {
                id,
                ts_ms: palisade_core::now_ms(),
                actor: u.name.clone(),
                target: report.target.clone(),
                counts: [s_.critical, s_.high, s_.medium, s_.low].map(|n| n as i64),
                report: Some(stored),
            },
            u.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(value)))
}

/// The newest scans (summaries, at most 200).
#[utoipa::path(get, path = "/api/v1/scans", tag = "scans", security(("bearer" = [])),
    responses((status = 200, body = Vec<ScanSummary>), (status = 401, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<ScanSummary>>> {
    let rows = s.store.list_scans(200).await?;
    Ok(Json(rows.iter().map(ScanSummary::from).collect()))
}

/// One scan's report, as JSON or SARIF 2.1.0.
#[utoipa::path(get, path = "/api/v1/scans/{id}", tag = "scans", security(("bearer" = [])),
    params(("id" = String, Path, description = "Scan id"), FormatQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    _v: Viewer,
    Path(id): Path<String>,
    ValidQuery(q): ValidQuery<FormatQuery>,
) -> ApiResult<Json<Value>> {
    let row = s
        .store
        .get_scan(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("scan `{id}`")))?;
    let report = row.report.unwrap_or(Value::Null);
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(report)),
        Some("sarif") => Ok(Json(scan::sarif_of_value(&report))),
        Some(other) => Err(ApiError::field(
            "format",
            format!("unknown format `{other}` (json or sarif)"),
        )),
    }
}
