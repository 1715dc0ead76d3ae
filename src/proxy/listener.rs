//! The proxy listener's application: Pingora's HTTP/1 proxy loop, plus what Pingora cannot do
//! itself: turning an accepted `CONNECT` into a tunnel. The `CONNECT` request runs through
//! the proxy like any other (auth, SSRF guard, ...); when it is accepted, `Pag0Proxy` leaves a
//! [`TunnelPlan`] in the connection's context and Pingora hands the connection back here.
//! Then the agent gets `200 Connection Established` and either
//!
//! * **intercept**: pag0 terminates the agent's TLS with a leaf for the CONNECT host and
//!   serves the requests inside with the same proxy (every stage: payment, cache, ...); when
//!   the agent speaks plain HTTP inside instead (Node's proxy agents do for `http://` URLs),
//!   the requests are served the same way, in plain HTTP to the CONNECT authority, or
//! * **blind**: pag0 relays bytes between the agent and the upstream until either side closes
//!   or the tunnel is idle for `connect.idle_timeout_seconds`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Peek, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use arc_swap::ArcSwap;

use crate::live::{Live, Shared};
use crate::proxy::Pag0Proxy;
use crate::proxy::ctx::{TunnelInfo, TunnelPlan};
use crate::proxy::header_guard::{self, HeaderGuard, HeaderLimits};
use crate::proxy::respond::{ErrorCode, Reply};

/// How long an idle downstream HTTP/1 connection waits for its next request (Pingora's own
/// default for the first request; applied before every request here).
const KEEPALIVE_SECONDS: u64 = 60;
/// What the agent reads once its `CONNECT` is accepted (no headers: RFC 9110 §9.3.6).
const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";
/// The first byte of a TLS connection (a handshake record carrying the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How often a blind tunnel checks whether it has been idle too long.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The app behind pag0's proxy listeners (HTTP/1; pag0 does not configure h2c).
pub struct ProxyApp {
    proxy: Arc<HttpProxy<Pag0Proxy>>,
    live: Arc<ArcSwap<Live>>,
    shared: Arc<Shared>,
    /// The bounds of every request header (`server.*` settings need a restart).
    header_limits: HeaderLimits,
}

impl ProxyApp {
    pub fn new(
        proxy: HttpProxy<Pag0Proxy>,
        live: Arc<ArcSwap<Live>>,
        shared: Arc<Shared>,
    ) -> ProxyApp {
        let analytics = shared.analytics.clone();
        let header_limits = HeaderLimits {
            max_bytes: live.load().config.server.max_header_bytes,
            pending: shared.pending_headers.clone(),
            too_large: shared.metrics.headers_too_large.clone(),
            answered: Arc::new(move |code| {
                analytics.record(crate::proxy::logging::unparsed(code));
            }),
        };
        ProxyApp {
            proxy: Arc::new(proxy),
            live,
            shared,
            header_limits,
        }
    }

