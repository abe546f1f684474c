//! End to end against a real Ory Kratos (built from source by scripts/kratos.sh): sessions made
//! the real way (API registration, browser login), checked through sessiongate over gRPC, and
//! revoked the real ways (API logout, admin revocation, TOTP step-up).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::kratos::{Credential, KratosHarness};
use support::*;

const PASSWORD: &str = "correct-horse-battery-staple-42";

fn gate_config(k: &KratosHarness) -> sessiongate::config::Config {
    let mut c = config(k.public_url());
    c.whoami.timeout = Duration::from_secs(2);
    c.whoami.connect_timeout = Duration::from_secs(1);
    c.jwt
        .claims
        .insert("first_name".into(), "/identity/traits/name/first".into());
    c.admin.token = Some("kratos-e2e-admin-token".into());
    // Real credentials: the default shape check is on (it must accept everything Kratos issues).
    c.credentials.shape = Default::default();
    c
}

async fn register(k: &KratosHarness, name: &str) -> (String, Value) {
    let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
    k.register_api(
        &email,
        PASSWORD,
        json!({"name": {"first": name, "last": "Tester"}}),
    )
    .await
    .expect("registration")
}

fn token_req(token: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    check_request(&[("x-session-token", token)], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sessions_are_allowed_and_the_jwt_matches_whoami() {
    let k = KratosHarness::start().await.expect("kratos");
    let gate = Gate::start(gate_config(&k)).await;
    let mut client = gate.client().await;

    // Session token from API registration.
    let (token, session) = register(&k, "ada").await;
    let m = allowed(&client.check(token_req(&token)).await.unwrap().into_inner());
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    let (status, body) = k.whoami(Credential::Token(&token)).await.unwrap();
    assert_eq!(status, 200);
    let whoami: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(claims["sub"], whoami["identity"]["id"]);
    assert_eq!(claims["sid"], whoami["id"]);
    assert_eq!(claims["sid"], session["id"]);
    assert_eq!(claims["email"], whoami["identity"]["traits"]["email"]);
    assert_eq!(claims["first_name"], "ada");
    assert_eq!(claims["aal"], "aal1");
    assert_eq!(
        m.set["x-user-id"],
        whoami["identity"]["id"].as_str().unwrap()
    );
    let exp = claims["exp"].as_u64().unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(whoami["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        exp as i64 <= expires_at.timestamp(),
        "JWT outlives the session"
    );

    // Browser login: the real ory_kratos_session cookie.
    let email = whoami["identity"]["traits"]["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie_value = k
        .browser_login(&email, PASSWORD)
        .await
        .expect("browser login");
    let req = check_request(
        &[(
            "cookie",
            &format!("csrf=x; ory_kratos_session={cookie_value}"),
        )],
        &[],
    );
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    let claims = verify(&gate, &m.set["authorization"], "app").await;
    assert_eq!(claims["sub"], whoami["identity"]["id"]);
    assert_ne!(
        claims["sid"], session["id"],
        "a second session of the same identity"
    );
    assert_eq!(m.set["cookie"], "csrf=x");

    // No credential and a garbage cookie are denied.
    let (status, _, _) = denied(
        &client
            .check(check_request(&[], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401);
    let (status, _, _) = denied(
        &client
            .check(cookie("MTc-garbage-not-a-session"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 401);

    // Kratos' own credentials fit the default shapes; junk that cannot be one is refused by
    // shape, without a whoami call.
    let shape = sessiongate::config::ShapeConfig::default();
    use sessiongate::credentials::{CredentialKind, shape_fits};
    assert!(
        shape_fits(&shape, CredentialKind::SessionToken, &token),
        "{token}"
    );
    assert!(shape_fits(&shape, CredentialKind::Bearer, &token));
    assert!(shape_fits(&shape, CredentialKind::Cookie, &cookie_value));
    let whoami_calls = || metric(&gate, "whoami_requests_total", "");
    let rejected = || metric(&gate, "credentials_rejected_total", "");
    let (before, rejected_before) = (whoami_calls().await, rejected().await);
    for junk in [
        cookie("x"),
        cookie("<script>"),
        token_req("ory_st_short"),
        token_req(&format!("{token}-")),
    ] {
        let (status, _, _) = denied(&client.check(junk).await.unwrap().into_inner());
        assert_eq!(status, 401);
    }
    assert_eq!(whoami_calls().await, before, "junk reached whoami");
    assert_eq!(rejected().await - rejected_before, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_the_gate_by_ttl_and_at_once_by_invalidation() {
    let k = KratosHarness::start().await.expect("kratos");
    let mut cfg = gate_config(&k);
    cfg.cache.ttl = Duration::from_secs(2);
    cfg.cache.refresh_after = Duration::from_secs(2);
    cfg.cache.negative_ttl = Duration::from_secs(1);
    cfg.logout.grace = Duration::from_millis(300);
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;

    // 1. API logout, noticed through the TTL.
    let (token, _) = register(&k, "ttl").await;
    allowed(&client.check(token_req(&token)).await.unwrap().into_inner());
    k.api_logout(&token).await.unwrap();
    allowed(&client.check(token_req(&token)).await.unwrap().into_inner()); // still cached: the documented window
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, _) = denied(&client.check(token_req(&token)).await.unwrap().into_inner());
    assert_eq!(status, 401, "denied once the TTL ended");

    // 2. Admin revocation (DELETE /admin/sessions/{id}) + our invalidation API: denied at once.
    let (token, session) = register(&k, "revoked").await;
    allowed(&client.check(token_req(&token)).await.unwrap().into_inner());
    k.admin_revoke_session(session["id"].as_str().unwrap())
        .await
        .unwrap();
    allowed(&client.check(token_req(&token)).await.unwrap().into_inner()); // cached
    let mut admin = admin_client(gate.grpc, "kratos-e2e-admin-token").await;
    let n = admin
        .invalidate_session(sessiongate::admin_pb::InvalidateSessionRequest {
            session_id: session["id"].as_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1);
    let (status, _, _) = denied(&client.check(token_req(&token)).await.unwrap().into_inner());
    assert_eq!(status, 401, "denied on the very next check");

    // 3. API logout passing through the gate (logout awareness): denied without waiting for the TTL.
    let (token, _) = register(&k, "logout").await;
    allowed(&client.check(token_req(&token)).await.unwrap().into_inner());
    let mut logout = check_request(&[("x-session-token", &token)], &[("anonymous", "true")]);
    let http = http_mut(&mut logout);
    http.method = "DELETE".into();
    http.path = "/self-service/logout/api".into();
    allowed(&client.check(logout).await.unwrap().into_inner());
    k.api_logout(&token).await.unwrap(); // what Envoy forwards to Kratos after our allow
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, _) = denied(&client.check(token_req(&token)).await.unwrap().into_inner());
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_factor_requires_step_up() {
    let k = KratosHarness::start().await.expect("kratos");
    let gate = Gate::start(gate_config(&k)).await;
    let mut client = gate.client().await;
    let email = format!("totp-{}@example.com", uuid::Uuid::new_v4().simple());
    let (token, _) = k
        .register_api(
            &email,
            PASSWORD,
            json!({"name": {"first": "t", "last": "o"}}),
        )
        .await
        .unwrap();
    let secret = k
        .enable_totp(&token)
        .await
        .expect("TOTP enabled through the settings API");
    // A fresh aal1 browser session of an identity with TOTP: Kratos says session_aal2_required.
    let cookie_value = k.browser_login(&email, PASSWORD).await.unwrap();
    let (status, _, body) = denied(
        &client
            .check(cookie(&cookie_value))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(status, 403);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["id"], "session_aal2_required");
    let redirect = v["redirect_browser_to"].as_str().unwrap();
    assert!(
        redirect.contains("/self-service/login/browser") && redirect.contains("aal=aal2"),
        "{redirect}"
    );
    // A browser is sent there.
    let req = check_request(
        &[
            ("cookie", &format!("ory_kratos_session={cookie_value}")),
            ("accept", "text/html"),
        ],
        &[],
    );
    let (status, headers, _) = denied(&client.check(req).await.unwrap().into_inner());
    assert_eq!(status, 303);
    assert_eq!(headers["location"], redirect);
    // After the second factor, the same identity passes, with aal2 in the token, also on an aal2 route.
    let cookie_aal2 = k
        .browser_login_aal2(&email, PASSWORD, &secret)
        .await
        .expect("aal2 login");
    let mut req = cookie(&cookie_aal2);
    req = with_extension(req, "aal", "aal2");
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["aal"],
        "aal2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_first_checks_make_one_whoami_call() {
    let k = KratosHarness::start().await.expect("kratos");
    let gate = Gate::start(gate_config(&k)).await;
    let (token, _) = register(&k, "stampede").await;
    let email_cookie = {
        let (_, body) = k.whoami(Credential::Token(&token)).await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        k.browser_login(v["identity"]["traits"]["email"].as_str().unwrap(), PASSWORD)
            .await
            .unwrap()
    };
    let client = gate.client().await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let mut c = client.clone();
            let v = email_cookie.clone();
            tokio::spawn(async move { c.check(cookie(&v)).await.unwrap().into_inner() })
        })
        .collect();
    for t in tasks {
        allowed(&t.await.unwrap());
    }
    assert_eq!(
        metric(&gate, "whoami_requests_total", "").await,
        1.0,
        "one whoami call for 200 checks"
    );
    assert_eq!(
        metric(&gate, "cache_lookups_total", "result=\"miss\"").await,
        1.0
    );
}

/// A check for `path` with a session token (rules match on the path).
fn token_at(token: &str, path: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let mut req = token_req(token);
    let http = http_mut(&mut req);
    http.path = path.into();
    http.headers.insert(":path".into(), path.into());
    req
}

/// Route rules against a real session: a role granted through Kratos' admin API
/// (`metadata_public`) opens one route and not another, for the same session; `max_auth_age`
/// reads the real `authenticated_at`, and a fresh login satisfies it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_read_metadata_public_and_authenticated_at_of_real_sessions() {
    use sessiongate::config::RequirementConfig;
    let k = KratosHarness::start().await.expect("kratos");
    let mut cfg = gate_config(&k);
    let role = |roles: &[&str]| RequirementConfig {
        claim: "/identity/metadata_public/role".into(),
        one_of: Some(roles.iter().map(|r| json!(r)).collect()),
        ..RequirementConfig::default()
    };
    let mut admin = rule("admin", &["/admin/**"]);
    admin.require = vec![role(&["admin", "owner"])];
    let mut owners = rule("owners", &["/owners/**"]);
    owners.require = vec![role(&["owner"])];
    let mut recent = rule("recent", &["/settings/**"]);
    recent.max_auth_age = Some(Duration::from_secs(2));
    cfg.routes.rules = vec![admin, owners, recent];
    let gate = Gate::start(cfg).await;
    let mut client = gate.client().await;

    let (token, session) = register(&k, "root").await;
    let identity = session["identity"]["id"].as_str().unwrap().to_owned();
    // No role yet: the admin route is refused (403, not 401: the session is fine).
    let r = client
        .check(token_at(&token, "/admin/x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r).0, 403);
    // Grant the role through Kratos' admin API, then drop the cached session (as an operator's
    // tooling does after a role change) so the next check sees it.
    let updated = k
        .admin_set_metadata_public(&identity, json!({"role": "admin"}))
        .await
        .unwrap();
    assert_eq!(updated["metadata_public"]["role"], "admin");
    let mut admin_api = admin_client(gate.grpc, "kratos-e2e-admin-token").await;
    admin_api
        .invalidate_identity(sessiongate::admin_pb::InvalidateIdentityRequest {
            identity_id: identity.clone(),
        })
        .await
        .unwrap();
    // The same session: 200 on the admin route, 403 on the owners route.
    let r = client
        .check(token_at(&token, "/admin/x"))
        .await
        .unwrap()
        .into_inner();
    let m = allowed(&r);
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        identity.as_str()
    );
    let r = client
        .check(token_at(&token, "/owners/x"))
        .await
        .unwrap()
        .into_inner();
    let (status, _, body) = denied(&r);
    assert_eq!(status, 403);
    assert!(
        body.contains("requirement_not_met") && !body.contains("\"admin\""),
        "{body}"
    );

    // max_auth_age 2 s: fine right after registration, then re-authentication is asked for.
    allowed(
        &client
            .check(token_at(&token, "/settings/x"))
            .await
            .unwrap()
            .into_inner(),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = client
        .check(token_at(&token, "/settings/x"))
        .await
        .unwrap()
        .into_inner();
    let (status, _, body) = denied(&r);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("refresh=true"), "{body}");
    // A fresh login is recent again.
    let email = session["identity"]["traits"]["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let (fresh, _) = k.login_api(&email, PASSWORD).await.unwrap();
    allowed(
        &client
            .check(token_at(&fresh, "/settings/x"))
            .await
            .unwrap()
            .into_inner(),
    );
}
