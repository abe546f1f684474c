//! JWT minting: claims from the session, the signing key held ready, and minted tokens cached per
//! session and audience, re-minted when less than 10 % of their lifetime remains (as Oathkeeper's
//! `id_token` mutator does).

pub mod keys;
pub mod reload;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

pub use keys::{KeyError, KeySet};

use crate::config::JwtConfig;
use crate::telemetry::Metrics;

/// A minted token, kept as what cannot be recomputed: its times, its `jti` and its signature.
/// The header value is rebuilt from these, the principal and the signer on every use (a few
/// hundred nanoseconds of encoding, no signing), so that a cached session costs ~150 bytes of
/// token instead of the ~640 of the `Bearer <jwt>` string.
#[derive(Clone)]
struct Minted {
    audience: Option<Arc<str>>,
    /// The signer generation that signed it (its key and header).
    generation: u64,
    stamp: Stamp,
    signature: Signature,
}

/// What a minting adds to the principal's claims: its times and its id.
#[derive(Clone, Copy)]
struct Stamp {
    iat: u64,
    exp: u64,
    jti: [u8; 16],
}

/// A signature: inline up to 64 bytes (ES256, EdDSA: no allocation of its own), boxed beyond
/// (RSA).
#[derive(Clone)]
enum Signature {
    Inline(u8, [u8; 64]),
    Boxed(Box<[u8]>),
}

impl Signature {
    fn new(bytes: Vec<u8>) -> Signature {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= 64 => {
                let mut inline = [0u8; 64];
                inline[..bytes.len()].copy_from_slice(&bytes);
                Signature::Inline(len, inline)
            }
            _ => Signature::Boxed(bytes.into_boxed_slice()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Signature::Inline(len, bytes) => &bytes[..usize::from(*len)],
            Signature::Boxed(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("audience", &self.audience)
            .field("signature", &"<redacted>")
            .field("exp", &self.stamp.exp)
            .finish_non_exhaustive()
    }
}

/// Whom a token is minted for, borrowed from the source that proved it (a Kratos session today).
/// `generation` identifies this answer of the source: minted tokens are cached under it and the
/// audience, so a refreshed answer (new claims, new AAL) never gets an older answer's token.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// `sub`: the identity.
    pub subject: &'a str,
    /// `sid`: the Kratos session, for session credentials.
    pub session_id: Option<&'a str>,
    /// `aal`: Kratos' spelling of the assurance level, for session credentials.
    pub aal: Option<&'a str>,
    /// `auth_method`: `session`, `jwt` or `oauth2`.
    pub auth_method: &'static str,
    /// The token never outlives this.
    pub expires_at: SystemTime,
    /// Configured extra claims, pre-serialised as `"name":value` pairs joined by `,`.
    pub extra_claims: &'a str,
    /// Unique per answer of the source (see above).
    pub generation: u64,
    /// The principal's own place for its default-audience token (sessions), if it has one.
    pub slot: Option<&'a TokenSlot>,
}

/// Where a session keeps its token for the default audience: the token lives and dies with the
/// session's cache entry, so the common case costs no entry of its own in the minter's cache.
#[derive(Default)]
pub struct TokenSlot(arc_swap::ArcSwapOption<Minted>);

impl std::fmt::Debug for TokenSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSlot(<redacted>)")
    }
}

/// Minted tokens, per principal generation and audience, bounded in bytes.
type TokenCache = moka::sync::Cache<(u64, u64), Arc<Minted>>;

