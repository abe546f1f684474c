//! The `load` tool: drives an ext_authz gRPC server or an HTTP decision endpoint with N
//! concurrent requests (closed-loop or fixed-rate), records latency in HDR histograms and prints
//! a report (human lines, optionally one JSON line).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;
use serde_json::{Value, json};

use crate::scrape::{GateCounters, prom_sum, scrape, upstream_stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dist {
    /// Always the first credential.
    Same,
    /// Uniform over the K credentials.
    Uniform,
    /// Zipf(s) over the K credentials (rank 1 most popular).
    Zipf,
    /// Round-robin over the K credentials, in order (each used once per K requests).
    Seq,
    /// A fresh random credential (prefix + 128 random bits) on every request.
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredKind {
    /// `cookie: <cookie-name>=<value>`
    Cookie,
    /// `x-session-token: <value>`
    Token,
    /// `authorization: Bearer <value>` (JWT or OAuth2 access tokens)
    Bearer,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// ext_authz gRPC target, e.g. http://127.0.0.1:9191
    #[arg(long, conflicts_with = "http")]
    grpc: Option<String>,
    /// HTTP decision endpoint base; the request path is appended, e.g.
    /// http://127.0.0.1:4456/decisions (Oathkeeper) or http://127.0.0.1:9192/check (sessiongate).
    #[arg(long)]
    http: Option<String>,
    /// HTTP/2 connections (gRPC) or HTTP clients (HTTP mode; each keeps its own keep-alive pool).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at most (closed-loop: exactly this many workers).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Run this long (after --warmup). Ignored when --requests is given.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Send exactly this many requests (no warmup).
    #[arg(long)]
    requests: Option<u64>,
    /// Fixed rate in requests/s (open-loop; latency from the intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Unrecorded warm-up before the measured window (same load).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Credential distribution.
    #[arg(long, value_enum, default_value = "same")]
    dist: Dist,
    /// Number of distinct credentials K for synthetic credentials (--prefix).
    #[arg(long, default_value_t = 1)]
    keys: usize,
    /// Synthetic credentials: <prefix><index, 8 digits>. Used when --cred-file is not given.
    #[arg(long, default_value = "valid-bench-")]
    prefix: String,
    /// File with one credential value per line (real Kratos cookies); K = its line count.
    #[arg(long)]
    cred_file: Option<PathBuf>,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    #[arg(long, value_enum, default_value = "cookie")]
    cred_kind: CredKind,
    #[arg(long, default_value = "ory_kratos_session")]
    cookie_name: String,
    /// Request path (`:path`).
    #[arg(long, default_value = "/api/v1/items?page=2")]
    path: String,
    /// `:authority`.
    #[arg(long, default_value = "app.example.com")]
    authority: String,
    /// sessiongate /metrics URL: whoami calls, cache lookups and max whoami_in_flight are reported.
    #[arg(long)]
    metrics: Option<String>,
    /// Poll sessiongate_whoami_in_flight at this interval during the run (needs --metrics).
    #[arg(long, value_parser = humantime::parse_duration)]
    poll_in_flight: Option<Duration>,
    /// Stats URL of a fake-kratos or count-proxy (`/__stats`): upstream calls and max concurrency.
    #[arg(long)]
    upstream_stats: Option<String>,
    /// Worker threads of the load generator (default: CPUs available to this process).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Label printed with the results.
    #[arg(long, default_value = "load")]
    label: String,
    /// Print one JSON line with the results (last line of stdout).
    #[arg(long)]
    json: bool,
    /// Fail (exit 1) unless at least this fraction of requests were allowed.
    #[arg(long)]
    min_ok_ratio: Option<f64>,
    /// Client address sent as Envoy's `attributes.source.address`: an IP, or `per-key` (each
    /// credential its own 10.x.y.z address, like users behind their own connections).
    #[arg(long)]
    source: Option<String>,
    /// Count answers slower than this (a proxy with this ext_authz timeout would have failed
    /// them), e.g. 200ms for Envoy's default.
    #[arg(long, value_parser = humantime::parse_duration)]
    budget: Option<Duration>,
}

/// Where credentials come from.
struct Creds {
    list: Vec<String>,
    dist: Dist,
    zipf: Option<rand_distr::Zipf<f64>>,
    prefix: String,
    seq: AtomicU64,
}

impl Creds {
    fn pick(&self, rng: &mut SmallRng) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        let k = self.list.len();
        match self.dist {
            Dist::Same => Cow::Borrowed(&self.list[0]),
            Dist::Uniform => Cow::Borrowed(&self.list[rng.random_range(0..k)]),
            Dist::Zipf => {
                let r = self.zipf.as_ref().map(|z| z.sample(rng)).unwrap_or(1.0);
                let i = (r as usize).clamp(1, k) - 1;
                Cow::Borrowed(&self.list[i])
            }
            Dist::Seq => {
                let i = self.seq.fetch_add(1, Ordering::Relaxed) as usize % k;
                Cow::Borrowed(&self.list[i])
            }
            Dist::Random => {
                let r: u128 = rng.random();
                Cow::Owned(format!("{}{r:032x}", self.prefix))
            }
        }
    }
}

enum Target {
    Grpc(Vec<AuthorizationClient<tonic::transport::Channel>>),
    Http {
        base: String,
        clients: Vec<reqwest::Client>,
    },
}

/// One request's outcome class.
#[derive(Clone, Copy)]
enum Class {
    Ok,
    Denied,
    Error,
}

struct WorkerStats {
    hist: Histogram<u64>,
    ok: u64,
    denied: u64,
    errors: u64,
    statuses: HashMap<String, u64>,
    over_budget: u64,
}

impl WorkerStats {
    fn new() -> WorkerStats {
        WorkerStats {
            hist: Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds"),
            ok: 0,
            denied: 0,
            errors: 0,
            statuses: HashMap::new(),
            over_budget: 0,
        }
    }
}

struct Shared {
    creds: Creds,
    target: Target,
    template: HashMap<String, String>,
    path: String,
    authority: String,
    cred_kind: CredKind,
    cookie_name: String,
    /// Closed-loop: stop when set. Open-loop: the semaphore is closed instead.
    stop: AtomicBool,
    /// Requests started (for --requests in closed-loop mode).
    started: AtomicU64,
    limit: Option<u64>,
    /// Open-loop: released send slots; each acquirer takes the next index.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    next_index: AtomicU64,
    rate: f64,
    t0: Instant,
    /// Requests whose (intended) start is before this are not recorded.
    record_from: Instant,
    seq_id: AtomicU64,
    source: Option<String>,
    budget_ns: Option<u64>,
}

fn check_request(sh: &Shared, cred: &str, id: u64) -> CheckRequest {
    let mut headers = sh.template.clone();
    let rid = format!("bench-{id:016x}");
    match sh.cred_kind {
        CredKind::Cookie => {
            headers.insert(
                "cookie".into(),
                format!("theme=dark; {}={cred}; _ga=GA1.2.3", sh.cookie_name),
            );
        }
        CredKind::Token => {
            headers.insert("x-session-token".into(), cred.to_owned());
        }
        CredKind::Bearer => {
            headers.insert("authorization".into(), format!("Bearer {cred}"));
        }
    }
    headers.insert("x-request-id".into(), rid.clone());
    let (path, query) = match sh.path.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (sh.path.clone(), String::new()),
    };
    let _ = path;
    let source = sh.source.as_deref().map(|s| {
        let address = if s == "per-key" {
            // A stable 10.x.y.z per credential.
            let h = cred.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            format!("10.{}.{}.{}", (h >> 16) & 255, (h >> 8) & 255, h & 255)
        } else {
            s.to_owned()
        };
        Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: rid,
                    method: "GET".into(),
                    headers,
                    path: sh.path.clone(),
                    host: sh.authority.clone(),
                    scheme: "http".into(),
                    query,
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn one_request(sh: &Shared, worker: usize, rng: &mut SmallRng) -> (Class, String) {
    let cred = sh.creds.pick(rng);
    let id = sh.seq_id.fetch_add(1, Ordering::Relaxed);
    match &sh.target {
        Target::Grpc(clients) => {
            let mut client = clients[worker % clients.len()].clone();
            let req = check_request(sh, &cred, id);
            match client.check(req).await {
                Ok(resp) => classify_check(&resp.into_inner()),
                Err(status) => (Class::Error, format!("rpc:{:?}", status.code())),
            }
        }
        Target::Http { base, clients } => {
            let client = &clients[worker % clients.len()];
            let mut req = client
                .get(format!("{base}{}", sh.path))
                .header("host", &sh.authority)
                .header("accept", "application/json")
                .header(
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64) sessiongate-bench",
                )
                .header("x-forwarded-proto", "http")
                .header("x-request-id", format!("bench-{id:016x}"));
            req = match sh.cred_kind {
                CredKind::Cookie => req.header(
                    "cookie",
                    format!("theme=dark; {}={cred}; _ga=GA1.2.3", sh.cookie_name),
                ),
                CredKind::Token => req.header("x-session-token", cred.as_ref()),
                CredKind::Bearer => req.header("authorization", format!("Bearer {cred}")),
            };
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Drain the body so the connection is reused.
                    let _ = resp.bytes().await;
                    let class = match status {
                        200..=299 => Class::Ok,
                        401 | 403 | 302 | 303 => Class::Denied,
                        _ => Class::Error,
                    };
                    (class, format!("http:{status}"))
                }
                Err(e) => (
                    Class::Error,
                    format!(
                        "transport:{}",
                        if e.is_connect() {
                            "connect"
                        } else if e.is_timeout() {
                            "timeout"
                        } else {
                            "other"
                        }
                    ),
                ),
            }
        }
    }
}

