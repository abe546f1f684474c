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
    crate::watch::file_changes(path, config.reload_interval, stop, |forced| {
        let (config, minter, metrics) = (&config, &minter, &metrics);
        async move {
            match load_keys(config) {
                Ok(keys) => {
                    let kid = keys.signing.kid.clone();
                    let published = keys.public.len();
                    minter.replace_keys(keys);
                    metrics
                        .key_reloads
                        .get_or_create(&ResultLabel { result: "ok" })
                        .inc();
                    tracing::info!(signing_kid = %kid, published, forced, "signing keys reloaded");
                }
                Err(e) => {
                    metrics
                        .key_reloads
                        .get_or_create(&ResultLabel { result: "error" })
                        .inc();
                    tracing::error!(error = %e, "key file changed but cannot be loaded; keeping the keys in use");
                }
            }
        }
    })
    .await;
}
