//! Admission to Kratos' whoami: who gets one of the `max_concurrency` slots, and who waits.
//!
//! Two lanes share the slots:
//! - **known**: refreshes and re-lookups of sessions the cache holds. `reserved` slots are theirs
//!   alone, and when a slot frees up, a waiting known lookup always goes first. A spray of
//!   unknown credentials therefore cannot keep known users' sessions from being revalidated.
//! - **first**: lookups of credentials the cache has never seen (logins, and junk). They use the
//!   other `max_concurrency - reserved` slots; when those are taken they queue, *per source*
//!   (client address; IPv6 by /64), and free slots go round-robin over the sources with waiters,
//!   so one source's flood waits behind its own requests, not in front of everyone else's.
//!
//! A waiter gives up after `queue_timeout` (shed: 503). The queue is bounded (`max_waiting`):
//! when it is full, a newcomer from a source with a shorter queue pushes out the newest waiter
//! of the longest queue (longest-queue drop), so memory stays bounded and the flooding source
//! pays for the flood. Everything here is O(sources with waiters) at worst, under one mutex held
//! for a few instructions.
//!
//! **Hopeless first lookups are shed at once** (`backlog`). The controller keeps a moving
//! average of how long a slot is held (one whoami call). A first lookup that would queue behind
//! more waiters than the shared slots can serve within `queue_timeout` would only wait out its
//! timeout and be shed then (having held a timer, a task and the client's connection for it), so
//! it is answered 503 now. Its place in line follows the round-robin: the known waiters, its own
//! source's waiters, and one turn of every other source with waiters per waiter of its own. A
//! newcomer from a quiet source is therefore almost never shed this way; the flooding source's
//! surplus always is. Until a call has completed there is no average, and nothing is shed early.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::telemetry::{AdmissionLabels, LaneLabel, Metrics};

/// Which lane a lookup is admitted through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// A session the cache holds (refresh, or revalidation past its TTL).
    Known = 0,
    /// A credential the cache does not know.
    #[default]
    First = 1,
}

impl Lane {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Known => "known",
            Lane::First => "first",
        }
    }
}

/// A client address as a fairness bucket: IPv4 per address, IPv6 per /64 (one subscriber's
/// allocation), everything without an address in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The bucket of `addr`.
    pub fn of(addr: Option<IpAddr>) -> SourceKey {
        match addr {
            None => SourceKey(0),
            Some(IpAddr::V4(v4)) => SourceKey((1 << 64) | u128::from(u32::from(v4))),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey((1 << 64) | u128::from(u32::from(v4))),
                None => SourceKey((u128::from(v6) >> 64) | (2 << 64)),
            },
        }
    }
}

/// Sizes and waits.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Slots in all (calls in flight at most).
    pub max_concurrency: usize,
    /// Slots only known sessions may use.
    pub reserved: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Most lookups waiting at once (both lanes).
    pub max_waiting: usize,
}

/// Why a lookup got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Waited `queue_timeout`.
    Timeout,
    /// The queue was full (or this waiter was pushed out of it).
    QueueFull,
    /// More waiters were ahead than the slots can serve within `queue_timeout`.
    Backlog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Shared,
    Reserved,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Result<Permit, Shed>>,
}

#[derive(Default)]
struct State {
    free_shared: usize,
    free_reserved: usize,
    known: VecDeque<Waiter>,
    first: HashMap<SourceKey, VecDeque<Waiter>>,
    /// Sources with first-lane waiters, in round-robin order (each at most once).
    ring: VecDeque<SourceKey>,
    /// Waiters in both lanes.
    waiting: usize,
    next_id: u64,
}

/// The admission controller (see the module docs).
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// Per lane (`Lane as usize`): calls in flight, lookups waiting. Resolved once.
    in_flight: [Gauge; 2],
    waiting: [Gauge; 2],
    /// Moving average of how long a slot is held, in µs (0: no call has completed yet).
    hold_us: AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A whoami slot; freeing it (drop) hands it to the next waiter.
