//! What the web console needs beyond the other modules: user management and the dashboard's
//! bounded aggregate queries over the request log.

use palisade_core::now_ms;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::audit_tx;
use crate::{Actor, Store, StoreError};

/// A console user as listed (never the password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserInfo {
    /// Login name.
    pub username: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// The user must set a new password at next login.
    pub must_change_password: bool,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

/// The columns `user_info` reads, in order.
const USER_COLUMNS: &str = "username, role, must_change_password, created_at, updated_at";

fn user_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserInfo> {
    Ok(UserInfo {
        username: r.get(0)?,
        role: r.get(1)?,
        must_change_password: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

/// One bucket of the dashboard time series.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesPoint {
    /// Bucket start, Unix ms.
    pub ts_ms: i64,
    /// Requests in the bucket.
    pub requests: i64,
    /// Of which failed (HTTP status ≥ 400).
    pub errors: i64,
    /// Of which blocked by a policy.
    pub blocked: i64,
}

/// Traffic of one proxy over the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProxyTraffic {
    /// Proxy name.
    pub proxy: String,
    /// Requests.
    pub requests: i64,
    /// Failed requests.
    pub errors: i64,
    /// Blocked requests.
    pub blocked: i64,
    /// Mean latency, µs.
    pub avg_latency_us: i64,
}

/// Raw dashboard figures over a window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardData {
    /// Per-bucket counts, oldest first (empty buckets included).
    pub series: Vec<SeriesPoint>,
    /// Per-proxy traffic.
    pub proxies: Vec<ProxyTraffic>,
    /// Latencies (µs, ascending) of the newest requests of the window, at most
    /// [`LATENCY_SAMPLE`], for percentiles.
    pub latencies_us: Vec<i64>,
    /// Alerts with status `new` or `acknowledged`.
    pub open_alerts: i64,
    /// Of which `critical` or `high`.
    pub open_alerts_high: i64,
    /// Cost of the calendar month so far (UTC), in nano-USD.
    pub month_spend_nano: i64,
}

/// How many of the newest requests of a window the latency percentiles are computed over,
/// so the dashboard query stays bounded under heavy traffic.
pub const LATENCY_SAMPLE: usize = 20_000;

fn check_role(role: &str) -> Result<(), StoreError> {
    if matches!(role, "admin" | "viewer" | "member") {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "unknown role `{role}` (admin, viewer or member)"
        )))
    }
}

