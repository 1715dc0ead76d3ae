//! Write-ahead payment intents, as the request path uses them (the table and its states are in
//! [`crate::store`]): a payment header may leave pag0 only once [`IntentLog::write_ahead`] has
//! made its intent durable, so a crash at any instant leaves a record of every payment that
//! may have been paid.
//!
//! Group commit: one writer takes every intent queued while it wrote the previous batch and
//! makes them durable with one commit; concurrent paid calls share it, and a lone call waits
//! for its own commit only (no fixed window to sit out).
//!
//! The log also remembers which `Idempotency-Key`s belong to payments in doubt, so a retry
//! after a crash or an upstream failure gets `409 IDEMPOTENCY_IN_DOUBT` instead of paying
//! again (see [`IntentLog::in_doubt_nonce`]).
//!
//! Payments in doubt are resolved in the background ([`IntentLog::maintain`]): on a network
//! with an RPC (`payments.rpc`), from the chain (used → `committed` with its transaction and
//! journal row; unused once the latest block is past `validBefore` → `released`); elsewhere
//! they hold their budget until `validBefore` + a margin, then are `unresolved`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::budget::{BudgetKey, Reservation, Usage, Windows};
use crate::chain::{Chain, OnChain};
use crate::metrics::Metrics;
use crate::settle::{Job, Settler};
use crate::store::{
    IN_DOUBT_MARGIN_SECONDS, Intent, IntentFilter, IntentRow, IntentState, Outcome, SpendRecord,
    Store,
};

/// Intents written in one commit at most.
pub const MAX_BATCH: usize = 512;
/// Intents that may wait for the writer (a full queue makes paid calls wait: backpressure).
const QUEUE_CAPACITY: usize = 16_384;
/// How long an in-doubt `Idempotency-Key` is refused after the payment became in doubt.
pub const IN_DOUBT_KEY_SECONDS: u64 = 86_400;

/// The intent could not be made durable (database and spool both failed): nothing is sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the payment could not be recorded before sending: {0}")]
pub struct WriteAheadError(String);

struct Pending {
    intent: Intent,
    done: oneshot::Sender<Result<(), String>>,
}

pub struct IntentLog {
    tx: mpsc::Sender<Pending>,
    /// `project|Idempotency-Key` of payments in doubt → (nonce, unix second it became so).
    in_doubt_keys: Mutex<HashMap<String, (String, u64)>>,
    metrics: Arc<Metrics>,
}

impl IntentLog {
    /// The log and its writer future (spawn it on a runtime that lives as long as pag0).
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> (IntentLog, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let log = IntentLog {
            tx,
            in_doubt_keys: Mutex::default(),
            metrics,
        };
        (log, write(rx, store))
    }

    /// Returns once `intent` is durable (state `sent`). Call it before the signed header
    /// leaves pag0; on an error, do not send it.
    pub async fn write_ahead(&self, intent: Intent) -> Result<(), WriteAheadError> {
        let project = intent.project.clone();
        let (done, result) = oneshot::channel();
        self.tx
            .send(Pending { intent, done })
            .await
            .map_err(|_| WriteAheadError("the intent writer stopped".into()))?;
        result
            .await
            .map_err(|_| WriteAheadError("the intent writer stopped".into()))?
            .map_err(WriteAheadError)?;
        self.count(&project, IntentState::Sent);
        Ok(())
    }

    /// Counts an intent reaching `state`.
    pub fn count(&self, project: &str, state: IntentState) {
        self.metrics
            .payment_intents
            .with_label_values(&[project, state.as_str()])
            .inc();
    }

