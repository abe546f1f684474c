//! Typed configuration: defaults that serve a local Kratos, one YAML file, `SESSIONGATE_*`
//! environment overrides, and a `validate()` that names the field and the fix for every problem.
//!
//! Layering (last wins): built-in defaults → YAML file → `SESSIONGATE_<SECTION>__<KEY>` env vars.
//! Unknown fields are rejected everywhere, so a typo is an error rather than a silently ignored knob.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

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
}

/// Optional Redis for many replicas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`. Unset: off (the in-process cache alone).
    pub url: Option<String>,
    /// Prefix of every key sessiongate writes.
    pub key_prefix: String,
    /// Pub/sub channel for invalidations.
    pub channel: String,
    /// Deadline of every Redis call; past it the lookup goes on without Redis.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// While the invalidation subscription is down, in-process entries are trusted this long at
    /// most (so revocations published meanwhile still take effect within this bound).
    #[serde(with = "humantime_serde")]
    pub degraded_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            key_prefix: "sessiongate:".into(),
            channel: "sessiongate:invalidations".into(),
            timeout: Duration::from_millis(50),
            degraded_ttl: Duration::from_secs(5),
        }
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
    /// How long a lookup may wait for a whoami slot before it is shed with 503.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Largest accepted whoami response body, in bytes.
    pub max_body_bytes: usize,
    /// Idle keep-alive connections kept per Kratos host.
    pub pool_max_idle: usize,
}

/// Where the session credential is looked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// Exact session cookie names.
    pub cookie_names: Vec<String>,
    /// Cookie name prefixes (Ory Network: `ory_session_`).
    pub cookie_prefixes: Vec<String>,
    /// Accept the `X-Session-Token` header.
    pub session_token_header: bool,
    /// Accept `Authorization: Bearer <session token>`.
    pub bearer: bool,
    /// Longest accepted credential in bytes; longer is a deny without a whoami call.
    pub max_length: usize,
}

/// The in-process session cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Upper bound of the cache's weight in bytes (sessions plus minted tokens).
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
    pub trusted_proxies: Vec<String>,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        ForwardAuthConfig {
            enabled: true,
            listen: None,
            path: "/check".into(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
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

impl Default for WhoamiConfig {
    fn default() -> Self {
        WhoamiConfig {
            base_url: "http://127.0.0.1:4433".into(),
            timeout: Duration::from_millis(150),
            connect_timeout: Duration::from_millis(100),
            max_concurrency: 256,
            queue_timeout: Duration::from_millis(50),
            max_body_bytes: 1024 * 1024,
            pool_max_idle: 64,
        }
    }
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            cookie_names: vec!["ory_kratos_session".into()],
            cookie_prefixes: vec![],
            session_token_header: true,
            bearer: true,
            max_length: 4096,
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
    /// The admin token, from `admin.token` or `admin.token_file`.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.admin.token {
            return Ok(Some(t.clone()));
        }
        match &self.admin.token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("admin.token_file {}: {e}", path.display()))?;
                Ok(Some(t.trim().to_owned()))
            }
            None => Ok(None),
        }
    }
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

// === loading ===

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML could not be parsed.
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Parser message (it never contains values of secrets, only positions and kinds).
        message: String,
    },
    /// A field has the wrong type, or an unknown field is present.
    #[error("{0}")]
    Shape(String),
    /// Semantic problems found by [`Config::validate`].
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} config problem(s):", self.0.len())?;
        for p in self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// One semantic problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `whoami.base_url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.field, self.message, self.fix)
    }
}