fn classify_check(resp: &CheckResponse) -> (Class, String) {
    let code = resp.status.as_ref().map(|s| s.code).unwrap_or(0);
    if code == 0 {
        return (Class::Ok, "ok".into());
    }
    let http = match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map(|s| s.code).unwrap_or(403),
        _ => 403,
    };
    let class = if matches!(http, 401 | 403 | 302 | 303) {
        Class::Denied
    } else {
        Class::Error
    };
    (class, format!("deny:{http}"))
}

async fn worker(sh: Arc<Shared>, idx: usize) -> WorkerStats {
    let mut stats = WorkerStats::new();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    loop {
        // When does this request count from?
        let intended = if let Some(slots) = &sh.slots {
            match slots.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => break, // closed: the run is over
            }
            let i = sh.next_index.fetch_add(1, Ordering::Relaxed);
            sh.t0 + Duration::from_secs_f64(i as f64 / sh.rate)
        } else {
            if sh.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(limit) = sh.limit
                && sh.started.fetch_add(1, Ordering::Relaxed) >= limit
            {
                break;
            }
            Instant::now()
        };
        let (class, status) = one_request(&sh, idx, &mut rng).await;
        let done = Instant::now();
        if intended < sh.record_from {
            continue;
        }
        let ns = done.saturating_duration_since(intended).as_nanos() as u64;
        stats.hist.saturating_record(ns.max(1_000));
        if sh.budget_ns.is_some_and(|b| ns > b) {
            stats.over_budget += 1;
        }
        match class {
            Class::Ok => stats.ok += 1,
            Class::Denied => stats.denied += 1,
            Class::Error => stats.errors += 1,
        }
        *stats.statuses.entry(status).or_default() += 1;
    }
    stats
}

