//! Endpoint curation: which paid API of a kind is best, from pag0's own traffic.
//!
//! Every `curation.refresh_seconds` a background task reads the analytics rollups of the last
//! `curation.window_hours`, scores every endpoint against its category ([`score`]) and swaps
//! the result in as one immutable [`Snapshot`]; readers (the admin API, smart routes) only
//! load an `Arc`. Nothing here runs SQL on a request's path: offers' descriptions are handed
//! over in memory ([`Curation::describe`]) and stored by the same task. This module knows
//! nothing of Pingora.

pub mod catalog;
pub mod router;
pub mod score;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::U256;
use arc_swap::ArcSwap;

pub use catalog::{Category, Member, OfferInfo};
pub use score::{Components, Observed, Score, Weights};

use crate::analytics::query::{self, HOUR_MS};
use crate::store::{Db, StoreError};

/// `curation:` and `catalog:` settings (reloadable).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How often scores are recomputed.
    pub refresh: Duration,
    /// Scores look at the calls of this many past hours (and the current one).
    pub window_hours: u32,
    pub weights: Weights,
    pub categories: Vec<Category>,
    /// A project's key sees what other projects did at an endpoint only in aggregate, and only
    /// where at least this many other projects called it.
    pub min_shared_projects: usize,
}

pub const DEFAULT_REFRESH_SECONDS: u64 = 10;
pub const DEFAULT_MIN_SHARED_PROJECTS: usize = 3;
pub const DEFAULT_WINDOW_HOURS: u32 = 24;
/// Most offers waiting to be stored (beyond: the newest are dropped until the next refresh).
const MAX_PENDING: usize = 1024;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            refresh: Duration::from_secs(DEFAULT_REFRESH_SECONDS),
            window_hours: DEFAULT_WINDOW_HOURS,
            weights: Weights::default(),
            categories: Vec::new(),
            min_shared_projects: DEFAULT_MIN_SHARED_PROJECTS,
        }
    }
}

/// One endpoint of the catalog, scored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub endpoint: String,
    pub category: Option<String>,
    /// From the YAML (the catalog member's), else from its offer.
    pub description: Option<String>,
    pub offer: Option<OfferInfo>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The window's totals (calls that count: see [`stats`]).
    pub totals: stats::Totals,
    pub observed: Observed,
    /// `None`: no calls in the window.
    pub score: Option<Score>,
}

impl Entry {
    pub fn success_rate(&self) -> Option<f64> {
        (self.observed.calls > 0)
            .then(|| self.observed.successes as f64 / self.observed.calls as f64)
    }

    /// Something was spent and nothing succeeded: the price per success is unbounded.
    pub fn paid_without_success(&self) -> bool {
        self.observed.price.is_some_and(f64::is_infinite)
    }

    /// Effective price per successful call (base units) and its asset symbol.
    pub fn price(&self) -> Option<(U256, &str)> {
        let units = self.totals.price_units()?;
        Some((units, self.observed.symbol.as_str()))
    }
}

/// A category and its means.
#[derive(Debug, Clone)]
pub struct CategoryInfo {
    pub name: String,
    pub description: Option<String>,
    pub benchmark: score::Benchmark,
    /// Mean price per success per asset symbol, in base units (integer division).
    pub price_units: BTreeMap<String, U256>,
}

/// The scores at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was computed (unix ms; 0: not yet).
    pub at_ms: i64,
    pub window_hours: u32,
    pub weights: Weights,
    /// By endpoint key.
    pub entries: BTreeMap<String, Entry>,
    /// In YAML order.
    pub categories: Vec<CategoryInfo>,
    /// See [`Settings::min_shared_projects`].
    pub min_shared_projects: usize,
}

impl Snapshot {
    /// What `project`'s key may see, scored again: its own endpoints (from its own calls
    /// alone, unless enough other projects called them too) and the endpoints at least
    /// [`Snapshot::min_shared_projects`] other projects called (in aggregate). Nothing of
    /// another project's calls at an endpoint fewer projects share is in it, not even the
    /// endpoint (every endpoint key was learnt from some project's traffic).
    pub fn for_project(&self, project: &str) -> Snapshot {
        let mut entries = BTreeMap::new();
        for (key, e) in &self.entries {
            let others = e
                .totals
                .projects
                .iter()
                .filter(|p| p.as_str() != project)
                .count();
            if others >= self.min_shared_projects {
                entries.insert(key.clone(), e.clone());
                continue;
            }
            let Some(mine) = e.totals.by_project.get(project) else {
                continue;
            };
            let mut own = e.clone();
            own.observed = Observed {
                reputation: e.observed.reputation,
                ..mine.observed()
            };
            own.first_seen_ms = mine.last_hour_ms;
            own.last_seen_ms = mine.last_hour_ms;
            own.totals = mine.clone();
            entries.insert(key.clone(), own);
        }
        let described: Vec<(String, Option<String>)> = self
            .categories
            .iter()
            .map(|c| (c.name.clone(), c.description.clone()))
            .collect();
        let categories = score_entries(&mut entries, &described, &self.weights);
        Snapshot {
            at_ms: self.at_ms,
            window_hours: self.window_hours,
            weights: self.weights,
            entries,
            categories,
            min_shared_projects: self.min_shared_projects,
        }
    }

