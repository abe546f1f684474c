//! `Check` driven by a gRPC client this project did not write: **grpcurl** (Go, grpc-go,
//! protobuf-go's JSON mapping), built from the Go module proxy by `scripts/grpcurl.sh build`
//! (cached under `~/.cache/sessiongate/grpcurl-<ver>/`; `SESSIONGATE_GRPCURL_BIN` overrides).
//!
//! sessiongate's reflection lists only its own services, so grpcurl gets Envoy's schema from
//! the descriptor set the `envoy-types` crate ships (`src/generated/types.bin`, located through
//! `cargo metadata` like `tests/deploy_configs.rs`; `ENVOY_TYPES_DESCRIPTOR_SET` overrides) via
//! `-protoset`. Requests are written as proto3 JSON (what an operator would type, see
//! docs/grpcurl.md) and the answers are asserted on grpcurl's JSON output, so both directions of
//! the wire encoding are checked by an independent implementation.
//!
//! If grpcurl cannot be built (no Go, no proxy access) these tests fail with the build log;
//! they never skip silently.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Value, json};
use support::upstream::{Behaviour, FakeKratos};
use support::{Gate, config, verify};
use tokio::io::AsyncWriteExt;

const CHECK: &str = "envoy.service.auth.v3.Authorization/Check";
const OVERWRITE: &str = "OVERWRITE_IF_EXISTS_OR_ADD";

// ─────────────────────────────── grpcurl and the schema ───────────────────────────────

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The grpcurl binary: built once per test process (the script's lock covers other processes).
/// A failed build is remembered, so every test fails with the same log without rebuilding.
fn grpcurl_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(build_grpcurl) {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

fn build_grpcurl() -> Result<PathBuf, String> {
    let script = manifest_dir().join("scripts").join("grpcurl.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("build")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "building grpcurl failed ({}): this test needs Go and access to the Go module \
             proxy, or SESSIONGATE_GRPCURL_BIN=/path/to/grpcurl.\n--- stderr ---\n{stderr}\n\
             --- stdout ---\n{stdout}",
            out.status
        ));
    }
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !(path.is_absolute() && path.is_file()) {
        return Err(format!(
            "scripts/grpcurl.sh build: last stdout line is not a binary path: {stdout:?}\n{stderr}"
        ));
    }
    Ok(path)
}

/// Envoy's descriptor set (contains `envoy/service/auth/v3/external_auth.proto` and its
/// imports), from the `envoy-types` package this crate resolved.
fn protoset() -> &'static Path {
    static SET: OnceLock<PathBuf> = OnceLock::new();
    SET.get_or_init(|| {
        if let Some(p) = std::env::var_os("ENVOY_TYPES_DESCRIPTOR_SET") {
            return PathBuf::from(p);
        }
        let meta = cargo_metadata(true)
            .or_else(|offline| cargo_metadata(false).map_err(|e| format!("{offline}; {e}")))
            .unwrap_or_else(|e| panic!("cargo metadata: {e}"));
        let root = meta["resolve"]["root"].as_str().expect("resolve.root");
        let deps: BTreeSet<&str> = meta["resolve"]["nodes"]
            .as_array()
            .expect("resolve.nodes")
            .iter()
            .find(|n| n["id"] == root)
            .and_then(|n| n["dependencies"].as_array())
            .expect("root node dependencies")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let pkg = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| {
                p["name"] == "envoy-types" && p["id"].as_str().is_some_and(|id| deps.contains(id))
            })
            .expect("envoy-types is a dependency of sessiongate in cargo metadata");
        let manifest = Path::new(pkg["manifest_path"].as_str().expect("manifest_path"));
        let set = manifest.parent().unwrap().join("src/generated/types.bin");
        assert!(
            set.is_file(),
            "{} missing (envoy-types layout changed?)",
            set.display()
        );
        set
    })
}

