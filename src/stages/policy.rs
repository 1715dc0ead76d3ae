//! `policy`: enforces each project's host allow/block lists on every request, paid or free
//! (the payment stage checks them again, with the rest of the policy, before paying).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::proxy::Session;

use super::spend::refuse;
use super::{Flow, Stage};
use crate::metrics::Metrics;
use crate::policy::PolicyBook;
use crate::proxy::RequestCtx;

pub struct PolicyStage {
    metrics: Arc<Metrics>,
    policies: Arc<PolicyBook>,
}

impl PolicyStage {
    pub fn new(metrics: Arc<Metrics>, policies: Arc<PolicyBook>) -> PolicyStage {
        PolicyStage { metrics, policies }
    }
}

#[async_trait]
impl Stage for PolicyStage {
    fn name(&self) -> &'static str {
        "policy"
    }

    /// A blocked host is refused before its tunnel opens.
    fn sees_connect(&self) -> bool {
        true
    }

    /// Runs after auth (the project is known) and before any upstream contact.
    async fn request_filter(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let (Some(project), Some(target)) = (ctx.project.as_ref(), ctx.target.as_ref()) else {
            return Flow::Continue;
        };
        let Some(policy) = self.policies.effective(project) else {
            return Flow::Continue;
        };
        match policy.check_host(&target.host) {
            Ok(()) => Flow::Continue,
            Err(v) => match refuse(&self.metrics, project, &policy, &v, None) {
                Some(reply) => Flow::Respond(reply),
                None => Flow::Continue,
            },
        }
    }
}
