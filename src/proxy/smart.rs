//! Smart routes in the proxy: which candidate a request goes to, a failover before anything was
//! paid, and the candidates' breakers. The choice itself is [`crate::curation::router`]'s.

use std::sync::Arc;

use pingora::proxy::Session;

use crate::config::{Route, SmartRoute};
use crate::curation::router::{Breaker, Choice, Reason, RouteState};
use crate::live::Shared;
use crate::proxy::RequestCtx;
use crate::proxy::ctx::{Target, TargetKind};

/// `X-Pag0-Endpoint`: the candidate (endpoint key) that answered a smart route's request.
pub const ENDPOINT_HEADER: &str = "x-pag0-endpoint";

/// A smart route request's candidate bookkeeping.
pub struct SmartChoice {
    state: Arc<RouteState>,
    route: Arc<Route>,
    /// This request holds its candidate's half-open probe (reported or given back once).
    probe: bool,
    /// Failovers so far (at most one per request).
    pub failovers: u8,
    /// An answer was turned into a retry on another candidate.
    pub failover_requested: bool,
}

impl std::fmt::Debug for SmartChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartChoice")
            .field("route", &self.route.name)
            .field("failovers", &self.failovers)
            .finish()
    }
}

fn now_ms() -> u64 {
    crate::clock::unix_millis()
}

/// Points `target` at candidate `i` (the path after the route's prefix is kept).
fn switch(target: &mut Target, smart: &SmartRoute, i: usize) {
    let base = target
        .route_upstream()
        .map(|u| u.base_path.clone())
        .unwrap_or_default();
    let rest = target
        .path
        .strip_prefix(base.as_str())
        .unwrap_or(&target.path);
    let to = &smart.candidates[i];
    let mut path = format!("{}{}", to.base_path, rest);
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    target.path = path;
    target.tls = to.tls;
    target.host = to.host.clone();
    target.port = to.port;
    target.addr = None;
    target.candidate = Some(i);
}

/// Picks the candidate of a smart route's request (right after its target is resolved).
pub fn choose(shared: &Shared, ctx: &mut RequestCtx) {
    let Some(target) = ctx.target.as_mut() else {
        return;
    };
    let TargetKind::Route(route) = &target.kind else {
        return;
    };
    let route = route.clone();
    let Some(smart) = &route.smart else {
        return;
    };
    let state = shared.router.route(&route.name, &smart.keys);
    let Choice {
        index,
        reason,
        probe,
    } = state.choose(&shared.curation.snapshot(), smart.explore, now_ms());
    switch(target, smart, index);
    count(shared, &route, &state, index, reason);
    ctx.smart = Some(SmartChoice {
        state,
        route,
        probe,
        failovers: 0,
        failover_requested: false,
    });
}

fn count(shared: &Shared, route: &Route, state: &RouteState, i: usize, reason: Reason) {
    shared
        .metrics
        .route_choices
        .with_label_values(&[route.name.as_str(), state.key(i), reason.as_str()])
        .inc();
}

/// Whether a request may be sent to another candidate as it is: no payment of the agent's own
/// in it (a payment header signed for one candidate never goes to another) and its body still
/// whole in the retry buffer.
pub fn may_resend(session: &Session, ctx: &RequestCtx) -> bool {
    let req = session.req_header();
    !ctx.payment.agent_signed
        && !req
            .headers
            .contains_key(crate::x402::PAYMENT_SIGNATURE_HEADER)
        && !req.headers.contains_key(crate::x402::X_PAYMENT_HEADER)
        && !session.retry_buffer_truncated()
}

/// The attempt's candidate failed (no connection, a timeout, a 5xx): records it and, when the
/// request may go elsewhere (nothing was signed for it, no failover yet, `may_resend`, pag0 did
/// not decide its fate), points it at another candidate its project's policy allows. Returns
/// whether to retry.
pub fn failed(shared: &Shared, ctx: &mut RequestCtx, may_resend: bool) -> bool {
    let (Some(choice), Some(target)) = (ctx.smart.as_mut(), ctx.target.as_mut()) else {
        return false;
    };
    let (Some(smart), Some(i)) = (choice.route.smart.as_ref(), target.candidate) else {
        return false;
    };
    let now = now_ms();
    let probe = std::mem::take(&mut choice.probe);
    let breaker = choice
        .state
        .failed(i, probe, smart.breaker_failures, smart.breaker_open, now);
    if breaker == Breaker::Opened {
        log::warn!(
            "route {}: candidate {} failed ({} in a row, or its probe); skipped for {} s",
            choice.route.name,
            choice.state.key(i),
            smart.breaker_failures,
            smart.breaker_open.as_secs()
        );
        breaker_gauge(shared, &choice.route, &choice.state, i, true);
    }
    let may_move =
        ctx.payment.header.is_none() && choice.failovers == 0 && may_resend && ctx.error.is_none();
    if !may_move {
        return false;
    }
    // The project's host lists were checked for the first candidate; the next must pass too.
    let policy = ctx
        .project
        .as_ref()
        .and_then(|p| shared.policies.effective(p))
        .filter(|p| p.enforce);
    let allowed = |j: usize| {
        policy
            .as_ref()
            .is_none_or(|p| p.check_host(&smart.candidates[j].host).is_ok())
    };
    let Some(next) = choice
        .state
        .failover(&shared.curation.snapshot(), i, now, allowed)
    else {
        return false;
    };
    switch(target, smart, next.index);
    choice.probe = next.probe;
    choice.failovers += 1;
    count(
        shared,
        &choice.route,
        &choice.state,
        next.index,
        Reason::Failover,
    );
    // Price memory stays per candidate URL: nothing is remembered for this request.
    ctx.payment.memory_key = None;
    true
}

/// The attempt's candidate answered (a final status below 500): its breaker closes.
pub fn answered(shared: &Shared, ctx: &mut RequestCtx) {
    let (Some(choice), Some(i)) = (
        ctx.smart.as_mut(),
        ctx.target.as_ref().and_then(|t| t.candidate),
    ) else {
        return;
    };
    let probe = std::mem::take(&mut choice.probe);
    if choice.state.succeeded(i, probe) {
        breaker_gauge(shared, &choice.route, &choice.state, i, false);
    }
}

/// The request is over: a probe it held and never reported (pag0 answered itself, the agent
/// left) is given back.
pub fn finish(ctx: &mut RequestCtx) {
    let (Some(choice), Some(i)) = (
        ctx.smart.as_mut(),
        ctx.target.as_ref().and_then(|t| t.candidate),
    ) else {
        return;
    };
    if std::mem::take(&mut choice.probe) {
        choice.state.release(i);
    }
}

fn breaker_gauge(shared: &Shared, route: &Route, state: &RouteState, i: usize, open: bool) {
    shared
        .metrics
        .route_breakers
        .with_label_values(&[route.name.as_str(), state.key(i)])
        .set(i64::from(open));
}

/// The endpoint key of the candidate a smart route's request went to.
pub fn endpoint(ctx: &RequestCtx) -> Option<String> {
    let target = ctx.target.as_ref()?;
    ctx.smart.as_ref()?;
    Some(target.route_upstream()?.endpoint_key())
}
