//! Metrics of the OAuth2 token sources. Kept apart from `telemetry::Metrics` so this module can
//! grow without touching the shared registry; the app registers them with
//! [`Oauth2Metrics::register`]. Labels are closed sets or come from config (the issuer).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::{ResultLabel, StatusLabel};

/// `issuer` (from config, so bounded) and `result` of a JWKS fetch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerResultLabels {
    /// The configured issuer whose lookup started the fetch.
    pub issuer: String,
    /// ok, error, too_large, timeout, undecodable, discovery_error.
    pub result: &'static str,
}

/// Every metric of the token sources.
#[derive(Debug, Default)]
pub struct Oauth2Metrics {
    /// `sessiongate_jwks_fetches_total{issuer, result}`.
    pub jwks_fetches: Family<IssuerResultLabels, Counter>,
    /// `sessiongate_jwt_verifications_total{result}`: `valid`, `cached`, or a rejection reason
    /// (`Rejection::as_str`), or `keys_unavailable`.
    pub jwt_verifications: Family<ResultLabel, Counter>,
    /// `sessiongate_introspection_requests_total{status}`.
    pub introspection_requests: Family<StatusLabel, Counter>,
    /// `sessiongate_introspection_lookups_total{result}` (hit, negative, miss, coalesced).
    pub introspection_lookups: Family<ResultLabel, Counter>,
    /// `sessiongate_introspection_in_flight`.
    pub introspection_in_flight: Gauge,
    /// `sessiongate_introspection_shed_total`.
    pub introspection_shed: Counter,
    /// `sessiongate_introspection_shared_total{result}`: reads of the shared tier (Redis) on a
    /// miss here: `hit`, `negative` (an inactive answer), `miss`, or why an entry was not used
    /// (`forged`, `malformed`, `oversized`, `old_generation`, `unusable`, `tombstoned`).
    pub introspection_shared: Family<ResultLabel, Counter>,
}

impl Oauth2Metrics {
    /// Registers every metric under `registry` (give it the `sessiongate` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "jwks_fetches",
            "JWKS and discovery fetches by configured issuer and result",
            self.jwks_fetches.clone(),
        );
        registry.register(
            "jwt_verifications",
            "JWT access-token verifications by result (valid, cached, or the rejection reason)",
            self.jwt_verifications.clone(),
        );
        registry.register(
            "introspection_requests",
            "Calls to the OAuth2 introspection endpoint by HTTP status or failure kind",
            self.introspection_requests.clone(),
        );
        registry.register(
            "introspection_lookups",
            "Introspection cache lookups by result (hit, negative, miss, coalesced)",
            self.introspection_lookups.clone(),
        );
        registry.register(
            "introspection_in_flight",
            "Calls to the introspection endpoint in flight",
            self.introspection_in_flight.clone(),
        );
        registry.register(
            "introspection_shed",
            "Introspection lookups refused because the concurrency limit stayed full",
            self.introspection_shed.clone(),
        );
        registry.register(
            "introspection_shared",
            "Reads of introspection answers from the shared tier (Redis) by result: hit, negative, miss, or why an entry was dropped",
            self.introspection_shared.clone(),
        );
    }

    /// Counts one read of the shared tier.
    pub fn shared(&self, result: &'static str) {
        self.introspection_shared
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Reads of the shared tier with `result`.
    pub fn shared_count(&self, result: &'static str) -> u64 {
        self.introspection_shared
            .get_or_create(&ResultLabel { result })
            .get()
    }

    /// Counts one JWT verification result.
    pub fn verification(&self, result: &'static str) {
        self.jwt_verifications
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// JWKS fetches for `issuer` with `result`.
    pub fn jwks_fetch_count(&self, issuer: &str, result: &'static str) -> u64 {
        self.jwks_fetches
            .get_or_create(&IssuerResultLabels {
                issuer: issuer.to_owned(),
                result,
            })
            .get()
    }

    /// Introspection calls that got an HTTP answer or failed, all statuses.
    pub fn introspection_total(&self) -> u64 {
        ["200", "4xx", "5xx", "other", "timeout", "connect", "body"]
            .iter()
            .map(|s| {
                self.introspection_requests
                    .get_or_create(&StatusLabel { status: s })
                    .get()
            })
            .sum()
    }
}
