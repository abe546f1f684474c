//! Cache administration and freshness end to end: the admin gRPC API (token-protected), the CLI
//! that calls it, the Kratos webhook, logout awareness, client max-age, and reflection.

mod support;

use std::time::Duration;

use sessiongate::admin_pb::*;
use support::upstream::{Behaviour, FakeKratos};
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

fn admin_config(url: &str) -> sessiongate::config::Config {
    let mut c = config(url);
    c.admin.token = Some(TOKEN.into());
    c.logout.grace = Duration::from_millis(100);
    c
}

#[tokio::test]
async fn admin_api_requires_the_token_and_invalidates_at_once() {
    let kratos = FakeKratos::start().await;
    kratos.set("c1", Behaviour::active("ann"));
    let gate = Gate::start(admin_config(&kratos.url())).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("c1")).await.unwrap().into_inner());

    for bad in [None, Some("wrong-token-wrong-token")] {
        let mut admin = admin_client_with(
            gate.grpc,
            "authorization",
            bad.map(|t| format!("Bearer {t}")),
        )
        .await;
        let err = admin.cache_stats(CacheStatsRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = admin
            .invalidate_session(InvalidateSessionRequest {
                session_id: "sess-ann".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    allowed(&client.check(cookie("c1")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 1, "refused calls invalidated nothing");

    let mut admin = admin_client(gate.grpc, TOKEN).await;
    let stats = admin
        .cache_stats(CacheStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.misses, stats.whoami_calls), (1, 1));
    assert!(stats.hits >= 1);

    // Kratos revokes the session; our invalidation makes the very next check ask again.
    kratos.set("c1", Behaviour::Unauthorized);
    let r = admin
        .invalidate_session(InvalidateSessionRequest {
            session_id: "sess-ann".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.invalidated, 1);
    let (status, _, _) = denied(&client.check(cookie("c1")).await.unwrap().into_inner());
    assert_eq!(status, 401);

    let err = admin
        .invalidate_identity(InvalidateIdentityRequest {
            identity_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // By identity, and everything.
    kratos.set("c2", Behaviour::active("bo"));
    kratos.set("c3", Behaviour::active("bo"));
    allowed(&client.check(cookie("c2")).await.unwrap().into_inner());
    allowed(&client.check(cookie("c3")).await.unwrap().into_inner());
    let r = admin
        .invalidate_identity(InvalidateIdentityRequest {
            identity_id: "ident-bo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.invalidated, 2);
    let r = admin
        .invalidate_all(InvalidateAllRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(r.invalidated >= 1, "the negative entry for c1 at least");
    assert!(metric(&gate, "cache_invalidations_total", "kind=\"identity\"").await >= 1.0);
}

#[tokio::test]
async fn admin_service_is_absent_without_a_token() {
    let kratos = FakeKratos::start().await;
    let gate = Gate::start(config(&kratos.url())).await;
    let mut admin = admin_client(gate.grpc, TOKEN).await;
    let err = admin.cache_stats(CacheStatsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/webhooks/kratos", gate.http))
        .bearer_auth(TOKEN)
        .body(r#"{"identity_id":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn cli_admin_invalidate_calls_the_api() {
    let kratos = FakeKratos::start().await;
    kratos.set("c1", Behaviour::active("cli"));
    let gate = Gate::start(admin_config(&kratos.url())).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("c1")).await.unwrap().into_inner());
    kratos.set("c1", Behaviour::Unauthorized);
    let addr = format!("http://{}", gate.grpc);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args([
            "admin",
            "--addr",
            &addr,
            "invalidate",
            "--session",
            "sess-cli",
        ])
        .env("SESSIONGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("invalidated 1 entries"));
    denied(&client.check(cookie("c1")).await.unwrap().into_inner());

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args([
            "admin",
            "--addr",
            &addr,
            "--token",
            "nope-nope-nope-nope",
            "stats",
        ])
        .env_remove("SESSIONGATE_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
}

#[tokio::test]
async fn kratos_webhook_invalidates_an_identity() {
    let kratos = FakeKratos::start().await;
    kratos.set("c1", Behaviour::active("hook"));
    let gate = Gate::start(admin_config(&kratos.url())).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("c1")).await.unwrap().into_inner());
    let url = format!("http://{}/admin/webhooks/kratos", gate.http);
    let http = reqwest::Client::new();
    let r = http
        .post(&url)
        .body(r#"{"identity_id":"ident-hook"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    kratos.set("c1", Behaviour::Unauthorized);
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"identity_id":"ident-hook"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"invalidated":1}"#);
    denied(&client.check(cookie("c1")).await.unwrap().into_inner());
}

#[tokio::test]
async fn a_logout_passing_through_drops_the_callers_entry() {
    let kratos = FakeKratos::start().await;
    kratos.set("c1", Behaviour::active("out"));
    let gate = Gate::start(admin_config(&kratos.url())).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("c1")).await.unwrap().into_inner());

    // The browser follows Kratos' logout URL through the gate (an anonymous route).
    let mut logout = check_request(
        &[("cookie", "ory_kratos_session=c1")],
        &[("anonymous", "true")],
    );
    let http = http_mut(&mut logout);
    http.path = "/self-service/logout?token=abc".into();
    allowed(&client.check(logout).await.unwrap().into_inner());
    // Kratos processes the logout after our check.
    kratos.set("c1", Behaviour::Unauthorized);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, _) = denied(&client.check(cookie("c1")).await.unwrap().into_inner());
    assert_eq!(status, 401);
}

#[tokio::test]
async fn client_max_age_on_marked_routes() {
    let kratos = FakeKratos::start().await;
    kratos.set("c1", Behaviour::active("fresh"));
    let gate = Gate::start(config(&kratos.url())).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("c1")).await.unwrap().into_inner());
    // Not marked: Cache-Control is ignored (default client_max_age: route).
    let req = check_request(
        &[
            ("cookie", "ory_kratos_session=c1"),
            ("cache-control", "no-cache"),
        ],
        &[],
    );
    allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 1);
    // Marked: no-cache forces a fresh lookup.
    let req = check_request(
        &[
            ("cookie", "ory_kratos_session=c1"),
            ("cache-control", "no-cache"),
        ],
        &[("client_max_age", "true")],
    );
    allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 2);
    // max-age larger than the entry's age: served from cache.
    let req = check_request(
        &[
            ("cookie", "ory_kratos_session=c1"),
            ("cache-control", "max-age=60"),
        ],
        &[("client_max_age", "true")],
    );
    allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 2);
    assert_eq!(
        metric(&gate, "cache_lookups_total", "result=\"bypass\"").await,
        1.0
    );
}

#[tokio::test]
async fn reflection_lists_our_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let kratos = FakeKratos::start().await;
    let gate = Gate::start(admin_config(&kratos.url())).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gate.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"sessiongate.admin.v1.Admin"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}
