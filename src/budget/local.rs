//! In-process ledger: the embedded default, and the fallback when Redis is down (if allowed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::U256;
use async_trait::async_trait;

use super::{
    BudgetKey, Denial, Ledger, LedgerError, Limits, Reservation, SpendHistory, Usage, WindowUsage,
    Windows, check, new_reservation_id,
};

/// Budgets in this process's memory. A window it has no state for is rebuilt from the spend
/// journal on first use (after a restart, today's and this month's spending is not forgotten).
pub struct LocalLedger {
    history: Arc<dyn SpendHistory>,
    reservation_ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// key → window label → usage. Day labels are `YYYY-MM-DD`, month labels `YYYY-MM`.
    windows: HashMap<BudgetKey, HashMap<String, WindowUsage>>,
    /// Open reservations by id.
    holds: HashMap<String, Hold>,
    /// Reservations whose hold expired before they were committed or released, with the unix
    /// second they are forgotten: a late commit still counts (once).
    expired: HashMap<String, u64>,
    /// Unix second of the last sweep (sweeps run at most once a second).
    last_sweep: u64,
    /// (window label, payment id) of the refunds a window already counts: applied once, or
    /// already subtracted when the window was rebuilt from the journal's corrections.
    refunded: std::collections::HashSet<(String, String)>,
}

/// How long an expired reservation can still be committed late.
const LATE_COMMIT_SECONDS: u64 = 86_400;

struct Hold {
    key: BudgetKey,
    amount: U256,
    day: String,
    month: String,
    expires_at: u64,
}

