//! OAuth2 bearer-token sources beside the Kratos session source: JWT access tokens verified
//! against an issuer's JWKS ([`jwt`], keys from [`jwks`]) and opaque tokens asked of an RFC 7662
//! introspection endpoint ([`introspection`]). Both answer with a [`TokenPrincipal`] or say why
//! not; both sit behind a cache keyed by a keyed hash of the token, never the token itself.
//! Introspection answers can also be shared by replicas through a tier behind the small
//! [`shared::IntrospectionTier`] seam (Redis, adapted by `app`), invalidations included.

mod fetch;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::Value;

pub use crate::config::{ClientAuth, IntrospectionConfig, JwtIssuerConfig, Secret};
pub use introspection::{IntrospectionCache, IntrospectionClient};
pub use jwks::JwksClient;
pub use jwt::JwtIssuer;
pub use metrics::Oauth2Metrics;
pub use shared::{AnswerInvalidation, IntrospectionTier, NotBroadcast, SharedRead, StoredAnswer};

/// Who a verified or introspected token speaks for. Built once per token; a cache hit hands out
/// the same `Arc` with no JSON work.
#[derive(Debug)]
pub struct TokenPrincipal {
    /// `sub`, when the token has one (client_credentials tokens carry the client id here).
    pub subject: Option<String>,
    /// `client_id` (RFC 9068 / RFC 7662), when present.
    pub client_id: Option<String>,
    /// Granted scopes: `scope` (space-separated) or Hydra's `scp` array.
    pub scopes: Vec<String>,
    /// `exp`: the principal is never served past this.
    pub expires_at: SystemTime,
    /// The issuer that vouched for it (`iss`, or the configured issuer).
    pub issuer: Option<String>,
    /// Every verified claim (JWT payload or introspection answer), for JSON-pointer projections
    /// into headers and minted claims.
    pub claims: Arc<Value>,
    /// Unique per answer, in a number space disjoint from `session::next_generation` (high bit
    /// set), so the minter's token cache can key on it beside Kratos sessions.
    pub generation: u64,
}

impl TokenPrincipal {
    /// Projects the claims every token source shares. `exp` must already be known.
    fn from_claims(claims: Value, expires_at: SystemTime) -> TokenPrincipal {
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let mut scopes: Vec<String> = match claims.get("scope") {
            Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        if let Some(Value::Array(scp)) = claims.get("scp") {
            for s in scp.iter().filter_map(Value::as_str) {
                if !scopes.iter().any(|have| have == s) {
                    scopes.push(s.to_owned());
                }
            }
        }
        TokenPrincipal {
            subject: text("sub"),
            client_id: text("client_id"),
            issuer: text("iss"),
            scopes,
            expires_at,
            claims: Arc::new(claims),
            generation: next_generation(),
        }
    }

    /// Whether every scope in `required` was granted.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }

    /// Time left before `exp`; zero once it has passed.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Approximate heap bytes, for the cache weighers.
    fn weight(&self) -> u32 {
        let claims = self.claims.to_string().len();
        let scopes: usize = self.scopes.iter().map(|s| s.len() + 24).sum();
        let n = std::mem::size_of::<TokenPrincipal>()
            + 2 * claims
            + scopes
            + self.subject.as_ref().map_or(0, String::len)
            + self.client_id.as_ref().map_or(0, String::len)
            + self.issuer.as_ref().map_or(0, String::len);
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// A generation no other [`TokenPrincipal`] (and no Kratos session: their counter starts at 1
/// and never reaches 2^63) of this process has.
pub fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (1 << 63) | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Why a token is not accepted. A closed set: these are metric labels and log fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    /// Not a JWT (shape, base64, JSON) or a header we do not take (`crit`, `jku`, `x5u`, …).
    #[error("malformed token")]
    Malformed,
    /// `alg` not in the allow-list, `none`, HMAC, or not what the key is for.
    #[error("algorithm not allowed")]
    Algorithm,
    /// The key set has several keys and the token names none.
    #[error("token has no kid")]
    MissingKid,
    /// No key with this `kid`, even after a refetch.
    #[error("unknown kid")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` names none of the configured audiences.
    #[error("wrong audience")]
    Audience,
    /// A required claim (`exp`, `iss`, `aud`) is missing or mistyped.
    #[error("missing or malformed claim")]
    Claims,
    /// The introspection endpoint says the token is not active.
    #[error("token inactive")]
    Inactive,
    /// Valid, but without every required scope.
    #[error("insufficient scope")]
    InsufficientScope,
}

impl Rejection {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Algorithm => "algorithm",
            Rejection::MissingKid => "missing_kid",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::Signature => "signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Issuer => "issuer",
            Rejection::Audience => "audience",
            Rejection::Claims => "claims",
            Rejection::Inactive => "inactive",
            Rejection::InsufficientScope => "insufficient_scope",
        }
    }
}

