//! Live events for the console: new alerts, request counters and proxy status, pushed over
//! server-sent events (`GET /api/v1/events`).
//!
//! The gateway's record and alert sinks call [`Hub::request`] and [`Hub::alert`]; neither ever
//! waits. Events go through a bounded `tokio::sync::broadcast` ring: a console that reads too
//! slowly loses the oldest events (it is told with a `resync` event and refetches), it never
//! slows a proxy. Request events are also capped per second; the exact counters travel in the
//! once-a-second `stats` event.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use palisade_core::record::{AlertRecord, RequestRecord};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::AppState;
use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};

/// Events kept for slow consoles before the oldest are dropped.
const RING: usize = 512;
/// Request events per second at most (counters stay exact in `stats`).
const REQUEST_EVENTS_PER_SEC: u64 = 50;
/// Consoles connected at once.
const MAX_SUBSCRIBERS: usize = 64;
/// Live consoles one user may hold open (a share, so one user cannot take them all).
const MAX_PER_USER: usize = 8;

/// One pushed event: an SSE event name and its JSON data, serialized once for all consoles.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// SSE `event:` name.
    pub name: &'static str,
    /// JSON payload.
    pub data: Arc<str>,
}

/// Running totals since the process started.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Totals {
    /// Requests recorded.
    pub requests: u64,
    /// Of which failed (status ≥ 400).
    pub errors: u64,
    /// Of which blocked by policy.
    pub blocked: u64,
    /// Alerts raised.
    pub alerts: u64,
}

/// The fan-out point of live events.
pub struct Hub {
    tx: broadcast::Sender<LiveEvent>,
    requests: AtomicU64,
    errors: AtomicU64,
    blocked: AtomicU64,
    alerts: AtomicU64,
    /// (second, events sent in it) packed as second << 16 | count.
    window: AtomicU64,
    subscribers: AtomicUsize,
    /// Open streams per user.
    per_user: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The counters `GET /metrics` shows.
    pub metrics: crate::prometheus::Metrics,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize)]
struct RequestSummary<'a> {
    id: &'a str,
    ts_ms: i64,
    proxy: &'a str,
    endpoint: &'a str,
    model: Option<&'a str>,
    status: u16,
    decision: Option<&'a str>,
    latency_us: i64,
    key_name: Option<&'a str>,
    tool: Option<&'a str>,
}

impl Hub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(RING);
        Self {
            tx,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            window: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            per_user: Default::default(),
            metrics: Default::default(),
        }
    }

    fn publish(&self, name: &'static str, data: &impl Serialize) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(data) {
            let _ = self.tx.send(LiveEvent {
                name,
                data: json.into(),
            });
        }
    }

    /// A request was recorded (called on the proxy's task; never blocks).
    pub fn request(&self, r: &RequestRecord) {
        self.metrics.request(r);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if r.status >= 400 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if r.decision.as_deref() == Some("block") {
            self.blocked.fetch_add(1, Ordering::Relaxed);
        }
        if self.tx.receiver_count() == 0 {
            return;
        }
        let sec = (palisade_core::now_ms() / 1000) as u64;
        let cur = self.window.load(Ordering::Relaxed);
        let next = if cur >> 16 == sec {
            if cur & 0xffff >= REQUEST_EVENTS_PER_SEC {
                return;
            }
            cur + 1
        } else {
            (sec << 16) | 1
        };
        if self
            .window
            .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.publish(
            "request",
            &RequestSummary {
                id: &r.id,
                ts_ms: r.ts_ms,
                proxy: &r.proxy,
                endpoint: &r.endpoint,
                model: r.model.as_deref(),
                status: r.status,
                decision: r.decision.as_deref(),
                latency_us: r.latency_us,
                key_name: r.key_name.as_deref(),
                tool: r.tool.as_deref(),
            },
        );
    }

    /// An alert was raised (its excerpt is already masked).
    pub fn alert(&self, a: &AlertRecord) {
        self.metrics.alert(a);
        self.alerts.fetch_add(1, Ordering::Relaxed);
        self.publish("alert", a);
    }

    /// Something an administrator changed (proxy state, tool approval…), for other consoles.
    pub fn changed(&self, what: &'static str, name: &str) {
        self.publish(
            "changed",
            &serde_json::json!({ "what": what, "name": name }),
        );
    }

    /// Totals since start.
    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
        }
    }

    /// A stream for `user`, unless all streams, or the user's share of them, are taken.
    fn subscribe(self: &Arc<Self>, user: &str) -> Result<Subscription, &'static str> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per_user.get(user).copied().unwrap_or(0);
        if mine >= MAX_PER_USER {
            return Err("you have too many live consoles open; close one and retry");
        }
        let n = self.subscribers.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_SUBSCRIBERS {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
            return Err("too many live consoles are connected; close one and retry");
        }
        per_user.insert(user.to_string(), mine + 1);
        Ok(Subscription {
            rx: self.tx.subscribe(),
            hub: self.clone(),
            user: user.to_string(),
        })
    }
}

