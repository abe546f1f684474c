//! Typed configuration: defaults that serve a local Kratos, one YAML file, `SESSIONGATE_*`
//! environment overrides, and a `validate()` that names the field and the fix for every problem.
//!
//! Layering (last wins): built-in defaults → YAML file → `SESSIONGATE_<SECTION>__<KEY>` env vars.
//! Unknown fields are rejected everywhere, so a typo is an error rather than a silently ignored knob.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod cidr;
mod credentials;
mod load;
mod oauth2;
mod redis;
mod routes;
mod validate;
mod validate_redis;

pub use cidr::Cidr;
pub use credentials::{CredentialsConfig, ShapeConfig};
pub use load::{ConfigError, Problem};
pub use oauth2::{ClientAuth, IntrospectionConfig, JwtIssuerConfig, Secret};
pub use redis::{RedisConfig, RedisTlsConfig};
pub use routes::{
    CredentialKind, DefaultPolicy, MatchConfig, RequirementConfig, RoutesConfig, RuleConfig,
};
pub use validate::is_cookie_name;

/// The whole configuration of one sessiongate process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The ext_authz gRPC listener.
    pub grpc: GrpcConfig,
    /// The side HTTP port (JWKS, health, metrics).
    pub http: HttpConfig,
    /// How Kratos' `/sessions/whoami` is called.
    pub whoami: WhoamiConfig,
    /// Where the session credential is looked for.
    pub credentials: CredentialsConfig,
    /// The in-process session cache.
    pub cache: CacheConfig,
    /// The JWT minted for upstream services.
    pub jwt: JwtConfig,
    /// What is done to the upstream request on allow.
    pub upstream: UpstreamConfig,
    /// How denials look.
    pub deny: DenyConfig,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry trace export.
    pub tracing: TracingConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// HTTP forward-auth endpoint (nginx, Traefik, Caddy, Envoy `http_service`).
    pub forward_auth: ForwardAuthConfig,
    /// Logout awareness.
    pub logout: LogoutConfig,
    /// Admin API.
    pub admin: AdminConfig,
    /// Optional Redis: shared cache and invalidation broadcast for many replicas.
    pub redis: RedisConfig,
    /// Route rules: which policy each request gets.
    pub routes: RoutesConfig,
    /// Trusted issuers of JWT access tokens (routes accepting `jwt` credentials).
    pub jwt_issuers: Vec<JwtIssuerConfig>,
    /// An RFC 7662 introspection endpoint for opaque OAuth2 access tokens (routes accepting
    /// `oauth2` credentials). Unset: off.
    pub oauth2_introspection: Option<IntrospectionConfig>,
}

/// Claims sessiongate sets itself in minted tokens: never taken from `jwt.claims` or from data
/// read back from the shared tier.
pub const RESERVED_CLAIMS: [&str; 9] = [
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "aal",
];

/// `Debug` for a secret: whether it is set, never its value.
pub(crate) fn redacted(secret: &Option<String>) -> &'static str {
    match secret {
        Some(_) => "Some(<redacted>)",
        None => "None",
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("ttl", &self.ttl)
            .field("refresh_after", &self.refresh_after)
            .field("negative_ttl", &self.negative_ttl)
            .field("stale_if_error", &self.stale_if_error)
            .field("max_bytes", &self.max_bytes)
            .field("client_max_age", &self.client_max_age)
            .field("key_secret", &redacted(&self.key_secret))
            .finish()
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The ext_authz gRPC listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address of the gRPC listener (ext_authz `Check`, `grpc.health.v1`, reflection).
    pub listen: SocketAddr,
    /// Largest accepted `CheckRequest`, in bytes.
    pub max_request_bytes: usize,
    /// TLS (and mTLS) on the gRPC listener. Unset: plaintext (a mesh sidecar usually adds mTLS).
    pub tls: Option<GrpcTlsConfig>,
}

