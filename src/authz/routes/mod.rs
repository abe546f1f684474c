//! Route rules compiled once from `routes:` into a [`RouteTable`]: which [`Policy`] a request
//! gets. First matching rule wins; candidates come from a trie of the patterns' literal path
//! prefixes, so the cost per request does not grow with the number of rules. Rules may also be
//! named by operator configuration (Envoy `context_extensions: {route: …}`, a proxy's
//! `/check/r/<name>`), never by anything a client sends.

mod path;
mod predicate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use path::{PathError, PathPattern, PatternError, normalise};
pub use predicate::{Requirement, RequirementError};

use crate::config::{CredentialKind, DefaultPolicy, RoutesConfig, RuleConfig};
use crate::session::Aal;

/// What a route requires and grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The rule's name (`default` when no rule matched): a metric label and a log field.
    pub name: Arc<str>,
    /// Deny every request (`routes.default: deny`, no rule matched).
    pub deny: bool,
    /// Allow without a session (a valid session still gets a token).
    pub anonymous: bool,
    /// `aud` of the minted token, instead of `jwt.audience`.
    pub audience: Option<Arc<str>>,
    /// Minimum assurance level.
    pub aal: Option<Aal>,
    /// Honour the client's `Cache-Control: max-age` (with `cache.client_max_age: route`).
    pub client_max_age: bool,
    /// Predicates on the session, all of which must hold.
    pub require: Arc<[Requirement]>,
    /// `authenticated_at` must be younger than this.
    pub max_auth_age: Option<Duration>,
    /// Which credentials the route accepts.
    pub credentials: Arc<[CredentialKind]>,
    /// OAuth2 scopes a `jwt` / `oauth2` credential must carry.
    pub scopes: Arc<[String]>,
}

impl Policy {
    /// The policy of requests no rule matches.
    pub fn default_for(default: DefaultPolicy, credentials: &[CredentialKind]) -> Policy {
        Policy {
            name: "default".into(),
            deny: default == DefaultPolicy::Deny,
            anonymous: default == DefaultPolicy::Anonymous,
            audience: None,
            aal: None,
            client_max_age: false,
            require: Arc::new([]),
            max_auth_age: None,
            credentials: credentials.into(),
            scopes: Arc::new([]),
        }
    }
}

/// A host pattern: exact or `*.suffix`, lower-case, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(Box<str>),
    /// `*.example.com` → `.example.com`: any subdomain, not the apex.
    Suffix(Box<str>),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => **h == *host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(&**s),
        }
    }

    fn covered_by(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(a), HostPattern::Suffix(s)) => {
                a.len() > s.len() && a.ends_with(&**s)
            }
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => a.ends_with(&**b),
            (HostPattern::Suffix(_), HostPattern::Exact(_)) => false,
        }
    }
}

/// The request's host as rules compare it: lower-case, without port (borrowed when it already
/// is).
pub fn host_of(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = match authority.rsplit_once(':') {
        // `[::1]:8080` or `example.com:8080`; a bare IPv6 literal has no port after `]`.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[derive(Debug)]
struct Rule {
    hosts: Vec<HostPattern>,
    methods: Vec<Box<str>>,
    paths: Vec<PathPattern>,
    policy: Policy,
}

impl Rule {
    fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| **m == *method))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }

    /// Does every request this rule matches also match `earlier`?
    fn shadowed_by(&self, earlier: &Rule) -> bool {
        covers(&earlier.methods, &self.methods, |m, e| m == e)
            && covers(&earlier.hosts, &self.hosts, HostPattern::covered_by)
            && covers(&earlier.paths, &self.paths, PathPattern::covered_by)
    }
}

/// Does the condition list `earlier` accept everything `mine` accepts? An empty list accepts
/// anything, so it covers every list and is covered by none but another empty one.
fn covers<T>(earlier: &[T], mine: &[T], covered_by: impl Fn(&T, &T) -> bool) -> bool {
    earlier.is_empty()
        || (!mine.is_empty()
            && mine
                .iter()
                .all(|m| earlier.iter().any(|e| covered_by(m, e))))
}

