//! Responses pag0 writes itself: one JSON shape, one table of codes.
//!
//! Body: `{"error": {"code": "...", "message": "...", "details": {...}}}`, with
//! `Content-Type: application/json` and `X-Pag0-Error: <code>`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Value, json};

/// Every error code pag0 itself answers with (the README's error table lists the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request target is not a usable `http(s)://` URL.
    InvalidTarget,
    /// 401: a reverse-proxy route was called without valid credentials.
    Unauthorized,
    /// 403: the target resolves to a loopback/private/link-local/... address.
    TargetForbidden,
    /// 404: an origin-form request matched no route.
    NoRoute,
    /// 407: a forward-proxy request without valid credentials.
    ProxyAuthRequired,
    /// 429: the project's rate limit is exhausted.
    RateLimitExceeded,
    /// 500: a bug in pag0.
    InternalError,
    /// 502: the target's name does not resolve.
    DnsResolutionFailed,
    /// 502: the upstream refused or dropped the connection.
    UpstreamConnectFailed,
    /// 502: the upstream broke the HTTP exchange.
    UpstreamError,
    /// 502: the upstream's TLS certificate did not verify (or its TLS handshake failed).
    UpstreamTlsFailed,
    /// 405: `CONNECT` is off (`connect.mode: off`), or was sent inside a tunnel.
    ConnectNotAllowed,
    /// 421: a request inside an intercepted tunnel names another host than the `CONNECT`.
    MisdirectedRequest,
    /// 503: a `CONNECT` was accepted while pag0 began to shut down.
    ShuttingDown,
    /// 503: the listener already holds `max_connections`; the connection is closed.
    TooManyConnections,
    /// 431: the request header is over `server.max_header_bytes`.
    HeaderTooLarge,
    /// 504: the upstream did not connect or answer in time.
    UpstreamTimeout,
    /// 400: the client sent a malformed request.
    BadRequest,
    /// 400: `Idempotency-Key` is empty, too long or not visible ASCII.
    InvalidIdempotencyKey,
    /// 409: the first request with this `Idempotency-Key` is still running.
    IdempotencyInFlight,
    /// 409: the payment made for this `Idempotency-Key` was sent and its outcome is unknown
    /// (in doubt): it may have been paid, so pag0 does not pay again.
    IdempotencyInDoubt,
    /// 409: the key was paid for, but its response was not kept for replay (too large, or
    /// lost in a crash): it is not paid again.
    IdempotencyAlreadyPaid,
    /// 503: the idempotency records (database or Redis) are unreachable: a request with an
    /// `Idempotency-Key` is not paid (free ones pass).
    IdempotencyUnavailable,
    /// 413: a request with `Idempotency-Key` has a body over 64 KiB.
    IdempotencyBodyTooLarge,
    /// 422: the `Idempotency-Key` was used for a different request.
    IdempotencyKeyReused,
    /// 400: relay mode: the agent's payment header does not decode.
    InvalidPaymentHeader,
    /// 403: relay mode: the agent's payment is outside the allowlists, ceiling or window.
    PaymentNotAllowed,
    /// 409: relay mode: the agent's payment nonce was already relayed.
    PaymentNonceReused,
    /// 502: `verify_before_pay` is on and the facilitator did not answer.
    FacilitatorUnavailable,
    /// 402: pag0 did not pay this 402 (body of a declined 402 whose upstream body was empty).
    PaymentDeclined,
    /// 403: the project's policy blocks this host.
    HostBlocked,
    /// 403: the host is not in the project's non-empty allow list.
    HostNotAllowed,
    /// 403: policy: no offer on an allowed network.
    NetworkNotAllowed,
    /// 403: policy: no offer in an asset with a budget.
    AssetNotAllowed,
    /// 403: policy: no offer to an allowed recipient.
    PayToNotAllowed,
    /// 403: policy: the price is above the per-request maximum.
    PerRequestLimitExceeded,
    /// 403: policy: the price is above the host's price cap.
    HostPriceCapExceeded,
    /// 403: the payment would exceed today's budget (UTC).
    DailyBudgetExceeded,
    /// 403: the payment would exceed this month's budget (UTC).
    MonthlyBudgetExceeded,
    /// 403: the approval webhook said no, or did not answer in time.
    ApprovalDenied,
    /// 503: the budget ledger (Redis) is unavailable; nothing was paid.
    BudgetUnavailable,
    /// 503: the payment could not be recorded before sending (database and spool failed);
    /// nothing was sent.
    PaymentNotRecorded,
}