/// TLS on the gRPC listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA bundle for client certificates (mTLS). Set: clients must present a certificate
    /// signed by it (see `client_auth_optional`), and the admin API always requires one.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: let `Check` callers without a client certificate in (the admin
    /// API still requires one).
    #[serde(default)]
    pub client_auth_optional: bool,
}

/// The side HTTP port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener (`/.well-known/jwks.json`, `/health/*`, `/metrics`).
    pub listen: SocketAddr,
    /// `Cache-Control: max-age` on the JWKS document.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
}

/// How Kratos' whoami endpoint is called.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WhoamiConfig {
    /// Base URL of Kratos' public API; `/sessions/whoami` is appended.
    pub base_url: String,
    /// Deadline of one whoami call, connect included. Keep it below Envoy's ext_authz timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline for opening a TCP (and TLS) connection to Kratos.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Most whoami calls in flight at once; further lookups wait up to `queue_timeout`.
    pub max_concurrency: usize,
    /// Slots of `max_concurrency` only refreshes of sessions the cache knows may use, so that
    /// first lookups of unknown credentials (logins, junk) cannot crowd out known users.
    /// Unset: an eighth of `max_concurrency` (at least 1). Known sessions also use any free
    /// slot, and go first when one frees up; the reserve is what a flood can never take.
    pub known_reserve: Option<usize>,
    /// How long a lookup may wait for a whoami slot before it is shed with 503. Waiting first
    /// lookups are served round-robin by client address. Keep `queue_timeout` plus Kratos'
    /// usual latency below the proxy's ext_authz timeout (Envoy: 200 ms).
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Most lookups waiting for a slot at once; when full, the source with the most waiters
    /// loses its newest one.
    pub max_waiting: usize,
    /// Threads of a runtime that runs upstream calls (whoami I/O, parsing answers, shared-tier
    /// reads) apart from the one that serves checks. `0` (default): run them on the serving
    /// runtime; measured, the miss work is a small share of a flood's cost (docs/overload.md).
    pub worker_threads: usize,
    /// Largest accepted whoami response body, in bytes.
    pub max_body_bytes: usize,
    /// Idle keep-alive connections kept per Kratos host.
    pub pool_max_idle: usize,
}

/// The in-process session cache.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a valid session is trusted without asking Kratos again (capped by `expires_at`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a valid session is served without a background refresh; a hit after this (and
    /// before `ttl`) is served at once while one background whoami call refreshes the entry.
    #[serde(with = "humantime_serde")]
    pub refresh_after: Duration,
    /// How long "no valid session" (401) is remembered for a credential.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// When Kratos fails or times out, a session whose TTL ended less than this ago may still be
    /// served (never past its `expires_at`, never after an invalidation). `0s` = off.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// While whoami is saturated, a known session whose TTL ended less than this ago is served
    /// as it is while its revalidation waits for a slot (never past its `expires_at`, never
    /// after an invalidation, never while Redis invalidations are not being received). `0s` =
    /// off: the user waits for the revalidation, or gets 503 if it is shed.
    #[serde(with = "humantime_serde")]
    pub stale_while_overloaded: Duration,
    /// Upper bound of the session cache's weight in bytes, each session's token for the default
    /// audience included; tokens for other audiences and for access tokens are kept in a
    /// separate cache bounded at a quarter of this.
    pub max_bytes: u64,
    /// Whether a request's `Cache-Control: max-age=N` (or `no-cache`) limits the age of the
    /// cached answer: `never`, `always`, or `route` (only where the route sets the
    /// `client_max_age: "true"` context extension).
    pub client_max_age: ClientMaxAge,
    /// Secret for the keyed hash of credentials (cache keys). Random per process when unset.
    pub key_secret: Option<String>,
}

/// Whether clients may demand fresher answers with `Cache-Control`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientMaxAge {
    /// Ignore `Cache-Control` from clients.
    Never,
    /// Honour it on routes with the `client_max_age: "true"` context extension.
    Route,
    /// Honour it on every request.
    Always,
}

