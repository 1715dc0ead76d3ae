//! The admin listener's connections: axum's router served on hyper's own HTTP/1 connections,
//! with the discipline of the proxy listener. Opening a connection needs no token, so each one
//! is bounded before anything is authenticated:
//!
//! * a request header must be complete `admin.header_timeout_ms` after the connection is ready
//!   for one (accepted, or the previous response sent): idle, half-sent and trickling
//!   connections are closed; a header over 64 KiB is answered `431`;
//! * a request during which no byte moves either way for `admin.idle_timeout_seconds` ends
//!   its connection (a stalled body, a client that stopped reading);
//! * at most `admin.max_connections` are held at once; more get `503 TOO_MANY_CONNECTIONS`
//!   and are closed at once, so the descriptors left stay the proxy's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::net::conns::ConnectionCap;

/// Request headers larger than this are refused (`431`) by hyper before a handler runs.
const MAX_HEADER_BUFFER: usize = 64 * 1024;
/// How long a refused connection gets to take its `503`.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed accept (e.g. no descriptor left), the next one waits this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What bounds each admin connection.
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub cap: Arc<ConnectionCap>,
    /// Counts connections refused at the cap.
    pub refused: IntCounter,
}

/// Accepts and serves connections until `stop` completes; then accepts no more.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                log::warn!("admin listener: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(open) = limits.cap.try_open() else {
            limits.refused.inc();
            tokio::spawn(refuse(tcp));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(Watched::new(tcp, limits.idle_timeout));
        let service = TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEADER_BUFFER)
            .serve_connection(io, service);
        tokio::spawn(async move {
            // Errors are the client's (timeouts, resets, malformed requests): nothing to log.
            let _ = connection.await;
            drop(open);
        });
    }
}

/// Answers `503` on a connection over the cap, without reading from it.
async fn refuse(mut tcp: TcpStream) {
    let body = r#"{"error":{"code":"TOO_MANY_CONNECTIONS","message":"the admin listener holds as many connections as it may (admin.max_connections); retry"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// A connection that fails its reads and writes once no byte moved either way for `idle`
/// while hyper waits on it.
struct Watched<T> {
    inner: T,
    idle: Duration,
    last: Instant,
    clock: Pin<Box<Sleep>>,
}

impl<T> Watched<T> {
    fn new(inner: T, idle: Duration) -> Watched<T> {
        let now = Instant::now();
        Watched {
            inner,
            idle,
            last: now,
            clock: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// The inner I/O is pending: whether the connection has now been idle too long (else
    /// the clock wakes the task when it will have been).
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last + self.idle;
        if self.clock.deadline() != deadline {
            self.clock.as_mut().reset(deadline);
        }
        self.clock.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no byte moved within admin.idle_timeout_seconds",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.idle_too_long(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
            ready => {
                this.last = Instant::now();
                ready
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Pending if this.idle_too_long(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
            ready => {
                this.last = Instant::now();
                ready
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
