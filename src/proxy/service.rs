//! `Pag0Proxy`: the `ProxyHttp` impl. It stays thin: resolve the target, walk the stages,
//! build the peer, rewrite the upstream request, map failures to JSON, record metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::live::{Live, Shared};
use crate::metrics::status_class;
use crate::proxy::ctx::{TargetKind, TunnelInfo};
use crate::proxy::header_guard::HeaderGuard;
use crate::proxy::respond::{ErrorCode, Reply};
use crate::proxy::{RequestCtx, smart, target, tunnel, upstream};
use crate::stages::Flow;

/// Keep-alive set on an accepted `CONNECT` so that Pingora returns the connection (the value
/// itself is not used: the tunnel is not HTTP any more).
const CONNECT_KEEPALIVE_SECONDS: u64 = 60;

pub struct Pag0Proxy {
    live: Arc<ArcSwap<Live>>,
    shared: Arc<Shared>,
}

impl Pag0Proxy {
    pub fn new(live: Arc<ArcSwap<Live>>, shared: Arc<Shared>) -> Pag0Proxy {
        Pag0Proxy { live, shared }
    }

    /// Writes the request's analytics record ahead, once, just before its answer (`status`)
    /// goes to the agent: a crash after the agent saw the answer cannot lose the record.
    /// `logging` completes it (times, bytes) and queues it.
    fn write_ahead(&self, session: &Session, ctx: &mut RequestCtx, status: u16) {
        if ctx.analytics_ahead.is_none() && self.shared.analytics.enabled() {
            let record = crate::proxy::logging::record(session, ctx, status);
            ctx.analytics_ahead = self.shared.analytics.write_ahead(record);
        }
    }

    /// Sends `reply` and records which stage (or `proxy`) produced it. A refused `CONNECT`
    /// says why in its status line and in the log (at info): clients print neither the body
    /// nor, mostly, the headers of a failed CONNECT, but they print its status line.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        source: &str,
        mut reply: Reply,
    ) -> Result<bool> {
        self.shared
            .metrics
            .stage_rejections
            .with_label_values(&[source, reply.code.as_str()])
            .inc();
        ctx.error = Some(reply.code);
        if session.req_header().method == http::Method::CONNECT {
            // A 407 is the usual first step of proxy authentication, not worth a line.
            if reply.code != ErrorCode::ProxyAuthRequired {
                let target = ctx.target.as_ref().map_or_else(
                    || "(invalid target)".to_string(),
                    |t| format!("{}:{}", t.host, t.port),
                );
                log::info!(
                    "CONNECT {target} refused ({source}): {} {}",
                    reply.code.as_str(),
                    reply.message
                );
            }
            reply = reply.explain_in_status();
        }
        self.write_ahead(session, ctx, reply.code.status());
        reply.send(session).await?;
        Ok(true)
    }

    /// Sends a stored response the cache stage found in `request_filter`, through the stages'
    /// response hooks like any hit pingora-cache serves (`X-Pag0-Cache`, saved price,
    /// idempotency capture); `logging` follows as for every request.
    async fn serve_stored(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut header: Box<ResponseHeader>,
        body: bytes::Bytes,
    ) -> Result<()> {
        let live = ctx.live.clone();
        live.pipeline.response_filter(&mut header, ctx).await?;
        self.write_ahead(session, ctx, header.status.as_u16());
        let header_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(header, header_only).await?;
        if !header_only {
            let mut body = Some(body);
            live.pipeline.response_body_filter(&mut body, true, ctx);
            session.write_response_body(body, true).await?;
        }
        Ok(())
    }
}

/// Maps a Pingora error to the JSON code pag0 answers with (`None`: the client is gone).
fn classify_error(e: &Error) -> Option<ErrorCode> {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Some(ErrorCode::UpstreamTimeout)
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | SocketError => Some(ErrorCode::UpstreamConnectFailed),
        TLSHandshakeFailure | InvalidCert => Some(ErrorCode::UpstreamTlsFailed),
        _ => match e.esource() {
            ErrorSource::Upstream => Some(ErrorCode::UpstreamError),
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => None,
                _ => Some(ErrorCode::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(ErrorCode::InternalError),
        },
    }
}

