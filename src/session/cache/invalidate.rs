//! Invalidation: by credential, session id, identity id or everything, locally and (with a
//! shared tier) on every replica; and tombstones, so that an upstream call already in flight
//! cannot resurrect what was invalidated.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::key::{CacheKey, unhex};
use std::sync::Arc;

use super::{Cached, SessionCache, Tomb, lock};
use crate::credentials::Credential;
use crate::session::tier::Invalidation;
use crate::telemetry::KindLabel;

/// An invalidation applied on this replica whose broadcast to the others failed: they keep
/// their entries until their TTL (or `redis.degraded_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalidated {local} entries on this replica, but the broadcast to the other replicas failed"
)]
pub struct BroadcastFailed {
    /// Entries dropped on this replica.
    pub local: u64,
}

/// Recent invalidations, in the order they happened: burying one is O(1) amortised (expired
/// tombstones leave from the front), however many there are. With them, under the same lock,
/// when everything was last invalidated.
#[derive(Debug, Default)]
pub(super) struct Tombs {
    all_invalidated_at: Option<Instant>,
    by_tomb: HashMap<Tomb, Instant>,
    order: VecDeque<(Instant, Tomb)>,
}

impl Tombs {
    fn bury(&mut self, tomb: Tomb, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            if let Some((at, old)) = self.order.pop_front()
                && self.by_tomb.get(&old) == Some(&at)
            {
                self.by_tomb.remove(&old);
            }
        }
        self.by_tomb.insert(tomb.clone(), now);
        self.order.push_back((now, tomb));
    }

    /// Was the key, its session or its identity (or everything) invalidated at or after `since`?
    fn cover(&self, key: &CacheKey, sid: &str, iid: &str, since: Instant) -> bool {
        if self.all_invalidated_at.is_some_and(|t| t >= since) {
            return true;
        }
        if self.by_tomb.is_empty() {
            return false;
        }
        [
            Tomb::Key(*key),
            Tomb::Session(sid.into()),
            Tomb::Identity(iid.into()),
        ]
        .iter()
        .any(|t| self.by_tomb.get(t).is_some_and(|at| *at >= since))
    }
}

impl SessionCache {
    pub(super) fn tombstoned(&self, key: &CacheKey, sid: &str, iid: &str, since: Instant) -> bool {
        lock(&self.inner.tombs).cover(key, sid, iid, since)
    }

    /// Caches `cached` for `key` unless something it belongs to was invalidated since `since`.
    /// The check and the insert happen under the tombstones' lock, which every invalidation
    /// takes before it looks for entries to drop: an answer is either cached before the
    /// invalidation looks (and dropped by it) or sees its tombstone (and is not cached).
    pub(super) fn insert_unless_invalidated(
        &self,
        key: CacheKey,
        cached: &Arc<Cached>,
        since: Instant,
    ) -> bool {
        let (sid, iid) = cached.ids().unwrap_or(("", ""));
        let tombs = lock(&self.inner.tombs);
        if tombs.cover(&key, sid, iid, since) {
            return false;
        }
        self.inner.entries.insert(key, cached.clone());
        true
    }

    pub(super) fn bury(&self, tomb: Tomb) {
        lock(&self.inner.tombs).bury(tomb, Instant::now(), self.inner.tomb_ttl);
    }

    /// Applies an invalidation received from another replica (no re-broadcast).
    pub async fn apply_remote(&self, inv: Invalidation) {
        match inv {
            Invalidation::Key(hex) => {
                if let Some(key) = unhex(&hex) {
                    self.bury(Tomb::Key(key));
                    self.inner.entries.remove(&key);
                }
            }
            Invalidation::Session(id) => {
                self.invalidate_session_local(&id).await;
            }
            Invalidation::Identity(id) => {
                self.invalidate_identity_local(&id).await;
            }
            Invalidation::All => {
                self.invalidate_all_local().await;
            }
        }
    }

    /// Tells the other replicas; `Err` when there is a shared tier and it could not.
    async fn broadcast(&self, inv: Invalidation, local: u64) -> Result<u64, BroadcastFailed> {
        match &self.inner.tier {
            Some(tier) if !tier.broadcast(&inv).await => Err(BroadcastFailed { local }),
            _ => Ok(local),
        }
    }

