//! Cache keys: a keyed BLAKE3 hash of the credential (kind, cookie name, value), so the raw
//! credential is never stored, and their hex form for the shared tier.

use crate::credentials::{Credential, CredentialKind};

/// A keyed hash of a credential.
pub type CacheKey = [u8; 32];

/// Hashes credentials with a secret key (`cache.key_secret`, or random per process).
#[derive(Clone)]
pub struct KeyHasher {
    secret: [u8; 32],
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

impl KeyHasher {
    /// From `cache.key_secret` (shared by replicas) or a random per-process secret.
    pub fn new(key_secret: Option<&str>) -> KeyHasher {
        KeyHasher {
            secret: match key_secret {
                Some(secret) => {
                    blake3::derive_key("sessiongate 2026 cache key v1", secret.as_bytes())
                }
                None => rand::random(),
            },
        }
    }

    /// The cache key of a credential: BLAKE3 keyed with the secret, over kind, cookie name and
    /// value.
    pub fn key_for(&self, credential: &Credential) -> CacheKey {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        h.update(&[match credential.kind {
            CredentialKind::Cookie => b'c',
            // Kratos treats a bearer session token exactly like X-Session-Token.
            CredentialKind::SessionToken | CredentialKind::Bearer => b't',
        }]);
        if let Some(name) = &credential.cookie_name {
            h.update(name.as_bytes());
        }
        h.update(&[0]);
        h.update(credential.expose().as_bytes());
        *h.finalize().as_bytes()
    }
}

/// Lower-case hex of a cache key (Redis key names, key invalidations).
pub fn hex(key: &CacheKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a hex cache key.
pub fn unhex(s: &str) -> Option<CacheKey> {
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}
