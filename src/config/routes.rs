//! The route rule table as configured (`routes:`): the single source of per-route policy. The
//! authorizer compiles it once (`authz::routes::RouteTable`); this module only holds its shape.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `routes:` — which policy a request gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// What a request that no rule matches gets.
    pub default: DefaultPolicy,
    /// Rules, first match wins.
    pub rules: Vec<RuleConfig>,
    /// Credentials accepted where a rule does not say (and by `default`): `[session]`.
    pub credentials: Vec<CredentialKind>,
    /// How often the config file is checked for changed rules (also re-read on SIGHUP);
    /// `0s`: on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            default: DefaultPolicy::Session,
            rules: Vec::new(),
            credentials: vec![CredentialKind::Session],
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// The policy of requests no rule matches.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// A valid session is required (the behaviour without rules).
    #[default]
    Session,
    /// Allowed without a session (a valid session still gets a token).
    Anonymous,
    /// Denied (403): every route must be listed.
    Deny,
}

/// One rule: which requests (`match`) get which policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Unique name: Envoy routes may name it (`context_extensions: {route: <name>}`), proxies
    /// may (`/check/r/<name>`), and it labels metrics and logs.
    pub name: String,
    /// Which requests this rule is for.
    #[serde(rename = "match")]
    pub matches: MatchConfig,
    /// Allow without a session (a valid session still gets a token).
    pub anonymous: bool,
    /// Minimum assurance level (`aal1`, `aal2`).
    pub aal: Option<String>,
    /// `aud` of the minted token, instead of `jwt.audience`.
    pub audience: Option<String>,
    /// Predicates on the session, all of which must hold.
    pub require: Vec<RequirementConfig>,
    /// `authenticated_at` must be younger than this, else re-authentication.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_auth_age: Option<Duration>,
    /// Honour the client's `Cache-Control: max-age` here (with `cache.client_max_age: route`).
    pub client_max_age: bool,
    /// Which credentials this route accepts (default: a Kratos session only).
    pub credentials: Vec<CredentialKind>,
    /// OAuth2 scopes a `jwt` or `oauth2` credential must carry here (403 `insufficient_scope`).
    pub scopes: Vec<String>,
}

/// A kind of credential a route accepts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A Kratos session: cookie, `X-Session-Token`, or a Bearer session token.
    Session,
    /// A JWT access token from a configured `jwt_issuers` entry (`Authorization: Bearer`).
    Jwt,
    /// An opaque OAuth2 access token, introspected (`Authorization: Bearer`).
    Oauth2,
}

/// What a rule matches. An empty list matches anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// Exact hosts or `*.` wildcards; case-insensitive, port ignored.
    pub hosts: Vec<String>,
    /// Upper-case methods.
    pub methods: Vec<String>,
    /// Paths: exact, `*` (one segment) or `**` (any rest); matched after normalisation, never
    /// against the query.
    pub paths: Vec<String>,
}

/// One predicate on a JSON pointer into the whoami session. Exactly one of `equals`,
/// `one_of`, `exists`, `matches`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequirementConfig {
    /// JSON pointer into the whoami session, e.g. `/identity/metadata_public/role`.
    pub claim: String,
    /// The value must equal this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    /// The value must equal one of these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// The value must be present (`true`) or absent (`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// The value must be a string matching this regular expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
}
