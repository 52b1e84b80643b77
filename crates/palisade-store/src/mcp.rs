//! MCP tools: approval state, pinned fingerprints and definition history.

use palisade_core::now_ms;
use palisade_core::record::McpTool;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::audit_tx;
use crate::{Actor, Store, StoreError};

const COLS: &str = "proxy, name, status, fingerprint, approved_fingerprint, definition, findings, present, first_seen_ms, updated_ms";

fn tool_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<McpTool> {
    let def: String = r.get(5)?;
    let findings: String = r.get(6)?;
    Ok(McpTool {
        proxy: r.get(0)?,
        name: r.get(1)?,
        status: r.get(2)?,
        fingerprint: r.get(3)?,
        approved_fingerprint: r.get(4)?,
        definition: serde_json::from_str(&def).unwrap_or(serde_json::Value::Null),
        findings: serde_json::from_str(&findings).unwrap_or_default(),
        present: r.get(7)?,
        first_seen_ms: r.get(8)?,
        updated_ms: r.get(9)?,
    })
}

/// One past definition of a tool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolVersion {
    /// Fingerprint.
    pub fingerprint: String,
    /// Definition.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// When it was first offered, Unix ms.
    pub ts_ms: i64,
}

impl Store {
    /// Every recorded tool (all proxies), for the gateway's registry at start.
    pub async fn all_tools(&self) -> Result<Vec<McpTool>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM mcp_tools ORDER BY proxy, name"
            ))?;
            let rows = st
                .query_map([], tool_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Tools of one proxy.
    pub async fn proxy_tools(&self, proxy: &str) -> Result<Vec<McpTool>, StoreError> {
        let proxy = proxy.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM mcp_tools WHERE proxy = ?1 ORDER BY name"
            ))?;
            let rows = st
                .query_map([&proxy], tool_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Records a tool as the data plane saw it; a new fingerprint is added to the history.
    pub async fn upsert_tool(&self, t: McpTool) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let def = t.definition.to_string();
            let known: bool = tx
                .query_row(
                    "SELECT 1 FROM mcp_tool_history WHERE proxy = ?1 AND name = ?2 AND fingerprint = ?3",
                    params![t.proxy, t.name, t.fingerprint],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !known {
                tx.execute(
                    "INSERT INTO mcp_tool_history (proxy, name, fingerprint, definition, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.proxy, t.name, t.fingerprint, def, now_ms()],
                )?;
            }
            tx.execute(
                &format!(
                    "INSERT INTO mcp_tools ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (proxy, name) DO UPDATE SET status = ?3, fingerprint = ?4, approved_fingerprint = ?5,
                       definition = ?6, findings = ?7, present = ?8, updated_ms = ?10
                     WHERE excluded.updated_ms >= mcp_tools.updated_ms"
                ),
                params![
                    t.proxy,
                    t.name,
                    t.status,
                    t.fingerprint,
                    t.approved_fingerprint,
                    def,
                    serde_json::to_string(&t.findings).unwrap_or_else(|_| "[]".into()),
                    t.present,
                    t.first_seen_ms,
                    t.updated_ms
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// An administrator's decision on a tool (audited): approve pins the current fingerprint,
    /// which must be `reviewed` when that is given (`Conflict` otherwise).
    pub async fn set_tool_status(
        &self,
        proxy: &str,
        name: &str,
        status: &'static str,
        reviewed: Option<String>,
        actor: Actor,
    ) -> Result<McpTool, StoreError> {
        let (proxy, name) = (proxy.to_string(), name.to_string());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = tx
                .query_row(
                    &format!("SELECT {COLS} FROM mcp_tools WHERE proxy = ?1 AND name = ?2"),
                    params![proxy, name],
                    tool_from_row,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("tool `{name}` on proxy `{proxy}`")))?;
            // An approval of a reviewed definition pins that one or nothing: the definition
            // stored now is compared in the same transaction that pins it.
            if let Some(fp) = reviewed.filter(|fp| *fp != before.fingerprint) {
                return Err(StoreError::Conflict(format!(
                    "tool `{name}` changed since it was reviewed (reviewed {fp}, now {}); review its current definition and approve again",
                    before.fingerprint
                )));
            }
            let approved_fp =
                if status == "approved" { Some(before.fingerprint.clone()) } else { before.approved_fingerprint.clone() };
            tx.execute(
                "UPDATE mcp_tools SET status = ?3, approved_fingerprint = ?4, updated_ms = ?5 WHERE proxy = ?1 AND name = ?2",
                params![proxy, name, status, approved_fp, now_ms()],
            )?;
            let after = McpTool { status: status.to_string(), approved_fingerprint: approved_fp, ..before.clone() };
            audit_tx(
                &tx,
                &actor,
                &format!("mcp_tool.{}", if status == "approved" { "approve" } else { "disable" }),
                "mcp_tool",
                &format!("{proxy}/{name}"),
                Some(&serde_json::json!({"status": before.status, "fingerprint": before.approved_fingerprint})),
                Some(&serde_json::json!({"status": after.status, "fingerprint": after.approved_fingerprint})),
            )?;
            tx.commit()?;
            Ok(after)
        })
        .await
    }

    /// Definitions a tool has had, newest first.
    pub async fn tool_history(
        &self,
        proxy: &str,
        name: &str,
    ) -> Result<Vec<ToolVersion>, StoreError> {
        let (proxy, name) = (proxy.to_string(), name.to_string());
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT fingerprint, definition, ts_ms FROM mcp_tool_history WHERE proxy = ?1 AND name = ?2 ORDER BY id DESC",
            )?;
            let rows = st
                .query_map(params![proxy, name], |r| {
                    let d: String = r.get(1)?;
                    Ok(ToolVersion {
                        fingerprint: r.get(0)?,
                        definition: serde_json::from_str(&d).unwrap_or(serde_json::Value::Null),
                        ts_ms: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}