    /// The nonce of the payment in doubt made for `project`'s `Idempotency-Key`, if any.
    pub fn in_doubt_nonce(&self, project: &str, key: &str) -> Option<String> {
        let keys = self.in_doubt_keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            return None;
        }
        keys.get(&format!("{project}|{key}"))
            .map(|(nonce, _)| nonce.clone())
    }

    /// Remembers that the payment for `project`'s `Idempotency-Key` is in doubt.
    pub fn note_in_doubt(&self, project: &str, key: &str, nonce: String, now: u64) {
        let mut keys = self.in_doubt_keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|_, (_, since)| *since + IN_DOUBT_KEY_SECONDS > now);
        keys.insert(format!("{project}|{key}"), (nonce, now));
    }

    /// On start, before serving: turns every intent left `sent` by the previous run into
    /// `in_doubt` (see [`Store::recover_intents`]) and remembers their Idempotency-Keys.
    pub async fn recover(&self, store: &Store) -> Result<Vec<IntentRow>, crate::store::StoreError> {
        let in_doubt = store.recover_intents().await?;
        let now = crate::clock::unix_now();
        for r in &in_doubt {
            if let Some(key) = &r.intent.idempotency_key {
                let since = (r.updated_at.max(0) / 1000) as u64;
                if since + IN_DOUBT_KEY_SECONDS > now {
                    self.note_in_doubt(&r.intent.project, key, r.intent.nonce.clone(), since);
                }
            }
        }
        if !in_doubt.is_empty() {
            log::warn!(
                "{} payment(s) sent before pag0 stopped have no known outcome; they are in doubt and hold their budget until their authorization expires (see /api/spend)",
                in_doubt.len()
            );
        }
        Ok(in_doubt)
    }

    /// Forgets the in-doubt mark of `project`'s `Idempotency-Key` (its payment was proved
    /// not made: a retry may pay).
    fn forget_key(&self, project: &str, key: &str) {
        let mut keys = self.in_doubt_keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&format!("{project}|{key}"));
    }

    /// Every `every`, forever: resolves payments in doubt from the chains in `chains` (by
    /// CAIP-2 network), turns the others `unresolved` once their authorization expired (plus a
    /// margin), and refreshes the in-doubt gauge. Outcomes go through `settler` (journal,
    /// intent state and budget ledger together).
    pub async fn maintain(
        &self,
        store: Arc<Store>,
        chains: HashMap<String, Chain>,
        settler: Arc<Settler>,
        every: Duration,
    ) {
        let mut projects_seen: Vec<String> = Vec::new();
        loop {
            if !chains.is_empty() {
                self.resolve_on_chain(&store, &chains, &settler).await;
            }
            let now = crate::clock::unix_now();
            match store
                .expire_in_doubt(now.saturating_sub(IN_DOUBT_MARGIN_SECONDS), |network| {
                    !chains.contains_key(network)
                })
                .await
            {
                Ok(rows) => {
                    for r in rows {
                        log::warn!(project = r.intent.project.as_str(), id = r.intent.id.as_str(); "payment in doubt is unresolved: its authorization expired and no RPC could tell whether it was settled; it stays in /api/spend");
                        self.count(&r.intent.project, IntentState::Unresolved);
                    }
                }
                Err(e) => log::debug!("in-doubt payments: {e}"),
            }
            if let Ok(totals) = store.intent_totals(IntentState::InDoubt).await {
                let mut counts: HashMap<String, i64> = HashMap::new();
                for ((project, _), (n, _)) in totals {
                    *counts.entry(project).or_default() += n as i64;
                }
                for p in &projects_seen {
                    if !counts.contains_key(p) {
                        self.metrics
                            .payments_in_doubt
                            .with_label_values(&[p])
                            .set(0);
                    }
                }
                for (p, n) in &counts {
                    self.metrics
                        .payments_in_doubt
                        .with_label_values(&[p])
                        .set(*n);
                }
                projects_seen = counts.into_keys().collect();
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Asks the chain about every payment in doubt on a network with an RPC.
    async fn resolve_on_chain(
        &self,
        store: &Store,
        chains: &HashMap<String, Chain>,
        settler: &Settler,
    ) {
        let rows = match store
            .intents(&IntentFilter::states(&[IntentState::InDoubt]), 1_000)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                log::debug!("in-doubt payments: {e}");
                return;
            }
        };
        for r in rows {
            let Some(chain) = chains.get(&r.intent.network) else {
                continue;
            };
            let i = &r.intent;
            let (Ok(token), Ok(payer), Ok(nonce)) =
                (i.asset.parse(), i.payer.parse(), i.nonce.parse())
            else {
                log::warn!(id = i.id.as_str(); "payment in doubt with an unreadable asset, payer or nonce");
                continue;
            };
            match chain.authorization(token, payer, nonce).await {
                Ok(OnChain::Used { tx }) => {
                    let tx = tx.map(|t| format!("{t:#x}"));
                    log::info!(project = i.project.as_str(), id = i.id.as_str(); "payment in doubt was settled on chain{}", tx.as_deref().map(|t| format!(" in {t}")).unwrap_or_default());
                    self.count(&i.project, IntentState::Committed);
                    settler
                        .submit(Job::Commit {
                            record: Box::new(spend_record(&r, tx)),
                            reservation: reservation(&r),
                            project: None,
                        })
                        .await;
                }
                Ok(OnChain::Unused { latest_block_time })
                    if latest_block_time >= i.valid_before =>
                {
                    log::info!(project = i.project.as_str(), id = i.id.as_str(); "payment in doubt was never settled and has expired: released");
                    if let Some(key) = &i.idempotency_key {
                        self.forget_key(&i.project, key);
                    }
                    self.count(&i.project, IntentState::Released);
                    settler
                        .submit(Job::Release {
                            reservation: reservation(&r),
                            intent: Some(Outcome {
                                id: i.id.clone(),
                                state: IntentState::Released,
                                reason: Some(format!(
                                    "not used on chain by block time {latest_block_time}, past its validBefore {}",
                                    i.valid_before
                                )),
                                tx_hash: None,
                                at: crate::clock::unix_millis() as i64,
                            }),
                        })
                        .await;
                }
                Ok(OnChain::Unused { .. }) => {} // still settleable: ask again later
                Err(e) => {
                    log::debug!(network = i.network.as_str(); "cannot resolve a payment in doubt yet: {e}")
                }
            }
        }
    }
}

