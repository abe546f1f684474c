//! Counters of whoami calls an upstream double answered (total, 200s, 401s, in flight and the
//! most in flight at once), and the `/__stats` routes that expose them as JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Whoami calls seen by a fake Kratos or a counting proxy.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    calls: AtomicU64,
    ok: AtomicU64,
    unauthorized: AtomicU64,
    in_flight: AtomicI64,
    max_in_flight: AtomicI64,
}

/// Counts a call as in flight until dropped (also when the client gives up).
pub struct InFlight(Arc<UpstreamStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl UpstreamStats {
    /// Counts one call and keeps it in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Counts the answer's status (200 and 401 are counted; others only as calls).
    pub fn answered(&self, status: u16) {
        match status {
            200 => self.ok.fetch_add(1, Ordering::Relaxed),
            401 => self.unauthorized.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Calls received so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls being answered right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst).max(0) as u64
    }

    /// The most calls answered at once so far.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst).max(0) as u64
    }

    /// Resets the high-water mark of concurrent calls to the current count.
    pub fn reset_max_in_flight(&self) {
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// `{calls, ok, unauthorized, in_flight, max_in_flight}`.
    pub fn json(&self) -> Value {
        json!({
            "calls": self.calls(),
            "ok": self.ok.load(Ordering::Relaxed),
            "unauthorized": self.unauthorized.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::SeqCst),
            "max_in_flight": self.max_in_flight.load(Ordering::SeqCst),
        })
    }
}

/// `GET /__stats` (the counters) and `POST /__stats/reset` (resets only the high-water mark;
/// calls are read as before/after deltas).
pub fn routes(stats: Arc<UpstreamStats>) -> Router {
    let reset = stats.clone();
    Router::new()
        .route(
            "/__stats",
            get(move || async move { axum::Json(stats.json()) }),
        )
        .route(
            "/__stats/reset",
            post(move || async move {
                reset.reset_max_in_flight();
                axum::Json(reset.json())
            }),
        )
}
