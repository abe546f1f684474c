//! Property tests for the parsing surfaces that face untrusted input: cookie parsing, credential
//! extraction and cookie stripping, the Envoy `CheckRequest` mapping, configuration loading, and
//! the shape of denials. They run in the normal `cargo test` (stable); case counts are modest so
//! the file finishes in seconds. The same surfaces are fuzzed by `fuzz/` (`scripts/fuzz.sh`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use proptest::prelude::*;
use sessiongate::authz::{Authorizer, Decision, Headers, Request, RouteSettings};
use sessiongate::config::{Config, CredentialsConfig};
use sessiongate::credentials::{CookieRewrite, Credential, Extractor, parse_cookies};
use sessiongate::session::cache::SessionCache;
use sessiongate::session::{
    Answer, LookupContext, LookupFuture, Outcome, SessionSource, UpstreamError,
};
use sessiongate::telemetry::Metrics;
use sessiongate::token::{KeySet, Minter};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters that make cookie headers interesting: separators, quotes, whitespace of every
/// kind, controls, non-ASCII.
fn cookieish_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => Just('='),
        2 => Just(';'),
        2 => Just(','),
        2 => Just(' '),
        1 => Just('"'),
        1 => Just('\t'),
        1 => Just('\u{a0}'),
        1 => Just('\u{3000}'),
        1 => Just('\u{0}'),
        1 => Just('\r'),
        1 => Just('\n'),
        1 => Just('é'),
        1 => Just('_'),
        1 => any::<char>(),
    ]
}

fn cookieish() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(cookieish_char(), 0..80).prop_map(|v| v.into_iter().collect()),
        // Fragments around real session cookie names.
        proptest::collection::vec(
            prop_oneof![
                Just("ory_kratos_session".to_string()),
                Just("ory_session_proj".to_string()),
                Just("=".to_string()),
                Just("; ".to_string()),
                Just(",".to_string()),
                Just("\"".to_string()),
                Just(" ".to_string()),
                Just("\u{a0}".to_string()),
                "[a-zA-Z0-9_.-]{0,12}",
                any::<String>(),
            ],
            0..12
        )
        .prop_map(|v| v.concat()),
    ]
}

// === cookies ===

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn parse_cookies_yields_clean_names(header in cookieish()) {
        for (name, value) in parse_cookies(&header) {
            prop_assert!(!name.is_empty());
            prop_assert!(
                !name.chars().any(|c| c == ';' || c == ',' || c == '=' || c.is_whitespace() || c.is_control()),
                "name {name:?} from {header:?}"
            );
            prop_assert!(name.is_ascii(), "name {name:?}");
            // `;` separates cookies; a `,` belongs to the value it stands in (RFC 6265: one
            // Cookie header; Envoy joins HTTP/2 crumbs with "; ").
            prop_assert!(!value.contains(';'), "value {value:?}");
        }
    }

    #[test]
    fn well_formed_cookie_lists_round_trip(
        pairs in proptest::collection::vec(
            ("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", "[A-Za-z0-9!#$%&'()*+./:<>?@\\[\\]^_`{|}~-]{0,24}"),
            0..20,
        ),
        sep in prop_oneof![Just("; "), Just(";"), Just(" ;  ")],
    ) {
        let header = pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(sep);
        let got: Vec<(String, String)> = parse_cookies(&header)
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        prop_assert_eq!(got, pairs);
    }

    #[test]
    fn a_comma_never_smuggles_a_session_cookie(
        before in "[a-z]{1,8}=[a-z0-9]{0,8}",
        marker in "[A-Z]{12}",
    ) {
        let header = format!("{before},ory_kratos_session={marker}");
        for (name, value) in parse_cookies(&header) {
            prop_assert_ne!(name, "ory_kratos_session");
            prop_assert!(value.contains(&marker), "kept inside the first cookie's value");
        }
    }
}

// === credential extraction ===

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cookie".to_string()),
        Just("Cookie".to_string()),
        Just("COOKIE".to_string()),
        Just("x-session-token".to_string()),
        Just("X-Session-Token".to_string()),
        Just("authorization".to_string()),
        Just("Authorization".to_string()),
        Just("x-other".to_string()),
        "[a-zA-Z:-]{1,20}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        cookieish(),
        Just("Bearer ".to_string())
            .prop_flat_map(|b| cookieish().prop_map(move |v| format!("{b}{v}"))),
        "(bearer|BEARER|Bearer|Basic)  ?[ -~]{0,40}",
        "[!-~]{0,300}",
        any::<String>(),
    ]
}

fn headers_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((header_name(), header_value()), 0..8)
}

