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
    Close(oneshot::Sender<()>),
}

/// Alerts that found the queue full wait here (bounded) instead of being dropped.
const ALERT_OVERFLOW: usize = 100_000;

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Batches that failed to write (each is retried once, then counted here).
    pub failed: AtomicU64,
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
        if self.tx.try_send(Msg::Record(Box::new(r))).is_err() {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "request log queue full; records dropped");
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
            let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            if o.len() < ALERT_OVERFLOW {
                o.push(*a);
            } else {
                self.stats.alerts_lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert = %a.title, "alert overflow full; alert lost");
            }
        }
    }

    /// Writer counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
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
                        match result {
                            Ok(()) => {
                                st2.written.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                st2.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %e, rows = n, "request log batch could not be written");
                            }
                        }
                        (c, rows)
                    })
                    .await;
                    match res {
                        Ok((c, mut rows)) => {
                            conn = Some(c);
                            rows.clear();
                            batch = rows;
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
}
