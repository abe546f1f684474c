//! The OAuth2 token sources against a real Ory Hydra v2.3.0 (tests/support/hydra.rs): JWT access
//! tokens verified through discovery + JWKS, Hydra's key rotation, the JWKS fetch budget,
//! introspection of opaque tokens (coalescing, revocation, invalidation), and Hydra going down.
//! The sources are exercised directly; wiring them into the authorizer is tested elsewhere.

#[path = "support/hydra.rs"]
mod hydra;

use std::sync::Arc;
use std::time::Duration;

use hydra::{HydraHarness, OAuthClient, Strategy};
use sessiongate::oauth2::{
    ClientAuth, IntrospectionCache, IntrospectionConfig, JwksClient, JwtIssuer, JwtIssuerConfig,
    Oauth2Metrics, Outcome, Rejection, SourceError,
};

const AUD: &str = "api://gate";

async fn hydra() -> HydraHarness {
    HydraHarness::start().await.expect("hydra starts")
}

fn jwt_config(h: &HydraHarness) -> JwtIssuerConfig {
    // No jwks_url: found through Hydra's /.well-known/openid-configuration.
    JwtIssuerConfig::new(h.issuer(), vec![AUD.into()])
}

fn issuer(config: JwtIssuerConfig) -> (JwtIssuer, Arc<Oauth2Metrics>) {
    let metrics = Arc::new(Oauth2Metrics::default());
    let jwks = JwksClient::new(metrics.clone(), Duration::from_secs(2));
    (JwtIssuer::new(config, jwks, None).unwrap(), metrics)
}

fn introspection(
    h: &HydraHarness,
) -> (IntrospectionCache, Arc<Oauth2Metrics>, IntrospectionConfig) {
    let config = IntrospectionConfig::new(h.introspection_url(), ClientAuth::None);
    let metrics = Arc::new(Oauth2Metrics::default());
    let cache = IntrospectionCache::from_config(&config, metrics.clone(), None).unwrap();
    (cache, metrics, config)
}

fn is_active(o: &Result<Outcome, SourceError>) -> bool {
    matches!(o, Ok(Outcome::Active(_)))
}

fn rejection(o: Result<Outcome, SourceError>) -> Rejection {
    match o {
        Ok(Outcome::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// `n` distinct tokens, 8 requests at a time.
async fn tokens(h: &Arc<HydraHarness>, c: &OAuthClient, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|_| {
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move { h.token(&c, "read", &[AUD]).await.unwrap() })
            })
            .collect();
        for t in batch {
            out.push(t.await.unwrap());
        }
    }
    out
}

#[tokio::test]
async fn hydra_jwt_access_tokens_verify_and_bad_ones_are_rejected() {
    let h = hydra().await;
    let c = h
        .create_client(
            "e2e-jwt",
            Strategy::Jwt,
            "read write",
            &[AUD, "api://other"],
        )
        .await
        .unwrap();
    let (i, _) = issuer(jwt_config(&h));

    let t = h.token(&c, "read", &[AUD]).await.unwrap();
    let o = i.verify(&t).await;
    let Ok(Outcome::Active(p)) = o else {
        panic!("a Hydra JWT access token verifies, got {o:?}")
    };
    assert_eq!(p.subject.as_deref(), Some("e2e-jwt"));
    assert_eq!(p.client_id.as_deref(), Some("e2e-jwt"));
    assert_eq!(p.scopes, ["read"]);
    assert_eq!(p.claims["iss"], h.issuer());

    // Wrong audience: a token for api://other only.
    let other = h.token(&c, "read", &["api://other"]).await.unwrap();
    assert_eq!(rejection(i.verify(&other).await), Rejection::Audience);
    // Wrong issuer: an issuer configured with another `iss` and Hydra's keys.
    let mut wrong = jwt_config(&h);
    wrong.issuer = "https://not-hydra.example/".into();
    wrong.jwks_url = Some(h.jwks_url());
    let (wrong, _) = issuer(wrong);
    assert_eq!(rejection(wrong.verify(&t).await), Rejection::Issuer);
    // An opaque token is not a JWT.
    let opaque_client = h
        .create_client("e2e-opaque", Strategy::Opaque, "read", &[AUD])
        .await
        .unwrap();
    let opaque = h.token(&opaque_client, "read", &[AUD]).await.unwrap();
    assert_eq!(rejection(i.verify(&opaque).await), Rejection::Malformed);

    // Expired: a 1 s lifespan, no leeway.
    h.set_token_lifespan(&c, "1s").await.unwrap();
    let short = h.token(&c, "read", &[AUD]).await.unwrap();
    let mut strict = jwt_config(&h);
    strict.leeway = Duration::ZERO;
    let (strict, _) = issuer(strict);
    assert!(is_active(&strict.verify(&short).await));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(rejection(strict.verify(&short).await), Rejection::Expired);
}

