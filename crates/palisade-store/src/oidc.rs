//! OpenID Connect identity providers, with their client secrets sealed.

use palisade_core::now_ms;
use palisade_core::oidc::IdentityProviderSpec;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{audit_tx, sealed_version, to_json};
use crate::{Actor, Store, StoreError};

/// A stored identity provider.
#[derive(Debug, Clone)]
pub struct IdentityProviderRow {
    /// Configuration.
    pub spec: IdentityProviderSpec,
    /// The client secret, sealed with the master key.
    pub secret_sealed: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

impl IdentityProviderRow {
    /// What the audit log keeps of it: the spec and which secret it has, never the secret.
    fn audit_view(&self) -> serde_json::Value {
        let mut v = to_json(&self.spec);
        v["secret_version"] = sealed_version(&self.secret_sealed).into();
        v
    }
}

const COLS: &str = "spec, secret_sealed, created_at, updated_at";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdentityProviderRow> {
    let spec: String = r.get(0)?;
    let spec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(IdentityProviderRow {
        spec,
        secret_sealed: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

fn get_tx(c: &Connection, name: &str) -> Result<Option<IdentityProviderRow>, StoreError> {
    c.query_row(
        &format!("SELECT {COLS} FROM identity_providers WHERE name = ?1"),
        [name],
        row_of,
    )
    .optional()
    .map_err(Into::into)
}

/// Whom a provider's sign-in is.
#[derive(Debug, Clone)]
pub enum ProviderUser {
    /// The gateway user of that provider account (created now, linked now, or before).
    User(crate::UserRow),
    /// No user may be; the reason, fit to show the person signing in.
    Refused(String),
}

/// Password hash of a user created by a provider's sign-in: not a hash, so no password
/// matches it (an administrator may set one later).
const NO_PASSWORD: &str = "!signs-in-through-an-identity-provider";

fn user_where(c: &Connection, cond: &str, v: &str) -> rusqlite::Result<Option<crate::UserRow>> {
    c.query_row(
        &format!("SELECT id, username, password_hash, role, must_change_password, updated_at FROM users WHERE {cond}"),
        [v],
        |r| {
            Ok(crate::UserRow {
                id: r.get(0)?,
                username: r.get(1)?,
                password_hash: r.get(2)?,
                role: r.get(3)?,
                must_change_password: r.get(4)?,
                updated_at: r.get(5)?,
            })
        },
    )
    .optional()
}

/// Drops the links of accounts of `issuer` when no provider has that issuer any more: their
/// users may then be linked again, to an account of a provider the gateway has.
fn forget_issuer(c: &Connection, issuer: &str) -> Result<(), StoreError> {
    let mut st = c.prepare("SELECT spec FROM identity_providers")?;
    let specs = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let still = specs
        .iter()
        .any(|s| serde_json::from_str::<IdentityProviderSpec>(s).is_ok_and(|p| p.issuer == issuer));
    if !still {
        c.execute("DELETE FROM identity_links WHERE issuer = ?1", [issuer])?;
    }
    Ok(())
}

/// A provider account signing in: who vouches, and for whom.
#[derive(Debug, Clone)]
pub struct ProviderAccount {
    /// The provider's name (for the audit log).
    pub provider: String,
    /// Its issuer: accounts are its `sub`s.
    pub issuer: String,
    /// The account (`sub`).
    pub subject: String,
    /// Its verified address, in lower case.
    pub email: String,
    /// A member may be created for an address no user has.
    pub create: bool,
    /// The users the proxy takes (`oauth_users`, compared without case; empty: anyone).
    pub allowed: Vec<String>,
}

impl Store {
    /// The gateway user of a provider account. An account signs in as the user it was linked
    /// to, whatever its address says now, while that user is a member. An account not linked
    /// yet is linked to the `member` of its address (compared without case) if that member has
    /// no account linked; administrators and viewers are never signed in through a provider.
    /// With no such user and `create`, a member is created (audited as `user.create` by
    /// `actor`); links are audited as `identity_provider.link`. The proxy's list is checked
    /// before anything is linked or created.
    pub async fn provider_user(
        &self,
        a: ProviderAccount,
        actor: Actor,
    ) -> Result<ProviderUser, StoreError> {
        self.call(move |c| {
            let admits = |name: &str| {
                a.allowed.is_empty() || a.allowed.iter().any(|x| x.eq_ignore_ascii_case(name))
            };
            let not_here = |name: &str| {
                ProviderUser::Refused(format!(
                    "The user {name} may not use this proxy; ask an administrator."
                ))
            };
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let linked: Option<String> = tx
                .query_row(
                    "SELECT user_id FROM identity_links WHERE issuer = ?1 AND subject = ?2",
                    [&a.issuer, &a.subject],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = linked {
                if let Some(u) = user_where(&tx, "id = ?1", &id)? {
                    return Ok(if u.role != "member" {
                        ProviderUser::Refused(format!(
                            "The gateway user {} is no longer a member: an identity provider signs in members only.",
                            u.username
                        ))
                    } else if !admits(&u.username) {
                        not_here(&u.username)
                    } else {
                        ProviderUser::User(u)
                    });
                }
                // Its user was deleted: the account starts afresh.
                tx.execute(
                    "DELETE FROM identity_links WHERE issuer = ?1 AND subject = ?2",
                    [&a.issuer, &a.subject],
                )?;
            }
            let user = match user_where(&tx, "lower(username) = lower(?1)", &a.email)? {
                Some(u) => {
                    let taken: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM identity_links WHERE user_id = ?1)",
                        [&u.id],
                        |r| r.get(0),
                    )?;
                    if taken {
                        return Ok(ProviderUser::Refused(format!(
                            "The gateway user {} signs in through another account; ask an administrator.",
                            u.username
                        )));
                    }
                    if u.role != "member" {
                        return Ok(ProviderUser::Refused(format!(
                            "The gateway user {} is an {}: an identity provider signs in members only.",
                            u.username,
                            if u.role == "admin" { "administrator" } else { "viewer" }
                        )));
                    }
                    if !admits(&u.username) {
                        return Ok(not_here(&u.username));
                    }
                    u
                }
                None if !admits(&a.email) => return Ok(not_here(&a.email)),
                None if a.create => {
                    let now = now_ms();
                    tx.execute(
                        "INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, updated_at)
                         VALUES (?1, ?2, ?3, 'member', 0, ?4, ?4)",
                        params![palisade_core::crypto::random_id(), a.email, NO_PASSWORD, now],
                    )?;
                    let after = serde_json::json!({"username": a.email, "role": "member"});
                    audit_tx(&tx, &actor, "user.create", "user", &a.email, None, Some(&after))?;
                    user_where(&tx, "username = ?1", &a.email)?
                        .ok_or_else(|| StoreError::Corrupt("user vanished".into()))?
                }
                None => {
                    return Ok(ProviderUser::Refused(format!(
                        "The gateway has no user {}; ask an administrator to add one.",
                        a.email
                    )));
                }
            };
            tx.execute(
                "INSERT INTO identity_links (issuer, subject, provider, user_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![a.issuer, a.subject, a.provider, user.id, now_ms()],
            )?;
            let detail = serde_json::json!({"provider": a.provider, "issuer": a.issuer, "subject": a.subject});
            audit_tx(&tx, &actor, "identity_provider.link", "user", &user.username, None, Some(&detail))?;
            tx.commit()?;
            Ok(ProviderUser::User(user))
        })
        .await
    }

    /// Every identity provider, by name.
    pub async fn list_identity_providers(&self) -> Result<Vec<IdentityProviderRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM identity_providers ORDER BY name"
            ))?;
            Ok(st.query_map([], row_of)?.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One identity provider.
    pub async fn identity_provider(
        &self,
        name: &str,
    ) -> Result<Option<IdentityProviderRow>, StoreError> {
        let name = name.to_string();
        self.call(move |c| get_tx(c, &name)).await
    }

    /// Creates or replaces an identity provider (audited as `identity_provider.create` or
    /// `.update`; a replacement that changes nothing records nothing). `secret_sealed: None`
    /// keeps the stored secret of an existing provider; a new one needs one.
    pub async fn put_identity_provider(
        &self,
        spec: IdentityProviderSpec,
        secret_sealed: Option<String>,
        actor: Actor,
    ) -> Result<IdentityProviderRow, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_tx(&tx, &spec.name)?;
            let sealed = match (&before, secret_sealed) {
                (_, Some(s)) => s,
                (Some(b), None) => b.secret_sealed.clone(),
                (None, None) => {
                    return Err(StoreError::Conflict(format!(
                        "identity provider `{}` needs a client secret",
                        spec.name
                    )));
                }
            };
            if let Some(b) = &before
                && b.spec == spec
                && b.secret_sealed == sealed
            {
                return Ok(b.clone());
            }
            let json =
                serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let now = now_ms();
            let old_issuer = before
                .as_ref()
                .map(|b| b.spec.issuer.clone())
                .filter(|i| *i != spec.issuer);
            tx.execute(
                "INSERT INTO identity_providers (name, spec, secret_sealed, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (name) DO UPDATE SET spec = ?2, secret_sealed = ?3, updated_at = ?4",
                params![spec.name, json, sealed, now],
            )?;
            let after = get_tx(&tx, &spec.name)?
                .ok_or_else(|| StoreError::Corrupt("identity provider vanished".into()))?;
            audit_tx(
                &tx,
                &actor,
                if before.is_some() {
                    "identity_provider.update"
                } else {
                    "identity_provider.create"
                },
                "identity_provider",
                &spec.name,
                before.as_ref().map(|b| b.audit_view()).as_ref(),
                Some(&after.audit_view()),
            )?;
            if let Some(old) = old_issuer {
                forget_issuer(&tx, &old)?;
            }
            tx.commit()?;
            Ok(after)
        })
        .await
    }

    /// Deletes an identity provider (audited).
    pub async fn delete_identity_provider(
        &self,
        name: &str,
        actor: Actor,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = get_tx(&tx, &name)?
                .ok_or_else(|| StoreError::NotFound(format!("identity provider `{name}`")))?;
            tx.execute("DELETE FROM identity_providers WHERE name = ?1", [&name])?;
            forget_issuer(&tx, &before.spec.issuer)?;
            audit_tx(
                &tx,
                &actor,
                "identity_provider.delete",
                "identity_provider",
                &name,
                Some(&before.audit_view()),
                None,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            name: "admin".into(),
            request_id: None,
        }
    }

    fn spec(client: &str) -> IdentityProviderSpec {
        serde_json::from_value(serde_json::json!({
            "name": "corp", "issuer": "https://id.example.com", "client_id": client}))
        .unwrap()
    }

    fn acct(provider: &str, subject: &str, email: &str, create: bool) -> ProviderAccount {
        ProviderAccount {
            provider: provider.into(),
            issuer: format!("https://{provider}.example.com"),
            subject: subject.into(),
            email: email.to_lowercase(),
            create,
            allowed: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_provider_account_is_one_user_never_an_address_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let user = |r: ProviderUser| match r {
            ProviderUser::User(u) => u,
            ProviderUser::Refused(why) => panic!("refused: {why}"),
        };
        let refused = |r: ProviderUser| match r {
            ProviderUser::Refused(why) => why,
            ProviderUser::User(u) => panic!("signed in as {}", u.username),
        };
        // No user and no creation: refused; with creation: a member, linked.
        let why = refused(
            store
                .provider_user(acct("corp", "s-1", "mia@example.com", false), actor())
                .await
                .unwrap(),
        );
        assert!(why.contains("no user"), "{why}");
        let mia = user(
            store
                .provider_user(acct("corp", "s-1", "mia@example.com", true), actor())
                .await
                .unwrap(),
        );
        assert_eq!(
            (mia.username.as_str(), mia.role.as_str()),
            ("mia@example.com", "member")
        );
        // The account keeps its user when its address changes; another account with the
        // address, of this provider or another, does not get her.
        let again = user(
            store
                .provider_user(acct("corp", "s-1", "mia@new.example.com", true), actor())
                .await
                .unwrap(),
        );
        assert_eq!(again.id, mia.id);
        for (p, sub) in [("corp", "s-2"), ("other", "s-1")] {
            let why = refused(
                store
                    .provider_user(acct(p, sub, "MIA@example.com", true), actor())
                    .await
                    .unwrap(),
            );
            assert!(why.contains("another account"), "{why}");
        }
        // An existing member (names compared without case) is linked on first sign-in;
        // administrators and viewers never are.
        store
            .create_user("Noa@Example.com", "h".into(), "member", false, actor())
            .await
            .unwrap();
        store
            .create_user("boss@example.com", "h".into(), "admin", false, actor())
            .await
            .unwrap();
        let noa = user(
            store
                .provider_user(acct("corp", "s-3", "noa@example.com", false), actor())
                .await
                .unwrap(),
        );
        assert_eq!(noa.username, "Noa@Example.com");
        let why = refused(
            store
                .provider_user(acct("corp", "s-4", "boss@example.com", true), actor())
                .await
                .unwrap(),
        );
        assert!(why.contains("administrator"), "{why}");
        // The proxy's list is checked before anything is linked or created.
        let mut outside = acct("corp", "s-5", "zoe@example.com", true);
        outside.allowed = vec!["Someone@Example.com".into()];
        let why = refused(store.provider_user(outside.clone(), actor()).await.unwrap());
        assert!(why.contains("may not use this proxy"), "{why}");
        assert!(
            store
                .user_by_name("zoe@example.com")
                .await
                .unwrap()
                .is_none()
        );
        outside.allowed = vec!["ZOE@example.com".into()];
        user(store.provider_user(outside, actor()).await.unwrap());
        // A linked user made administrator is not signed in through the provider any more.
        store
            .create_user("ava@example.com", "h".into(), "member", false, actor())
            .await
            .unwrap();
        user(
            store
                .provider_user(acct("corp", "s-6", "ava@example.com", false), actor())
                .await
                .unwrap(),
        );
        store
            .set_user_role("ava@example.com", "admin", actor())
            .await
            .unwrap();
        let why = refused(
            store
                .provider_user(acct("corp", "s-6", "ava@example.com", false), actor())
                .await
                .unwrap(),
        );
        assert!(why.contains("no longer a member"), "{why}");
        // A deleted user's account starts afresh (a new user when creation is on).
        store.delete_user("mia@example.com", actor()).await.unwrap();
        let mia2 = user(
            store
                .provider_user(acct("corp", "s-1", "mia@example.com", true), actor())
                .await
                .unwrap(),
        );
        assert_ne!(mia2.id, mia.id);
        let audit = store
            .list_audit(crate::AuditFilter {
                action: Some("identity_provider.link".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 5);
    }

    #[tokio::test]
    async fn a_provider_given_another_issuer_brings_no_account_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut p = spec("a");
        p.issuer = "https://corp.example.com".into();
        store
            .put_identity_provider(p.clone(), Some("s".into()), actor())
            .await
            .unwrap();
        let mia = match store
            .provider_user(acct("corp", "42", "mia@example.com", true), actor())
            .await
            .unwrap()
        {
            ProviderUser::User(u) => u,
            ProviderUser::Refused(w) => panic!("{w}"),
        };
        // The same name with another issuer: its `sub` 42 is someone else.
        p.issuer = "https://elsewhere.example.com".into();
        store.put_identity_provider(p, None, actor()).await.unwrap();
        let mut stranger = acct("corp", "42", "eve@other.example", false);
        stranger.issuer = "https://elsewhere.example.com".into();
        assert!(matches!(
            store.provider_user(stranger, actor()).await.unwrap(),
            ProviderUser::Refused(_)
        ));
        // The old issuer's links are gone with it: Mia may be linked again.
        let mut again = acct("corp", "7", "mia@example.com", false);
        again.issuer = "https://elsewhere.example.com".into();
        match store.provider_user(again, actor()).await.unwrap() {
            ProviderUser::User(u) => assert_eq!(u.id, mia.id),
            ProviderUser::Refused(w) => panic!("{w}"),
        }
    }

    #[tokio::test]
    async fn providers_are_stored_with_their_sealed_secret_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = store
            .put_identity_provider(spec("a"), None, actor())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        store
            .put_identity_provider(spec("a"), Some("sealed-1".into()), actor())
            .await
            .unwrap();
        // The same again changes nothing; a new client id keeps the secret.
        store
            .put_identity_provider(spec("a"), Some("sealed-1".into()), actor())
            .await
            .unwrap();
        let row = store
            .put_identity_provider(spec("b"), None, actor())
            .await
            .unwrap();
        assert_eq!(row.secret_sealed, "sealed-1");
        assert_eq!(row.spec.client_id, "b");
        assert_eq!(store.list_identity_providers().await.unwrap().len(), 1);
        store
            .delete_identity_provider("corp", actor())
            .await
            .unwrap();
        assert!(store.identity_provider("corp").await.unwrap().is_none());
        assert!(matches!(
            store.delete_identity_provider("corp", actor()).await,
            Err(StoreError::NotFound(_))
        ));
        let audit = store
            .list_audit(crate::AuditFilter {
                target: Some("corp".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "identity_provider.delete",
                "identity_provider.update",
                "identity_provider.create"
            ]
        );
        assert!(!format!("{audit:?}").contains("sealed-1"));
    }
}
