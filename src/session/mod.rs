//! Sessions: the model of a Kratos session as far as we need it, the `SessionSource` seam, the
//! whoami client (`whoami`) and the cache in front of it (`cache`).

pub mod admission;
pub mod cache;
pub mod redis;
pub mod tier;
pub mod whoami;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::credentials::Credential;

/// The one rule for a Kratos session or identity id arriving from outside (admin API, webhook,
/// a logout path): 1-128 characters of `A-Z a-z 0-9 - _` (Kratos ids are UUIDs). Ids are used
/// in Redis key names and log lines, so nothing else gets in.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Authenticator assurance level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aal {
    /// No or unknown authentication.
    Aal0,
    /// One factor.
    Aal1,
    /// Two factors.
    Aal2,
    /// Hardware-backed (reserved by Kratos).
    Aal3,
}

impl Aal {
    /// Parses Kratos' `authenticator_assurance_level`; unknown values are `Aal0`.
    pub fn parse(s: &str) -> Aal {
        match s {
            "aal1" => Aal::Aal1,
            "aal2" => Aal::Aal2,
            "aal3" => Aal::Aal3,
            _ => Aal::Aal0,
        }
    }

    /// Kratos' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Aal::Aal0 => "aal0",
            Aal::Aal1 => "aal1",
            Aal::Aal2 => "aal2",
            Aal::Aal3 => "aal3",
        }
    }
}

/// What we keep of an active session: enough to decide, mint and set headers, nothing more.
/// The raw whoami JSON is dropped after [`Projection::apply`].
#[derive(Debug)]
pub struct Session {
    /// Session id (`sid` claim).
    pub id: Box<str>,
    /// Identity id (`sub` claim).
    pub identity_id: Box<str>,
    /// Assurance level of this session.
    pub aal: Aal,
    /// When Kratos ends the session.
    pub expires_at: SystemTime,
    /// Configured extra claims, pre-serialised as `"name":value` pairs joined by `,` (may be empty).
    pub extra_claims: Box<str>,
    /// Configured identity headers with their values; a header whose pointer found nothing or
    /// whose value cannot be a header value is absent (and so removed upstream).
    pub identity_headers: Vec<(Arc<str>, Box<str>)>,
    /// Unique per answer of the source ([`next_generation`]): minted tokens are cached under it.
    pub generation: u64,
    /// When the user last authenticated (Kratos' `authenticated_at`), for `max_auth_age`.
    pub authenticated_at: Option<SystemTime>,
    /// Values at the JSON pointers route requirements read (absent pointers are left out).
    pub facts: Box<[(Arc<str>, Value)]>,
    /// The token minted for this session and the default audience, kept with it (and gone with
    /// it) rather than in a cache of its own.
    pub minted: crate::token::TokenSlot,
}

/// A number no other [`Session`] of this process has.
pub fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Session {
    /// The value at a requirement's pointer, as projected when the session was looked up.
    pub fn fact(&self, pointer: &str) -> Option<&Value> {
        self.facts
            .iter()
            .find(|(p, _)| **p == *pointer)
            .map(|(_, v)| v)
    }

    /// Seconds (rounded down) until Kratos ends the session; zero when it already has.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Approximate heap bytes held by this session, for the cache weigher.
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Session>()
            + self.id.len()
            + self.identity_id.len()
            + self.extra_claims.len()
            + self
                .identity_headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 32)
                .sum::<usize>()
            + self
                .facts
                .iter()
                .map(|(p, v)| p.len() + v.to_string().len() + 48)
                .sum::<usize>()
    }
}

/// The answer of the session source for one credential.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A valid, active, unexpired session.
    Active(Arc<Session>),
    /// No valid session for this credential (401, inactive or expired).
    Unauthenticated,
    /// The session exists but a higher AAL is required (Kratos 403 `session_aal2_required`).
    StepUpRequired {
        /// Kratos' `redirect_browser_to`, when it sent one.
        redirect_browser_to: Option<String>,
    },
}

/// A successful whoami response, with what the cache needs to know about it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The outcome.
    pub outcome: Outcome,
    /// `Ory-Session-Cache-For` from upstream: an upper bound for caching this answer.
    pub cache_for: Option<Duration>,
}

