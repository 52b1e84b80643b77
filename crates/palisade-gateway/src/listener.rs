//! A proxy's listener: accept loop, HTTP/1.1 connections with `TCP_NODELAY`, graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::manager::{GatewayShared, ProxyRuntime};
use palisade_core::model::ProxyKind;

/// A bound, serving listener.
pub struct RunningListener {
    /// The address actually bound (resolves port 0).
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningListener {
    /// Binds `addr` and starts serving; binding errors are returned, not logged and swallowed.
    pub async fn bind(
        addr: SocketAddr,
        shared: Arc<GatewayShared>,
        runtime: Arc<ArcSwap<ProxyRuntime>>,
        drain: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, shared, runtime, stop_rx, drain));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    /// Stops accepting at once, lets in-flight requests finish (up to the drain time), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<GatewayShared>,
    runtime: Arc<ArcSwap<ProxyRuntime>>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    // The connections' tasks: those still running when the drain time is over are cut, and
    // waited for, so their requests are logged before the proxy is reported stopped.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let runtime = runtime.clone();
                let svc = service_fn(move |req| {
                    let rt = runtime.load_full();
                    let shared = shared.clone();
                    async move {
                        match rt.spec.kind {
                            ProxyKind::Mcp => crate::mcp::handle(shared, rt, req, peer).await,
                            _ => crate::llm::handle(shared, rt, req, peer).await,
                        }
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                let watched = graceful.watch(conn);
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    if let Err(e) = watched.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain time elapsed with requests still in flight; closing them");
        CUTTING.fetch_add(1, Ordering::SeqCst);
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        CUTTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Listeners cutting connections whose requests outlasted the drain time.
static CUTTING: AtomicUsize = AtomicUsize::new(0);

/// Whether a listener is cutting connections at the end of its drain time.
pub(crate) fn cutting() -> bool {
    CUTTING.load(Ordering::SeqCst) > 0
}

/// Why a request ended before its answer did: its proxy stopped (the drain time was over), or its
/// client went away.
pub(crate) fn cut_short(what: &str) -> String {
    if cutting() {
        format!("the proxy stopped before the answer {what} (drain time over)")
    } else {
        format!("client disconnected before the answer {what}")
    }
}