#[tokio::test]
async fn a_thousand_hydra_jwts_cost_one_jwks_fetch_and_rotation_one_more() {
    let h = Arc::new(hydra().await);
    let c = h
        .create_client("e2e-many", Strategy::Jwt, "read", &[AUD])
        .await
        .unwrap();
    let mut config = jwt_config(&h);
    config.min_refetch_interval = Duration::from_secs(1);
    let (i, m) = issuer(config);
    let i = Arc::new(i);
    let iss = h.issuer();

    let many = tokens(&h, &c, 1000).await;
    let distinct: std::collections::HashSet<_> = many.iter().collect();
    assert_eq!(distinct.len(), 1000);
    let checks: Vec<_> = many
        .into_iter()
        .map(|t| {
            let i = i.clone();
            tokio::spawn(async move { i.verify(&t).await })
        })
        .collect();
    for c in checks {
        assert!(is_active(&c.await.unwrap()));
    }
    assert_eq!(m.jwks_fetch_count(&iss, "discovery_ok"), 1);
    assert_eq!(
        m.jwks_fetch_count(&iss, "ok"),
        1,
        "1,000 JWTs, one JWKS fetch"
    );

    // Rotation at Hydra: new tokens carry a new kid; one refetch finds it (once the per-URL
    // refetch interval has passed since the first fetch).
    let old = h.token(&c, "read", &[AUD]).await.unwrap();
    h.rotate_access_token_key("e2e-rotated", "ES256")
        .await
        .unwrap();
    let new: Vec<String> = tokens(&h, &c, 50).await;
    assert!(new[0].starts_with(&{
        use base64::Engine;
        let header = r#"{"alg":"ES256","kid":"e2e-rotated","typ":"JWT"}"#;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header)
    }));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for t in &new {
        assert!(
            is_active(&i.verify(t).await),
            "a token signed with the rotated key"
        );
    }
    assert!(is_active(&i.verify(&old).await), "old keys stay published");
    assert_eq!(
        m.jwks_fetch_count(&iss, "ok"),
        2,
        "exactly one refetch for the rotation"
    );
}

