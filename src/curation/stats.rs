//! What the rollups of a window say about each endpoint, counting only calls that tell
//! something about the endpoint itself.
//!
//! Left out: answers from pag0's cache (`HIT`/`STALE`: the endpoint was not asked), and calls
//! pag0 stopped by itself (an error code of its own, such as a budget or an allow-list, or a
//! payment it declined, did not make, or could not make: `declined`, `off`,
//! `body-too-large`). Kept: everything the endpoint answered, and the failures to reach it
//! (`UPSTREAM_*`, `DNS_RESOLUTION_FAILED`).

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

/// Whether a rollup row's calls count for its endpoint's score.
pub fn counts(r: &RollupRow) -> bool {
    let cached = r.cache == CacheOutcome::Hit.as_str() || r.cache == CacheOutcome::Stale.as_str();
    let stopped_by_pag0 = [
        PaymentOutcome::Declined,
        PaymentOutcome::Off,
        PaymentOutcome::BodyTooLarge,
    ]
    .iter()
    .any(|p| r.payment == p.as_str());
    let pag0_error = !r.error.is_empty() && !ENDPOINT_FAILURES.contains(&r.error.as_str());
    !r.endpoint.is_empty() && !cached && !stopped_by_pag0 && !pag0_error
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

/// Totals per endpoint key of the rows that count.
pub fn per_endpoint(rows: &[RollupRow]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for r in rows.iter().filter(|r| counts(r)) {
        out.entry(r.endpoint.clone()).or_default().add(r);
    }
    out
}
