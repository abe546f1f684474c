//! JWKS: key sets parsed once into verification keys ([`KeySet`]), and the shared client cache
//! ([`JwksClient`]) keyed by URL, so a URL is fetched at most once per `shared_cache_duration`
//! however many issuers name it, at most once per `min_refetch_interval` when a token names an
//! unknown `kid` (or while the URL fails), one fetch at a time (single-flight), bounded in size
//! and time. When a fetch fails the last good set is served.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Shared;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::fetch::{self, FetchError};
use super::metrics::{IssuerResultLabels, Oauth2Metrics};
use super::{SourceError, lock};

/// Most keys taken from one JWKS document (the rest are ignored).
const MAX_KEYS: usize = 64;

/// One verification key from a JWKS.
pub struct VerifyingKey {
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
    /// The algorithms this key may verify: those its type allows, narrowed to its `alg`.
    pub algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The usable signature keys of one JWKS document, as fetched at one instant.
#[derive(Debug)]
pub struct KeySet {
    /// The keys (symmetric, encryption-only and unsupported keys are left out).
    pub keys: Vec<VerifyingKey>,
    /// When it was fetched.
    pub fetched_at: Instant,
}

/// Which key a token asks for, and whether the set has it.
#[derive(Debug)]
pub enum KeyMatch<'a> {
    /// This key.
    Found(&'a VerifyingKey),
    /// The token names no `kid` and the set has several keys (or none).
    MissingKid,
    /// No key has the token's `kid`.
    UnknownKid,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot verify signatures for us are skipped: `oct`
    /// (a shared secret has no business in a public key set), `use` other than `sig`, curves
    /// and algorithms we do not support.
    pub fn parse(body: &[u8], fetched_at: Instant) -> Option<KeySet> {
        let doc: Value = serde_json::from_slice(body).ok()?;
        let keys = doc.get("keys")?.as_array()?;
        let keys = keys
            .iter()
            .take(MAX_KEYS)
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter_map(|jwk| verifying_key(&jwk))
            .collect();
        Some(KeySet { keys, fetched_at })
    }

    /// The key for a token's `kid`. Without a `kid` only a set of exactly one key answers.
    pub fn find(&self, kid: Option<&str>) -> KeyMatch<'_> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map_or(KeyMatch::UnknownKid, KeyMatch::Found),
            None => match self.keys.as_slice() {
                [only] => KeyMatch::Found(only),
                _ => KeyMatch::MissingKid,
            },
        }
    }
}

fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // `oct` (HMAC secrets) and anything else: never.
        _ => return None,
    };
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        None => by_type.to_vec(),
        Some(named) => {
            let named = signature_algorithm(named)?;
            by_type.iter().copied().filter(|a| *a == named).collect()
        }
    };
    if algorithms.is_empty() {
        return None;
    }
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn signature_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// How one issuer asks for a URL's keys.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Metric label: the configured issuer.
    pub issuer: Arc<str>,
    /// A set younger than this is served without fetching.
    pub shared_cache_duration: Duration,
    /// At most one fetch attempt per URL per this period unless the copy is older than
    /// `shared_cache_duration` (a kid miss, a failing URL).
    pub min_refetch_interval: Duration,
    /// Deadline of one fetch.
    pub timeout: Duration,
    /// Largest document.
    pub max_bytes: usize,
}

/// What the caller needs.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// Any set younger than `shared_cache_duration` (a routine refresh).
    Current,
    /// A set fetched after this instant (a token named a `kid` the set held then lacks).
    NewerThan(Instant),
}

type FetchResult = Result<Arc<KeySet>, FetchError>;
type SharedFetch = Shared<Pin<Box<dyn Future<Output = FetchResult> + Send>>>;

#[derive(Default)]
struct Slot {
    keys: Option<Arc<KeySet>>,
    last_attempt: Option<Instant>,
    inflight: Option<SharedFetch>,
}

