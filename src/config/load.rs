//! Loading: built-in defaults, then one YAML file, then `SESSIONGATE_<SECTION>__<KEY>`
//! environment variables (last wins), with errors that name the field and never echo a value.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Serialized};

use super::Config;

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML could not be parsed.
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Parser message (it never contains values of secrets, only positions and kinds).
        message: String,
    },
    /// A field has the wrong type, or an unknown field is present.
    #[error("{0}")]
    Shape(String),
    /// Semantic problems found by [`Config::validate`].
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} config problem(s):", self.0.len())?;
        for p in self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// One semantic problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `whoami.base_url`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.field, self.message, self.fix)
    }
}

impl Config {
    /// Loads defaults, then the YAML file (when given), then `SESSIONGATE_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed("SESSIONGATE_").split("__"))
    }

    /// Like [`Config::load`] with an explicit environment provider (tests pass their own map).
    pub fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let value = parse_yaml(&text).map_err(|message| ConfigError::Yaml {
                path: path.to_owned(),
                message,
            })?;
            figment = figment.merge(Serialized::defaults(value));
        }
        // `SESSIONGATE_CONFIG` and `SESSIONGATE_LOG` belong to the CLI, not to the config tree.
        figment = figment.merge(env.ignore(&["config"]));
        let config: Config = figment.extract().map_err(|e| {
            ConfigError::Shape(
                e.into_iter()
                    .map(describe_figment_error)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        Ok(config)
    }

    /// Loads from YAML text only (no environment), for tests and `check-config --stdin`.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let value = parse_yaml(text).map_err(|message| ConfigError::Yaml {
            path: PathBuf::from("<inline>"),
            message,
        })?;
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(value))
            .extract()
            .map_err(|e| {
                ConfigError::Shape(
                    e.into_iter()
                        .map(describe_figment_error)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })
    }
}

fn parse_yaml(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    // The parser's own message quotes the offending input lines, which may hold secrets
    // (admin.token, cache.key_secret): report the position only.
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("syntax error at line {}, column {}", l.line(), l.column()),
            None => "syntax error".to_string(),
        })?;
    match value {
        serde_json::Value::Object(mut map) => {
            // A section left with only comments (`admin:`) means "defaults", not "null".
            for v in map.values_mut() {
                if v.is_null() {
                    *v = serde_json::Value::Object(Default::default());
                }
            }
            Ok(serde_json::Value::Object(map))
        }
        serde_json::Value::Null => Ok(serde_json::Value::Object(Default::default())),
        _ => Err("the top level must be a mapping (grpc:, whoami:, …)".into()),
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    let path = e.path.join(".");
    let fix = match &e.kind {
        figment::error::Kind::UnknownField(_, expected) => {
            format!(" (fix: remove it or use one of: {})", expected.join(", "))
        }
        figment::error::Kind::InvalidType(_, expected)
        | figment::error::Kind::InvalidValue(_, expected) => {
            format!(" (fix: use {expected})")
        }
        _ => String::new(),
    };
    let source = match e.metadata.as_ref().map(|m| m.name.to_string()) {
        Some(name) if name.contains("environment") => {
            " [from SESSIONGATE_* environment variables]".to_string()
        }
        Some(name) if name.contains("Config") => " [built-in default]".to_string(),
        Some(_) => " [from the config file]".to_string(),
        None => String::new(),
    };
    let kind = match &e.kind {
        figment::error::Kind::UnknownField(name, _) => format!("unknown field `{name}`"),
        // Never echo the offending value: it may be a secret.
        figment::error::Kind::InvalidType(actual, _) => {
            format!("wrong type ({})", actual_kind(actual))
        }
        figment::error::Kind::InvalidValue(_, _) => "invalid value".to_string(),
        other => other.to_string(),
    };
    if path.is_empty() {
        format!("{kind}{fix}{source}")
    } else {
        format!("{path}: {kind}{fix}{source}")
    }
}

/// The kind of a value, without the value (which may be a secret).
fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual as A;
    match actual {
        A::Bool(_) => "a boolean",
        A::Unsigned(_) | A::Signed(_) => "an integer",
        A::Float(_) => "a number",
        A::Char(_) | A::Str(_) => "a string",
        A::Bytes(_) => "bytes",
        A::Unit | A::Option => "nothing",
        A::Seq => "a list",
        A::Map | A::StructVariant | A::NewtypeStruct => "a mapping",
        A::Enum | A::UnitVariant | A::NewtypeVariant | A::TupleVariant => "an enum",
        A::Other(_) => "another value",
    }
}