/// The journal row of a payment in doubt found settled.
fn spend_record(r: &IntentRow, tx_hash: Option<String>) -> SpendRecord {
    let i = &r.intent;
    SpendRecord {
        id: i.id.clone(),
        project: i.project.clone(),
        pool: i.pool.clone(),
        network: i.network.clone(),
        asset: i.asset.clone(),
        pay_to: i.pay_to.clone(),
        payer: i.payer.clone(),
        amount: i.amount,
        nonce: i.nonce.clone(),
        tx_hash,
        url: i.url.clone(),
        window_day: i.window_day.clone(),
        window_month: i.window_month.clone(),
        reserved_at: i.created_at / 1000,
        committed_at: crate::clock::unix_now() as i64,
    }
}

/// The budget reservation a payment in doubt holds (the ledger knows it by its id), if it
/// counted in a budget.
fn reservation(r: &IntentRow) -> Option<Reservation> {
    let i = &r.intent;
    if i.pool.is_empty() {
        return None;
    }
    let reserved_at = (i.created_at.max(0) / 1000) as u64;
    let windows = Windows {
        day: i.window_day.clone(),
        month: i.window_month.clone(),
        ..Windows::at(reserved_at)
    };
    Some(Reservation {
        id: i.id.clone(),
        key: BudgetKey::new(i.project.clone(), i.pool.clone()),
        amount: i.amount,
        usage: Usage {
            windows: windows.clone(),
            day: Default::default(),
            month: Default::default(),
        },
        windows,
        reserved_at,
        expires_at: i.valid_before.saturating_add(IN_DOUBT_MARGIN_SECONDS),
        fallback: false,
    })
}

/// The writer: each round makes everything queued durable with one commit, then answers.
async fn write(mut rx: mpsc::Receiver<Pending>, store: Arc<Store>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (intents, waiting): (Vec<Intent>, Vec<_>) =
            batch.drain(..).map(|p| (p.intent, p.done)).unzip();
        let result = store
            .record_intents(&intents)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            log::error!(rows = intents.len(); "PAYMENT INTENTS NOT RECORDED (database and spool failed): {e}; nothing is sent");
        }
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}
