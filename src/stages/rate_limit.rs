//! `rate_limit`: GCRA buckets per project (`projects[].rate_limit`, else the stage default),
//! shared by every instance through Redis when `redis:` is configured. Every answer to a
//! counted request says where the project stands: `X-RateLimit-Limit` (the burst),
//! `X-RateLimit-Remaining` (requests that may still come at once) and `X-RateLimit-Reset`
//! (seconds until the bucket is full); a refusal is `429` with `Retry-After`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

use super::{Flow, Stage};
use crate::config::RateLimit;
use crate::proxy::RequestCtx;
use crate::proxy::respond::{ErrorCode, Reply};
use crate::ratelimit::{Decision, RateLimiter};

pub const LIMIT_HEADER: &str = "x-ratelimit-limit";
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";
pub const RESET_HEADER: &str = "x-ratelimit-reset";

pub struct RateLimitStage {
    default: RateLimit,
    limiter: Arc<dyn RateLimiter>,
}

impl RateLimitStage {
    pub fn new(default: RateLimit, limiter: Arc<dyn RateLimiter>) -> RateLimitStage {
        RateLimitStage { default, limiter }
    }
}

/// The `X-RateLimit-*` header values of `d` (reset in whole seconds, rounded up).
fn headers(d: &Decision) -> [(&'static str, String); 3] {
    [
        (LIMIT_HEADER, d.limit.to_string()),
        (REMAINING_HEADER, d.remaining.to_string()),
        (RESET_HEADER, d.reset.as_secs_f64().ceil().to_string()),
    ]
}

#[async_trait]
impl Stage for RateLimitStage {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    /// A `CONNECT` counts as one request (so do the requests inside an intercepted tunnel).
    fn sees_connect(&self) -> bool {
        true
    }

    async fn request_filter(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let limit = ctx
            .project
            .as_ref()
            .and_then(|p| p.rate_limit)
            .unwrap_or(self.default);
        let decision = self.limiter.acquire(ctx.project_label(), limit).await;
        if decision.allowed {
            ctx.rate_limit = Some(decision);
            return Flow::Continue;
        }
        let retry_after = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut reply = Reply::new(
            ErrorCode::RateLimitExceeded,
            "rate limit exceeded for this project",
        )
        .details(json!({
            "requests_per_second": limit.requests_per_second,
            "burst": limit.burst,
            "retry_after_seconds": retry_after,
        }))
        .header("retry-after", retry_after.to_string());
        for (name, value) in headers(&decision) {
            reply = reply.header(name, value);
        }
        Flow::Respond(reply)
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(decision) = &ctx.rate_limit {
            for (name, value) in headers(decision) {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}
