//! Console users: list, create, change role or password, delete. Admins only for changes; at
//! least one admin always remains.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::crypto::hash_password;
use palisade_store::UserInfo;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ValidJson;

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name (letters, digits, `.`, `_`, `-`, `@`; 1–64 characters).
    pub username: String,
    /// Initial password (at least 12 characters).
    pub password: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// Ask for a new password at first login (default true).
    #[serde(default = "yes")]
    pub must_change_password: bool,
}

fn yes() -> bool {
    true
}

/// A change to a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// New role.
    pub role: Option<String>,
    /// New password (at least 12 characters); the user must change it at next login.
    pub password: Option<String>,
}

/// Whether `name` may be a user name: 1–64 letters, digits, `.`, `_`, `-` or `@`.
pub(crate) fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn check_name(name: &str) -> ApiResult<()> {
    if is_user_name(name) {
        Ok(())
    } else {
        Err(ApiError::field(
            "username",
            "use 1–64 letters, digits, `.`, `_`, `-` or `@`",
        ))
    }
}

fn check_role(role: &str) -> ApiResult<()> {
    if matches!(role, "admin" | "viewer" | "member") {
        Ok(())
    } else {
        Err(ApiError::field(
            "role",
            "must be `admin`, `viewer` or `member` (a member signs in only to authorize OAuth clients of the proxies)",
        ))
    }
}

fn check_password(p: &str) -> ApiResult<()> {
    password_problem(p).map_or(Ok(()), |why| Err(ApiError::field("password", why)))
}

/// Fewest different characters a password must hold.
const MIN_DISTINCT: usize = 5;

/// What is wrong with a new password, if anything: 12 to 1024 characters, no control
/// characters, not only spaces, and at least five different characters (`aaaaaaaaaaaa` and
/// `121212121212` are refused).
pub fn password_problem(p: &str) -> Option<&'static str> {
    let n = p.chars().count();
    if n < 12 {
        return Some("must be at least 12 characters");
    }
    if n > 1024 {
        return Some("must be at most 1024 characters");
    }
    if p.chars().any(char::is_control) {
        return Some("must not contain control characters");
    }
    if p.trim().is_empty() {
        return Some("must not be only spaces");
    }
    let mut seen: Vec<char> = Vec::with_capacity(MIN_DISTINCT);
    for c in p.chars() {
        if !seen.contains(&c) {
            seen.push(c);
            if seen.len() >= MIN_DISTINCT {
                return None;
            }
        }
    }
    Some("must contain at least 5 different characters")
}

async fn hash(p: String) -> ApiResult<String> {
    crate::auth::hashing(move || hash_password(&p))
        .await?
        .map_err(ApiError::internal)
}

/// List users (never their password hashes).
#[utoipa::path(get, path = "/api/v1/users", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = [UserInfo]), (status = 401, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<UserInfo>>> {
    Ok(Json(s.store.list_users().await?))
}

/// Create a user (Argon2id-hashed password).
#[utoipa::path(post, path = "/api/v1/users", tag = "auth", security(("bearer" = [])), request_body = NewUser,
    responses((status = 201, body = UserInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    ValidJson(req): ValidJson<NewUser>,
) -> ApiResult<(StatusCode, Json<UserInfo>)> {
    check_name(&req.username)?;
    check_role(&req.role)?;
    check_password(&req.password)?;
    // Names that differ only in case would read as one person in the audit log.
    if let Some(other) = s
        .store
        .list_users()
        .await?
        .into_iter()
        .find(|x| x.username.eq_ignore_ascii_case(&req.username))
    {
        return Err(ApiError::conflict(format!(
            "user `{}` already exists (user names are compared without case)",
            other.username
        )));
    }
    let h = hash(req.password).await?;
    s.store
        .create_user(
            &req.username,
            h,
            &req.role,
            req.must_change_password,
            u.actor(),
        )
        .await?;
    let info = s
        .store
        .list_users()
        .await?
        .into_iter()
        .find(|x| x.username == req.username)
        .ok_or_else(|| ApiError::not_found(format!("user `{}`", req.username)))?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Change a user's role and/or set a new password (revokes the user's tokens).
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "auth", security(("bearer" = [])), request_body = UserChange,
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = UserInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
    ValidJson(req): ValidJson<UserChange>,
) -> ApiResult<Json<UserInfo>> {
    if let Some(r) = &req.role {
        check_role(r)?;
    }
    if let Some(p) = &req.password {
        if name == u.name {
            return Err(ApiError::field(
                "password",
                "your own password is changed with POST /api/v1/auth/password, which asks for the current one",
            ));
        }
        check_password(p)?;
    }
    if s.store.user_by_name(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("user `{name}`")));
    }
    // The password is hashed before anything is written: hashing can be refused (busy), and
    // a role changed without the password asked for with it would be half the request.
    let hashed = match req.password {
        Some(p) => Some(hash(p).await?),
        None => None,
    };
    if let Some(r) = &req.role {
        s.store.set_user_role(&name, r, u.actor()).await?;
    }
    let hashed_any = hashed.is_some();
    if let Some(h) = hashed {
        s.store
            .reset_password(&name, h, name != u.name, u.actor())
            .await?;
    }
    // A new role or password ends what the user authorized (the store took the refresh
    // tokens in the same change).
    if req.role.is_some() || hashed_any {
        s.manager.shared().revoke_oauth_user(&name);
    }
    s.store
        .list_users()
        .await?
        .into_iter()
        .find(|x| x.username == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("user `{name}`")))
}

/// Delete a user (the last admin cannot be deleted).
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "auth", security(("bearer" = [])),
    params(("name" = String, Path, description = "User name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.store.delete_user(&name, u.actor()).await?;
    s.manager.shared().revoke_oauth_user(&name);
    Ok(StatusCode::NO_CONTENT)
}
