//! Smart routes: which of a route's candidate upstreams a request goes to.
//!
//! Candidates without a score yet (no calls in the scoring window) and no failure are tried
//! first, in turn; then every `1/explore`-th request (5 % by default) goes to another candidate
//! than the best, in turn, so their scores stay fresh; every other request goes to the best
//! score. A candidate's circuit breaker opens after `failures` consecutive failures and skips
//! it for `open` seconds; then the next request probes it (half-open): a success closes the
//! breaker, a failure opens it again. State lives per route name and survives reloads while the route's
//! candidates stay the same. Lock-free on the request path except a read lock to find the
//! route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::Snapshot;

/// Why a request went to its candidate (the `reason` label of `pag0_route_choice_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The best score among the candidates whose breaker lets requests through.
    Best,
    /// A candidate without data yet, or the bounded share sent to the others.
    Explore,
    /// The previous candidate failed before anything was paid.
    Failover,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Best => "best",
            Reason::Explore => "explore",
            Reason::Failover => "failover",
        }
    }
}

/// A candidate picked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub reason: Reason,
    /// The request holds the candidate's half-open probe.
    pub probe: bool,
}

/// What recording a failure did to the candidate's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    /// It opened (or opened again after a failed probe) now.
    Opened,
    Open,
}

#[derive(Default)]
struct Candidate {
    /// Consecutive failures.
    failures: AtomicU32,
    /// Unix ms until which the breaker is open (0: closed).
    open_until_ms: AtomicU64,
    /// A half-open breaker's probe is out.
    probing: AtomicBool,
}

#[derive(Default)]
struct Groups {
    due: Vec<usize>,
    new: Vec<usize>,
    scored: Vec<usize>,
    failing: Vec<usize>,
}

/// One smart route's candidates, by endpoint key.
pub struct RouteState {
    keys: Vec<String>,
    candidates: Vec<Candidate>,
    /// Requests so far (drives the turns of new candidates and of exploration).
    counter: AtomicU64,
}

