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
mod rate_limit;
mod ssrf_guard;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;

use crate::config::StageConfig;
use crate::live::Shared;
use crate::proxy::RequestCtx;
use crate::proxy::respond::Reply;

pub use auth::{API_KEY_HEADER, AuthStage, key_digest};
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
}

/// The enabled stages, in order.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// Instantiates the stages listed in the config; long-lived services come from `shared`.
    pub fn build(configs: &[StageConfig], shared: &Arc<Shared>) -> Pipeline {
        let stages = configs
            .iter()
            .map(|c| -> Box<dyn Stage> {
                match c {
                    StageConfig::Auth => Box::new(AuthStage),
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

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}
