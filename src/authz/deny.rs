//! Shaping denials: 401 JSON with `WWW-Authenticate` or a 303 to the login page for browsers,
//! 403 / step-up redirect, 429 with `Retry-After`, 503. Bodies never echo request data.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Deny, Reason, Request};

/// Characters escaped in a query parameter value.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Longest original URL put into a `return_to`; longer ones are cut to scheme + host + path.
const MAX_RETURN_TO: usize = 2048;

/// Shapes denials from configuration.
#[derive(Debug, Clone)]
pub struct DenyShaper {
    pub login_url: Option<String>,
    pub return_to_param: String,
    pub kratos_browser_url: String,
    pub www_authenticate: String,
}

/// Does the client prefer HTML over JSON (a browser navigation)?
pub(super) fn prefers_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut html = None::<f32>;
    let mut json = None::<f32>;
    for range in accept.split(',').take(32) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = Some(html.unwrap_or(0.0).max(q)),
            "application/json" => json = Some(json.unwrap_or(0.0).max(q)),
            _ => {}
        }
    }
    match (html, json) {
        (Some(h), Some(j)) => h > 0.0 && h >= j,
        (Some(h), None) => h > 0.0,
        _ => false,
    }
}

/// `{"error":{"code","id","message","status"}[,"redirect_browser_to"]}`, serialised straight
/// from borrowed fields (no `serde_json::Value` tree: this runs for every denial, floods
/// included), keys in the order `serde_json::json!` gave them.
fn json_body(
    status: u16,
    status_text: &str,
    id: &str,
    message: &str,
    redirect_browser_to: Option<&str>,
) -> String {
    #[derive(serde::Serialize)]
    struct Error<'a> {
        code: u16,
        id: &'a str,
        message: &'a str,
        status: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: Error<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        redirect_browser_to: Option<&'a str>,
    }
    serde_json::to_string(&Body {
        error: Error {
            code: status,
            id,
            message,
            status: status_text,
        },
        redirect_browser_to,
    })
    .unwrap_or_default()
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("cache-control", "no-store".into()),
    ]
}

impl DenyShaper {
    /// The original URL as the client saw it, for `return_to`.
    fn original_url(req: &Request) -> Option<String> {
        let scheme = match req.scheme.as_str() {
            "http" | "https" => req.scheme.as_str(),
            _ => "https",
        };
        if req.host.is_empty() || !req.host.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let path = if req.path.starts_with('/') {
            req.path.as_str()
        } else {
            "/"
        };
        let url = format!("{scheme}://{}{path}", req.host);
        if url.len() <= MAX_RETURN_TO {
            return Some(url);
        }
        let path = path.split('?').next().unwrap_or("/");
        let url = format!("{scheme}://{}{path}", req.host);
        (url.len() <= MAX_RETURN_TO).then_some(url)
    }

