//! Overload isolation as behaviour (counts, never times): a spray of unknown credentials from
//! one address next to known users from many, against a slow whoami with few slots. Known users
//! must never be shed; the flood waits behind itself; whoami in flight stays bounded.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use sessiongate_testkit::fake_kratos::{Behaviour, FakeKratos};
use support::*;

const MAX_CONCURRENCY: usize = 4;
const LEGIT: usize = 16;

fn from(mut req: CheckRequest, ip: &str) -> CheckRequest {
    req.attributes.as_mut().unwrap().source = Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    req
}

#[derive(Default)]
struct Tally {
    allowed: AtomicUsize,
    unavailable: AtomicUsize,
    other: AtomicUsize,
}

impl Tally {
    fn add(
        &self,
        r: Result<
            tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>,
            tonic::Status,
        >,
    ) {
        let counter = match r {
            Ok(r) => {
                let r = r.into_inner();
                match r.status.as_ref().map(|s| s.code) {
                    Some(0) => &self.allowed,
                    _ if denied(&r).0 == 503 => &self.unavailable,
                    _ => &self.other,
                }
            }
            Err(_) => &self.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> (usize, usize, usize) {
        (
            self.allowed.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_of_unknown_cookies_never_costs_known_users_their_answer() {
    let kratos = FakeKratos::start().await;
    let slow = |b| Behaviour::Slow(Duration::from_millis(20), Box::new(b));
    kratos.set_prefix(
        "legit-",
        slow(Behaviour::Derived {
            expires_in: Duration::from_secs(3600),
        }),
    );
    kratos.set_fallback(Some(slow(Behaviour::Unauthorized)));

    let mut c = config(&kratos.url());
    c.whoami.max_concurrency = MAX_CONCURRENCY;
    c.whoami.max_waiting = 32;
    c.cache.ttl = Duration::from_millis(600);
    c.cache.refresh_after = Duration::from_millis(450);
    c.cache.negative_ttl = Duration::from_millis(300);
    let ttl = c.cache.ttl;
    let gate = Gate::start(c).await;
    let client = gate.client().await;

    // Calm: every known user logs in (one first lookup each).
    for i in 0..LEGIT {
        let r = client
            .clone()
            .check(from(cookie(&format!("legit-{i}")), &format!("10.1.0.{i}")))
            .await;
        allowed(&r.unwrap().into_inner());
    }
    let calm_calls = kratos.calls();
    kratos.reset_max_in_flight();

    // The spray: 64 in flight at all times, every cookie new, all from one address.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Tally::default());
    let mut tasks = vec![];
    for w in 0..64 {
        let (mut client, stop, flood) = (client.clone(), stop.clone(), flood.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let req = from(cookie(&format!("junk-{w}-{n}")), "203.0.113.66");
                flood.add(client.check(req).await);
            }
        }));
    }
    // Known users keep coming for three TTLs: their sessions expire and are revalidated while
    // the spray fills whoami.
    let legit = Arc::new(Tally::default());
    let mut users = vec![];
    for i in 0..LEGIT {
        let (mut client, legit) = (client.clone(), legit.clone());
        users.push(tokio::spawn(async move {
            let until = tokio::time::Instant::now() + ttl * 3;
            while tokio::time::Instant::now() < until {
                let req = from(cookie(&format!("legit-{i}")), &format!("10.1.0.{i}"));
                legit.add(client.check(req).await);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    for u in users {
        u.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let (ok, unavailable, other) = legit.get();
    let (_, flood_shed, flood_denied) = flood.get();
    eprintln!(
        "legit: {ok} allowed, {unavailable} unavailable, {other} other; flood: {flood_denied} denied, {flood_shed} shed; whoami calls {} (max in flight {})",
        kratos.calls() - calm_calls,
        kratos.max_in_flight()
    );
    assert!(ok > LEGIT * 10, "legit traffic ran: {ok}");
    assert_eq!(unavailable, 0, "known users were shed");
    assert_eq!(other, 0, "known users were denied");
    // The spray was real: it overflowed whoami's queue.
    assert!(flood_shed > 0, "the spray never saturated whoami");
    assert!(flood_denied > 0, "the spray never reached whoami");
    // Kratos was protected.
    assert!(kratos.max_in_flight() <= MAX_CONCURRENCY);
    // Known sessions were revalidated during the spray (not served stale throughout).
    let legit_calls: usize = (0..LEGIT)
        .map(|i| kratos.calls_for(&format!("legit-{i}")))
        .sum();
    assert!(
        legit_calls > LEGIT,
        "no revalidation happened: {legit_calls}"
    );
    // The metrics show each path: revalidations through the known lane, the spray's first
    // lookups shed from theirs.
    let admissions = |filter: &'static str| metric(&gate, "whoami_admissions_total", filter);
    assert!(
        admissions("lane=\"known\"").await > 0.0,
        "no known-lane admission"
    );
    let mut first_shed = 0.0;
    for result in ["timeout", "shed", "pushed_out", "backlog"] {
        first_shed += metric(
            &gate,
            "whoami_admissions_total",
            &format!("lane=\"first\",result=\"{result}\""),
        )
        .await;
    }
    assert!(first_shed > 0.0, "no first lookup shed");
    gate.stop().await.unwrap();
}
