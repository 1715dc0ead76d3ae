//! `ssrf_guard`: resolves a forward-proxy target asynchronously and refuses it when no address
//! is public (loopback, private, link-local, CGNAT, multicast, cloud metadata, reserved),
//! unless the address is in the stage's `allow` list. Runs before any connection is made, and
//! pins the vetted address in the context so the connection goes exactly there (no DNS
//! rebinding between check and connect). `CONNECT` targets are checked the same way, before
//! the tunnel opens (a port outside `connect.ports` before any lookup). Reverse-proxy routes are operator-configured and not checked.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::proxy::Session;
use serde_json::json;

use super::{Flow, Stage};
use crate::net::dns::Resolver;
use crate::net::ip::classify;
use crate::proxy::respond::{ErrorCode, Reply};
use crate::proxy::tunnel::refused_port;
use crate::proxy::{RequestCtx, TargetKind};

pub struct SsrfGuardStage {
    allow: Vec<IpNet>,
    resolver: Arc<Resolver>,
}

impl SsrfGuardStage {
    pub fn new(allow: Vec<IpNet>, resolver: Arc<Resolver>) -> SsrfGuardStage {
        SsrfGuardStage { allow, resolver }
    }
}

#[async_trait]
impl Stage for SsrfGuardStage {
    fn name(&self) -> &'static str {
        "ssrf_guard"
    }

    fn sees_connect(&self) -> bool {
        true
    }

    async fn request_filter(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let Some(target) = ctx.target.as_mut() else {
            return Flow::Continue;
        };
        if !target.agent_chosen() {
            return Flow::Continue;
        }
        if matches!(target.kind, TargetKind::Connect)
            && let Some(refused) = refused_port(&ctx.live.config.connect, target)
        {
            return Flow::Respond(refused);
        }
        let ips = match self.resolver.resolve(&target.host).await {
            Ok(ips) => ips,
            Err(e) => {
                return Flow::Respond(
                    Reply::new(ErrorCode::DnsResolutionFailed, e.to_string())
                        .details(json!({"host": target.host})),
                );
            }
        };
        let mut refused = None;
        for ip in &ips {
            match classify(*ip) {
                Some(why) if !self.allow.iter().any(|net| net.contains(ip)) => {
                    refused = refused.or(Some((*ip, why)))
                }
                _ => {
                    target.addr = Some(SocketAddr::new(*ip, target.port));
                    return Flow::Continue;
                }
            }
        }
        let (ip, why) = refused.expect("resolve returns at least one address");
        Flow::Respond(
            Reply::new(
                ErrorCode::TargetForbidden,
                format!(
                    "target {} resolves to a {} address",
                    target.host,
                    why.as_str()
                ),
            )
            .details(
                json!({"host": target.host, "address": ip.to_string(), "reason": why.as_str()}),
            ),
        )
    }
}
