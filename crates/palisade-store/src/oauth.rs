//! OAuth 2.1 state the gateway keeps: registered clients (RFC 7591) and refresh tokens.
//!
//! Refresh tokens are stored as SHA-256 digests, never as issued. Each sign-in starts a family;
//! a rotation marks the token used and stores its successor in one transaction; a used token
//! presented again (stolen, or replayed) revokes the whole family, however many rotations ago
//! it was used (used tokens are kept until the family expires, at most [`MAX_ROTATIONS`]). A grant holds its user's id and last change: once the
//! user is deleted, recreated or changed, the family is void.

use palisade_core::now_ms;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Store, StoreError};

/// Most clients that may register (open registration is bounded).
pub const MAX_CLIENTS: i64 = 10_000;

pub use palisade_core::oauth::{OAuthClientRow, RefreshGrant, RefreshUse, UserStamp};

/// A registered client as administrators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct OAuthClientInfo {
    /// The id the gateway gave it.
    pub client_id: String,
    /// The name it registered with (its own claim).
    pub name: String,
    /// Its redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Whether it holds a secret.
    pub confidential: bool,
    /// Registration time, Unix ms.
    pub created_at: i64,
    /// Its last completed sign-in or refresh, Unix ms.
    pub last_used_at: Option<i64>,
    /// Sign-ins with a live refresh token.
    pub sign_ins: i64,
}

/// How long a registered client that never completed a sign-in is kept.
const UNUSED_CLIENT_MS: i64 = 3600 * 1000;
/// How long a client without a live sign-in is kept after its last one.
const IDLE_CLIENT_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most rotations of one sign-in (a client refreshes about hourly: 720 in 30 days); past it the
/// sign-in ends and the user signs in again.
pub const MAX_ROTATIONS: i64 = 2_000;

const GRANT_COLS: &str = "family, client_id, username, user_id, user_updated_at, proxy, resource, scope, expires_at, used_at";

fn grant_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RefreshGrant, bool)> {
    Ok((
        RefreshGrant {
            family: r.get(0)?,
            client_id: r.get(1)?,
            username: r.get(2)?,
            user: UserStamp {
                id: r.get(3)?,
                updated_at: r.get(4)?,
            },
            proxy: r.get(5)?,
            resource: r.get(6)?,
            scope: r.get(7)?,
            expires_at: r.get(8)?,
        },
        r.get::<_, Option<i64>>(9)?.is_some(),
    ))
}

fn get_grant(c: &Connection, hash: &[u8; 32]) -> rusqlite::Result<Option<(RefreshGrant, bool)>> {
    c.query_row(
        &format!("SELECT {GRANT_COLS} FROM oauth_refresh WHERE token_hash = ?1"),
        [hash.to_vec()],
        grant_of,
    )
    .optional()
}

/// Whether the grant's user is still the one who signed in.
fn user_holds(c: &Connection, g: &RefreshGrant) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM users WHERE username = ?1 AND id = ?2 AND updated_at = ?3",
        params![g.username, g.user.id, g.user.updated_at],
        |r| r.get::<_, i64>(0),
    )? == 1)
}

fn insert_grant(
    c: &Connection,
    hash: &[u8; 32],
    g: &RefreshGrant,
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO oauth_refresh (token_hash, family, client_id, username, user_id, user_updated_at, proxy, resource, scope, expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            hash.to_vec(),
            g.family,
            g.client_id,
            g.username,
            g.user.id,
            g.user.updated_at,
            g.proxy,
            g.resource,
            g.scope,
            g.expires_at,
            now
        ],
    )?;
    c.execute(
        "UPDATE oauth_clients SET last_used_at = ?1 WHERE client_id = ?2",
        params![now, g.client_id],
    )?;
    Ok(())
}

