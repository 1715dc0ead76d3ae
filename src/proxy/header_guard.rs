//! Bounds on each request header of a downstream connection, enforced on the bytes before
//! Pingora buffers them (so before authentication and before any stage runs; inside
//! intercepted tunnels too):
//!
//! * **time** (slowloris): Pingora times each read of a request header on its own, so a
//!   client that dribbles one byte per second keeps a connection (and its task) forever. The
//!   listener arms [`HeaderGuard`] before each request, the clock starts with the first byte of
//!   that request, and the proxy's first hook (`early_request_filter`, which runs once the
//!   header is parsed) stops it. A header still incomplete when the clock runs out fails the
//!   read, and Pingora closes the connection; the close is counted in
//!   `pag0_header_timeouts_total`.
//! * **size**: a header over `server.max_header_bytes` (Pingora would buffer up to 1 MiB) is
//!   answered `431 REQUEST_HEADER_TOO_LARGE` here, the rest of what the client sends is read
//!   and dropped for a moment (so the answer is not lost to a reset), and the connection ends.
//!   What unfinished headers hold beyond their first [`SMALL_HEADER`] bytes is also bounded for
//!   the whole process ([`PendingHeaders`]): past it, large headers are refused the same way
//!   while small ones still pass. Counted in `pag0_header_too_large_total`.
//! * **Pingora's own refusals**: a header Pingora cannot parse (bad bytes, a `Host` that is
//!   not the target's) gets a bare `400` from Pingora before any hook of pag0 runs; the guard
//!   writes pag0's JSON `400 BAD_REQUEST` in its place.
//!
//! Both kinds of answer are told to [`HeaderLimits::answered`] (the analytics record).

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, Ordering::Relaxed};
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

use crate::proxy::respond::{ErrorCode, Reply};

/// The first bytes of every header are not charged to [`PendingHeaders`]: ordinary requests
/// are never refused because large ones are pending elsewhere.
pub const SMALL_HEADER: usize = 8 * 1024;
/// How long a refused connection's remaining bytes are read and dropped, at most.
const LINGER: Duration = Duration::from_secs(2);
/// How much a refused connection may send while lingering before it is cut.
const LINGER_BYTES: usize = 2 * 1024 * 1024;

/// The bytes that unfinished request headers hold beyond their first [`SMALL_HEADER`], across
/// every connection of the process, and the most they may hold.
#[derive(Debug)]
pub struct PendingHeaders {
    bytes: AtomicUsize,
    max: usize,
}

impl PendingHeaders {
    pub fn new(max: usize) -> Arc<PendingHeaders> {
        Arc::new(PendingHeaders {
            bytes: AtomicUsize::new(0),
            max,
        })
    }

