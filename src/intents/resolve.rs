//! Payments in doubt resolved from the chain (`payments.rpc`): used → `committed` with its
//! transaction and journal row; unused once the latest block is at or past `validBefore` (no
//! later block can settle it) → `released`. Outcomes go through the settler, so the journal,
//! the intent and the budget ledger move together.

use std::collections::HashMap;

use super::IntentLog;
use crate::budget::{BudgetKey, Reservation, Usage, Windows};
use crate::chain::{Chain, OnChain};
use crate::settle::{Job, Settler};
use crate::store::{
    IN_DOUBT_MARGIN_SECONDS, IntentFilter, IntentRow, IntentState, Outcome, SpendRecord, Store,
};

impl IntentLog {
    /// Asks the chain about every payment in doubt on a network with an RPC.
    pub(super) async fn resolve_on_chain(
        &self,
        store: &Store,
        chains: &HashMap<String, std::sync::Arc<Chain>>,
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
        valid_before: Some(i.valid_before.min(i64::MAX as u64) as i64),
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
