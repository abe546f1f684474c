//! On demand (`cargo test --release --test bench_routes -- --ignored --nocapture`): cache-hit
//! decisions per second through the real `Authorizer` with no rules and with 1,000 rules, in
//! alternating rounds; prints figures and the ratio for BENCHMARKS.md. Asserts nothing about
//! time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiongate::authz::{Authorizer, Headers, Request, RouteSettings};
use sessiongate::config::{Config, MatchConfig, RequirementConfig, RuleConfig};
use sessiongate::credentials::Credential;
use sessiongate::session::cache::SessionCache;
use sessiongate::session::{
    Aal, Answer, LookupContext, LookupFuture, Outcome, Session, SessionSource, next_generation,
};
use sessiongate::telemetry::Metrics;
use sessiongate::token::{KeySet, Minter};

struct Always;

impl SessionSource for Always {
    fn lookup<'a>(&'a self, _: &'a Credential, _: &'a LookupContext) -> LookupFuture<'a> {
        Box::pin(async {
            Ok(Answer {
                outcome: Outcome::Active(Arc::new(Session {
                    id: "sess".into(),
                    identity_id: "ident".into(),
                    aal: Aal::Aal2,
                    expires_at: std::time::SystemTime::now() + Duration::from_secs(3600),
                    extra_claims: "".into(),
                    identity_headers: vec![],
                    generation: next_generation(),
                    authenticated_at: Some(std::time::SystemTime::now()),
                    facts: vec![(
                        Arc::from("/identity/metadata_public/role"),
                        serde_json::json!("admin"),
                    )]
                    .into(),
                    minted: Default::default(),
                })),
                cache_for: None,
            })
        })
    }
}

fn rules(n: usize) -> Vec<RuleConfig> {
    (0..n)
        .map(|i| RuleConfig {
            name: format!("svc-{i}"),
            matches: MatchConfig {
                hosts: vec![format!("svc{i}.example.com"), "*.example.org".into()],
                methods: vec!["GET".into(), "POST".into()],
                paths: vec![format!("/svc-{i}/**"), format!("/api/v{i}/*/items")],
            },
            require: vec![RequirementConfig {
                claim: "/identity/metadata_public/role".into(),
                one_of: Some(vec!["admin".into()]),
                ..RequirementConfig::default()
            }],
            ..RuleConfig::default()
        })
        .collect()
}

fn authorizer(n: usize) -> Authorizer {
    let mut config = Config::default();
    config.routes.rules = rules(n);
    let metrics = Metrics::new();
    let (keys, _) = KeySet::generate(config.jwt.ephemeral_algorithm, None).unwrap();
    let minter = Arc::new(Minter::new(&config.jwt, keys, 1 << 24, metrics.clone()));
    let cache = Arc::new(SessionCache::new(
        &config.cache,
        Arc::new(Always),
        metrics.clone(),
        Duration::from_secs(1),
    ));
    let table = sessiongate::app::compile_routes(&config.routes).unwrap();
    Authorizer::new(
        &config,
        table,
        Default::default(),
        Default::default(),
        cache,
        minter,
        metrics,
    )
}

fn request(n: usize) -> Request {
    let mut headers = Headers::default();
    headers.append("cookie", "ory_kratos_session=bench");
    // With rules: a request for the last rule (the worst case for a linear scan), under a first
    // segment every rule shares (`/api/v<i>/*/items`).
    let last = n.saturating_sub(1);
    Request {
        method: "GET".into(),
        scheme: "https".into(),
        host: format!("svc{last}.example.com"),
        path: format!("/api/v{last}/orders/items?page=2"),
        headers,
        route: Ok(RouteSettings::default()),
        source: None,
    }
}

async fn rate(a: &Authorizer, req: &Request, iters: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(a.check(req).await);
    }
    f64::from(iters) / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "benchmark: run on demand with --release --ignored --nocapture"]
async fn cache_hit_decisions_with_1000_rules_vs_none() {
    let none = authorizer(0);
    let one = authorizer(1);
    let many = authorizer(1000);
    let (req0, req1, req1000) = (request(0), request(1), request(1000));
    // Warm: the session is cached and the token minted.
    for (a, r) in [(&none, &req0), (&one, &req1), (&many, &req1000)] {
        for _ in 0..1000 {
            let d = a.check(r).await;
            assert!(matches!(d, sessiongate::authz::Decision::Allow(_)), "{d:?}");
        }
    }
    let iters = 200_000;
    let (mut r0, mut r1, mut rn) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        r0.push(rate(&none, &req0, iters).await);
        rn.push(rate(&one, &req1, iters).await);
        r1.push(rate(&many, &req1000, iters).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (m0, mn, m1) = (median(&mut r0), median(&mut rn), median(&mut r1));
    println!("no rules:   {m0:.0} decisions/s (rounds {r0:.0?})");
    println!("1 rule:     {mn:.0} decisions/s (rounds {rn:.0?})");
    println!("1000 rules: {m1:.0} decisions/s (rounds {r1:.0?})");
    println!("ratio 1000 rules / none: {:.3}", m1 / m0);
    println!("ratio 1000 rules / 1 rule: {:.3}", m1 / mn);
}