/// The HTTP forward-auth endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// Serve `ANY <path>` and `ANY <path>/*`.
    pub enabled: bool,
    /// Own listener; unset: the side HTTP port.
    pub listen: Option<SocketAddr>,
    /// Endpoint path.
    pub path: String,
    /// Peers (IP or CIDR) whose `X-Forwarded-*` / `X-Original-*` headers and `/check` query
    /// are believed. Anyone else is judged by the request's own method, Host and path.
    pub trusted_proxies: Vec<Cidr>,
    /// Answer peers outside `trusted_proxies` too, judging their requests at face value (own
    /// method, `Host` and path). Off: they get 403 — the side port is reachable by every
    /// upstream service (for the JWKS), and `/check` hands out signed tokens.
    pub answer_untrusted_peers: bool,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        ForwardAuthConfig {
            enabled: true,
            listen: None,
            path: "/check".into(),
            trusted_proxies: vec![Cidr::V4_LOOPBACK, Cidr::V6_LOOPBACK],
            answer_untrusted_peers: false,
        }
    }
}

/// Dropping cached sessions when a logout passes through the gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogoutConfig {
    /// Watch checked requests for Kratos logouts and session deletions.
    pub enabled: bool,
    /// The check happens before Kratos processes the logout, so the entry is dropped again after
    /// this delay (a lookup racing the logout cannot keep the old answer).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Requests that end sessions.
    pub patterns: Vec<LogoutPattern>,
}

/// One request shape that ends sessions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogoutPattern {
    /// HTTP method (`*` for any).
    pub method: String,
    /// Path (query ignored). A final `/{id}` segment matches a session id.
    pub path: String,
    /// What ends: the caller's `session`, or every session of the caller's `identity`.
    pub scope: LogoutScope,
}

/// What a logout ends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogoutScope {
    /// The caller's session (or the session named by `{id}`).
    Session,
    /// Every session of the caller's identity.
    Identity,
}

/// The admin API (gRPC `sessiongate.admin.v1.Admin` and the Kratos webhook).
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required by the admin API. Unset (and no `token_file`): admin API off.
    pub token: Option<String>,
    /// File holding the token (e.g. a mounted Kubernetes Secret).
    pub token_file: Option<PathBuf>,
}

/// The JWT minted for upstream services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `iss` claim.
    pub issuer: String,
    /// Default `aud` claim (per-route override with the `audience` context extension).
    pub audience: Vec<String>,
    /// Token lifetime (never past the session's `expires_at`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Private JWKS file (Oathkeeper's `id_token` JWKS works unchanged).
    pub jwks_file: Option<PathBuf>,
    /// PKCS#8 / SEC1 / PKCS#1 PEM private key file, used when no `jwks_file` is set.
    pub pem_file: Option<PathBuf>,
    /// `kid` of the signing key; defaults to the first private key in the file.
    pub signing_kid: Option<String>,
    /// How often the key file is checked for changes (key rotation without restart); `0s` = only
    /// on SIGHUP.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Algorithm of the ephemeral key generated when no key file is configured.
    pub ephemeral_algorithm: Algorithm,
    /// Extra claims: claim name → JSON pointer into the whoami session.
    pub claims: BTreeMap<String, String>,
    /// Embed the whole whoami session under the `session` claim.
    pub include_session: bool,
}

/// Signing algorithms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256.
    #[value(name = "ES256", alias = "es256")]
    ES256,
    /// Ed25519.
    #[value(name = "EdDSA", alias = "eddsa")]
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[value(name = "RS256", alias = "rs256")]
    RS256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is done to the upstream request on allow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Header that carries the minted JWT as `Bearer <jwt>`.
    pub token_header: String,
    /// Remove the session cookie from the upstream `Cookie` header (other cookies are kept).
    pub strip_session_cookie: bool,
    /// Remove `X-Session-Token` from the upstream request.
    pub strip_session_token: bool,
    /// Identity headers: header name → JSON pointer into the session. Always overwritten or removed.
    pub identity_headers: BTreeMap<String, String>,
    /// For `jwt` / `oauth2` credentials: identity header name → JSON pointer into the verified
    /// claims or introspection answer (e.g. `x-user-id: /sub`). An identity header without an
    /// entry here is removed on those requests.
    pub token_identity_headers: BTreeMap<String, String>,
    /// More headers a client must never be able to send upstream; removed on every request.
    pub remove_headers: Vec<String>,
}

