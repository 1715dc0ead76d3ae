//! Reconciliation: every journaled payment checked against the chain, and every transfer out
//! of a payment wallet matched to a payment pag0 knows of.
//!
//! A payment is `settled` when its transaction (or, without one, the transaction that used its
//! EIP-3009 authorization) moved exactly its amount from the payer to its payee and used its
//! authorization; `not_settled` when its authorization is unused and can no longer be used
//! (the chain's time is past `validBefore`: the money never moved); `mismatch` when the chain
//! shows something else (a reverted transaction, another amount or payee, another
//! authorization); `pending` while it can still settle. A transfer out of a watched wallet that
//! used none of pag0's authorizations and is no journaled transaction is **unknown spend**: a
//! leaked key, or another client using the wallet. Knows nothing of Pingora.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::outbox;
use crate::chain::{Chain, TxFacts};
use crate::store::{Db, StoreError, with_pool};

pub const SETTLED: &str = "settled";
pub const NOT_SETTLED: &str = "not_settled";
pub const MISMATCH: &str = "mismatch";
pub const PENDING: &str = "pending";
pub const STATES: [&str; 4] = [SETTLED, NOT_SETTLED, MISMATCH, PENDING];

/// The background job looks at payments of the last week (older ones were classified then).
const BACKGROUND_DAYS: i64 = 7;
/// Payments checked per query.
const PAGE: i64 = 500;
/// Blocks per `eth_getLogs` call (providers commonly cap ranges at 10 000).
const LOG_BLOCKS: u64 = crate::chain::LOG_LOOKBACK_BLOCKS;
/// How far around a block range the journal is read for the payments that range may settle.
const MATCH_MARGIN_SECONDS: i64 = 86_400;
/// Blocks younger than this (by the chain's clock) are not scanned for unknown spend yet: the
/// journal row of a payment settled in them may still be on its way to SQL.
pub const SCAN_LAG_SECONDS: u64 = 120;
/// Consecutive RPC failures after which a run stops (the RPC is down: next run).
const MAX_FAILURES_IN_A_ROW: u32 = 3;

/// A journaled payment, with what its intent says about its validity.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: String,
    pub project: String,
    pub pool: String,
    pub network: String,
    pub asset: String,
    pub payer: String,
    pub pay_to: String,
    pub amount: U256,
    pub nonce: String,
    pub tx_hash: Option<String>,
    pub window_day: String,
    pub window_month: String,
    pub committed_at: i64,
    /// The authorization's `validBefore` (from its intent; `None` for older rows).
    pub valid_before: Option<i64>,
}

/// What the chain says about one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: &'static str,
    pub detail: Option<String>,
    pub block: Option<u64>,
    /// The transaction that settled it (when found).
    pub tx: Option<B256>,
}

/// A wallet transfer no payment explains.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownSpend {
    pub network: String,
    pub tx_hash: String,
    pub log_index: u64,
    pub token: String,
    pub from: String,
    pub to: String,
    pub amount: String,
    pub block: u64,
    /// The projects whose wallet it left.
    pub projects: Vec<String>,
}

/// What the reconciliation does besides recording (refunds, alerts), given by its owner.
#[async_trait::async_trait]
pub trait Effects: Send + Sync {
    /// A committed payment proved never settled: give its budget back (once per payment).
    async fn refund(&self, payment: &Payment) -> Result<(), String>;
    /// Unknown spend out of `project`'s wallet: raise its anomaly webhook. `true` once it was
    /// delivered, or there is nowhere to deliver it; `false` to try again next run.
    async fn alert(&self, project: &str, body: Value) -> bool;
    /// Every payment made so far is in SQL (no journal row waits in a spool): what the chain
    /// shows can be matched against it.
    async fn journal_complete(&self) -> bool;
}