impl RouteState {
    fn new(keys: &[String]) -> RouteState {
        RouteState {
            keys: keys.to_vec(),
            candidates: keys.iter().map(|_| Candidate::default()).collect(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn key(&self, i: usize) -> &str {
        &self.keys[i]
    }

    /// Whether `i` takes this request: `Some(false)` closed, `Some(true)` half-open and its
    /// probe was free (this request now holds it: report it with `succeeded`/`failed`, or give
    /// it back with [`RouteState::release`]), `None` open.
    fn admit(&self, i: usize, now_ms: u64) -> Option<bool> {
        let c = &self.candidates[i];
        let until = c.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Some(false);
        }
        (now_ms >= until
            && c.probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok())
        .then_some(true)
    }

    /// A probe this request held ended without telling how `i` did (pag0 answered itself,
    /// the agent left): the next request may probe.
    pub fn release(&self, i: usize) {
        self.candidates[i].probing.store(false, Ordering::Release);
    }

    /// The candidates in groups: half-open ones due for a probe; new ones (no score, no
    /// failure); scored ones, best first (ties: listed order); failing ones without a score.
    /// Open ones are in none.
    fn groups(&self, snap: &Snapshot, now_ms: u64) -> Groups {
        let mut g = Groups::default();
        let mut scored: Vec<(usize, f64)> = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            let c = &self.candidates[i];
            let until = c.open_until_ms.load(Ordering::Acquire);
            let score = snap.entries.get(key).and_then(|e| e.score);
            if until != 0 {
                if now_ms >= until && !c.probing.load(Ordering::Acquire) {
                    g.due.push(i);
                }
            } else if let Some(s) = score {
                scored.push((i, s.score));
            } else if c.failures.load(Ordering::Relaxed) > 0 {
                g.failing.push(i);
            } else {
                g.new.push(i);
            }
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        g.scored = scored.into_iter().map(|(i, _)| i).collect();
        g
    }

    /// The candidate for the next request, why, and whether the request holds its probe.
    pub fn choose(&self, snap: &Snapshot, explore: f64, now_ms: u64) -> Choice {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let Groups {
            due,
            mut new,
            scored,
            failing,
        } = self.groups(snap, now_ms);
        let period = if explore > 0.0 {
            (1.0 / explore).round().max(2.0) as u64
        } else {
            u64::MAX
        };
        let (mut order, reason): (Vec<usize>, Reason) = if !due.is_empty() {
            (
                due.into_iter().chain(new).chain(scored).collect(),
                Reason::Explore,
            )
        } else if !new.is_empty() {
            let turn = (n % new.len() as u64) as usize;
            new.rotate_left(turn);
            (new.into_iter().chain(scored).collect(), Reason::Explore)
        } else if scored.len() > 1 && n % period == period - 1 {
            let mut others = scored[1..].to_vec();
            let turn = ((n / period) % others.len() as u64) as usize;
            others.rotate_left(turn);
            others.push(scored[0]);
            (others, Reason::Explore)
        } else {
            (scored, Reason::Best)
        };
        order.extend(failing);
        for (at, &i) in order.iter().enumerate() {
            if let Some(probe) = self.admit(i, now_ms) {
                // The preferred one's probe was just taken: the next is the best available.
                let reason = if at == 0 { reason } else { Reason::Best };
                return Choice {
                    index: i,
                    reason,
                    probe,
                };
            }
        }
        // Every breaker is open: the one that reopens first.
        let soonest = (0..self.keys.len())
            .min_by_key(|&i| self.candidates[i].open_until_ms.load(Ordering::Acquire))
            .unwrap_or(0);
        Choice {
            index: soonest,
            reason: Reason::Best,
            probe: false,
        }
    }

    /// Where a request goes after `failed` failed: the best scores, new ones, failing ones,
    /// and last half-open ones due for a probe; the first other candidate whose breaker lets
    /// it through (`None`: there is none).
    pub fn failover(
        &self,
        snap: &Snapshot,
        failed: usize,
        now_ms: u64,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<Choice> {
        let g = self.groups(snap, now_ms);
        g.scored
            .into_iter()
            .chain(g.new)
            .chain(g.failing)
            .chain(g.due)
            .filter(|&i| i != failed && allowed(i))
            .find_map(|i| {
                self.admit(i, now_ms).map(|probe| Choice {
                    index: i,
                    reason: Reason::Failover,
                    probe,
                })
            })
    }

    /// `i` answered: its breaker closes (`probe`: this request held its probe). Returns
    /// whether it was open.
    pub fn succeeded(&self, i: usize, probe: bool) -> bool {
        let c = &self.candidates[i];
        c.failures.store(0, Ordering::Relaxed);
        let was_open = c.open_until_ms.swap(0, Ordering::AcqRel) != 0;
        if probe {
            c.probing.store(false, Ordering::Release);
        }
        was_open
    }

    /// `i` failed (no connection, a timeout, a 5xx): after `threshold` in a row, or a failed
    /// probe (`probe`: this request held it), its breaker opens for `open`.
    pub fn failed(
        &self,
        i: usize,
        probe: bool,
        threshold: u32,
        open: Duration,
        now_ms: u64,
    ) -> Breaker {
        let c = &self.candidates[i];
        let failures = c.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let until = c.open_until_ms.load(Ordering::Acquire);
        let reopen = now_ms.saturating_add(open.as_millis().min(u128::from(u64::MAX)) as u64);
        if probe || (until == 0 && failures >= threshold) {
            c.open_until_ms.store(reopen, Ordering::Release);
            if probe {
                c.probing.store(false, Ordering::Release);
            }
            Breaker::Opened
        } else if until != 0 {
            Breaker::Open
        } else {
            Breaker::Closed
        }
    }

    /// Whether `i`'s breaker is open (half-open counts as open).
    pub fn is_open(&self, i: usize) -> bool {
        self.candidates[i].open_until_ms.load(Ordering::Acquire) != 0
    }
}

/// Every smart route's state (in [`crate::live::Shared`], so it survives reloads).
#[derive(Default)]
pub struct Router {
    routes: RwLock<HashMap<String, Arc<RouteState>>>,
}

impl Router {
    /// The state of route `name` with these candidates (new when they changed).
    pub fn route(&self, name: &str, keys: &[String]) -> Arc<RouteState> {
        if let Some(state) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|s| s.keys == keys)
        {
            return state.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let state = routes
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RouteState::new(keys)));
        if state.keys != keys {
            *state = Arc::new(RouteState::new(keys));
        }
        state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curation::{Components, Entry, Observed, Score};

    fn snapshot(scores: &[(&str, Option<f64>)]) -> Snapshot {
        let mut snap = Snapshot::default();
        for (key, score) in scores {
            snap.entries.insert(
                key.to_string(),
                Entry {
                    endpoint: key.to_string(),
                    category: None,
                    description: None,
                    offer: None,
                    first_seen_ms: 0,
                    last_seen_ms: 0,
                    totals: Default::default(),
                    observed: Observed::default(),
                    score: score.map(|s| Score {
                        score: s,
                        components: Components {
                            reliability: s,
                            latency: s,
                            cost: s,
                            volume: s,
                            reputation: s,
                        },
                    }),
                },
            );
        }
        snap
    }

    fn pick(state: &RouteState, snap: &Snapshot, explore: f64, now: u64) -> (usize, Reason) {
        let c = state.choose(snap, explore, now);
        (c.index, c.reason)
    }

    fn keys() -> Vec<String> {
        ["a/*", "b/*", "c/*"].map(String::from).to_vec()
    }

    #[test]
    fn new_candidates_first_then_the_best_with_a_bounded_share_for_the_others() {
        let state = RouteState::new(&keys());
        // b has no score yet: it is tried first.
        let snap = snapshot(&[("a/*", Some(80.0)), ("c/*", Some(60.0))]);
        assert_eq!(pick(&state, &snap, 0.05, 0), (1, Reason::Explore));
        let snap = snapshot(&[
            ("a/*", Some(80.0)),
            ("b/*", Some(50.0)),
            ("c/*", Some(60.0)),
        ]);
        let mut counts = [0usize; 3];
        let mut explored = 0;
        for _ in 0..1000 {
            let (i, reason) = pick(&state, &snap, 0.05, 0);
            counts[i] += 1;
            explored += usize::from(reason == Reason::Explore);
        }
        assert_eq!(explored, 50, "every 20th request");
        assert_eq!(counts[0], 950);
        assert_eq!(counts[1], 25, "the others in turn");
        assert_eq!(counts[2], 25);
        // No exploration at 0.
        assert!((0..100).all(|_| pick(&state, &snap, 0.0, 0) == (0, Reason::Best)));
    }

    #[test]
    fn the_breaker_opens_skips_probes_once_and_closes() {
        let state = RouteState::new(&keys());
        let snap = snapshot(&[
            ("a/*", Some(80.0)),
            ("b/*", Some(50.0)),
            ("c/*", Some(60.0)),
        ]);
        let open = Duration::from_secs(30);
        assert_eq!(state.failed(0, false, 3, open, 1_000), Breaker::Closed);
        assert_eq!(state.failed(0, false, 3, open, 1_000), Breaker::Closed);
        assert_eq!(state.failed(0, false, 3, open, 1_000), Breaker::Opened);
        assert!(state.is_open(0));
        // Skipped while open: the next best (c) takes the requests.
        assert_eq!(pick(&state, &snap, 0.0, 2_000), (2, Reason::Best));
        let over = state.failover(&snap, 2, 2_000, |_| true).unwrap();
        assert_eq!((over.index, over.probe), (1, false));
        // A failover never goes where the caller does not allow.
        assert_eq!(state.failover(&snap, 2, 2_000, |i| i != 1), None);
        // After 30 s one request probes a; the others still go to c.
        let probe = state.choose(&snap, 0.0, 31_000);
        assert_eq!(
            (probe.index, probe.reason, probe.probe),
            (0, Reason::Explore, true)
        );
        assert_eq!(pick(&state, &snap, 0.0, 31_000), (2, Reason::Best));
        // A late failure of a request that did not hold the probe leaves it out.
        assert_eq!(state.failed(0, false, 3, open, 31_100), Breaker::Open);
        assert_eq!(pick(&state, &snap, 0.0, 31_200), (2, Reason::Best));
        // A probe given back unreported (pag0 answered itself): the next request probes.
        state.release(0);
        assert!(state.choose(&snap, 0.0, 31_300).probe);
        // A failed probe opens it again; a successful one closes it.
        assert_eq!(state.failed(0, true, 3, open, 31_500), Breaker::Opened);
        assert_eq!(pick(&state, &snap, 0.0, 32_000), (2, Reason::Best));
        let probe = state.choose(&snap, 0.0, 62_000);
        assert_eq!((probe.index, probe.probe), (0, true));
        assert!(state.succeeded(0, true));
        assert!(!state.is_open(0));
        assert_eq!(pick(&state, &snap, 0.0, 62_001), (0, Reason::Best));
        // A huge open time saturates instead of overflowing.
        state.failed(1, false, 1, Duration::from_secs(u64::MAX), u64::MAX - 5);
        assert!(state.is_open(1));
    }

    #[test]
    fn state_survives_while_the_candidates_stay() {
        let router = Router::default();
        let a = router.route("r", &keys());
        a.failed(0, false, 1, Duration::from_secs(5), 0);
        assert!(router.route("r", &keys()).is_open(0));
        let fewer = vec!["a/*".to_string()];
        assert!(!router.route("r", &fewer).is_open(0));
    }
}
