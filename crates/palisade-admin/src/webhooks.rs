//! Alert delivery to webhooks: the API, and the worker that delivers.
//!
//! The worker reads each enabled webhook's alerts after its cursor (the alert log is the queue:
//! nothing is held in memory that a restart could lose), POSTs them in batches, and moves the
//! cursor once the receiver answers 2xx. A receiver that fails is tried again with growing pauses
//! (2 s doubling to 5 minutes), the same alerts in the same order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::record::AlertRecord;
use palisade_core::webhook::{WebhookSpec, check_secret, delivery_body, shown_url, signature};
use palisade_store::{Actor, SealedUpdate, WebhookRow};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{SecretChange, ValidJson, parse, take_secret};

/// Alerts per delivery.
const BATCH: u32 = 50;
/// Batches one webhook may send in a row before the others get their turn.
const BATCHES_PER_ROUND: usize = 20;
/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often the worker looks for new alerts.
const TICK: Duration = Duration::from_secs(1);
/// Longest pause between attempts of a failing receiver.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// A webhook as the API shows it. The URL is shown as scheme and host only and the signing
/// secret not at all: both are stored encrypted.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// Configuration (`url` in its shown form).
    #[serde(flatten)]
    pub spec: WebhookSpec,
    /// Whether deliveries are signed (`x-palisade-signature`).
    pub has_secret: bool,
    /// Alerts delivered so far.
    pub delivered: i64,
    /// Failed attempts since the last success (0: healthy).
    pub failures: i64,
    /// What the last failed attempt met.
    pub last_error: Option<String>,
    /// Last attempt, Unix ms.
    pub last_attempt_ms: Option<i64>,
    /// Last delivery the receiver took, Unix ms.
    pub last_success_ms: Option<i64>,
    /// Alerts stored since its cursor, waiting (before its severity and kind filters; counted
    /// up to 100 000).
    pub backlog: i64,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

