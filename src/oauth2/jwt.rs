//! One trusted JWT issuer: verifies access tokens with `jsonwebtoken` against the issuer's key
//! set (held for `cache_duration`, refreshed through the shared [`JwksClient`], served stale
//! while the JWKS URL fails), and remembers verified tokens by keyed hash until `exp` so a
//! repeat skips signature verification.
//!
//! The algorithm is the token's `alg` only if the configured allow-list *and* the key (its type,
//! curve and `alg`) both allow it: `none` and HMAC never verify. A `kid` is required when the
//! set has several keys; an unknown `kid` asks for a newer set (rate-limited per URL).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::Expiry;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::fetch;
use super::jwks::{FetchPolicy, JwksClient, KeyMatch, KeySet, Want};
use super::metrics::IssuerResultLabels;
use super::{Outcome, Rejection, SourceError, TokenHasher, TokenPrincipal, lock};
use crate::config::JwtIssuerConfig;

/// Longest token looked at; longer is malformed (and never hashed or parsed).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

struct UntilExp;

impl Expiry<[u8; 32], Arc<TokenPrincipal>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Arc<TokenPrincipal>,
        _: Instant,
    ) -> Option<Duration> {
        Some(v.remaining(SystemTime::now()))
    }
}

/// The issuer's current key set and when it was last confirmed fresh.
struct Held {
    keys: Arc<KeySet>,
    checked_at: Instant,
}

/// Verifies access tokens of one configured issuer.
pub struct JwtIssuer {
    config: JwtIssuerConfig,
    policy: FetchPolicy,
    jwks: Arc<JwksClient>,
    /// The JWKS URL: configured, or discovered once.
    jwks_url: OnceCell<String>,
    discovery_failed_at: Mutex<Option<Instant>>,
    held: RwLock<Option<Held>>,
    /// One `Validation` per allowed algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    tokens: moka::sync::Cache<[u8; 32], Arc<TokenPrincipal>>,
    hasher: TokenHasher,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("issuer", &self.config.issuer)
            .field("jwks_url", &self.jwks_url.get())
            .finish_non_exhaustive()
    }
}

