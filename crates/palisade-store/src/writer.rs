//! The background request-log writer: a bounded queue drained in batches into SQLite on a
//! blocking thread, so the proxies never wait on the database.
//!
//! Back-pressure policy: the queue holds 65 536 records (several seconds of saturation load);
//! when it is full the record is not queued, because stalling live traffic for telemetry would
//! break the gateway's first promise: it is counted in [`WriterStats::dropped`] and folded into
//! a summary row (one per proxy, group, key, model, endpoint, status, decision and month) that
//! carries its tokens and cost, so spend, budgets and usage rebuilt from the log stay whole.
//! Audit rows do not travel this way: they are written in the transaction of the change they
//! describe.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade_core::record::{AlertRecord, RequestRecord};
use tokio::sync::{mpsc, oneshot};

use crate::store::open_connection;

const QUEUE: usize = 65_536;
const BATCH: usize = 1_024;
/// How long the writer waits for more rows before committing a partial batch. Each commit writes
/// the table's and three indexes' pages: at 2 000 requests/s a 5 ms linger meant ~4 `pwrite`
/// calls per request; 20 ms cuts the commits fourfold and still shows a row within a blink.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

enum Msg {
    Record(Box<RequestRecord>),
    Alert(Box<AlertRecord>),
    /// Nothing to add: write what waits (alerts of a failed batch).
    Retry,
    Close(oneshot::Sender<()>),
}

/// Pause before the writer tries again to write alerts whose batch failed.
const ALERT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Alerts that found the queue full wait here (bounded) instead of being dropped.
const ALERT_OVERFLOW: usize = 100_000;

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full (or closed: the gateway was stopping).
    pub dropped: AtomicU64,
    /// Batches that failed to write (each is retried once, then counted here).
    pub failed: AtomicU64,
    /// Records of those batches, lost (their alerts wait for the next batch).
    pub lost: AtomicU64,
    /// Alerts lost because both the queue and the overflow list were full.
    pub alerts_lost: AtomicU64,
}

/// The sending side handed to proxies; cloning is cheap.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Msg>,
    stats: Arc<WriterStats>,
    overflow: Arc<std::sync::Mutex<Vec<AlertRecord>>>,
    folds: Arc<std::sync::Mutex<Folds>>,
}

/// Most summary rows waiting at once; past it, records fold into one row per group and month
/// (what budgets need), whatever their other fields.
const MAX_FOLDS: usize = 4_096;

/// Records the queue had no room for, summed per kind until the writer takes them.
#[derive(Default)]
struct Folds {
    rows: std::collections::HashMap<FoldKey, RequestRecord>,
}

/// What a summary row keeps of the records it sums.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FoldKey {
    month: i64,
    group: Option<String>,
    /// Proxy, key, model, endpoint, streaming, status and decision (dropped past
    /// [`MAX_FOLDS`] rows).
    detail: Option<FoldDetail>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FoldDetail {
    proxy: String,
    key_name: Option<String>,
    model: Option<String>,
    endpoint: String,
    stream: bool,
    status: u16,
    decision: Option<String>,
}

