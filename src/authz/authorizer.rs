//! [`Authorizer::check`]: credential → cached session → route policy → token → decision.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use super::deny::DenyShaper;
use super::routes::{self, Policy, RouteTable};
use super::{Allow, Decision, Deny, Reason, Request};
use crate::config::CredentialKind;
use crate::config::{ClientMaxAge, Config, LogoutConfig, LogoutScope};
use crate::credentials::{
    BearerShape, CookieRewrite, Credential, CredentialError, Extractor, bearer_shape, bearer_token,
};
use crate::session::cache::{Freshness, SessionCache};
use crate::session::{Aal, LookupContext, Outcome, Session, UpstreamError};
use crate::telemetry::{Metrics, ResultLabel};
use crate::token::{Minter, Principal};

/// The decision engine.
pub struct Authorizer {
    extractor: Extractor,
    cache: Arc<SessionCache>,
    minter: Arc<Minter>,
    metrics: Arc<Metrics>,
    shaper: DenyShaper,
    token_header: Arc<str>,
    /// Identity header names: set from the session or removed, never passed from the client.
    identity_headers: Vec<Arc<str>>,
    /// Removed on every allowed request.
    always_remove: Vec<Arc<str>>,
    strip_session_cookie: bool,
    client_max_age: ClientMaxAge,
    logout: LogoutConfig,
    /// The compiled rules, swapped whole on reload.
    routes: ArcSwap<RouteTable>,
    /// The JSON pointers the session projection keeps for the rules (shared with it).
    facts: Arc<ArcSwap<Vec<Arc<str>>>>,
    /// Metric label of decisions taken before a rule was chosen.
    no_rule: Arc<str>,
    /// JWT issuers and introspection, for routes accepting `jwt` / `oauth2` credentials.
    tokens: super::tokens::TokenSources,
    /// Longest accepted credential (bearer tokens included).
    max_credential_length: usize,
}

/// The policy of one request: the rule, with Envoy's older per-route keys on top.
pub(super) struct Effective<'a> {
    pub(super) policy: &'a Policy,
    pub(super) anonymous: bool,
    pub(super) audience: Option<&'a str>,
    pub(super) aal: Option<Aal>,
    pub(super) client_max_age: bool,
}

/// What a check learned besides the decision (for logout awareness).
#[derive(Default)]
struct Seen {
    credential: Option<Credential>,
    session: Option<Arc<Session>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Wires the engine from its parts: the compiled `routes` and the pointer list the session
    /// projection reads (`facts`, swapped together with the rules on reload).
    pub fn new(
        config: &Config,
        routes: RouteTable,
        facts: Arc<ArcSwap<Vec<Arc<str>>>>,
        tokens: super::tokens::TokenSources,
        cache: Arc<SessionCache>,
        minter: Arc<Minter>,
        metrics: Arc<Metrics>,
    ) -> Authorizer {
        let identity_headers: Vec<Arc<str>> = config
            .upstream
            .identity_headers
            .keys()
            .map(|k| Arc::from(k.as_str()))
            .collect();
        let mut always_remove: Vec<Arc<str>> = config
            .upstream
            .remove_headers
            .iter()
            .map(|k| Arc::from(k.as_str()))
            .collect();
        if config.upstream.strip_session_token {
            always_remove.push("x-session-token".into());
        }
        // With the minted token in another header, the client's own `Authorization` (a session
        // token Kratos accepted, or a forged JWT) must not reach upstream either. With the
        // default header it is overwritten by the token, or removed on anonymous allows.
        if config.upstream.token_header != "authorization" {
            always_remove.push("authorization".into());
        }
        Authorizer {
            extractor: Extractor::new(&config.credentials),
            cache,
            minter,
            metrics,
            shaper: DenyShaper {
                login_url: config.deny.login_url.clone(),
                return_to_param: config.deny.return_to_param.clone(),
                kratos_browser_url: config.kratos_browser_url().to_owned(),
                www_authenticate: format!(
                    "Bearer realm=\"{}\"",
                    config.deny.realm.replace('"', "")
                ),
            },
            token_header: config.upstream.token_header.as_str().into(),
            identity_headers,
            always_remove,
            strip_session_cookie: config.upstream.strip_session_cookie,
            client_max_age: config.cache.client_max_age,
            logout: config.logout.clone(),
            routes: ArcSwap::from_pointee(routes),
            facts,
            no_rule: "none".into(),
            tokens,
            max_credential_length: config.credentials.max_length,
        }
    }

