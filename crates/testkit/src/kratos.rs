//! A driver of real Kratos' self-service flows (API and browser registration and login, TOTP
//! step-up, logout, admin session revocation) over plain HTTP, so callers get genuine session
//! tokens and `ory_kratos_session` cookies. Used by the tests' Kratos harness and by the bench's
//! session registrar.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::header::{ACCEPT, CONTENT_TYPE, COOKIE, HeaderMap, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// Name of Kratos' session cookie (see `session.cookie.name` in tests/kratos/kratos.yml).
pub const SESSION_COOKIE: &str = "ory_kratos_session";

/// How to present a session to `/sessions/whoami`.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// Value of the `ory_kratos_session` cookie (browser flows).
    Cookie(&'a str),
    /// `ory_st_...` session token (API flows), sent as `X-Session-Token`.
    Token(&'a str),
}

/// Drives the flows of one Kratos (public API, and the admin API when its URL is known).
#[derive(Debug, Clone)]
pub struct KratosClient {
    http: Client,
    public_url: String,
    admin_url: Option<String>,
}

impl KratosClient {
    /// A client for the Kratos at `public_url` (and `admin_url`, for the admin calls), with no
    /// redirects, no proxy and a 30 s timeout.
    pub fn new(public_url: &str, admin_url: Option<&str>) -> Result<KratosClient> {
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(KratosClient {
            http,
            public_url: public_url.trim_end_matches('/').to_owned(),
            admin_url: admin_url.map(|u| u.trim_end_matches('/').to_owned()),
        })
    }

    /// Public API base URL, without trailing slash (e.g. `http://127.0.0.1:41234`).
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Admin API base URL, without trailing slash, when known.
    pub fn admin_url(&self) -> Option<&str> {
        self.admin_url.as_deref()
    }

    fn admin(&self) -> Result<&str> {
        self.admin_url()
            .ok_or_else(|| anyhow!("this KratosClient has no admin URL"))
    }

    /// `{public_url}/sessions/whoami`, the URL sessiongate should be pointed at.
    pub fn whoami_url(&self) -> String {
        format!("{}/sessions/whoami", self.public_url)
    }

    /// The HTTP client used for the flows (no redirects, no proxy).
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// API registration with the password method. `traits` may omit `email`; it is set from
    /// `email`. Returns `(session_token, session_json)`.
    pub async fn register_api(
        &self,
        email: &str,
        password: &str,
        traits: Value,
    ) -> Result<(String, Value)> {
        let mut traits = if traits.is_null() { json!({}) } else { traits };
        traits
            .as_object_mut()
            .ok_or_else(|| anyhow!("traits must be a JSON object"))?
            .insert("email".into(), json!(email));
        let flow = self
            .get_json(
                &format!("{}/self-service/registration/api", self.public_url),
                &[],
            )
            .await?;
        let body = json!({ "method": "password", "password": password, "traits": traits });
        let (status, _, resp) = self.post_json(action(&flow)?, &body, &[]).await?;
        expect_status(status, StatusCode::OK, "registration", &resp)?;
        token_and_session(&resp)
    }

    /// API login with the password method (aal1). Returns `(session_token, session_json)`.
    pub async fn login_api(&self, email: &str, password: &str) -> Result<(String, Value)> {
        let flow = self
            .get_json(&format!("{}/self-service/login/api", self.public_url), &[])
            .await?;
        let body = json!({ "method": "password", "identifier": email, "password": password });
        let (status, _, resp) = self.post_json(action(&flow)?, &body, &[]).await?;
        expect_status(status, StatusCode::OK, "api login", &resp)?;
        token_and_session(&resp)
    }

    /// Browser login flow with the password method (csrf cookie + token, `Accept: application/json`).
    /// Returns the value of the `ory_kratos_session` cookie Kratos set (an aal1 session). For an
    /// identity with TOTP, Kratos answers 422 `browser_location_change_required` yet sets the
    /// (aal1) cookie; that is accepted too, and whoami then returns 403 `session_aal2_required`.
    pub async fn browser_login(&self, email: &str, password: &str) -> Result<String> {
        let mut jar = Jar::default();
        let url = format!("{}/self-service/login/browser", self.public_url);
        let (status, headers, flow) = self
            .request(Method::GET, &url, None, &jar.headers())
            .await?;
        expect_status(status, StatusCode::OK, "browser login flow", &flow)?;
        jar.absorb(&headers);
        let flow: Value = serde_json::from_str(&flow)?;
        let body = json!({
            "method": "password",
            "identifier": email,
            "password": password,
            "csrf_token": csrf_token(&flow)?,
        });
        let (status, headers, resp) = self
            .request(Method::POST, action(&flow)?, Some(&body), &jar.headers())
            .await?;
        // Once the identity has a second factor, Kratos answers 422 browser_location_change_required
        // (redirect to `?aal=aal2`) but still sets the aal1 session cookie.
        if status != StatusCode::OK && !resp.contains("browser_location_change_required") {
            expect_status(status, StatusCode::OK, "browser login", &resp)?;
        }
        jar.absorb(&headers);
        jar.get(SESSION_COOKIE)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("browser login set no {SESSION_COOKIE} cookie; body: {resp}"))
    }

    /// Browser login followed by the aal2 (TOTP) step-up in the same browser flow.
    /// Returns the final `ory_kratos_session` cookie value (an aal2 session).
    pub async fn browser_login_aal2(
        &self,
        email: &str,
        password: &str,
        totp_secret: &str,
    ) -> Result<String> {
        let aal1 = self.browser_login(email, password).await?;
        let mut jar = Jar::default();
        jar.set(SESSION_COOKIE, &aal1);
        let url = format!("{}/self-service/login/browser?aal=aal2", self.public_url);
        let (status, headers, flow) = self
            .request(Method::GET, &url, None, &jar.headers())
            .await?;
        expect_status(status, StatusCode::OK, "browser aal2 flow", &flow)?;
        jar.absorb(&headers);
        let flow: Value = serde_json::from_str(&flow)?;
        let body = json!({
            "method": "totp",
            "totp_code": totp_now(totp_secret)?,
            "csrf_token": csrf_token(&flow)?,
        });
        let (status, headers, resp) = self
            .request(Method::POST, action(&flow)?, Some(&body), &jar.headers())
            .await?;
        expect_status(status, StatusCode::OK, "browser aal2 login", &resp)?;
        jar.absorb(&headers);
        Ok(jar.get(SESSION_COOKIE).unwrap_or(&aal1).to_owned())
    }

    /// `GET /sessions/whoami` with a cookie or token; returns the raw `(status, body)`.
    pub async fn whoami(&self, cred: Credential<'_>) -> Result<(u16, String)> {
        let headers = match cred {
            Credential::Cookie(c) => vec![(COOKIE.as_str(), format!("{SESSION_COOKIE}={c}"))],
            Credential::Token(t) => vec![("x-session-token", t.to_owned())],
        };
        let (status, _, body) = self
            .request(Method::GET, &self.whoami_url(), None, &headers)
            .await?;
        Ok((status.as_u16(), body))
    }

    /// `DELETE /self-service/logout/api` with `{session_token}`; expects 204.
    pub async fn api_logout(&self, session_token: &str) -> Result<()> {
        let url = format!("{}/self-service/logout/api", self.public_url);
        let body = json!({ "session_token": session_token });
        let (status, _, resp) = self.request(Method::DELETE, &url, Some(&body), &[]).await?;
        expect_status(status, StatusCode::NO_CONTENT, "api logout", &resp)
    }

    /// `DELETE {admin}/admin/sessions/{id}` (revokes the session); expects 204.
    pub async fn admin_revoke_session(&self, session_id: &str) -> Result<()> {
        let url = format!("{}/admin/sessions/{session_id}", self.admin()?);
        let (status, _, resp) = self.request(Method::DELETE, &url, None, &[]).await?;
        expect_status(
            status,
            StatusCode::NO_CONTENT,
            "admin revoke session",
            &resp,
        )
    }

    /// `GET {admin}/admin/identities/{id}`; returns the identity JSON.
    pub async fn admin_get_identity(&self, identity_id: &str) -> Result<Value> {
        self.get_json(
            &format!("{}/admin/identities/{identity_id}", self.admin()?),
            &[],
        )
        .await
    }

    /// `PATCH {admin}/admin/identities/{id}` (JSON Patch): sets the identity's
    /// `metadata_public`, as operators do to grant roles. Returns the updated identity.
    pub async fn admin_set_metadata_public(
        &self,
        identity_id: &str,
        metadata: Value,
    ) -> Result<Value> {
        let url = format!("{}/admin/identities/{identity_id}", self.admin()?);
        let patch =
            serde_json::json!([{"op": "add", "path": "/metadata_public", "value": metadata}]);
        let (status, _, resp) = self.request(Method::PATCH, &url, Some(&patch), &[]).await?;
        expect_status(status, StatusCode::OK, "admin patch identity", &resp)?;
        Ok(serde_json::from_str(&resp)?)
    }

    /// Links TOTP to the identity of `session_token` via the settings API flow and returns the
    /// base32 TOTP secret. Kratos also raises that session to aal2; other aal1 sessions of the
    /// identity then get 403 `session_aal2_required` from whoami.
    pub async fn enable_totp(&self, session_token: &str) -> Result<String> {
        let auth = [("x-session-token", session_token.to_owned())];
        let flow = self
            .get_json(
                &format!("{}/self-service/settings/api", self.public_url),
                &auth,
            )
            .await?;
        let secret = node(&flow, |n| n["attributes"]["id"] == "totp_secret_key")
            .and_then(|n| n["attributes"]["text"]["text"].as_str())
            .ok_or_else(|| anyhow!("settings flow has no totp_secret_key node: {flow}"))?
            .to_owned();
        let mut body = json!({ "method": "totp", "totp_code": totp_now(&secret)? });
        if let Ok(csrf) = csrf_token(&flow)
            && !csrf.is_empty()
        {
            body["csrf_token"] = json!(csrf);
        }
        let (status, _, resp) = self.post_json(action(&flow)?, &body, &auth).await?;
        expect_status(status, StatusCode::OK, "settings (totp)", &resp)?;
        Ok(secret)
    }

    /// Raises an existing API session to aal2 with a TOTP code (`GET /self-service/login/api?aal=aal2`
    /// with `X-Session-Token`, then POST `{method: totp, totp_code}`). Returns the session JSON;
    /// the token itself stays the same.
    pub async fn upgrade_aal2(&self, session_token: &str, totp_secret: &str) -> Result<Value> {
        let auth = [("x-session-token", session_token.to_owned())];
        let flow = self
            .get_json(
                &format!("{}/self-service/login/api?aal=aal2", self.public_url),
                &auth,
            )
            .await?;
        let body = json!({ "method": "totp", "totp_code": totp_now(totp_secret)? });
        let (status, _, resp) = self.post_json(action(&flow)?, &body, &auth).await?;
        expect_status(status, StatusCode::OK, "aal2 login", &resp)?;
        Ok(token_and_session(&resp)?.1)
    }

    /// API password login + TOTP step-up. Returns `(session_token, session_json)` of an aal2 session.
    pub async fn login_aal2(
        &self,
        email: &str,
        password: &str,
        totp_secret: &str,
    ) -> Result<(String, Value)> {
        let (token, _) = self.login_api(email, password).await?;
        let session = self.upgrade_aal2(&token, totp_secret).await?;
        Ok((token, session))
    }

    // ----- http plumbing -------------------------------------------------------------------

    async fn get_json(&self, url: &str, headers: &[(&str, String)]) -> Result<Value> {
        let (status, _, body) = self.request(Method::GET, url, None, headers).await?;
        expect_status(status, StatusCode::OK, url, &body)?;
        serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
    }

    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, HeaderMap, Value)> {
        let (status, h, text) = self.request(Method::POST, url, Some(body), headers).await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, h, v))
    }

    /// One request with `Accept: application/json` and, if `body` is set, a JSON body.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, HeaderMap, String)> {
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(b)?);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok((status, headers, text))
    }
}

