//! The layering rule, checked from the source: data flows one way. Each module may use only
//! modules of a lower layer (and the crates of its own layer); the domain (`authz`,
//! `credentials`, `session`, `token`) knows no transport crate (tonic, axum, hyper, prost,
//! envoy-types). Test code (after `#[cfg(test)]`) is not checked.

use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may refer to `crate::<m>` only for `m` in a strictly lower layer
/// or in its own module.
const LAYERS: &[&[&str]] = &[
    &["config", "headers", "watch"],
    &["telemetry"],
    &["credentials", "token"],
    // Sources: Kratos sessions, and OAuth2 tokens (JWT issuers, introspection).
    &["session", "oauth2"],
    &["authz"],
    &["admin"],
    // Generated protobuf types of our own admin API (in lib.rs).
    &["admin_pb", "ADMIN_DESCRIPTOR_SET"],
    &["grpc", "http"],
    &["app"],
];

const DOMAIN: &[&str] = &[
    "authz",
    "credentials",
    "session",
    "oauth2",
    "token",
    "headers",
    "config",
];
const TRANSPORT_CRATES: &[&str] = &["tonic", "axum", "hyper", "prost", "envoy_types"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Violations in one file of `module`: `crate::x` references to higher or same-layer modules,
/// and transport crates used by the domain.
fn violations(module: &str, source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    let own = layer_of(module).expect("every module has a layer");
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let target: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if target == module || target.is_empty() {
                continue;
            }
            match layer_of(&target) {
                Some(l) if l < own => {}
                _ => found.push(format!("line {}: {module} uses crate::{target}", n + 1)),
            }
        }
        if DOMAIN.contains(&module) {
            for krate in TRANSPORT_CRATES {
                let uses = line.starts_with(&format!("use {krate}::"))
                    || line.starts_with(&format!("pub use {krate}::"))
                    || line.contains(&format!(" {krate}::"))
                    || line.contains(&format!("({krate}::"))
                    || line.contains(&format!("<{krate}::"));
                if uses {
                    found.push(format!(
                        "line {}: {module} uses the transport crate {krate}",
                        n + 1
                    ));
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn dependencies_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut all = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        checked += 1;
        for v in violations(&module, &text) {
            all.push(format!("{}: {v}", rel.display()));
        }
    }
    assert!(checked >= 20, "only {checked} files found under src/");
    assert!(all.is_empty(), "layering violations:\n{}", all.join("\n"));
}

#[test]
fn the_check_catches_back_edges_and_transport_types() {
    assert_eq!(
        violations("session", "use crate::token::Minter;\n").len(),
        0
    );
    assert_eq!(
        violations("token", "use crate::session::Session;\n").len(),
        1
    );
    assert_eq!(
        violations("credentials", "use crate::authz::Headers;\n").len(),
        1
    );
    assert_eq!(
        violations("http", "use crate::grpc::admin::AdminToken;\n").len(),
        1
    );
    assert_eq!(violations("token", "use crate::app::load_keys;\n").len(), 1);
    assert_eq!(violations("authz", "use tonic::Status;\n").len(), 1);
    assert_eq!(
        violations("session", "fn f() -> axum::Router {}\n").len(),
        1
    );
    assert_eq!(violations("grpc", "use tonic::Status;\n").len(), 0);
    assert_eq!(
        violations(
            "token",
            "#[cfg(test)]\nmod t { use crate::session::Session; }\n"
        )
        .len(),
        0,
        "test code is not checked"
    );
}
