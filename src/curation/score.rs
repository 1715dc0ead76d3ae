//! The score of an endpoint: five components in [0, 100] and their weighted mean.
//!
//! - **reliability**: the lower bound of the 95 % Wilson interval of the success rate, × 100
//!   (3 successes out of 3 give 43.8, 990 out of 1000 give 98.2: few calls prove little).
//! - **latency**: half p50, half p95, each against the category's mean:
//!   `ratio_score(p / mean)`.
//! - **cost**: the effective price (what was spent over the calls that succeeded: failed paid
//!   calls count against it) against the category's mean price in the same asset:
//!   `ratio_score(price / mean)`; a free endpoint scores 100.
//! - **volume**: `50 · min(1, log10(1 + calls) / 4) + 50 · min(1, projects / 5)`.
//! - **reputation**: given from outside (the on-chain audit); 50 (neutral) until then.
//!
//! `ratio_score(r)` is 100 for `r ≤ 0.5`, 0 for `r ≥ 2`, and `100 · (1 − (r − 0.5) / 1.5)`
//! between (Pag0's curve). The score is `Σ weight · component / Σ weight`, rounded to 0.1.

use serde::Serialize;

/// Relative weights of the components (they need not add up to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Weights {
    pub reliability: f64,
    pub latency: f64,
    pub cost: f64,
    pub volume: f64,
    pub reputation: f64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            reliability: 0.35,
            latency: 0.25,
            cost: 0.25,
            volume: 0.05,
            reputation: 0.10,
        }
    }
}

/// What the window's traffic says about one endpoint (see [`super::stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Calls that reached (or tried to reach) the endpoint.
    pub calls: u64,
    /// Of those, answered 2xx or 3xx.
    pub successes: u64,
    pub p50_us: Option<u64>,
    pub p95_us: Option<u64>,
    /// Effective price per successful call, in base units of `symbol` (`None`: nothing was
    /// spent; infinite when something was spent and nothing succeeded is `Some(f64::INFINITY)`).
    pub price: Option<f64>,
    pub symbol: String,
    /// Distinct projects that called it.
    pub projects: u64,
    /// 0..=100, from the on-chain audit; `None`: neutral.
    pub reputation: Option<f64>,
}

/// A category's means, which latency and cost are scored against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Benchmark {
    pub p50_us: Option<f64>,
    pub p95_us: Option<f64>,
    /// Mean effective price per asset symbol, over the endpoints that charged in it.
    pub price: std::collections::BTreeMap<String, f64>,
}

impl Benchmark {
    /// Means over `members` (endpoints without data in a field are left out of its mean).
    pub fn of<'a>(members: impl IntoIterator<Item = &'a Observed>) -> Benchmark {
        let (mut p50, mut p95) = (Vec::new(), Vec::new());
        let mut prices: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for o in members {
            if o.calls == 0 {
                continue;
            }
            p50.extend(o.p50_us.map(|v| v as f64));
            p95.extend(o.p95_us.map(|v| v as f64));
            if let Some(p) = o.price.filter(|p| p.is_finite()) {
                prices.entry(o.symbol.clone()).or_default().push(p);
            }
        }
        Benchmark {
            p50_us: mean(&p50),
            p95_us: mean(&p95),
            price: prices
                .into_iter()
                .filter_map(|(s, v)| Some((s, mean(&v)?)))
                .collect(),
        }
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The components of a score, each in [0, 100].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Components {
    pub reliability: f64,
    pub latency: f64,
    pub cost: f64,
    pub volume: f64,
    pub reputation: f64,
}

/// A scored endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    pub score: f64,
    pub components: Components,
}

/// 95 % Wilson lower bound of `successes / calls` (0 without calls).
pub fn wilson_lower_bound(successes: u64, calls: u64) -> f64 {
    if calls == 0 {
        return 0.0;
    }
    const Z: f64 = 1.96;
    let n = calls as f64;
    let p = successes.min(calls) as f64 / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).clamp(0.0, 1.0)
}

/// 100 at or below half the benchmark, 0 at or above twice it, linear between.
pub fn ratio_score(ratio: f64) -> f64 {
    if ratio.is_nan() {
        return 50.0;
    }
    if ratio <= 0.5 {
        100.0
    } else if ratio >= 2.0 {
        0.0
    } else {
        100.0 * (1.0 - (ratio - 0.5) / 1.5)
    }
}

