//! The decision engine, free of transport types: a [`Request`] (what the proxy tells us about the
//! original request) goes into [`Authorizer::check`] and a [`Decision`] comes out. gRPC and HTTP
//! front ends translate in and out; nothing here knows protobuf or axum.

mod authorizer;
mod deny;
pub mod routes;
mod tokens;

pub use tokens::TokenSources;

use std::sync::Arc;

pub use authorizer::Authorizer;

pub use crate::headers::Headers;
use crate::session::Aal;

/// Per-route settings from operator configuration outside sessiongate: Envoy's
/// `context_extensions` (a rule name, and the older per-route keys, applied on top of the rule),
/// or a forward-auth proxy's `/check/r/<name>` path. Never from anything a client sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSettings {
    /// The rule to apply instead of matching (`route: <name>`).
    pub rule: Option<Arc<str>>,
    /// Allow without a session (identity headers are still stripped; a valid session is still
    /// turned into a token).
    pub anonymous: bool,
    /// `aud` for this route, overriding `jwt.audience`.
    pub audience: Option<Arc<str>>,
    /// Minimum assurance level for this route.
    pub aal: Option<Aal>,
    /// Honour the client's `Cache-Control: max-age` here (with `cache.client_max_age: route`).
    pub client_max_age: bool,
}

/// A route setting that cannot be understood. The request is denied (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route setting {key:?}: {message}")]
pub struct RouteSettingError {
    /// The key.
    pub key: &'static str,
    /// What is wrong.
    pub message: &'static str,
}

impl RouteSettings {
    /// Longest accepted `audience` value.
    pub const MAX_AUDIENCE: usize = 256;

    /// Reads the settings sessiongate knows; other keys are ignored (they may be meant for
    /// another filter).
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RouteSettings, RouteSettingError> {
        let mut s = RouteSettings::default();
        for (k, v) in pairs {
            match k {
                "route" => {
                    let v = v.trim();
                    if v.is_empty()
                        || v.len() > 64
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(RouteSettingError {
                            key: "route",
                            message: "must be the name of a rule in routes.rules",
                        });
                    }
                    s.rule = Some(v.into());
                }
                "anonymous" => {
                    s.anonymous = match v.trim() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" | "" => false,
                        _ => {
                            return Err(RouteSettingError {
                                key: "anonymous",
                                message: "must be \"true\" or \"false\"",
                            });
                        }
                    }
                }
                "audience" => {
                    let v = v.trim();
                    if v.len() > Self::MAX_AUDIENCE || v.bytes().any(|b| b.is_ascii_control()) {
                        return Err(RouteSettingError {
                            key: "audience",
                            message: "must be at most 256 printable characters",
                        });
                    }
                    s.audience = (!v.is_empty()).then(|| v.into());
                }
                "client_max_age" => {
                    s.client_max_age = match v.trim() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" | "" => false,
                        _ => {
                            return Err(RouteSettingError {
                                key: "client_max_age",
                                message: "must be \"true\" or \"false\"",
                            });
                        }
                    }
                }
                "aal" => {
                    s.aal = match v.trim() {
                        "" => None,
                        "aal1" => Some(Aal::Aal1),
                        "aal2" => Some(Aal::Aal2),
                        _ => {
                            return Err(RouteSettingError {
                                key: "aal",
                                message: "must be \"aal1\" or \"aal2\"",
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(s)
    }
}

/// The client's `Cache-Control` freshness demand: `max-age=N` → N seconds, `no-cache` → 0.
/// Anything malformed is ignored.
pub fn client_max_age(headers: &Headers) -> Option<std::time::Duration> {
    let mut result: Option<u64> = None;
    for value in headers.get_all("cache-control") {
        for directive in value.split(',').take(32) {
            let d = directive.trim();
            let secs = if d.eq_ignore_ascii_case("no-cache") {
                Some(0)
            } else if d.len() > 8 && d[..8].eq_ignore_ascii_case("max-age=") {
                let n = d[8..].trim_matches('"');
                (n.len() <= 10 && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| n.parse::<u64>().ok())
                    .flatten()
            } else {
                None
            };
            if let Some(secs) = secs {
                result = Some(result.map_or(secs, |r| r.min(secs)));
            }
        }
    }
    result.map(std::time::Duration::from_secs)
}

/// What the proxy told us about the original request.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// `http` or `https` as the client used it.
    pub scheme: String,
    /// Host (authority) as the client used it.
    pub host: String,
    /// Path including the query.
    pub path: String,
    /// Request headers.
    pub headers: Headers,
    /// Route settings, or the error that makes them unusable.
    pub route: Result<RouteSettings, RouteSettingError>,
    /// The client's address as the transport established it (Envoy's downstream peer, or the
    /// first untrusted `X-Forwarded-For` hop behind trusted proxies); used only for fairness.
    pub source: Option<std::net::IpAddr>,
}

/// Why a decision was taken: a closed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A valid session.
    Authenticated,
    /// Anonymous route, no valid session.
    Anonymous,
    /// No credential found.
    NoCredential,
    /// Credential longer than allowed.
    CredentialTooLong,
    /// Credential with impossible characters.
    CredentialMalformed,
    /// Credential that cannot be a Kratos credential (`credentials.shape`).
    CredentialShape,
    /// Two different session credentials where one belongs.
    CredentialAmbiguous,
    /// Kratos says: no valid session.
    InvalidSession,
    /// A higher AAL is required.
    StepUpRequired,
    /// Kratos rate limited us.
    RateLimited,
    /// Kratos unavailable.
    UpstreamUnavailable,
    /// Our whoami concurrency limit was full.
    Overloaded,
    /// A route setting could not be understood.
    BadRouteSettings,
    /// The request itself was unusable.
    BadRequest,
    /// Token minting failed.
    Internal,
    /// A route rule's requirement on the session does not hold.
    RequirementNotMet,
    /// The session is older than the route's `max_auth_age`.
    ReauthenticationRequired,
    /// No rule matched and `routes.default` is `deny`.
    NoRoute,
    /// An Envoy route names a rule that does not exist.
    UnknownRule,
    /// The path cannot be matched safely (encoded slash, malformed encoding).
    BadPath,
    /// A bearer access token that is not valid (RFC 6750 `invalid_token`).
    InvalidToken,
    /// A valid access token without a scope the route needs (`insufficient_scope`).
    InsufficientScope,
}

impl Reason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Authenticated => "authenticated",
            Reason::Anonymous => "anonymous",
            Reason::NoCredential => "no_credential",
            Reason::CredentialTooLong => "credential_too_long",
            Reason::CredentialMalformed => "credential_malformed",
            Reason::CredentialShape => "credential_shape",
            Reason::CredentialAmbiguous => "credential_ambiguous",
            Reason::InvalidSession => "invalid_session",
            Reason::StepUpRequired => "step_up_required",
            Reason::RateLimited => "rate_limited",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::Overloaded => "overloaded",
            Reason::BadRouteSettings => "bad_route_settings",
            Reason::BadRequest => "bad_request",
            Reason::Internal => "internal",
            Reason::RequirementNotMet => "requirement_not_met",
            Reason::ReauthenticationRequired => "reauthentication_required",
            Reason::NoRoute => "no_route",
            Reason::UnknownRule => "unknown_rule",
            Reason::BadPath => "bad_path",
            Reason::InvalidToken => "invalid_token",
            Reason::InsufficientScope => "insufficient_scope",
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Forward the request upstream with these header changes.
    Allow(Allow),
    /// Answer the client directly.
    Deny(Deny),
}

impl Decision {
    /// The reason.
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Allow(a) => a.reason,
            Decision::Deny(d) => d.reason,
        }
    }
}