impl Config {
    /// Loads defaults, then the YAML file (when given), then `SESSIONGATE_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed("SESSIONGATE_").split("__"))
    }

    /// Like [`Config::load`] with an explicit environment provider (tests pass their own map).
    pub fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let value = parse_yaml(&text).map_err(|message| ConfigError::Yaml {
                path: path.to_owned(),
                message,
            })?;
            figment = figment.merge(Serialized::defaults(value));
        }
        // `SESSIONGATE_CONFIG` and `SESSIONGATE_LOG` belong to the CLI, not to the config tree.
        figment = figment.merge(env.ignore(&["config"]));
        let config: Config = figment.extract().map_err(|e| {
            ConfigError::Shape(
                e.into_iter()
                    .map(describe_figment_error)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        Ok(config)
    }

    /// Loads from YAML text only (no environment), for tests and `check-config --stdin`.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let value = parse_yaml(text).map_err(|message| ConfigError::Yaml {
            path: PathBuf::from("<inline>"),
            message,
        })?;
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(value))
            .extract()
            .map_err(|e| {
                ConfigError::Shape(
                    e.into_iter()
                        .map(describe_figment_error)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })
    }

    /// Checks what types cannot: URLs, ranges, header names, pointers, files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every semantic problem, in field order.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut add = |field: &str, message: String, fix: &str| {
            p.push(Problem {
                field: field.into(),
                message,
                fix: fix.into(),
            })
        };

        if self.grpc.listen == self.http.listen && self.grpc.listen.port() != 0 {
            add(
                "http.listen",
                format!("same address as grpc.listen ({})", self.grpc.listen),
                "give the gRPC and HTTP listeners different ports",
            );
        }
        if self.grpc.max_request_bytes < 4096 {
            add(
                "grpc.max_request_bytes",
                format!(
                    "{} is too small for a CheckRequest",
                    self.grpc.max_request_bytes
                ),
                "use at least 4096 (default 1048576)",
            );
        }
        if let Some(tls) = &self.grpc.tls {
            for (field, path) in [
                ("grpc.tls.cert_file", Some(&tls.cert_file)),
                ("grpc.tls.key_file", Some(&tls.key_file)),
                ("grpc.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path
                    && !path.is_file()
                {
                    add(
                        field,
                        format!("{} is not a readable file", path.display()),
                        "point it at a PEM file (e.g. a mounted kubernetes.io/tls Secret)",
                    );
                }
            }
            if tls.client_auth_optional && tls.client_ca_file.is_none() {
                add(
                    "grpc.tls.client_auth_optional",
                    "has no effect without grpc.tls.client_ca_file".into(),
                    "set client_ca_file for mTLS, or remove client_auth_optional",
                );
            }
        }
        check_url(&self.whoami.base_url, "whoami.base_url", &mut add);
        if self.whoami.timeout.is_zero() {
            add(
                "whoami.timeout",
                "must be greater than zero".into(),
                "set e.g. 150ms, below Envoy's ext_authz timeout (200ms by default)",
            );
        } else if self.whoami.timeout >= Duration::from_secs(30) {
            add(
                "whoami.timeout",
                format!(
                    "{:?} is longer than any proxy will wait",
                    self.whoami.timeout
                ),
                "set e.g. 150ms, below Envoy's ext_authz timeout",
            );
        }
        if self.whoami.connect_timeout.is_zero() {
            add(
                "whoami.connect_timeout",
                "must be greater than zero".into(),
                "set e.g. 100ms",
            );
        }
        if self.whoami.max_concurrency == 0 {
            add(
                "whoami.max_concurrency",
                "must be at least 1".into(),
                "set e.g. 256",
            );
        }
        if self.whoami.max_body_bytes < 1024 {
            add(
                "whoami.max_body_bytes",
                format!("{} bytes cannot hold a session", self.whoami.max_body_bytes),
                "use at least 1024 (default 1048576)",
            );
        }
        if self.credentials.cookie_names.is_empty()
            && self.credentials.cookie_prefixes.is_empty()
            && !self.credentials.session_token_header
            && !self.credentials.bearer
        {
            add(
                "credentials",
                "every credential source is switched off".into(),
                "enable at least one of cookie_names, cookie_prefixes, session_token_header, bearer",
            );
        }
        for (i, name) in self.credentials.cookie_names.iter().enumerate() {
            if !is_cookie_name(name) {
                add(
                    &format!("credentials.cookie_names[{i}]"),
                    format!("{name:?} is not a valid cookie name"),
                    "use RFC 6265 token characters only, e.g. ory_kratos_session",
                );
            }
        }
        for (i, name) in self.credentials.cookie_prefixes.iter().enumerate() {
            if !is_cookie_name(name) {
                add(
                    &format!("credentials.cookie_prefixes[{i}]"),
                    format!("{name:?} is not a valid cookie name prefix"),
                    "use RFC 6265 token characters only, e.g. ory_session_",
                );
            }
        }
        if self.credentials.max_length < 16 || self.credentials.max_length > 64 * 1024 {
            add(
                "credentials.max_length",
                format!("{} is out of range", self.credentials.max_length),
                "use a value between 16 and 65536 (default 4096)",
            );
        }
        if self.cache.ttl.is_zero() {
            add(
                "cache.ttl",
                "must be greater than zero".into(),
                "set e.g. 60s; lower means faster revocation and more whoami calls",
            );
        }
        if self.cache.negative_ttl > self.cache.ttl {
            add(
                "cache.negative_ttl",
                "is longer than cache.ttl".into(),
                "keep it short (default 5s) so that a user who just logged in is not denied",
            );
        }
        if self.cache.refresh_after > self.cache.ttl {
            add(
                "cache.refresh_after",
                "is longer than cache.ttl, so entries are never refreshed ahead".into(),
                "set it below cache.ttl (e.g. 75% of it), or equal to turn refresh-ahead off",
            );
        }
        if self.cache.stale_if_error > Duration::from_secs(3600) {
            add(
                "cache.stale_if_error",
                format!(
                    "{:?} would keep serving sessions an hour after Kratos stopped answering",
                    self.cache.stale_if_error
                ),
                "keep it short (e.g. 30s) or 0s to turn it off",
            );
        }
        if self.cache.max_bytes < 64 * 1024 {
            add(
                "cache.max_bytes",
                format!("{} bytes holds almost nothing", self.cache.max_bytes),
                "use at least 65536; about 1.5 KiB per cached session (default 268435456)",
            );
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                add(
                    "redis.url",
                    "is not a redis:// URL".into(),
                    "use redis://host:6379/0 (TLS and Cluster are not supported by this build)",
                );
            }
            if self.cache.key_secret.is_none() {
                add(
                    "cache.key_secret",
                    "must be set when redis.url is set".into(),
                    "give every replica the same random secret (32+ characters) so they compute the same keys",
                );
            }
            if self.redis.timeout.is_zero() || self.redis.timeout > Duration::from_secs(1) {
                add(
                    "redis.timeout",
                    format!("{:?} is out of range", self.redis.timeout),
                    "use between 1ms and 1s (default 50ms): Redis must never slow a check down much",
                );
            }
            if self.redis.degraded_ttl.is_zero() || self.redis.degraded_ttl > self.cache.ttl {
                add(
                    "redis.degraded_ttl",
                    "must be greater than zero and at most cache.ttl".into(),
                    "use a few seconds (default 5s)",
                );
            }
        }
        for (i, cidr) in self.forward_auth.trusted_proxies.iter().enumerate() {
            if let Err(e) = cidr.parse::<crate::http::forward::Cidr>() {
                add(
                    &format!("forward_auth.trusted_proxies[{i}]"),
                    e,
                    "use an IP address or CIDR such as 10.0.0.0/8 or ::1/128",
                );
            }
        }
        if !self.forward_auth.path.starts_with('/')
            || self.forward_auth.path.len() < 2
            || self.forward_auth.path.ends_with('/')
        {
            add(
                "forward_auth.path",
                format!("{:?} is not a path like /check", self.forward_auth.path),
                "use an absolute path without a trailing slash, e.g. /check",
            );
        }
        if let Some(l) = self.forward_auth.listen
            && (l == self.grpc.listen || l == self.http.listen)
            && l.port() != 0
        {
            add(
                "forward_auth.listen",
                format!("{l} is already used by another listener"),
                "pick another port, or leave it unset to serve /check on the HTTP side port",
            );
        }
        for (i, pat) in self.logout.patterns.iter().enumerate() {
            if !pat.path.starts_with('/') {
                add(
                    &format!("logout.patterns[{i}].path"),
                    format!("{:?} is not an absolute path", pat.path),
                    "start it with /, e.g. /self-service/logout",
                );
            }
            if pat.method.is_empty()
                || !pat
                    .method
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'*')
            {
                add(
                    &format!("logout.patterns[{i}].method"),
                    format!("{:?} is not an upper-case HTTP method", pat.method),
                    "use GET, DELETE, POST … or *",
                );
            }
        }
        if let Some(t) = &self.admin.token
            && t.len() < 16
        {
            add(
                "admin.token",
                "is shorter than 16 characters".into(),
                "use a random token of at least 32 characters, e.g. `openssl rand -hex 32`",
            );
        }
        if self.admin.token.is_some() && self.admin.token_file.is_some() {
            add(
                "admin.token_file",
                "both admin.token and admin.token_file are set".into(),
                "set only one of them",
            );
        }
        if let Some(path) = &self.admin.token_file
            && !path.is_file()
        {
            add(
                "admin.token_file",
                format!("{} is not a readable file", path.display()),
                "point it at a file holding the admin token",
            );
        }
        if let Some(secret) = &self.cache.key_secret
            && secret.len() < 32
        {
            add(
                "cache.key_secret",
                "is shorter than 32 bytes".into(),
                "use a random secret of at least 32 characters, e.g. `openssl rand -base64 48`",
            );
        }
        if self.jwt.issuer.is_empty() {
            add(
                "jwt.issuer",
                "must not be empty".into(),
                "set the URL upstream services expect in `iss`",
            );
        }
        if self.jwt.ttl < Duration::from_secs(10) || self.jwt.ttl > Duration::from_secs(24 * 3600) {
            add(
                "jwt.ttl",
                format!("{:?} is out of range", self.jwt.ttl),
                "use between 10s and 24h (default 5m)",
            );
        }
        if self.jwt.jwks_file.is_some() && self.jwt.pem_file.is_some() {
            add(
                "jwt.pem_file",
                "both jwt.jwks_file and jwt.pem_file are set".into(),
                "set only one of them",
            );
        }
        for (field, path) in [
            ("jwt.jwks_file", &self.jwt.jwks_file),
            ("jwt.pem_file", &self.jwt.pem_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                add(
                    field,
                    format!("{} is not a readable file", path.display()),
                    "point it at a private key file; `sessiongate keys generate` makes one",
                );
            }
        }
        const RESERVED: [&str; 8] = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid"];
        for (claim, pointer) in &self.jwt.claims {
            let field = format!("jwt.claims.{claim}");
            if RESERVED.contains(&claim.as_str())
                || (claim == "session" && self.jwt.include_session)
            {
                add(
                    &field,
                    format!("{claim:?} is a registered claim set by sessiongate"),
                    "pick another claim name",
                );
            }
            check_pointer(pointer, &field, &mut add);
        }
        if !is_header_name(&self.upstream.token_header) {
            add(
                "upstream.token_header",
                format!(
                    "{:?} is not a lower-case header name",
                    self.upstream.token_header
                ),
                "use a lower-case HTTP header name such as authorization",
            );
        }
        for (header, pointer) in &self.upstream.identity_headers {
            let field = format!("upstream.identity_headers.{header}");
            if !is_header_name(header) {
                add(
                    &field,
                    format!("{header:?} is not a lower-case header name"),
                    "use a lower-case HTTP header name such as x-user-id",
                );
            }
            check_pointer(pointer, &field, &mut add);
        }
        for (i, header) in self.upstream.remove_headers.iter().enumerate() {
            if !is_header_name(header) {
                add(
                    &format!("upstream.remove_headers[{i}]"),
                    format!("{header:?} is not a lower-case header name"),
                    "use lower-case HTTP header names",
                );
            }
        }
        if let Some(url) = &self.deny.login_url {
            check_url(url, "deny.login_url", &mut add);
        }
        if let Some(url) = &self.deny.kratos_browser_url {
            check_url(url, "deny.kratos_browser_url", &mut add);
        }
        if self.deny.return_to_param.is_empty() {
            add(
                "deny.return_to_param",
                "must not be empty".into(),
                "use return_to (what Kratos expects)",
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            add(
                "log.level",
                format!("{:?} is not a valid filter", self.log.level),
                "use a level such as info, or directives like sessiongate=debug,info",
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            add(
                "tracing.sample_ratio",
                format!("{} is not between 0 and 1", self.tracing.sample_ratio),
                "use a fraction such as 0.1",
            );
        }
        if self.tracing.enabled {
            check_url(
                &self.tracing.otlp_endpoint,
                "tracing.otlp_endpoint",
                &mut add,
            );
        }
        if self.shutdown.drain_timeout.is_zero() {
            add(
                "shutdown.drain_timeout",
                "must be greater than zero".into(),
                "set e.g. 15s and keep Kubernetes' terminationGracePeriodSeconds longer",
            );
        }
        p
    }

    /// The Kratos URL browsers are sent to for step-up.
    pub fn kratos_browser_url(&self) -> &str {
        self.deny
            .kratos_browser_url
            .as_deref()
            .unwrap_or(&self.whoami.base_url)
    }
}

