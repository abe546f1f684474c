//! The shared tier between replicas, behind one small trait: `get` / `put` an entry, `broadcast`
//! an invalidation, `healthy` while invalidations are being received. Redis implements it
//! ([`super::redis::RedisTier`]); the session cache only knows this trait. Also the wire formats
//! that cross it: [`Stored`] entries and [`Invalidation`] messages, and the [`Sealer`] that
//! authenticates them. The sealer works on bytes under a *domain* (which family of entries or
//! messages), so other families sharing the tier (introspection answers, [`Notice`] messages)
//! are sealed the same way and can never pass for a session entry or message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cache::key::{CacheKey, unhex};
use super::{Aal, Outcome, Session};

pub use crate::config::RESERVED_CLAIMS;

/// Largest stored value read back from the shared tier.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a value or message from the shared tier was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Larger than [`MAX_VALUE_BYTES`].
    Oversized,
    /// Not in our format.
    Malformed,
    /// The MAC does not match: not written by a replica holding `cache.key_secret`, altered,
    /// or moved to another key.
    Forged,
    /// A message from too long ago (or the future): a replay.
    Stale,
    /// Written under an invalidate-all generation that has since moved on.
    OldGeneration,
}

impl Rejected {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Oversized => "oversized",
            Rejected::Malformed => "malformed",
            Rejected::Forged => "forged",
            Rejected::Stale => "stale",
            Rejected::OldGeneration => "old_generation",
        }
    }
}

/// Authenticates what crosses the shared tier: every stored value (bound to its cache key and
/// the invalidate-all generation it was written under) and every invalidation message carries a
/// keyed BLAKE3 MAC from `cache.key_secret`. Whoever can write to Redis without the secret can
/// delete entries, never change one.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// An invalidation as sent between replicas: authenticated, timestamped, and for `All` the new
/// generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Envelope<T> {
    #[serde(flatten)]
    body: T,
    /// Sent at, unix ms.
    at: u64,
    /// For `All`: the generation it starts.
    #[serde(default)]
    generation: u64,
}

/// How old (or how far in the future) a message may be.
const MESSAGE_WINDOW_MS: u64 = 60_000;

