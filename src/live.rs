//! Process-lifetime services ([`Shared`]) and the reloadable configuration snapshot ([`Live`]).
//!
//! A reload builds a complete new `Live` and swaps it in atomically. Each request holds the
//! snapshot it started with, so in-flight requests finish under the old config and none fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::budget::{FallbackLedger, Ledger, LocalLedger, RedisLedger};
use crate::config::{self, Config, ConfigErrors, LedgerKind, Project, RedisDown};
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::net::dns::Resolver;
use crate::policy::PolicyBook;
use crate::ratelimit::RateLimiter;
use crate::stages::Pipeline;
use crate::store::Store;
use crate::x402::facilitator::Facilitator;
use crate::x402::{LocalPriceMemory, NonceGuard, PriceMemory, SharedPriceMemory};

/// Services that live as long as the process and survive reloads (their state too: rate-limit
/// buckets are not reset by a reload).
pub struct Shared {
    pub resolver: Arc<Resolver>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Remembered x402 offers (survive reloads; shared through Redis when `redis:` is set).
    pub price_memory: Arc<dyn PriceMemory>,
    /// Idempotency records: in Redis when `redis:` is set, else in the database (changes
    /// need a restart).
    pub idempotency: Arc<Idempotency>,
    /// Nonces of agent-signed payments already relayed.
    pub nonce_guard: Arc<dyn NonceGuard>,
    /// The x402 facilitator, when `payments.facilitator` is set (changes need a restart).
    pub facilitator: Option<Arc<Facilitator>>,
    /// The spend journal (changes to `database:` need a restart).
    pub store: Arc<Store>,
    /// Budgets (changes to `budgets.ledger` / `redis:` need a restart).
    pub ledger: Arc<dyn Ledger>,
    /// The Redis ledger behind `ledger`, when budgets are kept in Redis (for `/health`).
    pub redis_ledger: Option<Arc<RedisLedger>>,
    /// Policies from the database, overriding the YAML ones (refreshed by [`sync_policies`]).
    pub policies: Arc<PolicyBook>,
    /// Journals, commits and releases once requests are over (survives reloads).
    pub settler: Arc<crate::settle::Settler>,
    /// Write-ahead payment intents (durable before a payment header leaves pag0).
    pub intents: Arc<crate::intents::IntentLog>,
    /// The response cache storage (changes to `cache:` need a restart).
    pub cache: &'static crate::cache::CacheStore,
    /// Collapses concurrent misses for one key inside this process.
    pub cache_lock: &'static pingora::cache::lock::CacheKeyLockImpl,
    /// Per-project cache counters (`/api/cache/stats`).
    pub cache_stats: Arc<crate::cache::CacheStats>,
    /// The local CA and its minted leaves, when `connect.mode` is `intercept` at startup
    /// (changes to `connect.ca_dir` need a restart).
    pub interceptor: Option<Arc<crate::intercept::Interceptor>>,
    /// Request analytics: the recorder `logging` hands records to (changes need a restart).
    pub analytics: Arc<crate::analytics::Analytics>,
    /// Endpoint scores, refreshed in the background (settings follow reloads).
    pub curation: Arc<crate::curation::Curation>,
    /// Smart routes' candidate state (breakers, turns), surviving reloads.
    pub router: crate::curation::router::Router,
    /// ERC-8004 feedback from the outbox, when `audit:` is configured (changes need a restart).
    pub audit: Option<Arc<crate::audit::Audit>>,
    /// A graceful stop began (`/health` says `draining`).
    pub draining: std::sync::atomic::AtomicBool,
    /// Agent connections held by the proxy listeners, against `server.max_connections`.
    pub proxy_connections: Arc<crate::net::conns::ConnectionCap>,
    /// What unfinished request headers hold beyond their first 8 KiB, for all connections:
    /// at most 256 × `server.max_header_bytes` (changes need a restart).
    pub pending_headers: Arc<crate::proxy::header_guard::PendingHeaders>,
    /// Connections held by the admin listener, against `admin.max_connections`.
    pub admin_connections: Arc<crate::net::conns::ConnectionCap>,
    /// Started once the cache stage is first configured (no Redis subscription otherwise).
    cache_purge_follower: std::sync::Once,
    /// Runs background upkeep (spool replay, retried commits) for the process's lifetime.
    _state: StateRuntime,
}

