//! The fake Kratos whoami upstream (`sessiongate_testkit::fake_kratos`, shared with the bench)
//! and a TCP switch to take an upstream down and up again under a client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Not every test binary uses every name.
#[allow(unused_imports)]
pub use sessiongate_testkit::fake_kratos::{Behaviour, FakeKratos, Received};

/// A TCP forwarder in front of an address that can be switched off (listener closed, so new
/// connections are refused, and every forwarded connection cut) and on again on the same port:
/// "Kratos is down", then "Kratos is back", even for a client with pooled keep-alive connections.
pub struct TcpSwitch {
    pub addr: SocketAddr,
    target: SocketAddr,
    tasks: Mutex<Option<tokio::task::JoinSet<()>>>,
}

impl TcpSwitch {
    /// Starts forwarding an ephemeral loopback port to `target`.
    pub async fn start(target: SocketAddr) -> TcpSwitch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = TcpSwitch {
            addr,
            target,
            tasks: Mutex::new(None),
        };
        s.serve(listener);
        s
    }

    /// Base URL for `whoami.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target;
        let mut set = tokio::task::JoinSet::new();
        let conns2 = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        set.spawn(async move {
            // Aborting this task drops the listener and, through `_guard`, every connection.
            let _guard = AbortOnDrop(conns2.clone());
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut conns = conns2.lock().unwrap();
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.tasks.lock().unwrap() = Some(set);
    }

    /// Closes the listener and cuts every forwarded connection.
    pub async fn down(&self) {
        let set = self.tasks.lock().unwrap().take();
        if let Some(mut set) = set {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }

    /// Listens on the same port again.
    pub async fn up(&self) {
        let mut last = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addr);
    }
}

struct AbortOnDrop(Arc<Mutex<tokio::task::JoinSet<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.abort_all();
        }
    }
}
