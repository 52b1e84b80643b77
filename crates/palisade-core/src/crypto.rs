//! Secrets handling: API key hashing, password hashing, encrypted storage and signed tokens.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Errors of the crypto helpers.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key has the wrong length or encoding.
    #[error("master key must be 32 bytes (64 hex characters or 43 base64url characters)")]
    BadMasterKey,
    /// A stored ciphertext could not be decrypted (wrong key or tampered data).
    #[error("stored secret could not be decrypted: wrong master key or corrupted data")]
    Decrypt,
    /// Password hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Fills a fresh array with operating-system randomness.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A random token of `n` bytes encoded as URL-safe base64 (no padding).
pub fn random_token(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A 16-hex-digit random identifier (object ids; logged records use [`record_id`]).
///
/// From the thread-local CSPRNG (ChaCha, seeded and periodically reseeded from the OS): one
/// is drawn for every proxied request, and a system call per request showed in profiles.
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    hex(&b)
}

/// A 28-hex-digit identifier for a logged record (request, alert): the creation time in
/// milliseconds since the Unix epoch (12 hex digits), then 64 random bits.
///
/// Why not [`random_id`]: the request log and the alert list are keyed by these ids, and a
/// 64-bit random id collides about once among five billion (a month at 2 000 requests/s), which
/// would overwrite a logged request or drop an alert. Here two records collide only if they
/// are created in the same millisecond *and* draw the same 64 bits. The time prefix also makes
/// the ids of a busy gateway arrive in order, so the tables' primary-key indexes grow at their
/// end instead of taking every insert at a random page.
pub fn record_id() -> String {
    record_id_at(crate::now_ms())
}

fn record_id_at(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0) & ((1 << 48) - 1);
    let mut b = [0u8; 14];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    rand::thread_rng().fill_bytes(&mut b[6..]);
    hex(&b)
}

/// Lower-case hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Prefix of every gateway-issued API key, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "pal_";

/// Issues a new random gateway API key (shown to its owner once, stored only as a hash).
pub fn generate_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_token(32))
}

/// SHA-256 digest of an API key. Keys are 256-bit random values, so a fast hash is sufficient
/// (a slow password hash would only add latency to every proxied request).
pub fn hash_api_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The short visible part of a key kept for recognition in lists (e.g. `pal_AbC1…`): after
/// the `pal_` marker, six characters, and never more than a quarter of the rest (a key chosen
/// in a config file may be short).
pub fn key_display_prefix(key: &str) -> String {
    let marker = if key.starts_with(API_KEY_PREFIX) {
        API_KEY_PREFIX.len()
    } else {
        0
    };
    let rest = key.chars().count() - marker;
    key.chars().take(marker + (rest / 4).min(6)).collect()
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Argon2id with OWASP's 7 MiB / 5 passes / 1 lane setting, one of its equivalent minimums
/// (the crate's default, 19 MiB / 2 passes, costs the same time but leaves 19 MiB resident in
/// a gateway that otherwise idles at a few tens of MiB). Verification reads the parameters
/// from each stored hash, so hashes made with other settings keep verifying.
fn argon2() -> Argon2<'static> {
    match argon2::Params::new(7 * 1024, 5, 1, None) {
        Ok(params) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params),
        Err(_) => Argon2::default(),
    }
}

/// Hashes a password with Argon2id and a random salt, in PHC string format.
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::Hash(e.to_string()))
}

/// Verifies a password against a PHC hash; any malformed hash verifies as false.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The installation's 256-bit master key: encrypts stored secrets and derives signing keys.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Generates a new random master key.
    pub fn generate() -> Self {
        Self(random_bytes())
    }

    /// Parses a key given as 64 hex characters or 43 base64url characters.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let t = text.trim();
        let bytes = if t.len() == 64 {
            unhex(t)
        } else {
            URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).ok()
        }
        .ok_or(CryptoError::BadMasterKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Self(arr))
    }

    /// Hex encoding of the key, for writing the key file.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Derives a purpose-bound sub-key so one secret never serves two uses.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        hmac_sha256(&self.0, purpose.as_bytes())
    }

    /// Encrypts a secret with AES-256-GCM; output is `v1:` + base64url(nonce ‖ ciphertext).
    pub fn seal(&self, plaintext: &str) -> String {
        let cipher = Aes256Gcm::new((&self.derive("secret-box")).into());
        let nonce: [u8; 12] = random_bytes();
        // Encryption with a valid key and nonce only fails for absurd lengths (> 64 GiB).
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("v1:{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts a value produced by [`MasterKey::seal`].
    pub fn open(&self, sealed: &str) -> Result<String, CryptoError> {
        let body = sealed.strip_prefix("v1:").ok_or(CryptoError::Decrypt)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Decrypt)?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(12);
        let cipher = Aes256Gcm::new((&self.derive("secret-box")).into());
        let pt = cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Decrypt)
    }
}

