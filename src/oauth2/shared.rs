//! The seam between the introspection cache and a tier shared by every replica (Redis, adapted
//! by `app`): `get` / `put` an answer, `broadcast` an invalidation, `healthy` while
//! invalidations from other replicas are being received. This module knows neither Redis nor
//! the session cache; the implementation seals what it stores (keyed MAC over key, generation
//! and value) and authenticates the messages it delivers.
//!
//! What crosses it is [`StoredAnswer`]: the introspection answer's claims (never the token;
//! entries are keyed by the keyed hash of the token) and wall-clock bounds. Whatever comes
//! back is treated as hostile: [`StoredAnswer::decode`] rebuilds a principal only from a JSON
//! object that names an access token, with an `exp` still ahead, and the cache re-caps every
//! lifetime by its own `ttl`, `negative_ttl` and `exp`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::TokenPrincipal;

/// Boxed future returned by [`IntrospectionTier`] calls.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An invalidation of introspection answers, as told to the other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerInvalidation {
    /// One token (its keyed hash).
    Token([u8; 32]),
    /// Every token whose `sub` is this.
    Subject(String),
    /// Every token issued to this `client_id`.
    Client(String),
    /// Everything.
    All,
}

/// What a read of the shared tier found.
#[derive(Debug)]
pub enum SharedRead {
    /// Nothing (or the tier failed or timed out: a miss too).
    Miss,
    /// An authenticated answer, still to be decoded and re-capped.
    Found(StoredAnswer),
    /// Something we will not use, and why (a metric label: `forged`, `malformed`, `oversized`,
    /// `old_generation`).
    Rejected(&'static str),
}

/// A store and broadcast of introspection answers shared by every replica. Every call is
/// bounded in time by the implementation and never fails a check.
pub trait IntrospectionTier: Send + Sync + std::fmt::Debug + 'static {
    /// The answer stored under `key` (the keyed hash of the token), if any.
    fn get<'a>(&'a self, key: &'a [u8; 32]) -> TierFuture<'a, SharedRead>;
    /// Stores an answer for `ttl`, in the background, indexed by its subject and client id.
    fn put(self: Arc<Self>, key: [u8; 32], answer: StoredAnswer, ttl: Duration);
    /// Deletes what the invalidation covers and tells every replica; false when it could not.
    fn broadcast<'a>(&'a self, inv: &'a AnswerInvalidation) -> TierFuture<'a, bool>;
    /// Are invalidations from other replicas being received?
    fn healthy(&self) -> bool;
}

/// An invalidation applied on this replica whose broadcast to the others failed: they keep
/// their answers until their TTL (or `redis.degraded_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalidated {local} answers on this replica, but the broadcast to the other replicas failed"
)]
pub struct NotBroadcast {
    /// Answers dropped on this replica.
    pub local: u64,
}

/// One introspection answer as stored in the shared tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAnswer {
    /// The endpoint's answer for an active token; absent for an inactive one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<Map<String, Value>>,
    /// `exp` of an active token (as we understood it), unix ms.
    #[serde(default)]
    exp: u64,
    /// Usable until, unix ms.
    until: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl StoredAnswer {
    /// An answer usable for `usable`: `principal` for an active token, `None` for an inactive
    /// one.
    pub fn new(principal: Option<&TokenPrincipal>, usable: Duration) -> StoredAnswer {
        let now = SystemTime::now();
        StoredAnswer {
            claims: principal.and_then(|p| p.claims.as_object().cloned()),
            exp: principal.map_or(0, |p| unix_ms(p.expires_at)),
            until: unix_ms(now + usable),
        }
    }

    /// The JSON form.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From the JSON form; `None` when it is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<StoredAnswer> {
        serde_json::from_slice(bytes).ok()
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.claims
            .as_ref()?
            .get(name)?
            .as_str()
            .filter(|s| !s.is_empty())
    }

    /// `sub` of an active answer (as [`TokenPrincipal::subject`] reads it).
    pub fn subject(&self) -> Option<&str> {
        self.text("sub")
    }

    /// `client_id` of an active answer (as [`TokenPrincipal::client_id`] reads it).
    pub fn client_id(&self) -> Option<&str> {
        self.text("client_id")
    }

    /// The principal (`None`: inactive) and how long the answer may still be used, as stored;
    /// `None` when it is over or not a usable answer (an active answer must be an access token
    /// whose `exp` is still ahead). The caller re-caps the lifetime by its own TTLs.
    pub fn decode(&self, now: SystemTime) -> Option<(Option<TokenPrincipal>, Duration)> {
        let now_ms = unix_ms(now);
        if self.until <= now_ms {
            return None;
        }
        let usable = Duration::from_millis(self.until - now_ms);
        let Some(claims) = &self.claims else {
            return Some((None, usable));
        };
        let claims = Value::Object(claims.clone());
        if self.exp <= now_ms || !super::introspection::is_access_token(&claims) {
            return None;
        }
        let expires_at = UNIX_EPOCH + Duration::from_millis(self.exp);
        let principal = TokenPrincipal::from_claims(claims, expires_at);
        let usable = usable.min(principal.remaining(now));
        Some((Some(principal), usable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_answers_round_trip_and_garbage_is_refused() {
        let exp = SystemTime::now() + Duration::from_secs(600);
        let p = TokenPrincipal::from_claims(
            json!({"active": true, "sub": "alice", "client_id": "app", "scope": "read"}),
            exp,
        );
        let a = StoredAnswer::new(Some(&p), Duration::from_secs(60));
        let back = StoredAnswer::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(
            (back.subject(), back.client_id()),
            (Some("alice"), Some("app"))
        );
        let (principal, usable) = back.decode(SystemTime::now()).unwrap();
        let principal = principal.unwrap();
        assert_eq!(principal.subject.as_deref(), Some("alice"));
        assert_eq!(principal.scopes, ["read"]);
        assert!(usable <= Duration::from_secs(60));

        let inactive = StoredAnswer::new(None, Duration::from_secs(5));
        let (p, _) = inactive.decode(SystemTime::now()).unwrap();
        assert!(p.is_none());
        assert_eq!(inactive.subject(), None);

        // Over, past `exp`, a refresh token, not JSON, not an object: refused.
        let mut over = a.clone();
        over.until = 1;
        assert!(over.decode(SystemTime::now()).is_none());
        let mut expired = a.clone();
        expired.exp = 1;
        assert!(expired.decode(SystemTime::now()).is_none());
        let mut refresh = a.clone();
        refresh
            .claims
            .as_mut()
            .unwrap()
            .insert("token_use".into(), "refresh_token".into());
        assert!(refresh.decode(SystemTime::now()).is_none());
        assert!(StoredAnswer::from_bytes(b"not json").is_none());
        assert!(StoredAnswer::from_bytes(br#"{"claims":[1],"until":1}"#).is_none());
        // A stored lifetime beyond `exp` is cut at `exp`.
        let far = StoredAnswer {
            until: unix_ms(SystemTime::now() + Duration::from_secs(86_400)),
            ..a
        };
        let (_, usable) = far.decode(SystemTime::now()).unwrap();
        assert!(usable <= Duration::from_secs(600));
    }
}