/// How denials look.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DenyConfig {
    /// Login page for browsers; unauthenticated browser requests get a 303 to it.
    pub login_url: Option<String>,
    /// Query parameter that carries the original URL on the login redirect.
    pub return_to_param: String,
    /// Kratos public URL as browsers see it, for the AAL2 step-up redirect. Defaults to `whoami.base_url`.
    pub kratos_browser_url: Option<String>,
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// Answer "Kratos unavailable" with a gRPC UNAVAILABLE error instead of a 503 deny, so that
    /// Envoy's `failure_mode_allow` decides. Off: fail closed.
    pub unavailable_as_rpc_error: bool,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `sessiongate=debug,info`.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// OpenTelemetry trace export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Export spans over OTLP/gRPC. `OTEL_SDK_DISABLED=true` also turns it off.
    pub enabled: bool,
    /// OTLP/gRPC endpoint; `OTEL_EXPORTER_OTLP_ENDPOINT` wins when set.
    pub otlp_endpoint: String,
    /// Fraction of root traces sampled (a sampled parent is always followed).
    pub sample_ratio: f64,
    /// `service.name`; `OTEL_SERVICE_NAME` wins when set.
    pub service_name: String,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM: how long readiness is reported false before listeners stop accepting.
    #[serde(with = "humantime_serde")]
    pub readiness_delay: Duration,
    /// Longest wait for in-flight checks to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

// === impl Default ===

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9191)),
            max_request_bytes: 1024 * 1024,
            tls: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9192)),
            jwks_max_age: Duration::from_secs(300),
        }
    }
}

impl WhoamiConfig {
    /// The slots reserved for known sessions (`known_reserve`, or an eighth of the slots).
    pub fn known_reserve(&self) -> usize {
        self.known_reserve
            .unwrap_or((self.max_concurrency / 8).max(1))
    }
}

impl Default for WhoamiConfig {
    fn default() -> Self {
        WhoamiConfig {
            base_url: "http://127.0.0.1:4433".into(),
            timeout: Duration::from_millis(150),
            connect_timeout: Duration::from_millis(100),
            max_concurrency: 256,
            known_reserve: None,
            queue_timeout: Duration::from_millis(120),
            max_waiting: 4096,
            worker_threads: 0,
            max_body_bytes: 1024 * 1024,
            pool_max_idle: 64,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            refresh_after: Duration::from_secs(45),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            stale_while_overloaded: Duration::from_secs(30),
            max_bytes: 256 * 1024 * 1024,
            key_secret: None,
            client_max_age: ClientMaxAge::Route,
        }
    }
}

impl Default for LogoutConfig {
    fn default() -> Self {
        let p = |method: &str, path: &str, scope| LogoutPattern {
            method: method.into(),
            path: path.into(),
            scope,
        };
        LogoutConfig {
            enabled: true,
            grace: Duration::from_secs(2),
            patterns: vec![
                p("GET", "/self-service/logout", LogoutScope::Session),
                p("DELETE", "/self-service/logout/api", LogoutScope::Session),
                p("DELETE", "/sessions", LogoutScope::Identity),
                p("DELETE", "/sessions/{id}", LogoutScope::Session),
            ],
        }
    }
}

impl Config {
    /// The admin token, from `admin.token` or `admin.token_file` (validated by `validate()`).
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.admin.token {
            return Ok(Some(t.clone()));
        }
        match &self.admin.token_file {
            Some(path) => read_token_file(path)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("admin.token_file {}: {e}", path.display())),
            None => Ok(None),
        }
    }
}

