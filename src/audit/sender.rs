//! Sends the outbox's feedback to the Reputation Registry over JSON-RPC.
//!
//! The order of events makes a crash harmless: a transaction is signed here with an explicit
//! nonce and stored (nonce, hash, bytes) in the outbox *before* it is broadcast. After a
//! restart, a `sent` row is looked up by its hash: mined → its receipt is used; unknown to
//! the node while its nonce is still free → the same bytes are broadcast again (same hash);
//! its nonce taken by another transaction → it can never be mined, so it is signed anew. No
//! feedback is ever sent as two transactions that could both be mined.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{B256, Bytes, TxKind, U256};
use alloy_provider::transport::{TransportError, TransportResult};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer::SignerSync;
use alloy_sol_types::SolCall;
use std::sync::Arc;

use super::outbox::{self, Row};
use super::registry::giveFeedbackCall;
use super::{Counters, Settings};
use crate::config::Secret;
use crate::store::Db;

/// Feedbacks handled per round.
const BATCH: i64 = 64;
/// Gas above the estimate (percent), for state that changes between estimate and inclusion.
const GAS_MARGIN_PERCENT: u64 = 25;
/// How long a sent feedback's nonce must look taken by another transaction before it is
/// signed anew (nodes behind one RPC URL may lag each other).
const REQUEUE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// Backoff of a row whose own call failed (not the RPC as a whole).
const ROW_BACKOFF_MS: i64 = 5_000;

/// Longest wait for one JSON-RPC answer.
const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn timed<T>(
    call: impl std::future::IntoFuture<Output = TransportResult<T>>,
) -> Result<TransportResult<T>, String> {
    tokio::time::timeout(RPC_TIMEOUT, call.into_future())
        .await
        .map_err(|_| format!("the RPC did not answer within {RPC_TIMEOUT:?}"))
}

/// Why a call did not go through.
enum Failure {
    /// The registry refuses the call (terminal, with the reason).
    Reverted(String),
    /// The RPC or the database failed: try again later.
    Transient(String),
}

pub(super) struct Chain {
    provider: RootProvider,
    /// The URL may carry an API key: it is removed from every error.
    url: Secret,
    settings: Arc<Settings>,
    /// The next nonce to sign with (`None`: read it again from the chain and the outbox).
    next_nonce: Option<u64>,
    /// Sent feedbacks whose nonce the chain shows taken while none of their transactions is
    /// known, since when (they are signed anew after [`REQUEUE_AFTER`]).
    nonce_taken: std::collections::HashMap<String, std::time::Instant>,
}

