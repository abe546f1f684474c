//! Trust boundaries, end to end over gRPC and HTTP `/check`: nothing a client sends may change
//! what it does not own. Each test stands for one way in that once worked (see SECURITY.md's
//! threat model); the Redis ones are in redis_e2e.rs.

mod support;

use std::time::Duration;

use sessiongate::config::{Cidr, Config};
use support::upstream::{Behaviour, FakeKratos};
use support::*;

async fn setup(tweak: impl FnOnce(&mut Config)) -> (FakeKratos, Gate) {
    let kratos = FakeKratos::start().await;
    kratos.set("good", Behaviour::active("good"));
    kratos.set("victim", Behaviour::active("victim"));
    let mut cfg = config(&kratos.url());
    tweak(&mut cfg);
    let gate = Gate::start(cfg).await;
    (kratos, gate)
}

/// A forward-auth request from a trusted proxy (loopback), as nginx/Traefik/Caddy send it.
async fn forward(gate: &Gate, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(format!("http://{}/check", gate.http));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

async fn session_invalidations(gate: &Gate) -> f64 {
    metric(gate, "cache_invalidations_total", "kind=\"session\"").await
}

/// Item 1: a logout pattern in a request without any credential evicts nobody, however often.
#[tokio::test]
async fn logout_without_a_credential_evicts_nobody() {
    let (kratos, gate) = setup(|_| {}).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("victim")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 1);
    let before = session_invalidations(&gate).await;
    for _ in 0..3 {
        let r = forward(
            &gate,
            &[
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-uri", "/sessions/sess-victim"),
            ],
        )
        .await;
        assert_eq!(r.status(), 401);
    }
    // The logout work runs in the background (now and after the grace period).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        session_invalidations(&gate).await,
        before,
        "no invalidation at all"
    );
    allowed(&client.check(cookie("victim")).await.unwrap().into_inner());
    assert_eq!(
        kratos.calls(),
        1,
        "the victim's session is still a cache hit"
    );
}

/// Item 1: a caller with a valid session cannot end someone else's session by naming its id
/// (every JWT carries `sid`), but can end its own.
#[tokio::test]
async fn a_caller_ends_only_its_own_sessions() {
    let (kratos, gate) = setup(|c| c.logout.grace = Duration::from_millis(50)).await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("victim")).await.unwrap().into_inner());
    allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 2);
    let attacker = [
        ("cookie", "ory_kratos_session=good"),
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-uri", "/sessions/sess-victim"),
    ];
    assert_eq!(forward(&gate, &attacker).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    allowed(&client.check(cookie("victim")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 2, "the victim's session was not touched");

    // Its own session id: dropped (and looked up again).
    let own = [
        ("cookie", "ory_kratos_session=good"),
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-uri", "/sessions/sess-good"),
    ];
    assert_eq!(forward(&gate, &own).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = kratos.calls();
    allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), calls + 1, "its own session was dropped");
}