impl Folds {
    fn add(&mut self, r: RequestRecord) {
        let month = palisade_core::spend::month_start_ms(r.ts_ms);
        let mut key = FoldKey {
            month,
            group: r.group.clone(),
            detail: Some(FoldDetail {
                proxy: r.proxy.clone(),
                key_name: r.key_name.clone(),
                model: r.model.clone(),
                endpoint: r.endpoint.clone(),
                stream: r.stream,
                status: r.status,
                decision: r.decision.clone(),
            }),
        };
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_FOLDS {
            key.detail = None;
        }
        let detailed = key.detail.is_some();
        let row = self.rows.entry(key).or_insert_with(|| {
            let mut first = RequestRecord {
                id: palisade_core::crypto::record_id(),
                ts_ms: r.ts_ms,
                group: r.group.clone(),
                folded: Some(0),
                cost_usd: Some(0.0),
                ..Default::default()
            };
            if detailed {
                first.proxy = r.proxy.clone();
                first.api = r.api.clone();
                first.method = r.method.clone();
                first.path = r.path.clone();
                first.endpoint = r.endpoint.clone();
                first.stream = r.stream;
                first.model = r.model.clone();
                first.status = r.status;
                first.key_id = r.key_id.clone();
                first.key_name = r.key_name.clone();
                first.decision = r.decision.clone();
            }
            first
        });
        let n = row.folded.unwrap_or(0);
        let add = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        row.prompt_tokens = add(row.prompt_tokens, r.prompt_tokens);
        row.completion_tokens = add(row.completion_tokens, r.completion_tokens);
        row.cached_tokens = add(row.cached_tokens, r.cached_tokens);
        row.total_tokens = add(row.total_tokens, r.total_tokens);
        // Costs are summed as the nano-dollars each row would have stored.
        let nano = |c: Option<f64>| {
            c.map_or(0, |c| {
                (c * palisade_core::spend::NANO_PER_USD).round() as i64
            })
        };
        let sum = nano(row.cost_usd) + nano(r.cost_usd);
        row.cost_usd = Some(sum as f64 / palisade_core::spend::NANO_PER_USD);
        row.cost_unknown |= r.cost_unknown;
        // The mean latency of the requests it stands for.
        let mean = |a: i64, b: i64| (a.saturating_mul(n) + b) / (n + 1);
        row.latency_us = mean(row.latency_us, r.latency_us);
        row.overhead_us = mean(row.overhead_us, r.overhead_us);
        row.ts_ms = row.ts_ms.min(r.ts_ms);
        row.folded = Some(n + 1);
    }

    /// The summary rows, each saying what it stands for.
    fn take(&mut self) -> Vec<RequestRecord> {
        self.rows
            .drain()
            .map(|(_, mut r)| {
                r.error = Some(format!(
                    "{} requests the log's queue had no room for, summed in this row",
                    r.folded.unwrap_or(0)
                ));
                r
            })
            .collect()
    }
}

impl LogSink {
    /// Queues a record without waiting; counts it as dropped if the queue is full.
    pub fn record(&self, r: RequestRecord) {
        if let Err(e) = self.tx.try_send(Msg::Record(Box::new(r))) {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            match e {
                mpsc::error::TrySendError::Full(Msg::Record(r)) => {
                    if n.is_power_of_two() {
                        tracing::warn!(
                            dropped = n,
                            "request log queue full; records summed into summary rows"
                        );
                    }
                    self.folds.lock().unwrap_or_else(|p| p.into_inner()).add(*r);
                }
                mpsc::error::TrySendError::Closed(_) => {
                    tracing::warn!(dropped = n, "request log already closed; record dropped")
                }
                _ => {}
            }
        }
    }

    /// Queues an alert. Alerts are never dropped for a full queue: they wait in a bounded
    /// overflow list that the writer drains with its next batch.
    pub fn alert(&self, a: AlertRecord) {
        if let Err(e) = self.tx.try_send(Msg::Alert(Box::new(a))) {
            let Msg::Alert(a) = e.into_inner() else {
                return;
            };
            keep_alerts(&self.overflow, &self.stats, vec![*a]);
        }
    }

    /// Writer counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The writer counters, shared (for a metrics endpoint).
    pub fn stats_handle(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }
}

/// Puts alerts in the overflow list (for the next batch), counting those it has no room for.
fn keep_alerts(
    overflow: &std::sync::Mutex<Vec<AlertRecord>>,
    stats: &WriterStats,
    alerts: Vec<AlertRecord>,
) {
    let mut o = overflow.lock().unwrap_or_else(|p| p.into_inner());
    for a in alerts {
        if o.len() < ALERT_OVERFLOW {
            o.push(a);
        } else {
            stats.alerts_lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(alert = %a.title, "alert overflow full; alert lost");
        }
    }
}

/// Owner of the background writer task.
pub struct LogWriter {
    sink: LogSink,
    task: tokio::task::JoinHandle<()>,
}

impl LogWriter {
    /// Starts the writer on its own connection to the database at `db_path`.
    pub fn start(db_path: PathBuf) -> Result<Self, crate::StoreError> {
        Self::start_sized(db_path, QUEUE)
    }

