//! HTTP forward-auth transport: the same [`Authorizer`] behind `ANY /check` and `ANY /check/*`,
//! for nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth` and Envoy/Istio
//! `http_service`.
//!
//! The original request is read from the proxy's conventions — `X-Forwarded-Method`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Uri` (Traefik, Caddy),
//! `X-Original-Method` / `X-Original-URI` (nginx), or Envoy's path-prefix form (`/check` +
//! original path, original method) — but only when the TCP peer is a trusted proxy. From anyone
//! else the request is taken at face value: its own method, `Host` and path.
//!
//! On allow: 200 with the token and identity headers as response headers (an empty value means
//! "remove": nginx drops empty `proxy_set_header` values), the rewritten `cookie`, and
//! `x-envoy-auth-headers-to-remove` for Envoy. On deny: the same status, headers and JSON body as
//! over gRPC.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::authz::{Authorizer, Decision, Headers, Request, RouteSettings};
use crate::config::Cidr;
use crate::headers::first_list_value;

/// State of the forward-auth handler.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    /// The decision engine.
    pub authorizer: Arc<Authorizer>,
    /// Peers whose forwarded headers are believed.
    pub trusted: Arc<[Cidr]>,
    /// Path prefix of the endpoint (`/check`).
    pub prefix: Arc<str>,
    /// Create a span per check parented on the request's `traceparent` (when spans are exported).
    pub trace_spans: bool,
    /// Answer peers outside `trusted` (judged at face value) instead of refusing them.
    pub answer_untrusted_peers: bool,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Translates a forward-auth request into the domain request (see the module docs).
pub fn to_request(
    trusted: &[Cidr],
    prefix: &str,
    peer: IpAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Request {
    let peer_trusted = is_trusted(trusted, peer);
    let mut hs = Headers::with_capacity(headers.len());
    for (k, v) in headers {
        hs.append(k.as_str(), &String::from_utf8_lossy(v.as_bytes()));
    }
    // Path below the endpoint prefix: Envoy's path-prefix form.
    let own_path = uri
        .path()
        .strip_prefix(prefix)
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .map(|r| if r.is_empty() { "/" } else { r })
        .unwrap_or("/");
    let own_path_and_query = match uri.query() {
        Some(q) if own_path != "/" || !peer_trusted => format!("{own_path}?{q}"),
        _ => own_path.to_owned(),
    };
    let host_header = header(headers, "host").unwrap_or_default().to_owned();
    if !peer_trusted {
        return Request {
            method: method.as_str().to_owned(),
            scheme: "http".into(),
            host: host_header,
            path: own_path_and_query,
            headers: hs,
            route: Ok(RouteSettings::default()),
            source: Some(peer),
        };
    }
    let source = Some(client_address(trusted, peer, headers));
    let forwarded_uri =
        header(headers, "x-forwarded-uri").or_else(|| header(headers, "x-original-uri"));
    let method = header(headers, "x-forwarded-method")
        .or_else(|| header(headers, "x-original-method"))
        .map(str::to_owned)
        .unwrap_or_else(|| method.as_str().to_owned());
    let scheme = header(headers, "x-forwarded-proto")
        .map(|p| first_list_value(p).to_owned())
        .unwrap_or_else(|| "http".into());
    let host = header(headers, "x-forwarded-host")
        .map(|h| first_list_value(h).to_owned())
        .unwrap_or(host_header);
    // A rule may be named only by the proxy's own configuration: the path `/check/r/<name>`.
    // Never by the /check query string, which proxies such as Caddy copy from the client's own
    // request, and never by a header a client could forward.
    let (path, route) = match forwarded_uri {
        Some(u) => {
            let route = match own_path.strip_prefix("/r/") {
                Some(name) => RouteSettings::parse([("route", name)]),
                None => Ok(RouteSettings::default()),
            };
            (u.to_owned(), route)
        }
        None => (own_path_and_query, Ok(RouteSettings::default())),
    };
    Request {
        method,
        scheme,
        host,
        path,
        headers: hs,
        route,
        source,
    }
}

/// Is `ip` one of the trusted proxies?
fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client behind trusted proxies: the rightmost `X-Forwarded-For` hop that is not itself a
/// trusted proxy (hops to its left were written by the client and prove nothing). The peer
/// itself when there is no such hop or the header does not parse.
fn client_address(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    for hop in hops.iter().rev().flat_map(|v| v.rsplit(',')) {
        if !is_trusted(trusted, client) {
            break;
        }
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = addr;
    }
    client
}

/// `ANY /check[/*]`.
pub async fn check(
    State(fa): State<ForwardAuth>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let trusted = is_trusted(&fa.trusted, peer.ip());
    if !trusted && !fa.answer_untrusted_peers {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json"), ("cache-control", "no-store")],
            r#"{"error":{"code":403,"status":"Forbidden","reason":"untrusted_peer","message":"forward-auth answers the proxies in forward_auth.trusted_proxies only"}}"#,
        )
            .into_response();
    }
    let req = to_request(&fa.trusted, &fa.prefix, peer.ip(), &method, &uri, &headers);
    let redirect_as_401 = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "redirect_status=401"))
        && trusted;
    let mut decision = if fa.trace_spans {
        let span = crate::telemetry::check_span("forward_auth", &req.method, &req.headers);
        fa.authorizer.check(&req).instrument(span).await
    } else {
        fa.authorizer.check(&req).await
    };
    // A proxy that copies `cookie` from our answer must get the cookies back even when there was
    // no session cookie to strip.
    if let Decision::Allow(allow) = &mut decision
        && !allow.set.iter().any(|(k, _)| &**k == "cookie")
        && !allow.remove.iter().any(|k| &**k == "cookie")
    {
        let cookies: Vec<&str> = req.headers.get_all("cookie").collect();
        if !cookies.is_empty() {
            allow.set.push(("cookie".into(), cookies.join("; ").into()));
        }
    }
    to_response(decision, redirect_as_401)
}

