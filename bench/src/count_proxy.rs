//! The `count-proxy` tool: a reverse proxy in front of a real Kratos that counts the whoami calls
//! passing through (served on `/__stats`, like the fake Kratos).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sessiongate_testkit::stats::{self, UpstreamStats};

/// Proxies every request on `listen` to `upstream`, counting `/sessions/whoami` calls.
pub async fn count_proxy(listen: SocketAddr, upstream: String) -> Result<()> {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    let counter = Arc::new(UpstreamStats::default());
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let upstream = upstream.trim_end_matches('/').to_owned();
    let c = counter.clone();
    let proxy = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (client, upstream, counter) = (client.clone(), upstream.clone(), c.clone());
        async move {
            let whoami = if uri.path() == "/sessions/whoami" {
                Some(counter.enter())
            } else {
                None
            };
            let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut req = client.request(method, format!("{upstream}{pq}"));
            for (k, v) in &headers {
                if !matches!(
                    k.as_str(),
                    "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
                ) {
                    req = req.header(k, v);
                }
            }
            let resp: Response = match req.body(body).send().await {
                Ok(r) => {
                    let status = r.status();
                    if whoami.is_some() {
                        counter.answered(status.as_u16());
                    }
                    let mut out = axum::http::Response::builder().status(status);
                    for (k, v) in r.headers() {
                        if !matches!(
                            k.as_str(),
                            "connection" | "content-length" | "transfer-encoding" | "keep-alive"
                        ) {
                            out = out.header(k, v);
                        }
                    }
                    let body = r.bytes().await.unwrap_or_default();
                    out.body(axum::body::Body::from(body))
                        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            };
            resp
        }
    };
    let app = stats::routes(counter).fallback(proxy);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("count-proxy listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
