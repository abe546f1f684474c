//! The `kratos-sessions` tool: registers identities on a real Kratos (API registration, then a
//! browser login, through the shared flow driver `sessiongate_testkit::kratos`) and writes one
//! `ory_kratos_session` cookie value per line.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::json;
use sessiongate_testkit::kratos::KratosClient;

const PASSWORD: &str = "bench-password-123";

/// One new identity's browser session cookie.
async fn one_identity(kratos: &KratosClient, i: usize, tag: &str) -> Result<String> {
    let email = format!("bench-{tag}-{i}@example.com");
    let traits = json!({"name": {"first": "Bench", "last": format!("U{i}")}});
    kratos.register_api(&email, PASSWORD, traits).await?;
    kratos.browser_login(&email, PASSWORD).await
}

/// Registers `count` identities, `parallel` at a time, and writes their cookies to `out`
/// (default stdout).
pub async fn kratos_sessions(
    public: String,
    count: usize,
    out: Option<PathBuf>,
    parallel: usize,
) -> Result<()> {
    let kratos = KratosClient::new(&public, None)?;
    let tag = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_millis()
    );
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (kratos, tag, sem) = (kratos.clone(), tag.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            // SQLite-backed Kratos may answer 500 under concurrent writes: retry a few times.
            let mut attempt = 0;
            loop {
                match one_identity(&kratos, i, &format!("{tag}r{attempt}")).await {
                    Ok(c) => break Ok::<_, anyhow::Error>(c),
                    Err(e) if attempt >= 4 => break Err(e),
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                }
            }
        }));
    }
    let mut cookies = Vec::with_capacity(count);
    for t in tasks {
        cookies.push(t.await??);
    }
    let text = cookies.join("\n") + "\n";
    match out {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    eprintln!("registered {count} identities on {}", kratos.public_url());
    Ok(())
}
