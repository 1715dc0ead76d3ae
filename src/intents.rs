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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{IN_DOUBT_MARGIN_SECONDS, Intent, IntentRow, IntentState, Store};

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

    /// Every `every`, forever: in-doubt intents whose authorization expired (plus a margin)
    /// become `unresolved`, and the in-doubt gauge is refreshed.
    pub async fn maintain(&self, store: Arc<Store>, every: Duration) {
        let mut projects_seen: Vec<String> = Vec::new();
        loop {
            let now = crate::clock::unix_now();
            match store
                .expire_in_doubt(now.saturating_sub(IN_DOUBT_MARGIN_SECONDS))
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
