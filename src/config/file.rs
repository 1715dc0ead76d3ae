//! Serde structs that mirror the YAML file one to one.
//!
//! Every field is optional here; defaults are applied in [`super::validate`] from the
//! `DEFAULT_*` constants below, so a default lives in exactly one place. Unknown keys are
//! rejected everywhere (`deny_unknown_fields`).

use serde::Deserialize;

/// Proxy listener used when `server.listen` is absent.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8402";
/// Admin listener used when `admin.listen` is absent.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9402";
/// Worker threads of the proxy service (Pingora's own default is 1).
pub const DEFAULT_THREADS: usize = 2;
/// Pingora work stealing between worker threads (false: one single-threaded runtime per thread).
pub const DEFAULT_WORK_STEALING: bool = true;
/// Idle upstream connections kept for reuse, across all upstreams.
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 1024;
/// Seconds between a graceful-terminate signal and the start of runtime shutdown.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 5;
/// How long a request header may take from its first byte to its end.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// The largest request header the proxy accepts (Pingora's own bound is 1 MiB).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// The smallest `server.max_header_bytes` allowed.
pub const MIN_MAX_HEADER_BYTES: u64 = 1024;
/// How long an admin connection may wait for a whole request header (idle time included).
pub const DEFAULT_ADMIN_HEADER_TIMEOUT_MS: u64 = 10_000;
/// How long an admin request may go without a byte moving either way.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT_SECONDS: u64 = 60;
/// Seconds runtimes get to finish in-flight work once shutdown starts.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;
/// Upstream TCP (+TLS) connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Upstream read timeout (time between reads, so also time to first byte).
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
/// Upstream write timeout.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// How long an idle pooled upstream connection is kept.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 60;
/// Timeout of one DNS lookup.
pub const DEFAULT_DNS_TIMEOUT_MS: u64 = 2_000;
/// Number of DNS answers kept in the resolver cache.
pub const DEFAULT_DNS_CACHE_SIZE: u64 = 4_096;
/// Per-project rate limit: sustained requests per second.
pub const DEFAULT_RATE_LIMIT_RPS: u32 = 100;
/// Per-project rate limit: bucket size (requests allowed in a burst).
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 200;
/// Whether a route's `path_prefix` is replaced by the upstream base path.
pub const DEFAULT_STRIP_PREFIX: bool = true;
/// Realm announced in `Proxy-Authenticate` / `WWW-Authenticate`.
pub const AUTH_REALM: &str = "pag0";

/// The whole file. Sections are deserialized one by one (see [`super::load`]) so that
/// a problem in one section does not hide problems in the others.
pub const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "admin",
    "dns",
    "connect",
    "database",
    "redis",
    "budgets",
    "cache",
    "analytics",
    "curation",
    "catalog",
    "audit",
    "payments",
    "stages",
    "projects",
    "routes",
];

/// Spend journal database when `database.url` is absent: a SQLite file next to the config.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:pag0.db";
/// Journal rows wait here while the database cannot take them (relative to the config file).
pub const DEFAULT_SPOOL_FILE: &str = "pag0-spool.jsonl";
/// Database connect/acquire timeout.
pub const DEFAULT_DATABASE_TIMEOUT_MS: u64 = 5_000;
/// Prefix of every Redis key pag0 writes.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "pag0";
/// Timeout of one Redis call (a budget reservation waits at most this long).
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
/// Seconds a budget reservation holds its amount if it is neither committed nor released
/// (a crashed request); longer than any paid request may take.
pub const DEFAULT_RESERVATION_TTL_SECONDS: u64 = 300;
/// Whether a 2xx paid response without a settlement receipt counts as spent.
pub const DEFAULT_COMMIT_WITHOUT_RECEIPT: bool = true;

/// `database:` — the SQL database of the spend journal.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDatabase {
    /// `sqlite:<file>` (relative to the config file) or `postgres://…`; a URL with a password
    /// must be an `${ENV_VAR}` reference.
    pub url: Option<String>,
    pub spool_file: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Whether every request is recorded for analytics.
