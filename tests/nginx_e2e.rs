//! HTTP forward-auth with a real nginx (`auth_request`) in front of an echo upstream: what the
//! upstream sees, and what clients get, for sessions, no sessions, browsers and forgeries.

mod support;

use std::collections::HashMap;

use support::nginx::{Nginx, echo_upstream};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

type Seen = HashMap<String, Vec<String>>;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn setup() -> (FakeKratos, Gate, Nginx) {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("ngx"));
    let mut cfg = config(&kratos.url());
    cfg.deny.login_url = Some("https://auth.example.com/login".into());
    let gate = Gate::start(cfg).await;
    let upstream = echo_upstream().await;
    let nginx = Nginx::start(gate.http, upstream).await;
    (kratos, gate, nginx)
}

#[tokio::test]
async fn valid_session_reaches_upstream_with_a_verifiable_jwt_and_no_session_cookie() {
    let (_kratos, gate, nginx) = setup().await;
    let r = client()
        .get(format!("{}/orders/7?x=1", nginx.url()))
        .header("cookie", "theme=dark; ory_kratos_session=good")
        .header("authorization", "Bearer forged.token.here")
        .header("x-user-id", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Seen = serde_json::from_str(&r.text().await.unwrap()).unwrap();
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
    let r = client()
        .get(format!("{}/orders", nginx.url()))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/orders?page=2", nginx.url()))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let loc = r.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("https://auth.example.com/login?return_to=http%3A%2F%2F127.0.0.1"),
        "{loc}"
    );
    assert!(loc.ends_with("%2Forders%3Fpage%3D2"), "{loc}");
    // Garbage cookie: denied (Kratos says 401).
    let r = client()
        .get(format!("{}/orders", nginx.url()))
        .header("cookie", "ory_kratos_session=garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(kratos.calls(), 1);
}

#[tokio::test]
async fn forged_identity_headers_never_reach_upstream_on_anonymous_routes() {
    let (_kratos, _gate, nginx) = setup().await;
    let r = client()
        .get(format!("{}/public/page", nginx.url()))
        .header("authorization", "Bearer forged.token.here")
        .header("x-user-id", "admin")
        .header("x-session-token", "whatever")
        .header("cookie", "theme=dark")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Seen = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(!seen.contains_key("authorization"), "{seen:?}");
    assert!(!seen.contains_key("x-user-id"), "{seen:?}");
    assert!(!seen.contains_key("x-session-token"), "{seen:?}");
    assert_eq!(seen["cookie"], vec!["theme=dark"], "other cookies pass");
}

#[tokio::test]
async fn spoofed_forwarded_headers_from_clients_are_overwritten_by_nginx() {
    let (_kratos, _gate, nginx) = setup().await;
    // A client claims the request is for a public path; nginx overwrites X-Original-URI.
    let r = client()
        .get(format!("{}/orders", nginx.url()))
        .header("x-original-uri", "/public/x")
        .header("x-forwarded-uri", "/public/x")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
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
    let r = client()
        .get(format!("{}/api/me", nginx.url()))
        .header("x-session-token", &token)
        .header("authorization", "Bearer forged.token.here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Seen = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let claims = verify(&gate, &seen["authorization"][0], "app").await;
    assert_eq!(claims["sub"], session["identity"]["id"]);
    assert_eq!(claims["email"], email.as_str());
    assert!(!seen.contains_key("x-session-token"), "{seen:?}");

    // The real browser cookie through nginx: the upstream never sees it.
    let r = client()
        .get(format!("{}/dashboard", nginx.url()))
        .header(
            "cookie",
            format!("theme=dark; ory_kratos_session={cookie_value}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Seen = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(seen["cookie"], vec!["theme=dark"]);
    assert_eq!(
        verify(&gate, &seen["authorization"][0], "app").await["sub"],
        session["identity"]["id"]
    );

    // Logged out in Kratos (API logout) and invalidated: nginx now answers 401.
    k.api_logout(&token).await.unwrap();
    gate.handles
        .authorizer
        .cache()
        .invalidate_session(session["id"].as_str().unwrap())
        .await;
    let r = client()
        .get(format!("{}/api/me", nginx.url()))
        .header("x-session-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
