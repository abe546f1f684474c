//! A real Ory Hydra v2.3.0 (pinned in `scripts/hydra.sh`) for OAuth2 integration tests.
//!
//! `HydraHarness::start()` builds or reuses the cached hydra binary (`scripts/hydra.sh build`),
//! serves an in-memory instance (`DSN=memory`) on two free loopback ports with
//! `tests/hydra/hydra.yml`, waits for `/health/ready` and for its signing keys (generated on the
//! first JWKS request), and kills and reaps it on drop (or on
//! [`HydraHarness::kill`]). Helpers drive the admin and public APIs: OAuth2 clients with either
//! access-token strategy (per-client `access_token_strategy`), client_credentials tokens,
//! introspection, revocation, JWKS, per-client token lifespans and signing-key rotation.
//!
//! Include it with `#[path = "support/hydra.rs"] mod hydra;`.
//! Dependencies: tokio, reqwest (no `json`/`form` features), serde_json, percent-encoding,
//! tempfile, anyhow.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;
/// Hydra's key set for JWT access tokens.
pub const ACCESS_TOKEN_KEY_SET: &str = "hydra.jwt.access-token";

/// Which kind of access token a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `ory_at_<a>.<b>`, checked by introspection.
    Opaque,
    /// A JWT signed with a key of [`ACCESS_TOKEN_KEY_SET`].
    Jwt,
}

/// An OAuth2 client registered at Hydra.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// `client_id`.
    pub id: String,
    /// `client_secret`.
    pub secret: String,
}

/// A running Hydra child process. Dropping it kills and reaps the process, then removes its
/// temp dir (the log).
pub struct HydraHarness {
    child: Option<Child>,
    public_url: String,
    admin_url: String,
    log_path: PathBuf,
    http: Client,
    dir: tempfile::TempDir,
}

impl Drop for HydraHarness {
    fn drop(&mut self) {
        self.kill();
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/hydra.sh build` and returns the binary path (its last stdout line).
pub fn build_hydra() -> Result<PathBuf> {
    let script = repo_root().join("scripts/hydra.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("build")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{} build` failed ({}):\n{}\n{}",
            script.display(),
            out.status,
            tail(&stdout, 20),
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        );
    }
    let bin = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("`hydra.sh build` printed no binary path"))?;
    let bin = PathBuf::from(bin.trim());
    if !bin.is_file() {
        bail!("`hydra.sh build` printed {}, not a file", bin.display());
    }
    Ok(bin)
}

impl HydraHarness {
    /// Builds (or reuses) the hydra binary, then starts a fresh instance on free loopback ports.
    pub async fn start() -> Result<Self> {
        let bin = tokio::task::spawn_blocking(build_hydra).await??;
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
        let config = repo_root().join("tests/hydra/hydra.yml");
        let dir = tempfile::Builder::new()
            .prefix("hydra-harness-")
            .tempdir()?;
        let (public_port, admin_port) = (free_port()?, free_port()?);
        let public_url = format!("http://127.0.0.1:{public_port}");
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let log_path = dir.path().join("hydra.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .args(["serve", "all", "--dev", "--sqa-opt-out", "--config"])
            .arg(&config)
            .env("DSN", "memory")
            .env("SERVE_PUBLIC_HOST", "127.0.0.1")
            .env("SERVE_PUBLIC_PORT", public_port.to_string())
            .env("SERVE_ADMIN_HOST", "127.0.0.1")
            .env("SERVE_ADMIN_PORT", admin_port.to_string())
            .env("URLS_SELF_ISSUER", format!("{public_url}/"))
            .env(
                "LOG_LEVEL",
                std::env::var("HYDRA_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning hydra serve all")?;
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut h = HydraHarness {
            child: Some(child),
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
        let urls = [
            format!("{}/health/ready", self.admin_url),
            format!("{}/health/ready", self.public_url),
        ];
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("hydra exited early ({status}):\n{}", self.log_tail(40));
            }
            let mut ready = true;
            for url in &urls {
                ready &=
                    matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success());
            }
            if ready {
                // Hydra generates its RSA-4096 signing keys on the first JWKS request (about
                // 2 s, more on a busy machine): do it here, not inside a test's deadline.
                self.jwks().await.context("warming up Hydra's key sets")?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "hydra not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and reaps it (idempotent): Hydra is down from here on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Public API base URL, no trailing slash.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Admin API base URL, no trailing slash.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// `iss` of Hydra's tokens (`urls.self.issuer`, with its trailing slash).
    pub fn issuer(&self) -> String {
        format!("{}/", self.public_url)
    }

    /// The public JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.public_url)
    }

    /// The RFC 7662 endpoint (admin port, no client authentication).
    pub fn introspection_url(&self) -> String {
        format!("{}/admin/oauth2/introspect", self.admin_url)
    }

    /// Last `n` lines of the hydra log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log_path).unwrap_or_default(),
            n,
        )
    }

