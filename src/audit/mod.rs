//! On-chain audit: ERC-8004 reputation feedback about the paid APIs pag0 uses, given from a
//! durable SQL outbox.
//!
//! A background task plans feedback from what is already in SQL (the spend journal for
//! `per_payment`, the analytics rollups for `hourly`) into the outbox, then sends it: each
//! transaction is signed and stored with its nonce and hash before it is broadcast, so a
//! crash at any instant leads to finding that transaction again, never to a second one.
//! Nothing on a request's path waits for this. Knows nothing of Pingora.

pub mod outbox;
mod plan;
pub mod reconcile;
pub mod record;
pub mod registry;
pub mod reputation;
mod sender;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_signer_local::PrivateKeySigner;

use crate::config::Secret;
use crate::policy::HostPattern;
use crate::store::{Db, StoreError};

pub use record::Feedback;

/// Says whether the analytics rollups hold every request so far (no record waits in a spool).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

pub const DEFAULT_CONFIRMATIONS: u64 = 1;
pub const MAX_CONFIRMATIONS: u64 = 1_000;
pub const DEFAULT_RECONCILE_SECONDS: u64 = 300;
pub const DEFAULT_REPUTATION_SECONDS: u64 = 60;
pub const DEFAULT_REPLACE_AFTER_SECONDS: u64 = 180;
pub(crate) const HOUR_MS: i64 = 3_600_000;
/// How long the startup check waits for the RPC.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// `audit:`, validated (changes need a restart).
#[derive(Debug)]
pub struct Settings {
    pub rpc_url: Secret,
    pub chain_id: u64,
    pub reputation_registry: Address,
    pub identity_registry: Option<Address>,
    pub signer: Signer,
    pub agents: Vec<Agent>,
    pub mode: Mode,
    /// Blocks on top of a feedback's block before it counts as confirmed (1: mined).
    pub confirmations: u64,
    /// Feedback records readable without the admin token.
    pub public_records: bool,
    /// Base of `feedbackURI` (`<public_url>/api/audit/feedback/<id>`).
    pub public_url: String,
    pub reconcile: Duration,
    /// How often the agents' reputation summaries are read.
    pub reputation: Duration,
    /// A feedback transaction unmined this long is replaced with higher fees (same nonce).
    pub replace_after: Duration,
    /// Whose feedback feeds the curation reputation (pag0's own address included).
    pub trusted_reviewers: Vec<Address>,
}

impl Settings {
    /// The agent an endpoint key (`host[:port]/path`) belongs to: the first `audit.agents`
    /// entry whose host pattern matches its `host:port` or its host.
    pub fn agent_of(&self, endpoint: &str) -> Option<U256> {
        let authority = endpoint.split('/').next().unwrap_or_default();
        let authority = crate::policy::normalise(authority);
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority.as_str(),
        };
        self.agents
            .iter()
            .find(|a| a.host.matches(&authority) || a.host.matches(host))
            .map(|a| a.agent_id)
    }

    /// Where a feedback's record is served.
    pub fn feedback_uri(&self, id: &str) -> String {
        format!("{}/api/audit/feedback/{id}", self.public_url)
    }
}

/// Endpoints (by host) that are one registered agent.
#[derive(Debug, Clone)]
pub struct Agent {
    pub host: HostPattern,
    pub agent_id: U256,
}

/// What is rated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `successRate` feedback per paid call.
    PerPayment,
    /// One `successRate` and one `responseTime` feedback per endpoint and UTC hour.
    Hourly,
}

/// The audit key. `Debug` shows the address only.
#[derive(Clone)]
pub struct Signer(Arc<PrivateKeySigner>);

impl Signer {
    pub fn new(key: PrivateKeySigner) -> Signer {
        Signer(Arc::new(key))
    }

    pub fn address(&self) -> Address {
        self.0.address()
    }

    pub(crate) fn key(&self) -> &PrivateKeySigner {
        &self.0
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.address())
    }
}

/// The audit's metrics (registered in [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct Counters {
    /// `pag0_audit_feedback_total{state}`: feedbacks `planned`, `sent` (broadcast),
    /// `rebroadcast`, `replaced` (stuck: higher fees, same nonce), `confirmed`, `reverted`,
    /// `requeued` (its nonce went to another transaction).
    pub feedback: prometheus::IntCounterVec,
    /// `pag0_audit_backlog`: feedbacks not confirmed yet (pending or sent).
    pub backlog: prometheus::IntGauge,
    /// `pag0_audit_rpc_errors_total`: failed calls to the audit chain's RPC.
    pub rpc_errors: prometheus::IntCounter,
}