    fn with_return_to(&self, base: &str, req: &Request) -> String {
        match Self::original_url(req) {
            Some(orig) => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!(
                    "{base}{sep}{}={}",
                    self.return_to_param,
                    utf8_percent_encode(&orig, QUERY)
                )
            }
            None => base.to_owned(),
        }
    }

    fn redirect(location: String, reason: Reason) -> Deny {
        Deny {
            status: 303,
            headers: vec![("location", location), ("cache-control", "no-store".into())],
            body: String::new(),
            reason,
        }
    }

    /// No valid session.
    pub fn unauthenticated(&self, req: &Request, reason: Reason) -> Deny {
        if let Some(login) = &self.login_url
            && prefers_html(req.headers.get("accept"))
        {
            return Self::redirect(self.with_return_to(login, req), reason);
        }
        let message = match reason {
            Reason::NoCredential => "no session credential was sent",
            Reason::CredentialTooLong => "the session credential is too long",
            Reason::CredentialMalformed => "the session credential is malformed",
            Reason::CredentialShape => "no valid session",
            Reason::CredentialAmbiguous => "more than one session credential was sent",
            _ => "no valid session",
        };
        let mut headers = json_headers();
        headers.push(("www-authenticate", self.www_authenticate.clone()));
        Deny {
            status: 401,
            headers,
            body: json_body(401, "Unauthorized", "session_inactive", message, None),
            reason,
        }
    }

    /// The session's AAL is too low.
    pub fn step_up(&self, req: &Request, redirect_browser_to: Option<&str>) -> Deny {
        let target = match redirect_browser_to {
            Some(r) => r.to_owned(),
            None => self.with_return_to(
                &format!(
                    "{}/self-service/login/browser?aal=aal2",
                    self.kratos_browser_url.trim_end_matches('/')
                ),
                req,
            ),
        };
        self.redirect_or_forbidden(
            req,
            target,
            "session_aal2_required",
            "a higher authenticator assurance level is required",
            Reason::StepUpRequired,
        )
    }

    /// Browsers are sent to `target`; API clients get 403 JSON with `redirect_browser_to`.
    fn redirect_or_forbidden(
        &self,
        req: &Request,
        target: String,
        id: &str,
        message: &str,
        reason: Reason,
    ) -> Deny {
        if prefers_html(req.headers.get("accept")) {
            return Self::redirect(target, reason);
        }
        Deny {
            status: 403,
            headers: json_headers(),
            body: json_body(403, "Forbidden", id, message, Some(&target)),
            reason,
        }
    }

    /// A bearer access token that is not valid: 401 with `WWW-Authenticate: Bearer
    /// error="invalid_token"` (RFC 6750 §3.1). Never says why (expired, bad signature…): that is
    /// in the metrics.
    pub fn invalid_token(&self, reason: Reason) -> Deny {
        let mut headers = json_headers();
        headers.push((
            "www-authenticate",
            format!("{}, error=\"invalid_token\"", self.www_authenticate),
        ));
        Deny {
            status: 401,
            headers,
            body: json_body(
                401,
                "Unauthorized",
                "invalid_token",
                "the access token is not valid",
                None,
            ),
            reason,
        }
    }

    /// A valid access token without the scopes this route needs: 403 with
    /// `WWW-Authenticate: Bearer error="insufficient_scope"` (and the scopes, from config).
    pub fn insufficient_scope(&self, scopes: &[String]) -> Deny {
        let mut challenge = format!("{}, error=\"insufficient_scope\"", self.www_authenticate);
        if !scopes.is_empty() {
            challenge.push_str(&format!(
                ", scope=\"{}\"",
                scopes.join(" ").replace('"', "")
            ));
        }
        let mut headers = json_headers();
        headers.push(("www-authenticate", challenge));
        Deny {
            status: 403,
            headers,
            body: json_body(
                403,
                "Forbidden",
                "insufficient_scope",
                "the access token lacks a scope this route requires",
                None,
            ),
            reason: Reason::InsufficientScope,
        }
    }

    /// The session is valid but a rule's requirement on it does not hold. The body names the
    /// reason only, never the session's values.
    pub fn forbidden(&self, reason: Reason) -> Deny {
        let message = match reason {
            Reason::NoRoute => "no route rule allows this request",
            _ => "this session does not meet the route's requirements",
        };
        Deny {
            status: 403,
            headers: json_headers(),
            body: json_body(403, "Forbidden", reason.as_str(), message, None),
            reason,
        }
    }

    /// The session authenticated longer ago than the route allows: log in again (Kratos'
    /// `refresh=true`), as a redirect for browsers and a 403 with `redirect_browser_to` for API
    /// clients.
    pub fn reauthenticate(&self, req: &Request) -> Deny {
        let target = self.with_return_to(
            &format!(
                "{}/self-service/login/browser?refresh=true",
                self.kratos_browser_url.trim_end_matches('/')
            ),
            req,
        );
        self.redirect_or_forbidden(
            req,
            target,
            "session_refresh_required",
            "this route requires a more recent login",
            Reason::ReauthenticationRequired,
        )
    }

    /// Kratos rate limited us.
    pub fn rate_limited(&self, retry_after: Option<&str>) -> Deny {
        let mut headers = json_headers();
        headers.push(("retry-after", retry_after.unwrap_or("1").to_owned()));
        Deny {
            status: 429,
            headers,
            body: json_body(
                429,
                "Too Many Requests",
                "rate_limited",
                "the session service is rate limiting",
                None,
            ),
            reason: Reason::RateLimited,
        }
    }

    /// Kratos unavailable, or our concurrency limit full.
    pub fn unavailable(&self, reason: Reason) -> Deny {
        let mut headers = json_headers();
        headers.push(("retry-after", "1".into()));
        Deny {
            status: 503,
            headers,
            body: json_body(
                503,
                "Service Unavailable",
                "session_service_unavailable",
                "the session could not be verified right now",
                None,
            ),
            reason,
        }
    }

    /// A request that cannot be evaluated.
    pub fn bad_request(&self, message: &str) -> Deny {
        Deny {
            status: 400,
            headers: json_headers(),
            body: json_body(400, "Bad Request", "bad_request", message, None),
            reason: Reason::BadRequest,
        }
    }

    /// Bad route settings or request: an operator problem, fail closed.
    pub fn internal(&self, reason: Reason, message: &str) -> Deny {
        Deny {
            status: 500,
            headers: json_headers(),
            body: json_body(500, "Internal Server Error", reason.as_str(), message, None),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Headers, RouteSettings};

    /// The typed serialiser writes exactly what the `serde_json::Value` tree it replaced wrote
    /// (same keys, order and escaping), so clients parsing the bodies see no change.
    #[test]
    fn json_bodies_are_byte_identical_to_the_value_tree() {
        let tricky = "quote \" backslash \\ newline \n tab \t nul \u{0} é ✓ </script>";
        for (status, text, id, message, redirect) in [
            (
                503,
                "Service Unavailable",
                "session_service_unavailable",
                "x",
                None,
            ),
            (401, "Unauthorized", tricky, tricky, None),
            (
                403,
                "Forbidden",
                "session_aal2_required",
                "step up",
                Some("https://a/b?c=\"d\""),
            ),
            (400, "Bad Request", "bad_request", "", Some(tricky)),
        ] {
            let mut body = serde_json::json!({ "error": {
                "code": status, "status": text, "id": id, "message": message,
            }});
            if let Some(r) = redirect {
                body["redirect_browser_to"] = serde_json::Value::from(r);
            }
            assert_eq!(
                json_body(status, text, id, message, redirect),
                body.to_string()
            );
        }
    }

    fn req(accept: Option<&str>) -> Request {
        let mut headers = Headers::default();
        if let Some(a) = accept {
            headers.append("accept", a);
        }
        Request {
            method: "GET".into(),
            scheme: "https".into(),
            host: "app.example.com".into(),
            path: "/orders?id=1&x=y".into(),
            headers,
            route: Ok(RouteSettings::default()),
            source: None,
        }
    }

    fn shaper() -> DenyShaper {
        DenyShaper {
            login_url: Some("https://login.example.com/ui/login?flow=x".into()),
            return_to_param: "return_to".into(),
            kratos_browser_url: "https://kratos.example.com/".into(),
            www_authenticate: "Bearer realm=\"sessiongate\"".into(),
        }
    }

    #[test]
    fn accept_negotiation() {
        assert!(prefers_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!prefers_html(Some("application/json")));
        assert!(!prefers_html(Some("application/json, text/html;q=0.5")));
        assert!(!prefers_html(Some("text/html;q=0")));
        assert!(!prefers_html(None));
        assert!(!prefers_html(Some(";;;,,q=abc")));
    }

    #[test]
    fn browser_gets_redirect_with_return_to() {
        let d = shaper().unauthenticated(&req(Some("text/html")), Reason::NoCredential);
        assert_eq!(d.status, 303);
        let loc = &d.headers.iter().find(|(k, _)| *k == "location").unwrap().1;
        assert_eq!(
            loc,
            "https://login.example.com/ui/login?flow=x&return_to=https%3A%2F%2Fapp.example.com%2Forders%3Fid%3D1%26x%3Dy"
        );
    }

    #[test]
    fn api_gets_json_401() {
        let d = shaper().unauthenticated(&req(Some("application/json")), Reason::InvalidSession);
        assert_eq!(d.status, 401);
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"]["code"], 401);
        assert!(d.headers.iter().any(|(k, _)| *k == "www-authenticate"));
    }

    #[test]
    fn step_up_uses_kratos_redirect_or_builds_one() {
        let d = shaper().step_up(
            &req(None),
            Some("https://kratos.example.com/self-service/login/browser?aal=aal2"),
        );
        assert_eq!(d.status, 403);
        assert!(d.body.contains("session_aal2_required"));
        let d = shaper().step_up(&req(Some("text/html")), None);
        assert_eq!(d.status, 303);
        let loc = &d.headers[0].1;
        assert!(
            loc.starts_with(
                "https://kratos.example.com/self-service/login/browser?aal=aal2&return_to=https%3A"
            ),
            "{loc}"
        );
    }

    #[test]
    fn hostile_host_gets_no_return_to() {
        let mut r = req(Some("text/html"));
        r.host = "evil\r\nx".into();
        let d = shaper().unauthenticated(&r, Reason::NoCredential);
        assert_eq!(d.headers[0].1, "https://login.example.com/ui/login?flow=x");
    }
}
