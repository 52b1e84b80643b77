//! `GET /metrics`: the gateway's counters in the Prometheus text format, fed by every request
//! record and alert as they are made (in memory; a restart starts them at zero, as Prometheus
//! counters may).
//!
//! Labels are bounded: proxy names are the configured proxies, status codes and decisions
//! small sets; no label comes from what a client sends (no model, key or path labels).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade_core::record::{AlertRecord, RequestRecord};

use crate::AppState;
use crate::error::ApiError;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the gateway-overhead histogram buckets.
const OVERHEAD_BUCKETS: [f64; 10] = [
    0.000_025, 0.000_05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
];
/// Most distinct proxies counted (renamed and deleted proxies keep their series until a
/// restart); past it, records of new proxies are counted under `(other)`.
const MAX_PROXIES: usize = 1000;
/// Most (kind, severity) pairs of alerts counted (both are the gateway's own values; a bound
/// all the same).
const MAX_ALERT_SERIES: usize = 1000;

#[derive(Default)]
struct Histogram {
    /// Count per bucket (not cumulative), plus the count above the last bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }
}

#[derive(Default)]
struct PerProxy {
    /// By (status, decision).
    requests: BTreeMap<(u16, &'static str), u64>,
    latency: Histogram,
    overhead: Histogram,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    redactions: u64,
}

#[derive(Default)]
struct Inner {
    proxies: BTreeMap<String, PerProxy>,
    /// By (kind, severity).
    alerts: BTreeMap<(String, String), u64>,
}

/// The counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The request-log writer's counters, once it runs.
    log: std::sync::OnceLock<std::sync::Arc<palisade_store::WriterStats>>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request record.
    pub fn request(&self, r: &RequestRecord) {
        let mut g = self.lock();
        let name = if g.proxies.contains_key(&r.proxy) || g.proxies.len() < MAX_PROXIES {
            r.proxy.as_str()
        } else {
            "(other)"
        };
        if !g.proxies.contains_key(name) {
            g.proxies.insert(name.to_string(), PerProxy::default());
        }
        let Some(p) = g.proxies.get_mut(name) else {
            return;
        };
        *p.requests
            .entry((r.status, decision_label(r.decision.as_deref())))
            .or_default() += 1;
        p.latency
            .observe(&LATENCY_BUCKETS, r.latency_us.max(0) as f64 / 1e6);
        p.overhead
            .observe(&OVERHEAD_BUCKETS, r.overhead_us.max(0) as f64 / 1e6);
        p.prompt_tokens += r.prompt_tokens.unwrap_or(0).max(0) as u64;
        p.completion_tokens += r.completion_tokens.unwrap_or(0).max(0) as u64;
        p.cost_usd += r.cost_usd.unwrap_or(0.0).max(0.0);
        p.redactions += r.redactions.unwrap_or(0).max(0) as u64;
    }

    /// Shows the request-log writer's counters too.
    pub fn watch_log(&self, stats: std::sync::Arc<palisade_store::WriterStats>) {
        let _ = self.log.set(stats);
    }

