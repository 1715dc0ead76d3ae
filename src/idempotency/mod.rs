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

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use bytes::Bytes;

use crate::store::{IntentState, Store};
use crate::x402::NonceGuard;

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

/// A key claimed by a request, and which record store holds the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub scope: Scope,
    /// In the fallback store (the database) because Redis was unreachable.
    fallback: bool,
}

/// What a new request with a key finds.
#[derive(Debug)]
pub enum Begin {
    /// First use (or the key is free again): the caller proceeds and later completes or
    /// releases the claim.
    New(Claim),
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
    /// Removes `owner`'s record if it is `running` or `paying` (nothing was paid).
    async fn remove(&self, scope: &Scope, owner: &str) -> Result<(), Unavailable>;
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
    /// Where claims go while `records` (Redis) is unreachable, with `redis_down: in_process`
    /// (the database); without one such keyed requests are not paid.
    fallback: Option<Arc<dyn RecordStore>>,
    payments: Arc<Store>,
    /// This process (random per start).
    owner: String,
    /// The record store may lose records (Redis): a new claim is checked against the payments
    /// made for the key.
    check_payments_on_new: bool,
    /// The heartbeat loop runs (started by the first claim).
    beating: tokio::sync::OnceCell<()>,
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
        fallback: Option<Arc<dyn RecordStore>>,
        payments: Arc<Store>,
        check_payments_on_new: bool,
        upkeep: tokio::runtime::Handle,
    ) -> Idempotency {
        let id: [u8; 8] = rand::random();
        Idempotency {
            records,
            fallback,
            payments,
            owner: hex::encode(id),
            check_payments_on_new,
            beating: tokio::sync::OnceCell::new(),
            upkeep,
        }
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The record store a claim is in.
    fn store(&self, fallback: bool) -> &dyn RecordStore {
        match (&self.fallback, fallback) {
            (Some(f), true) => f.as_ref(),
            _ => self.records.as_ref(),
        }
    }

    /// Every store this process keeps claims in.
    fn stores(&self) -> impl Iterator<Item = &Arc<dyn RecordStore>> {
        std::iter::once(&self.records).chain(self.fallback.as_ref())
    }

    /// Writes this process's heartbeat to every store; fails if none took it.
    async fn beat(&self) -> Result<(), Unavailable> {
        let mut result = Err(Unavailable("no record store".into()));
        for store in self.stores() {
            match store.heartbeat(&self.owner, now_ms()).await {
                Ok(()) => result = Ok(()),
                Err(e) if result.is_err() => result = Err(e),
                Err(_) => {}
            }
        }
        result
    }

    /// The first claim makes this process known as alive, then keeps it so.
    async fn ensure_beating(self: &Arc<Self>) -> Result<(), Unavailable> {
        self.beating
            .get_or_try_init(|| async {
                self.beat().await?;
                let me = Arc::downgrade(self);
                self.upkeep.spawn(async move {
                    let mut purged = std::time::Instant::now();
                    loop {
                        tokio::time::sleep(HEARTBEAT_EVERY).await;
                        let Some(me) = me.upgrade() else { return };
                        if let Err(e) = me.beat().await {
                            log::warn!("idempotency heartbeat: {e}");
                        }
                        if purged.elapsed() >= Duration::from_secs(60) {
                            for store in me.stores() {
                                store.purge(now_ms()).await;
                            }
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
        if self.beating.initialized() {
            for store in self.stores() {
                store.retire(&self.owner).await;
            }
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
        match self.begin_in(false, scope, fingerprint, window).await {
            Err(e) if self.fallback.is_some() => {
                log::warn!(project = scope.project.as_str(); "{e}; the claim goes to the database (redis_down: in_process)");
                self.begin_in(true, scope, fingerprint, window).await
            }
            result => result,
        }
    }

    async fn begin_in(
        &self,
        fallback: bool,
        scope: &Scope,
        fingerprint: &str,
        window: Duration,
    ) -> Result<Begin, Unavailable> {
        let records = self.store(fallback);
        let claim = Claim {
            scope: scope.clone(),
            fallback,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let expires_at = now_ms() + millis(window);
            let Some(seen) = records
                .claim(scope, fingerprint, &self.owner, expires_at)
                .await?
            else {
                return self.claimed(claim, window).await;
            };
            if seen.fingerprint != fingerprint {
                return Ok(Begin::Mismatch);
            }
            match self.judge(records, &seen).await? {
                Judged::Answer(begin) => return Ok(begin),
                Judged::Free => {
                    if records
                        .take_over(scope, &seen, &self.owner, expires_at)
                        .await?
                    {
                        return self.claimed(claim, window).await;
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
                    let _ = records.update(scope, None, change).await;
                    return Ok(Begin::AlreadyPaid { payment });
                }
            }
        }
        Ok(Begin::InFlight)
    }

    /// A fresh claim: where records can be lost (Redis, or the fallback store that missed
    /// the claims made in Redis), the intent log may still know a payment made for the key.
    async fn claimed(&self, claim: Claim, window: Duration) -> Result<Begin, Unavailable> {
        if !self.check_payments_on_new && !claim.fallback {
            return Ok(Begin::New(claim));
        }
        let records = self.store(claim.fallback);
        let scope = &claim.scope;
        let since = now_ms() - millis(window.max(IN_DOUBT_KEY));
        let found = self
            .payments
            .key_payment(&scope.project, &scope.key, since)
            .await
            .map_err(|e| Unavailable(e.to_string()));
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                let _ = records.remove(scope, &self.owner).await;
                return Err(e);
            }
        };
        let Some(p) = found else {
            return Ok(Begin::New(claim));
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
        records.update(scope, None, change).await?;
        Ok(begin)
    }

    /// What an existing record with the same fingerprint means for a new request.
    async fn judge(&self, records: &dyn RecordStore, seen: &Record) -> Result<Judged, Unavailable> {
        let answer = |b| Ok(Judged::Answer(b));
        match seen.state {
            RecordState::Paid => match seen.response.as_deref().and_then(StoredResponse::decode) {
                Some(r) => answer(Begin::Done(Arc::new(r))),
                None => answer(Begin::AlreadyPaid {
                    payment: seen.payment.clone().unwrap_or_default(),
                }),
            },
            RecordState::Running => {
                if self.owner_alive(records, &seen.owner).await? {
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
                            && self.owner_alive(records, &seen.owner).await?
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

    async fn owner_alive(
        &self,
        records: &dyn RecordStore,
        owner: &str,
    ) -> Result<bool, Unavailable> {
        if owner == self.owner {
            return Ok(true);
        }
        records.alive(owner, now_ms()).await
    }

    /// Before a payment header for `scope` leaves pag0: the record names the payment, so a
    /// crash from here on leaves the key in doubt, never free. An error: do not send it.
    pub async fn paying(
        &self,
        claim: &Claim,
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
            .store(claim.fallback)
            .update(&claim.scope, Some(&self.owner), change)
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
        claim: &Claim,
        payment: &str,
        response: Option<&StoredResponse>,
        window: Duration,
    ) {
        let encoded = response.map(StoredResponse::encode);
        let change = Change {
            state: RecordState::Paid,
            payment: Some(payment),
            nonce: None,
            response: encoded.as_deref(),
            expires_at: now_ms() + millis(window),
        };
        let store = self.store(claim.fallback);
        if let Err(e) = store.update(&claim.scope, Some(&self.owner), change).await {
            // The payment's intent still says it was paid: a retry is refused, not paid.
            log::warn!(project = claim.scope.project.as_str(); "cannot keep the paid response of an Idempotency-Key: {e}");
        }
    }

    /// The request ended with its payment's outcome unknown: the key is refused (in doubt)
    /// until the intent log proves it paid or unpaid.
    pub async fn in_doubt(&self, claim: &Claim, window: Duration) {
        let change = Change {
            state: RecordState::InDoubt,
            payment: None,
            nonce: None,
            response: None,
            expires_at: now_ms() + millis(window.max(IN_DOUBT_KEY)),
        };
        let store = self.store(claim.fallback);
        if let Err(e) = store.update(&claim.scope, Some(&self.owner), change).await {
            // Left `paying`: once this process is gone it reads as in doubt all the same.
            log::warn!(project = claim.scope.project.as_str(); "cannot mark an Idempotency-Key in doubt: {e}");
        }
    }

    /// Nothing was paid: the key is free again.
    pub async fn release(&self, claim: &Claim) {
        let store = self.store(claim.fallback);
        if let Err(e) = store.remove(&claim.scope, &self.owner).await {
            log::debug!(
                "cannot free an Idempotency-Key (it is taken over once this process is gone): {e}"
            );
        }
    }
}

/// The relay replay guard in `primary` (Redis), or in `fallback` (the database) while
/// `primary` is unreachable (`redis_down: in_process`).
pub struct FallbackGuard {
    pub primary: Arc<dyn NonceGuard>,
    pub fallback: Arc<dyn NonceGuard>,
}

#[async_trait]
impl NonceGuard for FallbackGuard {
    async fn claim(
        &self,
        payer: Address,
        nonce: B256,
        until: u64,
        now: u64,
    ) -> Result<bool, String> {
        match self.primary.claim(payer, nonce, until, now).await {
            Err(e) => {
                log::warn!("relay replay guard: {e}; using the database (redis_down: in_process)");
                self.fallback.claim(payer, nonce, until, now).await
            }
            claimed => claimed,
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
