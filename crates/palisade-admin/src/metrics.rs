//! The dashboard summary: traffic, errors, latency percentiles, blocks, open alerts, spend and
//! per-proxy state over a recent window.

use axum::Json;
use axum::extract::State;
use palisade_store::{ProxyTraffic, SeriesPoint};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ValidQuery;

/// Summary query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// Window in seconds (60–86400, default 3600).
    pub window: Option<i64>,
    /// Bucket of the series in seconds (default: window / 60, at least 1).
    pub bucket: Option<i64>,
    /// Only the traffic of this proxy (series, percentiles, counts; open alerts and month spend
    /// stay global).
    pub proxy: Option<String>,
}

/// One proxy on the dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProxySummary {
    /// Name.
    pub name: String,
    /// `llm` or `mcp`.
    pub kind: String,
    /// `running`, `stopped` or `failed`.
    pub status: &'static str,
    /// Address bound while running.
    pub bound_addr: Option<String>,
    /// Why the last start failed.
    pub error: Option<String>,
    /// Traffic in the window.
    pub requests: i64,
    /// Failed requests in the window.
    pub errors: i64,
    /// Blocked requests in the window.
    pub blocked: i64,
    /// Mean latency in the window, ms.
    pub avg_latency_ms: f64,
}

/// Dashboard summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    /// Window, seconds.
    pub window_secs: i64,
    /// Bucket of `series`, seconds.
    pub bucket_secs: i64,
    /// Requests in the window.
    pub requests: i64,
    /// Mean requests per second over the window.
    pub requests_per_sec: f64,
    /// Failed share of requests (0–1).
    pub error_rate: f64,
    /// Requests blocked by policy in the window.
    pub blocked: i64,
    /// Latency percentiles, ms (over the newest 20 000 requests of the window).
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Alerts new or acknowledged.
    pub open_alerts: i64,
    /// Of which critical or high.
    pub open_alerts_high: i64,
    /// Spend of the calendar month (UTC) so far, USD.
    pub month_spend_usd: f64,
    /// Per-bucket counts, oldest first.
    pub series: Vec<SeriesPoint>,
    /// Every proxy with its state and traffic.
    pub proxies: Vec<ProxySummary>,
}

fn percentile(sorted: &[i64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[i] as f64 / 1000.0)
}

/// Dashboard figures over the last `window` seconds.
#[utoipa::path(get, path = "/api/v1/metrics/summary", tag = "logs", security(("bearer" = [])), params(SummaryQuery),
    responses((status = 200, body = Summary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn summary(
    State(s): State<AppState>,
    _v: Viewer,
    ValidQuery(q): ValidQuery<SummaryQuery>,
) -> ApiResult<Json<Summary>> {
    let window = q.window.unwrap_or(3600);
    if !(60..=86_400).contains(&window) {
        return Err(ApiError::field("window", "must be 60–86400 seconds"));
    }
    let bucket = q.bucket.unwrap_or((window / 60).max(1));
    if bucket < 1 || bucket > window || window / bucket > 1440 {
        return Err(ApiError::field(
            "bucket",
            "must be at least 1 second, at most the window, and give at most 1440 buckets",
        ));
    }
    let now = palisade_core::now_ms();
    let since = now - window * 1000;
    if let Some(p) = &q.proxy
        && s.store.get_proxy(p).await?.is_none()
    {
        return Err(ApiError::not_found(format!("proxy `{p}`")));
    }
    let d = s
        .store
        .dashboard(since, bucket * 1000, q.proxy.clone())
        .await?;
    let requests: i64 = d.series.iter().map(|p| p.requests).sum();
    let errors: i64 = d.series.iter().map(|p| p.errors).sum();
    let blocked: i64 = d.series.iter().map(|p| p.blocked).sum();
    let traffic: std::collections::HashMap<&str, &ProxyTraffic> =
        d.proxies.iter().map(|p| (p.proxy.as_str(), p)).collect();
    let mut proxies = Vec::new();
    for row in s.store.list_proxies().await? {
        if q.proxy.as_ref().is_some_and(|p| *p != row.spec.name) {
            continue;
        }
        let (status, bound_addr, error) = match s.manager.status(&row.spec.name).await {
            palisade_gateway::ProxyStatus::Running(a) => ("running", Some(a.to_string()), None),
            palisade_gateway::ProxyStatus::Stopped => ("stopped", None, None),
            palisade_gateway::ProxyStatus::Failed(e) => ("failed", None, Some(e)),
        };
        let t = traffic.get(row.spec.name.as_str());
        proxies.push(ProxySummary {
            kind: serde_json::to_value(row.spec.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            name: row.spec.name.clone(),
            status,
            bound_addr,
            error,
            requests: t.map_or(0, |t| t.requests),
            errors: t.map_or(0, |t| t.errors),
            blocked: t.map_or(0, |t| t.blocked),
            avg_latency_ms: t.map_or(0.0, |t| t.avg_latency_us as f64 / 1000.0),
        });
    }
    Ok(Json(Summary {
        window_secs: window,
        bucket_secs: bucket,
        requests,
        requests_per_sec: requests as f64 / window as f64,
        error_rate: if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        },
        blocked,
        p50_ms: percentile(&d.latencies_us, 50.0),
        p95_ms: percentile(&d.latencies_us, 95.0),
        p99_ms: percentile(&d.latencies_us, 99.0),
        open_alerts: d.open_alerts,
        open_alerts_high: d.open_alerts_high,
        month_spend_usd: d.month_spend_nano as f64 / palisade_core::spend::NANO_PER_USD,
        series: d.series,
        proxies,
    }))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<i64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7000], 95.0), Some(7.0));
    }
}
