//! The spend firewall as the payment stage uses it: policy check and budget reservation right
//! before signing, journal + commit (or release) once the request is over.

use std::sync::Arc;

use alloy_primitives::U256;

use crate::budget::{BudgetKey, Ledger, Limits, Usage};
use crate::clock::unix_now;
use crate::config::{Asset, Project};
use crate::intents::IntentLog;
use crate::metrics::Metrics;
use crate::policy::PolicyBook;
use crate::policy::{Approval, Policy, Spend, Violation};
use crate::proxy::RequestCtx;
use crate::proxy::ctx::{Charge, Reservation, SentIntent};
use crate::proxy::respond::{ErrorCode, Reply};
use crate::settle::{Job, Settler};
use crate::store::{Intent, IntentState, Outcome, SpendRecord};
use crate::webhook::WebhookError;
use crate::x402::Offer;
use serde_json::{Value, json};

/// Header with what is left of the budget after this request (base units).
pub const BUDGET_REMAINING_HEADER: &str = "x-pag0-budget-remaining";
/// Header naming the policy code that refused a request.
pub const POLICY_HEADER: &str = "x-pag0-policy";

/// The request a payment is for (what approvers and the journal see).
pub struct PaidRequest<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Target URL without the query.
    pub url: String,
}

pub struct SpendGuard {
    pub policies: Arc<PolicyBook>,
    pub ledger: Arc<dyn Ledger>,
    pub settler: Arc<Settler>,
    pub intents: Arc<IntentLog>,
    /// Idempotency records: a keyed request's record names its payment before it is sent.
    pub idempotency: Arc<crate::idempotency::Idempotency>,
    pub metrics: Arc<Metrics>,
}

/// The signed authorization's validity window (unix seconds), as the intent records it.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub valid_after: u64,
    pub valid_before: u64,
}

/// `daily=…; monthly=…; pool=…` from the limits and the usage (windows without a limit are left out).
pub fn remaining(pool: &str, limits: Limits, usage: &Usage) -> String {
    let mut parts = Vec::new();
    if let Some(l) = limits.daily {
        parts.push(format!("daily={}", usage.day.remaining(l)));
    }
    if let Some(l) = limits.monthly {
        parts.push(format!("monthly={}", usage.month.remaining(l)));
    }
    parts.push(format!("pool={pool}"));
    parts.join("; ")
}

/// Records a policy violation; `Some(reply)` (403) if the policy is enforced, `None` in a dry run.
pub fn refuse(
    metrics: &Metrics,
    project: &Project,
    policy: &Policy,
    v: &Violation,
    remaining: Option<String>,
) -> Option<Reply> {
    let enforced = policy.enforce;
    metrics
        .policy_violations
        .with_label_values(&[
            project.id.as_str(),
            v.code(),
            if enforced { "true" } else { "false" },
        ])
        .inc();
    if !enforced {
        log::info!(project = project.id.as_str(), code = v.code(); "policy dry run would refuse: {v}");
        return None;
    }
    log::debug!(project = project.id.as_str(), code = v.code(); "policy refused: {v}");
    let mut reply = Reply::new(ErrorCode::of_violation(v), v.to_string())
        .details(v.details())
        .header(POLICY_HEADER, v.code());
    if let Some(r) = remaining {
        reply = reply.header(BUDGET_REMAINING_HEADER, r);
    }
    Some(reply)
}

impl SpendGuard {
    fn count(&self, project: &str, op: &str) {
        self.metrics
            .budget_operations
            .with_label_values(&[project, op])
            .inc();
    }

    fn refuse(
        &self,
        project: &Project,
        policy: &Policy,
        v: &Violation,
        remaining: Option<String>,
    ) -> Option<Reply> {
        refuse(&self.metrics, project, policy, v, remaining)
    }

