//! Redis Sentinel with real processes on loopback: a password-protected master and replica, one
//! password-protected redis-sentinel (quorum 1, down after 1 s), and a dead sentinel address
//! listed first. Two replicas of sessiongate find the master through the sentinels; the master
//! is SIGKILLed under load; Sentinel promotes the replica. Every check during the failover is
//! answered and allowed sessions stay allowed (in-process cache and Kratos cover the gap); both
//! connections follow the new master, so sharing and invalidations work again afterwards.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sessiongate::admin_pb::InvalidateSessionRequest;
use support::redis::{Redis, Sentinel};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

const SECRET: &str = "shared-cache-key-secret-0123456789abcdef";
const TOKEN: &str = "redis-sentinel-admin-token-000";
const NAME: &str = "sessiongate-master";
const MASTER_PASSWORD: &str = "master-password-0123";
const SENTINEL_PASSWORD: &str = "sentinel-password-0123";
const WAIT: Duration = Duration::from_secs(30);
const SESSIONS: usize = 40;

fn replica_config(kratos: &FakeKratos, sentinels: &[String]) -> sessiongate::config::Config {
    let mut c = config(&kratos.url());
    c.cache.key_secret = Some(SECRET.into());
    c.redis.sentinels = sentinels.to_vec();
    c.redis.master_name = Some(NAME.into());
    c.redis.password = Some(MASTER_PASSWORD.into());
    c.redis.sentinel_password = Some(SENTINEL_PASSWORD.into());
    c.redis.degraded_ttl = Duration::from_secs(1);
    c.admin.token = Some(TOKEN.into());
    c
}

/// Checks on `gate` until `stop`: (checks, failures). A failure is a gRPC error or a denial:
/// every session is active in Kratos throughout.
fn load(
    gate: &Gate,
    from: usize,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let addr = gate.grpc;
    tokio::spawn(async move {
        let mut c = AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (mut checks, mut failures) = (0, 0);
        let mut round = 0;
        while !stop.load(Ordering::SeqCst) {
            for i in (from..SESSIONS).step_by(7) {
                let r = c
                    .check(cookie(&format!("u{}", (i + round) % SESSIONS)))
                    .await;
                checks += 1;
                total.fetch_add(1, Ordering::SeqCst);
                match r {
                    Ok(resp) if resp.get_ref().status.as_ref().unwrap().code == 0 => {}
                    _ => failures += 1,
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (checks, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_answers_every_check_and_invalidations_keep_propagating() {
    let mut master = Redis::start_with_password(MASTER_PASSWORD).await;
    let replica = Redis::start_replica_of(&master).await;
    assert!(
        eventually(WAIT, || replica.replica_in_sync()).await,
        "replica never synced"
    );
    let sentinel = Sentinel::start(&master, NAME, Some(SENTINEL_PASSWORD)).await;
    assert!(
        eventually(WAIT, || async {
            sentinel.healthy_replicas(NAME).await == 1
        })
        .await,
        "sentinel never saw the replica"
    );
    // A sentinel that is down comes first: the list is walked.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sentinels = [dead.to_string(), sentinel.addr.to_string()];

    let kratos = FakeKratos::start().await;
    for i in 0..SESSIONS {
        kratos.set(&format!("u{i}"), Behaviour::active(&format!("u{i}")));
    }
    let a = Gate::start(replica_config(&kratos, &sentinels)).await;
    let b = Gate::start(replica_config(&kratos, &sentinels)).await;
    for gate in [&a, &b] {
        assert!(
            wait_metric(gate, "redis_subscribed", "", 1.0, WAIT).await,
            "replica never subscribed through Sentinel"
        );
    }

    // Load on both replicas; SIGKILL the master in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let la = load(&a, 0, stop.clone(), total.clone());
    let lb = load(&b, 3, stop.clone(), total.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill = total.load(Ordering::SeqCst);
    let killed = std::time::Instant::now();
    let old_master = master.addr;
    master.stop();
    assert!(
        eventually(WAIT, || async {
            sentinel.master_addr(NAME).await == Some(replica.addr)
        })
        .await,
        "Sentinel never promoted the replica"
    );
    // Both replicas lost the subscription, then followed the new master.
    for gate in [&a, &b] {
        assert!(
            wait_metric(
                gate,
                "redis_operations_total",
                "op=\"subscribe\",result=\"error\"",
                1.0,
                WAIT
            )
            .await
        );
        assert!(
            wait_metric(gate, "redis_subscribed", "", 1.0, WAIT).await,
            "replica never resubscribed on the new master"
        );
    }
    let at_recovery = total.load(Ordering::SeqCst);
    let outage = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ca, fa) = la.await.unwrap();
    let (cb, fb) = lb.await.unwrap();
    eprintln!(
        "failover {old_master} → {}: {} checks in all, {} in the {outage:?} between the kill and both replicas resubscribed, failures A {fa} B {fb}",
        replica.addr,
        ca + cb,
        at_recovery - at_kill
    );
    assert_eq!((fa, fb), (0, 0), "checks failed during the failover");
    assert!(at_recovery > at_kill, "checks ran during the failover");

    // Sharing works on the new master: A's answer reaches B without a Kratos call.
    kratos.set("after", Behaviour::active("after"));
    let sets = metric(&a, "redis_operations_total", "op=\"set\",result=\"ok\"").await;
    assert!(is_allowed(&a, "after").await);
    assert!(
        wait_metric(
            &a,
            "redis_operations_total",
            "op=\"set\",result=\"ok\"",
            sets + 1.0,
            WAIT
        )
        .await,
        "A writes to the new master"
    );
    assert!(is_allowed(&b, "after").await);
    assert_eq!(
        kratos.calls_for("after"),
        1,
        "B answered from the new master"
    );

    // Invalidations keep propagating: revoked in Kratos, invalidated on A → denied on B.
    kratos.set("after", Behaviour::Unauthorized);
    let messages = metric(&b, "redis_operations_total", "op=\"message\",result=\"ok\"").await;
    admin_client(a.grpc, TOKEN)
        .await
        .invalidate_session(InvalidateSessionRequest {
            session_id: "sess-after".into(),
        })
        .await
        .expect("invalidated and broadcast on the new master");
    assert!(
        eventually(WAIT, || async { !is_allowed(&b, "after").await }).await,
        "invalidation on A never reached B after the failover"
    );
    assert!(
        metric(&b, "redis_operations_total", "op=\"message\",result=\"ok\"").await > messages,
        "B was told through pub/sub, not by its TTL"
    );
}
