//! A stand-in for Kratos' `/sessions/whoami`, speaking its documented responses (200 session,
//! 401, 403 `session_aal2_required`, 429) plus failures real Kratos cannot be made to produce on
//! demand (500, slow, garbage, dropped connections). Behaviours are set per credential value, per
//! credential prefix, or as a fallback. It counts calls (served on `/__stats`) and, for tests,
//! records what it received.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use serde_json::json;

use crate::stats::{self, UpstreamStats};

/// What the fake answers for one credential value.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with an active session expiring in `expires_in`.
    Active {
        session_id: String,
        identity_id: String,
        email: String,
        aal: &'static str,
        expires_in: Duration,
    },
    /// 200 with an active session shaped like Kratos v1.3's whoami output (~1.3 KB), its ids
    /// derived from the credential value: any number of distinct sessions without setting each.
    Derived { expires_in: Duration },
    /// 200 with `active: false`.
    Inactive,
    /// 401.
    Unauthorized,
    /// 403 session_aal2_required with a redirect.
    Aal2Required,
    /// 429 with `Retry-After: 7`.
    RateLimited,
    /// 500.
    ServerError,
    /// Sleep, then behave like the inner behaviour.
    Slow(Duration, Box<Behaviour>),
    /// 200 with a body that is not a session.
    Garbage,
    /// Any status with any bytes as body (e.g. HTML, binary, valid JSON of the wrong shape).
    Raw {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// 200 whose headers announce `Content-Length: declared` but whose body stops after
    /// `body` (a truncated answer with a wrong length).
    ShortBody { declared: usize, body: Vec<u8> },
    /// 200 that starts a chunked body, then aborts the connection mid-response.
    DropMidBody { body: Vec<u8> },
}

impl Behaviour {
    /// An active aal1 session with ids derived from `name`.
    pub fn active(name: &str) -> Behaviour {
        Behaviour::Active {
            session_id: format!("sess-{name}"),
            identity_id: format!("ident-{name}"),
            email: format!("{name}@example.com"),
            aal: "aal1",
            expires_in: Duration::from_secs(3600),
        }
    }
}

/// One received whoami request.
#[derive(Debug, Clone)]
pub struct Received {
    pub cookie: Option<String>,
    pub session_token: Option<String>,
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
    pub request_id: Option<String>,
    /// `Cache-Control` (Ory Network answers from its edge cache unless it is `max-age=0`).
    pub cache_control: Option<String>,
}

