//! The admin surface's domain, shared by the gRPC admin service and the Kratos webhook: the
//! admin token check, id validation, and invalidate-and-log. Transports translate in and out.

use std::sync::Arc;

use crate::credentials::bearer_token;
use crate::oauth2::IntrospectionCache;
use crate::session::cache::{BroadcastFailed, CacheStats, SessionCache};
use crate::session::is_valid_id;

/// A configured admin token; presented tokens are compared through their BLAKE3 hashes
/// (`blake3::Hash` equality is constant-time), exactly (no trimming, no case folding).
#[derive(Clone)]
pub struct AdminToken {
    hash: blake3::Hash,
    /// gRPC calls must also present a verified client certificate (mTLS listener).
    require_client_cert: bool,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("hash", &"<redacted>")
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

impl AdminToken {
    /// Wraps the configured token.
    pub fn new(token: &str) -> AdminToken {
        AdminToken {
            hash: blake3::hash(token.as_bytes()),
            require_client_cert: false,
        }
    }

    /// Also require a verified client certificate on gRPC calls (mTLS listener).
    pub fn require_client_cert(self, required: bool) -> AdminToken {
        AdminToken {
            require_client_cert: required,
            ..self
        }
    }

    /// Must gRPC callers present a client certificate?
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }

    /// Does an `Authorization` value carry `Bearer <the token>`?
    pub fn verify(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(bearer_token)
            .is_some_and(|token| blake3::hash(token.as_bytes()) == self.hash)
    }
}

/// An id the admin surface refuses before touching the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be 1-128 characters of A-Z, a-z, 0-9, '-' or '_'")]
pub struct BadId {
    /// The field that held it.
    pub field: &'static str,
}

/// Why an admin operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// A malformed id.
    #[error(transparent)]
    BadId(#[from] BadId),
    /// Applied here, but the other replicas were not told.
    #[error(transparent)]
    NotBroadcast(#[from] BroadcastFailed),
}

/// Where an invalidation came from (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The gRPC admin API (and so the CLI).
    Api,
    /// The Kratos webhook.
    Webhook,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "admin",
            Via::Webhook => "webhook",
        }
    }
}

/// Invalidation and stats over the session cache (and the OAuth2 introspection cache), with
/// one validation and one log line each.
#[derive(Debug, Clone)]
pub struct Admin {
    cache: Arc<SessionCache>,
    introspection: Option<Arc<IntrospectionCache>>,
}

/// Whose OAuth2 introspection answers to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuth2Target<'a> {
    /// The token's `sub`.
    Subject(&'a str),
    /// The token's `client_id`.
    Client(&'a str),
}

impl Admin {
    /// The admin operations over `cache` and, when configured, the introspection cache.
    pub fn new(cache: Arc<SessionCache>, introspection: Option<Arc<IntrospectionCache>>) -> Admin {
        Admin {
            cache,
            introspection,
        }
    }

    /// Drops the cached introspection answers of one subject or client (every replica, with
    /// Redis).
    pub async fn invalidate_oauth2(
        &self,
        target: OAuth2Target<'_>,
        via: Via,
    ) -> Result<u64, AdminError> {
        let (field, id) = match target {
            OAuth2Target::Subject(s) => ("subject", s),
            OAuth2Target::Client(c) => ("client_id", c),
        };
        // OAuth2 subjects and client ids are not Kratos UUIDs: printable, bounded.
        if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminError::BadId(BadId { field }));
        }
        let result = match (&self.introspection, target) {
            (None, _) => Ok(0),
            (Some(c), OAuth2Target::Subject(s)) => c.invalidate_subject(s).await,
            (Some(c), OAuth2Target::Client(id)) => c.invalidate_client(id).await,
        }
        .map_err(|e| BroadcastFailed { local: e.local });
        log(via, field, id, &result);
        Ok(result?)
    }

    /// Drops every entry of one Kratos session (every replica, with Redis).
    pub async fn invalidate_session(&self, id: &str, via: Via) -> Result<u64, AdminError> {
        check_id(id, "session_id")?;
        let result = self.cache.invalidate_session(id).await;
        log(via, "session", id, &result);
        Ok(result?)
    }

    /// Drops every entry of one Kratos identity (every replica, with Redis).
    pub async fn invalidate_identity(&self, id: &str, via: Via) -> Result<u64, AdminError> {
        check_id(id, "identity_id")?;
        let result = self.cache.invalidate_identity(id).await;
        log(via, "identity", id, &result);
        Ok(result?)
    }

    /// Drops everything: sessions and, when configured, OAuth2 introspection answers (every
    /// replica, with Redis).
    pub async fn invalidate_all(&self, via: Via) -> Result<u64, AdminError> {
        let sessions = self.cache.invalidate_all().await;
        let answers = match &self.introspection {
            Some(c) => c
                .invalidate_all()
                .await
                .map_err(|e| BroadcastFailed { local: e.local }),
            None => Ok(0),
        };
        let result = match (sessions, answers) {
            (Ok(a), Ok(b)) => Ok(a + b),
            (
                Ok(a) | Err(BroadcastFailed { local: a }),
                Ok(b) | Err(BroadcastFailed { local: b }),
            ) => Err(BroadcastFailed { local: a + b }),
        };
        log(via, "all", "*", &result);
        Ok(result?)
    }

    /// Entries and weighted size.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

fn log(via: Via, what: &'static str, id: &str, result: &Result<u64, BroadcastFailed>) {
    match result {
        Ok(invalidated) => {
            tracing::info!(via = via.as_str(), what, id, invalidated, "invalidated")
        }
        Err(e) => tracing::error!(
            via = via.as_str(),
            what,
            id,
            invalidated = e.local,
            "invalidated on this replica only: the broadcast to the other replicas failed"
        ),
    }
}

fn check_id(id: &str, field: &'static str) -> Result<(), BadId> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(BadId { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check_is_exact() {
        let t = AdminToken::new("0123456789abcdef0123");
        assert!(t.verify(Some("Bearer 0123456789abcdef0123")));
        assert!(t.verify(Some("bearer 0123456789abcdef0123")));
        assert!(!t.verify(Some("Bearer 0123456789abcdef012")));
        assert!(!t.verify(Some("Bearer 0123456789abcdef0123\u{b}")));
        assert!(!t.verify(Some("Bearer 0123456789abcdef0123 x")));
        assert!(!t.verify(Some("0123456789abcdef0123")));
        assert!(!t.verify(Some("Basic 0123456789abcdef0123")));
        assert!(!t.verify(None));
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[test]
    fn ids_are_checked_once() {
        assert_eq!(
            check_id("", "session_id"),
            Err(BadId {
                field: "session_id"
            })
        );
        assert!(check_id(&"a".repeat(129), "session_id").is_err());
        assert!(check_id("a b", "session_id").is_err());
        assert!(check_id("4a0f3c2e-1b7d-4f7e-9a51-1c0e7c9d2b11", "session_id").is_ok());
    }
}
