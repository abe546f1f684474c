//! A real Ory Kratos (pinned in `scripts/kratos.sh`) for integration tests.
//!
//! `KratosHarness::start()` builds or reuses the cached kratos binary (`scripts/kratos.sh build`),
//! migrates a fresh SQLite file in a temp dir, serves it on two free loopback ports with
//! `tests/kratos/kratos.yml`, and kills and reaps it on drop. The self-service flows (API and
//! browser) are driven by `sessiongate_testkit::kratos::KratosClient`, which the harness derefs
//! to, so tests get genuine session tokens and `ory_kratos_session` cookies.
//!
//! Include it from an integration test with `mod support;` + `pub mod kratos;` in
//! `support/mod.rs`, or standalone with `#[path = "support/kratos.rs"] mod kratos;`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::process::{Child, Command};

// Not every test binary uses every name.
#[allow(unused_imports)]
pub use sessiongate_testkit::kratos::{
    Credential, KratosClient, SESSION_COOKIE, csrf_token, totp_code, totp_now,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;

/// A running Kratos child process. Dropping it kills and reaps the process, then removes its
/// temp dir.
pub struct KratosHarness {
    // Field order matters: the child is dropped (killed) before the temp dir is removed.
    child: Child,
    client: KratosClient,
    admin_url: String,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for KratosHarness {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // Reap it here (bounded): the test's runtime may be gone before tokio's orphan reaper
        // runs, and a test binary that outlives its tests must not keep a Kratos around.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Deref for KratosHarness {
    type Target = KratosClient;

    /// The flows (`register_api`, `browser_login`, `whoami`, ...) of this Kratos.
    fn deref(&self) -> &KratosClient {
        &self.client
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

        let client = KratosClient::new(&public_url, Some(&admin_url))?;
        let mut h = KratosHarness {
            child,
            client,
            admin_url,
            log_path,
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
            if let Ok(r) = self.client.http().get(&url).send().await
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

    /// Admin API base URL, without trailing slash.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
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
}

// ----- helpers ---------------------------------------------------------------------------------

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
