//! The background request-log writer: a bounded queue drained in batches into SQLite on a
//! blocking thread, so the proxies never wait on the database.
//!
//! Back-pressure policy: the queue holds 65 536 records (several seconds of saturation load);
//! when it is full the record is dropped and counted in [`WriterStats::dropped`], because
//! stalling live traffic for telemetry would break the gateway's first promise. Audit rows do
//! not travel this way: they are written in the transaction of the change they describe.

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
}

impl LogSink {
    /// Queues a record without waiting; counts it as dropped if the queue is full.
    pub fn record(&self, r: RequestRecord) {
        if let Err(e) = self.tx.try_send(Msg::Record(Box::new(r))) {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            match e {
                mpsc::error::TrySendError::Full(_) if n.is_power_of_two() => {
                    tracing::warn!(dropped = n, "request log queue full; records dropped")
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
        let conn = open_connection(&db_path)?;
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let tx_retry = tx.downgrade();
        let stats = Arc::new(WriterStats::default());
        let st = stats.clone();
        let overflow: Arc<std::sync::Mutex<Vec<AlertRecord>>> = Default::default();
        let ov = overflow.clone();
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