/// How many headers of the largest size unfinished headers may hold at once.
const PENDING_HEADERS_PER_LIMIT: usize = 256;

/// A small runtime of its own for the store and ledger upkeep: it must outlive any one Pingora
/// service and exists before they start (the store is opened before serving).
struct StateRuntime(Option<tokio::runtime::Runtime>);

impl Drop for StateRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Seconds between upkeep rounds (spool replay, commits waiting for Redis).
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Shared {
    /// Opens the spend journal (applying migrations) and builds the process-lifetime services.
    pub fn new(config: &Config) -> anyhow::Result<Arc<Shared>> {
        let limit = crate::net::conns::raise_descriptor_limit();
        let caps = crate::net::conns::caps(
            limit,
            config.server.max_connections,
            config.admin.max_connections,
            config.server.upstream_keepalive_pool_size,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pag0-state")
            .on_thread_start(crate::sched::background_thread)
            .enable_all()
            .build()?;
        // block_on from a thread of our own: the caller may itself run inside a runtime. The
        // database's worker threads (SQLite) start from here and inherit its priority.
        let store = std::thread::scope(|s| {
            s.spawn(|| {
                crate::sched::background_thread();
                rt.block_on(Store::open(&config.database))
            })
            .join()
            .expect("store open does not panic")
        })
        .map_err(|e| anyhow::anyhow!("database: {e}"))?;
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        // Payments are written ahead to a file beside the journal's spool (see store::wal).
        let wal_base = crate::store::beside(&config.database.spool_file, ".wal");
        let wal = crate::store::Wal::open(wal_base.clone(), crate::store::wal::SEGMENT_BYTES)
            .map_err(|e| anyhow::anyhow!("payment intent log: {e}"))?;
        let (intents, written) = crate::intents::IntentLog::new(wal, metrics.clone());
        let intents = Arc::new(intents);
        // Before anything is paid or a budget is read: payments the previous run sent without
        // recording an outcome become in doubt (and hold their budget).
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(intents.recover(&store, &wal_base)))
                .join()
                .expect("intent recovery does not panic")
        })
        .map_err(|e| anyhow::anyhow!("payment intents: {e}"))?;
        let budgets = &config.budgets;
        // A hold must outlive the authorization it paid for: a payment in doubt keeps its
        // budget until it can no longer be settled.
        let reservation_ttl = budgets.reservation_ttl.max(std::time::Duration::from_secs(
            config.payments.max_authorization_seconds + crate::store::IN_DOUBT_MARGIN_SECONDS,
        ));
        let local = || LocalLedger::new(store.clone(), reservation_ttl);
        let (ledger, redis_ledger): (Arc<dyn Ledger>, _) =
            match (budgets.ledger, config.redis.as_ref()) {
                (LedgerKind::Redis, Some(r)) => {
                    let redis = Arc::new(
                        RedisLedger::new(
                            r.url.expose(),
                            &r.key_prefix,
                            r.timeout,
                            reservation_ttl,
                            store.clone(),
                        )
                        .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
                    );
                    let fallback = (budgets.redis_down == RedisDown::InProcess).then(local);
                    let upkeep = redis.clone();
                    rt.spawn(async move { upkeep.maintain(UPKEEP_INTERVAL).await });
                    (
                        Arc::new(FallbackLedger::new(redis.clone(), fallback)),
                        Some(redis),
                    )
                }
                _ => (Arc::new(local()), None),
            };
        let upkeep = store.clone();
        rt.spawn(async move { upkeep.maintain(UPKEEP_INTERVAL).await });
        let policies = Arc::new(PolicyBook::default());
        let (settler, worker) = crate::settle::Settler::new(
            crate::settle::SettlerParts {
                store: store.clone(),
                ledger: ledger.clone(),
                anomaly: Arc::default(),
                policies: policies.clone(),
                metrics: metrics.clone(),
                intents: intents.clone(),
            },
            written,
        );
        rt.spawn(worker);
        let settler = Arc::new(settler);
        let chains = payment_chains(config)?;
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(check_payment_chains(&chains)))
                .join()
                .expect("chain check does not panic")
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (maintained, upkeep_store, upkeep_settler, resolving) = (
            intents.clone(),
            store.clone(),
            settler.clone(),
            chains.clone(),
        );
        rt.spawn(async move {
            maintained
                .maintain(upkeep_store, resolving, upkeep_settler, UPKEEP_INTERVAL)
                .await
        });
        if let Some(reconciler) = reconciler(
            config,
            &store,
            chains,
            crate::settle::ReconcileEffects {
                store: store.clone(),
                ledger: ledger.clone(),
                policies: policies.clone(),
                projects: config.projects.clone(),
                metrics: metrics.clone(),
            },
            metrics.reconcile.clone(),
        ) {
            let every = config.audit.as_ref().map_or(
                std::time::Duration::from_secs(crate::audit::DEFAULT_RECONCILE_SECONDS),
                |a| a.reconcile,
            );
            rt.spawn(Arc::new(reconciler).run(every));
        }
        let analytics = crate::analytics::Analytics::start(
            store.db(),
            config.analytics.clone(),
            metrics.analytics.clone(),
            |task| {
                rt.spawn(task);
            },
        )
        .map_err(|e| anyhow::anyhow!("analytics: {e}"))?;
        let curation =
            crate::curation::Curation::start(store.db(), config.curation.clone(), |task| {
                rt.spawn(task);
            });
        let audit = match &config.audit {
            Some(settings) => {
                // A wrong chain or an unreachable RPC is a clear error now, not a silent backlog.
                std::thread::scope(|s| {
                    s.spawn(|| rt.block_on(crate::audit::check_chain(settings)))
                        .join()
                        .expect("chain check does not panic")
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(
                    crate::audit::Audit::start(
                        store.db(),
                        settings.clone(),
                        metrics.audit.clone(),
                        {
                            let analytics = analytics.clone();
                            Arc::new(move || analytics.spooled() == 0)
                        },
                        |task| {
                            rt.spawn(task);
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                )
            }
            None => None,
        };
        if let Some(audit) = &audit {
            curation.set_reputation(audit.reputation());
        }
        let cache = crate::cache::CacheStore::new(&config.cache.store, metrics.clone())
            .map_err(|e| anyhow::anyhow!("cache: {e}"))?
            .leak();
        let cache_lock: &'static pingora::cache::lock::CacheKeyLockImpl = Box::leak(
            pingora::cache::lock::CacheLock::new_boxed(config.cache.lock_timeout),
        );
        let (idempotency, nonce_guard) = idempotency_records(config, &store, rt.handle().clone())?;
        let interceptor = match config.connect.mode {
            config::ConnectMode::Intercept => {
                let c = &config.connect;
                let (interceptor, created) =
                    crate::intercept::Interceptor::load_or_create(&c.ca_dir, c.leaf_cache_size)
                        .map_err(|e| anyhow::anyhow!("connect.ca_dir: {e}"))?;
                if created {
                    log::warn!(
                        "created the local CA for HTTPS interception: agents must trust {}",
                        interceptor.ca().cert_path().display()
                    );
                }
                Some(Arc::new(interceptor))
            }
            _ => None,
        };
        Ok(Arc::new(Shared {
            analytics,
            curation,
            audit,
            router: Default::default(),
            interceptor,
            cache,
            cache_lock,
            cache_stats: Arc::default(),
            cache_purge_follower: std::sync::Once::new(),
            draining: Default::default(),
            proxy_connections: crate::net::conns::ConnectionCap::new(caps.proxy),
            pending_headers: crate::proxy::header_guard::PendingHeaders::new(
                config
                    .server
                    .max_header_bytes
                    .saturating_mul(PENDING_HEADERS_PER_LIMIT),
            ),
            admin_connections: crate::net::conns::ConnectionCap::new(caps.admin),
            resolver: Arc::new(Resolver::new(&config.dns)),
            rate_limiter: crate::ratelimit::limiter(
                config.redis.as_ref(),
                metrics.rate_limit_fallbacks.clone(),
            )
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
            metrics,
            price_memory: match &config.redis {
                Some(r) => Arc::new(
                    SharedPriceMemory::new(r.url.expose(), &r.key_prefix, r.timeout)
                        .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
                ),
                None => Arc::new(LocalPriceMemory::default()),
            },
            idempotency,
            nonce_guard,
            facilitator: config.payments.facilitator.as_ref().map(|f| {
                Arc::new(Facilitator::new(
                    &f.url,
                    f.token.clone(),
                    f.verify_before_pay,
                    f.timeout,
                ))
            }),
            store,
            ledger,
            redis_ledger,
            policies,
            settler,
            intents,
            _state: StateRuntime(Some(rt)),
        }))
    }
}

/// The JSON-RPC of every payment network in `payments.rpc`.
pub fn payment_chains(
    config: &Config,
) -> anyhow::Result<HashMap<String, Arc<crate::chain::Chain>>> {
    let mut chains = HashMap::new();
    for (network, url) in &config.payments.rpc {
        let chain = crate::chain::Chain::new(url.clone())
            .map_err(|e| anyhow::anyhow!("payments.rpc.{network}: {e}"))?;
        chains.insert(network.clone(), Arc::new(chain));
    }
    Ok(chains)
}

/// Checks that each payment network's RPC serves that network: a wrong chain id is an error;
/// an RPC that does not answer now is only a warning (payments in doubt wait for it).
pub async fn check_payment_chains(
    chains: &HashMap<String, Arc<crate::chain::Chain>>,
) -> Result<(), String> {
    for (network, chain) in chains {
        let Some(expected) = crate::x402::networks::chain_id(network) else {
            continue;
        };
        match tokio::time::timeout(crate::audit::STARTUP_TIMEOUT, chain.chain_id()).await {
            Ok(Ok(id)) if id != expected => {
                return Err(format!(
                    "payments.rpc.{network}: the RPC at {} serves chain {id}, not {expected}",
                    chain.url()
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("payments.rpc.{network}: not reachable now: {e}"),
            Err(_) => log::warn!("payments.rpc.{network}: no answer now"),
        }
    }
    Ok(())
}

/// Reconciliation of the journal against `chains` (`None` without any payment RPC): the
/// projects' wallets are watched for unknown spend in the tokens of `payments.assets`.
pub fn reconciler(
    config: &Config,
    store: &Arc<Store>,
    chains: HashMap<String, Arc<crate::chain::Chain>>,
    effects: crate::settle::ReconcileEffects,
    counters: crate::audit::reconcile::Counters,
) -> Option<crate::audit::reconcile::Reconciler> {
    if chains.is_empty() {
        return None;
    }
    let wallets = config
        .projects
        .iter()
        .filter_map(|p| {
            p.wallet.as_ref().map(|w| crate::audit::reconcile::Wallet {
                project: p.id.clone(),
                address: w.0.address(),
            })
        })
        .collect();
    let tokens = config
        .payments
        .assets
        .iter()
        .map(|a| (crate::x402::networks::caip2(a.chain_id), a.address))
        .collect();
    Some(crate::audit::reconcile::Reconciler::new(
        store.db(),
        chains,
        wallets,
        tokens,
        config.budgets.release_unsettled,
        Arc::new(effects),
        counters,
    ))
}

impl Shared {
    /// What the pipeline's stages are built with.
    pub fn services(&self) -> crate::stages::Services {
        crate::stages::Services {
            metrics: self.metrics.clone(),
            resolver: self.resolver.clone(),
            rate_limiter: self.rate_limiter.clone(),
            idempotency: self.idempotency.clone(),
            price_memory: self.price_memory.clone(),
            nonce_guard: self.nonce_guard.clone(),
            facilitator: self.facilitator.clone(),
            policies: self.policies.clone(),
            ledger: self.ledger.clone(),
            settler: self.settler.clone(),
            intents: self.intents.clone(),
            cache: self.cache,
            cache_lock: self.cache_lock,
            cache_stats: self.cache_stats.clone(),
        }
    }

    /// Follows purges announced by other instances (Redis pub/sub) for the rest of the
    /// process's life, so their memory-tier copies go too. Called when a config with the
    /// cache stage is applied; only the first call does anything.
    pub fn follow_cache_purges(&self) {
        let cache = self.cache;
        if let Some(redis) = cache.redis() {
            self.cache_purge_follower.call_once(|| {
                self.spawn(
                    redis
                        .clone()
                        .follow_purges(|message| cache.apply_announced_purge(message)),
                )
            });
        }
    }

    /// Waits (blocking, at most `timeout`) until every analytics record queued so far is in the
    /// database or the spool. Called once the proxy has stopped (no more records come).
    pub fn drain_analytics(&self, timeout: std::time::Duration) -> bool {
        match &self._state.0 {
            Some(rt) => rt.block_on(self.analytics.drain(timeout)),
            None => true,
        }
    }

    /// The proxy has stopped: other processes may take this one's idempotency claims over.
    pub fn retire(&self) {
        if let Some(rt) = &self._state.0 {
            rt.block_on(self.idempotency.retire());
        }
    }

    /// Runs `task` on the state runtime (background upkeep that must outlive Pingora services).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self._state.0 {
            rt.spawn(task);
        }
    }
}

/// Idempotency records and the relay replay guard, in Redis when `redis:` is set (shared and
/// fast; a record Redis lost is found again from the intent log), else in the database
/// (durable; shared by the processes on one PostgreSQL).
fn idempotency_records(
    config: &Config,
    store: &Arc<Store>,
    upkeep: tokio::runtime::Handle,
) -> anyhow::Result<(Arc<Idempotency>, Arc<dyn NonceGuard>)> {
    use crate::idempotency::{RecordStore, redis::RedisRecords, sql::SqlRecords};
    let (records, guard, lossy): (Arc<dyn RecordStore>, Arc<dyn NonceGuard>, bool) =
        match &config.redis {
            Some(r) => {
                let redis = Arc::new(
                    RedisRecords::new(r.url.expose(), &r.key_prefix, r.timeout)
                        .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
                );
                (redis.clone(), redis, true)
            }
            None => {
                let sql = Arc::new(SqlRecords::new(store.db()));
                (sql.clone(), sql, false)
            }
        };
    let records = Idempotency::new(records, store.clone(), lossy, upkeep);
    Ok((Arc::new(records), guard))
}

/// How often the database is asked whether policies changed (writes through this process's
/// admin API are applied at once; this bounds how late another instance's writes are seen).
pub const POLICY_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps [`PolicyBook`] in step with the database: polls a revision number every
/// [`POLICY_POLL_INTERVAL`] (at once after a write through this process's admin API or a
/// config reload) and reloads (and re-validates against the current config) when it or the
/// config changed. A policy that no longer validates is skipped with a warning (the YAML
/// policy applies). Stops when pag0 shuts down (holds only weak references).
pub async fn sync_policies(
    live: std::sync::Weak<ArcSwap<Live>>,
    store: Arc<Store>,
    book: Arc<PolicyBook>,
) {
    let mut seen: Option<(i64, u64)> = None;
    loop {
        let ticket = book.next_look(POLICY_POLL_INTERVAL).await;
        let Some(live) = live.upgrade() else {
            return;
        };
        let live = live.load_full();
        let revision = match store.policy_revision().await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("policies: {e}");
                book.looked(ticket);
                continue;
            }
        };
        if seen == Some((revision, live.generation)) {
            book.looked(ticket);
            continue;
        }
        let rows = match store.current_policies().await {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("policies: {e}");
                book.looked(ticket);
                continue;
            }
        };
        let mut map = HashMap::new();
        for row in rows.into_iter().filter(|r| r.active) {
            if !live.config.projects.iter().any(|p| p.id == row.project) {
                log::warn!(project = row.project.as_str(); "database policy for a project not in the config; ignored");
                continue;
            }
            let parsed = serde_json::from_str(&row.document)
                .map_err(|e| vec![e.to_string()])
                .and_then(|doc| {
                    config::parse_policy(&doc, &live.config.payments, &live.config.budgets)
                });
            match parsed {
                Ok(policy) => {
                    map.insert(row.project, Arc::new(policy));
                }
                Err(errors) => {
                    log::warn!(project = row.project.as_str(), version = row.version; "database policy no longer valid, the YAML policy applies: {}", errors.join("; "))
                }
            }
        }
        book.replace(map);
        book.looked(ticket);
        seen = Some((revision, live.generation));
    }
}

