//! The real `sessiongate` binary: CLI behaviour, OTLP trace export to an in-process collector
//! (parenting, propagation to Kratos, no credential in any attribute), credentials never in logs
//! at debug level, and SIGTERM → readiness false → drain → exit 0.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use support::upstream::{Behaviour, FakeKratos};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_are_useful() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for word in [
        "serve",
        "check-config",
        "keys",
        "SESSIONGATE_",
        "whoami",
        "--config",
        "Examples",
    ] {
        assert!(out.contains(word), "--help lacks {word}: {out}");
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn keys_generate_prints_a_loadable_private_jwks() {
    for alg in ["ES256", "EdDSA", "RS256"] {
        let (code, out, err) = run(&["keys", "generate", "--alg", alg, "--kid", "k1"]);
        assert_eq!(code, 0, "{err}");
        let set = sessiongate::token::KeySet::from_jwks(&out, Some("k1")).expect("loads");
        assert_eq!(set.signing.alg.as_str(), alg);
        assert!(out.contains("\"d\""));
    }
    let (code, _, err) = run(&["keys", "generate", "--alg", "HS256"]);
    assert_ne!(code, 0);
    assert!(err.contains("ES256"), "{err}");
}

#[test]
fn check_config_names_field_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "whoami:\n  timeout: 0s\n  base_url: kratos\njwt:\n  jwks_file: /nonexistent/jwks.json\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    for want in ["whoami.timeout", "whoami.base_url", "jwt.jwks_file", "fix:"] {
        assert!(err.contains(want), "missing {want}: {err}");
    }
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "cache:\n  tll: 60s\n").unwrap();
    let (code, _, err) = run(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("tll") && err.contains("ttl"), "{err}");

    let good = dir.path().join("good.yaml");
    let (_, jwks, _) = run(&["keys", "generate", "--kid", "g"]);
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks).unwrap();
    std::fs::write(
        &good,
        format!("jwt:\n  jwks_file: {}\n", jwks_path.display()),
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kid g"), "{out}");
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn wait_ready(http: SocketAddr) {
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(format!("http://{http}/health/ready")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sessiongate did not become ready");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn traces_logs_and_sigterm_with_the_real_binary() {
    // In-process OTLP collector.
    let collector = Collector::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = otlp.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp))
            .await
    });

    let kratos = FakeKratos::start().await;
    let secret_cookie = "MTcwMDAwMDAwMHxzZWNyZXQtY29va2llLXZhbHVl";
    let secret_token = "ory_st_s3cr3tT0kenValue";
    kratos.set(secret_cookie, Behaviour::active("traced"));
    kratos.set(secret_token, Behaviour::Unauthorized);
    let (grpc, http) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--log-level", "debug"])
        .env("SESSIONGATE_GRPC__LISTEN", grpc.to_string())
        .env("SESSIONGATE_HTTP__LISTEN", http.to_string())
        .env("SESSIONGATE_WHOAMI__BASE_URL", kratos.url())
        .env("SESSIONGATE_TRACING__ENABLED", "true")
        .env("SESSIONGATE_JWT__ISSUER", "https://gate.test")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_ready(http).await;

    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let req = check_request(
        &[
            ("cookie", &format!("ory_kratos_session={secret_cookie}")),
            ("traceparent", &format!("00-{trace_id}-{parent_id}-01")),
        ],
        &[],
    );
    let resp = client.check(req).await.unwrap().into_inner();
    let m = allowed(&resp);
    let jwt = m.set["authorization"].clone();
    let denied_resp = client
        .check(check_request(&[("x-session-token", secret_token)], &[]))
        .await
        .unwrap()
        .into_inner();
    denied(&denied_resp);

    // Kratos received our whoami span's context, in the caller's trace.
    let tp = kratos.received()[0]
        .traceparent
        .clone()
        .expect("traceparent propagated");
    assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
    let kratos_parent = tp.split('-').nth(2).unwrap().to_owned();
    assert_ne!(kratos_parent, parent_id, "a child span, not the caller's");

    // SIGTERM: readiness drops, the process drains and exits 0, spans are flushed.
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = collector.spans.lock().unwrap().clone();
        if spans.iter().any(|s| s.name == "whoami") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = spans
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id && s.name != "whoami")
        .unwrap_or_else(|| {
            panic!(
                "no check span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&check.parent_span_id),
        parent_id,
        "check span parented on the caller"
    );
    let whoami = spans
        .iter()
        .find(|s| s.name == "whoami" && hex(&s.trace_id) == trace_id)
        .expect("whoami span");
    assert_eq!(
        whoami.parent_span_id, check.span_id,
        "whoami is a child of check"
    );
    assert_eq!(
        hex(&whoami.span_id),
        kratos_parent,
        "Kratos saw the whoami span"
    );
    let all_attributes = format!("{spans:?}");
    for secret in [
        secret_cookie,
        secret_token,
        jwt.trim_start_matches("Bearer "),
    ] {
        assert!(!all_attributes.contains(secret), "credential in span data");
    }

    // Nothing we log, even at debug, contains a credential or a minted token.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("\"decision\""),
        "decision lines logged at debug: {logs}"
    );
    for secret in [
        secret_cookie,
        secret_token,
        jwt.trim_start_matches("Bearer "),
    ] {
        assert!(!logs.contains(secret), "credential in logs");
    }
}
