//! The shared tier between replicas, behind one small trait: `get` / `put` an entry, `broadcast`
//! an invalidation, `healthy` while invalidations are being received. Redis implements it
//! ([`super::redis::RedisTier`]); the session cache only knows this trait. Also the wire formats
//! that cross it: [`Stored`] entries and [`Invalidation`] messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cache::key::CacheKey;
use super::{Aal, Outcome, Session};

/// Boxed future returned by [`SharedTier`] calls.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store and broadcast shared by every replica. Every call is bounded in time by the
/// implementation and never fails a check: a miss, an error and a timeout look alike.
pub trait SharedTier: Send + Sync + std::fmt::Debug + 'static {
    /// The entry stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Stored>>;
    /// Stores an entry for `ttl`, in the background.
    fn put(self: Arc<Self>, key: CacheKey, stored: Stored, ttl: Duration);
    /// Deletes what the invalidation covers and tells every replica.
    fn broadcast<'a>(&'a self, inv: &'a Invalidation) -> TierFuture<'a, ()>;
    /// Are invalidations from other replicas being received?
    fn healthy(&self) -> bool;
}

/// An invalidation, as broadcast between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Invalidation {
    /// One credential (its cache key, hex).
    Key(String),
    /// One Kratos session.
    Session(String),
    /// One Kratos identity.
    Identity(String),
    /// Everything.
    All,
}

/// What is stored in Redis for one credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// `a` active session, `n` no session.
    o: char,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    iid: String,
    #[serde(default)]
    aal: u8,
    /// Session `expires_at`, unix ms.
    #[serde(default)]
    exp: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    claims: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hdrs: Vec<(String, String)>,
    /// Usable until, unix ms.
    until: u64,
    /// Fresh until, unix ms.
    fresh: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Stored {
    /// Session and identity id of an active entry.
    pub fn ids(&self) -> Option<(&str, &str)> {
        (self.o == 'a').then_some((self.sid.as_str(), self.iid.as_str()))
    }

    /// Encodes an outcome with its wall-clock freshness bounds.
    pub fn new(outcome: &Outcome, fresh_for: Duration, usable_for: Duration) -> Option<Stored> {
        let now = SystemTime::now();
        let (fresh, until) = (unix_ms(now + fresh_for), unix_ms(now + usable_for));
        match outcome {
            Outcome::Active(s) => Some(Stored {
                o: 'a',
                sid: s.id.clone(),
                iid: s.identity_id.clone(),
                aal: s.aal as u8,
                exp: unix_ms(s.expires_at),
                claims: s.extra_claims.to_string(),
                hdrs: s
                    .identity_headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                until,
                fresh,
            }),
            Outcome::Unauthenticated => Some(Stored {
                o: 'n',
                sid: String::new(),
                iid: String::new(),
                aal: 0,
                exp: 0,
                claims: String::new(),
                hdrs: vec![],
                until,
                fresh,
            }),
            Outcome::StepUpRequired { .. } => None,
        }
    }

    /// Rebuilds the outcome and its remaining (fresh, usable) durations; `None` when expired or
    /// malformed.
    pub fn decode(&self) -> Option<(Outcome, Duration, Duration)> {
        let now = unix_ms(SystemTime::now());
        if self.until <= now {
            return None;
        }
        let usable = Duration::from_millis(self.until - now);
        let fresh = Duration::from_millis(self.fresh.saturating_sub(now)).min(usable);
        let outcome = match self.o {
            'n' => Outcome::Unauthenticated,
            'a' => {
                if self.sid.is_empty() || self.iid.is_empty() || self.exp <= now {
                    return None;
                }
                let aal = match self.aal {
                    1 => Aal::Aal1,
                    2 => Aal::Aal2,
                    3 => Aal::Aal3,
                    _ => Aal::Aal0,
                };
                // Claims must be a JSON object body; reject anything else rather than mint it.
                if !self.claims.is_empty()
                    && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&format!(
                        "{{{}}}",
                        self.claims
                    ))
                    .is_err()
                {
                    return None;
                }
                Outcome::Active(Arc::new(Session {
                    id: self.sid.clone(),
                    identity_id: self.iid.clone(),
                    aal,
                    expires_at: UNIX_EPOCH + Duration::from_millis(self.exp),
                    extra_claims: self.claims.clone().into_boxed_str(),
                    identity_headers: self
                        .hdrs
                        .iter()
                        .filter(|(_, v)| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
                        .map(|(k, v)| (Arc::from(k.as_str()), v.clone().into_boxed_str()))
                        .collect(),
                    generation: crate::session::next_generation(),
                }))
            }
            _ => return None,
        };
        Some((outcome, fresh, usable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::cache::key::{hex, unhex};

    #[test]
    fn stored_round_trip_and_rejects_garbage() {
        let s = Session {
            id: "s".into(),
            identity_id: "i".into(),
            aal: Aal::Aal2,
            expires_at: SystemTime::now() + Duration::from_secs(600),
            extra_claims: r#""email":"a@b""#.into(),
            identity_headers: vec![("x-user-id".into(), "i".into())],
            generation: crate::session::next_generation(),
        };
        let st = Stored::new(
            &Outcome::Active(Arc::new(s)),
            Duration::from_secs(45),
            Duration::from_secs(60),
        )
        .unwrap();
        let json = serde_json::to_string(&st).unwrap();
        let back: Stored = serde_json::from_str(&json).unwrap();
        let (o, fresh, usable) = back.decode().unwrap();
        let Outcome::Active(s) = o else { panic!() };
        assert_eq!(
            (s.id.as_str(), s.identity_id.as_str(), s.aal),
            ("s", "i", Aal::Aal2)
        );
        assert_eq!(&*s.extra_claims, r#""email":"a@b""#);
        assert!(fresh <= usable && usable <= Duration::from_secs(60));
        let mut bad = back.clone();
        bad.claims = "\"a\":1}, {\"x\"".into();
        assert!(bad.decode().is_none());
        let mut expired = back.clone();
        expired.until = 1;
        assert!(expired.decode().is_none());
        assert!(
            Stored::new(
                &Outcome::StepUpRequired {
                    redirect_browser_to: None
                },
                Duration::ZERO,
                Duration::ZERO
            )
            .is_none()
        );
    }

    #[test]
    fn invalidation_wire_format() {
        assert_eq!(
            serde_json::to_string(&Invalidation::Session("x".into())).unwrap(),
            r#"{"kind":"session","id":"x"}"#
        );
        assert_eq!(
            serde_json::to_string(&Invalidation::All).unwrap(),
            r#"{"kind":"all"}"#
        );
        let k = [7u8; 32];
        assert_eq!(unhex(&hex(&k)), Some(k));
        assert_eq!(unhex("zz"), None);
    }
}
