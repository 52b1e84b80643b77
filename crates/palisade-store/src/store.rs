//! The SQLite-backed store: configuration objects, users, API keys and the audit log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use palisade_core::model::ProxySpec;
use palisade_core::now_ms;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The object already exists or is still referenced.
    #[error("{0}")]
    Conflict(String),
    /// A stored row could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The blocking task running the query was lost (runtime shutting down).
    #[error("database task failed: {0}")]
    Task(String),
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// User name, or `config` / `system` for changes made at start.
    pub name: String,
    /// Request id of the API call that made the change.
    pub request_id: Option<String>,
}

impl Actor {
    /// An actor with no request id (start-up, config file).
    pub fn system(name: &str) -> Self {
        Self {
            name: name.to_string(),
            request_id: None,
        }
    }
}

/// A proxy as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRow {
    /// The validated specification.
    pub spec: ProxySpec,
    /// The upstream credential, sealed with the master key.
    pub upstream_key_sealed: Option<String>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last update, Unix ms.
    pub updated_at: i64,
}

impl ProxyRow {
    fn audit_view(&self) -> Value {
        let mut v = serde_json::to_value(&self.spec).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert(
                "has_upstream_key".into(),
                Value::Bool(self.upstream_key_sealed.is_some()),
            );
            if let Some(sealed) = &self.upstream_key_sealed {
                m.insert("upstream_key_version".into(), sealed_version(sealed).into());
            }
        }
        v
    }
}

/// A short tag of a sealed secret for the audit log: it changes when the secret is set again
/// (each sealing is randomised), so a rotation shows as a change, and says nothing of the
/// secret itself (a hash of its ciphertext).
pub(crate) fn sealed_version(sealed: &str) -> String {
    palisade_core::crypto::sha256_hex(sealed.as_bytes())[..12].to_string()
}

/// A console/API user.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// User id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Argon2id PHC hash.
    pub password_hash: String,
    /// `admin`, `viewer` or `member`.
    pub role: String,
    /// Set when the password was generated and must be changed at first login.
    pub must_change_password: bool,
    /// Last change of the row (password, role), Unix ms.
    pub updated_at: i64,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// Time, Unix ms.
    pub ts_ms: i64,
    /// Who.
    pub actor: String,
    /// What (`proxy.create`, `proxy.start`, …).
    pub action: String,
    /// Kind of object changed.
    pub target_type: String,
    /// Name of the object changed.
    pub target: String,
    /// State before the change.
    pub before: Option<Value>,
    /// State after the change.
    pub after: Option<Value>,
    /// API request id.
    pub request_id: Option<String>,
}

/// Filters for the audit log listing.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Only entries with id below this (paging backwards).
    pub before_id: Option<i64>,
}

/// The database facade; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

pub(crate) fn audit_tx(
    tx: &Transaction<'_>,
    actor: &Actor,
    action: &str,
    target_type: &str,
    target: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit_log (ts_ms, actor, action, target_type, target, before, after, request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now_ms(),
            actor.name,
            action,
            target_type,
            target,
            before.map(Value::to_string),
            after.map(Value::to_string),
            actor.request_id
        ],
    )?;
    Ok(())
}

fn proxy_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode_proxy(raw: (String, Option<String>, i64, i64)) -> Result<ProxyRow, StoreError> {
    let spec: ProxySpec = serde_json::from_str(&raw.0)
        .map_err(|e| StoreError::Corrupt(format!("proxy spec: {e}")))?;
    Ok(ProxyRow {
        spec,
        upstream_key_sealed: raw.1,
        created_at: raw.2,
        updated_at: raw.3,
    })
}

fn get_proxy_tx(c: &Connection, name: &str) -> Result<Option<ProxyRow>, StoreError> {
    c.query_row(
        "SELECT spec, upstream_key_sealed, created_at, updated_at FROM proxies WHERE name = ?1",
        [name],
        proxy_from_row,
    )
    .optional()?
    .map(decode_proxy)
    .transpose()
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// How an update treats the stored upstream credential.
#[derive(Debug, Clone)]
pub enum SealedUpdate {
    /// Leave it as it is.
    Keep,
    /// Replace it with this sealed value.
    Set(String),
    /// Remove it.
    Clear,
}

/// Keeps the database to its owner: it holds password and key hashes, request logs and alert
/// excerpts. The directory becomes 0700 and the database file 0600 (created so if new; SQLite
/// gives its `-wal` and `-shm` files the database file's mode).
fn make_private(data_dir: &Path, db: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let fail = |what: &Path, e: std::io::Error| {
            StoreError::Corrupt(format!(
                "cannot restrict {} to its owner: {e}",
                what.display()
            ))
        };
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        if mode(data_dir).map_err(|e| fail(data_dir, e))? & 0o077 != 0 {
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(data_dir, e))?;
        }
        if !db.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(db)
                .map_err(|e| fail(db, e))?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let f = PathBuf::from(format!("{}{suffix}", db.display()));
            if let Ok(m) = mode(&f)
                && m & 0o077 != 0
            {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&f, e))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (data_dir, db);
    Ok(())
}