impl Sealer {
    /// Keyed from the shared `cache.key_secret`.
    pub fn new(key_secret: &str) -> Sealer {
        Sealer {
            key: blake3::derive_key("sessiongate 2026 shared tier mac v1", key_secret.as_bytes()),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize().to_hex().to_string()
    }

    /// `<mac>.<generation>.<payload>`: `payload` bound to `domain`, `key` and `generation`.
    pub fn seal(&self, domain: &[u8], key: &CacheKey, generation: u64, payload: &[u8]) -> Vec<u8> {
        let g = generation.to_string();
        let mac = self.mac(&[domain, key, g.as_bytes(), payload]);
        let mut out = Vec::with_capacity(mac.len() + g.len() + payload.len() + 2);
        out.extend_from_slice(mac.as_bytes());
        out.push(b'.');
        out.extend_from_slice(g.as_bytes());
        out.push(b'.');
        out.extend_from_slice(payload);
        out
    }

    /// The generation and payload, if `bytes` were sealed for `domain` and `key` by a holder of
    /// the secret.
    pub fn open<'b>(
        &self,
        domain: &[u8],
        key: &CacheKey,
        bytes: &'b [u8],
    ) -> Result<(u64, &'b [u8]), Rejected> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(Rejected::Oversized);
        }
        let mut parts = bytes.splitn(3, |b| *b == b'.');
        let (Some(mac), Some(g), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Rejected::Malformed);
        };
        let expected = self.mac(&[domain, key, g, payload]);
        if !constant_time_eq(mac, expected.as_bytes()) {
            return Err(Rejected::Forged);
        }
        let generation = std::str::from_utf8(g)
            .ok()
            .and_then(|g| g.parse().ok())
            .ok_or(Rejected::Malformed)?;
        Ok((generation, payload))
    }

    /// `<mac>.<generation>.<json>` for the session entry under `key`.
    pub fn seal_entry(&self, key: &CacheKey, generation: u64, stored: &Stored) -> Vec<u8> {
        let json = serde_json::to_vec(stored).unwrap_or_default();
        self.seal(ENTRY_DOMAIN, key, generation, &json)
    }

    /// The session entry and its generation, if `bytes` were sealed for `key` by a holder of
    /// the secret.
    pub fn open_entry(&self, key: &CacheKey, bytes: &[u8]) -> Result<(u64, Stored), Rejected> {
        let (generation, json) = self.open(ENTRY_DOMAIN, key, bytes)?;
        let stored = serde_json::from_slice(json).map_err(|_| Rejected::Malformed)?;
        Ok((generation, stored))
    }

    /// `<mac>.<json>` of a timestamped message under `domain`.
    fn seal_envelope<T: Serialize + Clone>(
        &self,
        domain: &[u8],
        body: &T,
        generation: u64,
    ) -> String {
        let json = serde_json::to_string(&Envelope {
            body: body.clone(),
            at: unix_ms(SystemTime::now()),
            generation,
        })
        .unwrap_or_default();
        format!("{}.{json}", self.mac(&[domain, json.as_bytes()]))
    }

    /// The body and generation of a message sealed under `domain`, if a holder of the secret
    /// sent it recently.
    fn open_envelope<T: serde::de::DeserializeOwned>(
        &self,
        domain: &[u8],
        bytes: &[u8],
    ) -> Result<(T, u64), Rejected> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(Rejected::Oversized);
        }
        let Some((mac, json)) = bytes
            .split_first_chunk::<64>()
            .and_then(|(mac, rest)| rest.strip_prefix(b".").map(|json| (mac.as_slice(), json)))
        else {
            return Err(Rejected::Malformed);
        };
        let expected = self.mac(&[domain, json]);
        if !constant_time_eq(mac, expected.as_bytes()) {
            return Err(Rejected::Forged);
        }
        let m: Envelope<T> = serde_json::from_slice(json).map_err(|_| Rejected::Malformed)?;
        let now = unix_ms(SystemTime::now());
        if m.at.abs_diff(now) > MESSAGE_WINDOW_MS {
            return Err(Rejected::Stale);
        }
        Ok((m.body, m.generation))
    }

    /// `<mac>.<json>` of an invalidation message.
    pub fn seal_message(&self, inv: &Invalidation, generation: u64) -> String {
        self.seal_envelope(MESSAGE_DOMAIN, inv, generation)
    }

    /// The invalidation and its generation, if a holder of the secret sent it recently.
    pub fn open_message(&self, bytes: &[u8]) -> Result<(Invalidation, u64), Rejected> {
        let (inv, generation) = self.open_envelope::<Invalidation>(MESSAGE_DOMAIN, bytes)?;
        let ids_ok = match &inv {
            Invalidation::Key(k) => unhex(k).is_some(),
            Invalidation::Session(id) | Invalidation::Identity(id) => super::is_valid_id(id),
            Invalidation::All => true,
        };
        if !ids_ok {
            return Err(Rejected::Malformed);
        }
        Ok((inv, generation))
    }

    /// `<mac>.<json>` of a [`Notice`] under `domain` (one per family of entries).
    pub fn seal_notice(&self, domain: &[u8], notice: &Notice, generation: u64) -> String {
        self.seal_envelope(domain, notice, generation)
    }

    /// The notice and its generation, if a holder of the secret sent it under `domain`
    /// recently and it is well-formed.
    pub fn open_notice(&self, domain: &[u8], bytes: &[u8]) -> Result<(Notice, u64), Rejected> {
        let (notice, generation) = self.open_envelope::<Notice>(domain, bytes)?;
        let ok = match &notice {
            Notice::Key(k) => unhex(k).is_some(),
            Notice::Tag(tag, id) => valid_tag(tag, id),
            Notice::All => true,
        };
        if !ok {
            return Err(Rejected::Malformed);
        }
        Ok((notice, generation))
    }
}

/// MAC domain of session entries.
const ENTRY_DOMAIN: &[u8] = b"entry";
/// MAC domain of session invalidation messages.
const MESSAGE_DOMAIN: &[u8] = b"message";

/// Longest tag value (a subject, a client id) that can index an entry.
pub const MAX_TAG_BYTES: usize = 1024;

/// Can `(tag, id)` index an entry? A tag is 1-8 lowercase letters other than `t` (the
/// tombstone segment); an id is 1-[`MAX_TAG_BYTES`] bytes without control characters.
pub fn valid_tag(tag: &str, id: &str) -> bool {
    (1..=8).contains(&tag.len())
        && tag != "t"
        && tag.bytes().all(|b| b.is_ascii_lowercase())
        && (1..=MAX_TAG_BYTES).contains(&id.len())
        && !id.chars().any(char::is_control)
}

/// An invalidation in a family of entries other than sessions (which use [`Invalidation`]), as
/// broadcast between replicas. What a tag means is up to the family's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Notice {
    /// One entry (its key, hex).
    Key(String),
    /// Every entry written with this tag: (tag, id).
    Tag(String, String),
    /// Everything in the family.
    All,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Boxed future returned by [`SharedTier`] calls.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store and broadcast shared by every replica. Every call is bounded in time by the