/// `value` against `benchmark` (neutral 50 without either).
fn against(value: Option<f64>, benchmark: Option<f64>) -> f64 {
    match (value, benchmark) {
        (Some(v), Some(b)) if b > 0.0 => ratio_score(v / b),
        (Some(_), Some(_)) => 100.0,
        _ => 50.0,
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The score of `o` in its category (`None`: no calls yet, nothing to score).
pub fn score(o: &Observed, bench: &Benchmark, w: &Weights) -> Option<Score> {
    if o.calls == 0 {
        return None;
    }
    let reliability = 100.0 * wilson_lower_bound(o.successes, o.calls);
    let latency = 0.5 * against(o.p50_us.map(|v| v as f64), bench.p50_us)
        + 0.5 * against(o.p95_us.map(|v| v as f64), bench.p95_us);
    let cost = match o.price {
        None => 100.0,
        Some(p) if p.is_infinite() => 0.0,
        Some(p) => against(Some(p), bench.price.get(&o.symbol).copied()),
    };
    let volume = 50.0 * ((1.0 + o.calls as f64).log10() / 4.0).min(1.0)
        + 50.0 * (o.projects as f64 / 5.0).min(1.0);
    let reputation = o.reputation.unwrap_or(50.0).clamp(0.0, 100.0);
    let c = Components {
        reliability: round1(reliability),
        latency: round1(latency),
        cost: round1(cost),
        volume: round1(volume),
        reputation: round1(reputation),
    };
    let total = w.reliability + w.latency + w.cost + w.volume + w.reputation;
    let weighted = w.reliability * reliability
        + w.latency * latency
        + w.cost * cost
        + w.volume * volume
        + w.reputation * reputation;
    let score = if total > 0.0 { weighted / total } else { 0.0 };
    Some(Score {
        score: round1(score),
        components: c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_successes_do_not_outrank_many() {
        let small = wilson_lower_bound(3, 3);
        let large = wilson_lower_bound(990, 1000);
        assert!((small - 0.4385).abs() < 1e-3, "{small}");
        assert!((large - 0.9817).abs() < 1e-3, "{large}");
        let bench = Benchmark::default();
        let w = Weights::default();
        let three = Observed {
            calls: 3,
            successes: 3,
            projects: 1,
            ..Default::default()
        };
        let thousand = Observed {
            calls: 1000,
            successes: 990,
            projects: 1,
            ..Default::default()
        };
        let (a, b) = (
            score(&three, &bench, &w).unwrap(),
            score(&thousand, &bench, &w).unwrap(),
        );
        assert!(b.score > a.score, "{a:?} vs {b:?}");
        assert!(b.components.reliability > a.components.reliability);
    }

    #[test]
    fn ratio_curve() {
        assert_eq!(ratio_score(0.2), 100.0);
        assert_eq!(ratio_score(0.5), 100.0);
        assert_eq!(ratio_score(1.25), 50.0);
        assert_eq!(ratio_score(2.0), 0.0);
        assert_eq!(ratio_score(7.0), 0.0);
    }

    /// The example worked by hand in the README ("Endpoint curation").
    #[test]
    fn the_readme_example() {
        // Category "weather": A and B, 6-decimal USDC.
        let a = Observed {
            calls: 1000,
            successes: 990,
            p50_us: Some(100_000),
            p95_us: Some(300_000),
            price: Some(10_000.0),
            symbol: "USDC".into(),
            projects: 5,
            reputation: None,
        };
        let b = Observed {
            calls: 100,
            successes: 80,
            p50_us: Some(300_000),
            p95_us: Some(900_000),
            price: Some(30_000.0),
            symbol: "USDC".into(),
            projects: 1,
            reputation: None,
        };
        let bench = Benchmark::of([&a, &b]);
        assert_eq!(bench.p50_us, Some(200_000.0));
        assert_eq!(bench.p95_us, Some(600_000.0));
        assert_eq!(bench.price.get("USDC"), Some(&20_000.0));
        let w = Weights::default();
        let sa = score(&a, &bench, &w).unwrap();
        let sb = score(&b, &bench, &w).unwrap();
        assert_eq!(
            sa.components,
            Components {
                reliability: 98.2,
                latency: 100.0,
                cost: 100.0,
                volume: 87.5,
                reputation: 50.0
            }
        );
        assert_eq!(sa.score, 93.7);
        assert_eq!(
            sb.components,
            Components {
                reliability: 71.1,
                latency: 33.3,
                cost: 33.3,
                volume: 35.1,
                reputation: 50.0
            }
        );
        assert_eq!(sb.score, 48.3);
    }
}