/// Why Kratos could not give an answer. Never cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Kratos answered 429.
    #[error("kratos rate limited the whoami call")]
    RateLimited {
        /// Kratos' `Retry-After`, passed through.
        retry_after: Option<String>,
    },
    /// Kratos failed, timed out, was unreachable or sent an undecodable answer.
    #[error("kratos unavailable: {0}")]
    Unavailable(&'static str),
    /// Too many whoami calls in flight for longer than the queue timeout.
    #[error("too many whoami calls in flight")]
    Overloaded,
}

/// Trace context and request id to propagate to Kratos.
#[derive(Debug, Clone, Default)]
pub struct LookupContext {
    /// `x-request-id` of the checked request.
    pub request_id: Option<String>,
    /// W3C `traceparent` of the checked request (used when tracing export is off).
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The answer must come from Kratos now: past the shared tier, and past Ory Network's edge
    /// cache (`Cache-Control: max-age=0`). Set for refreshes and client `max-age` lookups.
    pub fresh: bool,
    /// The client's address (fairness between sources for first lookups).
    pub source: Option<std::net::IpAddr>,
    /// Known session or first lookup (set by the cache).
    pub lane: admission::Lane,
}

/// Boxed future returned by [`SessionSource::lookup`].
pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Answer, UpstreamError>> + Send + 'a>>;

/// Something that can tell the session behind a credential.
pub trait SessionSource: Send + Sync + 'static {
    /// Looks the credential up.
    fn lookup<'a>(&'a self, credential: &'a Credential, cx: &'a LookupContext) -> LookupFuture<'a>;

    /// Would a lookup in the known-sessions lane have to wait for a slot right now? The cache
    /// then serves a known session slightly past its TTL instead of making its user wait.
    fn known_would_wait(&self) -> bool {
        false
    }

    /// Sheds (and counts) a lookup of a credential the cache does not know, from `source`,
    /// that could only wait out the admission queue: the cache then answers `Overloaded`
    /// without starting anything for it. False: go ahead.
    fn shed_first(&self, _source: Option<std::net::IpAddr>) -> bool {
        false
    }
}

/// Turns a whoami session JSON into a [`Session`], applying the configured claim and header
/// projections once, so that a cache hit does no JSON work.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    /// claim name → JSON pointer.
    pub claims: Vec<(String, String)>,
    /// Embed the whole session under `session`.
    pub include_session: bool,
    /// header name → JSON pointer.
    pub identity_headers: Vec<(Arc<str>, String)>,
    /// JSON pointers route requirements read; swapped when the rules are reloaded.
    pub facts: Arc<arc_swap::ArcSwap<Vec<Arc<str>>>>,
}

/// Largest projected fact (serialised): a bigger value is left out, so requirements on it fail.
pub const MAX_FACT_BYTES: usize = 4096;

/// Why a 200 whoami body could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectError {
    /// Not JSON, or required fields missing.
    Undecodable,
    /// `active` is false or `expires_at` has passed.
    Inactive,
}

impl Projection {
    /// Builds a [`Session`] from whoami JSON.
    pub fn apply(&self, body: &[u8], now: SystemTime) -> Result<Session, ProjectError> {
        let raw: Value = serde_json::from_slice(body).map_err(|_| ProjectError::Undecodable)?;
        let id = raw
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(ProjectError::Undecodable)?;
        let identity_id = raw
            .pointer("/identity/id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(ProjectError::Undecodable)?;
        // Kratos omits `active` only for inactive sessions in some versions; absent = inactive.
        if raw.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(ProjectError::Inactive);
        }
        let expires_at = raw
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .ok_or(ProjectError::Undecodable)?;
        let expires_at = SystemTime::from(expires_at.with_timezone(&chrono::Utc));
        if expires_at <= now {
            return Err(ProjectError::Inactive);
        }
        let aal = raw
            .get("authenticator_assurance_level")
            .and_then(Value::as_str)
            .map(Aal::parse)
            .unwrap_or(Aal::Aal1);

        let mut extra = String::new();
        for (name, pointer) in &self.claims {
            if let Some(v) = raw.pointer(pointer) {
                push_claim(&mut extra, name, v);
            }
        }
        if self.include_session {
            push_claim(&mut extra, "session", &raw);
        }
        let identity_headers = self
            .identity_headers
            .iter()
            .filter_map(|(name, pointer)| {
                let v = raw.pointer(pointer)?;
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                // Must be a valid, single-line header value.
                (!s.is_empty() && s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
                    .then(|| (name.clone(), s.into_boxed_str()))
            })
            .collect();
        let authenticated_at = raw
            .get("authenticated_at")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| SystemTime::from(t.with_timezone(&chrono::Utc)));
        let facts = self
            .facts
            .load()
            .iter()
            .filter_map(|p| {
                let v = raw.pointer(p).filter(|v| !v.is_null())?;
                (v.to_string().len() <= MAX_FACT_BYTES).then(|| (p.clone(), v.clone()))
            })
            .collect();
        Ok(Session {
            authenticated_at,
            facts,
            minted: Default::default(),
            id: id.into(),
            identity_id: identity_id.into(),
            aal,
            expires_at,
            extra_claims: extra.into_boxed_str(),
            identity_headers,
            generation: next_generation(),
        })
    }
}

