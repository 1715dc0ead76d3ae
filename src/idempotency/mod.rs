//! Idempotency records: a request with an `Idempotency-Key` is paid at most once, by any pag0
//! process sharing the store, across restarts and crashes.
//!
//! A record moves through these states (one per project and key):
//!
//! ```text
//! running ──▶ paying ──▶ paid       the response is replayed (or, too large to keep, reported)
//!    │           ├─────▶ in_doubt   the payment was sent, its outcome is unknown
//!    └───────────┴─────▶ (removed)  nothing was paid: the key is free again
//! ```
//!
//! The record says which payment was made for the key (its intent id); the payment's own
//! durable record (the intent log) is the truth about whether it was paid. A process that dies
//! leaves its claims behind: every process writes a heartbeat, and a claim whose owner stopped
//! beating is taken over when nothing was paid, or reported in doubt when a payment may have
//! left (until the intent log proves it paid or unpaid).
//!
//! Where records live: [`sql::SqlRecords`] (SQLite, PostgreSQL: durable, the default) or
//! [`redis::RedisRecords`] (shared and fast; a record Redis lost is found again from the intent
//! log, so a lost record never means a second payment).

pub mod redis;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::{IntentState, Store};

/// A process whose heartbeat is older than this is dead: its claims may be taken over.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// How often a process writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// An in-doubt key is refused at least this long after its payment became in doubt.
pub const IN_DOUBT_KEY: Duration = Duration::from_secs(86_400);

/// A project's `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub project: String,
    pub key: String,
}

/// A paid response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl StoredResponse {
    /// `status u16 | header count u16 | (name len u16, name, value len u32, value)* | body`,
    /// big-endian: the same bytes in SQL and in Redis.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(4 + size + self.body.len());
        out.extend_from_slice(&self.status.to_be_bytes());
        let headers: Vec<_> = self
            .headers
            .iter()
            .filter(|(n, v)| n.len() <= u16::MAX as usize && v.len() <= u32::MAX as usize)
            .take(u16::MAX as usize)
            .collect();
        out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
        for (name, value) in headers {
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// The response [`encode`](Self::encode) wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<StoredResponse> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = b.split_at_checked(n)?;
            *b = rest;
            Some(head)
        }
        let mut b = bytes;
        let status = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let count = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let n = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?) as usize;
            let name = std::str::from_utf8(take(&mut b, n)?).ok()?.to_string();
            let v = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
            headers.push((name, take(&mut b, v)?.to_vec()));
        }
        Some(StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(b),
        })
    }
}

/// What a new request with a key finds.
#[derive(Debug)]
pub enum Begin {
    /// First use (or the key is free again): the caller proceeds and later completes or
    /// releases the key.
    New,
    /// The first request with this key is still running (in this or another process).
    InFlight,
    /// The key was used for a different request (method, URL or body).
    Mismatch,
    /// The first request's paid response.
    Done(Arc<StoredResponse>),
    /// The key was paid for (payment `payment`), but its response was not kept (too large, or
    /// lost with the process that had it).
    AlreadyPaid { payment: String },
    /// A payment for this key was sent and its outcome is unknown.
    InDoubt { nonce: String },
}

/// The record store could not be reached: nothing may be paid for the key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency records unavailable: {0}")]
pub struct Unavailable(pub String);

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Running,
    Paying,
    InDoubt,
    Paid,
}

impl RecordState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Running => "running",
            RecordState::Paying => "paying",
            RecordState::InDoubt => "in_doubt",
            RecordState::Paid => "paid",
        }
    }

    pub fn parse(s: &str) -> Option<RecordState> {
        Some(match s {
            "running" => RecordState::Running,
            "paying" => RecordState::Paying,
            "in_doubt" => RecordState::InDoubt,
            "paid" => RecordState::Paid,
            _ => return None,
        })
    }
}

/// A record as a [`RecordStore`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Hex SHA-256 of the request (see the `idempotency` stage).
    pub fingerprint: String,
    pub owner: String,
    pub state: RecordState,
    /// The payment's intent id, once one was signed for the key.
    pub payment: Option<String>,
    pub nonce: Option<String>,
    /// [`StoredResponse::encode`]d, in state `paid` when it was kept.
    pub response: Option<Vec<u8>>,
}

