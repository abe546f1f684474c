//! Hostile input over real gRPC and HTTP `/check`, and security properties as tests.
//!
//! Every hostile request must get a clean answer — a deny, or a gRPC `INVALID_ARGUMENT` /
//! `OUT_OF_RANGE` / `RESOURCE_EXHAUSTED` / `INTERNAL` (undecodable protobuf) status — never a
//! panic or a hang, and the server must keep serving: each test ends with a normal allowed check.
//!
//! Documented outcomes:
//! - a `CheckRequest` larger than `grpc.max_request_bytes` is refused by tonic's decoder with the
//!   RPC status `OUT_OF_RANGE` (not a deny): Envoy then applies `failure_mode_allow`, which must
//!   therefore stay `false`. (Documented as OUT_OF_RANGE in sessiongate.example.yaml and SECURITY.md.)
//! - a 1 MiB `Cookie` header over HTTP `/check` is refused by hyper before our handler runs
//!   (431 or a closed connection).
//! - header names are lower-cased by sessiongate: `COOKIE` counts as `cookie`.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use percent_encoding::percent_decode_str;
use sessiongate::admin_pb::*;
use sessiongate::config::{Algorithm, Config};
use support::upstream::{Behaviour, FakeKratos};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOGIN: &str = "https://login.example.com/ui/login";
const ADMIN_TOKEN: &str = "hostile-admin-token-0123456789abcdef";

async fn setup(tweak: impl FnOnce(&mut Config)) -> (FakeKratos, Gate) {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("good"));
    let mut cfg = config(&kratos.url());
    tweak(&mut cfg);
    let gate = Gate::start(cfg).await;
    (kratos, gate)
}

fn http_of(req: &mut CheckRequest) -> &mut HttpRequest {
    req.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
}

/// The server still serves: a normal session is allowed over gRPC and over HTTP `/check`.
async fn still_serving(gate: &Gate) {
    let mut client = gate.client().await;
    let m = allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    assert_eq!(
        verify(gate, &m.set["authorization"], "app").await["sub"],
        "ident-good"
    );
    let r = http_check(gate, &[("cookie", "ory_kratos_session=good")]).await;
    assert_eq!(r.status(), 200);
    assert!(gate.handles.readiness.get());
}

/// `GET /check` with these headers (the peer is loopback, so a trusted proxy).
async fn http_check(gate: &Gate, headers: &[(&str, &str)]) -> reqwest::Response {
    http_check_at(gate, "/check", headers).await
}

async fn http_check_at(gate: &Gate, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut r = client.get(format!("http://{}{path}", gate.http));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("HTTP /check answers")
}

/// Sends raw bytes to the HTTP port and returns what came back before the server closed (or
/// 3 s passed).
async fn raw_http(gate: &Gate, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(gate.http).await.unwrap();
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(raw: &str) -> &str {
    raw.lines().next().unwrap_or("")
}

/// `return_to` of a Location, decoded.
fn return_to(location: &str) -> Option<String> {
    let q = location.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix("return_to="))
        .map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned())
}

fn assert_clean_headers(headers: &HashMap<String, String>) {
    for (k, v) in headers {
        assert!(
            !v.contains('\r') && !v.contains('\n') && !k.contains('\r') && !k.contains('\n'),
            "header injection: {k}: {v:?}"
        );
    }
}

// === sizes ===

#[tokio::test]
async fn a_check_request_over_max_request_bytes_is_refused_with_an_rpc_status() {
    let (kratos, gate) = setup(|c| c.grpc.max_request_bytes = 4096).await;
    let mut client = gate.client().await;
    let big = format!("ory_kratos_session=good; pad={}", "x".repeat(10_000));
    let err = client
        .check(check_request(&[("cookie", &big)], &[]))
        .await
        .expect_err("oversized CheckRequest is refused");
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert_eq!(kratos.calls(), 0);
    // Just below the limit still works.
    let m = allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    assert!(m.set.contains_key("authorization"));
    still_serving(&gate).await;
}