pub const DEFAULT_ANALYTICS_ENABLED: bool = true;
/// Days raw analytics rows are kept.
pub const DEFAULT_ANALYTICS_RETENTION_DAYS: u32 = 30;
/// Days hourly analytics rollups are kept.
pub const DEFAULT_ANALYTICS_ROLLUP_RETENTION_DAYS: u32 = 400;
/// Records waiting for the analytics writer (beyond: straight to the spool).
pub const DEFAULT_ANALYTICS_QUEUE_CAPACITY: usize = 65_536;
/// Most rows the analytics writer puts in one transaction.
pub const DEFAULT_ANALYTICS_BATCH_ROWS: usize = 2_000;
/// How long the analytics writer waits for a batch to fill: records are safe in the
/// write-ahead file meanwhile, and at the rates agents use (tens of calls per second) a short
/// wait would cost a transaction per record.
pub const DEFAULT_ANALYTICS_FLUSH_INTERVAL_MS: u64 = 250;
/// Analytics records wait here while the database cannot take them (relative to the config).
pub const DEFAULT_ANALYTICS_SPOOL_FILE: &str = "pag0-analytics-spool.jsonl";

/// `analytics:` — request analytics in the `database:` (changes need a restart).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAnalytics {
    pub enabled: Option<bool>,
    pub retention_days: Option<u32>,
    pub rollup_retention_days: Option<u32>,
    pub queue_capacity: Option<usize>,
    pub batch_rows: Option<usize>,
    pub flush_interval_ms: Option<u64>,
    pub spool_file: Option<String>,
}

/// `curation:` — endpoint scores (reloadable).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCuration {
    pub refresh_seconds: Option<u64>,
    pub window_hours: Option<u32>,
    pub weights: Option<FileWeights>,
    /// A project's key sees other projects' calls at an endpoint only in aggregate, where at
    /// least this many other projects called it.
    pub min_shared_projects: Option<u64>,
}

/// `audit:` — ERC-8004 feedback about the paid APIs pag0 uses, and reconciliation of payments
/// against the chain (changes need a restart).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    /// JSON-RPC URL of the chain the registries live on (an `${ENV}` reference when it holds
    /// an API key).
    pub rpc_url: Option<String>,
    pub chain_id: Option<u64>,
    /// ERC-8004 Reputation Registry address.
    pub reputation_registry: Option<String>,
    /// ERC-8004 Identity Registry address (named in the feedback records).
    pub identity_registry: Option<String>,
    /// The key feedback transactions are signed with (not a payment wallet).
    pub signer: Option<FileWallet>,
    /// Which endpoints are which registered agents.
    #[serde(default)]
    pub agents: Vec<serde_yaml::Value>,
    /// `per_payment` or `hourly` (default).
    pub mode: Option<String>,
    pub confirmations: Option<u64>,
    /// Serve feedback records without the admin token.
    pub public_records: Option<bool>,
    /// Base URL feedback URIs point at (default: `http://<admin.listen>`).
    pub public_url: Option<String>,
    pub reconcile_seconds: Option<u64>,
    /// How often the agents' reputation is read from the registry.
    pub reputation_seconds: Option<u64>,
    /// A feedback transaction unmined this long is replaced with higher fees.
    pub replace_after_seconds: Option<u64>,
    /// Reviewers whose feedback feeds the curation reputation (pag0's own address is added).
    #[serde(default)]
    pub trusted_reviewers: Vec<String>,
}

/// `audit.agents[]` — endpoints (host patterns) of one ERC-8004 agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAgent {
    /// Host pattern (`api.example.com`, `*.example.com`, `host:port`).
    pub host: String,
    /// The agent's id in the Identity Registry (decimal).
    pub agent_id: serde_yaml::Value,
}

