//! What the rollups of a window say about each endpoint, counting only calls that tell
//! something about the endpoint itself.
//!
//! Left out: answers from pag0's cache (`HIT`/`STALE`: the endpoint was not asked), calls
//! pag0 stopped by itself (an error code of its own, such as a budget or an allow-list, or a
//! payment it would not make: `off`, `body-too-large`), and the caller's own `4xx` (a bad
//! request says nothing about the endpoint). Kept: the endpoint's successes, its `5xx`, the
//! failures to reach it (`UPSTREAM_*`, `DNS_RESOLUTION_FAILED`), and `402`s that could not be
//! paid (declined without a code of pag0's: the offer was unusable) or whose payment the
//! endpoint refused or left in doubt.
//!
//! No one project outweighs the others: in an endpoint's shared totals, a project's calls
//! count at most as much as all other projects' calls together (or [`PROJECT_FLOOR`] calls,
//! whichever is more), its successes, latencies and payments in doubt scaled alike. So one
//! project moves a shared success rate by at most half the distance to its own rate, once the
//! others made [`PROJECT_FLOOR`] calls.

use std::collections::{BTreeMap, BTreeSet};

use alloy_primitives::U256;

use super::score::Observed;
use crate::analytics::query::RollupRow;
use crate::analytics::{CacheOutcome, Histogram, PaymentOutcome, quantile};

/// pag0 error codes that are the endpoint's failure, not pag0's decision.
const ENDPOINT_FAILURES: [&str; 5] = [
    "UPSTREAM_CONNECT_FAILED",
    "UPSTREAM_ERROR",
    "UPSTREAM_TLS_FAILED",
    "UPSTREAM_TIMEOUT",
    "DNS_RESOLUTION_FAILED",
];

/// Calls a project's share of an endpoint's totals may always reach (see the module's doc).
pub const PROJECT_FLOOR: u64 = 10;

/// Whether a rollup row's calls count for its endpoint's score.
pub fn counts(r: &RollupRow) -> bool {
    let cached = r.cache == CacheOutcome::Hit.as_str() || r.cache == CacheOutcome::Stale.as_str();
    let is = |p: PaymentOutcome| r.payment == p.as_str();
    let stopped_by_pag0 = is(PaymentOutcome::Off) || is(PaymentOutcome::BodyTooLarge);
    let pag0_error = !r.error.is_empty() && !ENDPOINT_FAILURES.contains(&r.error.as_str());
    let unpaid_402 =
        is(PaymentOutcome::Declined) || is(PaymentOutcome::Rejected) || is(PaymentOutcome::InDoubt);
    let callers_4xx = r.status_class == "4xx" && !unpaid_402;
    !r.endpoint.is_empty() && !cached && !stopped_by_pag0 && !pag0_error && !callers_4xx
}

/// One endpoint's totals over the window.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub calls: u64,
    pub successes: u64,
    pub histogram: Histogram,
    /// Spent per asset symbol (paid by pag0 or relayed).
    pub spend: BTreeMap<String, U256>,
    /// Calls that spent, per asset symbol.
    pub spending_calls: BTreeMap<String, u64>,
    /// Calls whose payment left pag0 and got no paid answer (`in-doubt`: it may be charged).
    pub in_doubt: u64,
    pub projects: BTreeSet<String>,
    /// The hour of its last call (unix ms).
    pub last_hour_ms: i64,
    /// The same totals of each project's calls alone (empty within these).
    pub by_project: BTreeMap<String, Totals>,
}

impl Totals {
    fn add(&mut self, r: &RollupRow) {
        self.add_row(r);
        self.by_project
            .entry(r.project.clone())
            .or_default()
            .add_row(r);
    }

    fn add_row(&mut self, r: &RollupRow) {
        let calls = r.calls.max(0) as u64;
        self.calls += calls;
        if r.status_class == "2xx" || r.status_class == "3xx" {
            self.successes += calls;
        }
        for (sum, n) in self.histogram.iter_mut().zip(r.histogram) {
            *sum += n;
        }
        if !r.spend.is_zero() {
            let s = self.spend.entry(r.symbol.clone()).or_default();
            *s = s.saturating_add(r.spend);
            *self.spending_calls.entry(r.symbol.clone()).or_default() += calls;
        }
        if r.payment == PaymentOutcome::InDoubt.as_str() {
            self.in_doubt += calls;
        }
        self.projects.insert(r.project.clone());
        self.last_hour_ms = self.last_hour_ms.max(r.hour_ms);
    }

    /// The asset most was spent in, and that amount.
    pub fn main_spend(&self) -> Option<(&str, U256)> {
        self.spend
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(s, a)| (s.as_str(), *a))
    }

    /// What the calls cost: the spend, plus each in-doubt payment at the average price paid
    /// (a failed paid call counts against the endpoint). `None`: nothing spent.
    pub fn cost_units(&self) -> Option<(&str, U256)> {
        let (symbol, spent) = self.main_spend()?;
        let paid = self.spending_calls.get(symbol).copied().unwrap_or(0).max(1);
        let risked = spent / U256::from(paid) * U256::from(self.in_doubt);
        Some((symbol, spent.saturating_add(risked)))
    }

    /// Effective price per successful call, in base units (`None`: nothing spent, or nothing
    /// succeeded).
    pub fn price_units(&self) -> Option<U256> {
        let (_, cost) = self.cost_units()?;
        (self.successes > 0).then(|| cost / U256::from(self.successes))
    }

    /// What the score is computed from (`reputation` is added by the caller).
    pub fn observed(&self) -> Observed {
        let price = self.cost_units().map(|(_, cost)| {
            if self.successes == 0 {
                f64::INFINITY
            } else {
                // A ratio for scoring, not an amount: f64 precision is plenty.
                f64::from(cost) / self.successes as f64
            }
        });
        Observed {
            calls: self.calls,
            successes: self.successes,
            p50_us: quantile(&self.histogram, 0.5),
            p95_us: quantile(&self.histogram, 0.95),
            price,
            symbol: self
                .main_spend()
                .map(|(s, _)| s.to_string())
                .unwrap_or_default(),
            projects: self.projects.len() as u64,
            reputation: None,
        }
    }
}