pub struct Permit {
    admission: Arc<Admission>,
    slot: Option<Slot>,
    lane: Lane,
    acquired: Instant,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("lane", &self.lane).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.admission.held(self.acquired.elapsed());
            self.admission.metrics.whoami_in_flight.dec();
            self.admission.lane_in_flight(self.lane).dec();
            self.admission.release(slot);
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a waiter that stopped waiting (timeout, or its future was dropped).
struct Pending<'a> {
    admission: &'a Admission,
    id: u64,
    lane: Lane,
    source: SourceKey,
    rx: Option<oneshot::Receiver<Result<Permit, Shed>>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let removed = {
            let mut st = lock(&self.admission.state);
            st.remove(self.id, self.lane, self.source)
        };
        if removed {
            self.admission.waiting(self.lane).dec();
        }
        // Dropped outside the lock: a permit already handed to us goes back through `release`.
        drop(self.rx.take());
    }
}

impl State {
    /// Removes waiter `id` if it is still queued.
    fn remove(&mut self, id: u64, lane: Lane, source: SourceKey) -> bool {
        let queue = match lane {
            Lane::Known => Some(&mut self.known),
            Lane::First => self.first.get_mut(&source),
        };
        let Some(queue) = queue else { return false };
        let Some(pos) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(pos);
        self.waiting -= 1;
        if lane == Lane::First && queue.is_empty() {
            self.first.remove(&source);
            self.ring.retain(|s| *s != source);
        }
        true
    }

    /// The next first-lane waiter, round-robin over sources.
    fn pop_first(&mut self) -> Option<(Waiter, SourceKey)> {
        let source = self.ring.pop_front()?;
        let queue = self.first.get_mut(&source)?;
        let waiter = queue.pop_front()?;
        self.waiting -= 1;
        if queue.is_empty() {
            self.first.remove(&source);
        } else {
            self.ring.push_back(source);
        }
        Some((waiter, source))
    }

    /// How many waiters a first lookup from `source` would have ahead of it if it queued now:
    /// the known lane (served first), its source's queue, and per waiter of its own one turn
    /// of each other source with waiters (round-robin), at most all of theirs.
    fn ahead_of_first(&self, source: SourceKey) -> usize {
        let mine = self.first.get(&source).map_or(0, VecDeque::len);
        let first_waiting = self.waiting - self.known.len();
        let other_sources = self.ring.len() - usize::from(mine > 0);
        let others = (first_waiting - mine).min((mine + 1).saturating_mul(other_sources));
        self.known.len() + mine + others
    }

    /// The source with the most first-lane waiters and how many.
    fn longest(&self) -> Option<(SourceKey, usize)> {
        self.first
            .iter()
            .map(|(s, q)| (*s, q.len()))
            .max_by_key(|(_, n)| *n)
    }
}

impl Admission {
    /// A controller with these limits (`reserved` is clamped below `max_concurrency`).
    pub fn new(limits: AdmissionLimits, metrics: Arc<Metrics>) -> Arc<Admission> {
        let max = limits.max_concurrency.max(1);
        let reserved = limits.reserved.min(max - 1);
        let limits = AdmissionLimits {
            max_concurrency: max,
            reserved,
            ..limits
        };
        let per_lane = |family: &prometheus_client::metrics::family::Family<LaneLabel, Gauge>| {
            [Lane::Known, Lane::First].map(|lane| {
                family
                    .get_or_create(&LaneLabel {
                        lane: lane.as_str(),
                    })
                    .clone()
            })
        };
        Arc::new(Admission {
            limits,
            state: Mutex::new(State {
                free_shared: max - reserved,
                free_reserved: reserved,
                ..State::default()
            }),
            in_flight: per_lane(&metrics.whoami_lane_in_flight),
            waiting: per_lane(&metrics.whoami_waiting),
            metrics,
            hold_us: AtomicU64::new(0),
        })
    }