// ----- helpers ---------------------------------------------------------------------------------

/// Minimal cookie jar: name -> value from `set-cookie`, sent back as one `Cookie` header.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn absorb(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let pair = v.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                let expired = v.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
                self.0.retain(|(n, _)| n != name.trim());
                if !expired {
                    self.0
                        .push((name.trim().to_owned(), value.trim().to_owned()));
                }
            }
        }
    }
    fn set(&mut self, name: &str, value: &str) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), value.to_owned()));
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn headers(&self) -> Vec<(&'static str, String)> {
        if self.0.is_empty() {
            return vec![];
        }
        let c = self
            .0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        vec![("cookie", c)]
    }
}

fn expect_status(
    got: StatusCode,
    want: StatusCode,
    what: &str,
    body: impl std::fmt::Display,
) -> Result<()> {
    if got != want {
        bail!("{what}: expected HTTP {want}, got {got}: {body}");
    }
    Ok(())
}

fn action(flow: &Value) -> Result<&str> {
    flow["ui"]["action"]
        .as_str()
        .ok_or_else(|| anyhow!("flow has no ui.action: {flow}"))
}

fn node(flow: &Value, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    flow["ui"]["nodes"].as_array()?.iter().find(|n| pred(n))
}

/// The `csrf_token` input value of a self-service flow (empty for API flows).
pub fn csrf_token(flow: &Value) -> Result<String> {
    node(flow, |n| n["attributes"]["name"] == "csrf_token")
        .and_then(|n| n["attributes"]["value"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("flow has no csrf_token node: {flow}"))
}

fn token_and_session(resp: &Value) -> Result<(String, Value)> {
    let token = resp["session_token"]
        .as_str()
        .ok_or_else(|| anyhow!("response has no session_token: {resp}"))?
        .to_owned();
    Ok((token, resp["session"].clone()))
}

/// RFC 6238 TOTP (HMAC-SHA1, 30 s step, 6 digits) for a base32 secret at `unix_time`.
pub fn totp_code(secret_b32: &str, unix_time: u64) -> Result<String> {
    use aws_lc_rs::hmac;
    let key = base32_decode(secret_b32)?;
    let counter = (unix_time / 30).to_be_bytes();
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key),
        &counter,
    );
    let mac = tag.as_ref();
    let off = (mac[mac.len() - 1] & 0x0f) as usize;
    let bin =
        u32::from_be_bytes([mac[off], mac[off + 1], mac[off + 2], mac[off + 3]]) & 0x7fff_ffff;
    Ok(format!("{:06}", bin % 1_000_000))
}

/// TOTP code for the current time.
pub fn totp_now(secret_b32: &str) -> Result<String> {
    totp_code(
        secret_b32,
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )
}

fn base32_decode(s: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buf, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .ok_or_else(|| anyhow!("invalid base32 character {:?}", c as char))?
            as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
