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
//! - Two families of entries ([`Space`]) share the connections: sessions, and bearer-token
//!   answers (OAuth2 introspection) under their own key segment (`tok:`), MAC domain, channel
//!   (`<channel>:tokens`) and invalidate-all generation. The token family is generic here:
//!   sealed bytes, tags (index sets and tombstones) and [`Notice`] messages; what they mean is
//!   up to the caller (`app` adapts it to the introspection cache's seam).
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
    Invalidation, MAX_VALUE_BYTES, Notice, Rejected, Sealer, SharedTier, Stored, TierFuture,
    valid_tag,
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
    /// The same for [`Space::Tokens`].
    token_generation: AtomicU64,
}

/// A family of entries in the shared tier. Each has its own key segment under
/// `redis.key_prefix`, MAC domain (an entry or message of one never opens as the other's),
/// pub/sub channel and invalidate-all generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Kratos session answers (keys `<prefix><hex>`, messages on `redis.channel`).
    Sessions,
    /// Bearer-token answers (keys `<prefix>tok:<hex>`, messages on `<redis.channel>:tokens`).
    Tokens,
}

impl Space {
    fn segment(self) -> &'static str {
        match self {
            Space::Sessions => "",
            Space::Tokens => "tok:",
        }
    }

    fn entry_domain(self) -> &'static [u8] {
        match self {
            Space::Sessions => b"entry",
            Space::Tokens => b"token entry",
        }
    }

    /// MAC domain of [`Notice`] messages.
    fn notice_domain(self) -> &'static [u8] {
        match self {
            // Sessions use their own message format (`Invalidation`).
            Space::Sessions => b"session notice",
            Space::Tokens => b"token notice",
        }
    }

    /// The `op` label of `redis_operations` for `op` in this space.
    fn op(self, op: &'static str) -> &'static str {
        match (self, op) {
            (Space::Sessions, op) => op,
            (Space::Tokens, "get") => "token_get",
            (Space::Tokens, "set") => "token_set",
            (Space::Tokens, "publish") => "token_publish",
            (Space::Tokens, "message") => "token_message",
            (Space::Tokens, _) => "token_other",
        }
    }
}

/// What an invalidation deletes in Redis.
enum Covers<'a> {
    /// One entry (hex key).
    Key(&'a str),
    /// Every entry of a tag.
    Tag(&'a str, &'a str),
    /// The whole space (a new generation).
    All,
}