/// How often an open event stream re-checks its session.
const RECHECK: Duration = Duration::from_secs(10);

struct Live {
    sub: Subscription,
    state: AppState,
    token: String,
    next_check: tokio::time::Instant,
}

struct Subscription {
    rx: broadcast::Receiver<LiveEvent>,
    hub: Arc<Hub>,
    user: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.subscribers.fetch_sub(1, Ordering::AcqRel);
        let mut per_user = self.hub.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

#[derive(Serialize)]
struct ProxyState {
    name: String,
    kind: String,
    status: &'static str,
    bound_addr: Option<String>,
}

#[derive(Serialize)]
struct Stats {
    ts_ms: i64,
    totals: Totals,
}

/// Every second while consoles are connected: request totals and, when they change, proxy states.
pub(crate) async fn ticker(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_proxies = String::new();
    loop {
        tick.tick().await;
        let hub = &state.events;
        if hub.tx.receiver_count() == 0 {
            last_proxies.clear();
            continue;
        }
        hub.publish(
            "stats",
            &Stats {
                ts_ms: palisade_core::now_ms(),
                totals: hub.totals(),
            },
        );
        let Ok(rows) = state.store.list_proxies().await else {
            continue;
        };
        let mut states = Vec::with_capacity(rows.len());
        for row in rows {
            let (status, bound_addr) = match state.manager.status(&row.spec.name).await {
                palisade_gateway::ProxyStatus::Running(a) => ("running", Some(a.to_string())),
                palisade_gateway::ProxyStatus::Stopped => ("stopped", None),
                palisade_gateway::ProxyStatus::Failed(_) => ("failed", None),
            };
            states.push(ProxyState {
                kind: serde_json::to_value(row.spec.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                name: row.spec.name,
                status,
                bound_addr,
            });
        }
        let json = serde_json::to_string(&states).unwrap_or_default();
        if json != last_proxies {
            let _ = hub.tx.send(LiveEvent {
                name: "proxies",
                data: json.as_str().into(),
            });
            last_proxies = json;
        }
    }
}

/// Live console events (server-sent events): `alert`, `request`, `stats`, `proxies`, `changed`,
/// and `resync` when this client fell behind and should refetch.
#[utoipa::path(get, path = "/api/v1/events", tag = "logs", security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", description = "event stream"),
        (status = 401), (status = 503, description = "too many live consoles")))]
pub async fn stream(
    State(s): State<AppState>,
    v: Viewer,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let sub = s.events.subscribe(&v.0.name).map_err(|msg| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_consoles",
            msg,
        )
    })?;
    let hello = Event::default()
        .event("hello")
        .data(serde_json::to_string(&s.events.totals()).unwrap_or_default());
    // The session is re-checked while the stream is open: a logout elsewhere, a password
    // change, a deleted user or an expired token ends it within RECHECK.
    let live = Live {
        sub,
        state: s,
        token: v.0.token,
        next_check: tokio::time::Instant::now() + RECHECK,
    };
    let stream =
        futures_util::stream::unfold((Some(hello), live), |(first, mut live)| async move {
            if let Some(ev) = first {
                return Some((Ok(ev), (None, live)));
            }
            loop {
                // The session is checked when due even while events keep coming (a client that
                // reads slowly always finds one waiting, so the timer alone would never win).
                if tokio::time::Instant::now() >= live.next_check {
                    if crate::auth::verify_token(&live.state, &live.token)
                        .await
                        .is_err()
                    {
                        return None;
                    }
                    live.next_check = tokio::time::Instant::now() + RECHECK;
                }
                let got = {
                    let recv = live.sub.rx.recv();
                    let check = tokio::time::sleep_until(live.next_check);
                    futures_util::pin_mut!(recv, check);
                    match futures_util::future::select(recv, check).await {
                        futures_util::future::Either::Left((res, _)) => Some(res),
                        futures_util::future::Either::Right(_) => None,
                    }
                };
                let ev = match got {
                    Some(Ok(ev)) => Event::default().event(ev.name).data(&*ev.data),
                    Some(Err(broadcast::error::RecvError::Lagged(n))) => {
                        Event::default().event("resync").data(n.to_string())
                    }
                    Some(Err(broadcast::error::RecvError::Closed)) => return None,
                    // Time to check the session: at the top of the loop.
                    None => continue,
                };
                return Some((Ok(ev), (None, live)));
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
