//! A real Ory Kratos (pinned in `scripts/kratos.sh`) for integration tests.
//!
//! `KratosHarness::start()` builds or reuses the cached kratos binary (`scripts/kratos.sh build`),
//! migrates a fresh SQLite file in a temp dir, serves it on two free loopback ports with
//! `tests/kratos/kratos.yml`, and kills it on drop. The helpers drive the real self-service flows
//! (API and browser) so tests get genuine session tokens and `ory_kratos_session` cookies.
//!
//! Include it from an integration test with `mod support;` + `pub mod kratos;` in
//! `support/mod.rs`, or standalone with `#[path = "support/kratos.rs"] mod kratos;`.
//! Dependencies: tokio, reqwest (no `json`/`cookies` features), serde_json, tempfile, aws-lc-rs,
//! anyhow.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::header::{ACCEPT, CONTENT_TYPE, COOKIE, HeaderMap, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Name of Kratos' session cookie (see `session.cookie.name` in tests/kratos/kratos.yml).
pub const SESSION_COOKIE: &str = "ory_kratos_session";

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;

/// How to present a session to `/sessions/whoami`.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// Value of the `ory_kratos_session` cookie (browser flows).
    Cookie(&'a str),
    /// `ory_st_...` session token (API flows), sent as `X-Session-Token`.
    Token(&'a str),
}

/// A running Kratos child process. Dropping it kills the process and removes its temp dir.
pub struct KratosHarness {
    // Field order matters: the child is dropped (killed) before the temp dir is removed.
    child: Child,
    public_url: String,
    admin_url: String,
    log_path: PathBuf,
    http: Client,
    dir: tempfile::TempDir,
}

impl Drop for KratosHarness {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Absolute path of the repository root (where `scripts/kratos.sh` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/kratos.sh build` and returns the binary path (its last stdout line).
pub async fn build_kratos() -> Result<PathBuf> {
    let script = repo_root().join("scripts/kratos.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("build")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{} build` failed ({}):\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            script.display(),
            out.status,
            tail(&stdout, 20),
            tail(&stderr, 60)
        );
    }
    let bin = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("`kratos.sh build` printed no binary path"))?;
    let bin = PathBuf::from(bin.trim());
    if !bin.is_file() {
        bail!(
            "`kratos.sh build` printed {}, which is not a file",
            bin.display()
        );
    }
    Ok(bin)
}

impl KratosHarness {
    /// Builds (or reuses) the kratos binary, then starts a fresh instance on free loopback ports.
    pub async fn start() -> Result<Self> {
        let bin = build_kratos().await?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_with(&bin).await {
                Ok(h) => return Ok(h),
                // Port races with other processes are the usual reason; retry on new ports.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap())
    }

    async fn start_with(bin: &Path) -> Result<Self> {
        let root = repo_root();
        let config = root.join("tests/kratos/kratos.yml");
        let schema = root.join("tests/kratos/identity.schema.json");
        let dir = tempfile::Builder::new()
            .prefix("kratos-harness-")
            .tempdir()?;
        let (public_port, admin_port) = (free_port()?, free_port()?);
        let public_url = format!("http://127.0.0.1:{public_port}");
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let dsn = format!(
            "sqlite://{}?_fk=true&mode=rwc&_busy_timeout=10000",
            dir.path().join("kratos.sqlite").display()
        );
        let schemas = json!([{ "id": "default", "url": format!("file://{}", schema.display()) }]);
        let envs: Vec<(&str, String)> = vec![
            ("DSN", dsn),
            ("SERVE_PUBLIC_HOST", "127.0.0.1".into()),
            ("SERVE_PUBLIC_PORT", public_port.to_string()),
            ("SERVE_PUBLIC_BASE_URL", format!("{public_url}/")),
            ("SERVE_ADMIN_HOST", "127.0.0.1".into()),
            ("SERVE_ADMIN_PORT", admin_port.to_string()),
            ("SERVE_ADMIN_BASE_URL", format!("{admin_url}/")),
            ("IDENTITY_SCHEMAS", schemas.to_string()),
            (
                "LOG_LEVEL",
                std::env::var("KRATOS_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            ),
        ];
        let log_path = dir.path().join("kratos.log");

        let migrate_log = std::fs::File::create(dir.path().join("migrate.log"))?;
        let status = Command::new(bin)
            .args(["migrate", "sql", "-e", "--yes", "--config"])
            .arg(&config)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(migrate_log.try_clone()?)
            .stderr(migrate_log)
            .status()
            .await
            .context("running kratos migrate")?;
        if !status.success() {
            let log = std::fs::read_to_string(dir.path().join("migrate.log")).unwrap_or_default();
            bail!("kratos migrate sql failed ({status}):\n{}", tail(&log, 30));
        }

        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .args(["serve", "--dev", "--sqa-opt-out", "--config"])
            .arg(&config)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning kratos serve")?;

        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut h = KratosHarness {
            child,
            public_url,
            admin_url,
            log_path,
            http,
            dir,
        };
        h.wait_ready().await?;
        Ok(h)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/admin/health/ready", self.admin_url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("kratos exited early ({status}):\n{}", self.log_tail(40));
            }
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "kratos not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Public API base URL, without trailing slash (e.g. `http://127.0.0.1:41234`).
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Admin API base URL, without trailing slash.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// `{public_url}/sessions/whoami`, the URL sessiongate should be pointed at.
    pub fn whoami_url(&self) -> String {
        format!("{}/sessions/whoami", self.public_url)
    }

    /// Path of the kratos serve log (stdout+stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Last `n` lines of the kratos log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log_path).unwrap_or_default(),
            n,
        )
    }

    /// The HTTP client the harness uses (no redirects, no proxy).
    pub fn http(&self) -> &Client {
        &self.http
    }

    // ----- flows ---------------------------------------------------------------------------

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
        let url = format!("{}/admin/sessions/{session_id}", self.admin_url);
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
            &format!("{}/admin/identities/{identity_id}", self.admin_url),
            &[],
        )
        .await
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

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
