//! Budget ledger: daily and monthly spend windows per (project, budget pool), exact under
//! concurrency.
//!
//! A paid call first [`Ledger::reserve`]s its amount (right before signing, once the offer is
//! known); the reservation holds budget so concurrent calls cannot overspend. It is
//! [`Ledger::commit`]ted when the paid response succeeded, or [`Ledger::release`]d on any
//! failure. A reservation that is neither (a crashed request) expires after its TTL and its
//! hold is reclaimed. A payment counts in the UTC day and month in which it was reserved.
//!
//! Implementations: [`LocalLedger`] (in-process, the embedded default) and [`RedisLedger`]
//! (Lua scripts on shared keys, so every pag0 instance sees one budget). Both rebuild a
//! window they have no state for from the durable spend journal ([`SpendHistory`]).
//!
//! Amounts are base units (`U256`), never floats.

mod local;
mod redis;
mod window;

use std::fmt;
use std::sync::Arc;

use alloy_primitives::U256;
use async_trait::async_trait;

pub use local::LocalLedger;
pub use redis::{FallbackLedger, RedisLedger};
pub use window::Windows;

/// One budget: a project's spending in one pool (an asset symbol, optionally narrowed to one
/// network, e.g. `USDC` or `USDC@eip155:8453`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    pub project: String,
    pub pool: String,
}

impl BudgetKey {
    pub fn new(project: impl Into<String>, pool: impl Into<String>) -> BudgetKey {
        BudgetKey {
            project: project.into(),
            pool: pool.into(),
        }
    }
}

/// Window limits in base units; `None` = no limit for that window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub daily: Option<U256>,
    pub monthly: Option<U256>,
}

/// Committed and held (reserved, not yet committed) amounts of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowUsage {
    pub spent: U256,
    pub held: U256,
}

impl WindowUsage {
    /// What is left under `limit` once spent and held amounts are counted.
    pub fn remaining(&self, limit: U256) -> U256 {
        limit.saturating_sub(self.spent.saturating_add(self.held))
    }
}

/// Usage of the current day and month of one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub windows: Windows,
    pub day: WindowUsage,
    pub month: WindowUsage,
}

/// Budget held for one payment until it is committed or released.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// Unique id (also the spend journal row id).
    pub id: String,
    pub key: BudgetKey,
    pub amount: U256,
    /// The windows the amount counts in (those of the reservation time).
    pub windows: Windows,
    /// Unix seconds of the reservation.
    pub reserved_at: u64,
    /// Unix seconds after which an uncommitted hold is reclaimed.
    pub expires_at: u64,
    /// Usage right after this reservation (for `X-Pag0-Budget-Remaining`).
    pub usage: Usage,
    /// Taken from the in-process fallback because the shared ledger was unavailable.
    pub fallback: bool,
}

/// Which window would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Daily,
    Monthly,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Monthly => "monthly",
        }
    }
}

/// A reservation refused because it would exceed a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub window: Window,
    pub limit: U256,
    /// Spent plus held in that window before this request.
    pub used: U256,
    pub amount: U256,
}

/// The ledger could not answer (e.g. Redis is down). Never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("budget ledger unavailable: {0}")]
pub struct LedgerError(pub String);

/// Reserve, commit and release budget. Every method is atomic with respect to the others,
/// across every pag0 instance sharing the implementation's state.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Holds `amount` in the day and month of `now` if both stay within `limits`.
    async fn reserve(
        &self,
        key: &BudgetKey,
        amount: U256,
        limits: Limits,
        now: u64,
    ) -> Result<Result<Reservation, Denial>, LedgerError>;

    /// Turns the hold into spending. Idempotent; counts the amount even if the hold expired.
    async fn commit(&self, reservation: &Reservation) -> Result<(), LedgerError>;

    /// Drops the hold (nothing was spent). Idempotent.
    async fn release(&self, reservation: &Reservation) -> Result<(), LedgerError>;

    /// Spent and held amounts of the windows of `now`.
    async fn usage(&self, key: &BudgetKey, now: u64) -> Result<Usage, LedgerError>;

    /// Gives a committed payment's amount back to its day and month (it never settled; the
    /// journal has its correction). Idempotent per payment `id`.
    async fn refund(
        &self,
        key: &BudgetKey,
        day: &str,
        month: &str,
        amount: U256,
        id: &str,
    ) -> Result<(), LedgerError>;

    /// Short name for logs and `/health` (`memory`, `redis`).
    fn kind(&self) -> &'static str;
}