/// Reports progress over a long run (`pag0 reconcile` draws a bar; the background job none).
pub trait Progress: Send + Sync {
    fn begin(&self, _label: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn end(&self) {}
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// The reconciliation's metrics (registered in [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct Counters {
    /// `pag0_reconcile_payments{state}`: payments per class, as recorded.
    pub payments: prometheus::IntGaugeVec,
    /// `pag0_unknown_spend_total`: wallet transfers no payment explains.
    pub unknown_spend: prometheus::IntCounter,
}

/// A watched wallet: a project's payment wallet.
#[derive(Debug, Clone)]
pub struct Wallet {
    pub project: String,
    pub address: Address,
}

/// What one run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Payments checked per state, with their amounts per asset.
    pub states: BTreeMap<String, StateTotals>,
    pub unknown_spend: Vec<UnknownSpend>,
    pub blocks: u64,
    /// Payments refunded to their budget (`budgets.release_unsettled`).
    pub refunded: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StateTotals {
    pub payments: u64,
    /// asset → base units.
    pub amounts: BTreeMap<String, String>,
}

pub struct Reconciler {
    db: Db,
    /// CAIP-2 network → its RPC.
    chains: HashMap<String, Arc<Chain>>,
    wallets: Vec<Wallet>,
    /// (network, token) pairs pag0 pays with.
    tokens: Vec<(String, Address)>,
    release_unsettled: bool,
    /// Send unknown-spend alerts (the running pag0; `pag0 reconcile` leaves them to it).
    alerts: bool,
    effects: Arc<dyn Effects>,
    counters: Counters,
}

impl Reconciler {
    pub fn new(
        db: Db,
        chains: HashMap<String, Arc<Chain>>,
        wallets: Vec<Wallet>,
        tokens: Vec<(String, Address)>,
        release_unsettled: bool,
        effects: Arc<dyn Effects>,
        counters: Counters,
    ) -> Reconciler {
        Reconciler {
            db,
            chains,
            wallets,
            tokens,
            release_unsettled,
            alerts: true,
            effects,
            counters,
        }
    }

    /// Records unknown spend without alerting (the running pag0 alerts what it finds recorded).
    pub fn without_alerts(mut self) -> Reconciler {
        self.alerts = false;
        self
    }

    /// Every `every`, forever: the last week's unsettled payments, the wallets' new transfers,
    /// refunds. Errors are logged and retried next time.
    pub async fn run(self: Arc<Self>, every: Duration) {
        loop {
            let now = crate::clock::unix_now() as i64;
            if let Err(e) = self
                .payments(now - BACKGROUND_DAYS * 86_400, now + 1, false, &Quiet)
                .await
            {
                log::warn!("reconciliation: {e}");
            }
            for network in self.networks() {
                if let Err(e) = self.scan_new_blocks(&network).await {
                    log::warn!("reconciliation of {network}: {e}");
                }
            }
            if let Err(e) = self.refund_unsettled().await {
                log::warn!("reconciliation refunds: {e}");
            }
            if let Err(e) = self.alert_unknown_spend().await {
                log::warn!("unknown spend alerts: {e}");
            }
            self.publish().await;
            tokio::time::sleep(every).await;
        }
    }