fn cargo_metadata(offline: bool) -> Result<Value, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest_dir().join("Cargo.toml"));
    if offline {
        cmd.arg("--offline");
    }
    let out = cmd.output().map_err(|e| format!("run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Builds grpcurl and locates the schema off the async runtime (the build may take a minute).
async fn tools() -> (PathBuf, PathBuf) {
    tokio::task::spawn_blocking(|| (grpcurl_bin().to_owned(), protoset().to_owned()))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// What a grpcurl process did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs grpcurl with `args` and `stdin` as its input.
async fn run_raw(args: &[&str], stdin: Option<&str>) -> Run {
    let (bin, _) = tools().await;
    let mut child = tokio::process::Command::new(&bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("grpcurl finished within 30 s")
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs grpcurl; returns stdout, panicking on a non-zero exit.
async fn run(args: &[&str], stdin: Option<&str>) -> String {
    let r = run_raw(args, stdin).await;
    assert!(
        r.ok,
        "grpcurl {args:?} failed:\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// `Check` through grpcurl: `request` is a proto3-JSON `CheckRequest`; returns grpcurl's
/// proto3-JSON `CheckResponse`.
async fn check(gate: &Gate, request: &Value) -> Value {
    let (_, set) = tools().await;
    let addr = gate.grpc.to_string();
    let out = run(
        &[
            "-plaintext",
            "-protoset",
            set.to_str().unwrap(),
            "-format",
            "json",
            "-emit-defaults",
            "-d",
            "@",
            &addr,
            CHECK,
        ],
        Some(&request.to_string()),
    )
    .await;
    if std::env::var_os("GRPCURL_E2E_DUMP").is_some() {
        eprintln!("request: {request:#}\nresponse: {out}");
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("grpcurl output is not JSON ({e}): {out}"))
}

/// An Envoy-shaped `CheckRequest` in proto3 JSON, as Envoy's ext_authz filter fills it for an
/// HTTP/1.1 request (pseudo-headers included, lower-cased keys).
fn envoy_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> Value {
    let mut h: BTreeMap<&str, &str> = [
        (":authority", "app.example.com"),
        (":path", "/orders?page=2"),
        (":method", "GET"),
        (":scheme", "https"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6f2c1d4e-grpcurl"),
        ("user-agent", "curl/8.5.0"),
    ]
    .into_iter()
    .collect();
    h.extend(headers.iter().copied());
    json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}}},
            "destination": {"address": {"socketAddress": {"address": "10.0.0.2", "portValue": 8080}}},
            "request": {
                "time": "2026-01-02T03:04:05.678Z",
                "http": {
                    "id": "1473028340297451827",
                    "method": "GET",
                    "headers": h,
                    "path": "/orders?page=2",
                    "host": "app.example.com",
                    "scheme": "https",
                    "protocol": "HTTP/1.1"
                }
            },
            "contextExtensions": extensions.iter().copied().collect::<BTreeMap<_, _>>(),
            "metadataContext": {}
        }
    })
}

/// An allow's `okResponse`, asserting `status.code` 0 and that every header overwrites.
/// Returns (set headers, headers to remove).
fn allowed(r: &Value) -> (BTreeMap<String, String>, BTreeSet<String>) {
    assert_eq!(r["status"]["code"], 0, "expected allow: {r:#}");
    assert!(r.get("deniedResponse").is_none(), "{r:#}");
    let ok = &r["okResponse"];
    assert!(ok.is_object(), "no okResponse: {r:#}");
    let mut set = BTreeMap::new();
    for h in ok["headers"].as_array().expect("okResponse.headers") {
        assert_plain_header(h);
        let key = h["header"]["key"].as_str().unwrap().to_owned();
        let value = h["header"]["value"].as_str().unwrap().to_owned();
        assert!(set.insert(key, value).is_none(), "header set twice: {r:#}");
    }
    let remove: BTreeSet<String> = ok["headersToRemove"]
        .as_array()
        .expect("okResponse.headersToRemove")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        !remove.iter().any(|h| set.contains_key(h)),
        "a header both set and removed: {r:#}"
    );
    // Nothing else is touched: no response headers, no query rewriting.
    for field in [
        "responseHeadersToAdd",
        "queryParametersToSet",
        "queryParametersToRemove",
    ] {
        assert_eq!(ok[field], json!([]), "okResponse.{field}: {r:#}");
    }
    assert_eq!(ok["dynamicMetadata"], Value::Null, "{r:#}");
    // Envoy's dynamic metadata, as grpcurl decodes it from the wire: the rule always, and for
    // a session exactly its identity, session and AAL (nothing else, never a credential).
    let md = r["dynamicMetadata"]["sessiongate"]
        .as_object()
        .unwrap_or_else(|| panic!("dynamicMetadata.sessiongate: {r:#}"));
    let keys: BTreeSet<&str> = md.keys().map(String::as_str).collect();
    assert!(
        keys == BTreeSet::from(["rule"])
            || keys == BTreeSet::from(["aal", "identity_id", "rule", "session_id"]),
        "{r:#}"
    );
    assert!(md.values().all(Value::is_string), "{r:#}");
    (set, remove)
}

/// A deny: (gRPC code, HTTP status name, headers, body).
fn denied(r: &Value) -> (i64, String, BTreeMap<String, String>, String) {
    let code = r["status"]["code"].as_i64().expect("status.code");
    assert_ne!(code, 0, "expected deny: {r:#}");
    assert!(r.get("okResponse").is_none(), "{r:#}");
    let d = &r["deniedResponse"];
    let headers = d["headers"]
        .as_array()
        .expect("deniedResponse.headers")
        .iter()
        .map(|h| {
            assert_plain_header(h);
            (
                h["header"]["key"].as_str().unwrap().to_owned(),
                h["header"]["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (
        code,
        d["status"]["code"]
            .as_str()
            .expect("HTTP status enum name")
            .to_owned(),
        headers,
        d["body"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A `HeaderValueOption` that overwrites with a UTF-8 `value` (no `raw_value`, no deprecated
/// `append`).
fn assert_plain_header(h: &Value) {
    assert_eq!(h["appendAction"], OVERWRITE, "{h}");
    assert_eq!(h["append"], Value::Null, "deprecated `append` set: {h}");
    assert_eq!(h["header"]["rawValue"], "", "{h}");
    assert_eq!(h["keepEmptyValue"], false, "{h}");
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn keys(m: &BTreeMap<String, String>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

// ─────────────────────────────── tests ───────────────────────────────

#[tokio::test]
async fn allow_through_grpcurl_sets_exact_header_mutations() {
    tools().await;
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("ada"));
    let gate = Gate::start(config(&kratos.url())).await;

    let r = check(
        &gate,
        &envoy_request(
            &[
                ("cookie", "theme=dark; ory_kratos_session=good; lang=en"),
                ("authorization", "Bearer forged.jwt.value"),
                ("x-user-id", "admin"),
            ],
            &[],
        ),
    )
    .await;
    let (set, remove) = allowed(&r);
    assert_eq!(
        keys(&set),
        ["authorization", "cookie", "x-user-id"],
        "{r:#}"
    );
    assert_eq!(
        set["x-user-id"], "ident-ada",
        "spoofed identity header overwritten"
    );
    assert_eq!(
        set["cookie"], "theme=dark; lang=en",
        "session cookie stripped, others kept"
    );
    assert_eq!(remove, names(&["x-session-token"]), "{r:#}");

    let claims = verify(&gate, &set["authorization"], "app").await;
    assert_eq!(claims["sub"], "ident-ada");
    assert_eq!(claims["sid"], "sess-ada");
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["aal"], "aal1");
    assert_eq!(claims["aud"], "app");

    // Kratos saw only the session cookie and the request id.
    let got = kratos.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].cookie.as_deref(), Some("ory_kratos_session=good"));
    assert_eq!(got[0].request_id.as_deref(), Some("6f2c1d4e-grpcurl"));

    // A second grpcurl process hits the cache: same token, no second whoami call.
    let again = check(
        &gate,
        &envoy_request(&[("cookie", "ory_kratos_session=good")], &[]),
    )
    .await;
    let (set2, remove2) = allowed(&again);
    assert_eq!(set2["authorization"], set["authorization"]);
    assert_eq!(keys(&set2), ["authorization", "x-user-id"], "{again:#}");
    assert_eq!(
        remove2,
        names(&["x-session-token", "cookie"]),
        "only the session cookie: the whole header goes: {again:#}"
    );
    assert_eq!(kratos.calls(), 1);
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn pseudo_headers_are_understood_and_commas_are_not_cookie_separators() {
    tools().await;
    let kratos = FakeKratos::start().await;
    kratos.set("dup", Behaviour::active("dup"));
    let mut cfg = config(&kratos.url());
    cfg.deny.login_url = Some("https://auth.example.com/login".into());
    let gate = Gate::start(cfg).await;

    // Only pseudo-headers carry host, path and method (the typed fields left empty): the
    // browser redirect's return_to is built from them.
    let mut req = envoy_request(
        &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        &[],
    );
    let http = req["attributes"]["request"]["http"]
        .as_object_mut()
        .unwrap();
    for field in ["method", "path", "host", "scheme"] {
        http.remove(field);
    }
    http["headers"][":path"] = json!("/cart?item=7");
    http["headers"][":authority"] = json!("shop.example.com");
    let r = check(&gate, &req).await;
    let (code, status, headers, _) = denied(&r);
    assert_eq!((code, status.as_str()), (7, "SeeOther"), "{r:#}");
    assert_eq!(
        headers["location"],
        "https://auth.example.com/login?return_to=https%3A%2F%2Fshop.example.com%2Fcart%3Fitem%3D7"
    );

    // A `,` inside a cookie header is part of a value, never a separator (RFC 6265 allows one
    // Cookie header per request, and Envoy joins HTTP/2 cookie crumbs with "; "): otherwise a
    // value planted in another cookie (`a=1, ory_kratos_session=…`) could smuggle a session.
    let r = check(
        &gate,
        &envoy_request(&[("cookie", "a=1, ory_kratos_session=dup")], &[]),
    )
    .await;
    let (_, status, _, _) = denied(&r);
    assert_eq!(status, "Unauthorized", "{r:#}");
    assert_eq!(kratos.calls(), 0, "nothing was taken for a session cookie");
    // Cookie crumbs as Envoy joins them.
    let r = check(
        &gate,
        &envoy_request(&[("cookie", "a=1,2; ory_kratos_session=dup")], &[]),
    )
    .await;
    let (set, remove) = allowed(&r);
    assert_eq!(
        keys(&set),
        ["authorization", "cookie", "x-user-id"],
        "{r:#}"
    );
    assert_eq!(set["cookie"], "a=1,2", "other cookies kept as they came");
    assert_eq!(remove, names(&["x-session-token"]), "{r:#}");
    assert_eq!(
        verify(&gate, &set["authorization"], "app").await["sub"],
        "ident-dup"
    );
    assert_eq!(
        kratos.received()[0].cookie.as_deref(),
        Some("ory_kratos_session=dup")
    );
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn raw_header_map_only_is_read() {
    tools().await;
    let kratos = FakeKratos::start().await;
    kratos.set("raw", Behaviour::active("raw"));
    let gate = Gate::start(config(&kratos.url())).await;

    // `encode_raw_headers: true`: `headers` is empty and every value is bytes (base64 in JSON)
    // in `header_map`, one entry per header line, non-UTF-8 allowed.
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let mut req = envoy_request(&[], &[]);
    let http = &mut req["attributes"]["request"]["http"];
    http["headers"] = json!({});
    http["headerMap"] = json!({"headers": [
        {"key": ":authority", "rawValue": b64(b"app.example.com")},
        {"key": ":path", "rawValue": b64(b"/orders?page=2")},
        {"key": ":method", "rawValue": b64(b"GET")},
        {"key": "cookie", "rawValue": b64(b"a=1")},
        {"key": "cookie", "rawValue": b64(b"ory_kratos_session=raw")},
        {"key": "user-agent", "rawValue": b64(b"\xff\xfe binary")},
    ]});
    let r = check(&gate, &req).await;
    let (set, remove) = allowed(&r);
    assert_eq!(
        keys(&set),
        ["authorization", "cookie", "x-user-id"],
        "{r:#}"
    );
    assert_eq!(set["cookie"], "a=1");
    assert_eq!(set["x-user-id"], "ident-raw");
    assert_eq!(remove, names(&["x-session-token"]), "{r:#}");
    assert_eq!(
        verify(&gate, &set["authorization"], "app").await["sub"],
        "ident-raw"
    );
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn context_extensions_audience_anonymous_and_aal() {
    tools().await;
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("bob"));
    let gate = Gate::start(config(&kratos.url())).await;

    // audience → aud.
    let r = check(
        &gate,
        &envoy_request(
            &[("cookie", "ory_kratos_session=good")],
            &[("audience", "billing")],
        ),
    )
    .await;
    let (set, _) = allowed(&r);
    let claims = verify(&gate, &set["authorization"], "billing").await;
    assert_eq!(claims["aud"], "billing");
    assert_eq!(claims["sub"], "ident-bob");

    // anonymous without a session: allowed, nothing set, spoofable headers removed.
    let r = check(
        &gate,
        &envoy_request(
            &[("authorization", "Bearer x.y.z"), ("x-user-id", "root")],
            &[("anonymous", "true")],
        ),
    )
    .await;
    let (set, remove) = allowed(&r);
    assert!(set.is_empty(), "{r:#}");
    assert_eq!(
        remove,
        names(&["x-session-token", "authorization", "x-user-id"]),
        "{r:#}"
    );

    // aal2 route with an aal1 session: 403 with the step-up hint.
    let r = check(
        &gate,
        &envoy_request(&[("cookie", "ory_kratos_session=good")], &[("aal", "aal2")]),
    )
    .await;
    let (code, status, _, body) = denied(&r);
    assert_eq!((code, status.as_str()), (7, "Forbidden"), "{r:#}");
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert!(body.to_string().contains("session_aal2_required"), "{body}");
    assert!(
        !body.to_string().contains("good"),
        "body echoes the credential: {body}"
    );
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn no_credential_is_denied_401_with_www_authenticate() {
    tools().await;
    let kratos = FakeKratos::start().await;
    let gate = Gate::start(config(&kratos.url())).await;
    let r = check(
        &gate,
        &envoy_request(&[("accept", "application/json")], &[]),
    )
    .await;
    let (code, status, headers, body) = denied(&r);
    assert_eq!(code, 16, "UNAUTHENTICATED: {r:#}");
    assert_eq!(status, "Unauthorized");
    assert_eq!(r["status"]["message"], "no_credential", "{r:#}");
    let want: BTreeMap<String, String> = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        ("www-authenticate", "Bearer realm=\"sessiongate\""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(headers, want, "{r:#}");
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"]["code"], 401, "{body}");
    assert_eq!(body["error"]["status"], "Unauthorized", "{body}");
    assert_eq!(kratos.calls(), 0, "no credential, no whoami call");
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_through_grpcurl() {
    tools().await;
    let kratos = FakeKratos::start().await;
    let mut cfg = config(&kratos.url());
    cfg.admin.token = Some("x".repeat(20));
    let gate = Gate::start(cfg).await;
    let addr = gate.grpc.to_string();

    // Health by reflection alone (no protoset).
    let out = run(&["-plaintext", &addr, "grpc.health.v1.Health/Check"], None).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "SERVING", "{out}");

    let out = run(&["-plaintext", &addr, "list"], None).await;
    let services: BTreeSet<&str> = out.lines().map(str::trim).collect();
    assert!(services.contains("sessiongate.admin.v1.Admin"), "{out}");
    assert!(services.contains("grpc.health.v1.Health"), "{out}");
    // Envoy's service is served but not reflected: that is why callers pass -protoset.
    assert!(
        !services.contains("envoy.service.auth.v3.Authorization"),
        "{out}"
    );

    // The admin API answers grpcurl by reflection, behind its bearer token.
    let token = format!("authorization: Bearer {}", "x".repeat(20));
    let out = run(
        &[
            "-plaintext",
            "-emit-defaults",
            "-H",
            &token,
            &addr,
            "sessiongate.admin.v1.Admin/CacheStats",
        ],
        None,
    )
    .await;
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert!(stats.get("entries").is_some(), "{out}");
    let r = run_raw(
        &["-plaintext", &addr, "sessiongate.admin.v1.Admin/CacheStats"],
        None,
    )
    .await;
    assert!(!r.ok, "admin call without a token succeeded: {}", r.stdout);
    assert!(r.stderr.contains("Unauthenticated"), "{}", r.stderr);
    gate.stop().await.unwrap();

    // Without an admin token the admin service is neither served nor listed.
    let gate = Gate::start(config(&kratos.url())).await;
    let addr = gate.grpc.to_string();
    let out = run(&["-plaintext", &addr, "list"], None).await;
    assert!(out.contains("grpc.health.v1.Health"), "{out}");
    assert!(!out.contains("sessiongate.admin.v1.Admin"), "{out}");
    let r = run_raw(
        &[
            "-plaintext",
            "-H",
            &token,
            &addr,
            "sessiongate.admin.v1.Admin/CacheStats",
        ],
        None,
    )
    .await;
    assert!(
        !r.ok,
        "admin API served without a configured token: {}",
        r.stdout
    );
    assert!(r.stderr.contains("does not expose service"), "{}", r.stderr);
    gate.stop().await.unwrap();
}
