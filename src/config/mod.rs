//! YAML configuration: file model ([`file`]) → validated runtime model ([`runtime`]).
//!
//! [`load`] reports every problem it finds at once, each prefixed with its YAML path
//! (`routes[2].upstream: invalid URL "htp:/x"`). Sections and list entries are deserialized
//! one by one so that one bad entry does not hide the others.

mod audit;
mod curation;
pub mod file;
pub mod runtime;
pub mod secret;
mod spend;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use pingora::utils::tls::{WrappedX509, parse_x509};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use file::*;
pub use runtime::*;
pub use secret::Secret;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// YAML path, e.g. `routes[2].upstream` (`.` for the document root).
    pub path: String,
    pub message: String,
}

/// All problems found in a config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", issue.path, issue.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a config file, resolving `${ENV}` secrets from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigIssue {
            path: ".".into(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, |var| std::env::var(var).ok())
}

/// Validates YAML text. Relative file paths (`ca_file`) are resolved against `base_dir`.
pub fn parse(
    text: &str,
    base_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        issues: Vec::new(),
        base_dir,
        env: &env,
    };
    let doc: Value = match serde_yaml::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(doc) => doc,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigIssue {
                path: ".".into(),
                message: format!("invalid YAML: {e}"),
            }]));
        }
    };
    let Value::Mapping(mut root) = doc else {
        return Err(ConfigErrors(vec![ConfigIssue {
            path: ".".into(),
            message: "the file must be a mapping of sections".into(),
        }]));
    };
    for key in root.keys() {
        match key.as_str() {
            Some(k) if SECTIONS.contains(&k) => {}
            _ => v.issue(
                &yaml_key(key),
                format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
            ),
        }
    }
    let mut take = |name: &str| root.remove(name);

    let server = v
        .section::<FileServer>(take("server"), "server")
        .unwrap_or_default();
    let upstream = v
        .section::<FileUpstream>(take("upstream"), "upstream")
        .unwrap_or_default();
    let admin = v
        .section::<FileAdmin>(take("admin"), "admin")
        .unwrap_or_default();
    let dns = v.section::<FileDns>(take("dns"), "dns").unwrap_or_default();
    let connect = v
        .section::<FileConnect>(take("connect"), "connect")
        .unwrap_or_default();
    let payments = v
        .section::<FilePayments>(take("payments"), "payments")
        .unwrap_or_default();
    let database = v
        .section::<FileDatabase>(take("database"), "database")
        .unwrap_or_default();
    let redis = v.section::<FileRedis>(take("redis"), "redis");
    let budgets = v
        .section::<FileBudgets>(take("budgets"), "budgets")
        .unwrap_or_default();
    let cache = v
        .section::<FileCache>(take("cache"), "cache")
        .unwrap_or_default();
    let analytics = v
        .section::<FileAnalytics>(take("analytics"), "analytics")
        .unwrap_or_default();
    let curation = v
        .section::<FileCuration>(take("curation"), "curation")
        .unwrap_or_default();
    let catalog = v.list::<FileCategory>(take("catalog").unwrap_or(Value::Null), "catalog");
    let audit = v.section::<FileAudit>(take("audit"), "audit");
    let stages = take("stages").map(|value| v.list::<FileStage>(value, "stages"));
    let projects = v.list::<FileProject>(take("projects").unwrap_or(Value::Null), "projects");
    let routes = v.list::<FileRoute>(take("routes").unwrap_or(Value::Null), "routes");

    let payments = v.payments(payments);
    let redis = redis.and_then(|r| v.redis(r));
    let budgets = v.budgets(budgets, redis.is_some());
    let cache = v.cache(cache, redis.as_ref());
    let projects = v.projects(projects, &payments, &budgets);
    let database = v.database(database);
    let analytics = v.analytics(analytics, &database);
    let mut curation = v.curation(curation, catalog, &analytics);
    let routes = v.routes(routes);
    join_candidates(&mut curation, &routes);
    if !analytics.enabled
        && let Some(route) = routes.iter().find(|r| r.smart.is_some())
    {
        v.issue(
            "analytics.enabled",
            format!(
                "route {:?} chooses among candidates from analytics scores: analytics must be enabled",
                route.name
            ),
        );
    }
    let admin = v.admin(admin);
    let wallets: Vec<_> = projects
        .iter()
        .filter_map(|p| p.wallet.as_ref().map(|w| w.0.address()))
        .collect();
    let audit = v.audit(audit, &admin, &wallets);
    if let Some(a) = &audit
        && a.mode == crate::audit::Mode::Hourly
        && !a.agents.is_empty()
        && !analytics.enabled
    {
        v.issue(
            "analytics.enabled",
            "audit.mode hourly rates endpoints from the analytics rollups: analytics must be enabled",
        );
    }
    let config = Config {
        server: v.server(server),
        upstream: v.upstream(upstream),
        admin,
        dns: DnsSettings {
            timeout: Duration::from_millis(v.positive(
                dns.timeout_ms,
                DEFAULT_DNS_TIMEOUT_MS,
                "dns.timeout_ms",
            )),
            cache_size: dns.cache_size.unwrap_or(DEFAULT_DNS_CACHE_SIZE),
        },
        connect: v.connect(connect),
        database,
        redis,
        budgets,
        cache,
        analytics,
        curation,
        audit,
        stages: v.stages(stages),
        projects,
        payments,
        routes,
    };
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.issues))
    }
}

/// Smart routes' candidates are members of their route's catalog category (created when the
/// catalog does not name it).
fn join_candidates(curation: &mut crate::curation::Settings, routes: &[Arc<Route>]) {
    for smart in routes.iter().filter_map(|r| r.smart.as_ref()) {
        let at = match curation
            .categories
            .iter()
            .position(|c| c.name == smart.category)
        {
            Some(i) => i,
            None => {
                curation.categories.push(crate::curation::Category {
                    name: smart.category.clone(),
                    description: None,
                    endpoints: Vec::new(),
                });
                curation.categories.len() - 1
            }
        };
        let category = &mut curation.categories[at];
        for c in &smart.candidates {
            let key = c.endpoint_key();
            if !category.endpoints.iter().any(|m| m.pattern == key) {
                category.endpoints.push(crate::curation::Member {
                    pattern: key,
                    description: None,
                });
            }
        }
    }
}

