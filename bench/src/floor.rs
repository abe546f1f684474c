//! The `floor-server` tool: a no-op ext_authz server on sessiongate's tonic stack that always
//! allows with one JWT-sized header, the floor under every gRPC figure.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;

#[derive(Debug, Clone)]
struct Floor {
    token: String,
}

#[tonic::async_trait]
impl Authorization for Floor {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "authorization".into(),
                        value: self.token.clone(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

pub async fn floor_server(listen: SocketAddr, like_app_rs: bool) -> Result<()> {
    // A JWT-sized constant (ES256 token with the default claims is ~450 bytes).
    let token = format!(
        "Bearer eyJhbGciOiJFUzI1NiJ9.{}.{}",
        "A".repeat(300),
        "B".repeat(86)
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("floor-server listening on {}", listener.local_addr()?);
    // Same builder settings as sessiongate's gRPC listener. `Server::tcp_nodelay` is ignored by
    // `serve_with_incoming`: the incoming stream must set it.
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AuthorizationServer::new(Floor { token }));
    if like_app_rs {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
    } else {
        router
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await?;
    }
    Ok(())
}