/// Totals per endpoint key of the rows that count, each project's share capped.
pub fn per_endpoint(rows: &[RollupRow]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for r in rows.iter().filter(|r| counts(r)) {
        out.entry(r.endpoint.clone()).or_default().add(r);
    }
    for t in out.values_mut() {
        t.cap_projects();
    }
    out
}

impl Totals {
    /// Scales down the calls (successes, latencies, payments in doubt) of any project that
    /// made more than all others together and more than [`PROJECT_FLOOR`].
    fn cap_projects(&mut self) {
        if self.by_project.len() < 2 {
            return;
        }
        for p in self.by_project.values() {
            let others = self.calls - p.calls;
            let cap = others.max(PROJECT_FLOOR);
            if p.calls <= cap {
                continue;
            }
            // Integer scaling by cap / calls (counts, not money).
            let scale = |n: u64| (u128::from(n) * u128::from(cap) / u128::from(p.calls)) as u64;
            self.calls -= p.calls - cap;
            self.successes -= p.successes - scale(p.successes);
            self.in_doubt -= p.in_doubt - scale(p.in_doubt);
            for (sum, own) in self.histogram.iter_mut().zip(p.histogram) {
                let own = own.max(0) as u64;
                *sum -= (own - scale(own)) as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        project: &str,
        endpoint: &str,
        class: &str,
        payment: PaymentOutcome,
        calls: i64,
    ) -> RollupRow {
        let mut histogram = [0i64; crate::analytics::BUCKETS];
        histogram[5] = calls;
        RollupRow {
            hour_ms: 0,
            project: project.into(),
            endpoint: endpoint.into(),
            status_class: class.into(),
            cache: CacheOutcome::None.as_str().into(),
            payment: payment.as_str().into(),
            symbol: String::new(),
            error: String::new(),
            calls,
            latency_sum_us: 0,
            upstream_latency_sum_us: 0,
            upstream_calls: 0,
            request_bytes: 0,
            response_bytes: 0,
            spend: U256::ZERO,
            saved: U256::ZERO,
            histogram,
        }
    }

    fn rate(t: &Totals) -> f64 {
        t.successes as f64 / t.calls as f64
    }

    #[test]
    fn the_callers_own_4xx_say_nothing_but_an_unpayable_402_does() {
        use PaymentOutcome as P;
        let rows = [
            row("h", "a/x", "2xx", P::None, 10),
            row("h", "a/x", "4xx", P::None, 30),
            row("h", "a/x", "4xx", P::Declined, 2),
            row("h", "a/x", "4xx", P::Rejected, 1),
            row("h", "a/x", "5xx", P::None, 3),
        ];
        let t = &per_endpoint(&rows)["a/x"];
        assert_eq!((t.calls, t.successes), (16, 10));
    }

    #[test]
    fn one_project_moves_a_shared_rate_by_at_most_half_the_distance() {
        use PaymentOutcome as P;
        // Honest traffic of three projects: 20 calls, 17 successes (85 %).
        let honest = [
            row("h1", "a/x", "2xx", P::None, 6),
            row("h2", "a/x", "2xx", P::None, 6),
            row("h3", "a/x", "2xx", P::None, 5),
            row("h3", "a/x", "5xx", P::None, 3),
        ];
        let before = rate(&per_endpoint(&honest)["a/x"]);
        // The 30 refused calls of the report: no effect at all.
        let mut refused = honest.to_vec();
        refused.push(row("x", "a/x", "4xx", P::None, 30));
        assert_eq!(rate(&per_endpoint(&refused)["a/x"]), before);
        // 300 calls that all fail: capped at the others' 20, so at most half the way to 0.
        let mut failing = honest.to_vec();
        failing.push(row("x", "a/x", "5xx", P::None, 300));
        let t = &per_endpoint(&failing)["a/x"];
        assert_eq!(t.calls, 40);
        assert!(
            before - rate(t) <= before / 2.0 + 1e-9,
            "{} -> {}",
            before,
            rate(t)
        );
        // 300 cheap successes pumping a worse endpoint: at most half the way to 100 %.
        let worse = [
            row("h1", "b/y", "2xx", P::None, 10),
            row("h1", "b/y", "5xx", P::None, 10),
        ];
        let mut pumped = worse.to_vec();
        pumped.push(row("x", "b/y", "2xx", P::None, 300));
        let t = &per_endpoint(&pumped)["b/y"];
        assert!(rate(t) <= 0.5 + (1.0 - 0.5) / 2.0 + 1e-9, "{}", rate(t));
        assert_eq!(t.histogram.iter().sum::<i64>() as u64, t.calls);
    }
}