impl JwtIssuer {
    /// An issuer whose keys come through `jwks` (shared by every issuer of the process).
    /// `key_secret` keys the token-cache hash (random per process when `None`).
    pub fn new(
        config: JwtIssuerConfig,
        jwks: Arc<JwksClient>,
        key_secret: Option<&str>,
    ) -> Result<JwtIssuer, String> {
        config.validate()?;
        let validations = config
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = config.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[&config.issuer]);
                v.set_audience(&config.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (*alg, v)
            })
            .collect();
        let jwks_url = match &config.jwks_url {
            Some(url) => OnceCell::new_with(Some(url.clone())),
            None => OnceCell::new(),
        };
        Ok(JwtIssuer {
            policy: FetchPolicy {
                issuer: config.issuer.as_str().into(),
                shared_cache_duration: config.shared_cache_duration,
                min_refetch_interval: config.min_refetch_interval,
                timeout: config.timeout,
                max_bytes: config.max_jwks_bytes,
            },
            tokens: moka::sync::Cache::builder()
                .max_capacity(config.max_cache_bytes)
                .weigher(|_, p: &Arc<TokenPrincipal>| p.weight())
                .expire_after(UntilExp)
                .build(),
            hasher: TokenHasher::new(key_secret, "sessiongate 2026 jwt token cache v1"),
            jwks,
            jwks_url,
            discovery_failed_at: Mutex::default(),
            held: RwLock::default(),
            validations,
            config,
        })
    }

    /// The configured issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Verifies `token` (the bare JWT, no `Bearer `). `Err` only when no key set could be had
    /// (JWKS URL down and nothing cached); that is never "valid".
    pub async fn verify(&self, token: &str) -> Result<Outcome, SourceError> {
        let metrics = self.jwks.metrics();
        let result = self.verify_inner(token).await;
        let label = match &result {
            Ok((Outcome::Active(_), cached)) => {
                if *cached {
                    "cached"
                } else {
                    "valid"
                }
            }
            Ok((Outcome::Rejected(r), _)) => r.as_str(),
            Err(_) => "keys_unavailable",
        };
        metrics.verification(label);
        result.map(|(outcome, _)| outcome)
    }

    async fn verify_inner(&self, token: &str) -> Result<(Outcome, bool), SourceError> {
        let reject = |r| Ok((Outcome::Rejected(r), false));
        if token.len() > MAX_TOKEN_BYTES || token.is_empty() {
            return reject(Rejection::Malformed);
        }
        let key = self.hasher.key(token);
        if let Some(p) = self.tokens.get(&key)
            && p.expires_at > SystemTime::now()
        {
            return Ok((self.scoped(p), true));
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) if alg_is_none(token) => return reject(Rejection::Algorithm),
            Err(_) => return reject(Rejection::Malformed),
        };
        // Extensions we do not implement must not be ignored (RFC 7515 §4.1.11); JWE is not ours.
        if header.crit.is_some() || header.enc.is_some() || header.zip.is_some() {
            return reject(Rejection::Malformed);
        }
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg)
        else {
            return reject(Rejection::Algorithm);
        };
        let mut keys = self.keys().await?;
        let mut refetched = false;
        let data = loop {
            let key = match keys.find(header.kid.as_deref()) {
                KeyMatch::Found(k) => k,
                KeyMatch::MissingKid => return reject(Rejection::MissingKid),
                KeyMatch::UnknownKid if refetched => return reject(Rejection::UnknownKid),
                KeyMatch::UnknownKid => {
                    refetched = true;
                    keys = self.newer_keys(&keys).await;
                    continue;
                }
            };
            if !key.algorithms.contains(alg) {
                return reject(Rejection::Algorithm);
            }
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(d) => break d,
                Err(e) => return reject(rejection(e.kind())),
            }
        };
        let Some(exp) = data.claims.get("exp").and_then(Value::as_u64) else {
            return reject(Rejection::Claims);
        };
        let principal = Arc::new(TokenPrincipal::from_claims(
            data.claims,
            UNIX_EPOCH + Duration::from_secs(exp),
        ));
        if principal.expires_at > SystemTime::now() {
            self.tokens.insert(key, principal.clone());
        }
        Ok((self.scoped(principal), false))
    }

    /// The principal, unless it lacks a required scope (checked on every hit).
    fn scoped(&self, p: Arc<TokenPrincipal>) -> Outcome {
        if p.has_scopes(&self.config.required_scopes) {
            Outcome::Active(p)
        } else {
            Outcome::Rejected(Rejection::InsufficientScope)
        }
    }

    /// The held key set while younger than `cache_duration`, else a refreshed one, else (the
    /// URL failing) the held one, stale.
    async fn keys(&self) -> Result<Arc<KeySet>, SourceError> {
        let held = self
            .held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|h| (h.keys.clone(), h.checked_at));
        if let Some((keys, checked_at)) = &held
            && checked_at.elapsed() < self.config.cache_duration
        {
            return Ok(keys.clone());
        }
        let url = self.jwks_url().await;
        let fresh = match url {
            Ok(url) => self.jwks.keys(url, &self.policy, Want::Current).await,
            Err(e) => Err(e),
        };
        match (fresh, held) {
            (Ok(keys), held) => {
                // A set no newer than ours means the refresh failed: keep asking (the shared
                // client rate-limits the URL) rather than trusting it for another period.
                let newer = held
                    .as_ref()
                    .is_none_or(|(h, _)| keys.fetched_at > h.fetched_at);
                if newer || keys.fetched_at.elapsed() < self.config.shared_cache_duration {
                    self.hold(keys.clone());
                }
                Ok(keys)
            }
            (Err(_), Some((keys, _))) => Ok(keys),
            (Err(e), None) => Err(e),
        }
    }

    /// After a kid miss: a set fetched after `stale`, if the shared client will fetch one now.
    async fn newer_keys(&self, stale: &Arc<KeySet>) -> Arc<KeySet> {
        let Ok(url) = self.jwks_url().await else {
            return stale.clone();
        };
        match self
            .jwks
            .keys(url, &self.policy, Want::NewerThan(stale.fetched_at))
            .await
        {
            Ok(keys) if keys.fetched_at > stale.fetched_at => {
                self.hold(keys.clone());
                keys
            }
            _ => stale.clone(),
        }
    }

    fn hold(&self, keys: Arc<KeySet>) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        if held
            .as_ref()
            .is_none_or(|h| h.keys.fetched_at <= keys.fetched_at)
        {
            *held = Some(Held {
                keys,
                checked_at: Instant::now(),
            });
        }
    }

    /// The configured JWKS URL, or `jwks_uri` from the issuer's discovery document (fetched
    /// once; after a failure, retried at most once per `min_refetch_interval`).
    async fn jwks_url(&self) -> Result<&str, SourceError> {
        if let Some(url) = self.jwks_url.get() {
            return Ok(url);
        }
        if lock(&self.discovery_failed_at)
            .is_some_and(|t| t.elapsed() < self.config.min_refetch_interval)
        {
            return Err(SourceError::Unavailable("discovery_backoff"));
        }
        let url = self
            .jwks_url
            .get_or_try_init(|| async {
                let r = self.discover().await;
                let label = if r.is_ok() {
                    "discovery_ok"
                } else {
                    "discovery_error"
                };
                self.jwks
                    .metrics()
                    .jwks_fetches
                    .get_or_create(&IssuerResultLabels {
                        issuer: self.config.issuer.clone(),
                        result: label,
                    })
                    .inc();
                if r.is_err() {
                    *lock(&self.discovery_failed_at) = Some(Instant::now());
                }
                r
            })
            .await?;
        Ok(url)
    }

    async fn discover(&self) -> Result<String, SourceError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let req = self.jwks.http().get(&url);
        let body = fetch::send(req, self.config.timeout, self.config.max_jwks_bytes)
            .await
            .map_err(|e| SourceError::Unavailable(e.as_str()))?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| SourceError::Unavailable("discovery"))?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the one we asked.
        if doc.get("issuer").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            tracing::warn!(issuer = %self.config.issuer, "discovery document names another issuer");
            return Err(SourceError::Unavailable("discovery"));
        }
        doc.get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .map(str::to_owned)
            .ok_or(SourceError::Unavailable("discovery"))
    }
}

