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

impl Store {
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
