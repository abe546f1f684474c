//! Route rules end to end: Istio-shaped checks (no context extensions), Envoy naming a rule,
//! predicates on the session, `max_auth_age`, paths that try to reach another rule, forward-auth
//! requests shaped like Caddy's (the client's query kept), CORS preflights, dynamic metadata, and
//! reloading the rules from the config file.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use sessiongate::config::{Config, DefaultPolicy, RequirementConfig};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

fn role_is(roles: &[&str]) -> RequirementConfig {
    RequirementConfig {
        claim: "/identity/metadata_public/role".into(),
        one_of: Some(roles.iter().map(|r| serde_json::json!(r)).collect()),
        ..RequirementConfig::default()
    }
}

/// "Public pages anonymous, /admin needs role admin and a second factor", plus a rule the fake
/// session (role admin) does not meet.
fn rules(c: &mut Config) {
    let mut admin = rule("admin", &["/admin/**"]);
    admin.matches.hosts = vec!["app.example.com".into(), "*.example.com".into()];
    admin.require = vec![role_is(&["admin", "owner"])];
    admin.audience = Some("admin-api".into());
    let mut owners = rule("owners", &["/owners/**"]);
    owners.require = vec![role_is(&["owner"])];
    let mut preflight = rule("cors-preflight", &[]);
    preflight.matches.methods = vec!["OPTIONS".into()];
    preflight.anonymous = true;
    let mut public = rule("public", &["/public/**", "/healthz"]);
    public.anonymous = true;
    c.routes.rules = vec![preflight, public, admin, owners];
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> (FakeKratos, Gate) {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("good"));
    let mut cfg = config(&kratos.url());
    rules(&mut cfg);
    tweak(&mut cfg);
    (kratos, Gate::start(cfg).await)
}

/// An Istio-shaped CheckRequest: method, host and path, no context extensions.
fn istio(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut req = check_request(headers, &[]);
    let http = http_mut(&mut req);
    http.method = method.into();
    http.host = host.into();
    http.path = path.into();
    http.headers.insert(":path".into(), path.into());
    http.headers.insert(":authority".into(), host.into());
    http.headers.insert(":method".into(), method.into());
    req
}

/// The status an anonymous GET of `path` gets.
async fn status_at(
    c: &mut envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        tonic::transport::Channel,
    >,
    path: &str,
) -> i32 {
    status_of(
        &c.check(istio("GET", "h", path, &[]))
            .await
            .unwrap()
            .into_inner(),
    )
}

