//! Offline validation of the shipped Envoy configurations (`envoy/*.yaml`).
//!
//! No Envoy binary is available in CI, so this test does the next best thing:
//!
//! 1. **Schema**: every YAML file is parsed (serde-saphyr, YAML 1.2) and decoded as an
//!    `envoy.config.bootstrap.v3.Bootstrap` with prost-reflect, using the protobuf
//!    descriptor set that the `envoy-types` crate ships (`src/generated/types.bin`), with
//!    unknown fields denied. Every `typed_config` (`google.protobuf.Any`) is resolved by
//!    its `@type` URL against the same pool, so a misspelled field or extension type fails.
//!    Deprecated fields are rejected too.
//! 2. **Semantics** Envoy's schema cannot express: ext_authz is fail-closed, its timeout is
//!    explicit and above sessiongate's whoami timeout (150 ms), no request body is
//!    buffered, header forwarding is restricted, the sessiongate gRPC cluster speaks HTTP/2
//!    and points at port 9191, every route's cluster exists, routes that skip ext_authz strip `x-user-id`,
//!    context_extensions use keys
//!    and values sessiongate understands. For the upstream-side `jwt_authn` example: every
//!    provider has an issuer and audiences and fetches sessiongate's JWKS
//!    (`/.well-known/jwks.json`, port 9192, an existing cluster) from `Authorization: Bearer`,
//!    the catch-all rule requires a declared provider, and `x-user-id` is removed before
//!    `jwt_authn` runs.
//! 3. **Negative tests**: broken fixtures (`tests/fixtures/envoy-broken-*.yaml`) and mutated
//!    copies of the good config must be rejected, proving the checks can fail.
//!
//! What this does NOT check: Envoy's protoc-gen-validate rules (e.g. `min_len`,
//! `required`; `scripts/envoy-validate.sh` checks those), cross-resource references other
//! than clusters, and runtime behaviour.
//!
//! ## Locating `types.bin`
//! `envoy-types` does not export the descriptor set as a constant, so the file is found at
//! test time through `cargo metadata` (run with the same cargo binary that runs the tests,
//! `$CARGO`), which reports the exact source directory of the `envoy-types` package this
//! crate resolved — registry, vendored or git checkouts alike, independent of
//! `$CARGO_HOME` layout. `--offline` is tried first (no network), then online.
//! `ENVOY_TYPES_DESCRIPTOR_SET=/path/to/types.bin` overrides the lookup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey,
    ReflectMessage, Value,
};

const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";
const EXT_AUTHZ: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const JWT_AUTHN: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const HEADER_MUTATION: &str = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// sessiongate's `whoami.timeout` default: Envoy must wait longer than this.
const WHOAMI_TIMEOUT: Duration = Duration::from_millis(150);
const GRPC_PORT: u32 = 9191;
const HTTP_PORT: u32 = 9192;
/// Files every release must ship.
const EXPECTED_FILES: &[&str] = &[
    "envoy.yaml",
    "envoy-http-service.yaml",
    "sidecar.yaml",
    "upstream-jwt-authn.yaml",
];

// ─────────────────────────────── descriptor pool ───────────────────────────────

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let path = descriptor_set_path().expect("locate envoy-types descriptor set");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("read descriptor set {}: {e}", path.display()));
        DescriptorPool::decode(bytes.as_slice())
            .unwrap_or_else(|e| panic!("decode descriptor set {}: {e}", path.display()))
    })
}

fn descriptor_set_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_TYPES_DESCRIPTOR_SET") {
        return Ok(PathBuf::from(p));
    }
    let dir = envoy_types_dir()?;
    let path = dir.join("src").join("generated").join("types.bin");
    if !path.is_file() {
        bail!(
            "envoy-types at {} has no src/generated/types.bin (layout changed in a new version?)",
            dir.display()
        );
    }
    Ok(path)
}

fn cargo_metadata(offline: bool) -> Result<serde_json::Value> {
    // `CARGO` is set by cargo for the test process; fall back to the compile-time value
    // and finally to whatever `cargo` is on PATH.
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest_dir().join("Cargo.toml"));
    if offline {
        cmd.arg("--offline");
    }
    let out = cmd
        .output()
        .with_context(|| format!("run {cargo:?} metadata"))?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parse cargo metadata output")
}