impl Store {
    /// Registers a client. Clients that never completed a sign-in within a day are dropped
    /// first; past [`MAX_CLIENTS`] the registration is refused.
    pub async fn create_oauth_client(
        &self,
        row: OAuthClientRow,
        from: String,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            tx.execute(
                "DELETE FROM oauth_clients WHERE (last_used_at IS NULL AND created_at < ?1)
                    OR (last_used_at < ?2 AND client_id NOT IN (SELECT client_id FROM oauth_refresh))",
                params![now - UNUSED_CLIENT_MS, now - IDLE_CLIENT_MS],
            )?;
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM oauth_clients", [], |r| r.get(0))?;
            if n >= MAX_CLIENTS {
                // Full: the oldest client that never signed anyone in makes room.
                let evicted = tx.execute(
                    "DELETE FROM oauth_clients WHERE client_id = (SELECT client_id FROM oauth_clients
                        WHERE last_used_at IS NULL ORDER BY created_at LIMIT 1)",
                    [],
                )?;
                if evicted == 0 {
                    return Err(StoreError::Conflict(format!(
                        "the gateway holds {MAX_CLIENTS} registered clients in use, its most"
                    )));
                }
            }
            let uris = serde_json::to_string(&row.redirect_uris)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO oauth_clients (client_id, name, redirect_uris, secret_hash, created_at, created_from)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.client_id,
                    row.name,
                    uris,
                    row.secret_hash.map(|h| h.to_vec()),
                    row.created_at,
                    from
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A registered client.
    pub async fn oauth_client(
        &self,
        client_id: &str,
    ) -> Result<Option<OAuthClientRow>, StoreError> {
        let id = client_id.to_string();
        self.call(move |c| {
            let row = c
                .query_row(
                    "SELECT client_id, name, redirect_uris, secret_hash, created_at FROM oauth_clients WHERE client_id = ?1",
                    [&id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<Vec<u8>>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((client_id, name, uris, secret, created_at)) = row else {
                return Ok(None);
            };
            let redirect_uris =
                serde_json::from_str(&uris).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let secret_hash = match secret {
                None => None,
                Some(b) => Some(
                    <[u8; 32]>::try_from(b.as_slice())
                        .map_err(|_| StoreError::Corrupt("client secret digest".into()))?,
                ),
            };
            Ok(Some(OAuthClientRow {
                client_id,
                name,
                redirect_uris,
                secret_hash,
                created_at,
            }))
        })
        .await
    }

    /// Stores the first refresh token of a sign-in, if its user is still the one who signed
    /// in (`Ok(false)` when not); expired tokens are pruned on the way.
    pub async fn put_refresh(&self, hash: [u8; 32], g: RefreshGrant) -> Result<bool, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            tx.execute("DELETE FROM oauth_refresh WHERE expires_at <= ?1", [now])?;
            if !user_holds(&tx, &g)? {
                return Ok(false);
            }
            insert_grant(&tx, &hash, &g, now)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// A refresh token's grant and whether it was used, without using it.
    pub async fn peek_refresh(
        &self,
        hash: [u8; 32],
    ) -> Result<Option<(RefreshGrant, bool)>, StoreError> {
        self.call(move |c| Ok(get_grant(c, &hash)?)).await
    }

    /// Rotates a refresh token in one transaction: a valid one is marked used and `next` stored
    /// in its family (the family's older used tokens go); a used one revokes its family; one
    /// whose user changed since the sign-in revokes it too.
    pub async fn rotate_refresh(
        &self,
        old: [u8; 32],
        next: [u8; 32],
    ) -> Result<RefreshUse, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            let out = match get_grant(&tx, &old)? {
                None => RefreshUse::Invalid,
                Some((g, true)) => {
                    tx.execute("DELETE FROM oauth_refresh WHERE family = ?1", [&g.family])?;
                    RefreshUse::Replayed(g.family)
                }
                Some((g, false)) if g.expires_at <= now => RefreshUse::Invalid,
                Some((g, false)) if !user_holds(&tx, &g)? => {
                    tx.execute("DELETE FROM oauth_refresh WHERE family = ?1", [&g.family])?;
                    RefreshUse::Invalid
                }
                Some((g, false))
                    if tx.query_row(
                        "SELECT COUNT(*) FROM oauth_refresh WHERE family = ?1",
                        [&g.family],
                        |r| r.get::<_, i64>(0),
                    )? >= MAX_ROTATIONS =>
                {
                    tx.execute("DELETE FROM oauth_refresh WHERE family = ?1", [&g.family])?;
                    RefreshUse::Invalid
                }
                Some((g, false)) => {
                    tx.execute(
                        "UPDATE oauth_refresh SET used_at = ?1 WHERE token_hash = ?2",
                        params![now, old.to_vec()],
                    )?;
                    insert_grant(&tx, &next, &g, now)?;
                    RefreshUse::Valid(g)
                }
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Every registered client with its last sign-in and its live sign-ins, newest first.
    pub async fn list_oauth_clients(&self) -> Result<Vec<OAuthClientInfo>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT client_id, name, redirect_uris, secret_hash IS NOT NULL, created_at, last_used_at,
                    (SELECT COUNT(DISTINCT family) FROM oauth_refresh r
                       WHERE r.client_id = oauth_clients.client_id AND r.used_at IS NULL AND r.expires_at > ?1)
                 FROM oauth_clients ORDER BY created_at DESC",
            )?;
            let rows = st.query_map([now_ms()], |r| {
                Ok((
                    OAuthClientInfo {
                        client_id: r.get(0)?,
                        name: r.get(1)?,
                        redirect_uris: Vec::new(),
                        confidential: r.get(3)?,
                        created_at: r.get(4)?,
                        last_used_at: r.get(5)?,
                        sign_ins: r.get(6)?,
                    },
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (mut info, uris) = row?;
                info.redirect_uris =
                    serde_json::from_str(&uris).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.push(info);
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a client and its refresh tokens (audited).
    pub async fn delete_oauth_client(
        &self,
        client_id: &str,
        actor: crate::Actor,
    ) -> Result<(), StoreError> {
        let id = client_id.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let name: Option<String> = tx
                .query_row(
                    "SELECT name FROM oauth_clients WHERE client_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            let name = name.ok_or_else(|| StoreError::NotFound(format!("OAuth client `{id}`")))?;
            let sign_ins = tx.execute("DELETE FROM oauth_refresh WHERE client_id = ?1", [&id])?;
            tx.execute("DELETE FROM oauth_clients WHERE client_id = ?1", [&id])?;
            crate::store::audit_tx(
                &tx,
                &actor,
                "oauth.client_delete",
                "oauth_client",
                &id,
                Some(&serde_json::json!({"client_name": name, "refresh_tokens": sign_ins})),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Revokes a sign-in's refresh tokens (its code was presented twice).
    pub async fn revoke_refresh_family(&self, family: &str) -> Result<usize, StoreError> {
        let f = family.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM oauth_refresh WHERE family = ?1", [&f])?))
            .await
    }

    /// Revokes every refresh token for a proxy (how its users sign in changed).
    pub async fn revoke_proxy_refresh(&self, proxy: &str) -> Result<usize, StoreError> {
        let p = proxy.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM oauth_refresh WHERE proxy = ?1", [&p])?))
            .await
    }

    /// Revokes every refresh token of a user (deleted, password reset, role changed).
    pub async fn revoke_user_refresh(&self, username: &str) -> Result<usize, StoreError> {
        let u = username.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM oauth_refresh WHERE username = ?1", [&u])?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn refresh_tokens_rotate_and_a_replay_or_a_changed_user_revokes_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_user(
                "mia",
                "hash-1".into(),
                "member",
                false,
                crate::Actor::system("test"),
            )
            .await
            .unwrap();
        let row = store.user_by_name("mia").await.unwrap().unwrap();
        let stamp = |s: &Store| {
            let s = s.clone();
            async move {
                s.call(|c| {
                    Ok(c.query_row(
                        "SELECT id, updated_at FROM users WHERE username = 'mia'",
                        [],
                        |r| {
                            Ok(UserStamp {
                                id: r.get(0)?,
                                updated_at: r.get(1)?,
                            })
                        },
                    )?)
                })
                .await
                .unwrap()
            }
        };
        let grant = RefreshGrant {
            family: "fam-1".into(),
            client_id: "c1".into(),
            username: "mia".into(),
            user: stamp(&store).await,
            proxy: "tools".into(),
            resource: "http://127.0.0.1:9/".into(),
            scope: "mcp".into(),
            expires_at: now_ms() + 60_000,
        };
        assert_eq!(grant.user.id, row.id);
        assert!(store.put_refresh([1; 32], grant.clone()).await.unwrap());
        assert_eq!(
            store.peek_refresh([1; 32]).await.unwrap(),
            Some((grant.clone(), false))
        );
        assert_eq!(
            store.rotate_refresh([1; 32], [2; 32]).await.unwrap(),
            RefreshUse::Valid(grant.clone())
        );
        assert_eq!(
            store.rotate_refresh([2; 32], [3; 32]).await.unwrap(),
            RefreshUse::Valid(grant.clone())
        );
        // The first one again, two rotations on: the family (the current token too) is gone.
        assert_eq!(
            store.rotate_refresh([1; 32], [4; 32]).await.unwrap(),
            RefreshUse::Replayed("fam-1".into())
        );
        assert_eq!(
            store.rotate_refresh([3; 32], [5; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        assert_eq!(
            store.rotate_refresh([9; 32], [6; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        let old = RefreshGrant {
            expires_at: now_ms() - 1,
            ..grant.clone()
        };
        assert!(store.put_refresh([7; 32], old).await.unwrap());
        assert_eq!(
            store.rotate_refresh([7; 32], [8; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        // A user changed since the sign-in: nothing is stored for it, and its family is void.
        let changed = RefreshGrant {
            user: UserStamp {
                updated_at: grant.user.updated_at + 1,
                ..grant.user.clone()
            },
            family: "fam-2".into(),
            ..grant.clone()
        };
        assert!(!store.put_refresh([10; 32], changed).await.unwrap());
        assert!(store.put_refresh([11; 32], grant.clone()).await.unwrap());
        assert_eq!(store.revoke_user_refresh("mia").await.unwrap(), 1);
        assert_eq!(
            store.rotate_refresh([11; 32], [12; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        // Clients: kept as registered.
        let c = OAuthClientRow {
            client_id: "c1".into(),
            name: "Inspector".into(),
            redirect_uris: vec!["http://127.0.0.1:6274/cb".into()],
            secret_hash: Some([7; 32]),
            created_at: now_ms(),
        };
        store
            .create_oauth_client(c.clone(), "127.0.0.1".into())
            .await
            .unwrap();
        assert_eq!(store.oauth_client("c1").await.unwrap(), Some(c));
        assert_eq!(store.oauth_client("c2").await.unwrap(), None);
        // One that never signed anyone in is dropped after a day.
        let stale = OAuthClientRow {
            client_id: "c3".into(),
            created_at: now_ms() - UNUSED_CLIENT_MS - 1,
            ..store.oauth_client("c1").await.unwrap().unwrap()
        };
        store
            .create_oauth_client(stale, "127.0.0.1".into())
            .await
            .unwrap();
        let fresh = OAuthClientRow {
            client_id: "c4".into(),
            ..store.oauth_client("c1").await.unwrap().unwrap()
        };
        store
            .create_oauth_client(fresh, "127.0.0.1".into())
            .await
            .unwrap();
        assert_eq!(store.oauth_client("c3").await.unwrap(), None);
        let listed = store.list_oauth_clients().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|c| c.confidential && c.sign_ins == 0));
        store
            .delete_oauth_client("c1", crate::Actor::system("test"))
            .await
            .unwrap();
        assert_eq!(store.oauth_client("c1").await.unwrap(), None);
        assert!(
            store
                .delete_oauth_client("c1", crate::Actor::system("test"))
                .await
                .is_err()
        );
    }
}
