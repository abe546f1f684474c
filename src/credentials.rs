//! Finding the session credential in request headers, in Kratos' own order (`X-Session-Token`,
//! the session cookie, `Authorization: Bearer`): RFC 6265 cookie parsing (`;`-separated, stray
//! whitespace tolerated), ambiguity refused, size bounds, and rewriting the `Cookie` header
//! without the session cookie while keeping every other cookie as it came.

use std::fmt;

use crate::config::{CredentialsConfig, ShapeConfig};
use crate::headers::Headers;

/// Where a credential was found; decides how it is presented to Kratos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A session cookie.
    Cookie,
    /// The `X-Session-Token` header.
    SessionToken,
    /// `Authorization: Bearer`.
    Bearer,
}

impl CredentialKind {
    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Cookie => "cookie",
            CredentialKind::SessionToken => "session_token",
            CredentialKind::Bearer => "bearer",
        }
    }
}

/// A session credential. `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Where it came from.
    pub kind: CredentialKind,
    /// The cookie name, for cookies (sent back to Kratos under the same name).
    pub cookie_name: Option<String>,
    /// The secret value.
    value: String,
}

impl Credential {
    /// A new credential.
    pub fn new(kind: CredentialKind, cookie_name: Option<String>, value: String) -> Self {
        Credential {
            kind,
            cookie_name,
            value,
        }
    }

    /// The secret value. Call sites that use it are few and reviewed: the whoami request and the
    /// keyed cache-key hash.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("cookie_name", &self.cookie_name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Why no credential could be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// Nothing that looks like a session credential.
    Missing,
    /// A credential longer than `credentials.max_length`.
    TooLong,
    /// A credential with characters no Kratos credential has (control characters, spaces).
    Malformed,
    /// Two different values where one credential belongs (two session cookies, repeated
    /// `X-Session-Token`): which one Kratos would use is not ours to guess.
    Ambiguous,
    /// Not the shape of any Kratos credential (`credentials.shape`): no session, without asking.
    Shape(CredentialKind),
}

/// Finds session credentials according to configuration.
#[derive(Debug, Clone)]
pub struct Extractor {
    cookie_names: Vec<String>,
    cookie_prefixes: Vec<String>,
    session_token_header: bool,
    bearer: bool,
    max_length: usize,
    shape: Option<ShapeConfig>,
}

impl Extractor {
    /// Builds an extractor from configuration.
    pub fn new(config: &CredentialsConfig) -> Self {
        Extractor {
            cookie_names: config.cookie_names.clone(),
            cookie_prefixes: config.cookie_prefixes.clone(),
            session_token_header: config.session_token_header,
            bearer: config.bearer,
            max_length: config.max_length,
            shape: config.shape.enabled.then(|| config.shape.clone()),
        }
    }

    /// Is this cookie name a session cookie?
    pub fn is_session_cookie(&self, name: &str) -> bool {
        self.cookie_names.iter().any(|n| n == name)
            || self
                .cookie_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }

    /// Finds the credential, in Kratos' own order: `X-Session-Token`, then the session cookie,
    /// then `Authorization: Bearer`. A source that holds two different values is ambiguous and
    /// denied rather than resolved by picking one (a client could smuggle the second).
    pub fn extract(&self, headers: &Headers) -> Result<Credential, CredentialError> {
        if self.session_token_header
            && let Some(v) = headers.get("x-session-token")
        {
            // Duplicate headers arrive joined with ','; a token has no ','.
            let mut parts = v.split(',').map(str::trim).filter(|p| !p.is_empty());
            if let Some(first) = parts.next() {
                if parts.any(|p| p != first) {
                    return Err(CredentialError::Ambiguous);
                }
                return self.check(CredentialKind::SessionToken, None, first);
            }
        }
        if !self.cookie_names.is_empty() || !self.cookie_prefixes.is_empty() {
            let mut found: Option<(&str, &str)> = None;
            for header in headers.get_all("cookie") {
                for (name, value) in parse_cookies(header) {
                    if !self.is_session_cookie(name) || value.is_empty() {
                        continue;
                    }
                    match found {
                        Some((n, v)) if n != name || v != value => {
                            return Err(CredentialError::Ambiguous);
                        }
                        _ => found = Some((name, value)),
                    }
                }
            }
            if let Some((name, value)) = found {
                return self.check(CredentialKind::Cookie, Some(name.to_owned()), value);
            }
        }
        if self.bearer
            && let Some(v) = headers.get("authorization")
            && let Some(token) = bearer_token(v)
            // A JWT (ours, replayed, or another issuer's) or a Hydra access token is never a
            // Kratos session token: never sent to whoami.
            && matches!(
                bearer_shape(token),
                BearerShape::KratosSession | BearerShape::Opaque
            )
        {
            return self.check(CredentialKind::Bearer, None, token);
        }
        Err(CredentialError::Missing)
    }