/// `curation.weights:` — relative weights of the score's components.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWeights {
    pub reliability: Option<f64>,
    pub latency: Option<f64>,
    pub cost: Option<f64>,
    pub volume: Option<f64>,
    pub reputation: Option<f64>,
}

/// One `catalog:` entry: a category and its endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCategory {
    pub category: String,
    #[serde(default)]
    pub description: Option<String>,
    pub endpoints: Vec<FileMember>,
}

/// A catalog endpoint: a pattern of endpoint keys, alone or with a description.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileMember {
    Pattern(String),
    Described(FileDescribedMember),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDescribedMember {
    pub pattern: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// `redis:` — shared state for several pag0 instances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    /// `redis://host:port[/db]`; a URL with a password must be an `${ENV_VAR}` reference.
    pub url: Option<String>,
    /// A Redis Cluster instead: seed node URLs (`redis://host:port`), same rule for passwords.
    pub cluster: Option<Vec<String>>,
    pub key_prefix: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Memory tier size when `cache.memory_bytes` is absent (64 MiB).
pub const DEFAULT_CACHE_MEMORY_BYTES: u64 = 64 << 20;
/// How long concurrent misses for one key wait for the first one to fill the cache.
pub const DEFAULT_CACHE_LOCK_TIMEOUT_MS: u64 = 10_000;
/// Freshness of a cached response whose upstream says nothing and no rule matches.
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 300;
/// Longest TTL a cache rule, route or default may set (one year).
pub const MAX_CACHE_TTL_SECONDS: u64 = 365 * 86_400;
/// Largest response body the cache stores (1 MiB).
pub const DEFAULT_CACHE_MAX_OBJECT_BYTES: u64 = 1 << 20;

/// `cache:` — where cached responses are kept (changes need a restart; the rules are on the
/// `cache` stage and on routes).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    /// In-process tier size in bytes; 0: no memory tier.
    pub memory_bytes: Option<u64>,
    /// Use the `redis:` section as a tier shared by every instance (default: when `redis:`
    /// is set).
    pub redis: Option<bool>,
    pub lock_timeout_ms: Option<u64>,
}

/// `stages[].rules[]` of the cache stage: TTL or exclusion for matching URLs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCacheRule {
    /// Glob on `host/path` (`*` any run of characters, `?` one), e.g. `api.example.com/v1/*`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Freshness when the upstream sends no `Cache-Control`/`Expires`.
    pub ttl_seconds: Option<u64>,
    /// Never cache matching URLs.
    #[serde(default)]
    pub exclude: bool,
}

/// `routes[].cache` — how a route's responses are cached.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteCache {
    /// false: never cache this route (default true).
    pub enabled: Option<bool>,
    /// One entry for every project instead of one per project (default false).
    pub shared: Option<bool>,
    /// Cache POST too, with a hash of the body in the key (default false).
    pub post: Option<bool>,
    /// Freshness when the upstream says nothing and no rule matches (overrides the default).
    pub ttl_seconds: Option<u64>,
}

/// `routes[].candidates[]`: one upstream of a smart route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCandidate {
    pub upstream: String,
}

/// `routes[].breaker`: skip a candidate after `failures` consecutive failures, for
/// `open_seconds`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBreaker {
    pub failures: Option<u32>,
    pub open_seconds: Option<u64>,
}

/// `budgets:` — where budgets are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBudgets {
    /// `memory` (default: this process) or `redis` (shared by every instance; needs `redis:`).
    pub ledger: Option<String>,
    /// With the Redis ledger, what paid requests do while Redis is down: `fail_closed`
    /// (default: 503 BUDGET_UNAVAILABLE) or `in_process` (this instance's own ledger).
    pub redis_down: Option<String>,
    pub reservation_ttl_seconds: Option<u64>,
    pub commit_without_receipt: Option<bool>,
    /// Refund committed payments that reconciliation finds never settled.
    pub release_unsettled: Option<bool>,
}