#[tokio::test]
async fn oversized_check_request_status_is_out_of_range_as_documented() {
    let (_kratos, gate) = setup(|c| c.grpc.max_request_bytes = 4096).await;
    let mut client = gate.client().await;
    let big = "x".repeat(10_000);
    let err = client
        .check(check_request(&[("cookie", &big)], &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
}

#[tokio::test]
async fn a_one_mib_cookie_header() {
    // Default max_request_bytes (1 MiB): a 1 MiB header makes the request too large.
    let (kratos, gate) = setup(|_| {}).await;
    let mut client = gate.client().await;
    let mib = "x".repeat(1 << 20);
    let junk = format!("pad={mib}");
    let err = client
        .check(check_request(&[("cookie", &junk)], &[]))
        .await
        .expect_err("over the default 1 MiB limit");
    assert!(matches!(
        err.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    ));
    gate.stop().await.unwrap();

    // With room for it, the authorizer itself sees 1 MiB of cookies.
    let mut cfg = config(&kratos.url());
    cfg.grpc.max_request_bytes = 8 << 20;
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;
    let t = Instant::now();
    let (status, _, body) = denied(
        &client
            .check(check_request(&[("cookie", &junk)], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401, "no session cookie in 1 MiB of junk");
    assert!(body.len() < 1024);
    // A 1 MiB session cookie value: too long, denied without a whoami call.
    let huge_session = format!("ory_kratos_session={mib}");
    let (status, _, body) = denied(
        &client
            .check(check_request(&[("cookie", &huge_session)], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401);
    assert!(!body.contains("xxxxxxxx"));
    assert_eq!(kratos.calls(), 0);
    // A valid session beside 1 MiB of other cookies: allowed, the other cookies kept.
    let both = format!("{junk}; ory_kratos_session=good");
    let m = allowed(
        &client
            .check(check_request(&[("cookie", &both)], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(m.set["cookie"], junk);
    eprintln!("three 1 MiB-cookie checks took {:?}", t.elapsed());

    // Over HTTP, hyper refuses a 1 MiB header before sessiongate sees it.
    let req =
        format!("GET /check HTTP/1.1\r\nHost: gate\r\nCookie: {junk}\r\nConnection: close\r\n\r\n");
    let raw = raw_http(&gate, req.as_bytes()).await;
    assert!(
        raw.is_empty()
            || status_line(&raw).contains(" 431 ")
            || status_line(&raw).contains(" 400 "),
        "{}",
        status_line(&raw)
    );
    still_serving(&gate).await;
}

#[tokio::test]
async fn five_thousand_cookies_in_one_header() {
    let (kratos, gate) = setup(|_| {}).await;
    let mut client = gate.client().await;
    let many: Vec<String> = (0..5000).map(|i| format!("c{i}=v{i}")).collect();
    let many = many.join("; ");
    let (status, _, _) = denied(
        &client
            .check(check_request(&[("cookie", &many)], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401);
    let with_session = format!("{many}; ory_kratos_session=good");
    let m = allowed(
        &client
            .check(check_request(&[("cookie", &with_session)], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        m.set["cookie"], many,
        "5,000 other cookies kept, session stripped"
    );
    // Many repeated session cookies: the first one is the credential; all are stripped.
    let repeated = vec!["ory_kratos_session=good"; 5000].join("; ");
    let m = allowed(
        &client
            .check(check_request(&[("cookie", &repeated)], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(m.remove.contains(&"cookie".to_string()));
    assert_eq!(kratos.calls(), 1);

    // HTTP: 5,000 cookies (~50 KB) fit hyper's limits.
    let r = http_check(&gate, &[("cookie", &many)]).await;
    assert_eq!(r.status(), 401);
    let r = http_check(&gate, &[("cookie", &with_session)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cookie"].to_str().unwrap(), many);
    still_serving(&gate).await;
}

// === bytes ===

#[tokio::test]
async fn non_utf8_raw_header_values() {
    let (kratos, gate) = setup(|c| c.deny.login_url = Some(LOGIN.into())).await;
    let mut client = gate.client().await;
    let raw = |pairs: &[(&str, &[u8])]| {
        let mut req = check_request(&[], &[]);
        let http = http_of(&mut req);
        http.headers.clear();
        http.host.clear();
        http.path.clear();
        http.header_map = Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    raw_value: v.to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        req
    };
    // A session cookie whose value is not UTF-8: malformed, no whoami call.
    let req = raw(&[
        (":authority", b"app.example.com"),
        (":path", b"/x"),
        ("cookie", b"ory_kratos_session=\xff\xfe\x80"),
    ]);
    let (status, _, body) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 401);
    assert!(body.contains("malformed"), "{body}");
    // Token header with NUL and high bytes.
    let req = raw(&[("x-session-token", b"ab\x00\xffcd")]);
    assert_eq!(
        denied(&client.check(req).await.unwrap().into_inner()).0,
        401
    );
    // A browser with a non-UTF-8 authority and path: redirected, without a return_to built from
    // the garbage host.
    let req = raw(&[
        (":authority", b"app.example.com\xff\r\nx: y"),
        (":path", b"/\xff\xfe?\x00"),
        ("accept", b"text/html"),
    ]);
    let (status, headers, _) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 303);
    assert_eq!(headers["location"], LOGIN);
    assert_clean_headers(&headers);
    // Non-UTF-8 path with a clean host: the return_to is percent-encoded.
    let req = raw(&[
        (":authority", b"app.example.com"),
        (":path", b"/caf\xe9\r\n"),
        ("accept", b"text/html"),
    ]);
    let (status, headers, _) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 303);
    assert_clean_headers(&headers);
    assert!(
        return_to(&headers["location"])
            .unwrap()
            .starts_with("https://app.example.com/caf")
    );
    assert_eq!(kratos.calls(), 0);

    // Over HTTP: obs-text bytes in header values reach sessiongate (hyper allows 0x80-0xff).
    let raw_req = b"GET /check HTTP/1.1\r\nHost: gate\r\nCookie: ory_kratos_session=\xff\xfe\r\nX-Forwarded-Host: app\xff.example.com\r\nConnection: close\r\n\r\n";
    let resp = raw_http(&gate, raw_req).await;
    assert!(status_line(&resp).contains(" 401 "), "{resp}");
    // Bare CR / NUL in a header value: hyper refuses the request.
    let raw_req = b"GET /check HTTP/1.1\r\nHost: gate\r\nX-Forwarded-Host: a\rSet-Cookie: x=y\r\nConnection: close\r\n\r\n";
    let resp = raw_http(&gate, raw_req).await;
    assert!(
        resp.is_empty() || status_line(&resp).contains(" 400 "),
        "{resp}"
    );
    assert!(!resp.to_ascii_lowercase().contains("set-cookie: x=y"));
    still_serving(&gate).await;
}

/// A gRPC codec that sends raw bytes and decodes a `CheckResponse`.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<CheckResponse>, tonic::Status> {
        use prost::Message;
        CheckResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_check(gate: &Gate, bytes: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gate.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(bytes),
        http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check"),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn undecodable_protobuf_gets_an_rpc_status_not_a_panic() {
    use prost::Message;
    let (kratos, gate) = setup(|_| {}).await;
    // Invalid UTF-8 inside a protobuf `string` (the cookie header value).
    let marker = "ory_kratos_session=MARKER";
    let bytes = check_request(&[("cookie", marker)], &[]).encode_to_vec();
    let at = bytes
        .windows(6)
        .position(|w| w == b"MARKER")
        .expect("marker encoded");
    let mut bad = bytes.clone();
    bad[at..at + 6].copy_from_slice(b"\xff\xfe\xfd\xfc\xfb\xfa");
    let err = raw_check(&gate, bad)
        .await
        .expect_err("invalid UTF-8 string");
    eprintln!("invalid UTF-8 in a string field: {:?}", err.code());
    assert_ne!(err.code(), tonic::Code::Ok);
    // Truncated, random and empty messages.
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let err = raw_check(&gate, truncated).await.expect_err("truncated");
    eprintln!("truncated protobuf: {:?}", err.code());
    let mut x: u64 = 0x1234_5678;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    match raw_check(&gate, random).await {
        Ok(r) => {
            denied(&r);
        }
        Err(e) => eprintln!("random bytes: {:?}", e.code()),
    }
    // Zero bytes is a valid, empty CheckRequest: a 400 deny.
    let r = raw_check(&gate, Vec::new()).await.unwrap();
    assert_eq!(denied(&r).0, 400);
    // A valid encoding through the raw path works.
    let r = raw_check(&gate, cookie("good").encode_to_vec())
        .await
        .unwrap();
    allowed(&r);
    assert_eq!(kratos.calls(), 1);
    still_serving(&gate).await;
}

// === headers and fields ===

#[tokio::test]
async fn malformed_cache_control_is_ignored() {
    let (kratos, gate) = setup(|c| {
        c.cache.client_max_age = sessiongate::config::ClientMaxAge::Always;
    })
    .await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    let long_commas = ",".repeat(100_000);
    let many_directives = vec!["max-age=abc"; 10_000].join(", ");
    let values = [
        "max-age=99999999999999999999999999",
        "max-age=-5",
        "max-age=\"",
        "max-age=\"\"",
        "max-age",
        "max-age=",
        "max-age=1e3",
        "max-age=0x10",
        "max-age=+5",
        "max-age= 5",
        "=,=,;;=",
        "\u{0}max-age=0",
        "max\u{a0}age=0",
        "nö-cache",
        "no-cache=",
        long_commas.as_str(),
        many_directives.as_str(),
    ];
    for v in values {
        let req = check_request(
            &[("cookie", "ory_kratos_session=good"), ("cache-control", v)],
            &[],
        );
        allowed(&client.check(req).await.unwrap().into_inner());
    }
    assert_eq!(
        kratos.calls(),
        1,
        "malformed Cache-Control forced no lookup"
    );
    // HTTP (only values hyper accepts).
    for v in [
        "max-age=99999999999999999999999999",
        "max-age=-5",
        "=,=,;;=",
    ] {
        let r = http_check(
            &gate,
            &[("cookie", "ory_kratos_session=good"), ("cache-control", v)],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(kratos.calls(), 1);
    still_serving(&gate).await;
}

#[tokio::test]
async fn absurd_context_extensions() {
    let (kratos, gate) = setup(|c| c.grpc.max_request_bytes = 4 << 20).await;
    let mut client = gate.client().await;
    let with_ext = |ext: Vec<(String, String)>| {
        let mut req = cookie("good");
        req.attributes.as_mut().unwrap().context_extensions = ext.into_iter().collect();
        req
    };
    // 10,000 unknown keys are ignored.
    let many: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    allowed(
        &client
            .check(with_ext(many.clone()))
            .await
            .unwrap()
            .into_inner(),
    );
    // …also next to a real setting.
    let mut with_aal = many.clone();
    with_aal.push(("aal".into(), "aal2".into()));
    let (status, _, _) = denied(&client.check(with_ext(with_aal)).await.unwrap().into_inner());
    assert_eq!(status, 403, "aal1 session on an aal2 route");
    // Huge values, unknown values: fail closed with 500, never echoing the value.
    let huge = "a".repeat(1 << 20);
    for (k, v) in [
        ("audience", huge.as_str()),
        ("audience", "api\r\nx-injected: 1"),
        ("aal", "aal3"),
        ("aal", "AAL2"),
        ("aal", huge.as_str()),
        ("aal", "aal2\u{0}"),
        ("anonymous", "maybe"),
        ("anonymous", huge.as_str()),
        ("client_max_age", "perhaps"),
    ] {
        let (status, headers, body) = denied(
            &client
                .check(with_ext(vec![(k.into(), v.into())]))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(status, 500, "{k}={:.20}", v);
        assert!(
            !body.contains("aaaaaaaa") && !body.contains("injected"),
            "{body}"
        );
        assert_clean_headers(&headers);
    }
    // Huge keys and empty keys are just unknown keys.
    allowed(
        &client
            .check(with_ext(vec![
                (huge.clone(), "x".into()),
                (String::new(), String::new()),
            ]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(kratos.calls(), 1);

    // HTTP: the /check query is never read as route settings (clients may set it through
    // proxies that copy their query), however absurd; the default policy applies.
    let fwd = [
        ("cookie", "ory_kratos_session=good"),
        ("x-forwarded-uri", "/orders"),
        ("x-forwarded-host", "app.example.com"),
    ];
    let r = http_check_at(&gate, "/check?aal=aal7", &fwd).await;
    assert_eq!(r.status(), 200);
    let r = http_check_at(&gate, "/check?audience=a%0D%0Ab", &fwd).await;
    assert_eq!(r.status(), 200);
    let token = r.headers()["authorization"].to_str().unwrap().to_owned();
    assert_eq!(verify(&gate, &token, "app").await["aud"], "app");
    let many: Vec<String> = (0..2000).map(|i| format!("k{i}=v{i}")).collect();
    let r = http_check_at(&gate, &format!("/check?{}", many.join("&")), &fwd).await;
    assert_eq!(r.status(), 200);
    still_serving(&gate).await;
}

#[tokio::test]
async fn empty_and_partial_check_requests() {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request as AttrRequest;
    let (kratos, gate) = setup(|_| {}).await;
    let mut client = gate.client().await;
    for req in [
        CheckRequest::default(),
        CheckRequest {
            attributes: Some(AttributeContext::default()),
        },
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest::default()),
                ..Default::default()
            }),
        },
    ] {
        let (status, _, body) = denied(&client.check(req).await.unwrap().into_inner());
        assert_eq!(status, 400);
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }
    // An HTTP request with nothing in it: no credential.
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest::default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    assert_eq!(
        denied(&client.check(req).await.unwrap().into_inner()).0,
        401
    );
    // Empty header values and empty names.
    let req = check_request(
        &[
            ("cookie", ""),
            ("x-session-token", ""),
            ("authorization", ""),
            ("", "ory_kratos_session=good"),
        ],
        &[],
    );
    assert_eq!(
        denied(&client.check(req).await.unwrap().into_inner()).0,
        401
    );
    assert_eq!(kratos.calls(), 0);
    still_serving(&gate).await;
}

#[tokio::test]
async fn header_names_with_uppercase_and_odd_characters() {
    let (kratos, gate) = setup(|_| {}).await;
    let mut client = gate.client().await;
    // Upper-case names are the same headers (Envoy lower-cases; a hostile client cannot rely on
    // case to smuggle an identity header past us).
    let req = check_request(
        &[
            ("COOKIE", "theme=dark; ory_kratos_session=good"),
            ("X-User-Id", "admin"),
            ("AUTHORIZATION", "Bearer forged.jwt.value"),
        ],
        &[],
    );
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(m.set["x-user-id"], "ident-good");
    assert!(m.set["authorization"].starts_with("Bearer ey"));
    assert_eq!(m.set["cookie"], "theme=dark");
    // Odd names carry nothing: no credential.
    let req = check_request(
        &[
            ("cookie\u{0}", "ory_kratos_session=good"),
            (" cookie", "ory_kratos_session=good"),
            ("cookie ", "ory_kratos_session=good"),
            ("x-session-token\r\n", "good"),
            ("cöokie", "ory_kratos_session=good"),
            ("\u{1F36A}", "ory_kratos_session=good"),
        ],
        &[],
    );
    let (status, headers, _) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 401);
    assert_clean_headers(&headers);
    // Odd cookie syntax around the session cookie.
    for (c, ok) in [
        ("ory_kratos_session = good", true),
        ("ory_kratos_session=\"good\"", true),
        (",,;;ory_kratos_session=good;;,,", true),
        ("ORY_KRATOS_SESSION=good", false),
        ("ory_kratos_session\u{0}=good", false),
        ("xory_kratos_session=good", false),
        ("ory_kratos_sessionx=good", false),
    ] {
        let r = client
            .check(check_request(&[("cookie", c)], &[]))
            .await
            .unwrap()
            .into_inner();
        if ok {
            allowed(&r);
        } else {
            assert_eq!(denied(&r).0, 401, "{c:?}");
        }
    }
    assert_eq!(kratos.calls(), 1);
    // HTTP: header names arrive lower-cased from hyper.
    let r = http_check(
        &gate,
        &[
            ("COOKIE", "ory_kratos_session=good"),
            ("X-User-Id", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user-id"], "ident-good");
    still_serving(&gate).await;
}

#[tokio::test]
async fn paths_without_a_leading_slash_and_odd_schemes_never_redirect_elsewhere() {
    let (_kratos, gate) = setup(|c| c.deny.login_url = Some(LOGIN.into())).await;
    let mut client = gate.client().await;
    let browser = |path: &str, proto: &str| {
        let mut req = check_request(
            &[
                ("accept", "text/html"),
                (":path", path),
                ("x-forwarded-proto", proto),
            ],
            &[],
        );
        http_of(&mut req).path = path.to_owned();
        req
    };
    for (path, proto) in [
        ("orders?x=1", "https"),
        ("http://evil.example/x", "https"),
        ("", "https"),
        ("\\\\evil.example", "https"),
        ("//evil.example/x", "https"),
        ("/ok", "javascript"),
        ("/ok", "javascript:alert(1)//"),
        ("/ok", "data:text/html,<script>"),
        ("/ok", " HTTPS "),
        ("/ok", ""),
    ] {
        let (status, headers, _) = denied(
            &client
                .check(browser(path, proto))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(status, 303, "{path:?} {proto:?}");
        assert_clean_headers(&headers);
        let loc = &headers["location"];
        assert!(loc.starts_with(LOGIN), "{loc}");
        let rt = return_to(loc).expect("return_to");
        assert!(
            rt.starts_with("https://app.example.com/") || rt.starts_with("http://app.example.com/"),
            "{path:?} {proto:?} → {rt}"
        );
    }
    // HTTP /check from a trusted proxy with the same values.
    for (uri, proto) in [("orders", "https"), ("/ok", "javascript")] {
        let r = http_check(
            &gate,
            &[
                ("accept", "text/html"),
                ("x-forwarded-uri", uri),
                ("x-forwarded-host", "app.example.com"),
                ("x-forwarded-proto", proto),
            ],
        )
        .await;
        assert_eq!(r.status(), 303);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let rt = return_to(&loc).unwrap();
        assert!(
            rt.starts_with("https://app.example.com/") || rt.starts_with("http://app.example.com/"),
            "{uri} {proto} → {rt}"
        );
    }
    still_serving(&gate).await;
}

#[tokio::test]
async fn a_host_with_crlf_gets_no_return_to() {
    let (_kratos, gate) = setup(|c| c.deny.login_url = Some(LOGIN.into())).await;
    let mut client = gate.client().await;
    for host in [
        "app.example.com\r\nSet-Cookie: pwned=1",
        "app.example.com\nx",
        "app example.com",
        "app.example.com\u{0}",
        "evil.example@app.example.com\r",
    ] {
        let mut req = check_request(&[("accept", "text/html"), (":authority", host)], &[]);
        http_of(&mut req).host = host.to_owned();
        let (status, headers, body) = denied(&client.check(req).await.unwrap().into_inner());
        assert_eq!(status, 303);
        assert_eq!(headers["location"], LOGIN, "{host:?}");
        assert_clean_headers(&headers);
        assert!(!body.contains("pwned"));
        // API clients get a 401 whose body does not echo the host.
        let mut req = check_request(&[(":authority", host)], &[]);
        http_of(&mut req).host = host.to_owned();
        let (status, headers, body) = denied(&client.check(req).await.unwrap().into_inner());
        assert_eq!(status, 401);
        assert_clean_headers(&headers);
        assert!(!body.contains("pwned") && !body.contains("example"));
    }
    // HTTP: a CR inside a header value never gets through hyper.
    let raw = b"GET /check HTTP/1.1\r\nHost: app.example.com\rSet-Cookie: pwned=1\r\nAccept: text/html\r\nConnection: close\r\n\r\n";
    let resp = raw_http(&gate, raw).await;
    assert!(
        resp.is_empty() || status_line(&resp).contains(" 400 "),
        "{resp}"
    );
    assert!(!resp.contains("pwned"));
    still_serving(&gate).await;
}

// === security properties ===

#[test]
fn jwks_never_contains_private_members_for_any_algorithm() {
    use sessiongate::token::KeySet;
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
        let (keys, private) = KeySet::generate(alg, Some("k1".into())).unwrap();
        assert!(
            private["keys"][0].get("d").is_some(),
            "{alg:?}: the private JWKS has d"
        );
        let public = keys.public_jwks();
        let text = public.to_string();
        for key in public["keys"].as_array().unwrap() {
            for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                assert!(
                    key.get(member).is_none(),
                    "{alg:?} public JWKS has {member}"
                );
            }
        }
        // Nor any private value anywhere in the document.
        for member in ["d", "p", "q", "dp", "dq", "qi"] {
            if let Some(v) = private["keys"][0].get(member).and_then(|v| v.as_str()) {
                assert!(
                    !text.contains(v),
                    "{alg:?}: {member} value in the public JWKS"
                );
            }
        }
    }
}

#[tokio::test]
async fn served_jwks_has_no_private_members_for_any_ephemeral_algorithm() {
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
        let (_kratos, gate) = setup(|c| c.jwt.ephemeral_algorithm = alg).await;
        let (status, body) = gate.get("/.well-known/jwks.json").await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for key in v["keys"].as_array().unwrap() {
            for member in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(
                    key.get(member).is_none(),
                    "{alg:?}: served JWKS has {member}"
                );
            }
        }
        let mut client = gate.client().await;
        let m = allowed(&client.check(cookie("good")).await.unwrap().into_inner());
        verify(&gate, &m.set["authorization"], "app").await;
        gate.stop().await.unwrap();
    }
}

#[tokio::test]
async fn admin_endpoints_refuse_without_the_token() {
    let (kratos, gate) = setup(|c| c.admin.token = Some(ADMIN_TOKEN.into())).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    let wrong: Vec<(&'static str, Option<String>)> = vec![
        ("authorization", None),
        ("authorization", Some("Bearer".into())),
        ("authorization", Some("Bearer ".into())),
        ("authorization", Some(format!("Basic {ADMIN_TOKEN}"))),
        ("authorization", Some(ADMIN_TOKEN.into())),
        ("authorization", Some(format!("Bearer {ADMIN_TOKEN}x"))),
        ("authorization", Some(format!("Bearer x{ADMIN_TOKEN}"))),
        (
            "authorization",
            Some(format!("Bearer {}", &ADMIN_TOKEN[1..])),
        ),
        (
            "authorization",
            Some(format!("Bearer {}", ADMIN_TOKEN.to_uppercase())),
        ),
        ("x-admin-token", Some(ADMIN_TOKEN.into())),
        ("x-authorization", Some(format!("Bearer {ADMIN_TOKEN}"))),
    ];
    for (header, value) in wrong {
        let mut admin = admin_client_with(gate.grpc, header, value.clone()).await;
        let what = format!("{header}: {value:?}");
        let e = admin
            .invalidate_all(InvalidateAllRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
        let e = admin
            .invalidate_identity(InvalidateIdentityRequest {
                identity_id: "ident-good".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
        let e = admin
            .invalidate_session(InvalidateSessionRequest {
                session_id: "sess-good".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
        let e = admin.cache_stats(CacheStatsRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{what}");
        assert!(!e.message().contains(ADMIN_TOKEN));
    }

    // The webhook.
    let url = format!("http://{}/admin/webhooks/kratos", gate.http);
    let http = reqwest::Client::new();
    let body = r#"{"identity_id":"ident-good"}"#;
    let attempts = [
        http.post(&url).body(body),
        http.post(&url).header("authorization", "Bearer").body(body),
        http.post(&url)
            .header("authorization", format!("Basic {ADMIN_TOKEN}"))
            .body(body),
        http.post(&url)
            .header("authorization", ADMIN_TOKEN)
            .body(body),
        http.post(&url)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}x"))
            .body(body),
        http.post(&url)
            .header("x-admin-token", ADMIN_TOKEN)
            .body(body),
        http.post(format!("{url}?token={ADMIN_TOKEN}")).body(body),
        http.post(format!("{url}?access_token={ADMIN_TOKEN}"))
            .body(body),
    ];
    for a in attempts {
        let r = a.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(!r.text().await.unwrap().contains(ADMIN_TOKEN));
    }
    // Other methods are not routes that could bypass the check.
    for m in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(m.clone(), &url)
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m}");
    }
    // Nothing was invalidated: the session is still a cache hit.
    allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 1);
    // With the token it works (so the refusals above were about the token).
    let r = http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut admin = admin_client(gate.grpc, ADMIN_TOKEN).await;
    admin.cache_stats(CacheStatsRequest {}).await.unwrap();
    still_serving(&gate).await;
}

#[tokio::test]
async fn forged_identity_headers_never_survive() {
    let (_kratos, gate) = setup(|c| {
        // An identity header whose pointer finds nothing in this session: removed, not passed.
        c.upstream.identity_headers.insert(
            "x-user-role".into(),
            "/identity/metadata_public/nope".into(),
        );
        c.upstream.remove_headers.push("x-legacy-user".into());
        c.routes.rules = vec![sessiongate::config::RuleConfig {
            anonymous: true,
            ..rule("public", &["/public/**"])
        }];
    })
    .await;
    let mut client = gate.client().await;
    let forged = [
        ("authorization", "Bearer forged.jwt.value"),
        ("x-user-id", "admin"),
        ("x-user-role", "superuser"),
        ("x-legacy-user", "root"),
        ("x-session-token", "good"),
    ];

    // gRPC, with a session.
    let m = allowed(
        &client
            .check(check_request(&forged, &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    assert_eq!(claims["sub"], "ident-good");
    assert_eq!(m.set["x-user-id"], "ident-good");
    assert!(!m.set.contains_key("x-user-role"));
    for h in ["x-user-role", "x-legacy-user", "x-session-token"] {
        assert!(m.remove.contains(&h.to_string()), "{h} not removed: {m:?}");
    }
    // gRPC, anonymous route without a session: every identity header removed.
    let mut forged_anon = forged.to_vec();
    forged_anon.retain(|(k, _)| *k != "x-session-token");
    let m = allowed(
        &client
            .check(check_request(&forged_anon, &[("anonymous", "true")]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(m.set.is_empty(), "{m:?}");
    for h in ["authorization", "x-user-id", "x-user-role", "x-legacy-user"] {
        assert!(m.remove.contains(&h.to_string()), "{h} not removed: {m:?}");
    }

    // HTTP /check, with a session: the 200 overwrites or lists every forged header.
    let r = http_check(&gate, &forged).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let to_remove = h["x-envoy-auth-headers-to-remove"]
        .to_str()
        .unwrap()
        .to_owned();
    let jwt = h["authorization"].to_str().unwrap();
    assert_eq!(
        verify(&gate, jwt, "app").await["sub"],
        "ident-good",
        "authorization overwritten with our JWT"
    );
    assert_eq!(h["x-user-id"], "ident-good");
    for name in ["x-user-role", "x-legacy-user", "x-session-token"] {
        assert!(
            to_remove.split(',').any(|n| n == name),
            "{name}: {to_remove}"
        );
        assert_eq!(h[name], "", "{name} must be blanked for nginx");
    }
    // HTTP /check, anonymous route (a rule the trusted proxy's path names), no session.
    let r = http_check_at(
        &gate,
        "/check/r/public",
        &[
            ("authorization", "Bearer forged.jwt.value"),
            ("x-user-id", "admin"),
            ("x-user-role", "superuser"),
            ("x-forwarded-uri", "/public"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let to_remove = h["x-envoy-auth-headers-to-remove"].to_str().unwrap();
    for name in ["authorization", "x-user-id", "x-user-role"] {
        assert!(
            to_remove.split(',').any(|n| n == name),
            "{name}: {to_remove}"
        );
        assert_eq!(h[name], "", "{name} must be blanked");
    }
    still_serving(&gate).await;
}

#[tokio::test]
async fn no_token_is_minted_for_inactive_or_expired_sessions() {
    let (kratos, gate) = setup(|_| {}).await;
    kratos.set("inactive", Behaviour::Inactive);
    let mut expired = Behaviour::active("expired");
    if let Behaviour::Active { expires_in, .. } = &mut expired {
        *expires_in = Duration::ZERO;
    }
    kratos.set("expired", expired);
    let mut client = gate.client().await;
    for cred in ["inactive", "expired"] {
        for _ in 0..2 {
            let (status, headers, body) =
                denied(&client.check(cookie(cred)).await.unwrap().into_inner());
            assert_eq!(status, 401, "{cred}");
            assert!(!headers.contains_key("authorization"));
            assert!(!body.contains("ey"), "{body}");
        }
        let r = http_check(&gate, &[("cookie", &format!("ory_kratos_session={cred}"))]).await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("authorization").is_none());
        // Not even on an anonymous route.
        let m = allowed(
            &client
                .check(check_request(
                    &[("cookie", &format!("ory_kratos_session={cred}"))],
                    &[("anonymous", "true")],
                ))
                .await
                .unwrap()
                .into_inner(),
        );
        assert!(!m.set.contains_key("authorization"), "{cred}: {m:?}");
    }
    assert_eq!(metric(&gate, "jwt_mints_total", "").await, 0.0);
    still_serving(&gate).await;
    assert_eq!(metric(&gate, "jwt_mints_total", "").await, 1.0);
}

#[test]
fn cache_keys_are_keyed_hashes() {
    use sessiongate::config::CacheConfig;
    use sessiongate::credentials::{Credential, CredentialKind};
    use sessiongate::session::cache::SessionCache;
    use sessiongate::session::{LookupContext, LookupFuture, SessionSource};
    use sessiongate::telemetry::Metrics;
    use std::sync::Arc;

    struct Never;
    impl SessionSource for Never {
        fn lookup<'a>(&'a self, _: &'a Credential, _: &'a LookupContext) -> LookupFuture<'a> {
            unreachable!("key_for never calls the source")
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cache = |secret: &str| {
        SessionCache::new(
            &CacheConfig {
                key_secret: Some(secret.into()),
                ..CacheConfig::default()
            },
            Arc::new(Never),
            Metrics::new(),
            Duration::from_secs(1),
        )
    };
    let a = cache(&"a".repeat(40));
    let a2 = cache(&"a".repeat(40));
    let b = cache(&"b".repeat(40));
    for value in ["good", "x", "a-much-longer-session-token-value-0123456789"] {
        let c = Credential::new(
            CredentialKind::Cookie,
            Some("ory_kratos_session".into()),
            value.into(),
        );
        let (ka, ka2, kb) = (a.key_for(&c), a2.key_for(&c), b.key_for(&c));
        assert_eq!(ka, ka2, "same secret, same key");
        assert_ne!(ka, kb, "different secrets, different keys");
        // Not an unkeyed hash of the value (with or without the framing).
        assert_ne!(ka, *blake3::hash(value.as_bytes()).as_bytes());
        let mut framed = b"cory_kratos_session\0".to_vec();
        framed.extend_from_slice(value.as_bytes());
        assert_ne!(ka, *blake3::hash(&framed).as_bytes());
        // The key does not carry the value.
        if value.len() >= 4 {
            assert!(
                !ka.windows(value.len().min(8))
                    .any(|w| w == &value.as_bytes()[..value.len().min(8)])
            );
        }
    }
    // Unset secret: random per process, so two caches differ.
    let r1 = SessionCache::new(
        &CacheConfig::default(),
        Arc::new(Never),
        Metrics::new(),
        Duration::from_secs(1),
    );
    let r2 = SessionCache::new(
        &CacheConfig::default(),
        Arc::new(Never),
        Metrics::new(),
        Duration::from_secs(1),
    );
    let c = Credential::new(CredentialKind::SessionToken, None, "tok".into());
    assert_ne!(r1.key_for(&c), r2.key_for(&c));
}