impl LocalLedger {
    pub fn new(history: Arc<dyn SpendHistory>, reservation_ttl: Duration) -> LocalLedger {
        LocalLedger {
            history,
            reservation_ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// Forgets every window without an open hold, so the next use rebuilds it from the
    /// journal. Called when this ledger takes over from Redis: what was spent through Redis
    /// meanwhile is in the journal, not here.
    pub fn forget_idle_windows(&self) {
        let mut state = self.state.lock().expect("ledger lock");
        state.retain_windows(|_| false);
    }

    /// Makes sure both windows of `key` exist, seeding absent ones from the journal.
    async fn ensure_windows(&self, key: &BudgetKey, w: &Windows) -> Result<(), LedgerError> {
        let missing = {
            let state = self.state.lock().expect("ledger lock");
            state
                .windows
                .get(key)
                .is_none_or(|ws| !ws.contains_key(&w.day) || !ws.contains_key(&w.month))
        };
        if !missing {
            return Ok(());
        }
        let rebuild =
            |e: String| LedgerError(format!("cannot rebuild the budget from the journal: {e}"));
        let (day, month) = self.history.window_totals(key, w).await.map_err(rebuild)?;
        // After the totals: a correction recorded in between is then marked but not
        // subtracted (the budget errs on the side of spending less), never subtracted twice.
        let corrected = self.history.corrected(key, w).await.map_err(rebuild)?;
        let pending = self.history.pending_holds(key, w).await.map_err(rebuild)?;
        let now = crate::clock::unix_now();
        let mut state = self.state.lock().expect("ledger lock");
        let windows = state.windows.entry(key.clone()).or_default();
        let mut rebuilt = Vec::new();
        for (label, spent) in [(&w.day, day), (&w.month, month)] {
            if !windows.contains_key(label) {
                windows.insert(
                    label.clone(),
                    WindowUsage {
                        spent,
                        held: U256::ZERO,
                    },
                );
                rebuilt.push(label.clone());
            }
        }
        for (id, day) in corrected {
            for label in &rebuilt {
                if *label == w.month || *label == day {
                    state.refunded.insert((label.clone(), id.clone()));
                }
            }
        }
        // Payments in doubt hold their amount again until their authorization has expired.
        for p in pending {
            if p.expires_at <= now
                || state.holds.contains_key(&p.id)
                || state.expired.contains_key(&p.id)
            {
                continue;
            }
            let hold = Hold {
                key: key.clone(),
                amount: p.amount,
                day: p.day,
                month: p.month,
                expires_at: p.expires_at,
            };
            for label in [&hold.day, &hold.month] {
                let w = state.window(key, label);
                w.held = w.held.saturating_add(hold.amount);
            }
            state.holds.insert(p.id, hold);
        }
        Ok(())
    }
}

impl State {
    fn usage(&self, key: &BudgetKey, label: &str) -> WindowUsage {
        self.windows
            .get(key)
            .and_then(|ws| ws.get(label))
            .copied()
            .unwrap_or_default()
    }

    fn window(&mut self, key: &BudgetKey, label: &str) -> &mut WindowUsage {
        if !self.windows.contains_key(key) {
            self.windows.insert(key.clone(), HashMap::new());
        }
        let windows = self.windows.get_mut(key).expect("just inserted");
        if !windows.contains_key(label) {
            windows.insert(label.to_string(), WindowUsage::default());
        }
        windows.get_mut(label).expect("just inserted")
    }

    /// Keeps the windows `keep(label)` accepts and every window an open hold counts in.
    fn retain_windows(&mut self, keep: impl Fn(&str) -> bool) {
        let holds = &self.holds;
        for (key, windows) in self.windows.iter_mut() {
            windows.retain(|label, _| {
                keep(label)
                    || holds
                        .values()
                        .any(|h| &h.key == key && (&h.day == label || &h.month == label))
            });
        }
        self.windows.retain(|_, windows| !windows.is_empty());
    }

    /// Reclaims expired holds and forgets windows that can no longer be used.
    fn sweep(&mut self, now: u64, current: &Windows) {
        if now == self.last_sweep {
            return;
        }
        self.last_sweep = now;
        let expired: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(h) = self.holds.remove(&id) {
                self.unhold(&h);
                self.expired.insert(id, now + LATE_COMMIT_SECONDS);
            }
        }
        if !self.expired.is_empty() {
            self.expired.retain(|_, until| *until > now);
        }
        // Windows older than the current month can no longer be reserved in.
        self.retain_windows(|label| label >= current.month.as_str());
    }

    fn unhold(&mut self, h: &Hold) {
        for label in [&h.day, &h.month] {
            let w = self.window(&h.key, label);
            w.held = w.held.saturating_sub(h.amount);
        }
    }
}

#[async_trait]
impl Ledger for LocalLedger {
    async fn reserve(
        &self,
        key: &BudgetKey,
        amount: U256,
        limits: Limits,
        now: u64,
    ) -> Result<Result<Reservation, Denial>, LedgerError> {
        let windows = Windows::at(now);
        self.ensure_windows(key, &windows).await?;
        let mut state = self.state.lock().expect("ledger lock");
        state.sweep(now, &windows);
        let day = state.usage(key, &windows.day);
        let month = state.usage(key, &windows.month);
        if let Err(denial) = check(&day, &month, amount, limits) {
            return Ok(Err(denial));
        }
        for label in [&windows.day, &windows.month] {
            let w = state.window(key, label);
            w.held = w.held.saturating_add(amount);
        }
        let id = new_reservation_id();
        let expires_at = now + self.reservation_ttl.as_secs().max(1);
        state.holds.insert(
            id.clone(),
            Hold {
                key: key.clone(),
                amount,
                day: windows.day.clone(),
                month: windows.month.clone(),
                expires_at,
            },
        );
        let usage = Usage {
            day: state.usage(key, &windows.day),
            month: state.usage(key, &windows.month),
            windows: windows.clone(),
        };
        Ok(Ok(Reservation {
            id,
            key: key.clone(),
            amount,
            windows,
            reserved_at: now,
            expires_at,
            usage,
            fallback: false,
        }))
    }

    /// Idempotent: an open hold is turned into spending once; a hold that expired is still
    /// counted (the payment happened), once; anything else was committed or released already.
    async fn commit(&self, r: &Reservation) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        if let Some(h) = state.holds.remove(&r.id) {
            state.unhold(&h);
        } else if state.expired.remove(&r.id).is_none() {
            return Ok(());
        }
        for label in [&r.windows.day, &r.windows.month] {
            let w = state.window(&r.key, label);
            w.spent = w.spent.saturating_add(r.amount);
        }
        Ok(())
    }

