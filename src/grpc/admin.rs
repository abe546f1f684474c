//! `sessiongate.admin.v1.Admin` (see `proto/`): cache invalidation and stats, behind a bearer
//! token compared in constant time. Registered only when an admin token is configured.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::admin_pb::admin_server::Admin;
use crate::admin_pb::{
    CacheStatsRequest, CacheStatsResponse, InvalidateAllRequest, InvalidateIdentityRequest,
    InvalidateResponse, InvalidateSessionRequest,
};
use crate::session::cache::SessionCache;
use crate::telemetry::{Metrics, ResultLabel};

/// A configured admin token; checks presented tokens in constant time.
#[derive(Clone)]
pub struct AdminToken(blake3::Hash, bool);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Wraps the configured token.
    pub fn new(token: &str) -> AdminToken {
        AdminToken(blake3::hash(token.as_bytes()), false)
    }

    /// Also require a verified client certificate on gRPC calls (mTLS listener).
    pub fn require_client_cert(self, required: bool) -> AdminToken {
        AdminToken(self.0, required)
    }

    /// Does `authorization` carry `Bearer <the token>`? (`blake3::Hash` equality is constant-time.)
    pub fn verify(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return false;
        };
        blake3::hash(token.trim().as_bytes()) == self.0
    }

    /// A tonic interceptor that refuses calls without the token.
    pub fn interceptor(self) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |req: Request<()>| {
            // With mTLS the TLS layer verified any certificate presented; here: one was presented.
            if self.1 && req.peer_certs().is_none_or(|c| c.is_empty()) {
                return Err(Status::unauthenticated(
                    "admin API requires a client certificate",
                ));
            }
            let auth = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if self.verify(auth) {
                Ok(req)
            } else {
                Err(Status::unauthenticated("admin token required"))
            }
        }
    }
}

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    cache: Arc<SessionCache>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    /// Serves the admin API over `cache`.
    pub fn new(cache: Arc<SessionCache>, metrics: Arc<Metrics>) -> AdminService {
        AdminService { cache, metrics }
    }
}

fn id_arg(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1-128 printable ASCII characters"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn invalidate_session(
        &self,
        request: Request<InvalidateSessionRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let id = request.into_inner().session_id;
        id_arg(&id, "session_id")?;
        let invalidated = self.cache.invalidate_session(&id).await;
        tracing::info!(session_id = %id, invalidated, "admin: session invalidated");
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn invalidate_identity(
        &self,
        request: Request<InvalidateIdentityRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let id = request.into_inner().identity_id;
        id_arg(&id, "identity_id")?;
        let invalidated = self.cache.invalidate_identity(&id).await;
        tracing::info!(identity_id = %id, invalidated, "admin: identity invalidated");
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn invalidate_all(
        &self,
        _: Request<InvalidateAllRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let invalidated = self.cache.invalidate_all().await;
        tracing::info!(invalidated, "admin: whole cache invalidated");
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn cache_stats(
        &self,
        _: Request<CacheStatsRequest>,
    ) -> Result<Response<CacheStatsResponse>, Status> {
        let stats = self.cache.stats();
        let lookups = |result| {
            self.metrics
                .cache_lookups
                .get_or_create(&ResultLabel { result })
                .get()
        };
        Ok(Response::new(CacheStatsResponse {
            entries: stats.entries,
            weighted_bytes: stats.weighted_bytes,
            hits: lookups("hit") + lookups("stale"),
            misses: lookups("miss"),
            coalesced: lookups("coalesced"),
            negative_hits: lookups("negative"),
            whoami_calls: self.metrics.whoami_total(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check() {
        let t = AdminToken::new("0123456789abcdef0123");
        assert!(t.verify(Some("Bearer 0123456789abcdef0123")));
        assert!(!t.verify(Some("Bearer 0123456789abcdef012")));
        assert!(!t.verify(Some("0123456789abcdef0123")));
        assert!(!t.verify(None));
        assert!(!format!("{t:?}").contains("0123"));
    }
}
