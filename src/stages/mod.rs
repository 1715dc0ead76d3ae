//! Pipeline stages: small plugins that the thin `ProxyHttp` impl walks in YAML order.
//!
//! ```text
//!  request_filter ── target resolved (absolute-form URL or YAML route)
//!        │
//!        ├─ auth         identify the project (Proxy-Authorization Basic / X-Pag0-API-Key)
//!        ├─ rate_limit   per-project token bucket
//!        └─ ssrf_guard   resolve the forward target, refuse non-public addresses
//!  upstream_peer ─────── async DNS (unless a stage resolved already), pooled connection, TLS+SNI
//!  upstream_request_filter  origin-form target, Host, pag0's own headers stripped
//!  logging ───────────── metrics from the RequestCtx
//! ```
//!
//! A stage implements [`Stage`] for the hooks it needs; adding a stage (payment, policy,
//! cache rules) adds a variant to `StageConfig` and a file here, without touching the others.

mod auth;
mod payment;
mod rate_limit;
mod ssrf_guard;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::{Config, StageConfig};
use crate::live::Shared;
use crate::proxy::RequestCtx;
use crate::proxy::respond::Reply;

pub use auth::{API_KEY_HEADER, AuthStage, key_digest};
pub use payment::PaymentStage;
pub use rate_limit::RateLimitStage;
pub use ssrf_guard::SsrfGuardStage;

/// What a stage decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next stage (and eventually the upstream).
    Continue,
    /// Answer the client with this reply; later stages and the upstream are skipped.
    Respond(Reply),
}

/// One pipeline stage. Every hook has a no-op default.
#[async_trait]
pub trait Stage: Send + Sync {
    /// Name used in logs and the `stage` metric label (the YAML `kind`).
    fn name(&self) -> &'static str;

    /// Runs in `request_filter`, after the target is known and before any upstream work.
    async fn request_filter(&self, _req: &RequestHeader, _ctx: &mut RequestCtx) -> Flow {
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
}

/// The enabled stages, in order.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// Instantiates the stages listed in the config; long-lived services come from `shared`.
    pub fn build(config: &Config, shared: &Arc<Shared>) -> Pipeline {
        let stages = config
            .stages
            .iter()
            .map(|c| -> Box<dyn Stage> {
                match c {
                    StageConfig::Auth => Box::new(AuthStage),
                    StageConfig::Payment => Box::new(PaymentStage::new(
                        config.payments.clone(),
                        shared.metrics.clone(),
                        shared.price_memory.clone(),
                    )),
                    StageConfig::SsrfGuard { allow } => {
                        Box::new(SsrfGuardStage::new(allow.clone(), shared.resolver.clone()))
                    }
                    StageConfig::RateLimit { default } => {
                        Box::new(RateLimitStage::new(*default, shared.rate_limiter.clone()))
                    }
                }
            })
            .collect();
        Pipeline { stages }
    }

    /// Runs every stage's `request_filter` until one answers. Returns the answering stage's
    /// name with its reply.
    pub async fn request_filter(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<(&'static str, Reply)> {
        for stage in &self.stages {
            if let Flow::Respond(reply) = stage.request_filter(req, ctx).await {
                return Some((stage.name(), reply));
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
        for stage in &self.stages {
            stage.upstream_response_filter(session, resp, ctx).await?;
        }
        Ok(())
    }

    pub async fn response_filter(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        for stage in &self.stages {
            stage.response_filter(resp, ctx).await?;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}