/// The only environment variables a policy sent through the admin API may reference.
pub const API_POLICY_ENV_PREFIX: &str = "PAG0_WEBHOOK_";

/// Validates a policy document from the admin API (JSON, same shape as `projects[].policy`)
/// against the configured assets. Errors name the path inside the document (`policy.…`).
///
/// `${VAR}` references in such a document only resolve variables named
/// `PAG0_WEBHOOK_*` ([`API_POLICY_ENV_PREFIX`]): whoever holds the admin token must not be able
/// to send the wallet key or a database password to a webhook of their choosing.
pub fn parse_policy(
    doc: &serde_json::Value,
    payments: &Payments,
    budgets: &BudgetSettings,
) -> Result<crate::policy::Policy, Vec<String>> {
    let file: FilePolicy = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." {
            "policy".to_string()
        } else {
            format!("policy.{at}")
        };
        vec![format!("{at}: {}", e.inner())]
    })?;
    let env = |var: &str| {
        var.starts_with(API_POLICY_ENV_PREFIX)
            .then(|| std::env::var(var).ok())
            .flatten()
    };
    let mut v = Validator {
        issues: Vec::new(),
        base_dir: Path::new("."),
        env: &env,
    };
    let policy = v.policy(file, payments, budgets, "policy");
    if v.issues.is_empty() {
        Ok(policy)
    } else {
        Err(v
            .issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect())
    }
}

/// Upper bound on problems reported for one section or list entry.
const MAX_ERRORS_PER_SECTION: usize = 32;