/// Signs and verifies compact tokens: `base64url(payload).base64url(HMAC-SHA256(payload))`.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl TokenSigner {
    /// A signer keyed from the master key for the given purpose.
    pub fn new(master: &MasterKey, purpose: &str) -> Self {
        Self {
            key: master.derive(purpose),
        }
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.key, data)
    }

    /// Produces a token carrying `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let body = URL_SAFE_NO_PAD.encode(payload);
        let sig = URL_SAFE_NO_PAD.encode(self.mac(body.as_bytes()));
        format!("{body}.{sig}")
    }

    /// Returns the payload of a token whose signature checks out (constant-time comparison).
    pub fn verify(&self, token: &str) -> Option<Vec<u8>> {
        let (body, sig) = token.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if !ct_eq(&sig, &self.mac(body.as_bytes())) {
            return None;
        }
        URL_SAFE_NO_PAD.decode(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_sort_by_time_and_differ() {
        let a = record_id_at(1_764_000_000_000);
        let b = record_id_at(1_764_000_000_001);
        let c = record_id_at(1_764_000_000_001);
        for id in [&a, &b, &c] {
            assert_eq!(id.len(), 28);
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert!(a < b && a < c, "{a} {b} {c}");
        assert_eq!(&a[..12], "019ab697e800");
        assert_eq!(b[..12], c[..12]);
        assert_ne!(b, c, "same millisecond, different random part");
        let now = record_id();
        assert!(now.as_str() > a.as_str());
    }

    #[test]
    fn seal_round_trip_and_tamper_detection() {
        let k = MasterKey::generate();
        let sealed = k.seal("sk-upstream-secret");
        assert!(!sealed.contains("sk-upstream"));
        assert_eq!(k.open(&sealed).unwrap(), "sk-upstream-secret");
        let other = MasterKey::generate();
        assert!(other.open(&sealed).is_err());
        let mut bad = sealed.clone();
        bad.pop();
        bad.push('A');
        assert!(k.open(&bad).is_err() || bad == sealed);
    }

    #[test]
    fn master_key_parses_hex_and_rejects_short() {
        let k = MasterKey::generate();
        let parsed = MasterKey::parse(&k.to_hex()).unwrap();
        assert_eq!(parsed.to_hex(), k.to_hex());
        assert!(MasterKey::parse("abcd").is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
        // A hash made with other parameters (the library default) still verifies.
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let old = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(old.contains("m=19456"));
        assert!(verify_password("correct horse", &old));
        assert!(!verify_password("wrong", &old));
    }

    #[test]
    fn tokens_verify_only_unmodified() {
        let s = TokenSigner::new(&MasterKey::generate(), "session");
        let t = s.sign(b"{\"sub\":\"admin\"}");
        assert_eq!(s.verify(&t).unwrap(), b"{\"sub\":\"admin\"}");
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(b"{\"sub\":\"root\"}"),
            t.split_once('.').unwrap().1
        );
        assert!(s.verify(&forged).is_none());
        assert!(s.verify("garbage").is_none());
    }

    #[test]
    fn api_keys_are_prefixed_and_hash_stably() {
        let k = generate_api_key();
        assert!(k.starts_with(API_KEY_PREFIX) && k.len() > 40);
        assert_eq!(hash_api_key(&k), hash_api_key(&k));
        assert_ne!(hash_api_key(&k), hash_api_key("pal_other"));
        assert_eq!(key_display_prefix(&k).len(), 10);
        assert_eq!(key_display_prefix("pal_0123456789abcdef"), "pal_0123");
        assert_eq!(key_display_prefix("0123456789abcdefghij"), "01234");
    }
}