impl ErrorCode {
    /// The code of a policy violation (same string as [`crate::policy::Violation::code`]).
    pub fn of_violation(v: &crate::policy::Violation) -> ErrorCode {
        use crate::policy::Violation as V;
        match v {
            V::HostBlocked { .. } => ErrorCode::HostBlocked,
            V::HostNotAllowed { .. } => ErrorCode::HostNotAllowed,
            V::NetworkNotAllowed { .. } => ErrorCode::NetworkNotAllowed,
            V::AssetNotAllowed { .. } => ErrorCode::AssetNotAllowed,
            V::PayToNotAllowed { .. } => ErrorCode::PayToNotAllowed,
            V::PerRequestLimit { .. } => ErrorCode::PerRequestLimitExceeded,
            V::HostPriceCap { .. } => ErrorCode::HostPriceCapExceeded,
            V::Budget { denial, .. } => match denial.window {
                crate::budget::Window::Daily => ErrorCode::DailyBudgetExceeded,
                crate::budget::Window::Monthly => ErrorCode::MonthlyBudgetExceeded,
            },
            V::ApprovalDenied { .. } => ErrorCode::ApprovalDenied,
        }
    }
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidTarget | ErrorCode::BadRequest | ErrorCode::InvalidIdempotencyKey => {
                400
            }
            ErrorCode::IdempotencyInFlight
            | ErrorCode::IdempotencyInDoubt
            | ErrorCode::IdempotencyAlreadyPaid => 409,
            ErrorCode::IdempotencyBodyTooLarge => 413,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::InvalidPaymentHeader => 400,
            ErrorCode::PaymentNotAllowed => 403,
            ErrorCode::PaymentNonceReused => 409,
            ErrorCode::FacilitatorUnavailable => 502,
            ErrorCode::PaymentDeclined => 402,
            ErrorCode::HostBlocked
            | ErrorCode::HostNotAllowed
            | ErrorCode::NetworkNotAllowed
            | ErrorCode::AssetNotAllowed
            | ErrorCode::PayToNotAllowed
            | ErrorCode::PerRequestLimitExceeded
            | ErrorCode::HostPriceCapExceeded
            | ErrorCode::DailyBudgetExceeded
            | ErrorCode::MonthlyBudgetExceeded
            | ErrorCode::ApprovalDenied => 403,
            ErrorCode::BudgetUnavailable
            | ErrorCode::PaymentNotRecorded
            | ErrorCode::IdempotencyUnavailable => 503,
            ErrorCode::Unauthorized => 401,
            ErrorCode::TargetForbidden => 403,
            ErrorCode::NoRoute => 404,
            ErrorCode::ProxyAuthRequired => 407,
            ErrorCode::RateLimitExceeded => 429,
            ErrorCode::InternalError => 500,
            ErrorCode::DnsResolutionFailed
            | ErrorCode::UpstreamConnectFailed
            | ErrorCode::UpstreamError
            | ErrorCode::UpstreamTlsFailed => 502,
            ErrorCode::ConnectNotAllowed => 405,
            ErrorCode::MisdirectedRequest => 421,
            ErrorCode::ShuttingDown | ErrorCode::TooManyConnections => 503,
            ErrorCode::HeaderTooLarge => 431,
            ErrorCode::UpstreamTimeout => 504,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTarget => "INVALID_TARGET",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::InvalidIdempotencyKey => "INVALID_IDEMPOTENCY_KEY",
            ErrorCode::IdempotencyInFlight => "IDEMPOTENCY_IN_FLIGHT",
            ErrorCode::IdempotencyInDoubt => "IDEMPOTENCY_IN_DOUBT",
            ErrorCode::IdempotencyAlreadyPaid => "IDEMPOTENCY_ALREADY_PAID",
            ErrorCode::IdempotencyUnavailable => "IDEMPOTENCY_UNAVAILABLE",
            ErrorCode::IdempotencyBodyTooLarge => "IDEMPOTENCY_BODY_TOO_LARGE",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::InvalidPaymentHeader => "INVALID_PAYMENT_HEADER",
            ErrorCode::PaymentNotAllowed => "PAYMENT_NOT_ALLOWED",
            ErrorCode::PaymentNonceReused => "PAYMENT_NONCE_REUSED",
            ErrorCode::FacilitatorUnavailable => "FACILITATOR_UNAVAILABLE",
            ErrorCode::PaymentDeclined => "PAYMENT_DECLINED",
            ErrorCode::HostBlocked => "HOST_BLOCKED",
            ErrorCode::HostNotAllowed => "HOST_NOT_ALLOWED",
            ErrorCode::NetworkNotAllowed => "NETWORK_NOT_ALLOWED",
            ErrorCode::AssetNotAllowed => "ASSET_NOT_ALLOWED",
            ErrorCode::PayToNotAllowed => "PAY_TO_NOT_ALLOWED",
            ErrorCode::PerRequestLimitExceeded => "PER_REQUEST_LIMIT_EXCEEDED",
            ErrorCode::HostPriceCapExceeded => "HOST_PRICE_CAP_EXCEEDED",
            ErrorCode::DailyBudgetExceeded => "DAILY_BUDGET_EXCEEDED",
            ErrorCode::MonthlyBudgetExceeded => "MONTHLY_BUDGET_EXCEEDED",
            ErrorCode::ApprovalDenied => "APPROVAL_DENIED",
            ErrorCode::BudgetUnavailable => "BUDGET_UNAVAILABLE",
            ErrorCode::PaymentNotRecorded => "PAYMENT_NOT_RECORDED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::TargetForbidden => "TARGET_FORBIDDEN",
            ErrorCode::NoRoute => "NO_ROUTE",
            ErrorCode::ProxyAuthRequired => "PROXY_AUTH_REQUIRED",
            ErrorCode::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::DnsResolutionFailed => "DNS_RESOLUTION_FAILED",
            ErrorCode::UpstreamConnectFailed => "UPSTREAM_CONNECT_FAILED",
            ErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ErrorCode::UpstreamTlsFailed => "UPSTREAM_TLS_FAILED",
            ErrorCode::ConnectNotAllowed => "CONNECT_NOT_ALLOWED",
            ErrorCode::MisdirectedRequest => "MISDIRECTED_REQUEST",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::HeaderTooLarge => "REQUEST_HEADER_TOO_LARGE",
            ErrorCode::UpstreamTimeout => "UPSTREAM_TIMEOUT",
        }
    }
}