/// A rule that cannot be compiled: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// e.g. `routes.rules[2].match.paths[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The compiled rule table.
#[derive(Debug)]
pub struct RouteTable {
    rules: Vec<Rule>,
    by_name: HashMap<Box<str>, usize>,
    /// Rule indexes by the literal prefix of their path patterns (rules without paths at the
    /// root): a request's candidates are the rules on the trie path of its own segments.
    index: PrefixNode,
    default: Policy,
    /// Every JSON pointer some requirement reads: the session projection keeps their values.
    pointers: Vec<Arc<str>>,
}

/// Most rule-bearing trie nodes one request path can visit before the table falls back to a
/// scan in order.
const MAX_LISTS: usize = 16;

/// A node of the literal-prefix trie: the rules whose pattern's literal prefix ends here, in
/// rule order.
#[derive(Debug, Default)]
struct PrefixNode {
    rules: Vec<usize>,
    children: HashMap<Box<str>, PrefixNode>,
}

impl PrefixNode {
    fn insert(&mut self, rule: usize, literals: &[&str]) {
        let node = literals.iter().fold(self, |node, seg| {
            node.children.entry((*seg).into()).or_default()
        });
        if node.rules.last() != Some(&rule) {
            node.rules.push(rule);
        }
    }

    /// The rule lists on the trie path of `path`'s segments (each in rule order) into `out`;
    /// how many, or `None` when there are more than `out` holds.
    fn candidates<'a>(&'a self, path: &str, out: &mut [&'a [usize]; MAX_LISTS]) -> Option<usize> {
        let mut n = 0;
        let mut push = |list: &'a [usize]| {
            if !list.is_empty() {
                *out.get_mut(n)? = list;
                n += 1;
            }
            Some(())
        };
        let mut node = self;
        push(&node.rules)?;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            match node.children.get(seg) {
                Some(next) => {
                    node = next;
                    push(&node.rules)?;
                }
                None => break,
            }
        }
        Some(n)
    }
}

/// Which rule a request names or matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selected<'a> {
    /// A rule (by name or by match).
    Rule(&'a Policy),
    /// No rule matched.
    Default(&'a Policy),
}

impl<'a> Selected<'a> {
    /// The policy either way.
    pub fn policy(self) -> &'a Policy {
        match self {
            Selected::Rule(p) | Selected::Default(p) => p,
        }
    }
}

impl RouteTable {
    /// Compiles the configured rules; every problem names its field.
    pub fn compile(config: &RoutesConfig) -> Result<RouteTable, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut by_name = HashMap::new();
        let mut pointers: Vec<Arc<str>> = Vec::new();
        for (i, rc) in config.rules.iter().enumerate() {
            let field = format!("routes.rules[{i}]");
            if config.rules[..i]
                .iter()
                .any(|earlier| earlier.name == rc.name)
            {
                errors.push(RuleError {
                    field: format!("{field}.name"),
                    message: format!("{:?} is used by an earlier rule", rc.name),
                    fix: "give every rule its own name".into(),
                });
            }
            if let Some(rule) = compile_rule(rc, &config.credentials, &field, &mut errors) {
                by_name.insert(rc.name.as_str().into(), i);
                for r in rule.policy.require.iter() {
                    if !pointers.iter().any(|p| **p == *r.pointer()) {
                        pointers.push(r.pointer().into());
                    }
                }
                rules.push(rule);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut index = PrefixNode::default();
        for (i, rule) in rules.iter().enumerate() {
            if rule.paths.is_empty() {
                index.insert(i, &[]);
            }
            for p in &rule.paths {
                index.insert(i, &p.literal_prefix());
            }
        }
        Ok(RouteTable {
            rules,
            by_name,
            index,
            default: Policy::default_for(config.default, &config.credentials),
            pointers,
        })
    }

    /// The rule named by operator configuration.
    pub fn named(&self, name: &str) -> Option<&Policy> {
        self.by_name.get(name).map(|&i| &self.rules[i].policy)
    }

    /// The first rule matching the request (method upper-case as sent; `host` from
    /// [`host_of`]; `path` from [`normalise`]), or the default.
    pub fn select(&self, method: &str, host: &str, path: &str) -> Selected<'_> {
        if self.rules.is_empty() {
            return Selected::Default(&self.default);
        }
        // The rule lists on the request's trie path, on the stack (no allocation per check).
        let mut lists: [&[usize]; MAX_LISTS] = [&[]; MAX_LISTS];
        let Some(n) = self.index.candidates(path, &mut lists) else {
            // Deeper than MAX_LISTS rule-bearing prefixes: every rule, in order (correct, slow,
            // and only for paths that deep into a table that deep).
            return self
                .rules
                .iter()
                .find(|r| r.matches(method, host, path))
                .map_or(Selected::Default(&self.default), |r| {
                    Selected::Rule(&r.policy)
                });
        };
        let lists = &mut lists[..n];
        // Each list is in rule order: take the lowest head each time.
        loop {
            let mut best: Option<(usize, usize)> = None;
            for (l, list) in lists.iter().enumerate() {
                if let Some(&rule) = list.first()
                    && best.is_none_or(|(b, _)| rule < b)
                {
                    best = Some((rule, l));
                }
            }
            let Some((rule, l)) = best else { break };
            lists[l] = &lists[l][1..];
            let rule = &self.rules[rule];
            if rule.matches(method, host, path) {
                return Selected::Rule(&rule.policy);
            }
        }
        Selected::Default(&self.default)
    }