fn status_of(r: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> i32 {
    if r.status.as_ref().unwrap().code == 0 {
        200
    } else {
        denied(r).0
    }
}

const COOKIE: (&str, &str) = ("cookie", "ory_kratos_session=good");

#[tokio::test]
async fn istio_checks_get_per_path_policy_from_the_rules() {
    let (kratos, gate) = setup(|_| {}).await;
    let c = gate.client().await;
    let at = |m: &str, host: &str, path: &str, h: &[(&str, &str)]| {
        let req = istio(m, host, path, h);
        let mut c = c.clone();
        async move { c.check(req).await.unwrap().into_inner() }
    };
    // Public: no session needed.
    assert_eq!(
        status_of(&at("GET", "app.example.com", "/public/a.css", &[]).await),
        200
    );
    assert_eq!(status_of(&at("GET", "x.test", "/healthz", &[]).await), 200);
    // Default: a session is needed.
    assert_eq!(
        status_of(&at("GET", "app.example.com", "/orders", &[]).await),
        401
    );
    // Admin with role admin: allowed, with the rule's audience.
    let r = at("GET", "app.example.com:443", "/admin/users", &[COOKIE]).await;
    let m = allowed(&r);
    assert_eq!(
        verify(&gate, &m.set["authorization"], "admin-api").await["sub"],
        "ident-good"
    );
    // The same session on a rule it does not meet: 403, the reason, never the value.
    let r = at("GET", "app.example.com", "/owners/x", &[COOKIE]).await;
    let (status, _, body) = denied(&r);
    assert_eq!(status, 403);
    assert!(body.contains("requirement_not_met"), "{body}");
    assert!(
        !body.contains("admin"),
        "trait values are never echoed: {body}"
    );
    // Admin on a host the rule does not list falls to the default (session only).
    let r = at("GET", "other.test", "/admin/users", &[COOKIE]).await;
    assert_eq!(
        verify(&gate, &allowed(&r).set["authorization"], "app").await["sub"],
        "ident-good"
    );
    // One whoami call for all of it: predicates run on the cached session.
    assert_eq!(kratos.calls(), 1);
    // The decision metric is labelled with the rule.
    assert_eq!(
        metric(
            &gate,
            "decisions_total",
            "reason=\"requirement_not_met\",rule=\"owners\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn paths_cannot_walk_into_a_weaker_rule() {
    let (_kratos, gate) = setup(|_| {}).await;
    let mut c = gate.client().await;
    for path in [
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/.%2E/admin/users",
        "//public/..//admin/users",
    ] {
        let r = c
            .check(istio("GET", "app.example.com", path, &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denied(&r).0, 401, "{path} must not be public");
    }
    for path in [
        "/public%2F..%2Fadmin/users",
        "/public/..%5Cadmin",
        "/public\\..\\admin",
    ] {
        let r = c
            .check(istio("GET", "app.example.com", path, &[]))
            .await
            .unwrap()
            .into_inner();
        let (status, _, body) = denied(&r);
        assert_eq!(status, 400, "{path}: {body}");
    }
    // The query is never part of the match.
    let r = c
        .check(istio("GET", "app.example.com", "/admin/x?/public/y", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r).0, 401);
}

#[tokio::test]
async fn envoy_may_name_a_rule_and_an_unknown_name_fails_closed() {
    let (_kratos, gate) = setup(|_| {}).await;
    let mut c = gate.client().await;
    // Named by the Envoy route: wins over matching (the path would be default).
    let req = with_extension(istio("GET", "x.test", "/anything", &[]), "route", "public");
    assert_eq!(status_of(&c.check(req).await.unwrap().into_inner()), 200);
    let req = with_extension(
        istio("GET", "x.test", "/anything", &[COOKIE]),
        "route",
        "owners",
    );
    assert_eq!(status_of(&c.check(req).await.unwrap().into_inner()), 403);
    let req = with_extension(istio("GET", "x.test", "/public/x", &[]), "route", "nope");
    let (status, _, body) = denied(&c.check(req).await.unwrap().into_inner());
    assert_eq!(status, 500, "{body}");
    // The older keys still work on top of a rule.
    let req = with_extension(istio("GET", "x.test", "/orders", &[]), "anonymous", "true");
    assert_eq!(status_of(&c.check(req).await.unwrap().into_inner()), 200);
}

#[tokio::test]
async fn default_deny_and_cors_preflights() {
    let (kratos, gate) = setup(|c| c.routes.default = DefaultPolicy::Deny).await;
    let mut c = gate.client().await;
    let r = c
        .check(istio("GET", "x.test", "/unlisted", &[COOKIE]))
        .await
        .unwrap()
        .into_inner();
    let (status, _, body) = denied(&r);
    assert_eq!((status, body.contains("no_route")), (403, true), "{body}");
    // A CORS preflight carries no cookie: the preflight rule lets it through anonymously.
    let preflight = istio(
        "OPTIONS",
        "app.example.com",
        "/admin/users",
        &[
            ("origin", "https://spa.example.com"),
            ("access-control-request-method", "DELETE"),
        ],
    );
    let m = allowed(&c.check(preflight).await.unwrap().into_inner());
    assert!(m.remove.contains(&"authorization".to_string()));
    assert_eq!(kratos.calls(), 0);
}

#[tokio::test]
async fn max_auth_age_asks_for_a_fresh_login() {
    let (_kratos, gate) = setup(|c| {
        let mut recent = rule("settings", &["/settings/**"]);
        recent.max_auth_age = Some(Duration::from_secs(1));
        c.routes.rules.push(recent);
        c.deny.kratos_browser_url = Some("https://auth.example.com".into());
    })
    .await;
    let mut c = gate.client().await;
    let r = c
        .check(istio("GET", "x.test", "/settings/x", &[COOKIE]))
        .await
        .unwrap()
        .into_inner();
    allowed(&r);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .check(istio("GET", "x.test", "/settings/x", &[COOKIE]))
        .await
        .unwrap()
        .into_inner();
    let (status, _, body) = denied(&r);
    assert_eq!(status, 403);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let to = v["redirect_browser_to"].as_str().unwrap();
    assert!(
        to.starts_with(
            "https://auth.example.com/self-service/login/browser?refresh=true&return_to="
        ),
        "{to}"
    );
    // Browsers are sent there.
    let r = c
        .check(istio(
            "GET",
            "x.test",
            "/settings/x",
            &[COOKIE, ("accept", "text/html")],
        ))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, _) = denied(&r);
    assert_eq!(status, 303);
    assert!(headers["location"].contains("refresh=true"));
}

#[tokio::test]
async fn allows_carry_dynamic_metadata_for_envoy() {
    let (_kratos, gate) = setup(|_| {}).await;
    let mut c = gate.client().await;
    let r = c
        .check(istio("GET", "app.example.com", "/admin/x", &[COOKIE]))
        .await
        .unwrap()
        .into_inner();
    let md = r.dynamic_metadata.expect("dynamic_metadata on allow");
    let sg = &md.fields["sessiongate"];
    let Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) = &sg.kind else {
        panic!("{sg:?}")
    };
    let get = |k: &str| match &s.fields[k].kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v)) => v.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(get("rule"), "admin");
    assert_eq!(get("identity_id"), "ident-good");
    assert_eq!(get("session_id"), "sess-good");
    assert_eq!(get("aal"), "aal1");
}