/// A handler of [`Notice`]s received for [`Space::Tokens`].
pub type NoticeHandler = Arc<dyn Fn(Notice) + Send + Sync>;

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
            token_generation: AtomicU64::new(0),
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
        self.start_with(on_message, None, stop);
    }

    /// Like [`RedisTier::start`]; with `on_notice`, also subscribes to [`Space::Tokens`]'
    /// channel and hands it every authenticated notice.
    pub fn start_with(
        self: &Arc<Self>,
        on_message: Arc<dyn Fn(Invalidation) + Send + Sync>,
        on_notice: Option<NoticeHandler>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        match self.target.direct() {
            Some(client) => tokio::spawn(self.clone().connect_loop(client.clone(), stop.clone())),
            None => tokio::spawn(self.clone().follow_master(stop.clone())),
        };
        let this = self.clone();
        let mut channels = vec![self.channel.clone()];
        if on_notice.is_some() {
            channels.push(self.channel_of(Space::Tokens));
        }
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
                    Ok(mut pubsub) => match pubsub.subscribe(&channels).await {
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
                                        Some(msg) if msg.get_channel_name() == this.channel => {
                                            this.received(msg.get_payload_bytes(), &on_message);
                                        }
                                        Some(msg) => {
                                            if let Some(on_notice) = &on_notice {
                                                this.received_notice(Space::Tokens, msg.get_payload_bytes(), on_notice);
                                            }
                                        }
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

    /// A message on the sessions channel: authenticated, then applied.
    fn received(&self, payload: &[u8], on_message: &Arc<dyn Fn(Invalidation) + Send + Sync>) {
        match self.sealer.open_message(payload) {
            Ok((inv, generation)) => {
                if inv == Invalidation::All {
                    self.generation.fetch_max(generation, Ordering::SeqCst);
                }
                self.count("message", "ok");
                on_message(inv);
            }
            Err(rejected) => {
                self.count("message", rejected.as_str());
                tracing::warn!(
                    reason = rejected.as_str(),
                    "dropped an invalidation message that is not ours"
                );
            }
        }
    }

    /// A message on another space's channel: authenticated, then handed over.
    fn received_notice(&self, space: Space, payload: &[u8], on_notice: &NoticeHandler) {
        match self.sealer.open_notice(space.notice_domain(), payload) {
            Ok((notice, generation)) => {
                if notice == Notice::All {
                    self.generation_of(space)
                        .fetch_max(generation, Ordering::SeqCst);
                }
                self.count(space.op("message"), "ok");
                on_notice(notice);
            }
            Err(rejected) => {
                self.count(space.op("message"), rejected.as_str());
                tracing::warn!(
                    reason = rejected.as_str(),
                    "dropped an invalidation notice that is not ours"
                );
            }
        }
    }

    fn channel_of(&self, space: Space) -> String {
        match space {
            Space::Sessions => self.channel.clone(),
            Space::Tokens => format!("{}:tokens", self.channel),
        }
    }

    fn generation_of(&self, space: Space) -> &AtomicU64 {
        match space {
            Space::Sessions => &self.generation,
            Space::Tokens => &self.token_generation,
        }
    }

    fn key_in(&self, space: Space, key: &CacheKey) -> String {
        self.key_hex(space, &hex(key))
    }

    fn key_hex(&self, space: Space, hex_key: &str) -> String {
        format!("{}{}{hex_key}", self.prefix, space.segment())
    }

    fn generation_key_in(&self, space: Space) -> String {
        format!("{}{}generation", self.prefix, space.segment())
    }

    /// Reads the invalidate-all generations from Redis (after (re)subscribing).
    async fn refresh_generation(&self) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        for space in [Space::Sessions, Space::Tokens] {
            if let Ok(Ok(g)) = tokio::time::timeout(
                self.timeout,
                conn.get::<_, Option<u64>>(self.generation_key_in(space)),
            )
            .await
            {
                self.generation_of(space)
                    .fetch_max(g.unwrap_or(0), Ordering::SeqCst);
            }
        }
    }

    /// Reads a shared session entry; `None` on miss, error, timeout, or anything we did not
    /// write. At most [`MAX_VALUE_BYTES`] + 1 bytes are read, whatever is stored.
    async fn get_entry(&self, key: &CacheKey) -> Option<Stored> {
        self.get_in(Space::Sessions, key, |json| {
            serde_json::from_slice(json).ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads the entry under `key` in `space`: `Ok(None)` on a miss (or an error or timeout,
    /// counted), `Err` when what is stored is not ours, too large, of an old generation, or not
    /// what `decode` takes ([`Rejected::Malformed`]). At most [`MAX_VALUE_BYTES`] + 1 bytes
    /// are read, whatever is stored.
    pub async fn get_in<T>(
        &self,
        space: Space,
        key: &CacheKey,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, Rejected> {
        let op = space.op("get");
        let Some(mut conn) = self.connection().await else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(self.key_in(space, key)).arg(0).arg(MAX_VALUE_BYTES);
        let read = cmd.query_async::<Vec<u8>>(&mut conn);
        let bytes = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(bytes)) if bytes.is_empty() => {
                self.count(op, "miss");
                return Ok(None);
            }
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                self.count(op, "error");
                tracing::debug!(error = %e, "redis GET failed");
                return Ok(None);
            }
            Err(_) => {
                self.count(op, "timeout");
                return Ok(None);
            }
        };
        let opened = self
            .sealer
            .open(space.entry_domain(), key, &bytes)
            .and_then(|(generation, payload)| {
                if generation < self.generation_of(space).load(Ordering::SeqCst) {
                    return Err(Rejected::OldGeneration);
                }
                decode(payload).ok_or(Rejected::Malformed)
            });
        match opened {
            Ok(value) => {
                self.count(op, "hit");
                Ok(Some(value))
            }
            Err(rejected) => {
                self.count(op, rejected.as_str());
                if rejected == Rejected::Forged {
                    tracing::warn!("dropped a Redis entry that is not ours (MAC mismatch)");
                }
                Err(rejected)
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

    /// Like [`RedisTier::write_in`], in the background.
    pub fn put_in(
        self: &Arc<Self>,
        space: Space,
        key: CacheKey,
        payload: Vec<u8>,
        ttl: Duration,
        tags: Vec<(&'static str, String)>,
    ) {
        if ttl.is_zero() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let tags: Vec<(&str, &str)> = tags.iter().map(|(t, id)| (*t, id.as_str())).collect();
            this.write_in(space, &key, &payload, ttl, &tags).await;
        });
    }

    /// Tombstone of one key (`k`) or tag in `space`.
    fn tomb(&self, space: Space, kind: &str, id: &str) -> String {
        format!("{}{}t:{kind}:{id}", self.prefix, space.segment())
    }

    /// Index set of one tag in `space`: the entry keys written with it.
    fn index(&self, space: Space, kind: &str, id: &str) -> String {
        format!("{}{}{kind}:{id}", self.prefix, space.segment())
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

    /// Writes a shared session entry now, unless an invalidation covering it happened within
    /// the tombstone window. Returns whether it was written.
    pub async fn write(&self, key: &CacheKey, stored: &Stored, ttl: Duration) -> bool {
        let json = serde_json::to_vec(stored).unwrap_or_default();
        let tags: Vec<(&str, &str)> = match stored.ids() {
            Some((sid, iid)) => vec![("s", sid), ("i", iid)],
            None => vec![],
        };
        self.write_in(Space::Sessions, key, &json, ttl, &tags).await
    }

    /// Seals `payload` for `key` in `space` and writes it for `ttl`, indexed under each tag,
    /// unless an invalidation of the key or of one of the tags happened within the tombstone
    /// window, or an invalidate-all moved the generation on. Returns whether it was written.
    /// A tag that [`valid_tag`] refuses, or a sealed value over [`MAX_VALUE_BYTES`], is not
    /// written: what could not be invalidated or read back is not shared.
    pub async fn write_in(
        &self,
        space: Space,
        key: &CacheKey,
        payload: &[u8],
        ttl: Duration,
        tags: &[(&str, &str)],
    ) -> bool {
        let op = space.op("set");
        if !tags.iter().all(|(tag, id)| valid_tag(tag, id)) {
            self.count(op, "malformed");
            return false;
        }
        let generation = self.generation_of(space).load(Ordering::SeqCst);
        let value = self
            .sealer
            .seal(space.entry_domain(), key, generation, payload);
        if value.len() > MAX_VALUE_BYTES {
            self.count(op, "oversized");
            return false;
        }
        let Some(mut conn) = self.connection().await else {
            return false;
        };
        let ms = ttl.as_millis().max(1) as u64;
        let mut tombs = vec![self.tomb(space, "k", &hex(key))];
        let mut indexes = Vec::new();
        for (tag, id) in tags {
            tombs.push(self.tomb(space, tag, id));
            indexes.push(self.index(space, tag, id));
        }
        let mut inv = self.put_script.prepare_invoke();
        inv.key(self.key_in(space, key));
        inv.key(self.generation_key_in(space));
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
                self.count(op, "ok");
                true
            }
            Ok(Ok(0)) => {
                self.count(op, "tombstoned");
                false
            }
            Ok(Ok(current)) => {
                // An invalidate-all happened (perhaps while our subscription was down).
                self.generation_of(space)
                    .fetch_max(current.unsigned_abs(), Ordering::SeqCst);
                self.count(op, "old_generation");
                false
            }
            Ok(Err(e)) => {
                self.count(op, "error");
                tracing::debug!(error = %e, "redis SET failed");
                false
            }
            Err(_) => {
                self.count(op, "timeout");
                false
            }
        }
    }

    /// Deletes the shared session entries an invalidation covers and publishes it to every
    /// replica. Returns whether the message was published.
    async fn publish(&self, inv: &Invalidation) -> bool {
        let covers = match inv {
            Invalidation::Key(hex_key) => Covers::Key(hex_key),
            Invalidation::Session(id) => Covers::Tag("s", id),
            Invalidation::Identity(id) => Covers::Tag("i", id),
            Invalidation::All => Covers::All,
        };
        self.publish_in(Space::Sessions, covers, |g| {
            self.sealer.seal_message(inv, g)
        })
        .await
    }

    /// Deletes the entries of `space` a notice covers and publishes it on the space's channel
    /// (every replica subscribed with [`RedisTier::start_with`] receives it). Returns whether it
    /// was published.
    pub async fn notify(&self, space: Space, notice: &Notice) -> bool {
        let covers = match notice {
            Notice::Key(hex_key) => Covers::Key(hex_key),
            Notice::Tag(tag, id) => Covers::Tag(tag, id),
            Notice::All => Covers::All,
        };
        self.publish_in(space, covers, |g| {
            self.sealer.seal_notice(space.notice_domain(), notice, g)
        })
        .await
    }

    /// Tombstones and deletes what `covers` names in `space` (invalidating everything is one
    /// INCR of the space's generation, whatever the number of keys), then publishes the
    /// message `seal` makes for the generation. Returns whether it was published.
    async fn publish_in(
        &self,
        space: Space,
        covers: Covers<'_>,
        seal: impl FnOnce(u64) -> String,
    ) -> bool {
        let op = space.op("publish");
        let Some(mut conn) = self.connection().await else {
            self.count(op, "error");
            tracing::warn!(
                "cannot broadcast an invalidation: redis is not connected; other replicas rely on their TTL"
            );
            return false;
        };
        let window = self.tomb_window.as_millis().max(1) as u64;
        let work = async {
            let generation = match covers {
                Covers::All => {
                    let g: u64 = conn.incr(self.generation_key_in(space), 1).await?;
                    self.generation_of(space).fetch_max(g, Ordering::SeqCst);
                    g
                }
                Covers::Key(hex_key) => {
                    self.bury(&mut conn, &self.tomb(space, "k", hex_key), window)
                        .await?;
                    let _: () = conn.del(self.key_hex(space, hex_key)).await?;
                    self.generation_of(space).load(Ordering::SeqCst)
                }
                Covers::Tag(tag, id) => {
                    self.bury(&mut conn, &self.tomb(space, tag, id), window)
                        .await?;
                    self.delete_indexed(&mut conn, &self.index(space, tag, id))
                        .await?;
                    self.generation_of(space).load(Ordering::SeqCst)
                }
            };
            let _: () = conn
                .publish(self.channel_of(space), seal(generation))
                .await?;
            Ok::<(), redis::RedisError>(())
        };
        match tokio::time::timeout(self.timeout * 4, work).await {
            Ok(Ok(())) => {
                self.count(op, "ok");
                true
            }
            Ok(Err(e)) => {
                self.count(op, "error");
                tracing::warn!(error = %e, "cannot broadcast an invalidation; other replicas rely on their TTL");
                false
            }
            Err(_) => {
                self.count(op, "timeout");
                tracing::warn!(
                    "timed out broadcasting an invalidation; other replicas rely on their TTL"
                );
                false
            }
        }
    }

    /// Sets a tombstone for `window` ms. Tombstone first: from then on no write of a covered
    /// entry lands, so the deletes that follow are final.
    async fn bury(
        &self,
        conn: &mut ConnectionManager,
        tomb: &str,
        window: u64,
    ) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(tomb)
            .arg(1)
            .arg("PX")
            .arg(window)
            .query_async(conn)
            .await
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
            minted: Default::default(),
        };
        Stored::new(
            &Outcome::Active(Arc::new(s)),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    /// A tier on `server` (timeout 200 ms, no fetch time), connected and subscribed.
    async fn connected(
        server: &super::redis_server::Redis,
        on_notice: Option<NoticeHandler>,
    ) -> (Arc<RedisTier>, tokio_util::sync::CancellationToken) {
        let config = RedisConfig {
            url: Some(server.url()),
            timeout: Duration::from_millis(200),
            ..RedisConfig::default()
        };
        let shared =
            RedisTier::new(&config, &"k".repeat(40), Metrics::new(), Duration::ZERO).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        shared.start_with(Arc::new(|_| {}), on_notice, stop.clone());
        for _ in 0..200 {
            if shared.subscribed() && shared.connection().await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(shared.subscribed(), "not connected to redis-server");
        (shared, stop)
    }

    /// A real redis-server: a write of an answer fetched before an invalidation, landing after
    /// it (a slow replica), must not resurrect the entry; once the window is over, writes land.
    #[tokio::test]
    async fn late_writes_cannot_resurrect_invalidated_entries() {
        let server = super::redis_server::Redis::start().await;
        // Window: 0 + 2 × 200 ms + 1 s.
        let (shared, stop) = connected(&server, None).await;
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

    /// The token space: sealed bytes under `tok:`, tags, notices. A late write after an
    /// invalidation (by tag, by key, of everything) does not resurrect; an entry forged, moved
    /// to another key or to the other space is refused; notices reach the handler.
    #[tokio::test]
    async fn token_space_late_writes_forgeries_and_notices() {
        let server = super::redis_server::Redis::start().await;
        let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = notices.clone();
        let on_notice: NoticeHandler = Arc::new(move |n| seen.lock().unwrap().push(n));
        let (shared, stop) = connected(&server, Some(on_notice)).await;
        let ttl = Duration::from_secs(60);
        let (k1, k2, k3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let raw = |b: &[u8]| Some(b.to_vec());
        let get = |k: [u8; 32]| {
            let shared = shared.clone();
            async move { shared.get_in(Space::Tokens, &k, raw).await }
        };
        let alice = [("sub", "alice"), ("cli", "app")];

        assert!(
            shared
                .write_in(Space::Tokens, &k1, b"one", ttl, &alice)
                .await
        );
        assert_eq!(get(k1).await, Ok(Some(b"one".to_vec())));
        let mut conn = shared.connection().await.unwrap();
        let members: Vec<String> = conn.smembers("sessiongate:tok:sub:alice").await.unwrap();
        assert_eq!(members, [format!("sessiongate:tok:{}", hex(&k1))]);
        assert!(
            shared.get_entry(&k1).await.is_none(),
            "not a session entry: another key segment"
        );

        // Forged: wrong MAC, moved to another key, or a session entry put in the token space.
        let _: () = conn
            .set(format!("sessiongate:tok:{}", hex(&k2)), "f00d.0.{}")
            .await
            .unwrap();
        assert_eq!(get(k2).await, Err(Rejected::Forged));
        let sealed: Vec<u8> = conn
            .get(format!("sessiongate:tok:{}", hex(&k1)))
            .await
            .unwrap();
        let _: () = conn
            .set(format!("sessiongate:tok:{}", hex(&k2)), &sealed)
            .await
            .unwrap();
        assert_eq!(get(k2).await, Err(Rejected::Forged), "moved to another key");
        assert!(shared.write(&k3, &active("s3", "i3"), ttl).await);
        let session_entry: Vec<u8> = conn.get(format!("sessiongate:{}", hex(&k3))).await.unwrap();
        let _: () = conn
            .set(format!("sessiongate:tok:{}", hex(&k3)), &session_entry)
            .await
            .unwrap();
        assert_eq!(
            get(k3).await,
            Err(Rejected::Forged),
            "moved from the sessions"
        );
        let _: () = conn
            .set(
                format!("sessiongate:tok:{}", hex(&k3)),
                vec![b'x'; MAX_VALUE_BYTES + 10],
            )
            .await
            .unwrap();
        assert_eq!(get(k3).await, Err(Rejected::Oversized));
        assert_eq!(
            shared.get_in(Space::Tokens, &k1, |_| None::<()>).await,
            Err(Rejected::Malformed),
            "not what the caller decodes"
        );

        // By tag: deleted, and a late write under the tag is refused.
        assert!(
            shared
                .notify(Space::Tokens, &Notice::Tag("cli".into(), "app".into()))
                .await
        );
        assert_eq!(get(k1).await, Ok(None));
        assert!(
            !shared
                .write_in(Space::Tokens, &k1, b"one", ttl, &alice)
                .await
        );
        assert!(
            !shared
                .write_in(Space::Tokens, &k2, b"two", ttl, &[("cli", "app")])
                .await
        );
        assert_eq!(get(k1).await, Ok(None));
        // By key.
        assert!(shared.write_in(Space::Tokens, &k2, b"two", ttl, &[]).await);
        assert!(shared.notify(Space::Tokens, &Notice::Key(hex(&k2))).await);
        assert_eq!(get(k2).await, Ok(None));
        assert!(!shared.write_in(Space::Tokens, &k2, b"two", ttl, &[]).await);
        // Everything: a new generation of the token space only.
        assert!(
            shared
                .write_in(Space::Tokens, &k3, b"three", ttl, &[])
                .await
        );
        assert!(shared.write(&[9u8; 32], &active("s9", "i9"), ttl).await);
        assert!(shared.notify(Space::Tokens, &Notice::All).await);
        assert_eq!(get(k3).await, Err(Rejected::OldGeneration));
        assert!(
            shared.get_entry(&[9u8; 32]).await.is_some(),
            "sessions live on"
        );
        let g: u64 = conn.get("sessiongate:tok:generation").await.unwrap();
        assert_eq!(g, 1);
        // Tags that could not be invalidated are not written.
        assert!(
            !shared
                .write_in(Space::Tokens, &[5u8; 32], b"x", ttl, &[("t", "x")])
                .await
        );

        // Every notice reached the subscriber (ours included), authenticated; others are not.
        let _: () = conn
            .publish("sessiongate:invalidations:tokens", r#"{"kind":"all"}"#)
            .await
            .unwrap();
        for _ in 0..200 {
            if notices.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            *notices.lock().unwrap(),
            [
                Notice::Tag("cli".into(), "app".into()),
                Notice::Key(hex(&k2)),
                Notice::All
            ]
        );
        stop.cancel();
    }
}
