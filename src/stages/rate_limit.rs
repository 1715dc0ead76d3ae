//! `rate_limit`: a token bucket per project (`projects[].rate_limit`, else the stage default).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::proxy::Session;
use serde_json::json;

use super::{Flow, Stage};
use crate::config::RateLimit;
use crate::proxy::RequestCtx;
use crate::proxy::respond::{ErrorCode, Reply};
use crate::ratelimit::RateLimiter;

pub struct RateLimitStage {
    default: RateLimit,
    limiter: Arc<dyn RateLimiter>,
}

impl RateLimitStage {
    pub fn new(default: RateLimit, limiter: Arc<dyn RateLimiter>) -> RateLimitStage {
        RateLimitStage { default, limiter }
    }
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
        match self.limiter.acquire(ctx.project_label(), limit).await {
            Ok(()) => Flow::Continue,
            Err(wait) => {
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                Flow::Respond(
                    Reply::new(
                        ErrorCode::RateLimitExceeded,
                        "rate limit exceeded for this project",
                    )
                    .details(json!({
                        "requests_per_second": limit.requests_per_second,
                        "burst": limit.burst,
                        "retry_after_seconds": retry_after,
                    }))
                    .header("retry-after", retry_after.to_string()),
                )
            }
        }
    }
}