/// `text` as a header value or reason phrase: visible ASCII and spaces only (anything else
/// becomes `?`), at most `max` characters.
pub fn header_text(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// A synthetic response: status from the code, JSON body, optional extra headers.
#[derive(Debug)]
pub struct Reply {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
    /// The status line says why (`403 TARGET_FORBIDDEN: …`): for answers to a `CONNECT`,
    /// whose body clients never show but whose status line they print.
    pub explained_status: bool,
}

impl Reply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            code,
            message: message.into(),
            details: None,
            headers: Vec::new(),
            explained_status: false,
        }
    }

    pub fn details(mut self, details: Value) -> Reply {
        self.details = Some(details);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// Puts the code and message in the status line's reason phrase.
    pub fn explain_in_status(mut self) -> Reply {
        self.explained_status = true;
        self
    }

    /// `CODE: message` as a reason phrase (at most 200 bytes).
    fn reason_phrase(&self) -> String {
        header_text(&format!("{}: {}", self.code.as_str(), self.message), 200)
    }

    pub fn body(&self) -> Bytes {
        let mut error = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(d) = &self.details {
            error["details"] = d.clone();
        }
        Bytes::from(json!({ "error": error }).to_string())
    }

    /// The whole response as HTTP/1.1 bytes, closing the connection (for a stream that is
    /// no longer a Pingora session).
    pub fn raw_http1(&self) -> Vec<u8> {
        let body = self.body();
        let status = http::StatusCode::from_u16(self.code.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (name, value) in self.fields(&body) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// The header fields of every reply: JSON type, length, the code, then the stage's own.
    fn fields(&self, body: &Bytes) -> impl Iterator<Item = (&'static str, String)> + '_ {
        [
            ("content-type", "application/json".to_string()),
            ("content-length", body.len().to_string()),
            ("x-pag0-error", self.code.as_str().to_string()),
        ]
        .into_iter()
        .chain(self.headers.iter().map(|(n, v)| (*n, v.clone())))
    }

    /// Writes the whole response to the client.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        let body = self.body();
        let mut resp = ResponseHeader::build(self.code.status(), Some(4 + self.headers.len()))?;
        for (name, value) in self.fields(&body) {
            resp.insert_header(name, value)?;
        }
        if self.explained_status {
            resp.set_reason_phrase(Some(&self.reason_phrase()))?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}