    /// Counts an alert.
    pub fn alert(&self, a: &AlertRecord) {
        let mut g = self.lock();
        let key = (a.kind.clone(), a.severity.clone());
        if g.alerts.len() < MAX_ALERT_SERIES || g.alerts.contains_key(&key) {
            *g.alerts.entry(key).or_default() += 1;
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let g = self.lock();
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "palisade_requests_total",
            "counter",
            "Requests through the proxies, by proxy, HTTP status and policy decision.",
        );
        for (proxy, p) in &g.proxies {
            for ((status, decision), n) in &p.requests {
                let _ = writeln!(
                    out,
                    "palisade_requests_total{{proxy=\"{}\",status=\"{status}\",decision=\"{}\"}} {n}",
                    escape(proxy),
                    escape(decision)
                );
            }
        }
        for (name, help, buckets, pick) in [
            (
                "palisade_request_duration_seconds",
                "Time from a request's arrival to the end of its answer.",
                &LATENCY_BUCKETS[..],
                (|p: &PerProxy| &p.latency) as fn(&PerProxy) -> &Histogram,
            ),
            (
                "palisade_overhead_seconds",
                "Time spent in the gateway itself (x-palisade-overhead-us), without the upstream's.",
                &OVERHEAD_BUCKETS[..],
                |p: &PerProxy| &p.overhead,
            ),
        ] {
            family(&mut out, name, "histogram", help);
            for (proxy, p) in &g.proxies {
                let h = pick(p);
                let proxy = escape(proxy);
                let mut cumulative = 0;
                for (i, bound) in buckets.iter().enumerate() {
                    cumulative += h.counts.get(i).copied().unwrap_or(0);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{proxy=\"{proxy}\",le=\"{bound}\"}} {cumulative}"
                    );
                }
                cumulative += h.counts.get(buckets.len()).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{proxy=\"{proxy}\",le=\"+Inf\"}} {cumulative}\n\
                     {name}_sum{{proxy=\"{proxy}\"}} {}\n{name}_count{{proxy=\"{proxy}\"}} {cumulative}",
                    h.sum
                );
            }
        }
        // Per-proxy counters: (name, help, extra label, value).
        type Counter = fn(&PerProxy) -> f64;
        let counters: [(&str, &str, &str, Counter); 4] = [
            (
                "palisade_tokens_total",
                "Tokens of LLM answers, by proxy and kind (prompt, completion).",
                ",kind=\"prompt\"",
                |p| p.prompt_tokens as f64,
            ),
            ("palisade_tokens_total", "", ",kind=\"completion\"", |p| {
                p.completion_tokens as f64
            }),
            (
                "palisade_cost_usd_total",
                "Cost of LLM answers from the price table, by proxy.",
                "",
                |p| p.cost_usd,
            ),
            (
                "palisade_redactions_total",
                "Values replaced by redact rules, by proxy.",
                "",
                |p| p.redactions as f64,
            ),
        ];
        for (name, help, label, value) in counters {
            // (A family's second series shares its header.)
            if !help.is_empty() {
                family(&mut out, name, "counter", help);
            }
            for (proxy, p) in &g.proxies {
                let _ = writeln!(
                    out,
                    "{name}{{proxy=\"{}\"{label}}} {}",
                    escape(proxy),
                    value(p)
                );
            }
        }
        family(
            &mut out,
            "palisade_alerts_total",
            "counter",
            "Alerts raised, by kind and severity.",
        );
        for ((kind, severity), n) in &g.alerts {
            let _ = writeln!(
                out,
                "palisade_alerts_total{{kind=\"{}\",severity=\"{}\"}} {n}",
                escape(kind),
                escape(severity)
            );
        }
        if let Some(log) = self.log.get() {
            use std::sync::atomic::Ordering::Relaxed;
            for (name, help, n) in [
                (
                    "palisade_log_records_written_total",
                    "Request records written to the request log.",
                    &log.written,
                ),
                (
                    "palisade_log_records_dropped_total",
                    "Request records dropped: the log's queue was full.",
                    &log.dropped,
                ),
                (
                    "palisade_log_records_lost_total",
                    "Request records lost: their batch could not be written (a full disk).",
                    &log.lost,
                ),
                (
                    "palisade_log_batches_failed_total",
                    "Request-log batches that could not be written after a retry.",
                    &log.failed,
                ),
                (
                    "palisade_alerts_lost_total",
                    "Alerts lost: they could not be written and the waiting list was full.",
                    &log.alerts_lost,
                ),
            ] {
                family(&mut out, name, "counter", help);
                let _ = writeln!(out, "{name} {}", n.load(Relaxed));
            }
        }
        out
    }
}

/// The header of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The decision as a label: the gateway's few values, nothing a client chose.
fn decision_label(d: Option<&str>) -> &'static str {
    match d {
        None => "none",
        Some("allow") => "allow",
        Some("log") => "log",
        Some("alert") => "alert",
        Some("redact") => "redact",
        Some("block") => "block",
        Some(_) => "other",
    }
}

/// A label value as the text format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics. Needs a signed-in user's token, or the scrape token of
/// `PALISADE_METRICS_TOKEN` (compared in constant time), as `Authorization: Bearer …`.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, body = crate::error::ErrorBody)))]
pub async fn metrics(
    State(s): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    let scrape_token = s.metrics_token.as_deref().is_some_and(|t| {
        crate::auth::bearer(&parts)
            .is_some_and(|b| palisade_core::crypto::ct_eq(b.as_bytes(), t.as_bytes()))
    });
    if !scrape_token {
        <crate::auth::Viewer as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &s,
        )
        .await?;
    }
    let mut text = s.events.metrics.render();
    webhook_series(&mut text, &s.store.list_webhooks().await?);
    memo_series(&mut text, &s.manager.memo_stats().await);
    cluster_series(&mut text, &s.manager.shared().accounting.cluster);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The policy memo per proxy (`palisade_policy::Scope`): texts a caller sent again answered