    fn check(
        &self,
        kind: CredentialKind,
        cookie_name: Option<String>,
        value: &str,
    ) -> Result<Credential, CredentialError> {
        if value.len() > self.max_length {
            return Err(CredentialError::TooLong);
        }
        if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(CredentialError::Malformed);
        }
        if let Some(shape) = &self.shape
            && !shape_fits(shape, kind, value)
        {
            return Err(CredentialError::Shape(kind));
        }
        Ok(Credential::new(kind, cookie_name, value.to_owned()))
    }

    /// The `Cookie` header without session cookies (and without cookies whose value embeds one
    /// after a `,`); every other cookie is kept as it came. `Unchanged` when there was nothing
    /// to remove (to spare a mutation).
    pub fn strip_session_cookies(&self, headers: &Headers) -> CookieRewrite {
        let mut kept: Vec<&str> = Vec::new();
        let mut removed = false;
        for header in headers.get_all("cookie") {
            for pair in split_cookie_pairs(header) {
                // A cookie whose value embeds a session cookie after a `,`
                // (`a=x,ory_kratos_session=…`) goes too: an upstream parser that splits at
                // commas would otherwise find a session cookie we never checked.
                let carries_session = pair.split(',').any(|piece| {
                    let name = piece.split_once('=').map_or(piece, |(n, _)| n).trim();
                    self.is_session_cookie(name)
                });
                if carries_session {
                    removed = true;
                } else {
                    kept.push(pair);
                }
            }
        }
        match (removed, kept.is_empty()) {
            (false, _) => CookieRewrite::Unchanged,
            (true, true) => CookieRewrite::Remove,
            (true, false) => CookieRewrite::Replace(kept.join("; ")),
        }
    }
}

/// Could `value` be a Kratos credential found as `kind`? Tokens: the prefix (optional when
/// `unprefixed_tokens`) then at least `token_min_length` ASCII alphanumerics. Cookies: Kratos'
/// securecookie encoding (base64url, `=` padding), at least `cookie_min_length` long.
pub fn shape_fits(shape: &ShapeConfig, kind: CredentialKind, value: &str) -> bool {
    match kind {
        CredentialKind::Cookie => {
            value.len() >= shape.cookie_min_length
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
        }
        CredentialKind::SessionToken | CredentialKind::Bearer => {
            let rest = match value.strip_prefix(shape.token_prefix.as_str()) {
                Some(rest) if !shape.token_prefix.is_empty() => rest,
                _ if shape.unprefixed_tokens => value,
                _ => return false,
            };
            rest.len() >= shape.token_min_length && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        }
    }
}

/// What to do with the upstream `Cookie` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieRewrite {
    /// No session cookie was present.
    Unchanged,
    /// Only session cookies were present: remove the header.
    Remove,
    /// Set the header to this value (the other cookies, joined by `; `).
    Replace(String),
}

/// What a bearer token looks like, which decides the one source it may be sent to: a Hydra
/// token never reaches Kratos' whoami, a Kratos token never reaches introspection, a JWT is
/// verified locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerShape {
    /// Three base64url parts: a JWT.
    Jwt,
    /// `ory_st_…`: a Kratos session token.
    KratosSession,
    /// `ory_at_…`: an Ory Hydra (OAuth2) access token.
    OAuth2Access,
    /// Anything else: opaque.
    Opaque,
}

/// The shape of a bearer token.
pub fn bearer_shape(token: &str) -> BearerShape {
    if token.starts_with("ory_st_") {
        BearerShape::KratosSession
    } else if token.starts_with("ory_at_") {
        BearerShape::OAuth2Access
    } else if token.bytes().filter(|&b| b == b'.').count() == 2 {
        BearerShape::Jwt
    } else {
        BearerShape::Opaque
    }
}

/// `Bearer <token>` → token: the one Bearer parser, for credentials and the admin token alike.
/// The field value loses its surrounding whitespace (SP/HTAB, RFC 9110 §5.5), the scheme is
/// case-insensitive and followed by one or more spaces (RFC 6750 §2.1); the token is then taken
/// exactly: no further trimming, and a token with whitespace inside is no token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

/// Splits a `Cookie` header into `name=value` pairs at `;` only (RFC 6265; Envoy joins repeated
/// `cookie` headers with `; `), ignoring empty pieces and surrounding whitespace. A `,` belongs
/// to the value it stands in: splitting there would let `a=x,ory_kratos_session=EVIL` smuggle a
/// session cookie inside another cookie's value.
fn split_cookie_pairs(header: &str) -> impl Iterator<Item = &str> {
    header.split(';').map(str::trim).filter(|p| !p.is_empty())
}