impl From<WebhookRow> for WebhookView {
    fn from(r: WebhookRow) -> Self {
        Self {
            has_secret: r.secret_sealed.is_some(),
            spec: r.spec,
            delivered: r.delivered,
            failures: r.failures,
            last_error: r.last_error,
            last_attempt_ms: r.last_attempt_ms,
            last_success_ms: r.last_success_ms,
            backlog: r.backlog,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of create/replace: the webhook's fields plus an optional `secret` that signs its
/// deliveries (on replace: absent keeps the stored one, `""` removes it).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct WebhookInput {
    #[serde(flatten)]
    spec: WebhookSpec,
    /// HMAC-SHA256 signing secret (16 to 256 bytes); stored encrypted, never returned.
    secret: Option<String>,
}

/// Splits `secret` out of a JSON body ([`take_secret`]) and checks its length.
fn secret_of(body: &mut Value) -> ApiResult<SecretChange> {
    let change = take_secret(body, "secret")?;
    if let SecretChange::Set(s) = &change {
        check_secret(s)?;
        // `env:` names a variable in the config file; through the API it would be the secret.
        if s.starts_with("env:") {
            return Err(ApiError::field(
                "secret",
                "`env:` references are read from the config file only; give the secret itself",
            ));
        }
    }
    Ok(change)
}

impl AppState {
    /// Creates a webhook; it delivers the alerts raised from now on.
    pub async fn create_webhook(
        &self,
        mut spec: WebhookSpec,
        secret: Option<String>,
        actor: Actor,
    ) -> ApiResult<WebhookView> {
        spec.validate()?;
        let url_sealed = self.master.seal(&spec.url);
        spec.url = shown_url(&spec.url);
        let secret = secret.map(|s| self.master.seal(&s));
        let row = self
            .store
            .create_webhook(spec, url_sealed, secret, actor)
            .await?;
        self.webhooks.wake.notify_one();
        Ok(row.into())
    }

    /// Replaces a webhook's configuration (its place in the alert log stays).
    pub async fn update_webhook(
        &self,
        mut spec: WebhookSpec,
        secret: SecretChange,
        actor: Actor,
    ) -> ApiResult<WebhookView> {
        spec.validate()?;
        let current = self
            .store
            .get_webhook(&spec.name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("webhook `{}`", spec.name)))?;
        // Sealing is randomised: the same URL or secret again is "keep", so a config file
        // applied twice records no change.
        let url = if self.master.open(&current.url_sealed).ok().as_deref() == Some(&spec.url) {
            SealedUpdate::Keep
        } else {
            SealedUpdate::Set(self.master.seal(&spec.url))
        };
        let secret = match secret {
            SecretChange::Keep => SealedUpdate::Keep,
            SecretChange::Clear => SealedUpdate::Clear,
            SecretChange::Set(s) => {
                let stored = current
                    .secret_sealed
                    .as_deref()
                    .map(|x| self.master.open(x));
                if matches!(stored, Some(Ok(ref x)) if *x == s) {
                    SealedUpdate::Keep
                } else {
                    SealedUpdate::Set(self.master.seal(&s))
                }
            }
        };
        spec.url = shown_url(&spec.url);
        let row = self.store.update_webhook(spec, url, secret, actor).await?;
        self.webhooks.wake.notify_one();
        Ok(row.into())
    }

    /// Creates or replaces a webhook from the config file (`secret`: `None` removes it).
    pub async fn apply_webhook(
        &self,
        spec: WebhookSpec,
        secret: Option<String>,
        actor: Actor,
    ) -> ApiResult<WebhookView> {
        if self.store.get_webhook(&spec.name).await?.is_none() {
            return self.create_webhook(spec, secret, actor).await;
        }
        let change = secret.map_or(SecretChange::Clear, SecretChange::Set);
        self.update_webhook(spec, change, actor).await
    }
}

/// The worker's wake-up call and the pauses of failing receivers.
#[derive(Default)]
pub struct Deliveries {
    /// Rung when webhooks change, so a new one is tried at once.
    pub wake: tokio::sync::Notify,
}

/// Delivers alerts to the enabled webhooks until the process ends.
pub async fn deliver_alerts(state: AppState) {
    let mut tls = state.webhook_tls.current();
    let mut client = palisade_gateway::build_guarded_client_with(&tls);
    // Failing receivers: when to try again.
    let mut paused: HashMap<String, Instant> = HashMap::new();
    // Whether the last read found an enabled webhook. Without one there is nothing to poll for:
    // the worker sleeps until a webhook is created or changed (the wake-up is kept if it comes
    // while the worker is busy), instead of reading the database every second.
    let mut any_enabled = true;
    let mut first = true;
    loop {
        if first {
            first = false;
        } else if any_enabled {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = state.webhooks.wake.notified() => {}
            }
        } else {
            state.webhooks.wake.notified().await;
        }
        let hooks = match state.store.list_webhooks().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "webhooks could not be read; alert delivery waits");
                any_enabled = true;
                continue;
            }
        };
        any_enabled = hooks.iter().any(|h| h.spec.enabled);
        // Renewed certificates (their files changed) take a new client.
        let now_tls = state.webhook_tls.current();
        if !std::sync::Arc::ptr_eq(&now_tls, &tls) {
            client = palisade_gateway::build_guarded_client_with(&now_tls);
            tls = now_tls;
        }
        let now = Instant::now();
        paused.retain(|name, _| hooks.iter().any(|h| h.spec.name == *name));
        let due: Vec<WebhookRow> = hooks
            .into_iter()
            .filter(|h| h.spec.enabled && h.backlog > 0)
            .filter(|h| paused.get(&h.spec.name).is_none_or(|t| *t <= now))
            .collect();
        let outcomes =
            futures_util::future::join_all(due.iter().map(|h| drain(&state, &client, h))).await;
        for (h, ok) in due.iter().zip(outcomes) {
            if ok {
                paused.remove(&h.spec.name);
            } else {
                let n = (h.failures + 1).clamp(1, 16) as u32;
                let pause = Duration::from_secs(1u64 << n.min(9)).min(MAX_PAUSE);
                paused.insert(h.spec.name.clone(), Instant::now() + pause);
            }
        }
    }
}

/// Sends a webhook's waiting alerts, batch after batch; false when a delivery failed.
async fn drain(state: &AppState, client: &palisade_gateway::GuardedClient, h: &WebhookRow) -> bool {
    let name = &h.spec.name;
    let mut cursor = h.cursor;
    for _ in 0..BATCHES_PER_ROUND {
        let rows = match state.store.alerts_after(cursor, BATCH).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(webhook = %name, error = %e, "alerts could not be read");
                return false;
            }
        };
        let Some(&(last, _)) = rows.last() else {
            return true;
        };
        let full = rows.len() == BATCH as usize;
        let wanted: Vec<AlertRecord> = rows
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| h.spec.wants(a))
            .collect();
        if !wanted.is_empty()
            && let Err(e) = send(state, client, h, &wanted).await.and_then(taken)
        {
            tracing::warn!(webhook = %name, error = %e, alerts = wanted.len(), "alert delivery failed; will try again");
            if let Err(e) = state.store.webhook_failed(name, &e).await {
                tracing::error!(webhook = %name, error = %e, "delivery state could not be saved");
            }
            return false;
        }
        if let Err(e) = state
            .store
            .webhook_delivered(name, last, wanted.len() as i64)
            .await
        {
            // The receiver has them; they go again after a restart (at least once).
            tracing::error!(webhook = %name, error = %e, "delivery state could not be saved");
            return false;
        }
        cursor = last;
        if !full {
            return true;
        }
    }
    true
}

