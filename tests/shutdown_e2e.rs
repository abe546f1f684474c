//! Graceful shutdown under load with the real binary: SIGTERM while clients keep checking →
//! readiness goes false first, checks keep succeeding through the readiness delay, every check
//! that was answered was answered correctly, in-flight checks finish, and the process exits 0.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use support::upstream::{Behaviour, FakeKratos};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_answered_check() {
    let kratos = FakeKratos::start().await;
    for i in 0..20 {
        // Some checks are slow misses that are in flight when SIGTERM arrives.
        kratos.set(
            &format!("s{i}"),
            Behaviour::Slow(
                Duration::from_millis(80),
                Box::new(Behaviour::active(&format!("s{i}"))),
            ),
        );
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, http) = (free(), free());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .env("SESSIONGATE_GRPC__LISTEN", grpc.to_string())
        .env("SESSIONGATE_HTTP__LISTEN", http.to_string())
        .env("SESSIONGATE_WHOAMI__BASE_URL", kratos.url())
        .env("SESSIONGATE_WHOAMI__TIMEOUT", "2s")
        .env("SESSIONGATE_SHUTDOWN__READINESS_DELAY", "600ms")
        .env("SESSIONGATE_SHUTDOWN__DRAIN_TIMEOUT", "10s")
        .env("SESSIONGATE_LOG__LEVEL", "warn")
        // The fake Kratos' toy credentials are not Kratos-shaped.
        .env("SESSIONGATE_CREDENTIALS__SHAPE__ENABLED", "false")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready_url = format!("http://{http}/health/ready");
    let mut up = false;
    for _ in 0..200 {
        if reqwest::get(&ready_url)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "did not become ready");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let refused_after_stop = Arc::new(AtomicU64::new(0));
    let sigterm_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (stop, ok, wrong, refused) = (
            stop.clone(),
            ok.clone(),
            wrong.clone(),
            refused_after_stop.clone(),
        );
        let sigterm_at = sigterm_at.clone();
        workers.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let cred = if i % 5 == 0 {
                    format!("s{}", (i as usize + w) % 20)
                } else {
                    "s0".into()
                };
                let started = Instant::now();
                match client.check(cookie(&cred)).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        // Refusals are expected only once the server stopped accepting, i.e.
                        // after SIGTERM plus the readiness delay.
                        let term = *sigterm_at.lock().unwrap();
                        match term {
                            Some(t) if started >= t + Duration::from_millis(500) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            _ => panic!("check failed before the server stopped accepting: {e}"),
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = ok.load(Ordering::SeqCst);
    assert!(before > 0, "load is running");

    *sigterm_at.lock().unwrap() = Some(Instant::now());
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Readiness goes false first, while checks are still being served.
    let mut not_ready = false;
    for _ in 0..20 {
        if reqwest::get(&ready_url)
            .await
            .is_ok_and(|r| r.status() == 503)
        {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_ready, "readiness did not go false after SIGTERM");
    let during = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ok.load(Ordering::SeqCst) > during,
        "checks kept succeeding during the readiness delay"
    );

    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "a check was answered wrongly"
    );
    eprintln!(
        "shutdown under load: {} checks ok, {} clients refused after the server stopped accepting",
        ok.load(Ordering::SeqCst),
        refused_after_stop.load(Ordering::SeqCst)
    );
}