/// implementation and never fails a check: a miss, an error and a timeout look alike.
pub trait SharedTier: Send + Sync + std::fmt::Debug + 'static {
    /// The entry stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Stored>>;
    /// Stores an entry for `ttl`, in the background.
    fn put(self: Arc<Self>, key: CacheKey, stored: Stored, ttl: Duration);
    /// Deletes what the invalidation covers and tells every replica; false when it could not.
    fn broadcast<'a>(&'a self, inv: &'a Invalidation) -> TierFuture<'a, bool>;
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
    /// `authenticated_at`, unix ms (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    auth: u64,
    /// Values at the pointers route requirements read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    facts: Vec<(String, serde_json::Value)>,
    /// Usable until, unix ms.
    until: u64,
    /// Fresh until, unix ms.
    fresh: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
                sid: s.id.to_string(),
                iid: s.identity_id.to_string(),
                aal: s.aal as u8,
                exp: unix_ms(s.expires_at),
                claims: s.extra_claims.to_string(),
                hdrs: s
                    .identity_headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                auth: s.authenticated_at.map_or(0, unix_ms),
                facts: s
                    .facts
                    .iter()
                    .map(|(p, v)| (p.to_string(), v.clone()))
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
                auth: 0,
                facts: vec![],
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
                // Claims must be a JSON object body without a claim sessiongate sets itself;
                // reject anything else rather than mint it.
                if !self.claims.is_empty() {
                    let map = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
                        &format!("{{{}}}", self.claims),
                    )
                    .ok()?;
                    if map.keys().any(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
                        return None;
                    }
                }
                Outcome::Active(Arc::new(Session {
                    id: self.sid.as_str().into(),
                    identity_id: self.iid.as_str().into(),
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
                    authenticated_at: (self.auth != 0)
                        .then(|| UNIX_EPOCH + Duration::from_millis(self.auth)),
                    facts: self
                        .facts
                        .iter()
                        .filter(|(p, v)| {
                            p.starts_with('/') && v.to_string().len() <= super::MAX_FACT_BYTES
                        })
                        .map(|(p, v)| (Arc::from(p.as_str()), v.clone()))
                        .collect(),
                    minted: Default::default(),
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
    use crate::session::cache::key::hex;

    #[test]
    fn sealed_entries_and_messages_verify_and_forgeries_do_not() {
        let sealer = Sealer::new(&"s".repeat(40));
        let other = Sealer::new(&"t".repeat(40));
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let st = Stored::new(
            &Outcome::Unauthenticated,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap();
        let sealed = sealer.seal_entry(&k1, 3, &st);
        assert_eq!(sealer.open_entry(&k1, &sealed).unwrap().0, 3);
        assert_eq!(
            sealer.open_entry(&k2, &sealed).unwrap_err(),
            Rejected::Forged,
            "moved to another key"
        );
        assert_eq!(
            other.open_entry(&k1, &sealed).unwrap_err(),
            Rejected::Forged,
            "another secret"
        );
        let mut altered = sealed.clone();
        let n = altered.len();
        altered[n - 2] ^= 1;
        assert_eq!(
            sealer.open_entry(&k1, &altered).unwrap_err(),
            Rejected::Forged
        );
        let mut regen = sealed.clone();
        regen[65] = b'9';
        assert_eq!(
            sealer.open_entry(&k1, &regen).unwrap_err(),
            Rejected::Forged,
            "generation is bound"
        );
        assert_eq!(
            sealer
                .open_entry(&k1, br#"{"o":"n","until":1,"fresh":1}"#)
                .unwrap_err(),
            Rejected::Malformed
        );
        assert_eq!(
            sealer
                .open_entry(&k1, &vec![b'a'; MAX_VALUE_BYTES + 1])
                .unwrap_err(),
            Rejected::Oversized
        );

        let msg = sealer.seal_message(&Invalidation::All, 9);
        assert_eq!(
            sealer.open_message(msg.as_bytes()).unwrap(),
            (Invalidation::All, 9)
        );
        assert_eq!(
            other.open_message(msg.as_bytes()).unwrap_err(),
            Rejected::Forged
        );
        assert!(
            sealer.open_message(br#"{"kind":"all"}"#).is_err(),
            "unsealed"
        );
        let forged = msg.replace("\"all\"", "\"session\",\"id\":\"x\"");
        assert!(sealer.open_message(forged.as_bytes()).is_err());
        let bad_id = sealer.seal_message(&Invalidation::Session("a b".into()), 0);
        assert_eq!(
            sealer.open_message(bad_id.as_bytes()).unwrap_err(),
            Rejected::Malformed
        );
        // A replay from long ago.
        let json = r#"{"kind":"all","at":1000,"generation":2}"#;
        let old = format!("{}.{json}", sealer.mac(&[b"message", json.as_bytes()]));
        assert_eq!(
            sealer.open_message(old.as_bytes()).unwrap_err(),
            Rejected::Stale
        );
    }

    #[test]
    fn stored_entries_cannot_carry_reserved_claims() {
        for claim in RESERVED_CLAIMS {
            let s = Session {
                id: "s".into(),
                identity_id: "i".into(),
                aal: Aal::Aal1,
                expires_at: SystemTime::now() + Duration::from_secs(600),
                extra_claims: format!("\"{claim}\":\"evil\"").into(),
                identity_headers: vec![],
                generation: 1,
                authenticated_at: None,
                facts: Box::new([]),
                minted: Default::default(),
            };
            let st = Stored::new(
                &Outcome::Active(Arc::new(s)),
                Duration::from_secs(5),
                Duration::from_secs(5),
            )
            .unwrap();
            assert!(st.decode().is_none(), "{claim}");
        }
    }

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
            authenticated_at: None,
            facts: Box::new([]),
            minted: Default::default(),
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
        assert_eq!((&*s.id, &*s.identity_id, s.aal), ("s", "i", Aal::Aal2));
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
