//! One bounded HTTP exchange for the token sources: a deadline over the whole exchange and a
//! cap on the body, so a JWKS or introspection endpoint can neither hang us nor make us
//! allocate without bound.

use std::time::Duration;

/// Why an exchange failed: a closed set of metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchError {
    Connect,
    Timeout,
    Transport,
    /// Answered with a status other than 200.
    Status(u16),
    /// Body larger than allowed.
    TooLarge,
    /// A body we cannot use (not JSON, not the expected document).
    Undecodable,
}

impl FetchError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FetchError::Connect => "connect",
            FetchError::Timeout => "timeout",
            FetchError::Transport => "other",
            FetchError::Status(400..=499) => "4xx",
            FetchError::Status(500..=599) => "5xx",
            FetchError::Status(_) => "other",
            FetchError::TooLarge => "too_large",
            FetchError::Undecodable => "undecodable",
        }
    }
}

/// A client for the token sources: no redirects (a JWKS URL is configured, not discovered by
/// following), keep-alive, a connect deadline.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sessiongate/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Sends `req` and reads a 200 body of at most `max_bytes`, all within `timeout`.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, FetchError> {
    match tokio::time::timeout(timeout, exchange(req, max_bytes)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout),
    }
}

async fn exchange(req: reqwest::RequestBuilder, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    let mut resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            FetchError::Connect
        } else if e.is_timeout() {
            FetchError::Timeout
        } else {
            FetchError::Transport
        }
    })?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    if resp.content_length().is_some_and(|l| l > max_bytes as u64) {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(4096).min(65536) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|_| FetchError::Transport)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