    /// Swaps in a new rule table (config reload). When the rules read other JSON pointers, this
    /// replica's cached sessions are dropped: they were projected without the new values.
    pub async fn replace_routes(&self, routes: RouteTable) {
        let changed = **self.facts.load() != routes.pointers();
        if changed {
            self.facts.store(Arc::new(routes.pointers().to_vec()));
        }
        self.routes.store(Arc::new(routes));
        if changed {
            self.cache.clear_local().await;
        }
    }

    /// The denial for a request the proxy could not describe (counted like any decision).
    pub fn bad_request(&self, message: &str) -> Decision {
        let deny = self.shaper.bad_request(message);
        self.metrics
            .decision("deny", deny.reason.as_str(), &self.no_rule);
        Decision::Deny(deny)
    }

    /// Decides one request.
    pub async fn check(&self, req: &Request) -> Decision {
        let start = Instant::now();
        let mut seen = Seen::default();
        let table = self.routes.load_full();
        let (decision, rule) = match Self::select(&table, req) {
            Ok(effective) => (
                self.decide(req, &effective, &mut seen).await,
                effective.policy.name.clone(),
            ),
            Err(reason) => (
                Decision::Deny(self.unusable(req, reason)),
                self.no_rule.clone(),
            ),
        };
        if self.logout.enabled {
            self.watch_logout(req, seen);
        }
        let (kind, status) = match &decision {
            Decision::Allow(_) => ("allow", 200),
            Decision::Deny(d) => ("deny", d.status),
        };
        let reason = decision.reason().as_str();
        self.metrics.decision(kind, reason, &rule);
        self.metrics
            .check_duration
            .get_or_create(&ResultLabel { result: kind })
            .observe(start.elapsed().as_secs_f64());
        tracing::debug!(
            decision = kind,
            reason,
            status,
            rule = %rule,
            request_id = crate::telemetry::request_id(&req.headers).unwrap_or_default(),
            method = %req.method,
            host = %req.host,
            // The query may carry secrets of other systems: log the path only.
            path = %req.path.split('?').next().unwrap_or(""),
            "decision"
        );
        decision
    }

    /// The rule for a request: named by operator configuration, else matched on method, host
    /// and normalised path; then Envoy's older per-route keys on top.
    fn select<'t>(table: &'t RouteTable, req: &'t Request) -> Result<Effective<'t>, Reason> {
        let settings = req.route.as_ref().map_err(|e| {
            tracing::error!(error = %e, "route settings from the proxy are invalid; denying");
            Reason::BadRouteSettings
        })?;
        let policy = match &settings.rule {
            Some(name) => table.named(name).ok_or_else(|| {
                tracing::error!(rule = %name, "the proxy names a rule that is not in routes.rules; denying");
                Reason::UnknownRule
            })?,
            None if table.is_empty() => table.select("", "", "/").policy(),
            None => {
                let path = routes::normalise(&req.path).map_err(|_| Reason::BadPath)?;
                table
                    .select(&req.method, &routes::host_of(&req.host), &path)
                    .policy()
            }
        };
        Ok(Effective {
            policy,
            anonymous: policy.anonymous || settings.anonymous,
            audience: settings.audience.as_deref().or(policy.audience.as_deref()),
            aal: settings.aal.max(policy.aal),
            client_max_age: policy.client_max_age || settings.client_max_age,
        })
    }

    /// The denial of a request no rule can be chosen for.
    fn unusable(&self, req: &Request, reason: Reason) -> Deny {
        match reason {
            Reason::BadPath => {
                let mut d = self.shaper.bad_request(
                    "the path cannot be matched safely (encoded slash, backslash or bad encoding)",
                );
                d.reason = Reason::BadPath;
                d
            }
            Reason::UnknownRule => self
                .shaper
                .internal(Reason::UnknownRule, "this route names an unknown rule"),
            _ => {
                let _ = req;
                self.shaper
                    .internal(Reason::BadRouteSettings, "this route is misconfigured")
            }
        }
    }

