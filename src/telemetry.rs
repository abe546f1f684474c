//! Telemetry: the Prometheus registry and metric handles, the `tracing` subscriber (JSON or
//! pretty logs), and OpenTelemetry OTLP trace export with W3C trace-context propagation.
//!
//! Metric labels are closed sets of `&'static str`: a credential can never become a label.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat, TracingConfig};
use crate::headers::Headers;

/// `decision` and `reason` of one authorization decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why, from a closed set (see `authz::Reason`).
    pub reason: &'static str,
    /// The route rule's name (from configuration: bounded), `default` or `none`.
    pub rule: Arc<str>,
}

/// One label named `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The result.
    pub result: &'static str,
}

/// One label named `status` (HTTP status code or transport failure kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The status.
    pub status: &'static str,
}

/// One label named `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: &'static str,
}

/// The admission lane of a whoami call (`known`, `first`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// The lane.
    pub lane: &'static str,
}

/// Lane and result of a whoami admission.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// The lane.
    pub lane: &'static str,
    /// `admitted` (at once), `queued` (after a wait), `timeout`, `shed`, `pushed_out`.
    pub result: &'static str,
}

/// `op` and `result` of a Redis operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisLabels {
    /// get, set, publish, subscribe, connect, message.
    pub op: &'static str,
    /// hit, miss, ok, error, timeout, malformed.
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric sessiongate exports.
pub struct Metrics {
    registry: Registry,
    /// `sessiongate_decisions_total{decision, reason}`.
    pub decisions: Family<DecisionLabels, Counter>,
    /// `sessiongate_check_duration_seconds{decision}`.
    pub check_duration: HistogramFamily<ResultLabel>,
    /// `sessiongate_cache_lookups_total{result}`.
    pub cache_lookups: Family<ResultLabel, Counter>,
    /// `sessiongate_cache_entries`.
    pub cache_entries: Gauge,
    /// `sessiongate_cache_weighted_bytes`.
    pub cache_bytes: Gauge,
    /// `sessiongate_cache_evictions_total{kind}` (expired, size, explicit).
    pub cache_evictions: Family<KindLabel, Counter>,
    /// `sessiongate_cache_stale_if_error_total`.
    pub cache_stale_if_error: Counter,
    /// `sessiongate_cache_invalidations_total{kind}`.
    pub cache_invalidations: Family<KindLabel, Counter>,
    /// `sessiongate_whoami_requests_total{status}`.
    pub whoami_requests: Family<StatusLabel, Counter>,
    /// `sessiongate_whoami_duration_seconds{status}`.
    pub whoami_duration: HistogramFamily<StatusLabel>,
    /// `sessiongate_whoami_in_flight`.
    pub whoami_in_flight: Gauge,
    /// `sessiongate_whoami_shed_total` (lookups refused because the upstream queue was full).
    pub whoami_shed: Counter,
    /// `sessiongate_whoami_admissions_total{lane,result}`.
    pub whoami_admissions: Family<AdmissionLabels, Counter>,
    /// `sessiongate_whoami_lane_in_flight{lane}`.
    pub whoami_lane_in_flight: Family<LaneLabel, Gauge>,
    /// `sessiongate_whoami_waiting{lane}`.
    pub whoami_waiting: Family<LaneLabel, Gauge>,
    /// `sessiongate_credentials_rejected_total{kind}`: refused by shape, before any lookup.
    pub credentials_rejected: Family<KindLabel, Counter>,
    /// `sessiongate_jwt_mints_total`.
    pub jwt_mints: Counter,
    /// `sessiongate_key_reloads_total{result}` (ok, error, unchanged is not counted).
    pub key_reloads: Family<ResultLabel, Counter>,
    /// `sessiongate_config_reloads_total{result}`: route rule reloads (ok, error).
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `sessiongate_redis_operations_total{op, result}`.
    pub redis_operations: Family<RedisLabels, Counter>,
    /// `sessiongate_redis_subscribed` (1 while the invalidation subscription is up).
    pub redis_subscribed: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        Self::with_extra(|_| {})
    }

    /// Like [`Metrics::new`], letting other parts (the OAuth2 sources) register theirs in the
    /// same registry.
    pub fn with_extra(extra: impl FnOnce(&mut Registry)) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("sessiongate");
        extra(&mut registry);
        let m = Metrics {
            decisions: Family::default(),
            check_duration: Family::new_with_constructor(latency_histogram),
            cache_lookups: Family::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_evictions: Family::default(),
            cache_stale_if_error: Counter::default(),
            cache_invalidations: Family::default(),
            whoami_requests: Family::default(),
            whoami_duration: Family::new_with_constructor(latency_histogram),
            whoami_in_flight: Gauge::default(),
            whoami_shed: Counter::default(),
            whoami_admissions: Family::default(),
            whoami_lane_in_flight: Family::default(),
            whoami_waiting: Family::default(),
            credentials_rejected: Family::default(),
            jwt_mints: Counter::default(),
            key_reloads: Family::default(),
            config_reloads: Family::default(),
            redis_operations: Family::default(),
            redis_subscribed: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "Authorization decisions by decision and reason",
            m.decisions.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Time to decide one check, by decision",
            m.check_duration.clone(),
        );
        registry.register(
            "cache_lookups",
            "Session cache lookups by result (hit, miss, stale, refresh, coalesced, negative, bypass)",
            m.cache_lookups.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries in the session cache (approximate)",
            m.cache_entries.clone(),
        );
        registry.register(
            "cache_weighted_bytes",
            "Weighted size of the session cache in bytes (approximate)",
            m.cache_bytes.clone(),
        );
        registry.register(
            "cache_evictions",
            "Cache entries removed, by kind (expired, size, explicit)",
            m.cache_evictions.clone(),
        );
        registry.register(
            "cache_stale_if_error",
            "Sessions served past their TTL because Kratos failed (stale_if_error)",
            m.cache_stale_if_error.clone(),
        );
        registry.register(
            "cache_invalidations",
            "Cache invalidations by kind",
            m.cache_invalidations.clone(),
        );
        registry.register(
            "whoami_requests",
            "Calls to Kratos /sessions/whoami by HTTP status or failure kind",
            m.whoami_requests.clone(),
        );
        registry.register(
            "whoami_duration_seconds",
            "Duration of calls to Kratos /sessions/whoami",
            m.whoami_duration.clone(),
        );
        registry.register(
            "whoami_in_flight",
            "Calls to Kratos /sessions/whoami in flight",
            m.whoami_in_flight.clone(),
        );
        registry.register(
            "whoami_shed",
            "Lookups refused because the whoami concurrency limit stayed full for queue_timeout",
            m.whoami_shed.clone(),
        );
        registry.register(
            "whoami_admissions",
            "Whoami admissions by lane (known sessions, first lookups) and result",
            m.whoami_admissions.clone(),
        );
        registry.register(
            "whoami_lane_in_flight",
            "Calls to Kratos /sessions/whoami in flight, by admission lane",
            m.whoami_lane_in_flight.clone(),
        );
        registry.register(
            "whoami_waiting",
            "Lookups waiting for a whoami slot, by admission lane",
            m.whoami_waiting.clone(),
        );
        registry.register(
            "credentials_rejected",
            "Session credentials refused by shape before any lookup, by where they were found",
            m.credentials_rejected.clone(),
        );
        registry.register("jwt_mints", "JWTs signed", m.jwt_mints.clone());
        registry.register(
            "redis_operations",
            "Redis operations by op and result",
            m.redis_operations.clone(),
        );
        registry.register(
            "redis_subscribed",
            "1 while the Redis invalidation subscription is up",
            m.redis_subscribed.clone(),
        );
        registry.register(
            "key_reloads",
            "Signing key file reloads by result (ok, error)",
            m.key_reloads.clone(),
        );
        registry.register(
            "config_reloads",
            "Route rule reloads from the config file by result (ok, error)",
            m.config_reloads.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Counts one decision.
    pub fn decision(&self, decision: &'static str, reason: &'static str, rule: &Arc<str>) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision,
                reason,
                rule: rule.clone(),
            })
            .inc();
    }

    /// Counts one cache lookup.
    pub fn cache_lookup(&self, result: &'static str) {
        self.cache_lookups
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sum of a counter family over all label values, for tests and stats.
    pub fn whoami_total(&self) -> u64 {
        [
            "200", "401", "403", "429", "4xx", "5xx", "other", "timeout", "connect", "body",
        ]
        .iter()
        .map(|s| {
            self.whoami_requests
                .get_or_create(&StatusLabel { status: s })
                .get()
        })
        .sum()
    }
}