    /// Folds a slot's hold time into the moving average (weight 1/8).
    fn held(&self, hold: Duration) {
        let sample = u64::try_from(hold.as_micros()).unwrap_or(u64::MAX).max(1);
        // Racing updates may lose a sample; the average stays an average.
        let old = self.hold_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.hold_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Would a first lookup from `source`, queued now, be behind more waiters than the shared
    /// slots can serve within `queue_timeout`? (Never before a call has completed.)
    fn hopeless(&self, st: &State, source: SourceKey) -> bool {
        let hold = self.hold_us.load(Ordering::Relaxed);
        if hold == 0 {
            return false;
        }
        let shared = (self.limits.max_concurrency - self.limits.reserved) as u128;
        let servable = shared * self.limits.queue_timeout.as_micros() / u128::from(hold);
        st.ahead_of_first(source) as u128 >= servable
    }

    /// Sheds a first lookup from `source` that could only wait out `queue_timeout` (see the
    /// module docs), counting it; false when it may queue or has a slot free. For the caller to
    /// ask before it spends anything on the lookup; [`Admission::admit`] applies the same rule.
    pub fn shed_hopeless(&self, source: SourceKey) -> bool {
        let hopeless = {
            let st = lock(&self.state);
            !(st.free_shared > 0 && st.ring.is_empty()) && self.hopeless(&st, source)
        };
        if hopeless {
            self.count(Lane::First, "backlog");
            self.metrics.whoami_shed.inc();
        }
        hopeless
    }

    fn count(&self, lane: Lane, result: &'static str) {
        self.metrics
            .whoami_admissions
            .get_or_create(&AdmissionLabels {
                lane: lane.as_str(),
                result,
            })
            .inc();
    }

    fn lane_in_flight(&self, lane: Lane) -> &Gauge {
        &self.in_flight[lane as usize]
    }

    fn waiting(&self, lane: Lane) -> &Gauge {
        &self.waiting[lane as usize]
    }

    fn permit(self: &Arc<Self>, slot: Slot, lane: Lane) -> Permit {
        self.metrics.whoami_in_flight.inc();
        self.lane_in_flight(lane).inc();
        Permit {
            admission: self.clone(),
            slot: Some(slot),
            lane,
            acquired: Instant::now(),
        }
    }

    /// Would a known session's lookup have to wait for a slot now?
    pub fn known_would_wait(&self) -> bool {
        let st = lock(&self.state);
        st.free_reserved == 0 && st.free_shared == 0
    }

    /// Takes a slot in `lane` for a lookup from `source`, waiting up to `queue_timeout`.
    pub async fn admit(self: &Arc<Self>, lane: Lane, source: SourceKey) -> Result<Permit, Shed> {
        let (id, rx) = {
            let mut st = lock(&self.state);
            let immediate = match lane {
                Lane::Known if st.free_reserved > 0 => Some(Slot::Reserved),
                Lane::Known if st.free_shared > 0 => Some(Slot::Shared),
                // Queued first lookups keep their turn: a newcomer does not overtake them.
                Lane::First if st.free_shared > 0 && st.ring.is_empty() => Some(Slot::Shared),
                _ => None,
            };
            if let Some(slot) = immediate {
                match slot {
                    Slot::Reserved => st.free_reserved -= 1,
                    Slot::Shared => st.free_shared -= 1,
                }
                drop(st);
                self.count(lane, "admitted");
                return Ok(self.permit(slot, lane));
            }
            if lane == Lane::First && self.hopeless(&st, source) {
                drop(st);
                self.count(lane, "backlog");
                self.metrics.whoami_shed.inc();
                return Err(Shed::Backlog);
            }
            let mut pushed_out = None;
            if st.waiting >= self.limits.max_waiting {
                // Full: push out the newest waiter of the longest first-lane queue if this
                // lookup's source (or lane) has fewer waiters; otherwise refuse this one.
                let mine = match lane {
                    Lane::Known => 0,
                    Lane::First => st.first.get(&source).map_or(0, VecDeque::len),
                };
                match st.longest() {
                    Some((victim, n)) if n > mine + 1 || (lane == Lane::Known && n > 0) => {
                        let queue = st.first.get_mut(&victim).expect("longest exists");
                        pushed_out = queue.pop_back();
                        if queue.is_empty() {
                            st.first.remove(&victim);
                            st.ring.retain(|s| *s != victim);
                        }
                        st.waiting -= 1;
                    }
                    _ => {
                        drop(st);
                        self.count(lane, "shed");
                        self.metrics.whoami_shed.inc();
                        return Err(Shed::QueueFull);
                    }
                }
            }
            let id = st.next_id;
            st.next_id += 1;
            let (tx, rx) = oneshot::channel();
            match lane {
                Lane::Known => st.known.push_back(Waiter { id, tx }),
                Lane::First => {
                    let st = &mut *st;
                    let queue = st.first.entry(source).or_default();
                    if queue.is_empty() {
                        st.ring.push_back(source);
                    }
                    queue.push_back(Waiter { id, tx });
                }
            }
            st.waiting += 1;
            drop(st);
            if let Some(w) = pushed_out {
                self.waiting(Lane::First).dec();
                self.count(Lane::First, "pushed_out");
                let _ = w.tx.send(Err(Shed::QueueFull));
            }
            self.waiting(lane).inc();
            (id, rx)
        };
        let mut pending = Pending {
            admission: self,
            id,
            lane,
            source,
            rx: Some(rx),
        };
        let rx = pending.rx.as_mut().expect("set above");
        let result = match tokio::time::timeout(self.limits.queue_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Shed::QueueFull),
            Err(_) => {
                // Still queued (removed by `pending`'s drop), or handed a permit just now.
                let handed = {
                    let mut st = lock(&self.state);
                    !st.remove(id, lane, source)
                };
                if handed {
                    match pending.rx.as_mut().map(|rx| rx.try_recv()) {
                        Some(Ok(result)) => result,
                        _ => Err(Shed::Timeout),
                    }
                } else {
                    self.waiting(lane).dec();
                    Err(Shed::Timeout)
                }
            }
        };
        // Nothing left to remove: the waiter was popped (handed a result) or removed above.
        pending.rx = None;
        std::mem::forget(pending);
        match &result {
            Ok(_) => self.count(lane, "queued"),
            Err(Shed::Timeout) => {
                self.count(lane, "timeout");
                self.metrics.whoami_shed.inc();
            }
            Err(Shed::QueueFull | Shed::Backlog) => {
                self.metrics.whoami_shed.inc();
            }
        }
        result
    }

