//! Write-ahead payment intents, as the request path uses them (the table and its states are in
//! [`crate::store`]): a payment header may leave pag0 only once [`IntentLog::write_ahead`] has
//! made its intent durable, so a crash at any instant leaves a record of every payment that
//! may have been paid.
//!
//! Durable first in the write-ahead file ([`wal`]: a copy into a mapped segment on the
//! request's thread, no waiting for a database), then in the SQL table: the settler records
//! intents with the outcomes that follow them (a paid call's record is its journal row; other
//! outcomes are intent rows), and the file's segments are deleted once their
//! records are in. On start, segments of a process that died are read back (recovery).
//!
//! An intent carries the agent's `Idempotency-Key`: the idempotency records
//! ([`crate::idempotency`]) ask this log whether the payment made for a key was paid, unpaid or
//! is in doubt, so a retry after a crash or an upstream failure is never paid again.
//!
//! Payments in doubt are resolved in the background ([`IntentLog::maintain`]): on a network
//! with an RPC (`payments.rpc`), from the chain (used → `committed` with its transaction and
//! journal row; unused once the latest block is past `validBefore` → `released`); elsewhere
//! they hold their budget until `validBefore` + a margin, then are `unresolved`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod resolve;

pub use crate::store::Wal;

use crate::chain::Chain;
use crate::metrics::Metrics;
use crate::settle::Settler;
use crate::store::{IN_DOUBT_MARGIN_SECONDS, Intent, IntentEvent, IntentRow, IntentState, Store};

/// The intent could not be written ahead (the write-ahead file failed): nothing is sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the payment could not be recorded before sending: {0}")]
pub struct WriteAheadError(String);

/// Written intents on their way to the SQL table, in file order. The settler takes them when
/// it handles outcomes; adding one wakes it only when it holds none (busy, it finds them on its
/// next round; idle, it sleeps without a tick).
#[derive(Default)]
pub struct Written {
    intents: Mutex<Vec<(u64, Intent)>>,
    /// Wakes the settler when intents arrive while it has none (it sleeps without a tick then).
    arrived: tokio::sync::Notify,
}

impl Written {
    fn push(&self, seq: u64, intent: Intent) {
        let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
        if intents.is_empty() {
            self.arrived.notify_one();
        }
        intents.push((seq, intent));
    }

    /// Everything added so far, oldest first.
    pub fn take(&self) -> Vec<(u64, Intent)> {
        std::mem::take(&mut *self.intents.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Completes when intents arrived since the last [`Written::take`] (at once if some did
    /// before this was called).
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }
}

/// An [`IntentEvent::Sent`] line written from a borrowed intent (same JSON).
#[derive(serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum SentRef<'a> {
    Sent(&'a Intent),
}

pub struct IntentLog {
    wal: Wal,
    /// Written intents, in the file's order, for the settler to put in the SQL table.
    written: Arc<Written>,
    metrics: Arc<Metrics>,
}

impl IntentLog {
    /// The log over `wal`, and the queue of written intents (for the settler, which puts
    /// them in the SQL table and then calls [`IntentLog::persisted`]).
    pub fn new(wal: Wal, metrics: Arc<Metrics>) -> (IntentLog, Arc<Written>) {
        let written = Arc::new(Written::default());
        let log = IntentLog {
            wal,
            written: written.clone(),
            metrics,
        };
        (log, written)
    }

    /// Returns once `intent` is durable (state `sent`). Call it before the signed header
    /// leaves pag0; on an error, do not send it.
    pub fn write_ahead(&self, intent: Intent) -> Result<(), WriteAheadError> {
        let project = intent.project.clone();
        let line = crate::store::spool_line(&SentRef::Sent(&intent))
            .map_err(|e| WriteAheadError(e.to_string()))?;
        self.wal
            // In file order (under the file's lock); the settler keeps the order.
            .append(&line, |seq| self.written.push(seq, intent))
            .map_err(|e| WriteAheadError(e.to_string()))?;
        self.count(&project, IntentState::Sent);
        Ok(())
    }

    /// Every intent written up to `seq` is in the SQL table (or its spool).
    pub fn persisted(&self, seq: u64) {
        self.wal.persisted(seq);
    }

    /// Counts an intent reaching `state`.
    pub fn count(&self, project: &str, state: IntentState) {
        self.metrics
            .payment_intents
            .with_label_values(&[project, state.as_str()])
            .inc();
    }

    /// On start, before serving: turns every intent left `sent` by the previous run into
    /// `in_doubt` (see [`Store::recover_intents`]).
    pub async fn recover(
        &self,
        store: &Store,
        wal_base: &std::path::Path,
    ) -> Result<Vec<IntentRow>, crate::store::StoreError> {
        // What a process that died wrote ahead but had not put in the table yet.
        for (path, events) in Wal::leftovers::<IntentEvent>(wal_base)? {
            let intents: Vec<Intent> = events
                .into_iter()
                .filter_map(|e| match e {
                    IntentEvent::Sent(i) => Some(*i),
                    IntentEvent::Outcome(_) => None,
                })
                .collect();
            store.record_intents(&intents).await?;
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
        let in_doubt = store.recover_intents().await?;
        if !in_doubt.is_empty() {
            log::warn!(
                "{} payment(s) sent before pag0 stopped have no known outcome; they are in doubt and hold their budget until their authorization expires (see /api/spend)",
                in_doubt.len()
            );
        }
        Ok(in_doubt)
    }

    /// Every `every`, forever: resolves payments in doubt from the chains in `chains` (by
    /// CAIP-2 network), turns the others `unresolved` once their authorization expired (plus a
    /// margin), and refreshes the in-doubt gauge. Outcomes go through `settler` (journal,
    /// intent state and budget ledger together).
    pub async fn maintain(
        &self,
        store: Arc<Store>,
        chains: HashMap<String, Arc<Chain>>,
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
}
