//! The validated configuration: typed values only, defaults applied.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use ipnet::IpNet;
use pingora::utils::tls::WrappedX509;

use super::secret::Secret;
use crate::x402::PaymentSigner;

/// Everything pag0 runs with. Built by [`super::load`]; never constructed from unchecked input.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub admin: AdminSettings,
    pub dns: DnsSettings,
    pub connect: ConnectSettings,
    pub database: crate::store::DatabaseConfig,
    pub redis: Option<RedisSettings>,
    pub budgets: BudgetSettings,
    pub cache: CacheSettings,
    pub analytics: crate::analytics::Settings,
    pub curation: crate::curation::Settings,
    /// `None` without an `audit:` section.
    pub audit: Option<Arc<crate::audit::Settings>>,
    pub payments: Payments,
    pub stages: Vec<StageConfig>,
    pub projects: Vec<Arc<Project>>,
    pub routes: Vec<Arc<Route>>,
}

/// Listener and Pingora server settings. Changing these needs a restart (or graceful upgrade).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub work_stealing: bool,
    pub upstream_keepalive_pool_size: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub keepalive_request_limit: Option<u32>,
    /// A request header must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// The largest request header accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Agent connections held at once (`None`: derived from the descriptor limit).
    pub max_connections: Option<usize>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Private CAs for forward-proxy HTTPS hosts, first match wins.
    pub trust: Vec<UpstreamTrust>,
}

impl UpstreamSettings {
    /// The private CA that verifies forward-proxy HTTPS connections to `host`, if any.
    pub fn trust_for(&self, host: &str) -> Option<&UpstreamTrust> {
        self.trust
            .iter()
            .find(|t| t.hosts.iter().any(|p| p.matches(host)))
    }
}

/// `upstream.trust[]`, validated: these hosts are verified against `ca` instead of the system
/// roots.
#[derive(Clone)]
pub struct UpstreamTrust {
    pub hosts: Vec<crate::policy::HostPattern>,
    pub ca_file: PathBuf,
    pub ca: Arc<[WrappedX509]>,
    /// Upstream connection-pool partition (connections verified against this CA only).
    pub trust_group: u64,
}

impl PartialEq for UpstreamTrust {
    fn eq(&self, other: &Self) -> bool {
        self.hosts == other.hosts && self.ca_file == other.ca_file
    }
}

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("hosts", &self.hosts)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// What pag0 does with a `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    /// Terminate TLS with a minted leaf and run the requests inside through the pipeline.
    Intercept,
    /// Relay the bytes (no payment, no cache) once auth, SSRF guard and policy agreed.
    Tunnel,
    /// Refuse with 405.
    Off,
}

/// `connect:`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectSettings {
    pub mode: ConnectMode,
    /// Where the local CA lives (absolute, or relative to the working directory).
    pub ca_dir: PathBuf,
    /// Hosts relayed blind even in `intercept` mode.
    pub tunnel_only: Vec<crate::policy::HostPattern>,
    pub handshake_timeout: Duration,
    pub leaf_cache_size: u64,
    /// Ports a CONNECT may name; `None`: any.
    pub ports: Option<Vec<u16>>,
    pub idle_timeout: Duration,
}

impl ConnectSettings {
    /// Whether a CONNECT may name `port`.
    pub fn allows_port(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }

    /// Whether a tunnel to `host` is intercepted (as opposed to relayed blind).
    pub fn intercepts(&self, host: &str) -> bool {
        self.mode == ConnectMode::Intercept && !self.tunnel_only.iter().any(|p| p.matches(host))
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Secret,
    /// Transaction links of the dashboard: this prefix + the hash.
    pub explorer_tx_url: Option<String>,
    /// A request header must be complete this long after the connection is ready for one.
    pub header_timeout: Duration,
    /// A request with no byte moving either way for this long ends its connection.
    pub idle_timeout: Duration,
    /// Admin connections held at once (`None`: derived from the descriptor limit).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    pub timeout: Duration,
    pub cache_size: u64,
}

/// `redis:`, validated.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The server's URL, or (with `cluster`) `cluster` and the seed node URLs separated by
    /// spaces (what `redis_client::LazyRedis::open` takes).
    pub url: Secret,
    /// `redis.cluster` was given: a Redis Cluster.
    pub cluster: bool,
    pub key_prefix: String,
    pub timeout: Duration,
}

