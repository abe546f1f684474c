//! Route rules without restart: the config file is re-read when its content changes (polled
//! every `routes.reload_interval`) and on SIGHUP; the new rule table is compiled and swapped in
//! whole. A file that does not load or whose rules do not compile is logged and counted
//! (`sessiongate_config_reloads_total{result="error"}`); the rules in use stay in use. Other
//! sections need a restart (a reload that changes them says so).

use std::path::PathBuf;
use std::sync::Arc;

use crate::authz::Authorizer;
use crate::config::Config;
use crate::telemetry::{Metrics, ResultLabel};

/// Watches `path` until `stop` resolves.
pub async fn watch_routes(
    path: PathBuf,
    running: Config,
    authorizer: Arc<Authorizer>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let fingerprint = || std::fs::read(&path).ok().map(|b| blake3::hash(&b));
    let mut last = fingerprint();
    let interval = running.routes.reload_interval;
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
        // Remember this content either way: a broken file is reported once, not every tick.
        last = now;
        let count = |result: &'static str| {
            metrics
                .config_reloads
                .get_or_create(&ResultLabel { result })
                .inc();
        };
        let loaded = Config::load(Some(&path))
            .map_err(|e| e.to_string())
            .and_then(|c| {
                super::compile_routes(&c.routes)
                    .map(|table| (c, table))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok((new, table)) => {
                let rules = table.len();
                authorizer.replace_routes(table).await;
                count("ok");
                let mut others = new.clone();
                others.routes = running.routes.clone();
                if others != running {
                    tracing::warn!(
                        "config file changed outside routes:; those changes apply after a restart"
                    );
                }
                tracing::info!(rules, forced, "route rules reloaded");
            }
            Err(e) => {
                count("error");
                tracing::error!(error = %e, "config file changed but its rules cannot be used; keeping the rules in use");
            }
        }
    }
}
