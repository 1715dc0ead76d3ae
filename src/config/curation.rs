//! Validation of `curation:` and `catalog:`.

use std::collections::HashSet;
use std::time::Duration;

use super::Validator;
use super::file::*;
use crate::curation::{Category, Member, Settings, Weights};

/// Most characters of a catalog description.
const MAX_DESCRIPTION: usize = 1024;

impl<E: Fn(&str) -> Option<String>> Validator<'_, E> {
    pub(super) fn curation(
        &mut self,
        f: FileCuration,
        catalog: Vec<(usize, FileCategory)>,
        analytics: &crate::analytics::Settings,
    ) -> Settings {
        let refresh = self.positive(
            f.refresh_seconds,
            crate::curation::DEFAULT_REFRESH_SECONDS,
            "curation.refresh_seconds",
        );
        let window_hours = self.positive(
            f.window_hours.map(u64::from),
            u64::from(crate::curation::DEFAULT_WINDOW_HOURS),
            "curation.window_hours",
        );
        let kept = u64::from(analytics.rollup_retention_days) * 24;
        if window_hours > kept {
            self.issue(
                "curation.window_hours",
                format!(
                    "must be at most analytics.rollup_retention_days × 24 ({kept}): older calls are not kept"
                ),
            );
        }
        let min_shared_projects = self.positive(
            f.min_shared_projects,
            crate::curation::DEFAULT_MIN_SHARED_PROJECTS as u64,
            "curation.min_shared_projects",
        ) as usize;
        let weights = self.weights(f.weights.unwrap_or_default());
        let mut names = HashSet::new();
        let mut categories = Vec::new();
        for (i, c) in catalog {
            let path = format!("catalog[{i}]");
            let name = c.category.trim().to_string();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                self.issue(
                    &format!("{path}.category"),
                    "must be 1 to 64 printable characters",
                );
            } else if !names.insert(name.clone()) {
                self.issue(
                    &format!("{path}.category"),
                    format!("category {name:?} is defined twice"),
                );
            }
            if c.endpoints.is_empty() {
                self.issue(
                    &format!("{path}.endpoints"),
                    "must list at least one endpoint",
                );
            }
            let description = self.description(c.description, &format!("{path}.description"));
            let mut endpoints = Vec::new();
            for (j, m) in c.endpoints.into_iter().enumerate() {
                let at = format!("{path}.endpoints[{j}]");
                let (pattern, description) = match m {
                    FileMember::Pattern(p) => (p, None),
                    FileMember::Described(d) => (
                        d.pattern,
                        self.description(d.description, &format!("{at}.description")),
                    ),
                };
                let pattern = pattern.trim().to_string();
                if pattern.is_empty()
                    || pattern
                        .chars()
                        .any(|ch| ch.is_whitespace() || ch.is_control())
                {
                    self.issue(
                        &at,
                        "must be an endpoint key (host[:port]/path) or a pattern with *, without spaces",
                    );
                    continue;
                }
                if pattern.contains("://") {
                    self.issue(
                        &at,
                        "an endpoint key has no scheme: write host[:port]/path (as the analytics show it)",
                    );
                    continue;
                }
                endpoints.push(Member {
                    pattern,
                    description,
                });
            }
            categories.push(Category {
                name,
                description,
                endpoints,
            });
        }
        Settings {
            refresh: Duration::from_secs(refresh),
            window_hours: window_hours.min(u64::from(u32::MAX)) as u32,
            weights,
            categories,
            min_shared_projects,
        }
    }

    fn weights(&mut self, f: FileWeights) -> Weights {
        let d = Weights::default();
        let mut one = |v: Option<f64>, default: f64, name: &str| match v {
            Some(w) if w.is_finite() && (0.0..=1000.0).contains(&w) => w,
            Some(_) => {
                self.issue(
                    &format!("curation.weights.{name}"),
                    "must be a number from 0 to 1000",
                );
                default
            }
            None => default,
        };
        let w = Weights {
            reliability: one(f.reliability, d.reliability, "reliability"),
            latency: one(f.latency, d.latency, "latency"),
            cost: one(f.cost, d.cost, "cost"),
            volume: one(f.volume, d.volume, "volume"),
            reputation: one(f.reputation, d.reputation, "reputation"),
        };
        if w.reliability + w.latency + w.cost + w.volume + w.reputation <= 0.0 {
            self.issue("curation.weights", "at least one weight must be above 0");
            return d;
        }
        w
    }

    fn description(&mut self, d: Option<String>, path: &str) -> Option<String> {
        let d = d?.trim().to_string();
        if d.chars().count() > MAX_DESCRIPTION || d.chars().any(|c| c.is_control() && c != '\n') {
            self.issue(
                path,
                format!("must be at most {MAX_DESCRIPTION} printable characters"),
            );
            return None;
        }
        (!d.is_empty()).then_some(d)
    }
}
