//! Bearer access tokens as credentials beside Kratos sessions: a JWT from a configured issuer
//! (verified locally against its cached JWKS) or an opaque OAuth2 token (introspected, cached).
//! On allow the upstream gets the same contract as for a session: our own minted JWT
//! (`auth_method`, `client_id`, `scope`), identity headers from the verified claims, the
//! client's `Authorization` replaced. Denials follow RFC 6750 (`invalid_token`,
//! `insufficient_scope`).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::authorizer::{Authorizer, Effective};
use super::{Decision, Reason, Request};
use crate::config::CredentialKind;
use crate::oauth2::{
    IntrospectionCache, JwtIssuer, Outcome, Rejection, SourceError, TokenPrincipal,
};
use crate::token::Principal;

/// The token sources a process has (from `jwt_issuers:` and `oauth2_introspection:`).
#[derive(Debug, Default)]
pub struct TokenSources {
    /// JWT issuers by their exact `iss`.
    pub issuers: HashMap<String, Arc<JwtIssuer>>,
    /// The introspection cache, when configured.
    pub introspection: Option<Arc<IntrospectionCache>>,
    /// Identity header → JSON pointer into the verified claims (`upstream.token_identity_headers`).
    pub identity_headers: Vec<(Arc<str>, String)>,
}

impl TokenSources {
    /// The issuer a JWT claims (its unverified `iss`): which key set to verify it with. The
    /// chosen issuer then verifies `iss` itself, so a lie only picks the wrong keys and fails.
    fn issuer_for(&self, token: &str) -> Option<&Arc<JwtIssuer>> {
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: String,
        }
        let payload = token.split('.').nth(1)?;
        let bytes = B64.decode(payload).ok()?;
        let iss: Iss = serde_json::from_slice(&bytes).ok()?;
        self.issuers.get(&iss.iss)
    }
}

impl Authorizer {
    /// Decides a request whose credential is a bearer access token of `kind`.
    pub(super) async fn decide_token(
        &self,
        req: &Request,
        route: &Effective<'_>,
        kind: CredentialKind,
        token: &str,
    ) -> Decision {
        if token.len() > self.max_credential_length()
            || !token.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            return self.anonymous_or(req, route, || {
                self.shaper().invalid_token(Reason::InvalidToken)
            });
        }
        let sources = self.token_sources();
        let result = match kind {
            CredentialKind::Jwt => match sources.issuer_for(token) {
                Some(issuer) => issuer.verify(token).await,
                None => Ok(Outcome::Rejected(Rejection::Issuer)),
            },
            _ => match &sources.introspection {
                Some(cache) => cache.lookup(token).await,
                None => Ok(Outcome::Rejected(Rejection::Malformed)),
            },
        };
        let principal = match result {
            Ok(Outcome::Active(p)) => p,
            Ok(Outcome::Rejected(Rejection::InsufficientScope)) => {
                return self.anonymous_or(req, route, || self.shaper().insufficient_scope(&[]));
            }
            Ok(Outcome::Rejected(_)) => {
                return self.anonymous_or(req, route, || {
                    self.shaper().invalid_token(Reason::InvalidToken)
                });
            }
            Err(SourceError::Unavailable(_)) => {
                return self.anonymous_or(req, route, || {
                    self.shaper().unavailable(Reason::UpstreamUnavailable)
                });
            }
            Err(SourceError::Overloaded) => {
                return self
                    .anonymous_or(req, route, || self.shaper().unavailable(Reason::Overloaded));
            }
        };
        if !principal.has_scopes(&route.policy.scopes) {
            let scopes = &route.policy.scopes;
            return self.anonymous_or(req, route, || self.shaper().insufficient_scope(scopes));
        }
        // An access token carries no Kratos assurance level or login time: a route that needs
        // either is for sessions.
        let needs_session = route.aal.is_some() || route.policy.max_auth_age.is_some();
        let holds = route
            .policy
            .require
            .iter()
            .all(|r| r.holds(principal.claims.pointer(r.pointer())));
        if needs_session || !holds {
            return self.anonymous_or(req, route, || {
                self.shaper().forbidden(Reason::RequirementNotMet)
            });
        }
        self.allow_token(req, route, kind, &principal)
    }

    fn allow_token(
        &self,
        req: &Request,
        route: &Effective<'_>,
        kind: CredentialKind,
        p: &TokenPrincipal,
    ) -> Decision {
        let auth_method = match kind {
            CredentialKind::Jwt => "jwt",
            _ => "oauth2",
        };
        let Some(subject) = p.subject.as_deref().or(p.client_id.as_deref()) else {
            // Nobody to name in `sub`: not a token we can vouch for upstream.
            return Decision::Deny(self.shaper().invalid_token(Reason::InvalidToken));
        };
        let mut extra = String::new();
        if let Some(client) = &p.client_id {
            extra.push_str("\"client_id\":");
            extra.push_str(&serde_json::to_string(client).unwrap_or_default());
        }
        if !p.scopes.is_empty() {
            if !extra.is_empty() {
                extra.push(',');
            }
            extra.push_str("\"scope\":");
            extra.push_str(&serde_json::to_string(&p.scopes.join(" ")).unwrap_or_default());
        }
        let principal = Principal {
            subject,
            session_id: None,
            aal: None,
            auth_method,
            expires_at: p.expires_at,
            extra_claims: &extra,
            generation: p.generation,
            slot: None,
        };
        let mut allow = match self.mint_allow(req, route, &principal) {
            Ok(allow) => allow,
            Err(deny) => return Decision::Deny(deny),
        };
        let sources = self.token_sources();
        for name in self.identity_header_names() {
            let value = sources
                .identity_headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, pointer)| p.claims.pointer(pointer))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b)));
            match value {
                Some(v) => allow.set.push((name.clone(), v.into())),
                None => allow.remove.push(name.clone()),
            }
        }
        allow.metadata.extend([
            ("identity_id", Arc::from(subject)),
            ("auth_method", Arc::from(auth_method)),
        ]);
        if let Some(client) = &p.client_id {
            allow
                .metadata
                .push(("client_id", Arc::from(client.as_str())));
        }
        Decision::Allow(allow)
    }
}