fn audience_hash(audience: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    audience.hash(&mut h);
    h.finish()
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The session has already ended.
    #[error("session has ended")]
    SessionEnded,
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

struct Signer {
    /// Bumped on every key replacement: a token signed by another generation is re-minted.
    generation: u64,
    keys: KeySet,
    header_b64: String,
    public_jwks: Arc<str>,
    openid_configuration: Arc<str>,
}

/// Mints JWTs for sessions.
pub struct Minter {
    signer: RwLock<Arc<Signer>>,
    issuer: String,
    issuer_json: String,
    default_audience_json: Option<String>,
    ttl: Duration,
    tokens: TokenCache,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn audience_json(audience: &[String]) -> Option<String> {
    match audience {
        [] => None,
        [one] => Some(serde_json::to_string(one).unwrap_or_default()),
        many => Some(serde_json::to_string(many).unwrap_or_default()),
    }
}

impl Signer {
    fn new(keys: KeySet, issuer: &str, generation: u64) -> Signer {
        let header = serde_json::json!({"alg": keys.signing.alg.as_str(), "kid": keys.signing.kid, "typ": "JWT"});
        Signer {
            header_b64: B64.encode(header.to_string()),
            public_jwks: keys.public_jwks().to_string().into(),
            openid_configuration: openid_configuration(&keys, issuer).to_string().into(),
            keys,
            generation,
        }
    }
}

/// The OpenID Provider metadata for discovery (`/.well-known/openid-configuration`): enough for
/// JWT libraries, Istio `RequestAuthentication` and Envoy `jwt_authn` to find the keys from the
/// issuer. `id_token_signing_alg_values_supported` lists the signing key's algorithm first, then
/// those of the other published keys.
fn openid_configuration(keys: &KeySet, issuer: &str) -> serde_json::Value {
    let mut algs = vec![keys.signing.alg.as_str().to_string()];
    for alg in keys
        .public
        .iter()
        .filter_map(|k| k.get("alg").and_then(serde_json::Value::as_str))
    {
        if !algs.iter().any(|a| a == alg) {
            algs.push(alg.to_string());
        }
    }
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
        "id_token_signing_alg_values_supported": algs,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    })
}

impl Minter {
    /// Builds a minter around loaded keys; minted tokens are kept up to `max_bytes`.
    pub fn new(config: &JwtConfig, keys: KeySet, max_bytes: u64, metrics: Arc<Metrics>) -> Minter {
        Minter {
            tokens: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, t: &Arc<Minted>| {
                    u32::try_from(t.signature.as_slice().len() + 160).unwrap_or(u32::MAX)
                })
                .time_to_live(config.ttl)
                .build(),
            signer: RwLock::new(Arc::new(Signer::new(keys, &config.issuer, 0))),
            issuer: config.issuer.clone(),
            issuer_json: serde_json::to_string(&config.issuer).unwrap_or_default(),
            default_audience_json: audience_json(&config.audience),
            ttl: config.ttl,
            metrics,
        }
    }

    /// Replaces the keys (key rotation); tokens minted with the old signing key are re-minted.
    pub fn replace_keys(&self, keys: KeySet) {
        let mut current = self.signer.write().unwrap_or_else(|e| e.into_inner());
        let generation = current.generation + 1;
        *current = Arc::new(Signer::new(keys, &self.issuer, generation));
    }

    fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The public JWKS document.
    pub fn public_jwks(&self) -> Arc<str> {
        self.signer().public_jwks.clone()
    }

    /// The OpenID discovery document (follows key rotation).
    pub fn openid_configuration(&self) -> Arc<str> {
        self.signer().openid_configuration.clone()
    }

    /// The `kid` tokens are signed with now.
    pub fn signing_kid(&self) -> String {
        self.signer().keys.signing.kid.clone()
    }

    /// `Bearer <jwt>` for the principal and audience (`None`: the configured default), reusing
    /// a minted token while more than 10 % of its lifetime remains.
    pub fn header_value(
        &self,
        principal: &Principal<'_>,
        audience: Option<&str>,
    ) -> Result<Arc<str>, MintError> {
        let now = SystemTime::now();
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        // One signer for the whole call: the reuse check and the rendering agree on the key.
        let signer = self.signer();
        let key = (principal.generation, audience_hash(audience));
        // The slot holds only the default audience's token of this very principal answer.
        let slot = principal.slot.filter(|_| audience.is_none());
        let held = match slot {
            Some(slot) => slot.0.load_full(),
            None => self
                .tokens
                .get(&key)
                .filter(|t| t.audience.as_deref() == audience),
        };
        if let Some(t) = held {
            let Stamp { iat, exp, .. } = t.stamp;
            let lifetime = exp.saturating_sub(iat);
            if t.generation == signer.generation && exp > now_s && (exp - now_s) * 10 > lifetime {
                let mut value = self.signing_input(&signer, principal, audience, t.stamp);
                push_signature(&mut value, t.signature.as_slice());
                return Ok(value.into());
            }
        }
        let end = principal
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let exp = (now_s + self.ttl.as_secs()).min(end);
        if exp <= now_s {
            return Err(MintError::SessionEnded);
        }
        let stamp = Stamp {
            iat: now_s,
            exp,
            jti: *uuid::Uuid::new_v4().as_bytes(),
        };
        let mut value = self.signing_input(&signer, principal, audience, stamp);
        let signature = signer
            .keys
            .signing
            .sign(&value.as_bytes()[BEARER.len()..])?;
        self.metrics.jwt_mints.inc();
        push_signature(&mut value, &signature);
        let minted = Arc::new(Minted {
            audience: audience.map(Into::into),
            generation: signer.generation,
            stamp,
            signature: Signature::new(signature),
        });
        match slot {
            Some(slot) => slot.0.store(Some(minted)),
            None => self.tokens.insert(key, minted),
        }
        Ok(value.into())
    }

    /// `Bearer <header>.<claims>`: what the signature covers (after the `Bearer ` prefix). A pure
    /// function of the signer, the principal answer, the audience and the minted token's times
    /// and id, so a token rebuilt from them is byte for byte the one that was signed.
    fn signing_input(
        &self,
        signer: &Signer,
        principal: &Principal<'_>,
        audience: Option<&str>,
        t: Stamp,
    ) -> String {
        use std::fmt::Write as _;
        let mut claims = String::with_capacity(320 + principal.extra_claims.len());
        claims.push_str("{\"iss\":");
        claims.push_str(&self.issuer_json);
        claims.push_str(",\"sub\":");
        push_json_str(&mut claims, principal.subject);
        match audience {
            Some(a) => {
                claims.push_str(",\"aud\":");
                push_json_str(&mut claims, a);
            }
            None => {
                if let Some(aud) = &self.default_audience_json {
                    claims.push_str(",\"aud\":");
                    claims.push_str(aud);
                }
            }
        }
        let _ = write!(
            claims,
            ",\"iat\":{iat},\"nbf\":{iat},\"exp\":{exp},\"jti\":\"{jti}\"",
            iat = t.iat,
            exp = t.exp,
            jti = uuid::Uuid::from_bytes(t.jti).hyphenated()
        );
        if let Some(sid) = principal.session_id {
            claims.push_str(",\"sid\":");
            push_json_str(&mut claims, sid);
        }
        if let Some(aal) = principal.aal {
            claims.push_str(",\"aal\":");
            push_json_str(&mut claims, aal);
        }
        claims.push_str(",\"auth_method\":\"");
        claims.push_str(principal.auth_method);
        claims.push('"');
        if !principal.extra_claims.is_empty() {
            claims.push(',');
            claims.push_str(principal.extra_claims);
        }
        claims.push('}');
        let mut value = String::with_capacity(
            BEARER.len() + signer.header_b64.len() + claims.len() * 4 / 3 + 8 + 700,
        );
        value.push_str(BEARER);
        value.push_str(&signer.header_b64);
        value.push('.');
        B64.encode_string(claims.as_bytes(), &mut value);
        value
    }
}

