//! End to end over real sockets: a real tonic client calls `Check` on sessiongate started
//! in-process, which calls an in-process whoami upstream; tokens are verified with an independent
//! JWT implementation against the JWKS served on the side port.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

#[tokio::test]
async fn cookie_session_is_allowed_with_a_verifiable_jwt_and_clean_upstream_headers() {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("ada"));
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;

    let mut req = check_request(
        &[
            ("cookie", "theme=dark; ory_kratos_session=good; lang=en"),
            ("authorization", "Bearer forged.jwt.value"),
            ("x-user-id", "admin"),
            ("x-request-id", "req-42"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        &[],
    );
    let m = allowed(&client.check(req.clone()).await.unwrap().into_inner());
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    assert_eq!(claims["sub"], "ident-ada");
    assert_eq!(claims["sid"], "sess-ada");
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["iss"], "https://gate.test");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        m.set["x-user-id"], "ident-ada",
        "spoofed identity header overwritten"
    );
    assert_eq!(
        m.set["cookie"], "theme=dark; lang=en",
        "session cookie stripped, others kept"
    );
    assert!(m.remove.contains(&"x-session-token".to_string()));

    // Kratos saw only the session cookie, plus request id and trace context.
    let got = kratos.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].cookie.as_deref(), Some("ory_kratos_session=good"));
    assert_eq!(got[0].request_id.as_deref(), Some("req-42"));
    assert_eq!(
        got[0].traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );

    // A second check is a cache hit: same token, no whoami call.
    http_mut(&mut req).headers.remove("traceparent");
    let m2 = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(m2.set["authorization"], m.set["authorization"]);
    assert_eq!(kratos.calls(), 1);
    assert_eq!(
        metric(&gate, "cache_lookups_total", "result=\"hit\"").await,
        1.0
    );

    // A request id that is not one (spaces) goes neither to logs nor to Kratos.
    let odd = check_request(
        &[
            ("cookie", "ory_kratos_session=someone-else"),
            ("x-request-id", "req 43"),
        ],
        &[],
    );
    let _ = client.check(odd).await.unwrap();
    let got = kratos.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].request_id, None);
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn session_token_and_bearer_are_accepted_and_removed() {
    let kratos = FakeKratos::start().await;
    kratos.set("tok-1", Behaviour::active("tok"));
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;

    let m = allowed(
        &client
            .check(check_request(&[("x-session-token", "tok-1")], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        "ident-tok"
    );
    assert!(m.remove.contains(&"x-session-token".to_string()));

    // The same token as a bearer credential shares the cache entry.
    let m = allowed(
        &client
            .check(check_request(&[("authorization", "Bearer tok-1")], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(
        m.set["authorization"].starts_with("Bearer ey"),
        "Kratos token replaced by our JWT"
    );
    assert_eq!(kratos.calls(), 1);
    assert_eq!(kratos.received()[0].session_token.as_deref(), Some("tok-1"));
    assert!(kratos.received()[0].cookie.is_none());
}

#[tokio::test]
async fn hundred_concurrent_first_requests_make_one_whoami_call() {
    let kratos = FakeKratos::start().await;
    kratos.set(
        "stampede",
        Behaviour::Slow(
            Duration::from_millis(50),
            Box::new(Behaviour::active("many")),
        ),
    );
    let gate = Gate::start(config(&kratos.url())).await;
    let client = gate.client().await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.check(cookie("stampede")).await.unwrap().into_inner() })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(allowed(&t.await.unwrap()).set["authorization"].clone());
    }
    assert_eq!(kratos.calls(), 1, "exactly one whoami call");
    assert_eq!(tokens.len(), 1, "one minted token shared");
    assert_eq!(metric(&gate, "whoami_requests_total", "").await, 1.0);
    let miss = metric(&gate, "cache_lookups_total", "result=\"miss\"").await;
    let coalesced = metric(&gate, "cache_lookups_total", "result=\"coalesced\"").await;
    let hit = metric(&gate, "cache_lookups_total", "result=\"hit\"").await;
    assert_eq!(miss, 1.0);
    assert_eq!(miss + coalesced + hit, 100.0);
}

#[tokio::test]
async fn denials_have_the_right_status_headers_and_bodies() {
    let kratos = FakeKratos::start().await;
    kratos.set("zq-bad-71", Behaviour::Unauthorized);
    kratos.set("zq-inactive-71", Behaviour::Inactive);
    kratos.set("zq-aal1-71", Behaviour::Aal2Required);
    kratos.set("zq-busy-71", Behaviour::RateLimited);
    kratos.set("zq-broken-71", Behaviour::ServerError);
    kratos.set("zq-garbage-71", Behaviour::Garbage);
    kratos.set(
        "zq-slow-71",
        Behaviour::Slow(
            Duration::from_millis(600),
            Box::new(Behaviour::active("zq-slow-71")),
        ),
    );
    let mut cfg = config(&kratos.url());
    cfg.whoami.timeout = Duration::from_millis(150);
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;

    // No credential: 401 with WWW-Authenticate and a JSON body, no whoami call.
    let (status, headers, body) = denied(
        &client
            .check(check_request(&[], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].starts_with("Bearer realm="));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["code"],
        401
    );
    assert_eq!(kratos.calls(), 0);

    // Too long a credential: denied without a whoami call.
    let long = "x".repeat(10_000);
    let (status, _, body) = denied(&client.check(cookie(&long)).await.unwrap().into_inner());
    assert_eq!(status, 401);
    assert!(!body.contains("xxxxxxxx"));
    assert_eq!(kratos.calls(), 0);

    for (cred, want) in [
        ("zq-bad-71", 401),
        ("zq-inactive-71", 401),
        ("zq-aal1-71", 403),
        ("zq-busy-71", 429),
        ("zq-broken-71", 503),
        ("zq-garbage-71", 503),
        ("zq-slow-71", 503),
    ] {
        let (status, headers, body) =
            denied(&client.check(cookie(cred)).await.unwrap().into_inner());
        assert_eq!(status, want, "{cred}");
        assert!(!body.contains(cred), "body echoes credential: {body}");
        if want == 429 {
            assert_eq!(headers["retry-after"], "7", "Retry-After passed through");
        }
        if want == 403 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                v["redirect_browser_to"],
                "http://kratos.test/self-service/login/browser?aal=aal2"
            );
        }
    }
    let calls = kratos.calls();
    // 401 is cached (negative TTL); 403, 429, 5xx, garbage and timeouts are not.
    client.check(cookie("zq-bad-71")).await.unwrap();
    assert_eq!(kratos.calls(), calls);
    client.check(cookie("zq-broken-71")).await.unwrap();
    client.check(cookie("zq-busy-71")).await.unwrap();
    client.check(cookie("zq-aal1-71")).await.unwrap();
    assert_eq!(kratos.calls(), calls + 3);
    assert!(metric(&gate, "whoami_requests_total", "status=\"timeout\"").await >= 1.0);

    // Nothing in the metrics names a credential.
    let (_, text) = gate.get("/metrics").await;
    for cred in ["zq-bad-71", "zq-garbage-71", "zq-inactive-71", "zq-slow-71"] {
        assert!(!text.contains(cred), "{cred} in metrics");
    }
}

