//! Webhooks for alert delivery, and each one's place in the alert log.
//!
//! A webhook keeps a cursor: the row number of the last alert it has been given. The delivery
//! worker reads the alerts after it in order and moves it only once a receiver has taken them,
//! so an alert raised while a receiver is down, or while the gateway restarts, is delivered
//! later, never skipped (at least once: a receiver deduplicates by alert id).

use palisade_core::now_ms;
use palisade_core::record::AlertRecord;
use palisade_core::webhook::WebhookSpec;
use rusqlite::{Connection, OptionalExtension, params};

use crate::alerts::{ALERT_COLS, alert_from_row};
use crate::store::{audit_tx, sealed_version, to_json};
use crate::{Actor, SealedUpdate, Store, StoreError};

/// A stored webhook with its delivery state.
#[derive(Debug, Clone)]
pub struct WebhookRow {
    /// Configuration; its `url` is the shown form (scheme and host), the URL itself is sealed.
    pub spec: WebhookSpec,
    /// The URL, sealed with the master key.
    pub url_sealed: String,
    /// Signing secret, sealed with the master key.
    pub secret_sealed: Option<String>,
    /// Row number of the last alert delivered (or skipped by its filters).
    pub cursor: i64,
    /// Alerts delivered so far.
    pub delivered: i64,
    /// Failed attempts since the last success.
    pub failures: i64,
    /// What the last failed attempt met.
    pub last_error: Option<String>,
    /// Last attempt, Unix ms.
    pub last_attempt_ms: Option<i64>,
    /// Last success, Unix ms.
    pub last_success_ms: Option<i64>,
    /// Alerts stored after the cursor (not all of them may pass the webhook's filters), counted
    /// up to 100 000 (the worker reads this every second).
    pub backlog: i64,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change of its configuration, Unix ms.
    pub updated_at: i64,
}

impl WebhookRow {
    /// What the audit log keeps of it: the spec and whether a secret is set, never the secret.
    fn audit_view(&self) -> serde_json::Value {
        let mut v = to_json(&self.spec);
        v["has_secret"] = self.secret_sealed.is_some().into();
        v["url_version"] = sealed_version(&self.url_sealed).into();
        if let Some(s) = &self.secret_sealed {
            v["secret_version"] = sealed_version(s).into();
        }
        v
    }
}

const COLS: &str = "spec, url_sealed, secret_sealed, cursor, delivered, failures, last_error, last_attempt_ms, \
    last_success_ms, created_at, updated_at, (SELECT COUNT(*) FROM (SELECT 1 FROM alerts WHERE alerts.rowid > webhooks.cursor LIMIT 100000))";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookRow> {
    let spec: String = r.get(0)?;
    let spec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(WebhookRow {
        spec,
        url_sealed: r.get(1)?,
        secret_sealed: r.get(2)?,
        cursor: r.get(3)?,
        delivered: r.get(4)?,
        failures: r.get(5)?,
        last_error: r.get(6)?,
        last_attempt_ms: r.get(7)?,
        last_success_ms: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        backlog: r.get(11)?,
    })
}

fn get_tx(c: &Connection, name: &str) -> Result<Option<WebhookRow>, StoreError> {
    c.query_row(
        &format!("SELECT {COLS} FROM webhooks WHERE name = ?1"),
        [name],
        row_of,
    )
    .optional()
    .map_err(Into::into)
}

