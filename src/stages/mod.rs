//! Pipeline stages: small plugins that the thin `ProxyHttp` impl walks in YAML order.
//!
//! ```text
//!  request_filter ── target resolved (absolute-form URL, YAML route, CONNECT authority, or
//!        │           the tunnel's host for requests inside an intercepted CONNECT)
//!        │           (a CONNECT only meets auth, rate_limit, ssrf_guard and policy, then
//!        │            becomes a tunnel: see proxy::listener)
//!        ├─ auth         identify the project (Proxy-Authorization Basic / X-Pag0-API-Key)
//!        ├─ rate_limit   per-project token bucket
//!        ├─ ssrf_guard   resolve the forward target, refuse non-public addresses
//!        ├─ policy       the project's host allow/block lists
//!        ├─ idempotency  replay the first paid response of a repeated Idempotency-Key
//!        ├─ cache        decide whether the cache takes part; key (scope, method, URL, body)
//!        ├─ payment      note an agent's own payment header (relay mode: check it)
//!        └─ (after them) a fresh cache hit for a plain GET/HEAD is sent here (no payment)
//!  cache phase ───────── pingora-cache: conditional/range hits, stale, Vary, misses, lock
//!  proxy_upstream_filter (misses only) before_upstream: payment pre-signs a remembered price
//!  upstream_peer ─────── async DNS (unless a stage resolved already), pooled connection, TLS+SNI
//!  upstream_request_filter  origin-form target, Host, pag0's own headers stripped
//!  logging ───────────── metrics from the RequestCtx
//! ```
//!
//! A stage implements [`Stage`] for the hooks it needs; adding a stage (payment, policy,
//! cache rules) adds a variant to `StageConfig` and a file here, without touching the others.
//!
//! Request-side hooks run in list order (except `policy`, which always runs right after `auth`:
//! host lists are checked before the SSRF guard looks a host up); response-side hooks (`upstream_response_filter`,
//! `response_filter`, `response_body_filter`) run in reverse, like nested middleware, so an
//! outer stage sees what the inner ones did to the response.

mod auth;
mod cache;
mod idempotency;
mod payment;
mod policy;
mod rate_limit;
mod spend;
mod ssrf_guard;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::{Config, StageConfig};
use crate::proxy::RequestCtx;
use crate::proxy::respond::Reply;

pub use auth::{API_KEY_HEADER, AuthStage, key_digest};
pub use cache::{
    CacheStage, CacheState, normalize_url, scope as cache_scope, variance as cache_variance,
};
pub use idempotency::{IdempotencyStage, IdempotencyState, KeyOutcome};
pub use payment::{PaymentStage, candidates as payment_candidates, check_relayed};
pub use policy::PolicyStage;
pub use rate_limit::RateLimitStage;
pub use spend::{BUDGET_REMAINING_HEADER, POLICY_HEADER, SpendGuard};
pub use ssrf_guard::SsrfGuardStage;

/// What a stage decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next stage (and eventually the upstream).
    Continue,
    /// Answer the client with this reply; later stages and the upstream are skipped.
    Respond(Reply),
    /// The stage wrote a complete response itself (e.g. a stored replay).
    Served,
}

/// One pipeline stage. Every hook has a no-op default.
#[async_trait]
pub trait Stage: Send + Sync {
    /// Name used in logs and the `stage` metric label (the YAML `kind`).
    fn name(&self) -> &'static str;

    /// Whether `request_filter` also runs for `CONNECT` requests (before a tunnel opens).
    /// Only stages that vet the agent or the target host opt in; the requests inside an
    /// intercepted tunnel run through every stage like any other request.
    fn sees_connect(&self) -> bool {
        false
    }

