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

use crate::body::ProxyBody;
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
    // Set when the drain time is over: requests still waiting for their answer get a 503 (in
    // the proxy's shape) instead of a connection closed under them.
    let (cut_tx, cut_rx) = watch::channel(false);
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
                let cut = cut_rx.clone();
                let svc = service_fn(move |req| {
                    let rt = runtime.load_full();
                    let shared = shared.clone();
                    let mut cut = cut.clone();
                    async move {
                        if rt.spec.oauth && crate::oauth::is_oauth_path(req.uri().path()) {
                            return crate::oauth::handle(shared, rt, req, peer).await;
                        }
                        match rt.spec.kind {
                            ProxyKind::Mcp => {
                                let handled = crate::mcp::handle(shared, rt, req, peer);
                                tokio::select! {
                                    biased;
                                    answered = handled => answered,
                                    () = cut_signal(&mut cut) => Ok(stopped_response()),
                                }
                            }
                            ProxyKind::A2a => {
                                let handled = crate::a2a::handle(shared, rt, req, peer);
                                tokio::select! {
                                    biased;
                                    answered = handled => answered,
                                    () = cut_signal(&mut cut) => Ok(stopped_response()),
                                }
                            }
                            // An LLM proxy answers a cut request itself (with its record's id).
                            _ => crate::llm::handle(shared, rt, req, peer, cut).await,
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
    let drained = async {
        tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_ok()
    };
    let drained = tokio::select! {
        done = drained => done,
        () = hurried() => false,
    };
    if !drained {
        tracing::warn!("drain time elapsed with requests still in flight; closing them");
        CUTTING.fetch_add(1, Ordering::SeqCst);
        // Requests still waiting get their 503 (and are logged as cut by their handlers); the
        // connections then close, and any left (an answer still streaming) are cut.
        let _ = cut_tx.send(true);
        let answered = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(CUT_GRACE, answered).await.is_err() {
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
        CUTTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long the 503s of requests cut at the end of the drain time have to be written.
const CUT_GRACE: Duration = Duration::from_millis(500);

/// Resolves when the drain time is over (never when the listener is gone: its requests ended).
pub(crate) async fn cut_signal(cut: &mut watch::Receiver<bool>) {
    if cut.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The answer to an MCP request its proxy stopped before the upstream answered: 503 with a
/// JSON-RPC error, closing the connection (an LLM proxy answers its own, in its API's shape).
fn stopped_response() -> http::Response<ProxyBody> {
    const WHY: &str = "the proxy stopped before the answer began (drain time over); retry";
    let body = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": WHY}});
    let mut resp = http::Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// Set by [`hurry`]: drains end at once.
static HURRY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static HURRY_NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Ends every drain now (a second shutdown signal): requests still waiting get their 503.
pub fn hurry() {
    HURRY.store(true, Ordering::SeqCst);
    HURRY_NOTIFY.notify_waiters();
}

/// Resolves once [`hurry`] was called.
async fn hurried() {
    loop {
        let notified = HURRY_NOTIFY.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if HURRY.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
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
