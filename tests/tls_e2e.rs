//! TLS and mTLS on the gRPC listener, with certificates made for the test (rcgen): Check over
//! TLS; with a client CA, clients without a certificate are refused at the handshake unless
//! `client_auth_optional`, and the admin API always requires a client certificate plus the token.

mod support;

use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sessiongate::admin_pb::CacheStatsRequest;
use sessiongate::admin_pb::admin_client::AdminClient;
use sessiongate::config::GrpcTlsConfig;
use support::pki::{Pki, write};
use support::upstream::{Behaviour, FakeKratos};
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN: &str = "tls-admin-token-0123456789";

async fn channel(
    gate: &Gate,
    pki: &Pki,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://localhost:{}", gate.grpc.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn start(pki: &Pki, dir: &Path, mtls: bool, optional: bool) -> (FakeKratos, Gate) {
    let kratos = FakeKratos::start().await;
    kratos.set("c", Behaviour::active("tls"));
    let mut cfg = config(&kratos.url());
    cfg.admin.token = Some(TOKEN.into());
    cfg.grpc.tls = Some(GrpcTlsConfig {
        cert_file: write(dir, "server.crt", &pki.server.0),
        key_file: write(dir, "server.key", &pki.server.1),
        client_ca_file: mtls.then(|| write(dir, "ca.crt", &pki.ca_pem)),
        client_auth_optional: optional,
    });
    (kratos, Gate::start(cfg).await)
}

async fn check_ok(ch: Channel) -> bool {
    let mut c = AuthorizationClient::new(ch);
    match c.check(cookie("c")).await {
        Ok(r) => r.into_inner().status.unwrap().code == 0,
        Err(_) => false,
    }
}

async fn admin_ok(ch: Channel, token: bool) -> Result<(), tonic::Code> {
    let mut a = AdminClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        if token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        }
        Ok(r)
    });
    a.cache_stats(CacheStatsRequest {})
        .await
        .map(|_| ())
        .map_err(|e| e.code())
}

#[tokio::test]
async fn tls_listener_serves_checks() {
    let pki = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (_k, gate) = start(&pki, dir.path(), false, false).await;
    assert!(check_ok(channel(&gate, &pki, false).await.unwrap()).await);
    // Plaintext against the TLS port fails.
    let plain = AuthorizationClient::connect(format!("http://{}", gate.grpc)).await;
    let failed = match plain {
        Err(_) => true,
        Ok(mut c) => c.check(cookie("c")).await.is_err(),
    };
    assert!(failed, "plaintext accepted on a TLS listener");
}

#[tokio::test]
async fn mtls_requires_a_client_certificate() {
    let pki = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (_k, gate) = start(&pki, dir.path(), true, false).await;
    assert!(check_ok(channel(&gate, &pki, true).await.unwrap()).await);
    let without = match channel(&gate, &pki, false).await {
        Err(_) => false,
        Ok(ch) => check_ok(ch).await,
    };
    assert!(!without, "a client without a certificate got through");
    assert_eq!(
        admin_ok(channel(&gate, &pki, true).await.unwrap(), true).await,
        Ok(())
    );
    assert_eq!(
        admin_ok(channel(&gate, &pki, true).await.unwrap(), false).await,
        Err(tonic::Code::Unauthenticated),
        "the token is still required"
    );
}

#[tokio::test]
async fn optional_client_auth_still_protects_the_admin_api() {
    let pki = Pki::new(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (_k, gate) = start(&pki, dir.path(), true, true).await;
    assert!(
        check_ok(channel(&gate, &pki, false).await.unwrap()).await,
        "Check without a client cert"
    );
    assert_eq!(
        admin_ok(channel(&gate, &pki, false).await.unwrap(), true).await,
        Err(tonic::Code::Unauthenticated),
        "admin needs a client certificate"
    );
    assert_eq!(
        admin_ok(channel(&gate, &pki, true).await.unwrap(), true).await,
        Ok(())
    );
}