/// A change to an existing record.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub state: RecordState,
    /// Kept as it was when `None`.
    pub payment: Option<&'a str>,
    pub nonce: Option<&'a str>,
    /// Replaces the stored response (`None` clears it).
    pub response: Option<&'a [u8]>,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// Where records and heartbeats live. Every call is atomic on its own.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Creates `scope`'s record (`running`, owned by `owner`) unless one that has not expired
    /// exists; returns that one instead.
    async fn claim(
        &self,
        scope: &Scope,
        fingerprint: &str,
        owner: &str,
        expires_at: i64,
    ) -> Result<Option<Record>, Unavailable>;
    /// Replaces `seen` (if owner, state and payment are unchanged) by a new claim of `owner`.
    async fn take_over(
        &self,
        scope: &Scope,
        seen: &Record,
        owner: &str,
        expires_at: i64,
    ) -> Result<bool, Unavailable>;
    /// Applies `change` if the record exists and (with `owner`) is still that owner's.
    async fn update(
        &self,
        scope: &Scope,
        owner: Option<&str>,
        change: Change<'_>,
    ) -> Result<bool, Unavailable>;
    /// Removes `owner`'s record if it is `running` (no payment was signed for it), or also
    /// `paying` with `released` (its payment is proved not made).
    async fn remove(&self, scope: &Scope, owner: &str, released: bool) -> Result<(), Unavailable>;
    /// Says `owner` is alive now (unix milliseconds).
    async fn heartbeat(&self, owner: &str, now: i64) -> Result<(), Unavailable>;
    /// Whether `owner` wrote a heartbeat within [`DEAD_AFTER`] of `now`.
    async fn alive(&self, owner: &str, now: i64) -> Result<bool, Unavailable>;
    /// `owner` stops (graceful shutdown): its heartbeat goes at once.
    async fn retire(&self, owner: &str);
    /// Drops records that expired before `now`.
    async fn purge(&self, now: i64);
}

/// The idempotency service the stages use: the record store, the intent log behind it and
/// this process's identity.
pub struct Idempotency {
    records: Arc<dyn RecordStore>,
    payments: Arc<Store>,
    /// This process (random per start).
    owner: String,
    /// The record store may lose records (Redis): a new claim is checked against the payments
    /// made for the key.
    check_payments_on_new: bool,
    /// The heartbeat loop runs (started by the first claim).
    beating: tokio::sync::OnceCell<()>,
    /// A graceful stop retired this process: the heartbeat loop ends.
    retired: std::sync::atomic::AtomicBool,
    /// Keys whose claim a request of this process holds right now: a record this process
    /// owns but no longer runs (its request ended without a word, a reply was lost) is stale.
    in_flight: std::sync::Mutex<std::collections::HashSet<Scope>>,
    /// Where the heartbeat loop runs (outlives Pingora's runtimes).
    upkeep: tokio::runtime::Handle,
}

/// Attempts to settle a contended claim before answering "in flight".
const CLAIM_ATTEMPTS: usize = 4;

