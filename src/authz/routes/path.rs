//! Paths as rules see them: normalised the way Envoy's `normalize_path` + `merge_slashes` do
//! (percent-decoding, `//` merged, `.` and `..` resolved, never above the root; the query and
//! fragment are never part of it), and the patterns rules match them with (exact, `*` one
//! segment, `**` any rest).

/// Why a path cannot be matched. The request is denied (400): an upstream could read it
/// differently from us, so no rule may be chosen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (no leading `/`).
    #[error("the path does not start with /")]
    NotAbsolute,
    /// `%2F` / `%5C` or a raw backslash: some upstreams split there, others do not.
    #[error("the path contains an encoded slash or a backslash")]
    AmbiguousSlash,
    /// A control character or invalid percent-encoding / UTF-8.
    #[error("the path is not a valid URL path")]
    Malformed,
}

/// The normalised path of a request target: decoded, `//` merged, dot segments resolved,
/// no trailing slash (except `/` itself), no query. Borrowed when the path already is normal
/// (the common case: no allocation on the hot path).
pub fn normalise(target: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::Malformed)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::Malformed)?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| PathError::Malformed)?;
            if v == b'/' || v == b'\\' {
                return Err(PathError::AmbiguousSlash);
            }
            decoded.push(v);
            i += 3;
        } else {
            if b == b'\\' {
                return Err(PathError::AmbiguousSlash);
            }
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::Malformed)?;
    if decoded.chars().any(char::is_control) {
        return Err(PathError::Malformed);
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Ok(std::borrow::Cow::Owned(normal))
}

/// Already normal: printable ASCII without `%` or `\\`, no empty, `.` or `..` segment, no
/// trailing slash (except `/`).
fn is_normal(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let b = path.as_bytes();
    if b.last() == Some(&b'/')
        || !b
            .iter()
            .all(|&c| c.is_ascii_graphic() && c != b'%' && c != b'\\')
    {
        return false;
    }
    path[1..]
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// This exact segment.
    Literal(Box<str>),
    /// Any one segment.
    One,
    /// Any number of segments, including none (last segment only).
    Rest,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Box<[Segment]>,
}

/// Why a configured path pattern is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Does not start with `/`.
    #[error("must start with /")]
    NotAbsolute,
    /// `**` somewhere other than the last segment, or `*` inside a segment.
    #[error("`**` may only be the last segment, and `*` must be a whole segment")]
    Wildcard,
    /// `.`/`..` segments, `?`, `#`, `%` or a backslash: patterns match normalised paths.
    #[error("must be a normalised path (no `.`, `..`, `?`, `#`, `%` or backslash)")]
    NotNormal,
}

impl PathPattern {
    /// Compiles `/a/*/b/**`.
    pub fn parse(pattern: &str) -> Result<PathPattern, PatternError> {
        if !pattern.starts_with('/') {
            return Err(PatternError::NotAbsolute);
        }
        if pattern.contains(['?', '#', '%', '\\']) {
            return Err(PatternError::NotNormal);
        }
        let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "*" => Segment::One,
                "." | ".." => return Err(PatternError::NotNormal),
                p if p.contains('*') => return Err(PatternError::Wildcard),
                p => Segment::Literal(p.into()),
            });
        }
        Ok(PathPattern {
            segments: segments.into(),
        })
    }

    /// The literal segments before the first wildcard (the route table's index key).
    pub fn literal_prefix(&self) -> Vec<&str> {
        self.segments
            .iter()
            .map_while(|s| match s {
                Segment::Literal(l) => Some(&**l),
                _ => None,
            })
            .collect()
    }

    /// Does the normalised path match?
    pub fn matches(&self, normal: &str) -> bool {
        let mut segs = normal.split('/').filter(|s| !s.is_empty());
        for pat in self.segments.iter() {
            match pat {
                Segment::Rest => return true,
                Segment::One => {
                    if segs.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if segs.next() != Some(&**l) {
                        return false;
                    }
                }
            }
        }
        segs.next().is_none()
    }

    /// Does every path this pattern matches also match `other`? (`other` covers `self`:
    /// `check-config` warns about rules an earlier rule shadows.)
    pub fn covered_by(&self, other: &PathPattern) -> bool {
        let (mine, theirs) = (&self.segments, &other.segments);
        for (i, t) in theirs.iter().enumerate() {
            match (t, mine.get(i)) {
                (Segment::Rest, _) => return true,
                (_, None) | (_, Some(Segment::Rest)) => return false,
                (Segment::One, Some(_)) => {}
                (Segment::Literal(a), Some(Segment::Literal(b))) if a == b => {}
                (Segment::Literal(_), Some(_)) => return false,
            }
        }
        mine.len() == theirs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_envoy() {
        for (raw, want) in [
            ("/", "/"),
            ("", "not absolute"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/.", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a"),
            ("/a/b/", "/a/b"),
            ("/pub%6Cic/x", "/public/x"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin?x=/public", "/admin"),
            ("/a?b=/c#d", "/a"),
            ("/caf%C3%A9", "/café"),
        ] {
            let got = normalise(raw).map_err(|_| ()).map(|s| s.into_owned());
            match want {
                "not absolute" => assert!(got.is_err(), "{raw}"),
                w => assert_eq!(got, Ok(w.to_string()), "{raw}"),
            }
        }
        assert_eq!(normalise("/a%2Fb"), Err(PathError::AmbiguousSlash));
        assert_eq!(normalise("/a%5cb"), Err(PathError::AmbiguousSlash));
        assert_eq!(normalise("/a\\b"), Err(PathError::AmbiguousSlash));
        assert_eq!(normalise("/a%zz"), Err(PathError::Malformed));
        assert_eq!(normalise("/a%0a"), Err(PathError::Malformed));
        assert_eq!(normalise("/a%ff"), Err(PathError::Malformed));
        assert_eq!(normalise("/a%2"), Err(PathError::Malformed));
    }

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_segments() {
        assert!(p("/healthz").matches("/healthz"));
        assert!(!p("/healthz").matches("/healthz/x"));
        assert!(!p("/healthz").matches("/healthzz"));
        assert!(p("/public/**").matches("/public"));
        assert!(p("/public/**").matches("/public/a/b/c"));
        assert!(!p("/public/**").matches("/publicity"));
        assert!(p("/users/*/orders").matches("/users/7/orders"));
        assert!(!p("/users/*/orders").matches("/users/orders"));
        assert!(!p("/users/*").matches("/users/7/orders"));
        assert!(p("/**").matches("/"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/a"));
        for bad in ["public", "/a/**/b", "/a*", "/a/../b", "/a?x", "/%2e"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage() {
        assert!(p("/public/x").covered_by(&p("/public/**")));
        assert!(p("/public/**").covered_by(&p("/**")));
        assert!(p("/a/b").covered_by(&p("/a/*")));
        assert!(p("/a/*").covered_by(&p("/a/*")));
        assert!(!p("/a/*").covered_by(&p("/a/b")));
        assert!(!p("/a/**").covered_by(&p("/a/*")));
        assert!(!p("/a").covered_by(&p("/a/*")));
        assert!(p("/a").covered_by(&p("/a/**")));
    }
}