    /// Networks with an RPC and a token.
    pub fn networks(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tokens
            .iter()
            .filter(|(n, _)| self.chains.contains_key(n))
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn chain(&self, network: &str) -> Option<&Arc<Chain>> {
        self.chains.get(network)
    }

    /// Classifies the payments committed in `[from, to)` (unix seconds): those never checked
    /// and those still pending, or all of them with `recheck`.
    pub async fn payments(
        &self,
        from: i64,
        to: i64,
        recheck: bool,
        progress: &dyn Progress,
    ) -> Result<Outcome, String> {
        let total = count_payments(&self.db, from, to, recheck)
            .await
            .map_err(|e| e.to_string())?;
        progress.begin("payments", total);
        let mut outcome = Outcome::default();
        let mut after = (from - 1, String::new());
        let mut failures = 0;
        loop {
            let page = journal(&self.db, from, to, &after, recheck)
                .await
                .map_err(|e| e.to_string())?;
            for p in &page {
                let Some(chain) = self.chains.get(&p.network) else {
                    progress.advance(1);
                    continue;
                };
                let verdict = match classify(chain, p).await {
                    Ok(v) => {
                        failures = 0;
                        v
                    }
                    // This payment is checked again next run; the RPC down stops this run.
                    Err(e) => {
                        failures += 1;
                        log::warn!(id = p.id.as_str(); "reconciliation of a payment: {e}");
                        if failures >= MAX_FAILURES_IN_A_ROW {
                            progress.end();
                            return Err(e);
                        }
                        progress.advance(1);
                        continue;
                    }
                };
                record(&self.db, p, &verdict)
                    .await
                    .map_err(|e| e.to_string())?;
                let totals = outcome.states.entry(verdict.state.to_string()).or_default();
                totals.payments += 1;
                let sum = totals.amounts.entry(p.asset.clone()).or_default();
                *sum = U256::from_str_radix(if sum.is_empty() { "0" } else { sum }, 10)
                    .unwrap_or_default()
                    .saturating_add(p.amount)
                    .to_string();
                progress.advance(1);
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => {
                    after = (last.committed_at, last.id.clone())
                }
                _ => break,
            }
        }
        progress.end();
        Ok(outcome)
    }

    /// Scans the blocks after the last scanned one on `network` (the last day's on the first
    /// run) up to [`SCAN_LAG_SECONDS`] ago for unknown spend, once the journal is complete.
    pub async fn scan_new_blocks(&self, network: &str) -> Result<Vec<UnknownSpend>, String> {
        if !self.effects.journal_complete().await {
            return Ok(Vec::new());
        }
        let chain = self.chains.get(network).ok_or("no RPC for the network")?;
        let (latest, now) = chain.latest().await?;
        let last = settled_block(chain, latest, now).await?;
        let name = format!("reconcile.block.{network}");
        let first = match outbox::cursor(&self.db, &name)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(c) => c.parse::<u64>().unwrap_or(0) + 1,
            None => chain.block_at(now.saturating_sub(86_400), latest).await?,
        };
        let Some(last) = last.filter(|l| *l >= first) else {
            return Ok(Vec::new());
        };
        let found = self.scan(network, first, last, &Quiet).await?;
        outbox::set_cursor(&self.db, &name, &last.to_string())
            .await
            .map_err(|e| e.to_string())?;
        Ok(found)
    }

