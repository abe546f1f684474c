//! Signing keys: load a private JWKS file (Oathkeeper's `id_token` JWKS works unchanged) or a PEM
//! file, generate keys, pick the signing key by explicit `kid`, and publish public keys only.
//!
//! Each key is parsed into an aws-lc-rs key pair once; signing never re-parses key material.

use std::path::Path;

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};

use crate::config::Algorithm;

/// Why keys could not be loaded. Messages name the key and the problem, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// I/O.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JWKS.
    #[error("{0}")]
    Format(String),
    /// A key in the file is unusable.
    #[error("key {index} (kid {kid:?}): {message}")]
    Key {
        /// Position in `keys`.
        index: usize,
        /// Its `kid`, if any.
        kid: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Crypto failure.
    #[error("crypto: {0}")]
    Crypto(String),
}

enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// One private signing key.
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Signs `message` (the JWS signing input) and returns the raw signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ec(k) => k
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Crypto("ECDSA signing failed".into())),
            Pair::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Pair::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| KeyError::Crypto("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }

    /// The public JWK of this key.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.pair {
            Pair::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
            Pair::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.public_key().as_ref())})
            }
            Pair::Rsa(k) => {
                let (n, e) = rsa_public_components(k.public_key().as_ref()).unwrap_or_default();
                json!({"kty": "RSA", "n": B64.encode(n), "e": B64.encode(e)})
            }
        };
        let o = jwk.as_object_mut().expect("object");
        o.insert("kid".into(), self.kid.clone().into());
        o.insert("alg".into(), self.alg.as_str().into());
        o.insert("use".into(), "sig".into());
        jwk
    }
}

/// The loaded keys: one signing key and every public key to publish.
#[derive(Debug)]
pub struct KeySet {
    /// The key tokens are signed with.
    pub signing: SigningKey,
    /// Every public key (the signing key's, other private keys', and public-only keys in the file).
    pub public: Vec<Value>,
}

