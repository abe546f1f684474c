//! Where cached entries live: a weighted, sharded map with CLOCK-Pro eviction (`quick_cache`),
//! per-entry expiry, and the invalidation index kept consistent with it.
//!
//! The rule this module keeps: **every entry in the map is in the index under its session and
//! identity ids.** An entry is added to the index *after* it is in the map, and an id leaves the
//! index only while the index is locked and the map holds no entry for that key with those ids.
//! So an eviction processed late (after the same key was cached again) cannot unindex the new
//! entry, and an invalidation by id always finds what the map holds.
//!
//! Lock order: index, then a map shard. Nothing takes the index while holding a shard (evictions
//! are collected under the shard lock and processed after it is released).
//!
//! Per cached session this costs ~130 bytes of map bookkeeping (moka, before, ~320).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use super::index::Index;
use super::key::CacheKey;
use super::{Cached, lock};
use crate::telemetry::{KindLabel, Metrics};
use prometheus_client::metrics::counter::Counter;

/// How often expired entries are swept out of the map (lookups also drop the ones they meet).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Weight;

impl Weighter<CacheKey, Arc<Cached>> for Weight {
    fn weight(&self, _: &CacheKey, v: &Arc<Cached>) -> u64 {
        u64::from(v.weight).max(1)
    }
}

/// Collects what a map operation evicted, to be processed once the shard lock is released.
#[derive(Clone)]
struct Collect;

impl Lifecycle<CacheKey, Arc<Cached>> for Collect {
    type RequestState = Vec<(CacheKey, Arc<Cached>)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: CacheKey, val: Arc<Cached>) {
        state.push((key, val));
    }
}

type Map = Cache<CacheKey, Arc<Cached>, Weight, std::collections::hash_map::RandomState, Collect>;

/// The cache's entries and their invalidation index.
pub(super) struct Store {
    map: Map,
    index: Mutex<Index>,
    evictions: Evictions,
    next_sweep: Mutex<Instant>,
}

/// `sessiongate_cache_evictions_total` by kind, resolved once (not a family lookup per insert).
struct Evictions {
    size: Counter,
    expired: Counter,
    explicit: Counter,
}

impl Evictions {
    fn new(metrics: &Metrics) -> Evictions {
        let kind = |kind| {
            metrics
                .cache_evictions
                .get_or_create(&KindLabel { kind })
                .clone()
        };
        Evictions {
            size: kind("size"),
            expired: kind("expired"),
            explicit: kind("explicit"),
        }
    }
}