    /// Runs in `request_filter`, after the target is known and before any upstream work.
    async fn request_filter(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Runs in `proxy_upstream_filter`: only when the request goes upstream (not on a cache
    /// hit), once, before the first attempt. Work that only a trip upstream needs (signing
    /// with a remembered price) belongs here.
    async fn before_upstream(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Runs in `upstream_request_filter` on every attempt (a paid replay included), after the
    /// core set the target and Host.
    fn upstream_request_filter(
        &self,
        _req: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// Runs in `upstream_response_filter`, before anything reaches the client or the cache.
    /// An error marked `retry` replays the request (the x402 pay-and-replay recipe).
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// Runs in `response_filter`, just before the response header goes to the client.
    async fn response_filter(
        &self,
        _resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// Runs in `response_body_filter` for every chunk of the response body sent to the client.
    fn response_body_filter(
        &self,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) {
    }

    /// Runs in `logging`, once the request is over (also when it failed or the client left),
    /// in reverse stage order like the other response-side hooks: a stage sees what the
    /// stages after it concluded (`idempotency` sees the payment's outcome).
    async fn logging(&self, _ctx: &mut RequestCtx) {}
}

/// The enabled stages, in order.
pub struct Pipeline {
    stages: Vec<Arc<dyn Stage>>,
    /// The cache stage, also in `stages`: Pingora's cache hooks call it directly.
    cache: Option<Arc<CacheStage>>,
}

/// The process-lifetime services stages are built with (the live state hands them over; no
/// stage reaches for them anywhere else).
pub struct Services {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub resolver: Arc<crate::net::dns::Resolver>,
    pub rate_limiter: Arc<dyn crate::ratelimit::RateLimiter>,
    pub idempotency: Arc<crate::idempotency::Idempotency>,
    pub price_memory: Arc<dyn crate::x402::PriceMemory>,
    pub nonce_guard: Arc<dyn crate::x402::NonceGuard>,
    pub facilitator: Option<Arc<crate::x402::facilitator::Facilitator>>,
    pub policies: Arc<crate::policy::PolicyBook>,
    pub ledger: Arc<dyn crate::budget::Ledger>,
    pub settler: Arc<crate::settle::Settler>,
    pub intents: Arc<crate::intents::IntentLog>,
    pub cache: &'static crate::cache::CacheStore,
    pub cache_lock: &'static pingora::cache::lock::CacheKeyLockImpl,
    pub cache_stats: Arc<crate::cache::CacheStats>,
}

impl Pipeline {
    /// Instantiates the stages listed in the config with the long-lived `services`.
    pub fn build(config: &Config, services: &Services) -> Pipeline {
        let mut cache = None;
        let mut stages: Vec<Arc<dyn Stage>> = config
            .stages
            .iter()
            .map(|c| -> Arc<dyn Stage> {
                match c {
                    StageConfig::Auth => Arc::new(AuthStage),
                    StageConfig::Cache(rules) => {
                        let stage = Arc::new(CacheStage::new(
                            rules.clone(),
                            services.cache,
                            services.cache_lock,
                            config.cache.lock_timeout,
                            services.metrics.clone(),
                            services.cache_stats.clone(),
                        ));
                        cache = Some(stage.clone());
                        stage
                    }
                    StageConfig::Idempotency { window } => {
                        Arc::new(IdempotencyStage::new(services.idempotency.clone(), *window))
                    }
                    StageConfig::Policy => Arc::new(PolicyStage::new(
                        services.metrics.clone(),
                        services.policies.clone(),
                    )),
                    StageConfig::Payment => Arc::new(PaymentStage::new(
                        config.payments.clone(),
                        services.metrics.clone(),
                        services.price_memory.clone(),
                        services.nonce_guard.clone(),
                        services.facilitator.clone(),
                        Arc::new(SpendGuard {
                            policies: services.policies.clone(),
                            ledger: services.ledger.clone(),
                            settler: services.settler.clone(),
                            intents: services.intents.clone(),
                            idempotency: services.idempotency.clone(),
                            metrics: services.metrics.clone(),
                        }),
                        config.budgets.commit_without_receipt,
                    )),
                    StageConfig::SsrfGuard { allow } => Arc::new(SsrfGuardStage::new(
                        allow.clone(),
                        services.resolver.clone(),
                    )),
                    StageConfig::RateLimit { default } => {
                        Arc::new(RateLimitStage::new(*default, services.rate_limiter.clone()))
                    }
                }
            })
            .collect();
        // Host lists are checked before anything looks the host up (the SSRF guard) or
        // contacts it: `policy` runs right after `auth` (which it needs), wherever it is listed.
        if let Some(i) = stages.iter().position(|s| s.name() == "policy") {
            let policy = stages.remove(i);
            let at = stages
                .iter()
                .position(|s| s.name() == "auth")
                .map_or(0, |a| a + 1);
            stages.insert(at, policy);
        }
        Pipeline { stages, cache }
    }

    /// The cache stage, when enabled.
    pub fn cache(&self) -> Option<&CacheStage> {
        self.cache.as_deref()
    }

    /// Runs every stage's `request_filter` until one does not continue; returns that stage's
    /// name and its decision.
    pub async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<(&'static str, Flow)> {
        for stage in self.stages_for(is_connect(ctx)) {
            match stage.request_filter(session, ctx).await {
                Flow::Continue => {}
                flow => return Some((stage.name(), flow)),
            }
        }
        None
    }

    /// Runs every stage's `before_upstream` until one does not continue.
    pub async fn before_upstream(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<(&'static str, Flow)> {
        for stage in &self.stages {
            match stage.before_upstream(session, ctx).await {
                Flow::Continue => {}
                flow => return Some((stage.name(), flow)),
            }
        }
        None
    }

    pub fn upstream_request_filter(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.stages
            .iter()
            .try_for_each(|s| s.upstream_request_filter(req, ctx))
    }

    pub async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        for stage in self.stages.iter().rev() {
            stage.upstream_response_filter(session, resp, ctx).await?;
        }
        Ok(())
    }

    pub async fn response_filter(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        for stage in self.stages.iter().rev() {
            stage.response_filter(resp, ctx).await?;
        }
        Ok(())
    }

    pub fn response_body_filter(
        &self,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        for stage in self.stages.iter().rev() {
            stage.response_body_filter(body, end_of_stream, ctx);
        }
    }

    pub async fn logging(&self, ctx: &mut RequestCtx) {
        let connect = is_connect(ctx);
        for stage in self
            .stages
            .iter()
            .rev()
            .filter(|s| !connect || s.sees_connect())
        {
            stage.logging(ctx).await;
        }
    }

    /// The stages a request meets: all of them, or for a `CONNECT` only those that opt in
    /// ([`Stage::sees_connect`]); the hooks in between never run for a CONNECT.
    fn stages_for(&self, connect: bool) -> impl Iterator<Item = &Arc<dyn Stage>> {
        self.stages
            .iter()
            .filter(move |s| !connect || s.sees_connect())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}

fn is_connect(ctx: &RequestCtx) -> bool {
    ctx.target
        .as_ref()
        .is_some_and(|t| matches!(t.kind, crate::proxy::TargetKind::Connect))
}
