//! `parse_cookies` on arbitrary `Cookie` header text: never panics, yields clean names, and
//! agrees with `strip_session_cookies` about which cookies are session cookies (including
//! one smuggled after a comma inside another cookie's value, which is stripped too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::authz::Headers;
use sessiongate::config::CredentialsConfig;
use sessiongate::credentials::{CookieRewrite, Extractor, parse_cookies};

fuzz_target!(|header: &str| {
    for (name, value) in parse_cookies(header) {
        assert!(!name.is_empty());
        assert!(name.is_ascii());
        assert!(
            !name
                .chars()
                .any(|c| c == ';' || c == ',' || c == '=' || c.is_whitespace() || c.is_control()),
            "name {name:?}"
        );
        // `;` separates cookies; a `,` belongs to the value it stands in.
        assert!(!value.contains(';'), "value {value:?}");
    }
    let e = Extractor::new(&CredentialsConfig {
        cookie_prefixes: vec!["ory_session_".into()],
        ..CredentialsConfig::default()
    });
    let mut h = Headers::default();
    h.append("cookie", header);
    let has_session = parse_cookies(header).any(|(n, _)| e.is_session_cookie(n));
    match e.strip_session_cookies(&h) {
        CookieRewrite::Unchanged => assert!(!has_session, "a session cookie was not stripped"),
        CookieRewrite::Remove => {}
        CookieRewrite::Replace(v) => {
            assert!(!v.is_empty());
            assert!(
                !parse_cookies(&v).any(|(n, _)| e.is_session_cookie(n)),
                "session cookie survives in {v:?}"
            );
            assert!(
                !v.split([';', ','])
                    .any(|p| e.is_session_cookie(p.split_once('=').map_or(p, |(n, _)| n).trim())),
                "a session cookie survives after a comma in {v:?}"
            );
        }
    }
});