fn parse_yaml(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    // The parser's own message quotes the offending input lines, which may hold secrets
    // (admin.token, cache.key_secret): report the position only.
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("syntax error at line {}, column {}", l.line(), l.column()),
            None => "syntax error".to_string(),
        })?;
    match value {
        serde_json::Value::Object(mut map) => {
            // A section left with only comments (`admin:`) means "defaults", not "null".
            for v in map.values_mut() {
                if v.is_null() {
                    *v = serde_json::Value::Object(Default::default());
                }
            }
            Ok(serde_json::Value::Object(map))
        }
        serde_json::Value::Null => Ok(serde_json::Value::Object(Default::default())),
        _ => Err("the top level must be a mapping (grpc:, whoami:, …)".into()),
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    let path = e.path.join(".");
    let fix = match &e.kind {
        figment::error::Kind::UnknownField(_, expected) => {
            format!(" (fix: remove it or use one of: {})", expected.join(", "))
        }
        figment::error::Kind::InvalidType(_, expected)
        | figment::error::Kind::InvalidValue(_, expected) => {
            format!(" (fix: use {expected})")
        }
        _ => String::new(),
    };
    let source = match e.metadata.as_ref().map(|m| m.name.to_string()) {
        Some(name) if name.contains("environment") => {
            " [from SESSIONGATE_* environment variables]".to_string()
        }
        Some(name) if name.contains("Config") => " [built-in default]".to_string(),
        Some(_) => " [from the config file]".to_string(),
        None => String::new(),
    };
    let kind = match &e.kind {
        figment::error::Kind::UnknownField(name, _) => format!("unknown field `{name}`"),
        // Never echo the offending value: it may be a secret.
        figment::error::Kind::InvalidType(actual, _) => {
            format!("wrong type ({})", actual_kind(actual))
        }
        figment::error::Kind::InvalidValue(_, _) => "invalid value".to_string(),
        other => other.to_string(),
    };
    if path.is_empty() {
        format!("{kind}{fix}{source}")
    } else {
        format!("{path}: {kind}{fix}{source}")
    }
}

