//! gRPC transport: Envoy's `envoy.service.auth.v3.Authorization/Check` mapped onto
//! [`Authorizer`]. This module translates `CheckRequest` → [`Request`] and [`Decision`] →
//! `CheckResponse`; it decides nothing.
//!
//! Endpoints on the gRPC listener: `envoy.service.auth.v3.Authorization/Check`,
//! `grpc.health.v1.Health`, `grpc.reflection.v1(alpha)` for our own services, and
//! `sessiongate.admin.v1.Admin` when an admin token is configured.

pub mod admin;

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Response, Status};
use tracing::Instrument;

use crate::authz::{Authorizer, Decision, Headers, Request, RouteSettings};

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// The ext_authz service.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    authorizer: Arc<Authorizer>,
    unavailable_as_rpc_error: bool,
    trace_spans: bool,
}

impl ExtAuthz {
    /// Wraps the authorizer. `trace_spans`: create a span per check parented on the request's
    /// `traceparent` (only worth it when spans are exported).
    pub fn new(
        authorizer: Arc<Authorizer>,
        unavailable_as_rpc_error: bool,
        trace_spans: bool,
    ) -> ExtAuthz {
        ExtAuthz {
            authorizer,
            unavailable_as_rpc_error,
            trace_spans,
        }
    }
}