fn headers(pairs: &[(String, String)]) -> Headers {
    let mut h = Headers::default();
    for (k, v) in pairs {
        h.append(k, v);
    }
    h
}

fn extractor(max_length: usize, prefixes: bool) -> Extractor {
    Extractor::new(&CredentialsConfig {
        cookie_prefixes: if prefixes {
            vec!["ory_session_".into()]
        } else {
            vec![]
        },
        max_length,
        ..CredentialsConfig::default()
    })
}

/// A lenient parse of a rewritten Cookie header, as an upstream framework might do it: split on
/// `;` and `,`, trim whitespace, take the name before `=` (no token-character check).
fn lenient_names(v: &str) -> Vec<String> {
    v.split([';', ','])
        .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
        .map(|n| n.trim().to_owned())
        .collect()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn extraction_is_bounded_and_printable(
        pairs in headers_strategy(),
        max_length in 16usize..120,
        prefixes in any::<bool>(),
    ) {
        let e = extractor(max_length, prefixes);
        if let Ok(c) = e.extract(&headers(&pairs)) {
            let v = c.expose();
            prop_assert!(!v.is_empty());
            prop_assert!(v.len() <= max_length, "{} > {max_length}", v.len());
            prop_assert!(v.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{v:?}");
            let debug = format!("{c:?}");
            prop_assert!(debug.contains("<redacted>"));
            if v.len() >= 24 {
                prop_assert!(!debug.contains(v), "Debug shows the value: {debug}");
            }
        }
    }

    #[test]
    fn stripping_removes_every_session_cookie(
        pairs in headers_strategy(),
        marker in "[A-Z]{12}",
        before in cookieish(),
        after in cookieish(),
        prefixes in any::<bool>(),
    ) {
        let e = extractor(4096, prefixes);
        let mut pairs = pairs;
        // Keep the marker unique: other values must not contain it by chance.
        for (_, v) in &mut pairs {
            *v = v.replace(&marker, "");
        }
        let before = before.replace(&marker, "");
        let after = after.replace(&marker, "");
        pairs.push(("cookie".into(), format!("{before};ory_kratos_session={marker};{after}")));
        let h = headers(&pairs);
        match e.strip_session_cookies(&h) {
            CookieRewrite::Unchanged => prop_assert!(false, "a session cookie was present"),
            CookieRewrite::Remove => {}
            CookieRewrite::Replace(v) => {
                prop_assert!(!v.contains(&marker), "session value survives in {v:?}");
                for (name, _) in parse_cookies(&v) {
                    prop_assert!(!e.is_session_cookie(name), "{name} survives in {v:?}");
                }
                for name in lenient_names(&v) {
                    prop_assert!(!e.is_session_cookie(&name), "{name:?} survives (lenient) in {v:?}");
                }
            }
        }
    }

    #[test]
    fn an_extracted_cookie_is_always_stripped(pairs in headers_strategy(), prefixes in any::<bool>()) {
        let e = extractor(4096, prefixes);
        let h = headers(&pairs);
        let rewrite = e.strip_session_cookies(&h);
        if let Ok(c) = e.extract(&h)
            && c.cookie_name.is_some()
        {
            prop_assert_ne!(&rewrite, &CookieRewrite::Unchanged);
            if let CookieRewrite::Replace(v) = &rewrite {
                for (name, value) in parse_cookies(v) {
                    prop_assert!(!(e.is_session_cookie(name) && value == c.expose()));
                }
            }
        }
        if let CookieRewrite::Replace(v) = &rewrite {
            prop_assert!(!v.is_empty());
            for (name, _) in parse_cookies(v) {
                prop_assert!(!e.is_session_cookie(name), "{name} survives in {v:?}");
            }
        }
    }
}

// === CheckRequest mapping ===

fn check(http: HttpRequest, ext: HashMap<String, String>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn to_request_never_panics_on_decoded_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        use prost::Message;
        if let Ok(req) = CheckRequest::decode(&bytes[..]) {
            let _ = sessiongate::grpc::to_request(req);
        }
    }

    #[test]
    fn to_request_round_trips_path_and_authority(
        path in any::<String>(),
        authority in any::<String>(),
        field_path in proptest::option::of(any::<String>()),
        field_host in proptest::option::of(any::<String>()),
        raw in any::<bool>(),
        other in proptest::collection::hash_map("[a-z-]{1,12}", any::<String>(), 0..6),
        ext in proptest::collection::hash_map(any::<String>(), any::<String>(), 0..6),
    ) {
        let mut all: Vec<(String, String)> = other.into_iter().collect();
        all.push((":path".into(), path.clone()));
        all.push((":authority".into(), authority.clone()));
        let mut http = HttpRequest {
            path: field_path.clone().unwrap_or_default(),
            host: field_host.clone().unwrap_or_default(),
            ..Default::default()
        };
        if raw {
            http.header_map = Some(HeaderMap {
                headers: all
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.clone(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            });
        } else {
            http.headers = all.into_iter().collect();
        }
        let r = sessiongate::grpc::to_request(check(http, ext)).expect("an HTTP check maps");
        let want_path = field_path.filter(|p| !p.is_empty()).unwrap_or(path);
        prop_assert_eq!(&r.path, &want_path);
        let want_host = field_host.filter(|h| !h.is_empty()).unwrap_or(authority);
        if !want_host.is_empty() {
            prop_assert_eq!(&r.host, &want_host);
        }
    }
}

// === configuration ===

/// Secrets YAML keeps as strings.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z][A-Za-z0-9]{7,47}",
        "[A-Za-z][A-Za-z0-9+/]{19,43}={0,2}",
    ]
}