fn envoy_types_dir() -> Result<PathBuf> {
    let meta = cargo_metadata(true).or_else(|offline_err| {
        cargo_metadata(false).with_context(|| format!("offline attempt: {offline_err:#}"))
    })?;
    let packages = meta["packages"].as_array().context("metadata.packages")?;
    let candidates: Vec<&serde_json::Value> = packages
        .iter()
        .filter(|p| p["name"] == "envoy-types")
        .collect();
    // Prefer the envoy-types our root package actually depends on (there could be several
    // versions in the graph).
    let root = meta["resolve"]["root"].as_str();
    let chosen = root
        .and_then(|root| {
            let node = meta["resolve"]["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == root)?;
            let deps: BTreeSet<&str> = node["dependencies"]
                .as_array()?
                .iter()
                .filter_map(|d| d.as_str())
                .collect();
            candidates
                .iter()
                .find(|p| p["id"].as_str().is_some_and(|id| deps.contains(id)))
                .copied()
        })
        .or(match candidates.as_slice() {
            [only] => Some(*only),
            _ => None,
        })
        .ok_or_else(|| {
            anyhow!(
                "envoy-types not found (or ambiguous: {} candidates) in cargo metadata",
                candidates.len()
            )
        })?;
    let manifest = chosen["manifest_path"]
        .as_str()
        .context("envoy-types manifest_path")?;
    Ok(Path::new(manifest)
        .parent()
        .context("manifest dir")?
        .to_path_buf())
}

// ─────────────────────────────── decoding ───────────────────────────────

fn yaml_to_json(text: &str) -> Result<serde_json::Value> {
    serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| anyhow!("YAML: {e}"))
}

/// Schema check: decode JSON as a Bootstrap, denying unknown fields. Any `@type` that the
/// pool doesn't know fails here as well.
fn decode_bootstrap(json: serde_json::Value) -> Result<DynamicMessage> {
    let desc = pool()
        .get_message_by_name(BOOTSTRAP)
        .context("Bootstrap descriptor missing from envoy-types pool")?;
    DynamicMessage::deserialize_with_options(
        desc,
        json,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| anyhow!("schema: {e}"))
}

fn load(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    yaml_to_json(&text)
}

/// Every message in the tree, with `Any` payloads unpacked, plus deprecated-field uses.
struct Tree {
    nodes: Vec<(String, DynamicMessage)>,
    deprecated: Vec<String>,
}

impl Tree {
    fn build(root: &DynamicMessage) -> Result<Tree> {
        let mut t = Tree {
            nodes: Vec::new(),
            deprecated: Vec::new(),
        };
        t.walk(root, "bootstrap".into())?;
        Ok(t)
    }

    fn walk(&mut self, msg: &DynamicMessage, path: String) -> Result<()> {
        if let Some(inner) = unpack_any(msg)? {
            let p = format!("{path}<{}>", inner.descriptor().full_name());
            self.nodes.push((path, msg.clone()));
            return self.walk(&inner, p);
        }
        for (field, value) in msg.fields() {
            let p = format!("{path}.{}", field.name());
            if is_deprecated(&field) {
                self.deprecated.push(p.clone());
            }
            match value {
                Value::Message(m) => self.walk(m, p)?,
                Value::List(items) => {
                    for (i, v) in items.iter().enumerate() {
                        if let Value::Message(m) = v {
                            self.walk(m, format!("{p}[{i}]"))?;
                        }
                    }
                }
                Value::Map(map) => {
                    for (k, v) in map {
                        if let Value::Message(m) = v {
                            self.walk(m, format!("{p}[{}]", map_key(k)))?;
                        }
                    }
                }
                _ => {}
            }
        }
        self.nodes.push((path, msg.clone()));
        Ok(())
    }

    fn of_type<'a>(
        &'a self,
        full_name: &'a str,
    ) -> impl Iterator<Item = &'a (String, DynamicMessage)> {
        self.nodes
            .iter()
            .filter(move |(_, m)| m.descriptor().full_name() == full_name)
    }
}

