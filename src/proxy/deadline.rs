//! A deadline for the whole request header on a downstream connection (slowloris defence).
//!
//! Pingora times each read of a request header on its own, so a client that dribbles one
//! byte per second keeps a connection (and its task) forever. [`HeaderDeadline`] wraps the
//! connection's stream: the listener arms it before each request, the clock starts with the
//! first byte of that request, and the proxy's first hook (`early_request_filter`, which runs
//! once the header is parsed) stops it. A header still incomplete when the clock runs out
//! fails the read, and Pingora closes the connection; the close is counted in
//! `pag0_header_timeouts_total`.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A downstream stream whose request headers must arrive within `timeout` of their first byte.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    /// Set by the listener before a request, cleared once its header is parsed.
    waiting: AtomicBool,
    /// Set by the listener before a request: the clock of the previous one is void (nothing
    /// may have been read since that one's header, e.g. after an answer pag0 gave itself).
    rearmed: AtomicBool,
    /// The clock for the current header (started by its first byte), kept between requests.
    clock: Option<Pin<Box<Sleep>>>,
    running: bool,
    expired: IntCounter,
    /// Bytes read ahead by [`Peek::try_peek`] (the listener waiting for the next request),
    /// served first by the next reads; no allocation while nothing is read ahead.
    ahead: Vec<u8>,
    /// How much of `ahead` was served.
    ahead_at: usize,
}

/// How much the wait for a next request reads at once (a request header usually fits, so
/// Pingora's read of it needs no system call of its own).
const READ_AHEAD: usize = 4096;

impl HeaderDeadline {
    pub fn new(inner: Stream, timeout: Duration, expired: IntCounter) -> HeaderDeadline {
        HeaderDeadline {
            inner,
            timeout,
            waiting: AtomicBool::new(false),
            rearmed: AtomicBool::new(false),
            clock: None,
            running: false,
            expired,
            ahead: Vec::new(),
            ahead_at: 0,
        }
    }

    /// The `HeaderDeadline` under `stream`, if it is one.
    pub fn of(stream: &Stream) -> Option<&HeaderDeadline> {
        (**stream).as_any().downcast_ref::<HeaderDeadline>()
    }

    /// A new request may begin: its header must be complete `timeout` after its first byte.
    pub fn arm(&self) {
        self.rearmed.store(true, Relaxed);
        self.waiting.store(true, Relaxed);
    }

    /// The request's header is parsed: the rest of the request is timed by Pingora's timers.
    pub fn header_read(&self) {
        self.waiting.store(false, Relaxed);
    }

    pub fn into_inner(self) -> Stream {
        self.inner
    }

    /// The clock of the header being read: started now if this is its first byte.
    fn start_clock(&mut self) {
        if self.running {
            return;
        }
        self.running = true;
        let deadline = Instant::now() + self.timeout;
        match &mut self.clock {
            Some(clock) => clock.as_mut().reset(deadline),
            None => self.clock = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    fn expire(&mut self) -> Poll<io::Result<()>> {
        self.running = false;
        self.waiting.store(false, Relaxed);
        self.expired.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request header did not arrive in time (server.header_timeout_ms)",
        )))
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rearmed.load(Relaxed) {
            this.rearmed.store(false, Relaxed);
            this.running = false;
        }
        let before = buf.filled().len();
        let polled = if this.ahead_at < this.ahead.len() && buf.remaining() > 0 {
            let n = buf.remaining().min(this.ahead.len() - this.ahead_at);
            buf.put_slice(&this.ahead[this.ahead_at..this.ahead_at + n]);
            this.ahead_at += n;
            if this.ahead_at == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_at = 0;
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        if !this.waiting.load(Relaxed) {
            this.running = false;
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.start_clock();
                let late = this
                    .clock
                    .as_ref()
                    .is_some_and(|c| c.deadline() <= Instant::now());
                if late {
                    return this.expire();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.running => {
                let fired = this
                    .clock
                    .as_mut()
                    .is_some_and(|c| c.as_mut().poll(cx).is_ready());
                if fired {
                    return this.expire();
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    /// A one-byte peek works on every stream (TLS ones included): what has arrived (up to
    /// [`READ_AHEAD`] bytes) is read ahead, outside the header clock, and served by the next
    /// reads. The buffer exists only once bytes are there: a connection waiting here holds
    /// none. Longer peeks are the inner stream's.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if buf.len() != 1 {
            return self.inner.try_peek(buf).await;
        }
        if self.ahead_at == self.ahead.len() {
            std::future::poll_fn(|cx| self.poll_read_ahead(cx)).await?;
        }
        buf[0] = self.ahead[self.ahead_at];
        Ok(true)
    }
}

impl HeaderDeadline {
    /// Reads what has arrived into a fresh read-ahead buffer (dropped again while nothing
    /// has); end of stream is an error.
    fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ahead = Vec::with_capacity(READ_AHEAD);
        let mut buf = ReadBuf::uninit(ahead.spare_capacity_mut());
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        // SAFETY: `poll_read` initialised and filled the first `n` bytes.
        unsafe { ahead.set_len(n) };
        self.ahead = ahead;
        self.ahead_at = 0;
        Poll::Ready(Ok(()))
    }
}

/// `into_any` of a `HeaderDeadline` stream gives the stream beneath (the listener downcasts it
/// to a TCP stream when a `CONNECT` becomes a tunnel).
pub fn unwrap(stream: Stream) -> Stream {
    if HeaderDeadline::of(&stream).is_none() {
        return stream;
    }
    let any: Box<dyn Any> = stream.into_any();
    any.downcast::<HeaderDeadline>()
        .expect("checked above")
        .into_inner()
}