/// The audit's state for `/health`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Feedbacks not confirmed yet.
    pub backlog: u64,
    /// When the oldest of them was planned (unix ms).
    pub oldest_ms: Option<i64>,
    /// The last round's error (RPC or database), `None` once a round succeeds.
    pub error: Option<String>,
    /// Unix ms of the last round that reached the chain.
    pub rpc_ok_ms: Option<u64>,
}

/// The audit service: plans and sends feedback in the background.
pub struct Audit {
    db: Db,
    settings: Arc<Settings>,
    counters: Counters,
    status: Mutex<Status>,
    reputation: Arc<reputation::Reputation>,
}

impl Audit {
    /// Starts the background task (`spawn` runs it on the state runtime).
    pub fn start(
        db: Db,
        settings: Arc<Settings>,
        counters: Counters,
        rollups_complete: Readiness,
        spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) -> Result<Arc<Audit>, String> {
        let chain = sender::Chain::new(&settings)?;
        let audit = Arc::new(Audit {
            db,
            reputation: Arc::new(reputation::Reputation::new(settings.clone())),
            settings,
            counters,
            status: Mutex::default(),
        });
        spawn(Box::pin(audit.clone().run(chain, rollups_complete)));
        Ok(audit)
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The agents' reputation (the curation score's reputation component).
    pub fn reputation(&self) -> Arc<reputation::Reputation> {
        self.reputation.clone()
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One feedback of the outbox.
    pub async fn feedback(&self, id: &str) -> Result<Option<outbox::Row>, StoreError> {
        outbox::get(&self.db, id).await
    }

    /// Feedbacks, newest first.
    pub async fn list(&self, filter: &outbox::Filter) -> Result<Vec<outbox::Row>, StoreError> {
        outbox::list(&self.db, filter).await
    }

    /// Plans, then sends, for the process's lifetime. Errors are kept for `/health` and retried
    /// with a growing pause; the outbox keeps everything meanwhile.
    async fn run(self: Arc<Audit>, mut chain: sender::Chain, rollups_complete: Readiness) {
        let mut planner =
            plan::Planner::new(self.db.clone(), self.settings.clone(), rollups_complete);
        let mut pause = POLL;
        let mut read_reputation = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= read_reputation {
                match chain.summaries(&self.reputation.agents()).await {
                    Ok(s) => {
                        self.reputation.store(s);
                        read_reputation = tokio::time::Instant::now() + self.settings.reputation;
                    }
                    Err(e) => log::warn!("audit: reputation not read: {e}"),
                }
            }
            let planned = planner.round().await;
            let sent = match &planned {
                Ok(n) => {
                    self.counters
                        .feedback
                        .with_label_values(&["planned"])
                        .inc_by(*n);
                    chain.round(&self.db, &self.counters).await
                }
                Err(e) => Err(e.to_string()),
            };
            let backlog = outbox::backlog(&self.db).await;
            pause = self.note(backlog, sent, pause);
            tokio::time::sleep(pause).await;
        }
    }
}

impl Audit {
    /// Keeps a round's outcome for `/health` and the metrics; returns the next pause.
    fn note(
        &self,
        backlog: Result<(u64, Option<i64>), StoreError>,
        sent: Result<(), String>,
        pause: Duration,
    ) -> Duration {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok((count, oldest)) = backlog {
            status.backlog = count;
            status.oldest_ms = oldest;
            self.counters.backlog.set(count.min(i64::MAX as u64) as i64);
        }
        match sent {
            Ok(()) => {
                status.error = None;
                status.rpc_ok_ms = Some(crate::clock::unix_millis());
                POLL
            }
            Err(e) => {
                log::warn!("audit: {e} (feedback waits in the outbox)");
                status.error = Some(e);
                (pause * 2).min(MAX_PAUSE)
            }
        }
    }
}

/// Pause between rounds while everything works.
const POLL: Duration = Duration::from_millis(500);
/// Longest pause between rounds while the RPC or database fails.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Checks the RPC answers for `settings.chain_id` (startup and `pag0 -t`).
pub async fn check_chain(settings: &Arc<Settings>) -> Result<(), String> {
    sender::Chain::new(settings)?.check().await
}