fn is_deprecated(field: &FieldDescriptor) -> bool {
    field
        .options()
        .get_field_by_name("deprecated")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// If `msg` is a `google.protobuf.Any`, decode its payload with the pool.
fn unpack_any(msg: &DynamicMessage) -> Result<Option<DynamicMessage>> {
    if msg.descriptor().full_name() != "google.protobuf.Any" {
        return Ok(None);
    }
    let url = str_field(msg, "type_url");
    let name = url.rsplit('/').next().unwrap_or_default();
    let desc = pool()
        .get_message_by_name(name)
        .ok_or_else(|| anyhow!("unknown @type {url:?}"))?;
    let bytes = match msg.get_field_by_name("value").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    Ok(Some(
        DynamicMessage::decode(desc, bytes).with_context(|| format!("decode Any {url}"))?,
    ))
}

// ─────────────────────────────── field helpers ───────────────────────────────

fn field<'a>(msg: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, Value>> {
    let f = msg.descriptor().get_field_by_name(name)?;
    msg.has_field(&f).then(|| msg.get_field(&f))
}

fn msg_field(msg: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    match field(msg, name)?.into_owned() {
        Value::Message(m) => Some(m),
        _ => None,
    }
}

fn str_field(msg: &DynamicMessage, name: &str) -> String {
    field(msg, name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn bool_field(msg: &DynamicMessage, name: &str) -> bool {
    field(msg, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn list_field(msg: &DynamicMessage, name: &str) -> Vec<Value> {
    match field(msg, name).map(|v| v.into_owned()) {
        Some(Value::List(items)) => items,
        _ => Vec::new(),
    }
}

fn enum_name(msg: &DynamicMessage, name: &str) -> Option<String> {
    let f = msg.descriptor().get_field_by_name(name)?;
    let Kind::Enum(e) = f.kind() else { return None };
    let n = msg.get_field(&f).as_enum_number()?;
    e.get_value(n).map(|v| v.name().to_owned())
}

fn duration_field(msg: &DynamicMessage, name: &str) -> Option<Duration> {
    let d = msg_field(msg, name)?;
    let secs = field(&d, "seconds").and_then(|v| v.as_i64()).unwrap_or(0);
    let nanos = field(&d, "nanos").and_then(|v| v.as_i32()).unwrap_or(0);
    Some(Duration::new(secs.max(0) as u64, nanos.max(0) as u32))
}

/// All `socket_address` ports/addresses of a cluster's static load assignment.
fn cluster_endpoints(cluster: &DynamicMessage) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Some(la) = msg_field(cluster, "load_assignment") else {
        return out;
    };
    for eps in list_field(&la, "endpoints") {
        let Value::Message(eps) = eps else { continue };
        for lb in list_field(&eps, "lb_endpoints") {
            let Value::Message(lb) = lb else { continue };
            let sa = msg_field(&lb, "endpoint")
                .and_then(|e| msg_field(&e, "address"))
                .and_then(|a| msg_field(&a, "socket_address"));
            if let Some(sa) = sa {
                let port = field(&sa, "port_value")
                    .and_then(|v| v.as_u32())
                    .unwrap_or(0);
                out.push((str_field(&sa, "address"), port));
            }
        }
    }
    out
}

fn cluster_is_http2(cluster: &DynamicMessage) -> Result<bool> {
    let Some(Value::Map(opts)) =
        field(cluster, "typed_extension_protocol_options").map(|v| v.into_owned())
    else {
        return Ok(false);
    };
    let Some(Value::Message(any)) = opts.get(&MapKey::String(HTTP_PROTOCOL_OPTIONS.into())) else {
        return Ok(false);
    };
    let Some(hpo) = unpack_any(any)? else {
        return Ok(false);
    };
    if hpo.descriptor().full_name() != HTTP_PROTOCOL_OPTIONS {
        return Ok(false);
    }
    Ok(msg_field(&hpo, "explicit_http_config")
        .is_some_and(|e| e.has_field_by_name("http2_protocol_options")))
}

// ─────────────────────────────── semantic checks ───────────────────────────────

/// Checks Envoy's schema cannot express. Returns a list of problems (empty = fine).
fn semantic_problems(file: &str, bootstrap: &DynamicMessage) -> Result<Vec<String>> {
    let tree = Tree::build(bootstrap)?;
    let mut problems: Vec<String> = tree
        .deprecated
        .iter()
        .map(|p| format!("deprecated field used: {p}"))
        .collect();

    let clusters: BTreeMap<String, DynamicMessage> = tree
        .of_type("envoy.config.cluster.v3.Cluster")
        .map(|(_, c)| (str_field(c, "name"), c.clone()))
        .collect();

    // Every route must point at a defined cluster.
    let mut routes = 0;
    for (path, ra) in tree.of_type("envoy.config.route.v3.RouteAction") {
        routes += 1;
        let mut targets = Vec::new();
        let c = str_field(ra, "cluster");
        if !c.is_empty() {
            targets.push(c);
        }
        if let Some(wc) = msg_field(ra, "weighted_clusters") {
            for w in list_field(&wc, "clusters") {
                if let Value::Message(w) = w {
                    targets.push(str_field(&w, "name"));
                }
            }
        }
        if targets.is_empty() {
            problems.push(format!(
                "{path}: route without a static cluster (cannot verify)"
            ));
        }
        for t in targets {
            if !clusters.contains_key(&t) {
                problems.push(format!("{path}: route to unknown cluster {t:?}"));
            }
        }
    }
    if routes == 0 {
        problems.push("no routes found".into());
    }

    // Routes that skip ext_authz must strip identity headers a client could forge.
    for (path, route) in tree.of_type("envoy.config.route.v3.Route") {
        let disabled = match field(route, "typed_per_filter_config").map(|v| v.into_owned()) {
            Some(Value::Map(m)) => {
                match m.get(&MapKey::String("envoy.filters.http.ext_authz".into())) {
                    Some(Value::Message(any)) => {
                        unpack_any(any)?.is_some_and(|pr| bool_field(&pr, "disabled"))
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        let strips = list_field(route, "request_headers_to_remove")
            .iter()
            .any(|h| {
                h.as_str()
                    .is_some_and(|h| h.eq_ignore_ascii_case("x-user-id"))
            });
        if disabled && !strips {
            problems.push(format!(
                "{path}: ext_authz disabled but request_headers_to_remove lacks x-user-id (forgeable identity)"
            ));
        }
    }

    // The auth filter (ext_authz at the edge, jwt_authn in front of an upstream) must run
    // before the router in every HTTP connection manager.
    for (path, hcm) in tree.of_type(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    ) {
        let filters: Vec<DynamicMessage> = list_field(hcm, "http_filters")
            .into_iter()
            .filter_map(|f| match f {
                Value::Message(f) => Some(f),
                _ => None,
            })
            .collect();
        let names: Vec<String> = filters.iter().map(|f| str_field(f, "name")).collect();
        let auth = names.iter().position(|n| {
            n == "envoy.filters.http.ext_authz" || n == "envoy.filters.http.jwt_authn"
        });
        let router = names.iter().position(|n| n == "envoy.filters.http.router");
        match (auth, router) {
            (Some(a), Some(r)) if a < r && r == names.len() - 1 => {}
            _ => problems.push(format!(
                "{path}: http_filters must contain ext_authz (or jwt_authn) before a final router, got {names:?}"
            )),
        }
        if let Some(j) = names
            .iter()
            .position(|n| n == "envoy.filters.http.jwt_authn")
        {
            if !removes_before(&filters[..j], "x-user-id")? {
                problems.push(format!(
                    "{path}: no header_mutation before jwt_authn removes x-user-id (forgeable identity)"
                ));
            }
        }
    }

    jwt_authn_problems(&tree, &clusters, &mut problems);

    // The ext_authz filter itself.
    let authz: Vec<_> = tree.of_type(EXT_AUTHZ).collect();
    if authz.is_empty() && tree.of_type(JWT_AUTHN).next().is_none() {
        problems.push("no envoy.filters.http.ext_authz (or jwt_authn) filter".into());
    }
    for (path, ea) in authz {
        if bool_field(ea, "failure_mode_allow") {
            problems.push(format!(
                "{path}: failure_mode_allow must be false (fail closed)"
            ));
        }
        if ea.has_field_by_name("with_request_body") {
            problems.push(format!(
                "{path}: with_request_body must be unset (sessiongate only reads headers)"
            ));
        }
        let allowed = msg_field(ea, "allowed_headers")
            .map(|m| list_field(&m, "patterns").len())
            .unwrap_or(0);
        if allowed == 0 {
            problems.push(format!(
                "{path}: allowed_headers must list the headers sessiongate reads"
            ));
        }
        let check_timeout = |what: &str, t: Option<Duration>, problems: &mut Vec<String>| {
            match t {
            None => problems.push(format!(
                "{path}: {what} timeout must be set explicitly (> {WHOAMI_TIMEOUT:?})"
            )),
            Some(t) if t <= WHOAMI_TIMEOUT => problems.push(format!(
                "{path}: {what} timeout {t:?} must exceed sessiongate whoami timeout {WHOAMI_TIMEOUT:?}"
            )),
            Some(_) => {}
        }
        };
        if let Some(gs) = msg_field(ea, "grpc_service") {
            if enum_name(ea, "transport_api_version").as_deref() != Some("V3") {
                problems.push(format!("{path}: transport_api_version must be V3"));
            }
            check_timeout(
                "grpc_service",
                duration_field(&gs, "timeout"),
                &mut problems,
            );
            let Some(eg) = msg_field(&gs, "envoy_grpc") else {
                problems.push(format!("{path}: expected grpc_service.envoy_grpc"));
                continue;
            };
            let name = str_field(&eg, "cluster_name");
            let what = format!("{path}: ext_authz");
            if let Some(c) = cluster_on_port(&clusters, &name, &what, GRPC_PORT, &mut problems) {
                if !cluster_is_http2(c)? {
                    problems.push(format!(
                        "cluster {name:?}: gRPC needs typed_extension_protocol_options \
                         {HTTP_PROTOCOL_OPTIONS} with explicit_http_config.http2_protocol_options"
                    ));
                }
                let eps = cluster_endpoints(c);
                if file.contains("sidecar") && eps.iter().any(|(a, _)| a != "127.0.0.1") {
                    problems.push(format!(
                        "cluster {name:?}: sidecar must target 127.0.0.1, got {eps:?}"
                    ));
                }
            }
        } else if let Some(hs) = msg_field(ea, "http_service") {
            let uri = msg_field(&hs, "server_uri");
            check_timeout(
                "http_service.server_uri",
                uri.as_ref().and_then(|u| duration_field(u, "timeout")),
                &mut problems,
            );
            if str_field(&hs, "path_prefix") != "/check" {
                problems.push(format!("{path}: http_service.path_prefix must be /check"));
            }
            let name = uri
                .as_ref()
                .map(|u| str_field(u, "cluster"))
                .unwrap_or_default();
            let what = format!("{path}: http_service");
            cluster_on_port(&clusters, &name, &what, HTTP_PORT, &mut problems);
        } else {
            problems.push(format!("{path}: neither grpc_service nor http_service"));
        }
    }

    // context_extensions: only keys/values sessiongate understands.
    for (path, cs) in tree.of_type("envoy.extensions.filters.http.ext_authz.v3.CheckSettings") {
        let Some(Value::Map(ext)) = field(cs, "context_extensions").map(|v| v.into_owned()) else {
            continue;
        };
        for (k, v) in ext {
            let (k, v) = (map_key(&k), v.as_str().unwrap_or_default().to_owned());
            let ok = match k.as_str() {
                "anonymous" => v == "true" || v == "false",
                "aal" => v == "aal1" || v == "aal2",
                "audience" => !v.is_empty(),
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "{path}: context_extensions {k:?}={v:?} not understood by sessiongate"
                ));
            }
        }
    }
    Ok(problems)
}

/// The cluster `name` (used by `what`) must exist and every endpoint of it use `port`.
fn cluster_on_port<'a>(
    clusters: &'a BTreeMap<String, DynamicMessage>,
    name: &str,
    what: &str,
    port: u32,
    problems: &mut Vec<String>,
) -> Option<&'a DynamicMessage> {
    let Some(c) = clusters.get(name) else {
        problems.push(format!("{what} cluster {name:?} not defined"));
        return None;
    };
    let eps = cluster_endpoints(c);
    if eps.is_empty() || eps.iter().any(|(_, p)| *p != port) {
        problems.push(format!(
            "cluster {name:?}: endpoints {eps:?} must use port {port}"
        ));
    }
    Some(c)
}

/// Whether one of these HTTP filters is a header_mutation that removes request header `name`.
fn removes_before(filters: &[DynamicMessage], name: &str) -> Result<bool> {
    for f in filters {
        let Some(hm) = msg_field(f, "typed_config")
            .map(|any| unpack_any(&any))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        if hm.descriptor().full_name() != HEADER_MUTATION {
            continue;
        }
        let removes = msg_field(&hm, "mutations")
            .map(|m| list_field(&m, "request_mutations"))
            .unwrap_or_default()
            .into_iter()
            .any(|m| matches!(m, Value::Message(m) if str_field(&m, "remove").eq_ignore_ascii_case(name)));
        if removes {
            return Ok(true);
        }
    }
    Ok(false)
}

/// jwt_authn in front of an upstream: verifies sessiongate's tokens with sessiongate's JWKS.
fn jwt_authn_problems(
    tree: &Tree,
    clusters: &BTreeMap<String, DynamicMessage>,
    problems: &mut Vec<String>,
) {
    for (path, ja) in tree.of_type(JWT_AUTHN) {
        let providers = match field(ja, "providers").map(|v| v.into_owned()) {
            Some(Value::Map(m)) => m,
            _ => Default::default(),
        };
        if providers.is_empty() {
            problems.push(format!("{path}: no providers"));
        }
        for (name, p) in &providers {
            let (name, Value::Message(p)) = (map_key(name), p) else {
                continue;
            };
            let at = format!("{path}.providers[{name}]");
            if str_field(p, "issuer").is_empty() {
                problems.push(format!("{at}: issuer must be sessiongate's jwt.issuer"));
            }
            if list_field(p, "audiences").is_empty() {
                problems.push(format!(
                    "{at}: audiences must be set (sessiongate's jwt.audience)"
                ));
            }
            let bearer = list_field(p, "from_headers").iter().any(|h| {
                matches!(h, Value::Message(h)
                    if str_field(h, "name").eq_ignore_ascii_case("authorization")
                        && str_field(h, "value_prefix") == "Bearer ")
            });
            if !bearer {
                problems.push(format!(
                    "{at}: from_headers must read `authorization` with value_prefix \"Bearer \""
                ));
            }
            let Some(uri) = msg_field(p, "remote_jwks").and_then(|r| msg_field(&r, "http_uri"))
            else {
                problems.push(format!(
                    "{at}: remote_jwks.http_uri must fetch sessiongate's JWKS (keys rotate)"
                ));
                continue;
            };
            let url = str_field(&uri, "uri");
            if !url.ends_with("/.well-known/jwks.json") {
                problems.push(format!(
                    "{at}: remote_jwks uri {url:?} is not sessiongate's /.well-known/jwks.json"
                ));
            }
            let cluster = str_field(&uri, "cluster");
            cluster_on_port(
                clusters,
                &cluster,
                &format!("{at}: JWKS"),
                HTTP_PORT,
                problems,
            );
        }
        // The catch-all rule must require a token from a declared provider.
        let mut catch_all = false;
        for r in list_field(ja, "rules") {
            let Value::Message(r) = r else { continue };
            let prefix = msg_field(&r, "match").map(|m| str_field(&m, "prefix"));
            let required = msg_field(&r, "requires").map(|q| str_field(&q, "provider_name"));
            if let Some(name) = required.as_deref().filter(|n| !n.is_empty()) {
                if !providers.contains_key(&MapKey::String(name.to_owned())) {
                    problems.push(format!("{path}: rule requires unknown provider {name:?}"));
                }
            }
            if prefix.as_deref() == Some("/") {
                catch_all = required.is_some_and(|n| !n.is_empty());
            }
        }
        if !catch_all {
            problems.push(format!(
                "{path}: the catch-all rule (prefix \"/\") must require a sessiongate provider"
            ));
        }
    }
}

fn validate_json(file: &str, json: serde_json::Value) -> Result<Vec<String>> {
    let msg = decode_bootstrap(json)?;
    semantic_problems(file, &msg)
}

fn shipped_configs() -> Vec<PathBuf> {
    let dir = manifest_dir().join("envoy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

// ─────────────────────────────── tests ───────────────────────────────

#[test]
fn shipped_envoy_configs_are_valid() {
    let files = shipped_configs();
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in EXPECTED_FILES {
        assert!(
            names.contains(*expected),
            "envoy/{expected} is missing (found {names:?})"
        );
    }
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match load(path).and_then(|j| validate_json(&name, j)) {
            Ok(problems) if problems.is_empty() => eprintln!("ok: envoy/{name}"),
            Ok(problems) => {
                failures.push(format!("envoy/{name}:\n  - {}", problems.join("\n  - ")))
            }
            Err(e) => failures.push(format!("envoy/{name}: {e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid Envoy configs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn pool_rejects_unknown_any_type() {
    let json = serde_json::json!({
        "static_resources": { "listeners": [{
            "name": "l",
            "filter_chains": [{ "filters": [{
                "name": "f",
                "typed_config": { "@type": "type.googleapis.com/envoy.does.not.Exist" }
            }]}]
        }]}
    });
    let err = decode_bootstrap(json).expect_err("unknown @type must not decode");
    assert!(err.to_string().contains("envoy.does.not.Exist"), "{err:#}");
}

/// Fixture -> substring the error must contain (so it fails for the intended reason).
const BROKEN_FIXTURES: &[(&str, &str)] = &[
    ("envoy-broken-field.yaml", "failure_mode_alow"),
    ("envoy-broken-type.yaml", "ExtAuthzz"),
    (
        "envoy-broken-yaml-bool.yaml",
        "boolean `true`, expected a string",
    ),
];

#[test]
fn broken_fixtures_are_rejected() {
    for (file, needle) in BROKEN_FIXTURES {
        let path = manifest_dir().join("tests/fixtures").join(file);
        let result = load(&path).and_then(|j| validate_json(file, j));
        match result {
            Ok(problems) if problems.is_empty() => panic!("{file}: accepted, must be rejected"),
            Ok(problems) => {
                let all = problems.join("\n");
                assert!(
                    all.contains(needle),
                    "{file}: rejected for the wrong reason:\n{all}"
                );
            }
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains(needle),
                    "{file}: rejected for the wrong reason: {msg}"
                );
                eprintln!("rejected as expected: tests/fixtures/{file}: {msg}");
            }
        }
    }
}

/// Find the JSON pointer of the first object whose `@type` ends with `suffix`.
fn find_typed(v: &serde_json::Value, suffix: &str, at: String) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with(suffix))
            {
                return Some(at);
            }
            m.iter().find_map(|(k, v)| {
                find_typed(
                    v,
                    suffix,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                )
            })
        }
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_typed(v, suffix, format!("{at}/{i}"))),
        _ => None,
    }
}

/// The cluster called `name` in a bootstrap's static resources.
fn cluster_mut<'a>(j: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    j["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// The routes of the first listener's first virtual host.
fn routes_mut(j: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    j.pointer_mut(ROUTES).unwrap().as_array_mut().unwrap()
}

const ROUTES: &str = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes";

/// The route matching path prefix `prefix`.
fn route_mut<'a>(j: &'a mut serde_json::Value, prefix: &str) -> &'a mut serde_json::Value {
    routes_mut(j)
        .iter_mut()
        .find(|r| r["match"]["prefix"] == prefix)
        .unwrap()
}