/// Removes the mapping key that `path` points at (for a list element: the key holding the
/// list). Returns false when there is nothing left to remove (the error is about the node itself).
fn prune(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    // The last map key on the path is what gets removed.
    let Some(last_map) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let mut node = value;
    for segment in &segments[..last_map] {
        node = match (segment, node) {
            (Segment::Map { key }, Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Sequence(s)) => match s.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (segments[last_map], node) {
        (Segment::Map { key }, Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        _ => false,
    }
}

fn yaml_key(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// The default stage list when `stages:` is absent.
fn default_stages() -> Vec<StageConfig> {
    vec![
        StageConfig::Auth,
        StageConfig::SsrfGuard { allow: Vec::new() },
        StageConfig::RateLimit {
            default: RateLimit {
                requests_per_second: DEFAULT_RATE_LIMIT_RPS,
                burst: DEFAULT_RATE_LIMIT_BURST,
            },
        },
    ]
}

struct Validator<'a, E: Fn(&str) -> Option<String>> {
    issues: Vec<ConfigIssue>,
    base_dir: &'a Path,
    env: &'a E,
}

impl<E: Fn(&str) -> Option<String>> Validator<'_, E> {
    fn issue(&mut self, path: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Deserializes one section, recording every error with its full path. After an error the
    /// offending key is pruned and deserialization retried, so one typo does not hide the next;
    /// what remains is returned for semantic checks (the recorded issues already fail the load).
    fn section<T: DeserializeOwned>(&mut self, value: Option<Value>, path: &str) -> Option<T> {
        let mut value = value?;
        if value.is_null() {
            return None;
        }
        let mut pruned: Vec<String> = Vec::new();
        for _ in 0..MAX_ERRORS_PER_SECTION {
            let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let inner = error.path().to_string();
            let message = error.inner().to_string();
            // A required key we pruned ourselves is reported as missing: already covered.
            if pruned.iter().any(|p| {
                message == format!("missing field `{}`", p.rsplit('.').next().unwrap_or(p))
            }) {
                return None;
            }
            let full = match inner.as_str() {
                "." => path.to_string(),
                i if i.starts_with('[') => format!("{path}{i}"),
                i => format!("{path}.{i}"),
            };
            self.issue(&full, message);
            if !prune(&mut value, error.path()) {
                return None;
            }
            pruned.push(inner);
        }
        None
    }

    /// Entries keep their index in the file so later messages name the right entry.
    fn list<T: DeserializeOwned>(&mut self, value: Value, path: &str) -> Vec<(usize, T)> {
        match value {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    Some((i, self.section(Some(item), &format!("{path}[{i}]"))?))
                })
                .collect(),
            _ => {
                self.issue(path, "must be a list");
                Vec::new()
            }
        }
    }

    fn positive(&mut self, value: Option<u64>, default: u64, path: &str) -> u64 {
        match value {
            Some(0) => {
                self.issue(path, "must be greater than 0");
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn socket_addr(&mut self, raw: &str, path: &str) -> Option<SocketAddr> {
        match raw.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.issue(
                    path,
                    format!("invalid listen address {raw:?} (expected IP:PORT)"),
                );
                None
            }
        }
    }

    fn server(&mut self, f: FileServer) -> ServerSettings {
        let listen = match f.listen {
            None => vec![DEFAULT_PROXY_LISTEN.parse().expect("valid default")],
            Some(list) if list.is_empty() => {
                self.issue("server.listen", "needs at least one address");
                Vec::new()
            }
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, a)| self.socket_addr(a, &format!("server.listen[{i}]")))
                .collect(),
        };
        let threads = self.positive(
            f.threads.map(|t| t as u64),
            DEFAULT_THREADS as u64,
            "server.threads",
        ) as usize;
        let header_timeout = Duration::from_millis(self.positive(
            f.header_timeout_ms,
            DEFAULT_HEADER_TIMEOUT_MS,
            "server.header_timeout_ms",
        ));
        let max_header_bytes = match f.max_header_bytes {
            Some(n) if n < MIN_MAX_HEADER_BYTES => {
                self.issue(
                    "server.max_header_bytes",
                    format!("must be at least {MIN_MAX_HEADER_BYTES}"),
                );
                DEFAULT_MAX_HEADER_BYTES
            }
            Some(n) => n,
            None => DEFAULT_MAX_HEADER_BYTES,
        };
        ServerSettings {
            listen,
            threads,
            work_stealing: f.work_stealing.unwrap_or(DEFAULT_WORK_STEALING),
            upstream_keepalive_pool_size: f
                .upstream_keepalive_pool_size
                .unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE),
            grace_period: Duration::from_secs(
                f.grace_period_seconds
                    .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS),
            ),
            graceful_shutdown_timeout: Duration::from_secs(
                f.graceful_shutdown_timeout_seconds
                    .unwrap_or(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS),
            ),
            keepalive_request_limit: f.keepalive_request_limit,
            header_timeout,
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
            max_connections: f
                .max_connections
                .map(|n| self.positive(Some(n as u64), 1, "server.max_connections") as usize),
            pid_file: f.pid_file,
            upgrade_sock: f.upgrade_sock,
        }
    }

    fn upstream(&mut self, f: FileUpstream) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: Duration::from_millis(self.positive(
                f.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
                "upstream.connect_timeout_ms",
            )),
            read_timeout: Duration::from_millis(self.positive(
                f.read_timeout_ms,
                DEFAULT_READ_TIMEOUT_MS,
                "upstream.read_timeout_ms",
            )),
            write_timeout: Duration::from_millis(self.positive(
                f.write_timeout_ms,
                DEFAULT_WRITE_TIMEOUT_MS,
                "upstream.write_timeout_ms",
            )),
            idle_timeout: Duration::from_secs(
                f.idle_timeout_seconds
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECONDS),
            ),
            trust: self.upstream_trust(f.trust.unwrap_or_default()),
        }
    }

    fn upstream_trust(&mut self, entries: Vec<FileUpstreamTrust>) -> Vec<UpstreamTrust> {
        let mut out = Vec::new();
        for (i, t) in entries.into_iter().enumerate() {
            let path = format!("upstream.trust[{i}]");
            if t.hosts.is_empty() {
                self.issue(&format!("{path}.hosts"), "needs at least one host pattern");
            }
            let hosts = self.host_patterns(&t.hosts, &format!("{path}.hosts"));
            let ca_file = self.base_dir.join(&t.ca_file);
            match load_ca(&ca_file) {
                Ok(ca) => out.push(UpstreamTrust {
                    hosts,
                    trust_group: trust_group(&ca_file),
                    ca_file,
                    ca,
                }),
                Err(why) => self.issue(
                    &format!("{path}.ca_file"),
                    format!("{}: {why}", ca_file.display()),
                ),
            }
        }
        out
    }

    /// Parses host patterns (`host`, `*.domain`, `*`), recording each bad one at `path[i]`.
    fn host_patterns(&mut self, raw: &[String], path: &str) -> Vec<crate::policy::HostPattern> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let p = crate::policy::HostPattern::parse(r);
                if p.is_none() {
                    self.issue(
                        &format!("{path}[{i}]"),
                        format!("invalid host pattern {r:?} (host, *.domain or *)"),
                    );
                }
                p
            })
            .collect()
    }

    fn connect(&mut self, f: FileConnect) -> ConnectSettings {
        let mode = match f.mode.as_deref().unwrap_or(DEFAULT_CONNECT_MODE) {
            "intercept" => ConnectMode::Intercept,
            "tunnel" => ConnectMode::Tunnel,
            "off" => ConnectMode::Off,
            other => {
                self.issue(
                    "connect.mode",
                    format!("unknown mode {other:?}, expected intercept, tunnel or off"),
                );
                ConnectMode::Off
            }
        };
        let tunnel_only =
            self.host_patterns(&f.tunnel_only.unwrap_or_default(), "connect.tunnel_only");
        ConnectSettings {
            mode,
            ca_dir: self
                .base_dir
                .join(f.ca_dir.as_deref().unwrap_or(DEFAULT_CA_DIR)),
            tunnel_only,
            handshake_timeout: Duration::from_millis(self.positive(
                f.handshake_timeout_ms,
                DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
                "connect.handshake_timeout_ms",
            )),
            leaf_cache_size: self.positive(
                f.leaf_cache_size,
                DEFAULT_LEAF_CACHE_SIZE,
                "connect.leaf_cache_size",
            ),
            ports: self.connect_ports(f.ports),
            idle_timeout: Duration::from_secs(self.positive(
                f.idle_timeout_seconds,
                DEFAULT_TUNNEL_IDLE_TIMEOUT_SECONDS,
                "connect.idle_timeout_seconds",
            )),
        }
    }

    /// `connect.ports`: port numbers, or `"*"` alone for any port.
    fn connect_ports(&mut self, raw: Option<Vec<Value>>) -> Option<Vec<u16>> {
        let Some(raw) = raw else {
            return Some(DEFAULT_CONNECT_PORTS.to_vec());
        };
        if raw.len() == 1 && raw[0].as_str() == Some("*") {
            return None;
        }
        if raw.is_empty() {
            self.issue(
                "connect.ports",
                "needs at least one port (or [\"*\"] for any)",
            );
        }
        let mut ports = Vec::new();
        for (i, v) in raw.iter().enumerate() {
            match v
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
            {
                Some(p) => ports.push(p),
                None => self.issue(
                    &format!("connect.ports[{i}]"),
                    format!(
                        "invalid port {} (1-65535, or [\"*\"] alone for any)",
                        serde_yaml::to_string(v).unwrap_or_default().trim()
                    ),
                ),
            }
        }
        Some(ports)
    }

    fn admin(&mut self, f: FileAdmin) -> AdminSettings {
        let listen = f.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = self
            .socket_addr(listen, "admin.listen")
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default"));
        let token = match f.token {
            None => {
                self.issue(
                    "admin.token",
                    "is required (e.g. token: ${PAG0_ADMIN_TOKEN})",
                );
                None
            }
            Some(raw) => match Secret::resolve(&raw, self.env) {
                Ok(s) if s.expose().len() < 16 => {
                    self.issue("admin.token", "the token must be at least 16 characters");
                    None
                }
                Ok(s) => Some(s),
                Err(msg) => {
                    self.issue("admin.token", msg);
                    None
                }
            },
        };
        // An issue was recorded, so this placeholder never reaches a running config.
        let token = token.unwrap_or_else(Secret::unset);
        let explorer_tx_url = f.explorer_tx_url.filter(|raw| {
            let ok = url::Url::parse(raw).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                self.issue(
                    "admin.explorer_tx_url",
                    "must be an http(s) URL prefix (the transaction hash is appended)",
                );
            }
            ok
        });
        let header_timeout = Duration::from_millis(self.positive(
            f.header_timeout_ms,
            DEFAULT_ADMIN_HEADER_TIMEOUT_MS,
            "admin.header_timeout_ms",
        ));
        let idle_timeout = Duration::from_secs(self.positive(
            f.idle_timeout_seconds,
            DEFAULT_ADMIN_IDLE_TIMEOUT_SECONDS,
            "admin.idle_timeout_seconds",
        ));
        let max_connections = f
            .max_connections
            .map(|n| self.positive(Some(n as u64), 1, "admin.max_connections") as usize);
        AdminSettings {
            listen,
            token,
            explorer_tx_url,
            header_timeout,
            idle_timeout,
            max_connections,
        }
    }

    fn rate_limit(&mut self, f: Option<FileRateLimit>, path: &str) -> Option<RateLimit> {
        let f = f?;
        let rps = self.positive(
            f.requests_per_second.map(u64::from),
            u64::from(DEFAULT_RATE_LIMIT_RPS),
            &format!("{path}.requests_per_second"),
        );
        let burst = self.positive(
            f.burst.map(u64::from),
            rps.max(u64::from(DEFAULT_RATE_LIMIT_BURST.min(rps as u32))),
            &format!("{path}.burst"),
        );
        Some(RateLimit {
            requests_per_second: rps as u32,
            burst: burst as u32,
        })
    }

    fn stages(&mut self, stages: Option<Vec<(usize, FileStage)>>) -> Vec<StageConfig> {
        let Some(stages) = stages else {
            return default_stages();
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, stage) in stages {
            let path = format!("stages[{i}]");
            let stage = match stage {
                FileStage::Auth {} => StageConfig::Auth,
                FileStage::Payment {} => StageConfig::Payment,
                FileStage::Policy {} => StageConfig::Policy,
                FileStage::Cache {
                    default_ttl_seconds,
                    max_object_bytes,
                    cache_404,
                    rules,
                } => StageConfig::Cache(Arc::new(self.cache_rules(
                    default_ttl_seconds,
                    max_object_bytes,
                    cache_404,
                    rules,
                    &path,
                ))),
                FileStage::Idempotency { window_seconds } => StageConfig::Idempotency {
                    window: Duration::from_secs(self.positive(
                        window_seconds,
                        DEFAULT_IDEMPOTENCY_WINDOW_SECONDS,
                        &format!("{path}.window_seconds"),
                    )),
                },
                FileStage::SsrfGuard { allow } => StageConfig::SsrfGuard {
                    allow: allow
                        .iter()
                        .enumerate()
                        .filter_map(|(j, net)| match parse_net(net) {
                            Some(n) => Some(n),
                            None => {
                                self.issue(
                                    &format!("{path}.allow[{j}]"),
                                    format!("invalid CIDR or IP address {net:?}"),
                                );
                                None
                            }
                        })
                        .collect(),
                },
                FileStage::RateLimit { default } => StageConfig::RateLimit {
                    default: self
                        .rate_limit(default, &format!("{path}.default"))
                        .unwrap_or(RateLimit {
                            requests_per_second: DEFAULT_RATE_LIMIT_RPS,
                            burst: DEFAULT_RATE_LIMIT_BURST,
                        }),
                },
            };
            if !seen.insert(stage.kind()) {
                self.issue(&path, format!("stage {} is listed twice", stage.kind()));
            }
            if matches!(stage, StageConfig::Auth) && seen.contains("cache") {
                self.issue(
                    &path,
                    "auth must come before cache (entries are kept per project)",
                );
            }
            if matches!(stage, StageConfig::Idempotency { .. }) && seen.contains("payment") {
                self.issue(
                    &path,
                    "idempotency must come before payment (it records the payment made for a key)",
                );
            }
            if matches!(stage, StageConfig::Cache(_)) && seen.contains("payment") {
                self.issue(
                    &path,
                    "cache must come before payment (an agent's own payment header bypasses the cache)",
                );
            }
            out.push(stage);
        }
        out
    }

    fn cache(&mut self, f: FileCache, redis: Option<&RedisSettings>) -> CacheSettings {
        let redis = match (f.redis, redis) {
            (Some(true), None) => {
                self.issue("cache.redis", "needs the redis: section");
                None
            }
            (Some(false), _) | (None, None) => None,
            (_, Some(r)) => Some((r.url.expose().to_string(), r.key_prefix.clone(), r.timeout)),
        };
        CacheSettings {
            store: crate::cache::StoreSettings {
                memory_bytes: f.memory_bytes.unwrap_or(DEFAULT_CACHE_MEMORY_BYTES),
                redis,
            },
            lock_timeout: Duration::from_millis(self.positive(
                f.lock_timeout_ms,
                DEFAULT_CACHE_LOCK_TIMEOUT_MS,
                "cache.lock_timeout_ms",
            )),
        }
    }

    fn cache_rules(
        &mut self,
        default_ttl_seconds: Option<u64>,
        max_object_bytes: Option<u64>,
        cache_404: bool,
        rules: Vec<FileCacheRule>,
        path: &str,
    ) -> CacheRules {
        let max_object_bytes = self.positive(
            max_object_bytes,
            DEFAULT_CACHE_MAX_OBJECT_BYTES,
            &format!("{path}.max_object_bytes"),
        );
        if max_object_bytes > u64::from(u32::MAX) {
            self.issue(
                &format!("{path}.max_object_bytes"),
                format!("must be at most {} (4 GiB)", u32::MAX),
            );
        }
        let rules = rules
            .into_iter()
            .enumerate()
            .filter_map(|(j, r)| {
                let rule_path = format!("{path}.rules[{j}]");
                if r.pattern.is_empty() {
                    self.issue(&format!("{rule_path}.match"), "must not be empty");
                }
                match (r.ttl_seconds, r.exclude) {
                    (Some(_), true) => {
                        self.issue(&rule_path, "either ttl_seconds or exclude: true, not both");
                        None
                    }
                    (None, false) => {
                        self.issue(&rule_path, "needs ttl_seconds or exclude: true");
                        None
                    }
                    (Some(ttl), false) => Some(CacheRule {
                        pattern: r.pattern.to_ascii_lowercase(),
                        ttl: Some(Duration::from_secs(
                            self.ttl(ttl, &format!("{rule_path}.ttl_seconds")),
                        )),
                    }),
                    (None, true) => Some(CacheRule {
                        pattern: r.pattern.to_ascii_lowercase(),
                        ttl: None,
                    }),
                }
            })
            .collect();
        CacheRules {
            default_ttl: Duration::from_secs(self.ttl(
                default_ttl_seconds.unwrap_or(DEFAULT_CACHE_TTL_SECONDS),
                &format!("{path}.default_ttl_seconds"),
            )),
            max_object_bytes: max_object_bytes.min(u64::from(u32::MAX)) as usize,
            cache_404,
            rules,
        }
    }

    /// A cache TTL in seconds: 1 to [`MAX_CACHE_TTL_SECONDS`].
    fn ttl(&mut self, seconds: u64, path: &str) -> u64 {
        if seconds == 0 || seconds > MAX_CACHE_TTL_SECONDS {
            self.issue(
                path,
                format!("must be between 1 and {MAX_CACHE_TTL_SECONDS} (one year)"),
            );
            return DEFAULT_CACHE_TTL_SECONDS;
        }
        seconds
    }

    fn route_cache(&mut self, f: Option<FileRouteCache>, path: &str) -> RouteCache {
        let f = f.unwrap_or_default();
        let defaults = RouteCache::default();
        RouteCache {
            enabled: f.enabled.unwrap_or(defaults.enabled),
            shared: f.shared.unwrap_or(defaults.shared),
            post: f.post.unwrap_or(defaults.post),
            ttl: f
                .ttl_seconds
                .map(|t| Duration::from_secs(self.ttl(t, &format!("{path}.ttl_seconds")))),
        }
    }

    fn projects(
        &mut self,
        projects: Vec<(usize, FileProject)>,
        payments: &Payments,
        budgets: &BudgetSettings,
    ) -> Vec<Arc<Project>> {
        let mut ids = HashSet::new();
        let mut all_keys = HashSet::new();
        let mut out = Vec::new();
        for (i, p) in projects {
            let path = format!("projects[{i}]");
            if p.id.is_empty()
                || !p
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                self.issue(
                    &format!("{path}.id"),
                    format!(
                        "invalid project id {:?} (letters, digits, - and _ only)",
                        p.id
                    ),
                );
            } else if !ids.insert(p.id.clone()) {
                self.issue(
                    &format!("{path}.id"),
                    format!("duplicate project id {:?}", p.id),
                );
            }
            if p.keys.is_empty() {
                self.issue(
                    &format!("{path}.keys"),
                    "needs at least one key hash (create one with `pag0 keys new`)",
                );
            }
            let mut key_hashes = Vec::new();
            for (j, k) in p.keys.iter().enumerate() {
                match parse_key_hash(k) {
                    Some(h) if !all_keys.insert(h) => self.issue(&format!("{path}.keys[{j}]"), "this key hash is used twice"),
                    Some(h) => key_hashes.push(h),
                    None => self.issue(&format!("{path}.keys[{j}]"), "expected sha256:<64 hex digits> (the hash printed by `pag0 keys new`, never the key itself)"),
                }
            }
            let rate_limit = self.rate_limit(p.rate_limit, &format!("{path}.rate_limit"));
            let has_wallet = p.wallet.is_some();
            let wallet = p
                .wallet
                .and_then(|w| self.wallet(w, &format!("{path}.wallet")));
            let mode = match (p.mode.as_deref(), has_wallet) {
                (None, true) | (Some("wallet"), true) => PaymentMode::Wallet,
                (None, false) | (Some("off"), _) => PaymentMode::Off,
                (Some("relay"), false) => PaymentMode::Relay,
                (Some("relay"), true) => {
                    self.issue(
                        &format!("{path}.mode"),
                        "relay projects do not sign: remove the wallet",
                    );
                    PaymentMode::Relay
                }
                (Some("wallet"), false) => {
                    self.issue(&format!("{path}.mode"), "wallet mode needs a wallet");
                    PaymentMode::Off
                }
                (Some(other), _) => {
                    self.issue(
                        &format!("{path}.mode"),
                        format!("unknown mode {other:?}, expected wallet, relay or off"),
                    );
                    PaymentMode::Off
                }
            };
            let policy = p
                .policy
                .map(|f| Arc::new(self.policy(f, payments, budgets, &format!("{path}.policy"))));
            out.push(Arc::new(Project {
                id: p.id,
                key_hashes,
                rate_limit,
                wallet,
                mode,
                policy,
            }));
        }
        out
    }

    fn wallet(&mut self, w: FileWallet, path: &str) -> Option<Wallet> {
        let key = self.private_key(w, path)?;
        Some(Wallet(Arc::new(crate::x402::Eip3009Signer::new(key))))
    }

    /// A private key from exactly one of `private_key` (env), `key_file` or `keystore`.
    /// No message ever contains the key.
    fn private_key(
        &mut self,
        w: FileWallet,
        path: &str,
    ) -> Option<alloy_signer_local::PrivateKeySigner> {
        use alloy_signer_local::PrivateKeySigner;
        let sources = [
            w.private_key.is_some(),
            w.key_file.is_some(),
            w.keystore.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            self.issue(
                path,
                "needs exactly one of private_key, key_file or keystore",
            );
            return None;
        }
        if w.password.is_some() != w.keystore.is_some() {
            self.issue(
                &format!("{path}.password"),
                "a password goes with (and only with) a keystore",
            );
            return None;
        }
        let key = if let Some(raw) = w.private_key {
            let secret = self.secret(&raw, &format!("{path}.private_key"))?;
            key_from_hex(secret.expose())
                .map_err(|msg| (format!("{path}.private_key"), format!("{msg} in {secret}")))
        } else if let Some(file) = w.key_file {
            let file = self.base_dir.join(file);
            read_key_file(&file).map_err(|why| {
                (
                    format!("{path}.key_file"),
                    format!("{}: {why}", file.display()),
                )
            })
        } else {
            let file = self.base_dir.join(w.keystore.unwrap_or_default());
            let password =
                self.secret(&w.password.unwrap_or_default(), &format!("{path}.password"))?;
            PrivateKeySigner::decrypt_keystore(&file, password.expose()).map_err(|_| {
                (
                    format!("{path}.keystore"),
                    format!(
                        "{}: cannot decrypt (wrong password or not a keystore)",
                        file.display()
                    ),
                )
            })
        };
        match key {
            Ok(key) => Some(key),
            Err((at, msg)) => {
                self.issue(&at, msg);
                None
            }
        }
    }

    /// EVM addresses; each invalid one is reported at `path[i]`.
    fn addresses(&mut self, list: &[String], path: &str) -> Vec<alloy_primitives::Address> {
        list.iter()
            .enumerate()
            .filter_map(|(i, raw)| match raw.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.issue(&format!("{path}[{i}]"), format!("invalid address {raw:?}"));
                    None
                }
            })
            .collect()
    }

    fn secret(&mut self, raw: &str, path: &str) -> Option<Secret> {
        match Secret::resolve(raw, self.env) {
            Ok(s) => Some(s),
            Err(msg) => {
                self.issue(path, msg);
                None
            }
        }
    }

    fn payments(&mut self, f: FilePayments) -> Payments {
        let mut assets: Vec<Asset> = Vec::new();
        for (i, a) in f.assets.iter().enumerate() {
            let path = format!("payments.assets[{i}]");
            let chain_id = crate::x402::networks::chain_id(&a.network);
            if chain_id.is_none() {
                self.issue(
                    &format!("{path}.network"),
                    format!(
                        "unknown EVM network {:?} (use eip155:<chain id>)",
                        a.network
                    ),
                );
            }
            let address: Option<alloy_primitives::Address> = a.address.parse().ok();
            if address.is_none() {
                self.issue(
                    &format!("{path}.address"),
                    format!("invalid address {:?}", a.address),
                );
            }
            if a.decimals > 36 {
                self.issue(&format!("{path}.decimals"), "must be at most 36");
            }
            let ceiling_text = a
                .max_per_payment
                .as_deref()
                .unwrap_or(DEFAULT_MAX_PER_PAYMENT);
            let ceiling = match parse_units(ceiling_text, a.decimals.min(36), &a.symbol) {
                Ok(c) => Some(c),
                Err(why) => {
                    self.issue(
                        &format!("{path}.max_per_payment"),
                        format!("{why} ({ceiling_text:?})"),
                    );
                    None
                }
            };
            if let (Some(chain_id), Some(address), Some(max_per_payment)) =
                (chain_id, address, ceiling)
            {
                if assets
                    .iter()
                    .any(|x| x.chain_id == chain_id && x.address == address)
                {
                    self.issue(&path, "this asset is listed twice");
                }
                let eip712 = match &a.eip712 {
                    Some(d) if d.name.is_empty() || d.version.is_empty() => {
                        self.issue(
                            &format!("{path}.eip712"),
                            "name and version must not be empty",
                        );
                        None
                    }
                    Some(d) => Some((d.name.clone(), d.version.clone())),
                    None => crate::x402::networks::known_domain(chain_id, address)
                        .map(|(n, v)| (n.to_string(), v.to_string())),
                };
                assets.push(Asset {
                    chain_id,
                    address,
                    symbol: a.symbol.clone(),
                    decimals: a.decimals,
                    max_per_payment,
                    eip712,
                });
            }
        }
        let pay_to = self.addresses(&f.pay_to, "payments.pay_to");
        let schemes = f
            .schemes
            .unwrap_or_else(|| DEFAULT_SCHEMES.iter().map(|s| s.to_string()).collect());
        let price_memory = Duration::from_secs(
            f.price_memory_seconds
                .unwrap_or(DEFAULT_PRICE_MEMORY_SECONDS),
        );
        let facilitator = f.facilitator.and_then(|fc| {
            let url_ok =
                url::Url::parse(&fc.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !url_ok {
                self.issue(
                    "payments.facilitator.url",
                    format!("invalid URL {:?} (http or https)", fc.url),
                );
            }
            let token = fc
                .token
                .and_then(|t| self.secret(&t, "payments.facilitator.token"));
            let timeout = Duration::from_millis(self.positive(
                fc.timeout_ms,
                DEFAULT_FACILITATOR_TIMEOUT_MS,
                "payments.facilitator.timeout_ms",
            ));
            url_ok.then_some(FacilitatorConfig {
                url: fc.url,
                token,
                verify_before_pay: fc.verify_before_pay,
                timeout,
            })
        });
        let signer_threads = f
            .signer_threads
            .unwrap_or(crate::x402::pool::DEFAULT_SIGNER_THREADS as u64);
        if signer_threads > MAX_SIGNER_THREADS {
            self.issue(
                "payments.signer_threads",
                format!("at most {MAX_SIGNER_THREADS}"),
            );
        }
        let max_authorization_seconds = f
            .max_authorization_seconds
            .unwrap_or(DEFAULT_MAX_AUTHORIZATION_SECONDS);
        if max_authorization_seconds == 0 || max_authorization_seconds > MAX_AUTHORIZATION_SECONDS {
            self.issue(
                "payments.max_authorization_seconds",
                format!("must be between 1 and {MAX_AUTHORIZATION_SECONDS}"),
            );
        }
        let offer_timeout = Duration::from_millis(self.positive(
            f.offer_timeout_ms,
            DEFAULT_OFFER_TIMEOUT_MS,
            "payments.offer_timeout_ms",
        ));
        let mut rpc = Vec::new();
        for (network, raw) in &f.rpc {
            let path = format!("payments.rpc.{network}");
            let Some(chain_id) = crate::x402::networks::chain_id(network) else {
                self.issue(
                    &path,
                    format!("unknown EVM network {network:?} (use eip155:<chain id>)"),
                );
                continue;
            };
            // A plain URL prints as itself; one with an API key comes from the environment.
            let Some(url) = self.rpc_url(raw, &path) else {
                continue;
            };
            rpc.push((crate::x402::networks::caip2(chain_id), url));
        }
        Payments {
            assets,
            schemes,
            pay_to,
            price_memory,
            facilitator,
            rpc,
            signer_threads: signer_threads.min(MAX_SIGNER_THREADS) as usize,
            max_authorization_seconds: max_authorization_seconds
                .clamp(1, MAX_AUTHORIZATION_SECONDS),
            offer_timeout,
        }
    }

    fn routes(&mut self, routes: Vec<(usize, FileRoute)>) -> Vec<Arc<Route>> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in routes {
            let path = format!("routes[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.issue(
                    &format!("{path}.name"),
                    format!(
                        "invalid route name {:?} (letters, digits, -, _ and . only)",
                        r.name
                    ),
                );
            } else if !names.insert(r.name.clone()) {
                self.issue(
                    &format!("{path}.name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            if r.host.is_none() && r.path_prefix.is_none() {
                self.issue(&path, "needs host, path_prefix or both");
            }
            if let Some(prefix) = &r.path_prefix
                && !prefix.starts_with('/')
            {
                self.issue(
                    &format!("{path}.path_prefix"),
                    format!("must start with '/' (got {prefix:?})"),
                );
            }
            let (upstream, smart) = self.route_upstreams(&r, &path);
            let ca_file = r.ca_file.as_ref().map(|f| self.base_dir.join(f));
            let ca = match &ca_file {
                None => None,
                Some(file) => match load_ca(file) {
                    Ok(ca) => Some(ca),
                    Err(why) => {
                        self.issue(
                            &format!("{path}.ca_file"),
                            format!("{}: {why}", file.display()),
                        );
                        None
                    }
                },
            };
            if let (Some(upstream), true) = (upstream, ca.is_some() || ca_file.is_none()) {
                out.push(Arc::new(Route {
                    name: r.name,
                    host: r.host.map(|h| h.to_ascii_lowercase()),
                    path_prefix: r.path_prefix.map(|p| p.trim_end_matches('/').to_string()),
                    upstream,
                    strip_prefix: r.strip_prefix.unwrap_or(DEFAULT_STRIP_PREFIX),
                    trust_group: ca_file.as_ref().map_or(0, |f| trust_group(f)),
                    cache: self.route_cache(r.cache, &format!("{path}.cache")),
                    ca,
                    ca_file,
                    smart,
                }));
            }
        }
        out
    }
}

