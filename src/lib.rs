//! sessiongate: an Envoy `ext_authz` server that validates Ory Kratos sessions through a cached
//! `/sessions/whoami` client and injects a signed JWT for upstream services.
//!
//! Data moves one way: transports (`grpc`, `http`) translate requests into [`authz::Request`],
//! the domain ([`authz::Authorizer`] with [`session`] and [`token`]) decides, and transports
//! translate the [`authz::Decision`] back.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod config;
pub mod credentials;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod oauth2;
pub mod session;
pub mod telemetry;
pub mod token;
pub mod watch;

/// Generated types of our own admin API (`proto/sessiongate/admin/v1/admin.proto`).
#[allow(missing_docs, clippy::all)]
pub mod admin_pb {
    tonic::include_proto!("sessiongate.admin.v1");
}

/// Encoded `FileDescriptorSet` of our own protos, served by gRPC reflection.
pub const ADMIN_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