#[tokio::test]
async fn hydra_introspection_is_coalesced_cached_and_invalidated() {
    let h = hydra().await;
    let c = h
        .create_client("e2e-intro", Strategy::Opaque, "read", &[AUD])
        .await
        .unwrap();
    let token = h.token(&c, "read", &[AUD]).await.unwrap();
    assert!(token.starts_with("ory_at_"));
    let (cache, m, _) = introspection(&h);

    let lookups: Vec<_> = (0..200)
        .map(|_| {
            let (cache, token) = (cache.clone(), token.clone());
            tokio::spawn(async move { cache.lookup(&token).await })
        })
        .collect();
    for l in lookups {
        let o = l.await.unwrap();
        let Ok(Outcome::Active(p)) = &o else {
            panic!("{o:?}")
        };
        assert_eq!(p.client_id.as_deref(), Some("e2e-intro"));
        assert_eq!(p.scopes, ["read"]);
    }
    assert_eq!(
        m.introspection_total(),
        1,
        "200 concurrent first uses, one call"
    );

    // Revoked at Hydra: the cached answer stands until invalidated (here by client id).
    h.revoke(&c, &token).await.unwrap();
    assert!(is_active(&cache.lookup(&token).await));
    assert_eq!(cache.invalidate_client("e2e-intro").await, Ok(1));
    assert_eq!(rejection(cache.lookup(&token).await), Rejection::Inactive);
    assert_eq!(m.introspection_total(), 2);

    // ... or until the cached answer expires (ttl 1 s).
    let token2 = h.token(&c, "read", &[AUD]).await.unwrap();
    let mut short = IntrospectionConfig::new(h.introspection_url(), ClientAuth::None);
    short.ttl = Duration::from_secs(1);
    let cache2 =
        IntrospectionCache::from_config(&short, Arc::new(Oauth2Metrics::default()), None).unwrap();
    assert!(is_active(&cache2.lookup(&token2).await));
    h.revoke(&c, &token2).await.unwrap();
    assert!(is_active(&cache2.lookup(&token2).await));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(rejection(cache2.lookup(&token2).await), Rejection::Inactive);

    // A JWT access token can be introspected too; garbage is inactive.
    assert_eq!(
        rejection(cache.lookup("ory_at_nope.nope").await),
        Rejection::Inactive
    );
}

#[tokio::test]
async fn with_hydra_down_cached_keys_and_answers_serve_and_the_rest_is_an_upstream_error() {
    let mut h = hydra().await;
    let jwt_client = h
        .create_client("e2e-down-jwt", Strategy::Jwt, "read", &[AUD])
        .await
        .unwrap();
    let opaque_client = h
        .create_client("e2e-down-opaque", Strategy::Opaque, "read", &[AUD])
        .await
        .unwrap();
    let mut config = jwt_config(&h);
    config.cache_duration = Duration::from_millis(100);
    config.shared_cache_duration = Duration::from_millis(100);
    config.min_refetch_interval = Duration::from_millis(100);
    let (i, m) = issuer(config);
    let first = h.token(&jwt_client, "read", &[AUD]).await.unwrap();
    let later = h.token(&jwt_client, "read", &[AUD]).await.unwrap();
    let cached_opaque = h.token(&opaque_client, "read", &[AUD]).await.unwrap();
    let unseen_opaque = h.token(&opaque_client, "read", &[AUD]).await.unwrap();
    let (cache, _, _) = introspection(&h);
    assert!(is_active(&i.verify(&first).await));
    assert!(is_active(&cache.lookup(&cached_opaque).await));

    h.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Keys past every cache duration, the JWKS URL refusing connections: still verifying.
    assert!(is_active(&i.verify(&later).await), "stale keys serve");
    assert!(m.jwks_fetch_count(&h.issuer(), "connect") >= 1);
    assert!(is_active(&i.verify(&first).await));
    // A token of a key never seen: a rejection after the (failed) refetch, not "valid".
    let stranger = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts: Vec<String> = later.split('.').map(str::to_owned).collect();
        parts[0] = b64.encode(r#"{"alg":"RS256","kid":"never-published","typ":"JWT"}"#);
        parts.join(".")
    };
    assert_eq!(rejection(i.verify(&stranger).await), Rejection::UnknownKid);
    // A fresh issuer with nothing cached: an upstream error.
    let (cold, _) = issuer(jwt_config(&h));
    assert!(matches!(
        cold.verify(&later).await,
        Err(SourceError::Unavailable(_))
    ));

    // Introspection: the cached answer serves; an unseen token is an upstream error.
    assert!(is_active(&cache.lookup(&cached_opaque).await));
    assert!(matches!(
        cache.lookup(&unseen_opaque).await,
        Err(SourceError::Unavailable(_))
    ));
}
