//! OAuth 2.1 state the gateway keeps: registered clients (RFC 7591) and refresh tokens.
//!
//! Refresh tokens are stored as SHA-256 digests, never as issued. Each sign-in starts a family;
//! every use marks the token used and the caller issues its successor in the same family; a
//! used token presented again (stolen, or replayed) revokes the whole family.

use palisade_core::now_ms;
use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// Most clients that may register (open registration is bounded).
pub const MAX_CLIENTS: i64 = 10_000;

pub use palisade_core::oauth::{OAuthClientRow, RefreshGrant, RefreshUse};

impl Store {
    /// Registers a client; refused once [`MAX_CLIENTS`] are registered.
    pub async fn create_oauth_client(
        &self,
        row: OAuthClientRow,
        from: String,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM oauth_clients", [], |r| r.get(0))?;
            if n >= MAX_CLIENTS {
                return Err(StoreError::Conflict(format!(
                    "the gateway holds {MAX_CLIENTS} registered clients, its most"
                )));
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

    /// Stores a refresh token's digest and grant; expired tokens are pruned on the way.
    pub async fn put_refresh(&self, hash: [u8; 32], g: RefreshGrant) -> Result<(), StoreError> {
        self.call(move |c| {
            let now = now_ms();
            c.execute("DELETE FROM oauth_refresh WHERE expires_at <= ?1", [now])?;
            c.execute(
                "INSERT INTO oauth_refresh (token_hash, family, client_id, username, proxy, resource, scope, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    hash.to_vec(),
                    g.family,
                    g.client_id,
                    g.username,
                    g.proxy,
                    g.resource,
                    g.scope,
                    g.expires_at,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Uses a refresh token: marks it used and returns its grant; a used one revokes its family.
    pub async fn use_refresh(&self, hash: [u8; 32]) -> Result<RefreshUse, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            let row = tx
                .query_row(
                    "SELECT family, client_id, username, proxy, resource, scope, expires_at, used_at
                     FROM oauth_refresh WHERE token_hash = ?1",
                    [hash.to_vec()],
                    |r| {
                        Ok((
                            RefreshGrant {
                                family: r.get(0)?,
                                client_id: r.get(1)?,
                                username: r.get(2)?,
                                proxy: r.get(3)?,
                                resource: r.get(4)?,
                                scope: r.get(5)?,
                                expires_at: r.get(6)?,
                            },
                            r.get::<_, Option<i64>>(7)?,
                        ))
                    },
                )
                .optional()?;
            let out = match row {
                None => RefreshUse::Invalid,
                Some((g, Some(_))) => {
                    tx.execute("DELETE FROM oauth_refresh WHERE family = ?1", [&g.family])?;
                    RefreshUse::Replayed
                }
                Some((g, None)) if g.expires_at <= now => RefreshUse::Invalid,
                Some((g, None)) => {
                    tx.execute(
                        "UPDATE oauth_refresh SET used_at = ?1 WHERE token_hash = ?2",
                        params![now, hash.to_vec()],
                    )?;
                    RefreshUse::Valid(g)
                }
            };
            tx.commit()?;
            Ok(out)
        })
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
    async fn refresh_tokens_rotate_and_a_replay_revokes_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let grant = RefreshGrant {
            family: "fam-1".into(),
            client_id: "c1".into(),
            username: "mia".into(),
            proxy: "tools".into(),
            resource: "http://127.0.0.1:9/".into(),
            scope: "mcp".into(),
            expires_at: now_ms() + 60_000,
        };
        store.put_refresh([1; 32], grant.clone()).await.unwrap();
        assert_eq!(
            store.use_refresh([1; 32]).await.unwrap(),
            RefreshUse::Valid(grant.clone())
        );
        store.put_refresh([2; 32], grant.clone()).await.unwrap();
        // The first one again: the family (the successor too) is gone.
        assert_eq!(
            store.use_refresh([1; 32]).await.unwrap(),
            RefreshUse::Replayed
        );
        assert_eq!(
            store.use_refresh([2; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        assert_eq!(
            store.use_refresh([9; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        let old = RefreshGrant {
            expires_at: now_ms() - 1,
            ..grant.clone()
        };
        store.put_refresh([3; 32], old).await.unwrap();
        assert_eq!(
            store.use_refresh([3; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        store.put_refresh([4; 32], grant).await.unwrap();
        assert_eq!(store.revoke_user_refresh("mia").await.unwrap(), 1);
        assert_eq!(
            store.use_refresh([4; 32]).await.unwrap(),
            RefreshUse::Invalid
        );
        // Clients: kept as registered.
        let c = OAuthClientRow {
            client_id: "c1".into(),
            name: "Inspector".into(),
            redirect_uris: vec!["http://127.0.0.1:6274/cb".into()],
            secret_hash: Some([7; 32]),
            created_at: 5,
        };
        store
            .create_oauth_client(c.clone(), "127.0.0.1".into())
            .await
            .unwrap();
        assert_eq!(store.oauth_client("c1").await.unwrap(), Some(c));
        assert_eq!(store.oauth_client("c2").await.unwrap(), None);
    }
}
