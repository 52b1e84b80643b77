//! Groups, API keys, prices, spend and usage figures.

use std::collections::HashMap;

use palisade_core::identity::KeyInfo;
use palisade_core::now_ms;
use palisade_core::spend::{GroupSpec, NANO_PER_USD, Price, day_string, month_start_ms};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::store::{audit_tx, to_json};
use crate::{Actor, Store, StoreError};

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GroupRow {
    /// Configuration.
    #[serde(flatten)]
    pub spec: GroupSpec,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last manual budget reset, Unix ms (spend counts from the later of it and the month start).
    pub budget_reset_at: Option<i64>,
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKeyRow {
    /// Key id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Owning group.
    pub group: Option<String>,
    /// Visible prefix of the key for recognition.
    pub prefix: String,
    /// `api` (issued by the API) or `config` (fixed key from the config file).
    pub source: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Expiry, Unix ms.
    pub expires_at: Option<i64>,
    /// Revocation time, Unix ms.
    pub revoked_at: Option<i64>,
    /// Proxies the key may use (empty: all).
    pub allowed_proxies: Vec<String>,
    /// Models the key may request (empty: all).
    pub allowed_models: Vec<String>,
    /// Requests per minute (overrides the group's).
    pub rpm: Option<u32>,
    /// Tokens per minute (overrides the group's).
    pub tpm: Option<u32>,
}

/// Optional properties of a key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
pub struct KeyOptions {
    /// Expiry, Unix ms.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Proxies the key may use (empty: all).
    #[serde(default)]
    pub allowed_proxies: Vec<String>,
    /// Models the key may request (empty: all).
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Requests per minute (overrides the group's).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute (overrides the group's).
    #[serde(default)]
    pub tpm: Option<u32>,
}

const KEY_COLS: &str = "id, name, group_name, prefix, source, created_at, expires_at, revoked_at, \
    allowed_proxies, allowed_models, rpm, tpm";

fn list(s: String) -> Vec<String> {
    serde_json::from_str(&s).unwrap_or_default()
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        group: r.get(2)?,
        prefix: r.get(3)?,
        source: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        allowed_proxies: list(r.get(8)?),
        allowed_models: list(r.get(9)?),
        rpm: r.get(10)?,
        tpm: r.get(11)?,
    })
}

fn group_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    let name: String = r.get(0)?;
    let description: String = r.get(1)?;
    let spec: Option<String> = r.get(3)?;
    let spec = spec
        .and_then(|s| serde_json::from_str::<GroupSpec>(&s).ok())
        .unwrap_or_else(|| GroupSpec {
            description,
            ..GroupSpec::named(&name)
        });
    Ok(GroupRow {
        spec,
        created_at: r.get(2)?,
        budget_reset_at: r.get(4)?,
    })
}

const GROUP_COLS: &str = "name, description, created_at, spec, budget_reset_at";

fn get_group(c: &Connection, name: &str) -> Result<Option<GroupRow>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {GROUP_COLS} FROM groups WHERE name = ?1"),
        [name],
        group_from_row,
    )
    .optional()?)
}

fn get_key(c: &Connection, name: &str) -> Result<Option<(ApiKeyRow, Vec<u8>)>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {KEY_COLS}, key_hash FROM api_keys WHERE name = ?1"),
        [name],
        |r| Ok((key_from_row(r)?, r.get::<_, Vec<u8>>(12)?)),
    )
    .optional()?)
}

/// Spend of a group over its current budget period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetStatus {
    /// Group.
    pub group: String,
    /// Monthly limit in USD (none: unlimited).
    pub limit_usd: Option<f64>,
    /// Spent this month (since the start of the month or the last manual reset).
    pub spent_usd: f64,
    /// Remaining (none when unlimited).
    pub remaining_usd: Option<f64>,
    /// Spent as a percent of the limit.
    pub percent: Option<f64>,
    /// Warning threshold, percent.
    pub warn_percent: u8,
    /// `block` or `warn`.
    pub action: String,
    /// Start of the period counted, Unix ms.
    pub period_start_ms: i64,
}

/// Query of `GET /api/v1/usage`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Dimension: `group`, `key`, `proxy`, `model` or `day` (default `group`).
    pub group_by: Option<String>,
    /// From this time (Unix ms); default the start of the current month.
    pub since_ms: Option<i64>,
    /// Until this time (Unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// Only this group.
    pub group: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only this proxy.
    pub proxy: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

/// One row of usage figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageRow {
    /// Value of the grouping dimension.
    pub key: Option<String>,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Requests whose model had no price.
    pub unpriced_requests: i64,
}

