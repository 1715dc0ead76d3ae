//! The one place a finished request's context becomes an analytics record (called from the
//! `logging` hook). Only what the record lists is copied: never a header, a body, the query
//! string, a key or a payment signature.

use std::borrow::Cow;

use pingora::proxy::Session;

use crate::analytics::{CacheOutcome, Money, Paid, PaymentOutcome, Record};
use crate::cache::stats::Outcome;
use crate::proxy::RequestCtx;
use crate::proxy::ctx::{Target, TargetKind};

/// The analytics record of a request that got `status` (0: none was sent).
pub fn record(session: &Session, ctx: &RequestCtx, status: u16) -> Record {
    let mut r = describe(session, ctx);
    refresh(&mut r, session, ctx, status);
    r
}

/// Brings a record written ahead (just before the answer) up to date once the request is
/// over: status, times, bytes and outcomes; what it describes does not change.
pub fn refresh(r: &mut Record, session: &Session, ctx: &RequestCtx, status: u16) {
    r.status = status;
    r.upstream_status = ctx.upstream.status;
    r.attempts = ctx.upstream.attempts;
    r.latency_us = ctx.started.elapsed().as_micros() as u64;
    r.upstream_latency_us = ctx
        .upstream
        .status
        .is_some()
        .then_some(ctx.upstream.latency_us);
    r.request_bytes = session.body_bytes_read() as u64;
    r.response_bytes = session.body_bytes_sent() as u64;
    r.cache = match ctx.cache.outcome {
        Some(Outcome::Hit(_)) => CacheOutcome::Hit,
        Some(Outcome::Stale(_)) => CacheOutcome::Stale,
        Some(Outcome::Miss) => CacheOutcome::Miss,
        Some(Outcome::Bypass) => CacheOutcome::Bypass,
        None if ctx.cache.lookup.is_some() => CacheOutcome::Miss,
        None if ctx.cache.bypass.is_some() => CacheOutcome::Bypass,
        None => CacheOutcome::None,
    };
    r.error = ctx.error.map(|code| Cow::Borrowed(code.as_str()));
}

/// What the request's x402 offer said about its endpoint (taken: handed over once).
pub fn described_endpoint(ctx: &mut RequestCtx) -> Option<(String, crate::curation::OfferInfo)> {
    let info = ctx.payment.offer_info.take()?;
    let (.., endpoint) = where_to(ctx.target.as_ref()?);
    Some((endpoint, info))
}

/// The analytics record of a request answered before its header was parsed (by the header
/// guard: 431, or 400 when Pingora could not parse it): nothing of it is known but the answer.
pub fn unparsed(code: crate::proxy::respond::ErrorCode) -> Record {
    Record {
        at_ms: crate::clock::unix_millis() as i64,
        scheme: Cow::Borrowed("http"),
        status: code.status(),
        error: Some(Cow::Borrowed(code.as_str())),
        ..Record::default()
    }
}

/// Who asked for what, and what was paid or saved.
fn describe(session: &Session, ctx: &RequestCtx) -> Record {
    let req = session.req_header();
    let (scheme, host, port, path, endpoint) = match &ctx.target {
        Some(t) => where_to(t),
        // No target (the request named none pag0 could use): what the request line says.
        None => (
            "http",
            String::new(),
            0,
            req.uri.path().to_string(),
            String::new(),
        ),
    };
    let payment = &ctx.payment;
    let outcome = payment.outcome.unwrap_or(if payment.agent_signed {
        PaymentOutcome::Relay
    } else if payment.charge.is_some() {
        // A payment header went out and no answer to it came back.
        PaymentOutcome::InDoubt
    } else {
        PaymentOutcome::None
    });
    // Relayed payments count once the upstream took them.
    let settled_relay = outcome != PaymentOutcome::Relay || payment.settled == Some(true);
    let paid = payment
        .charge
        .as_ref()
        .filter(|_| settled_relay)
        .map(|c| Paid {
            money: Money {
                symbol: c.symbol.clone(),
                amount: c.amount,
            },
            asset: c.asset.to_string(),
            network: c.network.clone(),
            pay_to: c.pay_to.to_string(),
        });
    let version = payment.x402_version.or(match &payment.header {
        Some((name, _)) if name.eq_ignore_ascii_case(crate::x402::X_PAYMENT_HEADER) => Some(1),
        Some(_) => Some(2),
        None => None,
    });
    Record {
        id: String::new(),
        at_ms: ctx.at_ms,
        project: ctx
            .project
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_default(),
        route: ctx
            .target
            .as_ref()
            .map(|t| t.route_label().to_string())
            .unwrap_or_default(),
        method: req.method.as_str().to_string(),
        scheme: Cow::Borrowed(scheme),
        host,
        port,
        path,
        endpoint,
        status: 0,
        upstream_status: None,
        attempts: 0,
        latency_us: 0,
        upstream_latency_us: None,
        request_bytes: 0,
        response_bytes: 0,
        cache: CacheOutcome::None,
        payment: outcome,
        // Text from the upstream (offers, receipts): printable, bounded.
        payment_reason: payment
            .declined
            .as_deref()
            .or(payment.refused.as_deref())
            .map(printable),
        paid,
        saved: ctx.cache.saved.as_ref().map(|(symbol, amount)| Money {
            symbol: symbol.clone(),
            amount: *amount,
        }),
        error: None,
        tx_hash: payment.tx.as_deref().map(printable),
        x402_version: version,
    }
}

/// Scheme, host, port, path (without the query) and endpoint key of a target.
fn where_to(t: &Target) -> (&'static str, String, u16, String, String) {
    let scheme = if t.tls { "https" } else { "http" };
    let path = t.path.split('?').next().unwrap_or_default();
    let endpoint = match &t.kind {
        TargetKind::Route(route) => t.route_upstream().unwrap_or(&route.upstream).endpoint_key(),
        // CONNECT always names the port.
        TargetKind::Connect if t.host.contains(':') => format!("[{}]:{}", t.host, t.port),
        TargetKind::Connect => format!("{}:{}", t.host, t.port),
        TargetKind::Forward => {
            let mut key = t.host_header();
            key.push_str(path);
            key
        }
    };
    (scheme, t.host.clone(), t.port, path.to_string(), endpoint)
}

/// Upstream-provided text as stored: control characters (a NUL would make PostgreSQL refuse
/// the row) replaced, at most 512 characters.
fn printable(text: &str) -> String {
    text.chars()
        .take(512)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}
