//! The Kratos `/sessions/whoami` client: pooled keep-alive HTTP, a per-call deadline, bounded
//! concurrency with a bounded wait, and the mapping of Kratos' answers to [`Answer`] /
//! [`UpstreamError`]. It sends Kratos only the one credential, never the whole `Cookie` header.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use super::admission::{Admission, AdmissionLimits, SourceKey};
use super::{
    Answer, LookupContext, LookupFuture, Outcome, ProjectError, Projection, SessionSource,
    UpstreamError,
};
use crate::config::WhoamiConfig;
use crate::credentials::{Credential, CredentialKind};
use crate::telemetry::{Metrics, StatusLabel};

/// Calls Kratos' whoami endpoint.
pub struct WhoamiClient {
    client: reqwest::Client,
    /// Parsed once: not on every call.
    url: reqwest::Url,
    timeout: Duration,
    max_body_bytes: usize,
    admission: Arc<Admission>,
    projection: Projection,
    metrics: Arc<Metrics>,
    export_traces: bool,
}

impl std::fmt::Debug for WhoamiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhoamiClient")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl WhoamiClient {
    /// Builds the client. `export_traces` says whether our own spans are exported (then the
    /// whoami span's context is propagated; otherwise the caller's `traceparent` is passed on).
    pub fn new(
        config: &WhoamiConfig,
        projection: Projection,
        metrics: Arc<Metrics>,
        export_traces: bool,
    ) -> anyhow::Result<WhoamiClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sessiongate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WhoamiClient {
            client,
            url: reqwest::Url::parse(&format!(
                "{}/sessions/whoami",
                config.base_url.trim_end_matches('/')
            ))
            .map_err(|e| anyhow::anyhow!("whoami.base_url: {e}"))?,
            timeout: config.timeout,
            max_body_bytes: config.max_body_bytes,
            admission: Admission::new(
                AdmissionLimits {
                    max_concurrency: config.max_concurrency,
                    reserved: config.known_reserve(),
                    queue_timeout: config.queue_timeout,
                    max_waiting: config.max_waiting,
                },
                metrics.clone(),
            ),
            projection,
            metrics,
            export_traces,
        })
    }

    async fn call(
        &self,
        credential: &Credential,
        cx: &LookupContext,
    ) -> Result<Answer, UpstreamError> {
        let Ok(permit) = self
            .admission
            .admit(cx.lane, SourceKey::of(cx.source))
            .await
        else {
            return Err(UpstreamError::Overloaded);
        };
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.request(credential, cx)).await;
        drop(permit);
        let (status, result) = match result {
            Ok(r) => r,
            Err(_) => ("timeout", Err(UpstreamError::Unavailable("timeout"))),
        };
        let labels = StatusLabel { status };
        self.metrics.whoami_requests.get_or_create(&labels).inc();
        self.metrics
            .whoami_duration
            .get_or_create(&labels)
            .observe(start.elapsed().as_secs_f64());
        tracing::Span::current().record("http.response.status_code", status);
        if let Err(e) = &result {
            tracing::warn!(status, error = %e, "whoami call failed");
        }
        result
    }

    async fn request(
        &self,
        credential: &Credential,
        cx: &LookupContext,
    ) -> (&'static str, Result<Answer, UpstreamError>) {
        let mut req = self
            .client
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json");
        req = match credential.kind {
            CredentialKind::Cookie => {
                let name = credential
                    .cookie_name
                    .as_deref()
                    .unwrap_or("ory_kratos_session");
                req.header(
                    http::header::COOKIE,
                    format!("{name}={}", credential.expose()),
                )
            }
            CredentialKind::SessionToken | CredentialKind::Bearer => {
                req.header("x-session-token", credential.expose())
            }
        };
        if cx.fresh {
            req = req.header(http::header::CACHE_CONTROL, "max-age=0");
        }
        if let Some(id) = &cx.request_id {
            req = req.header("x-request-id", id);
        }
        let injected = if self.export_traces {
            crate::telemetry::inject_current()
        } else {
            Default::default()
        };
        if !injected.is_empty() {
            for (k, v) in injected {
                req = req.header(k, v);
            }
        } else {
            if let Some(tp) = &cx.traceparent {
                req = req.header("traceparent", tp);
            }
            if let Some(ts) = &cx.tracestate {
                req = req.header("tracestate", ts);
            }
        }

        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return ("connect", Err(UpstreamError::Unavailable("connect")));
            }
            Err(e) if e.is_timeout() => {
                return ("timeout", Err(UpstreamError::Unavailable("timeout")));
            }
            Err(_) => return ("other", Err(UpstreamError::Unavailable("transport"))),
        };
        let status = resp.status().as_u16();
        let cache_for = resp
            .headers()
            .get("ory-session-cache-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .map(str::to_owned);
        match status {
            200 => {
                let Some(body) = self.read_body(resp).await else {
                    return ("body", Err(UpstreamError::Unavailable("body")));
                };
                match self.projection.apply(&body, SystemTime::now()) {
                    Ok(session) => (
                        "200",
                        Ok(Answer {
                            outcome: Outcome::Active(Arc::new(session)),
                            cache_for,
                        }),
                    ),
                    Err(ProjectError::Inactive) => (
                        "200",
                        Ok(Answer {
                            outcome: Outcome::Unauthenticated,
                            cache_for,
                        }),
                    ),
                    Err(ProjectError::Undecodable) => {
                        ("body", Err(UpstreamError::Unavailable("body")))
                    }
                }
            }
            401 => (
                "401",
                Ok(Answer {
                    outcome: Outcome::Unauthenticated,
                    cache_for,
                }),
            ),
            403 => {
                let body = self.read_body(resp).await.unwrap_or_default();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let redirect = json
                    .get("redirect_browser_to")
                    .and_then(|v| v.as_str())
                    .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
                    .map(str::to_owned);
                let aal2 = json.pointer("/error/id").and_then(|v| v.as_str())
                    == Some("session_aal2_required");
                let outcome = if aal2 || redirect.is_some() {
                    Outcome::StepUpRequired {
                        redirect_browser_to: redirect,
                    }
                } else {
                    Outcome::Unauthenticated
                };
                (
                    "403",
                    Ok(Answer {
                        outcome,
                        cache_for: None,
                    }),
                )
            }
            429 => ("429", Err(UpstreamError::RateLimited { retry_after })),
            500..=599 => ("5xx", Err(UpstreamError::Unavailable("status"))),
            400..=499 => ("4xx", Err(UpstreamError::Unavailable("status"))),
            _ => ("other", Err(UpstreamError::Unavailable("status"))),
        }
    }

    /// Reads at most `max_body_bytes`; `None` on overflow or a broken stream.
    async fn read_body(&self, mut resp: reqwest::Response) -> Option<Vec<u8>> {
        if resp
            .content_length()
            .is_some_and(|l| l > self.max_body_bytes as u64)
        {
            return None;
        }
        let mut body =
            Vec::with_capacity(resp.content_length().unwrap_or(2048).min(65536) as usize);
        while let Some(chunk) = resp.chunk().await.ok()? {
            if body.len() + chunk.len() > self.max_body_bytes {
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        Some(body)
    }
}

impl SessionSource for WhoamiClient {
    fn lookup<'a>(&'a self, credential: &'a Credential, cx: &'a LookupContext) -> LookupFuture<'a> {
        let span = tracing::info_span!(
            "whoami",
            otel.kind = "client",
            credential.kind = credential.kind.as_str(),
            http.response.status_code = tracing::field::Empty,
        );
        Box::pin(self.call(credential, cx).instrument(span))
    }

    fn known_would_wait(&self) -> bool {
        self.admission.known_would_wait()
    }

    fn shed_first(&self, source: Option<std::net::IpAddr>) -> bool {
        self.admission.shed_hopeless(SourceKey::of(source))
    }
}
