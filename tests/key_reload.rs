//! Key rotation without restart, following docs/key-rotation.md step by step: publish a new key,
//! switch signing to it, retire the old one; a broken file keeps the keys in use; SIGHUP forces
//! a reload in the real binary.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sessiongate::config::Algorithm;
use sessiongate::token::KeySet;
use support::upstream::{Behaviour, FakeKratos};
use support::*;

fn private_jwk(alg: Algorithm, kid: &str) -> Value {
    KeySet::generate(alg, Some(kid.into())).unwrap().1["keys"][0].clone()
}

fn public_part(jwk: &Value) -> Value {
    let mut p = jwk.clone();
    for m in ["d", "p", "q", "dp", "dq", "qi"] {
        p.as_object_mut().unwrap().remove(m);
    }
    p
}

fn kid_of(header_value: &str) -> String {
    let jwt = header_value.strip_prefix("Bearer ").unwrap();
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

async fn published_kids(gate: &Gate) -> Vec<String> {
    let (_, body) = gate.get("/.well-known/jwks.json").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    false
}

#[tokio::test]
async fn rotation_runbook_without_restart() {
    let kratos = FakeKratos::start().await;
    kratos.set("c", Behaviour::active("rot"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let old = private_jwk(Algorithm::ES256, "2026-10");
    let new = private_jwk(Algorithm::EdDSA, "2026-11");
    std::fs::write(&path, json!({"keys": [old]}).to_string()).unwrap();
    let mut cfg = config(&kratos.url());
    cfg.jwt.jwks_file = Some(path.clone());
    cfg.jwt.reload_interval = Duration::from_millis(50);
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;
    let m = allowed(&client.check(cookie("c")).await.unwrap().into_inner());
    assert_eq!(kid_of(&m.set["authorization"]), "2026-10");

    // Step 1: publish the new key; the old one still signs.
    std::fs::write(&path, json!({"keys": [old, new]}).to_string()).unwrap();
    assert!(
        wait_for(|| async { published_kids(&gate).await.len() == 2 }).await,
        "new key published"
    );
    let m = allowed(&client.check(cookie("c")).await.unwrap().into_inner());
    assert_eq!(kid_of(&m.set["authorization"]), "2026-10");
    let token_from_old_key = m.set["authorization"].clone();

    // Step 2: sign with the new key (first private key), keep the old one published.
    std::fs::write(&path, json!({"keys": [new, public_part(&old)]}).to_string()).unwrap();
    assert!(
        wait_for(|| {
            let mut client = client.clone();
            async move {
                let m = allowed(&client.check(cookie("c")).await.unwrap().into_inner());
                kid_of(&m.set["authorization"]) == "2026-11"
            }
        })
        .await,
        "signing switched"
    );
    // Tokens signed by the old key still verify against the published JWKS.
    assert_eq!(
        verify(&gate, &token_from_old_key, "app").await["sub"],
        "ident-rot"
    );
    let m = allowed(&client.check(cookie("c")).await.unwrap().into_inner());
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        "ident-rot"
    );

    // A broken file is refused; the keys in use stay.
    std::fs::write(&path, "{ this is not json").unwrap();
    assert!(
        wait_for(|| async { metric(&gate, "key_reloads_total", "result=\"error\"").await >= 1.0 })
            .await
    );
    let m = allowed(&client.check(cookie("c")).await.unwrap().into_inner());
    assert_eq!(kid_of(&m.set["authorization"]), "2026-11");
    assert_eq!(published_kids(&gate).await, vec!["2026-11", "2026-10"]);

    // Step 3: retire the old key.
    std::fs::write(&path, json!({"keys": [new]}).to_string()).unwrap();
    assert!(wait_for(|| async { published_kids(&gate).await == vec!["2026-11"] }).await);
}

#[tokio::test]
async fn sighup_reloads_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        json!({"keys": [private_jwk(Algorithm::ES256, "a")]}).to_string(),
    )
    .unwrap();
    let http = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let grpc = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .env("SESSIONGATE_GRPC__LISTEN", grpc.to_string())
        .env("SESSIONGATE_HTTP__LISTEN", http.to_string())
        .env("SESSIONGATE_JWT__JWKS_FILE", &path)
        .env("SESSIONGATE_JWT__RELOAD_INTERVAL", "0s")
        .env("SESSIONGATE_LOG__LEVEL", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let jwks = || async {
        reqwest::get(format!("http://{http}/.well-known/jwks.json"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    assert!(
        wait_for(|| async { jwks().await.is_some_and(|b| b.contains("\"a\"")) }).await,
        "started"
    );
    std::fs::write(
        &path,
        json!({"keys": [private_jwk(Algorithm::ES256, "b")]}).to_string(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        jwks().await.unwrap().contains("\"a\""),
        "no polling with reload_interval 0s"
    );
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        wait_for(|| async { jwks().await.is_some_and(|b| b.contains("\"b\"")) }).await,
        "reloaded on SIGHUP"
    );
    let _ = child.kill().await;
}

async fn discovery(gate: &Gate) -> (Value, String) {
    let r = reqwest::get(format!(
        "http://{}/.well-known/openid-configuration",
        gate.http
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let cache_control = r.headers()["cache-control"].to_str().unwrap().to_owned();
    (
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
        cache_control,
    )
}

/// OpenID discovery names `jwt.issuer`, the JWKS under it, and the algorithms of the published
/// keys; it follows a key reload like the JWKS does.
#[tokio::test]
async fn openid_configuration_follows_the_issuer_and_the_keys() {
    let kratos = FakeKratos::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let es = private_jwk(Algorithm::ES256, "es");
    let ed = private_jwk(Algorithm::EdDSA, "ed");
    std::fs::write(&path, json!({"keys": [es]}).to_string()).unwrap();
    let mut cfg = config(&kratos.url());
    cfg.jwt.issuer = "https://auth.example.com/".into();
    cfg.jwt.jwks_file = Some(path.clone());
    cfg.jwt.reload_interval = Duration::from_millis(50);
    let gate = Gate::start(cfg).await;

    let (doc, cache_control) = discovery(&gate).await;
    assert_eq!(
        doc,
        json!({
            "issuer": "https://auth.example.com/",
            "jwks_uri": "https://auth.example.com/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
    );
    let r = reqwest::get(format!("http://{}/.well-known/jwks.json", gate.http))
        .await
        .unwrap();
    assert_eq!(
        cache_control,
        r.headers()["cache-control"].to_str().unwrap(),
        "cached like the JWKS"
    );

    // Sign with EdDSA, keep the ES256 key published: both algorithms, the signing one first.
    std::fs::write(&path, json!({"keys": [ed, public_part(&es)]}).to_string()).unwrap();
    assert!(
        wait_for(|| async {
            discovery(&gate).await.0["id_token_signing_alg_values_supported"]
                == json!(["EdDSA", "ES256"])
        })
        .await,
        "discovery follows the reload"
    );
}
