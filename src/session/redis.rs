//! The Redis implementation of the [`SharedTier`]: a shared session cache behind each replica's
//! in-process cache, and an invalidation broadcast on a pub/sub channel.
//!
//! - Keys are the L1 keys (keyed BLAKE3 hashes with the shared `cache.key_secret`), hex-encoded
//!   under `redis.key_prefix`; values carry only what rebuilds a [`Session`]: ids, AAL, expiry,
//!   the pre-serialised claims and identity headers. Never a credential.
//! - Every Redis call has a deadline (`redis.timeout`); a failure or timeout is counted, logged at
//!   debug, and the lookup falls back to Kratos. Redis can never fail a check.
//! - Invalidations delete the shared entries (through per-session and per-identity index sets)
//!   and are published; every replica subscribes and drops matching L1 entries. Each
//!   invalidation also leaves a short-lived tombstone in Redis, and entries are written by a Lua
//!   script that refuses to write under a tombstone: a write of an answer fetched *before* the
//!   invalidation that reaches Redis *after* it (a slow replica, a delayed task) cannot
//!   resurrect the revoked session for the rest of its TTL. The subscriber
//!   reconnects and resubscribes on its own; while it is not subscribed, this replica is
//!   *degraded*: L1 entries are trusted for at most `redis.degraded_ttl`, so revocations
//!   published meanwhile still take effect within that bound.
//! - Where the connections go ([`target`]): one server (plain text or TLS), or the master named
//!   by Sentinels. With Sentinel, a supervisor checks the command connection's `ROLE` (every
//!   second and after any failed call); when the master is gone or demoted it asks the sentinels
//!   again, and the subscriber resubscribes on whatever master the supervisor connected to.

mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, RwLock, watch};

use super::cache::key::{CacheKey, hex};
use super::tier::{
    Invalidation, MAX_VALUE_BYTES, Rejected, Sealer, SharedTier, Stored, TierFuture,
};
use crate::config::RedisConfig;
use crate::telemetry::{Metrics, RedisLabels};

/// The shared cache and broadcast.
pub struct RedisTier {
    target: target::Target,
    conn: RwLock<Option<ConnectionManager>>,
    /// Sentinel: the master the command connection is on (`None` while looking for one); the
    /// subscriber follows it.
    master: watch::Sender<Option<redis::Client>>,
    /// Sentinel: a call failed, check that the master is still the master.
    suspect: Notify,
    prefix: String,
    channel: String,
    timeout: Duration,
    subscribed: AtomicBool,
    metrics: Arc<Metrics>,
    /// How long an invalidation's tombstone blocks writes of the entries it covers.
    tomb_window: Duration,
    put_script: redis::Script,
    /// Authenticates entries and messages (keyed from `cache.key_secret`).
    sealer: Sealer,
    /// The invalidate-all generation this replica knows: entries written under an older one
    /// are dead, and writes under an older one are refused by the script.
    generation: AtomicU64,
}

/// Sleeps `delay`, then doubles it up to `max`; false if stopped meanwhile.
async fn back_off(
    stop: &tokio_util::sync::CancellationToken,
    delay: &mut Duration,
    max: Duration,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => return false,
        _ = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(max);
    true
}

/// Sentinel: how often the command connection checks that it is still on the master.
const MASTER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Writes one entry and its index sets, unless a tombstone covers it (0) or the invalidate-all
/// generation moved on (-current generation).
/// KEYS: entry, generation, `ARGV[4]` tombstones, then index sets.
/// ARGV: value, entry PX, index PX, n, the writer's generation.
const PUT_SCRIPT: &str = r"
local g = tonumber(redis.call('GET', KEYS[2]) or '0')
if g ~= tonumber(ARGV[5]) then return -g end
local n = tonumber(ARGV[4])
for i = 3, n + 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = n + 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[3], 'GT')
  redis.call('PEXPIRE', KEYS[i], ARGV[3], 'NX')