/// Forward-auth shaped like Caddy's `forward_auth` (`uri /check`): the client's own query is
/// copied to /check and `X-Forwarded-Uri` carries the original URI. The client cannot choose a
/// rule or a setting that way; the proxy's configured path can.
#[tokio::test]
async fn a_forward_auth_client_cannot_choose_its_rule() {
    let (kratos, gate) = setup(|_| {}).await;
    let http = reqwest::Client::new();
    let caddy = |query: &str, uri: &str| {
        http.get(format!("http://{}/check{query}", gate.http))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-uri", uri.to_string())
    };
    for (query, uri) in [
        ("?anonymous=true", "/admin/secret?anonymous=true"),
        ("?route=public", "/admin/secret?route=public"),
        ("?audience=x&aal=aal1&client_max_age=true", "/admin/secret"),
        ("", "/public/../admin/secret"),
    ] {
        let r = caddy(query, uri).send().await.unwrap();
        assert_eq!(r.status(), 401, "{query} {uri}");
    }
    assert_eq!(kratos.calls(), 0);
    // The proxy's own configuration names a rule in the path.
    let r = http
        .get(format!("http://{}/check/r/public", gate.http))
        .header("x-forwarded-uri", "/anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // And the rules apply to forward-auth exactly as over gRPC.
    let r = caddy("", "/public/x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = caddy("", "/owners/x")
        .header("cookie", "ory_kratos_session=good")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn rules_reload_from_the_file_and_a_broken_file_keeps_them() {
    use sessiongate::app::App;
    let kratos = FakeKratos::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiongate.yaml");
    let yaml = |rules: &str| {
        format!(
            "grpc: {{listen: 127.0.0.1:0}}\nhttp: {{listen: 127.0.0.1:0}}\nwhoami: {{base_url: {}}}\nlog: {{level: warn}}\nroutes:\n  reload_interval: 50ms\n  rules:\n{rules}",
            kratos.url()
        )
    };
    std::fs::write(
        &path,
        yaml("    - { name: open, match: { paths: [\"/open/**\"] }, anonymous: true }\n"),
    )
    .unwrap();
    let cfg = Config::load(Some(&path)).unwrap();
    let app = App::bind(cfg)
        .await
        .unwrap()
        .with_config_file(Some(path.clone()));
    let (grpc, http, handles) = (app.grpc_addr(), app.http_addr(), app.handles());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    while !handles.readiness.get() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel,
        );
    let reloads = |result: &'static str| {
        let url = format!("http://{http}/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.lines()
                .filter(|l| l.starts_with("sessiongate_config_reloads_total") && l.contains(result))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    let wait_for = |result: &'static str, n: f64| async move {
        for _ in 0..200 {
            if reloads(result).await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {result} reload");
    };
    assert_eq!(status_at(&mut c, "/open/x").await, 200);
    assert_eq!(status_at(&mut c, "/new/x").await, 401);

    // A broken file: logged, counted, the rules in use stay.
    std::fs::write(
        &path,
        yaml("    - { name: bad, match: { paths: [\"no-slash\"] } }\n"),
    )
    .unwrap();
    wait_for("error", 1.0).await;
    assert_eq!(status_at(&mut c, "/open/x").await, 200);
    std::fs::write(&path, "routes: [unclosed").unwrap();
    wait_for("error", 2.0).await;
    assert_eq!(status_at(&mut c, "/open/x").await, 200);

    // A good file: swapped in whole.
    std::fs::write(
        &path,
        yaml("    - { name: new, match: { paths: [\"/new/**\"] }, anonymous: true }\n"),
    )
    .unwrap();
    wait_for("ok", 1.0).await;
    assert_eq!(status_at(&mut c, "/new/x").await, 200);
    assert_eq!(status_at(&mut c, "/open/x").await, 401);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
