//! Semantic validation: what types cannot check (URLs, ranges, header names, pointers, files),
//! one function per config section, each problem naming the field and the fix.

use std::time::Duration;

use super::Config;
use super::load::{ConfigError, Problem};
use super::validate_redis::{pem_files, redis};

/// Collects problems in field order.
#[derive(Default)]
pub(super) struct Report {
    problems: Vec<Problem>,
}

impl Report {
    pub(super) fn add(&mut self, field: &str, message: String, fix: &str) {
        self.problems.push(Problem {
            field: field.into(),
            message,
            fix: fix.into(),
        });
    }
}

impl Config {
    /// Checks what types cannot: URLs, ranges, header names, pointers, files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every semantic problem, in field order.
    pub fn problems(&self) -> Vec<Problem> {
        let mut r = Report::default();
        for section in [
            listeners as fn(&Config, &mut Report),
            whoami,
            credentials,
            cache,
            redis,
            forward_auth,
            logout,
            admin,
            jwt,
            upstream,
            deny,
            telemetry,
            shutdown,
            oauth2,
        ] {
            section(self, &mut r);
        }
        r.problems
    }
}

/// Listener addresses and gRPC limits and TLS.
fn listeners(c: &Config, r: &mut Report) {
    if c.grpc.listen == c.http.listen && c.grpc.listen.port() != 0 {
        r.add(
            "http.listen",
            format!("same address as grpc.listen ({})", c.grpc.listen),
            "give the gRPC and HTTP listeners different ports",
        );
    }
    if c.grpc.max_request_bytes < 4096 {
        r.add(
            "grpc.max_request_bytes",
            format!(
                "{} is too small for a CheckRequest",
                c.grpc.max_request_bytes
            ),
            "use at least 4096 (default 1048576)",
        );
    }
    if let Some(tls) = &c.grpc.tls {
        pem_files(
            &[
                ("grpc.tls.cert_file", Some(&tls.cert_file)),
                ("grpc.tls.key_file", Some(&tls.key_file)),
                ("grpc.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ],
            r,
        );
        if tls.client_auth_optional && tls.client_ca_file.is_none() {
            r.add(
                "grpc.tls.client_auth_optional",
                "has no effect without grpc.tls.client_ca_file".into(),
                "set client_ca_file for mTLS, or remove client_auth_optional",
            );
        }
    }
}

/// How Kratos is called.
fn whoami(c: &Config, r: &mut Report) {
    check_url(&c.whoami.base_url, "whoami.base_url", r);
    if c.whoami.timeout.is_zero() {
        r.add(
            "whoami.timeout",
            "must be greater than zero".into(),
            "set e.g. 150ms, below Envoy's ext_authz timeout (200ms by default)",
        );
    } else if c.whoami.timeout >= Duration::from_secs(30) {
        r.add(
            "whoami.timeout",
            format!("{:?} is longer than any proxy will wait", c.whoami.timeout),
            "set e.g. 150ms, below Envoy's ext_authz timeout",
        );
    }
    if c.whoami.connect_timeout.is_zero() {
        r.add(
            "whoami.connect_timeout",
            "must be greater than zero".into(),
            "set e.g. 100ms",
        );
    }
    if c.whoami.max_concurrency == 0 {
        r.add(
            "whoami.max_concurrency",
            "must be at least 1".into(),
            "set e.g. 256",
        );
    } else if let Some(n) = c.whoami.known_reserve
        && n >= c.whoami.max_concurrency
    {
        r.add(
            "whoami.known_reserve",
            format!(
                "{n} leaves no whoami slot for first lookups (max_concurrency is {})",
                c.whoami.max_concurrency
            ),
            "use fewer slots than whoami.max_concurrency, or unset it (a quarter of the slots)",
        );
    }
    if c.whoami.max_waiting == 0 {
        r.add(
            "whoami.max_waiting",
            "must be at least 1".into(),
            "set e.g. 4096 (lookups waiting for a whoami slot)",
        );
    }
    if c.whoami.queue_timeout >= Duration::from_secs(5) {
        r.add(
            "whoami.queue_timeout",
            format!(
                "{:?} is longer than any proxy will wait",
                c.whoami.queue_timeout
            ),
            "set e.g. 120ms: the wait plus Kratos' usual latency should fit Envoy's 200ms",
        );
    }
    if c.whoami.max_body_bytes < 1024 {
        r.add(
            "whoami.max_body_bytes",
            format!("{} bytes cannot hold a session", c.whoami.max_body_bytes),
            "use at least 1024 (default 1048576)",
        );
    }
}

/// Where credentials are looked for.
fn credentials(c: &Config, r: &mut Report) {
    if c.credentials.cookie_names.is_empty()
        && c.credentials.cookie_prefixes.is_empty()
        && !c.credentials.session_token_header
        && !c.credentials.bearer
    {
        r.add(
            "credentials",
            "every credential source is switched off".into(),
            "enable at least one of cookie_names, cookie_prefixes, session_token_header, bearer",
        );
    }
    for (i, name) in c.credentials.cookie_names.iter().enumerate() {
        if !is_cookie_name(name) {
            r.add(
                &format!("credentials.cookie_names[{i}]"),
                format!("{name:?} is not a valid cookie name"),
                "use RFC 6265 token characters only, e.g. ory_kratos_session",
            );
        }
    }
    for (i, name) in c.credentials.cookie_prefixes.iter().enumerate() {
        if !is_cookie_name(name) {
            r.add(
                &format!("credentials.cookie_prefixes[{i}]"),
                format!("{name:?} is not a valid cookie name prefix"),
                "use RFC 6265 token characters only, e.g. ory_session_",
            );
        }
    }
    if c.credentials.max_length < 16 || c.credentials.max_length > 64 * 1024 {
        r.add(
            "credentials.max_length",
            format!("{} is out of range", c.credentials.max_length),
            "use a value between 16 and 65536 (default 4096)",
        );
    }
}

/// The session cache and its key secret.
fn cache(c: &Config, r: &mut Report) {
    if c.cache.ttl.is_zero() {
        r.add(
            "cache.ttl",
            "must be greater than zero".into(),
            "set e.g. 60s; lower means faster revocation and more whoami calls",
        );
    }
    if c.cache.negative_ttl > c.cache.ttl {
        r.add(
            "cache.negative_ttl",
            "is longer than cache.ttl".into(),
            "keep it short (default 5s) so that a user who just logged in is not denied",
        );
    }
    if c.cache.stale_while_overloaded > Duration::from_secs(600) {
        r.add(
            "cache.stale_while_overloaded",
            format!(
                "{:?} would keep serving sessions long after a revocation",
                c.cache.stale_while_overloaded
            ),
            "use at most 10m (default 30s), or 0s to turn it off",
        );
    }
    if c.cache.refresh_after > c.cache.ttl {
        r.add(
            "cache.refresh_after",
            "is longer than cache.ttl, so entries are never refreshed ahead".into(),
            "set it below cache.ttl (e.g. 75% of it), or equal to turn refresh-ahead off",
        );
    }
    if c.cache.stale_if_error > Duration::from_secs(3600) {
        r.add(
            "cache.stale_if_error",
            format!(
                "{:?} would keep serving sessions an hour after Kratos stopped answering",
                c.cache.stale_if_error
            ),
            "keep it short (e.g. 30s) or 0s to turn it off",
        );
    }
    if c.cache.max_bytes < 64 * 1024 {
        r.add(
            "cache.max_bytes",
            format!("{} bytes holds almost nothing", c.cache.max_bytes),
            "use at least 65536; about 1.5 KiB per cached session (default 268435456)",
        );
    }
    if let Some(secret) = &c.cache.key_secret
        && secret.len() < 32
    {
        r.add(
            "cache.key_secret",
            "is shorter than 32 bytes".into(),
            "use a random secret of at least 32 characters, e.g. `openssl rand -base64 48`",
        );
    }
}

/// The forward-auth endpoint.
fn forward_auth(c: &Config, r: &mut Report) {
    if !c.forward_auth.path.starts_with('/')
        || c.forward_auth.path.len() < 2
        || c.forward_auth.path.ends_with('/')
    {
        r.add(
            "forward_auth.path",
            format!("{:?} is not a path like /check", c.forward_auth.path),
            "use an absolute path without a trailing slash, e.g. /check",
        );
    }
    if let Some(l) = c.forward_auth.listen
        && (l == c.grpc.listen || l == c.http.listen)
        && l.port() != 0
    {
        r.add(
            "forward_auth.listen",
            format!("{l} is already used by another listener"),
            "pick another port, or leave it unset to serve /check on the HTTP side port",
        );
    }
}

/// Logout awareness patterns.
fn logout(c: &Config, r: &mut Report) {
    for (i, pat) in c.logout.patterns.iter().enumerate() {
        if !pat.path.starts_with('/') {
            r.add(
                &format!("logout.patterns[{i}].path"),
                format!("{:?} is not an absolute path", pat.path),
                "start it with /, e.g. /self-service/logout",
            );
        }
        if pat.method.is_empty()
            || !pat
                .method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'*')
        {
            r.add(
                &format!("logout.patterns[{i}].method"),
                format!("{:?} is not an upper-case HTTP method", pat.method),
                "use GET, DELETE, POST … or *",
            );
        }
    }
}

/// The admin API token.
fn admin(c: &Config, r: &mut Report) {
    if let Some(t) = &c.admin.token {
        check_admin_token(t, "admin.token", r);
    }
    if c.admin.token.is_some() && c.admin.token_file.is_some() {
        r.add(
            "admin.token_file",
            "both admin.token and admin.token_file are set".into(),
            "set only one of them",
        );
    }
    if let Some(path) = &c.admin.token_file {
        match super::read_token_file(path) {
            Ok(t) => check_admin_token(&t, "admin.token_file", r),
            Err(_) => r.add(
                "admin.token_file",
                format!("{} is not a readable file", path.display()),
                "point it at a file holding the admin token",
            ),
        }
    }
}

/// The same rule for `admin.token` and the content of `admin.token_file`: a file's one final
/// newline is not part of the token; nothing else is trimmed.
fn check_admin_token(token: &str, field: &str, r: &mut Report) {
    if token.len() < 16 {
        r.add(
            field,
            "is shorter than 16 characters".into(),
            "use a random token of at least 32 characters, e.g. `openssl rand -hex 32`",
        );
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        r.add(
            field,
            "contains whitespace or control characters".into(),
            "use printable characters only, e.g. `openssl rand -hex 32` (one final newline in a file is fine)",
        );
    }
}

/// The minted JWT.
fn jwt(c: &Config, r: &mut Report) {
    if c.jwt.issuer.is_empty() {
        r.add(
            "jwt.issuer",
            "must not be empty".into(),
            "set the URL upstream services expect in `iss`",
        );
    }
    if c.jwt.ttl < Duration::from_secs(10) || c.jwt.ttl > Duration::from_secs(24 * 3600) {
        r.add(
            "jwt.ttl",
            format!("{:?} is out of range", c.jwt.ttl),
            "use between 10s and 24h (default 5m)",
        );
    }
    if c.jwt.jwks_file.is_some() && c.jwt.pem_file.is_some() {
        r.add(
            "jwt.pem_file",
            "both jwt.jwks_file and jwt.pem_file are set".into(),
            "set only one of them",
        );
    }
    for (field, path) in [
        ("jwt.jwks_file", &c.jwt.jwks_file),
        ("jwt.pem_file", &c.jwt.pem_file),
    ] {
        if let Some(path) = path
            && !path.is_file()
        {
            r.add(
                field,
                format!("{} is not a readable file", path.display()),
                "point it at a private key file; `sessiongate keys generate` makes one",
            );
        }
    }
    for (claim, pointer) in &c.jwt.claims {
        let field = format!("jwt.claims.{claim}");
        if super::RESERVED_CLAIMS.contains(&claim.as_str())
            || (claim == "session" && c.jwt.include_session)
        {
            r.add(
                &field,
                format!("{claim:?} is a registered claim set by sessiongate"),
                "pick another claim name",
            );
        }
        check_pointer(pointer, &field, r);
    }
}

/// Headers sent upstream.
fn upstream(c: &Config, r: &mut Report) {
    if !is_header_name(&c.upstream.token_header) {
        r.add(
            "upstream.token_header",
            format!(
                "{:?} is not a lower-case header name",
                c.upstream.token_header
            ),
            "use a lower-case HTTP header name such as authorization",
        );
    }
    for (header, pointer) in &c.upstream.identity_headers {
        let field = format!("upstream.identity_headers.{header}");
        if !is_header_name(header) {
            r.add(
                &field,
                format!("{header:?} is not a lower-case header name"),
                "use a lower-case HTTP header name such as x-user-id",
            );
        }
        check_pointer(pointer, &field, r);
    }
    for (i, header) in c.upstream.remove_headers.iter().enumerate() {
        if !is_header_name(header) {
            r.add(
                &format!("upstream.remove_headers[{i}]"),
                format!("{header:?} is not a lower-case header name"),
                "use lower-case HTTP header names",
            );
        }
    }
}

/// How denials look.
fn deny(c: &Config, r: &mut Report) {
    if let Some(url) = &c.deny.login_url {
        check_url(url, "deny.login_url", r);
    }
    if let Some(url) = &c.deny.kratos_browser_url {
        check_url(url, "deny.kratos_browser_url", r);
    }
    if c.deny.return_to_param.is_empty() {
        r.add(
            "deny.return_to_param",
            "must not be empty".into(),
            "use return_to (what Kratos expects)",
        );
    }
}

/// Logs and traces.
fn telemetry(c: &Config, r: &mut Report) {
    if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
        r.add(
            "log.level",
            format!("{:?} is not a valid filter", c.log.level),
            "use a level such as info, or directives like sessiongate=debug,info",
        );
    }
    if !(0.0..=1.0).contains(&c.tracing.sample_ratio) {
        r.add(
            "tracing.sample_ratio",
            format!("{} is not between 0 and 1", c.tracing.sample_ratio),
            "use a fraction such as 0.1",
        );
    }
    if c.tracing.enabled {
        check_url(&c.tracing.otlp_endpoint, "tracing.otlp_endpoint", r);
    }
}

