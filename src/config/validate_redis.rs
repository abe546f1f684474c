//! Validation of `redis:` (URL or Sentinel, TLS files, timeouts), kept apart from the other
//! sections for its size.

use std::time::Duration;

use super::Config;
use super::validate::Report;

/// The optional Redis tier.
pub(super) fn redis(c: &Config, r: &mut Report) {
    let redis = &c.redis;
    if !redis.enabled() {
        redis_sentinel_only_fields(c, r);
        return;
    }
    if let Some(url) = &redis.url {
        // Never echo the URL: it may carry a password.
        let tls = url.starts_with("rediss://");
        if !(tls
            || url.starts_with("redis://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            r.add(
                "redis.url",
                "is not a redis:// or rediss:// URL".into(),
                "use redis://host:6379/0, rediss://host:6380/0 for TLS, or redis.sentinels for Sentinel (Redis Cluster is not supported)",
            );
        }
        if url.contains('#') {
            r.add(
                "redis.url",
                "has a #fragment (e.g. #insecure): certificate checks cannot be turned off".into(),
                "remove it; for a private CA set redis.tls.ca_file",
            );
        }
        if redis.tls.is_some() && !tls {
            r.add(
                "redis.tls",
                "is set but redis.url is not a rediss:// URL".into(),
                "use rediss://host:port/db for TLS, or remove redis.tls",
            );
        }
        if !redis.sentinels.is_empty() {
            r.add(
                "redis.sentinels",
                "is set together with redis.url".into(),
                "use one: redis.url for one server, or redis.sentinels and redis.master_name for Sentinel",
            );
        } else {
            redis_sentinel_only_fields(c, r);
        }
    } else {
        for (i, s) in redis.sentinels.iter().enumerate() {
            if !is_host_port(s) {
                r.add(
                    &format!("redis.sentinels[{i}]"),
                    format!("{s:?} is not host:port"),
                    "list the sentinels as host:port, e.g. redis-sentinel-0.redis:26379",
                );
            }
        }
        if redis.master_name.as_deref().is_none_or(str::is_empty) {
            r.add(
                "redis.master_name",
                "must be set with redis.sentinels".into(),
                "use the name of the master the sentinels monitor (sentinel monitor <name> …), e.g. mymaster",
            );
        }
        if redis.db < 0 {
            r.add(
                "redis.db",
                format!("{} is not a database number", redis.db),
                "use 0 (the default) or another database number",
            );
        }
    }
    if let Some(tls) = &redis.tls {
        pem_files(
            &[
                ("redis.tls.ca_file", tls.ca_file.as_ref()),
                ("redis.tls.cert_file", tls.cert_file.as_ref()),
                ("redis.tls.key_file", tls.key_file.as_ref()),
            ],
            r,
        );
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => r.add(
                "redis.tls.key_file",
                "must be set with redis.tls.cert_file".into(),
                "give the client certificate's private key (PEM), or remove cert_file",
            ),
            (None, Some(_)) => r.add(
                "redis.tls.cert_file",
                "must be set with redis.tls.key_file".into(),
                "give the client certificate (PEM), or remove key_file",
            ),
            _ => {}
        }
    }
    if c.cache.key_secret.is_none() {
        r.add(
            "cache.key_secret",
            "must be set when Redis is on (redis.url or redis.sentinels)".into(),
            "give every replica the same random secret (32+ characters) so they compute the same keys",
        );
    }
    if redis.timeout.is_zero() || redis.timeout > Duration::from_secs(1) {
        r.add(
            "redis.timeout",
            format!("{:?} is out of range", redis.timeout),
            "use between 1ms and 1s (default 50ms): Redis must never slow a check down much",
        );
    }
    if redis.degraded_ttl.is_zero() || redis.degraded_ttl > c.cache.ttl {
        r.add(
            "redis.degraded_ttl",
            "must be greater than zero and at most cache.ttl".into(),
            "use a few seconds (default 5s)",
        );
    }
}

/// Fields that only mean something with `redis.sentinels`, set without it.
fn redis_sentinel_only_fields(c: &Config, r: &mut Report) {
    let redis = &c.redis;
    for (field, set) in [
        ("redis.master_name", redis.master_name.is_some()),
        ("redis.username", redis.username.is_some()),
        ("redis.password", redis.password.is_some()),
        ("redis.db", redis.db != 0),
        ("redis.sentinel_username", redis.sentinel_username.is_some()),
        ("redis.sentinel_password", redis.sentinel_password.is_some()),
    ] {
        if set {
            r.add(
                field,
                "only applies with redis.sentinels".into(),
                "with redis.url put the user, password and database in the URL (redis://user:password@host:6379/0)",
            );
        }
    }
    if redis.tls.is_some() && redis.url.is_none() {
        r.add(
            "redis.tls",
            "is set but Redis is off".into(),
            "set redis.url (rediss://…) or redis.sentinels, or remove redis.tls",
        );
    }
}

/// Each set path must be a file (TLS certificates and keys).
pub(super) fn pem_files(files: &[(&str, Option<&std::path::PathBuf>)], r: &mut Report) {
    for (field, path) in files {
        if let Some(path) = path
            && !path.is_file()
        {
            r.add(
                field,
                format!("{} is not a readable file", path.display()),
                "point it at a PEM file (e.g. a mounted kubernetes.io/tls Secret)",
            );
        }
    }
}

/// `host:port` (a name or an IP, `[v6]:port` too) with a non-zero port.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = host.parse::<std::net::Ipv6Addr>().is_ok()
        || (!host.is_empty() && !host.contains(['/', '@', ' ', ':']));
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}
