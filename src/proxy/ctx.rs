//! The one typed per-request context that every hook and stage reads and writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Project, Route};
use crate::live::Live;
use crate::proxy::respond::ErrorCode;

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// Forward proxy: the agent named the URL (absolute-form request target).
    Forward,
    /// Reverse proxy: a YAML route matched an origin-form request.
    Route(Arc<Route>),
    /// `CONNECT host:port` (HTTPS_PROXY): only the stages that vet a target see it; then the
    /// connection becomes a tunnel (see [`TunnelPlan`]).
    Connect,
}

/// The upstream of one request.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: TargetKind,
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Origin-form path and query to send upstream.
    pub path: String,
    /// The address to connect to, once a stage (the SSRF guard) has resolved and vetted it.
    pub addr: Option<SocketAddr>,
    /// A smart route's candidate this request goes to (index in its `candidates`).
    pub candidate: Option<usize>,
}

impl Target {
    /// The upstream a route target goes to: its smart route's chosen candidate, or the route's
    /// upstream.
    pub fn route_upstream(&self) -> Option<&crate::config::UpstreamUrl> {
        let TargetKind::Route(route) = &self.kind else {
            return None;
        };
        Some(
            match (self.candidate, &route.smart) {
                (Some(i), Some(smart)) => smart.candidates.get(i),
                _ => None,
            }
            .unwrap_or(&route.upstream),
        )
    }

    /// The Host header the upstream gets: always the target's own authority (for absolute-form
    /// requests RFC 9112 §3.2.2 makes the proxy replace whatever Host the client sent).
    pub fn host_header(&self) -> String {
        crate::config::host_header(&self.host, self.port, self.tls)
    }

    /// `scheme://host:port/path`, without the query (what journals and approvers see).
    pub fn url_without_query(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let path = self.path.split('?').next().unwrap_or("/");
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{path}", self.port)
    }

    /// Label used in metrics: the route name, or `forward`.
    pub fn route_label(&self) -> &str {
        match &self.kind {
            TargetKind::Forward => "forward",
            TargetKind::Route(r) => &r.name,
            TargetKind::Connect => "connect",
        }
    }

    /// Whether the SSRF guard vets this target (agent-chosen: forward requests and tunnels).
    pub fn agent_chosen(&self) -> bool {
        matches!(self.kind, TargetKind::Forward | TargetKind::Connect)
    }
}

/// An intercepted tunnel, as the requests inside it see it: they go to `host:port` (over TLS
/// when the agent spoke TLS inside the tunnel, in plain HTTP when it did not), authenticated
/// with the `CONNECT`'s credentials. `Debug` hides the credentials.
#[derive(Clone)]
pub struct TunnelInfo {
    pub host: String,
    pub port: u16,
    /// The agent spoke TLS inside the tunnel (and so does pag0 to the upstream).
    pub tls: bool,
    /// The credentials header the agent sent with its `CONNECT` (`Proxy-Authorization` or
    /// `X-Pag0-API-Key`), given to every request inside.
    pub credentials: Option<(http::HeaderName, http::HeaderValue)>,
}

impl std::fmt::Debug for TunnelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "TunnelInfo({scheme}://{}:{})", self.host, self.port)
    }
}

/// What a `CONNECT` that the pipeline accepted turns its connection into, once Pingora hands
/// the connection back to the listener (the agent gets `200` then).
pub enum TunnelPlan {
    /// Terminate the agent's TLS (this acceptor presents the host's leaf and checks SNI) and
    /// serve the requests inside.
    Intercept {
        info: Arc<TunnelInfo>,
        acceptor: pingora::listeners::tls::Acceptor,
        sni: Arc<crate::intercept::SniCheck>,
    },
    /// Relay bytes to this already connected upstream.
    Blind(std::sync::Mutex<Option<tokio::net::TcpStream>>),
}

impl std::fmt::Debug for TunnelPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelPlan::Intercept { info, .. } => write!(f, "Intercept({info:?})"),
            TunnelPlan::Blind(_) => f.write_str("Blind"),
        }
    }
}

