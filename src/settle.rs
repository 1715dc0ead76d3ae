//! After a paid request is over: the payment goes to the spend journal (and its write-ahead
//! intent becomes `committed`, in the same transaction), then its budget reservation is
//! committed; a payment proved not paid releases its reservation (intent `released`); one whose
//! outcome is unknown keeps its hold (intent `in_doubt`). Runs on a worker of its own so
//! `logging` never holds the agent's connection for it.
//!
//! The worker takes whatever is queued within [`GROUP_COMMIT_WINDOW`] (up to [`MAX_BATCH`])
//! and writes the journal rows in one transaction (group commit), then commits or releases
//! each reservation concurrently (pipelined on the Redis connection). Order per payment is
//! always journal → commit, so a budget rebuilt from the journal never misses a committed
//! payment. On graceful shutdown [`Settler::drain`] waits until the queue is empty.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy_primitives::U256;
use serde_json::json;
use tokio::sync::mpsc;

use crate::anomaly::AnomalyDetector;
use crate::budget::{Ledger, Reservation};
use crate::config::Project;
use crate::intents::{IntentLog, Written};
use crate::metrics::Metrics;
use crate::policy::PolicyBook;
use crate::store::{Intent, IntentRow, IntentState, Outcome, SpendRecord, Store};

/// Most jobs handled in one round (one journal transaction).
pub const MAX_BATCH: usize = 512;
/// Jobs that may wait; a full queue makes `logging` wait (backpressure, nothing is dropped).
pub const QUEUE_CAPACITY: usize = 65_536;
/// How long the worker lets concurrent payments join a round before writing it (group commit:
/// one transaction for many rows costs a fraction of one per row). The agent already has its
/// response; this only delays the journal row and the budget commit by at most this much (a
/// round of releases only is not delayed).
pub const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(2);

/// What to do with a finished request's payment.
pub enum Job {
    /// It settled: journal it (its intent, same id, becomes `committed`), then commit its
    /// reservation (if any).
    Commit {
        record: Box<SpendRecord>,
        reservation: Option<Reservation>,
        /// The project as configured, for its anomaly alert (`None`: a payment resolved from
        /// the chain after the fact, not watched).
        project: Option<Arc<Project>>,
    },
    /// It was not paid: give the budget back, and record why (when an intent was written).
    Release {
        reservation: Option<Reservation>,
        intent: Option<Outcome>,
    },
    /// It was sent and nobody knows whether it was paid: the intent becomes `in_doubt` and the
    /// reservation keeps holding budget until it expires (after the authorization does).
    InDoubt(Outcome),
}

pub struct Settler {
    tx: mpsc::Sender<Job>,
    /// Jobs submitted and not yet done.
    in_flight: Arc<AtomicUsize>,
}

/// Everything the worker needs.
pub struct SettlerParts {
    pub store: Arc<Store>,
    pub ledger: Arc<dyn Ledger>,
    pub anomaly: Arc<AnomalyDetector>,
    pub policies: Arc<PolicyBook>,
    pub metrics: Arc<Metrics>,
    /// Told which written intents are in the table (its file segments can go).
    pub intents: Arc<IntentLog>,
}

impl Settler {
    /// The settler and its worker future (spawn it on a runtime that lives as long as pag0).
    /// `written`: the intents the [`IntentLog`] wrote ahead, in its order; the worker puts
    /// them in the SQL table together with the outcomes that follow them.
    pub fn new(
        parts: SettlerParts,
        written: Arc<Written>,
    ) -> (Settler, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let worker = run(rx, written, Arc::new(parts), in_flight.clone());
        (Settler { tx, in_flight }, worker)
    }

    pub async fn submit(&self, job: Job) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(job).await.is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            log::error!("settlement worker stopped; a payment outcome was not recorded");
        }
    }

    /// Jobs submitted and not finished yet.
    pub fn pending(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until every submitted job is done, or `timeout` passed. Returns what is left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.pending()
    }
}

