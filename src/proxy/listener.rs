//! The proxy listener's application: Pingora's HTTP/1 proxy loop, plus what Pingora cannot do
//! itself: turning an accepted `CONNECT` into a tunnel. The `CONNECT` request runs through
//! the proxy like any other (auth, SSRF guard, ...); when it is accepted, `Pag0Proxy` leaves a
//! [`TunnelPlan`] in the connection's context and Pingora hands the connection back here.
//! Then the agent gets `200 Connection Established` and either
//!
//! * **intercept**: pag0 terminates the agent's TLS with a leaf for the CONNECT host and
//!   serves the requests inside with the same proxy (every stage: payment, cache, ...), or
//! * **blind**: pag0 relays bytes between the agent and the upstream until either side closes.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use arc_swap::ArcSwap;

use crate::live::{Live, Shared};
use crate::proxy::Pag0Proxy;
use crate::proxy::ctx::{TunnelInfo, TunnelPlan};

/// Keep-alive timeout of an idle downstream HTTP/1 connection (Pingora's own default).
const KEEPALIVE_SECONDS: u64 = 60;
/// What the agent reads once its `CONNECT` is accepted (no headers: RFC 9110 §9.3.6).
const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// The app behind pag0's proxy listeners.
pub struct ProxyApp {
    proxy: Arc<HttpProxy<Pag0Proxy>>,
    live: Arc<ArcSwap<Live>>,
    shared: Arc<Shared>,
}

impl ProxyApp {
    pub fn new(
        proxy: HttpProxy<Pag0Proxy>,
        live: Arc<ArcSwap<Live>>,
        shared: Arc<Shared>,
    ) -> ProxyApp {
        ProxyApp {
            proxy: Arc::new(proxy),
            live,
            shared,
        }
    }

    /// Serves HTTP/1 requests on `stream` until the connection ends or becomes a tunnel (the
    /// same loop as Pingora's own, with the tunnel hand-off between requests). `first` is the
    /// context the first request starts with (the tunnel, inside an intercepted one).
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
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_SECONDS)
        });
        session.set_keepalive_reuses_remaining(limit);
        if let Some(tunnel) = first {
            session.set_connection_user_context(Some(Box::new(tunnel)));
        }
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut settings = settings;
            if let Some(s) = settings.as_mut()
                && let Some(context) = s.take_user_context()
            {
                match context.downcast::<Arc<TunnelPlan>>() {
                    Ok(plan) => return self.tunnel(stream, &plan, shutdown).await,
                    Err(other) => s.set_user_context(other),
                }
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings {
                s.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
    }

    /// Answers `200` and runs the tunnel `plan` on the agent's connection.
    async fn tunnel(&self, stream: Stream, plan: &TunnelPlan, shutdown: &ShutdownWatch) {
        let metrics = &self.shared.metrics;
        // Pingora's listeners give L4 streams; an intercepted TLS stream never gets here
        // (CONNECT inside a tunnel is refused).
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            log::error!("CONNECT on a stream that is not a TCP connection");
            return;
        };
        let mut l4 = *l4;
        if l4.write_all(CONNECT_ESTABLISHED).await.is_err() || l4.flush().await.is_err() {
            return;
        }
        match plan {
            TunnelPlan::Blind(upstream) => {
                let upstream = upstream.lock().map(|mut u| u.take()).ok().flatten();
                let Some(mut upstream) = upstream else {
                    return;
                };
                metrics
                    .tunnels
                    .with_label_values(&["blind", "opened"])
                    .inc();
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut l4, &mut upstream) => {
                        log::debug!("blind tunnel closed: {copied:?}");
                    }
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
            }
            TunnelPlan::Intercept { info, leaf } => {
                let Some(interceptor) = &self.shared.interceptor else {
                    return;
                };
                let Ok((acceptor, sni)) = interceptor.acceptor(&info.host, leaf.clone()) else {
                    return;
                };
                let timeout = self.live.load().config.connect.handshake_timeout;
                let tls = match tokio::time::timeout(timeout, acceptor.tls_handshake(l4)).await {
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
                Box::pin(self.serve_http1(Box::new(tls), Some(info.clone()), shutdown)).await;
            }
        }
    }
}

#[async_trait]
impl ServerApp for ProxyApp {
    /// Runs for each new connection on the proxy listeners. HTTP/2 (h2c, when configured) is
    /// left to Pingora; CONNECT tunnels are HTTP/1 only.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.proxy.server_options().is_some_and(|o| o.h2c) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        self.serve_http1(stream, None, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
