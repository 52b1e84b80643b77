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
    /// The proxy (resource) it is for.
    pub proxy: String,
    /// The resource identifier (RFC 8707) it is bound to.
    pub resource: String,
    /// Granted scope.
    pub scope: String,
    /// Expiry, Unix ms.
    pub expires_at: i64,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Valid and now used: issue its successor.
    Valid(RefreshGrant),
    /// Unknown or expired.
    Invalid,
    /// Already used: its family is revoked.
    Replayed,
}