/// One applied configuration: the config, its pipeline and its lookup tables.
pub struct Live {
    pub generation: u64,
    pub config: Config,
    pub pipeline: Pipeline,
    pub projects_by_key: HashMap<[u8; 32], Arc<Project>>,
}

impl Live {
    pub fn build(config: Config, generation: u64, shared: &Arc<Shared>) -> Live {
        if config
            .stages
            .iter()
            .any(|s| matches!(s, config::StageConfig::Cache(_)))
        {
            shared.follow_cache_purges();
        }
        let pipeline = Pipeline::build(&config, &shared.services());
        let projects_by_key = config
            .projects
            .iter()
            .flat_map(|p| p.key_hashes.iter().map(move |h| (*h, p.clone())))
            .collect();
        Live {
            generation,
            config,
            pipeline,
            projects_by_key,
        }
    }
}

/// Outcome of a reload.
#[derive(Debug)]
pub enum ReloadError {
    /// The process was started without a config file (tests building a config in memory).
    NoFile,
    Invalid(ConfigErrors),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => f.write_str("pag0 was started without a config file"),
            ReloadError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Owns the current [`Live`] and replaces it on reload (SIGHUP or `POST /reload`).
pub struct Reloader {
    pub path: Option<PathBuf>,
    pub live: Arc<ArcSwap<Live>>,
    pub shared: Arc<Shared>,
    generation: AtomicU64,
}

impl Reloader {
    pub fn new(config: Config, path: Option<PathBuf>, shared: Arc<Shared>) -> Arc<Reloader> {
        let live = Arc::new(ArcSwap::from_pointee(Live::build(config, 1, &shared)));
        shared.metrics.config_generation.set(1);
        Arc::new(Reloader {
            path,
            live,
            shared,
            generation: AtomicU64::new(1),
        })
    }

