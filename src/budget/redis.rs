//! Redis ledger: reserve, commit and release are single Lua scripts over per-window hashes,
//! so every pag0 instance sharing the Redis sees one exact budget.
//!
//! Keys of one budget (`{…}` is a cluster hash tag: all of them live in one slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:budget:{project/pool}:d:YYYY-MM-DD` | hash | `spent`, `held`, `seeded` of a UTC day |
//! | `…:m:YYYY-MM` | hash | the same for the month |
//! | `…:holds` | hash | reservation id → `amount day month` |
//! | `…:holds:exp` | zset | reservation id by expiry (reclaimed by the next script) |
//! | `…:c:YYYY-MM-DD` | hash | ids committed for reservations of that day (commit is idempotent) |
//!
//! Amounts are decimal strings with arbitrary-precision arithmetic in Lua (`bignum.lua`).
//! Window keys expire two days after their window ends. A window without `seeded` (new, or
//! Redis lost it) is first rebuilt from the spend journal.
//!
//! Limit: a reservation held while Redis loses its data (flush, restart without persistence)
//! is forgotten; its payment is still counted when it commits, so such an event can let
//! through at most the amounts in flight at that moment.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crate::redis_client::RedisConn;
use alloy_primitives::U256;
use async_trait::async_trait;
use once_cell::sync::Lazy;

use crate::redis_client::LazyRedis;
use redis::{Script, Value};

use super::{
    BudgetKey, Denial, Ledger, LedgerError, Limits, LocalLedger, Reservation, SpendHistory, Usage,
    Window, WindowUsage, Windows, new_reservation_id,
};

const BIGNUM: &str = include_str!("lua/bignum.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{BIGNUM}\n{body}"))
}

static RESERVE: Lazy<Script> = Lazy::new(|| script(include_str!("lua/reserve.lua")));
static COMMIT: Lazy<Script> = Lazy::new(|| script(include_str!("lua/commit.lua")));
static RELEASE: Lazy<Script> = Lazy::new(|| script(include_str!("lua/release.lua")));
static SEED: Lazy<Script> = Lazy::new(|| script(include_str!("lua/seed.lua")));
static USAGE: Lazy<Script> = Lazy::new(|| script(include_str!("lua/usage.lua")));
static REFUND: Lazy<Script> = Lazy::new(|| script(include_str!("lua/refund.lua")));
/// A window's refunded payment ids (`d` or `m` window label), beside the window.
fn refunds_key(prefix: &str, kind: &str, label: &str) -> String {
    format!("{prefix}:refunded:{kind}:{label}")
}

/// Refunded payment ids are remembered this long (longer than any month window).
const REFUNDED_IDS_SECONDS: u64 = 40 * 86_400;

/// Window keys live this long after their window ended (late commits still find them).
const KEY_GRACE_SECONDS: u64 = 2 * 86_400;
/// Most commits kept in memory while Redis is unreachable.
pub const MAX_PENDING_COMMITS: usize = 1_000_000;

/// A budget ledger on Redis.
pub struct RedisLedger {
    redis: LazyRedis,
    prefix: String,
    reservation_ttl: Duration,
    history: Arc<dyn SpendHistory>,
    /// Commits that could not reach Redis; retried by [`RedisLedger::maintain`].
    pending: Mutex<Vec<Reservation>>,
}

struct Keys {
    prefix: String,
    day: String,
    month: String,
    holds: String,
    expiry: String,
    committed: String,
}