    /// The HTTP client the harness uses.
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// Registers a client_credentials client with `scope` (space-separated) and `audience`.
    pub async fn create_client(
        &self,
        id: &str,
        strategy: Strategy,
        scope: &str,
        audience: &[&str],
    ) -> Result<OAuthClient> {
        let secret = format!("secret-{id}-{}", std::process::id());
        let body = json!({
            "client_id": id,
            "client_secret": secret,
            "grant_types": ["client_credentials"],
            "scope": scope,
            "audience": audience,
            "token_endpoint_auth_method": "client_secret_basic",
            "access_token_strategy": match strategy { Strategy::Opaque => "opaque", Strategy::Jwt => "jwt" },
        });
        let url = format!("{}/admin/clients", self.admin_url);
        let v = self
            .send_json(self.http.post(&url), &body, StatusCode::CREATED)
            .await?;
        Ok(OAuthClient {
            id: v["client_id"].as_str().unwrap_or(id).to_owned(),
            secret,
        })
    }

    /// Sets the client's client_credentials access-token lifespan (e.g. `"2s"`).
    pub async fn set_token_lifespan(&self, client: &OAuthClient, lifespan: &str) -> Result<()> {
        let url = format!("{}/admin/clients/{}/lifespans", self.admin_url, client.id);
        let body = json!({ "client_credentials_grant_access_token_lifespan": lifespan });
        self.send_json(self.http.put(&url), &body, StatusCode::OK)
            .await?;
        Ok(())
    }

    /// A client_credentials access token for `scope` and `audience`.
    pub async fn token(
        &self,
        client: &OAuthClient,
        scope: &str,
        audience: &[&str],
    ) -> Result<String> {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        form.extend(audience.iter().map(|a| ("audience", *a)));
        let url = format!("{}/oauth2/token", self.public_url);
        let resp = self
            .http
            .post(&url)
            .basic_auth(&client.id, Some(&client.secret))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&form))
            .send()
            .await?;
        let v = expect_json(resp, StatusCode::OK, "token").await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no access_token in {v}"))
    }

    /// Hydra's own introspection answer for `token`.
    pub async fn introspect(&self, token: &str) -> Result<Value> {
        let resp = self
            .http
            .post(self.introspection_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&[("token", token)]))
            .send()
            .await?;
        expect_json(resp, StatusCode::OK, "introspect").await
    }

    /// Revokes `token` (RFC 7009, authenticated as `client`).
    pub async fn revoke(&self, client: &OAuthClient, token: &str) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/oauth2/revoke", self.public_url))
            .basic_auth(&client.id, Some(&client.secret))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&[("token", token)]))
            .send()
            .await?;
        if resp.status() != StatusCode::OK {
            bail!(
                "revoke: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The public JWKS document.
    pub async fn jwks(&self) -> Result<Value> {
        let resp = self.http.get(self.jwks_url()).send().await?;
        expect_json(resp, StatusCode::OK, "jwks").await
    }

    /// Adds a key `kid` (`alg`, e.g. `ES256`) to the access-token key set: Hydra signs new JWT
    /// access tokens with the newest key, so later tokens carry this `kid`.
    pub async fn rotate_access_token_key(&self, kid: &str, alg: &str) -> Result<()> {
        let url = format!("{}/admin/keys/{ACCESS_TOKEN_KEY_SET}", self.admin_url);
        let body = json!({ "alg": alg, "use": "sig", "kid": kid });
        self.send_json(self.http.post(&url), &body, StatusCode::CREATED)
            .await?;
        Ok(())
    }

    async fn send_json(
        &self,
        req: reqwest::RequestBuilder,
        body: &Value,
        want: StatusCode,
    ) -> Result<Value> {
        let resp = req
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        expect_json(resp, want, "admin call").await
    }
}

async fn expect_json(resp: reqwest::Response, want: StatusCode, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await?;
    if status != want {
        bail!("{what}: expected HTTP {want}, got {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: not JSON: {text}"))
}

/// `application/x-www-form-urlencoded` body.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