/// Written intents waiting for their outcome, so that most become one row in their final
/// state (no insert-then-update); they are durable in the write-ahead file meanwhile.
#[derive(Default)]
struct Pending {
    /// In file order: (sequence number, arrival, intent).
    intents: std::collections::VecDeque<(u64, tokio::time::Instant, Intent)>,
    /// Sequence number of the last intent received.
    last_seq: u64,
}

impl Pending {
    /// Everything up to this sequence number is in the table (or was never written).
    fn watermark(&self) -> u64 {
        self.intents
            .front()
            .map_or(self.last_seq, |(seq, _, _)| seq - 1)
    }
}

/// How long a written intent waits for its outcome before it is put in the table as `sent`.
pub const INTENT_HOLD: Duration = Duration::from_millis(500);

async fn run(
    mut rx: mpsc::Receiver<Job>,
    written: Arc<Written>,
    parts: Arc<SettlerParts>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut pending = Pending::default();
    loop {
        // No tick: with intents waiting, the settler wakes when the oldest one's hold ends (its
        // outcome is slow or has not come); with none, when one arrives. Idle, it sleeps.
        let hold_ends = pending.intents.front().map(|(_, at, _)| *at + INTENT_HOLD);
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
            _ = tokio::time::sleep_until(hold_ends.unwrap_or_else(tokio::time::Instant::now)),
                if hold_ends.is_some() => {}
            _ = written.arrived(), if hold_ends.is_none() => {}
        }
        // Only journal and intent rows gain from company; a release gives budget back at once.
        let journals = batch
            .iter()
            .any(|j| !matches!(j, Job::Release { intent: None, .. }));
        if journals && batch.len() < MAX_BATCH {
            tokio::time::sleep(GROUP_COMMIT_WINDOW).await;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // After the jobs: the intent of every outcome taken was written before the outcome was
        // submitted, so it is in this round or an earlier one (an outcome never lands before
        // its row). All of them, for the same reason.
        let now = tokio::time::Instant::now();
        for (seq, intent) in written.take() {
            pending.last_seq = seq;
            pending.intents.push_back((seq, now, intent));
        }
        let n = batch.len();
        settle(&parts, std::mem::take(&mut batch), &mut pending, now).await;
        in_flight.fetch_sub(n, Ordering::SeqCst);
    }
}

