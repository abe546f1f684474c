//! RFC 7662 token introspection as a source: [`IntrospectionClient`] asks the endpoint (bounded
//! concurrency with a bounded wait, a deadline, a body cap, client authentication that never
//! reaches a log) and [`IntrospectionCache`] remembers answers by keyed hash of the token:
//! active for min(`ttl`, exp − now), inactive for `negative_ttl`, errors never. Concurrent
//! lookups of one token share one call. Answers can be dropped by token, subject, client id or
//! all at once; tombstones keep a call already in flight from bringing them back.
//!
//! With a shared tier ([`super::shared::IntrospectionTier`], Redis), a miss here asks the tier
//! before the endpoint, every answer the endpoint gives is stored there for the same lifetime,
//! and invalidations reach every replica (the tier deletes its copies; each replica's
//! subscriber calls [`IntrospectionCache::apply_remote`]). While the tier says it is not
//! receiving invalidations (degraded), answers here are trusted for at most
//! `redis.degraded_ttl` and the tier is neither read nor written.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use futures_util::future::Shared;
use http::HeaderValue;
use moka::Expiry;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::fetch::{self, FetchError};
use super::metrics::Oauth2Metrics;
use super::shared::{
    AnswerInvalidation, IntrospectionTier, NotBroadcast, SharedRead, StoredAnswer,
};
use super::{Outcome, Rejection, SourceError, TokenHasher, TokenPrincipal, lock};
use crate::config::{ClientAuth, IntrospectionConfig};
use crate::telemetry::{ResultLabel, StatusLabel};

/// Longest token sent for introspection; longer is rejected as malformed without a call.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What the endpoint said about a token.
#[derive(Debug)]
pub enum Introspected {
    /// `active: true` (and not expired, and an access token).
    Active(TokenPrincipal),
    /// `active: false`, expired, or not an access token.
    Inactive,
}

/// Boxed future of [`Introspector::introspect`].
pub type IntrospectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Introspected, SourceError>> + Send + 'a>>;

/// Something that can introspect a token (the HTTP client; a fake in tests).
pub trait Introspector: Send + Sync + 'static {
    /// Asks about `token`.
    fn introspect<'a>(&'a self, token: &'a str) -> IntrospectFuture<'a>;
}

/// Calls an RFC 7662 endpoint.
pub struct IntrospectionClient {
    http: reqwest::Client,
    url: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    queue_timeout: Duration,
    max_body_bytes: usize,
    /// Bounds `exp` of answers without one.
    ttl: Duration,
    permits: Semaphore,
    metrics: Arc<Oauth2Metrics>,
}

impl std::fmt::Debug for IntrospectionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionClient")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

fn form_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl IntrospectionClient {
    /// Builds the client and its `Authorization` header once.
    pub fn new(
        config: &IntrospectionConfig,
        metrics: Arc<Oauth2Metrics>,
    ) -> Result<IntrospectionClient, String> {
        config.validate()?;
        let authorization = match &config.auth {
            ClientAuth::None => None,
            // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            ClientAuth::Basic {
                client_id,
                client_secret,
            } => {
                use base64::Engine;
                let pair = format!(
                    "{}:{}",
                    form_encode(client_id),
                    form_encode(client_secret.expose())
                );
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            ClientAuth::Bearer { token } => Some(format!("Bearer {}", token.expose())),
        };
        let authorization = authorization
            .map(|v| {
                let mut v = HeaderValue::try_from(v)
                    .map_err(|_| "introspection: client credentials are not header-safe")?;
                v.set_sensitive(true);
                Ok::<_, String>(v)
            })
            .transpose()?;
        Ok(IntrospectionClient {
            http: fetch::client(config.timeout),
            url: config.url.clone(),
            authorization,
            timeout: config.timeout,
            queue_timeout: config.queue_timeout,
            max_body_bytes: config.max_body_bytes,
            ttl: config.ttl,
            permits: Semaphore::new(config.max_concurrency),
            metrics,
        })
    }

    async fn call(&self, token: &str) -> Result<Introspected, SourceError> {
        let _permit = match tokio::time::timeout(self.queue_timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                self.metrics.introspection_shed.inc();
                return Err(SourceError::Overloaded);
            }
        };
        self.metrics.introspection_in_flight.inc();
        let mut req = self
            .http
            .post(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(format!(
                "token={}&token_type_hint=access_token",
                form_encode(token)
            ));
        if let Some(a) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, a.clone());
        }
        let result = fetch::send(req, self.timeout, self.max_body_bytes).await;
        self.metrics.introspection_in_flight.dec();
        let (status, result) = match result {
            Ok(body) => match self.parse(&body) {
                Some(answer) => ("200", Ok(answer)),
                None => ("body", Err(SourceError::Unavailable("body"))),
            },
            Err(FetchError::TooLarge) => ("body", Err(SourceError::Unavailable("body"))),
            Err(e) => (e.as_str(), Err(SourceError::Unavailable(e.as_str()))),
        };
        self.metrics
            .introspection_requests
            .get_or_create(&StatusLabel { status })
            .inc();
        if let Err(e) = &result {
            tracing::warn!(status, error = %e, "introspection call failed");
        }
        result
    }

    /// `None` when the answer is not an RFC 7662 answer.
    fn parse(&self, body: &[u8]) -> Option<Introspected> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let active = v.get("active")?.as_bool()?;
        if !active {
            return Some(Introspected::Inactive);
        }
        if !is_access_token(&v) {
            return Some(Introspected::Inactive);
        }
        let now = SystemTime::now();
        let expires_at = match v.get("exp") {
            Some(exp) => UNIX_EPOCH + Duration::from_secs(exp.as_u64()?),
            None => now + self.ttl,
        };
        if expires_at <= now {
            return Some(Introspected::Inactive);
        }
        Some(Introspected::Active(TokenPrincipal::from_claims(
            v, expires_at,
        )))
    }
}