impl RedisLedger {
    /// `url` is `redis://…`; nothing is connected until first use.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        reservation_ttl: Duration,
        history: Arc<dyn SpendHistory>,
    ) -> Result<RedisLedger, String> {
        let redis = LazyRedis::open(url, timeout)?;
        Ok(RedisLedger {
            redis,
            prefix: prefix.to_string(),
            reservation_ttl,
            history,
            pending: Mutex::new(Vec::new()),
        })
    }

    fn keys(&self, key: &BudgetKey, w: &Windows) -> Keys {
        let prefix = format!("{}:budget:{{{}/{}}}", self.prefix, key.project, key.pool);
        Keys {
            day: format!("{prefix}:d:{}", w.day),
            month: format!("{prefix}:m:{}", w.month),
            holds: format!("{prefix}:holds"),
            expiry: format!("{prefix}:holds:exp"),
            committed: format!("{prefix}:c:{}", w.day),
            prefix,
        }
    }

    async fn connection(&self) -> Result<RedisConn, LedgerError> {
        self.redis.connection().await.map_err(LedgerError)
    }

    async fn run(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Value, LedgerError> {
        let mut con = self.connection().await?;
        match tokio::time::timeout(
            self.redis.timeout(),
            invocation.invoke_async::<Value>(&mut con),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LedgerError(format!("Redis: {e}"))),
            Err(_) => Err(LedgerError("Redis did not answer in time".into())),
        }
    }

    fn ttls(&self, w: &Windows, now: u64) -> (u64, u64) {
        (
            w.day_ends.saturating_sub(now) + KEY_GRACE_SECONDS,
            w.month_ends.saturating_sub(now) + KEY_GRACE_SECONDS,
        )
    }

    /// Rebuilds both windows of `key` from the journal (only where Redis has no state).
    async fn seed(
        &self,
        key: &BudgetKey,
        k: &Keys,
        w: &Windows,
        now: u64,
    ) -> Result<(), LedgerError> {
        let rebuild =
            |e: String| LedgerError(format!("cannot rebuild the budget from the journal: {e}"));
        let (day, month) = self.history.window_totals(key, w).await.map_err(rebuild)?;
        // After the totals (see SpendHistory::corrected).
        let corrected = self.history.corrected(key, w).await.map_err(rebuild)?;
        let (day_ttl, month_ttl) = self.ttls(w, now);
        let mut inv = SEED.prepare_invoke();
        inv.key(&k.day)
            .key(&k.month)
            .key(refunds_key(&k.prefix, "d", &w.day))
            .key(refunds_key(&k.prefix, "m", &w.month))
            .arg(day.to_string())
            .arg(month.to_string())
            .arg(day_ttl)
            .arg(month_ttl);
        for (id, in_day) in corrected {
            inv.arg(id).arg(if in_day == w.day { "1" } else { "0" });
        }
        self.run(inv).await.map(|_| ())
    }

    async fn send_commit(&self, r: &Reservation) -> Result<(), LedgerError> {
        let k = self.keys(&r.key, &r.windows);
        let (day_ttl, month_ttl) = self.ttls(&r.windows, r.reserved_at);
        let mut inv = COMMIT.prepare_invoke();
        inv.key(&k.day)
            .key(&k.month)
            .key(&k.holds)
            .key(&k.expiry)
            .key(&k.committed)
            .arg(r.amount.to_string())
            .arg(&r.id)
            .arg(day_ttl)
            .arg(month_ttl);
        self.run(inv).await.map(|_| ())
    }

    /// Runs a script that answers `{'seed'}` when a window has no state; then rebuilds the
    /// windows from the journal and runs it again. Returns the script's other answer.
    async fn run_seeded<'s>(
        &self,
        key: &BudgetKey,
        k: &Keys,
        windows: &Windows,
        now: u64,
        invocation: impl Fn() -> redis::ScriptInvocation<'s>,
    ) -> Result<Vec<Value>, LedgerError> {
        for _ in 0..SEED_ATTEMPTS {
            let Value::Array(items) = self.run(invocation()).await? else {
                return Err(LedgerError(
                    "unexpected answer from the budget script".into(),
                ));
            };
            if items.first().and_then(text).as_deref() != Some("seed") {
                return Ok(items);
            }
            self.seed(key, k, windows, now).await?;
        }
        Err(LedgerError(
            "the budget windows keep disappearing from Redis".into(),
        ))
    }

    /// Retries commits that could not reach Redis, every `every`, forever (run it in a task).
    pub async fn maintain(&self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let pending = std::mem::take(&mut *self.pending.lock().expect("lock"));
            for r in pending {
                if let Err(e) = self.send_commit(&r).await {
                    log::debug!("budget commit still waits for Redis: {e}");
                    self.pending.lock().expect("lock").push(r);
                }
            }
        }
    }

    /// Commits waiting for Redis.
    pub fn pending_commits(&self) -> usize {
        self.pending.lock().expect("lock").len()
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        let mut con = self.connection().await?;
        match tokio::time::timeout(
            self.redis.timeout(),
            redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(LedgerError(format!("Redis: {e}"))),
            Err(_) => Err(LedgerError("Redis did not answer in time".into())),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn amount(v: Option<&Value>) -> Result<U256, LedgerError> {
    v.and_then(text)
        .and_then(|s| U256::from_str_radix(&s, 10).ok())
        .ok_or_else(|| LedgerError("unexpected answer from the budget script".into()))
}

/// Parses `{'ok', day spent, day held, month spent, month held}`.
fn parse_usage(items: &[Value], windows: &Windows) -> Result<Usage, LedgerError> {
    match items.first().and_then(text).as_deref() {
        Some("ok") => Ok(Usage {
            windows: windows.clone(),
            day: WindowUsage {
                spent: amount(items.get(1))?,
                held: amount(items.get(2))?,
            },
            month: WindowUsage {
                spent: amount(items.get(3))?,
                held: amount(items.get(4))?,
            },
        }),
        _ => Err(LedgerError(
            "unexpected answer from the budget script".into(),
        )),
    }
}

/// How often reserve/usage may find a window unseeded in a row (seeding, then a flush).
const SEED_ATTEMPTS: usize = 3;

#[async_trait]
impl Ledger for RedisLedger {
    async fn reserve(
        &self,
        key: &BudgetKey,
        amount_: U256,
        limits: Limits,
        now: u64,
    ) -> Result<Result<Reservation, Denial>, LedgerError> {
        let windows = Windows::at(now);
        let k = self.keys(key, &windows);
        let (day_ttl, month_ttl) = self.ttls(&windows, now);
        let id = new_reservation_id();
        let expires_at = now + self.reservation_ttl.as_secs().max(1);
        let limit = |l: Option<U256>| l.map_or_else(String::new, |v| v.to_string());
        let reserve = || {
            let mut inv = RESERVE.prepare_invoke();
            inv.key(&k.day)
                .key(&k.month)
                .key(&k.holds)
                .key(&k.expiry)
                .arg(amount_.to_string())
                .arg(limit(limits.daily))
                .arg(limit(limits.monthly))
                .arg(&id)
                .arg(expires_at)
                .arg(now)
                .arg(day_ttl)
                .arg(month_ttl)
                .arg(&windows.day)
                .arg(&windows.month)
                .arg(&k.prefix);
            inv
        };
        let items = self.run_seeded(key, &k, &windows, now, reserve).await?;
        if items.first().and_then(text).as_deref() == Some("deny") {
            let window = match items.get(1).and_then(text).as_deref() {
                Some("daily") => Window::Daily,
                _ => Window::Monthly,
            };
            let limit = match window {
                Window::Daily => limits.daily,
                Window::Monthly => limits.monthly,
            }
            .unwrap_or(U256::MAX);
            return Ok(Err(Denial {
                window,
                limit,
                used: amount(items.get(2))?,
                amount: amount_,
            }));
        }
        Ok(Ok(Reservation {
            id,
            key: key.clone(),
            amount: amount_,
            usage: parse_usage(&items, &windows)?,
            windows,
            reserved_at: now,
            expires_at,
            fallback: false,
        }))
    }

    async fn commit(&self, r: &Reservation) -> Result<(), LedgerError> {
        match self.send_commit(r).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The payment happened: it must be counted once Redis is back.
                let mut pending = self.pending.lock().expect("lock");
                if pending.len() < MAX_PENDING_COMMITS {
                    pending.push(r.clone());
                } else {
                    log::error!(id = r.id.as_str(); "too many budget commits wait for Redis; this one is only in the journal (rebuild the window after the outage)");
                }
                Err(e)
            }
        }
    }

    async fn refund(
        &self,
        key: &BudgetKey,
        day: &str,
        month: &str,
        amount: U256,
        id: &str,
    ) -> Result<(), LedgerError> {
        let prefix = format!("{}:budget:{{{}/{}}}", self.prefix, key.project, key.pool);
        let mut inv = REFUND.prepare_invoke();
        inv.key(format!("{prefix}:d:{day}"))
            .key(format!("{prefix}:m:{month}"))
            .key(refunds_key(&prefix, "d", day))
            .key(refunds_key(&prefix, "m", month))
            .arg(amount.to_string())
            .arg(id)
            .arg(REFUNDED_IDS_SECONDS);
        self.run(inv).await.map(|_| ())
    }

    async fn release(&self, r: &Reservation) -> Result<(), LedgerError> {
        let k = self.keys(&r.key, &r.windows);
        let mut inv = RELEASE.prepare_invoke();
        inv.key(&k.day)
            .key(&k.month)
            .key(&k.holds)
            .key(&k.expiry)
            .arg(r.amount.to_string())
            .arg(&r.id);
        // A release that fails is harmless: the hold expires with its reservation.
        self.run(inv).await.map(|_| ())
    }

    async fn usage(&self, key: &BudgetKey, now: u64) -> Result<Usage, LedgerError> {
        let windows = Windows::at(now);
        let k = self.keys(key, &windows);
        let usage = || {
            let mut inv = USAGE.prepare_invoke();
            inv.key(&k.day)
                .key(&k.month)
                .key(&k.holds)
                .key(&k.expiry)
                .arg(now)
                .arg(&k.prefix);
            inv
        };
        let items = self.run_seeded(key, &k, &windows, now, usage).await?;
        parse_usage(&items, &windows)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The Redis ledger, falling back to an in-process one while Redis is unavailable (only when
/// `budgets.redis_down: in_process`; the default fails paid requests closed instead).
pub struct FallbackLedger {
    pub primary: Arc<RedisLedger>,
    pub fallback: Option<LocalLedger>,
    /// Set while reservations go to the fallback (one outage episode).
    pub degraded: std::sync::atomic::AtomicBool,
}

impl FallbackLedger {
    pub fn new(primary: Arc<RedisLedger>, fallback: Option<LocalLedger>) -> FallbackLedger {
        FallbackLedger {
            primary,
            fallback,
            degraded: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Ledger for FallbackLedger {
    async fn reserve(
        &self,
        key: &BudgetKey,
        amount: U256,
        limits: Limits,
        now: u64,
    ) -> Result<Result<Reservation, Denial>, LedgerError> {
        use std::sync::atomic::Ordering;
        match self.primary.reserve(key, amount, limits, now).await {
            Err(e) => match &self.fallback {
                Some(local) => {
                    if !self.degraded.swap(true, Ordering::SeqCst) {
                        // A new outage: start from the journal, which holds what was spent
                        // through Redis since the last one.
                        local.forget_idle_windows();
                        log::warn!("{e}; using the in-process budget ledger until Redis is back");
                    }
                    Ok(local
                        .reserve(key, amount, limits, now)
                        .await?
                        .map(|r| Reservation {
                            fallback: true,
                            ..r
                        }))
                }
                None => Err(e),
            },
            ok => {
                self.degraded.store(false, Ordering::SeqCst);
                ok
            }
        }
    }

    async fn commit(&self, r: &Reservation) -> Result<(), LedgerError> {
        match (&self.fallback, r.fallback) {
            (Some(local), true) => {
                local.commit(r).await?;
                // Also counted in the shared ledger (now or when Redis is back).
                let _ = self.primary.commit(r).await;
                Ok(())
            }
            _ => self.primary.commit(r).await,
        }
    }

    async fn release(&self, r: &Reservation) -> Result<(), LedgerError> {
        match (&self.fallback, r.fallback) {
            (Some(local), true) => local.release(r).await,
            _ => self.primary.release(r).await,
        }
    }

    async fn usage(&self, key: &BudgetKey, now: u64) -> Result<Usage, LedgerError> {
        self.primary.usage(key, now).await
    }

    async fn refund(
        &self,
        key: &BudgetKey,
        day: &str,
        month: &str,
        amount: U256,
        id: &str,
    ) -> Result<(), LedgerError> {
        if let Some(local) = &self.fallback {
            local.refund(key, day, month, amount, id).await?;
        }
        self.primary.refund(key, day, month, amount, id).await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
