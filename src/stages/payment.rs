//! `payment`: pays x402 `402 Payment Required` answers with the project's wallet and replays
//! the request (Pingora recipe: an error marked `retry` from `upstream_response_filter`).
//!
//! ```text
//! attempt 1 (unpaid) ── 402 + PAYMENT-REQUIRED (v2) ──▶ choose offer ▶ sign ▶ retry
//!                   └─ 402 without it (v1) ──▶ side request reads the JSON body offer ──┘
//! attempt 2 (PAYMENT-SIGNATURE / X-PAYMENT) ──▶ paid response (+ receipt) to the agent
//! ```
//!
//! Price memory: after a successful paid call the accepted offer is remembered per (project,
//! method, URL without query); the next call is signed in `request_filter` and sent once. If
//! that pre-signed attempt gets a 402 anyway (price changed), the entry is forgotten and the
//! new 402 is paid with the normal replay, exactly once.
//!
//! Modes (per project): `wallet` as above; `relay`: the agent signs, and its `X-PAYMENT` /
//! `PAYMENT-SIGNATURE` is decoded, checked against the same guards, the validity window and a
//! nonce replay guard, then forwarded unchanged; `off`: 402s pass through.
//!
//! Guards: only assets listed in `payments.assets`, only allowed schemes and recipients, never
//! above the asset's per-payment ceiling; the cheapest acceptable offer wins. Never pays twice
//! for one request: a 402 to the paid attempt goes to the agent as is. A body larger than the
//! retry buffer (64 KiB) cannot be replayed, so such a 402 is passed on unpaid.

use std::sync::Arc;

use alloy_primitives::U256;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::spend::{BUDGET_REMAINING_HEADER, PaidRequest, SpendGuard, Validity, remaining};
use super::{Flow, Stage};
use crate::analytics::PaymentOutcome;
use crate::clock::unix_now;
use crate::config::{Asset, PaymentMode, Payments, Wallet};
use crate::metrics::Metrics;
use crate::proxy::ctx::Charge;
use crate::proxy::respond::{ErrorCode, Reply};
use crate::proxy::{RequestCtx, upstream};
use crate::x402::facilitator::{Facilitator, FacilitatorError, Verdict};
use crate::x402::{
    self, DecodedPayment, NonceGuard, Offer, PaymentRequired, PriceMemory, Remembered, networks,
};

/// Response header telling the agent what pag0 did with a 402.
pub const PAYMENT_STATUS_HEADER: &str = "x-pag0-payment";
/// Human-readable reason for `x-pag0-payment: declined`.
pub const PAYMENT_REASON_HEADER: &str = "x-pag0-payment-reason";

pub struct PaymentStage {
    payments: Payments,
    metrics: Arc<Metrics>,
    memory: Arc<dyn PriceMemory>,
    nonce_guard: Arc<dyn NonceGuard>,
    facilitator: Option<Arc<Facilitator>>,
    spend: Arc<SpendGuard>,
    commit_without_receipt: bool,
}

/// Why no payment header was produced.
enum SignFailure {
    /// The `payments` guards, signer or facilitator said no: the 402 goes to the agent with
    /// the reason.
    Declined(String),
    /// The project's spend policy refused (403) or the budget ledger is down (503).
    Refused(Reply),
    /// `verify_before_pay` is on and the facilitator did not answer.
    Facilitator(FacilitatorError),
}

impl PaymentStage {
    pub fn new(
        payments: Payments,
        metrics: Arc<Metrics>,
        memory: Arc<dyn PriceMemory>,
        nonce_guard: Arc<dyn NonceGuard>,
        facilitator: Option<Arc<Facilitator>>,
        spend: Arc<SpendGuard>,
        commit_without_receipt: bool,
    ) -> PaymentStage {
        PaymentStage {
            payments,
            metrics,
            memory,
            nonce_guard,
            facilitator,
            spend,
            commit_without_receipt,
        }
    }