/// POSTs `alerts` to `h`, signed when it has a secret.
async fn send(
    state: &AppState,
    client: &palisade_gateway::GuardedClient,
    h: &WebhookRow,
    alerts: &[AlertRecord],
) -> Result<Option<u16>, String> {
    let url = state
        .master
        .open(&h.url_sealed)
        .map_err(|_| "its URL cannot be decrypted with this master key".to_string())?;
    let body = delivery_body(&h.spec.name, h.spec.format, alerts);
    if h.spec.format == palisade_core::webhook::WebhookFormat::Syslog {
        let target = palisade_core::webhook::syslog_target(&url)
            .ok_or_else(|| "its address is not tls://host:port or tcp://host:port".to_string())?;
        palisade_gateway::send_syslog(&target, &state.webhook_tls.current(), &body, TIMEOUT)
            .await?;
        // Every byte was taken; a collector answers nothing, so there is no status.
        return Ok(None);
    }
    let mut headers = vec![
        ("x-palisade-webhook", h.spec.name.clone()),
        ("x-palisade-delivery", palisade_core::crypto::random_id()),
    ];
    if let Some(sealed) = &h.secret_sealed {
        let secret = state
            .master
            .open(sealed)
            .map_err(|_| "its secret cannot be decrypted with this master key".to_string())?;
        let now = palisade_core::now_ms() / 1000;
        headers.push(("x-palisade-signature", signature(&secret, now, &body)));
    }
    palisade_gateway::post_json(client, &url, &headers, body, TIMEOUT)
        .await
        .map(|p| Some(p.status))
}

/// A receiver's answer as a delivery outcome: 2xx (or a syslog collector's taking every byte,
/// `None`) took the alerts; anything else is an error naming the status (not the answer's
/// body: the URL may be a service that is no webhook, and the error is shown to every viewer).
fn taken(status: Option<u16>) -> Result<(), String> {
    match status {
        Some(s) if !(200..300).contains(&s) => Err(format!("receiver answered HTTP {s}")),
        _ => Ok(()),
    }
}

/// List webhooks.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = [WebhookView]), (status = 401, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<WebhookView>>> {
    let rows = s.store.list_webhooks().await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// Create a webhook. It receives the alerts raised from now on.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])), request_body = WebhookInput,
    responses((status = 201, body = WebhookView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    let secret = match secret_of(&mut body)? {
        SecretChange::Set(k) => Some(k),
        _ => None,
    };
    let spec: WebhookSpec = parse(body.to_string().as_bytes())?;
    Ok((
        StatusCode::CREATED,
        Json(s.create_webhook(spec, secret, u.actor()).await?),
    ))
}

/// Replace a webhook's configuration; `url` is required again (it is never shown).
#[utoipa::path(put, path = "/api/v1/webhooks/{name}", tag = "webhooks", security(("bearer" = [])), request_body = WebhookInput,
    params(("name" = String, Path, description = "Webhook name")),
    responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replace(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<Json<WebhookView>> {
    let secret = secret_of(&mut body)?;
    let spec: WebhookSpec = parse(body.to_string().as_bytes())?;
    if spec.name != name {
        return Err(ApiError::field("name", "must match the path"));
    }
    Ok(Json(s.update_webhook(spec, secret, u.actor()).await?))
}

/// Delete a webhook.
#[utoipa::path(delete, path = "/api/v1/webhooks/{name}", tag = "webhooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "Webhook name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_webhook(&name, u.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Outcome of a test delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestOutcome {
    /// Whether the receiver answered 2xx.
    pub ok: bool,
    /// Its HTTP status, if it answered (none for a syslog collector, which answers nothing).
    pub status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
}

/// Send a test alert to a webhook now (whatever its filters; its place in the log stays).
#[utoipa::path(post, path = "/api/v1/webhooks/{name}/test", tag = "webhooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "Webhook name")),
    responses((status = 200, body = TestOutcome), (status = 404, body = ErrorBody)))]
pub async fn test(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<TestOutcome>> {
    let h = s
        .store
        .get_webhook(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook `{name}`")))?;
    let alert = AlertRecord {
        id: palisade_core::crypto::record_id(),
        ts_ms: palisade_core::now_ms(),
        kind: "test".into(),
        title: "Test delivery from Palisade".into(),
        severity: "low".into(),
        message: format!("Sent by {} to check webhook `{name}`.", u.name),
        status: "new".into(),
        ..AlertRecord::default()
    };
    let client = palisade_gateway::build_guarded_client_with(&s.webhook_tls.current());
    let outcome = match send(&s, &client, &h, &[alert]).await {
        Ok(status) => match taken(status) {
            Ok(()) => TestOutcome {
                ok: true,
                status,
                error: None,
            },
            Err(e) => TestOutcome {
                ok: false,
                status,
                error: Some(e),
            },
        },
        Err(e) => TestOutcome {
            ok: false,
            status: None,
            error: Some(e),
        },
    };
    s.store
        .record_event(
            u.actor(),
            "webhook.test",
            "webhook",
            &name,
            Some(serde_json::json!({"ok": outcome.ok, "error": outcome.error})),
        )
        .await?;
    Ok(Json(outcome))
}
