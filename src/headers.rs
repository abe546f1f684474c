//! Request headers as the domain sees them: lower-cased names, arrival order, repeats kept apart.
//! A leaf: transports fill it, the domain reads it.

/// Request headers with lower-cased names, in arrival order; repeated names are kept apart.
#[derive(Clone, Default)]
pub struct Headers {
    entries: Vec<(Box<str>, Box<str>)>,
}

impl Headers {
    /// Headers with room for `n` entries.
    pub fn with_capacity(n: usize) -> Headers {
        Headers {
            entries: Vec::with_capacity(n),
        }
    }

    /// Adds a header; the name is lower-cased.
    pub fn append(&mut self, name: &str, value: &str) {
        self.append_owned(name.to_owned(), value.to_owned());
    }

    /// Adds a header it takes ownership of (no copy); the name is lower-cased in place.
    pub fn append_owned(&mut self, mut name: String, value: String) {
        name.make_ascii_lowercase();
        self.entries
            .push((name.into_boxed_str(), value.into_boxed_str()));
    }

    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Every value of `name` (lower-case).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Number of header entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No headers at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The first element of a comma-separated header list (`X-Forwarded-Proto: https, http` →
/// `https`): the hop nearest the client, as the first proxy wrote it.
pub fn first_list_value(value: &str) -> &str {
    value.split(',').next().unwrap_or("").trim()
}

/// Names only: values may be credentials (cookies, tokens) and never reach a log line this way.
impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, _)| format!("{n}: <redacted>")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_not_values() {
        let mut h = Headers::default();
        h.append("Cookie", "ory_kratos_session=s3cr3t");
        h.append("authorization", "Bearer t0k3n");
        let shown = format!("{h:?}");
        assert!(shown.contains("cookie") && shown.contains("authorization"));
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0k3n"),
            "{shown}"
        );
    }

    #[test]
    fn headers_lowercase_and_repeat() {
        let mut h = Headers::default();
        h.append("Cookie", "a=1");
        h.append("cookie", "b=2");
        assert_eq!(h.get("cookie"), Some("a=1"));
        assert_eq!(h.get_all("cookie").collect::<Vec<_>>(), vec!["a=1", "b=2"]);
    }
}