    async fn decide(&self, req: &Request, route: &Effective<'_>, seen: &mut Seen) -> Decision {
        if route.policy.deny {
            return Decision::Deny(self.shaper.forbidden(Reason::NoRoute));
        }
        let accepts = |k: CredentialKind| route.policy.credentials.contains(&k);
        // Kratos' order first (X-Session-Token, cookie, Bearer session token), then a bearer
        // token of the other kinds the route accepts, told apart by shape: one kind's token never
        // reaches another kind's upstream.
        if accepts(CredentialKind::Session) {
            match self.extractor.extract(&req.headers) {
                Ok(credential) => return self.decide_session(req, route, credential, seen).await,
                Err(CredentialError::Missing) => {}
                Err(e) => {
                    let reason = match e {
                        CredentialError::Missing => Reason::NoCredential,
                        CredentialError::TooLong => Reason::CredentialTooLong,
                        CredentialError::Malformed => Reason::CredentialMalformed,
                        CredentialError::Ambiguous => Reason::CredentialAmbiguous,
                        CredentialError::Shape(kind) => {
                            self.metrics
                                .credentials_rejected
                                .get_or_create(&crate::telemetry::KindLabel {
                                    kind: kind.as_str(),
                                })
                                .inc();
                            Reason::CredentialShape
                        }
                    };
                    return self
                        .anonymous_or(req, route, || self.shaper.unauthenticated(req, reason));
                }
            }
        }
        if let Some(token) = req.headers.get("authorization").and_then(bearer_token) {
            let kind = match bearer_shape(token) {
                BearerShape::Jwt if accepts(CredentialKind::Jwt) => Some(CredentialKind::Jwt),
                BearerShape::OAuth2Access | BearerShape::Opaque
                    if accepts(CredentialKind::Oauth2) =>
                {
                    Some(CredentialKind::Oauth2)
                }
                _ => None,
            };
            if let Some(kind) = kind {
                return self.decide_token(req, route, kind, token).await;
            }
            if !accepts(CredentialKind::Session) {
                return self.anonymous_or(req, route, || {
                    self.shaper.invalid_token(Reason::InvalidToken)
                });
            }
        }
        self.anonymous_or(req, route, || {
            self.shaper.unauthenticated(req, Reason::NoCredential)
        })
    }

