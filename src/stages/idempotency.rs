//! `idempotency`: a request carrying `Idempotency-Key` is paid at most once, by any pag0
//! process sharing the records ([`crate::idempotency`]), across restarts and crashes. Its
//! fingerprint (method, target URL, SHA-256 of the body) is claimed for the project and key;
//! while the first request runs, a retry gets 409; the same key with a different request gets
//! 422; afterwards the first *paid* response is replayed (`X-Pag0-Idempotent-Replay: true`) with
//! no upstream call and no signature, or, when it was not kept, 409 `IDEMPOTENCY_ALREADY_PAID`;
//! a payment whose outcome is unknown makes it 409 `IDEMPOTENCY_IN_DOUBT`. Unpaid outcomes
//! release the key (nothing to protect). While the records are unreachable, keyed requests
//! that would pay get 503 and free ones pass.
//!
//! List it before `payment`: response-side hooks run in reverse stage order, so this stage sees
//! the response with the payment stage's headers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Flow, Stage};
use crate::idempotency::{Begin, Idempotency, Scope, StoredResponse};
use crate::proxy::RequestCtx;
use crate::proxy::respond::{ErrorCode, Reply};

/// The request header agents send.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Request bodies are hashed in `request_filter`; they must fit Pingora's 64 KiB retry buffer.
pub const MAX_IDEMPOTENT_BODY: usize = 64 * 1024;
/// Paid response bodies kept for replay at most.
pub const MAX_STORED_BODY: usize = 1024 * 1024;

pub struct IdempotencyStage {
    records: Arc<Idempotency>,
    window: Duration,
}

/// Response headers as (name, value) pairs.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Per-request state of this stage.
#[derive(Debug, Default)]
pub struct IdempotencyState {
    /// The key this request claimed.
    pub claim: Option<Scope>,
    /// The agent's `Idempotency-Key` as sent (recorded with the payment's intent); without a
    /// claim (the records were unreachable) nothing may be paid for it.
    pub agent_key: Option<String>,
    /// What became of the payment made for the claimed key (set by the payment stage).
    pub outcome: Option<KeyOutcome>,
    /// The response being captured: header part, body so far, overflowed, complete.
    pub captured: Option<(u16, Headers)>,
    pub body: BytesMut,
    pub too_large: bool,
    pub complete: bool,
}

/// The payment made for a claimed key, as the request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Paid: its journal id.
    Paid(String),
    /// Sent, outcome unknown.
    InDoubt,
    /// Signed and proved not made (never sent, or refused by the upstream).
    Released,
}

impl IdempotencyStage {
    pub fn new(records: Arc<Idempotency>, window: Duration) -> IdempotencyStage {
        IdempotencyStage { records, window }
    }
}