async fn settle(
    parts: &Arc<SettlerParts>,
    jobs: Vec<Job>,
    pending: &mut Pending,
    now: tokio::time::Instant,
) {
    let records: Vec<&SpendRecord> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Commit { record, .. } => Some(&**record),
            _ => None,
        })
        .collect();
    let at = crate::clock::unix_millis() as i64;
    let outcomes: Vec<Outcome> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Commit { record, .. } => Some(Outcome {
                id: record.id.clone(),
                state: IntentState::Committed,
                reason: None,
                tx_hash: record.tx_hash.clone(),
                at,
            }),
            Job::Release { intent, .. } => intent.clone(),
            Job::InDoubt(outcome) => Some(outcome.clone()),
        })
        .collect();
    // A pending intent whose outcome is here is inserted in its final state (one row); one
    // that waited long enough goes in as `sent`; outcomes of intents already in the table
    // update them.
    let mut intents: Vec<IntentRow> = Vec::new();
    let mut later = Vec::new();
    if !outcomes.is_empty() {
        let index: HashMap<&str, usize> = pending
            .intents
            .iter()
            .enumerate()
            .map(|(k, (_, _, i))| (i.id.as_str(), k))
            .collect();
        let mut finished: Vec<(usize, Outcome)> = Vec::new();
        for o in outcomes {
            match index.get(o.id.as_str()) {
                Some(&k) => finished.push((k, o)),
                None => later.push(o),
            }
        }
        drop(index);
        finished.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
        for (k, o) in finished {
            if let Some((_, _, intent)) = pending.intents.remove(k)
                // A committed payment is its journal row (same id, written just below): the
                // intent table keeps what is not, or not yet, a payment, and the payments made
                // for an Idempotency-Key (found by their key when a record was lost).
                && (o.state != IntentState::Committed || intent.idempotency_key.is_some())
            {
                intents.push(IntentRow {
                    intent,
                    state: o.state,
                    reason: o.reason,
                    tx_hash: o.tx_hash,
                    updated_at: o.at,
                });
            }
        }
    }
    while pending
        .intents
        .front()
        .is_some_and(|(_, arrived, _)| *arrived + INTENT_HOLD <= now)
    {
        if let Some((_, _, intent)) = pending.intents.pop_front() {
            intents.push(IntentRow::sent(intent));
        }
    }
    let watermark = pending.watermark();
    // Journal first: a budget rebuilt from it then never misses these payments.
    let written = parts.store.settle(&intents, &records, &later).await;
    if written.is_ok() {
        // In the table (or its spool): the write-ahead file no longer needs them.
        parts.intents.persisted(watermark);
    }
    if let Err(e) = written {
        for r in &records {
            parts.count(&r.project, "journal_failed");
            log::error!(project = r.project.as_str(), id = r.id.as_str(); "SPEND NOT JOURNALED (database and spool failed): {e}; record: {}", serde_json::to_string(r).unwrap_or_default());
        }
        for o in &later {
            log::error!(id = o.id.as_str(), state = o.state.as_str(); "PAYMENT OUTCOME NOT RECORDED (database and spool failed): {e}; the intent stays in doubt");
        }
    }
    let ledger_ops = jobs.iter().map(|job| {
        let parts = parts.clone();
        async move {
            match job {
                Job::Release {
                    reservation: Some(r),
                    ..
                } => {
                    if let Err(e) = parts.ledger.release(r).await {
                        log::debug!("release failed (the hold expires by itself): {e}");
                    }
                    parts.count(&r.key.project, "released");
                }
                Job::Release { .. } | Job::InDoubt(_) => {}
                Job::Commit {
                    reservation: Some(r),
                    ..
                } => match parts.ledger.commit(r).await {
                    Ok(()) => parts.count(&r.key.project, "committed"),
                    Err(e) => log::warn!("budget commit deferred until the ledger is back: {e}"),
                },
                Job::Commit { .. } => {}
            }
        }
    });
    futures::future::join_all(ledger_ops).await;
    let batch: std::collections::HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    for job in &jobs {
        if let Job::Commit {
            record,
            project: Some(project),
            ..
        } = job
        {
            watch_anomaly(parts, project, record, &batch).await;
        }
    }
}

impl SettlerParts {
    fn count(&self, project: &str, op: &str) {
        self.metrics
            .budget_operations
            .with_label_values(&[project, op])
            .inc();
    }
}

