//! Wiring: builds the parts from a [`Config`], binds the gRPC and HTTP listeners, reports
//! readiness, and shuts down gracefully (readiness false → optional delay → stop accepting →
//! in-flight checks finish, bounded by `shutdown.drain_timeout`).

mod introspection_tier;
mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, AdminToken};
use crate::authz::Authorizer;
use crate::authz::routes::RouteTable;
use crate::config::Config;
use crate::grpc::ExtAuthz;
use crate::http::{HttpState, Readiness};
use crate::session::Projection;
use crate::session::cache::SessionCache;
use crate::session::tier::SharedTier;
use crate::session::whoami::WhoamiClient;
use crate::telemetry::Metrics;
use crate::token::Minter;

/// Handles to the running parts, for tests and the admin surface.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The decision engine.
    pub authorizer: Arc<Authorizer>,
    /// The session cache (invalidation, stats).
    pub cache: Arc<SessionCache>,
    /// The minter (JWKS, key rotation).
    pub minter: Arc<Minter>,
    /// The OAuth2 introspection cache, when configured (invalidation by subject or client).
    pub introspection: Option<Arc<crate::oauth2::IntrospectionCache>>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness latch.
    pub readiness: Readiness,
}

/// A bound, not yet running, sessiongate.
pub struct App {
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    forward_listener: Option<TcpListener>,
    /// Cancels background tasks (Redis connection and subscriber) when the app stops.
    background: CancellationToken,
    /// The admin token and operations, when an admin token is configured.
    admin: Option<(AdminToken, Admin)>,
    /// The config file the rules are reloaded from.
    config_file: Option<std::path::PathBuf>,
    handles: Handles,
    /// Runs upstream calls apart from the serving runtime (`whoami.worker_threads`).
    upstream: UpstreamRuntime,
}

/// The runtime for upstream calls; shut down (without blocking) when the app goes.
struct UpstreamRuntime(Option<tokio::runtime::Runtime>);