impl Store {
    /// A store holding up to `max_bytes` of weighted entries.
    pub(super) fn new(max_bytes: u64, metrics: &Metrics) -> Store {
        let estimated_items = usize::try_from(max_bytes / 1024)
            .unwrap_or(usize::MAX)
            .clamp(64, 1 << 20);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated_items)
            .weight_capacity(max_bytes)
            .build()
            .expect("estimated items and weight capacity are both set");
        Store {
            map: Cache::with_options(options, Weight, Default::default(), Collect),
            index: Mutex::default(),
            evictions: Evictions::new(metrics),
            next_sweep: Mutex::new(Instant::now() + SWEEP_EVERY),
        }
    }

    /// The entry for `key`, unless it is past its keep time (then it is dropped).
    pub(super) fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        let hit = self.map.get(key)?;
        if Instant::now() < hit.keep_until() {
            return Some(hit);
        }
        if let Some((k, v)) = self.map.remove_if(key, |v| Arc::ptr_eq(v, &hit)) {
            self.forget(&mut lock(&self.index), [(k, v)], &self.evictions.expired);
        }
        None
    }

    /// Caches `value` under `key` (replacing what was there) and indexes it.
    pub(super) fn insert(self: &Arc<Self>, key: CacheKey, value: Arc<Cached>) {
        let gone = self.map.insert_with_lifecycle(key, value.clone());
        {
            let mut index = lock(&self.index);
            if let Some((sid, iid)) = value.ids() {
                index.add(key, sid, iid);
            }
            for (k, v) in gone {
                if k == key && !Arc::ptr_eq(&v, &value) {
                    // The value this insert replaced: unindexed, but not an eviction.
                    self.unindex(&mut index, &k, &v);
                } else {
                    self.forget(&mut index, [(k, v)], &self.evictions.size);
                }
            }
        }
        self.maybe_sweep();
    }

    /// Drops the entry for `key`; true when there was one.
    pub(super) fn remove(&self, key: &CacheKey) -> bool {
        match self.map.remove(key) {
            Some(removed) => {
                self.forget(&mut lock(&self.index), [removed], &self.evictions.explicit);
                true
            }
            None => false,
        }
    }

    /// The keys cached for a session id.
    pub(super) fn session_keys(&self, id: &str) -> Vec<CacheKey> {
        lock(&self.index).session(id)
    }

    /// The keys cached for an identity id.
    pub(super) fn identity_keys(&self, id: &str) -> Vec<CacheKey> {
        lock(&self.index).identity(id)
    }

    /// Drops everything; returns how many entries there were.
    pub(super) fn clear(&self) -> u64 {
        let drained: Vec<_> = self.map.drain().collect();
        let n = drained.len() as u64;
        self.forget(&mut lock(&self.index), drained, &self.evictions.explicit);
        n
    }

    /// Entries held.
    pub(super) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Their weight in bytes.
    pub(super) fn weight(&self) -> u64 {
        self.map.weight()
    }

    /// Drops every entry past its keep time now.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        let expired = RefCell::new(Vec::new());
        self.map.retain(|k, v| {
            let keep = now < v.keep_until();
            if !keep {
                expired.borrow_mut().push((*k, v.clone()));
            }
            keep
        });
        self.forget(
            &mut lock(&self.index),
            expired.into_inner(),
            &self.evictions.expired,
        );
    }

    /// Sweeps when it is time (at most every [`SWEEP_EVERY`]), on the blocking pool when there
    /// is a runtime: a sweep of a large cache must not stall the requests of a serving thread.
    fn maybe_sweep(self: &Arc<Self>) {
        let now = Instant::now();
        {
            let mut next = lock(&self.next_sweep);
            if now < *next {
                return;
            }
            *next = now + SWEEP_EVERY;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let store = self.clone();
                drop(rt.spawn_blocking(move || store.sweep()));
            }
            Err(_) => self.sweep(),
        }
    }

    /// Unindexes entries that left the map, and counts them.
    fn forget(
        &self,
        index: &mut Index,
        gone: impl IntoIterator<Item = (CacheKey, Arc<Cached>)>,
        counter: &Counter,
    ) {
        for (key, value) in gone {
            counter.inc();
            self.unindex(index, &key, &value);
        }
    }

    /// Removes `gone`'s ids for `key` from the index, unless the map holds an entry for `key`
    /// with the same ids again (it was cached anew meanwhile).
    fn unindex(&self, index: &mut Index, key: &CacheKey, gone: &Cached) {
        let Some((sid, iid)) = gone.ids() else {
            return;
        };
        if self
            .map
            .peek(key)
            .is_some_and(|now| now.ids() == Some((sid, iid)))
        {
            return;
        }
        index.remove(key, sid, iid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Outcome, Session};
    use std::time::SystemTime;

    fn entry(sid: &str, iid: &str, keep: Duration) -> Arc<Cached> {
        let now = Instant::now();
        let session = Session {
            id: sid.into(),
            identity_id: iid.into(),
            aal: crate::session::Aal::Aal1,
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            extra_claims: "".into(),
            identity_headers: vec![],
            generation: 1,
            authenticated_at: None,
            facts: Box::default(),
            minted: Default::default(),
        };
        Arc::new(Cached::new(
            Outcome::Active(Arc::new(session)),
            now,
            keep,
            keep,
            keep,
            1000,
        ))
    }

    fn store(max_bytes: u64) -> Arc<Store> {
        Arc::new(Store::new(max_bytes, &Metrics::new()))
    }

    #[test]
    fn an_entry_cached_again_stays_indexed_when_its_old_copy_is_forgotten() {
        let s = store(1 << 20);
        let k = [7u8; 32];
        let old = entry("s1", "i1", Duration::from_secs(60));
        s.insert(k, old.clone());
        // The same session cached anew, then the old copy's removal processed late (as an
        // eviction noticed after the re-insert would be).
        s.insert(k, entry("s1", "i1", Duration::from_secs(60)));
        s.forget(&mut lock(&s.index), [(k, old)], &s.evictions.size);
        assert_eq!(s.session_keys("s1"), vec![k]);
        assert_eq!(s.identity_keys("i1"), vec![k]);
        // Removing it for real unindexes it.
        assert!(s.remove(&k));
        assert!(s.session_keys("s1").is_empty() && s.identity_keys("i1").is_empty());
    }

    #[test]
    fn a_key_whose_session_changed_is_indexed_under_the_new_one_only() {
        let s = store(1 << 20);
        let k = [1u8; 32];
        s.insert(k, entry("s1", "i1", Duration::from_secs(60)));
        s.insert(k, entry("s2", "i2", Duration::from_secs(60)));
        assert!(s.session_keys("s1").is_empty() && s.identity_keys("i1").is_empty());
        assert_eq!(s.session_keys("s2"), vec![k]);
    }

    #[test]
    fn replacing_an_entry_is_not_an_eviction() {
        // quick_cache hands a replaced value to the lifecycle like an evicted one; a refresh
        // must not show up in `sessiongate_cache_evictions_total{kind="size"}`.
        let s = store(1 << 20);
        let k = [3u8; 32];
        for _ in 0..3 {
            s.insert(k, entry("s1", "i1", Duration::from_secs(60)));
        }
        assert_eq!(s.evictions.size.get(), 0);
        assert_eq!(s.session_keys("s1"), vec![k]);
    }

    #[test]
    fn expired_entries_are_dropped_and_unindexed_by_lookup_and_sweep() {
        let s = store(1 << 20);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        s.insert(a, entry("sa", "i", Duration::ZERO));
        s.insert(b, entry("sb", "i", Duration::ZERO));
        assert!(s.get(&a).is_none());
        assert!(s.session_keys("sa").is_empty());
        assert_eq!(s.len(), 1);
        s.sweep();
        assert_eq!(s.len(), 0);
        assert!(s.identity_keys("i").is_empty());
        assert_eq!(s.evictions.expired.get(), 2);
    }

    #[test]
    fn the_weight_bound_holds_and_evicted_entries_leave_the_index() {
        let s = store(200 * 1000);
        for i in 0..2000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            s.insert(k, entry(&format!("s{i}"), "same", Duration::from_secs(60)));
        }
        assert!(s.weight() <= 200 * 1000, "{}", s.weight());
        assert!(s.len() <= 200 && s.len() > 10, "{}", s.len());
        assert_eq!(
            s.evictions.size.get(),
            2000 - s.len(),
            "every entry not held was evicted"
        );
        assert_eq!(
            s.identity_keys("same").len() as u64,
            s.len(),
            "exactly what the map holds is indexed"
        );
        let n = s.len();
        assert_eq!(s.clear(), n);
        assert!(s.identity_keys("same").is_empty() && s.len() == 0);
    }
}
