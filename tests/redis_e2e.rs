//! Many replicas against a real redis-server: shared hits, cross-replica invalidation, Redis
//! killed mid-load (zero failed checks), restart restores sharing and pub/sub, and the degraded
//! TTL bounds revocation while the subscription is down. Plus a two-process propagation
//! measurement with the real binary (printed, not asserted against a time). And the same for
//! OAuth2 introspection answers: shared by replicas, invalidated on every replica by subject or
//! client id, forged or moved entries dropped.

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
            // The fake Kratos' toy credentials are not Kratos-shaped.
            .env("SESSIONGATE_CREDENTIALS__SHAPE__ENABLED", "false")
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

/// The Redis key of a session cookie's entry, as every replica computes it.
fn redis_key(value: &str) -> String {
    use sessiongate::credentials::{Credential, CredentialKind};
    use sessiongate::session::cache::key::{KeyHasher, hex};
    let c = Credential::new(
        CredentialKind::Cookie,
        Some("ory_kratos_session".into()),
        value.into(),
    );
    format!(
        "sessiongate:{}",
        hex(&KeyHasher::new(Some(SECRET)).key_for(&c))
    )
}

async fn attacker(redis: &Redis) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Whoever can write to the Redis (a shared instance, another app, an SSRF) but does not hold
/// `cache.key_secret` can neither change an entry (identity, AAL, expiry, claims), nor plant
/// one, nor move one to another credential, nor trigger invalidations by publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_and_messages_are_dropped() {
    use ::redis::AsyncCommands;
    let redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    kratos.set("victim", Behaviour::active("victim"));
    let a = Gate::start(replica_config(&kratos, &redis)).await;
    let b = Gate::start(replica_config(&kratos, &redis)).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    assert!(is_allowed(&a, "victim").await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut evil = attacker(&redis).await;
    let key = redis_key("victim");
    let stored: Vec<u8> = evil.get(&key).await.unwrap();
    assert!(!stored.is_empty(), "A wrote the entry");

    // 1. Change the identity (and claims) of a real entry, keeping its MAC.
    let text = String::from_utf8(stored.clone()).unwrap();
    assert!(text.contains("ident-victim"));
    let forged = text
        .replace("ident-victim", "ident-admin")
        .replace("victim@example.com", "admin@example.com");
    let _: () = evil.set(&key, forged).await.unwrap();
    let mut cb = b.client().await;
    let m = allowed(&cb.check(cookie("victim")).await.unwrap().into_inner());
    let claims = verify(&b, &m.set["authorization"], "app").await;
    assert_eq!(
        claims["sub"], "ident-victim",
        "the forged identity never reached a token"
    );
    assert_eq!(kratos.calls(), 2, "B asked Kratos instead");
    assert!(metric(&b, "redis_operations_total", "result=\"forged\"").await >= 1.0);

    // 2. Plant an unsealed entry (with reserved claims) for a credential Kratos does not know.
    let exp = chrono::Utc::now().timestamp_millis() as u64 + 3_600_000;
    let planted = serde_json::json!({
        "o": "a", "sid": "s-evil", "iid": "ident-admin", "aal": 2, "exp": exp,
        "claims": "\"sub\":\"root\",\"aal\":\"aal2\"", "until": exp, "fresh": exp
    })
    .to_string();
    let _: () = evil.set(redis_key("ghost"), planted).await.unwrap();
    assert!(
        !is_allowed(&b, "ghost").await,
        "a planted entry is not a session"
    );
    // 3. Move a genuine sealed entry to another credential's key.
    let _: () = evil.set(redis_key("ghost2"), stored).await.unwrap();
    assert!(
        !is_allowed(&b, "ghost2").await,
        "an entry is bound to its key"
    );
    assert!(
        metric(
            &b,
            "redis_operations_total",
            "op=\"get\",result=\"malformed\""
        )
        .await
            >= 1.0
    );

    // 4. Publish invalidations without the secret: nobody drops anything.
    let calls = kratos.calls();
    for payload in [
        r#"{"kind":"all"}"#.to_string(),
        r#"{"kind":"session","id":"sess-victim"}"#.to_string(),
        format!("{}.{{\"kind\":\"all\",\"at\":1}}", "0".repeat(64)),
    ] {
        let _: () = evil
            .publish("sessiongate:invalidations", payload)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(is_allowed(&a, "victim").await && is_allowed(&b, "victim").await);
    assert_eq!(
        kratos.calls(),
        calls,
        "both replicas still hold the session"
    );
    let dropped = metric(
        &a,
        "redis_operations_total",
        "op=\"message\",result=\"malformed\"",
    )
    .await
        + metric(
            &a,
            "redis_operations_total",
            "op=\"message\",result=\"forged\"",
        )
        .await;
    assert_eq!(dropped, 3.0, "every forged message counted");
}

/// Invalidating everything is one generation bump and one message, however many keys Redis
/// holds; when the broadcast cannot happen the admin API says so instead of reporting success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_is_one_generation_and_a_failed_broadcast_is_reported() {
    use ::redis::AsyncCommands;
    use sessiongate::admin_pb::InvalidateAllRequest;
    let mut redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    kratos.set_fallback(Some(Behaviour::active("many")));
    let a = Gate::start(replica_config(&kratos, &redis)).await;
    let b = Gate::start(replica_config(&kratos, &redis)).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    for i in 0..300 {
        assert!(is_allowed(&a, &format!("c{i}")).await);
    }
    assert!(is_allowed(&b, "c0").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admin = admin_client(a.grpc, TOKEN).await;
    admin.invalidate_all(InvalidateAllRequest {}).await.unwrap();
    let mut conn = attacker(&redis).await;
    let generation: u64 = conn.get("sessiongate:generation").await.unwrap();
    assert_eq!(generation, 1);
    // B dropped its copy and does not take the old shared entries either.
    let calls = kratos.calls();
    let start = Instant::now();
    while kratos.calls() == calls && start.elapsed() < Duration::from_secs(2) {
        assert!(is_allowed(&b, "c0").await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(kratos.calls(), calls + 1, "B asked Kratos again");
    assert!(is_allowed(&b, "c1").await);
    assert_eq!(
        kratos.calls(),
        calls + 2,
        "an entry from the old generation is dead"
    );

    redis.stop();
    let e = admin
        .invalidate_all(InvalidateAllRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("broadcast"), "{e:?}");
}

/// With Redis, refresh-ahead asks Kratos (not the shared copy of the entry it is refreshing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_with_redis_reaches_kratos() {
    let redis = Redis::start().await;
    let kratos = FakeKratos::start().await;
    kratos.set("busy", Behaviour::active("busy"));
    let mut cfg = replica_config(&kratos, &redis);
    cfg.cache.refresh_after = Duration::from_millis(200);
    let a = Gate::start(cfg).await;
    wait_subscribed(&a).await;
    assert!(is_allowed(&a, "busy").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(is_allowed(&a, "busy").await, "stale hit served at once");
    let start = Instant::now();
    while kratos.calls() < 2 && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(kratos.calls(), 2, "the refresh reached Kratos");
}

// --- OAuth2 introspection answers shared through Redis ---------------------------------------

/// A replica that takes opaque OAuth2 tokens on `/api/**`, introspected at the fake's
/// `/admin/oauth2/introspect`.
fn token_replica_config(kratos: &FakeKratos, redis: &Redis) -> sessiongate::config::Config {
    use sessiongate::config::{ClientAuth, CredentialKind, IntrospectionConfig};
    let mut c = replica_config(kratos, redis);
    c.oauth2_introspection = Some(IntrospectionConfig::new(
        format!("{}/admin/oauth2/introspect", kratos.url()),
        ClientAuth::None,
    ));
    let mut api = rule("api", &["/api/**"]);
    api.credentials = vec![CredentialKind::Oauth2];
    c.routes.rules = vec![api];
    c
}

/// A redis-server, the fake (whoami and introspection), and two replicas subscribed.
async fn token_replicas() -> (Redis, FakeKratos, Gate, Gate) {
    let redis = Redis::start().await;
    let fake = FakeKratos::start().await;
    let a = Gate::start(token_replica_config(&fake, &redis)).await;
    let b = Gate::start(token_replica_config(&fake, &redis)).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    (redis, fake, a, b)
}

/// A check of `/api/x` with this bearer token.
fn bearer(token: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let mut req = check_request(&[("authorization", &format!("Bearer {token}"))], &[]);
    let http = http_mut(&mut req);
    http.path = "/api/x".into();
    http.headers.insert(":path".into(), "/api/x".into());
    req
}

/// Is a check with this bearer token on `/api/x` allowed? (A gRPC error panics.)
async fn token_allowed(gate: &Gate, token: &str) -> bool {
    let r = gate.client().await.check(bearer(token)).await.unwrap();
    r.into_inner().status.unwrap().code == 0
}

/// Waits until `gate` has written `n` introspection answers to Redis (writes are background).
async fn wait_token_writes(gate: &Gate, n: f64) {
    assert!(
        wait_metric(
            gate,
            "redis_operations_total",
            "op=\"token_set\",result=\"ok\"",
            n,
            Duration::from_secs(2)
        )
        .await,
        "the answer never reached Redis"
    );
}

/// The Redis key of a token's introspection answer, as every replica computes it.
fn token_redis_key(token: &str) -> String {
    let key = blake3::derive_key("sessiongate 2026 introspection cache v1", SECRET.as_bytes());
    format!(
        "sessiongate:tok:{}",
        sessiongate::session::cache::key::hex(
            blake3::keyed_hash(&key, token.as_bytes()).as_bytes()
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_are_shared_by_replicas() {
    let (redis, fake, a, b) = token_replicas().await;

    let token = "ory_at_valid-shared-00000001";
    assert!(token_allowed(&a, token).await);
    wait_token_writes(&a, 1.0).await;
    assert!(token_allowed(&b, token).await);
    assert!(token_allowed(&b, token).await);
    assert_eq!(
        fake.introspections(),
        1,
        "B answered from Redis, then from its own cache"
    );
    assert_eq!(
        metric(&b, "introspection_shared_total", "result=\"hit\"").await,
        1.0
    );

    // Inactive answers are shared too (for negative_ttl).
    assert!(!token_allowed(&a, "ory_at_unknown-token").await);
    wait_token_writes(&a, 2.0).await;
    assert!(!token_allowed(&b, "ory_at_unknown-token").await);
    assert_eq!(fake.introspections(), 2);
    assert_eq!(
        metric(&b, "introspection_shared_total", "result=\"negative\"").await,
        1.0
    );

    // Only the keyed hash of a token is in Redis, never the token.
    let mut conn = attacker(&redis).await;
    let keys: Vec<String> = ::redis::AsyncCommands::keys(&mut conn, "*").await.unwrap();
    assert!(keys.contains(&token_redis_key(token)), "{keys:?}");
    for k in &keys {
        let v: Vec<u8> = ::redis::cmd("DUMP")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !k.contains("ory_at_") && !String::from_utf8_lossy(&v).contains("ory_at_"),
            "{k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_invalidation_by_client_or_subject_reaches_every_replica() {
    use sessiongate::admin_pb::InvalidateOAuth2Request;
    let (redis, fake, a, b) = token_replicas().await;
    let mut a_admin = admin_client(a.grpc, TOKEN).await;
    let mut b_admin = admin_client(b.grpc, TOKEN).await;

    // By subject, on B: A's own copy is dropped and so is Redis' — A asks the endpoint, which
    // now says inactive.
    let t2 = "ory_at_valid-subject-00000002";
    assert!(token_allowed(&b, t2).await);
    wait_token_writes(&b, 1.0).await;
    assert!(token_allowed(&a, t2).await);
    assert_eq!(fake.introspections(), 1);
    fake.revoke_token(t2);
    let n = b_admin
        .invalidate_o_auth2(InvalidateOAuth2Request {
            subject: "sub-00000002".into(),
            client_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1, "B's own answer");
    assert!(
        eventually(Duration::from_secs(2), || async {
            !token_allowed(&a, t2).await
        })
        .await,
        "the invalidation on B never reached A"
    );
    assert_eq!(
        fake.introspections(),
        2,
        "A asked the endpoint once, B not at all"
    );
    let mut conn = attacker(&redis).await;
    let left: bool = ::redis::AsyncCommands::exists(&mut conn, "sessiongate:tok:sub:sub-00000002")
        .await
        .unwrap();
    assert!(!left, "the subject's index set is gone with its entries");
    wait_token_writes(&a, 1.0).await;
    assert!(!token_allowed(&b, t2).await, "B shares A's new answer");
    assert_eq!(fake.introspections(), 2);

    // By client id, on A: B's copy and Redis' go.
    let t1 = "ory_at_valid-client-00000001";
    assert!(token_allowed(&a, t1).await);
    wait_token_writes(&a, 2.0).await;
    assert!(token_allowed(&b, t1).await);
    assert_eq!(fake.introspections(), 3);
    fake.revoke_token(t1);
    a_admin
        .invalidate_o_auth2(InvalidateOAuth2Request {
            subject: String::new(),
            client_id: "bench".into(),
        })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            !token_allowed(&b, t1).await
        })
        .await,
        "the invalidation on A never reached B"
    );
    assert_eq!(fake.introspections(), 4);
}

/// Whoever can write to Redis without `cache.key_secret` cannot plant or move an introspection
/// answer: the entry is dropped (counted), the endpoint is asked, the client sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_moved_introspection_answers_are_dropped() {
    use ::redis::AsyncCommands;
    let (redis, fake, a, b) = token_replicas().await;
    let (t1, t2) = (
        "ory_at_valid-forged-00000001",
        "ory_at_valid-forged-00000002",
    );
    assert!(token_allowed(&a, t1).await);
    assert!(!token_allowed(&a, "ory_at_inactive").await);
    wait_token_writes(&a, 2.0).await;
    assert_eq!(fake.introspections(), 2);
    let mut evil = attacker(&redis).await;

    // 1. The inactive answer moved to an active token's key (t2, not yet seen): refused, and
    //    the endpoint says active.
    let inactive: Vec<u8> = evil.get(token_redis_key("ory_at_inactive")).await.unwrap();
    let _: () = evil.set(token_redis_key(t2), &inactive).await.unwrap();
    assert!(
        token_allowed(&b, t2).await,
        "a moved entry is bound to its key"
    );
    assert_eq!(fake.introspections(), 3);

    // 2. A genuine entry with its claims altered (the MAC kept): refused.
    let stored: Vec<u8> = evil.get(token_redis_key(t1)).await.unwrap();
    let text = String::from_utf8(stored).unwrap();
    assert!(text.contains("sub-00000001"), "{text}");
    let _: () = evil
        .set(
            token_redis_key(t1),
            text.replace("sub-00000001", "sub-admin001"),
        )
        .await
        .unwrap();
    let m = allowed(
        &b.client()
            .await
            .check(bearer(t1))
            .await
            .unwrap()
            .into_inner(),
    );
    let claims = verify(&b, &m.set["authorization"], "app").await;
    assert_eq!(
        claims["sub"], "sub-00000001",
        "the forged subject never reached a token"
    );
    assert_eq!(fake.introspections(), 4);

    // 3. An unsealed answer planted for an unknown token: not taken.
    let exp = chrono::Utc::now().timestamp_millis() as u64 + 3_600_000;
    let planted =
        serde_json::json!({"claims": {"active": true, "sub": "root"}, "exp": exp, "until": exp});
    let _: () = evil
        .set(token_redis_key("ory_at_ghost"), planted.to_string())
        .await
        .unwrap();
    assert!(!token_allowed(&b, "ory_at_ghost").await);
    assert_eq!(fake.introspections(), 5);

    assert_eq!(
        metric(&b, "introspection_shared_total", "result=\"forged\"").await,
        2.0
    );
    assert_eq!(
        metric(&b, "introspection_shared_total", "result=\"malformed\"").await,
        1.0
    );
    assert_eq!(
        metric(&b, "introspection_shared_total", "result=\"hit\"").await,
        0.0
    );
}
