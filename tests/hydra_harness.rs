//! The Hydra harness itself works: both access-token strategies, their formats, introspection,
//! revocation and key rotation against a real Ory Hydra v2.3.0 (`scripts/hydra.sh build`).

#[path = "support/hydra.rs"]
mod hydra;

use hydra::{HydraHarness, Strategy};

fn header_kid(jwt: &str) -> String {
    use base64::Engine;
    let h = jwt.split('.').next().unwrap();
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn hydra_issues_opaque_and_jwt_tokens_and_rotates_keys() {
    let h = HydraHarness::start().await.expect("hydra starts");
    let opaque = h
        .create_client(
            "harness-opaque",
            Strategy::Opaque,
            "read write",
            &["api://a"],
        )
        .await
        .unwrap();
    let jwt = h
        .create_client("harness-jwt", Strategy::Jwt, "read", &["api://a"])
        .await
        .unwrap();

    let o = h.token(&opaque, "read", &["api://a"]).await.unwrap();
    let rest = o
        .strip_prefix("ory_at_")
        .expect("opaque format ory_at_<a>.<b>");
    assert_eq!(rest.split('.').count(), 2, "{o}");
    let j = h.token(&jwt, "read", &["api://a"]).await.unwrap();
    assert_eq!(j.split('.').count(), 3, "JWT has three parts: {j}");

    let i = h.introspect(&o).await.unwrap();
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["client_id"], "harness-opaque");
    h.revoke(&opaque, &o).await.unwrap();
    assert_eq!(h.introspect(&o).await.unwrap()["active"], false);

    let kids_before = h.jwks().await.unwrap()["keys"].as_array().unwrap().len();
    let old_kid = header_kid(&j);
    h.rotate_access_token_key("harness-rotated", "ES256")
        .await
        .unwrap();
    let keys = h.jwks().await.unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), kids_before + 1);
    let j2 = h.token(&jwt, "read", &["api://a"]).await.unwrap();
    assert_eq!(header_kid(&j2), "harness-rotated");
    assert_ne!(old_kid, "harness-rotated");
}