/// A refresh token is "active" too (Hydra says `token_use: refresh_token`); it is not an
/// access token.
pub(super) fn is_access_token(answer: &Value) -> bool {
    answer
        .get("token_use")
        .and_then(Value::as_str)
        .is_none_or(|u| u == "access_token")
}

impl Introspector for IntrospectionClient {
    fn introspect<'a>(&'a self, token: &'a str) -> IntrospectFuture<'a> {
        Box::pin(self.call(token))
    }
}

/// A remembered answer.
#[derive(Debug)]
struct Entry {
    principal: Option<Arc<TokenPrincipal>>,
    until: Instant,
    /// When it was remembered (bounds its use while the shared tier is degraded).
    stored_at: Instant,
    weight: u32,
}

struct UntilExpiry;

impl Expiry<[u8; 32], Arc<Entry>> for UntilExpiry {
    fn expire_after_create(&self, _: &[u8; 32], v: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
}

type FetchResult = Result<Arc<Entry>, SourceError>;
type SharedFetch = Shared<Pin<Box<dyn Future<Output = FetchResult> + Send>>>;

/// What an invalidation covered, remembered for as long as a call can take.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tomb {
    Key([u8; 32]),
    Subject(String),
    Client(String),
    All,
}

struct Inner {
    entries: moka::sync::Cache<[u8; 32], Arc<Entry>>,
    source: Arc<dyn Introspector>,
    hasher: TokenHasher,
    ttl: Duration,
    negative_ttl: Duration,
    required_scopes: Vec<String>,
    inflight: Mutex<HashMap<[u8; 32], (u64, SharedFetch)>>,
    next_flight: std::sync::atomic::AtomicU64,
    tombs: Mutex<Vec<(Tomb, Instant)>>,
    tomb_ttl: Duration,
    metrics: Arc<Oauth2Metrics>,
    /// The tier shared by replicas, if any.
    shared: Option<Arc<dyn IntrospectionTier>>,
    /// How long an answer is trusted while the shared tier misses invalidations.
    degraded_ttl: Duration,
}

