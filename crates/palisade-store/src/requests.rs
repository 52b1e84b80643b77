//! The request log: batched inserts from the writer and filtered, paged queries for the API.

use palisade_core::record::{AlertRecord, RequestRecord};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{Store, StoreError};

/// Filters of `GET /api/v1/requests`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RequestFilter {
    /// Only the request with this id.
    pub id: Option<String>,
    /// Only this proxy.
    pub proxy: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only requests authenticated by this key name.
    pub key: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// Only this HTTP status.
    pub status: Option<u16>,
    /// Only failed (`true`, status ≥ 400) or successful (`false`) requests.
    pub errors: Option<bool>,
    /// Only this endpoint (`chat_completions`, `messages`, …).
    pub endpoint: Option<String>,
    /// Only this policy decision (`allow`, `log`, `alert`, `redact`, `block`), or `none`:
    /// requests no policy judged (as `/metrics` labels them).
    pub decision: Option<String>,
    /// Only this MCP tool.
    pub tool: Option<String>,
    /// Only requests at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only requests before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Page size (1–500, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

/// One page of the request log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestPage {
    /// Rows, newest first.
    pub items: Vec<RequestRecord>,
    /// Number of rows matching the filter.
    pub total: i64,
    /// Page size used.
    pub limit: u32,
    /// Offset used.
    pub offset: u32,
}

/// How many requests a row of the request log stands for (a folded row, several).
pub(crate) const REQUESTS_OF_ROW: &str = "COALESCE(folded, 1)";

pub(crate) fn insert_batch(
    conn: &mut Connection,
    rows: &[RequestRecord],
    alerts: &[AlertRecord],
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    crate::alerts::insert_alerts(&tx, alerts)?;
    {
        let mut st = tx.prepare_cached(
            "INSERT OR REPLACE INTO requests (id, ts_ms, proxy, api, method, path, endpoint, model, stream, status,
             key_id, key_name, group_name, prompt_tokens, completion_tokens, cached_tokens, total_tokens,
             latency_us, ttfb_us, overhead_us, error, client, decision, risk_score, matched_rules, cost_nano,
             cost_unknown, prompt, redactions, session, tool, folded)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22,
                     ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)",
        )?;
        for r in rows {
            st.execute(params![
                r.id,
                r.ts_ms,
                r.proxy,
                r.api,
                r.method,
                r.path,
                r.endpoint,
                r.model,
                r.stream,
                r.status,
                r.key_id,
                r.key_name,
                r.group,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.total_tokens,
                r.latency_us,
                r.ttfb_us,
                r.overhead_us,
                r.error,
                r.client,
                r.decision,
                r.risk_score,
                r.matched_rules,
                r.cost_usd
                    .map(|c| (c * palisade_core::spend::NANO_PER_USD).round() as i64),
                r.cost_unknown,
                r.prompt,
                r.redactions,
                r.session,
                r.tool,
                r.folded
            ])?;
        }
    }
    tx.commit()
}

