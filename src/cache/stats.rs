//! Per-project cache counters of this instance, for `GET /api/cache/stats`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use alloy_primitives::U256;
use serde::Serialize;

/// How the cache took part in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from a tier.
    Hit(super::Tier),
    /// Served stale (upstream failing, or while revalidating).
    Stale(super::Tier),
    /// Looked up, not found (or expired): fetched from upstream.
    Miss,
    /// Not looked up (agent asked for it, excluded rule, payment header, ...).
    Bypass,
}

impl Outcome {
    /// The `X-Pag0-Cache` value.
    pub fn header(self) -> &'static str {
        match self {
            Outcome::Hit(_) => "HIT",
            Outcome::Stale(_) => "STALE",
            Outcome::Miss => "MISS",
            Outcome::Bypass => "BYPASS",
        }
    }

    /// (`result`, `tier`) metric labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Hit(t) => ("hit", t.as_str()),
            Outcome::Stale(t) => ("stale", t.as_str()),
            Outcome::Miss => ("miss", "none"),
            Outcome::Bypass => ("bypass", "none"),
        }
    }
}

/// One project's counters since this instance started.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProjectCounters {
    pub hits: u64,
    pub hits_memory: u64,
    pub hits_redis: u64,
    pub stale: u64,
    pub misses: u64,
    pub bypasses: u64,
    /// Response body bytes served from the cache.
    pub bytes_served: u64,
    /// Payments not made thanks to hits: base units by asset symbol (decimal strings).
    #[serde(serialize_with = "amounts")]
    pub saved: BTreeMap<String, U256>,
}

fn amounts<S: serde::Serializer>(m: &BTreeMap<String, U256>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(k, v)| (k, v.to_string())))
}

impl ProjectCounters {
    /// Hits (fresh or stale) over lookups; `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let served = self.hits + self.stale;
        let lookups = served + self.misses;
        (lookups > 0).then(|| served as f64 / lookups as f64)
    }
}

#[derive(Default)]
pub struct CacheStats {
    projects: Mutex<HashMap<String, ProjectCounters>>,
}

impl CacheStats {
    pub fn record(&self, project: &str, outcome: Outcome, bytes: u64, saved: Option<(&str, U256)>) {
        let mut projects = self.projects.lock().expect("stats lock");
        let c = projects.entry(project.to_string()).or_default();
        match outcome {
            Outcome::Hit(tier) => {
                c.hits += 1;
                match tier {
                    super::Tier::Memory => c.hits_memory += 1,
                    super::Tier::Redis => c.hits_redis += 1,
                }
            }
            Outcome::Stale(_) => c.stale += 1,
            Outcome::Miss => c.misses += 1,
            Outcome::Bypass => c.bypasses += 1,
        }
        if matches!(outcome, Outcome::Hit(_) | Outcome::Stale(_)) {
            c.bytes_served += bytes;
            if let Some((symbol, amount)) = saved {
                let total = c.saved.entry(symbol.to_string()).or_default();
                *total = total.saturating_add(amount);
            }
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, ProjectCounters> {
        let projects = self.projects.lock().expect("stats lock");
        projects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