/// The cache in front of an [`Introspector`].
#[derive(Clone)]
pub struct IntrospectionCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IntrospectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionCache")
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl IntrospectionCache {
    /// A cache in front of `source` with `config`'s lifetimes, scopes and size.
    /// `key_secret` keys the token hash (random per process when `None`; a shared tier needs
    /// the shared secret so replicas agree on keys). `shared`: the tier shared by replicas and
    /// how long answers are trusted while it misses invalidations.
    pub fn new(
        config: &IntrospectionConfig,
        source: Arc<dyn Introspector>,
        metrics: Arc<Oauth2Metrics>,
        key_secret: Option<&str>,
        shared: Option<(Arc<dyn IntrospectionTier>, Duration)>,
    ) -> IntrospectionCache {
        IntrospectionCache {
            inner: Arc::new(Inner {
                entries: moka::sync::Cache::builder()
                    .max_capacity(config.max_cache_bytes)
                    .weigher(|_, e: &Arc<Entry>| e.weight)
                    .expire_after(UntilExpiry)
                    .build(),
                source,
                hasher: TokenHasher::new(key_secret, "sessiongate 2026 introspection cache v1"),
                ttl: config.ttl,
                negative_ttl: config.negative_ttl,
                required_scopes: config.required_scopes.clone(),
                inflight: Mutex::default(),
                next_flight: Default::default(),
                tombs: Mutex::default(),
                tomb_ttl: config.queue_timeout + config.timeout + Duration::from_secs(1),
                metrics,
                degraded_ttl: shared.as_ref().map_or(Duration::MAX, |(_, d)| *d),
                shared: shared.map(|(tier, _)| tier),
            }),
        }
    }

    /// The HTTP client for `config` with this cache in front of it.
    pub fn from_config(
        config: &IntrospectionConfig,
        metrics: Arc<Oauth2Metrics>,
        key_secret: Option<&str>,
    ) -> Result<IntrospectionCache, String> {
        Self::from_config_shared(config, metrics, key_secret, None)
    }

    /// Like [`IntrospectionCache::from_config`], with a tier shared by replicas.
    pub fn from_config_shared(
        config: &IntrospectionConfig,
        metrics: Arc<Oauth2Metrics>,
        key_secret: Option<&str>,
        shared: Option<(Arc<dyn IntrospectionTier>, Duration)>,
    ) -> Result<IntrospectionCache, String> {
        let client = IntrospectionClient::new(config, metrics.clone())?;
        Ok(Self::new(
            config,
            Arc::new(client),
            metrics,
            key_secret,
            shared,
        ))
    }

    fn count(&self, result: &'static str) {
        self.inner
            .metrics
            .introspection_lookups
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Looks `token` up: a remembered answer, or one call shared by concurrent lookups.
    /// Required scopes are checked on every lookup, hit or not.
    pub async fn lookup(&self, token: &str) -> Result<Outcome, SourceError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Ok(Outcome::Rejected(Rejection::Malformed));
        }
        let key = self.inner.hasher.key(token);
        if let Some(hit) = self.inner.entries.get(&key)
            && Instant::now() < self.usable_until(&hit)
        {
            self.count(if hit.principal.is_some() {
                "hit"
            } else {
                "negative"
            });
            return Ok(self.outcome(&hit));
        }
        let (fetch, leader) = self.start_fetch(key, token);
        self.count(if leader { "miss" } else { "coalesced" });
        let entry = fetch.await?;
        Ok(self.outcome(&entry))
    }

    /// Until when `entry` may be used: its own end, or sooner while the shared tier misses
    /// invalidations.
    fn usable_until(&self, entry: &Entry) -> Instant {
        if self.degraded() {
            entry.until.min(
                entry
                    .stored_at
                    .checked_add(self.inner.degraded_ttl)
                    .unwrap_or(entry.until),
            )
        } else {
            entry.until
        }
    }

    /// Is a shared tier configured and not receiving invalidations?
    fn degraded(&self) -> bool {
        self.inner.shared.as_ref().is_some_and(|t| !t.healthy())
    }

    /// The shared tier, while it is receiving invalidations.
    fn healthy_tier(&self) -> Option<&Arc<dyn IntrospectionTier>> {
        self.inner.shared.as_ref().filter(|t| t.healthy())
    }

    fn outcome(&self, entry: &Entry) -> Outcome {
        match &entry.principal {
            Some(p) if p.has_scopes(&self.inner.required_scopes) => Outcome::Active(p.clone()),
            Some(_) => Outcome::Rejected(Rejection::InsufficientScope),
            None => Outcome::Rejected(Rejection::Inactive),
        }
    }

    fn start_fetch(&self, key: [u8; 32], token: &str) -> (SharedFetch, bool) {
        let mut inflight = lock(&self.inner.inflight);
        if let Some((_, f)) = inflight.get(&key) {
            return (f.clone(), false);
        }
        let id = self
            .inner
            .next_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        let token = token.to_owned();
        // Its own task: a caller that gives up does not waste the answer.
        let task = tokio::spawn(async move {
            let result = this.fetch(key, &token).await;
            let mut inflight = lock(&this.inner.inflight);
            if inflight.get(&key).is_some_and(|(i, _)| *i == id) {
                inflight.remove(&key);
            }
            result
        });
        let fut: Pin<Box<dyn Future<Output = FetchResult> + Send>> =
            Box::pin(task.map(|r| r.unwrap_or(Err(SourceError::Unavailable("internal")))));
        let shared = fut.shared();
        inflight.insert(key, (id, shared.clone()));
        (shared, true)
    }

    async fn fetch(&self, key: [u8; 32], token: &str) -> FetchResult {
        let inner = &self.inner;
        let mut entry = None;
        // An answer from a call that started before an invalidation covering it may predate a
        // revocation: ask again once (the endpoint itself, not the shared tier), and never cache
        // such an answer.
        for attempt in 0..2 {
            let started = Instant::now();
            if attempt == 0
                && let Some(e) = self.read_shared(&key, started).await
            {
                return Ok(e);
            }
            let answer = inner.source.introspect(token).await?;
            let e = Arc::new(match answer {
                Introspected::Active(p) => {
                    let remaining = p.remaining(SystemTime::now());
                    self.entry(Some(p), remaining)
                }
                Introspected::Inactive => self.entry(None, inner.negative_ttl),
            });
            if !self.tombstoned(&key, e.principal.as_deref(), started) {
                inner.entries.insert(key, e.clone());
                self.share(key, &e);
                return Ok(e);
            }
            entry = Some(e);
        }
        entry.ok_or(SourceError::Unavailable("internal"))
    }

    /// An entry for `principal` (`None`: inactive) usable for at most `usable`, capped by our
    /// own `ttl` (active) or `negative_ttl` (inactive).
    fn entry(&self, principal: Option<TokenPrincipal>, usable: Duration) -> Entry {
        let now = Instant::now();
        match principal {
            Some(p) => {
                let weight = p.weight();
                Entry {
                    principal: Some(Arc::new(p)),
                    until: now + usable.min(self.inner.ttl),
                    stored_at: now,
                    weight,
                }
            }
            None => Entry {
                principal: None,
                until: now + usable.min(self.inner.negative_ttl),
                stored_at: now,
                weight: 96,
            },
        }
    }

    /// The shared tier's answer for `key`, remembered here, unless the tier has none we can
    /// use or an invalidation since `started` covers it. Whatever the tier holds is re-capped
    /// by our own lifetimes and `exp`; anything unusable is counted and treated as a miss.
    async fn read_shared(&self, key: &[u8; 32], started: Instant) -> Option<Arc<Entry>> {
        let tier = self.healthy_tier()?;
        let stored = match tier.get(key).await {
            SharedRead::Found(stored) => stored,
            SharedRead::Miss => {
                self.inner.metrics.shared("miss");
                return None;
            }
            SharedRead::Rejected(reason) => {
                self.inner.metrics.shared(reason);
                return None;
            }
        };
        let Some((principal, usable)) = stored.decode(SystemTime::now()) else {
            self.inner.metrics.shared("unusable");
            return None;
        };
        let e = Arc::new(self.entry(principal, usable));
        if self.tombstoned(key, e.principal.as_deref(), started) {
            self.inner.metrics.shared("tombstoned");
            return None;
        }
        self.inner.metrics.shared(if e.principal.is_some() {
            "hit"
        } else {
            "negative"
        });
        self.inner.entries.insert(*key, e.clone());
        Some(e)
    }

    /// Stores an answer from the endpoint in the shared tier, for as long as it is usable here.
    fn share(&self, key: [u8; 32], e: &Entry) {
        if let Some(tier) = self.healthy_tier() {
            let usable = e.until.saturating_duration_since(Instant::now());
            let stored = StoredAnswer::new(e.principal.as_deref(), usable);
            tier.clone().put(key, stored, usable);
        }
    }

    fn tombstoned(&self, key: &[u8; 32], p: Option<&TokenPrincipal>, since: Instant) -> bool {
        let mut tombs = lock(&self.inner.tombs);
        let ttl = self.inner.tomb_ttl;
        tombs.retain(|(_, at)| at.elapsed() < ttl);
        tombs.iter().any(|(t, at)| {
            *at >= since
                && match t {
                    Tomb::All => true,
                    Tomb::Key(k) => k == key,
                    Tomb::Subject(s) => p.is_some_and(|p| p.subject.as_deref() == Some(s)),
                    Tomb::Client(c) => p.is_some_and(|p| p.client_id.as_deref() == Some(c)),
                }
        })
    }

    fn bury(&self, tomb: Tomb) {
        lock(&self.inner.tombs).push((tomb, Instant::now()));
    }

    fn invalidate_where(&self, tomb: Tomb, matches: impl Fn(&TokenPrincipal) -> bool) -> u64 {
        self.bury(tomb);
        let keys: Vec<_> = self
            .inner
            .entries
            .iter()
            .filter(|(_, e)| e.principal.as_deref().is_some_and(&matches))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.inner.entries.invalidate(k);
        }
        keys.len() as u64
    }

    /// Applies an invalidation here only (one received from another replica); returns how
    /// many answers were dropped.
    pub fn apply_remote(&self, inv: AnswerInvalidation) -> u64 {
        match inv {
            AnswerInvalidation::Token(key) => {
                self.bury(Tomb::Key(key));
                u64::from(self.inner.entries.remove(&key).is_some())
            }
            AnswerInvalidation::Subject(subject) => self
                .invalidate_where(Tomb::Subject(subject.clone()), |p| {
                    p.subject.as_deref() == Some(subject.as_str())
                }),
            AnswerInvalidation::Client(client_id) => self
                .invalidate_where(Tomb::Client(client_id.clone()), |p| {
                    p.client_id.as_deref() == Some(client_id.as_str())
                }),
            AnswerInvalidation::All => {
                self.bury(Tomb::All);
                self.inner.entries.run_pending_tasks();
                let n = self.inner.entries.entry_count();
                self.inner.entries.invalidate_all();
                n
            }
        }
    }

    /// Applies an invalidation here and, with a shared tier, on every replica and in the tier.
    /// `Err` when the tier could not be told (this replica's answers are dropped anyway).
    async fn invalidate(&self, inv: AnswerInvalidation) -> Result<u64, NotBroadcast> {
        let local = self.apply_remote(inv.clone());
        match &self.inner.shared {
            Some(tier) if !tier.broadcast(&inv).await => Err(NotBroadcast { local }),
            _ => Ok(local),
        }
    }

    /// Drops every answer for tokens of `subject` (`sub`); returns how many were held here.
    pub async fn invalidate_subject(&self, subject: &str) -> Result<u64, NotBroadcast> {
        self.invalidate(AnswerInvalidation::Subject(subject.to_owned()))
            .await
    }

    /// Drops every answer for tokens issued to `client_id`; returns how many were held here.
    pub async fn invalidate_client(&self, client_id: &str) -> Result<u64, NotBroadcast> {
        self.invalidate(AnswerInvalidation::Client(client_id.to_owned()))
            .await
    }

    /// Drops the answer for one token; returns whether one was held here.
    pub async fn invalidate_token(&self, token: &str) -> Result<bool, NotBroadcast> {
        let key = self.inner.hasher.key(token);
        Ok(self.invalidate(AnswerInvalidation::Token(key)).await? == 1)
    }

    /// Drops every answer; returns how many were held here.
    pub async fn invalidate_all(&self) -> Result<u64, NotBroadcast> {
        self.invalidate(AnswerInvalidation::All).await
    }

    /// Entries held (approximate; pending maintenance is run first).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.inner.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::oauth2::Secret;
    use crate::oauth2::tests::Server;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// token → answer: `active-<sub>-<client>[-<scope>]`, `inactive`, `refresh`, `short`.
    fn answer(token: &str) -> Value {
        let token = token.strip_prefix("token=").unwrap_or(token);
        let token = token.split('&').next().unwrap();
        let token = percent_encoding::percent_decode_str(token)
            .decode_utf8()
            .unwrap();
        // `short` expires 1 s after its first introspection, whoever asks later.
        static SHORT_EXP: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let parts: Vec<&str> = token.split("-").collect();
        match parts.as_slice() {
            ["active", sub, client, rest @ ..] => json!({
                "active": true, "sub": sub, "client_id": client, "exp": now() + 3600,
                "scope": rest.first().copied().unwrap_or("read"), "token_use": "access_token"
            }),
            ["short"] => {
                json!({"active": true, "sub": "s", "client_id": "c", "exp": *SHORT_EXP.get_or_init(|| now() + 1), "scope": "read"})
            }
            ["refresh"] => {
                json!({"active": true, "sub": "s", "exp": now() + 3600, "token_use": "refresh_token"})
            }
            _ => json!({"active": false}),
        }
    }

    async fn server() -> Server {
        Server::start(Arc::new(|_: &str, auth: Option<&str>, body: &[u8]| {
            // Basic base64("gate:s3cr%2Bt") — the secret `s3cr+t` form-encoded first.
            if auth != Some("Basic Z2F0ZTpzM2NyJTJCdA==") {
                return (401, "{}".into());
            }
            (200, answer(std::str::from_utf8(body).unwrap()).to_string())
        }))
        .await
    }

    fn config(s: &Server) -> IntrospectionConfig {
        IntrospectionConfig::new(
            format!("{}/introspect", s.base),
            ClientAuth::Basic {
                client_id: "gate".into(),
                client_secret: Secret::new("s3cr+t"),
            },
        )
    }

    fn cache(c: &IntrospectionConfig) -> (IntrospectionCache, Arc<Oauth2Metrics>) {
        let m = Arc::new(Oauth2Metrics::default());
        (
            IntrospectionCache::from_config(c, m.clone(), None).unwrap(),
            m,
        )
    }

    fn active(o: &Result<Outcome, SourceError>) -> bool {
        matches!(o, Ok(Outcome::Active(_)))
    }

    #[tokio::test]
    async fn two_hundred_concurrent_first_uses_make_one_call() {
        let s = server().await;
        s.set_delay(Duration::from_millis(100));
        let (c, m) = cache(&config(&s));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.lookup("active-alice-app").await })
            })
            .collect();
        for t in tasks {
            let o = t.await.unwrap();
            let Ok(Outcome::Active(p)) = o else {
                panic!("{o:?}")
            };
            assert_eq!(
                (p.subject.as_deref(), p.client_id.as_deref()),
                (Some("alice"), Some("app"))
            );
        }
        assert_eq!(s.hits("/introspect"), 1);
        assert_eq!(m.introspection_total(), 1);
        assert!(active(&c.lookup("active-alice-app").await));
        assert_eq!(s.hits("/introspect"), 1, "then a cache hit");
    }

    #[tokio::test]
    async fn inactive_answers_are_kept_for_negative_ttl() {
        let s = server().await;
        let (c, _) = cache(&config(&s));
        for _ in 0..10 {
            assert!(matches!(
                c.lookup("inactive").await,
                Ok(Outcome::Rejected(Rejection::Inactive))
            ));
        }
        assert_eq!(s.hits("/introspect"), 1, "default negative_ttl is 5 s");
        let mut short = config(&s);
        short.negative_ttl = Duration::from_millis(100);
        let (c, _) = cache(&short);
        c.lookup("inactive").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.lookup("inactive").await.unwrap();
        assert_eq!(s.hits("/introspect"), 3);
    }

    #[tokio::test]
    async fn active_answers_end_at_exp_when_sooner_than_ttl() {
        let s = server().await;
        let (c, _) = cache(&config(&s));
        assert!(active(&c.lookup("short").await));
        assert!(active(&c.lookup("short").await));
        assert_eq!(s.hits("/introspect"), 1);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // `exp` has passed: the cached answer is gone, and the endpoint's answer (active but
        // expired) is not believed.
        assert!(matches!(
            c.lookup("short").await,
            Ok(Outcome::Rejected(Rejection::Inactive))
        ));
        assert_eq!(s.hits("/introspect"), 2);
    }

    #[tokio::test]
    async fn errors_are_never_cached() {
        let s = server().await;
        s.respond(Arc::new(|_: &str, _: Option<&str>, _: &[u8]| {
            (500, "{}".into())
        }));
        let (c, m) = cache(&config(&s));
        for _ in 0..3 {
            assert_eq!(
                c.lookup("active-a-b").await.unwrap_err(),
                SourceError::Unavailable("5xx")
            );
        }
        assert_eq!(s.hits("/introspect"), 3);
        assert_eq!(m.introspection_total(), 3);
        // Wrong client credentials (401) and garbage are errors too, not "inactive".
        s.respond(Arc::new(|_: &str, _: Option<&str>, _: &[u8]| {
            (401, "{}".into())
        }));
        assert!(c.lookup("active-a-b").await.is_err());
        s.respond(Arc::new(|_: &str, _: Option<&str>, _: &[u8]| {
            (200, "{\"no\":1}".into())
        }));
        assert_eq!(
            c.lookup("active-a-b").await.unwrap_err(),
            SourceError::Unavailable("body")
        );
        s.respond(Arc::new(|_: &str, _: Option<&str>, _: &[u8]| {
            (
                200,
                format!("{{\"active\":false,\"pad\":\"{}\"}}", "x".repeat(70_000)),
            )
        }));
        assert_eq!(
            c.lookup("active-a-b").await.unwrap_err(),
            SourceError::Unavailable("body")
        );
        s.respond(Arc::new(|_: &str, _: Option<&str>, b: &[u8]| {
            (200, answer(std::str::from_utf8(b).unwrap()).to_string())
        }));
        assert!(active(&c.lookup("active-a-b").await));
    }

    #[tokio::test]
    async fn required_scopes_are_checked_on_every_lookup() {
        let s = server().await;
        let mut cfg = config(&s);
        cfg.required_scopes = vec!["write".into()];
        let (c, _) = cache(&cfg);
        for _ in 0..2 {
            assert!(matches!(
                c.lookup("active-a-b-read").await,
                Ok(Outcome::Rejected(Rejection::InsufficientScope))
            ));
            assert!(active(&c.lookup("active-a-b-write").await));
        }
        assert_eq!(s.hits("/introspect"), 2);
    }

    #[tokio::test]
    async fn refresh_tokens_are_not_access_tokens() {
        let s = server().await;
        let (c, _) = cache(&config(&s));
        assert!(matches!(
            c.lookup("refresh").await,
            Ok(Outcome::Rejected(Rejection::Inactive))
        ));
    }

    #[tokio::test]
    async fn invalidation_by_subject_client_and_token() {
        let s = server().await;
        let (c, _) = cache(&config(&s));
        for t in [
            "active-alice-app",
            "active-alice-cli",
            "active-bob-app",
            "inactive",
        ] {
            c.lookup(t).await.unwrap();
        }
        assert_eq!(s.hits("/introspect"), 4);
        assert_eq!(c.invalidate_subject("alice").await, Ok(2));
        assert_eq!(c.invalidate_subject("alice").await, Ok(0));
        c.lookup("active-alice-app").await.unwrap();
        c.lookup("active-bob-app").await.unwrap();
        assert_eq!(
            s.hits("/introspect"),
            5,
            "only alice's token was asked again"
        );
        assert_eq!(c.invalidate_client("app").await, Ok(2));
        c.lookup("active-alice-cli").await.unwrap();
        assert_eq!(c.invalidate_token("active-alice-cli").await, Ok(true));
        assert_eq!(c.invalidate_token("active-alice-cli").await, Ok(false));
        c.invalidate_all().await.unwrap();
        assert_eq!(c.entry_count(), 0);
    }

    #[tokio::test]
    async fn an_invalidation_during_a_call_is_not_undone_by_its_answer() {
        let s = server().await;
        s.set_delay(Duration::from_millis(150));
        let (c, _) = cache(&config(&s));
        let c2 = c.clone();
        let pending = tokio::spawn(async move { c2.lookup("active-alice-app").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.invalidate_subject("alice").await.unwrap();
        assert!(active(&pending.await.unwrap()));
        // The answer that predates the invalidation was asked again, and the second, newer
        // answer is the one kept.
        assert_eq!(s.hits("/introspect"), 2);
        s.set_delay(Duration::ZERO);
        c.lookup("active-alice-app").await.unwrap();
        assert_eq!(s.hits("/introspect"), 2);
    }

    /// A shared tier in memory that can be made unhealthy, counting its calls.
    #[derive(Debug, Default)]
    struct MemoryTier {
        entries: Mutex<HashMap<[u8; 32], StoredAnswer>>,
        broadcasts: Mutex<Vec<AnswerInvalidation>>,
        unhealthy: std::sync::atomic::AtomicBool,
        gets: std::sync::atomic::AtomicUsize,
    }

    impl IntrospectionTier for MemoryTier {
        fn get<'a>(
            &'a self,
            key: &'a [u8; 32],
        ) -> super::super::shared::TierFuture<'a, SharedRead> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let found = lock(&self.entries).get(key).cloned();
            Box::pin(async move { found.map_or(SharedRead::Miss, SharedRead::Found) })
        }
        fn put(self: Arc<Self>, key: [u8; 32], answer: StoredAnswer, _: Duration) {
            lock(&self.entries).insert(key, answer);
        }
        fn broadcast<'a>(
            &'a self,
            inv: &'a AnswerInvalidation,
        ) -> super::super::shared::TierFuture<'a, bool> {
            lock(&self.broadcasts).push(inv.clone());
            Box::pin(async { true })
        }
        fn healthy(&self) -> bool {
            !self.unhealthy.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_shared_tier_is_asked_on_misses_told_of_invalidations_and_skipped_while_degraded() {
        let s = server().await;
        let cfg = config(&s);
        let tier = Arc::new(MemoryTier::default());
        let cache = |tier: &Arc<MemoryTier>, degraded_ttl| {
            let client = IntrospectionClient::new(&cfg, Arc::default()).unwrap();
            let shared = tier.clone() as Arc<dyn IntrospectionTier>;
            IntrospectionCache::new(
                &cfg,
                Arc::new(client),
                Arc::new(Oauth2Metrics::default()),
                Some("shared secret"),
                Some((shared, degraded_ttl)),
            )
        };
        let (a, b) = (
            cache(&tier, Duration::from_secs(60)),
            cache(&tier, Duration::ZERO),
        );
        assert!(active(&a.lookup("active-alice-app").await));
        assert!(active(&b.lookup("active-alice-app").await));
        assert_eq!(s.hits("/introspect"), 1, "B found A's answer in the tier");
        assert_eq!(b.inner.metrics.shared_count("hit"), 1);

        assert_eq!(a.invalidate_client("app").await, Ok(1));
        assert_eq!(
            *lock(&tier.broadcasts),
            [AnswerInvalidation::Client("app".into())]
        );
        // What the subscriber does on B.
        assert_eq!(b.apply_remote(AnswerInvalidation::Client("app".into())), 1);

        // Degraded (B's degraded_ttl is zero): its own answers are not trusted, the tier is
        // neither read nor written, the endpoint is asked every time.
        tier.unhealthy
            .store(true, std::sync::atomic::Ordering::SeqCst);
        lock(&tier.entries).clear();
        let gets = tier.gets.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            assert!(active(&b.lookup("active-bob-app").await));
        }
        assert_eq!(s.hits("/introspect"), 4);
        assert_eq!(tier.gets.load(std::sync::atomic::Ordering::SeqCst), gets);
        assert!(lock(&tier.entries).is_empty());
    }

    #[tokio::test]
    async fn concurrency_is_bounded_with_a_bounded_wait() {
        let s = server().await;
        s.set_delay(Duration::from_millis(300));
        let mut cfg = config(&s);
        cfg.max_concurrency = 2;
        cfg.queue_timeout = Duration::from_millis(50);
        let (c, m) = cache(&cfg);
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.lookup(&format!("active-u{i}-app")).await })
            })
            .collect();
        let mut overloaded = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(SourceError::Overloaded)) {
                overloaded += 1;
            }
        }
        assert_eq!(overloaded, 3);
        assert_eq!(m.introspection_shed.get(), 3);
    }

    #[tokio::test]
    async fn a_bearer_token_authenticates_the_client() {
        let s = Server::start(Arc::new(|_: &str, auth: Option<&str>, _: &[u8]| {
            if auth == Some("Bearer gate-token") {
                (
                    200,
                    json!({"active": true, "sub": "x", "exp": now() + 60}).to_string(),
                )
            } else {
                (401, "{}".into())
            }
        }))
        .await;
        let cfg = IntrospectionConfig::new(
            format!("{}/introspect", s.base),
            ClientAuth::Bearer {
                token: Secret::new("gate-token"),
            },
        );
        let m = Arc::new(Oauth2Metrics::default());
        let client = IntrospectionClient::new(&cfg, m).unwrap();
        assert!(!format!("{client:?}").contains("gate-token"));
        assert!(matches!(
            client.introspect("t").await,
            Ok(Introspected::Active(_))
        ));
    }
}