/// `projects[].policy` — the project's spend firewall.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    /// false: dry run (decisions are logged and counted, nothing is blocked). Default true.
    pub enforce: Option<bool>,
    #[serde(default)]
    pub budgets: Vec<FileBudget>,
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub block_hosts: Vec<String>,
    #[serde(default)]
    pub host_caps: Vec<FileHostCap>,
    /// Allowed networks (CAIP-2 or v1 names); empty: all of `payments.assets`.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub pay_to: Vec<String>,
    pub approval: Option<FileApproval>,
    pub anomaly: Option<FileAnomaly>,
}

/// How long pag0 waits for an approval webhook's answer (no answer = denied).
pub const DEFAULT_APPROVAL_TIMEOUT_MS: u64 = 10_000;
/// Alert when the last hour's spend exceeds this many times the trailing hourly average.
pub const DEFAULT_ANOMALY_FACTOR: u32 = 3;
/// Hours that make the trailing average.
pub const DEFAULT_ANOMALY_TRAILING_HOURS: u32 = 24;
/// At most one anomaly alert per project and pool within this many seconds.
pub const DEFAULT_ANOMALY_COOLDOWN_SECONDS: u64 = 3_600;
/// Longest accepted anomaly alert cooldown (31 days).
pub const MAX_ANOMALY_COOLDOWN_SECONDS: u64 = 31 * 86_400;
/// Timeout of one anomaly alert delivery.
pub const DEFAULT_ALERT_TIMEOUT_MS: u64 = 5_000;

/// `projects[].policy.approval` — payments over a threshold wait for a human or a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApproval {
    /// With the symbol: `"0.05 USDC"`; payments strictly above it need approval.
    pub threshold: String,
    /// pag0 POSTs the request here and waits for `{"approved": true|false}`.
    pub webhook: String,
    /// Bearer token as an `${ENV_VAR}` reference.
    pub token: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// `projects[].policy.anomaly` — alert on unusual spend (never blocks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAnomaly {
    pub factor: Option<u32>,
    pub trailing_hours: Option<u32>,
    pub cooldown_seconds: Option<u64>,
    pub webhook: String,
    pub token: Option<String>,
}

/// `projects[].policy.budgets[]` — limits for one asset symbol (optionally one network).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBudget {
    /// Asset symbol from `payments.assets` (e.g. `USDC`).
    pub asset: String,
    /// Only this network's asset (CAIP-2); absent: the symbol on every network, one budget.
    pub network: Option<String>,
    /// Amounts in asset units, e.g. `"0.10"` or `"2.50 USDC"`.
    pub per_request: Option<String>,
    pub daily: Option<String>,
    pub monthly: Option<String>,
}

/// `projects[].policy.host_caps[]` — the most one call to matching hosts may cost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHostCap {
    pub host: String,
    /// With the symbol: `"0.01 USDC"`.
    pub max: String,
}

/// Per-payment ceiling when an asset sets none: 0.10 of the asset's unit (a safe default that
/// applies even without any spend policy).
pub const DEFAULT_MAX_PER_PAYMENT: &str = "0.10";
/// Seconds a paid endpoint's offer is remembered, so the next call is signed up front.
pub const DEFAULT_PRICE_MEMORY_SECONDS: u64 = 300;
/// Largest `payments.signer_threads`.
pub const MAX_SIGNER_THREADS: u64 = 64;
/// `payments.max_authorization_seconds` when absent.
pub const DEFAULT_MAX_AUTHORIZATION_SECONDS: u64 = 600;
/// The largest `payments.max_authorization_seconds` accepted.
pub const MAX_AUTHORIZATION_SECONDS: u64 = 3600;
/// `payments.offer_timeout_ms` when absent.
pub const DEFAULT_OFFER_TIMEOUT_MS: u64 = 5_000;
/// Seconds an `Idempotency-Key` is remembered.
pub const DEFAULT_IDEMPOTENCY_WINDOW_SECONDS: u64 = 24 * 3600;
/// Payment schemes accepted when `payments.schemes` is absent.
pub const DEFAULT_SCHEMES: &[&str] = &["exact"];

