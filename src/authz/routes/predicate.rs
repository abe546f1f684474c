//! Predicates on the session (`require:`): `equals`, `one_of`, `exists`, `matches` on a JSON
//! pointer into the whoami session. Compiled once (regexes included); evaluated per request on
//! the cached session's projected values, never cached as a decision.

use serde_json::Value;

use crate::config::RequirementConfig;

/// A compiled predicate.
#[derive(Debug, Clone)]
pub struct Requirement {
    pointer: Box<str>,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Exists(bool),
    Matches(regex::Regex),
}

/// How `routes explain` shows it: pointer and test, as configured.
impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.test {
            Test::Equals(v) => write!(f, "{} equals {v}", self.pointer),
            Test::OneOf(v) => write!(f, "{} one of {}", self.pointer, Value::from(v.clone())),
            Test::Exists(true) => write!(f, "{} exists", self.pointer),
            Test::Exists(false) => write!(f, "{} is absent", self.pointer),
            Test::Matches(re) => write!(f, "{} matches {:?}", self.pointer, re.as_str()),
        }
    }
}

impl PartialEq for Requirement {
    fn eq(&self, other: &Requirement) -> bool {
        self.pointer == other.pointer
            && match (&self.test, &other.test) {
                (Test::Equals(a), Test::Equals(b)) => a == b,
                (Test::OneOf(a), Test::OneOf(b)) => a == b,
                (Test::Exists(a), Test::Exists(b)) => a == b,
                (Test::Matches(a), Test::Matches(b)) => a.as_str() == b.as_str(),
                _ => false,
            }
    }
}

/// Why a configured requirement is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// The claim is not a JSON pointer.
    #[error("claim {0:?} is not a JSON pointer")]
    Pointer(String),
    /// None, or more than one, of equals / one_of / exists / matches.
    #[error("needs exactly one of equals, one_of, exists, matches")]
    Operators,
    /// The regular expression does not compile (or is too large).
    #[error("matches is not a valid regular expression")]
    Regex,
}

impl RequirementError {
    /// How to fix it.
    pub fn fix(&self) -> &'static str {
        match self {
            RequirementError::Pointer(_) => {
                "use a JSON pointer into the whoami session, e.g. /identity/metadata_public/role"
            }
            RequirementError::Operators => {
                "write e.g. { claim: /identity/metadata_public/role, one_of: [admin, owner] }"
            }
            RequirementError::Regex => "use Rust regex syntax, e.g. '^[^@]+@example\\.com$'",
        }
    }
}

impl Requirement {
    /// Compiles one `require:` entry.
    pub fn compile(c: &RequirementConfig) -> Result<Requirement, RequirementError> {
        if !c.claim.starts_with('/') {
            return Err(RequirementError::Pointer(c.claim.clone()));
        }
        let ops = [
            c.equals.is_some(),
            c.one_of.is_some(),
            c.exists.is_some(),
            c.matches.is_some(),
        ];
        if ops.iter().filter(|&&x| x).count() != 1 {
            return Err(RequirementError::Operators);
        }
        let test = if let Some(v) = &c.equals {
            Test::Equals(v.clone())
        } else if let Some(v) = &c.one_of {
            Test::OneOf(v.clone())
        } else if let Some(e) = c.exists {
            Test::Exists(e)
        } else {
            let re = c.matches.as_deref().unwrap_or_default();
            Test::Matches(
                regex::RegexBuilder::new(re)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|_| RequirementError::Regex)?,
            )
        };
        Ok(Requirement {
            pointer: c.claim.as_str().into(),
            test,
        })
    }

    /// The JSON pointer it reads.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// Does the value at the pointer (`None`: absent or null) satisfy it?
    pub fn holds(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| !v.is_null());
        match (&self.test, value) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(want), Some(v)) => v == want,
            (Test::OneOf(set), Some(v)) => set.contains(v),
            (Test::Matches(re), Some(Value::String(s))) => re.is_match(s),
            (Test::Matches(_), Some(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(claim: &str, f: impl FnOnce(&mut RequirementConfig)) -> Requirement {
        let mut c = RequirementConfig {
            claim: claim.into(),
            ..RequirementConfig::default()
        };
        f(&mut c);
        Requirement::compile(&c).unwrap()
    }

    #[test]
    fn every_operator() {
        let eq = req("/a", |c| c.equals = Some(json!(true)));
        assert!(eq.holds(Some(&json!(true))));
        assert!(!eq.holds(Some(&json!("true"))), "no type coercion");
        assert!(!eq.holds(None));
        let one = req("/r", |c| {
            c.one_of = Some(vec![json!("admin"), json!("owner")])
        });
        assert!(one.holds(Some(&json!("owner"))));
        assert!(!one.holds(Some(&json!("Admin"))));
        assert!(!one.holds(Some(&json!(["admin"]))));
        let ex = req("/x", |c| c.exists = Some(true));
        assert!(ex.holds(Some(&json!(0))));
        assert!(!ex.holds(Some(&Value::Null)), "null counts as absent");
        assert!(!ex.holds(None));
        let nex = req("/x", |c| c.exists = Some(false));
        assert!(nex.holds(None) && !nex.holds(Some(&json!(""))));
        let m = req("/e", |c| c.matches = Some("^[^@]+@example\\.com$".into()));
        assert!(m.holds(Some(&json!("ada@example.com"))));
        assert!(!m.holds(Some(&json!("ada@example.com.evil"))));
        assert!(!m.holds(Some(&json!(42))));
    }

    #[test]
    fn bad_requirements_are_explained() {
        let bad = |f: fn(&mut RequirementConfig)| {
            let mut c = RequirementConfig {
                claim: "/a".into(),
                ..RequirementConfig::default()
            };
            f(&mut c);
            Requirement::compile(&c).unwrap_err()
        };
        assert_eq!(bad(|_| {}), RequirementError::Operators);
        assert_eq!(
            bad(|c| {
                c.exists = Some(true);
                c.equals = Some(json!(1));
            }),
            RequirementError::Operators
        );
        assert_eq!(
            bad(|c| c.matches = Some("(".into())),
            RequirementError::Regex
        );
        assert!(matches!(
            bad(|c| {
                c.claim = "identity/id".into();
                c.exists = Some(true);
            }),
            RequirementError::Pointer(_)
        ));
    }
}