fn now_ms() -> i64 {
    crate::clock::unix_millis() as i64
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Idempotency {
    pub fn new(
        records: Arc<dyn RecordStore>,
        payments: Arc<Store>,
        check_payments_on_new: bool,
        upkeep: tokio::runtime::Handle,
    ) -> Idempotency {
        let id: [u8; 8] = rand::random();
        Idempotency {
            records,
            payments,
            owner: hex::encode(id),
            check_payments_on_new,
            beating: tokio::sync::OnceCell::new(),
            retired: Default::default(),
            in_flight: Default::default(),
            upkeep,
        }
    }

    /// The first claim makes this process known as alive, then keeps it so.
    async fn ensure_beating(self: &Arc<Self>) -> Result<(), Unavailable> {
        self.beating
            .get_or_try_init(|| async {
                self.records.heartbeat(&self.owner, now_ms()).await?;
                let me = Arc::downgrade(self);
                self.upkeep.spawn(async move {
                    let mut purged = std::time::Instant::now();
                    loop {
                        tokio::time::sleep(HEARTBEAT_EVERY).await;
                        let Some(me) = me.upgrade() else { return };
                        if me.retired.load(std::sync::atomic::Ordering::Acquire) {
                            return;
                        }
                        if let Err(e) = me.records.heartbeat(&me.owner, now_ms()).await {
                            log::warn!("idempotency heartbeat: {e}");
                        }
                        if purged.elapsed() >= Duration::from_secs(60) {
                            me.records.purge(now_ms()).await;
                            purged = std::time::Instant::now();
                        }
                    }
                });
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Graceful stop: other processes may take this one's claims over at once.
    pub async fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        if self.beating.initialized() {
            self.records.retire(&self.owner).await;
        }
    }

    /// Claims `scope` for a request with `fingerprint`, or says what the key already holds.
    pub async fn begin(
        self: &Arc<Self>,
        scope: &Scope,
        fingerprint: &str,
        window: Duration,
    ) -> Result<Begin, Unavailable> {
        self.ensure_beating().await?;
        for _ in 0..CLAIM_ATTEMPTS {
            let expires_at = now_ms() + millis(window);
            let Some(seen) = self
                .records
                .claim(scope, fingerprint, &self.owner, expires_at)
                .await?
            else {
                return self.claimed(scope, window).await;
            };
            if seen.fingerprint != fingerprint {
                return Ok(Begin::Mismatch);
            }
            match self.judge(scope, &seen).await? {
                Judged::Answer(begin) => return Ok(begin),
                Judged::Free => {
                    if self
                        .records
                        .take_over(scope, &seen, &self.owner, expires_at)
                        .await?
                    {
                        return self.claimed(scope, window).await;
                    }
                }
                Judged::Paid(payment) => {
                    // Remembered as paid: later retries need not ask the intent log.
                    let change = Change {
                        state: RecordState::Paid,
                        payment: Some(&payment),
                        nonce: None,
                        response: None,
                        expires_at,
                    };
                    let _ = self.records.update(scope, None, change).await;
                    return Ok(Begin::AlreadyPaid { payment });
                }
            }
        }
        Ok(Begin::InFlight)
    }

    /// A fresh claim: where records can be lost, the intent log may still know a payment
    /// made for the key.
    async fn claimed(&self, scope: &Scope, window: Duration) -> Result<Begin, Unavailable> {
        if !self.check_payments_on_new {
            return Ok(self.hold(scope));
        }
        let since = now_ms() - millis(window.max(IN_DOUBT_KEY));
        let found = self
            .payments
            .key_payment(&scope.project, &scope.key, since)
            .await
            .map_err(|e| Unavailable(e.to_string()));
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                let _ = self.records.remove(scope, &self.owner, false).await;
                return Err(e);
            }
        };
        let Some(p) = found else {
            return Ok(self.hold(scope));
        };
        let (state, begin) = match p.state {
            IntentState::Committed => (
                RecordState::Paid,
                Begin::AlreadyPaid {
                    payment: p.id.clone(),
                },
            ),
            _ => (
                RecordState::InDoubt,
                Begin::InDoubt {
                    nonce: p.nonce.clone(),
                },
            ),
        };
        let change = Change {
            state,
            payment: Some(&p.id),
            nonce: Some(&p.nonce),
            response: None,
            expires_at: now_ms() + millis(window.max(IN_DOUBT_KEY)),
        };
        self.records.update(scope, None, change).await?;
        Ok(begin)
    }

    /// What an existing record with the same fingerprint means for a new request.
    async fn judge(&self, scope: &Scope, seen: &Record) -> Result<Judged, Unavailable> {
        let answer = |b| Ok(Judged::Answer(b));
        match seen.state {
            RecordState::Paid => match seen.response.as_deref().and_then(StoredResponse::decode) {
                Some(r) => answer(Begin::Done(Arc::new(r))),
                None => answer(Begin::AlreadyPaid {
                    payment: seen.payment.clone().unwrap_or_default(),
                }),
            },
            RecordState::Running => {
                if self.owner_alive(scope, &seen.owner).await? {
                    answer(Begin::InFlight)
                } else {
                    Ok(Judged::Free)
                }
            }
            RecordState::Paying | RecordState::InDoubt => {
                let nonce = seen.nonce.clone().unwrap_or_default();
                let Some(payment) = seen.payment.clone() else {
                    return answer(Begin::InDoubt { nonce });
                };
                // The payment's own record decides; unreadable means in doubt.
                let state = self.payments.intent_state(&payment).await.ok().flatten();
                match state {
                    Some(IntentState::Committed) => Ok(Judged::Paid(payment)),
                    Some(IntentState::Released) => Ok(Judged::Free),
                    Some(IntentState::InDoubt | IntentState::Unresolved) => {
                        answer(Begin::InDoubt { nonce })
                    }
                    Some(IntentState::Sent) | None => {
                        if seen.state == RecordState::Paying
                            && self.owner_alive(scope, &seen.owner).await?
                        {
                            answer(Begin::InFlight)
                        } else {
                            answer(Begin::InDoubt { nonce })
                        }
                    }
                }
            }
        }
    }

    async fn owner_alive(&self, scope: &Scope, owner: &str) -> Result<bool, Unavailable> {
        if owner == self.owner {
            return Ok(self.holding(scope));
        }
        self.records.alive(owner, now_ms()).await
    }

    /// A fresh claim of this process's request.
    fn hold(&self, scope: &Scope) -> Begin {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.clone());
        Begin::New
    }

    /// Whether a request of this process runs with `scope` claimed.
    fn holding(&self, scope: &Scope) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(scope)
    }

    /// The request that claimed `scope` ended.
    fn end(&self, scope: &Scope) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(scope);
    }

    /// Before a payment header for `scope` leaves pag0: the record names the payment, so a
    /// crash from here on leaves the key in doubt, never free. An error: do not send it.
    pub async fn paying(
        &self,
        scope: &Scope,
        payment: &str,
        nonce: &str,
    ) -> Result<(), Unavailable> {
        let change = Change {
            state: RecordState::Paying,
            payment: Some(payment),
            nonce: Some(nonce),
            response: None,
            expires_at: now_ms() + millis(IN_DOUBT_KEY),
        };
        if self
            .records
            .update(scope, Some(&self.owner), change)
            .await?
        {
            Ok(())
        } else {
            Err(Unavailable(
                "this request's claim on its Idempotency-Key was lost".into(),
            ))
        }
    }

    /// The key was paid for (`payment`): its response is replayed until `window` ends, or
    /// reported paid when it was not kept (`None`).
    pub async fn complete(
        &self,
        scope: &Scope,
        payment: &str,
        response: Option<&StoredResponse>,
        window: Duration,
    ) {
        self.end(scope);
        let encoded = response.map(StoredResponse::encode);
        let change = Change {
            state: RecordState::Paid,
            payment: Some(payment),
            nonce: None,
            response: encoded.as_deref(),
            expires_at: now_ms() + millis(window),
        };
        if let Err(e) = self.records.update(scope, Some(&self.owner), change).await {
            // The payment's intent still says it was paid: a retry is refused, not paid.
            log::warn!(project = scope.project.as_str(); "cannot keep the paid response of an Idempotency-Key: {e}");
        }
    }

    /// The request ended with its payment's outcome unknown: the key is refused (in doubt)
    /// until the intent log proves it paid or unpaid.
    pub async fn in_doubt(&self, scope: &Scope, window: Duration) {
        self.end(scope);
        let change = Change {
            state: RecordState::InDoubt,
            payment: None,
            nonce: None,
            response: None,
            expires_at: now_ms() + millis(window.max(IN_DOUBT_KEY)),
        };
        if let Err(e) = self.records.update(scope, Some(&self.owner), change).await {
            // Left `paying`: once this process is gone it reads as in doubt all the same.
            log::warn!(project = scope.project.as_str(); "cannot mark an Idempotency-Key in doubt: {e}");
        }
    }

    /// Nothing was paid (`released`: the payment signed for it is proved not made): the key
    /// is free again.
    pub async fn release(&self, scope: &Scope, released: bool) {
        self.end(scope);
        if let Err(e) = self.records.remove(scope, &self.owner, released).await {
            log::debug!(
                "cannot free an Idempotency-Key (it is taken over once this process is gone): {e}"
            );
        }
    }
}

/// How [`Idempotency::judge`] sees a record.
enum Judged {
    Answer(Begin),
    /// Nothing was paid and nobody runs it: take it over.
    Free,
    /// The intent log says its payment was made.
    Paid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip_and_garbage_is_refused() {
        let r = StoredResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-raw".into(), vec![0xff, 0, 1]),
            ],
            body: Bytes::from_static(b"{\"paid\":true}"),
        };
        let bytes = r.encode();
        assert_eq!(StoredResponse::decode(&bytes), Some(r));
        assert_eq!(StoredResponse::decode(&bytes[..5]), None, "cut in a header");
        assert_eq!(StoredResponse::decode(b"\x00"), None);
        let empty = StoredResponse {
            status: 204,
            headers: vec![],
            body: Bytes::new(),
        };
        assert_eq!(StoredResponse::decode(&empty.encode()), Some(empty));
    }
}
