//! HTTP forward-auth with a real nginx (`auth_request`) in front of an echo upstream: what the
//! upstream sees, and what clients get, for sessions, no sessions, browsers and forgeries.

mod support;

use std::collections::HashMap;

use support::nginx::{Nginx, echo_upstream};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

type Seen = HashMap<String, Vec<String>>;

/// The request headers the echo upstream saw.
async fn seen_by_upstream(r: reqwest::Response) -> Seen {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// `GET path` through nginx with `headers`; redirects are not followed.
async fn get(nginx: &Nginx, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", nginx.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn setup() -> (FakeKratos, Gate, Nginx) {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("ngx"));
    let mut cfg = config(&kratos.url());
    cfg.deny.login_url = Some("https://auth.example.com/login".into());
    // The policy of /public/ comes from sessiongate's rules, as documented.
    cfg.routes.rules = vec![sessiongate::config::RuleConfig {
        anonymous: true,
        ..rule("public", &["/public/**"])
    }];
    let gate = Gate::start(cfg).await;
    let upstream = echo_upstream().await;
    let nginx = Nginx::start(gate.http, upstream).await;
    (kratos, gate, nginx)
}

#[tokio::test]
async fn valid_session_reaches_upstream_with_a_verifiable_jwt_and_no_session_cookie() {
    let (_kratos, gate, nginx) = setup().await;
    let r = get(
        &nginx,
        "/orders/7?x=1",
        &[
            ("cookie", "theme=dark; ory_kratos_session=good"),
            ("authorization", "Bearer forged.token.here"),
            ("x-user-id", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = seen_by_upstream(r).await;
    let auth = &seen["authorization"];
    assert_eq!(auth.len(), 1, "{seen:?}");
    let claims = verify(&gate, &auth[0], "app").await;
    assert_eq!(claims["sub"], "ident-ngx");
    assert_eq!(seen["x-user-id"], vec!["ident-ngx"]);
    assert_eq!(
        seen["cookie"],
        vec!["theme=dark"],
        "session cookie stripped, others kept"
    );
}

#[tokio::test]
async fn no_session_is_401_for_apis_and_a_redirect_for_browsers() {
    let (kratos, _gate, nginx) = setup().await;
    let r = get(&nginx, "/orders", &[("accept", "application/json")]).await;
    assert_eq!(r.status(), 401);
    let r = get(&nginx, "/orders?page=2", &[("accept", "text/html")]).await;
    assert_eq!(r.status(), 303);
    let loc = r.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("https://auth.example.com/login?return_to=http%3A%2F%2F127.0.0.1"),
        "{loc}"
    );
    assert!(loc.ends_with("%2Forders%3Fpage%3D2"), "{loc}");
    // Garbage cookie: denied (Kratos says 401).
    let r = get(
        &nginx,
        "/orders",
        &[("cookie", "ory_kratos_session=garbage")],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(kratos.calls(), 1);
}

#[tokio::test]
async fn forged_identity_headers_never_reach_upstream_on_anonymous_routes() {
    let (_kratos, _gate, nginx) = setup().await;
    let r = get(
        &nginx,
        "/public/page",
        &[
            ("authorization", "Bearer forged.token.here"),
            ("x-user-id", "admin"),
            ("x-session-token", "whatever"),
            ("cookie", "theme=dark"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = seen_by_upstream(r).await;
    assert!(!seen.contains_key("authorization"), "{seen:?}");
    assert!(!seen.contains_key("x-user-id"), "{seen:?}");
    assert!(!seen.contains_key("x-session-token"), "{seen:?}");
    assert_eq!(seen["cookie"], vec!["theme=dark"], "other cookies pass");
}

#[tokio::test]
async fn spoofed_forwarded_headers_from_clients_are_overwritten_by_nginx() {
    let (_kratos, _gate, nginx) = setup().await;
    // A client claims the request is for a public path; nginx overwrites X-Original-URI.
    let r = get(
        &nginx,
        "/orders",
        &[
            ("x-original-uri", "/public/x"),
            ("x-forwarded-uri", "/public/x"),
            ("accept", "text/html"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let loc = r.headers()["location"].to_str().unwrap();
    assert!(loc.ends_with("%2Forders"), "checked the real URI: {loc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kratos_session_through_nginx() {
    let k = support::kratos::KratosHarness::start()
        .await
        .expect("kratos");
    let mut cfg = config(k.public_url());
    cfg.whoami.timeout = std::time::Duration::from_secs(2);
    let gate = Gate::start(cfg).await;
    let upstream = echo_upstream().await;
    let nginx = Nginx::start(gate.http, upstream).await;
    let email = format!("nginx-{}@example.com", uuid::Uuid::new_v4().simple());
    let (token, session) = k
        .register_api(
            &email,
            "correct-horse-battery-staple-42",
            serde_json::json!({"name": {"first": "N", "last": "X"}}),
        )
        .await
        .unwrap();
    let cookie_value = k
        .browser_login(&email, "correct-horse-battery-staple-42")
        .await
        .unwrap();

    // Session token header through nginx.
    let r = get(
        &nginx,
        "/api/me",
        &[
            ("x-session-token", &token),
            ("authorization", "Bearer forged.token.here"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = seen_by_upstream(r).await;
    let claims = verify(&gate, &seen["authorization"][0], "app").await;
    assert_eq!(claims["sub"], session["identity"]["id"]);
    assert_eq!(claims["email"], email.as_str());
    assert!(!seen.contains_key("x-session-token"), "{seen:?}");

    // The real browser cookie through nginx: the upstream never sees it.
    let r = get(
        &nginx,
        "/dashboard",
        &[(
            "cookie",
            &format!("theme=dark; ory_kratos_session={cookie_value}"),
        )],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = seen_by_upstream(r).await;
    assert_eq!(seen["cookie"], vec!["theme=dark"]);
    assert_eq!(
        verify(&gate, &seen["authorization"][0], "app").await["sub"],
        session["identity"]["id"]
    );

    // Logged out in Kratos (API logout) and invalidated: nginx now answers 401.
    k.api_logout(&token).await.unwrap();
    gate.handles
        .cache
        .invalidate_session(session["id"].as_str().unwrap())
        .await
        .unwrap();
    let r = get(&nginx, "/api/me", &[("x-session-token", &token)]).await;
    assert_eq!(r.status(), 401);
}