    /// Every transfer out of a watched wallet in blocks `first..=last` that no payment
    /// explains; new ones are recorded, counted and alerted at once.
    pub async fn scan(
        &self,
        network: &str,
        first: u64,
        last: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<UnknownSpend>, String> {
        let chain = self.chains.get(network).ok_or("no RPC for the network")?;
        let tokens: Vec<Address> = self
            .tokens
            .iter()
            .filter(|(n, _)| n == network)
            .map(|(_, t)| *t)
            .collect();
        let mut wallets: BTreeMap<Address, Vec<String>> = BTreeMap::new();
        for w in &self.wallets {
            wallets
                .entry(w.address)
                .or_default()
                .push(w.project.clone());
        }
        let span = last.saturating_sub(first) + 1;
        progress.begin(&format!("blocks of {network}"), span);
        // What pag0 knows: the journal and open intents around these blocks' time.
        let (t0, t1) = (
            chain.block_time(first).await?,
            chain.block_time(last).await?,
        );
        let known = known_payments(
            &self.db,
            t0 as i64 - MATCH_MARGIN_SECONDS,
            t1 as i64 + MATCH_MARGIN_SECONDS,
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut unknown = Vec::new();
        let mut start = first;
        while start <= last {
            let end = (start + LOG_BLOCKS - 1).min(last);
            for token in &tokens {
                for (wallet, projects) in &wallets {
                    let transfers = chain.transfers_from(*token, *wallet, start, end).await?;
                    if transfers.is_empty() {
                        continue;
                    }
                    let used: HashMap<B256, Vec<B256>> = chain
                        .authorizations_used(*token, *wallet, start, end)
                        .await?
                        .into_iter()
                        .fold(HashMap::new(), |mut m, (tx, nonce)| {
                            m.entry(tx).or_default().push(nonce);
                            m
                        });
                    for t in transfers {
                        let explained = known.txs.contains(&t.tx)
                            || used
                                .get(&t.tx)
                                .is_some_and(|ns| ns.iter().any(|n| known.nonces.contains(n)));
                        if explained {
                            continue;
                        }
                        let spend = UnknownSpend {
                            network: network.to_string(),
                            tx_hash: format!("{:#x}", t.tx),
                            log_index: t.log_index,
                            token: t.token.to_checksum(None),
                            from: t.from.to_checksum(None),
                            to: t.to.to_checksum(None),
                            amount: t.value.to_string(),
                            block: t.block,
                            projects: projects.clone(),
                        };
                        if insert_unknown(&self.db, &spend)
                            .await
                            .map_err(|e| e.to_string())?
                        {
                            self.counters.unknown_spend.inc();
                            log::error!(network = network, tx = spend.tx_hash.as_str(); "UNKNOWN SPEND: {} base units of {} left {} to {} with no payment pag0 made", spend.amount, spend.token, spend.from, spend.to);
                        }
                        unknown.push(spend);
                    }
                }
            }
            progress.advance(end - start + 1);
            start = end + 1;
        }
        progress.end();
        if !unknown.is_empty()
            && let Err(e) = self.alert_unknown_spend().await
        {
            log::warn!("unknown spend alerts: {e}");
        }
        Ok(unknown)
    }

    /// Sends the anomaly webhook of every project whose wallet the recorded unknown spend left,
    /// until each is delivered (right after the scan that found it, then every run).
    pub async fn alert_unknown_spend(&self) -> Result<u64, String> {
        if !self.alerts {
            return Ok(0);
        }
        let mut sent = 0;
        for spend in unalerted(&self.db).await.map_err(|e| e.to_string())? {
            let from: Option<Address> = spend.from.parse().ok();
            let mut delivered = true;
            for w in self.wallets.iter().filter(|w| Some(w.address) == from) {
                let body = json!({
                    "type": "pag0.unknown_spend",
                    "project": w.project,
                    "network": spend.network,
                    "token": spend.token,
                    "from": spend.from,
                    "to": spend.to,
                    "amount": spend.amount,
                    "tx_hash": spend.tx_hash,
                    "block": spend.block,
                });
                delivered &= self.effects.alert(&w.project, body).await;
            }
            if delivered {
                mark_alerted(&self.db, &spend)
                    .await
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Gives back the budget of payments proved never settled (`budgets.release_unsettled`).
    pub async fn refund_unsettled(&self) -> Result<u64, String> {
        if !self.release_unsettled {
            return Ok(0);
        }
        let due = unrefunded(&self.db).await.map_err(|e| e.to_string())?;
        let mut done = 0;
        for p in due {
            self.effects.refund(&p).await?;
            mark_refunded(&self.db, &p.id)
                .await
                .map_err(|e| e.to_string())?;
            log::warn!(project = p.project.as_str(), id = p.id.as_str(); "payment never settled (authorization expired unused): {} base units given back to its budget", p.amount);
            done += 1;
        }
        Ok(done)
    }

    /// Sets `pag0_reconcile_payments{state}` from the table.
    pub async fn publish(&self) {
        if let Ok(counts) = state_counts(&self.db).await {
            for state in STATES {
                let n = counts.get(state).copied().unwrap_or(0);
                self.counters
                    .payments
                    .with_label_values(&[state])
                    .set(n as i64);
            }
        }
    }
}

/// The last block at least [`SCAN_LAG_SECONDS`] older than the chain's latest (`None`: none
/// is).
pub async fn settled_block(chain: &Chain, latest: u64, now: u64) -> Result<Option<u64>, String> {
    let young = chain
        .block_at(now.saturating_sub(SCAN_LAG_SECONDS - 1), latest)
        .await?;
    Ok(young.checked_sub(1))
}

/// What the chain says about `p`.
pub async fn classify(chain: &Chain, p: &Payment) -> Result<Verdict, String> {
    let parsed = (|| {
        Some(Expected {
            token: p.asset.parse().ok()?,
            payer: p.payer.parse().ok()?,
            pay_to: p.pay_to.parse().ok()?,
            amount: p.amount,
            nonce: p.nonce.parse().ok()?,
        })
    })();
    let Some(expected) = parsed else {
        // Nothing on chain can match it: a human must look at it.
        return Ok(Verdict {
            state: MISMATCH,
            detail: Some("the journal row's asset, payer, payee or nonce does not parse".into()),
            block: None,
            tx: None,
        });
    };
    let (token, payer, nonce) = (expected.token, expected.payer, expected.nonce);
    let journaled: Option<B256> = p.tx_hash.as_deref().and_then(|h| h.parse().ok());
    if let Some(tx) = journaled
        && let Some(facts) = chain.transaction(tx).await?
    {
        return Ok(expected.judge(tx, &facts));
    }
    match chain.authorization(token, payer, nonce).await? {
        crate::chain::OnChain::Used { tx: Some(tx) } => match chain.transaction(tx).await? {
            Some(facts) => {
                let mut v = expected.judge(tx, &facts);
                if journaled.is_some() && v.state == SETTLED {
                    v.detail = Some(format!(
                        "the journaled transaction is not on chain; the authorization was used in {tx:#x}"
                    ));
                }
                Ok(v)
            }
            None => Ok(Verdict {
                state: SETTLED,
                detail: Some("authorization used; its transaction has no receipt".into()),
                block: None,
                tx: Some(tx),
            }),
        },
        crate::chain::OnChain::Used { tx: None } => Ok(Verdict {
            state: SETTLED,
            detail: Some("authorization used; its transaction was not found in the logs".into()),
            block: None,
            tx: None,
        }),
        crate::chain::OnChain::Unused { latest_block_time } => {
            let expired = p
                .valid_before
                .is_some_and(|vb| latest_block_time as i64 >= vb);
            Ok(if expired {
                Verdict {
                    state: NOT_SETTLED,
                    detail: Some(format!(
                        "authorization unused and expired (validBefore {}, chain time {latest_block_time}): the money never moved",
                        p.valid_before.unwrap_or_default()
                    )),
                    block: None,
                    tx: None,
                }
            } else {
                Verdict {
                    state: PENDING,
                    detail: Some("authorization not used yet; it can still settle".into()),
                    block: None,
                    tx: None,
                }
            })
        }
    }
}

/// What a payment must look like on chain.
struct Expected {
    token: Address,
    payer: Address,
    pay_to: Address,
    amount: U256,
    nonce: B256,
}

impl Expected {
    fn judge(&self, tx: B256, facts: &TxFacts) -> Verdict {
        let verdict = |state, detail: Option<String>| Verdict {
            state,
            detail,
            block: Some(facts.block),
            tx: Some(tx),
        };
        if !facts.success {
            return verdict(MISMATCH, Some(format!("transaction {tx:#x} reverted")));
        }
        let paid = facts.transfers.iter().any(|t| {
            t.token == self.token
                && t.from == self.payer
                && t.to == self.pay_to
                && t.value == self.amount
        });
        let authorized = facts.authorizations.is_empty()
            || facts.authorizations.iter().any(|(token, who, nonce)| {
                *token == self.token && *who == self.payer && *nonce == self.nonce
            });
        if paid && authorized {
            return verdict(SETTLED, None);
        }
        let moved: Vec<String> = facts
            .transfers
            .iter()
            .filter(|t| t.from == self.payer)
            .map(|t| format!("{} to {}", t.value, t.to.to_checksum(None)))
            .collect();
        let detail = if !paid {
            format!(
                "transaction {tx:#x} moved {} from the payer, not {} to {}",
                if moved.is_empty() {
                    "nothing".to_string()
                } else {
                    moved.join(", ")
                },
                self.amount,
                self.pay_to.to_checksum(None)
            )
        } else {
            format!(
                "transaction {tx:#x} used another authorization than {:#x}",
                self.nonce
            )
        };
        verdict(MISMATCH, Some(detail))
    }
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("reconciliation {context}: {e}"))
}

const PAYMENT_COLUMNS: &str = "j.id, j.project, j.pool, j.network, j.asset, j.payer, j.pay_to, CAST(j.amount AS TEXT) AS amount, j.nonce, j.tx_hash, j.window_day, j.window_month, j.committed_at, COALESCE(j.valid_before, i.valid_before) AS valid_before";

fn payment_of<R: Row>(r: &R) -> Payment
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let amount: String = r.get("amount");
    Payment {
        id: r.get("id"),
        project: r.get("project"),
        pool: r.get("pool"),
        network: r.get("network"),
        asset: r.get("asset"),
        payer: r.get("payer"),
        pay_to: r.get("pay_to"),
        amount: U256::from_str_radix(&amount, 10).unwrap_or_default(),
        nonce: r.get("nonce"),
        tx_hash: r.get("tx_hash"),
        window_day: r.get("window_day"),
        window_month: r.get("window_month"),
        committed_at: r.get("committed_at"),
        valid_before: r.get("valid_before"),
    }
}

/// `recheck`: every payment of the range; else only the unchecked and the pending.
fn open_filter(recheck: bool) -> &'static str {
    if recheck {
        ""
    } else {
        " AND (r.state IS NULL OR r.state = 'pending')"
    }
}

async fn count_payments(db: &Db, from: i64, to: i64, recheck: bool) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT COUNT(*) FROM spend_journal j LEFT JOIN audit_reconciliation r ON r.payment_id = j.id \
         WHERE j.committed_at >= $1 AND j.committed_at < $2{}",
        open_filter(recheck)
    );
    let n: i64 =
        with_pool!(db, p => sqlx::query_scalar(&sql).bind(from).bind(to).fetch_one(p).await)
            .map_err(|e| err("count", e))?;
    Ok(n.max(0) as u64)
}

async fn journal(
    db: &Db,
    from: i64,
    to: i64,
    after: &(i64, String),
    recheck: bool,
) -> Result<Vec<Payment>, StoreError> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM spend_journal j \
         LEFT JOIN payment_intents i ON i.id = j.id \
         LEFT JOIN audit_reconciliation r ON r.payment_id = j.id \
         WHERE j.committed_at >= $1 AND j.committed_at < $2 \
         AND (j.committed_at > $3 OR (j.committed_at = $3 AND j.id > $4)){} \
         ORDER BY j.committed_at, j.id LIMIT $5",
        open_filter(recheck)
    );
    with_pool!(db, p => {
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .bind(after.0)
            .bind(&after.1)
            .bind(PAGE)
            .fetch_all(p)
            .await;
        rows.map(|rows| rows.iter().map(payment_of).collect::<Vec<_>>())
    })
    .map_err(|e| err("journal read", e))
}