async fn replay(session: &mut Session, stored: &StoredResponse) -> pingora::Result<()> {
    let body = stored.body.clone();
    let mut resp = ResponseHeader::build(stored.status, Some(stored.headers.len() + 2))?;
    for (name, value) in &stored.headers {
        if !name.eq_ignore_ascii_case("content-length")
            && !name.eq_ignore_ascii_case("transfer-encoding")
        {
            resp.append_header(name.clone(), value.as_slice())?;
        }
    }
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-pag0-idempotent-replay", "true")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl Stage for IdempotencyStage {
    fn name(&self) -> &'static str {
        "idempotency"
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let Some(raw) = session.req_header().headers.get(IDEMPOTENCY_KEY_HEADER) else {
            return Flow::Continue;
        };
        let key = match raw.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
            _ => {
                return Flow::Respond(Reply::new(
                    ErrorCode::InvalidIdempotencyKey,
                    "Idempotency-Key must be 1-255 visible ASCII characters",
                ));
            }
        };
        // Hash the body now (it stays in the retry buffer and is sent from there).
        session.enable_retry_buffering();
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    len += chunk.len();
                    if len > MAX_IDEMPOTENT_BODY {
                        return Flow::Respond(Reply::new(
                            ErrorCode::IdempotencyBodyTooLarge,
                            format!(
                                "requests with Idempotency-Key may carry at most {MAX_IDEMPOTENT_BODY} bytes of body"
                            ),
                        ));
                    }
                    hasher.update(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    return Flow::Respond(Reply::new(
                        ErrorCode::BadRequest,
                        "cannot read the request body",
                    ));
                }
            }
        }
        let req = session.req_header();
        let target = ctx.target.as_ref().map(|t| {
            format!(
                "{}://{}:{}{}",
                if t.tls { "https" } else { "http" },
                t.host,
                t.port,
                t.path
            )
        });
        let fingerprint = Sha256::new()
            .chain_update(req.method.as_str())
            .chain_update(b"\n")
            .chain_update(target.unwrap_or_default())
            .chain_update(b"\n")
            .chain_update(hasher.finalize())
            .finalize();
        let scope = Scope {
            project: ctx.project_label().to_string(),
            key,
        };
        let begin = self
            .records
            .begin(&scope, &hex::encode(fingerprint), self.window)
            .await;
        let key = scope.key.clone();
        match begin {
            Err(e) => {
                // Free traffic passes; the payment stage refuses to pay without a claim.
                log::warn!(project = scope.project.as_str(); "{e}");
                ctx.idempotency.agent_key = Some(key);
                Flow::Continue
            }
            Ok(Begin::New) => {
                ctx.idempotency.claim = Some(scope);
                ctx.idempotency.agent_key = Some(key);
                Flow::Continue
            }
            Ok(Begin::InFlight) => Flow::Respond(
                Reply::new(
                    ErrorCode::IdempotencyInFlight,
                    "a request with this Idempotency-Key is still in flight",
                )
                .header("retry-after", "1"),
            ),
            Ok(Begin::Mismatch) => Flow::Respond(
                Reply::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this Idempotency-Key was used for a different request",
                )
                .details(json!({"key": key})),
            ),
            Ok(Begin::Done(stored)) => match replay(session, &stored).await {
                Ok(()) => Flow::Served,
                Err(_) => Flow::Served, // the client went away; nothing else to do
            },
            Ok(Begin::AlreadyPaid { payment }) => Flow::Respond(
                Reply::new(
                    ErrorCode::IdempotencyAlreadyPaid,
                    "this Idempotency-Key was already paid for; its response was not kept (too large, or lost in a crash), and it is not paid again",
                )
                .details(json!({"key": key, "payment": payment}))
                .header("x-pag0-idempotent-replay", "true"),
            ),
            // A payment for this key was sent and may have been paid (pag0 crashed, or the
            // upstream failed): never pay again; the agent learns which authorization to look for.
            Ok(Begin::InDoubt { nonce }) => Flow::Respond(
                Reply::new(
                    ErrorCode::IdempotencyInDoubt,
                    "the payment made for this Idempotency-Key was sent and its outcome is unknown; it is not paid again",
                )
                .details(json!({"key": key, "nonce": nonce})),
            ),
        }
    }

    /// Captures the response of a paid, claimed request (headers here, body below).
    async fn response_filter(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if ctx.idempotency.claim.is_some()
            && ctx.payment.charge.is_some()
            && resp.status.is_success()
        {
            let headers = resp
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            ctx.idempotency.captured = Some((resp.status.as_u16(), headers));
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        let state = &mut ctx.idempotency;
        if state.captured.is_none() {
            return;
        }
        if let Some(chunk) = body
            && !state.too_large
        {
            if state.body.len() + chunk.len() > MAX_STORED_BODY {
                state.too_large = true;
                state.body = BytesMut::new();
            } else {
                state.body.extend_from_slice(chunk);
            }
        }
        state.complete |= end_of_stream;
    }

    async fn logging(&self, ctx: &mut RequestCtx) {
        let state = std::mem::take(&mut ctx.idempotency);
        let Some(scope) = state.claim else { return };
        match state.outcome {
            Some(KeyOutcome::Paid(payment)) => {
                let kept = match state.captured {
                    Some((status, headers)) if state.complete && !state.too_large => {
                        Some(StoredResponse {
                            status,
                            headers,
                            body: state.body.freeze(),
                        })
                    }
                    _ => None,
                };
                self.records
                    .complete(&scope, &payment, kept.as_ref(), self.window)
                    .await;
            }
            Some(KeyOutcome::InDoubt) => self.records.in_doubt(&scope, self.window).await,
            Some(KeyOutcome::Released) => self.records.release(&scope, true).await,
            None => self.records.release(&scope, false).await,
        }
    }
}