impl Store {
    /// All users, by name.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY username"
            ))?;
            let rows = st
                .query_map([], user_info)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Changes a user's role; refuses to demote the last admin.
    pub async fn set_user_role(
        &self,
        username: &str,
        role: &str,
        actor: Actor,
    ) -> Result<UserInfo, StoreError> {
        check_role(role)?;
        let (username, role) = (username.to_string(), role.to_string());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: Option<String> = tx
                .query_row(
                    "SELECT role FROM users WHERE username = ?1",
                    [&username],
                    |r| r.get(0),
                )
                .optional()?;
            let before =
                before.ok_or_else(|| StoreError::NotFound(format!("user `{username}`")))?;
            if before == "admin" && role != "admin" {
                let admins: i64 =
                    tx.query_row("SELECT COUNT(*) FROM users WHERE role = 'admin'", [], |r| {
                        r.get(0)
                    })?;
                if admins <= 1 {
                    return Err(StoreError::Conflict(format!(
                        "`{username}` is the last admin; make another user admin first"
                    )));
                }
            }
            tx.execute(
                "UPDATE users SET role = ?2, updated_at = ?3 WHERE username = ?1",
                params![username, role, now_ms()],
            )?;
            tx.execute("DELETE FROM oauth_refresh WHERE username = ?1", [&username])?;
            audit_tx(
                &tx,
                &actor,
                "user.update",
                "user",
                &username,
                Some(&serde_json::json!({ "role": before })),
                Some(&serde_json::json!({ "role": role })),
            )?;
            let info = tx.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
                [&username],
                user_info,
            )?;
            tx.commit()?;
            Ok(info)
        })
        .await
    }

    /// Sets a user's password as an administrator (the user must change it at next login).
    pub async fn reset_password(
        &self,
        username: &str,
        password_hash: String,
        must_change: bool,
        actor: Actor,
    ) -> Result<(), StoreError> {
        let username = username.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE users SET password_hash = ?2, must_change_password = ?3, updated_at = ?4 WHERE username = ?1",
                params![username, password_hash, must_change, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user `{username}`")));
            }
            tx.execute("DELETE FROM oauth_refresh WHERE username = ?1", [&username])?;
            audit_tx(&tx, &actor, "user.password_reset", "user", &username, None, None)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes a user; refuses to delete the last admin.
    pub async fn delete_user(&self, username: &str, actor: Actor) -> Result<(), StoreError> {
        let username = username.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let role: Option<String> = tx
                .query_row(
                    "SELECT role FROM users WHERE username = ?1",
                    [&username],
                    |r| r.get(0),
                )
                .optional()?;
            let role = role.ok_or_else(|| StoreError::NotFound(format!("user `{username}`")))?;
            if role == "admin" {
                let admins: i64 =
                    tx.query_row("SELECT COUNT(*) FROM users WHERE role = 'admin'", [], |r| {
                        r.get(0)
                    })?;
                if admins <= 1 {
                    return Err(StoreError::Conflict(format!(
                        "`{username}` is the last admin and cannot be deleted"
                    )));
                }
            }
            tx.execute(
                "DELETE FROM identity_links WHERE user_id IN (SELECT id FROM users WHERE username = ?1)",
                [&username],
            )?;
            tx.execute("DELETE FROM users WHERE username = ?1", [&username])?;
            tx.execute("DELETE FROM oauth_refresh WHERE username = ?1", [&username])?;
            audit_tx(
                &tx,
                &actor,
                "user.delete",
                "user",
                &username,
                Some(&serde_json::json!({ "username": username, "role": role })),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Dashboard figures for requests at or after `since_ms`, bucketed by `bucket_ms`; with
    /// `proxy`, the request figures of that proxy only.
    pub async fn dashboard(
        &self,
        since_ms: i64,
        bucket_ms: i64,
        proxy: Option<String>,
    ) -> Result<DashboardData, StoreError> {
        let bucket_ms = bucket_ms.max(1_000);
        self.call(move |c| {
            // A folded row stands for `folded` requests.
            const N: &str = crate::requests::REQUESTS_OF_ROW;
            // `?3 IS NULL OR` would keep SQLite off the (proxy, ts_ms) index: pick the clause.
            let scope = if proxy.is_some() { "proxy = ?3 AND ts_ms >= ?1" } else { "ts_ms >= ?1 AND ?3 IS NULL" };
            let now = now_ms();
            let mut counts = std::collections::HashMap::new();
            {
                let mut st = c.prepare(&format!(
                    "SELECT (ts_ms - ?1) / ?2, SUM({N}), SUM((status >= 400) * {N}), SUM((decision = 'block') * {N})
                     FROM requests WHERE {scope} GROUP BY 1"
                ))?;
                let rows = st.query_map(params![since_ms, bucket_ms, proxy], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                        r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    ))
                })?;
                for row in rows {
                    let (b, n, e, bl) = row?;
                    counts.insert(b, (n, e, bl));
                }
            }
            let buckets = ((now - since_ms) / bucket_ms + 1).clamp(1, 10_000);
            let series = (0..buckets)
                .map(|b| {
                    let (requests, errors, blocked) = counts.get(&b).copied().unwrap_or((0, 0, 0));
                    SeriesPoint { ts_ms: since_ms + b * bucket_ms, requests, errors, blocked }
                })
                .collect();
            let proxies = {
                let mut st = c.prepare(&format!(
                    "SELECT proxy, SUM({N}), SUM((status >= 400) * {N}), SUM((decision = 'block') * {N}), AVG(latency_us)
                     FROM requests WHERE {scope} AND ?2 > 0 GROUP BY proxy ORDER BY proxy"
                ))?;
                st.query_map(params![since_ms, bucket_ms, proxy], |r| {
                    Ok(ProxyTraffic {
                        proxy: r.get(0)?,
                        requests: r.get(1)?,
                        errors: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                        blocked: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                        avg_latency_us: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0) as i64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            let mut latencies_us = {
                let mut st = c.prepare(&format!(
                    "SELECT latency_us FROM requests WHERE {scope} ORDER BY ts_ms DESC LIMIT ?2"
                ))?;
                st.query_map(params![since_ms, LATENCY_SAMPLE as i64, proxy], |r| r.get::<_, i64>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            latencies_us.sort_unstable();
            let (open_alerts, open_alerts_high) = c.query_row(
                "SELECT COUNT(*), SUM(severity IN ('critical', 'high')) FROM alerts
                 WHERE status IN ('new', 'acknowledged')",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0))),
            )?;
            let month_spend_nano: i64 = c.query_row(
                "SELECT COALESCE(SUM(cost_nano), 0) FROM requests WHERE ts_ms >= ?1",
                [palisade_core::spend::month_start_ms(now)],
                |r| r.get(0),
            )?;
            Ok(DashboardData {
                series,
                proxies,
                latencies_us,
                open_alerts,
                open_alerts_high,
                month_spend_nano,
            })
        })
        .await
    }
}