    /// Re-reads the config file and applies it. An invalid file changes nothing. Settings
    /// that need new sockets or runtimes (listeners, threads, admin) are kept and reported.
    pub fn reload(&self) -> Result<(u64, Vec<String>), ReloadError> {
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok((generation, kept)) => {
                log::info!(generation:% = generation; "configuration reloaded");
                for k in kept {
                    log::warn!("{k}");
                }
            }
            Err(e) => log::error!("configuration reload failed, keeping the current one:\n{e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<(u64, Vec<String>), ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let config = config::load(path).map_err(ReloadError::Invalid)?;
        let current = self.live.load();
        let mut kept = Vec::new();
        if config.server != current.config.server {
            kept.push("server: listener/thread settings changed; they apply after a restart or graceful upgrade".to_string());
        }
        if config.admin.listen != current.config.admin.listen {
            kept.push("admin.listen changed; it applies after a restart".to_string());
        }
        let facilitator_url = |c: &Config| {
            c.payments
                .facilitator
                .as_ref()
                .map(|f| (f.url.clone(), f.verify_before_pay))
        };
        if facilitator_url(&config) != facilitator_url(&current.config) {
            kept.push("payments.facilitator changed; it applies after a restart".to_string());
        }
        if config.payments.signer_threads != current.config.payments.signer_threads {
            kept.push("payments.signer_threads changed; it applies after a restart".to_string());
        }
        if config.database.url.expose() != current.config.database.url.expose()
            || config.budgets.ledger != current.config.budgets.ledger
            || config.budgets.redis_down != current.config.budgets.redis_down
            || config.budgets.reservation_ttl != current.config.budgets.reservation_ttl
            || config.redis.as_ref().map(|r| r.url.expose().to_string())
                != current
                    .config
                    .redis
                    .as_ref()
                    .map(|r| r.url.expose().to_string())
        {
            kept.push(
                "database, redis or budgets (ledger, redis_down, reservation_ttl_seconds) changed; they apply after a restart".to_string(),
            );
        }
        if config.cache != current.config.cache {
            kept.push(
                "cache (memory_bytes, redis, lock_timeout_ms) changed; it applies after a restart"
                    .to_string(),
            );
        }
        if config.connect.ca_dir != current.config.connect.ca_dir
            || config.connect.leaf_cache_size != current.config.connect.leaf_cache_size
            || (config.connect.mode == config::ConnectMode::Intercept
                && self.shared.interceptor.is_none())
        {
            kept.push(
                "connect (ca_dir, leaf_cache_size, or mode: intercept without a loaded CA) changed; it applies after a restart".to_string(),
            );
        }
        if config.analytics != current.config.analytics {
            kept.push("analytics settings changed; they apply after a restart".to_string());
        }
        if config.dns != current.config.dns {
            kept.push("dns settings changed; they apply after a restart".to_string());
        }
        self.shared.curation.configure(config.curation.clone());
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.live
            .store(Arc::new(Live::build(config, generation, &self.shared)));
        self.shared.metrics.config_generation.set(generation as i64);
        // Database policies are re-validated against the new config now, not at the next poll.
        self.shared.policies.changed();
        Ok((generation, kept))
    }
}