    /// Relay mode: checks an agent-signed payment header before it is forwarded unchanged.
    async fn check_relayed_header(&self, value: &[u8], ctx: &mut RequestCtx) -> Result<(), Reply> {
        let payment = x402::decode_payment_header(value).map_err(|e| {
            Reply::new(
                ErrorCode::InvalidPaymentHeader,
                format!("cannot decode the payment header: {e}"),
            )
        })?;
        let now = unix_now();
        let asset = check_relayed(&self.payments, &payment, now)
            .map_err(|why| Reply::new(ErrorCode::PaymentNotAllowed, why))?;
        let a = &payment.authorization;
        let reservation = match ctx
            .project
            .as_ref()
            .and_then(|p| self.spend.policies.effective(p).map(|x| (p, x)))
        {
            Some((project, policy)) => {
                let spend = crate::policy::Spend {
                    host: ctx.target.as_ref().map_or("", |t| t.host.as_str()),
                    chain_id: asset.chain_id,
                    symbol: &asset.symbol,
                    asset: asset.address,
                    pay_to: a.to,
                    amount: a.value,
                };
                self.spend
                    .authorize_relayed(project, &policy, &spend, now)
                    .await?
            }
            None => None,
        };
        // Kept while the authorization can still be settled (its block may land late).
        let until = a
            .valid_before
            .saturating_add(crate::store::IN_DOUBT_MARGIN_SECONDS);
        let fresh = self.nonce_guard.claim(a.from, a.nonce, until, now).await;
        if fresh != Ok(true) {
            self.spend.release(reservation).await;
            return Err(match fresh {
                Err(e) => {
                    log::warn!(project = ctx.project_label(); "relay replay guard: {e}");
                    Reply::new(
                        ErrorCode::IdempotencyUnavailable,
                        "the replay guard is unreachable; the payment was not forwarded",
                    )
                }
                _ => Reply::new(
                    ErrorCode::PaymentNonceReused,
                    "this payment authorization was already relayed",
                ),
            });
        }
        let charge = Charge {
            amount: a.value,
            symbol: asset.symbol.clone(),
            network: networks::caip2(asset.chain_id),
            asset: asset.address,
            pay_to: a.to,
            payer: a.from,
            nonce: a.nonce,
            valid_before: a.valid_before,
        };
        let validity = Validity {
            valid_after: a.valid_after,
            valid_before: a.valid_before,
        };
        // The agent's header is forwarded only once its intent is durable.
        let intent = match self
            .spend
            .write_ahead(ctx, &charge, validity, reservation.as_ref(), "relay")
            .await
        {
            Ok(intent) => intent,
            Err(reply) => {
                self.spend.release(reservation).await;
                return Err(reply);
            }
        };
        ctx.payment.intent = Some(intent);
        ctx.payment.charge = Some(charge);
        ctx.payment.reservation = reservation;
        self.metrics
            .payments
            .with_label_values(&[ctx.project_label(), "relayed"])
            .inc();
        Ok(())
    }

    /// Marks the 402 as not paid and says why; it then goes to the agent unchanged otherwise.
    fn decline(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        status: &str,
        reason: String,
    ) -> pingora::Result<()> {
        self.decline_with(resp, ctx, status, reason, false)
    }

    /// [`Self::decline`]; `answer_ourselves` replaces the upstream's 402 body with pag0's JSON
    /// reason whatever it was (when the upstream's 402 cannot be passed on as it is).
    fn decline_with(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        status: &str,
        reason: String,
        answer_ourselves: bool,
    ) -> pingora::Result<()> {
        self.metrics
            .payments
            .with_label_values(&[ctx.project_label(), "declined"])
            .inc();
        resp.insert_header(PAYMENT_STATUS_HEADER, status)?;
        let printable = crate::proxy::respond::header_text(&reason, 512);
        resp.insert_header(PAYMENT_REASON_HEADER, printable.clone())?;
        ctx.payment.declined = Some(reason.clone());
        ctx.payment.outcome = Some(if status == "body-too-large" {
            PaymentOutcome::BodyTooLarge
        } else {
            PaymentOutcome::Declined
        });
        let mut reply = Reply::new(ErrorCode::PaymentDeclined, reason)
            .details(serde_json::json!({"payment": status}));
        let length = resp.headers.get(http::header::CONTENT_LENGTH);
        // An empty 402 body: pag0 answers itself, with the same headers (offer included) and
        // a JSON reason, so the agent has something to read.
        if answer_ourselves || length.is_some_and(|v| v.as_bytes() == b"0") {
            reply = reply
                .header(PAYMENT_STATUS_HEADER, status)
                .header(PAYMENT_REASON_HEADER, printable);
            if let Some(offer) = resp
                .headers
                .get(x402::PAYMENT_REQUIRED_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                reply = reply.header(x402::PAYMENT_REQUIRED_HEADER, offer);
            }
            ctx.error = Some(ErrorCode::PaymentDeclined);
            ctx.reply = Some(reply);
            return Err(Error::explain(ErrorType::HTTPStatus(402), "x402: declined"));
        }
        if length.is_none() {
            // A chunked (or close-delimited) body may turn out empty: if it does, the JSON
            // reason is sent as its body (`response_body_filter`).
            ctx.payment.decline_body = Some(reply.body());
        }
        Ok(())
    }