// === logging and tracing ===

/// Keeps the OpenTelemetry provider alive; flushes spans on drop.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global `tracing` subscriber: logs per `log`, spans to OTLP per `tracing`.
/// `RUST_LOG` overrides `log.level` when set.
pub fn init(log: &LogConfig, tracing_cfg: &TracingConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(v)?,
        _ => tracing_subscriber::EnvFilter::try_new(&log.level)?,
    };
    let (otel_layer, provider) = match tracer_provider(tracing_cfg)? {
        Some(provider) => {
            let tracer = provider.tracer("sessiongate");
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry().with(otel_layer);
    match log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()?,
    }
    Ok(TelemetryGuard { provider })
}

use tracing_subscriber::Layer as _;

/// Builds the OTLP tracer provider, or `None` when export is off.
pub fn tracer_provider(
    cfg: &TracingConfig,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let sdk_disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if !cfg.enabled || sdk_disabled {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_else(|_| cfg.otlp_endpoint.clone());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let service_name =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| cfg.service_name.clone());
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(cfg.sample_ratio),
    ));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// The `x-request-id` a client or proxy sent, fit for a log line or span: at most 128 printable
/// ASCII characters, else absent (a client controls it).
pub fn request_id(headers: &Headers) -> Option<&str> {
    headers
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// The span of one check, for either transport (`transport`: `grpc` or `forward_auth`), tagged
/// with the request id and parented on the request's W3C trace context.
pub fn check_span(transport: &'static str, method: &str, headers: &Headers) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "check",
        otel.kind = "server",
        otel.name = if transport == "grpc" {
            "envoy.service.auth.v3.Authorization/Check"
        } else {
            "forward_auth.check"
        },
        transport,
        http.request.method = %method,
        request_id = request_id(headers).unwrap_or_default(),
    );
    let parent = extract_context(headers.get("traceparent"), headers.get("tracestate"));
    let _ = span.set_parent(parent);
    span
}

/// Extracts a W3C trace context from `traceparent`/`tracestate` values.
pub fn extract_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> opentelemetry::Context {
    struct Carrier<'a>(Option<&'a str>, Option<&'a str>);
    impl Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    TraceContextPropagator::new().extract(&Carrier(traceparent, tracestate))
}

/// Serialises the current span's trace context as W3C headers (empty when no span is recording).
pub fn inject_current() -> HashMap<String, String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Carrier(HashMap<String, String>);
    impl Injector for Carrier {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }
    let cx = tracing::Span::current().context();
    let mut carrier = Carrier(HashMap::new());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0
}