impl KeySet {
    /// Loads a private JWKS file.
    pub fn from_jwks_file(path: &Path, signing_kid: Option<&str>) -> Result<KeySet, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_jwks(&text, signing_kid)
    }

    /// Loads a private JWKS document.
    pub fn from_jwks(text: &str, signing_kid: Option<&str>) -> Result<KeySet, KeyError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            KeyError::Format(format!(
                "not a JSON document (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or_else(|| {
            KeyError::Format("expected a JWKS object with a \"keys\" array".into())
        })?;
        if keys.is_empty() {
            return Err(KeyError::Format("the JWKS has no keys".into()));
        }
        let mut private = Vec::new();
        let mut public = Vec::new();
        for (index, jwk) in keys.iter().enumerate() {
            let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
            let err = |message: String| KeyError::Key {
                index,
                kid: kid.clone(),
                message,
            };
            let obj = jwk
                .as_object()
                .ok_or_else(|| err("not a JSON object".into()))?;
            if obj
                .get("use")
                .and_then(Value::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            match key_from_jwk(obj).map_err(err)? {
                Some(key) => {
                    public.push(key.public_jwk());
                    private.push(key);
                }
                None => public.push(public_only(obj).map_err(err)?),
            }
        }
        let signing = match signing_kid {
            Some(kid) => {
                let pos = private.iter().position(|k| k.kid == kid).ok_or_else(|| {
                    KeyError::Format(format!(
                        "no private key with kid {kid:?} (private kids: {:?})",
                        private.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>()
                    ))
                })?;
                private.swap_remove(pos)
            }
            None if private.is_empty() => {
                return Err(KeyError::Format(
                    "the JWKS has no private signing key".into(),
                ));
            }
            None => private.swap_remove(0),
        };
        let mut seen = std::collections::HashSet::new();
        for jwk in &public {
            let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default();
            if !seen.insert(kid.to_owned()) {
                return Err(KeyError::Format(format!("duplicate kid {kid:?}")));
            }
        }
        Ok(KeySet { signing, public })
    }

    /// Loads a PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA); the kid is its RFC 7638 thumbprint.
    pub fn from_pem_file(path: &Path) -> Result<KeySet, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let (label, der) =
            pem_decode(&text).ok_or_else(|| KeyError::Format("no PEM block found".into()))?;
        let pair = match label.as_str() {
            "PRIVATE KEY" => {
                if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                {
                    Pair::Ec(k)
                } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                    Pair::Ed(k)
                } else if let Ok(k) = RsaKeyPair::from_pkcs8(&der) {
                    Pair::Rsa(k)
                } else {
                    return Err(KeyError::Format(
                        "unsupported PKCS#8 key: use P-256, Ed25519 or RSA (2048+ bits)".into(),
                    ));
                }
            }
            "EC PRIVATE KEY" => Pair::Ec(
                EcdsaKeyPair::from_private_key_der(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &der,
                )
                .map_err(|_| {
                    KeyError::Format("unsupported EC key: only P-256 is supported".into())
                })?,
            ),
            "RSA PRIVATE KEY" => Pair::Rsa(
                RsaKeyPair::from_der(&der)
                    .map_err(|e| KeyError::Format(format!("bad RSA key: {e}")))?,
            ),
            other => return Err(KeyError::Format(format!("unsupported PEM block {other:?}"))),
        };
        let key = signing_key(pair, None);
        Ok(KeySet {
            public: vec![key.public_jwk()],
            signing: key,
        })
    }

    /// Generates a fresh key (used for `keys generate` and the ephemeral key of `serve`).
    pub fn generate(alg: Algorithm, kid: Option<String>) -> Result<(KeySet, Value), KeyError> {
        let crypto = |_| KeyError::Crypto("key generation failed".into());
        let (pair, private): (Pair, Map<String, Value>) = match alg {
            Algorithm::ES256 => {
                let k = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(crypto)?;
                let d = k.private_key().as_be_bytes().map_err(crypto)?;
                let m = [("d".to_string(), Value::from(B64.encode(d.as_ref())))]
                    .into_iter()
                    .collect();
                (Pair::Ec(k), m)
            }
            Algorithm::EdDSA => {
                let k = Ed25519KeyPair::generate().map_err(crypto)?;
                let seed = k.seed().map_err(crypto)?;
                let d = seed.as_be_bytes().map_err(crypto)?;
                let m = [("d".to_string(), Value::from(B64.encode(d.as_ref())))]
                    .into_iter()
                    .collect();
                (Pair::Ed(k), m)
            }
            Algorithm::RS256 => {
                use aws_lc_rs::encoding::AsDer;
                let k = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(crypto)?;
                let der = k.as_der().map_err(crypto)?;
                let parts = rsa_private_components(der.as_ref())
                    .ok_or_else(|| KeyError::Crypto("cannot read generated RSA key".into()))?;
                let names = ["n", "e", "d", "p", "q", "dp", "dq", "qi"];
                let m = names
                    .iter()
                    .zip(parts)
                    .skip(2)
                    .map(|(n, v)| (n.to_string(), Value::from(B64.encode(v))))
                    .collect();
                (Pair::Rsa(k), m)
            }
        };
        let key = signing_key(pair, kid);
        let mut jwk = key.public_jwk();
        jwk.as_object_mut().expect("object").extend(private);
        Ok((
            KeySet {
                public: vec![key.public_jwk()],
                signing: key,
            },
            json!({ "keys": [jwk] }),
        ))
    }

    /// The public JWKS document.
    pub fn public_jwks(&self) -> Value {
        json!({ "keys": self.public })
    }
}

fn signing_key(pair: Pair, kid: Option<String>) -> SigningKey {
    let alg = match &pair {
        Pair::Ec(_) => Algorithm::ES256,
        Pair::Ed(_) => Algorithm::EdDSA,
        Pair::Rsa(_) => Algorithm::RS256,
    };
    let mut key = SigningKey {
        kid: kid.unwrap_or_default(),
        alg,
        pair,
        rng: SystemRandom::new(),
    };
    if key.kid.is_empty() {
        key.kid = thumbprint(&key.public_jwk());
    }
    key
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url).
fn thumbprint(jwk: &Value) -> String {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["e", "kty", "n"],
    };
    let canonical: Map<String, Value> = members
        .iter()
        .map(|m| (m.to_string(), jwk.get(*m).cloned().unwrap_or(Value::Null)))
        .collect();
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &bytes,
    ))
}

