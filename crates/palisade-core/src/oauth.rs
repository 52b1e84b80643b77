//! OAuth 2.1 records the gateway keeps (registered clients, refresh-token grants), shared by the
//! store that persists them and the proxies that serve the protocol.

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClientRow {
    /// The id the gateway gave it.
    pub client_id: String,
    /// The name it registered with (shown on the sign-in page).
    pub name: String,
    /// Its redirect URIs, exactly as registered.
    pub redirect_uris: Vec<String>,
    /// SHA-256 of its secret, for a confidential client.
    pub secret_hash: Option<[u8; 32]>,
    /// Registration time, Unix ms.
    pub created_at: i64,
}

/// A refresh token's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshGrant {
    /// The sign-in it descends from.
    pub family: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user who signed in.
    pub username: String,
    /// The user's id and the time of their last change (password, role) when they signed in:
    /// a grant of a user since deleted, recreated or changed is void.
    pub user: UserStamp,
    /// The proxy (resource) it is for.
    pub proxy: String,
    /// The resource identifier (RFC 8707) it is bound to.
    pub resource: String,
    /// Granted scope.
    pub scope: String,
    /// Expiry, Unix ms.
    pub expires_at: i64,
}

/// A user as they were at sign-in: their row's id and last change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserStamp {
    /// The user row's id (a user recreated under the same name has another).
    pub id: String,
    /// The row's `updated_at` (a password or role change moves it).
    pub updated_at: i64,
}

/// What rotating a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// It was valid: it is now used, and its successor stored.
    Valid(RefreshGrant),
    /// Unknown, expired, or its user changed since the sign-in.
    Invalid,
    /// Already used: its whole sign-in (this family) is revoked.
    Replayed(String),
}
