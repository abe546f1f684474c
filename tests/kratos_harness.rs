//! Self-test of the real-Kratos harness (tests/support/kratos.rs): every flow the sessiongate
//! integration tests rely on, against a real Ory Kratos built by scripts/kratos.sh.

#[path = "support/kratos.rs"]
mod kratos;

use kratos::{Credential, KratosHarness, totp_code};
use serde_json::{Value, json};

fn body_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn totp_matches_rfc6238_sha1_vectors() {
    // RFC 6238 appendix B, SHA1 secret "12345678901234567890" (base32 below), last 6 digits.
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    assert_eq!(totp_code(secret, 59).unwrap(), "287082");
    assert_eq!(totp_code(secret, 1111111109).unwrap(), "081804");
    assert_eq!(totp_code(secret, 1234567890).unwrap(), "005924");
    assert_eq!(totp_code(secret, 20000000000).unwrap(), "353130");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kratos_flows() {
    let started = std::time::Instant::now();
    let k = KratosHarness::start().await.expect("start kratos");
    eprintln!(
        "kratos ready in {:?} at {} / {}",
        started.elapsed(),
        k.public_url(),
        k.admin_url()
    );
    if let Err(e) = run_flows(&k).await {
        panic!("{e:#}\n--- kratos log tail ---\n{}", k.log_tail(40));
    }
}

async fn run_flows(k: &KratosHarness) -> anyhow::Result<()> {
    let email = format!("{}@example.com", uuid::Uuid::new_v4());
    let password = "correct-horse-battery";
    let traits = json!({ "name": { "first": "Ada", "last": "Lovelace" } });
    let expected_traits = json!({ "email": email, "name": { "first": "Ada", "last": "Lovelace" } });

    // No credentials / garbage credentials -> 401.
    let (st, _) = k.whoami(Credential::Token("ory_st_garbage")).await?;
    assert_eq!(st, 401);
    let (st, _) = k.whoami(Credential::Cookie("garbage")).await?;
    assert_eq!(st, 401);

    // API registration returns a session token (session hook).
    let (token, session) = k.register_api(&email, password, traits).await?;
    assert!(token.starts_with("ory_st_"), "{token}");
    assert_eq!(session["identity"]["traits"], expected_traits);
    assert_eq!(session["authenticator_assurance_level"], "aal1");
    let (st, body) = k.whoami(Credential::Token(&token)).await?;
    assert_eq!(st, 200, "{body}");
    let who = body_json(&body);
    assert_eq!(who["identity"]["traits"], expected_traits);
    assert_eq!(who["id"], session["id"]);
    assert_eq!(who["active"], true);
    let identity_id = who["identity"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        k.admin_get_identity(&identity_id).await?["traits"],
        expected_traits
    );

    // Browser login -> real ory_kratos_session cookie accepted by whoami.
    let cookie = k.browser_login(&email, password).await?;
    let (st, body) = k.whoami(Credential::Cookie(&cookie)).await?;
    assert_eq!(st, 200, "{body}");
    let cookie_session = body_json(&body);
    assert_eq!(cookie_session["identity"]["traits"], expected_traits);
    assert_ne!(cookie_session["id"], who["id"]);

    // Admin revoke of the cookie session -> 401 for the cookie, token session unaffected.
    k.admin_revoke_session(cookie_session["id"].as_str().unwrap())
        .await?;
    let (st, _) = k.whoami(Credential::Cookie(&cookie)).await?;
    assert_eq!(st, 401);
    let (st, _) = k.whoami(Credential::Token(&token)).await?;
    assert_eq!(st, 200);

    // API logout -> token rejected.
    let (token2, _) = k.login_api(&email, password).await?;
    assert_eq!(k.whoami(Credential::Token(&token2)).await?.0, 200);
    k.api_logout(&token2).await?;
    assert_eq!(k.whoami(Credential::Token(&token2)).await?.0, 401);

    // A browser session made before TOTP exists...
    let old_cookie = k.browser_login(&email, password).await?;
    assert_eq!(k.whoami(Credential::Cookie(&old_cookie)).await?.0, 200);

    // Enable TOTP through the settings API flow; Kratos lifts that very session to aal2.
    let secret = k.enable_totp(&token).await?;
    let (st, body) = k.whoami(Credential::Token(&token)).await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body_json(&body)["authenticator_assurance_level"], "aal2");

    // Now aal1 sessions are refused with 403 session_aal2_required (whoami.required_aal: highest_available).
    let (st, body) = k.whoami(Credential::Cookie(&old_cookie)).await?;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body_json(&body)["error"]["id"], "session_aal2_required");
    let (aal1_token, s) = k.login_api(&email, password).await?;
    assert_eq!(s["authenticator_assurance_level"], "aal1");
    let (st, body) = k.whoami(Credential::Token(&aal1_token)).await?;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body_json(&body)["error"]["id"], "session_aal2_required");
    let aal1_cookie = k.browser_login(&email, password).await?;
    let (st, body) = k.whoami(Credential::Cookie(&aal1_cookie)).await?;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body_json(&body)["error"]["id"], "session_aal2_required");

    // Step up the aal1 token to aal2 -> 200.
    let upgraded = k.upgrade_aal2(&aal1_token, &secret).await?;
    assert_eq!(upgraded["authenticator_assurance_level"], "aal2");
    let (st, body) = k.whoami(Credential::Token(&aal1_token)).await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body_json(&body)["authenticator_assurance_level"], "aal2");

    // Fresh aal2 logins, API and browser.
    let (aal2_token, s) = k.login_aal2(&email, password, &secret).await?;
    assert_eq!(s["authenticator_assurance_level"], "aal2");
    let (st, body) = k.whoami(Credential::Token(&aal2_token)).await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body_json(&body)["identity"]["traits"], expected_traits);
    let aal2_cookie = k.browser_login_aal2(&email, password, &secret).await?;
    let (st, body) = k.whoami(Credential::Cookie(&aal2_cookie)).await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body_json(&body)["authenticator_assurance_level"], "aal2");
    Ok(())
}
