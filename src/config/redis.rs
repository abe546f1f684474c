//! `redis:` — the optional shared tier for many replicas: one server (`url`) or a
//! Sentinel-managed master, in plain text or TLS; secrets redacted from `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::redacted;

/// Optional Redis for many replicas: one server (`url`) or a Sentinel-managed master
/// (`sentinels` + `master_name`), in plain text or TLS.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://…` for TLS (see `tls`). Unset (and
    /// no `sentinels`): off, the in-process cache alone.
    pub url: Option<String>,
    /// Sentinel addresses (`host:port`), instead of `url`: the master named `master_name` is
    /// asked from them on every (re)connect, so both connections follow a failover.
    pub sentinels: Vec<String>,
    /// With `sentinels`: the name of the monitored master (`sentinel monitor <name> …`).
    pub master_name: Option<String>,
    /// With `sentinels`: ACL user for the master and replicas (with `url`, put it in the URL).
    pub username: Option<String>,
    /// With `sentinels`: password for the master and replicas (with `url`, put it in the URL).
    pub password: Option<String>,
    /// With `sentinels`: database number on the master.
    pub db: i64,
    /// With `sentinels`: ACL user for the sentinels themselves (`sentinel sentinel-user`).
    pub sentinel_username: Option<String>,
    /// With `sentinels`: password for the sentinels themselves (`requirepass` on the sentinels).
    pub sentinel_password: Option<String>,
    /// TLS (rustls): with `url`, needs `rediss://`; with `sentinels`, set (even `tls: {}`) to
    /// use TLS to the sentinels and to the master. Unset with `rediss://`: the system roots.
    pub tls: Option<RedisTlsConfig>,
    /// Prefix of every key sessiongate writes.
    pub key_prefix: String,
    /// Pub/sub channel for invalidations.
    pub channel: String,
    /// Deadline of every Redis call; past it the lookup goes on without Redis.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// While the invalidation subscription is down, in-process entries are trusted this long at
    /// most (so revocations published meanwhile still take effect within this bound).
    #[serde(with = "humantime_serde")]
    pub degraded_ttl: Duration,
}

/// TLS to Redis (and to the sentinels).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    /// PEM CA bundle that signed the Redis server certificates, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers with `tls-auth-clients yes` (mTLS).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RedisConfig {
    /// Is Redis on (`url` or `sentinels`)?
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.sentinels.is_empty()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            sentinels: Vec::new(),
            master_name: None,
            username: None,
            password: None,
            db: 0,
            sentinel_username: None,
            sentinel_password: None,
            tls: None,
            key_prefix: "sessiongate:".into(),
            channel: "sessiongate:invalidations".into(),
            timeout: Duration::from_millis(50),
            degraded_ttl: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("db", &self.db)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &redacted(&self.sentinel_password))
            .field("tls", &self.tls)
            .field("key_prefix", &self.key_prefix)
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .field("degraded_ttl", &self.degraded_ttl)
            .finish()
    }
}
