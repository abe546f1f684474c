//! Invalidation: by credential, session id, identity id or everything, locally and (with a
//! shared tier) on every replica; and tombstones, so that an upstream call already in flight
//! cannot resurrect what was invalidated.

use std::time::Instant;

use super::key::{CacheKey, unhex};
use super::{SessionCache, Tomb, lock};
use crate::credentials::Credential;
use crate::session::tier::Invalidation;
use crate::telemetry::KindLabel;

impl SessionCache {
    pub(super) fn tombstoned(&self, key: &CacheKey, sid: &str, iid: &str, since: Instant) -> bool {
        if lock(&self.inner.all_invalidated_at).is_some_and(|t| t >= since) {
            return true;
        }
        let tombs = lock(&self.inner.tombs);
        if tombs.is_empty() {
            return false;
        }
        [
            Tomb::Key(*key),
            Tomb::Session(sid.into()),
            Tomb::Identity(iid.into()),
        ]
        .iter()
        .any(|t| tombs.get(t).is_some_and(|at| *at >= since))
    }

    pub(super) fn bury(&self, tomb: Tomb) {
        let now = Instant::now();
        let mut tombs = lock(&self.inner.tombs);
        let ttl = self.inner.tomb_ttl;
        tombs.retain(|_, at| now.duration_since(*at) < ttl);
        tombs.insert(tomb, now);
    }

    /// Applies an invalidation received from another replica (no re-broadcast).
    pub async fn apply_remote(&self, inv: Invalidation) {
        match inv {
            Invalidation::Key(hex) => {
                if let Some(key) = unhex(&hex) {
                    self.bury(Tomb::Key(key));
                    self.inner.entries.remove(&key).await;
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

    async fn broadcast(&self, inv: Invalidation) {
        if let Some(tier) = &self.inner.tier {
            tier.broadcast(&inv).await;
        }
    }

    /// Drops the entry for one credential. Returns the number of entries dropped (0 or 1).
    pub async fn invalidate_credential(&self, credential: &Credential) -> u64 {
        let key = self.key_for(credential);
        self.bury(Tomb::Key(key));
        let n = u64::from(self.inner.entries.remove(&key).await.is_some());
        self.count_invalidation("credential");
        self.broadcast(Invalidation::Key(super::key::hex(&key)))
            .await;
        n
    }

    /// Drops every entry of one Kratos session (on every replica, with Redis).
    pub async fn invalidate_session(&self, session_id: &str) -> u64 {
        let n = self.invalidate_session_local(session_id).await;
        self.broadcast(Invalidation::Session(session_id.into()))
            .await;
        n
    }

    async fn invalidate_session_local(&self, session_id: &str) -> u64 {
        self.bury(Tomb::Session(session_id.into()));
        let keys = lock(&self.inner.index).session(session_id);
        self.count_invalidation("session");
        self.remove_keys(keys).await
    }

    /// Drops every entry of one Kratos identity (on every replica, with Redis).
    pub async fn invalidate_identity(&self, identity_id: &str) -> u64 {
        let n = self.invalidate_identity_local(identity_id).await;
        self.broadcast(Invalidation::Identity(identity_id.into()))
            .await;
        n
    }

    async fn invalidate_identity_local(&self, identity_id: &str) -> u64 {
        self.bury(Tomb::Identity(identity_id.into()));
        let keys = lock(&self.inner.index).identity(identity_id);
        self.count_invalidation("identity");
        self.remove_keys(keys).await
    }

    /// Drops everything (on every replica, with Redis).
    pub async fn invalidate_all(&self) -> u64 {
        let n = self.invalidate_all_local().await;
        self.broadcast(Invalidation::All).await;
        n
    }

    async fn invalidate_all_local(&self) -> u64 {
        *lock(&self.inner.all_invalidated_at) = Some(Instant::now());
        self.inner.entries.run_pending_tasks().await;
        let n = self.inner.entries.entry_count();
        self.inner.entries.invalidate_all();
        self.inner.entries.run_pending_tasks().await;
        self.count_invalidation("all");
        n
    }

    async fn remove_keys(&self, keys: Vec<CacheKey>) -> u64 {
        let mut n = 0;
        for k in keys {
            if self.inner.entries.remove(&k).await.is_some() {
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