    /// Entries of `category` (all without one), best score first (unscored last).
    pub fn ranked(&self, category: Option<&str>) -> Vec<&Entry> {
        let mut list: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| category.is_none_or(|c| e.category.as_deref() == Some(c)))
            .collect();
        list.sort_by(|a, b| {
            let s = |e: &Entry| e.score.map_or(-1.0, |s| s.score);
            s(b).total_cmp(&s(a))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
        });
        list
    }
}

/// Builds a snapshot from the catalog, the window's totals and the settings.
pub fn build(
    settings: &Settings,
    stored: Vec<catalog::Stored>,
    mut totals: BTreeMap<String, stats::Totals>,
    reputation: &dyn Fn(&str) -> Option<f64>,
    at_ms: i64,
) -> Snapshot {
    // The stored catalog, then what was seen in the window but is not stored yet (the
    // catalog write failed or is behind).
    let mut rows: Vec<(String, i64, i64, Option<OfferInfo>)> = stored
        .into_iter()
        .map(|s| (s.endpoint, s.first_seen_ms, s.last_seen_ms, s.offer))
        .collect();
    let known: std::collections::HashSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    for (endpoint, t) in &totals {
        if !known.contains(endpoint) {
            rows.push((endpoint.clone(), t.last_hour_ms, t.last_hour_ms, None));
        }
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (endpoint, first, last, offer) in rows {
        let t = totals.remove(&endpoint).unwrap_or_default();
        let member = catalog::category_of(&settings.categories, &endpoint);
        let description = member
            .and_then(|(_, m)| m.description.clone())
            .or_else(|| offer.as_ref().and_then(|o| o.description.clone()));
        let last = last.max(t.last_hour_ms);
        let mut observed = t.observed();
        observed.reputation = reputation(&endpoint);
        entries.insert(
            endpoint.clone(),
            Entry {
                observed,
                totals: t,
                category: member.map(|(c, _)| c.name.clone()),
                description,
                offer,
                first_seen_ms: first,
                last_seen_ms: last,
                score: None,
                endpoint,
            },
        );
    }
    let described: Vec<(String, Option<String>)> = settings
        .categories
        .iter()
        .map(|c| (c.name.clone(), c.description.clone()))
        .collect();
    let categories = score_entries(&mut entries, &described, &settings.weights);
    Snapshot {
        at_ms,
        window_hours: settings.window_hours,
        weights: settings.weights,
        entries,
        categories,
        min_shared_projects: settings.min_shared_projects,
    }
}

/// Category means (`categories`: name and description, in YAML order), then each entry's
/// score (an endpoint in no category is its own benchmark).
fn score_entries(
    entries: &mut BTreeMap<String, Entry>,
    categories: &[(String, Option<String>)],
    weights: &Weights,
) -> Vec<CategoryInfo> {
    let categories: Vec<CategoryInfo> = categories
        .iter()
        .map(|(name, description)| {
            let members = || {
                entries
                    .values()
                    .filter(|e| e.category.as_deref() == Some(name.as_str()))
            };
            let mut prices: BTreeMap<String, (U256, u64)> = BTreeMap::new();
            for (units, symbol) in members().filter_map(Entry::price) {
                let (sum, n) = prices.entry(symbol.to_string()).or_default();
                *sum = sum.saturating_add(units);
                *n += 1;
            }
            CategoryInfo {
                name: name.clone(),
                description: description.clone(),
                benchmark: score::Benchmark::of(members().map(|e| &e.observed)),
                price_units: prices
                    .into_iter()
                    .map(|(s, (sum, n))| (s, sum / U256::from(n.max(1))))
                    .collect(),
            }
        })
        .collect();
    let by_name: HashMap<&str, &score::Benchmark> = categories
        .iter()
        .map(|c| (c.name.as_str(), &c.benchmark))
        .collect();
    for e in entries.values_mut() {
        let own;
        let bench = match e.category.as_deref().and_then(|c| by_name.get(c)) {
            Some(b) => *b,
            None => {
                own = score::Benchmark::of([&e.observed]);
                &own
            }
        };
        e.score = score::score(&e.observed, bench, weights);
    }
    categories
}

/// The curation service: the current snapshot and the task that refreshes it.
pub struct Curation {
    db: Db,
    settings: ArcSwap<Settings>,
    snapshot: ArcSwap<Snapshot>,
    /// Offers' descriptions waiting to be stored, by endpoint.
    pending: Mutex<HashMap<String, OfferInfo>>,
    /// The last hour each endpoint was recorded as seen (saves rewriting it every refresh).
    seen: Mutex<HashMap<String, i64>>,
    /// Wakes the refresh task early (tests, a reload).
    kick: tokio::sync::Notify,
    /// The reputation component's source (the on-chain audit), once it is running.
    reputation: std::sync::OnceLock<Arc<dyn ReputationSource>>,
}

/// Where the reputation component comes from (the on-chain audit's reviewers).
pub trait ReputationSource: Send + Sync {
    /// An endpoint's reputation in [0, 100]; `None` when nothing is known (neutral, 50).
    fn reputation(&self, endpoint: &str) -> Option<f64>;
}

impl Curation {
    /// Starts the refresh task on `spawn` (the state runtime).
    pub fn start(
        db: Db,
        settings: Settings,
        spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) -> Arc<Curation> {
        let curation = Arc::new(Curation {
            db,
            settings: ArcSwap::from_pointee(settings),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            pending: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            kick: tokio::sync::Notify::new(),
            reputation: std::sync::OnceLock::new(),
        });
        spawn(Box::pin(curation.clone().refresh_loop()));
        curation
    }

    /// Feeds the reputation component from `source` (set once, when the audit starts).
    pub fn set_reputation(&self, source: Arc<dyn ReputationSource>) {
        let _ = self.reputation.set(source);
    }

    /// The current scores (cheap: one atomic load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// New settings from a reload: the next refresh (started now) uses them.
    pub fn configure(&self, settings: Settings) {
        if **self.settings.load() != settings {
            self.settings.store(Arc::new(settings));
            self.kick.notify_one();
        }
    }

    /// What an offer said about `endpoint`; stored by the refresh task (no SQL here).
    pub fn describe(&self, endpoint: &str, info: OfferInfo) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING || pending.contains_key(endpoint) {
            pending.insert(endpoint.to_string(), info);
        }
    }

    async fn refresh_loop(self: Arc<Curation>) {
        loop {
            if let Err(e) = self.refresh().await {
                log::warn!("curation: scores not refreshed: {e}");
            }
            let every = self.settings.load().refresh;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.kick.notified() => {}
            }
        }
    }

    /// Stores what is pending, reads the window's rollups and the catalog, swaps in new scores.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let settings = self.settings.load_full();
        let pending: Vec<(String, OfferInfo)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (i, (endpoint, info)) in pending.iter().enumerate() {
            if let Err(e) = catalog::describe(&self.db, endpoint, info).await {
                // Kept for the next refresh (unless newer ones came meanwhile).
                let mut waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for (endpoint, info) in pending.into_iter().skip(i) {
                    waiting.entry(endpoint).or_insert(info);
                }
                return Err(e);
            }
        }
        let now = crate::clock::unix_millis() as i64;
        let this_hour = now.div_euclid(HOUR_MS) * HOUR_MS;
        let from = this_hour - i64::from(settings.window_hours) * HOUR_MS;
        let rows = query::rollups(&self.db, None, from, this_hour + HOUR_MS).await?;
        let totals = stats::per_endpoint(&rows);
        // Only endpoints whose last hour moved since the last refresh are written.
        let moved: Vec<(&String, i64)> = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            totals
                .iter()
                .filter(|(e, t)| seen.get(*e) != Some(&t.last_hour_ms))
                .map(|(e, t)| (e, t.last_hour_ms))
                .collect()
        };
        for (endpoint, hour) in moved {
            catalog::seen(&self.db, endpoint, hour).await?;
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(endpoint.clone(), hour);
        }
        let stored = catalog::load(&self.db).await?;
        let reputation =
            |endpoint: &str| self.reputation.get().and_then(|r| r.reputation(endpoint));
        self.snapshot
            .store(Arc::new(build(&settings, stored, totals, &reputation, now)));
        Ok(())
    }
}