impl<E: Fn(&str) -> Option<String>> Validator<'_, E> {
    /// A route's `upstream`, or a smart route's `category` + `candidates` (the first
    /// candidate is then its `upstream`).
    fn route_upstreams(
        &mut self,
        r: &FileRoute,
        path: &str,
    ) -> (Option<UpstreamUrl>, Option<SmartRoute>) {
        let parse = |v: &mut Self, raw: &str, at: &str| match parse_upstream(raw) {
            Ok(u) => Some(u),
            Err(why) => {
                v.issue(at, format!("invalid URL {raw:?}: {why}"));
                None
            }
        };
        let smart_keys = r.category.is_some()
            || r.candidates.is_some()
            || r.explore.is_some()
            || r.breaker.is_some();
        match (&r.upstream, smart_keys) {
            (Some(raw), false) => return (parse(self, raw, &format!("{path}.upstream")), None),
            (Some(_), true) => {
                self.issue(
                    path,
                    "has both upstream and smart-route keys (category, candidates, explore, breaker): use one or the other",
                );
                return (None, None);
            }
            (None, false) => {
                self.issue(path, "needs upstream, or category and candidates");
                return (None, None);
            }
            (None, true) => {}
        }
        let category = match r.category.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() && c.len() <= 64 && !c.chars().any(char::is_control) => {
                c.to_string()
            }
            Some(_) => {
                self.issue(
                    &format!("{path}.category"),
                    "must be 1 to 64 printable characters",
                );
                return (None, None);
            }
            None => {
                self.issue(
                    &format!("{path}.category"),
                    "a route with candidates names its catalog category",
                );
                return (None, None);
            }
        };
        let raw = r.candidates.as_deref().unwrap_or_default();
        if raw.is_empty() {
            self.issue(
                &format!("{path}.candidates"),
                "must list at least one upstream",
            );
            return (None, None);
        }
        let mut candidates: Vec<UpstreamUrl> = Vec::new();
        for (j, c) in raw.iter().enumerate() {
            let at = format!("{path}.candidates[{j}].upstream");
            if let Some(u) = parse(self, &c.upstream, &at) {
                if candidates
                    .iter()
                    .any(|k| k.endpoint_key() == u.endpoint_key())
                {
                    self.issue(&at, format!("{:?} is listed twice", c.upstream));
                } else {
                    candidates.push(u);
                }
            }
        }
        let explore = match r.explore {
            None => DEFAULT_EXPLORE,
            Some(e) if (0.0..=0.5).contains(&e) => e,
            Some(_) => {
                self.issue(&format!("{path}.explore"), "must be from 0 to 0.5");
                DEFAULT_EXPLORE
            }
        };
        let breaker = r.breaker.as_ref();
        let breaker_failures = self.positive(
            breaker.and_then(|b| b.failures).map(u64::from),
            u64::from(DEFAULT_BREAKER_FAILURES),
            &format!("{path}.breaker.failures"),
        );
        let mut open_seconds = self.positive(
            breaker.and_then(|b| b.open_seconds),
            DEFAULT_BREAKER_OPEN_SECONDS,
            &format!("{path}.breaker.open_seconds"),
        );
        if open_seconds > MAX_BREAKER_OPEN_SECONDS {
            self.issue(
                &format!("{path}.breaker.open_seconds"),
                format!("must be at most {MAX_BREAKER_OPEN_SECONDS} (a day)"),
            );
            open_seconds = DEFAULT_BREAKER_OPEN_SECONDS;
        }
        if candidates.len() != raw.len() {
            return (None, None);
        }
        (
            candidates.first().cloned(),
            Some(SmartRoute {
                category,
                keys: candidates.iter().map(UpstreamUrl::endpoint_key).collect(),
                candidates,
                explore,
                breaker_failures: breaker_failures.min(u64::from(u32::MAX)) as u32,
                breaker_open: Duration::from_secs(open_seconds),
            }),
        )
    }
}

