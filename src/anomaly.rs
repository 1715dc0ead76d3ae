//! Spend anomaly detection: a project's spend in the last hour against its trailing hourly
//! average, per budget pool, in one-minute buckets (in memory; seeded from the journal).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use alloy_primitives::U256;

/// `policy.anomaly`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyRule {
    /// Alert when the last hour's spend exceeds `factor` × the trailing hourly average.
    pub factor: u32,
    /// Hours before the last one that make the average.
    pub trailing_hours: u32,
    /// At most one alert per project and pool within this many seconds.
    pub cooldown_seconds: u64,
}

const MINUTE: u64 = 60;

/// Minute buckets of one (project, pool).
#[derive(Default)]
struct Series {
    /// (minute number, amount), oldest first.
    buckets: VecDeque<(u64, U256)>,
    last_alert: Option<u64>,
    seeded: bool,
}

/// What an alert reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub last_hour: U256,
    pub trailing_hourly_average: U256,
    pub factor: u32,
}

#[derive(Default)]
pub struct AnomalyDetector {
    series: Mutex<HashMap<(String, String), Series>>,
}

impl AnomalyDetector {
    /// Whether history for this key was loaded (from the journal) already.
    pub fn seeded(&self, project: &str, pool: &str) -> bool {
        let series = self.series.lock().expect("anomaly lock");
        series
            .get(&(project.to_string(), pool.to_string()))
            .is_some_and(|s| s.seeded)
    }

    /// Adds past spend (from the journal) without alerting; marks the key seeded.
    pub fn seed(&self, project: &str, pool: &str, past: &[(u64, U256)]) {
        let mut series = self.series.lock().expect("anomaly lock");
        let s = series
            .entry((project.to_string(), pool.to_string()))
            .or_default();
        if s.seeded {
            return;
        }
        s.seeded = true;
        for (at, amount) in past {
            add(s, *at, *amount);
        }
    }

    /// Records a committed payment at unix second `now` and returns an anomaly if the last
    /// hour now exceeds the rule and no alert went out for this key within the cooldown.
    pub fn record(
        &self,
        project: &str,
        pool: &str,
        amount: U256,
        now: u64,
        rule: &AnomalyRule,
    ) -> Option<Anomaly> {
        let mut series = self.series.lock().expect("anomaly lock");
        let s = series
            .entry((project.to_string(), pool.to_string()))
            .or_default();
        add(s, now, amount);
        let minute = now / MINUTE;
        let horizon = 60 * (u64::from(rule.trailing_hours) + 1);
        while s
            .buckets
            .front()
            .is_some_and(|(m, _)| *m + horizon <= minute)
        {
            s.buckets.pop_front();
        }
        let (mut last_hour, mut trailing) = (U256::ZERO, U256::ZERO);
        for (m, v) in &s.buckets {
            if *m + 60 > minute {
                last_hour += *v;
            } else {
                trailing += *v;
            }
        }
        // No history: nothing to compare against (a new project does not alert).
        let average = trailing / U256::from(rule.trailing_hours.max(1));
        if average.is_zero() || last_hour <= average * U256::from(rule.factor) {
            return None;
        }
        if s.last_alert
            .is_some_and(|t| now < t.saturating_add(rule.cooldown_seconds))
        {
            return None;
        }
        s.last_alert = Some(now);
        Some(Anomaly {
            last_hour,
            trailing_hourly_average: average,
            factor: rule.factor,
        })
    }
}

fn add(s: &mut Series, at: u64, amount: U256) {
    let minute = at / MINUTE;
    match s.buckets.iter_mut().rev().find(|(m, _)| *m == minute) {
        Some((_, v)) => *v += amount,
        None => {
            let pos = s.buckets.partition_point(|(m, _)| *m < minute);
            s.buckets.insert(pos, (minute, amount));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const T0: u64 = 1_796_000_000;

    fn rule() -> AnomalyRule {
        AnomalyRule {
            factor: 3,
            trailing_hours: 4,
            cooldown_seconds: HOUR,
        }
    }

    #[test]
    fn fires_once_when_the_last_hour_exceeds_the_trailing_average_then_waits_out_the_cooldown() {
        let d = AnomalyDetector::default();
        // Four quiet hours: 100 per hour → average 100.
        let past: Vec<(u64, U256)> = (0..4).map(|h| (T0 + h * HOUR, U256::from(100))).collect();
        d.seed("p", "USDC", &past);
        let now = T0 + 4 * HOUR + 60;
        assert_eq!(
            d.record("p", "USDC", U256::from(300), now, &rule()),
            None,
            "300 is not > 3 × 100"
        );
        let a = d
            .record("p", "USDC", U256::from(1), now + 1, &rule())
            .expect("301 > 300");
        assert_eq!(a.last_hour, U256::from(301));
        assert_eq!(a.trailing_hourly_average, U256::from(100));
        // Still anomalous, but one alert per cooldown.
        assert_eq!(
            d.record("p", "USDC", U256::from(500), now + 600, &rule()),
            None
        );
        // Other pools and projects are separate.
        assert_eq!(
            d.record("q", "USDC", U256::from(10_000), now, &rule()),
            None,
            "no history"
        );
    }

    #[test]
    fn alerts_again_after_the_cooldown_and_old_spend_ages_out() {
        let d = AnomalyDetector::default();
        d.seed("p", "USDC", &[(T0, U256::from(100))]);
        let r = AnomalyRule {
            trailing_hours: 1,
            ..rule()
        };
        let t = T0 + HOUR + 10;
        assert!(d.record("p", "USDC", U256::from(400), t, &r).is_some());
        assert!(
            d.record("p", "USDC", U256::from(400), t + HOUR / 2, &r)
                .is_none(),
            "cooldown"
        );
        // An hour later: the seeded 100 aged out; trailing hour = 400 (from t), last hour =
        // 400 (t + 30 min) + 900 = 1300 > 3 × 400, and the cooldown is over.
        let again = d
            .record("p", "USDC", U256::from(900), t + HOUR + 1, &r)
            .unwrap();
        assert_eq!(again.trailing_hourly_average, U256::from(400));
        assert_eq!(again.last_hour, U256::from(1300));
    }
}