/// Well-formed YAML that puts `secret` under `cache.key_secret` or `admin.token`, with shape
/// and semantic problems around it.
fn wellformed_yaml_with_secret(s: String) -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        format!("cache:\n  key_secret: {s}\n"),
        format!("cache:\n  key_secret: \"{s}\"\n"),
        format!("cache:\n  key_secret: [{s}]\n"),
        format!("cache:\n  key_secret: {{a: {s}}}\n"),
        format!("cache:\n  key_secret: {s}\n  ttl: nonsense\n"),
        format!("cache:\n  key_secret: {s}\n  bogus_field: 1\n"),
        format!("cache:\n  key_secret: {s}\n  max_bytes: 1\n"),
        format!("admin:\n  token: {s}\n"),
        format!("admin:\n  token: \"{s}\"\n"),
        format!("admin:\n  token: [{s}]\n"),
        format!("admin:\n  token: {s}\n  token_file: /nonexistent/file\n"),
        format!("admin:\n  tokn: {s}\n"),
        format!("admin:\n  token: {s}\nwhoami:\n  timeout: 0s\n"),
    ])
}

/// Broken YAML with the secret on or next to the broken line.
fn broken_yaml_with_secret(s: String) -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        format!("cache:\n  key_secret: {s}\n  key_secret: other\n"),
        format!("cache:\n  key_secret: \"{s}\n"),
        format!("cache: {{key_secret: {s}\n"),
        format!("admin:\n  token: \"{s}\n"),
        format!("admin:\n  token: '{s}\n  other: x\n"),
        format!("admin:\n  token: {s}\n   bad_indent: 1\n"),
        format!("admin:\n  token: {s}: {s}\n"),
        format!("admin:\n  token: {s}\n\t- tab\n"),
        format!("{s}\n"),
    ])
}