    /// Chooses and signs an offer of `required` (and, with `verify_before_pay`, has the
    /// facilitator verify it); records the header and charge in the context.
    async fn sign(
        &self,
        wallet: &Wallet,
        required: &PaymentRequired,
        method: &str,
        ctx: &mut RequestCtx,
    ) -> Result<(), SignFailure> {
        let candidates = candidates(&self.payments, required).map_err(SignFailure::Declined)?;
        let now = unix_now();
        let policy = ctx
            .project
            .as_ref()
            .and_then(|p| self.spend.policies.effective(p).map(|x| (p, x)));
        let (offer, reservation) = match policy {
            Some((project, policy)) => {
                let request = PaidRequest {
                    method,
                    host: ctx.target.as_ref().map_or("", |t| t.host.as_str()),
                    url: ctx
                        .target
                        .as_ref()
                        .map_or_else(String::new, |t| t.url_without_query()),
                };
                self.spend
                    .authorize(project, &policy, &request, &candidates, now)
                    .await
                    .map_err(SignFailure::Refused)?
            }
            None => (candidates[0].0, None),
        };
        // From here on a failure must give the reservation back.
        let signed = match wallet.0.sign(offer, now).await {
            Ok(s) => s,
            Err(e) => {
                self.spend.release(reservation).await;
                return Err(SignFailure::Declined(e.to_string()));
            }
        };
        let source = if signed.presigned { "stock" } else { "fresh" };
        self.metrics
            .signatures
            .with_label_values(&[ctx.project_label(), source])
            .inc();
        let header = x402::payment_header(required, offer, &signed);
        let symbol = self
            .payments
            .asset(offer.chain_id, offer.asset)
            .map_or_else(String::new, |a| a.symbol.clone());
        // Base64 is always a valid header value; checked once here, shared by the attempts.
        // Sensitive: a bearer authorization until it expires, so `Debug` does not show it.
        let Ok(mut header_value) = http::HeaderValue::try_from(header.as_str()) else {
            self.spend.release(reservation).await;
            return Err(SignFailure::Declined("unencodable payment header".into()));
        };
        header_value.set_sensitive(true);
        let charge = Charge {
            amount: offer.amount,
            symbol,
            network: networks::caip2(offer.chain_id),
            asset: offer.asset,
            pay_to: offer.pay_to,
            payer: signed.authorization.from,
            nonce: signed.authorization.nonce,
            valid_before: signed.authorization.valid_before,
        };
        let validity = Validity {
            valid_after: signed.authorization.valid_after,
            valid_before: signed.authorization.valid_before,
        };
        // Write ahead: the header may leave pag0 (to the facilitator or the upstream) only
        // once this payment is durable.
        let mut intent = match self
            .spend
            .write_ahead(ctx, &charge, validity, reservation.as_ref(), "wallet")
            .await
        {
            Ok(intent) => intent,
            Err(reply) => {
                self.spend.release(reservation).await;
                return Err(SignFailure::Refused(reply));
            }
        };
        if let Some(f) = self.facilitator.as_ref().filter(|f| f.verify_before_pay) {
            intent.sent = true;
            let failure = match f.verify(&header, offer).await {
                Ok(Verdict::Valid) => None,
                Ok(Verdict::Invalid(reason)) => Some(SignFailure::Declined(format!(
                    "the facilitator rejected the payment: {reason}"
                ))),
                Err(e) => Some(SignFailure::Facilitator(e)),
            };
            if let Some(failure) = failure {
                // Verifying settles nothing: the payment was not made.
                self.spend
                    .refused(
                        ctx.project_label(),
                        reservation,
                        Some(intent),
                        "verify-before-pay: the facilitator did not accept it; not sent upstream"
                            .into(),
                    )
                    .await;
                return Err(failure);
            }
        }
        let header = header_value;
        ctx.payment.intent = Some(intent);
        ctx.payment.header = Some((offer.version.payment_header(), header));
        ctx.payment.charge = Some(charge);
        ctx.payment.reservation = reservation;
        self.metrics
            .payments
            .with_label_values(&[ctx.project_label(), "signed"])
            .inc();
        Ok(())
    }

