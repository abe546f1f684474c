//! Shared test support: a fake whoami upstream, a sessiongate started in-process on ephemeral
//! ports, Envoy-shaped CheckRequests, and JWT verification against the served JWKS.
#![allow(dead_code)]

pub mod kratos;
pub mod nginx;
pub mod pki;
pub mod redis;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use sessiongate::app::{App, Handles};
use sessiongate::config::Config;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A sessiongate running in this process.
pub struct Gate {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub handles: Handles,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Gate {
    /// Binds on ephemeral loopback ports and runs.
    pub async fn start(mut config: Config) -> Gate {
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        let app = App::bind(config).await.expect("app binds");
        let (grpc, http, handles) = (app.grpc_addr(), app.http_addr(), app.handles());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        // Wait for readiness.
        for _ in 0..200 {
            if handles.readiness.get() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Gate {
            grpc,
            http,
            handles,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A gRPC ext_authz client.
    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connects")
    }

    /// GET on the side port: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Stops and waits for the drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

/// A config pointing at `kratos_url`.
pub fn config(kratos_url: &str) -> Config {
    let mut c = Config::default();
    c.whoami.base_url = kratos_url.to_owned();
    c.jwt.issuer = "https://gate.test".into();
    c.jwt.audience = vec!["app".into()];
    c.jwt
        .claims
        .insert("email".into(), "/identity/traits/email".into());
    c.upstream
        .identity_headers
        .insert("x-user-id".into(), "/identity/id".into());
    c.log.level = "warn".into();
    // The fake Kratos' toy credentials (`good`, `valid-…`) are not Kratos-shaped; the shape
    // check is tested on its own (and against real Kratos credentials).
    c.credentials.shape.enabled = false;
    c
}

/// An Envoy-shaped CheckRequest (lower-cased headers including pseudo-headers).
pub fn check_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let mut h: HashMap<String, String> = [
        (":authority", "app.example.com"),
        (":path", "/orders?page=2"),
        (":method", "GET"),
        (":scheme", "https"),
        ("x-forwarded-proto", "https"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in headers {
        h.insert(k.to_string(), v.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: "12345".into(),
                    method: "GET".into(),
                    path: "/orders?page=2".into(),
                    host: "app.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: h,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// The HTTP attributes of a CheckRequest, to adjust method, path or headers.
pub fn http_mut(req: &mut CheckRequest) -> &mut HttpRequest {
    req.attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("CheckRequest with http attributes")
}

/// Adds a `context_extensions` entry (a per-route setting).
pub fn with_extension(mut req: CheckRequest, key: &str, value: &str) -> CheckRequest {
    req.attributes
        .as_mut()
        .expect("attributes")
        .context_extensions
        .insert(key.into(), value.into());
    req
}

/// An admin API client sending `authorization: Bearer <token>`.
pub async fn admin_client(
    grpc: SocketAddr,
    token: &str,
) -> sessiongate::admin_pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl tonic::service::Interceptor + use<>,
    >,
> {
    admin_client_with(grpc, "authorization", Some(format!("Bearer {token}"))).await
}

/// An admin API client sending `header: value` on every call (nothing when `value` is `None`).
pub async fn admin_client_with(
    grpc: SocketAddr,
    header: &'static str,
    value: Option<String>,
) -> sessiongate::admin_pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl tonic::service::Interceptor + use<>,
    >,
> {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value = value.map(|v| v.parse::<tonic::metadata::MetadataValue<_>>().unwrap());
    sessiongate::admin_pb::admin_client::AdminClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            if let Some(v) = &value {
                r.metadata_mut().insert(header, v.clone());
            }
            Ok(r)
        },
    )
}

/// A cookie request for `value`.
pub fn cookie(value: &str) -> CheckRequest {
    check_request(
        &[("cookie", &format!("theme=dark; ory_kratos_session={value}"))],
        &[],
    )
}

/// What an allow did to the upstream request.
#[derive(Debug, Default)]
pub struct Mutations {
    pub set: HashMap<String, String>,
    pub remove: Vec<String>,
}

/// The allow's header mutations; panics on a deny. Asserts every set header overwrites.
pub fn allowed(r: &CheckResponse) -> Mutations {
    assert_eq!(
        r.status.as_ref().unwrap().code,
        0,
        "expected allow, got {r:?}"
    );
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("no ok_response: {r:?}")
    };
    let mut m = Mutations::default();
    for h in &ok.headers {
        assert_eq!(
            h.append_action, 2,
            "append_action must be OVERWRITE_IF_EXISTS_OR_ADD"
        );
        let hv = h.header.as_ref().unwrap();
        m.set.insert(hv.key.clone(), hv.value.clone());
    }
    m.remove = ok.headers_to_remove.clone();
    m
}

/// The deny's (status, headers, body); panics on an allow.
pub fn denied(r: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    assert_ne!(
        r.status.as_ref().unwrap().code,
        0,
        "expected deny, got {r:?}"
    );
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("no denied_response: {r:?}")
    };
    let headers = d
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.clone(), hv.value.clone())
        })
        .collect();
    (d.status.as_ref().unwrap().code, headers, d.body.clone())
}

/// Verifies `Bearer <jwt>` against the JWKS served on the side port and returns its claims.
pub async fn verify(gate: &Gate, header_value: &str, audience: &str) -> serde_json::Value {
    let jwt = header_value.strip_prefix("Bearer ").expect("Bearer prefix");
    let (status, jwks) = gate.get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    verify_with_jwks(jwt, &jwks, audience)
}

/// Verifies a JWT with jsonwebtoken (an implementation independent of ours) against a JWKS.
pub fn verify_with_jwks(jwt: &str, jwks: &str, audience: &str) -> serde_json::Value {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks).expect("JWKS parses");
    let header = jsonwebtoken::decode_header(jwt).expect("JWT header");
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("kid in JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&["https://gate.test"]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "sub", "aud"]);
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
        .expect("JWT verifies")
        .claims
}

/// Sum of `sessiongate_<name>` samples with the given label filter, from `/metrics`.
pub async fn metric(gate: &Gate, name: &str, label_filter: &str) -> f64 {
    let (_, text) = gate.get("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(&format!("sessiongate_{name}")) && l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` every 10 ms until it holds, for `within` at most.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    within: std::time::Duration,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Polls `/metrics` until `sessiongate_<name>` (with the label filter) is at least `at_least`,
/// for `within` at most.
pub async fn wait_metric(
    gate: &Gate,
    name: &str,
    label_filter: &str,
    at_least: f64,
    within: std::time::Duration,
) -> bool {
    eventually(within, || async {
        metric(gate, name, label_filter).await >= at_least
    })
    .await
}

/// Is a check with this session cookie allowed? (A gRPC error panics: checks must be answered.)
pub async fn is_allowed(gate: &Gate, session: &str) -> bool {
    let mut c = gate.client().await;
    let r = c.check(cookie(session)).await.unwrap().into_inner();
    r.status.unwrap().code == 0
}

/// A route rule matching `paths` (every other field at its default).
pub fn rule(name: &str, paths: &[&str]) -> sessiongate::config::RuleConfig {
    sessiongate::config::RuleConfig {
        name: name.into(),
        matches: sessiongate::config::MatchConfig {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}