/// Why TLS with the upstream failed, in words an operator can act on. Pingora's error text
/// nests the certificate verifier's verdict (`invalid peer certificate: UnknownIssuer`).
fn tls_failure(e: &Error) -> String {
    let text = e.to_string();
    if text.contains("CaUsedAsEndEntity") {
        return "TLS with the upstream failed: it presents a CA certificate (CA:TRUE, e.g. a plain `openssl req -x509`) as its own server certificate, which certificate verification refuses; serve a certificate issued by that CA with CA:FALSE (e.g. `-addext basicConstraints=critical,CA:FALSE`, or mkcert) and keep the CA in upstream.trust; nothing was sent".to_string();
    }
    let verdict = text
        .find("invalid peer certificate")
        .map(|at| text[at..].split(',').next().unwrap_or_default().to_string());
    match verdict {
        Some(v) => format!(
            "TLS with the upstream failed: {v} (trust a private CA for this host with upstream.trust); nothing was sent"
        ),
        None => format!(
            "TLS with the upstream failed (the handshake broke: {}); nothing was sent",
            e.etype().as_str()
        ),
    }
}

#[async_trait]
impl ProxyHttp for Pag0Proxy {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a (disabled) compression module that still
    /// runs on every request. pag0 does not compress responses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Takes the current config snapshot; the request keeps it until it ends.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.live.load_full())
    }

    /// Runs as soon as the request header is parsed: stops the connection's header clock.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(clock) = session.stream().and_then(HeaderGuard::of) {
            clock.header_read();
        }
        Ok(())
    }

    /// Resolves the target, then runs the enabled stages in order. Returning `Ok(true)` means
    /// a reply was already sent (auth, rate limit, SSRF refusal, bad target), or an accepted
    /// `CONNECT` is handed to the listener as a tunnel.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Err(reply) = crate::proxy::framing::check(session.req_header()) {
            // Nothing more is read from a connection whose framing is in doubt.
            session.set_keepalive(None);
            return self.answer(session, ctx, "proxy", reply).await;
        }
        let resolved = target::resolve(
            session.req_header(),
            &ctx.live.config.routes,
            ctx.tunnel.as_deref(),
            &ctx.live.config.connect,
        );
        match resolved {
            Ok(t) => ctx.target = Some(t),
            Err(reply) => return self.answer(session, ctx, "proxy", reply).await,
        }
        smart::choose(&self.shared, ctx);
        if let Some(tunnel) = &ctx.tunnel {
            // Inside an intercepted tunnel the agent is who it said it was on its CONNECT.
            let req = session.req_header_mut();
            req.remove_header(&http::header::PROXY_AUTHORIZATION);
            req.remove_header(crate::stages::API_KEY_HEADER);
            if let Some((name, value)) = tunnel.credentials.clone() {
                req.insert_header(name, value)?;
            }
        }
        let live = ctx.live.clone();
        match live.pipeline.request_filter(session, ctx).await {
            None | Some((_, Flow::Continue)) => {}
            Some((stage, Flow::Respond(reply))) => {
                return self.answer(session, ctx, stage, reply).await;
            }
            Some((_, Flow::Served)) => return Ok(true),
        }
        if !matches!(
            ctx.target.as_ref().map(|t| &t.kind),
            Some(TargetKind::Connect)
        ) {
            if let Some(cache) = live.pipeline.cache() {
                let hit = match cache.fresh_hit(session.req_header(), ctx).await {
                    Some(hit) => Some(hit),
                    None => cache.fleet_fill(session.req_header(), ctx).await,
                };
                if let Some((header, body)) = hit {
                    self.serve_stored(session, ctx, header, body).await?;
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        match tunnel::plan(session.req_header(), ctx, &self.shared).await {
            Ok(plan) => {
                // The listener takes the connection over once Pingora is done with this
                // request; the agent gets its 200 there. Pingora hands the connection back
                // only if it is reusable: make it so whatever the client said (HTTP/1.0,
                // `Connection: close`) and however many requests the connection had.
                session
                    .req_header_mut()
                    .remove_header(&http::header::CONNECTION);
                session.set_keepalive(Some(CONNECT_KEEPALIVE_SECONDS));
                session
                    .downstream_session
                    .set_keepalive_reuses_remaining(None);
                // Bytes the agent sent before our 200 would stay in Pingora's buffer, out of
                // the tunnel's reach: with pipelining off for this request, Pingora closes
                // such a connection instead of handing it over without them.
                session.downstream_session.set_pipelining_enabled(false);
                ctx.tunnel_plan = Some(Arc::new(plan));
                Ok(true)
            }
            Err(reply) => {
                session.set_keepalive(None);
                self.answer(session, ctx, "connect", reply).await
            }
        }
    }

    /// Hands an accepted `CONNECT`'s plan to the listener, and keeps the tunnel's identity on
    /// the keep-alive requests inside an intercepted tunnel.
    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        if let Some(plan) = &ctx.tunnel_plan {
            return Some(Box::new(plan.clone()));
        }
        ctx.tunnel
            .clone()
            .map(|t| Box::new(t) as Box<dyn std::any::Any + Send + Sync>)
    }

    /// The first request inside an intercepted tunnel gets the tunnel from the listener, the
    /// next ones from the request before them.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(tunnel) = prev.downcast::<Arc<TunnelInfo>>() {
            ctx.tunnel = Some(*tunnel);
        }
    }

    /// Runs after `request_filter`: turns Pingora's cache on when the cache stage accepted
    /// the request.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let live = ctx.live.clone();
        if let Some(cache) = live.pipeline.cache() {
            cache.enable(session, ctx);
        }
        Ok(())
    }

    /// Runs only when the cache is on for this request (see `stages::cache` for the key).
    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let live = ctx.live.clone();
        match live.pipeline.cache() {
            Some(cache) => cache.key(ctx),
            None => Error::e_explain(ErrorType::InternalError, "cache stage not configured"),
        }
    }

    /// Runs when a lookup found an entry, before it is served.
    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let live = ctx.live.clone();
        Ok(live
            .pipeline
            .cache()
            .and_then(|cache| cache.hit_filter(hit_handler, ctx)))
    }

    /// Runs only when the request goes upstream (cache off, miss or refresh): the stages'
    /// `before_upstream` (payment pre-signing).
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let live = ctx.live.clone();
        match live.pipeline.before_upstream(session, ctx).await {
            None | Some((_, Flow::Continue)) => Ok(true),
            Some((stage, Flow::Respond(reply))) => {
                // The request body may be unread: close the connection after this answer.
                session.set_keepalive(None);
                self.answer(session, ctx, stage, reply).await?;
                Ok(false)
            }
            Some((_, Flow::Served)) => Ok(false),
        }
    }

    /// Decides whether the upstream's answer is stored, and for how long.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        if ctx.smart.as_ref().is_some_and(|c| c.failovers > 0) {
            // Its key is the first candidate's: the answer of another one is not stored there.
            return Ok(RespCacheable::Uncacheable(
                pingora::cache::NoCacheReason::Custom("failover"),
            ));
        }
        let live = ctx.live.clone();
        Ok(match live.pipeline.cache() {
            Some(cache) => cache.cacheable(
                session.req_header(),
                resp,
                session.cache.maybe_cache_meta(),
                ctx,
            ),
            None => RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled),
        })
    }

    /// Entries of responses with `Vary` are told apart by the named request headers.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::stages::cache_variance(meta, req)
    }

    /// Builds the peer from a `SocketAddr`: the one a stage vetted, else an async DNS answer.
    /// (Never `HttpPeer::new` with a name: it resolves synchronously and panics on failure.)
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let live = ctx.live.clone();
        let target = ctx
            .target
            .as_mut()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        let addr = match target.addr {
            Some(addr) => addr,
            None => match self.shared.resolver.resolve(&target.host).await {
                Ok(ips) => {
                    let addr = SocketAddr::new(ips[0], target.port);
                    target.addr = Some(addr);
                    addr
                }
                Err(e) => {
                    ctx.error = Some(ErrorCode::DnsResolutionFailed);
                    return Err(Error::explain(ErrorType::HTTPStatus(502), e.to_string()));
                }
            },
        };
        let peer = upstream::peer(target, addr, &live.config.upstream);
        Ok(Box::new(peer))
    }

    /// Sends an origin-form target upstream with the target's own Host, and strips pag0's own
    /// headers (`X-Pag0-*`; Pingora already removed hop-by-hop `Proxy-Authorization`).
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let target = ctx
            .target
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no target"))?;
        upstream::prepare_request(req, target)?;
        ctx.upstream.attempts = ctx.upstream.attempts.saturating_add(1);
        ctx.upstream.sent_at = Some(std::time::Instant::now());
        let live = ctx.live.clone();
        live.pipeline.upstream_request_filter(req, ctx)
    }

    /// Runs on the upstream response header before the client or cache sees it; the payment
    /// stage turns a 402 into a paid replay here.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.payment.body_replayable = !session.retry_buffer_truncated();
        if let Some(sent) = ctx.upstream.sent_at.take() {
            ctx.upstream.latency_us += sent.elapsed().as_micros() as u64;
        }
        ctx.upstream.status = Some(resp.status.as_u16());
        if ctx.smart.is_some() && !resp.status.is_informational() {
            if resp.status.is_server_error() {
                if smart::failed(&self.shared, ctx, smart::may_resend(session, ctx)) {
                    if let Some(choice) = ctx.smart.as_mut() {
                        choice.failover_requested = true;
                    }
                    let mut e = Error::explain(
                        ErrorType::HTTPStatus(resp.status.as_u16()),
                        "smart route: the candidate failed; trying the next one",
                    );
                    e.set_retry(true);
                    return Err(e);
                }
            } else {
                smart::answered(&self.shared, ctx);
            }
        }
        let live = ctx.live.clone();
        live.pipeline
            .upstream_response_filter(session, resp, ctx)
            .await
    }

    /// Runs just before the response header goes to the client, for upstream answers and
    /// cache hits alike (X-Pag0-* metadata).
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            // 100 Continue / 103 Early Hints: the final answer follows; nothing to decide yet.
            return Ok(());
        }
        let live = ctx.live.clone();
        if let Some(cache) = live.pipeline.cache() {
            let phase = session.cache.phase();
            cache.observe(phase, ctx);
            if phase == pingora::cache::CachePhase::Stale {
                // Served stale because the upstream failed: Pingora closes the downstream
                // connection afterwards, so say so (clients must not reuse it).
                session.set_keepalive(None);
            }
        }
        live.pipeline.response_filter(resp, ctx).await?;
        if let Some(endpoint) = smart::endpoint(ctx) {
            resp.insert_header(smart::ENDPOINT_HEADER, endpoint)?;
        }
        self.write_ahead(session, ctx, resp.status.as_u16());
        Ok(())
    }

    /// Decides whether a failed attempt is retried. A paid replay requested by the payment
    /// stage, or a smart route's failover to its next candidate (nothing paid yet), is retried
    /// (POST too) as long as the whole body is still in the retry buffer; everything else keeps
    /// Pingora's policy (idempotent methods only).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let truncated = session.retry_buffer_truncated();
        if ctx.error.is_some() {
            // pag0 decided this request's fate (e.g. facilitator down): no retry.
            e.set_retry(false);
        } else if std::mem::take(&mut ctx.payment.replay_requested)
            || ctx
                .smart
                .as_mut()
                .is_some_and(|c| std::mem::take(&mut c.failover_requested))
        {
            // A paid replay, or a smart route's failover after a 5xx.
            e.set_retry(!truncated);
        } else if e.esource() == &ErrorSource::Upstream
            && session.response_written().is_none()
            && smart::failed(&self.shared, ctx, smart::may_resend(session, ctx))
        {
            // A smart route's candidate timed out or broke the connection before anything
            // went to the agent: the next one.
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent() || truncated {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// A connection to the upstream could not be made: a smart route tries its next candidate.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if smart::failed(&self.shared, ctx, smart::may_resend(session, ctx)) {
            e.set_retry(true);
        }
        e
    }

    /// Runs when proxying failed: answers with a JSON error (502/504/...) instead of
    /// Pingora's empty error page.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(reply) = ctx.reply.take() {
            // A stage prepared the answer (e.g. a declined 402 with a JSON reason).
            session.set_keepalive(None);
            self.write_ahead(session, ctx, reply.code.status());
            if let Err(write_err) = reply.send(session).await {
                log::debug!("cannot send the reply: {write_err}");
            }
            return FailToProxy {
                error_code: reply.code.status(),
                can_reuse_downstream: false,
            };
        }
        let code = ctx.error.or_else(|| classify_error(e));
        let Some(code) = code else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.error = Some(code);
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&[ctx.route_label(), code.as_str()])
            .inc();
        log::debug!("proxy error ({}): {e}", code.as_str());
        if session.response_written().is_none() {
            // The connection is closed after this reply (the request body may be unread), so
            // say so: `Connection: close` keeps clients from reusing it and racing the close.
            session.set_keepalive(None);
            let message = match code {
                ErrorCode::UpstreamTimeout => "the upstream did not answer in time".to_string(),
                ErrorCode::UpstreamConnectFailed => "cannot connect to the upstream".to_string(),
                ErrorCode::UpstreamTlsFailed => {
                    let why = tls_failure(e);
                    log::info!(
                        "TLS with upstream {} failed: {why}",
                        ctx.target.as_ref().map_or("?", |t| t.host.as_str())
                    );
                    why
                }
                ErrorCode::DnsResolutionFailed => "cannot resolve the upstream host".to_string(),
                ErrorCode::FacilitatorUnavailable => {
                    "the x402 facilitator did not answer; nothing was paid".to_string()
                }
                _ => format!("proxy error: {}", e.etype().as_str()),
            };
            let host = ctx
                .target
                .as_ref()
                .map(|t| t.host.clone())
                .unwrap_or_default();
            let reply = Reply::new(code, message).details(serde_json::json!({"host": host}));
            self.write_ahead(session, ctx, reply.code.status());
            if let Err(write_err) = reply.send(session).await {
                log::debug!("cannot send the error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }

    /// Records the request in metrics and analytics once it is done (no per-request log line
    /// at info).
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = match session.response_written() {
            Some(r) => r.status.as_u16(),
            // An accepted CONNECT: the listener answers 200 when it takes the connection.
            None if ctx.tunnel_plan.is_some() => 200,
            None => 0,
        };
        let labels = [ctx.project_label(), ctx.route_label(), status_class(status)];
        let m = &self.shared.metrics;
        m.requests.with_label_values(&labels).inc();
        m.request_duration
            .with_label_values(&labels)
            .observe(ctx.started.elapsed().as_secs_f64());
        smart::finish(ctx);
        let live = ctx.live.clone();
        live.pipeline.logging(ctx).await;
        use crate::proxy::logging;
        if let Some((endpoint, info)) = logging::described_endpoint(ctx) {
            self.shared.curation.describe(&endpoint, info);
        }
        let analytics = &self.shared.analytics;
        if analytics.enabled() {
            match ctx.analytics_ahead.take() {
                Some(ahead) => {
                    analytics.finish(ahead, |r| logging::refresh(r, session, ctx, status))
                }
                None => analytics.record(logging::record(session, ctx, status)),
            }
        }
    }

    /// Sees each response body chunk on its way to the client (idempotency captures paid
    /// responses here).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let live = ctx.live.clone();
        live.pipeline.response_body_filter(body, end_of_stream, ctx);
        Ok(None)
    }

    /// Keeps Pingora from logging routine client/upstream failures at error level; they are
    /// counted in metrics and answered with a JSON error.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        !log::log_enabled!(log::Level::Debug)
    }
}