/// Item 3: with the token in another header, the client's own `Authorization` (here the
/// Kratos session token it authenticated with, or a forged JWT) never reaches upstream.
#[tokio::test]
async fn a_custom_token_header_still_removes_the_clients_authorization() {
    let (_kratos, gate) = setup(|c| c.upstream.token_header = "x-jwt".into()).await;
    let mut client = gate.client().await;
    let m = allowed(
        &client
            .check(check_request(&[("authorization", "Bearer good")], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(m.set.contains_key("x-jwt"));
    assert!(!m.set.contains_key("authorization"));
    assert!(
        m.remove.contains(&"authorization".to_string()),
        "{:?}",
        m.remove
    );
    // Anonymous route, forged JWT.
    let req = check_request(
        &[("authorization", "Bearer aaa.bbb.ccc")],
        &[("anonymous", "true")],
    );
    let m = allowed(&client.check(req).await.unwrap().into_inner());
    assert!(
        m.remove.contains(&"authorization".to_string()),
        "{:?}",
        m.remove
    );
    assert!(m.remove.contains(&"x-jwt".to_string()));
}

/// Item 4: `/check` hands out signed tokens, so a peer outside `trusted_proxies` gets 403 by
/// default — the side port is reachable by every upstream (for the JWKS).
#[tokio::test]
async fn forward_auth_refuses_untrusted_peers_by_default() {
    let only_10 = |c: &mut Config| {
        c.forward_auth.trusted_proxies = vec!["10.0.0.0/8".parse::<Cidr>().unwrap()];
    };
    let (kratos, gate) = setup(only_10).await;
    let r = forward(&gate, &[("cookie", "ory_kratos_session=good")]).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("authorization").is_none());
    assert!(r.text().await.unwrap().contains("untrusted_peer"));
    assert_eq!(kratos.calls(), 0, "not even looked up");

    let (_kratos, gate) = setup(|c| {
        only_10(c);
        c.forward_auth.answer_untrusted_peers = true;
    })
    .await;
    let r = forward(&gate, &[("cookie", "ory_kratos_session=good")]).await;
    assert_eq!(r.status(), 200, "opted in: judged at face value");
    assert!(r.headers().get("authorization").is_some());
}

/// Item 5: a `,` inside another cookie's value cannot smuggle a session cookie, two different
/// session cookies are ambiguous (denied without asking Kratos), and other cookies reach
/// upstream as they came.
#[tokio::test]
async fn cookies_cannot_be_smuggled_and_others_are_kept_as_they_came() {
    let (kratos, gate) =
        setup(|c| c.credentials.cookie_prefixes = vec!["ory_session_".into()]).await;
    let mut client = gate.client().await;
    let smuggled = check_request(&[("cookie", "a=x,ory_kratos_session=good")], &[]);
    let (status, _, _) = denied(&client.check(smuggled).await.unwrap().into_inner());
    assert_eq!(status, 401);
    for ambiguous in [
        "ory_kratos_session=good; ory_kratos_session=victim",
        "ory_kratos_session=good; ory_session_x=victim",
    ] {
        let r = client
            .check(check_request(&[("cookie", ambiguous)], &[]))
            .await
            .unwrap()
            .into_inner();
        let (status, _, body) = denied(&r);
        assert_eq!(status, 401);
        assert!(body.contains("more than one session credential"), "{body}");
    }
    assert_eq!(kratos.calls(), 0, "neither shape reached Kratos");

    let r = client
        .check(check_request(
            &[("cookie", "a=1,2; ory_kratos_session=good; b=\"x y\"")],
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed(&r).set["cookie"], "a=1,2; b=\"x y\"");
}

/// Item 5: Kratos' own order — X-Session-Token, then the cookie, then Bearer — and whatever
/// Kratos would also have accepted does not reach upstream.
#[tokio::test]
async fn credentials_follow_kratos_order_and_all_are_stripped() {
    let (kratos, gate) = setup(|_| {}).await;
    let mut client = gate.client().await;
    let r = client
        .check(check_request(
            &[
                ("cookie", "ory_kratos_session=good"),
                ("authorization", "Bearer victim"),
            ],
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let m = allowed(&r);
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        "ident-good"
    );
    assert_eq!(kratos.calls(), 1);
    let seen = &kratos.received()[0];
    assert!(seen.cookie.as_deref().is_some_and(|c| c.contains("good")));
    assert_eq!(seen.authorization, None, "the cookie wins over Bearer");
    assert!(m.remove.contains(&"cookie".to_string()));
    let r = client
        .check(check_request(
            &[
                ("cookie", "ory_kratos_session=victim"),
                ("x-session-token", "good"),
            ],
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let m = allowed(&r);
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["sub"],
        "ident-good"
    );
    assert!(m.remove.contains(&"x-session-token".to_string()));
    assert!(m.remove.contains(&"cookie".to_string()));
}

/// Item 7: an empty or short `admin.token_file` does not switch the admin API on with a
/// trivial token: the configuration is refused, naming the field.
#[tokio::test]
async fn a_trivial_admin_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for content in ["", "\n", "short\n", "   padded-with-spaces-0123456789   \n"] {
        let path = dir.path().join("token");
        std::fs::write(&path, content).unwrap();
        let mut c = config("http://127.0.0.1:1");
        c.admin.token_file = Some(path);
        let err = sessiongate::app::App::bind(c)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token_file"), "{content:?}: {err}");
    }
}

/// Item 8: a `no-cache` request reaches Kratos even while an earlier lookup of the same
/// credential is in flight (it must not be answered from a call that predates it).
#[tokio::test]
async fn no_cache_never_joins_an_earlier_lookup() {
    let (kratos, gate) = setup(|c| {
        c.cache.client_max_age = sessiongate::config::ClientMaxAge::Always;
        c.whoami.timeout = Duration::from_secs(2);
    })
    .await;
    kratos.set(
        "slow",
        Behaviour::Slow(
            Duration::from_millis(300),
            Box::new(Behaviour::active("slow")),
        ),
    );
    let mut first = gate.client().await;
    let pending = tokio::spawn(async move { first.check(cookie("slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(kratos.calls(), 1);
    let mut client = gate.client().await;
    let req = check_request(
        &[
            ("cookie", "ory_kratos_session=slow"),
            ("cache-control", "no-cache"),
        ],
        &[],
    );
    allowed(&client.check(req).await.unwrap().into_inner());
    assert_eq!(kratos.calls(), 2, "the no-cache request made its own call");
    allowed(&pending.await.unwrap().unwrap().into_inner());
}

/// A lookup that must be fresh — a refresh-ahead, a client's `no-cache` — asks Kratos with
/// `Cache-Control: max-age=0`, or Ory Network answers from its edge cache (minutes old, a
/// revoked session included). Plain first lookups may use that cache.
#[tokio::test]
async fn fresh_lookups_ask_past_ory_networks_edge_cache() {
    let (kratos, gate) = setup(|c| {
        c.cache.refresh_after = Duration::from_millis(100);
        c.cache.client_max_age = sessiongate::config::ClientMaxAge::Always;
    })
    .await;
    let mut client = gate.client().await;
    allowed(&client.check(cookie("good")).await.unwrap().into_inner());
    tokio::time::sleep(Duration::from_millis(150)).await;
    allowed(&client.check(cookie("good")).await.unwrap().into_inner()); // stale: refresh
    for _ in 0..100 {
        if kratos.calls() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = check_request(
        &[
            ("cookie", "ory_kratos_session=good"),
            ("cache-control", "no-cache"),
        ],
        &[],
    );
    allowed(&client.check(req).await.unwrap().into_inner());
    let seen: Vec<Option<String>> = kratos
        .received()
        .into_iter()
        .map(|r| r.cache_control)
        .collect();
    assert_eq!(
        seen,
        vec![None, Some("max-age=0".into()), Some("max-age=0".into())],
        "first lookup, refresh-ahead, no-cache"
    );
}

/// An introspection answer that is active but names nobody (no `sub`, no `client_id`) gets no
/// token minted: 401, as an invalid token.
#[tokio::test]
async fn an_access_token_naming_nobody_is_refused() {
    use sessiongate::config::{ClientAuth, CredentialKind, IntrospectionConfig};
    let (kratos, gate) = setup(|c| {
        c.oauth2_introspection = Some(IntrospectionConfig::new(
            format!("{}/admin/oauth2/introspect", c.whoami.base_url),
            ClientAuth::None,
        ));
        c.routes.credentials = vec![CredentialKind::Oauth2];
    })
    .await;
    let mut client = gate.client().await;
    let bearer = |t: &str| check_request(&[("authorization", &format!("Bearer {t}"))], &[]);
    let m = allowed(
        &client
            .check(bearer("ory_at_valid-1"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        verify(&gate, &m.set["authorization"], "app").await["client_id"],
        "bench"
    );
    let r = client
        .check(bearer("ory_at_nosub-1"))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, _) = denied(&r);
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].contains("invalid_token"));
    assert_eq!(kratos.calls(), 2, "two introspection calls, no whoami");
}
