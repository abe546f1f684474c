//! Where session credentials are looked for, and what a Kratos credential looks like.

use serde::{Deserialize, Serialize};

/// Where the session credential is looked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// Exact session cookie names.
    pub cookie_names: Vec<String>,
    /// Cookie name prefixes (Ory Network: `ory_session_`).
    pub cookie_prefixes: Vec<String>,
    /// Accept the `X-Session-Token` header.
    pub session_token_header: bool,
    /// Accept `Authorization: Bearer <session token>`.
    pub bearer: bool,
    /// Longest accepted credential in bytes; longer is a deny without a whoami call.
    pub max_length: usize,
    /// What a Kratos credential looks like; anything else is "no session" without a whoami call.
    pub shape: ShapeConfig,
}

/// The shape of Kratos credentials. The defaults accept what Kratos and Ory Network issue:
/// session tokens `ory_st_` + 32 alphanumerics (Kratos before v1.0: 32 alphanumerics), and
/// session cookies holding a securecookie value (base64url with `=` padding, 100+ characters).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShapeConfig {
    /// Check shapes at all. `false`: every credential within `max_length` goes to whoami.
    pub enabled: bool,
    /// The prefix of session tokens (`X-Session-Token`, `Authorization: Bearer`).
    pub token_prefix: String,
    /// Accept tokens without the prefix (sessions issued by Kratos before v1.0).
    pub unprefixed_tokens: bool,
    /// Fewest alphanumerics after the prefix (Kratos issues 32).
    pub token_min_length: usize,
    /// Fewest characters in a session cookie value (base64url and `=` only).
    pub cookie_min_length: usize,
}

impl Default for ShapeConfig {
    fn default() -> Self {
        ShapeConfig {
            enabled: true,
            token_prefix: "ory_st_".into(),
            unprefixed_tokens: true,
            token_min_length: 32,
            cookie_min_length: 40,
        }
    }
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            cookie_names: vec!["ory_kratos_session".into()],
            cookie_prefixes: vec![],
            session_token_header: true,
            bearer: true,
            max_length: 4096,
            shape: ShapeConfig::default(),
        }
    }
}