impl Store {
    /// A filtered page of the request log, newest first.
    pub async fn query_requests(&self, f: RequestFilter) -> Result<RequestPage, StoreError> {
        self.call(move |c| {
            let mut w = crate::filter::Where::new();
            w.eq("id", &f.id)
                .eq("proxy", &f.proxy)
                .eq("model", &f.model)
                .eq("key_name", &f.key)
                .eq("group_name", &f.group)
                .eq("endpoint", &f.endpoint)
                .eq("decision", &f.decision.clone().filter(|d| d != "none"))
                .eq("tool", &f.tool)
                .eq("status", &f.status)
                .window(f.since_ms, f.until_ms);
            if f.decision.as_deref() == Some("none") {
                w.sql.push_str(" AND decision IS NULL");
            }
            match f.errors {
                Some(true) => w.sql.push_str(" AND status >= 400"),
                Some(false) => w.sql.push_str(" AND status < 400"),
                None => {}
            }
            let wh = w.sql.clone();
            let total: i64 = c.query_row(&format!("SELECT COUNT(*) FROM requests{wh}"), w.params(), |r| r.get(0))?;
            let limit = f.limit.unwrap_or(50).clamp(1, 500);
            let offset = f.offset.unwrap_or(0);
            let li = w.bind(limit);
            let oi = w.bind(offset);
            let sql = format!(
                "SELECT id, ts_ms, proxy, api, method, path, endpoint, model, stream, status, key_id, key_name,
                 group_name, prompt_tokens, completion_tokens, cached_tokens, total_tokens, latency_us, ttfb_us,
                 overhead_us, error, client, decision, risk_score, matched_rules, cost_nano, cost_unknown, prompt, redactions, session, tool, folded FROM requests{wh} ORDER BY ts_ms DESC, id LIMIT ?{li} OFFSET ?{oi}"
            );
            let mut st = c.prepare(&sql)?;
            let items = st
                .query_map(w.params(), |r| {
                    Ok(RequestRecord {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        proxy: r.get(2)?,
                        api: r.get(3)?,
                        method: r.get(4)?,
                        path: r.get(5)?,
                        endpoint: r.get(6)?,
                        model: r.get(7)?,
                        stream: r.get(8)?,
                        status: r.get(9)?,
                        key_id: r.get(10)?,
                        key_name: r.get(11)?,
                        group: r.get(12)?,
                        prompt_tokens: r.get(13)?,
                        completion_tokens: r.get(14)?,
                        cached_tokens: r.get(15)?,
                        total_tokens: r.get(16)?,
                        latency_us: r.get(17)?,
                        ttfb_us: r.get(18)?,
                        overhead_us: r.get(19)?,
                        error: r.get(20)?,
                        client: r.get(21)?,
                        decision: r.get(22)?,
                        risk_score: r.get(23)?,
                        matched_rules: r.get(24)?,
                        cost_usd: r
                            .get::<_, Option<i64>>(25)?
                            .map(|n| n as f64 / palisade_core::spend::NANO_PER_USD),
                        cost_unknown: r.get(26)?,
                        prompt: r.get(27)?,
                        redactions: r.get(28)?,
                        session: r.get(29)?,
                        tool: r.get(30)?,
                        folded: r.get(31)?,
                        trace_parent: None,
                        content: None,
                        upstream: None,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RequestPage { items, total, limit, offset })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with every logged field set, all of them different from row to row.
    fn full_record(i: i64) -> RequestRecord {
        let text = |what: &str| format!("{what}-{i}");
        RequestRecord {
            id: format!("{i:04}"),
            ts_ms: 1_000 + i,
            proxy: text("proxy"),
            api: text("api"),
            method: text("method"),
            path: text("/path"),
            endpoint: text("endpoint"),
            model: Some(text("model")),
            stream: i % 2 == 0,
            status: 200 + i as u16,
            key_id: Some(text("key-id")),
            key_name: Some(text("key")),
            group: Some(text("group")),
            prompt_tokens: Some(10 + i),
            completion_tokens: Some(20 + i),
            cached_tokens: Some(30 + i),
            total_tokens: Some(40 + i),
            latency_us: 50 + i,
            ttfb_us: Some(60 + i),
            overhead_us: 70 + i,
            error: Some(text("error")),
            client: text("client"),
            decision: Some(text("decision")),
            risk_score: Some(i),
            matched_rules: Some(text("rules")),
            cost_usd: Some(i as f64 / 1000.0),
            cost_unknown: i % 3 == 0,
            prompt: Some(text("prompt")),
            redactions: Some(80 + i),
            session: Some(text("session")),
            tool: Some(text("tool")),
            folded: Some(90 + i),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_field_of_a_batch_reads_back_and_a_repeated_id_replaces_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rows: Vec<RequestRecord> = (0..37).map(full_record).collect();
        // A record written twice (a retried batch) keeps one row, the later.
        let mut again = full_record(3);
        again.status = 599;
        rows.push(again.clone());
        let mut conn = crate::store::open_connection(store.path()).unwrap();
        insert_batch(&mut conn, &rows, &[]).unwrap();

        let page = store
            .query_requests(RequestFilter {
                limit: Some(500),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut want = rows[..rows.len() - 1].to_vec();
        want[3] = again;
        want.reverse();
        assert_eq!(page.total, want.len() as i64);
        assert_eq!(
            page.items, want,
            "every field of every row reads back as written"
        );
    }
}