async fn record(db: &Db, p: &Payment, v: &Verdict) -> Result<(), StoreError> {
    let sql = "INSERT INTO audit_reconciliation (payment_id, project, network, payer, pay_to, amount, nonce, tx_hash, state, detail, block_number, checked_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
               ON CONFLICT (payment_id) DO UPDATE SET tx_hash = excluded.tx_hash, state = excluded.state, detail = excluded.detail, block_number = excluded.block_number, checked_ms = excluded.checked_ms";
    let tx =
        v.tx.map(|t| format!("{t:#x}"))
            .or_else(|| p.tx_hash.clone());
    let now = crate::clock::unix_millis() as i64;
    let sql = crate::store::with_amount_param(db, sql, 6);
    with_pool!(db, pool => sqlx::query(&sql)
        .bind(&p.id)
        .bind(&p.project)
        .bind(&p.network)
        .bind(&p.payer)
        .bind(&p.pay_to)
        .bind(p.amount.to_string())
        .bind(&p.nonce)
        .bind(&tx)
        .bind(v.state)
        .bind(&v.detail)
        .bind(v.block.map(|b| b as i64))
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
    .map_err(|e| err("write", e))
}

/// The transactions and authorization nonces of pag0's payments around a time range: the
/// journal and the intents still open (in doubt: they may have moved money).
struct Known {
    txs: HashSet<B256>,
    nonces: HashSet<B256>,
}

async fn known_payments(db: &Db, from: i64, to: i64) -> Result<Known, StoreError> {
    let journal =
        "SELECT nonce, tx_hash FROM spend_journal WHERE committed_at >= $1 AND committed_at < $2";
    let open = "SELECT nonce, tx_hash FROM payment_intents WHERE state IN ('sent', 'in_doubt', 'unresolved')";
    let mut known = Known {
        txs: HashSet::new(),
        nonces: HashSet::new(),
    };
    for (sql, bounded) in [(journal, true), (open, false)] {
        let rows: Vec<(String, Option<String>)> = with_pool!(db, p => {
            let q = sqlx::query_as(sql);
            let q = if bounded { q.bind(from).bind(to) } else { q };
            q.fetch_all(p).await
        })
        .map_err(|e| err("known payments", e))?;
        for (nonce, tx) in rows {
            if let Ok(n) = nonce.parse() {
                known.nonces.insert(n);
            }
            if let Some(t) = tx.and_then(|t| t.parse().ok()) {
                known.txs.insert(t);
            }
        }
    }
    Ok(known)
}

/// Unknown spend whose alert was not delivered yet.
async fn unalerted(db: &Db) -> Result<Vec<UnknownSpend>, StoreError> {
    let sql = "SELECT network, tx_hash, log_index, token, from_address, to_address, CAST(amount AS TEXT), block_number \
               FROM audit_unknown_spend WHERE alerted = 0 ORDER BY found_ms LIMIT 100";
    type Line = (String, String, i64, String, String, String, String, i64);
    let rows: Vec<Line> = with_pool!(db, p => sqlx::query_as(sql).fetch_all(p).await)
        .map_err(|e| err("unalerted", e))?;
    Ok(rows
        .into_iter()
        .map(
            |(network, tx_hash, index, token, from, to, amount, block)| UnknownSpend {
                network,
                tx_hash,
                log_index: index.max(0) as u64,
                token,
                from,
                to,
                amount,
                block: block.max(0) as u64,
                projects: Vec::new(),
            },
        )
        .collect())
}

async fn mark_alerted(db: &Db, s: &UnknownSpend) -> Result<(), StoreError> {
    let sql = "UPDATE audit_unknown_spend SET alerted = 1 WHERE network = $1 AND tx_hash = $2 AND log_index = $3";
    with_pool!(db, p => sqlx::query(sql)
        .bind(&s.network)
        .bind(&s.tx_hash)
        .bind(s.log_index as i64)
        .execute(p)
        .await
        .map(|_| ()))
    .map_err(|e| err("alerted", e))
}

/// `true` when it was not recorded yet.
async fn insert_unknown(db: &Db, s: &UnknownSpend) -> Result<bool, StoreError> {
    let sql = "INSERT INTO audit_unknown_spend (network, tx_hash, log_index, token, from_address, to_address, amount, block_number, found_ms) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (network, tx_hash, log_index) DO NOTHING";
    let now = crate::clock::unix_millis() as i64;
    let sql = crate::store::with_amount_param(db, sql, 7);
    with_pool!(db, p => sqlx::query(&sql)
        .bind(&s.network)
        .bind(&s.tx_hash)
        .bind(s.log_index as i64)
        .bind(&s.token)
        .bind(&s.from)
        .bind(&s.to)
        .bind(&s.amount)
        .bind(s.block as i64)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
    .map_err(|e| err("unknown spend", e))
}

async fn unrefunded(db: &Db) -> Result<Vec<Payment>, StoreError> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM audit_reconciliation r JOIN spend_journal j ON j.id = r.payment_id \
         LEFT JOIN payment_intents i ON i.id = j.id WHERE r.state = 'not_settled' AND r.refunded = 0 LIMIT 1000"
    );
    with_pool!(db, p => {
        let rows = sqlx::query(&sql).fetch_all(p).await;
        rows.map(|rows| rows.iter().map(payment_of).collect::<Vec<_>>())
    })
    .map_err(|e| err("refunds", e))
}