/// `payments:` — what pag0 may pay with, for every project.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePayments {
    /// The only assets pag0 pays with (an offer in any other asset is declined).
    #[serde(default)]
    pub assets: Vec<FileAsset>,
    /// Accepted schemes (default `[exact]`).
    pub schemes: Option<Vec<String>>,
    /// If non-empty, the only recipients pag0 pays.
    #[serde(default)]
    pub pay_to: Vec<String>,
    /// Seconds to remember a paid endpoint's offer (0: never pre-sign).
    pub price_memory_seconds: Option<u64>,
    /// Optional x402 facilitator (health and verify-before-pay).
    pub facilitator: Option<FileFacilitator>,
    /// Threads computing signatures off Pingora's workers; 0 signs inline (applies at start).
    pub signer_threads: Option<u64>,
    /// Longest validity pag0 signs an authorization for (default 600, at most 3600): offers
    /// whose `maxTimeoutSeconds` is longer are declined.
    pub max_authorization_seconds: Option<u64>,
    /// Milliseconds the side request that reads an x402 v1 offer (a 402's JSON body) may take
    /// as a whole; a slower upstream's offer is declined (default 5000).
    pub offer_timeout_ms: Option<u64>,
    /// JSON-RPC endpoints by network (CAIP-2 or v1 name): payments in doubt on a network with
    /// one are resolved from the chain (`authorizationState`, `AuthorizationUsed`). A URL with
    /// an API key goes in as an `${ENV_VAR}` reference.
    #[serde(default)]
    pub rpc: std::collections::BTreeMap<String, String>,
}

/// Timeout of one facilitator call.
pub const DEFAULT_FACILITATOR_TIMEOUT_MS: u64 = 5_000;

/// `payments.facilitator`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFacilitator {
    /// Base URL, e.g. `https://x402.org/facilitator`.
    pub url: String,
    /// Bearer token as an `${ENV_VAR}` reference.
    pub token: Option<String>,
    /// `POST /verify` each payment pag0 signed before sending it (default false).
    #[serde(default)]
    pub verify_before_pay: bool,
    pub timeout_ms: Option<u64>,
}

/// One allowed asset on one network.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAsset {
    /// CAIP-2 (`eip155:8453`) or x402 v1 name (`base`).
    pub network: String,
    /// Token contract address.
    pub address: String,
    pub symbol: String,
    pub decimals: u8,
    /// Ceiling per payment in asset units (`"0.10"` or `"0.10 USDC"`).
    pub max_per_payment: Option<String>,
    /// The token's EIP-712 domain; an offer naming another one is declined. Defaults to the
    /// pinned entry for well-known USDC deployments.
    pub eip712: Option<FileEip712>,
}

/// `payments.assets[].eip712`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEip712 {
    pub name: String,
    pub version: String,
}

/// `projects[].wallet` — the key pag0 signs this project's payments with: exactly one of
/// `private_key`, `key_file` or `keystore` (+ `password`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWallet {
    /// Hex private key as an `${ENV_VAR}` reference.
    pub private_key: Option<String>,
    /// File holding the hex private key (mode 600: not readable by group or others).
    pub key_file: Option<String>,
    /// Encrypted JSON keystore (from `pag0 wallet new`).
    pub keystore: Option<String>,
    /// Keystore password as an `${ENV_VAR}` reference.
    pub password: Option<String>,
}

