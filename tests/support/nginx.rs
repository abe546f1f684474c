//! A real nginx (Debian's package) started on loopback with a generated config that includes
//! the shipped snippets in `nginx/`, in front of an echo upstream that reports the headers it
//! received. It runs as one process (`master_process off`), which dropping it kills and reaps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::any;

/// Starts an upstream that answers every request with the headers it received, as JSON.
pub async fn echo_upstream() -> SocketAddr {
    async fn echo(headers: HeaderMap) -> String {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in &headers {
            map.entry(k.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        serde_json::to_string(&map).unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(any(echo))).await;
    });
    addr
}

/// A running nginx: a single process, no master/worker pair (see `config`).
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The only nginx process (`master_process off`): once reaped, nothing of it is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    for p in [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "nginx is not installed: run scripts/test.sh (it installs Debian's nginx-light) or apt-get install nginx-light"
    );
}

/// The documented sessiongate snippet, instantiated: `auth_request` to sessiongate's `/check`,
/// the token and identity headers copied upstream, browsers redirected via `error_page 401`.
///
/// `master_process off`: nginx serves from the process we spawned, with no workers. With a
/// master, killing it (the only pid we hold) orphaned its workers, which kept running after the
/// tests; a single process has nothing to orphan, and its shutdown needs no timing.
pub fn config(
    listen: SocketAddr,
    gate_http: SocketAddr,
    upstream: SocketAddr,
    dir: &std::path::Path,
) -> String {
    let d = dir.display();
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        r#"
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream sessiongate {{ server {gate_http}; keepalive 16; }}
    upstream app {{ server {upstream}; }}

    server {{
        listen {listen};

        # The shipped snippets, included as a user would.
        include {root}/nginx/sessiongate-server.conf;

        location /public/ {{
            include {root}/nginx/sessiongate-anonymous.conf;
            proxy_pass http://app;
        }}

        location / {{
            include {root}/nginx/sessiongate-protect.conf;
            proxy_pass http://app;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts nginx with the sessiongate snippet on an ephemeral loopback port.
    pub async fn start(gate_http: SocketAddr, upstream: SocketAddr) -> Nginx {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        let listen = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(listen, gate_http, upstream, dir.path())).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nginx starts");
        let nginx = Nginx {
            child,
            addr: listen,
            dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let err = std::fs::read_to_string(nginx.dir.path().join("stderr.log")).unwrap_or_default();
        let log = std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start: {err}\n{log}");
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