    /// Reads an x402 v1 offer (402 JSON body) with one unpaid side request. The error says why
    /// not, and whether the upstream was too slow (then its own 402 body, the same offer,
    /// would be just as slow: pag0 answers the agent itself).
    async fn fetch_v1_offer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
    ) -> Result<Bytes, (String, bool)> {
        let target = ctx
            .target
            .as_ref()
            .ok_or_else(|| ("no target".to_string(), false))?;
        let up = &ctx.live.config.upstream;
        let deadline = self.payments.offer_timeout;
        let read = upstream::side_request(
            session,
            target,
            up,
            x402::MAX_HEADER_LEN,
            deadline,
            normalise_probe,
        );
        match read.await {
            Ok((402, body)) => Ok(body),
            Ok((status, _)) => Err((
                format!(
                    "no x402 offer: the 402 had no PAYMENT-REQUIRED header and a second look answered {status}"
                ),
                false,
            )),
            Err(e) if e.etype() == &pingora::ErrorType::ReadTimedout => Err((
                format!(
                    "the x402 v1 offer (the 402's body) did not arrive within {} ms (payments.offer_timeout_ms)",
                    deadline.as_millis()
                ),
                true,
            )),
            Err(e) => Err((
                format!("cannot read the x402 v1 offer: {}", e.etype().as_str()),
                false,
            )),
        }
    }

    fn memory_enabled(&self) -> bool {
        !self.payments.price_memory.is_zero()
    }
}

/// Accepted clock difference for an agent's `validAfter`.
pub const RELAY_CLOCK_SKEW_SECONDS: u64 = 60;

/// Checks an agent-signed payment against the allowlists and ceiling pag0 applies to its own
/// payments, the validity window, and (v2, domain known) that the signature is the payer's.
/// Returns the allowed asset the payment is in.
pub fn check_relayed<'p>(
    payments: &'p Payments,
    p: &DecodedPayment,
    now: u64,
) -> Result<&'p Asset, String> {
    use alloy_primitives::Address;
    use serde_json::Value;
    if !payments.schemes.contains(&p.scheme) {
        return Err(format!("scheme {} not allowed", p.scheme));
    }
    let chain_id = p
        .chain_id
        .ok_or_else(|| format!("unsupported network {}", p.network))?;
    let a = &p.authorization;
    let asset = match &p.accepted {
        Some(accepted) => {
            let field = |k: &str| accepted.get(k).and_then(Value::as_str);
            let asset: Address = field("asset")
                .and_then(|s| s.parse().ok())
                .ok_or("accepted.asset is missing or invalid")?;
            let allowed = payments.asset(chain_id, asset).ok_or_else(|| {
                format!("asset {asset} on {} not allowed", networks::caip2(chain_id))
            })?;
            if p.accepted_amount() != Some(a.value) {
                return Err("authorization.value differs from accepted.amount".into());
            }
            if field("payTo").and_then(|s| s.parse::<Address>().ok()) != Some(a.to) {
                return Err("authorization.to differs from accepted.payTo".into());
            }
            let extra = accepted.get("extra");
            if let Some((name, version)) = &allowed.eip712
                && (extra.and_then(|e| e.get("name")).and_then(Value::as_str) != Some(name)
                    || extra.and_then(|e| e.get("version")).and_then(Value::as_str)
                        != Some(version))
            {
                return Err(format!(
                    "accepted.extra does not name {}'s EIP-712 domain ({name:?}, version {version:?})",
                    allowed.symbol
                ));
            }
            let extra = accepted.get("extra");
            let domain_part = |k: &str| {
                extra
                    .and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            if let (Some(name), Some(version)) = (domain_part("name"), domain_part("version")) {
                let domain = x402::sign::TokenDomain {
                    name,
                    version,
                    chain_id,
                    verifying_contract: asset,
                };
                if x402::sign::recover_signer(&domain, a, &p.signature) != Some(a.from) {
                    return Err("the signature is not the payer's".into());
                }
            }
            allowed
        }
        // v1 payloads do not name the asset: only unambiguous with one allowed asset there.
        None => {
            let mut on_chain = payments.assets.iter().filter(|x| x.chain_id == chain_id);
            match (on_chain.next(), on_chain.next()) {
                (Some(only), None) => only,
                (None, _) => {
                    return Err(format!("no allowed asset on {}", networks::caip2(chain_id)));
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "an x402 v1 payment does not name its asset and several are allowed on {}",
                        networks::caip2(chain_id)
                    ));
                }
            }
        }
    };
    let ceiling = asset.max_per_payment;
    if a.value > ceiling {
        return Err(format!(
            "{} exceeds the per-payment ceiling of {ceiling}",
            a.value
        ));
    }
    if !payments.pay_to.is_empty() && !payments.pay_to.contains(&a.to) {
        return Err(format!("recipient {} not allowed", a.to));
    }
    if a.value.is_zero() {
        return Err("the authorization is for amount 0".into());
    }
    if a.to.is_zero() {
        return Err("the authorization pays the zero address".into());
    }
    if a.valid_before <= now {
        return Err("the authorization has expired".into());
    }
    if a.valid_before > now.saturating_add(payments.max_authorization_seconds) {
        return Err(format!(
            "the authorization is valid until {}, longer than payments.max_authorization_seconds ({}) from now",
            a.valid_before, payments.max_authorization_seconds
        ));
    }
    if a.valid_after > now + RELAY_CLOCK_SKEW_SECONDS {
        return Err("the authorization is not valid yet".into());
    }
    Ok(asset)
}