/// Sum of every sample of `name` (any labels) in a Prometheus text exposition.
async fn take_before(
    side: &reqwest::Client,
    args: &LoadArgs,
) -> Result<(Option<GateCounters>, Option<Value>)> {
    let before = match &args.metrics {
        Some(u) => Some(scrape(side, u).await.context("scraping --metrics")?.0),
        None => None,
    };
    if let Some(u) = &args.upstream_stats {
        let _ = side.post(format!("{u}/reset")).send().await;
    }
    let up_before = match &args.upstream_stats {
        Some(u) => Some(
            upstream_stats(side, u)
                .await
                .context("reading --upstream-stats")?,
        ),
        None => None,
    };
    Ok((before, up_before))
}

pub async fn load(args: LoadArgs) -> Result<()> {
    // Credentials.
    let list: Vec<String> = if let Some(f) = &args.cred_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        (0..args.keys.max(1))
            .map(|i| format!("{}{i:08}", args.prefix))
            .collect()
    };
    if list.is_empty() {
        bail!("no credentials");
    }
    let zipf = if args.dist == Dist::Zipf {
        Some(
            rand_distr::Zipf::new(list.len() as f64, args.zipf_s)
                .map_err(|e| anyhow!("zipf: {e}"))?,
        )
    } else {
        None
    };
    let k = list.len();
    let creds = Creds {
        list,
        dist: args.dist,
        zipf,
        prefix: args.prefix.clone(),
        seq: AtomicU64::new(0),
    };

    // Connections.
    let connections = args.connections.max(1);
    let target = if let Some(grpc) = &args.grpc {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let ch = tonic::transport::Endpoint::from_shared(grpc.clone())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .buffer_size(args.concurrency.max(1024))
                .connect()
                .await
                .with_context(|| format!("connecting to {grpc}"))?;
            clients.push(AuthorizationClient::new(ch));
        }
        Target::Grpc(clients)
    } else if let Some(base) = &args.http {
        let per = args.concurrency.div_ceil(connections).max(1);
        let clients = (0..connections)
            .map(|_| {
                reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(per)
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(30))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Target::Http {
            base: base.trim_end_matches('/').to_owned(),
            clients,
        }
    } else {
        bail!("give --grpc URL or --http URL");
    };

    let mut template = HashMap::new();
    for (k, v) in [
        (":authority", args.authority.as_str()),
        (":path", args.path.as_str()),
        (":method", "GET"),
        (":scheme", "http"),
        ("accept", "application/json"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) sessiongate-bench",
        ),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        template.insert(k.to_owned(), v.to_owned());
    }

    let side = reqwest::Client::builder().build()?;
    let open_loop = args.rate.is_some();
    let rate = args.rate.unwrap_or(0.0);
    if open_loop && rate <= 0.0 {
        bail!("--rate must be > 0");
    }
    let warmup = if args.requests.is_some() {
        Duration::ZERO
    } else {
        args.warmup
    };
    let (pre_before, pre_up_before) = if warmup.is_zero() {
        take_before(&side, &args).await?
    } else {
        (None, None)
    };
    // Open loop: the clock starts once the workers are spawned and parked on the pacer. Started
    // at once, the first few dozen requests' intended times passed while 512 workers were still
    // being spawned, which put ~80 ms into their latency (measured against the no-op floor server:
    // p99.9 75 ms without this, 3 ms with it).
    let t0 = Instant::now()
        + if open_loop {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
    let record_from = t0 + warmup;
    let slots = open_loop.then(|| Arc::new(tokio::sync::Semaphore::new(0)));
    let sh = Arc::new(Shared {
        creds,
        target,
        template,
        path: args.path.clone(),
        authority: args.authority.clone(),
        cred_kind: args.cred_kind,
        cookie_name: args.cookie_name.clone(),
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        limit: args.requests,
        slots: slots.clone(),
        next_index: AtomicU64::new(0),
        rate,
        t0,
        record_from,
        seq_id: AtomicU64::new(0),
        source: args.source.clone(),
        budget_ns: args.budget.map(|b| b.as_nanos() as u64),
    });

    // Pacer (open-loop): an OS thread releases send slots at the intended times.
    let total_time = warmup + args.duration;
    let pacer = slots.map(|slots| {
        let limit = args.requests;
        std::thread::spawn(move || {
            std::thread::sleep(t0.saturating_duration_since(Instant::now()));
            let mut released: u64 = 0;
            loop {
                let elapsed = t0.elapsed();
                let mut due = (elapsed.as_secs_f64() * rate) as u64 + 1;
                if let Some(l) = limit {
                    due = due.min(l);
                }
                if due > released {
                    slots.add_permits((due - released) as usize);
                    released = due;
                }
                let done = match limit {
                    Some(l) => released >= l,
                    None => elapsed >= total_time,
                };
                if done || elapsed > total_time + Duration::from_secs(3600) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            released
        })
    });

    // Workers.
    let mut handles = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency.max(1) {
        handles.push(tokio::spawn(worker(sh.clone(), i)));
    }

    // Scrape before: at the start (no warm-up) or at the end of the warm-up.
    let measured_start;
    let (before, up_before) = if warmup.is_zero() {
        measured_start = t0;
        (pre_before, pre_up_before)
    } else {
        tokio::time::sleep_until(record_from.into()).await;
        measured_start = Instant::now();
        take_before(&side, &args).await?
    };
    // In-flight poller.
    let max_in_flight = Arc::new(AtomicI64::new(-1));
    let poll_stop = Arc::new(AtomicBool::new(false));
    let poller = match (&args.metrics, args.poll_in_flight) {
        (Some(u), Some(every)) => {
            let (u, side, max, stop) = (
                u.clone(),
                side.clone(),
                max_in_flight.clone(),
                poll_stop.clone(),
            );
            Some(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(3600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(r) = side.get(&u).timeout(Duration::from_secs(2)).send().await
                        && let Ok(t) = r.text().await
                    {
                        let v = prom_sum(&t, "sessiongate_whoami_in_flight", None) as i64;
                        max.fetch_max(v, Ordering::Relaxed);
                    }
                    tokio::time::sleep(every).await;
                }
            }))
        }
        _ => None,
    };

    // Wait for the end.
    if args.requests.is_none() {
        tokio::time::sleep_until((record_from + args.duration).into()).await;
        sh.stop.store(true, Ordering::Relaxed);
        if let Some(s) = &sh.slots {
            s.close();
        }
    }
    let mut total = WorkerStats::new();
    let hard_deadline = Instant::now() + Duration::from_secs(120);
    for h in handles {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, h).await {
            Ok(Ok(s)) => {
                total.hist.add(&s.hist).ok();
                total.ok += s.ok;
                total.denied += s.denied;
                total.errors += s.errors;
                total.over_budget += s.over_budget;
                for (k, v) in s.statuses {
                    *total.statuses.entry(k).or_default() += v;
                }
            }
            _ => bail!("a worker did not finish within 120 s after the run"),
        }
    }
    if let Some(s) = &sh.slots {
        s.close();
    }
    let elapsed = measured_start.elapsed();
    let scheduled = pacer.map(|p| p.join().unwrap_or(0));
    poll_stop.store(true, Ordering::Relaxed);
    if let Some(p) = poller {
        let _ = p.await;
    }
    let after = match &args.metrics {
        Some(u) => Some(scrape(&side, u).await.context("scraping --metrics")?.0),
        None => None,
    };
    let up_after = match &args.upstream_stats {
        Some(u) => Some(upstream_stats(&side, u).await?),
        None => None,
    };

    // Report.
    let n = total.ok + total.denied + total.errors;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| total.hist.value_at_quantile(p) as f64 / 1e3; // µs
    let mut out = json!({
        "label": args.label,
        "mode": if open_loop { "fixed-rate" } else { "closed-loop" },
        "target": args.grpc.clone().or(args.http.clone()),
        "transport": if args.grpc.is_some() { "grpc" } else { "http" },
        "connections": connections,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "dist": format!("{:?}", args.dist).to_lowercase(),
        "keys": k,
        "requests": n,
        "ok": total.ok,
        "denied": total.denied,
        "errors": total.errors,
        "statuses": total.statuses.iter().collect::<BTreeMap<_, _>>(),
        "over_budget": total.over_budget,
        "seconds": secs,
        "rps": n as f64 / secs,
        "latency_us": {
            "mean": total.hist.mean() / 1e3,
            "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p999": q(0.999),
            "max": total.hist.max() as f64 / 1e3,
        },
    });
    if let Some(s) = scheduled {
        out["scheduled"] = json!(s);
    }
    if let (Some(b), Some(a)) = (before, after) {
        let whoami = a.whoami - b.whoami;
        let hit = a.hit - b.hit;
        let lookups = hit + (a.miss - b.miss) + (a.coalesced - b.coalesced);
        out["gate"] = json!({
            "whoami_calls": whoami,
            "whoami_per_1000": if n > 0 { whoami * 1000.0 / n as f64 } else { 0.0 },
            "whoami_per_s": whoami / secs,
            "lookups_hit": hit,
            "lookups_miss": a.miss - b.miss,
            "lookups_coalesced": a.coalesced - b.coalesced,
            "lookups_negative": a.negative - b.negative,
            "hit_ratio": if lookups > 0.0 { hit / lookups } else { 0.0 },
            "shed": a.shed - b.shed,
            "cache_entries": a.entries,
            "cache_weighted_bytes": a.weighted_bytes,
            "max_whoami_in_flight_polled": max_in_flight.load(Ordering::Relaxed),
        });
    }
    if let (Some(b), Some(a)) = (up_before, up_after) {
        let calls = a["calls"].as_f64().unwrap_or(0.0) - b["calls"].as_f64().unwrap_or(0.0);
        out["upstream"] = json!({
            "whoami_calls": calls,
            "whoami_per_1000": if n > 0 { calls * 1000.0 / n as f64 } else { 0.0 },
            "max_concurrency": a["max_in_flight"],
        });
    }
    print_human(&out);
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    }
    if let Some(min) = args.min_ok_ratio
        && (n == 0 || (total.ok as f64) < min * n as f64)
    {
        bail!("only {} of {} requests allowed (< {min})", total.ok, n);
    }
    Ok(())
}

