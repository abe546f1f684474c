//! The `sessiongate` binary: parse the CLI, load config, start telemetry, run the app.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sessiongate::app::compile_routes;
use sessiongate::app::{App, shutdown_signal};
use sessiongate::config::{Algorithm, Config, ConfigError, LogFormat};
use sessiongate::token::KeySet;
use sessiongate::token::load_keys;

#[cfg(feature = "alloc-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "alloc-jemalloc", not(feature = "alloc-mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Envoy ext_authz server for Ory Kratos sessions.
///
/// sessiongate answers Envoy's `ext_authz` gRPC Check call: it finds the Kratos session
/// credential (cookie, X-Session-Token or Bearer), validates it through a cached
/// /sessions/whoami client (one Kratos call per session per TTL, even under a stampede), and on
/// allow injects `Authorization: Bearer <JWT>` signed with your key, so upstream services verify
/// a token locally instead of calling Kratos. Public keys are served at
/// /.well-known/jwks.json on the HTTP side port.
///
/// Every setting has a default that serves a local Kratos on http://127.0.0.1:4433.
/// Configuration is layered: defaults < --config YAML < SESSIONGATE_<SECTION>__<KEY> env vars
/// (e.g. SESSIONGATE_WHOAMI__BASE_URL) < command-line flags.
#[derive(Debug, Parser)]
#[command(name = "sessiongate", version, propagate_version = true, after_help = EXAMPLES)]
struct Cli {
    /// YAML configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "SESSIONGATE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeArgs,
}

const EXAMPLES: &str = "\
Examples:
  sessiongate                                   serve on defaults (gRPC 127.0.0.1:9191, HTTP 127.0.0.1:9192)
  sessiongate serve --config sessiongate.yaml   serve with a config file
  sessiongate check-config --config sessiongate.yaml
  sessiongate keys generate --alg ES256 --kid 2026-11 > jwks.json
  grpcurl -plaintext 127.0.0.1:9191 grpc.health.v1.Health/Check
  curl http://127.0.0.1:9192/.well-known/jwks.json";

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ext_authz checks (the default).
    Serve(ServeArgs),
    /// Load and validate the configuration and keys; print every problem with the field and fix.
    CheckConfig(ServeArgs),
    /// Signing key tools.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Call a running sessiongate's admin API (needs admin.token on the server).
    Admin(AdminArgs),
    /// Route rule tools.
    #[command(subcommand)]
    Routes(RoutesCommand),
}

#[derive(Debug, Subcommand)]
enum RoutesCommand {
    /// Print the rule a request gets (its name on the first line), then its policy.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// The request URL, e.g. https://app.example.com/admin/users?page=2
        url: String,
    },
}

#[derive(Debug, Args)]
struct AdminArgs {
    /// gRPC address of the sessiongate to call.
    #[arg(long, default_value = "http://127.0.0.1:9191", value_name = "URL")]
    addr: String,
    /// Admin token; defaults to admin.token / admin.token_file of --config.
    #[arg(long, env = "SESSIONGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Drop cached entries so that a revocation takes effect at once (on that replica).
    Invalidate {
        /// Kratos session id (the `sid` claim).
        #[arg(long, group = "what")]
        session: Option<String>,
        /// Kratos identity id (the `sub` claim): all of its sessions.
        #[arg(long, group = "what")]
        identity: Option<String>,
        /// Everything.
        #[arg(long, group = "what")]
        all: bool,
        /// OAuth2 introspection answers of this token subject (`sub`).
        #[arg(long, group = "what", value_name = "SUB")]
        oauth2_subject: Option<String>,
        /// OAuth2 introspection answers of this client (`client_id`).
        #[arg(long, group = "what", value_name = "CLIENT_ID")]
        oauth2_client: Option<String>,
    },
    /// Print cache figures.
    Stats,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a private JWKS (one key) on stdout. Keep it secret; point jwt.jwks_file at it.
    Generate {
        /// Signing algorithm.
        #[arg(long, value_enum, default_value_t = Algorithm::ES256)]
        alg: Algorithm,
        /// Key id; defaults to the key's RFC 7638 thumbprint.
        #[arg(long)]
        kid: Option<String>,
    },
}

