//! Gateway API key identities, as an immutable index the data plane consults per request.

use std::collections::HashMap;
use std::sync::Arc;

use crate::crypto::hash_api_key;

/// Who a presented API key belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInfo {
    /// Stable key id.
    pub id: String,
    /// Human name of the key.
    pub name: String,
    /// Group (team) the key belongs to, if any.
    pub group: Option<String>,
    /// Expiry in Unix milliseconds; `None` never expires.
    pub expires_at_ms: Option<i64>,
    /// Proxies the key may use (empty: all).
    pub allowed_proxies: Vec<String>,
    /// Models the key may ask for (empty: all).
    pub allowed_models: Vec<String>,
    /// Effective requests per minute for this key (its own, else its group's).
    pub rpm: Option<u32>,
    /// Effective tokens per minute for this key (its own, else its group's).
    pub tpm: Option<u32>,
}

/// Immutable index of active keys by SHA-256 digest. Rebuilt and swapped on every key change,
/// so a revocation takes effect for the very next request.
#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<[u8; 32], Arc<KeyInfo>>,
    /// Key id → expiry, for what a key opened to check it is still active.
    by_id: HashMap<String, Option<i64>>,
}

impl KeyIndex {
    /// Builds an index from `(digest, info)` pairs.
    pub fn new(entries: impl IntoIterator<Item = ([u8; 32], KeyInfo)>) -> Self {
        Self::of(entries.into_iter().map(|(h, k)| (h, Arc::new(k))).collect())
    }

    /// An index of shared entries. Entries may share an id (an OAuth grant's successive access
    /// tokens): the id is active while any of them is.
    pub fn of(by_hash: HashMap<[u8; 32], Arc<KeyInfo>>) -> Self {
        let mut by_id: HashMap<String, Option<i64>> = HashMap::with_capacity(by_hash.len());
        for k in by_hash.values() {
            by_id
                .entry(k.id.clone())
                .and_modify(|e| {
                    *e = match (*e, k.expires_at_ms) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    }
                })
                .or_insert(k.expires_at_ms);
        }
        Self { by_hash, by_id }
    }

    /// Whether the key with id `id` is active at `now_ms` (present and not expired).
    pub fn holds(&self, id: &str, now_ms: i64) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|exp| exp.is_none_or(|e| e > now_ms))
    }

    /// Resolves a presented key. The lookup is by digest: timing reveals nothing about stored
    /// keys because the attacker controls only the pre-image of what is compared.
    pub fn lookup(&self, presented: &str, now_ms: i64) -> Option<Arc<KeyInfo>> {
        let info = self.by_hash.get(&hash_api_key(presented))?;
        match info.expires_at_ms {
            Some(exp) if exp <= now_ms => None,
            _ => Some(info.clone()),
        }
    }

    /// This index without the key named `name` (a revocation takes effect at once, before the
    /// index is read again from the store).
    pub fn without(&self, name: &str) -> Self {
        Self::of(
            self.by_hash
                .iter()
                .filter(|(_, k)| k.name != name)
                .map(|(h, k)| (*h, k.clone()))
                .collect(),
        )
    }

    /// Number of active keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when no key is active.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_honours_expiry() {
        let idx = KeyIndex::new([
            (
                hash_api_key("pal_a"),
                KeyInfo {
                    id: "1".into(),
                    name: "a".into(),
                    group: None,
                    expires_at_ms: None,
                    ..Default::default()
                },
            ),
            (
                hash_api_key("pal_b"),
                KeyInfo {
                    id: "2".into(),
                    name: "b".into(),
                    group: None,
                    expires_at_ms: Some(100),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(idx.lookup("pal_a", 1000).unwrap().name, "a");
        assert!(idx.lookup("pal_b", 50).is_some());
        assert!(idx.lookup("pal_b", 100).is_none());
        assert!(idx.lookup("pal_c", 0).is_none());
        let rest = idx.without("a");
        assert!(rest.lookup("pal_a", 1000).is_none());
        assert!(rest.lookup("pal_b", 50).is_some());
        assert_eq!((idx.len(), rest.len()), (2, 1));
        assert!(idx.holds("1", 1000) && !rest.holds("1", 1000));
        assert!(idx.holds("2", 50) && !idx.holds("2", 100));
    }
}
