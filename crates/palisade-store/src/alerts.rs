//! Alerts and custom policies.

use palisade_core::now_ms;
use palisade_core::record::AlertRecord;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::store::audit_tx;
use crate::{Actor, Store, StoreError};

/// Filters of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlertFilter {
    /// Only the alert with this id.
    pub id: Option<String>,
    /// Only this kind (`policy`, `budget`, `mcp_tool`, `mcp_answer`).
    pub kind: Option<String>,
    /// Only this severity.
    pub severity: Option<String>,
    /// Only this proxy.
    pub proxy: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this rule id.
    pub rule_id: Option<String>,
    /// Only alerts raised by this request.
    pub request_id: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// At or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Page size (1–500, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

/// One page of alerts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertPage {
    /// Alerts, newest first.
    pub items: Vec<AlertRecord>,
    /// Number matching the filter.
    pub total: i64,
}

/// The statuses of the alert workflow.
pub const ALERT_STATUSES: [&str; 4] = ["new", "acknowledged", "resolved", "false_positive"];

pub(crate) const ALERT_COLS: &str = "id, ts_ms, kind, policy_id, rule_id, title, category, severity, action, blocked, target, \
    proxy, group_name, key_name, request_id, excerpt, decoded, message, status";

/// The alert whose [`ALERT_COLS`] start at column `at` of `r`.
pub(crate) fn alert_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<AlertRecord> {
    Ok(AlertRecord {
        id: r.get(at)?,
        ts_ms: r.get(at + 1)?,
        kind: r.get(at + 2)?,
        policy_id: r.get(at + 3)?,
        rule_id: r.get(at + 4)?,
        title: r.get(at + 5)?,
        category: r.get(at + 6)?,
        severity: r.get(at + 7)?,
        action: r.get(at + 8)?,
        blocked: r.get(at + 9)?,
        target: r.get(at + 10)?,
        proxy: r.get(at + 11)?,
        group: r.get(at + 12)?,
        key_name: r.get(at + 13)?,
        request_id: r.get(at + 14)?,
        excerpt: r.get(at + 15)?,
        decoded: r.get(at + 16)?,
        message: r.get(at + 17)?,
        status: r.get(at + 18)?,
        dedup_key: None,
    })
}

/// Inserts alerts; a repeated `dedup_key` is ignored (the first one stands).
pub(crate) fn insert_alerts(tx: &Connection, rows: &[AlertRecord]) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(&format!(
        "INSERT OR IGNORE INTO alerts ({ALERT_COLS}, dedup_key, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?2)"
    ))?;
    for a in rows {
        let status = if a.status.is_empty() {
            "new"
        } else {
            a.status.as_str()
        };
        st.execute(params![
            a.id,
            a.ts_ms,
            a.kind,
            a.policy_id,
            a.rule_id,
            a.title,
            a.category,
            a.severity,
            a.action,
            a.blocked,
            a.target,
            a.proxy,
            a.group,
            a.key_name,
            a.request_id,
            a.excerpt,
            a.decoded,
            a.message,
            status,
            a.dedup_key
        ])?;
    }
    Ok(())
}

impl Store {
    /// A filtered page of alerts, newest first.
    pub async fn query_alerts(&self, f: AlertFilter) -> Result<AlertPage, StoreError> {
        self.call(move |c| {
            let mut w = crate::filter::Where::new();
            w.eq("id", &f.id)
                .eq("kind", &f.kind)
                .eq("severity", &f.severity)
                .eq("proxy", &f.proxy)
                .eq("status", &f.status)
                .eq("rule_id", &f.rule_id)
                .eq("request_id", &f.request_id)
                .eq("group_name", &f.group)
                .window(f.since_ms, f.until_ms);
            let wh = w.sql.clone();
            let total: i64 = c.query_row(&format!("SELECT COUNT(*) FROM alerts{wh}"), w.params(), |r| r.get(0))?;
            let li = w.bind(f.limit.unwrap_or(50).clamp(1, 500));
            let oi = w.bind(f.offset.unwrap_or(0));
            let mut st = c.prepare(&format!(
                "SELECT {ALERT_COLS} FROM alerts{wh} ORDER BY ts_ms DESC, id LIMIT ?{li} OFFSET ?{oi}"
            ))?;
            let items = st
                .query_map(w.params(), |r| alert_from_row(r, 0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AlertPage { items, total })
        })
        .await
    }

    /// Moves an alert through the workflow (audited).
    pub async fn set_alert_status(
        &self,
        id: &str,
        status: &str,
        actor: Actor,
    ) -> Result<AlertRecord, StoreError> {
        let (id, status) = (id.to_string(), status.to_string());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = tx
                .query_row(
                    &format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?1"),
                    [&id],
                    |r| alert_from_row(r, 0),
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("alert `{id}`")))?;
            // Setting the status it has changes nothing, so nothing is recorded.
            if before.status == status {
                return Ok(before);
            }
            tx.execute(
                "UPDATE alerts SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, status, now_ms()],
            )?;
            let after = AlertRecord {
                status: status.clone(),
                ..before.clone()
            };
            audit_tx(
                &tx,
                &actor,
                "alert.status",
                "alert",
                &id,
                Some(&serde_json::json!({"status": before.status})),
                Some(&serde_json::json!({"status": after.status})),
            )?;
            tx.commit()?;
            Ok(after)
        })
        .await
    }

    /// Stores alerts at once (used for alerts raised outside the data path).
    pub async fn insert_alerts(&self, rows: Vec<AlertRecord>) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            insert_alerts(&tx, &rows)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Custom policies: `(id, document, updated_at)`.
    pub async fn list_policies(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare("SELECT id, document, updated_at FROM policies ORDER BY id")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Creates (`create`) or replaces a custom policy document (audited with before/after).
    pub async fn put_policy(
        &self,
        id: &str,
        document: String,
        create: bool,
        actor: Actor,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: Option<String> =
                tx.query_row("SELECT document FROM policies WHERE id = ?1", [&id], |r| r.get(0)).optional()?;
            let now = now_ms();
            match (&before, create) {
                (Some(_), true) => return Err(StoreError::Conflict(format!("policy `{id}` already exists"))),
                (None, false) => return Err(StoreError::NotFound(format!("policy `{id}`"))),
                (Some(b), false) if *b == document => return Ok(()),
                (None, true) => {
                    tx.execute(
                        "INSERT INTO policies (id, document, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                        params![id, document, now],
                    )?;
                }
                (Some(_), false) => {
                    tx.execute(
                        "UPDATE policies SET document = ?2, updated_at = ?3 WHERE id = ?1",
                        params![id, document, now],
                    )?;
                }
            }
            let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
            let action = if create { "policy.create" } else { "policy.update" };
            audit_tx(&tx, &actor, action, "policy", &id, before.as_deref().and_then(parse).as_ref(), parse(&document).as_ref())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes a custom policy (audited).
    pub async fn delete_policy(&self, id: &str, actor: Actor) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: String = tx
                .query_row("SELECT document FROM policies WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("policy `{id}`")))?;
            tx.execute("DELETE FROM policies WHERE id = ?1", [&id])?;
            let b = serde_json::from_str::<serde_json::Value>(&before).ok();
            audit_tx(
                &tx,
                &actor,
                "policy.delete",
                "policy",
                &id,
                b.as_ref(),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