    /// Picks the cheapest of `candidates` (cheapest first, already within the `payments`
    /// guards) that the project's policy allows and its budget can hold, reserves it, and asks
    /// for approval when its price is over the policy's threshold. The reply is a 403 (policy)
    /// or 503 (ledger unavailable); nothing has been signed.
    pub async fn authorize<'a>(
        &self,
        project: &Project,
        policy: &Policy,
        request: &PaidRequest<'_>,
        candidates: &[(&'a Offer, &Asset)],
        now: u64,
    ) -> Result<(&'a Offer, Option<Reservation>), Reply> {
        let (offer, asset, reservation) = self
            .choose(project, policy, request.host, candidates, now)
            .await?;
        let Some(approval) = policy
            .approval
            .as_ref()
            .filter(|a| a.symbol == asset.symbol && offer.amount > a.threshold)
        else {
            return Ok((offer, reservation));
        };
        match self.approve(project, approval, request, offer, asset).await {
            Ok(()) => Ok((offer, reservation)),
            Err(v) => match self.refuse(project, policy, &v, None) {
                None => Ok((offer, reservation)), // dry run
                Some(reply) => {
                    self.release(reservation).await;
                    Err(reply)
                }
            },
        }
    }

    /// Gives a reservation back right away (nothing was or will be paid with it). A failed
    /// release is harmless: the hold expires with the reservation.
    pub async fn release(&self, reservation: Option<Reservation>) {
        if let Some(r) = reservation {
            if let Err(e) = self.ledger.release(&r.held).await {
                log::debug!("release failed (the hold expires by itself): {e}");
            }
            self.count(&r.held.key.project, "released");
        }
    }

    /// Relay mode: checks an agent-signed payment against the project's policy and reserves
    /// its amount (approval applies only to payments pag0 signs itself).
    pub async fn authorize_relayed(
        &self,
        project: &Project,
        policy: &Policy,
        spend: &Spend<'_>,
        now: u64,
    ) -> Result<Option<Reservation>, Reply> {
        if let Err(v) = policy.check_host(spend.host)
            && let Some(reply) = self.refuse(project, policy, &v, None)
        {
            return Err(reply);
        }
        let rule = match policy.check_spend(spend) {
            Ok(rule) => rule,
            Err(v) => match self.refuse(project, policy, &v, None) {
                Some(reply) => return Err(reply),
                // Dry run: track it in its pool if it has one.
                None => policy
                    .budgets
                    .iter()
                    .find(|b| b.covers(spend.symbol, spend.chain_id)),
            },
        };
        let Some(rule) = rule else {
            return Ok(None);
        };
        let key = BudgetKey::new(project.id.clone(), rule.pool.clone());
        let limits = if policy.enforce {
            rule.limits()
        } else {
            Limits::default()
        };
        match self
            .reserve(project, &key, spend.amount, limits, now)
            .await?
        {
            Ok(r) => Ok(Some(Reservation {
                limits: rule.limits(),
                ..r
            })),
            Err(v) => {
                let usage = self.ledger.usage(&key, now).await.ok();
                let remaining = usage.map(|u| remaining(&rule.pool, rule.limits(), &u));
                match self.refuse(project, policy, &v, remaining) {
                    Some(reply) => Err(reply),
                    None => Ok(None),
                }
            }
        }
    }

    /// POSTs the approval request and waits (up to the webhook's timeout) for
    /// `{"approved": true}`; anything else is a denial.
    async fn approve(
        &self,
        project: &Project,
        approval: &Approval,
        request: &PaidRequest<'_>,
        offer: &Offer,
        asset: &Asset,
    ) -> Result<(), Violation> {
        let body = json!({
            "type": "pag0.approval_request",
            "project": project.id,
            "method": request.method,
            "url": request.url,
            "amount": offer.amount.to_string(),
            "threshold": approval.threshold.to_string(),
            "symbol": asset.symbol,
            "asset": offer.asset.to_string(),
            "network": crate::x402::networks::caip2(offer.chain_id),
            "pay_to": offer.pay_to.to_string(),
        });
        let (result, reason) = match approval.webhook.post(&body).await {
            Ok(answer) if answer.get("approved") == Some(&Value::Bool(true)) => {
                ("approved", String::new())
            }
            Ok(answer) => (
                "denied",
                answer
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("the approver said no")
                    .chars()
                    .take(200)
                    .collect(),
            ),
            Err(WebhookError::Timeout(t)) => ("timeout", format!("no answer within {t:?}")),
            Err(e) => ("error", format!("approval webhook {e}")),
        };
        self.metrics
            .approvals
            .with_label_values(&[project.id.as_str(), result])
            .inc();
        if result == "approved" {
            Ok(())
        } else {
            Err(Violation::ApprovalDenied { reason })
        }
    }

    /// The cheapest allowed candidate whose budget holds, with its reservation.
    async fn choose<'a, 'p>(
        &self,
        project: &Project,
        policy: &Policy,
        host: &str,
        candidates: &[(&'a Offer, &'p Asset)],
        now: u64,
    ) -> Result<(&'a Offer, &'p Asset, Option<Reservation>), Reply> {
        if let Err(v) = policy.check_host(host)
            && let Some(reply) = self.refuse(project, policy, &v, None)
        {
            return Err(reply);
        }
        let mut first: Option<(Violation, Option<String>)> = None;
        for &(offer, asset) in candidates {
            let spend = Spend {
                host,
                chain_id: offer.chain_id,
                symbol: &asset.symbol,
                asset: offer.asset,
                pay_to: offer.pay_to,
                amount: offer.amount,
            };
            let rule = match policy.check_spend(&spend) {
                Ok(rule) => rule,
                Err(v) => {
                    first.get_or_insert((v, None));
                    continue;
                }
            };
            let Some(rule) = rule else {
                return Ok((offer, asset, None));
            };
            let key = BudgetKey::new(project.id.clone(), rule.pool.clone());
            match self
                .reserve(project, &key, offer.amount, rule.limits(), now)
                .await?
            {
                Ok(r) => return Ok((offer, asset, Some(r))),
                Err(v) => {
                    if first.is_none() {
                        let usage = self.ledger.usage(&key, now).await.ok();
                        let remaining = usage.map(|u| remaining(&rule.pool, rule.limits(), &u));
                        first = Some((v, remaining));
                    }
                }
            }
        }
        let (Some((violation, remaining)), Some(&(offer, asset))) = (first, candidates.first())
        else {
            return Err(Reply::new(
                ErrorCode::InternalError,
                "no offer to authorize",
            ));
        };
        if let Some(reply) = self.refuse(project, policy, &violation, remaining) {
            return Err(reply);
        }
        // Dry run: pay the cheapest offer anyway; track it in its pool if it has one.
        let rule = policy
            .budgets
            .iter()
            .find(|b| b.covers(&asset.symbol, offer.chain_id));
        let Some(rule) = rule else {
            return Ok((offer, asset, None));
        };
        let key = BudgetKey::new(project.id.clone(), rule.pool.clone());
        let held = self
            .reserve(project, &key, offer.amount, Limits::default(), now)
            .await?;
        let held = held.ok().map(|r| Reservation {
            limits: rule.limits(),
            ..r
        });
        Ok((offer, asset, held))
    }

    async fn reserve(
        &self,
        project: &Project,
        key: &BudgetKey,
        amount: U256,
        limits: Limits,
        now: u64,
    ) -> Result<Result<Reservation, Violation>, Reply> {
        match self.ledger.reserve(key, amount, limits, now).await {
            Ok(Ok(held)) => {
                self.count(&project.id, "reserved");
                Ok(Ok(Reservation { held, limits }))
            }
            Ok(Err(denial)) => {
                self.count(&project.id, "denied");
                Ok(Err(Violation::Budget {
                    pool: key.pool.clone(),
                    denial: Box::new(denial),
                }))
            }
            Err(e) => {
                self.count(&project.id, "unavailable");
                log::warn!(project = project.id.as_str(); "{e}");
                Err(Reply::new(
                    ErrorCode::BudgetUnavailable,
                    "the budget ledger is unavailable; nothing was paid",
                ))
            }
        }
    }

    /// Makes the payment about to be sent durable (its intent, state `sent`) and returns it;
    /// call it right before the signed header goes into the request. On an error (503) the
    /// header must not be sent; the caller releases the reservation.
    pub async fn write_ahead(
        &self,
        ctx: &RequestCtx,
        charge: &Charge,
        validity: Validity,
        reservation: Option<&Reservation>,
        source: &'static str,
    ) -> Result<SentIntent, Reply> {
        let now = unix_now();
        let (id, pool, windows) = match reservation {
            Some(r) => (
                r.held.id.clone(),
                r.held.key.pool.clone(),
                r.held.windows.clone(),
            ),
            None => (
                crate::budget::new_reservation_id(),
                String::new(),
                crate::budget::Windows::at(now),
            ),
        };
        let project = ctx.project_label().to_string();
        let idempotency_key = ctx.idempotency.agent_key.clone();
        // A keyed request pays only under its claim, and the record names the payment before
        // the header can leave: a crash from here on leaves the key in doubt, never free.
        match (&ctx.idempotency.claim, &idempotency_key) {
            (Some(scope), _) => {
                let nonce = charge.nonce.to_string();
                if let Err(e) = self.idempotency.paying(scope, &id, &nonce).await {
                    log::warn!(project = project.as_str(); "{e}");
                    return Err(Reply::new(
                        ErrorCode::IdempotencyUnavailable,
                        "the Idempotency-Key's record cannot be written; nothing was paid",
                    ));
                }
            }
            (None, Some(_)) => {
                return Err(Reply::new(
                    ErrorCode::IdempotencyUnavailable,
                    "the idempotency records are unreachable, so a request with an Idempotency-Key is not paid; nothing was paid",
                ));
            }
            (None, None) => {}
        }
        let intent = Intent {
            id: id.clone(),
            project: project.clone(),
            pool,
            network: charge.network.clone(),
            asset: crate::x402::checksummed(&charge.asset),
            payer: crate::x402::checksummed(&charge.payer),
            pay_to: crate::x402::checksummed(&charge.pay_to),
            amount: charge.amount,
            nonce: charge.nonce.to_string(),
            valid_after: validity.valid_after,
            valid_before: validity.valid_before,
            url: ctx
                .target
                .as_ref()
                .map_or_else(String::new, |t| t.url_without_query()),
            idempotency_key,
            source: source.to_string(),
            window_day: windows.day,
            window_month: windows.month,
            created_at: crate::clock::unix_millis() as i64,
        };
        if let Err(e) = self.intents.write_ahead(intent) {
            log::error!(project = project.as_str(); "{e}");
            return Err(Reply::new(
                ErrorCode::PaymentNotRecorded,
                format!("{e}; nothing was paid"),
            ));
        }
        Ok(SentIntent {
            id,
            nonce: charge.nonce,
            sent: false,
        })
    }

    /// The upstream refused a payment header that was sent (a 402 to the paid attempt): its
    /// intent is `released` and its budget given back.
    pub async fn refused(
        &self,
        project: &str,
        reservation: Option<Reservation>,
        intent: Option<SentIntent>,
        reason: String,
    ) {
        let Some(intent) = intent else {
            return self.release(reservation).await;
        };
        self.submit_release(project, reservation.map(|r| r.held), intent, reason)
            .await;
    }

    async fn submit_release(
        &self,
        project: &str,
        reservation: Option<crate::budget::Reservation>,
        intent: SentIntent,
        reason: String,
    ) {
        self.intents.count(project, IntentState::Released);
        self.settler
            .submit(Job::Release {
                reservation,
                intent: Some(Outcome {
                    id: intent.id,
                    state: IntentState::Released,
                    reason: Some(reason),
                    tx_hash: None,
                    at: crate::clock::unix_millis() as i64,
                }),
            })
            .await;
    }

    /// Runs in `logging`: hands the outcome to the [`Settler`] (journal, then commit; or
    /// release; or in doubt) without holding the connection for it.
    pub async fn finish(&self, ctx: &mut RequestCtx) {
        let reservation = ctx.payment.reservation.take().map(|r| r.held);
        let intent = ctx.payment.intent.take();
        let settled = ctx.payment.settled == Some(true);
        let project_label = ctx.project_label().to_string();
        let (Some(charge), Some(project), true) =
            (ctx.payment.charge.clone(), ctx.project.clone(), settled)
        else {
            match intent {
                None => {
                    if let Some(r) = reservation {
                        self.settler
                            .submit(Job::Release {
                                reservation: Some(r),
                                intent: None,
                            })
                            .await;
                    }
                }
                Some(i) if !i.sent => {
                    let why = "never sent: the request ended before the paid attempt".to_string();
                    released_key(ctx);
                    self.submit_release(&project_label, reservation, i, why)
                        .await;
                }
                Some(i) => match ctx.payment.refused.take() {
                    Some(why) => {
                        released_key(ctx);
                        self.submit_release(&project_label, reservation, i, why)
                            .await
                    }
                    None => {
                        if ctx.idempotency.claim.is_some() {
                            ctx.idempotency.outcome = Some(crate::stages::KeyOutcome::InDoubt);
                        }
                        self.in_doubt(ctx, &project_label, i, reservation).await
                    }
                },
            }
            return;
        };
        let now = unix_now();
        let (id, pool, windows, reserved_at) = match &reservation {
            Some(r) => (
                r.id.clone(),
                r.key.pool.clone(),
                r.windows.clone(),
                r.reserved_at,
            ),
            None => (
                intent
                    .as_ref()
                    .map_or_else(crate::budget::new_reservation_id, |i| i.id.clone()),
                String::new(),
                crate::budget::Windows::at(now),
                now,
            ),
        };
        if intent.is_some() {
            self.intents.count(&project.id, IntentState::Committed);
        }
        if ctx.idempotency.claim.is_some() {
            ctx.idempotency.outcome = Some(crate::stages::KeyOutcome::Paid(id.clone()));
        }
        let record = SpendRecord {
            id,
            project: project.id.clone(),
            pool,
            network: charge.network.clone(),
            asset: crate::x402::checksummed(&charge.asset),
            pay_to: crate::x402::checksummed(&charge.pay_to),
            payer: crate::x402::checksummed(&charge.payer),
            amount: charge.amount,
            nonce: charge.nonce.to_string(),
            tx_hash: ctx.payment.tx.clone(),
            url: ctx
                .target
                .as_ref()
                .map_or_else(String::new, |t| t.url_without_query()),
            window_day: windows.day,
            window_month: windows.month,
            reserved_at: reserved_at as i64,
            committed_at: now as i64,
            valid_before: Some(charge.valid_before.min(i64::MAX as u64) as i64),
        };
        self.settler
            .submit(Job::Commit {
                record: Box::new(record),
                reservation,
                project: Some(project),
            })
            .await;
    }

    /// A payment was sent and its outcome is unknown (an upstream error or no answer): its
    /// intent becomes `in_doubt`, its reservation keeps holding budget until it expires (the
    /// ledger's hold outlives the authorization), and a retry with the same Idempotency-Key
    /// is refused rather than paid again.
    async fn in_doubt(
        &self,
        ctx: &RequestCtx,
        project: &str,
        intent: SentIntent,
        reservation: Option<crate::budget::Reservation>,
    ) {
        let mut reason = match ctx.payment.paid_status {
            Some(status) => format!(
                "the upstream answered {status} to the paid attempt, without saying whether it settled"
            ),
            None => "no answer from the upstream to the paid attempt".to_string(),
        };
        if let Some(problem) = &ctx.payment.receipt_problem {
            reason = format!("{reason}; {problem}");
        }
        log::warn!(project = project, id = intent.id.as_str(); "payment in doubt: {reason}");
        // Not released: the hold stays until the authorization can no longer be settled.
        drop(reservation);
        self.intents.count(project, IntentState::InDoubt);
        self.settler
            .submit(Job::InDoubt(Outcome {
                id: intent.id,
                state: IntentState::InDoubt,
                reason: Some(reason),
                tx_hash: None,
                at: crate::clock::unix_millis() as i64,
            }))
            .await;
    }
}

/// The payment signed for the request's claimed Idempotency-Key is proved not made.
fn released_key(ctx: &mut RequestCtx) {
    if ctx.idempotency.claim.is_some() {
        ctx.idempotency.outcome = Some(crate::stages::KeyOutcome::Released);
    }
}
