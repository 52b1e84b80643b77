//! The OAuth authorization server's backend: the gateway's users sign in (as to the console),
//! clients and refresh tokens are kept in the store.

use std::net::IpAddr;

use palisade_core::oauth::{OAuthClientRow, RefreshGrant, RefreshUse};
use palisade_gateway::oauth::{BoxFut, OAuthBackend};
use palisade_store::Actor;

use crate::AppState;

/// The backend over the admin state.
pub struct Backend(AppState);

impl Backend {
    /// A backend for `state`'s users and store.
    pub fn new(state: AppState) -> Self {
        Self(state)
    }
}

impl OAuthBackend for Backend {
    fn sign_in<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
        ip: IpAddr,
        client: &'a str,
        proxy: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(crate::auth::oauth_sign_in(
            &self.0, username, password, ip, client, proxy,
        ))
    }

    fn register(&self, row: OAuthClientRow, from: IpAddr) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            let detail = serde_json::json!({
                "client_name": row.name,
                "redirect_uris": row.redirect_uris,
                "confidential": row.secret_hash.is_some(),
                "ip": from.to_string(),
            });
            let id = row.client_id.clone();
            self.0
                .store
                .create_oauth_client(row, from.to_string())
                .await
                .map_err(|e| e.to_string())?;
            let actor = Actor {
                name: "anonymous".into(),
                request_id: None,
            };
            self.0
                .store
                .record_event(
                    actor,
                    "oauth.client_register",
                    "oauth_client",
                    &id,
                    Some(detail),
                )
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn client<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<OAuthClientRow>, String>> {
        Box::pin(async move {
            if id.len() > 64 {
                return Ok(None);
            }
            self.0
                .store
                .oauth_client(id)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn put_refresh(&self, hash: [u8; 32], grant: RefreshGrant) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            self.0
                .store
                .put_refresh(hash, grant)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn use_refresh(&self, hash: [u8; 32]) -> BoxFut<'_, Result<RefreshUse, String>> {
        Box::pin(async move {
            self.0
                .store
                .use_refresh(hash)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