struct Inner {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    /// Credentials starting with a prefix get its behaviour (first match wins).
    prefixes: Mutex<Vec<(String, Behaviour)>>,
    /// Used for credentials without their own behaviour (default: `Unauthorized`).
    fallback: Mutex<Option<Behaviour>>,
    /// `None`: requests are not recorded (a bench sends millions).
    received: Option<Mutex<Vec<Received>>>,
    stats: Arc<UpstreamStats>,
    /// Introspection calls received so far.
    introspections: AtomicU64,
    /// Tokens the introspection endpoint now says are inactive (revoked).
    revoked: Mutex<HashSet<String>>,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeKratos {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl FakeKratos {
    /// Starts the fake on an ephemeral loopback port, recording every request.
    pub async fn start() -> FakeKratos {
        FakeKratos::bind("127.0.0.1:0".parse().unwrap(), true)
            .await
            .expect("fake kratos binds on loopback")
    }

    /// Starts the fake on `listen`; `record` keeps every request for [`FakeKratos::received`].
    /// It serves until the runtime shuts down.
    pub async fn bind(listen: SocketAddr, record: bool) -> std::io::Result<FakeKratos> {
        let inner = Arc::new(Inner {
            behaviours: Mutex::default(),
            prefixes: Mutex::default(),
            fallback: Mutex::default(),
            received: record.then(Mutex::default),
            stats: Arc::default(),
            introspections: AtomicU64::new(0),
            revoked: Mutex::default(),
        });
        let app = Router::new()
            .route("/sessions/whoami", get(whoami))
            .route("/health/ready", get(|| async { "ok" }))
            .route("/admin/oauth2/introspect", axum::routing::post(introspect))
            .with_state(inner.clone())
            .merge(stats::routes(inner.stats.clone()));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeKratos { inner, addr })
    }

    /// Base URL for `whoami.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the behaviour for a credential value.
    pub fn set(&self, credential: &str, b: Behaviour) {
        self.inner
            .behaviours
            .lock()
            .unwrap()
            .insert(credential.to_owned(), b);
    }

    /// Sets the behaviour for credentials starting with `prefix` (after exact matches).
    pub fn set_prefix(&self, prefix: &str, b: Behaviour) {
        let mut prefixes = self.inner.prefixes.lock().unwrap();
        prefixes.retain(|(p, _)| p != prefix);
        prefixes.push((prefix.to_owned(), b));
    }

    /// The behaviour for credentials without their own (`None`: `Unauthorized`).
    pub fn set_fallback(&self, b: Option<Behaviour>) {
        *self.inner.fallback.lock().unwrap() = b;
    }

    /// The call counters (also served on `/__stats`).
    pub fn stats(&self) -> &UpstreamStats {
        &self.inner.stats
    }

    /// Introspection calls received so far (they count as calls too).
    pub fn introspections(&self) -> usize {
        self.inner.introspections.load(Ordering::SeqCst) as usize
    }

    /// From now on the introspection endpoint says `token` is inactive (revoked).
    pub fn revoke_token(&self, token: &str) {
        self.inner.revoked.lock().unwrap().insert(token.to_owned());
    }

    /// Whoami calls received so far.
    pub fn calls(&self) -> usize {
        self.inner.stats.calls() as usize
    }

    /// Every request received so far (empty unless recording).
    pub fn received(&self) -> Vec<Received> {
        self.inner
            .received
            .as_ref()
            .map(|r| r.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.inner.stats.in_flight() as usize
    }

    /// The most requests answered at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.inner.stats.max_in_flight() as usize
    }

    /// Resets the high-water mark of concurrent requests to the current count.
    pub fn reset_max_in_flight(&self) {
        self.inner.stats.reset_max_in_flight();
    }

    /// Whoami calls received for one cookie or session-token value (needs recording).
    pub fn calls_for(&self, credential: &str) -> usize {
        self.received()
            .iter()
            .filter(|r| {
                r.session_token.as_deref() == Some(credential)
                    || r.cookie.as_deref().is_some_and(|c| {
                        c.split(';')
                            .filter_map(|p| p.trim().split_once('='))
                            .any(|(n, v)| n.starts_with("ory_") && v == credential)
                    })
            })
            .count()
    }
}

/// The value of the first `ory_*` cookie in a `Cookie` header.
fn session_cookie(cookie: &str) -> Option<&str> {
    cookie
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(n, _)| n.starts_with("ory_"))
        .map(|(_, v)| v)
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A stand-in RFC 7662 endpoint (benchmarks and tests of the OAuth2 path): `token=ory_at_valid…`
/// is active for an hour (subject derived from the token, client `bench`, scope `read`),
/// `ory_at_nosub…` active but naming nobody, anything else (or a revoked token) inactive.
/// Counted like whoami calls, and on their own.
async fn introspect(State(inner): State<Arc<Inner>>, body: String) -> Response {
    let _in_flight = inner.stats.enter();
    inner.introspections.fetch_add(1, Ordering::SeqCst);
    let token = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(form_decode)
        .unwrap_or_default();
    let answer = if inner.revoked.lock().unwrap().contains(&token) {
        json!({"active": false})
    } else if token.starts_with("ory_at_nosub") {
        // Active, but naming nobody (no `sub`, no `client_id`).
        json!({"active": true, "exp": Utc::now().timestamp() + 3600, "token_use": "access_token"})
    } else if token.starts_with("ory_at_valid") {
        json!({
            "active": true,
            "sub": format!("sub-{}", &token[token.len().saturating_sub(8)..]),
            "client_id": "bench",
            "scope": "read",
            "exp": Utc::now().timestamp() + 3600,
            "token_use": "access_token",
        })
    } else {
        json!({"active": false})
    };
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// `application/x-www-form-urlencoded` value decoding (`+` and `%XX`).
fn form_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && v.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&v[i + 1..i + 3], 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn whoami(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let _in_flight = inner.stats.enter();
    let received = Received {
        cookie: header(&headers, "cookie"),
        session_token: header(&headers, "x-session-token"),
        authorization: header(&headers, "authorization"),
        traceparent: header(&headers, "traceparent"),
        request_id: header(&headers, "x-request-id"),
        cache_control: header(&headers, "cache-control"),
    };
    let credential = received
        .session_token
        .clone()
        .or_else(|| {
            received
                .cookie
                .as_deref()
                .and_then(session_cookie)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    if let Some(r) = &inner.received {
        r.lock().unwrap().push(received);
    }
    let behaviour = inner.behaviours.lock().unwrap().get(&credential).cloned();
    let behaviour = behaviour
        .or_else(|| {
            let prefixes = inner.prefixes.lock().unwrap();
            prefixes
                .iter()
                .find(|(p, _)| credential.starts_with(p.as_str()))
                .map(|(_, b)| b.clone())
        })
        .or_else(|| inner.fallback.lock().unwrap().clone())
        .unwrap_or(Behaviour::Unauthorized);
    let response = respond(behaviour, credential).await;
    inner.stats.answered(response.status().as_u16());
    response
}

fn respond(
    b: Behaviour,
    credential: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        let json = |status: StatusCode, v: serde_json::Value| {
            (
                status,
                [
                    ("content-type", "application/json"),
                    (
                        "cache-control",
                        "private, no-cache, no-store, must-revalidate",
                    ),
                ],
                v.to_string(),
            )
                .into_response()
        };
        match b {
            Behaviour::Active {
                session_id,
                identity_id,
                email,
                aal,
                expires_in,
            } => {
                let expires = Utc::now() + chrono::Duration::from_std(expires_in).unwrap();
                json(
                    StatusCode::OK,
                    json!({
                        "id": session_id,
                        "active": true,
                        "expires_at": expires.to_rfc3339_opts(SecondsFormat::Micros, true),
                        "authenticated_at": Utc::now().to_rfc3339(),
                        "authenticator_assurance_level": aal,
                        "authentication_methods": [{"method": "password", "aal": "aal1"}],
                        "issued_at": Utc::now().to_rfc3339(),
                        "identity": {
                            "id": identity_id,
                            "schema_id": "default",
                            "state": "active",
                            "traits": {"email": email, "name": {"first": "Ada", "last": "Lovelace"}},
                            "metadata_public": {"role": "admin"}
                        }
                    }),
                )
            }
            Behaviour::Derived { expires_in } => {
                json(StatusCode::OK, derived_session(&credential, expires_in))
            }
            Behaviour::Inactive => json(
                StatusCode::OK,
                json!({"id": "sess-x", "active": false, "expires_at": "2999-01-01T00:00:00Z",
                    "identity": {"id": "ident-x"}}),
            ),
            Behaviour::Unauthorized => json(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": 401, "status": "Unauthorized", "id": "session_inactive",
                    "reason": "No valid session credentials found in the request.", "message": "The request could not be authorized"}}),
            ),
            Behaviour::Aal2Required => json(
                StatusCode::FORBIDDEN,
                json!({"error": {"code": 403, "status": "Forbidden", "id": "session_aal2_required",
                    "message": "Session does not fulfill the requested Authenticator Assurance Level"},
                    "redirect_browser_to": "http://kratos.test/self-service/login/browser?aal=aal2"}),
            ),
            Behaviour::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "7")],
                "slow down",
            )
                .into_response(),
            Behaviour::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            Behaviour::Garbage => (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"id\": \"truncated",
            )
                .into_response(),
            Behaviour::Slow(d, inner) => {
                tokio::time::sleep(d).await;
                respond(*inner, credential).await
            }
            Behaviour::Raw {
                status,
                content_type,
                body,
            } => (
                StatusCode::from_u16(status).unwrap(),
                [("content-type", content_type)],
                body,
            )
                .into_response(),
            Behaviour::ShortBody { declared, body } => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .header("content-length", declared.to_string())
                .body(axum::body::Body::from_stream(after_headers(body, None)))
                .unwrap(),
            Behaviour::DropMidBody { body } => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(axum::body::Body::from_stream(after_headers(
                    body,
                    Some(std::io::Error::other("connection dropped mid-response")),
                )))
                .unwrap(),
        }
    })
}