fn config_messages(text: &str) -> Vec<String> {
    match Config::from_yaml(text) {
        Err(e) => vec![e.to_string(), format!("{e:?}")],
        Ok(c) => c
            .problems()
            .iter()
            .flat_map(|p| [p.to_string(), format!("{p:?}")])
            .chain(c.validate().err().map(|e| e.to_string()))
            .collect(),
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn config_parsing_never_panics(text in prop_oneof![
        any::<String>(),
        "[a-z_:\\- \n\\[\\]{}0-9.\"']{0,200}",
        Just("grpc:\n  max_request_bytes: 99999999999999999999999\n".to_string()),
    ]) {
        if let Ok(c) = Config::from_yaml(&text) {
            let _ = c.problems();
        }
    }

    #[test]
    fn config_errors_never_echo_secrets(
        yaml in secret().prop_flat_map(|s| (Just(s.clone()), wellformed_yaml_with_secret(s)))
    ) {
        let (secret, text) = yaml;
        for m in config_messages(&text) {
            prop_assert!(!m.contains(&secret), "secret echoed for {text:?}: {m}");
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn yaml_syntax_errors_never_echo_secrets(
        yaml in secret().prop_flat_map(|s| (Just(s.clone()), broken_yaml_with_secret(s)))
    ) {
        let (secret, text) = yaml;
        for m in config_messages(&text) {
            prop_assert!(!m.contains(&secret), "secret echoed for {text:?}: {m}");
        }
    }
}

/// A value of the wrong type where a secret (or its section) belongs: a numeric token that
/// YAML reads as a number, or the token written directly under `admin:` / `cache:`.
#[test]
fn wrong_type_errors_never_echo_the_value() {
    for (text, secret) in [
        ("admin:\n  token: 123456789012345\n", "123456789012345"),
        ("cache:\n  key_secret: 123456789012345\n", "123456789012345"),
        ("admin:\n  token: 12345678901.5\n", "12345678901"),
        (
            "admin: s3cr3t-admin-token-value\n",
            "s3cr3t-admin-token-value",
        ),
        (
            "cache: s3cr3t-key-secret-value-0123456789\n",
            "s3cr3t-key-secret-value",
        ),
    ] {
        for m in config_messages(text) {
            assert!(!m.contains(secret), "{text:?}: {m}");
        }
    }
}

// === denials ===

/// Answers by the credential's first letter.
struct ScriptedSource;

impl SessionSource for ScriptedSource {
    fn lookup<'a>(&'a self, credential: &'a Credential, _: &'a LookupContext) -> LookupFuture<'a> {
        let v = credential.expose().to_owned();
        Box::pin(async move {
            let outcome = match v.as_bytes()[0] {
                b'u' => Outcome::Unauthenticated,
                b's' => Outcome::StepUpRequired {
                    redirect_browser_to: None,
                },
                b'r' => {
                    return Err(UpstreamError::RateLimited {
                        retry_after: Some("3".into()),
                    });
                }
                b'x' => return Err(UpstreamError::Unavailable("status")),
                b'o' => return Err(UpstreamError::Overloaded),
                _ => {
                    let body = serde_json::json!({
                        "id": "sess-p", "active": true, "expires_at": "2999-01-01T00:00:00Z",
                        "authenticator_assurance_level": "aal1",
                        "identity": {"id": "ident-p"}
                    });
                    let p = sessiongate::session::Projection::default();
                    let s = p
                        .apply(body.to_string().as_bytes(), std::time::SystemTime::now())
                        .unwrap();
                    Outcome::Active(Arc::new(s))
                }
            };
            Ok(Answer {
                outcome,
                cache_for: None,
            })
        })
    }
}

fn authorizer() -> &'static (tokio::runtime::Runtime, Authorizer) {
    static A: OnceLock<(tokio::runtime::Runtime, Authorizer)> = OnceLock::new();
    A.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut config = Config::default();
        config.deny.login_url = Some("https://login.example.com/ui/login".into());
        config.cache.negative_ttl = Duration::ZERO;
        let metrics = Metrics::new();
        let authorizer = {
            let _g = rt.enter();
            let (keys, _) = KeySet::generate(config.jwt.ephemeral_algorithm, None).unwrap();
            let minter = Arc::new(Minter::new(&config.jwt, keys, 1 << 20, metrics.clone()));
            let cache = Arc::new(SessionCache::new(
                &config.cache,
                Arc::new(ScriptedSource),
                metrics.clone(),
                Duration::from_secs(1),
            ));
            let routes = sessiongate::app::compile_routes(&config.routes).unwrap();
            Authorizer::new(
                &config,
                routes,
                Default::default(),
                Default::default(),
                cache,
                minter,
                metrics,
            )
        };
        (rt, authorizer)
    })
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn deny_bodies_and_headers_never_contain_the_credential(
        kind in "[usrxoa]",
        rest in "[A-Za-z0-9_-]{10,60}",
        place in 0..4u8,
        accept in prop_oneof![Just("application/json"), Just("text/html"), Just("*/*")],
        aal2 in any::<bool>(),
        junk in cookieish(),
    ) {
        let credential = format!("{kind}{rest}");
        let mut h = Headers::default();
        h.append("accept", accept);
        match place {
            0 => h.append("cookie", &format!("{};ory_kratos_session={credential}", junk.replace(&credential, ""))),
            1 => h.append("x-session-token", &credential),
            2 => h.append("authorization", &format!("Bearer {credential}")),
            // Too long: denied before any lookup.
            _ => h.append("x-session-token", &credential.repeat(100)),
        }
        let req = Request {
            method: "GET".into(),
            scheme: "https".into(),
            host: "app.example.com".into(),
            path: "/orders?page=2".into(),
            headers: h,
            route: Ok(RouteSettings {
                aal: aal2.then_some(sessiongate::session::Aal::Aal2),
                ..RouteSettings::default()
            }),
            source: None,
        };
        let (rt, a) = authorizer();
        let decision = rt.block_on(a.check(&req));
        if let Decision::Deny(d) = &decision {
            prop_assert!(!d.body.contains(&credential), "body: {}", d.body);
            prop_assert!(!d.body.contains(&rest), "body: {}", d.body);
            for (k, v) in &d.headers {
                prop_assert!(!v.contains(&rest), "{k}: {v}");
            }
            // Over gRPC the same denial carries the same body and headers.
            let resp = sessiongate::grpc::to_response(decision.clone());
            let text = format!("{resp:?}");
            prop_assert!(!text.contains(&rest), "{text}");
        }
    }
}