impl Store {
    /// Every webhook, by name.
    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!("SELECT {COLS} FROM webhooks ORDER BY name"))?;
            Ok(st.query_map([], row_of)?.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One webhook.
    pub async fn get_webhook(&self, name: &str) -> Result<Option<WebhookRow>, StoreError> {
        let name = name.to_string();
        self.call(move |c| get_tx(c, &name)).await
    }

    /// Creates a webhook (audited). It delivers the alerts raised from now on, not the history.
    pub async fn create_webhook(
        &self,
        spec: WebhookSpec,
        url_sealed: String,
        secret_sealed: Option<String>,
        actor: Actor,
    ) -> Result<WebhookRow, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if get_tx(&tx, &spec.name)?.is_some() {
                return Err(StoreError::Conflict(format!("webhook `{}` already exists", spec.name)));
            }
            let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO webhooks (name, spec, url_sealed, secret_sealed, cursor, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(rowid), 0) FROM alerts), ?5, ?5)",
                params![spec.name, json, url_sealed, secret_sealed, now_ms()],
            )?;
            let row = get_tx(&tx, &spec.name)?
                .ok_or_else(|| StoreError::Corrupt("webhook vanished".into()))?;
            audit_tx(&tx, &actor, "webhook.create", "webhook", &spec.name, None, Some(&row.audit_view()))?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Replaces a webhook's configuration and, as `url` and `secret` say, its sealed URL and
    /// secret (audited; `SealedUpdate::Clear` of the URL keeps it: a webhook always has one).
    /// Its place in the alert log stays, as do its counters; a change that changes nothing
    /// records nothing.
    pub async fn update_webhook(
        &self,
        spec: WebhookSpec,
        url: SealedUpdate,
        secret: SealedUpdate,
        actor: Actor,
    ) -> Result<WebhookRow, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_tx(&tx, &spec.name)?
                .ok_or_else(|| StoreError::NotFound(format!("webhook `{}`", spec.name)))?;
            let sealed = match secret {
                SealedUpdate::Keep => before.secret_sealed.clone(),
                SealedUpdate::Set(s) => Some(s),
                SealedUpdate::Clear => None,
            };
            let url_sealed = match url {
                SealedUpdate::Set(s) => s,
                SealedUpdate::Keep | SealedUpdate::Clear => before.url_sealed.clone(),
            };
            if before.spec == spec && before.secret_sealed == sealed && before.url_sealed == url_sealed {
                return Ok(before);
            }
            let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE webhooks SET spec = ?2, url_sealed = ?3, secret_sealed = ?4, updated_at = ?5 WHERE name = ?1",
                params![spec.name, json, url_sealed, sealed, now_ms()],
            )?;
            let after = get_tx(&tx, &spec.name)?
                .ok_or_else(|| StoreError::Corrupt("webhook vanished".into()))?;
            audit_tx(
                &tx,
                &actor,
                "webhook.update",
                "webhook",
                &spec.name,
                Some(&before.audit_view()),
                Some(&after.audit_view()),
            )?;
            tx.commit()?;
            Ok(after)
        })
        .await
    }

    /// Deletes a webhook (audited).
    pub async fn delete_webhook(&self, name: &str, actor: Actor) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_tx(&tx, &name)?
                .ok_or_else(|| StoreError::NotFound(format!("webhook `{name}`")))?;
            tx.execute("DELETE FROM webhooks WHERE name = ?1", [&name])?;
            audit_tx(
                &tx,
                &actor,
                "webhook.delete",
                "webhook",
                &name,
                Some(&before.audit_view()),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` alerts stored after row `cursor`, oldest first, with their row numbers.
    pub async fn alerts_after(
        &self,
        cursor: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AlertRecord)>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT rowid, {ALERT_COLS} FROM alerts WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ))?;
            let rows = st
                .query_map(params![cursor, limit], |r| {
                    let n: i64 = r.get(0)?;
                    // The alert's columns follow the row number.
                    Ok((n, alert_from_row(r, 1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Records a delivery that the receiver took: the cursor moves to `cursor` (never back),
    /// `sent` alerts are counted, the failure streak ends.
    pub async fn webhook_delivered(
        &self,
        name: &str,
        cursor: i64,
        sent: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let now = now_ms();
            c.execute(
                "UPDATE webhooks SET cursor = MAX(cursor, ?2), delivered = delivered + ?3, failures = 0,
                 last_error = NULL, last_attempt_ms = ?4, last_success_ms = CASE WHEN ?3 > 0 THEN ?4 ELSE last_success_ms END
                 WHERE name = ?1",
                params![name, cursor, sent, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Records a failed delivery attempt; the cursor stays, so the same alerts go again.
    pub async fn webhook_failed(&self, name: &str, error: &str) -> Result<(), StoreError> {
        let (name, error) = (
            name.to_string(),
            error.chars().take(500).collect::<String>(),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE webhooks SET failures = failures + 1, last_error = ?2, last_attempt_ms = ?3 WHERE name = ?1",
                params![name, error, now_ms()],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::webhook::WebhookFormat;

    fn spec(name: &str) -> WebhookSpec {
        WebhookSpec {
            name: name.into(),
            url: "http://127.0.0.1:9/alerts".into(),
            format: WebhookFormat::Json,
            min_severity: "low".into(),
            kinds: vec![],
            enabled: true,
        }
    }

    fn alert(id: &str) -> AlertRecord {
        AlertRecord {
            id: id.into(),
            ts_ms: now_ms(),
            kind: "policy".into(),
            title: format!("alert {id}"),
            severity: "high".into(),
            message: "m".into(),
            ..AlertRecord::default()
        }
    }

    #[tokio::test]
    async fn a_webhook_starts_after_the_history_and_keeps_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_alerts(vec![alert("old")]).await.unwrap();
        let row = store
            .create_webhook(
                spec("ops"),
                "url".into(),
                Some("sealed".into()),
                Actor::system("t"),
            )
            .await
            .unwrap();
        assert_eq!(row.backlog, 0);
        store
            .insert_alerts(vec![alert("a1"), alert("a2")])
            .await
            .unwrap();
        let after = store.alerts_after(row.cursor, 10).await.unwrap();
        let ids: Vec<&str> = after.iter().map(|(_, a)| a.id.as_str()).collect();
        assert_eq!(ids, ["a1", "a2"]);
        assert_eq!(after[0].1.title, "alert a1");
        store
            .webhook_failed("ops", "connection refused")
            .await
            .unwrap();
        let w = store.get_webhook("ops").await.unwrap().unwrap();
        assert_eq!((w.failures, w.backlog, w.cursor), (1, 2, row.cursor));
        assert_eq!(w.last_error.as_deref(), Some("connection refused"));
        store.webhook_delivered("ops", after[1].0, 2).await.unwrap();
        // A stale success (an older cursor) never moves it back.
        store.webhook_delivered("ops", after[0].0, 0).await.unwrap();
        let w = store.get_webhook("ops").await.unwrap().unwrap();
        assert_eq!((w.failures, w.backlog, w.delivered), (0, 0, 2));
        assert!(w.last_error.is_none());
        // Updates keep the place and the secret unless told otherwise; the audit log never
        // holds the secret.
        let mut s = spec("ops");
        s.min_severity = "critical".into();
        let w2 = store
            .update_webhook(
                s,
                SealedUpdate::Keep,
                SealedUpdate::Keep,
                Actor::system("t"),
            )
            .await
            .unwrap();
        assert_eq!(
            (w2.cursor, w2.secret_sealed.as_deref()),
            (w.cursor, Some("sealed"))
        );
        assert_eq!(w2.url_sealed, "url");
        // A new secret is a change the audit log shows, without the secret.
        let w3 = store
            .update_webhook(
                w2.spec.clone(),
                SealedUpdate::Keep,
                SealedUpdate::Set("sealed-2".into()),
                Actor::system("t"),
            )
            .await
            .unwrap();
        assert_eq!(w3.secret_sealed.as_deref(), Some("sealed-2"));
        let audit = store
            .list_audit(crate::AuditFilter::default())
            .await
            .unwrap();
        let version =
            |v: &Option<serde_json::Value>| v.as_ref().map(|v| v["secret_version"].clone());
        assert!(
            audit
                .iter()
                .any(|e| e.action == "webhook.update" && version(&e.before) != version(&e.after)),
            "{audit:?}"
        );
        let text = format!("{audit:?}");
        assert!(text.contains("webhook.update") && text.contains("secret_version"));
        assert!(!text.contains("sealed-2"), "{text}");
        assert!(!text.contains("\"sealed\""), "{text}");
        assert!(matches!(
            store
                .create_webhook(spec("ops"), "u".into(), None, Actor::system("t"))
                .await,
            Err(StoreError::Conflict(_))
        ));
        store
            .delete_webhook("ops", Actor::system("t"))
            .await
            .unwrap();
        assert!(store.get_webhook("ops").await.unwrap().is_none());
    }
}