/// The shared JWKS client: one per process, handed to every [`super::JwtIssuer`].
pub struct JwksClient {
    http: reqwest::Client,
    slots: Mutex<HashMap<String, Slot>>,
    metrics: Arc<Oauth2Metrics>,
}

impl std::fmt::Debug for JwksClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksClient")
            .field("urls", &lock(&self.slots).len())
            .finish_non_exhaustive()
    }
}

impl JwksClient {
    /// A client with its own connection pool (`connect_timeout` per connection).
    pub fn new(metrics: Arc<Oauth2Metrics>, connect_timeout: Duration) -> Arc<JwksClient> {
        Arc::new(JwksClient {
            http: fetch::client(connect_timeout),
            slots: Mutex::default(),
            metrics,
        })
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn metrics(&self) -> &Oauth2Metrics {
        &self.metrics
    }

    /// The keys at `url`: the shared copy when it satisfies `want`, else one fetch (joined by
    /// concurrent callers, rate-limited per URL). A failed fetch answers with the last good set
    /// when there is one.
    pub async fn keys(
        self: &Arc<Self>,
        url: &str,
        policy: &FetchPolicy,
        want: Want,
    ) -> Result<Arc<KeySet>, SourceError> {
        let fetch = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(url.to_owned()).or_default();
            let now = Instant::now();
            if let Some(f) = &slot.inflight {
                f.clone()
            } else {
                let satisfied = slot.keys.as_ref().filter(|k| match want {
                    Want::Current => {
                        now.saturating_duration_since(k.fetched_at) < policy.shared_cache_duration
                    }
                    Want::NewerThan(t) => k.fetched_at > t,
                });
                if let Some(k) = satisfied {
                    return Ok(k.clone());
                }
                // One attempt per URL per `min_refetch_interval`, whatever the reason (a kid
                // miss, a copy past `shared_cache_duration`, a URL that failed last time).
                if slot
                    .last_attempt
                    .is_some_and(|t| now.saturating_duration_since(t) < policy.min_refetch_interval)
                {
                    return slot
                        .keys
                        .clone()
                        .ok_or(SourceError::Unavailable("jwks_backoff"));
                }
                slot.last_attempt = Some(now);
                let f = self.clone().start(url.to_owned(), policy.clone());
                slot.inflight = Some(f.clone());
                f
            }
        };
        match fetch.await {
            Ok(keys) => Ok(keys),
            Err(e) => lock(&self.slots)
                .get(url)
                .and_then(|s| s.keys.clone())
                .ok_or(SourceError::Unavailable(e.as_str())),
        }
    }

    /// Starts the fetch as its own task: a caller giving up does not waste it.
    fn start(self: Arc<Self>, url: String, policy: FetchPolicy) -> SharedFetch {
        let task = tokio::spawn(async move {
            let result = self.fetch(&url, &policy).await;
            let mut slots = lock(&self.slots);
            let slot = slots.entry(url).or_default();
            slot.inflight = None;
            if let Ok(keys) = &result {
                slot.keys = Some(keys.clone());
            }
            result
        });
        let fut: Pin<Box<dyn Future<Output = FetchResult> + Send>> =
            Box::pin(task.map(|r| r.unwrap_or(Err(FetchError::Transport))));
        fut.shared()
    }

    async fn fetch(&self, url: &str, policy: &FetchPolicy) -> FetchResult {
        let req = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json");
        let result = fetch::send(req, policy.timeout, policy.max_bytes)
            .await
            .and_then(|body| {
                KeySet::parse(&body, Instant::now())
                    .map(Arc::new)
                    .ok_or(FetchError::Undecodable)
            });
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.as_str(),
        };
        self.metrics
            .jwks_fetches
            .get_or_create(&IssuerResultLabels {
                issuer: policy.issuer.to_string(),
                result: label,
            })
            .inc();
        if let Err(e) = &result {
            tracing::warn!(issuer = %policy.issuer, url, error = e.as_str(), "JWKS fetch failed");
        }
        result
    }
}
