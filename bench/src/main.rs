//! sessiongate-bench: the load generator and helper servers behind `scripts/bench.sh`.
//!
//! Subcommands:
//! - `load`: N concurrent in-flight requests over M connections against an ext_authz gRPC server
//!   (`--grpc`) or an HTTP decision endpoint (`--http`, e.g. Oathkeeper's `/decisions` or
//!   sessiongate's `/check`); closed-loop or fixed-rate (open-loop, latency measured from the
//!   intended send time, i.e. corrected for coordinated omission); credentials drawn from
//!   `same`, `uniform`, `zipf`, `seq` or `random` distributions; optional scrape of sessiongate's
//!   `/metrics` and of a whoami counter (`fake-kratos` / `count-proxy`) before and after.
//! - `floor-server`: a no-op ext_authz server on the same tonic stack (always OK, one header).
//! - `fake-kratos`: a whoami upstream that accepts any cookie/token with a given prefix.
//! - `count-proxy`: a counting reverse proxy in front of a real Kratos.
//! - `kratos-sessions`: registers identities on a real Kratos and prints their session cookies.
//!
//! Everything listens on loopback addresses given on the command line. Loops are bounded by
//! count and time. This file is the command line; each tool lives in its own module.
#![forbid(unsafe_code)]

mod count_proxy;
mod fake_kratos;
mod floor;
mod kratos_sessions;
mod load;
mod scrape;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use fake_kratos::FakeKratosArgs;
use load::LoadArgs;

#[derive(Debug, Parser)]
#[command(
    name = "sessiongate-bench",
    version,
    about = "Load generator and helper servers for sessiongate benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive an ext_authz gRPC server or an HTTP decision endpoint and report latency/throughput.
    Load(Box<LoadArgs>),
    /// A no-op ext_authz server: always OK with one injected header.
    FloorServer {
        #[arg(long, default_value = "127.0.0.1:19191")]
        listen: SocketAddr,
        /// Accept connections through `TcpListenerStream` as sessiongate's app.rs does, where
        /// tonic ignores `tcp_nodelay` (Nagle stays on). Default: `TcpIncoming` with TCP_NODELAY.
        #[arg(long)]
        like_app_rs: bool,
    },
    /// A fake Kratos whoami upstream: 200 + session JSON for credentials starting with --prefix, 401 otherwise.
    FakeKratos(FakeKratosArgs),
    /// A counting reverse proxy (put it between a gate and a real Kratos).
    CountProxy {
        #[arg(long, default_value = "127.0.0.1:14400")]
        listen: SocketAddr,
        /// Upstream base URL, e.g. http://127.0.0.1:4433
        #[arg(long)]
        upstream: String,
    },
    /// Register identities on a real Kratos (API registration + browser login) and print one
    /// `ory_kratos_session` cookie value per line.
    KratosSessions {
        /// Kratos public URL.
        #[arg(long, default_value = "http://127.0.0.1:4433")]
        public: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Output file (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Load(args) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(t) = args.threads {
                rt.worker_threads(t.max(1));
            }
            let rt = rt.enable_all().build()?;
            rt.block_on(load::load(*args))
        }
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match other {
                    Command::FloorServer {
                        listen,
                        like_app_rs,
                    } => floor::floor_server(listen, like_app_rs).await,
                    Command::FakeKratos(a) => fake_kratos::fake_kratos(a).await,
                    Command::CountProxy { listen, upstream } => {
                        count_proxy::count_proxy(listen, upstream).await
                    }
                    Command::KratosSessions {
                        public,
                        count,
                        out,
                        parallel,
                    } => kratos_sessions::kratos_sessions(public, count, out, parallel).await,
                    Command::Load(_) => unreachable!(),
                }
            })
        }
    }
}
