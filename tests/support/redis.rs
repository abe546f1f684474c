//! A real redis-server (Debian's package) on a loopback port, stoppable and restartable on the
//! same port; plain text, TLS (certificates from the test), or a replica; and a real
//! redis-sentinel watching a master. Dropping one stops (SIGKILL) and reaps its process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A redis-server we started.
pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// Extra arguments (replication).
    args: Vec<String>,
    /// TLS-only server (`--port 0 --tls-port`).
    tls: Option<ServerTls>,
    /// `requirepass` (and `masterauth` for a replica).
    password: Option<String>,
}

/// TLS files of a redis-server.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// `--tls-auth-clients yes`: clients need a certificate signed by `ca_file`.
    pub auth_clients: bool,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary() -> &'static str {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!(
        "redis-server is not installed: run scripts/test.sh (it installs Debian's redis-server) or apt-get install redis-server"
    );
}

/// SIGKILL by PID, then reap.
fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Redis {
    /// Starts redis-server on an ephemeral loopback port.
    pub async fn start() -> Redis {
        Redis::start_with(Vec::new(), None, None).await
    }

    /// Starts a TLS-only redis-server (no plain-text port).
    pub async fn start_tls(tls: ServerTls) -> Redis {
        Redis::start_with(Vec::new(), Some(tls), None).await
    }

    /// Starts a password-protected redis-server.
    pub async fn start_with_password(password: &str) -> Redis {
        Redis::start_with(Vec::new(), None, Some(password.into())).await
    }

    /// Starts a replica of `master` (with the master's password, if any).
    pub async fn start_replica_of(master: &Redis) -> Redis {
        let args = vec![
            "--replicaof".into(),
            master.addr.ip().to_string(),
            master.addr.port().to_string(),
        ];
        Redis::start_with(args, None, master.password.clone()).await
    }

    async fn start_with(
        args: Vec<String>,
        tls: Option<ServerTls>,
        password: Option<String>,
    ) -> Redis {
        let mut r = Redis {
            child: None,
            addr: free_port(),
            dir: tempfile::tempdir().unwrap(),
            args,
            tls,
            password,
        };
        r.restart().await;
        r
    }

    /// `redis://…` URL (`rediss://` for a TLS server), with the password.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}{}/0", self.addr)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `INFO replication` says the link to the master is up (a replica in sync).
    pub async fn replica_in_sync(&self) -> bool {
        query::<String>(&self.url(), redis::cmd("INFO").arg("replication"))
            .await
            .is_some_and(|info| info.contains("master_link_status:up"))
    }

    /// Kills the server (as a crash would: SIGKILL, no goodbye to clients).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// (Re)starts the server on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let port = self.addr.port().to_string();
        let mut cmd = Command::new(binary());
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args([
                    "--tls-auth-clients",
                    if tls.auth_clients { "yes" } else { "no" },
                ]),
        };
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        let child = cmd
            .args(&self.args)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let ready = match self.tls {
            None => wait_for_pong(self.addr).await,
            // No plain-text port to PING: its log says when it listens.
            Some(_) => wait_for_log(&self.dir.path().join("redis.log")).await,
        };
        assert!(ready, "redis-server did not start on {}", self.addr);
    }
}

/// Until a plain-text PING is answered (5 s at most): `+PONG`, or `-NOAUTH` from a server that
/// wants a password.
async fn wait_for_pong(addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if s.write_all(b"PING\r\n").await.is_ok() {
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).await.is_ok()
                    && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
                {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Until the log says the server accepts connections (5 s at most).
async fn wait_for_log(log: &Path) -> bool {
    for _ in 0..200 {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains("Ready to accept connections")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// One command on a plain-text server or sentinel (1 s deadline); `None` on any failure.
pub async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let work = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async::<T>(&mut conn).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(1), work)
        .await
        .ok()
        .flatten()
}

/// A redis-sentinel we started, monitoring one master (quorum 1, down after 1 s).
pub struct Sentinel {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// `requirepass` of the sentinel itself.
    password: Option<String>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl Sentinel {
    /// Starts a sentinel that monitors `master` as `name` (with the master's password), itself
    /// protected by `password` if given.
    pub async fn start(master: &Redis, name: &str, password: Option<&str>) -> Sentinel {
        let addr = free_port();
        let dir = tempfile::tempdir().unwrap();
        // Sentinel rewrites its config file: it must be writable and its own.
        let conf = dir.path().join("sentinel.conf");
        let mut text = format!(
            "bind 127.0.0.1\nport {port}\ndir {dir}\n\
             sentinel monitor {name} {ip} {mport} 1\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n",
            port = addr.port(),
            dir = dir.path().display(),
            ip = master.addr.ip(),
            mport = master.addr.port(),
        );
        if let Some(p) = &master.password {
            text.push_str(&format!("sentinel auth-pass {name} {p}\n"));
        }
        if let Some(p) = password {
            text.push_str(&format!("requirepass {p}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::create(dir.path().join("sentinel.log")).unwrap();
        let child = Command::new(binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel starts");
        let s = Sentinel {
            child: Some(child),
            addr,
            dir,
            password: password.map(str::to_owned),
        };
        assert!(
            wait_for_pong(addr).await,
            "sentinel did not start on {addr}"
        );
        s
    }

    fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{}", self.addr),
            None => format!("redis://{}", self.addr),
        }
    }

    /// The master's address as this sentinel sees it now.
    pub async fn master_addr(&self, name: &str) -> Option<SocketAddr> {
        let (ip, port) = query::<Option<(String, u16)>>(
            &self.url(),
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(name),
        )
        .await
        .flatten()?;
        format!("{ip}:{port}").parse().ok()
    }

    /// How many replicas of `name` this sentinel knows, up and linked to the master.
    pub async fn healthy_replicas(&self, name: &str) -> usize {
        query::<Vec<std::collections::HashMap<String, String>>>(
            &self.url(),
            redis::cmd("SENTINEL").arg("replicas").arg(name),
        )
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r.get("flags").is_some_and(|f| f == "slave")
                && r.get("master-link-status").is_some_and(|s| s == "ok")
        })
        .count()
    }
}