/// The cheapest offer that passes every `payments` guard, or why none does.
pub fn choose<'a>(payments: &Payments, required: &'a PaymentRequired) -> Result<&'a Offer, String> {
    candidates(payments, required).map(|c| c[0].0)
}

/// Every offer that passes the `payments` guards (allowed scheme, asset, recipient, under the
/// asset's ceiling) with its asset, cheapest first; or why none does. Never empty.
pub fn candidates<'a, 'p>(
    payments: &'p Payments,
    required: &'a PaymentRequired,
) -> Result<Vec<(&'a Offer, &'p Asset)>, String> {
    let mut reasons: Vec<String> = required
        .unusable
        .iter()
        .map(|(i, why)| format!("offer {i}: {why}"))
        .collect();
    let mut found: Vec<(&Offer, &Asset, U256)> = Vec::new();
    for offer in &required.offers {
        let i = offer.index;
        if !payments.schemes.contains(&offer.scheme) {
            reasons.push(format!("offer {i}: scheme {} not allowed", offer.scheme));
            continue;
        }
        let Some(asset) = payments.asset(offer.chain_id, offer.asset) else {
            reasons.push(format!(
                "offer {i}: asset {} on {} not allowed",
                offer.asset,
                networks::caip2(offer.chain_id)
            ));
            continue;
        };
        if !payments.pay_to.is_empty() && !payments.pay_to.contains(&offer.pay_to) {
            reasons.push(format!("offer {i}: recipient {} not allowed", offer.pay_to));
            continue;
        }
        if offer.amount > asset.max_per_payment {
            reasons.push(format!(
                "offer {i}: {} {} exceeds the per-payment ceiling of {}",
                offer.amount, asset.symbol, asset.max_per_payment
            ));
            continue;
        }
        if let Err(why) = sane_offer(payments, offer, asset) {
            reasons.push(format!("offer {i}: {why}"));
            continue;
        }
        // Compare across assets on one scale (36 decimals); amounts are bounded by the ceiling.
        let scaled = offer
            .amount
            .saturating_mul(U256::from(10).pow(U256::from(36 - asset.decimals.min(36))));
        found.push((offer, asset, scaled));
    }
    if found.is_empty() {
        return Err(if reasons.is_empty() {
            "no acceptable offer".into()
        } else {
            reasons.join("; ")
        });
    }
    // Stable: among equal prices the server's order wins.
    found.sort_by_key(|(_, _, scaled)| *scaled);
    Ok(found.into_iter().map(|(o, a, _)| (o, a)).collect())
}

/// What no payment pag0 signs may be: of amount 0, to the zero address, valid longer than
/// `payments.max_authorization_seconds` (an authorization that never expires can be settled
/// long after its budget window, by whoever holds it), or in an EIP-712 domain other than the
/// asset's known one (a wrong `extra` makes pag0 sign for another contract's domain).
fn sane_offer(payments: &Payments, offer: &Offer, asset: &Asset) -> Result<(), String> {
    if offer.amount.is_zero() {
        return Err("amount 0".into());
    }
    if offer.pay_to.is_zero() {
        return Err("payTo is the zero address".into());
    }
    let max = payments.max_authorization_seconds;
    if offer.max_timeout_seconds == 0 || offer.max_timeout_seconds > max {
        return Err(format!(
            "maxTimeoutSeconds {} is outside 1..={max} (payments.max_authorization_seconds)",
            offer.max_timeout_seconds
        ));
    }
    if let Some((name, version)) = &asset.eip712
        && (offer.domain_name.as_deref() != Some(name.as_str())
            || offer.domain_version.as_deref() != Some(version.as_str()))
    {
        return Err(format!(
            "the offer's EIP-712 domain (extra.name {:?}, extra.version {:?}) is not {} {name:?} version {version:?}",
            offer.domain_name.as_deref().unwrap_or(""),
            offer.domain_version.as_deref().unwrap_or(""),
            asset.symbol
        ));
    }
    Ok(())
}

/// Reference servers answer browsers (Accept has text/html AND User-Agent has Mozilla) with an
/// HTML paywall and no offer, so only in that case the unpaid probe asks for JSON.
fn normalise_probe(req: &mut RequestHeader) -> pingora::Result<()> {
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header(http::header::ACCEPT).contains("text/html")
        && header(http::header::USER_AGENT).contains("Mozilla")
    {
        req.insert_header(http::header::ACCEPT, "application/json")?;
    }
    Ok(())
}

