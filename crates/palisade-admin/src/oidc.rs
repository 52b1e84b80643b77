//! OpenID Connect identity providers: the API that keeps them, and the sign-in of the users
//! they vouch for on the proxies' OAuth pages.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::oauth::UserStamp;
use palisade_core::oidc::{IdentityClaims, IdentityProviderSpec};
use palisade_store::{Actor, IdentityProviderRow, ProviderAccount, ProviderUser};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{SecretChange, ValidJson, parse, take_secret};

/// An identity provider as the API shows it (the client secret is stored encrypted and never
/// returned).
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityProviderView {
    /// Configuration.
    #[serde(flatten)]
    pub spec: IdentityProviderSpec,
    /// The redirect URI to register with the provider, per proxy that signs in through it:
    /// `<proxy's base URL>/oauth/callback`.
    pub callback_path: &'static str,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

impl From<IdentityProviderRow> for IdentityProviderView {
    fn from(r: IdentityProviderRow) -> Self {
        Self {
            spec: r.spec,
            callback_path: "/oauth/callback",
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of create/replace: the provider's fields plus `client_secret` (required on create; on
/// replace, absent keeps the stored one).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct IdentityProviderInput {
    #[serde(flatten)]
    spec: IdentityProviderSpec,
    /// The client secret the provider gave the gateway; stored encrypted, never returned.
    client_secret: Option<String>,
}

fn secret_of(body: &mut Value) -> ApiResult<Option<String>> {
    match take_secret(body, "client_secret")? {
        SecretChange::Keep => Ok(None),
        SecretChange::Clear => Err(ApiError::field(
            "client_secret",
            "a provider needs its client secret",
        )),
        SecretChange::Set(s) if s.starts_with("env:") => Err(ApiError::field(
            "client_secret",
            "`env:` references are read from the config file only; give the secret itself",
        )),
        SecretChange::Set(s) if s.len() > 1024 || s.chars().any(char::is_control) => Err(
            ApiError::field("client_secret", "at most 1 KiB, no control characters"),
        ),
        SecretChange::Set(s) => Ok(Some(s)),
    }
}

impl AppState {
    /// Creates or replaces an identity provider (`secret: None` keeps the stored one). Proxies
    /// read it at each sign-in, so a change applies to the next one.
    pub async fn put_identity_provider(
        &self,
        spec: IdentityProviderSpec,
        secret: Option<String>,
        actor: Actor,
    ) -> ApiResult<IdentityProviderView> {
        spec.validate()?;
        let current = self.store.identity_provider(&spec.name).await?;
        // Sealing is randomised: the same secret again is "keep", so a config file applied
        // twice records no change.
        // The stored secret goes only where it went before: a new issuer or client id needs
        // the secret given again (or an administrator could send it to a server of theirs).
        if secret.is_none()
            && current
                .as_ref()
                .is_some_and(|c| c.spec.issuer != spec.issuer || c.spec.client_id != spec.client_id)
        {
            return Err(ApiError::field(
                "client_secret",
                "required again when the issuer or the client id changes",
            ));
        }
        let sealed = match (secret, &current) {
            (Some(s), Some(c))
                if self.master.open(&c.secret_sealed).ok().as_deref() == Some(&s) =>
            {
                None
            }
            (Some(s), _) => Some(self.master.seal(&s)),
            (None, Some(_)) => None,
            (None, None) => {
                return Err(ApiError::field(
                    "client_secret",
                    "required: the secret the provider gave the gateway",
                ));
            }
        };
        let row = self
            .store
            .put_identity_provider(spec, sealed, actor)
            .await?;
        if let Some(before) = current
            && (before.spec != row.spec || before.secret_sealed != row.secret_sealed)
        {
            self.end_sign_ins_through(&row.spec.name).await?;
        }
        Ok(row.into())
    }

    /// Ends the OAuth sign-ins of the proxies that sign in through provider `name` (it changed
    /// or went: who it vouched for before may not be whom it would vouch for now).
    pub(crate) async fn end_sign_ins_through(&self, name: &str) -> ApiResult<()> {
        for p in self.store.list_proxies().await? {
            if p.spec.oauth_provider.as_deref() == Some(name) {
                self.end_proxy_sign_ins(&p.spec.name).await?;
            }
        }
        Ok(())
    }

    /// Ends every OAuth sign-in for a proxy: refresh tokens, access tokens, codes, streams.
    pub(crate) async fn end_proxy_sign_ins(&self, proxy: &str) -> ApiResult<()> {
        self.store.revoke_proxy_refresh(proxy).await?;
        self.manager.shared().revoke_oauth_proxy(proxy);
        Ok(())
    }

    /// Refuses a proxy that names an identity provider the gateway does not have.
    pub(crate) async fn check_provider_of(
        &self,
        spec: &palisade_core::model::ProxySpec,
    ) -> ApiResult<()> {
        if let Some(p) = &spec.oauth_provider
            && self.store.identity_provider(p).await?.is_none()
        {
            return Err(ApiError::field(
                "oauth_provider",
                format!("there is no identity provider `{p}`; create it first"),
            ));
        }
        Ok(())
    }
}

/// The provider and its opened secret, for the authorization server.
pub(crate) async fn provider(
    state: &AppState,
    name: &str,
) -> Result<Option<(IdentityProviderSpec, String)>, String> {
    let row = state.store.identity_provider(name).await.map_err(|e| {
        tracing::warn!(error = %e, "OAuth: identity provider not readable");
        "the gateway cannot read its identity provider now; retry shortly".to_string()
    })?;
    let Some(row) = row else { return Ok(None) };
    let secret = state.master.open(&row.secret_sealed).map_err(|e| {
        tracing::error!(error = %e, provider = name, "OAuth: the provider's client secret does not open");
        "the identity provider's client secret cannot be read; ask an administrator".to_string()
    })?;
    Ok(Some((row.spec, secret)))
}

/// The user a provider vouched for ([`palisade_store::Store::provider_user`]): the account's
/// linked user, or the member its address names, or, when the provider creates users and the
/// proxy takes that address (`oauth_users`), a new member. Refusals are audited as failed
/// sign-ins. Returns the user's name and stamp.
pub(crate) async fn provider_sign_in(
    state: &AppState,
    p: &IdentityProviderSpec,
    who: &IdentityClaims,
    ip: IpAddr,
    proxy: &str,
    oauth_users: &[String],
) -> Result<(String, UserStamp), String> {
    let refused = |reason: String| async move {
        let detail = json!({"via": "oidc", "provider": p.name, "subject": who.subject,
            "proxy": proxy, "ip": ip.to_string(), "reason": reason});
        let actor = Actor {
            name: who.email.clone(),
            request_id: None,
        };
        if let Err(e) = state
            .store
            .record_event(actor, "auth.login_failed", "user", &who.email, Some(detail))
            .await
        {
            tracing::error!(error = %e, "OAuth: a refused sign-in could not be audited");
        }
        Err(reason)
    };
    if !p.admits_email(&who.email) {
        return refused(format!(
            "The address {} is not in a domain this gateway accepts from {}.",
            who.email, p.name
        ))
        .await;
    }
    let name_ok = crate::users::is_user_name(&who.email);
    let actor = Actor {
        name: format!("oidc:{}", p.name),
        request_id: None,
    };
    let account = ProviderAccount {
        provider: p.name.clone(),
        issuer: p.issuer.clone(),
        subject: who.subject.clone(),
        email: who.email.clone(),
        create: p.create_users && name_ok,
        allowed: oauth_users.to_vec(),
    };
    let found = state
        .store
        .provider_user(account, actor)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "OAuth: provider sign-in could not be checked");
            "The gateway cannot sign you in now; try again shortly.".to_string()
        })?;
    match found {
        ProviderUser::User(u) => Ok((
            u.username,
            UserStamp {
                id: u.id,
                updated_at: u.updated_at,
            },
        )),
        ProviderUser::Refused(why) if p.create_users && !name_ok => {
            refused(format!(
                "{why} (The address {} cannot be a user name here: at most 64 letters, digits, `.`, `_`, `-`, `@`.)",
                who.email
            ))
            .await
        }
        ProviderUser::Refused(why) => refused(why).await,
    }
}