impl Chain {
    pub fn new(settings: &Arc<Settings>) -> Result<Chain, String> {
        let parsed: url::Url = settings
            .rpc_url
            .expose()
            .parse()
            .map_err(|e| format!("audit.rpc_url: invalid URL: {e}"))?;
        Ok(Chain {
            provider: RootProvider::new_http(parsed),
            url: settings.rpc_url.clone(),
            settings: settings.clone(),
            next_nonce: None,
            nonce_taken: Default::default(),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> String {
        crate::chain::redact(&e.to_string(), &self.url)
    }

    /// The RPC answers, for the configured chain.
    pub async fn check(&self) -> Result<(), String> {
        let id = tokio::time::timeout(super::STARTUP_TIMEOUT, self.provider.get_chain_id())
            .await
            .map_err(|_| {
                format!(
                    "audit.rpc_url: {} did not answer within {:?}",
                    self.url,
                    super::STARTUP_TIMEOUT
                )
            })?
            .map_err(|e| {
                format!(
                    "audit.rpc_url: cannot reach {}: {}",
                    self.url,
                    self.error(e)
                )
            })?;
        if id != self.settings.chain_id {
            return Err(format!(
                "audit.chain_id: the RPC at {} serves chain {id}, not {}",
                self.url, self.settings.chain_id
            ));
        }
        Ok(())
    }

    /// Moves every open feedback one step: checks sent ones, signs and sends pending ones.
    /// `Err`: the RPC (or the database) failed; the outbox keeps everything for next time.
    pub async fn round(&mut self, db: &Db, counters: &Counters) -> Result<(), String> {
        let now = crate::clock::unix_millis() as i64;
        let rows = outbox::open(db, now, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(());
        }
        let latest = self
            .call(self.provider.get_block_number())
            .await
            .inspect_err(|_| {
                counters.rpc_errors.inc();
            })?;
        for row in rows {
            let step = if row.state == outbox::SENT {
                self.check_sent(db, counters, &row, latest).await
            } else {
                self.send(db, counters, &row).await
            };
            let now = crate::clock::unix_millis() as i64;
            match step {
                Ok(()) => {}
                Err(Failure::Reverted(reason)) => {
                    log::warn!(
                        "audit: feedback {} refused by the registry: {reason}",
                        row.id
                    );
                    counters.feedback.with_label_values(&["reverted"]).inc();
                    outbox::finish(db, &row.id, outbox::REVERTED, None, Some(&reason), now)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Err(Failure::Transient(e)) => {
                    counters.rpc_errors.inc();
                    self.next_nonce = None;
                    let _ = outbox::later(db, &row.id, now + ROW_BACKOFF_MS, &e, now).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A sent feedback: confirmed, reverted, still on its way, lost by the node (broadcast
    /// again), stuck underpriced (replaced with higher fees, same nonce), or its nonce used by
    /// another transaction (signed anew).
    async fn check_sent(
        &mut self,
        db: &Db,
        counters: &Counters,
        row: &Row,
        latest: u64,
    ) -> Result<(), Failure> {
        let hashes = row.hashes();
        let Some(&current) = hashes.first() else {
            return Err(Failure::Reverted("sent without a transaction hash".into()));
        };
        // Any of its transactions may be the one mined (a replacement, or what it replaced).
        for &hash in &hashes {
            if let Some(receipt) = self.receipt(hash).await? {
                return self.mined(db, counters, row, hash, &receipt, latest).await;
            }
        }
        let now = crate::clock::unix_millis() as i64;
        let nonce = row.nonce.unwrap_or_default() as u64;
        let mined = self
            .call(
                self.provider
                    .get_transaction_count(self.settings.signer.address())
                    .latest(),
            )
            .await
            .map_err(Failure::Transient)?;
        if mined > nonce {
            // Its nonce is used. By one of its transactions after all (mined since)?
            for &hash in &hashes {
                if let Some(receipt) = self.receipt(hash).await? {
                    return self.mined(db, counters, row, hash, &receipt, latest).await;
                }
                if self
                    .call(self.provider.get_transaction_by_hash(hash))
                    .await
                    .map_err(Failure::Transient)?
                    .is_some()
                {
                    // The node knows it: its receipt will come (or a lagging node catch up).
                    return Ok(());
                }
            }
            // A load-balanced RPC can answer from nodes that disagree: only a nonce seen taken
            // by something else for a while, with none of ours known, is given up.
            let since = *self
                .nonce_taken
                .entry(row.id.clone())
                .or_insert_with(std::time::Instant::now);
            if since.elapsed() < REQUEUE_AFTER {
                return Ok(());
            }
            self.nonce_taken.remove(&row.id);
            outbox::requeue(
                db,
                &row.id,
                row.tx_hash.as_deref().unwrap_or_default(),
                &format!("nonce {nonce} went to another transaction; signing again"),
                now,
            )
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
            counters.feedback.with_label_values(&["requeued"]).inc();
            self.next_nonce = None;
            return Ok(());
        }
        self.nonce_taken.remove(&row.id);
        let raw: Bytes = row
            .raw_tx
            .as_deref()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Failure::Reverted("sent without its signed transaction".into()))?;
        let known = self
            .call(self.provider.get_transaction_by_hash(current))
            .await
            .map_err(Failure::Transient)?;
        let stuck =
            now - row.sent_ms.unwrap_or(now) >= self.settings.replace_after.as_millis() as i64;
        if known.is_none() {
            return match self.broadcast(&raw).await {
                Ok(()) => {
                    counters.feedback.with_label_values(&["rebroadcast"]).inc();
                    Ok(())
                }
                // The node refuses it (e.g. its fee is below the base fee now): replace it.
                Err(_) if stuck => self.replace(db, counters, row, current, &raw, true).await,
                Err(e) => Err(e),
            };
        }
        if stuck {
            self.replace(db, counters, row, current, &raw, false)
                .await?;
        }
        Ok(())
    }

    /// One of a feedback's transactions has a receipt: reverted, or confirmed once deep enough.
    async fn mined(
        &self,
        db: &Db,
        counters: &Counters,
        row: &Row,
        hash: B256,
        receipt: &alloy_rpc_types_eth::TransactionReceipt,
        latest: u64,
    ) -> Result<(), Failure> {
        let block = receipt.block_number.unwrap_or(latest);
        if !receipt.status() {
            let reason = self.revert_reason(row, block).await;
            return Err(Failure::Reverted(format!(
                "transaction {hash:#x} reverted: {reason}"
            )));
        }
        if latest + 1 >= block + self.settings.confirmations {
            let now = crate::clock::unix_millis() as i64;
            outbox::finish(db, &row.id, outbox::CONFIRMED, Some(block), None, now)
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?;
            counters.feedback.with_label_values(&["confirmed"]).inc();
        }
        Ok(())
    }

    /// Replaces a transaction stuck in the mempool because its fees are below what the chain
    /// asks now (or, `refused`, one the node will not take back): same nonce and call, fees
    /// raised by an eighth (what nodes require of a replacement) or to the current estimate,
    /// whichever is higher, so they follow the market and do not grow on their own. Stored
    /// before it is broadcast, next to the one it replaces (either may be mined).
    async fn replace(
        &mut self,
        db: &Db,
        counters: &Counters,
        row: &Row,
        current: B256,
        raw: &[u8],
        refused: bool,
    ) -> Result<(), Failure> {
        let Ok(TxEnvelope::Eip1559(old)) = TxEnvelope::decode_2718(&mut &raw[..]) else {
            return Err(Failure::Transient(format!(
                "feedback {}: its stored transaction does not decode",
                row.id
            )));
        };
        let fees = self
            .call(self.provider.estimate_eip1559_fees())
            .await
            .map_err(Failure::Transient)?;
        let underpriced = old.tx().max_fee_per_gas < fees.max_fee_per_gas
            || old.tx().max_priority_fee_per_gas < fees.max_priority_fee_per_gas;
        if !underpriced && !refused {
            // Priced right: it waits for its turn (a gap or a slow node is not fixed by fees).
            return Ok(());
        }
        let bump = |old: u128, now: u128| old.saturating_add(old / 8 + 1).max(now);
        let mut tx = old.tx().clone();
        tx.max_priority_fee_per_gas =
            bump(tx.max_priority_fee_per_gas, fees.max_priority_fee_per_gas);
        tx.max_fee_per_gas =
            bump(tx.max_fee_per_gas, fees.max_fee_per_gas).max(tx.max_priority_fee_per_gas);
        let (hash, raw) = self.sign(tx)?;
        let now = crate::clock::unix_millis() as i64;
        let stored = outbox::replace(
            db,
            &row.id,
            &format!("{current:#x}"),
            &format!("{hash:#x}"),
            &alloy_primitives::hex::encode_prefixed(&raw),
            now,
        )
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
        if stored {
            log::info!(
                "audit: feedback {} stuck for {:?} in {current:#x}: replaced by {hash:#x} with higher fees",
                row.id,
                self.settings.replace_after
            );
            counters.feedback.with_label_values(&["replaced"]).inc();
            self.broadcast(&raw).await?;
        }
        Ok(())
    }

    /// Signs `tx` with the audit key: its hash and EIP-2718 bytes.
    fn sign(&self, tx: TxEip1559) -> Result<(B256, Vec<u8>), Failure> {
        let signature = self
            .settings
            .signer
            .key()
            .sign_hash_sync(&tx.signature_hash())
            .map_err(|_| Failure::Transient("cannot sign the feedback transaction".into()))?;
        let signed = tx.into_signed(signature);
        let hash = *signed.hash();
        Ok((hash, TxEnvelope::from(signed).encoded_2718()))
    }

    /// Signs a pending feedback, stores the transaction, then broadcasts it.
    async fn send(&mut self, db: &Db, counters: &Counters, row: &Row) -> Result<(), Failure> {
        let s = &self.settings;
        let from = s.signer.address();
        let input: Bytes = self.calldata(row)?.into();
        let request = TransactionRequest::default()
            .from(from)
            .to(s.reputation_registry)
            .input(input.clone().into());
        let gas = match timed(self.provider.estimate_gas(request)).await {
            Ok(Ok(gas)) => gas,
            Ok(Err(e)) => return Err(self.classify(e)),
            Err(late) => return Err(Failure::Transient(late)),
        };
        let nonce = match self.next_nonce {
            Some(n) => n,
            None => {
                let pending = self
                    .call(self.provider.get_transaction_count(from).pending())
                    .await
                    .map_err(Failure::Transient)?;
                let stored = outbox::max_nonce(db)
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))?;
                pending.max(stored.map_or(0, |n| n + 1))
            }
        };
        let fees = self
            .call(self.provider.estimate_eip1559_fees())
            .await
            .map_err(Failure::Transient)?;
        let tx = TxEip1559 {
            chain_id: s.chain_id,
            nonce,
            gas_limit: gas + gas * GAS_MARGIN_PERCENT / 100,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: TxKind::Call(s.reputation_registry),
            value: U256::ZERO,
            input,
            ..Default::default()
        };
        let (hash, raw) = self.sign(tx)?;
        let now = crate::clock::unix_millis() as i64;
        // Stored first: from here on, a crash finds this transaction again.
        let stored = outbox::mark_sent(
            db,
            &row.id,
            nonce,
            &format!("{hash:#x}"),
            &alloy_primitives::hex::encode_prefixed(&raw),
            now,
        )
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
        if !stored {
            return Ok(());
        }
        self.next_nonce = Some(nonce + 1);
        // A failed broadcast is looked at again as a sent row (rebroadcast or re-signed).
        match self.broadcast(&raw).await {
            Ok(()) => {
                counters.feedback.with_label_values(&["sent"]).inc();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The agents' `successRate` summaries over the trusted reviewers.
    pub async fn summaries(
        &self,
        agents: &[U256],
    ) -> Result<std::collections::HashMap<U256, super::reputation::Summary>, String> {
        use super::registry::getSummaryCall;
        let mut out = std::collections::HashMap::new();
        for agent in agents {
            let call = getSummaryCall {
                agentId: *agent,
                clientAddresses: self.settings.trusted_reviewers.clone(),
                tag1: super::record::SUCCESS_RATE.into(),
                tag2: String::new(),
            };
            let request = TransactionRequest::default()
                .to(self.settings.reputation_registry)
                .input(Bytes::from(call.abi_encode()).into());
            let answer = self.call(self.provider.call(request)).await?;
            let s = getSummaryCall::abi_decode_returns(&answer)
                .map_err(|e| format!("getSummary answer: {e}"))?;
            if let Some(summary) =
                super::reputation::percent(s.count, s.summaryValue, s.summaryValueDecimals)
            {
                out.insert(*agent, summary);
            }
        }
        Ok(out)
    }

    fn calldata(&self, row: &Row) -> Result<Vec<u8>, Failure> {
        let bad = |what: &str| Failure::Reverted(format!("invalid {what} in the outbox"));
        Ok(giveFeedbackCall {
            agentId: U256::from_str_radix(&row.agent_id, 10).map_err(|_| bad("agent id"))?,
            value: row.value.parse().map_err(|_| bad("value"))?,
            valueDecimals: u8::try_from(row.value_decimals).map_err(|_| bad("decimals"))?,
            tag1: row.tag1.clone(),
            tag2: row.tag2.clone(),
            endpoint: row.endpoint.clone(),
            feedbackURI: self.settings.feedback_uri(&row.id),
            feedbackHash: row.feedback_hash.parse().map_err(|_| bad("hash"))?,
        }
        .abi_encode())
    }

    /// Broadcasts signed bytes. Never terminal: the transaction is stored and holds its nonce,
    /// so whatever the node says, the sent row is looked at again (rebroadcast, replaced, or
    /// found mined).
    async fn broadcast(&self, raw: &[u8]) -> Result<(), Failure> {
        match timed(self.provider.send_raw_transaction(raw)).await {
            Err(late) => Err(Failure::Transient(late)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let message = e.as_error_resp().map(|p| p.message.to_lowercase());
                // The node has it already, or has mined it: the receipt check will tell.
                if message.as_deref().is_some_and(|m| {
                    m.contains("already known")
                        || m.contains("nonce too low")
                        || m.contains("already imported")
                }) {
                    return Ok(());
                }
                Err(Failure::Transient(format!(
                    "broadcast refused: {}",
                    self.error(e)
                )))
            }
        }
    }

    async fn receipt(
        &self,
        hash: B256,
    ) -> Result<Option<alloy_rpc_types_eth::TransactionReceipt>, Failure> {
        self.call(self.provider.get_transaction_receipt(hash))
            .await
            .map_err(Failure::Transient)
    }

    /// Why a mined transaction reverted: the same call replayed at its block.
    async fn revert_reason(&self, row: &Row, block: u64) -> String {
        let Ok(input) = self.calldata(row) else {
            return "unknown".into();
        };
        let request = TransactionRequest::default()
            .from(self.settings.signer.address())
            .to(self.settings.reputation_registry)
            .input(Bytes::from(input).into());
        match timed(self.provider.call(request).block(block.into())).await {
            Err(late) => late,
            Ok(Ok(_)) => "unknown (the call succeeds when replayed)".into(),
            Ok(Err(e)) => match self.classify(e) {
                Failure::Reverted(r) | Failure::Transient(r) => r,
            },
        }
    }

    /// A JSON-RPC error: the call reverts (terminal) or the RPC failed (transient).
    fn classify(&self, e: TransportError) -> Failure {
        if let Some(p) = e.as_error_resp() {
            let message = p.message.to_string();
            if p.code == 3 || message.to_lowercase().contains("revert") {
                return Failure::Reverted(message);
            }
        }
        Failure::Transient(self.error(e))
    }

    /// A call with a deadline (a node that never answers must not stall the outbox).
    async fn call<T>(
        &self,
        call: impl std::future::IntoFuture<Output = TransportResult<T>>,
    ) -> Result<T, String> {
        match timed(call).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(late) => Err(late),
        }
    }
}