/// Translates a decision into the forward-auth response (consuming it: a denial's body and header
/// values move into the response).
pub fn to_response(decision: Decision, redirect_as_401: bool) -> Response {
    match decision {
        Decision::Allow(allow) => {
            let mut resp = Response::new(Body::empty());
            let h = resp.headers_mut();
            let mut remove: Vec<&str> = Vec::new();
            for (k, v) in &allow.set {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(&**k), HeaderValue::try_from(&**v))
                {
                    h.insert(name, value);
                }
            }
            for k in &allow.remove {
                remove.push(k);
                // Empty value: nginx does not pass an empty proxy_set_header value upstream.
                if let Ok(name) = HeaderName::try_from(&**k)
                    && !h.contains_key(&name)
                {
                    h.insert(name, HeaderValue::from_static(""));
                }
            }
            if !remove.is_empty()
                && let Ok(v) = HeaderValue::try_from(remove.join(","))
            {
                h.insert("x-envoy-auth-headers-to-remove", v);
            }
            h.insert("cache-control", HeaderValue::from_static("no-store"));
            resp
        }
        Decision::Deny(deny) => {
            let mut status = StatusCode::from_u16(deny.status).unwrap_or(StatusCode::FORBIDDEN);
            if redirect_as_401 && status.is_redirection() {
                // nginx auth_request only understands 2xx/401/403: carry the redirect in a 401's
                // Location and let `error_page 401` follow it.
                status = StatusCode::UNAUTHORIZED;
            }
            let mut resp = (status, deny.body).into_response();
            let h = resp.headers_mut();
            for (k, v) in deny.headers {
                if let Ok(v) = HeaderValue::try_from(v) {
                    h.insert(k, v);
                }
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(peer: &str, method: &str, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let trusted = ["127.0.0.1/32".parse().unwrap()];
        to_request(
            &trusted,
            "/check",
            peer.parse().unwrap(),
            &method.parse().unwrap(),
            &uri.parse().unwrap(),
            &h,
        )
    }

    #[test]
    fn the_client_is_the_first_untrusted_forwarded_hop() {
        let src = |peer: &str, xff: &[&str]| {
            let h: Vec<_> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
            map(peer, "GET", "/check", &h).source.unwrap().to_string()
        };
        // From a trusted proxy: the hop it appended, never what the client wrote before it.
        assert_eq!(src("127.0.0.1", &["6.6.6.6, 203.0.113.9"]), "203.0.113.9");
        assert_eq!(src("127.0.0.1", &["6.6.6.6", "203.0.113.9"]), "203.0.113.9");
        // Trusted hops are skipped from the right.
        assert_eq!(
            src("127.0.0.1", &["6.6.6.6, 203.0.113.9, 127.0.0.1"]),
            "203.0.113.9"
        );
        // No header, or garbage: the peer.
        assert_eq!(src("127.0.0.1", &[]), "127.0.0.1");
        assert_eq!(src("127.0.0.1", &["not-an-ip"]), "127.0.0.1");
        // From an untrusted peer the header is ignored.
        assert_eq!(src("198.51.100.7", &["1.2.3.4"]), "198.51.100.7");
    }

    #[test]
    fn trusted_proxy_conventions() {
        let fwd = [
            ("host", "gate:9192"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/orders/7?x=1"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-proto", "https"),
        ];
        let r = map(
            "127.0.0.1",
            "GET",
            "/check?aal=aal2&audience=adm%20in",
            &fwd,
        );
        assert_eq!(
            (
                r.method.as_str(),
                r.scheme.as_str(),
                r.host.as_str(),
                r.path.as_str()
            ),
            ("DELETE", "https", "app.example.com", "/orders/7?x=1")
        );
        // The /check query (which Caddy copies from the client) sets nothing.
        assert_eq!(r.route.unwrap(), RouteSettings::default());
        // The proxy's own configuration may name a rule in the path.
        let r = map("127.0.0.1", "GET", "/check/r/admin?route=public", &fwd);
        assert_eq!(r.route.unwrap().rule.as_deref(), Some("admin"));
        assert_eq!(r.path, "/orders/7?x=1");
        assert!(
            map("127.0.0.1", "GET", "/check/r/bad%20name", &fwd)
                .route
                .is_err()
        );
        // nginx's X-Original-* names.
        let r = map(
            "127.0.0.1",
            "GET",
            "/check",
            &[
                ("host", "h"),
                ("x-original-uri", "/a"),
                ("x-original-method", "POST"),
            ],
        );
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/a"));
        // Envoy's path-prefix form: original method and path, query is the original's, no route settings.
        let r = map(
            "127.0.0.1",
            "PUT",
            "/check/orders/7?anonymous=true",
            &[("host", "app")],
        );
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.host.as_str()),
            ("PUT", "/orders/7?anonymous=true", "app")
        );
        assert!(
            !r.route.unwrap().anonymous,
            "a client's query is not a route setting"
        );
    }

    #[test]
    fn untrusted_peers_are_judged_by_their_own_request() {
        let r = map(
            "10.9.9.9",
            "GET",
            "/check?anonymous=true",
            &[
                ("host", "gate"),
                ("x-forwarded-uri", "/public"),
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-host", "evil"),
            ],
        );
        assert_eq!(
            (r.method.as_str(), r.host.as_str(), r.path.as_str()),
            ("GET", "gate", "/?anonymous=true")
        );
        assert!(!r.route.unwrap().anonymous);
    }

    #[test]
    fn responses() {
        use crate::authz::{Allow, Deny, Reason};
        let allow = Decision::Allow(Allow {
            set: vec![("authorization".into(), "Bearer x".into())],
            remove: vec!["x-user-id".into(), "x-session-token".into()],
            reason: Reason::Authenticated,
            metadata: vec![],
        });
        let r = to_response(allow, false);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["authorization"], "Bearer x");
        assert_eq!(r.headers()["x-user-id"], "");
        assert_eq!(
            r.headers()["x-envoy-auth-headers-to-remove"],
            "x-user-id,x-session-token"
        );
        let deny = Decision::Deny(Deny {
            status: 303,
            headers: vec![("location", "https://login".into())],
            body: String::new(),
            reason: Reason::NoCredential,
        });
        assert_eq!(to_response(deny.clone(), false).status(), 303);
        let r = to_response(deny, true);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["location"], "https://login");
    }
}
