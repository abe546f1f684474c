//! Where the Redis connections go: one server (`redis.url`, plain text or `rediss://` TLS), or
//! the master a set of Sentinels names (`redis.sentinels` + `redis.master_name`), asked again on
//! every (re)connect so that both connections follow a failover. TLS is rustls, with the CA and
//! the optional client certificate from `redis.tls`.

use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates};

use crate::config::{RedisConfig, RedisTlsConfig};

/// One server, or a Sentinel-managed master.
pub(super) enum Target {
    /// `redis.url`: the client reconnects to the same address.
    Direct(redis::Client),
    /// `redis.sentinels`: the master is asked from the sentinels.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// Longest wait for the sentinels to name a master (they also check it with `ROLE`).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// TCP_NODELAY: small request/response and pub/sub frames must not wait for delayed ACKs.
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

impl Target {
    /// Builds the client(s) from the config: nothing connects yet. Errors name the field and
    /// never echo the URL (it may carry a password).
    pub(super) fn new(config: &RedisConfig) -> anyhow::Result<Target> {
        let certs = config.tls.as_ref().map(certificates).transpose()?;
        if let Some(url) = &config.url {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?
                .set_tcp_settings(tcp());
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            }
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
            return Ok(Target::Direct(client));
        }
        let nodes = config
            .sentinels
            .iter()
            .map(|s| sentinel_addr(s, config.tls.is_some()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let master = config.master_name.as_deref().ok_or_else(|| {
            anyhow::anyhow!("redis.master_name: must be set with redis.sentinels")
        })?;
        let mut b = SentinelClientBuilder::new(nodes, master, SentinelServerType::Master)
            .map_err(|e| anyhow::anyhow!("redis.sentinels: {e}"))?
            .set_client_to_redis_db(config.db)
            .set_client_to_redis_tcp_settings(tcp())
            .set_client_to_sentinel_tcp_settings(tcp());
        if let Some(u) = &config.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &config.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &config.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &config.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        if let Some(certs) = certs {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
        let client = b
            .build()
            .map_err(|e| anyhow::anyhow!("redis.sentinels: {e}"))?;
        Ok(Target::Sentinel(tokio::sync::Mutex::new(client)))
    }

    /// Is the master found through Sentinel (and may move)?
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }

    /// The client of a single server (`None` with Sentinel).
    pub(super) fn direct(&self) -> Option<&redis::Client> {
        match self {
            Target::Direct(client) => Some(client),
            Target::Sentinel(_) => None,
        }
    }

    /// A client for the current master: the configured server, or the master the sentinels
    /// name now (checked with `ROLE` by the `redis` crate).
    pub(super) async fn master(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                match tokio::time::timeout(RESOLVE_TIMEOUT, sentinel.async_get_client()).await {
                    Ok(found) => found,
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "timed out asking the sentinels for the master",
                    ))),
                }
            }
        }
    }
}

/// `host:port` of a sentinel (validated by the config).
fn sentinel_addr(s: &str, tls: bool) -> anyhow::Result<ConnectionAddr> {
    let (host, port) = s
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("redis.sentinels: {s:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

/// Reads `redis.tls` (PEM files) for the `redis` crate's rustls connector.
fn certificates(tls: &RedisTlsConfig) -> anyhow::Result<TlsCertificates> {
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{field}: {}: {e}", path.display()))
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read("redis.tls.ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls.cert_file", cert)?,
            client_key: read("redis.tls.key_file", key)?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("redis.tls: cert_file and key_file go together"),
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}