/// `cache:`, validated (restart to change).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub store: crate::cache::StoreSettings,
    pub lock_timeout: Duration,
}

/// The `cache` stage's rules (reloadable).
#[derive(Debug, Clone)]
pub struct CacheRules {
    pub default_ttl: Duration,
    pub max_object_bytes: usize,
    pub cache_404: bool,
    pub rules: Vec<CacheRule>,
}

impl CacheRules {
    /// The first rule whose pattern matches `host/path`.
    pub fn rule_for(&self, host_path: &str) -> Option<&CacheRule> {
        self.rules
            .iter()
            .find(|r| crate::glob::matches(&r.pattern, host_path))
    }
}

/// One `rules[]` entry: `ttl: None` means exclude.
#[derive(Debug, Clone)]
pub struct CacheRule {
    pub pattern: String,
    pub ttl: Option<Duration>,
}

/// `routes[].cache`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCache {
    pub enabled: bool,
    pub shared: bool,
    pub post: bool,
    pub ttl: Option<Duration>,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            enabled: true,
            shared: false,
            post: false,
            ttl: None,
        }
    }
}

/// Where budgets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    Memory,
    Redis,
}

/// What paid requests do while the Redis ledger is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisDown {
    /// 503 `BUDGET_UNAVAILABLE` (free traffic is unaffected).
    FailClosed,
    /// Use this instance's in-process ledger until Redis is back.
    InProcess,
}

/// `budgets:`, validated.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    pub ledger: LedgerKind,
    pub redis_down: RedisDown,
    pub reservation_ttl: Duration,
    pub commit_without_receipt: bool,
    /// Refund committed payments that reconciliation proves were never settled.
    pub release_unsettled: bool,
}

/// What pag0 may pay with (`payments:`).
#[derive(Debug, Clone, Default)]
pub struct Payments {
    pub assets: Vec<Asset>,
    pub schemes: Vec<String>,
    /// Empty: any recipient.
    pub pay_to: Vec<Address>,
    /// How long a paid offer is remembered (zero: price memory off).
    pub price_memory: std::time::Duration,
    pub facilitator: Option<FacilitatorConfig>,
    /// Size of the process's signing pool (taken at start).
    pub signer_threads: usize,
    /// No authorization pag0 signs or relays is valid for longer than this (seconds).
    pub max_authorization_seconds: u64,
    /// The whole side request that reads an x402 v1 offer must answer within this.
    pub offer_timeout: std::time::Duration,
    /// JSON-RPC endpoint per network (CAIP-2), for resolving payments in doubt.
    pub rpc: Vec<(String, Secret)>,
}

/// `payments.facilitator`, validated.
#[derive(Debug, Clone)]
pub struct FacilitatorConfig {
    pub url: String,
    pub token: Option<Secret>,
    pub verify_before_pay: bool,
    pub timeout: std::time::Duration,
}

/// An allowed asset with its per-payment ceiling, in base units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub chain_id: u64,
    pub address: Address,
    pub symbol: String,
    pub decimals: u8,
    pub max_per_payment: U256,
    /// The token's EIP-712 domain (name, version), when known: offers must name this one.
    pub eip712: Option<(String, String)>,
}

impl Payments {
    /// The allowed asset matching a chain and contract.
    pub fn asset(&self, chain_id: u64, address: Address) -> Option<&Asset> {
        self.assets
            .iter()
            .find(|a| a.chain_id == chain_id && a.address == address)
    }
}

