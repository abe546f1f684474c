//! Redis over TLS (rustls) against a real TLS-only redis-server with certificates made by the
//! test: two replicas share entries and invalidations over mutual TLS; a wrong CA, or no client
//! certificate where the server requires one, fails closed to "no Redis" (checks are still
//! answered, from Kratos), never to an error.

mod support;

use std::path::Path;
use std::time::Duration;

use sessiongate::admin_pb::InvalidateSessionRequest;
use sessiongate::config::RedisTlsConfig;
use support::pki::{Pki, write};
use support::redis::{Redis, ServerTls};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

const SECRET: &str = "shared-cache-key-secret-0123456789abcdef";
const TOKEN: &str = "redis-tls-admin-token-000";
const WAIT: Duration = Duration::from_secs(10);

/// A TLS-only redis-server that requires client certificates from the same CA.
async fn mtls_redis(pki: &Pki, dir: &Path) -> Redis {
    Redis::start_tls(ServerTls {
        cert_file: write(dir, "server.crt", &pki.server.0),
        key_file: write(dir, "server.key", &pki.server.1),
        ca_file: write(dir, "ca.crt", &pki.ca_pem),
        auth_clients: true,
    })
    .await
}

/// `redis.tls` trusting `ca` and, if given, presenting the client certificate of `client`.
fn client_tls(dir: &Path, ca: &Pki, client: Option<&Pki>, tag: &str) -> RedisTlsConfig {
    RedisTlsConfig {
        ca_file: Some(write(dir, &format!("{tag}-ca.crt"), &ca.ca_pem)),
        cert_file: client.map(|p| write(dir, &format!("{tag}-client.crt"), &p.client.0)),
        key_file: client.map(|p| write(dir, &format!("{tag}-client.key"), &p.client.1)),
    }
}

fn replica_config(
    kratos: &FakeKratos,
    redis: &Redis,
    tls: RedisTlsConfig,
) -> sessiongate::config::Config {
    let mut c = config(&kratos.url());
    c.cache.key_secret = Some(SECRET.into());
    c.redis.url = Some(redis.url());
    c.redis.tls = Some(tls);
    c.redis.degraded_ttl = Duration::from_secs(1);
    c.admin.token = Some(TOKEN.into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_entries_and_invalidations_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let redis = mtls_redis(&pki, dir.path()).await;
    assert!(redis.url().starts_with("rediss://127.0.0.1:"));
    let kratos = FakeKratos::start().await;
    kratos.set("t", Behaviour::active("t"));
    let tls = client_tls(dir.path(), &pki, Some(&pki), "good");
    let a = Gate::start(replica_config(&kratos, &redis, tls.clone())).await;
    let b = Gate::start(replica_config(&kratos, &redis, tls)).await;
    for gate in [&a, &b] {
        assert!(
            wait_metric(gate, "redis_subscribed", "", 1.0, WAIT).await,
            "replica never subscribed over TLS"
        );
    }

    // A's answer reaches B through Redis (written in the background).
    assert!(is_allowed(&a, "t").await);
    assert!(
        wait_metric(
            &a,
            "redis_operations_total",
            "op=\"set\",result=\"ok\"",
            1.0,
            WAIT
        )
        .await
    );
    assert!(is_allowed(&b, "t").await);
    assert_eq!(kratos.calls(), 1, "B answered from Redis over TLS");

    // Revoked in Kratos, invalidated on A → denied on B.
    kratos.set("t", Behaviour::Unauthorized);
    let n = admin_client(a.grpc, TOKEN)
        .await
        .invalidate_session(InvalidateSessionRequest {
            session_id: "sess-t".into(),
        })
        .await
        .expect("invalidated and broadcast over TLS")
        .into_inner()
        .invalidated;
    assert_eq!(n, 1);
    assert!(
        eventually(WAIT, || async { !is_allowed(&b, "t").await }).await,
        "invalidation on A never reached B over TLS"
    );
    assert_eq!(
        metric(&b, "redis_operations_total", "op=\"message\",result=\"ok\"").await,
        1.0,
        "B received the invalidation message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_or_missing_client_certificate_fails_closed_to_no_redis() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let other = Pki::new(&["127.0.0.1", "localhost"]);
    let redis = mtls_redis(&pki, dir.path()).await;
    let kratos = FakeKratos::start().await;
    kratos.set("t", Behaviour::active("t"));
    // A does not trust the server's CA; B trusts it but has no client certificate.
    let wrong_ca = Gate::start(replica_config(
        &kratos,
        &redis,
        client_tls(dir.path(), &other, Some(&pki), "wrong-ca"),
    ))
    .await;
    let no_cert = Gate::start(replica_config(
        &kratos,
        &redis,
        client_tls(dir.path(), &pki, None, "no-cert"),
    ))
    .await;
    for gate in [&wrong_ca, &no_cert] {
        assert!(
            wait_metric(
                gate,
                "redis_operations_total",
                "op=\"subscribe\",result=\"error\"",
                3.0,
                WAIT
            )
            .await,
            "subscription attempts must fail"
        );
        assert_eq!(metric(gate, "redis_subscribed", "").await, 0.0);
    }
    // Checks are answered, from Kratos: allowed sessions stay allowed, unknown ones are denied
    // (not errors).
    for gate in [&wrong_ca, &no_cert] {
        assert!(is_allowed(gate, "t").await);
        assert!(!is_allowed(gate, "unknown").await);
    }
    assert_eq!(
        kratos.calls_for("t"),
        2,
        "each replica asked Kratos: nothing shared"
    );
    for gate in [&wrong_ca, &no_cert] {
        assert_eq!(
            metric(gate, "redis_operations_total", "result=\"ok\"").await,
            0.0,
            "no Redis operation succeeded without a valid TLS peer"
        );
    }
}