/// A non-zero pool partition id for upstream connections verified against `ca_file`.
fn trust_group(ca_file: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ca_file.hash(&mut h);
    h.finish() | 1
}

/// Converts a decimal amount in asset units (`"2.50"` or `"2.50 USDC"`) to base units, exactly
/// (no floating point). The optional symbol must match the asset's.
pub fn parse_units(
    raw: &str,
    decimals: u8,
    symbol: &str,
) -> Result<alloy_primitives::U256, String> {
    use alloy_primitives::U256;
    let mut parts = raw.split_whitespace();
    let number = parts.next().ok_or("empty amount")?;
    if let Some(sym) = parts.next()
        && sym != symbol
    {
        return Err(format!("symbol {sym} does not match the asset ({symbol})"));
    }
    if parts.next().is_some() {
        return Err("expected \"<amount> [SYMBOL]\"".into());
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return Err("not a number".into());
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a decimal number".into());
    }
    if frac.len() > decimals as usize {
        return Err(format!("more than {decimals} decimal places"));
    }
    let digits = format!("{int}{frac:0<width$}", width = decimals as usize);
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(U256::ZERO);
    }
    U256::from_str_radix(digits, 10).map_err(|_| "amount too large".to_string())
}

/// Reads a hex private key from a file that only its owner can read. Errors never contain the key.
/// A hex private key (`0x…` or bare). The error never contains the key.
fn key_from_hex(hex_key: &str) -> Result<alloy_signer_local::PrivateKeySigner, &'static str> {
    let hex_key = hex_key.trim();
    let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| "invalid private key")?;
    alloy_signer_local::PrivateKeySigner::from_bytes(&bytes.into())
        .map_err(|_| "invalid private key")
}

