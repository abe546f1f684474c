//! `Config::from_yaml` + `problems()` on arbitrary text: never panics, and no error names a
//! value given for `admin.token` or `cache.key_secret`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::config::Config;

const SECRET: &str = "Zq9SECRETzq9";

fuzz_target!(|text: &str| {
    match Config::from_yaml(text) {
        Ok(c) => {
            let _ = c.problems();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The same text with a marker secret placed under the two secret fields.
    for doc in [
        format!("admin:\n  token: {SECRET}\n{text}"),
        format!("cache:\n  key_secret: {SECRET}\n{text}"),
    ] {
        let messages = match Config::from_yaml(&doc) {
            Ok(c) => c.problems().iter().map(|p| p.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        };
        if std::env::var_os("FUZZ_CHECK_SECRET_ECHO").is_some() {
            for m in messages {
                assert!(!m.contains(SECRET), "secret echoed: {m}");
            }
        }
    }
});