/// x402 state of one request (filled by the `payment` stage).
#[derive(Debug, Default)]
pub struct PaymentState {
    /// Header (name, value) sent on the paid attempt; `Some` means pag0 already paid once.
    pub header: Option<(&'static str, http::HeaderValue)>,
    /// Set when a 402 was answered by signing: the request must be replayed.
    pub replay_requested: bool,
    /// Whether Pingora's retry buffer still holds the whole request body (≤ 64 KiB).
    pub body_replayable: bool,
    /// What the paid attempt costs.
    pub charge: Option<Charge>,
    /// Why pag0 did not pay a 402.
    pub declined: Option<String>,
    /// Price-memory key of this request (project, method, URL without query).
    pub memory_key: Option<String>,
    /// The payment header was signed up front from price memory.
    pub presigned: bool,
    /// The one fallback after a pre-signed attempt got a 402 (price changed) was used.
    pub fallback_used: bool,

    /// The agent sent its own payment header: pag0 does not pay for this request.
    pub agent_signed: bool,
    /// Offer to remember once the paid response turns out successful.
    pub to_remember: Option<std::sync::Arc<crate::x402::Remembered>>,
    /// Budget held for the paid attempt: committed in `logging` if it succeeded, else released.
    pub reservation: Option<Reservation>,
    /// Whether the paid attempt counts as spent (2xx with a successful receipt, or without a
    /// receipt when `budgets.commit_without_receipt`); `None` until a paid response arrived.
    pub settled: Option<bool>,
    /// Settlement transaction from the receipt (a hash of the network's form).
    pub tx: Option<String>,
    /// Why the paid attempt's receipt was ignored (its transaction was not a hash).
    pub receipt_problem: Option<String>,
    /// The paid attempt's receipt header, read as the upstream sent it (before the cache
    /// stores or merges the header).
    pub receipt: Option<Vec<u8>>,
    /// The write-ahead intent of the payment header (durable before the header is sent).
    pub intent: Option<SentIntent>,
    /// The upstream said the paid attempt was not paid (why): its intent is `released`.
    pub refused: Option<String>,
    /// Status of the upstream's answer to the paid attempt, once it arrived.
    pub paid_status: Option<u16>,
    /// What pag0 did about payment, for analytics (`None`: no 402 was involved).
    pub outcome: Option<crate::analytics::PaymentOutcome>,
    /// x402 version of the offer pag0 read (or of the agent's payment header).
    pub x402_version: Option<u8>,
    /// What a v2 offer said about its endpoint (description, Bazaar), for the catalog.
    pub offer_info: Option<crate::curation::OfferInfo>,
    /// pag0's JSON reason for a declined 402 with a chunked body: sent as the body if the
    /// upstream's turns out empty.
    pub decline_body: Option<bytes::Bytes>,
}

/// A payment header whose intent is durable.
#[derive(Debug, Clone)]
pub struct SentIntent {
    /// The intent's id (the reservation's, and the journal row's once committed).
    pub id: String,
    pub nonce: alloy_primitives::B256,
    /// The header was put on a request to the upstream (it may have been read there).
    pub sent: bool,
}

/// Budget held for a paid attempt, with the limits it was checked against.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub held: crate::budget::Reservation,
    pub limits: crate::budget::Limits,
}

/// The price of a paid attempt and what the journal records about it.
#[derive(Debug, Clone)]
pub struct Charge {
    /// Base units.
    pub amount: alloy_primitives::U256,
    pub symbol: String,
    /// CAIP-2 network id.
    pub network: String,
    /// Token contract.
    pub asset: alloy_primitives::Address,
    pub pay_to: alloy_primitives::Address,
    /// The project's wallet.
    pub payer: alloy_primitives::Address,
    /// EIP-3009 authorization nonce.
    pub nonce: alloy_primitives::B256,
    /// Unix second the authorization stops being valid (it can never settle after).
    pub valid_before: u64,
}

/// What happened upstream: attempts, the last status, time spent waiting for answers.
#[derive(Debug, Default)]
pub struct UpstreamTrace {
    /// Requests sent upstream (a paid replay and retries count).
    pub attempts: u8,
    /// Status of the upstream's last answer.
    pub status: Option<u16>,
    /// When the current attempt's request header was sent.
    pub sent_at: Option<Instant>,
    /// Request sent to response header received, summed over attempts (µs).
    pub latency_us: u64,
}

/// Per-request state, created in `new_ctx` and turned into metrics and an analytics record in
/// `logging`.
pub struct RequestCtx {
    /// The configuration snapshot this request runs under (a reload never changes it mid-request).
    pub live: Arc<Live>,
    pub started: Instant,
    /// Wall-clock arrival (unix ms), for analytics.
    pub at_ms: i64,
    pub upstream: UpstreamTrace,
    /// The early copy of this request's analytics record, written ahead before the answer.
    pub analytics_ahead: Option<crate::analytics::Ahead>,
    pub target: Option<Target>,
    pub project: Option<Arc<Project>>,
    /// Set when pag0 answered (or failed) the request itself.
    pub error: Option<ErrorCode>,
    /// A reply a stage prepared for `fail_to_proxy` to send instead of the generic one.
    pub reply: Option<crate::proxy::respond::Reply>,
    pub payment: PaymentState,
    pub idempotency: crate::stages::IdempotencyState,
    pub cache: crate::stages::CacheState,
    /// The rate limiter's verdict (its `X-RateLimit-*` headers go on the answer).
    pub rate_limit: Option<crate::ratelimit::Decision>,
    /// Set on requests inside an intercepted tunnel (carried across its keep-alive requests).
    pub tunnel: Option<Arc<TunnelInfo>>,
    /// Set on an accepted `CONNECT`: what the listener makes of the connection.
    pub tunnel_plan: Option<Arc<TunnelPlan>>,
    /// A smart route's candidate choice.
    pub smart: Option<crate::proxy::smart::SmartChoice>,
}

impl RequestCtx {
    pub fn new(live: Arc<Live>) -> RequestCtx {
        RequestCtx {
            live,
            started: Instant::now(),
            at_ms: crate::clock::unix_millis() as i64,
            upstream: UpstreamTrace::default(),
            analytics_ahead: None,
            target: None,
            project: None,
            error: None,
            reply: None,
            payment: PaymentState::default(),
            idempotency: Default::default(),
            cache: Default::default(),
            rate_limit: None,
            tunnel: None,
            tunnel_plan: None,
            smart: None,
        }
    }

    pub fn project_label(&self) -> &str {
        self.project.as_ref().map_or("-", |p| p.id.as_str())
    }

    pub fn route_label(&self) -> &str {
        self.target.as_ref().map_or("-", Target::route_label)
    }
}