end
return 1
";

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("subscribed", &self.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisTier {
    /// Prepares the client; connections are made (and remade) in the background.
    /// `max_fetch` bounds how long a lookup may take (queue wait plus whoami deadline): an
    /// invalidation's tombstone outlives any write of an answer fetched before it.
    pub fn new(
        config: &RedisConfig,
        key_secret: &str,
        metrics: Arc<Metrics>,
        max_fetch: Duration,
    ) -> anyhow::Result<Arc<RedisTier>> {
        Ok(Arc::new(RedisTier {
            target: target::Target::new(config)?,
            conn: RwLock::new(None),
            master: watch::Sender::new(None),
            suspect: Notify::new(),
            prefix: config.key_prefix.clone(),
            channel: config.channel.clone(),
            timeout: config.timeout,
            subscribed: AtomicBool::new(false),
            metrics,
            tomb_window: max_fetch + config.timeout * 2 + Duration::from_secs(1),
            put_script: redis::Script::new(PUT_SCRIPT),
            sealer: Sealer::new(key_secret),
            generation: AtomicU64::new(0),
        }))
    }

    /// Is the invalidation subscription up?
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    fn count(&self, op: &'static str, result: &'static str) {
        self.metrics
            .redis_operations
            .get_or_create(&RedisLabels { op, result })
            .inc();
        if matches!(result, "error" | "timeout") {
            // Sentinel: perhaps the master moved.
            self.suspect.notify_one();
        }
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Some(c.clone());
        }
        None
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
    }

    /// Sentinel: keeps the command connection on the current master. Asks the sentinels for it,
    /// connects, then checks `ROLE` every second and after any failed call; when the master is
    /// gone or no longer the master, drops the connection and asks again.
    async fn follow_master(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut delay = Duration::from_millis(100);
        let mut last_addr = None;
        loop {
            let connected = match self.target.master().await {
                Ok(client) => match client
                    .get_connection_manager_with_config(self.manager_config())
                    .await
                {
                    Ok(conn) => Ok((client, conn)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match connected {
                Ok((client, mut conn)) => {
                    let addr = client.get_connection_info().addr().to_string();
                    if last_addr.as_ref() != Some(&addr) {
                        tracing::info!(master = %addr, "redis master (from sentinel) connected");
                        last_addr = Some(addr);
                    }
                    *self.conn.write().await = Some(conn.clone());
                    self.master.send_replace(Some(client));
                    delay = Duration::from_millis(100);
                    while self.is_master(&mut conn).await {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = self.suspect.notified() => {}
                            _ = tokio::time::sleep(MASTER_CHECK_INTERVAL) => {}
                        }
                    }
                    tracing::warn!(
                        "redis master lost or demoted; asking the sentinels for the current one"
                    );
                    *self.conn.write().await = None;
                    self.master.send_replace(None);
                }
                Err(e) => {
                    self.count("connect", "error");
                    tracing::warn!(error = %e, "no redis master from the sentinels; using the in-process cache and Kratos only");
                }
            }
            if !back_off(&stop, &mut delay, Duration::from_secs(1)).await {
                return;
            }
        }
    }

    /// Does the connection answer `ROLE` as a master?
    async fn is_master(&self, conn: &mut ConnectionManager) -> bool {
        let cmd = redis::cmd("ROLE");
        let role = cmd.query_async::<redis::Role>(conn);
        // Generous: a busy master is not a lost one.
        let deadline = (self.timeout * 4).max(Duration::from_millis(500));
        matches!(
            tokio::time::timeout(deadline, role).await,
            Ok(Ok(redis::Role::Primary { .. }))
        )
    }

    /// Keeps a command connection (ConnectionManager reconnects by itself once it exists).
    async fn connect_loop(
        self: Arc<Self>,
        client: redis::Client,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.conn.read().await.is_some() {
                return;
            }
            match client
                .get_connection_manager_with_config(self.manager_config())
                .await
            {
                Ok(c) => {
                    *self.conn.write().await = Some(c);
                    tracing::info!("redis connected");
                    return;
                }
                Err(e) => {
                    self.count("connect", "error");
                    tracing::warn!(error = %e, "redis unavailable; using the in-process cache and Kratos only");
                }
            }
            if !back_off(&stop, &mut delay, Duration::from_secs(2)).await {
                return;
            }
        }
    }

    /// Starts the background connection and the subscriber; `on_message` applies remote
    /// invalidations to this replica's L1.
    pub fn start(
        self: &Arc<Self>,
        on_message: Arc<dyn Fn(Invalidation) + Send + Sync>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        match self.target.direct() {
            Some(client) => tokio::spawn(self.clone().connect_loop(client.clone(), stop.clone())),
            None => tokio::spawn(self.clone().follow_master(stop.clone())),
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let mut master = this.master.subscribe();
            loop {
                if stop.is_cancelled() {
                    return;
                }
                // One server: its client. Sentinel: the master the command connection is on.
                let client = match this.target.direct() {
                    Some(client) => client.clone(),
                    None => tokio::select! {
                        _ = stop.cancelled() => return,
                        found = master.wait_for(Option::is_some) => match found {
                            Ok(client) => client.clone().expect("waited for Some"),
                            Err(_) => return,
                        },
                    },
                };
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&this.channel).await {
                        Ok(()) => {
                            // Learn the generation before trusting entries again.
                            this.refresh_generation().await;
                            this.subscribed.store(true, Ordering::SeqCst);
                            this.metrics.redis_subscribed.set(1);
                            tracing::info!(channel = %this.channel, "subscribed to invalidations");
                            delay = Duration::from_millis(100);
                            let mut stream = pubsub.into_on_message();
                            loop {
                                tokio::select! {
                                    _ = stop.cancelled() => return,
                                    // Sentinel: the command connection moved to another master.
                                    _ = master.changed() => break,
                                    msg = stream.next() => match msg {
                                        Some(msg) => match this.sealer.open_message(msg.get_payload_bytes()) {
                                            Ok((inv, generation)) => {
                                                if inv == Invalidation::All {
                                                    this.generation.fetch_max(generation, Ordering::SeqCst);
                                                }
                                                this.count("message", "ok");
                                                on_message(inv);
                                            }
                                            Err(rejected) => {
                                                this.count("message", rejected.as_str());
                                                tracing::warn!(reason = rejected.as_str(), "dropped an invalidation message that is not ours");
                                            }
                                        },
                                        None => break,
                                    }
                                }
                            }
                            tracing::warn!(
                                "invalidation subscription lost; shortening cache TTLs until it is back"
                            );
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot subscribe to invalidations"),
                    },
                    Err(e) => tracing::debug!(error = %e, "redis pub/sub unavailable"),
                }
                this.subscribed.store(false, Ordering::SeqCst);
                this.metrics.redis_subscribed.set(0);
                this.count("subscribe", "error");
                if this.target.is_sentinel() && master.has_changed().unwrap_or(false) {
                    // Follow the new master at once.
                    delay = Duration::from_millis(100);
                    continue;
                }
                if !back_off(&stop, &mut delay, Duration::from_secs(1)).await {
                    return;
                }
            }
        });
    }

    fn key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, hex(key))
    }

    /// Reads a shared entry; `None` on miss, error or timeout.
    fn generation_key(&self) -> String {
        format!("{}generation", self.prefix)
    }

    /// Reads the invalidate-all generation from Redis (after (re)subscribing).
    async fn refresh_generation(&self) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        if let Ok(Ok(g)) = tokio::time::timeout(
            self.timeout,
            conn.get::<_, Option<u64>>(self.generation_key()),
        )
        .await
        {
            self.generation.fetch_max(g.unwrap_or(0), Ordering::SeqCst);
        }
    }

    /// Reads a shared entry; `None` on miss, error, timeout, or anything we did not write.
    /// At most [`MAX_VALUE_BYTES`] + 1 bytes are read, whatever is stored.
    async fn get_entry(&self, key: &CacheKey) -> Option<Stored> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(self.key(key)).arg(0).arg(MAX_VALUE_BYTES);
        let read = cmd.query_async::<Vec<u8>>(&mut conn);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(bytes)) if bytes.is_empty() => {
                self.count("get", "miss");
                None
            }
            Ok(Ok(bytes)) => match self.sealer.open_entry(key, &bytes) {
                Ok((generation, stored))
                    if generation >= self.generation.load(Ordering::SeqCst) =>
                {
                    self.count("get", "hit");
                    Some(stored)
                }
                Ok(_) => {
                    self.count("get", "old_generation");
                    None
                }
                Err(rejected) => {
                    self.count("get", rejected.as_str());
                    if rejected == Rejected::Forged {
                        tracing::warn!("dropped a Redis entry that is not ours (MAC mismatch)");
                    }
                    None
                }
            },
            Ok(Err(e)) => {
                self.count("get", "error");
                tracing::debug!(error = %e, "redis GET failed");
                None
            }
            Err(_) => {
                self.count("get", "timeout");
                None
            }
        }
    }

    /// Writes a shared entry and indexes it by session and identity (in the background).
    fn put_entry(self: &Arc<Self>, key: CacheKey, stored: Stored, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.write(&key, &stored, ttl).await;
        });
    }

    /// Tombstone of one key (`k`), session (`s`) or identity (`i`).
    fn tomb(&self, kind: &str, id: &str) -> String {
        format!("{}t:{kind}:{id}", self.prefix)
    }

    /// Index set of one session (`s`) or identity (`i`): the entry keys that belong to it.
    fn index(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// Deletes every entry an index set names, and the set.
    async fn delete_indexed(
        &self,
        conn: &mut ConnectionManager,
        idx: &str,
    ) -> redis::RedisResult<()> {
        let keys: Vec<String> = conn.smembers(idx).await?;
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("DEL").arg(k).ignore();
        }
        pipe.cmd("DEL").arg(idx).ignore();
        pipe.query_async::<()>(conn).await
    }

    /// Writes a shared entry now, unless an invalidation covering it happened within the
    /// tombstone window. Returns whether it was written.
    pub async fn write(&self, key: &CacheKey, stored: &Stored, ttl: Duration) -> bool {
        let Some(mut conn) = self.connection().await else {
            return false;
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let value = self.sealer.seal_entry(key, generation, stored);
        let k = self.key(key);
        let ms = ttl.as_millis().max(1) as u64;
        let mut tombs = vec![self.tomb("k", &hex(key))];
        let mut indexes = Vec::new();
        if let Some((sid, iid)) = stored.ids() {
            tombs.push(self.tomb("s", sid));
            tombs.push(self.tomb("i", iid));
            indexes.push(self.index("s", sid));
            indexes.push(self.index("i", iid));
        }
        let mut inv = self.put_script.prepare_invoke();
        inv.key(&k);
        inv.key(self.generation_key());
        for t in &tombs {
            inv.key(t);
        }
        for i in &indexes {
            inv.key(i);
        }
        // Index sets outlive their longest member a little; members may be stale.
        inv.arg(value)
            .arg(ms)
            .arg(ms + 60_000)
            .arg(tombs.len())
            .arg(generation);
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(1)) => {
                self.count("set", "ok");
                true
            }
            Ok(Ok(0)) => {
                self.count("set", "tombstoned");
                false
            }
            Ok(Ok(current)) => {
                // An invalidate-all happened (perhaps while our subscription was down).
                self.generation
                    .fetch_max(current.unsigned_abs(), Ordering::SeqCst);
                self.count("set", "old_generation");
                false
            }
            Ok(Err(e)) => {
                self.count("set", "error");
                tracing::debug!(error = %e, "redis SET failed");
                false
            }
            Err(_) => {
                self.count("set", "timeout");
                false
            }
        }
    }

    /// Deletes the shared entries an invalidation covers and publishes it to every replica.
    /// Invalidating everything is one INCR of the generation and one message, whatever the
    /// number of keys. Returns whether the message was published.
    async fn publish(&self, inv: &Invalidation) -> bool {
        let Some(mut conn) = self.connection().await else {
            self.count("publish", "error");
            tracing::warn!(
                "cannot broadcast an invalidation: redis is not connected; other replicas rely on their TTL"
            );
            return false;
        };
        let window = self.tomb_window.as_millis().max(1) as u64;
        let work = async {
            let generation = match inv {
                Invalidation::All => {
                    let g: u64 = conn.incr(self.generation_key(), 1).await?;
                    self.generation.fetch_max(g, Ordering::SeqCst);
                    g
                }
                _ => {
                    let tomb = match inv {
                        Invalidation::Key(hex_key) => self.tomb("k", hex_key),
                        Invalidation::Session(id) => self.tomb("s", id),
                        Invalidation::Identity(id) => self.tomb("i", id),
                        Invalidation::All => unreachable!("handled above"),
                    };
                    // Tombstone first: from here on no write of a covered entry lands, so the
                    // deletes below are final.
                    let _: () = redis::cmd("SET")
                        .arg(&tomb)
                        .arg(1)
                        .arg("PX")
                        .arg(window)
                        .query_async(&mut conn)
                        .await?;
                    match inv {
                        Invalidation::Key(hex_key) => {
                            let _: () = conn.del(format!("{}{hex_key}", self.prefix)).await?;
                        }
                        Invalidation::Session(id) => {
                            self.delete_indexed(&mut conn, &self.index("s", id)).await?;
                        }
                        Invalidation::Identity(id) => {
                            self.delete_indexed(&mut conn, &self.index("i", id)).await?;
                        }
                        Invalidation::All => {}
                    }
                    self.generation.load(Ordering::SeqCst)
                }
            };
            let payload = self.sealer.seal_message(inv, generation);
            let _: () = conn.publish(&self.channel, payload).await?;
            Ok::<(), redis::RedisError>(())
        };
        match tokio::time::timeout(self.timeout * 4, work).await {
            Ok(Ok(())) => {
                self.count("publish", "ok");
                true
            }
            Ok(Err(e)) => {
                self.count("publish", "error");
                tracing::warn!(error = %e, "cannot broadcast an invalidation; other replicas rely on their TTL");
                false
            }
            Err(_) => {
                self.count("publish", "timeout");
                tracing::warn!(
                    "timed out broadcasting an invalidation; other replicas rely on their TTL"
                );
                false
            }
        }
    }
}