/// `server:` — the proxy listener and Pingora's own server settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Addresses of the HTTP proxy listener (forward and reverse on the same port).
    pub listen: Option<Vec<String>>,
    /// Worker threads of the proxy service.
    pub threads: Option<usize>,
    /// Let idle worker threads steal tasks from busy ones.
    pub work_stealing: Option<bool>,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Seconds to keep serving after SIGTERM before shutting runtimes down.
    pub grace_period_seconds: Option<u64>,
    /// Seconds runtimes get to finish once shutdown starts.
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    /// Requests served on one downstream keep-alive connection before it is closed.
    pub keepalive_request_limit: Option<u32>,
    /// Milliseconds a request header may take from its first byte to its end (slowloris).
    pub header_timeout_ms: Option<u64>,
    /// The largest request header accepted (bytes, whole header; so each line too): larger
    /// ones are answered `431 REQUEST_HEADER_TOO_LARGE` before any stage runs.
    pub max_header_bytes: Option<u64>,
    /// Agent connections held at once; more are answered `503 TOO_MANY_CONNECTIONS` and
    /// closed (default: derived from the process's descriptor limit).
    pub max_connections: Option<usize>,
    /// Pid file (Pingora's graceful upgrade uses it).
    pub pid_file: Option<String>,
    /// Unix socket used to hand listeners to a new process on graceful upgrade.
    pub upgrade_sock: Option<String>,
}

/// `upstream:` — timeouts for connections to upstream servers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    /// Private CAs for forward-proxy HTTPS upstreams (absolute-form `https://` and CONNECT):
    /// the first entry whose hosts match replaces the system roots for that host.
    pub trust: Option<Vec<FileUpstreamTrust>>,
}

/// `upstream.trust[]`: which CA verifies which forward-proxy HTTPS hosts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTrust {
    /// Host patterns (`host`, `*.domain`, `*`).
    pub hosts: Vec<String>,
    /// PEM file with the CA certificate(s), relative to the config file.
    pub ca_file: String,
}

/// What `CONNECT` does when `connect.mode` is absent: intercept (see `FileConnect::mode`).
pub const DEFAULT_CONNECT_MODE: &str = "intercept";
/// Local CA directory when `connect.ca_dir` is absent (next to the config file).
pub const DEFAULT_CA_DIR: &str = "pag0-ca";
/// How long an agent may take to finish the TLS handshake inside a CONNECT tunnel.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Minted leaf certificates kept in memory (one per intercepted host).
pub const DEFAULT_LEAF_CACHE_SIZE: u64 = 1_024;
/// Ports a `CONNECT` may name when `connect.ports` is absent: HTTPS (Squid's `SSL_ports`) and
/// HTTP, because Node's proxy agents (undici's `ProxyAgent`) tunnel `http://` URLs as well.
pub const DEFAULT_CONNECT_PORTS: &[u16] = &[443, 80];
/// A blind tunnel with no bytes in either direction for this long is closed.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT_SECONDS: u64 = 300;

/// `connect:` — HTTPS through the forward proxy (`CONNECT`, what `HTTPS_PROXY` sends).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnect {
    /// `intercept` (default): terminate the agent's TLS with a leaf certificate from the local
    /// CA, so the requests inside run through the whole pipeline (payment, cache, policy);
    /// `tunnel`: relay every tunnel blind (after auth, SSRF guard and policy); `off`: 405.
    pub mode: Option<String>,
    /// Local CA directory, relative to the config file (created on first start).
    pub ca_dir: Option<String>,
    /// Host patterns that are never intercepted: relayed blind (no payment, no cache).
    pub tunnel_only: Option<Vec<String>>,
    pub handshake_timeout_ms: Option<u64>,
    pub leaf_cache_size: Option<u64>,
    /// Ports a CONNECT may name (default `[443, 80]`: Node's proxy agents tunnel `http://` URLs
    /// too); `["*"]` allows any.
    pub ports: Option<Vec<serde_yaml::Value>>,
    /// Close a blind tunnel after this long without traffic.
    pub idle_timeout_seconds: Option<u64>,
}

