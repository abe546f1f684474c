//! The `fake-kratos` tool: the shared fake Kratos (`sessiongate_testkit::fake_kratos`) as a
//! process: Kratos-shaped sessions for credentials with a given prefix, 401 otherwise, an optional
//! added latency, and call counters on `/__stats`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use sessiongate_testkit::fake_kratos::{Behaviour, FakeKratos};

#[derive(Debug, Args)]
pub struct FakeKratosArgs {
    #[arg(long, default_value = "127.0.0.1:14433")]
    listen: SocketAddr,
    /// Credentials (cookie value or session token) starting with this are valid sessions.
    #[arg(long, default_value = "valid-")]
    prefix: String,
    /// Added latency per whoami call.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Sessions expire this long after the call.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    expires_in: Duration,
}

/// Serves until the process is stopped.
pub async fn fake_kratos(a: FakeKratosArgs) -> Result<()> {
    let slow = |b: Behaviour| {
        if a.latency.is_zero() {
            b
        } else {
            Behaviour::Slow(a.latency, Box::new(b))
        }
    };
    // No request log: a bench sends millions.
    let fake = FakeKratos::bind(a.listen, false).await?;
    fake.set_prefix(
        &a.prefix,
        slow(Behaviour::Derived {
            expires_in: a.expires_in,
        }),
    );
    fake.set_fallback(Some(slow(Behaviour::Unauthorized)));
    eprintln!("fake-kratos listening on {}", fake.addr);
    std::future::pending::<()>().await;
    Ok(())
}