fn print_human(o: &Value) {
    let l = &o["latency_us"];
    println!(
        "[{}] {} {} conns={} conc={} rate={} dist={} K={}",
        o["label"].as_str().unwrap_or(""),
        o["transport"].as_str().unwrap_or(""),
        o["mode"].as_str().unwrap_or(""),
        o["connections"],
        o["concurrency"],
        o["rate"],
        o["dist"].as_str().unwrap_or(""),
        o["keys"],
    );
    println!(
        "  requests {} in {:.2}s = {:.0} req/s; ok {} denied {} errors {} {}",
        o["requests"],
        o["seconds"].as_f64().unwrap_or(0.0),
        o["rps"].as_f64().unwrap_or(0.0),
        o["ok"],
        o["denied"],
        o["errors"],
        o["statuses"],
    );
    if o["over_budget"].as_u64().unwrap_or(0) > 0 {
        println!("  over the --budget: {}", o["over_budget"]);
    }
    println!(
        "  latency µs: mean {:.0} p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}",
        l["mean"].as_f64().unwrap_or(0.0),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p999"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
    );
    if let Some(g) = o.get("gate") {
        println!(
            "  gate: whoami {} ({:.2}/1000 req, {:.1}/s), hit ratio {:.4}, shed {}, max in-flight (polled) {}, entries {}",
            g["whoami_calls"],
            g["whoami_per_1000"].as_f64().unwrap_or(0.0),
            g["whoami_per_s"].as_f64().unwrap_or(0.0),
            g["hit_ratio"].as_f64().unwrap_or(0.0),
            g["shed"],
            g["max_whoami_in_flight_polled"],
            g["cache_entries"],
        );
    }
    if let Some(u) = o.get("upstream") {
        println!(
            "  upstream: whoami {} ({:.2}/1000 req), max concurrency {}",
            u["whoami_calls"],
            u["whoami_per_1000"].as_f64().unwrap_or(0.0),
            u["max_concurrency"],
        );
    }
}