    /// JSON pointers the requirements read.
    pub fn pointers(&self) -> &[Arc<str>] {
        &self.pointers
    }

    /// Rules an earlier rule shadows (never reached by matching): `(later, earlier)` names.
    pub fn shadowed(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let mut out = Vec::new();
        for (i, later) in self.rules.iter().enumerate() {
            if let Some(earlier) = self.rules[..i].iter().find(|e| later.shadowed_by(e)) {
                out.push((later.policy.name.clone(), earlier.policy.name.clone()));
            }
        }
        out
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn compile_rule(
    rc: &RuleConfig,
    default_credentials: &[CredentialKind],
    field: &str,
    errors: &mut Vec<RuleError>,
) -> Option<Rule> {
    let before = errors.len();
    let mut err = |f: String, message: String, fix: &str| {
        errors.push(RuleError {
            field: f,
            message,
            fix: fix.into(),
        })
    };
    if rc.name.is_empty()
        || rc.name.len() > 64
        || !rc
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        err(
            format!("{field}.name"),
            format!("{:?} is not a rule name", rc.name),
            "use 1-64 characters of A-Z, a-z, 0-9, '-' or '_' (it labels metrics)",
        );
    }
    let mut hosts = Vec::new();
    for (j, h) in rc.matches.hosts.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        let (pattern, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (
                HostPattern::Suffix(format!(".{rest}").into()),
                rest.to_owned(),
            ),
            None => (HostPattern::Exact(lower.as_str().into()), lower.clone()),
        };
        if rest.is_empty()
            || rest.contains([':', '*', '/'])
            || !rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            err(
                format!("{field}.match.hosts[{j}]"),
                format!("{h:?} is not a host or *.domain wildcard"),
                "use a host name without port, e.g. app.example.com or *.example.com",
            );
        }
        hosts.push(pattern);
    }
    let mut methods = Vec::new();
    for (j, m) in rc.matches.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            err(
                format!("{field}.match.methods[{j}]"),
                format!("{m:?} is not an upper-case HTTP method"),
                "use GET, POST, OPTIONS …",
            );
        }
        methods.push(m.as_str().into());
    }
    let mut paths = Vec::new();
    for (j, p) in rc.matches.paths.iter().enumerate() {
        match PathPattern::parse(p) {
            Ok(pattern) => paths.push(pattern),
            Err(e) => err(
                format!("{field}.match.paths[{j}]"),
                format!("{p:?}: {e}"),
                "use /exact/path, /one/*/segment or /prefix/**",
            ),
        }
    }
    let aal = match rc.aal.as_deref() {
        None | Some("") => None,
        Some("aal1") => Some(Aal::Aal1),
        Some("aal2") => Some(Aal::Aal2),
        Some(other) => {
            err(
                format!("{field}.aal"),
                format!("{other:?} is not an assurance level"),
                "use aal1 or aal2",
            );
            None
        }
    };
    if let Some(a) = &rc.audience
        && (a.is_empty() || a.len() > 256 || a.bytes().any(|b| b.is_ascii_control()))
    {
        err(
            format!("{field}.audience"),
            "must be 1-256 printable characters".into(),
            "use the audience your upstream expects, e.g. admin-api",
        );
    }
    let mut require = Vec::new();
    for (j, r) in rc.require.iter().enumerate() {
        match Requirement::compile(r) {
            Ok(req) => require.push(req),
            Err(e) => err(format!("{field}.require[{j}]"), e.to_string(), e.fix()),
        }
    }
    if rc.max_auth_age.is_some_and(|d| d.is_zero()) {
        err(
            format!("{field}.max_auth_age"),
            "must be greater than zero".into(),
            "use e.g. 15m, or remove it",
        );
    }
    if errors.len() > before {
        return None;
    }
    Some(Rule {
        hosts,
        methods,
        paths,
        policy: Policy {
            name: rc.name.as_str().into(),
            deny: false,
            anonymous: rc.anonymous,
            audience: rc.audience.as_deref().map(Into::into),
            aal,
            client_max_age: rc.client_max_age,
            require: require.into(),
            max_auth_age: rc.max_auth_age,
            credentials: if rc.credentials.is_empty() {
                default_credentials.into()
            } else {
                rc.credentials.as_slice().into()
            },
            scopes: rc.scopes.as_slice().into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MatchConfig, RequirementConfig};

    fn rule(name: &str, hosts: &[&str], methods: &[&str], paths: &[&str]) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            matches: MatchConfig {
                hosts: hosts.iter().map(|s| s.to_string()).collect(),
                methods: methods.iter().map(|s| s.to_string()).collect(),
                paths: paths.iter().map(|s| s.to_string()).collect(),
            },
            ..RuleConfig::default()
        }
    }

    fn table(rules: Vec<RuleConfig>) -> RouteTable {
        RouteTable::compile(&RoutesConfig {
            rules,
            ..RoutesConfig::default()
        })
        .unwrap()
    }

    fn name(t: &RouteTable, m: &str, h: &str, p: &str) -> String {
        t.select(m, &host_of(h), &normalise(p).unwrap())
            .policy()
            .name
            .to_string()
    }

    #[test]
    fn first_match_wins_across_hosts_methods_and_paths() {
        let t = table(vec![
            rule("public", &[], &[], &["/public/**", "/healthz"]),
            rule(
                "admin",
                &["app.example.com", "*.example.com"],
                &["GET", "POST"],
                &["/admin/**"],
            ),
            rule("api-any", &[], &[], &["/api/*/items"]),
            rule("catch", &["other.test"], &[], &[]),
        ]);
        assert_eq!(name(&t, "GET", "x", "/public/a.css"), "public");
        assert_eq!(name(&t, "GET", "x", "/healthz"), "public");
        assert_eq!(
            name(&t, "GET", "APP.example.com:8443", "/admin/users"),
            "admin"
        );
        assert_eq!(name(&t, "POST", "eu.example.com", "/admin"), "admin");
        assert_eq!(name(&t, "DELETE", "app.example.com", "/admin/x"), "default");
        assert_eq!(
            name(&t, "GET", "example.com", "/admin/x"),
            "default",
            "*. is not the apex"
        );
        assert_eq!(name(&t, "GET", "evil-example.com", "/admin/x"), "default");
        assert_eq!(name(&t, "GET", "x", "/api/v1/items"), "api-any");
        assert_eq!(name(&t, "GET", "other.test", "/anything"), "catch");
        assert_eq!(
            name(&t, "GET", "other.test", "/public/x"),
            "public",
            "earlier rule first"
        );
        // Normalisation happens before matching: no way into `public` from elsewhere.
        assert_eq!(
            name(&t, "GET", "app.example.com", "/public/../admin/x"),
            "admin"
        );
        assert_eq!(
            name(&t, "GET", "app.example.com", "/public/%2e%2e/admin/x"),
            "admin"
        );
        assert_eq!(name(&t, "GET", "x", "/healthz?x=/public/y"), "public");
        assert_eq!(name(&t, "GET", "x", "/admin/x?/public/"), "default");
    }

    #[test]
    fn named_rules_and_names_are_checked() {
        let t = table(vec![rule("a", &[], &[], &["/a"])]);
        assert!(t.named("a").is_some());
        assert!(t.named("b").is_none());
        let errs = RouteTable::compile(&RoutesConfig {
            rules: vec![
                rule("a", &[], &[], &["/a"]),
                rule("a", &["bad host:80"], &["get"], &["nope"]),
                rule("with space", &[], &[], &[]),
            ],
            ..RoutesConfig::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "routes.rules[1].name",
                "routes.rules[1].match.hosts[0]",
                "routes.rules[1].match.methods[0]",
                "routes.rules[1].match.paths[0]",
                "routes.rules[2].name"
            ]
        );
        assert!(errs.iter().all(|e| !e.fix.is_empty()));
        let dup = RouteTable::compile(&RoutesConfig {
            rules: vec![rule("a", &[], &[], &["/a"]), rule("a", &[], &[], &["/b"])],
            ..RoutesConfig::default()
        })
        .unwrap_err();
        assert_eq!(dup[0].field, "routes.rules[1].name");
    }

    #[test]
    fn shadowed_rules_are_found() {
        let t = table(vec![
            rule("all-public", &[], &[], &["/public/**"]),
            rule("css", &[], &["GET"], &["/public/css/*"]),
            rule("admin-host", &["*.example.com"], &[], &["/admin/**"]),
            rule("admin-app", &["app.example.com"], &["GET"], &["/admin/x"]),
            rule("not-shadowed", &["example.com"], &[], &["/admin/x"]),
        ]);
        let names: Vec<(String, String)> = t
            .shadowed()
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("css".to_string(), "all-public".to_string()),
                ("admin-app".to_string(), "admin-host".to_string())
            ]
        );
    }

    #[test]
    fn very_deep_prefixes_still_match_in_order() {
        // Twenty nested literal prefixes, each with a rule: past MAX_LISTS the table scans.
        let mut rules = Vec::new();
        let mut p = String::new();
        for i in 0..20 {
            p.push_str(&format!("/s{i}"));
            rules.push(rule(&format!("r{i}"), &[], &["PUT"], &[&format!("{p}/**")]));
        }
        rules.push(rule("deep", &[], &[], &[&format!("{p}/x")]));
        let t = table(rules);
        assert_eq!(name(&t, "GET", "h", &format!("{p}/x")), "deep");
        assert_eq!(name(&t, "PUT", "h", &format!("{p}/x")), "r0");
    }

    #[test]
    fn the_index_keeps_rule_order() {
        // An unindexed rule (no paths) between indexed ones must still win in order.
        let t = table(vec![
            rule("first", &[], &["PUT"], &[]),
            rule("second", &[], &[], &["/x/**"]),
            rule("third", &[], &[], &["/**"]),
        ]);
        assert_eq!(name(&t, "PUT", "h", "/x/1"), "first");
        assert_eq!(name(&t, "GET", "h", "/x/1"), "second");
        assert_eq!(name(&t, "GET", "h", "/y"), "third");
    }

    #[test]
    fn requirements_compile_and_collect_pointers() {
        let mut r = rule("r", &[], &[], &["/r"]);
        r.require = vec![RequirementConfig {
            claim: "/identity/metadata_public/role".into(),
            one_of: Some(vec!["admin".into()]),
            ..RequirementConfig::default()
        }];
        let t = table(vec![r]);
        assert_eq!(&*t.pointers()[0], "/identity/metadata_public/role");
    }

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(host_of("App.Example.COM:8443"), "app.example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("example.com."), "example.com");
    }
}