fn field(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => B64
            .decode(s.trim_end_matches('='))
            .map(Some)
            .map_err(|_| format!("\"{name}\" is not base64url")),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

fn required(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    field(obj, name)?.ok_or_else(|| format!("missing \"{name}\""))
}

fn check_alg(obj: &Map<String, Value>, expected: Algorithm) -> Result<(), String> {
    match obj.get("alg").and_then(Value::as_str) {
        None => Ok(()),
        Some(a) if a == expected.as_str() => Ok(()),
        Some(a) => Err(format!(
            "alg {a:?} is not supported for this key type (use {expected}; supported: ES256, EdDSA, RS256)"
        )),
    }
}

/// A private key from a JWK, or `None` for a public-only JWK.
fn key_from_jwk(obj: &Map<String, Value>) -> Result<Option<SigningKey>, String> {
    let kid = obj.get("kid").and_then(Value::as_str).map(str::to_owned);
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing \"kty\"")?;
    if !obj.contains_key("d") {
        return Ok(None);
    }
    let pair = match kty {
        "EC" => {
            check_alg(obj, Algorithm::ES256)?;
            if obj.get("crv").and_then(Value::as_str) != Some("P-256") {
                return Err("only EC curve P-256 (ES256) is supported".into());
            }
            let (d, x, y) = (
                required(obj, "d")?,
                required(obj, "x")?,
                required(obj, "y")?,
            );
            let mut public = vec![4u8];
            public.extend_from_slice(&x);
            public.extend_from_slice(&y);
            Pair::Ec(
                EcdsaKeyPair::from_private_key_and_public_key(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &d,
                    &public,
                )
                .map_err(|_| "EC key parameters are inconsistent".to_string())?,
            )
        }
        "OKP" => {
            check_alg(obj, Algorithm::EdDSA)?;
            if obj.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("only OKP curve Ed25519 is supported".into());
            }
            let (d, x) = (required(obj, "d")?, required(obj, "x")?);
            Pair::Ed(
                Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                    .map_err(|_| "Ed25519 key parameters are inconsistent".to_string())?,
            )
        }
        "RSA" => {
            check_alg(obj, Algorithm::RS256)?;
            let components = aws_lc_rs::rsa::KeyPairComponents {
                public_key: aws_lc_rs::rsa::PublicKeyComponents {
                    n: required(obj, "n")?,
                    e: required(obj, "e")?,
                },
                d: required(obj, "d")?,
                p: required(obj, "p")?,
                q: required(obj, "q")?,
                dP: required(obj, "dp")?,
                dQ: required(obj, "dq")?,
                qInv: required(obj, "qi")?,
            };
            Pair::Rsa(RsaKeyPair::from_components(&components).map_err(|_| {
                "RSA key parameters are inconsistent or the key is under 2048 bits".to_string()
            })?)
        }
        other => return Err(format!("unsupported kty {other:?} (use EC, OKP or RSA)")),
    };
    Ok(Some(signing_key(pair, kid)))
}

/// Copies only the public members of a public-only JWK.
fn public_only(obj: &Map<String, Value>) -> Result<Value, String> {
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing \"kty\"")?;
    let members: &[&str] = match kty {
        "EC" => &["kty", "crv", "x", "y", "kid", "alg", "use"],
        "OKP" => &["kty", "crv", "x", "kid", "alg", "use"],
        "RSA" => &["kty", "n", "e", "kid", "alg", "use"],
        other => return Err(format!("unsupported kty {other:?}")),
    };
    let mut out: Map<String, Value> = members
        .iter()
        .filter_map(|m| obj.get(*m).map(|v| (m.to_string(), v.clone())))
        .collect();
    if !out.contains_key("kid") {
        let tp = thumbprint(&Value::Object(out.clone()));
        out.insert("kid".into(), tp.into());
    }
    Ok(Value::Object(out))
}