impl Store {
    // ---- groups ----

    /// All groups.
    pub async fn list_groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!("SELECT {GROUP_COLS} FROM groups ORDER BY name"))?;
            let rows = st
                .query_map([], group_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// One group.
    pub async fn group(&self, name: &str) -> Result<Option<GroupRow>, StoreError> {
        let name = name.to_string();
        self.call(move |c| get_group(c, &name)).await
    }

    /// Creates a group, or with `upsert` replaces its spec if it exists (config, PUT).
    pub async fn put_group(
        &self,
        spec: GroupSpec,
        upsert: bool,
        actor: Actor,
    ) -> Result<GroupRow, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let row = match get_group(&tx, &spec.name)? {
                Some(b) if !upsert => {
                    return Err(StoreError::Conflict(format!("group `{}` already exists", b.spec.name)));
                }
                Some(b) if b.spec == spec => return Ok(b),
                Some(b) => {
                    tx.execute(
                        "UPDATE groups SET description = ?2, spec = ?3 WHERE name = ?1",
                        params![spec.name, spec.description, json],
                    )?;
                    let after = GroupRow { spec, ..b.clone() };
                    audit_tx(&tx, &actor, "group.update", "group", &after.spec.name, Some(&to_json(&b)), Some(&to_json(&after)))?;
                    after
                }
                None => {
                    let row = GroupRow { spec, created_at: now_ms(), budget_reset_at: None };
                    tx.execute(
                        "INSERT INTO groups (name, description, created_at, spec) VALUES (?1, ?2, ?3, ?4)",
                        params![row.spec.name, row.spec.description, row.created_at, json],
                    )?;
                    audit_tx(&tx, &actor, "group.create", "group", &row.spec.name, None, Some(&to_json(&row)))?;
                    row
                }
            };
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Deletes a group that no live (unrevoked) key belongs to.
    pub async fn delete_group(&self, name: &str, actor: Actor) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_group(&tx, &name)?
                .ok_or_else(|| StoreError::NotFound(format!("group `{name}`")))?;
            let keys: i64 = tx.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE group_name = ?1 AND revoked_at IS NULL",
                [&name],
                |r| r.get(0),
            )?;
            if keys > 0 {
                return Err(StoreError::Conflict(format!(
                    "group `{name}` still has {keys} API key(s) that are not revoked; revoke them first"
                )));
            }
            // Revoked keys stay listed (their rows name them) without a group.
            tx.execute(
                "UPDATE api_keys SET group_name = NULL WHERE group_name = ?1",
                [&name],
            )?;
            tx.execute("DELETE FROM groups WHERE name = ?1", [&name])?;
            audit_tx(
                &tx,
                &actor,
                "group.delete",
                "group",
                &name,
                Some(&to_json(&before)),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Starts a group's budget period afresh (audited); returns the reset time.
    pub async fn reset_budget(
        &self,
        name: &str,
        at_ms: i64,
        actor: Actor,
    ) -> Result<i64, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_group(&tx, &name)?
                .ok_or_else(|| StoreError::NotFound(format!("group `{name}`")))?;
            tx.execute(
                "UPDATE groups SET budget_reset_at = ?2 WHERE name = ?1",
                params![name, at_ms],
            )?;
            audit_tx(
                &tx,
                &actor,
                "group.budget_reset",
                "group",
                &name,
                Some(&serde_json::json!({"budget_reset_at": before.budget_reset_at})),
                Some(&serde_json::json!({"budget_reset_at": at_ms})),
            )?;
            tx.commit()?;
            Ok(at_ms)
        })
        .await
    }

    /// Spend in nano-dollars per group since the start of `now`'s month or the group's reset.
    pub async fn month_spend(&self, now: i64) -> Result<HashMap<String, i64>, StoreError> {
        self.call(move |c| {
            let start = month_start_ms(now);
            let mut st = c.prepare(
                "SELECT g.name, COALESCE(SUM(r.cost_nano), 0) FROM groups g
                 LEFT JOIN requests r ON r.group_name = g.name
                   AND r.ts_ms >= MAX(?1, COALESCE(g.budget_reset_at, 0))
                 GROUP BY g.name",
            )?;
            let rows = st
                .query_map([start], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<HashMap<_, _>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Budget status of one group.
    pub async fn budget_status(&self, name: &str, now: i64) -> Result<BudgetStatus, StoreError> {
        let g = self
            .group(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("group `{name}`")))?;
        let spent = self.month_spend(now).await?.get(name).copied().unwrap_or(0);
        Ok(budget_of(&g, spent, now))
    }

    // ---- keys ----

    /// All keys (including revoked ones), newest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {KEY_COLS} FROM api_keys ORDER BY created_at DESC, name"
            ))?;
            let rows = st
                .query_map([], key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Stores a key by digest. With `replace`, an existing key of that name gets the new digest
    /// and options (config files that rotate a fixed key).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_key(
        &self,
        name: &str,
        group: Option<String>,
        hash: [u8; 32],
        prefix: String,
        source: &'static str,
        opts: KeyOptions,
        replace: bool,
        actor: Actor,
    ) -> Result<ApiKeyRow, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(g) = &group
                && get_group(&tx, g)?.is_none()
            {
                return Err(StoreError::NotFound(format!("group `{g}`")));
            }
            let ap = serde_json::to_string(&opts.allowed_proxies).unwrap_or_else(|_| "[]".into());
            let am = serde_json::to_string(&opts.allowed_models).unwrap_or_else(|_| "[]".into());
            let row = match get_key(&tx, &name)? {
                Some((old, _)) if !replace => {
                    return Err(StoreError::Conflict(format!("API key `{}` already exists", old.name)));
                }
                Some((old, _)) if old.source != source => {
                    return Err(StoreError::Conflict(format!(
                        "API key `{}` was issued through the {}; it cannot be taken over (give this key another name)",
                        old.name,
                        if old.source == "api" { "API" } else { old.source.as_str() }
                    )));
                }
                // A revoked key stays revoked while its secret is unchanged: reapplying a file
                // must not undo a revocation (a new secret is a new key).
                Some((old, old_hash))
                    if old_hash == hash
                        && old.group == group
                        && old.expires_at == opts.expires_at
                        && old.allowed_proxies == opts.allowed_proxies
                        && old.allowed_models == opts.allowed_models
                        && old.rpm == opts.rpm
                        && old.tpm == opts.tpm =>
                {
                    return Ok(old);
                }
                Some((old, old_hash)) => {
                    let revoked_at = if old_hash == hash { old.revoked_at } else { None };
                    tx.execute(
                        "UPDATE api_keys SET group_name = ?2, key_hash = ?3, prefix = ?4, source = ?5, expires_at = ?6,
                         revoked_at = ?11, allowed_proxies = ?7, allowed_models = ?8, rpm = ?9, tpm = ?10 WHERE id = ?1",
                        params![old.id, group, hash.to_vec(), prefix, source, opts.expires_at, ap, am, opts.rpm, opts.tpm, revoked_at],
                    )?;
                    let new = ApiKeyRow {
                        group,
                        prefix,
                        source: source.into(),
                        expires_at: opts.expires_at,
                        revoked_at,
                        allowed_proxies: opts.allowed_proxies,
                        allowed_models: opts.allowed_models,
                        rpm: opts.rpm,
                        tpm: opts.tpm,
                        ..old.clone()
                    };
                    audit_tx(&tx, &actor, "api_key.update", "api_key", &name, Some(&to_json(&old)), Some(&to_json(&new)))?;
                    new
                }
                None => {
                    let row = ApiKeyRow {
                        id: palisade_core::crypto::random_id(),
                        name: name.clone(),
                        group,
                        prefix,
                        source: source.into(),
                        created_at: now_ms(),
                        expires_at: opts.expires_at,
                        revoked_at: None,
                        allowed_proxies: opts.allowed_proxies,
                        allowed_models: opts.allowed_models,
                        rpm: opts.rpm,
                        tpm: opts.tpm,
                    };
                    tx.execute(
                        "INSERT INTO api_keys (id, name, group_name, key_hash, prefix, source, created_at, expires_at,
                         allowed_proxies, allowed_models, rpm, tpm)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        params![
                            row.id, row.name, row.group, hash.to_vec(), row.prefix, row.source, row.created_at,
                            row.expires_at, ap, am, row.rpm, row.tpm
                        ],
                    )
                    .map_err(|e| match e {
                        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                            StoreError::Conflict("that key value is already registered under another name".into())
                        }
                        other => StoreError::Db(other),
                    })?;
                    audit_tx(&tx, &actor, "api_key.create", "api_key", &name, None, Some(&to_json(&row)))?;
                    row
                }
            };
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Revokes a key by name; it stops working at once.
    pub async fn revoke_key(&self, name: &str, actor: Actor) -> Result<ApiKeyRow, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (old, _) = get_key(&tx, &name)?
                .ok_or_else(|| StoreError::NotFound(format!("API key `{name}`")))?;
            if old.revoked_at.is_some() {
                return Ok(old);
            }
            let now = now_ms();
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
                params![old.id, now],
            )?;
            let new = ApiKeyRow {
                revoked_at: Some(now),
                ..old.clone()
            };
            audit_tx(
                &tx,
                &actor,
                "api_key.revoke",
                "api_key",
                &name,
                Some(&to_json(&old)),
                Some(&to_json(&new)),
            )?;
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    /// The name of the key (revoked ones included) whose digest is `hash`, if any.
    pub async fn key_name_by_hash(&self, hash: [u8; 32]) -> Result<Option<String>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT name FROM api_keys WHERE key_hash = ?1",
                [hash.to_vec()],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
        })
        .await
    }

    /// Digests and identities of every key that is not revoked, with effective limits
    /// (the key's own, else its group's), for the data plane's index.
    pub async fn active_keys(&self) -> Result<Vec<([u8; 32], KeyInfo)>, StoreError> {
        let groups: HashMap<String, GroupSpec> = self
            .list_groups()
            .await?
            .into_iter()
            .map(|g| (g.spec.name.clone(), g.spec))
            .collect();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {KEY_COLS}, key_hash FROM api_keys WHERE revoked_at IS NULL"
            ))?;
            let rows = st
                .query_map([], |r| Ok((key_from_row(r)?, r.get::<_, Vec<u8>>(12)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(k, h)| {
                    let arr: [u8; 32] = h
                        .try_into()
                        .map_err(|_| StoreError::Corrupt(format!("key `{}` digest", k.name)))?;
                    let g = k.group.as_ref().and_then(|g| groups.get(g));
                    Ok((
                        arr,
                        KeyInfo {
                            id: k.id,
                            name: k.name,
                            rpm: k.rpm.or(g.and_then(|g| g.rpm)),
                            tpm: k.tpm.or(g.and_then(|g| g.tpm)),
                            group: k.group,
                            expires_at_ms: k.expires_at,
                            allowed_proxies: k.allowed_proxies,
                            allowed_models: k.allowed_models,
                        },
                    ))
                })
                .collect()
        })
        .await
    }

    // ---- prices ----

    /// The price table.
    pub async fn list_prices(&self) -> Result<Vec<Price>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok FROM prices ORDER BY model",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(Price {
                        model: r.get(0)?,
                        input_per_mtok: r.get(1)?,
                        output_per_mtok: r.get(2)?,
                        cached_input_per_mtok: r.get(3)?,
                        cache_write_per_mtok: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Seeds shipped prices for models that have none yet (edited prices are kept).
    pub async fn seed_prices(&self, prices: Vec<Price>) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for p in &prices {
                tx.execute(
                    "INSERT OR IGNORE INTO prices (model, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, source, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'default', ?6)",
                    params![p.model, p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok, p.cache_write_per_mtok, now_ms()],
                )?;
                // A shipped price seeded before cache writes had one gets it (edited ones stay).
                tx.execute(
                    "UPDATE prices SET cache_write_per_mtok = ?2
                     WHERE model = ?1 AND source = 'default' AND cache_write_per_mtok IS NULL",
                    params![p.model, p.cache_write_per_mtok],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Sets a model's price (audited).
    pub async fn put_price(
        &self,
        p: Price,
        source: &'static str,
        actor: Actor,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = tx
                .query_row(
                    "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok FROM prices WHERE model = ?1",
                    [&p.model],
                    |r| {
                        Ok(Price {
                            model: r.get(0)?,
                            input_per_mtok: r.get(1)?,
                            output_per_mtok: r.get(2)?,
                            cached_input_per_mtok: r.get(3)?,
                            cache_write_per_mtok: r.get(4)?,
                        })
                    },
                )
                .optional()?;
            if before.as_ref() == Some(&p) {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO prices (model, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, source, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (model) DO UPDATE SET input_per_mtok = ?2, output_per_mtok = ?3,
                   cached_input_per_mtok = ?4, cache_write_per_mtok = ?5, source = ?6, updated_at = ?7",
                params![p.model, p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok, p.cache_write_per_mtok, source, now_ms()],
            )?;
            audit_tx(&tx, &actor, "price.put", "price", &p.model, before.as_ref().map(to_json).as_ref(), Some(&to_json(&p)))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Removes a model's price (audited).
    pub async fn delete_price(&self, model: &str, actor: Actor) -> Result<(), StoreError> {
        let model = model.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute("DELETE FROM prices WHERE model = ?1", [&model])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("price for `{model}`")));
            }
            audit_tx(&tx, &actor, "price.delete", "price", &model, None, None)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    // ---- usage ----

    /// Usage and cost grouped by one dimension.
    pub async fn usage(&self, q: UsageQuery, now: i64) -> Result<Vec<UsageRow>, StoreError> {
        let dim = match q.group_by.as_deref().unwrap_or("group") {
            "group" => "group_name",
            "key" => "key_name",
            "proxy" => "proxy",
            "model" => "model",
            "day" => "day",
            other => {
                return Err(StoreError::Conflict(format!(
                    "cannot group usage by `{other}`"
                )));
            }
        };
        self.call(move |c| {
            let since = q.since_ms.unwrap_or_else(|| month_start_ms(now));
            let mut w = crate::filter::Where::new();
            w.window(Some(since), q.until_ms)
                .eq("group_name", &q.group)
                .eq("key_name", &q.key)
                .eq("proxy", &q.proxy)
                .eq("model", &q.model);
            let wh = w.sql.clone();
            // Days are formed in Rust (UTC), so group by the day number here.
            let key_expr = if dim == "day" { "CAST(ts_ms / 86400000 AS TEXT)" } else { dim };
            let sql = format!(
                "SELECT {key_expr}, SUM({n}), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                 COALESCE(SUM(cost_nano), 0), COALESCE(SUM(cost_unknown), 0) FROM requests{wh}
                 GROUP BY 1 ORDER BY 5 DESC, 1",
                n = crate::requests::REQUESTS_OF_ROW
            );
            let mut st = c.prepare(&sql)?;
            let rows = st
                .query_map(w.params(), |r| {
                    let key: Option<String> = r.get(0)?;
                    Ok(UsageRow {
                        key: if dim == "day" {
                            key.and_then(|d| d.parse::<i64>().ok()).map(|d| day_string(d * 86_400_000))
                        } else {
                            key
                        },
                        requests: r.get(1)?,
                        prompt_tokens: r.get(2)?,
                        completion_tokens: r.get(3)?,
                        cost_usd: r.get::<_, i64>(4)? as f64 / NANO_PER_USD,
                        unpriced_requests: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

/// The budget status of a group given its spend.
pub fn budget_of(g: &GroupRow, spent_nano: i64, now: i64) -> BudgetStatus {
    let spent = spent_nano as f64 / NANO_PER_USD;
    let limit = g.spec.monthly_budget_usd;
    BudgetStatus {
        group: g.spec.name.clone(),
        limit_usd: limit,
        spent_usd: spent,
        remaining_usd: limit.map(|l| (l - spent).max(0.0)),
        percent: limit.filter(|l| *l > 0.0).map(|l| spent / l * 100.0),
        warn_percent: g.spec.budget_warn_percent,
        action: match g.spec.budget_action {
            palisade_core::spend::BudgetAction::Block => "block".into(),
            palisade_core::spend::BudgetAction::Warn => "warn".into(),
        },
        period_start_ms: month_start_ms(now).max(g.budget_reset_at.unwrap_or(0)),
    }
}

impl Store {
    /// All governance prompts.
    pub async fn list_prompts(&self) -> Result<Vec<palisade_core::model::PromptSpec>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare("SELECT spec FROM prompts ORDER BY name")?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|s| {
                    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("prompt: {e}")))
                })
                .collect()
        })
        .await
    }

    /// Creates (or with `upsert`, replaces) a prompt (audited).
    pub async fn put_prompt(
        &self,
        spec: palisade_core::model::PromptSpec,
        upsert: bool,
        actor: Actor,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: Option<String> =
                tx.query_row("SELECT spec FROM prompts WHERE name = ?1", [&spec.name], |r| r.get(0)).optional()?;
            let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let now = now_ms();
            match &before {
                Some(_) if !upsert => return Err(StoreError::Conflict(format!("prompt `{}` already exists", spec.name))),
                Some(b) if *b == json => return Ok(()),
                Some(_) => {
                    tx.execute("UPDATE prompts SET spec = ?2, updated_at = ?3 WHERE name = ?1", params![spec.name, json, now])?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO prompts (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                        params![spec.name, json, now],
                    )?;
                }
            }
            let b = before.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            let action = if b.is_some() { "prompt.update" } else { "prompt.create" };
            audit_tx(&tx, &actor, action, "prompt", &spec.name, b.as_ref(), Some(&to_json(&spec)))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes a prompt (audited).
    pub async fn delete_prompt(&self, name: &str, actor: Actor) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: String = tx
                .query_row("SELECT spec FROM prompts WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("prompt `{name}`")))?;
            tx.execute("DELETE FROM prompts WHERE name = ?1", [&name])?;
            let b = serde_json::from_str::<serde_json::Value>(&before).ok();
            audit_tx(
                &tx,
                &actor,
                "prompt.delete",
                "prompt",
                &name,
                b.as_ref(),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