    /// A slot came free: hand it to the next waiter (known first), or put it back.
    fn release(self: &Arc<Self>, slot: Slot) {
        loop {
            let mut st = lock(&self.state);
            let next = if let Some(w) = st.known.pop_front() {
                st.waiting -= 1;
                Some((w, Lane::Known))
            } else if slot == Slot::Shared {
                st.pop_first().map(|(w, _)| (w, Lane::First))
            } else {
                None
            };
            let Some((waiter, lane)) = next else {
                match slot {
                    Slot::Reserved => st.free_reserved += 1,
                    Slot::Shared => st.free_shared += 1,
                }
                return;
            };
            drop(st);
            self.waiting(lane).dec();
            let permit = self.permit(slot, lane);
            match waiter.tx.send(Ok(permit)) {
                Ok(()) => return,
                Err(Ok(mut refused)) => {
                    // The waiter is gone: take the slot back without dropping it through
                    // `release` (which would recurse), and try the next one.
                    refused.slot = None;
                    self.metrics.whoami_in_flight.dec();
                    self.lane_in_flight(lane).dec();
                }
                Err(Err(_)) => unreachable!("we sent a permit"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn admission(max: usize, reserved: usize, max_waiting: usize) -> Arc<Admission> {
        Admission::new(
            AdmissionLimits {
                max_concurrency: max,
                reserved,
                queue_timeout: Duration::from_secs(5),
                max_waiting,
            },
            Metrics::new(),
        )
    }

    fn src(n: u8) -> SourceKey {
        SourceKey::of(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))))
    }

    fn free(a: &Admission) -> (usize, usize, usize) {
        let st = lock(&a.state);
        (st.free_shared, st.free_reserved, st.waiting)
    }

    #[tokio::test]
    async fn first_lookups_never_take_the_reserved_slots() {
        let a = admission(4, 1, 16);
        let mut held = vec![];
        for _ in 0..3 {
            held.push(a.admit(Lane::First, src(1)).await.unwrap());
        }
        // The fourth first lookup waits although one slot is free: it is reserved.
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::First, src(1)).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(free(&a), (0, 1, 1));
        // A known session gets it at once.
        let known = a.admit(Lane::Known, src(9)).await.unwrap();
        assert_eq!(free(&a), (0, 0, 1));
        drop(known);
        // The reserved slot goes back to the reserve, not to the waiting first lookup.
        assert_eq!(free(&a), (0, 1, 1));
        drop(held.pop());
        waiting.await.unwrap().unwrap();
        drop(held);
        assert_eq!(free(&a), (3, 1, 0));
    }

