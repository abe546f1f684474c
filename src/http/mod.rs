//! The side HTTP port (axum).
//!
//! Endpoints:
//! - `GET /.well-known/jwks.json` — public signing keys for upstream services (the only endpoint
//!   meant to be reachable beyond the pod/mesh; never contains private members)
//! - `GET /.well-known/openid-configuration` — OpenID discovery: `issuer` (`jwt.issuer`),
//!   `jwks_uri` and the signing algorithms, so verifiers can find the keys from the issuer
//! - `GET /health/alive` — the process runs
//! - `GET /health/ready` — ready to answer checks (false before start-up completes and while draining)
//! - `GET /metrics` — Prometheus text exposition (keep it private to the scrape network)
//! - `ANY /check`, `ANY /check/*` — HTTP forward-auth (see [`forward`]), unless it has its own listener
//! - `POST /admin/webhooks/kratos` — invalidation webhook for Kratos `web_hook` actions
//!   (`{"identity_id": …}` or `{"session_id": …}`), behind the admin bearer token; 404 when no
//!   admin token is configured

pub mod forward;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::admin::{Admin, AdminError, AdminToken, Via};
use crate::session::cache::SessionCache;
use crate::telemetry::Metrics;
use crate::token::Minter;

/// Readiness latch shared by the listeners: false until start-up completes and after SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Is it ready?
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the HTTP handlers need.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Signer, for the JWKS.
    pub minter: Arc<Minter>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Session cache, for the entries gauge.
    pub cache: Arc<SessionCache>,
    /// Readiness latch.
    pub readiness: Readiness,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: Duration,
    /// The admin token and operations, when the admin surface is on.
    pub admin: Option<(AdminToken, Admin)>,
    /// Forward-auth, when served on this port.
    pub forward: Option<forward::ForwardAuth>,
}

/// The forward-auth router (`ANY <path>`, `ANY <path>/*`).
pub fn forward_router(fa: forward::ForwardAuth) -> Router {
    let path = fa.prefix.to_string();
    Router::new()
        .route(&path, axum::routing::any(forward::check))
        .route(
            &format!("{path}/{{*rest}}"),
            axum::routing::any(forward::check),
        )
        .with_state(fa)
}

/// The side-port router.
pub fn router(state: HttpState) -> Router {
    let forward = state.forward.clone().map(forward_router);
    let router = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/health/alive", get(alive))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/admin/webhooks/kratos",
            axum::routing::post(kratos_webhook)
                .layer(axum::extract::DefaultBodyLimit::max(64 * 1024)),
        )
        .with_state(state);
    match forward {
        Some(f) => router.merge(f),
        None => router,
    }
}

async fn jwks(State(s): State<HttpState>) -> Response {
    public_document(&s, "application/jwk-set+json", s.minter.public_jwks())
}

async fn openid_configuration(State(s): State<HttpState>) -> Response {
    public_document(&s, "application/json", s.minter.openid_configuration())
}

/// A public key document, cacheable like the JWKS.
fn public_document(s: &HttpState, content_type: &'static str, body: Arc<str>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_str(&format!("public, max-age={}", s.jwks_max_age.as_secs()))
                    .unwrap_or(HeaderValue::from_static("no-cache")),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn alive() -> Response {
    (StatusCode::OK, Json(r#"{"status":"ok"}"#)).into_response()
}

async fn ready(State(s): State<HttpState>) -> Response {
    if s.readiness.get() {
        (StatusCode::OK, Json(r#"{"status":"ok"}"#)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(r#"{"status":"not ready"}"#),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let stats = s.cache.stats();
    s.metrics.cache_entries.set(stats.entries as i64);
    s.metrics.cache_bytes.set(stats.weighted_bytes as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// Body of the Kratos webhook: what to invalidate.
#[derive(Debug, serde::Deserialize)]
struct WebhookBody {
    identity_id: Option<String>,
    session_id: Option<String>,
}

async fn kratos_webhook(
    State(s): State<HttpState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some((token, admin)) = &s.admin else {
        return (
            StatusCode::NOT_FOUND,
            Json(r#"{"error":"admin API is not configured"}"#),
        )
            .into_response();
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !token.verify(auth) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(r#"{"error":"admin token required"}"#),
        )
            .into_response();
    }
    let Ok(req) = serde_json::from_slice::<WebhookBody>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                r#"{"error":"expected JSON {\"identity_id\": \"…\"} or {\"session_id\": \"…\"}"}"#,
            ),
        )
            .into_response();
    };
    if req.identity_id.is_none() && req.session_id.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(r#"{"error":"identity_id or session_id required"}"#),
        )
            .into_response();
    }
    let mut invalidated = 0;
    if let Some(id) = &req.identity_id {
        match admin.invalidate_identity(id, Via::Webhook).await {
            Ok(n) => invalidated += n,
            Err(e) => return admin_error(e),
        }
    }
    if let Some(id) = &req.session_id {
        match admin.invalidate_session(id, Via::Webhook).await {
            Ok(n) => invalidated += n,
            Err(e) => return admin_error(e),
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"invalidated":{invalidated}}}"#),
    )
        .into_response()
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::BadId(_) => (
            StatusCode::BAD_REQUEST,
            Json(r#"{"error":"ids must be 1-128 characters of A-Z, a-z, 0-9, '-' or '_'"}"#),
        )
            .into_response(),
        // Kratos retries a failed web hook: the broadcast gets another chance.
        AdminError::NotBroadcast(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(r#"{"error":"invalidated on this replica, but the broadcast to the other replicas failed"}"#),
        )
            .into_response(),
    }
}

/// A static JSON body.
struct Json(&'static str);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}
