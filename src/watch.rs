//! Watching a configuration file: its content is fingerprinted and polled every `interval`
//! (zero: never), and SIGHUP forces a look. Used by key rotation and route rule reloads.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Calls `on_change(forced)` whenever the file's content changed since the last call (or on
/// SIGHUP, `forced`), until `stop` resolves. A file that cannot be read counts as a content
/// too, so a broken file is reported once, not on every tick.
pub async fn file_changes<F, Fut>(
    path: PathBuf,
    interval: Duration,
    stop: impl Future<Output = ()>,
    mut on_change: F,
) where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = ()>,
{
    let fingerprint = || std::fs::read(&path).ok().map(|b| blake3::hash(&b));
    let mut last = fingerprint();
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
        last = now;
        on_change(forced).await;
    }
}