/// `admin:` — the admin listener (/health, /metrics, /reload).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
    /// Bearer token, as an `${ENV_VAR}` reference.
    pub token: Option<String>,
    /// The dashboard links transaction hashes to this prefix (e.g. `https://basescan.org/tx/`).
    pub explorer_tx_url: Option<String>,
    /// Milliseconds a connection may wait for a complete request header, counted from when it
    /// is ready for one (accepted, or the previous response sent): idle and trickling
    /// connections are closed after it.
    pub header_timeout_ms: Option<u64>,
    /// Seconds a connection may go without a byte moving either way during a request (a
    /// stalled body, a client that stopped reading).
    pub idle_timeout_seconds: Option<u64>,
    /// Admin connections held at once; more are answered `503` and closed (default: derived
    /// from the process's descriptor limit).
    pub max_connections: Option<usize>,
}

/// `dns:` — the asynchronous resolver used for forward-proxy targets and route upstreams.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    pub timeout_ms: Option<u64>,
    pub cache_size: Option<u64>,
}

/// One entry of `stages:`; the list order is the order the stages run in.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FileStage {
    /// Identify the project from `Proxy-Authorization: Basic` or `X-Pag0-API-Key`.
    Auth {},
    /// Refuse targets that resolve to non-public addresses.
    SsrfGuard {
        /// CIDRs (or single addresses) that are allowed even though they are not public.
        #[serde(default)]
        allow: Vec<String>,
    },
    /// Replay the first paid response for a repeated `Idempotency-Key` instead of paying again.
    Idempotency {
        /// Seconds a key is remembered (default 24 h).
        window_seconds: Option<u64>,
    },
    /// Pay x402 `402 Payment Required` answers with the project's wallet and replay.
    Payment {},
    /// Answer repeated calls from the response cache (free and paid responses alike).
    Cache {
        default_ttl_seconds: Option<u64>,
        max_object_bytes: Option<u64>,
        /// Also cache 404 answers (default false).
        #[serde(default)]
        cache_404: bool,
        /// First match wins.
        #[serde(default)]
        rules: Vec<FileCacheRule>,
    },
    /// Enforce each project's `policy.allow_hosts` / `block_hosts` on every request.
    Policy {},
    /// Per-project token bucket.
    RateLimit {
        /// Limit for projects that do not set their own `rate_limit`.
        default: Option<FileRateLimit>,
    },
}

/// A token bucket: `requests_per_second` sustained, `burst` at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
}

/// One entry of `projects:` — a tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProject {
    pub id: String,
    /// API key hashes, `sha256:<64 hex>` (from `pag0 keys new`).
    #[serde(default)]
    pub keys: Vec<String>,
    pub rate_limit: Option<FileRateLimit>,
    /// Wallet for paying 402s (projects without one never pay).
    pub wallet: Option<FileWallet>,
    /// `wallet` (pag0 signs; default with a wallet), `relay` (the agent signs, pag0 checks and
    /// forwards), `off` (402s pass through; default without a wallet).
    pub mode: Option<String>,
    /// Spend firewall; absent: only the `payments` guards apply.
    pub policy: Option<FilePolicy>,
}

/// One entry of `routes:` — a reverse-proxy route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    /// Match on the request's Host (without port). Absent: any host.
    pub host: Option<String>,
    /// Match on a path prefix (segment-wise). Absent: any path.
    pub path_prefix: Option<String>,
    /// Upstream base URL, `http://` or `https://`, optionally with a base path.
    pub upstream: Option<String>,
    /// A smart route: the catalog category its candidates belong to.
    pub category: Option<String>,
    /// A smart route's upstreams; each request goes to the best-scoring one.
    pub candidates: Option<Vec<FileCandidate>>,
    /// Share of a smart route's requests sent to other candidates than the best (0..=0.5).
    pub explore: Option<f64>,
    /// A smart route's circuit breaker.
    pub breaker: Option<FileBreaker>,
    /// Replace `path_prefix` by the upstream base path (default true).
    pub strip_prefix: Option<bool>,
    /// PEM file with the CA(s) that sign a private HTTPS upstream; system roots otherwise.
    pub ca_file: Option<String>,
    /// Caching of this route's responses (with the `cache` stage).
    pub cache: Option<FileRouteCache>,
}