    /// Serves HTTP/1 requests on `stream` until the connection ends or becomes a tunnel (the
    /// same loop as Pingora's own, with the tunnel hand-off between requests). `first` is the
    /// context the first request starts with (the tunnel, inside an intercepted one).
    ///
    /// Each request header must be complete `server.header_timeout_ms` after its first byte
    /// ([`HeaderGuard`]). Pipelined requests are answered in order (Pingora keeps the bytes
    /// read past a request for the next one).
    async fn serve_http1(
        &self,
        stream: Stream,
        first: Option<Arc<TunnelInfo>>,
        shutdown: &ShutdownWatch,
    ) {
        let limit = self
            .proxy
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let header_timeout = self.live.load().config.server.header_timeout;
        let mut stream: Stream = Box::new(HeaderGuard::new(
            stream,
            header_timeout,
            self.shared.metrics.header_timeouts.clone(),
            self.header_limits.clone(),
        ));
        // What the previous request on this connection leaves to the next one (none before the
        // first).
        let mut previous: Option<Option<HttpPersistentSettings>> = None;
        let mut first = first;
        loop {
            let pipelined = previous
                .as_ref()
                .is_some_and(|s| s.as_ref().is_some_and(has_pipelined_prefix));
            if !pipelined && !next_request(&mut stream, shutdown).await {
                return;
            }
            // The session (kilobytes) is built and handed over in a block, so that it takes no
            // room in this connection's future, which idle connections hold (Pingora's future
            // for the request is an allocation of its own).
            let request = {
                let mut session = ServerSession::new_http1(stream);
                match previous.take() {
                    None => {
                        session.set_keepalive_reuses_remaining(limit);
                        session.set_pipelining_enabled(true);
                        if let Some(tunnel) = first.take() {
                            session.set_connection_user_context(Some(Box::new(tunnel)));
                        }
                    }
                    Some(Some(settings)) => settings.apply_to_session(&mut session),
                    Some(None) => {}
                }
                // Pingora turns keep-alive off itself once it is shutting down.
                session.set_keepalive(Some(KEEPALIVE_SECONDS));
                if let Some(clock) = session.stream().and_then(HeaderGuard::of) {
                    clock.arm();
                }
                self.proxy.process_new_http(session, shutdown)
            };
            let result = request.await;
            let Some((next, settings)) = result.map(|r| r.consume()) else {
                return;
            };
            let mut settings = settings;
            if let Some(s) = settings.as_mut()
                && let Some(context) = s.take_user_context()
            {
                match context.downcast::<Arc<TunnelPlan>>() {
                    Ok(plan) => {
                        // Boxed in a statement of its own: a temporary lives until the end of
                        // its statement, and across an `.await` in it that would put the whole
                        // tunnel future into this one (held by every connection).
                        let tunnel = Box::pin(self.tunnel(next, &plan, shutdown));
                        return tunnel.await;
                    }
                    Err(other) => s.set_user_context(other),
                }
            }
            stream = next;
            previous = Some(settings);
        }
    }

    /// Answers `200` and runs the tunnel `plan` on the agent's connection.
    async fn tunnel(&self, stream: Stream, plan: &TunnelPlan, shutdown: &ShutdownWatch) {
        let metrics = &self.shared.metrics;
        // Pingora's listeners give L4 streams; an intercepted TLS stream never gets here
        // (CONNECT inside a tunnel is refused).
        let Ok(l4) = header_guard::unwrap(stream)
            .into_any()
            .downcast::<L4Stream>()
        else {
            log::error!("CONNECT on a stream that is not a TCP connection");
            return;
        };
        let mut l4 = *l4;
        if *shutdown.borrow() {
            // Accepted while pag0 began to shut down: no new tunnel.
            let reply = Reply::new(ErrorCode::ShuttingDown, "pag0 is shutting down; retry");
            let _ = l4.write_all(&reply.raw_http1()).await;
            let _ = l4.flush().await;
            return;
        }
        if l4.write_all(CONNECT_ESTABLISHED).await.is_err() || l4.flush().await.is_err() {
            return;
        }
        match plan {
            TunnelPlan::Blind(upstream) => {
                let upstream = upstream.lock().map(|mut u| u.take()).ok().flatten();
                let Some(upstream) = upstream else {
                    return;
                };
                metrics
                    .tunnels
                    .with_label_values(&["blind", "opened"])
                    .inc();
                let idle = self.live.load().config.connect.idle_timeout;
                relay(l4, upstream, idle).await;
            }
            TunnelPlan::Intercept {
                info,
                acceptor,
                sni,
            } => {
                let timeout = self.live.load().config.connect.handshake_timeout;
                // TLS (a ClientHello opens with a handshake record, 0x16), or plain HTTP: Node's
                // proxy agents tunnel `http://` URLs too, then speak HTTP/1.1 inside.
                let mut first = [0u8; 1];
                match tokio::time::timeout(timeout, l4.try_peek(&mut first)).await {
                    Ok(Ok(_)) => {}
                    _ => return, // closed, or silent for the whole handshake timeout
                }
                if first[0] != TLS_HANDSHAKE_RECORD {
                    metrics
                        .tunnels
                        .with_label_values(&["plain", "opened"])
                        .inc();
                    let plain = Arc::new(TunnelInfo {
                        tls: false,
                        ..(**info).clone()
                    });
                    let inside = Box::pin(self.serve_http1(Box::new(l4), Some(plain), shutdown));
                    return inside.await;
                }
                // Boxed: the handshake's state is freed once it is done, not held by the tunnel.
                let handshake = Box::pin(tokio::time::timeout(timeout, acceptor.tls_handshake(l4)));
                let tls = match handshake.await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let outcome = match sni.refused() {
                            Some(why) => {
                                log::debug!("tunnel to {}: SNI refused: {why:?}", info.host);
                                "sni_refused"
                            }
                            None => {
                                log::debug!("tunnel to {}: TLS handshake failed: {e}", info.host);
                                "handshake_failed"
                            }
                        };
                        metrics
                            .tunnels
                            .with_label_values(&["intercept", outcome])
                            .inc();
                        return;
                    }
                    Err(_) => {
                        metrics
                            .tunnels
                            .with_label_values(&["intercept", "handshake_failed"])
                            .inc();
                        return;
                    }
                };
                metrics
                    .tunnels
                    .with_label_values(&["intercept", "opened"])
                    .inc();
                let inside =
                    Box::pin(self.serve_http1(Box::new(tls), Some(info.clone()), shutdown));
                inside.await;
            }
        }
    }
}