/// without a scan, texts scanned, and the bytes held (within the set's budget).
fn memo_series(out: &mut String, memos: &[(String, palisade_policy::MemoStats)]) {
    if memos.is_empty() {
        return;
    }
    type Get = fn(&palisade_policy::MemoStats) -> u64;
    let series: [(&str, &str, &str, Get); 3] = [
        (
            "palisade_policy_memo_hits_total",
            "counter",
            "Texts answered from the policy memo (the same key sent them lately); proxies with the same policies share one memo and show the same value: do not sum across them.",
            |m| m.hits,
        ),
        (
            "palisade_policy_memo_misses_total",
            "counter",
            "Texts the policies scanned (new to the key, or too short or long to keep); shared like the hits.",
            |m| m.misses,
        ),
        (
            "palisade_policy_memo_bytes",
            "gauge",
            "Bytes the policy memo holds; shared like the hits.",
            |m| m.bytes as u64,
        ),
    ];
    for (name, kind, help, get) in series {
        family(out, name, kind, help);
        for (proxy, m) in memos {
            let _ = writeln!(out, "{name}{{proxy=\"{}\"}} {}", escape(proxy), get(m));
        }
    }
}

/// The exchanges of shared rate limits and spend with Redis (only when a Redis URL is set):
/// alert on `palisade_redis_up == 0`, when this node counts alone.
fn cluster_series(out: &mut String, c: &palisade_gateway::cluster::ClusterStatus) {
    use std::sync::atomic::Ordering::Relaxed;
    if !c.enabled.load(Relaxed) {
        return;
    }
    let series = [
        (
            "palisade_redis_up",
            "gauge",
            "1 when the last exchange of shared rate limits and spend with Redis succeeded.",
            u64::from(c.up.load(Relaxed)),
        ),
        (
            "palisade_redis_last_exchange_timestamp_seconds",
            "gauge",
            "Unix time of the last successful exchange with Redis (0: none yet); alert when it falls behind.",
            u64::try_from(c.last_ok_ms.load(Relaxed) / 1000).unwrap_or(0),
        ),
        (
            "palisade_redis_exchanges_total",
            "counter",
            "Exchanges of shared rate limits and spend with Redis that succeeded.",
            c.exchanges.load(Relaxed),
        ),
        (
            "palisade_redis_exchange_failures_total",
            "counter",
            "Exchanges with Redis that failed (what they carried is sent with the next).",
            c.failures.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in series {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Alert delivery per webhook, from its stored state (so it survives restarts): what it has
/// delivered, what waits, and its current failure streak (alert on it: a receiver that stays
/// down holds a growing backlog).
fn webhook_series(out: &mut String, hooks: &[palisade_store::WebhookRow]) {
    if hooks.is_empty() {
        return;
    }
    for (name, kind, help, value) in [
        (
            "palisade_webhook_delivered_total",
            "counter",
            "Alerts a webhook's receiver has taken.",
            (|h: &palisade_store::WebhookRow| h.delivered)
                as fn(&palisade_store::WebhookRow) -> i64,
        ),
        (
            "palisade_webhook_backlog",
            "gauge",
            "Alerts stored since a webhook's last delivery, waiting (before its filters).",
            |h| h.backlog,
        ),
        (
            "palisade_webhook_failures",
            "gauge",
            "Failed delivery attempts of a webhook since its last success.",
            |h| h.failures,
        ),
    ] {
        family(out, name, kind, help);
        for h in hooks {
            let _ = writeln!(
                out,
                "{name}{{webhook=\"{}\"}} {}",
                escape(&h.spec.name),
                value(h)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_alerts_become_series() {
        let m = Metrics::default();
        let rec = |status: u16, decision: Option<&str>, latency_us: i64| RequestRecord {
            proxy: "oai".into(),
            status,
            decision: decision.map(str::to_string),
            latency_us,
            overhead_us: 40,
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            cost_usd: Some(0.0025),
            ..Default::default()
        };
        m.request(&rec(200, None, 800));
        m.request(&rec(200, None, 3_000));
        m.request(&rec(403, Some("block"), 300));
        m.alert(&AlertRecord {
            kind: "policy".into(),
            severity: "high".into(),
            ..Default::default()
        });
        let text = m.render();
        for line in [
            r#"palisade_requests_total{proxy="oai",status="200",decision="none"} 2"#,
            r#"palisade_requests_total{proxy="oai",status="403",decision="block"} 1"#,
            r#"palisade_request_duration_seconds_bucket{proxy="oai",le="0.0005"} 1"#,
            r#"palisade_request_duration_seconds_bucket{proxy="oai",le="0.001"} 2"#,
            r#"palisade_request_duration_seconds_bucket{proxy="oai",le="+Inf"} 3"#,
            r#"palisade_request_duration_seconds_count{proxy="oai"} 3"#,
            r#"palisade_overhead_seconds_bucket{proxy="oai",le="0.00005"} 3"#,
            r#"palisade_tokens_total{proxy="oai",kind="prompt"} 30"#,
            r#"palisade_tokens_total{proxy="oai",kind="completion"} 15"#,
            r#"palisade_cost_usd_total{proxy="oai"} 0.0075"#,
            r#"palisade_alerts_total{kind="policy",severity="high"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        // Every series line is `name{labels} value`, every family typed.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(series.ends_with('}'), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
