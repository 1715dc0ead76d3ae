//! The reputation component of curation scores: for every agent in `audit.agents`, the
//! Reputation Registry's `getSummary` of `successRate` feedback over the trusted reviewers
//! (`audit.trusted_reviewers`, pag0's own audit address included), refreshed in the
//! background and read from memory.

use std::collections::HashMap;
use std::sync::Arc;

use alloy_primitives::U256;
use arc_swap::ArcSwap;

use super::Settings;

/// One agent's summary, as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: u64,
    /// The average `successRate`, in percent.
    pub percent: f64,
}

pub struct Reputation {
    settings: Arc<Settings>,
    summaries: ArcSwap<HashMap<U256, Summary>>,
}

impl Reputation {
    pub fn new(settings: Arc<Settings>) -> Reputation {
        Reputation {
            settings,
            summaries: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The agents to ask about.
    pub fn agents(&self) -> Vec<U256> {
        let mut ids: Vec<U256> = self.settings.agents.iter().map(|a| a.agent_id).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn store(&self, summaries: HashMap<U256, Summary>) {
        self.summaries.store(Arc::new(summaries));
    }

    pub fn summary(&self, agent: U256) -> Option<Summary> {
        self.summaries.load().get(&agent).copied()
    }
}

/// A `getSummary` answer as a percentage: `value / 10^decimals`, `None` without feedback.
pub fn percent(count: u64, value: i128, decimals: u8) -> Option<Summary> {
    if count == 0 {
        return None;
    }
    let percent = value as f64 / 10f64.powi(i32::from(decimals.min(38)));
    Some(Summary {
        count,
        percent: percent.clamp(0.0, 100.0),
    })
}

impl crate::curation::ReputationSource for Reputation {
    fn reputation(&self, endpoint: &str) -> Option<f64> {
        let agent = self.settings.agent_of(endpoint)?;
        self.summary(agent).map(|s| s.percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_become_percentages_within_bounds() {
        assert_eq!(percent(0, 0, 0), None);
        assert_eq!(percent(2, 9977, 2).unwrap().percent, 99.77);
        assert_eq!(percent(1, 89, 0).unwrap().percent, 89.0);
        assert_eq!(percent(1, 250, 0).unwrap().percent, 100.0);
        assert_eq!(percent(1, -5, 0).unwrap().percent, 0.0);
    }
}