#[test]
fn semantic_checks_catch_bad_settings() {
    let base = load(&manifest_dir().join("envoy/envoy.yaml")).unwrap();
    let authz = find_typed(&base, ".ExtAuthz", String::new()).expect("ExtAuthz in envoy.yaml");
    type Mutation = (
        &'static str,
        &'static str,
        Box<dyn Fn(&mut serde_json::Value, &str)>,
    );
    let mutations: Vec<Mutation> = vec![
        (
            "fail open",
            "failure_mode_allow",
            Box::new(|j, a| {
                j.pointer_mut(a).unwrap()["failure_mode_allow"] = true.into();
            }),
        ),
        (
            "timeout below whoami",
            "must exceed",
            Box::new(|j, a| {
                j.pointer_mut(a).unwrap()["grpc_service"]["timeout"] = "0.1s".into();
            }),
        ),
        (
            "timeout left at default",
            "set explicitly",
            Box::new(|j, a| {
                j.pointer_mut(a).unwrap()["grpc_service"]
                    .as_object_mut()
                    .unwrap()
                    .remove("timeout");
            }),
        ),
        (
            "request body buffered",
            "with_request_body",
            Box::new(|j, a| {
                j.pointer_mut(a).unwrap()["with_request_body"] =
                    serde_json::json!({"max_request_bytes": 8192});
            }),
        ),
        (
            "all headers forwarded",
            "allowed_headers",
            Box::new(|j, a| {
                j.pointer_mut(a)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("allowed_headers");
            }),
        ),
        (
            "sessiongate cluster HTTP/1.1",
            "http2_protocol_options",
            Box::new(|j, _| {
                let c = cluster_mut(j, "sessiongate");
                c.as_object_mut()
                    .unwrap()
                    .remove("typed_extension_protocol_options");
            }),
        ),
        (
            "route to missing cluster",
            "unknown cluster",
            Box::new(|j, _| {
                let last = routes_mut(j).last_mut().unwrap();
                last["route"]["cluster"] = "no-such-cluster".into();
            }),
        ),
        (
            "unknown context extension value",
            "not understood",
            Box::new(|j, _| {
                let admin = route_mut(j, "/admin/");
                admin["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]
                    ["context_extensions"]["aal"] = "aal3".into();
            }),
        ),
        (
            "public route keeps client x-user-id",
            "forgeable identity",
            Box::new(|j, _| {
                let public = route_mut(j, "/public/");
                public
                    .as_object_mut()
                    .unwrap()
                    .remove("request_headers_to_remove");
            }),
        ),
        (
            "wrong gRPC port",
            "must use port",
            Box::new(|j, _| {
                let c = cluster_mut(j, "sessiongate");
                c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                    ["port_value"] = 9192.into();
            }),
        ),
    ];
    for (what, needle, mutate) in mutations {
        let mut j = base.clone();
        mutate(&mut j, &authz);
        let problems = validate_json("envoy.yaml", j)
            .unwrap_or_else(|e| panic!("{what}: mutation should still pass the schema: {e:#}"));
        let all = problems.join("\n");
        assert!(
            all.contains(needle),
            "{what}: expected a problem mentioning {needle:?}, got: {problems:?}"
        );
    }
}

#[test]
fn jwt_authn_checks_catch_bad_settings() {
    let base = load(&manifest_dir().join("envoy/upstream-jwt-authn.yaml")).unwrap();
    let ja = find_typed(&base, ".JwtAuthentication", String::new()).expect("jwt_authn");
    let provider = format!("{ja}/providers/sessiongate");
    type Mutation = (
        &'static str,
        &'static str,
        Box<dyn Fn(&mut serde_json::Value)>,
    );
    let p = provider.clone();
    let p2 = provider.clone();
    let p3 = provider.clone();
    let rules = format!("{ja}/rules");
    let mutations: Vec<Mutation> = vec![
        (
            "JWKS from another path",
            "/.well-known/jwks.json",
            Box::new(move |j| {
                j.pointer_mut(&p).unwrap()["remote_jwks"]["http_uri"]["uri"] =
                    "http://sessiongate:9192/keys".into();
            }),
        ),
        (
            "JWKS from the gRPC port",
            "must use port",
            Box::new(|j| {
                let c = cluster_mut(j, "sessiongate_jwks");
                c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                    ["port_value"] = 9191.into();
            }),
        ),
        (
            "no audiences",
            "audiences",
            Box::new(move |j| {
                j.pointer_mut(&p2)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("audiences");
            }),
        ),
        (
            "token read from another header",
            "from_headers",
            Box::new(move |j| {
                j.pointer_mut(&p3).unwrap()["from_headers"][0]["name"] = "x-jwt".into();
            }),
        ),
        (
            "catch-all without requires",
            "catch-all rule",
            Box::new(move |j| {
                let rules = j.pointer_mut(&rules).unwrap().as_array_mut().unwrap();
                rules
                    .last_mut()
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("requires");
            }),
        ),
        (
            "client x-user-id kept",
            "forgeable identity",
            Box::new(|j| {
                let filters = j
                    .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
                    .unwrap()
                    .as_array_mut()
                    .unwrap();
                filters.retain(|f| f["name"] != "envoy.filters.http.header_mutation");
            }),
        ),
    ];
    for (what, needle, mutate) in mutations {
        let mut j = base.clone();
        mutate(&mut j);
        let problems = validate_json("upstream-jwt-authn.yaml", j)
            .unwrap_or_else(|e| panic!("{what}: mutation should still pass the schema: {e:#}"));
        assert!(
            problems.join("\n").contains(needle),
            "{what}: expected a problem mentioning {needle:?}, got: {problems:?}"
        );
    }
}

#[test]
fn deprecated_fields_are_rejected() {
    // `http_service.authorization_request.allowed_headers` is deprecated in favour of the
    // top-level `allowed_headers`; using it must be flagged.
    let mut j = load(&manifest_dir().join("envoy/envoy-http-service.yaml")).unwrap();
    let authz = find_typed(&j, ".ExtAuthz", String::new()).expect("ExtAuthz");
    j.pointer_mut(&authz).unwrap()["http_service"]["authorization_request"] =
        serde_json::json!({ "allowed_headers": { "patterns": [{ "exact": "cookie" }] } });
    let problems = validate_json("envoy-http-service.yaml", j).expect("schema still valid");
    assert!(
        problems.iter().any(|p| p.contains("deprecated field used")
            && p.contains("authorization_request.allowed_headers")),
        "{problems:?}"
    );
}