impl Store {
    /// Opens (creating if needed) `palisade.db` in `data_dir` and applies pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Corrupt(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("palisade.db");
        make_private(data_dir, &path)?;
        let mut conn = open_connection(&path)?;
        let applied = crate::migrations::migrate(&mut conn)?;
        if applied > 0 {
            tracing::info!(applied, path = %path.display(), "database migrations applied");
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking thread pool, off the async workers.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    // ---- proxies ----

    /// Names of all proxies.
    pub async fn proxy_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_proxies()
            .await?
            .into_iter()
            .map(|p| p.spec.name)
            .collect())
    }

    /// All proxies, by name.
    pub async fn list_proxies(&self) -> Result<Vec<ProxyRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT spec, upstream_key_sealed, created_at, updated_at FROM proxies ORDER BY name",
            )?;
            let raw = st.query_map([], proxy_from_row)?.collect::<Result<Vec<_>, _>>()?;
            raw.into_iter().map(decode_proxy).collect()
        })
        .await
    }

    /// One proxy by name.
    pub async fn get_proxy(&self, name: &str) -> Result<Option<ProxyRow>, StoreError> {
        let name = name.to_string();
        self.call(move |c| get_proxy_tx(c, &name)).await
    }

    /// Creates a proxy; fails with `Conflict` if the name or listen address is taken.
    pub async fn create_proxy(
        &self,
        spec: ProxySpec,
        sealed: Option<String>,
        actor: Actor,
    ) -> Result<ProxyRow, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if get_proxy_tx(&tx, &spec.name)?.is_some() {
                return Err(StoreError::Conflict(format!("proxy `{}` already exists", spec.name)));
            }
            let now = now_ms();
            let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO proxies (name, spec, upstream_key_sealed, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![spec.name, json, sealed, now],
            )?;
            let row = ProxyRow { spec, upstream_key_sealed: sealed, created_at: now, updated_at: now };
            audit_tx(&tx, &actor, "proxy.create", "proxy", &row.spec.name, None, Some(&row.audit_view()))?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Replaces a proxy's spec (the name cannot change); returns (before, after).
    pub async fn update_proxy(
        &self,
        spec: ProxySpec,
        sealed: SealedUpdate,
        action: &'static str,
        actor: Actor,
    ) -> Result<(ProxyRow, ProxyRow), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_proxy_tx(&tx, &spec.name)?
                .ok_or_else(|| StoreError::NotFound(format!("proxy `{}`", spec.name)))?;
            let upstream_key_sealed = match sealed {
                SealedUpdate::Keep => before.upstream_key_sealed.clone(),
                SealedUpdate::Set(s) => Some(s),
                SealedUpdate::Clear => None,
            };
            let now = now_ms();
            let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE proxies SET spec = ?2, upstream_key_sealed = ?3, updated_at = ?4 WHERE name = ?1",
                params![spec.name, json, upstream_key_sealed, now],
            )?;
            let after = ProxyRow { spec, upstream_key_sealed, created_at: before.created_at, updated_at: now };
            audit_tx(
                &tx,
                &actor,
                action,
                "proxy",
                &after.spec.name,
                Some(&before.audit_view()),
                Some(&after.audit_view()),
            )?;
            tx.commit()?;
            Ok((before, after))
        })
        .await
    }

    /// Deletes a proxy; returns the deleted row.
    pub async fn delete_proxy(&self, name: &str, actor: Actor) -> Result<ProxyRow, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_proxy_tx(&tx, &name)?
                .ok_or_else(|| StoreError::NotFound(format!("proxy `{name}`")))?;
            tx.execute("DELETE FROM proxies WHERE name = ?1", [&name])?;
            audit_tx(
                &tx,
                &actor,
                "proxy.delete",
                "proxy",
                &name,
                Some(&before.audit_view()),
                None,
            )?;
            tx.commit()?;
            Ok(before)
        })
        .await
    }

    // ---- users ----

    /// A setting of the gateway itself.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.call(move |c| {
            Ok(
                c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    /// Sets a setting of the gateway itself.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = ?2",
                [key, value],
            )?;
            Ok(())
        })
        .await
    }

    /// Number of users.
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        self.call(|c| Ok(c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?))
            .await
    }

    /// A user by login name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        let username = username.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id, username, password_hash, role, must_change_password, updated_at FROM users WHERE username = ?1",
                [&username],
                |r| {
                    Ok(UserRow {
                        id: r.get(0)?,
                        username: r.get(1)?,
                        password_hash: r.get(2)?,
                        role: r.get(3)?,
                        must_change_password: r.get(4)?,
                        updated_at: r.get(5)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Creates a user with an already hashed password.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        role: &str,
        must_change_password: bool,
        actor: Actor,
    ) -> Result<(), StoreError> {
        let (username, role) = (username.to_string(), role.to_string());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Names that differ only in case would read as one person in the audit log. Checked
            // here, in the write's transaction, so two creations at once cannot both pass.
            let same: Option<String> = tx
                .query_row(
                    "SELECT username FROM users WHERE lower(username) = lower(?1)",
                    [&username],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = same {
                return Err(StoreError::Conflict(format!(
                    "user `{other}` already exists (user names are compared without case)"
                )));
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![palisade_core::crypto::random_id(), username, password_hash, role, must_change_password, now],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    StoreError::Conflict(format!("user `{username}` already exists"))
                }
                other => StoreError::Db(other),
            })?;
            let after = serde_json::json!({ "username": username, "role": role });
            audit_tx(&tx, &actor, "user.create", "user", &username, None, Some(&after))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Replaces a user's password hash and clears the forced-change flag.
    pub async fn set_password(
        &self,
        username: &str,
        password_hash: String,
        actor: Actor,
    ) -> Result<(), StoreError> {
        let username = username.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE users SET password_hash = ?2, must_change_password = 0, updated_at = ?3 WHERE username = ?1",
                params![username, password_hash, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user `{username}`")));
            }
            tx.execute("DELETE FROM oauth_refresh WHERE username = ?1", [&username])?;
            audit_tx(&tx, &actor, "user.password_change", "user", &username, None, None)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    // ---- audit ----

    /// Appends an audit entry for an event that changes no table (logins, restarts).
    pub async fn record_event(
        &self,
        actor: Actor,
        action: &str,
        target_type: &str,
        target: &str,
        detail: Option<Value>,
    ) -> Result<(), StoreError> {
        let (action, target_type, target) = (
            action.to_string(),
            target_type.to_string(),
            target.to_string(),
        );
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            audit_tx(
                &tx,
                &actor,
                &action,
                &target_type,
                &target,
                None,
                detail.as_ref(),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Audit entries, newest first.
    pub async fn list_audit(&self, f: AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.call(move |c| {
            let mut w = crate::filter::Where::new();
            w.eq("actor", &f.actor).eq("action", &f.action).eq("target", &f.target).cmp("id", "<", &f.before_id);
            let li = w.bind(f.limit.clamp(1, 500));
            let sql = format!(
                "SELECT id, ts_ms, actor, action, target_type, target, before, after, request_id FROM audit_log{}
                 ORDER BY id DESC LIMIT ?{li}",
                w.sql
            );
            let mut st = c.prepare(&sql)?;
            let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
            let rows = st
                .query_map(w.params(), |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target_type: r.get(4)?,
                        target: r.get(5)?,
                        before: parse(r.get(6)?),
                        after: parse(r.get(7)?),
                        request_id: r.get(8)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_database_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let store = super::Store::open(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let db = store.path().to_path_buf();
        assert_eq!(mode(&db), 0o600);
        for suffix in ["-wal", "-shm"] {
            let f = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
            if f.exists() {
                assert_eq!(mode(&f), 0o600, "{suffix}");
            }
        }
        // An older database left readable by others is restricted when opened again.
        drop(store);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = super::Store::open(&data).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[tokio::test]
    async fn setting_the_status_an_alert_has_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(dir.path()).unwrap();
        let alert = palisade_core::record::AlertRecord {
            id: "a1".into(),
            kind: "policy".into(),
            status: "new".into(),
            ..Default::default()
        };
        store.insert_alerts(vec![alert]).await.unwrap();
        for _ in 0..3 {
            let a = store
                .set_alert_status("a1", "resolved", super::Actor::system("t"))
                .await
                .unwrap();
            assert_eq!(a.status, "resolved");
        }
        let audit = store
            .list_audit(super::AuditFilter {
                actor: None,
                action: Some("alert.status".into()),
                target: None,
                limit: 100,
                before_id: None,
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 1, "only the change is recorded");
    }
}
