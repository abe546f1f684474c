//! Many replicas against a real redis-server: shared hits, cross-replica invalidation, Redis
//! killed mid-load (zero failed checks), restart restores sharing and pub/sub, and the degraded
//! TTL bounds revocation while the subscription is down. Plus a two-process propagation
//! measurement with the real binary (printed, not asserted against a time).

mod support;

use std::time::{Duration, Instant};

use sessiongate::admin_pb::{InvalidateIdentityRequest, InvalidateSessionRequest};
use support::redis::Redis;
use support::upstream::{Behaviour, FakeKratos};
use support::*;

const SECRET: &str = "shared-cache-key-secret-0123456789abcdef";
const TOKEN: &str = "redis-e2e-admin-token-000";

fn replica_config(kratos: &FakeKratos, redis: &Redis) -> sessiongate::config::Config {
    let mut c = config(&kratos.url());
    c.cache.key_secret = Some(SECRET.into());
    c.redis.url = Some(redis.url());
    c.redis.degraded_ttl = Duration::from_secs(1);
    c.admin.token = Some(TOKEN.into());
    c
}

async fn wait_subscribed(gate: &Gate) {
    for _ in 0..200 {
        if metric(gate, "redis_subscribed", "").await == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("replica never subscribed to invalidations");
}

async fn is_allowed(gate: &Gate, v: &str) -> bool {
    let mut c = gate.client().await;
    let r = c.check(cookie(v)).await.unwrap().into_inner();
    r.status.unwrap().code == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_hits_and_invalidations() {
    let redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    kratos.set("shared", Behaviour::active("sh"));
    let a = Gate::start(replica_config(&kratos, &redis)).await;
    let b = Gate::start(replica_config(&kratos, &redis)).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;

    assert!(is_allowed(&a, "shared").await);
    // The write to Redis happens in the background; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(is_allowed(&b, "shared").await);
    assert_eq!(kratos.calls(), 1, "B answered from the shared cache");
    assert_eq!(
        metric(&b, "cache_lookups_total", "result=\"shared\"").await,
        1.0
    );
    // B's token verifies and names the same session.
    let mut cb = b.client().await;
    let m = allowed(&cb.check(cookie("shared")).await.unwrap().into_inner());
    assert_eq!(
        verify(&b, &m.set["authorization"], "app").await["sid"],
        "sess-sh"
    );

    // Revoked in Kratos, invalidated on A → denied on B.
    kratos.set("shared", Behaviour::Unauthorized);
    let mut a_admin = admin_client(a.grpc, TOKEN).await;
    let t = Instant::now();
    let n = a_admin
        .invalidate_session(InvalidateSessionRequest {
            session_id: "sess-sh".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1);
    eprintln!("admin call on A took {:?}", t.elapsed());
    let start = Instant::now();
    let mut denied_on_b = false;
    while start.elapsed() < Duration::from_secs(2) {
        if !is_allowed(&b, "shared").await {
            denied_on_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(denied_on_b, "invalidation on A never reached B");
    eprintln!("in-process propagation A→B: {:?}", start.elapsed());
    let (_, m) = b.get("/metrics").await;
    for l in m
        .lines()
        .filter(|l| l.contains("redis_op") || l.contains("whoami_dur"))
    {
        eprintln!("B {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_never_fails_a_check_and_recovery_restores_sharing() {
    let mut redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    for i in 0..50 {
        kratos.set(&format!("u{i}"), Behaviour::active(&format!("u{i}")));
    }
    let a = Gate::start(replica_config(&kratos, &redis)).await;
    let b = Gate::start(replica_config(&kratos, &redis)).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;

    // Load on both replicas while redis-server is killed in the middle.
    let load = |gate: &Gate, from: usize| {
        let addr = gate.grpc;
        tokio::spawn(async move {
            let mut c = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
                format!("http://{addr}"),
            )
            .await
            .unwrap();
            let mut failures = 0;
            let mut checks = 0;
            for round in 0..60 {
                for i in (from..50).step_by(7) {
                    let v = format!("u{}", (i + round) % 50);
                    let r = c.check(cookie(&v)).await;
                    checks += 1;
                    match r {
                        Ok(resp) if resp.get_ref().status.as_ref().unwrap().code == 0 => {}
                        _ => failures += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (checks, failures)
        })
    };
    let (la, lb) = (load(&a, 0), load(&b, 3));
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();
    let (ca, fa) = la.await.unwrap();
    let (cb, fb) = lb.await.unwrap();
    assert_eq!(
        (fa, fb),
        (0, 0),
        "failed checks while Redis died ({ca} + {cb} checks)"
    );
    assert!(
        metric(&a, "redis_operations_total", "result=\"error\"").await
            + metric(&a, "redis_operations_total", "result=\"timeout\"").await
            >= 1.0
    );
    assert_eq!(
        metric(&a, "redis_subscribed", "").await,
        0.0,
        "subscription loss is visible"
    );

    // Back: sharing and pub/sub resume by themselves.
    redis.restart().await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    // B reads what A wrote. A's write is asynchronous: if it has not reached the new Redis
    // before B asks, B looks the credential up itself; then try with a new credential.
    let mut late = String::new();
    for n in 0..50 {
        late = format!("late{n}");
        kratos.set(&late, Behaviour::active(&late));
        assert!(is_allowed(&a, &late).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = kratos.calls();
        assert!(is_allowed(&b, &late).await);
        if kratos.calls() == before {
            break;
        }
        late.clear();
    }
    assert!(!late.is_empty(), "sharing restored after redis restart");
    kratos.set(&late, Behaviour::Unauthorized);
    admin_client(a.grpc, TOKEN)
        .await
        .invalidate_identity(InvalidateIdentityRequest {
            identity_id: format!("ident-{late}"),
        })
        .await
        .unwrap();
    let start = Instant::now();
    let mut denied_on_b = false;
    while start.elapsed() < Duration::from_secs(2) {
        if !is_allowed(&b, &late).await {
            denied_on_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(denied_on_b, "pub/sub restored after redis restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_unsubscribed_cached_sessions_are_trusted_only_for_the_degraded_ttl() {
    let mut redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    kratos.set("d", Behaviour::active("d"));
    let b = Gate::start(replica_config(&kratos, &redis)).await;
    wait_subscribed(&b).await;
    assert!(is_allowed(&b, "d").await);
    redis.stop();
    // Revoked in Kratos; the broadcast cannot reach B. B stops trusting its entry after 1 s.
    kratos.set("d", Behaviour::Unauthorized);
    let start = Instant::now();
    let mut denied = false;
    while start.elapsed() < Duration::from_secs(5) {
        if !is_allowed(&b, "d").await {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(denied, "degraded TTL did not bound the entry");
    eprintln!(
        "revocation noticed without pub/sub after {:?} (degraded_ttl 1s, cache.ttl 60s)",
        start.elapsed()
    );
}

/// Two real sessiongate processes, one redis-server: measures how long an invalidation on A
/// takes to deny on B. Prints p50/p99/max; the figures are in docs/redis.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_between_two_processes() {
    let redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let (g, h) = (free(), free());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .env("SESSIONGATE_GRPC__LISTEN", g.to_string())
            .env("SESSIONGATE_HTTP__LISTEN", h.to_string())
            .env("SESSIONGATE_WHOAMI__BASE_URL", kratos.url())
            .env("SESSIONGATE_CACHE__KEY_SECRET", SECRET)
            .env("SESSIONGATE_REDIS__URL", redis.url())
            .env("SESSIONGATE_ADMIN__TOKEN", TOKEN)
            .env("SESSIONGATE_LOG__LEVEL", "warn")
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        procs.push(child);
        addrs.push((g, h));
    }
    for (_, h) in &addrs {
        let mut ok = false;
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("http://{h}/metrics")).await
                && r.text()
                    .await
                    .unwrap_or_default()
                    .contains("sessiongate_redis_subscribed 1")
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ok, "process not subscribed");
    }
    let (a_grpc, b_grpc) = (addrs[0].0, addrs[1].0);
    let mut b = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(format!("http://{b_grpc}"))
        .await
        .unwrap();
    let mut a_admin = admin_client(a_grpc, TOKEN).await;
    let mut samples = Vec::new();
    for i in 0..40 {
        let cred = format!("p{i}");
        kratos.set(&cred, Behaviour::active(&cred));
        assert_eq!(
            b.check(cookie(&cred))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .code,
            0
        );
        kratos.set(&cred, Behaviour::Unauthorized);
        let start = Instant::now();
        a_admin
            .invalidate_session(InvalidateSessionRequest {
                session_id: format!("sess-{cred}"),
            })
            .await
            .unwrap();
        loop {
            let code = b
                .check(cookie(&cred))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .code;
            if code != 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "invalidation never reached B"
            );
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    eprintln!(
        "cross-process invalidation propagation over {} runs: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        pct(0.5),
        pct(0.99),
        samples.last().unwrap()
    );
    // Kill and reap both processes now rather than leave them to kill_on_drop's background reaping.
    for mut p in procs {
        let _ = p.kill().await;
    }
}
