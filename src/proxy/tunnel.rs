//! `CONNECT` (HTTPS_PROXY) once the pipeline accepted it: decide between interception and a
//! blind tunnel, and prepare what the listener needs before the agent gets its `200`: the
//! leaf certificate (interception) or the upstream connection (blind), so that a failure is
//! still an ordinary JSON error.
//!
//! ```text
//!  CONNECT host:port ─▶ auth, rate_limit, ssrf_guard, policy (the stages that vet targets)
//!     ─▶ plan(): tunnel_only host / connect.mode tunnel ─▶ connect upstream ─▶ Blind
//!                otherwise                              ─▶ mint leaf     ─▶ Intercept
//!     ─▶ Pingora hands the connection back ─▶ listener: 200, then TLS (intercept) or relay
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;
use serde_json::json;

use crate::config::ConnectSettings;
use crate::live::Shared;
use crate::proxy::Target;
use crate::proxy::ctx::{RequestCtx, TunnelInfo, TunnelPlan};
use crate::proxy::respond::{ErrorCode, Reply};

/// The refusal of a `CONNECT` to a port outside `connect.ports`. The SSRF guard asks first,
/// so that such a `CONNECT` is refused before its host is looked up.
pub fn refused_port(connect: &ConnectSettings, target: &Target) -> Option<Reply> {
    if connect.allows_port(target.port) {
        return None;
    }
    Some(
        Reply::new(
            ErrorCode::TargetForbidden,
            format!(
                "CONNECT to port {} is not allowed (connect.ports)",
                target.port
            ),
        )
        .details(json!({"host": target.host, "port": target.port, "reason": "port"})),
    )
}

/// Builds the plan for the accepted `CONNECT` in `ctx` (its target is the CONNECT authority).
pub async fn plan(
    req: &RequestHeader,
    ctx: &mut RequestCtx,
    shared: &Shared,
) -> Result<TunnelPlan, Reply> {
    let live = ctx.live.clone();
    let target = ctx
        .target
        .as_mut()
        .ok_or_else(|| Reply::new(ErrorCode::InternalError, "no target"))?;
    let connect = &live.config.connect;
    if let Some(refused) = refused_port(connect, target) {
        return Err(refused);
    }
    if connect.intercepts(&target.host) {
        let interceptor = shared.interceptor.as_ref().ok_or_else(|| {
            Reply::new(
                ErrorCode::ConnectNotAllowed,
                "interception is not available (the local CA was not loaded; restart pag0)",
            )
        })?;
        let (host_tls, minted) = interceptor.leaf(&target.host).map_err(|e| {
            log::error!("cannot mint a certificate for {}: {e}", target.host);
            Reply::new(
                ErrorCode::InternalError,
                "cannot mint a certificate for this host",
            )
        })?;
        if minted {
            shared.metrics.leaves_minted.inc();
        }
        let (acceptor, sni) = interceptor.acceptor(&target.host, &host_tls).map_err(|e| {
            log::error!("cannot set up TLS for {}: {e}", target.host);
            Reply::new(ErrorCode::InternalError, "cannot set up TLS for this host")
        })?;
        let info = TunnelInfo {
            host: target.host.clone(),
            port: target.port,
            tls: true,
            credentials: [
                http::header::PROXY_AUTHORIZATION,
                http::HeaderName::from_static(crate::stages::API_KEY_HEADER),
            ]
            .into_iter()
            .find_map(|name| Some((name.clone(), req.headers.get(&name)?.clone()))),
        };
        return Ok(TunnelPlan::Intercept {
            info: Arc::new(info),
            acceptor,
            sni,
        });
    }
    let failed = |code: ErrorCode, message: &str| {
        shared
            .metrics
            .upstream_errors
            .with_label_values(&["connect", code.as_str()])
            .inc();
        Reply::new(code, message.to_string()).details(json!({"host": target.host}))
    };
    let addr = match target.addr {
        Some(addr) => addr,
        None => match shared.resolver.resolve(&target.host).await {
            Ok(ips) => SocketAddr::new(ips[0], target.port),
            Err(e) => return Err(failed(ErrorCode::DnsResolutionFailed, &e.to_string())),
        },
    };
    let timeout = live.config.upstream.connect_timeout;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(TunnelPlan::Blind(std::sync::Mutex::new(Some(stream))))
        }
        Ok(Err(e)) => {
            log::debug!("tunnel to {addr}: {e}");
            Err(failed(
                ErrorCode::UpstreamConnectFailed,
                "cannot connect to the upstream",
            ))
        }
        Err(_) => Err(failed(
            ErrorCode::UpstreamTimeout,
            "the upstream did not accept the connection in time",
        )),
    }
}