impl SharedTier for RedisTier {
    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Stored>> {
        Box::pin(self.get_entry(key))
    }

    fn put(self: Arc<Self>, key: CacheKey, stored: Stored, ttl: Duration) {
        self.put_entry(key, stored, ttl);
    }

    fn broadcast<'a>(&'a self, inv: &'a Invalidation) -> TierFuture<'a, bool> {
        Box::pin(self.publish(inv))
    }

    fn healthy(&self) -> bool {
        self.subscribed()
    }
}

#[cfg(test)]
#[path = "../../tests/support/redis.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Aal, Outcome, Session};
    use redis::AsyncCommands;
    use std::time::SystemTime;

    fn active(sid: &str, iid: &str) -> Stored {
        let s = Session {
            id: sid.into(),
            identity_id: iid.into(),
            aal: Aal::Aal1,
            expires_at: SystemTime::now() + Duration::from_secs(600),
            extra_claims: "".into(),
            identity_headers: vec![],
            generation: crate::session::next_generation(),
            authenticated_at: None,
            facts: Box::new([]),
        };
        Stored::new(
            &Outcome::Active(Arc::new(s)),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    /// A real redis-server: a write of an answer fetched before an invalidation, landing after
    /// it (a slow replica), must not resurrect the entry; once the window is over, writes land.
    #[tokio::test]
    async fn late_writes_cannot_resurrect_invalidated_entries() {
        let server = super::redis_server::Redis::start().await;
        let config = RedisConfig {
            url: Some(server.url()),
            timeout: Duration::from_millis(200),
            ..RedisConfig::default()
        };
        // Window: 0 + 2 × 200 ms + 1 s.
        let shared =
            RedisTier::new(&config, &"k".repeat(40), Metrics::new(), Duration::ZERO).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        shared.start(Arc::new(|_| {}), stop.clone());
        for _ in 0..200 {
            if shared.subscribed() && shared.connection().await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(shared.subscribed(), "not connected to redis-server");
        let ttl = Duration::from_secs(60);
        let (k1, k2, k3, k4) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);

        assert!(shared.write(&k1, &active("s1", "i1"), ttl).await);
        assert!(shared.get_entry(&k1).await.is_some());
        shared.publish(&Invalidation::Session("s1".into())).await;
        assert!(
            shared.get_entry(&k1).await.is_none(),
            "invalidation deletes"
        );
        assert!(
            !shared.write(&k1, &active("s1", "i1"), ttl).await,
            "a late write of the revoked session is refused"
        );
        assert!(shared.get_entry(&k1).await.is_none());
        // Other sessions are not affected.
        assert!(shared.write(&k2, &active("s2", "i2"), ttl).await);

        shared.publish(&Invalidation::Identity("i2".into())).await;
        assert!(shared.get_entry(&k2).await.is_none());
        assert!(!shared.write(&k3, &active("s3", "i2"), ttl).await);

        let none = Stored::new(&Outcome::Unauthenticated, ttl, ttl).unwrap();
        shared.publish(&Invalidation::Key(hex(&k4))).await;
        assert!(!shared.write(&k4, &none, ttl).await);
        assert!(
            shared.write(&k3, &none, ttl).await,
            "other keys are written"
        );

        assert!(shared.publish(&Invalidation::All).await);
        assert!(
            shared.get_entry(&k3).await.is_none(),
            "everything is dead: one generation on"
        );
        let mut conn = shared.connection().await.unwrap();
        let generation: u64 = conn.get("sessiongate:generation").await.unwrap();
        assert_eq!(generation, 1, "one key for invalidate-all");
        // A replica still on the old generation cannot write.
        shared.generation.store(0, Ordering::SeqCst);
        assert!(!shared.write(&k2, &active("s9", "i9"), ttl).await);
        assert_eq!(
            shared.generation.load(Ordering::SeqCst),
            1,
            "and learns the new one"
        );
        let tomb: bool = conn.exists("sessiongate:t:s:s1").await.unwrap();
        assert!(tomb, "invalidating everything keeps the other tombstones");

        tokio::time::sleep(Duration::from_millis(1700)).await;
        assert!(
            shared.write(&k1, &active("s1", "i1"), ttl).await,
            "tombstones expire after the window"
        );
        assert!(shared.get_entry(&k1).await.is_some());
        stop.cancel();
    }
}