async fn mark_refunded(db: &Db, id: &str) -> Result<(), StoreError> {
    let sql = "UPDATE audit_reconciliation SET refunded = 1 WHERE payment_id = $1";
    with_pool!(db, p => sqlx::query(sql).bind(id).execute(p).await.map(|_| ()))
        .map_err(|e| err("refund mark", e))
}

pub async fn state_counts(db: &Db) -> Result<BTreeMap<String, u64>, StoreError> {
    let sql = "SELECT state, COUNT(*) FROM audit_reconciliation GROUP BY state";
    let rows: Vec<(String, i64)> = with_pool!(db, p => sqlx::query_as(sql).fetch_all(p).await)
        .map_err(|e| err("counts", e))?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| (s, n.max(0) as u64))
        .collect())
}

/// One reconciled payment, for the admin API.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Checked {
    pub payment_id: String,
    pub project: String,
    pub network: String,
    pub payer: String,
    pub pay_to: String,
    pub amount: String,
    pub nonce: String,
    pub tx_hash: Option<String>,
    pub state: String,
    pub detail: Option<String>,
    pub block_number: Option<i64>,
    pub refunded: i64,
    pub checked_ms: i64,
}

/// `GET /api/audit/reconciliation` filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<String>,
    pub project: Option<String>,
    pub limit: i64,
}