fn read_key_file(file: &Path) -> Result<alloy_signer_local::PrivateKeySigner, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err("readable by group or others; chmod 600 it".into());
    }
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    key_from_hex(&text).map_err(str::to_string)
}

/// Parses `sha256:<64 hex>` into the digest bytes.
pub fn parse_key_hash(raw: &str) -> Option<[u8; 32]> {
    let hex_part = raw.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Parses a CIDR, or a single address as a host-sized network.
pub fn parse_net(raw: &str) -> Option<IpNet> {
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Parses an upstream base URL: `http(s)://host[:port][/base/path]`, nothing else.
pub fn parse_upstream(raw: &str) -> Result<UpstreamUrl, String> {
    let url = url::Url::parse(raw).map_err(|e| e.to_string())?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("scheme must be http or https, not {other:?}")),
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("missing host".into()),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not supported".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("query and fragment are not allowed in a base URL".into());
    }
    let port = url.port_or_known_default().ok_or("missing port")?;
    Ok(UpstreamUrl {
        tls,
        host,
        port,
        base_path: url.path().trim_end_matches('/').to_string(),
    })
}

/// Loads the certificates of a PEM CA file, checking each parses.
fn load_ca(file: &Path) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(file).map_err(|e| e.to_string())?;
    let mut certs = Vec::new();
    for item in rustls_pemfile_certs(&pem)? {
        // Check the DER parses before handing it to Pingora's (panicking) parser.
        x509_parser_check(&item)?;
        certs.push(WrappedX509::new(item, parse_x509));
    }
    if certs.is_empty() {
        return Err("no CERTIFICATE found in the file".into());
    }
    Ok(certs.into())
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem)
        .map(|c| {
            c.map(|c| c.to_vec())
                .map_err(|e| format!("invalid PEM: {e:?}"))
        })
        .collect()
}

