//! A route that accepts a Kratos session, a Hydra JWT access token and a Hydra opaque token
//! side by side, through the gate, against a real Ory Hydra v2.3.0: each kind validated by its
//! own source (never sent to another kind's upstream), our own token minted on allow
//! (`auth_method`, `client_id`, `scope`), RFC 6750 denials, one introspection call for 200
//! concurrent first uses.

#[path = "support/hydra.rs"]
mod hydra;
mod support;

use std::sync::Arc;

use hydra::{HydraHarness, Strategy};
use sessiongate::config::{
    ClientAuth, Config, CredentialKind, IntrospectionConfig, JwtIssuerConfig, MatchConfig,
    RuleConfig,
};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

const AUD: &str = "api://gate";

fn rule(name: &str, path: &str, credentials: &[CredentialKind], scopes: &[&str]) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        matches: MatchConfig {
            paths: vec![path.into()],
            ..MatchConfig::default()
        },
        credentials: credentials.to_vec(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..RuleConfig::default()
    }
}

fn gate_config(kratos: &FakeKratos, h: &HydraHarness) -> Config {
    use CredentialKind::*;
    let mut c = config(&kratos.url());
    c.jwt_issuers = vec![JwtIssuerConfig::new(h.issuer(), vec![AUD.into()])];
    c.oauth2_introspection = Some(IntrospectionConfig::new(
        h.introspection_url(),
        ClientAuth::None,
    ));
    c.upstream
        .token_identity_headers
        .insert("x-user-id".into(), "/sub".into());
    c.admin.token = Some("oauth2-e2e-admin-token".into());
    c.routes.rules = vec![
        rule("api", "/api/**", &[Session, Jwt, Oauth2], &[]),
        rule("writes", "/write/**", &[Jwt, Oauth2], &["write"]),
        rule("machines", "/machines/**", &[Jwt], &[]),
    ];
    c
}

fn bearer_at(token: &str, path: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let mut req = check_request(&[("authorization", &format!("Bearer {token}"))], &[]);
    let http = http_mut(&mut req);
    http.path = path.into();
    http.headers.insert(":path".into(), path.into());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_jwt_and_opaque_tokens_side_by_side() {
    let h = Arc::new(HydraHarness::start().await.expect("hydra"));
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("good"));
    let gate = Gate::start(gate_config(&kratos, &h)).await;
    let mut c = gate.client().await;
    let jwt_client = h
        .create_client("gate-jwt", Strategy::Jwt, "read write", &[AUD])
        .await
        .unwrap();
    let opaque_client = h
        .create_client("gate-opaque", Strategy::Opaque, "read", &[AUD])
        .await
        .unwrap();
    let jwt = h.token(&jwt_client, "read", &[AUD]).await.unwrap();
    let opaque = h.token(&opaque_client, "read", &[AUD]).await.unwrap();
    assert!(opaque.starts_with("ory_at_"));

    // A Kratos session on the same route.
    let mut req = check_request(&[("cookie", "ory_kratos_session=good")], &[]);
    http_mut(&mut req).path = "/api/x".into();
    let m = allowed(&c.check(req).await.unwrap().into_inner());
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    assert_eq!(claims["auth_method"], "session");

    // A Hydra JWT: verified locally, our own token minted.
    let m = allowed(
        &c.check(bearer_at(&jwt, "/api/x"))
            .await
            .unwrap()
            .into_inner(),
    );
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    assert_eq!(
        (
            claims["auth_method"].as_str(),
            claims["sub"].as_str(),
            claims["client_id"].as_str()
        ),
        (Some("jwt"), Some("gate-jwt"), Some("gate-jwt"))
    );
    assert_eq!(claims["scope"], "read");
    assert!(claims.get("sid").is_none(), "no Kratos session behind it");
    assert_eq!(m.set["x-user-id"], "gate-jwt");
    assert_ne!(
        m.set["authorization"],
        format!("Bearer {jwt}"),
        "the client's token is replaced"
    );

    // A Hydra opaque token: introspected, once for 200 concurrent first uses.
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let mut c = c.clone();
            let req = bearer_at(&opaque, "/api/x");
            tokio::spawn(async move { c.check(req).await.unwrap().into_inner() })
        })
        .collect();
    for t in tasks {
        let m = allowed(&t.await.unwrap());
        let claims = verify(&gate, &m.set["authorization"], "app").await;
        assert_eq!(claims["auth_method"], "oauth2");
        assert_eq!(claims["client_id"], "gate-opaque");
    }
    assert_eq!(
        metric(&gate, "introspection_requests_total", "").await,
        1.0,
        "one introspection call"
    );
    // No Hydra token ever reached Kratos' whoami.
    assert_eq!(kratos.calls(), 1, "only the cookie went to Kratos");

    // RFC 6750: a missing scope is 403 insufficient_scope, a bad token 401 invalid_token.
    let r = c
        .check(bearer_at(&jwt, "/write/x"))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, _) = denied(&r);
    assert_eq!(status, 403);
    assert!(
        headers["www-authenticate"].contains("error=\"insufficient_scope\""),
        "{headers:?}"
    );
    assert!(
        headers["www-authenticate"].contains("scope=\"write\""),
        "{headers:?}"
    );
    let writer = h.token(&jwt_client, "read write", &[AUD]).await.unwrap();
    allowed(
        &c.check(bearer_at(&writer, "/write/x"))
            .await
            .unwrap()
            .into_inner(),
    );
    let mut tampered = jwt.clone();
    tampered.pop();
    tampered.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "aaa.bbb.ccc", "ory_at_unknown.token"] {
        let r = c
            .check(bearer_at(bad, "/api/x"))
            .await
            .unwrap()
            .into_inner();
        let (status, headers, _) = denied(&r);
        assert_eq!(status, 401, "{bad}");
        assert!(
            headers["www-authenticate"].contains("error=\"invalid_token\""),
            "{headers:?}"
        );
    }
    // A route for JWTs only: an opaque token or a Kratos session token is not taken there.
    for other in [opaque.as_str(), "ory_st_kratos-session-token"] {
        let r = c
            .check(bearer_at(other, "/machines/x"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denied(&r).0, 401, "{other}");
    }
    assert_eq!(kratos.calls(), 1, "still nothing else went to Kratos");

    // Revoked at Hydra: the cached answer still allows until it is invalidated (admin API, by
    // client id) — then the next check introspects again and is denied.
    h.revoke(&opaque_client, &opaque).await.unwrap();
    let calls = metric(&gate, "introspection_requests_total", "").await;
    allowed(
        &c.check(bearer_at(&opaque, "/api/x"))
            .await
            .unwrap()
            .into_inner(),
    );
    let mut admin = admin_client(gate.grpc, "oauth2-e2e-admin-token").await;
    let n = admin
        .invalidate_o_auth2(sessiongate::admin_pb::InvalidateOAuth2Request {
            subject: String::new(),
            client_id: "gate-opaque".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1);
    let r = c
        .check(bearer_at(&opaque, "/api/x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r).0, 401, "revoked at Hydra");
    assert_eq!(
        metric(&gate, "introspection_requests_total", "").await,
        calls + 1.0,
        "introspected again"
    );
    // Invalidate-all drops introspection answers too (here the cached "inactive").
    admin
        .invalidate_all(sessiongate::admin_pb::InvalidateAllRequest {})
        .await
        .unwrap();
    let r = c
        .check(bearer_at(&opaque, "/api/x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r).0, 401);
    assert_eq!(
        metric(&gate, "introspection_requests_total", "").await,
        calls + 2.0,
        "the negative answer was dropped by invalidate-all"
    );
}