/// Flags that override the configuration.
#[derive(Debug, Args, Default, Clone)]
struct ServeArgs {
    /// gRPC listen address (grpc.listen).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP side-port listen address (http.listen).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Kratos public API base URL (whoami.base_url).
    #[arg(long, value_name = "URL")]
    kratos_url: Option<String>,
    /// Log format: json or pretty (log.format).
    #[arg(long, value_name = "FORMAT", value_parser = ["json", "pretty"])]
    log_format: Option<String>,
    /// Log filter, e.g. info or sessiongate=debug (log.level; RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

impl ServeArgs {
    fn apply(&self, c: &mut Config) {
        if let Some(a) = self.grpc_listen {
            c.grpc.listen = a;
        }
        if let Some(a) = self.http_listen {
            c.http.listen = a;
        }
        if let Some(u) = &self.kratos_url {
            c.whoami.base_url = u.clone();
        }
        if let Some(f) = &self.log_format {
            c.log.format = if f == "pretty" {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            };
        }
        if let Some(l) = &self.log_level {
            c.log.level = l.clone();
        }
    }
}

fn load(cli_config: Option<&PathBuf>, args: &ServeArgs) -> Result<Config, String> {
    let mut config = Config::load(cli_config.map(PathBuf::as_path)).map_err(|e| e.to_string())?;
    args.apply(&mut config);
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Keys(KeysCommand::Generate { alg, kid })) => {
            match KeySet::generate(*alg, kid.clone()) {
                Ok((_, private)) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&private).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::CheckConfig(args)) => check_config(cli.config.as_ref(), args),
        Some(Command::Routes(RoutesCommand::Explain { method, url })) => {
            explain(cli.config.as_ref(), method, url)
        }
        Some(Command::Admin(args)) => admin(cli.config.as_ref(), args),
        Some(Command::Serve(args)) => serve(cli.config.as_ref(), args),
        None => serve(cli.config.as_ref(), &cli.serve),
    }
}