fn x509_parser_check(der: &[u8]) -> Result<(), String> {
    use pingora::tls::{CertificateDer, RootCertStore};
    RootCertStore::empty()
        .add(CertificateDer::from(der.to_vec()))
        .map_err(|e| format!("invalid certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::U256;

    #[test]
    fn units_are_converted_exactly() {
        assert_eq!(parse_units("0.10", 6, "USDC"), Ok(U256::from(100_000)));
        assert_eq!(
            parse_units("2.50 USDC", 6, "USDC"),
            Ok(U256::from(2_500_000))
        );
        assert_eq!(
            parse_units("1", 18, "DAI"),
            Ok(U256::from(10).pow(U256::from(18)))
        );
        assert_eq!(parse_units(".5", 2, "X"), Ok(U256::from(50)));
        assert_eq!(parse_units("0", 6, "USDC"), Ok(U256::ZERO));
        assert!(
            parse_units("0.1234567", 6, "USDC")
                .unwrap_err()
                .contains("decimal places")
        );
        assert!(
            parse_units("1 DAI", 6, "USDC")
                .unwrap_err()
                .contains("does not match")
        );
        for bad in ["", "-1", "1e3", "0x10", "1.2.3", "."] {
            assert!(parse_units(bad, 6, "USDC").is_err(), "{bad:?}");
        }
    }
}