    fn start_sized(db_path: PathBuf, queue: usize) -> Result<Self, crate::StoreError> {
        let conn = open_connection(&db_path)?;
        let (tx, mut rx) = mpsc::channel::<Msg>(queue);
        let tx_retry = tx.downgrade();
        let stats = Arc::new(WriterStats::default());
        let st = stats.clone();
        let overflow: Arc<std::sync::Mutex<Vec<AlertRecord>>> = Default::default();
        let ov = overflow.clone();
        let folds: Arc<std::sync::Mutex<Folds>> = Default::default();
        let fo = folds.clone();
        let task = tokio::spawn(async move {
            let mut conn = Some(conn);
            let mut batch: Vec<RequestRecord> = Vec::with_capacity(BATCH);
            let mut alerts: Vec<AlertRecord> = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut close = None;
                let mut msg = Some(first);
                // Linger briefly so a steady trickle becomes one transaction per few ms instead of
                // one per row: fewer fsyncs and wake-ups at moderate rates, same latency bound.
                let deadline = tokio::time::Instant::now() + LINGER;
                while let Some(m) = msg.take() {
                    match m {
                        Msg::Record(r) => batch.push(*r),
                        Msg::Alert(a) => alerts.push(*a),
                        Msg::Retry => {}
                        Msg::Close(ack) => {
                            close = Some(ack);
                            break;
                        }
                    }
                    if batch.len() >= BATCH {
                        break;
                    }
                    msg = match rx.try_recv() {
                        Ok(m) => Some(m),
                        Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten(),
                    };
                }
                alerts.append(&mut ov.lock().unwrap_or_else(|p| p.into_inner()));
                batch.append(&mut fo.lock().unwrap_or_else(|p| p.into_inner()).take());
                if !batch.is_empty() || !alerts.is_empty() {
                    let rows = std::mem::take(&mut batch);
                    let alert_rows = std::mem::take(&mut alerts);
                    let Some(c) = conn.take() else { break };
                    let st2 = st.clone();
                    let res = tokio::task::spawn_blocking(move || {
                        let mut c = c;
                        let n = rows.len() as u64;
                        let mut result = crate::requests::insert_batch(&mut c, &rows, &alert_rows);
                        if result.is_err() {
                            result = crate::requests::insert_batch(&mut c, &rows, &alert_rows);
                        }
                        let unwritten = match result {
                            Ok(()) => {
                                st2.written.fetch_add(n, Ordering::Relaxed);
                                Vec::new()
                            }
                            Err(e) => {
                                st2.failed.fetch_add(1, Ordering::Relaxed);
                                st2.lost.fetch_add(n, Ordering::Relaxed);
                                tracing::error!(error = %e, rows = n, alerts = alert_rows.len(), "request log batch could not be written; its alerts wait for the next batch");
                                alert_rows
                            }
                        };
                        (c, rows, unwritten)
                    })
                    .await;
                    match res {
                        Ok((c, mut rows, unwritten)) => {
                            conn = Some(c);
                            rows.clear();
                            batch = rows;
                            // Alerts are never dropped for a failed write (a full disk): they
                            // go with the next batch. Nothing else may be coming, so the
                            // writer tries again on its own after a pause.
                            if !unwritten.is_empty() {
                                keep_alerts(&ov, &st, unwritten);
                                if close.is_none() {
                                    let retry = tx_retry.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(ALERT_RETRY).await;
                                        if let Some(tx) = retry.upgrade() {
                                            let _ = tx.try_send(Msg::Retry);
                                        }
                                    });
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "request log writer thread failed");
                            break;
                        }
                    }
                }
                if let Some(ack) = close {
                    let _ = ack.send(());
                    return;
                }
            }
        });
        Ok(Self {
            sink: LogSink {
                tx,
                stats,
                overflow,
                folds,
            },
            task,
        })
    }

    /// A sink for proxies.
    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Flushes everything queued so far and stops the writer.
    pub async fn close(self) {
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.sink.tx.send(Msg::Close(ack_tx)).await.is_ok() {
            let _ = ack_rx.await;
        }
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RequestFilter, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn burst_is_written_and_flushed_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = LogWriter::start(store.path().to_path_buf()).unwrap();
        let sink = w.sink();
        for i in 0..5000 {
            sink.record(RequestRecord {
                id: format!("r{i}"),
                ts_ms: i,
                proxy: if i % 2 == 0 { "a".into() } else { "b".into() },
                status: if i % 10 == 0 { 502 } else { 200 },
                prompt_tokens: Some(3),
                ..Default::default()
            });
        }
        w.close().await;
        assert_eq!(sink.stats().written.load(Ordering::Relaxed), 5000);
        let all = store
            .query_requests(RequestFilter::default())
            .await
            .unwrap();
        assert_eq!(all.total, 5000);
        assert_eq!(all.items.len(), 50);
        assert_eq!(all.items[0].ts_ms, 4999);
        let f = RequestFilter {
            proxy: Some("a".into()),
            errors: Some(true),
            ..Default::default()
        };
        let page = store.query_requests(f).await.unwrap();
        assert_eq!(page.total, 500);
        assert!(page.items.iter().all(|r| r.proxy == "a" && r.status == 502));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_the_queue_has_no_room_for_are_summed_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = LogWriter::start_sized(store.path().to_path_buf(), 4).unwrap();
        let sink = w.sink();
        let now = palisade_core::now_ms();
        let total = 20_000;
        for i in 0..total {
            sink.record(RequestRecord {
                id: format!("r{i}"),
                ts_ms: now,
                proxy: "p".into(),
                group: Some(if i % 2 == 0 { "a" } else { "b" }.into()),
                status: 200,
                prompt_tokens: Some(3),
                completion_tokens: Some(2),
                cost_usd: Some(0.000_125),
                ..Default::default()
            });
        }
        w.close().await;
        let dropped = sink.stats().dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "the queue of 4 overflowed");
        let page = store
            .query_requests(RequestFilter {
                limit: Some(500),
                ..Default::default()
            })
            .await
            .unwrap();
        let folded: Vec<&RequestRecord> =
            page.items.iter().filter(|r| r.folded.is_some()).collect();
        assert!(!folded.is_empty());
        let summed: i64 = folded.iter().map(|r| r.folded.unwrap()).sum();
        assert_eq!(summed as u64, dropped);
        assert_eq!(page.total as u64 - folded.len() as u64 + dropped, total);
        // Usage and spend rebuilt from the log count every request and every cent.
        let usage = store
            .usage(
                crate::UsageQuery {
                    group_by: Some("group".into()),
                    since_ms: Some(0),
                    ..Default::default()
                },
                now,
            )
            .await
            .unwrap();
        let requests: i64 = usage.iter().map(|r| r.requests).sum();
        let cost: f64 = usage.iter().map(|r| r.cost_usd).sum();
        assert_eq!(requests as u64, total);
        assert!((cost - total as f64 * 0.000_125).abs() < 1e-6, "{cost}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_of_a_batch_that_cannot_be_written_are_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = LogWriter::start(store.path().to_path_buf()).unwrap();
        let sink = w.sink();
        // The request table is gone for a while (as a full disk refuses every write).
        let side = open_connection(store.path()).unwrap();
        side.execute_batch("ALTER TABLE requests RENAME TO requests_away")
            .unwrap();
        sink.record(RequestRecord {
            id: "r1".into(),
            proxy: "a".into(),
            status: 200,
            ..Default::default()
        });
        sink.alert(AlertRecord {
            id: "a1".into(),
            kind: "policy".into(),
            status: "new".into(),
            ..Default::default()
        });
        let stats = sink.stats_handle();
        for _ in 0..100 {
            if stats.failed.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(stats.lost.load(Ordering::Relaxed), 1);
        side.execute_batch("ALTER TABLE requests_away RENAME TO requests")
            .unwrap();
        // The writer tries again by itself.
        let mut found = 0;
        for _ in 0..100 {
            found = store
                .query_alerts(crate::AlertFilter {
                    id: Some("a1".into()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .total;
            if found > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(found, 1);
        assert_eq!(stats.alerts_lost.load(Ordering::Relaxed), 0);
        w.close().await;
    }
}
