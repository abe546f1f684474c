//! An in-process stand-in for Kratos' `/sessions/whoami`, speaking its documented responses
//! (200 session, 401, 403 `session_aal2_required`, 429) plus failures real Kratos cannot be made
//! to produce on demand (500, slow, garbage, dropped connections). It records what it received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

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
}

#[derive(Default)]
struct Inner {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    received: Mutex<Vec<Received>>,
    calls: AtomicUsize,
    /// Used for credentials without their own behaviour (default: `Unauthorized`).
    fallback: Mutex<Option<Behaviour>>,
    /// Requests being answered right now, and the most seen at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request as in flight until dropped (also when the client gives up).
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> InFlight<'a> {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The running fake.
#[derive(Clone)]
pub struct FakeKratos {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl FakeKratos {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start() -> FakeKratos {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/sessions/whoami", get(whoami))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKratos { inner, addr }
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

    /// Whoami calls received so far.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// The behaviour for credentials without their own (`None`: `Unauthorized`).
    pub fn set_fallback(&self, b: Option<Behaviour>) {
        *self.inner.fallback.lock().unwrap() = b;
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests answered at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Resets the high-water mark of concurrent requests to the current count.
    pub fn reset_max_in_flight(&self) {
        self.inner
            .max_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    /// Whoami calls received for one cookie or session-token value.
    pub fn calls_for(&self, credential: &str) -> usize {
        self.inner
            .received
            .lock()
            .unwrap()
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

/// A TCP forwarder in front of an address that can be switched off (listener closed, so new
/// connections are refused, and every forwarded connection cut) and on again on the same port:
/// "Kratos is down", then "Kratos is back", even for a client with pooled keep-alive connections.
pub struct TcpSwitch {
    pub addr: SocketAddr,
    target: SocketAddr,
    tasks: Mutex<Option<tokio::task::JoinSet<()>>>,
}

impl TcpSwitch {
    /// Starts forwarding an ephemeral loopback port to `target`.
    pub async fn start(target: SocketAddr) -> TcpSwitch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = TcpSwitch {
            addr,
            target,
            tasks: Mutex::new(None),
        };
        s.serve(listener);
        s
    }

    /// Base URL for `whoami.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target;
        let mut set = tokio::task::JoinSet::new();
        let conns2 = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        set.spawn(async move {
            // Aborting this task drops the listener and, through `_guard`, every connection.
            let _guard = AbortOnDrop(conns2.clone());
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut conns = conns2.lock().unwrap();
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.tasks.lock().unwrap() = Some(set);
    }

    /// Closes the listener and cuts every forwarded connection.
    pub async fn down(&self) {
        let set = self.tasks.lock().unwrap().take();
        if let Some(mut set) = set {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }

    /// Listens on the same port again.
    pub async fn up(&self) {
        let mut last = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addr);
    }
}

struct AbortOnDrop(Arc<Mutex<tokio::task::JoinSet<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.abort_all();
        }
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn whoami(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let _in_flight = InFlight::enter(&inner);
    inner.calls.fetch_add(1, Ordering::SeqCst);
    let received = Received {
        cookie: header(&headers, "cookie"),
        session_token: header(&headers, "x-session-token"),
        authorization: header(&headers, "authorization"),
        traceparent: header(&headers, "traceparent"),
        request_id: header(&headers, "x-request-id"),
    };
    inner.received.lock().unwrap().push(received.clone());
    let credential = received
        .session_token
        .clone()
        .or_else(|| {
            received.cookie.as_deref().and_then(|c| {
                c.split(';')
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(n, _)| n.starts_with("ory_"))
                    .map(|(_, v)| v.to_owned())
            })
        })
        .unwrap_or_default();
    let behaviour = inner
        .behaviours
        .lock()
        .unwrap()
        .get(&credential)
        .cloned()
        .or_else(|| inner.fallback.lock().unwrap().clone())
        .unwrap_or(Behaviour::Unauthorized);
    respond(behaviour).await
}

fn respond(b: Behaviour) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
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
                let expires = chrono::Utc::now() + chrono::Duration::from_std(expires_in).unwrap();
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "id": session_id,
                        "active": true,
                        "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        "authenticated_at": chrono::Utc::now().to_rfc3339(),
                        "authenticator_assurance_level": aal,
                        "authentication_methods": [{"method": "password", "aal": "aal1"}],
                        "issued_at": chrono::Utc::now().to_rfc3339(),
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
            Behaviour::Inactive => json(
                StatusCode::OK,
                serde_json::json!({"id": "sess-x", "active": false, "expires_at": "2999-01-01T00:00:00Z",
                    "identity": {"id": "ident-x"}}),
            ),
            Behaviour::Unauthorized => json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": {"code": 401, "status": "Unauthorized", "id": "session_inactive",
                    "reason": "No valid session credentials found in the request.", "message": "The request could not be authorized"}}),
            ),
            Behaviour::Aal2Required => json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": {"code": 403, "status": "Forbidden", "id": "session_aal2_required",
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
                respond(*inner).await
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