/// A token file's content without its one final newline (`\n` or `\r\n`); nothing else is
/// trimmed, so what is compared is exactly what the file holds.
fn read_token_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut t = std::fs::read_to_string(path)?;
    if t.ends_with('\n') {
        t.pop();
        if t.ends_with('\r') {
            t.pop();
        }
    }
    Ok(t)
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: "http://127.0.0.1:9192".into(),
            audience: vec![],
            ttl: Duration::from_secs(300),
            jwks_file: None,
            pem_file: None,
            signing_kid: None,
            reload_interval: Duration::from_secs(10),
            ephemeral_algorithm: Algorithm::ES256,
            claims: BTreeMap::new(),
            include_session: false,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            token_header: "authorization".into(),
            strip_session_cookie: true,
            strip_session_token: true,
            identity_headers: BTreeMap::new(),
            token_identity_headers: BTreeMap::new(),
            remove_headers: vec![],
        }
    }
}

impl Default for DenyConfig {
    fn default() -> Self {
        DenyConfig {
            login_url: None,
            return_to_param: "return_to".into(),
            kratos_browser_url: None,
            realm: "sessiongate".into(),
            unavailable_as_rpc_error: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            sample_ratio: 1.0,
            service_name: "sessiongate".into(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            readiness_delay: Duration::from_secs(0),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

impl Config {
    /// The Kratos URL browsers are sent to for step-up.
    pub fn kratos_browser_url(&self) -> &str {
        self.deny
            .kratos_browser_url
            .as_deref()
            .unwrap_or(&self.whoami.base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn debug_never_prints_secrets() {
        let mut c = Config::default();
        c.cache.key_secret = Some("cache-secret-0123456789abcdef0123456789".into());
        c.admin.token = Some("admin-token-0123456789abcdef".into());
        c.redis.url = Some("redis://:redis-password@127.0.0.1:6379/0".into());
        c.redis.password = Some("master-password".into());
        c.redis.sentinel_password = Some("sentinel-password".into());
        let shown = format!("{c:?} {c:#?}");
        for secret in [
            "cache-secret",
            "admin-token",
            "redis-password",
            "master-password",
            "sentinel-password",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn admin_token_file_is_validated_like_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let check = |content: &str| {
            let path = dir.path().join("token");
            std::fs::write(&path, content).unwrap();
            let mut c = Config::default();
            c.admin.token_file = Some(path);
            let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
            (
                fields.contains(&"admin.token_file".to_string()),
                c.admin_token().unwrap(),
            )
        };
        assert!(check("").0, "empty file");
        assert!(check("\n").0, "just a newline");
        assert!(check("short\n").0, "short");
        assert!(
            check("  0123456789abcdef0123  \n").0,
            "spaces are not trimmed away"
        );
        let good = "0123456789abcdef0123";
        assert_eq!(check(&format!("{good}\n")), (false, Some(good.to_string())));
        assert_eq!(
            check(&format!("{good}\r\n")),
            (false, Some(good.to_string()))
        );
        assert_eq!(check(good), (false, Some(good.to_string())));
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn yaml_overrides_defaults() {
        let c = Config::from_yaml(
            "whoami:\n  base_url: http://kratos:4433\n  timeout: 80ms\ncache:\n  ttl: 2m\n",
        )
        .unwrap();
        assert_eq!(c.whoami.base_url, "http://kratos:4433");
        assert_eq!(c.whoami.timeout, Duration::from_millis(80));
        assert_eq!(c.cache.ttl, Duration::from_secs(120));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
    }

    #[test]
    fn unknown_field_names_the_path() {
        let err = Config::from_yaml("whoami:\n  base_ulr: http://x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("whoami"), "{err}");
        assert!(err.contains("base_ulr"), "{err}");
        assert!(err.contains("base_url"), "suggests the real fields: {err}");
    }

    #[test]
    fn wrong_type_names_the_field_without_echoing_the_value() {
        let err = Config::from_yaml("cache:\n  key_secret: [s3cr3t-value-that-is-long-enough]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.key_secret"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn semantic_problems_name_field_and_fix() {
        let mut c = Config::default();
        c.whoami.base_url = "kratos".into();
        c.whoami.timeout = Duration::ZERO;
        c.upstream
            .identity_headers
            .insert("X-User".into(), "identity/id".into());
        c.jwt.claims.insert("sub".into(), "/identity/id".into());
        let problems = c.problems();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"whoami.base_url"), "{fields:?}");
        assert!(fields.contains(&"whoami.timeout"), "{fields:?}");
        assert!(
            fields.contains(&"upstream.identity_headers.X-User"),
            "{fields:?}"
        );
        assert!(fields.contains(&"jwt.claims.sub"), "{fields:?}");
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
    }

    /// Problem fields of a Redis config (with the shared secret set).
    fn redis_problems(yaml: &str) -> Vec<String> {
        let mut c = Config::from_yaml(yaml).unwrap();
        c.cache.key_secret = Some("k".repeat(40));
        c.problems().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn redis_tls_and_sentinel_are_validated() {
        let none: Vec<String> = vec![];
        assert_eq!(redis_problems("redis: {url: rediss://r:6380/0}"), none);
        assert_eq!(
            redis_problems("redis: {url: 'rediss://r:6380/0', tls: {}}"),
            none
        );
        assert_eq!(
            redis_problems(
                "redis: {sentinels: ['10.0.0.1:26379', 's-1.redis:26379', '[::1]:26379'], master_name: m, password: p, db: 2, tls: {}}"
            ),
            none
        );
        assert_eq!(
            redis_problems("redis: {url: 'redis://r/0', tls: {}}"),
            ["redis.tls"]
        );
        assert_eq!(
            redis_problems("redis: {url: 'rediss://r/0#insecure'}"),
            ["redis.url"]
        );
        assert_eq!(redis_problems("redis: {url: 'http://r/0'}"), ["redis.url"]);
        assert_eq!(
            redis_problems("redis: {url: 'redis://r/0', sentinels: ['s:26379'], master_name: m}"),
            ["redis.sentinels"]
        );
        assert_eq!(
            redis_problems("redis: {sentinels: ['s', 's:0', 'a/b:1', 's:26379']}"),
            [
                "redis.sentinels[0]",
                "redis.sentinels[1]",
                "redis.sentinels[2]",
                "redis.master_name"
            ]
        );
        assert_eq!(
            redis_problems("redis: {url: 'redis://r/0', password: p, master_name: m}"),
            ["redis.master_name", "redis.password"]
        );
        assert_eq!(redis_problems("redis: {tls: {}}"), ["redis.tls"]);
        assert_eq!(
            redis_problems(
                "redis: {url: 'rediss://r/0', tls: {ca_file: /nonexistent/ca.pem, cert_file: /nonexistent/c.pem}}"
            ),
            [
                "redis.tls.ca_file",
                "redis.tls.cert_file",
                "redis.tls.key_file"
            ]
        );
        let mut c = Config::default();
        c.redis.sentinels = vec!["s:26379".into()];
        c.redis.master_name = Some("m".into());
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["cache.key_secret"], "Sentinel turns Redis on");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.yaml", "cache:\n  ttl: 30s\n")?;
            jail.set_env("SESSIONGATE_CACHE__TTL", "45s");
            jail.set_env("SESSIONGATE_WHOAMI__BASE_URL", "http://10.0.0.1:4433");
            jail.set_env("SESSIONGATE_CONFIG", "c.yaml");
            let c = Config::load(Some(Path::new("c.yaml"))).expect("loads");
            assert_eq!(c.cache.ttl, Duration::from_secs(45));
            assert_eq!(c.whoami.base_url, "http://10.0.0.1:4433");
            Ok(())
        });
    }

    #[test]
    fn shipped_example_is_the_defaults() {
        let text = include_str!("../../sessiongate.example.yaml");
        assert_eq!(Config::from_yaml(text).unwrap(), Config::default());
    }

    #[test]
    fn top_level_scalar_is_rejected() {
        assert!(Config::from_yaml("just a string").is_err());
    }
}