fn admin(path: Option<&PathBuf>, args: &AdminArgs) -> ExitCode {
    use sessiongate::admin_pb::admin_client::AdminClient;
    use sessiongate::admin_pb::*;
    let token = match &args.token {
        Some(t) => t.clone(),
        None => match Config::load(path.map(PathBuf::as_path))
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.admin_token().map_err(|e| e.to_string())?.ok_or_else(|| {
                    "no admin token: pass --token or set admin.token in --config".to_string()
                })
            }) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<String, String> = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())
            .map_err(|e| format!("--addr: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token has characters a header cannot carry".to_string())?;
        let mut client = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
        let status = |e: tonic::Status| format!("{:?}: {}", e.code(), e.message());
        match &args.command {
            AdminCommand::Invalidate { session: Some(id), .. } => client
                .invalidate_session(InvalidateSessionRequest { session_id: id.clone() })
                .await
                .map(|r| format!("invalidated {} entries of session {id}", r.into_inner().invalidated))
                .map_err(status),
            AdminCommand::Invalidate { identity: Some(id), .. } => client
                .invalidate_identity(InvalidateIdentityRequest { identity_id: id.clone() })
                .await
                .map(|r| format!("invalidated {} entries of identity {id}", r.into_inner().invalidated))
                .map_err(status),
            AdminCommand::Invalidate { all: true, .. } => client
                .invalidate_all(InvalidateAllRequest {})
                .await
                .map(|r| format!("invalidated {} entries", r.into_inner().invalidated))
                .map_err(status),
            AdminCommand::Invalidate { oauth2_subject: Some(id), .. } => client
                .invalidate_o_auth2(InvalidateOAuth2Request { subject: id.clone(), client_id: String::new() })
                .await
                .map(|r| format!("invalidated {} oauth2 answers of subject {id}", r.into_inner().invalidated))
                .map_err(status),
            AdminCommand::Invalidate { oauth2_client: Some(id), .. } => client
                .invalidate_o_auth2(InvalidateOAuth2Request { subject: String::new(), client_id: id.clone() })
                .await
                .map(|r| format!("invalidated {} oauth2 answers of client {id}", r.into_inner().invalidated))
                .map_err(status),
            AdminCommand::Invalidate { .. } => Err("say what to invalidate: --session ID, --identity ID, --all, --oauth2-subject SUB or --oauth2-client ID".into()),
            AdminCommand::Stats => client
                .cache_stats(CacheStatsRequest {})
                .await
                .map(|r| {
                    let s = r.into_inner();
                    format!(
                        "entries {}\nweighted_bytes {}\nhits {}\nmisses {}\ncoalesced {}\nnegative_hits {}\nwhoami_calls {}",
                        s.entries, s.weighted_bytes, s.hits, s.misses, s.coalesced, s.negative_hits, s.whoami_calls
                    )
                })
                .map_err(status),
        }
    });
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<&PathBuf>, args: &ServeArgs) -> ExitCode {
    let config = match load(path, args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut problems = config.problems();
    match compile_routes(&config.routes) {
        Ok(table) => {
            for (later, earlier) in table.shadowed() {
                println!(
                    "warning: routes.rules {later:?} is never matched: every request it matches is matched by the earlier rule {earlier:?} (fix: move it above, or narrow the earlier one)"
                );
            }
        }
        Err(ConfigError::Invalid(more)) => problems.extend(more),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    if !problems.is_empty() {
        eprintln!("{} problem(s) found", problems.len());
        return ExitCode::FAILURE;
    }
    if config.jwt.jwks_file.is_some() || config.jwt.pem_file.is_some() {
        match load_keys(&config.jwt) {
            Ok(keys) => println!(
                "signing key: kid {} ({})",
                keys.signing.kid, keys.signing.alg
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("warning: jwt.jwks_file is not set; serve would use an ephemeral key");
    }
    println!(
        "config OK: grpc {} http {} kratos {}",
        config.grpc.listen, config.http.listen, config.whoami.base_url
    );
    ExitCode::SUCCESS
}

fn explain(path: Option<&PathBuf>, method: &str, url: &str) -> ExitCode {
    use sessiongate::authz::routes::{Selected, host_of, normalise};
    let config = match load(path, &ServeArgs::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let table = match compile_routes(&config.routes) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("error: {url:?} is not a URL (fix: give e.g. https://app.example.com/admin)");
        return ExitCode::FAILURE;
    };
    let host = host_of(uri.authority().map(|a| a.as_str()).unwrap_or_default());
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path = match normalise(target) {
        Ok(p) => p,
        Err(e) => {
            println!("(none)\ndenied 400: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let method = method.to_ascii_uppercase();
    let selected = table.select(&method, &host, &path);
    let p = selected.policy();
    println!("{}", p.name);
    println!(
        "matched: {}",
        match selected {
            Selected::Rule(_) => "rule",
            Selected::Default(_) => "no rule (routes.default)",
        }
    );
    println!("request: {method} host={host} path={path}");
    let access = if p.deny {
        "deny (403)"
    } else if p.anonymous {
        "anonymous (a valid session still gets a token)"
    } else {
        "session required"
    };
    println!("access: {access}");
    if let Some(aal) = p.aal {
        println!("aal: at least {}", aal.as_str());
    }
    println!(
        "audience: {}",
        p.audience.as_deref().map_or_else(
            || format!("{:?} (jwt.audience)", config.jwt.audience),
            str::to_owned
        )
    );
    for (i, r) in p.require.iter().enumerate() {
        println!("require[{i}]: {r}");
    }
    if let Some(max) = p.max_auth_age {
        println!("max_auth_age: {}", humantime::format_duration(max));
    }
    ExitCode::SUCCESS
}

fn serve(path: Option<&PathBuf>, args: &ServeArgs) -> ExitCode {
    let config = match load(path, args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match sessiongate::telemetry::init(&config.log, &config.tracing) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: telemetry: {e}");
                return ExitCode::FAILURE;
            }
        };
        let app = match App::bind(config).await {
            Ok(a) => a.with_config_file(path.cloned()),
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match app.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