/// A UUID-shaped id derived from a string (FNV-1a based; not cryptographic).
fn uuid_from(s: &str, salt: u64) -> String {
    let mut a: u64 = 0xcbf29ce484222325 ^ salt;
    let mut b: u64 = 0x84222325cbf29ce4 ^ salt.rotate_left(17);
    for byte in s.bytes() {
        a = (a ^ byte as u64).wrapping_mul(0x100000001b3);
        b = (b ^ byte as u64).wrapping_mul(0x100000001b3).rotate_left(5);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// A session shaped like Kratos v1.3's whoami output (~1.3 KB) for `credential`.
fn derived_session(credential: &str, expires_in: Duration) -> serde_json::Value {
    let sid = uuid_from(credential, 1);
    let iid = uuid_from(credential, 2);
    let rfc3339 = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    let now_t = Utc::now();
    let now = rfc3339(now_t);
    let exp = rfc3339(now_t + chrono::Duration::from_std(expires_in).unwrap_or_default());
    let email = format!("user-{}@example.com", &iid[..8]);
    json!({
        "id": sid,
        "active": true,
        "expires_at": exp,
        "authenticated_at": now,
        "authenticator_assurance_level": "aal1",
        "authentication_methods": [{"method": "password", "aal": "aal1", "completed_at": now}],
        "issued_at": now,
        "identity": {
            "id": iid,
            "schema_id": "default",
            "schema_url": "http://127.0.0.1:4433/schemas/ZGVmYXVsdA",
            "state": "active",
            "state_changed_at": now,
            "traits": {"email": email, "name": {"first": "Bench", "last": "User"}},
            "verifiable_addresses": [{"id": uuid_from(credential, 3), "value": email, "verified": false, "via": "email", "status": "pending", "created_at": now, "updated_at": now}],
            "recovery_addresses": [{"id": uuid_from(credential, 4), "value": email, "via": "email", "created_at": now, "updated_at": now}],
            "metadata_public": null,
            "created_at": now,
            "updated_at": now,
            "organization_id": null
        },
        "devices": [{"id": uuid_from(credential, 5), "ip_address": "127.0.0.1", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)", "location": ""}]
    })
}

/// A body stream: `first`, then (after a pause that lets the headers and the first bytes reach
/// the client) either the end of the stream or `error`, which makes the server abort the
/// connection.
fn after_headers(
    first: Vec<u8>,
    error: Option<std::io::Error>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold((Some(first), error), |(first, error)| async move {
        if let Some(first) = first {
            return Some((Ok(bytes::Bytes::from(first)), (None, error)));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        error.map(|e| (Err(e), (None, None)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixes_derive_sessions_and_everything_is_counted() {
        let fake = FakeKratos::bind("127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        fake.set_prefix(
            "valid-",
            Behaviour::Derived {
                expires_in: Duration::from_secs(60),
            },
        );
        let http = reqwest::Client::new();
        let whoami = |cookie: &str| {
            http.get(format!("{}/sessions/whoami", fake.url()))
                .header("cookie", format!("theme=dark; ory_kratos_session={cookie}"))
                .send()
        };
        let a = whoami("valid-1").await.unwrap();
        assert_eq!(a.status(), 200);
        let a: serde_json::Value = serde_json::from_slice(&a.bytes().await.unwrap()).unwrap();
        let again: serde_json::Value =
            serde_json::from_slice(&whoami("valid-1").await.unwrap().bytes().await.unwrap())
                .unwrap();
        assert_eq!(a["id"], again["id"], "ids derive from the credential");
        let expires =
            chrono::DateTime::parse_from_rfc3339(a["expires_at"].as_str().unwrap()).unwrap();
        let left = expires.with_timezone(&Utc) - Utc::now();
        assert!(left > chrono::Duration::seconds(50) && left <= chrono::Duration::seconds(60));
        assert_eq!(whoami("other").await.unwrap().status(), 401);

        assert_eq!(fake.calls(), 3);
        assert!(fake.received().is_empty(), "not recording");
        let stats = http
            .get(format!("{}/__stats", fake.url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
        assert_eq!(
            (stats["calls"].as_u64(), stats["ok"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(stats["unauthorized"], 1);
    }
}