fn pem_decode(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest.find(&end_marker)?;
    let b64: String = rest[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

// --- minimal DER reading, enough for RSA key components ---

fn der_read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn der_integers(mut seq: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((tag, value, rest)) = der_read(seq) {
        if tag == 0x02 {
            let v = value
                .iter()
                .skip_while(|&&b| b == 0)
                .copied()
                .collect::<Vec<_>>();
            out.push(if v.is_empty() { vec![0] } else { v });
        }
        seq = rest;
    }
    out
}

/// `RSAPublicKey ::= SEQUENCE { n, e }` → (n, e).
fn rsa_public_components(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, seq, _) = der_read(der)?;
    let mut ints = der_integers(seq).into_iter();
    Some((ints.next()?, ints.next()?))
}

/// PKCS#8 RSA → [version, n, e, d, p, q, dp, dq, qi] without version: [n, e, d, p, q, dp, dq, qi].
fn rsa_private_components(pkcs8: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (_, outer, _) = der_read(pkcs8)?;
    let (_, _version, rest) = der_read(outer)?;
    let (_, _alg, rest) = der_read(rest)?;
    let (tag, octets, _) = der_read(rest)?;
    if tag != 0x04 {
        return None;
    }
    let (_, rsa, _) = der_read(octets)?;
    let ints = der_integers(rsa);
    (ints.len() == 9).then(|| ints[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

    #[test]
    fn generated_keys_round_trip_through_jwks_and_publish_no_private_members() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
            let (set, private) = KeySet::generate(alg, Some(format!("k-{alg}"))).unwrap();
            let reloaded = KeySet::from_jwks(&private.to_string(), None).unwrap();
            assert_eq!(reloaded.signing.kid, format!("k-{alg}"));
            assert_eq!(reloaded.signing.alg, alg);
            assert_eq!(reloaded.public_jwks(), set.public_jwks());
            let public = reloaded.public_jwks().to_string();
            for m in PRIVATE_MEMBERS {
                assert!(!public.contains(&format!("\"{m}\"")), "{alg}: {public}");
            }
            assert!(private.to_string().contains("\"d\""));
            assert!(!reloaded.signing.sign(b"msg").unwrap().is_empty());
        }
    }

    #[test]
    fn picks_signing_key_by_kid_and_publishes_all() {
        let (_, a) = KeySet::generate(Algorithm::ES256, Some("a".into())).unwrap();
        let (_, b) = KeySet::generate(Algorithm::EdDSA, Some("b".into())).unwrap();
        let doc = json!({"keys": [a["keys"][0], b["keys"][0]]}).to_string();
        let set = KeySet::from_jwks(&doc, Some("b")).unwrap();
        assert_eq!(set.signing.kid, "b");
        assert_eq!(set.public.len(), 2);
        let err = KeySet::from_jwks(&doc, Some("zzz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("zzz") && err.contains("\"a\""), "{err}");
    }

    #[test]
    fn public_only_keys_are_published_but_not_signing() {
        let (set, _) = KeySet::generate(Algorithm::ES256, Some("old".into())).unwrap();
        let (_, new) = KeySet::generate(Algorithm::ES256, Some("new".into())).unwrap();
        let doc = json!({"keys": [set.public[0], new["keys"][0]]}).to_string();
        let loaded = KeySet::from_jwks(&doc, None).unwrap();
        assert_eq!(loaded.signing.kid, "new");
        assert_eq!(loaded.public.len(), 2);
        assert!(KeySet::from_jwks(&json!({"keys": [set.public[0]]}).to_string(), None).is_err());
    }

    #[test]
    fn broken_documents_are_explained_without_key_material() {
        let (_, k) = KeySet::generate(Algorithm::ES256, Some("x".into())).unwrap();
        let mut bad = k["keys"][0].clone();
        let d = bad["d"].as_str().unwrap().to_string();
        bad["d"] = Value::from(B64.encode([7u8; 32]));
        let err = KeySet::from_jwks(&json!({"keys": [bad]}).to_string(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inconsistent"), "{err}");
        assert!(!err.contains(&d));
        for doc in [
            "{",
            "{}",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "oct", "k": "AA", "d": "AA"}]}"#,
        ] {
            assert!(KeySet::from_jwks(doc, None).is_err(), "{doc}");
        }
    }

    #[test]
    fn pem_keys_load() {
        use aws_lc_rs::encoding::AsDer;
        let dir = tempfile::tempdir().unwrap();
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<_> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let cases = [
            (
                pem("PRIVATE KEY", ec.to_pkcs8v1().unwrap().as_ref()),
                Algorithm::ES256,
            ),
            (
                pem("PRIVATE KEY", ed.to_pkcs8().unwrap().as_ref()),
                Algorithm::EdDSA,
            ),
            (
                pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref()),
                Algorithm::RS256,
            ),
        ];
        for (i, (text, alg)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("k{i}.pem"));
            std::fs::write(&path, text).unwrap();
            let set = KeySet::from_pem_file(&path).unwrap();
            assert_eq!(set.signing.alg, *alg);
            assert_eq!(set.signing.kid.len(), 43, "thumbprint kid");
        }
        let path = dir.path().join("bad.pem");
        std::fs::write(&path, "not a pem").unwrap();
        assert!(KeySet::from_pem_file(&path).is_err());
    }

    #[test]
    fn kid_defaults_to_thumbprint() {
        let (set, _) = KeySet::generate(Algorithm::EdDSA, None).unwrap();
        assert_eq!(set.signing.kid.len(), 43);
    }
}