fn push_claim(out: &mut String, name: &str, value: &Value) {
    if !out.is_empty() {
        out.push(',');
    }
    // Serialising a string and a Value cannot fail.
    out.push_str(&serde_json::to_string(name).unwrap_or_default());
    out.push(':');
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(active: bool, expires: &str) -> Vec<u8> {
        serde_json::json!({
            "id": "s-1", "active": active, "expires_at": expires,
            "authenticator_assurance_level": "aal2",
            "identity": {"id": "i-1", "traits": {"email": "a@b.c", "n": 3, "bad": "x\ny"}}
        })
        .to_string()
        .into_bytes()
    }

    fn projection() -> Projection {
        Projection {
            claims: vec![
                ("email".into(), "/identity/traits/email".into()),
                ("missing".into(), "/nope".into()),
            ],
            include_session: false,
            identity_headers: vec![
                ("x-user-id".into(), "/identity/id".into()),
                ("x-n".into(), "/identity/traits/n".into()),
                ("x-bad".into(), "/identity/traits/bad".into()),
            ],
            facts: Arc::new(arc_swap::ArcSwap::from_pointee(vec![
                "/identity/traits/n".into(),
                "/identity/traits/email".into(),
                "/identity/nope".into(),
                "/identity/traits".into(),
            ])),
        }
    }

    #[test]
    fn projects_claims_and_headers() {
        let s = projection()
            .apply(
                &body(true, "2999-01-01T00:00:00.123456Z"),
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!((&*s.id, &*s.identity_id, s.aal), ("s-1", "i-1", Aal::Aal2));
        assert_eq!(&*s.extra_claims, r#""email":"a@b.c""#);
        let h: Vec<_> = s
            .identity_headers
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect();
        assert_eq!(h, vec![("x-user-id", "i-1"), ("x-n", "3")]);
        // Facts for route requirements: present values only, kept as JSON.
        assert_eq!(s.fact("/identity/traits/n"), Some(&serde_json::json!(3)));
        assert_eq!(
            s.fact("/identity/traits/email"),
            Some(&serde_json::json!("a@b.c"))
        );
        assert_eq!(s.fact("/identity/nope"), None);
        assert!(s.fact("/identity/traits").is_some());
        assert_eq!(s.fact("/not/projected"), None);
    }

    #[test]
    fn inactive_or_expired_is_refused() {
        let p = projection();
        assert_eq!(
            p.apply(&body(false, "2999-01-01T00:00:00Z"), SystemTime::now())
                .unwrap_err(),
            ProjectError::Inactive
        );
        assert_eq!(
            p.apply(&body(true, "2001-01-01T00:00:00Z"), SystemTime::now())
                .unwrap_err(),
            ProjectError::Inactive
        );
    }

    #[test]
    fn garbage_is_undecodable() {
        let p = projection();
        for b in [&b"{"[..], b"[]", b"{\"id\":\"x\"}", b"\xff\xfe"] {
            assert_eq!(
                p.apply(b, SystemTime::now()).unwrap_err(),
                ProjectError::Undecodable
            );
        }
    }
}