    async fn decide_session(
        &self,
        req: &Request,
        route: &Effective<'_>,
        credential: Credential,
        seen: &mut Seen,
    ) -> Decision {
        // Passed on to Kratos only when short and printable: a client controls these headers.
        let propagate = |name: &str, max: usize| {
            req.headers
                .get(name)
                .filter(|v| v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
                .map(str::to_owned)
        };
        let cx = LookupContext {
            // One rule for the request id, in logs, spans and to Kratos alike.
            request_id: crate::telemetry::request_id(&req.headers).map(str::to_owned),
            traceparent: propagate("traceparent", 64),
            tracestate: propagate("tracestate", 512),
            fresh: false,
            source: req.source,
            lane: Default::default(),
        };
        let honour = match self.client_max_age {
            ClientMaxAge::Never => false,
            ClientMaxAge::Always => true,
            ClientMaxAge::Route => route.client_max_age,
        };
        let freshness = Freshness {
            max_age: if honour {
                super::client_max_age(&req.headers)
            } else {
                None
            },
        };
        let result = self.cache.lookup(&credential, &cx, freshness).await;
        seen.credential = Some(credential);
        match result {
            Ok(Outcome::Active(session)) => {
                seen.session = Some(session.clone());
                if let Some(required) = route.aal
                    && session.aal < required
                {
                    return self.anonymous_or(req, route, || self.shaper.step_up(req, None));
                }
                // Evaluated on every request against the cached session: never cached as a
                // decision, never part of the cache key.
                if !route
                    .policy
                    .require
                    .iter()
                    .all(|r| r.holds(session.fact(r.pointer())))
                {
                    return self.anonymous_or(req, route, || {
                        self.shaper.forbidden(Reason::RequirementNotMet)
                    });
                }
                if let Some(max) = route.policy.max_auth_age {
                    let recent = session.authenticated_at.is_some_and(|at| {
                        std::time::SystemTime::now()
                            .duration_since(at)
                            .is_ok_and(|age| age <= max)
                    });
                    if !recent {
                        return self.anonymous_or(req, route, || self.shaper.reauthenticate(req));
                    }
                }
                self.allow_session(req, route, &session)
            }
            Ok(Outcome::Unauthenticated) => self.anonymous_or(req, route, || {
                self.shaper.unauthenticated(req, Reason::InvalidSession)
            }),
            Ok(Outcome::StepUpRequired {
                redirect_browser_to,
            }) => self.anonymous_or(req, route, || {
                self.shaper.step_up(req, redirect_browser_to.as_deref())
            }),
            Err(UpstreamError::RateLimited { retry_after }) => {
                self.anonymous_or(req, route, || {
                    self.shaper.rate_limited(retry_after.as_deref())
                })
            }
            Err(UpstreamError::Unavailable(_)) => self.anonymous_or(req, route, || {
                self.shaper.unavailable(Reason::UpstreamUnavailable)
            }),
            Err(UpstreamError::Overloaded) => {
                self.anonymous_or(req, route, || self.shaper.unavailable(Reason::Overloaded))
            }
        }
    }

    /// A checked request that ends sessions (a Kratos logout passing through the gate) drops the
    /// matching cache entries now and again after the grace period, since Kratos processes the
    /// logout only after our answer. Only a caller with a valid session can end sessions, and
    /// only its own: `/sessions/{id}` acts when that session belongs to the caller's identity
    /// (as Kratos itself checks), so a request without a credential, or naming someone else's
    /// session id (every JWT carries its `sid`), evicts nothing.
    fn watch_logout(&self, req: &Request, seen: Seen) {
        let path = req.path.split('?').next().unwrap_or("");
        let Some((scope, path_session)) = match_logout(&self.logout, &req.method, path) else {
            return;
        };
        let (Some(credential), Some(session)) = (seen.credential, seen.session) else {
            return;
        };
        let cache = self.cache.clone();
        let grace = self.logout.grace;
        tracing::debug!(?scope, "logout passing through: dropping cached sessions");
        tokio::spawn(async move {
            for round in 0..2 {
                if round == 1 {
                    tokio::time::sleep(grace).await;
                }
                match (&path_session, scope) {
                    (Some(id), _) if **id == *session.id => {
                        let _ = cache.invalidate_session(id).await;
                    }
                    (Some(id), _) => {
                        cache
                            .invalidate_session_of_identity(id, &session.identity_id)
                            .await;
                    }
                    (None, LogoutScope::Session) => {
                        cache.invalidate_credential(&credential).await;
                        let _ = cache.invalidate_session(&session.id).await;
                    }
                    (None, LogoutScope::Identity) => {
                        let _ = cache.invalidate_identity(&session.identity_id).await;
                    }
                }
            }
        });
    }

    pub(super) fn anonymous_or(
        &self,
        req: &Request,
        route: &Effective<'_>,
        deny: impl FnOnce() -> Deny,
    ) -> Decision {
        if route.anonymous {
            self.allow_anonymous(req, route)
        } else {
            Decision::Deny(deny())
        }
    }

    /// Header removals common to every allow: spoofable identity headers, configured headers,
    /// the session token header and the session cookie.
    pub(super) fn base_allow(&self, req: &Request, reason: Reason, route: &Effective<'_>) -> Allow {
        let mut allow = Allow {
            set: Vec::with_capacity(2 + self.identity_headers.len()),
            remove: self.always_remove.clone(),
            reason,
            metadata: vec![("rule", route.policy.name.clone())],
        };
        if self.strip_session_cookie {
            match self.extractor.strip_session_cookies(&req.headers) {
                CookieRewrite::Unchanged => {}
                CookieRewrite::Remove => allow.remove.push("cookie".into()),
                CookieRewrite::Replace(v) => allow.set.push(("cookie".into(), v.into())),
            }
        }
        allow
    }

    fn allow_anonymous(&self, req: &Request, route: &Effective<'_>) -> Decision {
        let mut allow = self.base_allow(req, Reason::Anonymous, route);
        allow.remove.push(self.token_header.clone());
        allow.remove.extend(self.identity_headers.iter().cloned());
        Decision::Allow(allow)
    }

    /// An allow carrying our minted token for `principal` (the common part of every
    /// authenticated allow), or the denial when no token can be minted.
    pub(super) fn mint_allow(
        &self,
        req: &Request,
        route: &Effective<'_>,
        principal: &Principal<'_>,
    ) -> Result<Allow, Deny> {
        let token = self
            .minter
            .header_value(principal, route.audience)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot mint token; denying");
                self.shaper
                    .internal(Reason::Internal, "the upstream token could not be issued")
            })?;
        let mut allow = self.base_allow(req, Reason::Authenticated, route);
        allow.set.push((self.token_header.clone(), token));
        Ok(allow)
    }

    pub(super) fn max_credential_length(&self) -> usize {
        self.max_credential_length
    }

    pub(super) fn token_sources(&self) -> &super::tokens::TokenSources {
        &self.tokens
    }

    pub(super) fn shaper(&self) -> &DenyShaper {
        &self.shaper
    }

    /// Identity header names: set from the credential's identity or removed.
    pub(super) fn identity_header_names(&self) -> &[Arc<str>] {
        &self.identity_headers
    }

    fn allow_session(&self, req: &Request, route: &Effective<'_>, session: &Session) -> Decision {
        let principal = Principal {
            subject: &session.identity_id,
            session_id: Some(&session.id),
            aal: Some(session.aal.as_str()),
            auth_method: "session",
            expires_at: session.expires_at,
            extra_claims: &session.extra_claims,
            generation: session.generation,
            slot: Some(&session.minted),
        };
        let mut allow = match self.mint_allow(req, route, &principal) {
            Ok(allow) => allow,
            Err(deny) => return Decision::Deny(deny),
        };
        allow.metadata.extend([
            ("identity_id", Arc::from(&*session.identity_id)),
            ("session_id", Arc::from(&*session.id)),
            ("aal", Arc::from(session.aal.as_str())),
        ]);
        for name in &self.identity_headers {
            match session.identity_headers.iter().find(|(n, _)| n == name) {
                Some((_, v)) => allow.set.push((name.clone(), Arc::from(&**v))),
                None => allow.remove.push(name.clone()),
            }
        }
        Decision::Allow(allow)
    }
}