/// Where committed spending is durably recorded: the spend journal. Ledgers read it to
/// rebuild a window they hold no state for (startup, Redis lost its keys).
#[async_trait]
pub trait SpendHistory: Send + Sync {
    /// Total committed amounts of `key` counted in `windows`' day and month.
    async fn window_totals(
        &self,
        key: &BudgetKey,
        windows: &Windows,
    ) -> Result<(U256, U256), String>;

    /// Payments of `windows`' month given back by a correction (never settled): (id, day).
    /// Call it after [`Self::window_totals`]: a window rebuilt from those totals already
    /// counts them back, so a later refund of the same payment must skip it.
    async fn corrected(
        &self,
        _key: &BudgetKey,
        _windows: &Windows,
    ) -> Result<Vec<(String, String)>, String> {
        Ok(Vec::new())
    }

    /// Holds of payments in doubt counted in `windows`' month (sent, outcome unknown).
    async fn pending_holds(
        &self,
        _key: &BudgetKey,
        _windows: &Windows,
    ) -> Result<Vec<PendingHold>, String> {
        Ok(Vec::new())
    }
}

/// Budget a ledger holds again when it rebuilds a window: a payment whose outcome is not known
/// (an in-doubt payment intent), held until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingHold {
    /// The reservation id it was paid under.
    pub id: String,
    pub amount: U256,
    /// The day (`YYYY-MM-DD`) and month (`YYYY-MM`) it counts in.
    pub day: String,
    pub month: String,
    /// Unix seconds: when its authorization can no longer be settled (plus a margin).
    pub expires_at: u64,
}

/// A history with nothing in it (unit tests, or a project that never paid).
#[derive(Debug, Default)]
pub struct NoHistory;

#[async_trait]
impl SpendHistory for NoHistory {
    async fn window_totals(&self, _: &BudgetKey, _: &Windows) -> Result<(U256, U256), String> {
        Ok((U256::ZERO, U256::ZERO))
    }
}

/// A reservation id: 128 bits as hex, the first 48 the creation time in unix milliseconds and
/// the other 80 random (like a UUIDv7). Ids sort by time, so the journal's primary-key index
/// grows at its end instead of at random pages (fewer pages written per journal batch).
pub fn new_reservation_id() -> String {
    let millis = crate::clock::unix_millis();
    let mut bytes: [u8; 16] = rand::random();
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    hex::encode(bytes)
}

/// Checks `amount` against `limits` given the current usage.
pub(crate) fn check(
    day: &WindowUsage,
    month: &WindowUsage,
    amount: U256,
    limits: Limits,
) -> Result<(), Denial> {
    for (window, usage, limit) in [
        (Window::Daily, day, limits.daily),
        (Window::Monthly, month, limits.monthly),
    ] {
        if let Some(limit) = limit {
            let used = usage.spent.saturating_add(usage.held);
            if used.saturating_add(amount) > limit {
                return Err(Denial {
                    window,
                    limit,
                    used,
                    amount,
                });
            }
        }
    }
    Ok(())
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} budget exceeded: {} used + {} requested > {} limit",
            self.window.as_str(),
            self.used,
            self.amount,
            self.limit
        )
    }
}

/// A shareable ledger.
pub type SharedLedger = Arc<dyn Ledger>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_are_unique_and_sort_by_creation_time() {
        let first = new_reservation_id();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let later: Vec<String> = (0..100).map(|_| new_reservation_id()).collect();
        assert!(later.iter().all(|id| id.len() == 32 && *id > first));
        let unique: std::collections::HashSet<&String> = later.iter().collect();
        assert_eq!(unique.len(), later.len());
    }
}