/// The answer of a token source for one token.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Valid and active.
    Active(Arc<TokenPrincipal>),
    /// Not accepted, and why.
    Rejected(Rejection),
}

/// Why a source could not answer (JWKS or introspection endpoint failed, or too busy). Never
/// cached, never "valid".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The endpoint failed, timed out, was unreachable, or answered something unusable.
    #[error("token source unavailable: {0}")]
    Unavailable(&'static str),
    /// Too many calls in flight for longer than the queue timeout.
    #[error("too many token source calls in flight")]
    Overloaded,
}

/// Keyed BLAKE3 of a token: cache keys never hold the token itself.
#[derive(Clone)]
struct TokenHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(<redacted>)")
    }
}

impl TokenHasher {
    /// From a shared secret (replicas agree on keys) or random per process.
    fn new(secret: Option<&str>, context: &'static str) -> TokenHasher {
        TokenHasher {
            key: match secret {
                Some(s) => blake3::derive_key(context, s.as_bytes()),
                None => rand::random(),
            },
        }
    }

    fn key(&self, token: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, token.as_bytes()).as_bytes()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What the in-process server answers: (path, Authorization header, body) → (status, body).
    pub(crate) type Responder = dyn Fn(&str, Option<&str>, &[u8]) -> (u16, String) + Send + Sync;

    /// An in-process HTTP server on 127.0.0.1 that counts requests per path and answers with a
    /// swappable responder after an optional delay.
    pub(crate) struct Server {
        pub(crate) base: String,
        hits: Arc<std::sync::Mutex<HashMap<String, usize>>>,
        responder: Arc<std::sync::Mutex<Arc<Responder>>>,
        delay: Arc<std::sync::Mutex<Duration>>,
        task: tokio::task::JoinHandle<()>,
    }

    use std::collections::HashMap;

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        pub(crate) async fn start(responder: Arc<Responder>) -> Server {
            let hits: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
            let responder = Arc::new(std::sync::Mutex::new(responder));
            let delay = Arc::new(std::sync::Mutex::new(Duration::ZERO));
            let (h, r, d) = (hits.clone(), responder.clone(), delay.clone());
            let app = axum::Router::new().fallback(
                move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: bytes::Bytes| {
                    let (h, r, d) = (h.clone(), r.clone(), d.clone());
                    async move {
                        let path = uri.path().to_owned();
                        *lock(&h).entry(path.clone()).or_default() += 1;
                        let delay = *lock(&d);
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let f = lock(&r).clone();
                        let (status, body) = f(&path, auth.as_deref(), &body);
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            [("content-type", "application/json")],
                            body,
                        )
                    }
                },
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Server {
                base,
                hits,
                responder,
                delay,
                task,
            }
        }

        pub(crate) fn hits(&self, path: &str) -> usize {
            lock(&self.hits).get(path).copied().unwrap_or(0)
        }

        pub(crate) fn respond(&self, responder: Arc<Responder>) {
            *lock(&self.responder) = responder;
        }

        pub(crate) fn set_delay(&self, d: Duration) {
            *lock(&self.delay) = d;
        }
    }

    #[test]
    fn scopes_from_scope_and_scp_and_generations_are_disjoint_from_sessions() {
        let p = TokenPrincipal::from_claims(
            serde_json::json!({"sub": "s", "scope": "a b", "scp": ["b", "c"], "client_id": ""}),
            SystemTime::now(),
        );
        assert_eq!(p.scopes, ["a", "b", "c"]);
        assert_eq!(p.client_id, None);
        assert!(p.has_scopes(&["a".into(), "c".into()]));
        assert!(!p.has_scopes(&["d".into()]));
        assert!(p.generation >= 1 << 63);
    }

    #[test]
    fn token_keys_are_keyed() {
        let (a, b) = (TokenHasher::new(None, "t"), TokenHasher::new(None, "t"));
        assert_ne!(a.key("x"), b.key("x"));
        let (c, d) = (
            TokenHasher::new(Some("s"), "t"),
            TokenHasher::new(Some("s"), "t"),
        );
        assert_eq!(c.key("x"), d.key("x"));
        assert_ne!(c.key("x"), c.key("y"));
    }
}