const BEARER: &str = "Bearer ";

fn push_signature(value: &mut String, signature: &[u8]) {
    value.push('.');
    B64.encode_string(signature, value);
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Loads the signing keys named by the configuration, or generates an ephemeral key.
pub fn load_keys(config: &JwtConfig) -> anyhow::Result<KeySet> {
    if let Some(path) = &config.jwks_file {
        let kid = config.signing_kid.as_deref().filter(|k| !k.is_empty());
        return KeySet::from_jwks_file(path, kid)
            .map_err(|e| anyhow::anyhow!("jwt.jwks_file: {e}"));
    }
    if let Some(path) = &config.pem_file {
        return KeySet::from_pem_file(path).map_err(|e| anyhow::anyhow!("jwt.pem_file: {e}"));
    }
    let (keys, _) = KeySet::generate(config.ephemeral_algorithm, None)?;
    tracing::warn!(
        kid = %keys.signing.kid,
        "NO SIGNING KEY CONFIGURED: using an ephemeral key that dies with this process. \
         Every replica signs with a different key and tokens stop verifying after a restart. \
         Generate one with `sessiongate keys generate` and set jwt.jwks_file."
    );
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Algorithm;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn session(expires_in: u64) -> Principal<'static> {
        Principal {
            subject: "id-1",
            session_id: Some("sid-1"),
            aal: Some("aal1"),
            auth_method: "session",
            expires_at: SystemTime::now() + Duration::from_secs(expires_in),
            extra_claims: r#""email":"a@b.c""#,
            // Each call stands for a new answer of the source.
            generation: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            slot: None,
        }
    }

    #[test]
    fn a_sessions_default_audience_token_is_kept_in_its_slot() {
        let m = minter();
        let slot = TokenSlot::default();
        let s = Principal {
            slot: Some(&slot),
            ..session(3600)
        };
        let a = m.header_value(&s, None).unwrap();
        assert_eq!(a, m.header_value(&s, None).unwrap());
        m.tokens.run_pending_tasks();
        assert_eq!(m.tokens.entry_count(), 0, "kept in the slot, not the cache");
        assert_eq!(m.metrics.jwt_mints.get(), 1);
        // Another audience goes to the cache; the slot keeps the default one.
        let b = m.header_value(&s, Some("admin")).unwrap();
        assert_eq!(claims(&b)["aud"], "admin");
        m.tokens.run_pending_tasks();
        assert_eq!(m.tokens.entry_count(), 1);
        assert_eq!(a, m.header_value(&s, None).unwrap());
        // Key rotation re-mints into the slot.
        let (keys, _) = KeySet::generate(Algorithm::ES256, Some("k2".into())).unwrap();
        m.replace_keys(keys);
        assert_ne!(a, m.header_value(&s, None).unwrap());
        assert_eq!(m.metrics.jwt_mints.get(), 3);
    }

    fn minter() -> Minter {
        let (keys, _) = KeySet::generate(Algorithm::ES256, Some("k1".into())).unwrap();
        let config = JwtConfig {
            audience: vec!["app".into()],
            ..JwtConfig::default()
        };
        Minter::new(&config, keys, 1 << 20, Metrics::new())
    }

    fn claims(header_value: &str) -> serde_json::Value {
        let jwt = header_value.strip_prefix("Bearer ").unwrap();
        let part = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn claims_and_reuse() {
        let m = minter();
        let s = session(3600);
        let a = m.header_value(&s, None).unwrap();
        let c = claims(&a);
        assert_ne!(
            a,
            m.header_value(&session(3600), None).unwrap(),
            "a new answer of the source gets its own token"
        );
        assert_eq!(c["sub"], "id-1");
        assert_eq!(c["sid"], "sid-1");
        assert_eq!(c["aud"], "app");
        assert_eq!(c["email"], "a@b.c");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
        assert_eq!(a, m.header_value(&s, None).unwrap(), "cached");
        let b = m.header_value(&s, Some("admin")).unwrap();
        assert_eq!(claims(&b)["aud"], "admin");
        assert_eq!(a, m.header_value(&s, None).unwrap(), "per audience");
    }

    #[test]
    fn exp_never_past_session_and_reminted_near_end() {
        let m = minter();
        let s = session(20);
        let a = m.header_value(&s, None).unwrap();
        let c = claims(&a);
        let end = s.expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(c["exp"].as_u64().unwrap(), end);
        let ended = session(0);
        assert!(matches!(
            m.header_value(&ended, None),
            Err(MintError::SessionEnded)
        ));
    }

    #[test]
    fn key_replacement_re_mints() {
        let m = minter();
        let s = session(3600);
        let a = m.header_value(&s, None).unwrap();
        let (keys, _) = KeySet::generate(Algorithm::EdDSA, Some("k2".into())).unwrap();
        m.replace_keys(keys);
        let b = m.header_value(&s, None).unwrap();
        assert_ne!(a, b);
        assert_eq!(m.signing_kid(), "k2");
    }

    /// A reused token is rebuilt from its kept parts: it must be the very token that was signed,
    /// and verify, for every algorithm and for ids that need JSON escaping.
    #[test]
    fn a_rebuilt_token_is_the_signed_one_and_verifies() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
            let (keys, _) = KeySet::generate(alg, Some("k1".into())).unwrap();
            let jwks: jsonwebtoken::jwk::JwkSet =
                serde_json::from_value(keys.public_jwks()).unwrap();
            let m = Minter::new(&JwtConfig::default(), keys, 1 << 20, Metrics::new());
            let slot = TokenSlot::default();
            let s = Principal {
                subject: "id-\"quoted\"-\u{e9}\u{1F600}",
                session_id: Some("sid\\1"),
                slot: Some(&slot),
                ..session(3600)
            };
            for audience in [None, Some("admin")] {
                let first = m.header_value(&s, audience).unwrap();
                let again = m.header_value(&s, audience).unwrap();
                assert_eq!(first, again, "{alg:?} {audience:?}");
                let jwt = again.strip_prefix("Bearer ").unwrap();
                let header = jsonwebtoken::decode_header(jwt).unwrap();
                let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
                let mut v = jsonwebtoken::Validation::new(header.alg);
                v.validate_aud = false;
                let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
                    .unwrap_or_else(|e| panic!("{alg:?} {audience:?}: {e}"));
                assert_eq!(data.claims["sub"], s.subject);
                assert_eq!(data.claims["sid"], "sid\\1");
            }
            assert_eq!(
                m.metrics.jwt_mints.get(),
                2,
                "{alg:?}: one signature per audience"
            );
        }
    }
}
