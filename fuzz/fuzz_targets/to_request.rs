//! `grpc::to_request` on any `CheckRequest` prost can decode from the input: never panics, and
//! `:path` / `:authority` come through unchanged when the typed fields are empty.
#![no_main]

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(check) = CheckRequest::decode(data) else {
        return;
    };
    let Some(req) = sessiongate::grpc::to_request(check.clone()) else {
        return;
    };
    let http = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .expect("to_request returned Some");
    if !http.path.is_empty() {
        assert_eq!(req.path, http.path);
    } else if let Some(p) = http.headers.get(":path") {
        assert_eq!(&req.path, p);
    }
    if !http.host.is_empty() {
        assert_eq!(req.host, http.host);
    } else if let Some(a) = http.headers.get(":authority").filter(|a| !a.is_empty()) {
        assert_eq!(&req.host, a);
    }
    // The domain side must cope with whatever came through.
    let _ = sessiongate::authz::client_max_age(&req.headers);
});