/// Parses a `Cookie` header into `(name, value)` pairs. Pieces without `=` or with an invalid
/// name are skipped; a value in double quotes is unquoted (RFC 6265 §4.1.1).
pub fn parse_cookies(header: &str) -> impl Iterator<Item = (&str, &str)> {
    split_cookie_pairs(header).filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        if !crate::config::is_cookie_name(name) {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CredentialsConfig, ShapeConfig};

    #[test]
    fn shapes_accept_kratos_credentials_and_refuse_junk() {
        let s = ShapeConfig::default();
        let token = "ory_st_0123456789abcdefghijABCDEFGHIJ01";
        let cookie = "MTcwMDAwMDAwMHxEWDhFQVFMX2dBQUJFQUVRQUFCZl80QUFBUVp6ZEhKcGJtY01DUUFIYzJWemMybHZiZ1p6ZEhKcGJtY01Jd0FoYjNKNVgzTjBYMkZpWTJSbFptZG9hV3ByYkcxdWIzQnhjbk4wZFhaM2VIbDZNVEl6TkE9PXyp0pG6eg==";
        assert!(shape_fits(&s, CredentialKind::SessionToken, token));
        assert!(shape_fits(&s, CredentialKind::Bearer, token));
        // Kratos before v1.0: 32 alphanumerics.
        assert!(shape_fits(&s, CredentialKind::SessionToken, &token[7..]));
        assert!(shape_fits(&s, CredentialKind::Cookie, cookie));
        for junk in [
            "ory_st_short",
            "ory_st_0123456789abcdefghijABCDEFGHIJ-1",
            "x",
            "0123456789abcdefghij-ABCDEFGHIJ01",
        ] {
            assert!(
                !shape_fits(&s, CredentialKind::SessionToken, junk),
                "{junk}"
            );
        }
        for junk in ["good", "a.b.c", &format!("{}%3D", &cookie[..60])] {
            assert!(!shape_fits(&s, CredentialKind::Cookie, junk), "{junk}");
        }
        let strict = ShapeConfig {
            unprefixed_tokens: false,
            ..s.clone()
        };
        assert!(shape_fits(&strict, CredentialKind::SessionToken, token));
        assert!(!shape_fits(
            &strict,
            CredentialKind::SessionToken,
            &token[7..]
        ));
        // The extractor refuses a misshapen credential by kind, before anything else sees it.
        let e = Extractor::new(&CredentialsConfig::default());
        assert_eq!(
            e.extract(&headers(&[("cookie", "ory_kratos_session=good")])),
            Err(CredentialError::Shape(CredentialKind::Cookie))
        );
        assert!(e.extract(&headers(&[("x-session-token", token)])).is_ok());
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (k, v) in pairs {
            h.append(k, v);
        }
        h
    }

    fn extractor() -> Extractor {
        // Toy credentials: shapes are tested on their own.
        Extractor::new(&CredentialsConfig {
            cookie_prefixes: vec!["ory_session_".into()],
            shape: ShapeConfig {
                enabled: false,
                ..ShapeConfig::default()
            },
            ..CredentialsConfig::default()
        })
    }

    #[test]
    fn parses_cookie_separators_and_whitespace() {
        let got: Vec<_> = parse_cookies(" a=1;b=2 ;  c=\"3\";;  ; d=; bad name=x; =v; e").collect();
        assert_eq!(got, vec![("a", "1"), ("b", "2"), ("c", "3"), ("d", "")]);
        let got: Vec<_> = parse_cookies("a=x,ory_kratos_session=EVIL; b=1,2").collect();
        assert_eq!(got, vec![("a", "x,ory_kratos_session=EVIL"), ("b", "1,2")]);
    }

    #[test]
    fn finds_session_cookie_among_others_and_across_headers() {
        let h = headers(&[
            ("cookie", "theme=dark"),
            ("cookie", "csrf=x; ory_kratos_session=abc123"),
        ]);
        let c = extractor().extract(&h).unwrap();
        assert_eq!(c.kind, CredentialKind::Cookie);
        assert_eq!(c.cookie_name.as_deref(), Some("ory_kratos_session"));
        assert_eq!(c.expose(), "abc123");
    }

    #[test]
    fn finds_prefixed_cookie() {
        let h = headers(&[("cookie", "ory_session_myproject=v1")]);
        let c = extractor().extract(&h).unwrap();
        assert_eq!(c.cookie_name.as_deref(), Some("ory_session_myproject"));
    }

    #[test]
    fn kratos_order_token_header_then_cookie_then_bearer() {
        let h = headers(&[
            ("cookie", "ory_kratos_session=c"),
            ("authorization", "Bearer b"),
            ("x-session-token", "t"),
        ]);
        let c = extractor().extract(&h).unwrap();
        assert_eq!((c.kind, c.expose()), (CredentialKind::SessionToken, "t"));
        let h = headers(&[
            ("cookie", "ory_kratos_session=c"),
            ("authorization", "bearer  b "),
        ]);
        let c = extractor().extract(&h).unwrap();
        assert_eq!((c.kind, c.expose()), (CredentialKind::Cookie, "c"));
        let h = headers(&[("authorization", "bearer  b ")]);
        let c = extractor().extract(&h).unwrap();
        assert_eq!((c.kind, c.expose()), (CredentialKind::Bearer, "b"));
    }

    #[test]
    fn a_comma_cannot_smuggle_a_session_cookie() {
        let h = headers(&[("cookie", "a=x,ory_kratos_session=EVIL")]);
        assert_eq!(extractor().extract(&h), Err(CredentialError::Missing));
        let h = headers(&[(
            "cookie",
            "a=x,ory_kratos_session=EVIL; ory_kratos_session=good",
        )]);
        assert_eq!(extractor().extract(&h).unwrap().expose(), "good");
    }

    #[test]
    fn two_different_session_credentials_are_ambiguous() {
        let e = extractor();
        for h in [
            headers(&[("cookie", "ory_kratos_session=a; ory_kratos_session=b")]),
            headers(&[
                ("cookie", "ory_kratos_session=a"),
                ("cookie", "ory_kratos_session=b"),
            ]),
            headers(&[("cookie", "ory_kratos_session=a; ory_session_x=b")]),
            headers(&[("x-session-token", "a,b")]),
        ] {
            assert_eq!(e.extract(&h), Err(CredentialError::Ambiguous), "{h:?}");
        }
        // The same value twice is not ambiguous.
        let h = headers(&[("cookie", "ory_kratos_session=a; ory_kratos_session=a")]);
        assert_eq!(e.extract(&h).unwrap().expose(), "a");
    }

    #[test]
    fn jwt_bearer_is_not_a_session_token() {
        let h = headers(&[("authorization", "Bearer aaa.bbb.ccc")]);
        assert_eq!(extractor().extract(&h), Err(CredentialError::Missing));
        let h = headers(&[("authorization", "Bearer ory_at_abc.def")]);
        assert_eq!(
            extractor().extract(&h),
            Err(CredentialError::Missing),
            "Hydra's"
        );
        assert_eq!(bearer_shape("ory_st_x"), BearerShape::KratosSession);
        assert_eq!(bearer_shape("ory_at_x.y"), BearerShape::OAuth2Access);
        assert_eq!(bearer_shape("a.b.c"), BearerShape::Jwt);
        assert_eq!(bearer_shape("abc"), BearerShape::Opaque);
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(extractor().extract(&h), Err(CredentialError::Missing));
    }

    #[test]
    fn sources_can_be_switched_off() {
        let e = Extractor::new(&CredentialsConfig {
            session_token_header: false,
            bearer: false,
            ..CredentialsConfig::default()
        });
        let h = headers(&[("x-session-token", "t"), ("authorization", "Bearer b")]);
        assert_eq!(e.extract(&h), Err(CredentialError::Missing));
    }

    #[test]
    fn too_long_and_malformed_are_refused() {
        let long = "x".repeat(5000);
        let h = headers(&[("x-session-token", long.as_str())]);
        assert_eq!(extractor().extract(&h), Err(CredentialError::TooLong));
        let h = headers(&[("x-session-token", "a\u{7}b")]);
        assert_eq!(extractor().extract(&h), Err(CredentialError::Malformed));
    }

    #[test]
    fn debug_redacts_value() {
        let c = Credential::new(CredentialKind::Cookie, Some("n".into()), "secret-v".into());
        assert!(!format!("{c:?}").contains("secret-v"));
    }

    #[test]
    fn strips_only_session_cookies() {
        let e = extractor();
        let h = headers(&[("cookie", "a=1; ory_kratos_session=s"), ("cookie", "b=2")]);
        assert_eq!(
            e.strip_session_cookies(&h),
            CookieRewrite::Replace("a=1; b=2".into())
        );
        let h = headers(&[("cookie", "ory_kratos_session=s")]);
        assert_eq!(e.strip_session_cookies(&h), CookieRewrite::Remove);
        let h = headers(&[("cookie", "a=1")]);
        assert_eq!(e.strip_session_cookies(&h), CookieRewrite::Unchanged);
        // A cookie smuggling a session cookie after a comma is dropped whole.
        let h = headers(&[("cookie", "a=x,ory_kratos_session=EVIL; b=1")]);
        assert_eq!(
            e.strip_session_cookies(&h),
            CookieRewrite::Replace("b=1".into())
        );
        // Other cookies are kept as they came, commas and all.
        let h = headers(&[("cookie", "a=1,2; ory_kratos_session=s; b=\"x y\"")]);
        assert_eq!(
            e.strip_session_cookies(&h),
            CookieRewrite::Replace("a=1,2; b=\"x y\"".into())
        );
    }
}
