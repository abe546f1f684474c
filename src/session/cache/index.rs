//! The invalidation index: which cache keys belong to a session or an identity, so that an
//! invalidation by id drops every credential's entry for it.

use std::collections::HashMap;

use super::key::CacheKey;

/// A 64-bit hash of a session or identity id: the index keys, inline (no allocation per entry;
/// 8 bytes, not 16, keeps a map slot at 48 bytes). A collision would only make an invalidation
/// drop one more entry (one extra whoami call), never keep one.
type IdHash = u64;

fn id_hash(id: &str) -> IdHash {
    let h = blake3::hash(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The cache keys of one session or identity: almost always one, kept inline.
#[derive(Debug, Clone)]
enum Keys {
    One(CacheKey),
    Many(Vec<CacheKey>),
}

impl Keys {
    fn add(&mut self, key: CacheKey) {
        match self {
            Keys::One(k) if *k == key => {}
            Keys::One(k) => *self = Keys::Many(vec![*k, key]),
            Keys::Many(v) if !v.contains(&key) => v.push(key),
            Keys::Many(_) => {}
        }
    }

    /// Removes `key`; true when no key is left.
    fn remove(&mut self, key: &CacheKey) -> bool {
        match self {
            Keys::One(k) => k == key,
            Keys::Many(v) => {
                v.retain(|k| k != key);
                if let [only] = v.as_slice() {
                    *self = Keys::One(*only);
                    return false;
                }
                v.is_empty()
            }
        }
    }

    fn to_vec(&self) -> Vec<CacheKey> {
        match self {
            Keys::One(k) => vec![*k],
            Keys::Many(v) => v.clone(),
        }
    }
}

/// Which cache keys belong to each session and identity.
#[derive(Default)]
pub(super) struct Index {
    by_session: HashMap<IdHash, Keys>,
    by_identity: HashMap<IdHash, Keys>,
}

impl Index {
    pub(super) fn add(&mut self, key: CacheKey, sid: &str, iid: &str) {
        for (map, id) in [(&mut self.by_session, sid), (&mut self.by_identity, iid)] {
            map.entry(id_hash(id))
                .and_modify(|keys| keys.add(key))
                .or_insert(Keys::One(key));
        }
    }

    pub(super) fn remove(&mut self, key: &CacheKey, sid: &str, iid: &str) {
        for (map, id) in [(&mut self.by_session, sid), (&mut self.by_identity, iid)] {
            let h = id_hash(id);
            if map.get_mut(&h).is_some_and(|keys| keys.remove(key)) {
                map.remove(&h);
            }
        }
    }

    pub(super) fn session(&self, id: &str) -> Vec<CacheKey> {
        self.by_session
            .get(&id_hash(id))
            .map(Keys::to_vec)
            .unwrap_or_default()
    }

    pub(super) fn identity(&self, id: &str) -> Vec<CacheKey> {
        self.by_identity
            .get(&id_hash(id))
            .map(Keys::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_every_key_of_a_session_and_forgets_removed_ones() {
        let mut ix = Index::default();
        let (k1, k2, k3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        ix.add(k1, "s1", "i1");
        ix.add(k1, "s1", "i1");
        assert_eq!(ix.session("s1"), vec![k1], "adding twice keeps one");
        ix.add(k2, "s1", "i1");
        ix.add(k3, "s3", "i1");
        assert_eq!(ix.session("s1"), vec![k1, k2]);
        assert_eq!(ix.identity("i1"), vec![k1, k2, k3]);
        assert!(ix.session("s2").is_empty());
        ix.remove(&k1, "s1", "i1");
        assert_eq!(ix.session("s1"), vec![k2]);
        assert_eq!(ix.identity("i1"), vec![k2, k3]);
        ix.remove(&k2, "s1", "i1");
        ix.remove(&k3, "s3", "i1");
        assert!(ix.by_session.is_empty() && ix.by_identity.is_empty());
    }
}