/// List identity providers.
#[utoipa::path(get, path = "/api/v1/identity-providers", tag = "oauth", security(("bearer" = [])),
    responses((status = 200, body = [IdentityProviderView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    _v: Viewer,
) -> ApiResult<Json<Vec<IdentityProviderView>>> {
    let rows = s.store.list_identity_providers().await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// Create an identity provider (OpenID Connect) for the proxies' OAuth sign-in.
#[utoipa::path(post, path = "/api/v1/identity-providers", tag = "oauth", security(("bearer" = [])), request_body = IdentityProviderInput,
    responses((status = 201, body = IdentityProviderView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<(StatusCode, Json<IdentityProviderView>)> {
    let secret = secret_of(&mut body)?;
    let spec: IdentityProviderSpec = parse(body.to_string().as_bytes())?;
    if s.store.identity_provider(&spec.name).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "identity provider `{}` already exists",
            spec.name
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(s.put_identity_provider(spec, secret, u.actor()).await?),
    ))
}

/// Replace an identity provider's configuration (`client_secret` absent: the stored one stays).
#[utoipa::path(put, path = "/api/v1/identity-providers/{name}", tag = "oauth", security(("bearer" = [])), request_body = IdentityProviderInput,
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 200, body = IdentityProviderView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replace(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(mut body): ValidJson<Value>,
) -> ApiResult<Json<IdentityProviderView>> {
    let secret = secret_of(&mut body)?;
    let spec: IdentityProviderSpec = parse(body.to_string().as_bytes())?;
    if spec.name != name {
        return Err(ApiError::field("name", "must match the path"));
    }
    if s.store.identity_provider(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("identity provider `{name}`")));
    }
    Ok(Json(
        s.put_identity_provider(spec, secret, u.actor()).await?,
    ))
}

/// Delete an identity provider no proxy signs in through.
#[utoipa::path(delete, path = "/api/v1/identity-providers/{name}", tag = "oauth", security(("bearer" = [])),
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let users: Vec<String> = s
        .store
        .list_proxies()
        .await?
        .into_iter()
        .filter(|p| p.spec.oauth_provider.as_deref() == Some(name.as_str()))
        .map(|p| p.spec.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "proxies sign in through it: {}; change them first",
            users.join(", ")
        )));
    }
    // No proxy signs in through it (checked above, and a proxy cannot name a missing one), so
    // no sign-in was made through it to end.
    s.store.delete_identity_provider(&name, u.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
