//! The OAuth authorization server's backend: the gateway's users sign in (as to the console,
//! counted apart), clients and refresh tokens are kept in the store. Store failures are logged
//! here and reach clients as a plain "try again".

use std::net::IpAddr;

use palisade_core::oauth::{OAuthClientRow, RefreshGrant, RefreshUse, UserStamp};
use palisade_core::oidc::{IdentityClaims, IdentityProviderSpec};
use palisade_gateway::oauth::{BoxFut, OAuthBackend, SignedIn};
use palisade_store::{Actor, StoreError};
use serde_json::Value;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiResult, ErrorBody};

/// The backend over the admin state.
pub struct Backend(AppState);

impl Backend {
    /// A backend for `state`'s users and store.
    pub fn new(state: AppState) -> Self {
        Self(state)
    }
}

/// A store failure as a client sees it (the detail goes to the log).
fn unavailable(e: StoreError) -> String {
    match e {
        StoreError::Conflict(m) => m,
        other => {
            tracing::warn!(error = %other, "OAuth: the store failed");
            "the gateway cannot store this now; retry shortly".into()
        }
    }
}

fn anonymous() -> Actor {
    Actor {
        name: "anonymous".into(),
        request_id: None,
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
    ) -> BoxFut<'a, Result<SignedIn, String>> {
        Box::pin(crate::auth::oauth_sign_in(
            &self.0, username, password, ip, client, proxy,
        ))
    }

    fn change_password<'a>(
        &'a self,
        username: &'a str,
        current: &'a str,
        new: &'a str,
        ip: IpAddr,
    ) -> BoxFut<'a, Result<UserStamp, String>> {
        Box::pin(crate::auth::oauth_change_password(
            &self.0, username, current, new, ip,
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
                .map_err(unavailable)?;
            self.0
                .store
                .record_event(
                    anonymous(),
                    "oauth.client_register",
                    "oauth_client",
                    &id,
                    Some(detail),
                )
                .await
                .map_err(unavailable)
        })
    }

    fn client<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<OAuthClientRow>, String>> {
        Box::pin(async move {
            if id.len() > 64 {
                return Ok(None);
            }
            self.0.store.oauth_client(id).await.map_err(unavailable)
        })
    }

    fn put_refresh(&self, hash: [u8; 32], grant: RefreshGrant) -> BoxFut<'_, Result<bool, String>> {
        Box::pin(async move {
            self.0
                .store
                .put_refresh(hash, grant)
                .await
                .map_err(unavailable)
        })
    }

    fn peek_refresh(
        &self,
        hash: [u8; 32],
    ) -> BoxFut<'_, Result<Option<(RefreshGrant, bool)>, String>> {
        Box::pin(async move { self.0.store.peek_refresh(hash).await.map_err(unavailable) })
    }

    fn rotate_refresh(
        &self,
        old: [u8; 32],
        next: [u8; 32],
    ) -> BoxFut<'_, Result<RefreshUse, String>> {
        Box::pin(async move {
            self.0
                .store
                .rotate_refresh(old, next)
                .await
                .map_err(unavailable)
        })
    }

    fn revoke_family<'a>(&'a self, family: &'a str) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .store
                .revoke_refresh_family(family)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn provider<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<(IdentityProviderSpec, String)>, String>> {
        Box::pin(crate::oidc::provider(&self.0, name))
    }

    fn provider_sign_in<'a>(
        &'a self,
        provider: &'a IdentityProviderSpec,
        who: &'a IdentityClaims,
        ip: IpAddr,
        proxy: &'a str,
        oauth_users: &'a [String],
    ) -> BoxFut<'a, Result<(String, UserStamp), String>> {
        Box::pin(crate::oidc::provider_sign_in(
            &self.0,
            provider,
            who,
            ip,
            proxy,
            oauth_users,
        ))
    }

    fn audit<'a>(
        &'a self,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        detail: Value,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let actor = Actor {
                name: actor.to_string(),
                request_id: None,
            };
            self.0
                .store
                .record_event(actor, action, "proxy", target, Some(detail))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, action, "OAuth: an audit record could not be written");
                    "the gateway cannot record this now; retry shortly".to_string()
                })
        })
    }
}

/// List the OAuth clients that registered with the proxies' authorization server.
#[utoipa::path(get, path = "/api/v1/oauth/clients", tag = "oauth", security(("bearer" = [])),
    responses((status = 200, body = [palisade_store::OAuthClientInfo]), (status = 401, body = ErrorBody)))]
pub async fn list_clients(
    State(s): State<AppState>,
    _v: Viewer,
) -> ApiResult<Json<Vec<palisade_store::OAuthClientInfo>>> {
    Ok(Json(s.store.list_oauth_clients().await?))
}

/// Delete an OAuth client: its refresh tokens, access tokens, waiting codes and open streams end
/// at once (audited). It may register again; its users sign in again.
#[utoipa::path(delete, path = "/api/v1/oauth/clients/{client_id}", tag = "oauth", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "Client id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_client(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(client_id): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_oauth_client(&client_id, u.actor()).await?;
    s.manager.shared().revoke_oauth_client(&client_id);
    Ok(StatusCode::NO_CONTENT)
}