/// Translates Envoy's `CheckRequest` into the domain request. Takes the request by value: its
/// strings move into the domain request instead of being copied (this runs for every check).
pub fn to_request(check: CheckRequest) -> Option<Request> {
    let attributes = check.attributes?;
    // Envoy's downstream peer (after its own `use_remote_address` / `xff_num_trusted_hops`).
    let source = attributes
        .source
        .as_ref()
        .and_then(|p| p.address.as_ref())
        .and_then(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                s.address.parse().ok()
            }
            _ => None,
        });
    let route = RouteSettings::parse(
        attributes
            .context_extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let http = attributes.request?.http?;
    let mut headers;
    if !http.headers.is_empty() {
        headers = Headers::with_capacity(http.headers.len());
        for (k, v) in http.headers {
            headers.append_owned(k, v);
        }
    } else {
        // `encode_raw_headers: true`: values arrive as bytes in `header_map` only.
        let raw = http.header_map.map(|m| m.headers).unwrap_or_default();
        headers = Headers::with_capacity(raw.len());
        for h in raw {
            let value = if !h.raw_value.is_empty() {
                String::from_utf8(h.raw_value)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            } else {
                h.value
            };
            headers.append_owned(h.key, value);
        }
    }
    let pick = |field: String, header: &str| {
        if field.is_empty() {
            headers.get(header).unwrap_or_default().to_owned()
        } else {
            field
        }
    };
    let method = pick(http.method, ":method");
    let path = pick(http.path, ":path");
    let mut host = pick(http.host, ":authority");
    if host.is_empty() {
        host = headers.get("host").unwrap_or_default().to_owned();
    }
    let scheme = headers
        .get("x-forwarded-proto")
        .map(|s| crate::headers::first_list_value(s).to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| pick(http.scheme, ":scheme"));
    Some(Request {
        method,
        scheme,
        host,
        path,
        headers,
        route,
        source,
    })
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The allow's metadata as Envoy `dynamic_metadata`: `{sessiongate: {rule, identity_id,
/// session_id, aal}}`, which Envoy files under the ext_authz filter's namespace (access logs:
/// `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:sessiongate:identity_id)%`).
fn dynamic_metadata(
    metadata: &[(&'static str, std::sync::Arc<str>)],
) -> Option<envoy_types::pb::google::protobuf::Struct> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let string = |s: &str| envoy_types::pb::google::protobuf::Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let inner = envoy_types::pb::google::protobuf::Struct {
        fields: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect(),
    };
    Some(envoy_types::pb::google::protobuf::Struct {
        fields: [(
            "sessiongate".to_owned(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into(),
    })
}

/// Translates a decision into Envoy's `CheckResponse` (consuming it: a denial's body and header
/// values move into the response instead of being copied).
pub fn to_response(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow(allow) => CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..Default::default()
            }),
            dynamic_metadata: dynamic_metadata(&allow.metadata),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: allow
                    .set
                    .iter()
                    .map(|(k, v)| header(k, v.to_string()))
                    .collect(),
                headers_to_remove: allow.remove.iter().map(|h| h.to_string()).collect(),
                ..Default::default()
            })),
        },
        Decision::Deny(deny) => CheckResponse {
            status: Some(rpc::Status {
                code: if deny.status == 401 {
                    UNAUTHENTICATED
                } else {
                    PERMISSION_DENIED
                },
                message: deny.reason.as_str().to_owned(),
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(deny.status),
                }),
                headers: deny
                    .headers
                    .into_iter()
                    .map(|(k, v)| header(k, v))
                    .collect(),
                body: deny.body,
            })),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let Some(req) = to_request(check) else {
            // Not an HTTP check: deny rather than return an RPC error, which Envoy's
            // failure_mode_allow could turn into an allow.
            let deny = self
                .authorizer
                .bad_request("CheckRequest has no attributes.request.http");
            return Ok(Response::new(to_response(deny)));
        };
        let decision = if self.trace_spans {
            let span = crate::telemetry::check_span("grpc", &req.method, &req.headers);
            self.authorizer.check(&req).instrument(span).await
        } else {
            self.authorizer.check(&req).await
        };
        if let Decision::Deny(d) = &decision
            && self.unavailable_as_rpc_error
            && d.is_upstream_failure()
        {
            return Err(Status::unavailable("session service unavailable"));
        }
        Ok(Response::new(to_response(decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };

    fn check(http: HttpRequest, ext: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(http),
                    ..Default::default()
                }),
                context_extensions: ext
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn maps_headers_pseudo_headers_and_extensions() {
        let http = HttpRequest {
            method: "GET".into(),
            headers: [
                (":authority", "app.example.com"),
                (":path", "/a?b=c"),
                ("x-forwarded-proto", "https"),
                ("cookie", "a=1, ory_kratos_session=s"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        };
        let r = to_request(check(http, &[("audience", "api")])).unwrap();
        assert_eq!(r.host, "app.example.com");
        assert_eq!(r.path, "/a?b=c");
        assert_eq!(r.scheme, "https");
        assert_eq!(r.route.unwrap().audience.as_deref(), Some("api"));
        assert_eq!(r.headers.get("cookie"), Some("a=1, ory_kratos_session=s"));
    }

    #[test]
    fn raw_header_map_with_non_utf8_is_tolerated() {
        let http = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "cookie".into(),
                        raw_value: b"ory_kratos_session=abc; x=\xff\xfe".to_vec(),
                        ..Default::default()
                    },
                    HeaderValue {
                        key: ":path".into(),
                        raw_value: b"/p".to_vec(),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let r = to_request(check(http, &[])).unwrap();
        assert_eq!(r.path, "/p");
        assert!(
            r.headers
                .get("cookie")
                .unwrap()
                .starts_with("ory_kratos_session=abc;")
        );
    }

    #[test]
    fn header_names_are_lower_cased_in_both_encodings() {
        let map = HttpRequest {
            headers: [("X-Session-Token".to_string(), "t".to_string())].into(),
            ..Default::default()
        };
        let raw = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: "X-Session-Token".into(),
                    value: "t".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        for http in [map, raw] {
            let r = to_request(check(http, &[])).unwrap();
            assert_eq!(r.headers.get("x-session-token"), Some("t"));
            assert_eq!(r.headers.get("X-Session-Token"), None);
        }
    }

    #[test]
    fn missing_http_attributes_is_none() {
        assert!(to_request(CheckRequest::default()).is_none());
    }
}