/// The kind of a value, without the value (which may be a secret).
fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual as A;
    match actual {
        A::Bool(_) => "a boolean",
        A::Unsigned(_) | A::Signed(_) => "an integer",
        A::Float(_) => "a number",
        A::Char(_) | A::Str(_) => "a string",
        A::Bytes(_) => "bytes",
        A::Unit | A::Option => "nothing",
        A::Seq => "a list",
        A::Map | A::StructVariant | A::NewtypeStruct => "a mapping",
        A::Enum | A::UnitVariant | A::NewtypeVariant | A::TupleVariant => "an enum",
        A::Other(_) => "another value",
    }
}

fn check_url(url: &str, field: &str, add: &mut impl FnMut(&str, String, &str)) {
    match url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some() => {}
        _ => add(
            field,
            format!("{url:?} is not an absolute http(s) URL"),
            "use a URL like http://127.0.0.1:4433",
        ),
    }
}

fn check_pointer(pointer: &str, field: &str, add: &mut impl FnMut(&str, String, &str)) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        add(
            field,
            format!("{pointer:?} is not a JSON pointer"),
            "use a JSON pointer into the whoami session, e.g. /identity/traits/email",
        );
    }
}

/// RFC 6265 cookie-name = token.
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name != "host"
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = include_str!("../sessiongate.example.yaml");
        assert_eq!(Config::from_yaml(text).unwrap(), Config::default());
    }

    #[test]
    fn top_level_scalar_is_rejected() {
        assert!(Config::from_yaml("just a string").is_err());
    }
}