/// Relays bytes both ways until either side closes or nothing moved for `idle`. A tunnel
/// open at shutdown runs on until Pingora stops the runtime (after the grace period).
async fn relay(agent: L4Stream, upstream: tokio::net::TcpStream, idle: Duration) {
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut agent = Activity::new(agent, last.clone(), start);
    let mut upstream = Activity::new(upstream, last.clone(), start);
    let copy = tokio::io::copy_bidirectional(&mut agent, &mut upstream);
    let watchdog = async {
        loop {
            tokio::time::sleep(IDLE_CHECK.min(idle)).await;
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    tokio::select! {
        copied = copy => log::debug!("blind tunnel closed: {copied:?}"),
        () = watchdog => log::debug!("blind tunnel idle for {idle:?}: closed"),
    }
}

/// A stream that records when bytes last moved (milliseconds since `start`).
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<S> Activity<S> {
    fn new(inner: S, last: Arc<AtomicU64>, start: Instant) -> Self {
        Activity { inner, last, start }
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits for the first byte of the connection's next request (or its end, the keep-alive
/// timeout, or a shutdown: then false). Idle connections wait here rather than inside Pingora's
/// per-request future, which is allocated for each request at its full size (tens of KiB)
/// and would be held for as long as the connection is idle.
async fn next_request(stream: &mut Stream, shutdown: &ShutdownWatch) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let mut byte = [0u8; 1];
    let mut shutdown = shutdown.clone();
    tokio::select! {
        biased;
        peeked = tokio::time::timeout(
            Duration::from_secs(KEEPALIVE_SECONDS),
            stream.try_peek(&mut byte),
        ) => matches!(peeked, Ok(Ok(_))),
        _ = shutting_down(&mut shutdown) => false,
    }
}

/// Resolves once the server is shutting down (a change of the watch to `true`, or its end).
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    while shutdown.changed().await.is_ok() {
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Whether Pingora kept bytes of the next request, read with the previous one (pipelining):
/// then that request is already here and nothing must be waited for. Pingora 0.9.1 has no
/// getter for them; its `Debug` shows the field.
fn has_pipelined_prefix(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    thread_local! {
        static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    TEXT.with_borrow_mut(|text| {
        text.clear();
        let _ = write!(text, "{settings:?}");
        !text.contains("pipelined_prefix: None")
    })
}

/// How long a refused connection gets to take its `503`.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers `503 TOO_MANY_CONNECTIONS` on a connection over the cap, without reading from it.
async fn refuse(mut stream: Stream) {
    let reply = Reply::new(
        ErrorCode::TooManyConnections,
        "pag0 holds as many connections as it may (server.max_connections); retry",
    )
    .header("retry-after", "1");
    let bytes = reply.raw_http1();
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    })
    .await;
}

#[async_trait]
impl ServerApp for ProxyApp {
    /// Runs for each new connection on the proxy listeners: the connection is served by a
    /// task of its own, and Pingora's task for it ends here. Pingora's per-connection task is
    /// sized for its TLS handshake (about 9 KiB, held for the connection's whole life); ours
    /// holds only what serving HTTP/1 needs, which is what an idle keep-alive agent costs.
    ///
    /// A connection over `server.max_connections` gets `503 TOO_MANY_CONNECTIONS` and is
    /// closed, so descriptors stay for the connections held and for the admin listener.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(open) = self.shared.proxy_connections.try_open() else {
            self.shared
                .metrics
                .connections_refused
                .with_label_values(&["proxy"])
                .inc();
            refuse(stream).await;
            return None;
        };
        let app = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            app.serve_http1(stream, None, &shutdown).await;
            drop(open);
        });
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