    /// Drops the entry for one credential. Returns the number of entries dropped (0 or 1).
    pub async fn invalidate_credential(&self, credential: &Credential) -> u64 {
        let key = self.key_for(credential);
        self.bury(Tomb::Key(key));
        let n = u64::from(self.inner.entries.remove(&key));
        self.count_invalidation("credential");
        // A failed broadcast is logged by the tier; other replicas keep the entry until its TTL.
        let _ = self
            .broadcast(Invalidation::Key(super::key::hex(&key)), n)
            .await;
        n
    }

    /// Drops every entry of one Kratos session (on every replica, with Redis).
    pub async fn invalidate_session(&self, session_id: &str) -> Result<u64, BroadcastFailed> {
        let n = self.invalidate_session_local(session_id).await;
        self.broadcast(Invalidation::Session(session_id.into()), n)
            .await
    }

    async fn invalidate_session_local(&self, session_id: &str) -> u64 {
        self.bury(Tomb::Session(session_id.into()));
        let keys = self.inner.entries.session_keys(session_id);
        self.count_invalidation("session");
        self.remove_keys(keys).await
    }

    /// Drops one session's entries, on every replica, only if this replica holds that session
    /// for `identity_id` (a caller ending a session it owns); otherwise nothing. Returns the
    /// entries dropped here.
    pub async fn invalidate_session_of_identity(&self, session_id: &str, identity_id: &str) -> u64 {
        let keys = self.inner.entries.session_keys(session_id);
        let mut owned = false;
        for k in keys {
            if let Some(e) = self.inner.entries.get(&k)
                && e.ids()
                    .is_some_and(|(sid, iid)| sid == session_id && iid == identity_id)
            {
                owned = true;
                break;
            }
        }
        if !owned {
            return 0;
        }
        self.invalidate_session(session_id)
            .await
            .unwrap_or_else(|e| e.local)
    }

    /// Drops every entry of one Kratos identity (on every replica, with Redis).
    pub async fn invalidate_identity(&self, identity_id: &str) -> Result<u64, BroadcastFailed> {
        let n = self.invalidate_identity_local(identity_id).await;
        self.broadcast(Invalidation::Identity(identity_id.into()), n)
            .await
    }

    async fn invalidate_identity_local(&self, identity_id: &str) -> u64 {
        self.bury(Tomb::Identity(identity_id.into()));
        let keys = self.inner.entries.identity_keys(identity_id);
        self.count_invalidation("identity");
        self.remove_keys(keys).await
    }

    /// Drops everything (on every replica, with Redis).
    pub async fn invalidate_all(&self) -> Result<u64, BroadcastFailed> {
        let n = self.invalidate_all_local().await;
        self.broadcast(Invalidation::All, n).await
    }

    /// Drops every entry of this replica only (no broadcast): the rules now read values the
    /// cached sessions were projected without.
    pub async fn clear_local(&self) -> u64 {
        self.invalidate_all_local().await
    }

    async fn invalidate_all_local(&self) -> u64 {
        // Under the tombstones' lock, like every insert's check (see `insert_unless_invalidated`):
        // an answer is either cached before this point (and cleared below) or sees it.
        lock(&self.inner.tombs).all_invalidated_at = Some(Instant::now());
        let n = self.inner.entries.clear();
        self.count_invalidation("all");
        n
    }

    async fn remove_keys(&self, keys: Vec<CacheKey>) -> u64 {
        let mut n = 0;
        for k in keys {
            if self.inner.entries.remove(&k) {
                n += 1;
            }
        }
        n
    }

    fn count_invalidation(&self, kind: &'static str) {
        self.inner
            .metrics
            .cache_invalidations
            .get_or_create(&KindLabel { kind })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_expire_in_order_and_stay_bounded() {
        let mut t = Tombs::default();
        let start = Instant::now();
        let ttl = Duration::from_secs(1);
        for n in 0..10_000u32 {
            let at = start + Duration::from_millis(u64::from(n));
            t.bury(Tomb::Session(n.to_string().into()), at, ttl);
        }
        assert!(
            t.order.len() <= 1001 && t.by_tomb.len() <= 1001,
            "{}",
            t.order.len()
        );
        // Re-burying keeps the newest time; the older queue entry does not remove it.
        let later = start + Duration::from_millis(20_000);
        t.bury(Tomb::Session("x".into()), later, ttl);
        t.bury(
            Tomb::Session("x".into()),
            later + Duration::from_millis(900),
            ttl,
        );
        t.bury(
            Tomb::Session("y".into()),
            later + Duration::from_millis(1500),
            ttl,
        );
        assert!(t.by_tomb.contains_key(&Tomb::Session("x".into())));
    }
}
