//! Key rotation without restart: the configured key file is re-read when its content changes
//! (polled every `jwt.reload_interval`) and on SIGHUP. A file that fails to load is logged and
//! counted; the keys in use stay in use.

use std::sync::Arc;

use crate::config::JwtConfig;
use crate::telemetry::{Metrics, ResultLabel};
use crate::token::{Minter, load_keys};

/// Watches the key file until `stop` resolves.
pub async fn watch(
    config: JwtConfig,
    minter: Arc<Minter>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let Some(path) = config.jwks_file.clone().or_else(|| config.pem_file.clone()) else {
        return;
    };
    let fingerprint = || std::fs::read(&path).ok().map(|b| blake3::hash(&b));
    let mut last = fingerprint();
    let interval = config.reload_interval;
    let mut tick = (!interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(stop);
    loop {
        let forced = tokio::select! {
            _ = &mut stop => return,
            _ = async {
                match tick.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => false,
            _ = async {
                #[cfg(unix)]
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
                #[cfg(not(unix))]
                std::future::pending::<()>().await
            } => true,
        };
        let now = fingerprint();
        if !forced && now == last {
            continue;
        }
        match load_keys(&config) {
            Ok(keys) => {
                let kid = keys.signing.kid.clone();
                let published = keys.public.len();
                minter.replace_keys(keys);
                last = now;
                metrics
                    .key_reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                tracing::info!(signing_kid = %kid, published, forced, "signing keys reloaded");
            }
            Err(e) => {
                // Remember the broken content so it is reported once, not every tick.
                last = now;
                metrics
                    .key_reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::error!(error = %e, "key file changed but cannot be loaded; keeping the keys in use");
            }
        }
    }
}