impl UpstreamRuntime {
    fn new(threads: usize) -> anyhow::Result<UpstreamRuntime> {
        if threads == 0 {
            return Ok(UpstreamRuntime(None));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sessiongate-upstream")
            .enable_all()
            .build()?;
        Ok(UpstreamRuntime(Some(rt)))
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for UpstreamRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc", &self.grpc_listener.local_addr().ok())
            .field("http", &self.http_listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// The JWT issuers and the introspection cache from `jwt_issuers:` / `oauth2_introspection:`;
/// with Redis, introspection answers are shared through it.
fn token_sources(
    config: &Config,
    metrics: &Arc<crate::oauth2::Oauth2Metrics>,
    redis: Option<&Arc<crate::session::redis::RedisTier>>,
) -> anyhow::Result<crate::authz::TokenSources> {
    let key_secret = config.cache.key_secret.as_deref();
    let jwks = crate::oauth2::JwksClient::new(metrics.clone(), config.whoami.connect_timeout);
    let mut issuers = std::collections::HashMap::new();
    for (i, c) in config.jwt_issuers.iter().enumerate() {
        let issuer = crate::oauth2::JwtIssuer::new(c.clone(), jwks.clone(), key_secret)
            .map_err(|e| anyhow::anyhow!("jwt_issuers[{i}]: {e}"))?;
        issuers.insert(c.issuer.clone(), Arc::new(issuer));
    }
    let introspection = match &config.oauth2_introspection {
        Some(c) => Some(Arc::new(
            crate::oauth2::IntrospectionCache::from_config_shared(
                c,
                metrics.clone(),
                key_secret,
                redis.map(|r| {
                    let tier = introspection_tier::RedisIntrospectionTier(r.clone());
                    (
                        Arc::new(tier) as Arc<dyn crate::oauth2::IntrospectionTier>,
                        config.redis.degraded_ttl,
                    )
                }),
            )
            .map_err(|e| anyhow::anyhow!("oauth2_introspection: {e}"))?,
        )),
        None => None,
    };
    Ok(crate::authz::TokenSources {
        issuers,
        introspection,
        identity_headers: config
            .upstream
            .token_identity_headers
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
            .collect(),
    })
}

/// Compiles `routes:`; every problem names its field and the fix, like `Config::validate`.
pub fn compile_routes(
    routes: &crate::config::RoutesConfig,
) -> Result<RouteTable, crate::config::ConfigError> {
    RouteTable::compile(routes).map_err(|errors| {
        crate::config::ConfigError::Invalid(
            errors
                .into_iter()
                .map(|e| crate::config::Problem {
                    field: e.field,
                    message: e.message,
                    fix: e.fix,
                })
                .collect(),
        )
    })
}

impl App {
    /// Validates the configuration, builds every part and binds both listeners.
    pub async fn bind(config: Config) -> anyhow::Result<App> {
        config.validate()?;
        let oauth2_metrics = Arc::new(crate::oauth2::Oauth2Metrics::default());
        let metrics = Metrics::with_extra(|r| oauth2_metrics.register(r));
        // A lookup lasts at most the wait for a slot plus the deadline (whoami or introspection):
        // an invalidation's tombstone in Redis outlives any write of an answer fetched before it.
        let session_fetch = config.whoami.timeout + config.whoami.queue_timeout;
        let max_fetch = session_fetch.max(
            config
                .oauth2_introspection
                .as_ref()
                .map_or(Duration::ZERO, |c| c.timeout + c.queue_timeout),
        );
        let shared = if config.redis.enabled() {
            Some(crate::session::redis::RedisTier::new(
                &config.redis,
                // validate() requires the shared secret whenever Redis is on.
                config.cache.key_secret.as_deref().unwrap_or_default(),
                metrics.clone(),
                max_fetch,
            )?)
        } else {
            None
        };
        let tokens = token_sources(&config, &oauth2_metrics, shared.as_ref())?;
        let introspection = tokens.introspection.clone();
        let keys = crate::token::load_keys(&config.jwt)?;
        let minter = Arc::new(Minter::new(
            &config.jwt,
            keys,
            config.cache.max_bytes / 4,
            metrics.clone(),
        ));
        let routes = compile_routes(&config.routes)?;
        let facts = Arc::new(arc_swap::ArcSwap::from_pointee(routes.pointers().to_vec()));
        let projection = Projection {
            claims: config
                .jwt
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            include_session: config.jwt.include_session,
            identity_headers: config
                .upstream
                .identity_headers
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
                .collect(),
            facts: facts.clone(),
        };
        let whoami = WhoamiClient::new(
            &config.whoami,
            projection,
            metrics.clone(),
            config.tracing.enabled,
        )?;
        let mut cache = SessionCache::with_shared(
            &config.cache,
            Arc::new(whoami),
            metrics.clone(),
            session_fetch,
            shared
                .clone()
                .map(|s| (s as Arc<dyn SharedTier>, config.redis.degraded_ttl)),
        );
        let upstream = UpstreamRuntime::new(config.whoami.worker_threads)?;
        if let Some(handle) = upstream.handle() {
            cache = cache.with_executor(handle);
        }
        let cache = Arc::new(cache);
        let background = CancellationToken::new();
        if let Some(shared) = &shared {
            let remote_cache = cache.clone();
            let on_notice = introspection.clone().map(|answers| {
                Arc::new(move |notice| introspection_tier::apply(&answers, notice))
                    as crate::session::redis::NoticeHandler
            });
            shared.start_with(
                Arc::new(move |inv| {
                    let cache = remote_cache.clone();
                    tokio::spawn(async move { cache.apply_remote(inv).await });
                }),
                on_notice,
                background.clone(),
            );
        }
        let authorizer = Arc::new(Authorizer::new(
            &config,
            routes,
            facts,
            tokens,
            cache.clone(),
            minter.clone(),
            metrics.clone(),
        ));
        let admin = config.admin_token()?.map(|t| {
            (
                AdminToken::new(&t),
                Admin::new(cache.clone(), introspection.clone()),
            )
        });

        let grpc_listener = TcpListener::bind(config.grpc.listen)
            .await
            .map_err(|e| anyhow::anyhow!("grpc.listen {}: {e}", config.grpc.listen))?;
        let http_listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|e| anyhow::anyhow!("http.listen {}: {e}", config.http.listen))?;
        let forward_listener = match (config.forward_auth.enabled, config.forward_auth.listen) {
            (true, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("forward_auth.listen {addr}: {e}"))?,
            ),
            _ => None,
        };
        Ok(App {
            config,
            grpc_listener,
            http_listener,
            forward_listener,
            background,
            admin,
            config_file: None,
            upstream,
            handles: Handles {
                authorizer,
                cache,
                minter,
                introspection,
                metrics,
                readiness: Readiness::default(),
            },
        })
    }

    /// Reloads the route rules from this file when it changes and on SIGHUP.
    pub fn with_config_file(mut self, path: Option<std::path::PathBuf>) -> App {
        self.config_file = path;
        self
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().expect("bound")
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener.local_addr().expect("bound")
    }

    /// The bound forward-auth address, when it has its own listener.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Handles to the parts.
    pub fn handles(&self) -> Handles {
        self.handles.clone()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            config,
            grpc_listener,
            http_listener,
            forward_listener,
            background,
            admin,
            config_file,
            handles,
            // Kept until the app stops: in-flight upstream calls finish or are abandoned then.
            upstream: _upstream,
        } = self;
        let _stop_background = background.drop_guard();
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let stop_accepting = CancellationToken::new();

        let (health, health_service) = tonic_health::server::health_reporter();
        report_serving(&health, &handles.readiness, false).await;

        // Reflection describes what is served: the admin service only when it is on.
        let admin_on = admin.is_some();
        let reflection = || {
            let b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            if admin_on {
                b.register_encoded_file_descriptor_set(crate::ADMIN_DESCRIPTOR_SET)
            } else {
                b
            }
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let ext_authz = ExtAuthz::new(
            handles.authorizer.clone(),
            config.deny.unavailable_as_rpc_error,
            config.tracing.enabled,
        );
        let mtls = config
            .grpc
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        let admin_service = admin.clone().map(|(token, ops)| {
            crate::admin_pb::admin_server::AdminServer::with_interceptor(
                crate::grpc::admin::AdminService::new(ops, handles.metrics.clone()),
                crate::grpc::admin::interceptor(token.require_client_cert(mtls)),
            )
        });
        let grpc_stop = stop_accepting.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.grpc.tls {
            builder = builder.tls_config(server_tls(tls)?)?;
        }
        let grpc = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(
                AuthorizationServer::new(ext_authz)
                    .max_decoding_message_size(config.grpc.max_request_bytes),
            )
            .add_service(health_service)
            .add_optional_service(admin_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                // The builder's tcp_nodelay only applies to sockets tonic accepts itself: set it
                // here, or small responses wait ~40 ms for delayed ACKs (Nagle).
                tonic::transport::server::TcpIncoming::from(grpc_listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(std::time::Duration::from_secs(60))),
                async move { grpc_stop.cancelled().await },
            );

        let http_state = HttpState {
            minter: handles.minter.clone(),
            metrics: handles.metrics.clone(),
            cache: handles.cache.clone(),
            readiness: handles.readiness.clone(),
            jwks_max_age: config.http.jwks_max_age,
            admin,
            forward: None,
        };
        let forward = config
            .forward_auth
            .enabled
            .then(|| crate::http::forward::ForwardAuth {
                authorizer: handles.authorizer.clone(),
                trusted: config.forward_auth.trusted_proxies.clone().into(),
                prefix: config.forward_auth.path.as_str().into(),
                trace_spans: config.tracing.enabled,
                answer_untrusted_peers: config.forward_auth.answer_untrusted_peers,
            });
        let (http_state, forward_task) = match (forward, forward_listener) {
            (Some(fa), Some(listener)) => {
                let stop = stop_accepting.clone();
                let server = axum::serve(
                    listener.tap_io(nodelay),
                    crate::http::forward_router(fa)
                        .into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move { stop.cancelled().await });
                (http_state, Some(tokio::spawn(async move { server.await })))
            }
            (fa, _) => (
                HttpState {
                    forward: fa,
                    ..http_state
                },
                None,
            ),
        };
        let http_stop = stop_accepting.clone();
        let http = axum::serve(
            http_listener.tap_io(nodelay),
            crate::http::router(http_state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_stop.cancelled().await });

        let reload_stop = stop_accepting.clone();
        tokio::spawn(crate::token::reload::watch(
            config.jwt.clone(),
            handles.minter.clone(),
            handles.metrics.clone(),
            async move { reload_stop.cancelled().await },
        ));
        if let Some(path) = config_file {
            let stop = stop_accepting.clone();
            tokio::spawn(reload::watch_routes(
                path,
                config.clone(),
                handles.authorizer.clone(),
                handles.metrics.clone(),
                async move { stop.cancelled().await },
            ));
        }
        let grpc_task = tokio::spawn(grpc);
        let http_task = tokio::spawn(async move { http.await });

        report_serving(&health, &handles.readiness, true).await;
        tracing::info!(%grpc_addr, %http_addr, kid = %handles.minter.signing_kid(), "sessiongate ready");

        shutdown.await;
        tracing::info!("shutdown requested: reporting not ready, then draining");
        report_serving(&health, &handles.readiness, false).await;
        if !config.shutdown.readiness_delay.is_zero() {
            tokio::time::sleep(config.shutdown.readiness_delay).await;
        }
        stop_accepting.cancel();
        let drained = tokio::time::timeout(config.shutdown.drain_timeout, async {
            let g = grpc_task.await;
            let h = http_task.await;
            if let Some(f) = forward_task {
                let _ = f.await;
            }
            (g, h)
        })
        .await;
        match drained {
            Ok((Ok(Ok(())), Ok(Ok(())))) => {
                tracing::info!("drained; bye");
                Ok(())
            }
            Ok((g, h)) => {
                anyhow::bail!("listener failed: grpc {g:?}, http {h:?}")
            }
            Err(_) => {
                tracing::warn!(timeout = ?config.shutdown.drain_timeout, "drain timeout: exiting with checks still in flight");
                Ok(())
            }
        }
    }
}

/// Readiness on both surfaces at once: `/health/ready` and `grpc.health.v1` (overall and for
/// the ext_authz service).
async fn report_serving(
    health: &tonic_health::server::HealthReporter,
    readiness: &Readiness,
    serving: bool,
) {
    readiness.set(serving);
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health
        .set_service_status(
            <AuthorizationServer<ExtAuthz> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// TLS settings of the gRPC listener.
fn server_tls(
    tls: &crate::config::GrpcTlsConfig,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{field} {}: {e}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read("grpc.tls.cert_file", &tls.cert_file)?,
        read("grpc.tls.key_file", &tls.key_file)?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                "grpc.tls.client_ca_file",
                ca,
            )?))
            .client_auth_optional(tls.client_auth_optional);
    }
    Ok(config)
}

/// Small responses must not wait for delayed ACKs (Nagle): set TCP_NODELAY on accepted sockets.
fn nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