/// Feeds a committed payment to the anomaly detector; an anomaly is reported to the policy's
/// webhook in the background (never delays or blocks anything).
/// `batch`: ids of this round's payments, all journaled already; a rebuild of the history
/// from the journal leaves them out (each is recorded on its own).
async fn watch_anomaly(
    parts: &SettlerParts,
    project: &Project,
    record: &SpendRecord,
    batch: &std::collections::HashSet<&str>,
) {
    let Some(policy) = parts.policies.effective(project) else {
        return;
    };
    let Some(alert) = policy.anomaly.clone() else {
        return;
    };
    let now = record.committed_at.max(0) as u64;
    let pool = if record.pool.is_empty() {
        record.network.as_str()
    } else {
        record.pool.as_str()
    };
    if !parts.anomaly.seeded(&project.id, pool) {
        let since = now.saturating_sub(3600 * (u64::from(alert.rule.trailing_hours) + 1));
        let past: Vec<(u64, U256)> = parts
            .store
            .spend(
                &project.id,
                since as i64,
                now as i64 + 1,
                crate::store::MAX_SPEND_ROWS,
            )
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !batch.contains(r.id.as_str()) && r.pool == record.pool)
            .map(|r| (r.committed_at.max(0) as u64, r.amount))
            .collect();
        parts.anomaly.seed(&project.id, pool, &past);
    }
    let Some(anomaly) = parts
        .anomaly
        .record(&project.id, pool, record.amount, now, &alert.rule)
    else {
        return;
    };
    log::warn!(project = project.id.as_str(), pool = pool; "spend anomaly: {} in the last hour, more than {}x the trailing hourly average of {}", anomaly.last_hour, anomaly.factor, anomaly.trailing_hourly_average);
    let body = json!({
        "type": "pag0.spend_anomaly",
        "project": project.id,
        "pool": pool,
        "last_hour": anomaly.last_hour.to_string(),
        "trailing_hourly_average": anomaly.trailing_hourly_average.to_string(),
        "factor": anomaly.factor,
        "at": now,
    });
    let metrics = parts.metrics.clone();
    let project = project.id.clone();
    tokio::spawn(async move {
        let result = match alert.webhook.post(&body).await {
            Ok(_) => "sent",
            Err(e) => {
                log::warn!(project = project.as_str(); "anomaly alert not delivered: {e}");
                "failed"
            }
        };
        metrics
            .anomaly_alerts
            .with_label_values(&[project.as_str(), result])
            .inc();
    });
}

/// What reconciliation does to budgets and alerts: a payment proved never settled is journaled
/// as a correction and given back to its budget windows; unknown spend raises the project's
/// anomaly webhook (`policy.anomaly.webhook`) at once.
pub struct ReconcileEffects {
    pub store: Arc<Store>,
    pub ledger: Arc<dyn Ledger>,
    pub policies: Arc<PolicyBook>,
    /// The projects as configured at start (their policies' webhooks).
    pub projects: Vec<Arc<Project>>,
    pub metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl crate::audit::reconcile::Effects for ReconcileEffects {
    async fn refund(&self, p: &crate::audit::reconcile::Payment) -> Result<(), String> {
        // Journaled first: a budget rebuilt from the journal then already counts it back.
        self.store
            .record_correction(&crate::store::Correction {
                id: p.id.clone(),
                project: p.project.clone(),
                pool: p.pool.clone(),
                window_day: p.window_day.clone(),
                window_month: p.window_month.clone(),
                amount: p.amount,
                reason: "not settled: the authorization expired unused".into(),
            })
            .await
            .map_err(|e| e.to_string())?;
        if p.pool.is_empty() {
            return Ok(());
        }
        let key = crate::budget::BudgetKey {
            project: p.project.clone(),
            pool: p.pool.clone(),
        };
        self.ledger
            .refund(&key, &p.window_day, &p.window_month, p.amount, &p.id)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics
            .budget_operations
            .with_label_values(&[p.project.as_str(), "refunded"])
            .inc();
        Ok(())
    }

    async fn alert(&self, project: &str, body: serde_json::Value) -> bool {
        let alert = self
            .projects
            .iter()
            .find(|p| p.id == project)
            .and_then(|p| self.policies.effective(p))
            .and_then(|policy| policy.anomaly.clone());
        let Some(alert) = alert else {
            log::warn!(project = project; "unknown spend, and the project has no anomaly webhook to tell");
            return true;
        };
        let (result, delivered) = match alert.webhook.post(&body).await {
            Ok(_) => ("sent", true),
            Err(e) => {
                log::warn!(project = project; "unknown spend alert not delivered (retried): {e}");
                ("failed", false)
            }
        };
        self.metrics
            .anomaly_alerts
            .with_label_values(&[project, result])
            .inc();
        delivered
    }

    async fn journal_complete(&self) -> bool {
        self.store.spooled().await == 0
    }
}