/// Reconciled payments, newest first.
pub async fn list(db: &Db, f: &Filter) -> Result<Vec<Checked>, StoreError> {
    let sql = "SELECT payment_id, project, network, payer, pay_to, CAST(amount AS TEXT) AS amount, nonce, tx_hash, state, detail, block_number, refunded, checked_ms \
               FROM audit_reconciliation WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR project = $2) \
               ORDER BY checked_ms DESC, payment_id LIMIT $3";
    with_pool!(db, p => sqlx::query_as::<_, Checked>(sql)
        .bind(&f.state)
        .bind(&f.project)
        .bind(f.limit)
        .fetch_all(p)
        .await)
    .map_err(|e| err("list", e))
}

/// Unknown spend, newest first.
pub async fn unknown_spend(db: &Db, limit: i64) -> Result<Vec<Value>, StoreError> {
    let sql = "SELECT network, tx_hash, log_index, token, from_address, to_address, CAST(amount AS TEXT), block_number, found_ms \
               FROM audit_unknown_spend ORDER BY found_ms DESC, tx_hash LIMIT $1";
    type Line = (
        String,
        String,
        i64,
        String,
        String,
        String,
        String,
        i64,
        i64,
    );
    let rows: Vec<Line> = with_pool!(db, p => sqlx::query_as(sql).bind(limit).fetch_all(p).await)
        .map_err(|e| err("unknown spend", e))?;
    Ok(rows
        .into_iter()
        .map(
            |(network, tx, index, token, from, to, amount, block, found)| {
                json!({
                    "network": network, "tx_hash": tx, "log_index": index, "token": token,
                    "from": from, "to": to, "amount": amount, "block": block, "found_ms": found,
                })
            },
        )
        .collect())
}