/// Whether the token's header says `"alg": "none"` (which `jsonwebtoken` cannot even parse).
fn alg_is_none(token: &str) -> bool {
    use base64::Engine;
    let Some(h) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| {
            v.get("alg")
                .and_then(Value::as_str)
                .map(|a| a.eq_ignore_ascii_case("none"))
        })
        .unwrap_or(false)
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => Rejection::Signature,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::Issuer,
        ErrorKind::InvalidAudience => Rejection::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Rejection::Algorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => Rejection::Claims,
        _ => Rejection::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::oauth2::metrics::Oauth2Metrics;
    use crate::oauth2::tests::Server;

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "api://gate";

    struct TestKey {
        kid: String,
        enc: EncodingKey,
        jwk: Value,
    }

    fn ec_key(kid: &str) -> TestKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let p = pair.public_key().as_ref();
        TestKey {
            kid: kid.into(),
            enc: EncodingKey::from_ec_der(der.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                        "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])}),
        }
    }

    fn jwks(keys: &[&TestKey]) -> String {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    static JTI: AtomicU64 = AtomicU64::new(0);

    fn claims() -> Value {
        json!({"iss": ISS, "aud": [AUD], "sub": "client-1", "client_id": "client-1",
               "scp": ["read"], "exp": now() + 600, "iat": now(), "nbf": now() - 1,
               "jti": JTI.fetch_add(1, Ordering::Relaxed)})
    }

    fn sign(key: &TestKey, claims: &Value) -> String {
        sign_kid(key, claims, Some(&key.kid))
    }

    fn sign_kid(key: &TestKey, claims: &Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, &key.enc).unwrap()
    }

    /// A JWKS server serving `body` at /jwks (and discovery at the well-known path).
    async fn jwks_server(body: String) -> Server {
        let body = Arc::new(Mutex::new(body));
        Server::start(Arc::new(move |_: &str, _: Option<&str>, _: &[u8]| {
            (200, lock(&body).clone())
        }))
        .await
    }

    fn serve_jwks(s: &Server, body: String) {
        s.respond(Arc::new(move |_: &str, _: Option<&str>, _: &[u8]| {
            (200, body.clone())
        }));
    }

    fn fail(s: &Server) {
        s.respond(Arc::new(|_: &str, _: Option<&str>, _: &[u8]| {
            (503, "{}".into())
        }));
    }

    fn config(s: &Server) -> JwtIssuerConfig {
        let mut c = JwtIssuerConfig::new(ISS, vec![AUD.into()]);
        c.jwks_url = Some(format!("{}/jwks", s.base));
        c.algorithms = vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA];
        c.leeway = Duration::ZERO;
        c
    }

    fn issuer(c: JwtIssuerConfig) -> (JwtIssuer, Arc<Oauth2Metrics>) {
        let metrics = Arc::new(Oauth2Metrics::default());
        let client = JwksClient::new(metrics.clone(), Duration::from_secs(1));
        (JwtIssuer::new(c, client, None).unwrap(), metrics)
    }

    async fn rejected(i: &JwtIssuer, token: &str) -> Rejection {
        match i.verify(token).await {
            Ok(Outcome::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_token_verifies_and_projects_its_claims() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let (i, m) = issuer(config(&s));
        let t = sign(&k, &claims());
        let Outcome::Active(p) = i.verify(&t).await.unwrap() else {
            panic!("not active")
        };
        assert_eq!(p.subject.as_deref(), Some("client-1"));
        assert_eq!(p.client_id.as_deref(), Some("client-1"));
        assert_eq!(p.scopes, ["read"]);
        assert_eq!(p.claims["iss"], ISS);
        // A repeat is a cache hit: same principal, no signature verification.
        let Outcome::Active(again) = i.verify(&t).await.unwrap() else {
            panic!()
        };
        assert!(Arc::ptr_eq(&p, &again));
        let count = |r| {
            m.jwt_verifications
                .get_or_create(&crate::telemetry::ResultLabel { result: r })
                .get()
        };
        assert_eq!((count("valid"), count("cached")), (1, 1));
    }

    #[tokio::test]
    async fn every_rejection_has_its_reason() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let (i, _) = issuer(config(&s));
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            sign(&k, &c)
        };
        let expired = with(&|c| c["exp"] = json!(now() - 5));
        assert_eq!(rejected(&i, &expired).await, Rejection::Expired);
        let aud = with(&|c| c["aud"] = json!(["api://other"]));
        assert_eq!(rejected(&i, &aud).await, Rejection::Audience);
        let iss = with(&|c| c["iss"] = json!("https://evil.test"));
        assert_eq!(rejected(&i, &iss).await, Rejection::Issuer);
        let nbf = with(&|c| c["nbf"] = json!(now() + 300));
        assert_eq!(rejected(&i, &nbf).await, Rejection::NotYetValid);
        let no_iss = with(&|c| {
            c.as_object_mut().unwrap().remove("iss");
        });
        assert_eq!(rejected(&i, &no_iss).await, Rejection::Claims);
        let no_exp = with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        });
        assert_eq!(rejected(&i, &no_exp).await, Rejection::Claims);

        // alg none, with or without a signature.
        let payload = B64.encode(claims().to_string());
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"none","kid":"k1"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            let t = format!("{}.{payload}.", B64.encode(header));
            assert_eq!(rejected(&i, &t).await, Rejection::Algorithm, "{header}");
        }
        // HS256 keyed with the public key (the classic confusion attack), in several encodings.
        let x = k.jwk["x"].as_str().unwrap().to_owned();
        for secret in [
            k.jwk.to_string().into_bytes(),
            x.into_bytes(),
            jwks(&[&k]).into_bytes(),
        ] {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("k1".into());
            let t =
                jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
            assert_eq!(rejected(&i, &t).await, Rejection::Algorithm);
        }
        // An allowed algorithm the key is not for (RS256 claimed, EC key).
        let forged = {
            let t = sign(&k, &claims());
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            parts[0] = B64.encode(r#"{"alg":"RS256","kid":"k1"}"#);
            parts.join(".")
        };
        assert_eq!(rejected(&i, &forged).await, Rejection::Algorithm);

        // Tampered payload and tampered signature.
        let t = sign(&k, &claims());
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c = claims();
        c["sub"] = json!("admin");
        parts[1] = B64.encode(c.to_string());
        assert_eq!(rejected(&i, &parts.join(".")).await, Rejection::Signature);
        let mut sig = B64.decode(t.rsplit('.').next().unwrap()).unwrap();
        sig[5] ^= 1;
        let tampered = format!("{}.{}", t.rsplit_once('.').unwrap().0, B64.encode(sig));
        assert_eq!(rejected(&i, &tampered).await, Rejection::Signature);
        // Signed by a key the issuer does not have, under a known kid.
        let stranger = ec_key("k1");
        assert_eq!(
            rejected(&i, &sign(&stranger, &claims())).await,
            Rejection::Signature
        );

        // Unknown kid (after one refetch that does not have it either).
        assert_eq!(
            rejected(&i, &sign(&ec_key("nope"), &claims())).await,
            Rejection::UnknownKid
        );
        // Garbage and `crit`.
        for junk in ["", "a.b", "a.b.c", "....", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            assert_eq!(rejected(&i, junk).await, Rejection::Malformed, "{junk:.20}");
        }
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        h.crit = Some(vec!["exp".into()]);
        let crit = jsonwebtoken::encode(&h, &claims(), &k.enc).unwrap();
        assert_eq!(rejected(&i, &crit).await, Rejection::Malformed);
    }

    #[tokio::test]
    async fn without_a_kid_only_a_single_key_set_verifies() {
        let (k1, k2) = (ec_key("k1"), ec_key("k2"));
        let s = jwks_server(jwks(&[&k1])).await;
        let (i, _) = issuer(config(&s));
        assert!(matches!(
            i.verify(&sign_kid(&k1, &claims(), None)).await,
            Ok(Outcome::Active(_))
        ));
        let s = jwks_server(jwks(&[&k1, &k2])).await;
        let (i, _) = issuer(config(&s));
        assert_eq!(
            rejected(&i, &sign_kid(&k1, &claims(), None)).await,
            Rejection::MissingKid
        );
    }

    #[tokio::test]
    async fn symmetric_and_encryption_keys_in_a_jwks_are_ignored() {
        let k = ec_key("k1");
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": B64.encode(b"secret"), "alg": "HS256"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": k.jwk["x"], "y": k.jwk["y"]},
            k.jwk.clone(),
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes(), Instant::now()).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("k1")]);
        let s = jwks_server(doc.to_string()).await;
        let (i, _) = issuer(config(&s));
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hmac".into());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
        assert_eq!(rejected(&i, &t).await, Rejection::Algorithm);
    }

    #[tokio::test]
    async fn a_thousand_tokens_cost_one_jwks_fetch() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let (i, m) = issuer(config(&s));
        let i = Arc::new(i);
        let tokens: Vec<String> = (0..1000).map(|_| sign(&k, &claims())).collect();
        let tasks: Vec<_> = tokens
            .into_iter()
            .map(|t| {
                let i = i.clone();
                tokio::spawn(async move { i.verify(&t).await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Ok(Outcome::Active(_))));
        }
        assert_eq!(s.hits("/jwks"), 1);
        assert_eq!(m.jwks_fetch_count(ISS, "ok"), 1);
    }

    #[tokio::test]
    async fn issuers_naming_one_url_share_its_fetch() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let metrics = Arc::new(Oauth2Metrics::default());
        let client = JwksClient::new(metrics, Duration::from_secs(1));
        let mut other = config(&s);
        other.issuer = "https://other.test".into();
        let a = JwtIssuer::new(config(&s), client.clone(), None).unwrap();
        let b = JwtIssuer::new(other, client, None).unwrap();
        assert!(matches!(
            a.verify(&sign(&k, &claims())).await,
            Ok(Outcome::Active(_))
        ));
        let mut c = claims();
        c["iss"] = json!("https://other.test");
        assert!(matches!(
            b.verify(&sign(&k, &c)).await,
            Ok(Outcome::Active(_))
        ));
        assert_eq!(s.hits("/jwks"), 1);
    }

    #[tokio::test]
    async fn a_random_kid_flood_refetches_at_most_once_per_interval() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let mut c = config(&s);
        c.min_refetch_interval = Duration::from_millis(300);
        let (i, _) = issuer(c);
        let i = Arc::new(i);
        assert!(matches!(
            i.verify(&sign(&k, &claims())).await,
            Ok(Outcome::Active(_))
        ));
        let flood = |n: usize| {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let i = i.clone();
                    let t = sign(
                        &ec_key(&format!("rnd-{}", rand::random::<u64>())),
                        &claims(),
                    );
                    tokio::spawn(async move { i.verify(&t).await })
                })
                .collect();
            async move {
                for t in tasks {
                    assert!(matches!(
                        t.await.unwrap(),
                        Ok(Outcome::Rejected(Rejection::UnknownKid))
                    ));
                }
            }
        };
        // The first fetch was under 300 ms ago: the whole flood waits for the interval.
        flood(300).await;
        assert_eq!(s.hits("/jwks"), 1, "no refetch inside the interval");
        tokio::time::sleep(Duration::from_millis(350)).await;
        flood(300).await;
        assert_eq!(s.hits("/jwks"), 2, "one refetch for the whole flood");
        flood(300).await;
        assert_eq!(s.hits("/jwks"), 2);
    }

    #[tokio::test]
    async fn a_rotated_key_is_found_with_exactly_one_refetch() {
        let (old, new) = (ec_key("old"), ec_key("new"));
        let s = jwks_server(jwks(&[&old])).await;
        let mut c = config(&s);
        c.min_refetch_interval = Duration::ZERO;
        let (i, _) = issuer(c);
        assert!(matches!(
            i.verify(&sign(&old, &claims())).await,
            Ok(Outcome::Active(_))
        ));
        serve_jwks(&s, jwks(&[&new, &old]));
        for _ in 0..20 {
            assert!(matches!(
                i.verify(&sign(&new, &claims())).await,
                Ok(Outcome::Active(_))
            ));
            assert!(matches!(
                i.verify(&sign(&old, &claims())).await,
                Ok(Outcome::Active(_))
            ));
        }
        assert_eq!(s.hits("/jwks"), 2);
    }

    #[tokio::test]
    async fn stale_keys_are_served_while_the_jwks_url_fails() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let mut c = config(&s);
        c.cache_duration = Duration::from_millis(50);
        c.shared_cache_duration = Duration::from_millis(50);
        c.min_refetch_interval = Duration::from_millis(200);
        let (i, m) = issuer(c);
        assert!(matches!(
            i.verify(&sign(&k, &claims())).await,
            Ok(Outcome::Active(_))
        ));
        fail(&s);
        tokio::time::sleep(Duration::from_millis(250)).await;
        for _ in 0..50 {
            assert!(matches!(
                i.verify(&sign(&k, &claims())).await,
                Ok(Outcome::Active(_))
            ));
        }
        assert_eq!(s.hits("/jwks"), 2, "one failed refresh, then backoff");
        assert_eq!(m.jwks_fetch_count(ISS, "5xx"), 1);
        // Back up: the next refresh after the interval picks up the new set.
        tokio::time::sleep(Duration::from_millis(250)).await;
        serve_jwks(&s, jwks(&[&k]));
        assert!(matches!(
            i.verify(&sign(&k, &claims())).await,
            Ok(Outcome::Active(_))
        ));
        assert_eq!(s.hits("/jwks"), 3);
    }

    #[tokio::test]
    async fn without_any_keys_a_failing_url_is_an_upstream_error_never_valid() {
        let k = ec_key("k1");
        let s = jwks_server(String::new()).await;
        fail(&s);
        let (i, _) = issuer(config(&s));
        assert!(matches!(
            i.verify(&sign(&k, &claims())).await,
            Err(SourceError::Unavailable(_))
        ));
        // Oversized and undecodable documents are failures too.
        let mut c = config(&s);
        c.max_jwks_bytes = 100;
        serve_jwks(&s, jwks(&[&k]));
        let (i, m) = issuer(c);
        assert!(i.verify(&sign(&k, &claims())).await.is_err());
        assert_eq!(m.jwks_fetch_count(ISS, "too_large"), 1);
        serve_jwks(&s, "not json".into());
        let (i, m) = issuer(config(&s));
        assert!(i.verify(&sign(&k, &claims())).await.is_err());
        assert_eq!(m.jwks_fetch_count(ISS, "undecodable"), 1);
    }

    #[tokio::test]
    async fn the_jwks_url_can_come_from_discovery() {
        let k = ec_key("k1");
        let s = jwks_server(String::new()).await;
        let base = s.base.clone();
        let keys = jwks(&[&k]);
        s.respond(Arc::new(
            move |path: &str, _: Option<&str>, _: &[u8]| match path {
                "/.well-known/openid-configuration" => (
                    200,
                    json!({"issuer": base, "jwks_uri": format!("{base}/keys")}).to_string(),
                ),
                "/keys" => (200, keys.clone()),
                _ => (404, "{}".into()),
            },
        ));
        let mut c = JwtIssuerConfig::new(s.base.clone(), vec![AUD.into()]);
        c.algorithms = vec![Algorithm::ES256];
        let (i, _) = issuer(c);
        let mut cl = claims();
        cl["iss"] = json!(s.base);
        for _ in 0..3 {
            assert!(matches!(
                i.verify(&sign(&k, &cl)).await,
                Ok(Outcome::Active(_))
            ));
        }
        assert_eq!(
            (s.hits("/.well-known/openid-configuration"), s.hits("/keys")),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn required_scopes_are_checked_on_hits_too() {
        let k = ec_key("k1");
        let s = jwks_server(jwks(&[&k])).await;
        let mut c = config(&s);
        c.required_scopes = vec!["write".into()];
        let (i, _) = issuer(c);
        let t = sign(&k, &claims());
        for _ in 0..2 {
            assert_eq!(rejected(&i, &t).await, Rejection::InsufficientScope);
        }
    }
}
