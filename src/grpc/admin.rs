//! `sessiongate.admin.v1.Admin` (see `proto/`): cache invalidation and stats, behind a bearer
//! token ([`AdminToken`]). Registered only when an admin token is configured; the operations
//! themselves live in [`crate::admin`], shared with the Kratos webhook.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::admin::{Admin, AdminError, AdminToken, OAuth2Target, Via};
use crate::admin_pb::admin_server::Admin as AdminApi;
use crate::admin_pb::{
    CacheStatsRequest, CacheStatsResponse, InvalidateAllRequest, InvalidateIdentityRequest,
    InvalidateOAuth2Request, InvalidateResponse, InvalidateSessionRequest,
};
use crate::telemetry::{Metrics, ResultLabel};

/// A tonic interceptor that refuses calls without the admin token (and, on an mTLS listener,
/// without a client certificate).
pub fn interceptor(
    token: AdminToken,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        // With mTLS the TLS layer verified any certificate presented; here: one was presented.
        if token.requires_client_cert() && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::unauthenticated(
                "admin API requires a client certificate",
            ));
        }
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token.verify(auth) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("admin token required"))
        }
    }
}

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: Admin,
    metrics: Arc<Metrics>,
}

impl AdminService {
    /// Serves the admin API over `admin`.
    pub fn new(admin: Admin, metrics: Arc<Metrics>) -> AdminService {
        AdminService { admin, metrics }
    }
}

fn status(e: AdminError) -> Status {
    match e {
        AdminError::BadId(e) => Status::invalid_argument(e.to_string()),
        AdminError::NotBroadcast(e) => Status::unavailable(e.to_string()),
    }
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    async fn invalidate_session(
        &self,
        request: Request<InvalidateSessionRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let id = request.into_inner().session_id;
        let invalidated = self
            .admin
            .invalidate_session(&id, Via::Api)
            .await
            .map_err(status)?;
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn invalidate_identity(
        &self,
        request: Request<InvalidateIdentityRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let id = request.into_inner().identity_id;
        let invalidated = self
            .admin
            .invalidate_identity(&id, Via::Api)
            .await
            .map_err(status)?;
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn invalidate_all(
        &self,
        _: Request<InvalidateAllRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let invalidated = self.admin.invalidate_all(Via::Api).await.map_err(status)?;
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn invalidate_o_auth2(
        &self,
        request: Request<InvalidateOAuth2Request>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let r = request.into_inner();
        let target = match (r.subject.is_empty(), r.client_id.is_empty()) {
            (false, true) => OAuth2Target::Subject(&r.subject),
            (true, false) => OAuth2Target::Client(&r.client_id),
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of subject or client_id",
                ));
            }
        };
        let invalidated = self
            .admin
            .invalidate_oauth2(target, Via::Api)
            .await
            .map_err(status)?;
        Ok(Response::new(InvalidateResponse { invalidated }))
    }

    async fn cache_stats(
        &self,
        _: Request<CacheStatsRequest>,
    ) -> Result<Response<CacheStatsResponse>, Status> {
        let stats = self.admin.stats();
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