    async fn refund(
        &self,
        key: &BudgetKey,
        day: &str,
        month: &str,
        amount: U256,
        id: &str,
    ) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        // Windows not in memory are rebuilt from the journal minus its corrections.
        for label in [day, month] {
            let present = state
                .windows
                .get(key)
                .is_some_and(|ws| ws.contains_key(label));
            if present && state.refunded.insert((label.to_string(), id.to_string())) {
                let w = state.window(key, label);
                w.spent = w.spent.saturating_sub(amount);
            }
        }
        Ok(())
    }

    async fn release(&self, r: &Reservation) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        if let Some(h) = state.holds.remove(&r.id) {
            state.unhold(&h);
        }
        state.expired.remove(&r.id);
        Ok(())
    }

    async fn usage(&self, key: &BudgetKey, now: u64) -> Result<Usage, LedgerError> {
        let windows = Windows::at(now);
        self.ensure_windows(key, &windows).await?;
        let mut state = self.state.lock().expect("ledger lock");
        state.sweep(now, &windows);
        Ok(Usage {
            day: state.usage(key, &windows.day),
            month: state.usage(key, &windows.month),
            windows,
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{NoHistory, Window};

    const NOV_30_LAST_SECOND: u64 = 1_796_083_199;

    fn ledger() -> LocalLedger {
        LocalLedger::new(Arc::new(NoHistory), Duration::from_secs(60))
    }

    fn limits(daily: u64, monthly: u64) -> Limits {
        Limits {
            daily: Some(U256::from(daily)),
            monthly: Some(U256::from(monthly)),
        }
    }

    fn key() -> BudgetKey {
        BudgetKey::new("p", "USDC")
    }

    #[tokio::test]
    async fn holds_count_against_the_budget_until_released() {
        let l = ledger();
        let now = NOV_30_LAST_SECOND - 3600;
        let a = l
            .reserve(&key(), U256::from(60), limits(100, 1000), now)
            .await
            .unwrap()
            .unwrap();
        let denied = l
            .reserve(&key(), U256::from(50), limits(100, 1000), now)
            .await
            .unwrap();
        assert_eq!(denied.unwrap_err().window, Window::Daily);
        l.release(&a).await.unwrap();
        l.release(&a).await.unwrap(); // idempotent
        let b = l
            .reserve(&key(), U256::from(100), limits(100, 1000), now)
            .await
            .unwrap()
            .unwrap();
        l.commit(&b).await.unwrap();
        l.commit(&b).await.unwrap(); // idempotent
        let u = l.usage(&key(), now).await.unwrap();
        assert_eq!(
            u.day,
            WindowUsage {
                spent: U256::from(100),
                held: U256::ZERO
            }
        );
        assert!(
            l.reserve(&key(), U256::from(1), limits(100, 1000), now)
                .await
                .unwrap()
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_day_rolls_over_at_utc_midnight_and_the_month_at_month_end() {
        let l = ledger();
        let r = l
            .reserve(
                &key(),
                U256::from(100),
                limits(100, 150),
                NOV_30_LAST_SECOND,
            )
            .await
            .unwrap()
            .unwrap();
        l.commit(&r).await.unwrap();
        // Same day: the daily budget is used up.
        let same_day = l
            .reserve(&key(), U256::from(1), limits(100, 150), NOV_30_LAST_SECOND)
            .await;
        assert_eq!(same_day.unwrap().unwrap_err().window, Window::Daily);
        // One second later it is December: new day and new month.
        let next = l
            .reserve(
                &key(),
                U256::from(100),
                limits(100, 150),
                NOV_30_LAST_SECOND + 1,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.windows.day, "2026-12-01");
        assert_eq!(next.usage.month.held, U256::from(100));
    }

    #[tokio::test]
    async fn a_new_day_in_the_same_month_keeps_the_monthly_total() {
        let l = ledger();
        let day1 = NOV_30_LAST_SECOND - 86_400 - 3600; // Nov 29, 22:59:59
        let r = l
            .reserve(&key(), U256::from(100), limits(100, 150), day1)
            .await
            .unwrap()
            .unwrap();
        l.commit(&r).await.unwrap();
        let denied = l
            .reserve(&key(), U256::from(60), limits(100, 150), day1 + 1)
            .await
            .unwrap();
        assert_eq!(denied.unwrap_err().window, Window::Daily);
        let denied = l
            .reserve(&key(), U256::from(60), limits(100, 150), day1 + 2)
            .await
            .unwrap();
        assert_eq!(denied.unwrap_err().window, Window::Daily);
        // Next day: the daily budget is fresh, the monthly one is not.
        let denied = l
            .reserve(&key(), U256::from(60), limits(100, 150), day1 + 86_400)
            .await;
        assert_eq!(denied.unwrap().unwrap_err().window, Window::Monthly);
        assert!(
            l.reserve(&key(), U256::from(50), limits(100, 150), day1 + 86_400)
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn expired_reservations_are_reclaimed_and_late_commits_still_count() {
        let l = ledger();
        let now = NOV_30_LAST_SECOND - 7200;
        let r = l
            .reserve(&key(), U256::from(100), limits(100, 1000), now)
            .await
            .unwrap()
            .unwrap();
        assert!(
            l.reserve(&key(), U256::from(1), limits(100, 1000), now + 59)
                .await
                .unwrap()
                .is_err()
        );
        // After the TTL the hold is gone…
        let s = l
            .reserve(&key(), U256::from(40), limits(100, 1000), now + 60)
            .await
            .unwrap()
            .unwrap();
        // …but a commit of the expired reservation still counts what was paid.
        l.commit(&r).await.unwrap();
        let u = l.usage(&key(), now + 61).await.unwrap();
        assert_eq!(u.day.spent, U256::from(100));
        assert_eq!(u.day.held, U256::from(40));
        l.release(&s).await.unwrap();
    }

    #[tokio::test]
    async fn amounts_beyond_64_bits_are_exact() {
        let l = ledger();
        let eighteen = U256::from(10).pow(U256::from(18));
        let budget = Limits {
            daily: Some(eighteen * U256::from(100)),
            monthly: Some(eighteen * U256::from(1000)),
        };
        for _ in 0..100 {
            let r = l
                .reserve(&key(), eighteen, budget, NOV_30_LAST_SECOND - 10)
                .await
                .unwrap()
                .unwrap();
            l.commit(&r).await.unwrap();
        }
        let d = l
            .reserve(&key(), U256::from(1), budget, NOV_30_LAST_SECOND - 10)
            .await
            .unwrap();
        assert_eq!(d.unwrap_err().used, eighteen * U256::from(100));
    }

    struct Journal(U256);
    #[async_trait]
    impl SpendHistory for Journal {
        async fn window_totals(&self, _: &BudgetKey, _: &Windows) -> Result<(U256, U256), String> {
            Ok((self.0, self.0 * U256::from(2)))
        }
    }

    #[tokio::test]
    async fn windows_are_rebuilt_from_the_journal() {
        let l = LocalLedger::new(Arc::new(Journal(U256::from(90))), Duration::from_secs(60));
        let u = l.usage(&key(), NOV_30_LAST_SECOND).await.unwrap();
        assert_eq!(u.day.spent, U256::from(90));
        assert_eq!(u.month.spent, U256::from(180));
        let d = l
            .reserve(
                &key(),
                U256::from(11),
                limits(100, 1000),
                NOV_30_LAST_SECOND,
            )
            .await;
        assert_eq!(d.unwrap().unwrap_err().window, Window::Daily);
    }

    /// A journal of 90 spent today (180 this month) in which payment `p1` (10, today) was
    /// corrected: its totals already leave it out.
    struct Corrected;
    #[async_trait]
    impl SpendHistory for Corrected {
        async fn window_totals(&self, _: &BudgetKey, _: &Windows) -> Result<(U256, U256), String> {
            Ok((U256::from(80), U256::from(170)))
        }
        async fn corrected(
            &self,
            _: &BudgetKey,
            w: &Windows,
        ) -> Result<Vec<(String, String)>, String> {
            Ok(vec![("p1".into(), w.day.clone())])
        }
    }

    #[tokio::test]
    async fn a_refund_counts_once_whether_the_window_was_live_or_rebuilt() {
        let w = Windows::at(NOV_30_LAST_SECOND);
        let ten = U256::from(10);
        // Live windows: the refund subtracts once, a repeat does nothing.
        let live = LocalLedger::new(Arc::new(Journal(U256::from(90))), Duration::from_secs(60));
        live.usage(&key(), NOV_30_LAST_SECOND).await.unwrap();
        for _ in 0..2 {
            live.refund(&key(), &w.day, &w.month, ten, "p1")
                .await
                .unwrap();
            let u = live.usage(&key(), NOV_30_LAST_SECOND).await.unwrap();
            assert_eq!(
                (u.day.spent, u.month.spent),
                (U256::from(80), U256::from(170))
            );
        }
        // Windows rebuilt after the correction was journaled already leave it out: the
        // refund that follows must not subtract it again.
        let rebuilt = LocalLedger::new(Arc::new(Corrected), Duration::from_secs(60));
        rebuilt.usage(&key(), NOV_30_LAST_SECOND).await.unwrap();
        rebuilt
            .refund(&key(), &w.day, &w.month, ten, "p1")
            .await
            .unwrap();
        let u = rebuilt.usage(&key(), NOV_30_LAST_SECOND).await.unwrap();
        assert_eq!(
            (u.day.spent, u.month.spent),
            (U256::from(80), U256::from(170))
        );
        // A window not in memory is left to its rebuild.
        let cold = LocalLedger::new(Arc::new(Corrected), Duration::from_secs(60));
        cold.refund(&key(), &w.day, &w.month, ten, "p1")
            .await
            .unwrap();
        let u = cold.usage(&key(), NOV_30_LAST_SECOND).await.unwrap();
        assert_eq!(
            (u.day.spent, u.month.spent),
            (U256::from(80), U256::from(170))
        );
    }
}
