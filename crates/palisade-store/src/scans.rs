//! Reports of MCP scans run through the API, newest first; the oldest beyond [`KEEP`] are
//! dropped as new ones arrive.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use crate::store::audit_tx;
use crate::{Actor, Store, StoreError};

/// Scans kept.
pub const KEEP: i64 = 200;

/// A stored scan: its summary, and the report when asked for one.
#[derive(Debug, Clone)]
pub struct ScanRow {
    /// Scan id.
    pub id: String,
    /// When it ran, Unix ms.
    pub ts_ms: i64,
    /// Who ran it.
    pub actor: String,
    /// What was scanned.
    pub target: String,
    /// Findings per severity: critical, high, medium, low.
    pub counts: [i64; 4],
    /// The report (JSON), in [`Store::get_scan`] only.
    pub report: Option<Value>,
}

fn row_of(r: &rusqlite::Row<'_>, with_report: bool) -> rusqlite::Result<ScanRow> {
    let report = if with_report {
        let text: String = r.get(8)?;
        Some(serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
        })?)
    } else {
        None
    };
    Ok(ScanRow {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        actor: r.get(2)?,
        target: r.get(3)?,
        counts: [r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
        report,
    })
}

impl Store {
    /// Stores a scan's report and audits the scan (`scan.run`, with the target and counts).
    pub async fn insert_scan(&self, row: ScanRow, actor: Actor) -> Result<(), StoreError> {
        self.call(move |c| {
            let report = row.report.as_ref().map(Value::to_string).unwrap_or_else(|| "null".into());
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO scans (id, ts_ms, actor, target, critical, high, medium, low, report)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.id, row.ts_ms, row.actor, row.target, row.counts[0], row.counts[1],
                    row.counts[2], row.counts[3], report
                ],
            )?;
            tx.execute(
                "DELETE FROM scans WHERE id IN (SELECT id FROM scans ORDER BY ts_ms DESC, rowid DESC LIMIT -1 OFFSET ?1)",
                [KEEP],
            )?;
            let detail = serde_json::json!({
                "target": row.target,
                "critical": row.counts[0], "high": row.counts[1],
                "medium": row.counts[2], "low": row.counts[3]
            });
            audit_tx(&tx, &actor, "scan.run", "scan", &row.id, None, Some(&detail))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The newest scans (summaries), at most `limit`.
    pub async fn list_scans(&self, limit: u32) -> Result<Vec<ScanRow>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, ts_ms, actor, target, critical, high, medium, low FROM scans
                 ORDER BY ts_ms DESC, rowid DESC LIMIT ?1",
            )?;
            Ok(st
                .query_map([limit], |r| row_of(r, false))?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One scan with its report.
    pub async fn get_scan(&self, id: &str) -> Result<Option<ScanRow>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT id, ts_ms, actor, target, critical, high, medium, low, report FROM scans WHERE id = ?1",
                [id],
                |r| row_of(r, true),
            )
            .optional()
            .map_err(Into::into)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scans_are_kept_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..(KEEP + 3) {
            store
                .insert_scan(
                    ScanRow {
                        id: format!("s{i}"),
                        ts_ms: 1000 + i,
                        actor: "admin".into(),
                        target: "http://127.0.0.1:1/mcp".into(),
                        counts: [i, 0, 0, 1],
                        report: Some(serde_json::json!({"n": i})),
                    },
                    Actor::system("admin"),
                )
                .await
                .unwrap();
        }
        let list = store.list_scans(500).await.unwrap();
        assert_eq!(list.len() as i64, KEEP);
        assert_eq!(list[0].id, format!("s{}", KEEP + 2));
        assert!(list[0].report.is_none());
        assert!(
            store.get_scan("s0").await.unwrap().is_none(),
            "the oldest are dropped"
        );
        let last = store
            .get_scan(&format!("s{}", KEEP + 2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last.report.unwrap()["n"], KEEP + 2);
        assert_eq!(last.counts, [KEEP + 2, 0, 0, 1]);
    }
}