    #[tokio::test]
    async fn known_waiters_go_before_first_waiters() {
        let a = admission(2, 1, 16);
        let f = a.admit(Lane::First, src(1)).await.unwrap();
        let k = a.admit(Lane::Known, src(2)).await.unwrap();
        let first = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::First, src(3)).await.map(|p| p.lane) }
        });
        tokio::task::yield_now().await;
        let known = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::Known, src(4)).await.map(|p| p.lane) }
        });
        tokio::task::yield_now().await;
        assert_eq!(free(&a).2, 2);
        // The shared slot frees: the known waiter gets it although it came second.
        drop(f);
        assert_eq!(known.await.unwrap(), Ok(Lane::Known));
        drop(k);
        assert_eq!(first.await.unwrap(), Ok(Lane::First));
    }

    #[tokio::test]
    async fn free_slots_go_round_robin_over_sources() {
        let a = admission(1, 0, 64);
        let held = a.admit(Lane::First, src(1)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = vec![];
        // Source 1 floods with 10 waiters, then source 2 and 3 ask once each.
        for s in std::iter::repeat_n(1, 10).chain([2, 3]) {
            let (a, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = a.admit(Lane::First, src(s)).await.unwrap();
                order.lock().unwrap().push(s);
                tokio::task::yield_now().await;
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        // Sources 2 and 3 are served within the first three, not after the flood.
        assert_eq!(order.len(), 12);
        let pos = |s| order.iter().position(|x| *x == s).unwrap();
        assert!(pos(2) <= 2 && pos(3) <= 2, "{order:?}");
    }

    #[tokio::test]
    async fn a_full_queue_pushes_out_the_longest_sources_newest_waiter() {
        let a = admission(1, 0, 4);
        let _held = a.admit(Lane::First, src(1)).await.unwrap();
        let mut flood = vec![];
        for _ in 0..4 {
            let a = a.clone();
            flood.push(tokio::spawn(async move {
                a.admit(Lane::First, src(1)).await.map(drop)
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(free(&a).2, 4);
        // Another flood request is refused (its source has the longest queue already)...
        assert_eq!(
            a.admit(Lane::First, src(1)).await.map(drop),
            Err(Shed::QueueFull)
        );
        // ...but a lookup from elsewhere takes the place of the flood's newest waiter.
        let other = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::First, src(2)).await.map(drop) }
        });
        tokio::task::yield_now().await;
        let newest = flood.pop().unwrap().await.unwrap();
        assert_eq!(newest, Err(Shed::QueueFull));
        assert_eq!(free(&a).2, 4);
        drop(_held);
        // Round-robin: the other source is served right after the flood's first waiter.
        other.await.unwrap().unwrap();
        for f in flood {
            f.await.unwrap().unwrap();
        }
        assert_eq!(free(&a), (1, 0, 0));
    }

    #[tokio::test]
    async fn waiters_time_out_and_dropped_waiters_leak_nothing() {
        let a = Admission::new(
            AdmissionLimits {
                max_concurrency: 1,
                reserved: 0,
                queue_timeout: Duration::from_millis(50),
                max_waiting: 8,
            },
            Metrics::new(),
        );
        let held = a.admit(Lane::First, src(1)).await.unwrap();
        assert_eq!(
            a.admit(Lane::First, src(2)).await.map(drop),
            Err(Shed::Timeout)
        );
        assert_eq!(free(&a), (0, 0, 0));
        // A waiter whose future is dropped leaves the queue.
        let abandoned = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::First, src(3)).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(free(&a).2, 1);
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(free(&a).2, 0);
        drop(held);
        assert_eq!(free(&a), (1, 0, 0));
        assert_eq!(a.metrics.whoami_in_flight.get(), 0);
    }

    fn backlog_count(a: &Admission) -> u64 {
        a.metrics
            .whoami_admissions
            .get_or_create(&AdmissionLabels {
                lane: "first",
                result: "backlog",
            })
            .get()
    }

    /// Queues a first lookup from `source` in the background; returns its task.
    async fn queue(
        a: &Arc<Admission>,
        source: SourceKey,
    ) -> tokio::task::JoinHandle<Result<(), Shed>> {
        let task = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::First, source).await.map(drop) }
        });
        tokio::task::yield_now().await;
        task
    }

    #[tokio::test]
    async fn first_lookups_that_could_only_time_out_are_shed_at_once() {
        let a = Admission::new(
            AdmissionLimits {
                max_concurrency: 2,
                reserved: 0,
                queue_timeout: Duration::from_secs(10),
                max_waiting: 64,
            },
            Metrics::new(),
        );
        let held = [
            a.admit(Lane::First, src(1)).await.unwrap(),
            a.admit(Lane::First, src(1)).await.unwrap(),
        ];
        // No call has completed yet: no estimate, so no early shedding.
        assert!(!a.shed_hopeless(src(1)));
        // Calls take 5 s: two slots serve 4 waiters within the 10 s queue timeout.
        a.held(Duration::from_secs(5));
        let mut waiters = vec![];
        for _ in 0..4 {
            waiters.push(queue(&a, src(1)).await);
        }
        assert_eq!(free(&a), (0, 0, 4));
        // The fifth from the same source could only wait out its timeout: shed now.
        assert_eq!(
            a.admit(Lane::First, src(1)).await.map(drop),
            Err(Shed::Backlog)
        );
        assert!(a.shed_hopeless(src(1)));
        assert_eq!(backlog_count(&a), 2);
        assert_eq!(free(&a).2, 4, "shed ones never queued");
        // Another source is one round-robin turn from a slot: it queues.
        assert!(!a.shed_hopeless(src(2)));
        waiters.push(queue(&a, src(2)).await);
        assert_eq!(free(&a).2, 5);
        // Known sessions are never shed for the first lane's backlog.
        let known = tokio::spawn({
            let a = a.clone();
            async move { a.admit(Lane::Known, src(3)).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(free(&a).2, 6);
        drop(held);
        known.await.unwrap().unwrap();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(free(&a), (2, 0, 0));
        assert_eq!(backlog_count(&a), 2);
    }

    #[tokio::test]
    async fn the_round_robin_place_decides_who_is_hopeless() {
        // 1 slot, calls of 1 s, 3 s queue timeout: 3 waiters can be served in time.
        let a = Admission::new(
            AdmissionLimits {
                max_concurrency: 1,
                reserved: 0,
                queue_timeout: Duration::from_secs(3),
                max_waiting: 64,
            },
            Metrics::new(),
        );
        let held = a.admit(Lane::First, src(1)).await.unwrap();
        a.held(Duration::from_secs(1));
        let mut waiters = vec![queue(&a, src(1)).await, queue(&a, src(1)).await];
        // Source 2's first waiter is behind one turn of source 1: second in line.
        assert!(!a.shed_hopeless(src(2)));
        waiters.push(queue(&a, src(2)).await);
        // Source 1's third: behind its own two and source 2's one → 3 ahead: hopeless.
        assert!(a.shed_hopeless(src(1)));
        // Source 2's second: behind its own one and two turns of source 1 → 3 ahead: hopeless.
        assert!(a.shed_hopeless(src(2)));
        // A third source: one turn of each of the two others → 2 ahead: it may queue.
        assert!(!a.shed_hopeless(src(3)));
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
    }

    #[test]
    fn ipv6_sources_are_grouped_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(SourceKey::of(Some(a)), SourceKey::of(Some(b)));
        assert_ne!(SourceKey::of(Some(a)), SourceKey::of(Some(c)));
        assert_eq!(SourceKey::of(Some(mapped)), src(1));
        assert_ne!(SourceKey::of(None), src(0));
    }
}