/// Header changes for the upstream request. `Debug` shows header names only (the values are
/// the minted token and identity data).
#[derive(Clone)]
pub struct Allow {
    /// Headers to set, overwriting any value the client sent.
    pub set: Vec<(Arc<str>, Arc<str>)>,
    /// Headers to remove.
    pub remove: Vec<Arc<str>>,
    /// Why.
    pub reason: Reason,
    /// What other proxy filters and access logs may know of the decision (Envoy's
    /// `dynamic_metadata`): the rule, and for a session its identity id, session id and AAL.
    pub metadata: Vec<(&'static str, Arc<str>)>,
}

impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allow")
            .field("set", &self.set.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("remove", &self.remove)
            .field("reason", &self.reason)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// A direct answer to the client.
#[derive(Debug, Clone)]
pub struct Deny {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(&'static str, String)>,
    /// Response body (JSON, never containing a credential).
    pub body: String,
    /// Why.
    pub reason: Reason,
}

impl Deny {
    /// Kratos could not answer: transports may turn this into "unavailable" for the proxy's
    /// failure mode instead of a 503.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self.reason,
            Reason::UpstreamUnavailable | Reason::Overloaded
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings_parse_and_fail_closed() {
        let s = RouteSettings::parse([
            ("anonymous", "true"),
            ("audience", "api"),
            ("aal", "aal2"),
            ("other", "x"),
        ])
        .unwrap();
        assert!(s.anonymous);
        assert_eq!(s.audience.as_deref(), Some("api"));
        assert_eq!(s.aal, Some(Aal::Aal2));
        assert_eq!(
            RouteSettings::parse([("aal", "aal9")]).unwrap_err().key,
            "aal"
        );
        assert_eq!(
            RouteSettings::parse([("anonymous", "maybe")])
                .unwrap_err()
                .key,
            "anonymous"
        );
        let long = "a".repeat(300);
        assert!(RouteSettings::parse([("audience", long.as_str())]).is_err());
    }

    #[test]
    fn cache_control_max_age() {
        let h = |v: &str| {
            let mut h = Headers::default();
            h.append("cache-control", v);
            client_max_age(&h)
        };
        use std::time::Duration;
        assert_eq!(h("max-age=30"), Some(Duration::from_secs(30)));
        assert_eq!(
            h("public, MAX-AGE=5, max-age=9"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(h("no-cache"), Some(Duration::ZERO));
        assert_eq!(h("max-age=-1"), None);
        assert_eq!(h("max-age=99999999999999999999"), None);
        assert_eq!(h("max-age="), None);
        assert_eq!(h(",,,;;max-age"), None);
        assert_eq!(client_max_age(&Headers::default()), None);
    }
}
