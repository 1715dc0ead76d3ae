//! How pag0 talks to an upstream: the peer for a target, the request it sends, and a one-off
//! side request (used to read an x402 v1 offer from a 402 body).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use once_cell::sync::OnceCell;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OrErr, Result};

use crate::config::UpstreamSettings;
use crate::proxy::{Target, TargetKind};

/// Prefix of pag0's own request headers; none of them is forwarded upstream.
pub const PAG0_HEADER_PREFIX: &str = "x-pag0-";

/// The peer for `target` at `addr` (always a `SocketAddr`: never let Pingora resolve a name).
pub fn peer(target: &Target, addr: SocketAddr, up: &UpstreamSettings) -> HttpPeer {
    let sni = if target.tls {
        target.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, target.tls, sni);
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.total_connection_timeout = Some(up.connect_timeout);
    peer.options.read_timeout = Some(up.read_timeout);
    peer.options.write_timeout = Some(up.write_timeout);
    peer.options.idle_timeout = Some(up.idle_timeout);
    let private_ca = match &target.kind {
        TargetKind::Route(route) => route.ca.clone().map(|ca| (ca, route.trust_group)),
        TargetKind::Forward if target.tls => up
            .trust_for(&target.host)
            .map(|t| (t.ca.clone(), t.trust_group)),
        _ => None,
    };
    if let Some((ca, trust_group)) = private_ca {
        peer.options.ca = Some(ca);
        // Pingora's pool key ignores the CA: without this, a connection verified against
        // a private CA could be reused by a request that trusts only system roots.
        peer.group_key = trust_group;
    }
    peer
}

/// Turns the agent's request into the upstream request: origin-form target, the target's own
/// Host, and none of pag0's headers (`X-Pag0-*`, `Proxy-Authorization`, `Proxy-Connection`).
pub fn prepare_request(req: &mut RequestHeader, target: &Target) -> Result<()> {
    let uri = http::Uri::try_from(target.path.as_str())
        .or_err(ErrorType::InternalError, "origin-form target")?;
    req.set_uri(uri);
    req.insert_header(http::header::HOST, target.host_header())?;
    let ours: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with(PAG0_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in ours {
        req.remove_header(&name);
    }
    req.remove_header(&http::header::PROXY_AUTHORIZATION);
    req.remove_header("proxy-connection");
    Ok(())
}

/// One connector for side requests, created on first use (inside a runtime).
static SIDE_CONNECTOR: OnceCell<Connector> = OnceCell::new();

/// Reads the rest of the request body into Pingora's retry buffer (so it is still sent
/// upstream, or replayed) and returns the whole body; fails if it does not fit the buffer
/// (64 KiB).
pub async fn buffered_body(session: &mut Session) -> Result<Bytes> {
    session.enable_retry_buffering();
    while session.read_request_body().await?.is_some() {}
    if session.retry_buffer_truncated() {
        return Error::e_explain(
            ErrorType::InternalError,
            "request body exceeds the replay buffer",
        );
    }
    Ok(session.get_retry_buffer().unwrap_or_default())
}

/// Sends the current request again, as prepared by `prepare` (unpaid), on its own upstream
/// connection, and returns the response status and at most `limit` bytes of body. The rest of
/// the client's body is read first (it lands in Pingora's retry buffer, so the later replay
/// still has it); the call fails if the body does not fit the buffer. The exchange with the
/// upstream (connect, request, whole response) must finish within `deadline`, however
/// slowly the upstream trickles its bytes.
pub async fn side_request(
    session: &mut Session,
    target: &Target,
    up: &UpstreamSettings,
    limit: usize,
    deadline: std::time::Duration,
    prepare: impl FnOnce(&mut RequestHeader) -> Result<()>,
) -> Result<(u16, Bytes)> {
    let body = buffered_body(session).await?;
    let mut req = session.req_header().clone();
    prepare_request(&mut req, target)?;
    prepare(&mut req)?;
    match tokio::time::timeout(deadline, exchange(target, up, req, body, limit)).await {
        Ok(result) => result,
        Err(_) => Error::e_explain(
            ErrorType::ReadTimedout,
            format!("the upstream did not answer within {deadline:?}"),
        ),
    }
}

/// One request on a side connection: the response status and at most `limit` body bytes.
async fn exchange(
    target: &Target,
    up: &UpstreamSettings,
    mut req: RequestHeader,
    body: Bytes,
    limit: usize,
) -> Result<(u16, Bytes)> {
    let addr = target
        .addr
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "target not resolved"))?;
    let peer = peer(target, addr, up);
    let had_body = !body.is_empty()
        || req.headers.contains_key(http::header::CONTENT_LENGTH)
        || req.headers.contains_key(http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::TRANSFER_ENCODING);
    if had_body {
        req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    }
    let connector = SIDE_CONNECTOR.get_or_init(|| Connector::new(None));
    let (mut http, _reused) = connector.get_http_session(&peer).await?;
    http.set_read_timeout(Some(up.read_timeout));
    http.set_write_timeout(Some(up.write_timeout));
    http.write_request_header(Box::new(req)).await?;
    if !body.is_empty() {
        http.write_request_body(body, true).await?;
    }
    http.finish_request_body().await?;
    http.read_response_header().await?;
    let status = http.response_header().map_or(0, |r| r.status.as_u16());
    let mut out = BytesMut::new();
    while let Some(chunk) = http.read_response_body().await? {
        if out.len() + chunk.len() > limit {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "side response body too large");
        }
        out.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(http, &peer, Some(up.idle_timeout))
        .await;
    Ok((status, out.freeze()))
}
