//! `Extractor::extract` on arbitrary headers: never panics, and a credential is never longer
//! than `max_length` nor contains bytes outside 0x21..=0x7e.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sessiongate::authz::Headers;
use sessiongate::config::CredentialsConfig;
use sessiongate::credentials::{CookieRewrite, Extractor, parse_cookies};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Header names are picked mostly from the ones that matter.
    headers: Vec<(u8, String, String)>,
    max_length: u16,
    prefixes: bool,
    session_token_header: bool,
    bearer: bool,
}

const NAMES: [&str; 6] = [
    "cookie",
    "x-session-token",
    "authorization",
    "Cookie",
    "AUTHORIZATION",
    "X-Session-Token",
];

fuzz_target!(|input: Input| {
    let max_length = usize::from(input.max_length).clamp(16, 65536);
    let e = Extractor::new(&CredentialsConfig {
        cookie_prefixes: if input.prefixes {
            vec!["ory_session_".into()]
        } else {
            vec![]
        },
        session_token_header: input.session_token_header,
        bearer: input.bearer,
        max_length,
        ..CredentialsConfig::default()
    });
    let mut h = Headers::default();
    for (pick, name, value) in &input.headers {
        let name = NAMES.get(usize::from(*pick)).copied().unwrap_or(name.as_str());
        h.append(name, value);
    }
    if let Ok(c) = e.extract(&h) {
        let v = c.expose();
        assert!(!v.is_empty());
        assert!(v.len() <= max_length);
        assert!(v.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{v:?}");
        if c.cookie_name.is_some() {
            assert_ne!(e.strip_session_cookies(&h), CookieRewrite::Unchanged);
        }
    }
    if let CookieRewrite::Replace(v) = e.strip_session_cookies(&h) {
        assert!(!parse_cookies(&v).any(|(n, _)| e.is_session_cookie(n)));
    }
});