#[tokio::test]
async fn browsers_are_redirected_to_login_with_return_to() {
    let kratos = FakeKratos::start().await;
    let mut cfg = config(&kratos.url());
    cfg.deny.login_url = Some("https://auth.example.com/login".into());
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;
    let req = check_request(
        &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        &[],
    );
    let (status, headers, _) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 303);
    assert_eq!(
        headers["location"],
        "https://auth.example.com/login?return_to=https%3A%2F%2Fapp.example.com%2Forders%3Fpage%3D2"
    );
    // An API client still gets 401.
    let (status, _, _) = denied(
        &client
            .check(check_request(&[("accept", "application/json")], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401);
}

#[tokio::test]
async fn route_settings_anonymous_audience_and_aal() {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("bob"));
    let mut strong = Behaviour::active("eve");
    if let Behaviour::Active { aal, .. } = &mut strong {
        *aal = "aal2";
    }
    kratos.set("strong", strong);
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;

    // Anonymous route without a session: allowed, spoofable headers removed.
    let req = check_request(
        &[("authorization", "Bearer x.y.z"), ("x-user-id", "root")],
        &[("anonymous", "true")],
    );
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert!(m.set.is_empty(), "{:?}", m.set);
    assert!(m.remove.contains(&"authorization".to_string()));
    assert!(m.remove.contains(&"x-user-id".to_string()));

    // Anonymous route with a session: still gets the token.
    let mut req = cookie("good");
    req = with_extension(req, "anonymous", "true");
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        "ident-bob"
    );

    // Per-route audience.
    let mut req = cookie("good");
    req = with_extension(req, "audience", "billing");
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(
        verify(&gate, &m.set["authorization"], "billing").await["aud"],
        "billing"
    );

    // aal2 route: an aal1 session must step up, an aal2 session passes.
    let mut req = cookie("good");
    req = with_extension(req, "aal", "aal2");
    let (status, _, body) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 403);
    assert!(body.contains("session_aal2_required"));
    let mut req = cookie("strong");
    req = with_extension(req, "aal", "aal2");
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["aal"],
        "aal2"
    );

    // A broken route setting fails closed.
    let mut req = cookie("good");
    req = with_extension(req, "aal", "aal7");
    let (status, _, _) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 500);
}