/// Matches a request against the logout patterns: the scope, and the session id from a
/// `/{id}` segment.
fn match_logout(
    config: &LogoutConfig,
    method: &str,
    path: &str,
) -> Option<(LogoutScope, Option<String>)> {
    let path = path.trim_end_matches('/');
    for p in &config.patterns {
        if p.method != "*" && !p.method.eq_ignore_ascii_case(method) {
            continue;
        }
        if let Some(prefix) = p.path.strip_suffix("/{id}") {
            if let Some(id) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
                && crate::session::is_valid_id(id)
            {
                return Some((p.scope, Some(id.to_owned())));
            }
        } else if path == p.path.trim_end_matches('/') {
            return Some((p.scope, None));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_patterns() {
        let c = LogoutConfig::default();
        assert_eq!(
            match_logout(&c, "GET", "/self-service/logout"),
            Some((LogoutScope::Session, None))
        );
        assert_eq!(
            match_logout(&c, "DELETE", "/self-service/logout/api/"),
            Some((LogoutScope::Session, None))
        );
        assert_eq!(
            match_logout(&c, "DELETE", "/sessions"),
            Some((LogoutScope::Identity, None))
        );
        assert_eq!(
            match_logout(&c, "DELETE", "/sessions/8f1c-aa"),
            Some((LogoutScope::Session, Some("8f1c-aa".into())))
        );
        assert_eq!(match_logout(&c, "GET", "/sessions/8f1c"), None);
        assert_eq!(match_logout(&c, "DELETE", "/sessions/a/b"), None);
        assert_eq!(
            match_logout(&c, "GET", "/self-service/logout/browser"),
            None
        );
        assert_eq!(match_logout(&c, "POST", "/orders"), None);
    }
}
