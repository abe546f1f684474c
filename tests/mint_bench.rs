//! Micro-benchmark for issue 15's question "should minting move to jsonwebtoken's encoder?":
//! our hand-written aws-lc-rs signer (the `Minter` path and its claim-building + `SigningKey::sign`
//! core) against `jsonwebtoken::encode` with a pre-built `EncodingKey`, for ES256 and EdDSA, over
//! the same claims. Ignored by default; run in release:
//!
//! `cargo test --release --test mint_bench -- --ignored --nocapture`

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde::Serialize;

use sessiongate::config::JwtConfig;
use sessiongate::telemetry::Metrics;
use sessiongate::token::{KeySet, Minter, Principal};

/// The claims the minter writes, as a serde struct for jsonwebtoken.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    sid: &'a str,
    aal: &'a str,
    email: &'a str,
}

const ISS: &str = "https://gate.example";
const SUB: &str = "9a8b7c6d-1111-2222-3333-444455556666";
const SID: &str = "0f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Our core: the minter's hand-built claims JSON, base64url, `SigningKey::sign`.
fn ours(keys: &KeySet, header_b64: &str) -> String {
    let iat = now();
    let mut claims = String::with_capacity(320);
    claims.push_str("{\"iss\":");
    claims.push_str(&serde_json::to_string(ISS).unwrap());
    claims.push_str(",\"sub\":");
    claims.push_str(&serde_json::to_string(SUB).unwrap());
    claims.push_str(",\"aud\":\"api\"");
    claims.push_str(&format!(
        ",\"iat\":{iat},\"nbf\":{iat},\"exp\":{},\"jti\":\"{}\",\"sid\":",
        iat + 300,
        uuid::Uuid::new_v4()
    ));
    claims.push_str(&serde_json::to_string(SID).unwrap());
    claims.push_str(",\"aal\":\"aal1\",\"email\":\"a@example.com\"}");
    let mut jwt = String::with_capacity(header_b64.len() + claims.len() * 4 / 3 + 200);
    jwt.push_str(header_b64);
    jwt.push('.');
    B64.encode_string(claims.as_bytes(), &mut jwt);
    let sig = keys.signing.sign(jwt.as_bytes()).unwrap();
    jwt.push('.');
    B64.encode_string(sig, &mut jwt);
    jwt
}

fn theirs(header: &jsonwebtoken::Header, key: &jsonwebtoken::EncodingKey) -> String {
    let iat = now();
    let claims = Claims {
        iss: ISS,
        sub: SUB,
        aud: "api",
        iat,
        nbf: iat,
        exp: iat + 300,
        jti: uuid::Uuid::new_v4().to_string(),
        sid: SID,
        aal: "aal1",
        email: "a@example.com",
    };
    jsonwebtoken::encode(header, &claims, key).unwrap()
}

/// ns per call of `f`, best of 5 rounds of `n`.
fn bench(n: u32, mut f: impl FnMut() -> String) -> f64 {
    for _ in 0..n / 10 {
        black_box(f());
    }
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn pem_file(pkcs8: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let b64 = STANDARD.encode(pkcs8);
    writeln!(f, "-----BEGIN PRIVATE KEY-----").unwrap();
    for line in b64.as_bytes().chunks(64) {
        writeln!(f, "{}", std::str::from_utf8(line).unwrap()).unwrap();
    }
    writeln!(f, "-----END PRIVATE KEY-----").unwrap();
    f
}

#[test]
#[ignore = "micro-benchmark; run with --release -- --ignored --nocapture"]
fn mint_ours_vs_jsonwebtoken() {
    let n = 20_000;
    let es = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .unwrap()
        .to_pkcs8v1()
        .unwrap();
    let ed = Ed25519KeyPair::generate().unwrap().to_pkcs8().unwrap();
    let cases = [
        (
            "ES256",
            es.as_ref().to_vec(),
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_der(es.as_ref()),
        ),
        (
            "EdDSA",
            ed.as_ref().to_vec(),
            jsonwebtoken::Algorithm::EdDSA,
            jsonwebtoken::EncodingKey::from_ed_der(ed.as_ref()),
        ),
    ];
    println!(
        "{:<6} {:>16} {:>16} {:>16}",
        "alg", "minter ns/op", "ours ns/op", "jsonwebtoken ns/op"
    );
    for (name, pkcs8, alg, enc) in cases {
        let pem = pem_file(&pkcs8);
        let keys = KeySet::from_pem_file(pem.path()).unwrap();
        let kid = keys.signing.kid.clone();
        let header_b64 =
            B64.encode(serde_json::json!({"alg": name, "kid": kid, "typ": "JWT"}).to_string());
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.clone());

        // Both produce tokens the other side verifies the same way.
        let dec = jsonwebtoken::DecodingKey::from_jwk(
            &serde_json::from_value(keys.public[0].clone()).unwrap(),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&["api"]);
        for t in [ours(&keys, &header_b64), theirs(&header, &enc)] {
            jsonwebtoken::decode::<serde_json::Value>(&t, &dec, &v).unwrap();
        }

        // The real Minter, a fresh principal generation per call (no cache hit).
        let minter = Minter::new(
            &JwtConfig {
                issuer: ISS.into(),
                audience: vec!["api".into()],
                ..JwtConfig::default()
            },
            KeySet::from_pem_file(pem.path()).unwrap(),
            64 * 1024 * 1024,
            Metrics::new(),
        );
        let minter = Arc::new(minter);
        let mut generation = 0u64;
        let expires_at = SystemTime::now() + Duration::from_secs(3600);
        let minted = bench(n, || {
            generation += 1;
            let p = Principal {
                subject: SUB,
                session_id: Some(SID),
                aal: Some("aal1"),
                auth_method: "session",
                expires_at,
                extra_claims: r#""email":"a@example.com""#,
                generation,
                slot: None,
            };
            minter.header_value(&p, None).unwrap().to_string()
        });
        let ours_ns = bench(n, || ours(&keys, &header_b64));
        let theirs_ns = bench(n, || theirs(&header, &enc));
        println!("{name:<6} {minted:>16.0} {ours_ns:>16.0} {theirs_ns:>16.0}");
    }
}