#[tokio::test]
async fn raw_header_map_is_read_when_headers_are_empty() {
    let kratos = FakeKratos::start().await;
    kratos.set("raw", Behaviour::active("raw"));
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;
    let mut req = check_request(&[], &[]);
    let http = http_mut(&mut req);
    http.headers.clear();
    http.header_map = Some(HeaderMap {
        headers: vec![
            HeaderValue {
                key: ":authority".into(),
                raw_value: b"app.example.com".to_vec(),
                ..Default::default()
            },
            HeaderValue {
                key: "cookie".into(),
                raw_value: b"a=1".to_vec(),
                ..Default::default()
            },
            HeaderValue {
                key: "cookie".into(),
                raw_value: b"ory_kratos_session=raw".to_vec(),
                ..Default::default()
            },
            HeaderValue {
                key: "user-agent".into(),
                raw_value: b"\xff\xfe binary".to_vec(),
                ..Default::default()
            },
        ],
    });
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(m.set["cookie"], "a=1");
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        "ident-raw"
    );
}

#[tokio::test]
async fn a_session_expiring_soon_bounds_the_jwt_and_the_cache_entry() {
    let kratos = FakeKratos::start().await;
    let mut short = Behaviour::active("short");
    if let Behaviour::Active { expires_in, .. } = &mut short {
        *expires_in = Duration::from_secs(3);
    }
    kratos.set("short", short);
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;
    let m = allowed(&client.check(cookie("short")).await.unwrap().into_inner());
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp <= now + 3,
        "exp {exp} past the session's end {}",
        now + 3
    );
    allowed(&client.check(cookie("short")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 1);
    // Past the session's end the entry is gone: the next check asks Kratos again.
    kratos.set("short", Behaviour::Unauthorized);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (status, _, _) = denied(&client.check(cookie("short")).await.unwrap().into_inner());
    assert_eq!(status, 401);
    assert_eq!(kratos.calls(), 2);
}

#[tokio::test]
async fn health_jwks_and_readiness() {
    let kratos = FakeKratos::start().await;
    let gate = Gate::start(config(&kratos.url())).await;
    assert_eq!(gate.get("/health/alive").await.0, 200);
    assert_eq!(gate.get("/health/ready").await.0, 200);
    let (status, jwks) = gate.get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let key = &v["keys"][0];
    assert_eq!(key["alg"], "ES256");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(key.get(private).is_none(), "JWKS leaks {private}");
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gate.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let readiness = gate.handles.readiness.clone();
    gate.stop().await.unwrap();
    assert!(!readiness.get());
}

#[tokio::test]
async fn in_flight_checks_finish_during_shutdown() {
    let kratos = FakeKratos::start().await;
    kratos.set(
        "slowish",
        Behaviour::Slow(Duration::from_millis(100), Box::new(Behaviour::active("s"))),
    );
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;
    let inflight = tokio::spawn(async move { client.check(cookie("slowish")).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let readiness = gate.handles.readiness.clone();
    gate.stop().await.unwrap();
    assert!(!readiness.get());
    let r = inflight.await.unwrap().expect("in-flight check completed");
    allowed(&r.into_inner());
}

#[tokio::test]
async fn unavailable_can_be_an_rpc_error_for_failure_mode_allow() {
    let kratos = FakeKratos::start().await;
    kratos.set("broken", Behaviour::ServerError);
    let mut cfg = config(&kratos.url());
    cfg.deny.unavailable_as_rpc_error = true;
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;
    let err = client.check(cookie("broken")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // Definite answers stay denials.
    let (status, _, _) = denied(&client.check(cookie("unknown")).await.unwrap().into_inner());
    assert_eq!(status, 401);
}

#[tokio::test]
async fn kratos_down_is_a_clean_503() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let gate = Gate::start(config(&url)).await;
    let mut client = gate.client().await;
    let (status, headers, _) =
        denied(&client.check(cookie("whatever")).await.unwrap().into_inner());
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    assert!(metric(&gate, "whoami_requests_total", "status=\"connect\"").await >= 1.0);
}

#[tokio::test]
async fn check_request_without_http_attributes_is_denied_not_errored() {
    let kratos = FakeKratos::start().await;
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;
    let r = client
        .check(envoy_types::pb::envoy::service::auth::v3::CheckRequest::default())
        .await
        .unwrap();
    let (status, _, _) = denied(&r.into_inner());
    assert_eq!(status, 400);
}