    fn charge(&self, n: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// What one connection's unfinished header holds of [`PendingHeaders`] (given back when
/// the header ends or the connection closes).
#[derive(Debug)]
struct Charge {
    pending: Arc<PendingHeaders>,
    bytes: usize,
}

impl Charge {
    fn release(&mut self) {
        if self.bytes > 0 {
            self.pending.release(self.bytes);
            self.bytes = 0;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

/// The size bounds of a listener's request headers.
#[derive(Clone)]
pub struct HeaderLimits {
    /// `server.max_header_bytes`.
    pub max_bytes: usize,
    pub pending: Arc<PendingHeaders>,
    /// Counts requests answered 431.
    pub too_large: IntCounter,
    /// Told of each request the guard answers itself (431, or pag0's 400 in place of
    /// Pingora's), which no hook of the proxy sees: for the analytics record.
    pub answered: Arc<dyn Fn(ErrorCode) + Send + Sync>,
}

impl std::fmt::Debug for HeaderLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderLimits")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Where a refused connection is: writing its 431, then dropping what the client still sends.
#[derive(Debug)]
enum Refusal {
    Writing { reply: Vec<u8>, at: usize },
    Closing,
    Lingering { dropped: usize },
}

/// A downstream stream whose request headers must arrive within `timeout` of their first byte.
#[derive(Debug)]
pub struct HeaderGuard {
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
    limits: HeaderLimits,
    /// Bytes of the current header read so far (0 once it ended).
    header_bytes: usize,
    /// How many of them are charged to `limits.pending`.
    charged: Charge,
    /// The end of the current header was read (the bytes after it are the body's).
    header_ended: bool,
    /// Scanning for the end: at the start of a line (only `\r` since its `\n`)...
    at_line_start: bool,
    /// ... after a first non-empty line.
    seen_text: bool,
    refusal: Option<Refusal>,
    /// pag0's answer written in place of Pingora's plain 400, and how much of it was written.
    substitute: Option<(Vec<u8>, usize)>,
}

/// How much the wait for a next request reads at once (a request header usually fits, so
/// Pingora's read of it needs no system call of its own).
const READ_AHEAD: usize = 4096;

impl HeaderGuard {
    pub fn new(
        inner: Stream,
        timeout: Duration,
        expired: IntCounter,
        limits: HeaderLimits,
    ) -> HeaderGuard {
        HeaderGuard {
            inner,
            timeout,
            waiting: AtomicBool::new(false),
            rearmed: AtomicBool::new(false),
            clock: None,
            running: false,
            expired,
            ahead: Vec::new(),
            ahead_at: 0,
            header_bytes: 0,
            charged: Charge {
                pending: limits.pending.clone(),
                bytes: 0,
            },
            header_ended: false,
            at_line_start: false,
            seen_text: false,
            refusal: None,
            substitute: None,
            limits,
        }
    }

    /// The `HeaderGuard` under `stream`, if it is one.
    pub fn of(stream: &Stream) -> Option<&HeaderGuard> {
        (**stream).as_any().downcast_ref::<HeaderGuard>()
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

    /// A new header starts: nothing of it was read.
    fn restart_header(&mut self) {
        self.release();
        self.header_bytes = 0;
        self.header_ended = false;
        self.at_line_start = false;
        self.seen_text = false;
    }

    /// Gives back what the current header held of [`PendingHeaders`].
    fn release(&mut self) {
        self.charged.release();
    }

    /// Counts `bytes` just read into the current header; `false` if the header is now over a
    /// bound (the request is refused).
    fn count(&mut self, bytes: &[u8]) -> bool {
        if self.header_ended {
            return true;
        }
        let mut taken = bytes.len();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if self.at_line_start && self.seen_text => {
                    self.header_ended = true;
                    taken = i + 1;
                    break;
                }
                b'\n' => self.at_line_start = true,
                b'\r' => {}
                _ => {
                    self.at_line_start = false;
                    self.seen_text = true;
                }
            }
        }
        self.header_bytes += taken;
        if self.header_bytes > self.limits.max_bytes {
            return false;
        }
        let large = self.header_bytes.saturating_sub(SMALL_HEADER);
        if large > self.charged.bytes {
            if !self.limits.pending.charge(large - self.charged.bytes) {
                return false;
            }
            self.charged.bytes = large;
        }
        if self.header_ended {
            self.release();
        }
        true
    }

    /// Starts answering 431 (the bytes just read are not handed on).
    fn refuse(&mut self) {
        self.release();
        self.limits.too_large.inc();
        (self.limits.answered)(ErrorCode::HeaderTooLarge);
        let reply = Reply::new(
            ErrorCode::HeaderTooLarge,
            format!(
                "the request header is over {} bytes (server.max_header_bytes), or pag0 holds too many large headers at once",
                self.limits.max_bytes
            ),
        )
        .raw_http1();
        self.refusal = Some(Refusal::Writing { reply, at: 0 });
        self.waiting.store(false, Relaxed);
        self.set_clock(Instant::now() + LINGER);
        self.running = true;
    }

    /// A refused connection: writes the 431, closes the writing side, drops what the client
    /// still sends for [`LINGER`]; then reads end (Pingora closes the connection).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let timed_out = self
                .clock
                .as_mut()
                .is_some_and(|c| c.as_mut().poll(cx).is_ready());
            if timed_out {
                return Poll::Ready(Ok(()));
            }
            let Some(refusal) = self.refusal.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match refusal {
                Refusal::Writing { reply, at } => {
                    match std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &reply[*at..]))
                    {
                        Ok(0) | Err(_) => return Poll::Ready(Ok(())),
                        Ok(n) => *at += n,
                    }
                    if *at == reply.len() {
                        self.refusal = Some(Refusal::Closing);
                    }
                }
                Refusal::Closing => {
                    if std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx)).is_err() {
                        return Poll::Ready(Ok(()));
                    }
                    self.refusal = Some(Refusal::Lingering { dropped: 0 });
                }
                Refusal::Lingering { dropped } => {
                    let mut sink = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut sink);
                    match std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() && *dropped < LINGER_BYTES => {
                            *dropped += buf.filled().len();
                        }
                        _ => return Poll::Ready(Ok(())),
                    }
                }
            }
        }
    }

    /// The clock of the header being read: started now if this is its first byte.
    fn start_clock(&mut self) {
        if self.running {
            return;
        }
        self.running = true;
        self.set_clock(Instant::now() + self.timeout);
    }

    /// The one clock (header deadline, then a refusal's linger) runs out at `deadline`.
    fn set_clock(&mut self, deadline: Instant) {
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

impl AsyncRead for HeaderGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            // Nothing more reaches Pingora: the end of this read ends the connection.
            return this.poll_refusal(cx);
        }
        if this.rearmed.load(Relaxed) {
            this.rearmed.store(false, Relaxed);
            this.running = false;
            this.restart_header();
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
            this.release();
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if !this.count(&buf.filled()[before..]) {
                    buf.set_filled(before);
                    this.refuse();
                    return this.poll_refusal(cx);
                }
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

impl AsyncWrite for HeaderGuard {
    /// Passes writes on, except Pingora's own answer to a header it could not parse (a bare
    /// `400`, written before pag0's hooks saw the request): pag0's JSON `400 BAD_REQUEST` goes
    /// out instead, and Pingora's bytes are dropped.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.catch_pingora_400(data);
        if this.substitute.is_some() {
            std::task::ready!(this.poll_substitute(cx))?;
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.catch_pingora_400(first);
        }
        if this.substitute.is_some() {
            std::task::ready!(this.poll_substitute(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_substitute(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_substitute(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl HeaderGuard {
    /// `data` is the start of Pingora's plain 400 to a request pag0's hooks never saw.
    fn catch_pingora_400(&mut self, data: &[u8]) {
        if self.substitute.is_none()
            && self.refusal.is_none()
            && self.waiting.load(Relaxed)
            && data.starts_with(b"HTTP/1.1 400 ")
        {
            self.waiting.store(false, Relaxed);
            (self.limits.answered)(ErrorCode::BadRequest);
            let reply = Reply::new(
                ErrorCode::BadRequest,
                "the request could not be parsed (malformed request line or header, or a Host that is not the target's)",
            )
            .raw_http1();
            self.substitute = Some((reply, 0));
        }
    }

    /// Writes what is left of pag0's answer in place of Pingora's (ready at once without one).
    fn poll_substitute(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((reply, at)) = self.substitute.as_mut() {
            if *at == reply.len() {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &reply[*at..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *at += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for HeaderGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderGuard {
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

impl GetTimingDigest for HeaderGuard {
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

impl GetProxyDigest for HeaderGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderGuard {
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

impl HeaderGuard {
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

/// `into_any` of a `HeaderGuard` stream gives the stream beneath (the listener downcasts it
/// to a TCP stream when a `CONNECT` becomes a tunnel).
pub fn unwrap(stream: Stream) -> Stream {
    if HeaderGuard::of(&stream).is_none() {
        return stream;
    }
    let any: Box<dyn Any> = stream.into_any();
    any.downcast::<HeaderGuard>()
        .expect("checked above")
        .into_inner()
}