/// Price-memory key: project, method and target URL without the query.
fn memory_key(req: &RequestHeader, ctx: &RequestCtx) -> Option<String> {
    let t = ctx.target.as_ref()?;
    Some(format!(
        "{}|{}|{}",
        ctx.project_label(),
        req.method,
        t.url_without_query()
    ))
}

#[async_trait]
impl Stage for PaymentStage {
    fn name(&self) -> &'static str {
        "payment"
    }

    /// Notes an agent's own payment header (never pay on top of it); in relay mode checks it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let req = session.req_header();
        let mode = ctx.project.as_ref().map_or(PaymentMode::Off, |p| p.mode);
        let agent_header = req
            .headers
            .get(x402::PAYMENT_SIGNATURE_HEADER)
            .or_else(|| req.headers.get(x402::X_PAYMENT_HEADER))
            .map(|v| v.as_bytes().to_vec());
        if let Some(value) = agent_header {
            // The agent paid itself (its own x402 client): never pay on top. In relay mode the
            // payment is checked first and then forwarded unchanged.
            ctx.payment.agent_signed = true;
            if mode == PaymentMode::Relay
                && let Err(reply) = self.check_relayed_header(&value, ctx).await
            {
                self.metrics
                    .payments
                    .with_label_values(&[ctx.project_label(), "refused"])
                    .inc();
                return Flow::Respond(reply);
            }
        }
        Flow::Continue
    }

    /// Signs up front when the price of this endpoint is remembered (one round trip; also
    /// works for bodies over the replay buffer, since nothing needs replaying). Runs only on
    /// the way upstream, so a cache hit signs and reserves nothing.
    async fn before_upstream(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let mode = ctx.project.as_ref().map_or(PaymentMode::Off, |p| p.mode);
        if ctx.payment.agent_signed || mode != PaymentMode::Wallet {
            return Flow::Continue;
        }
        let req = session.req_header();
        let Some(wallet) = ctx.project.as_ref().and_then(|p| p.wallet.clone()) else {
            return Flow::Continue;
        };
        if !self.memory_enabled() {
            return Flow::Continue;
        }
        let Some(key) = memory_key(req, ctx) else {
            return Flow::Continue;
        };
        if let Some(known) = self.memory.recall(&key).await {
            match self
                .sign(&wallet, &known.required, req.method.as_str(), ctx)
                .await
            {
                Ok(()) => ctx.payment.presigned = true,
                Err(SignFailure::Facilitator(e)) => {
                    return Flow::Respond(Reply::new(
                        ErrorCode::FacilitatorUnavailable,
                        format!("{e}; nothing was paid"),
                    ));
                }
                Err(SignFailure::Refused(reply)) => return Flow::Respond(reply),
                Err(SignFailure::Declined(_)) => {} // no pre-signing; the 402 path decides
            }
        }
        ctx.payment.memory_key = Some(key);
        Flow::Continue
    }

    /// Paid attempt: add the payment header. Unpaid probe: see [`normalise_probe`].
    fn upstream_request_filter(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // From here on a payment header may reach the upstream (pag0's, or a relayed one).
        if let Some(intent) = &mut ctx.payment.intent {
            intent.sent = true;
        }
        if let Some((name, value)) = &ctx.payment.header {
            req.insert_header(*name, value.clone())?;
            return Ok(());
        }
        normalise_probe(req)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The receipt of whatever was paid (by pag0 or, in relay mode, by the agent), read
        // before the cache stores or merges the header. The last final header is the one that
        // answers the current attempt.
        if !resp.status.is_informational() {
            ctx.payment.receipt = x402::RECEIPT_HEADERS
                .iter()
                .find_map(|name| resp.headers.get(*name))
                .map(|v| v.as_bytes().to_vec());
        }
        if resp.status.as_u16() != 402 || ctx.payment.agent_signed {
            return Ok(());
        }
        // Passed on, a header this large makes clients fail (curl: out of memory): it is
        // dropped whatever happens next, and explained if pag0 would have read it.
        let oversize = resp
            .headers
            .get(x402::PAYMENT_REQUIRED_HEADER)
            .map(|v| v.len())
            .filter(|&len| len > x402::MAX_HEADER_LEN)
            .map(|len| {
                format!(
                    "the upstream's PAYMENT-REQUIRED header is {len} bytes, more than the {} pag0 reads; it was dropped",
                    x402::MAX_HEADER_LEN
                )
            });
        if oversize.is_some() {
            resp.remove_header(x402::PAYMENT_REQUIRED_HEADER);
        }
        if ctx.payment.header.is_some() {
            if ctx.payment.presigned && !ctx.payment.fallback_used {
                // The remembered price no longer holds: forget it and pay this 402, once.
                if let Some(key) = &ctx.payment.memory_key {
                    self.memory.forget(key).await;
                }
                self.metrics
                    .payments
                    .with_label_values(&[ctx.project_label(), "price_changed"])
                    .inc();
                let (reservation, intent) =
                    (ctx.payment.reservation.take(), ctx.payment.intent.take());
                self.spend
                    .refused(
                        ctx.project_label(),
                        reservation,
                        intent,
                        "the upstream answered 402 to the pre-signed payment (its price changed)"
                            .into(),
                    )
                    .await;
                ctx.payment.header = None;
                ctx.payment.charge = None;
                ctx.payment.presigned = false;
                ctx.payment.fallback_used = true;
            } else {
                // The paid attempt was refused: hand it over, never pay twice.
                self.metrics
                    .payments
                    .with_label_values(&[ctx.project_label(), "rejected"])
                    .inc();
                resp.insert_header(PAYMENT_STATUS_HEADER, "rejected")?;
                ctx.payment.outcome = Some(PaymentOutcome::Rejected);
                return Ok(());
            }
        }
        // A v2 offer is read whatever pag0 does about it: what it says about the endpoint
        // goes to the catalog.
        let v2_wire = resp
            .headers
            .get(x402::PAYMENT_REQUIRED_HEADER)
            .map(|value| Bytes::copy_from_slice(value.as_bytes()));
        let v2 = v2_wire.as_deref().map(x402::parse_v2_header);
        if let Some(Ok(required)) = &v2 {
            ctx.payment.offer_info =
                crate::curation::OfferInfo::of(required, crate::clock::unix_millis() as i64);
        }
        match ctx.project.as_ref().map_or(PaymentMode::Off, |p| p.mode) {
            PaymentMode::Relay => {
                resp.insert_header(PAYMENT_STATUS_HEADER, "relay")?;
                ctx.payment.outcome = Some(PaymentOutcome::Relay);
                return Ok(());
            }
            PaymentMode::Off => {
                resp.insert_header(PAYMENT_STATUS_HEADER, "off")?;
                ctx.payment.outcome = Some(PaymentOutcome::Off);
                return Ok(());
            }
            PaymentMode::Wallet => {}
        }
        let Some(wallet) = ctx.project.as_ref().and_then(|p| p.wallet.clone()) else {
            return self.decline(resp, ctx, "declined", "the project has no wallet".into());
        };
        if !ctx.payment.body_replayable {
            return self.decline(
                resp,
                ctx,
                "body-too-large",
                "the request body exceeds the 64 KiB replay buffer".into(),
            );
        }
        if let Some(reason) = oversize {
            return self.decline_with(resp, ctx, "declined", reason, true);
        }
        ctx.payment.x402_version = Some(if v2.is_some() { 2 } else { 1 });
        let (required, wire) = match (v2, v2_wire) {
            (Some(parsed), Some(wire)) => (parsed, wire),
            // x402 v1: the offer is in the 402 body, which this hook cannot read. One unpaid
            // side request (same method, URL, headers, body) fetches it.
            _ => match self.fetch_v1_offer(session, ctx).await {
                Ok(body) => (x402::parse_v1_body(&body), body),
                Err((reason, too_slow)) => {
                    return self.decline_with(resp, ctx, "declined", reason, too_slow);
                }
            },
        };
        let required = match required {
            Ok(r) => r,
            Err(e) => return self.decline(resp, ctx, "declined", format!("malformed offer: {e}")),
        };
        let method = session.req_header().method.to_string();
        match self.sign(&wallet, &required, &method, ctx).await {
            Ok(()) => {}
            Err(SignFailure::Declined(reason)) => {
                return self.decline(resp, ctx, "declined", reason);
            }
            Err(SignFailure::Facilitator(e)) => {
                ctx.error = Some(ErrorCode::FacilitatorUnavailable);
                return Err(Error::explain(ErrorType::HTTPStatus(502), e.to_string()));
            }
            Err(SignFailure::Refused(reply)) => {
                let status = reply.code.status();
                ctx.error = Some(reply.code);
                ctx.reply = Some(reply);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "spend policy",
                ));
            }
        }
        if self.memory_enabled() {
            let offer_index = choose(&self.payments, &required).map_or(0, |o| o.index);
            ctx.payment.to_remember = Some(Arc::new(Remembered {
                required,
                offer_index,
                wire,
            }));
        }
        ctx.payment.replay_requested = true;
        let mut e = Error::explain(ErrorType::HTTPStatus(402), "x402: paying and replaying");
        e.set_retry(true);
        Err(e)
    }

    /// Tells the agent what was paid (`X-Pag0-Paid`, `-Cost`, `-Network`, `-Tx`) and remembers
    /// the offer of a successful paid call.
    async fn response_filter(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(charge) = ctx.payment.charge.clone() else {
            resp.insert_header("x-pag0-paid", "false")?;
            return Ok(());
        };
        // As the upstream sent it: after a 304 revalidation the client gets the stored header.
        let mut receipt = ctx
            .payment
            .receipt
            .take()
            .and_then(|v| x402::parse_receipt(&v).ok());
        // A receipt whose transaction is not a hash of the network's form is not believed:
        // the payment is resolved as one without a receipt (by the chain with `payments.rpc`).
        if let Some(r) = receipt.as_mut()
            && let Some(raw) = r.transaction.take()
        {
            match x402::transaction_hash(&charge.network, &raw) {
                Some(hash) => r.transaction = Some(hash),
                None => {
                    let problem = format!(
                        "the upstream's receipt names no {} transaction hash (0x and 64 hex digits); it was ignored",
                        charge.network
                    );
                    log::warn!(host = ctx.target.as_ref().map_or("", |t| t.host.as_str()); "invalid payment receipt: {problem}");
                    ctx.payment.receipt_problem = Some(problem);
                    receipt = None;
                }
            }
        }
        let paid = resp.status.is_success() && receipt.as_ref().is_none_or(|r| r.success);
        resp.insert_header("x-pag0-paid", if paid { "true" } else { "false" })?;
        ctx.payment.paid_status = Some(resp.status.as_u16());
        // What proves the payment was not made: the upstream refused it, or its receipt says
        // the settlement failed. Anything else unpaid leaves it in doubt.
        if resp.status.as_u16() == 402 {
            ctx.payment.refused = Some("the upstream answered 402 to the paid attempt".into());
        } else if let Some(r) = receipt.as_ref().filter(|r| !r.success) {
            ctx.payment.refused = Some(format!(
                "the receipt says the settlement failed{}",
                r.error_reason
                    .as_deref()
                    .map(|e| format!(": {}", e.chars().take(200).collect::<String>()))
                    .unwrap_or_default()
            ));
        }
        ctx.payment.settled = Some(
            resp.status.is_success()
                && receipt
                    .as_ref()
                    .map_or(self.commit_without_receipt, |r| r.success),
        );
        if let Some(r) = &ctx.payment.reservation {
            resp.insert_header(
                BUDGET_REMAINING_HEADER,
                remaining(&r.held.key.pool, r.limits, &r.held.usage),
            )?;
        }
        // What this call cost: only on a paid call. An unpaid answer to a signed payment says
        // whether the payment was refused (not spent) or is in doubt (it may still settle).
        ctx.payment.outcome = Some(if ctx.payment.agent_signed {
            PaymentOutcome::Relay
        } else if paid {
            PaymentOutcome::Paid
        } else if ctx.payment.refused.is_some() {
            PaymentOutcome::Rejected
        } else {
            PaymentOutcome::InDoubt
        });
        if paid {
            resp.insert_header(
                "x-pag0-cost",
                format!("{} {}", charge.amount, charge.symbol),
            )?;
        } else {
            let outcome = if ctx.payment.refused.is_some() {
                "rejected"
            } else {
                "in-doubt"
            };
            resp.insert_header(PAYMENT_STATUS_HEADER, outcome)?;
        }
        resp.insert_header("x-pag0-network", charge.network)?;
        if let Some(tx) = receipt.and_then(|r| r.transaction) {
            resp.insert_header("x-pag0-tx", tx.as_str())?;
            ctx.payment.tx = Some(tx);
        }
        if paid
            && let (Some(key), Some(offer)) = (
                ctx.payment.memory_key.clone(),
                ctx.payment.to_remember.take(),
            )
        {
            self.memory
                .remember(key, offer, self.payments.price_memory)
                .await;
        }
        Ok(())
    }

    /// A declined 402 whose chunked body turned out empty gets pag0's JSON reason as its body.
    fn response_body_filter(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        if ctx.payment.decline_body.is_none() {
            return;
        }
        if body.as_ref().is_some_and(|b| !b.is_empty()) {
            ctx.payment.decline_body = None;
        } else if end_of_stream {
            *body = ctx.payment.decline_body.take();
        }
    }

    /// Journals and commits a settled payment's budget, or releases it.
    async fn logging(&self, ctx: &mut RequestCtx) {
        self.spend.finish(ctx).await;
    }
}