/// A project's signing wallet. `Debug` shows the address only.
#[derive(Clone)]
pub struct Wallet(pub Arc<dyn PaymentSigner>);

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wallet({})", self.0.address())
    }
}

/// An enabled pipeline stage and its settings.
#[derive(Debug, Clone)]
pub enum StageConfig {
    Auth,
    Idempotency { window: std::time::Duration },
    Payment,
    Policy,
    Cache(Arc<CacheRules>),
    SsrfGuard { allow: Vec<IpNet> },
    RateLimit { default: RateLimit },
}

impl StageConfig {
    /// The name used in YAML (`kind:`), logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Auth => "auth",
            StageConfig::Idempotency { .. } => "idempotency",
            StageConfig::Payment => "payment",
            StageConfig::Policy => "policy",
            StageConfig::Cache(_) => "cache",
            StageConfig::SsrfGuard { .. } => "ssrf_guard",
            StageConfig::RateLimit { .. } => "rate_limit",
        }
    }
}

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// A tenant.
#[derive(Debug)]
pub struct Project {
    pub id: String,
    /// SHA-256 digests of the project's API keys.
    pub key_hashes: Vec<[u8; 32]>,
    pub rate_limit: Option<RateLimit>,
    pub wallet: Option<Wallet>,
    pub mode: PaymentMode,
    /// Spend firewall (`None`: only the `payments` guards apply).
    pub policy: Option<Arc<crate::policy::Policy>>,
}

/// Who signs a project's payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentMode {
    /// pag0 signs with the project's wallet.
    Wallet,
    /// The agent signs; pag0 checks the payment header against policy and forwards it.
    Relay,
    /// Nobody: 402s pass through.
    Off,
}

/// A reverse-proxy route.
pub struct Route {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: UpstreamUrl,
    pub strip_prefix: bool,
    /// CA certificates from `ca_file`, replacing the system roots for this route.
    pub ca: Option<Arc<[WrappedX509]>>,
    pub ca_file: Option<PathBuf>,
    /// Upstream connection-pool partition for routes with their own CA (0 = system roots).
    pub trust_group: u64,
    pub cache: RouteCache,
    /// A smart route (`category` + `candidates`); `upstream` is then its first candidate.
    pub smart: Option<SmartRoute>,
}

/// A route whose requests go to the best-scoring of several upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct SmartRoute {
    pub category: String,
    pub candidates: Vec<UpstreamUrl>,
    /// The candidates' endpoint keys (as the analytics and the catalog name them).
    pub keys: Vec<String>,
    /// Share of requests sent to another candidate than the best.
    pub explore: f64,
    /// Consecutive failures that open a candidate's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its candidate.
    pub breaker_open: Duration,
}

pub const DEFAULT_EXPLORE: f64 = 0.05;
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
pub const DEFAULT_BREAKER_OPEN_SECONDS: u64 = 30;
pub const MAX_BREAKER_OPEN_SECONDS: u64 = 86_400;

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("path_prefix", &self.path_prefix)
            .field("upstream", &self.upstream)
            .field("strip_prefix", &self.strip_prefix)
            .field("ca_file", &self.ca_file)
            .field("cache", &self.cache)
            .finish()
    }
}

/// A parsed `http(s)://host[:port][/base]` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Base path without a trailing slash (`""` for the root).
    pub base_path: String,
}

impl UpstreamUrl {
    /// The analytics endpoint key of requests a route sends here: `host[:port]/base/*`.
    pub fn endpoint_key(&self) -> String {
        let mut key = host_header(&self.host, self.port, self.tls);
        key.push_str(&self.base_path);
        key.push_str("/*");
        key
    }
}

/// A Host header value: IPv6 in brackets, port omitted when it is the scheme's default.
pub fn host_header(host: &str, port: u16, tls: bool) -> String {
    let default_port = if tls { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}
