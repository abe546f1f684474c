//! Configuration types of the OAuth2 token sources (`jwt_issuers:`, `oauth2_introspection:`),
//! with their defaults and a `validate` per type (called from `Config::validate`).

use std::fmt;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

/// A secret from config: serialised as is (config round-trips), never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One trusted issuer of JWT access tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Exact `iss` value tokens must carry.
    pub issuer: String,
    /// Where the key set is. Unset: `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Accepted `aud` values; a token must name at least one. Required (non-empty).
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. HMAC is never accepted (the keys are public).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// How long this issuer uses a key set before asking for a newer one. Past it the old set
    /// keeps serving while the JWKS URL fails.
    #[serde(default = "default_cache_duration", with = "humantime_serde")]
    pub cache_duration: Duration,
    /// A JWKS URL is fetched at most once per this period for routine refreshes, whatever the
    /// number of issuers naming it.
    #[serde(default = "default_shared_cache_duration", with = "humantime_serde")]
    pub shared_cache_duration: Duration,
    /// At most one fetch per JWKS URL per this period when a token names an unknown `kid` (key
    /// rotation), and between retries of a failing URL.
    #[serde(default = "default_min_refetch_interval", with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// Largest accepted JWKS (and discovery) document.
    #[serde(default = "default_max_jwks_bytes")]
    pub max_jwks_bytes: usize,
    /// Deadline of one JWKS or discovery fetch, connect included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Scopes every token of this issuer must carry (checked on cache hits too).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Verified tokens are remembered (by keyed hash) until `exp`, up to this many bytes.
    #[serde(default = "default_max_cache_bytes")]
    pub max_cache_bytes: u64,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
}
fn default_leeway() -> Duration {
    Duration::from_secs(10)
}
fn default_cache_duration() -> Duration {
    Duration::from_secs(300)
}
fn default_shared_cache_duration() -> Duration {
    Duration::from_secs(60)
}
fn default_min_refetch_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_max_jwks_bytes() -> usize {
    256 * 1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_cache_bytes() -> u64 {
    32 * 1024 * 1024
}

impl JwtIssuerConfig {
    /// A config for `issuer` and `audiences` with every default.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> JwtIssuerConfig {
        JwtIssuerConfig {
            issuer: issuer.into(),
            jwks_url: None,
            audiences,
            algorithms: default_algorithms(),
            leeway: default_leeway(),
            cache_duration: default_cache_duration(),
            shared_cache_duration: default_shared_cache_duration(),
            min_refetch_interval: default_min_refetch_interval(),
            max_jwks_bytes: default_max_jwks_bytes(),
            timeout: default_timeout(),
            required_scopes: Vec::new(),
            max_cache_bytes: default_max_cache_bytes(),
        }
    }

    /// Refuses what would make verification unsafe or useless.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.issuer;
        if self.issuer.is_empty() {
            return Err("jwt issuer: `issuer` is empty".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(format!(
                "jwt issuer {name}: `audiences` must list at least one non-empty audience"
            ));
        }
        if self.algorithms.is_empty() {
            return Err(format!("jwt issuer {name}: `algorithms` is empty"));
        }
        if let Some(a) = self
            .algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(format!(
                "jwt issuer {name}: {a:?} is an HMAC algorithm; only public-key algorithms are accepted"
            ));
        }
        let url = self.jwks_url.as_deref().unwrap_or(&self.issuer);
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("jwt issuer {name}: {url} is not an http(s) URL"));
        }
        if self.max_jwks_bytes < 64 || self.timeout.is_zero() {
            return Err(format!(
                "jwt issuer {name}: max_jwks_bytes and timeout must be positive"
            ));
        }
        Ok(())
    }
}

/// How sessiongate authenticates to the introspection endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientAuth {
    /// HTTP Basic with a client id and secret (`client_secret_basic`).
    Basic {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// No authentication (Hydra's admin port, reachable only from inside).
    None,
}

/// An RFC 7662 token introspection endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Endpoint URL (Hydra: `<admin>/admin/oauth2/introspect`).
    pub url: String,
    /// Our credentials at the endpoint.
    #[serde(default = "default_client_auth")]
    pub auth: ClientAuth,
    /// Active answers are kept for min(ttl, exp − now).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Inactive answers are kept this long.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Scopes every token must carry (checked on cache hits too).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Deadline of one introspection call, connect included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most introspection calls in flight at once; further lookups wait up to `queue_timeout`.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// How long a lookup may wait for a slot before it is refused as overloaded.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Largest accepted introspection answer.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Answers are kept up to this many bytes.
    #[serde(default = "default_max_cache_bytes")]
    pub max_cache_bytes: u64,
}

fn default_client_auth() -> ClientAuth {
    ClientAuth::None
}
fn default_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_max_concurrency() -> usize {
    64
}
fn default_queue_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}

impl IntrospectionConfig {
    /// A config for `url` with every default.
    pub fn new(url: impl Into<String>, auth: ClientAuth) -> IntrospectionConfig {
        IntrospectionConfig {
            url: url.into(),
            auth,
            ttl: default_ttl(),
            negative_ttl: default_negative_ttl(),
            required_scopes: Vec::new(),
            timeout: default_timeout(),
            max_concurrency: default_max_concurrency(),
            queue_timeout: default_queue_timeout(),
            max_body_bytes: default_max_body_bytes(),
            max_cache_bytes: default_max_cache_bytes(),
        }
    }

    /// Refuses what cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(format!("introspection: {} is not an http(s) URL", self.url));
        }
        if self.max_concurrency == 0 || self.timeout.is_zero() || self.max_body_bytes == 0 {
            return Err(
                "introspection: max_concurrency, timeout and max_body_bytes must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let c = IntrospectionConfig::new(
            "http://x/introspect",
            ClientAuth::Basic {
                client_id: "id".into(),
                client_secret: Secret::new("hunter2"),
            },
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
        let b = ClientAuth::Bearer {
            token: Secret::new("tok-123"),
        };
        assert!(!format!("{b:?}").contains("tok-123"));
    }

    #[test]
    fn hmac_and_empty_audiences_are_refused() {
        let mut c = JwtIssuerConfig::new("https://issuer", vec!["api".into()]);
        assert!(c.validate().is_ok());
        c.algorithms.push(Algorithm::HS256);
        assert!(c.validate().unwrap_err().contains("HMAC"));
        let c = JwtIssuerConfig::new("https://issuer", vec![]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn deserialises_with_defaults() {
        let c: JwtIssuerConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://i", "audiences": ["a"], "algorithms": ["ES256"], "leeway": "5s"
        }))
        .unwrap();
        assert_eq!(c.algorithms, [Algorithm::ES256]);
        assert_eq!(c.leeway, Duration::from_secs(5));
        assert_eq!(c.cache_duration, Duration::from_secs(300));
        let i: IntrospectionConfig = serde_json::from_value(serde_json::json!({
            "url": "http://h/introspect",
            "auth": {"basic": {"client_id": "c", "client_secret": "s"}}
        }))
        .unwrap();
        assert_eq!(i.ttl, Duration::from_secs(60));
        assert_eq!(i.negative_ttl, Duration::from_secs(5));
        assert!(matches!(i.auth, ClientAuth::Basic { .. }));
    }
}