/// The OAuth2 token sources, and the routes that need them.
fn oauth2(c: &Config, r: &mut Report) {
    for (i, issuer) in c.jwt_issuers.iter().enumerate() {
        if let Err(e) = issuer.validate() {
            r.add(
                &format!("jwt_issuers[{i}]"),
                e,
                "give issuer, audiences and an https jwks_url (or one discoverable from the issuer)",
            );
        }
        if c.jwt_issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
            r.add(
                &format!("jwt_issuers[{i}].issuer"),
                format!("{:?} is listed twice", issuer.issuer),
                "list every issuer once",
            );
        }
    }
    if let Some(intro) = &c.oauth2_introspection
        && let Err(e) = intro.validate()
    {
        r.add(
            "oauth2_introspection",
            e,
            "set url to the introspection endpoint (Hydra: <admin>/admin/oauth2/introspect)",
        );
    }
    let needs = |field: String, kinds: &[super::CredentialKind], r: &mut Report| {
        if kinds.contains(&super::CredentialKind::Jwt) && c.jwt_issuers.is_empty() {
            r.add(
                &field,
                "accepts jwt but jwt_issuers is empty".into(),
                "add a jwt_issuers entry, or remove jwt",
            );
        }
        if kinds.contains(&super::CredentialKind::Oauth2) && c.oauth2_introspection.is_none() {
            r.add(
                &field,
                "accepts oauth2 but oauth2_introspection is not set".into(),
                "configure oauth2_introspection, or remove oauth2",
            );
        }
        if kinds.is_empty() {
            r.add(
                &field,
                "accepts no credential".into(),
                "list at least one of session, jwt, oauth2",
            );
        }
    };
    needs("routes.credentials".into(), &c.routes.credentials, r);
    for (i, rule) in c.routes.rules.iter().enumerate() {
        if !rule.credentials.is_empty() {
            needs(
                format!("routes.rules[{i}].credentials"),
                &rule.credentials,
                r,
            );
        }
    }
    for (header, pointer) in &c.upstream.token_identity_headers {
        let field = format!("upstream.token_identity_headers.{header}");
        if !c.upstream.identity_headers.contains_key(header) {
            r.add(
                &field,
                format!("{header:?} is not in upstream.identity_headers"),
                "list the header in upstream.identity_headers too (so clients can never send it)",
            );
        }
        check_pointer(pointer, &field, r);
    }
}

/// Graceful shutdown.
fn shutdown(c: &Config, r: &mut Report) {
    if c.shutdown.drain_timeout.is_zero() {
        r.add(
            "shutdown.drain_timeout",
            "must be greater than zero".into(),
            "set e.g. 15s and keep Kubernetes' terminationGracePeriodSeconds longer",
        );
    }
}

fn check_url(url: &str, field: &str, r: &mut Report) {
    match url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some() => {}
        _ => r.add(
            field,
            format!("{url:?} is not an absolute http(s) URL"),
            "use a URL like http://127.0.0.1:4433",
        ),
    }
}

fn check_pointer(pointer: &str, field: &str, r: &mut Report) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        r.add(
            field,
            format!("{pointer:?} is not a JSON pointer"),
            "use a JSON pointer into the whoami session, e.g. /identity/traits/email",
        );
    }
}

/// RFC 6265 cookie-name = token.
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name != "host"
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}
