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
    let interval = running.routes.reload_interval;
    crate::watch::file_changes(path.clone(), interval, stop, |forced| {
        let (path, running, authorizer, metrics) = (&path, &running, &authorizer, &metrics);
        async move {
            let count = |result: &'static str| {
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result })
                    .inc();
            };
            let loaded = Config::load(Some(path))
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
                    if others != *running {
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
    })
    .await;
}
