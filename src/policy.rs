//! Spend policy of one project: which hosts it may reach, which offers it may pay and how
//! much per request, day and month. Pure evaluation; budgets are held by [`crate::budget`].
//!
//! Host patterns (`allow_hosts`, `block_hosts`, `host_caps[].host`), matched case-insensitively
//! against the target host name (no port, no trailing dot):
//!
//! | pattern | matches | does not match |
//! |---|---|---|
//! | `api.example.com` | `api.example.com` | `x.api.example.com` |
//! | `*.example.com` | `a.example.com`, `a.b.example.com` | **`example.com`** (list it separately) |
//! | `*` | every host | — |
//!
//! The block list is checked first; an empty allow list allows every host.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::{Address, U256};
use arc_swap::ArcSwap;
use serde_json::{Value, json};

use crate::budget::{Denial, Limits, Window};
use crate::config::Project;

/// A host pattern: exact name, `*.suffix` (subdomains at any depth, not the bare suffix) or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Subdomains(String),
}

impl HostPattern {
    /// Parses a pattern; `None` if it is not one of the documented forms.
    pub fn parse(raw: &str) -> Option<HostPattern> {
        if raw.trim() == "*." {
            return None;
        }
        let p = normalise(raw);
        if p == "*" {
            return Some(HostPattern::Any);
        }
        let (wild, name) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
            });
        if !valid {
            return None;
        }
        Some(if wild {
            HostPattern::Subdomains(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Whether `host` (already normalised) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Subdomains(s) => write!(f, "*{s}"),
        }
    }
}

/// Lower case, without a trailing dot or IPv6 brackets.
pub fn normalise(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Limits for one budget pool: the assets with `symbol` (on `chain_id` only, if set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRule {
    /// Ledger pool name: `SYMBOL` or `SYMBOL@eip155:<chain>`.
    pub pool: String,
    pub symbol: String,
    pub chain_id: Option<u64>,
    pub per_request: Option<U256>,
    pub daily: Option<U256>,
    pub monthly: Option<U256>,
}

impl BudgetRule {
    pub fn covers(&self, symbol: &str, chain_id: u64) -> bool {
        self.symbol == symbol && self.chain_id.is_none_or(|c| c == chain_id)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            daily: self.daily,
            monthly: self.monthly,
        }
    }
}

/// A price cap for hosts matching `pattern`, in base units of assets with `symbol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCap {
    pub pattern: HostPattern,
    pub symbol: String,
    pub max: U256,
}

/// Payments above `threshold` (in assets with `symbol`) wait for a webhook's approval.
#[derive(Debug, Clone)]
pub struct Approval {
    pub symbol: String,
    pub threshold: U256,
    pub webhook: crate::webhook::Webhook,
}

/// Where spend anomalies are reported.
#[derive(Debug, Clone)]
pub struct AnomalyAlert {
    pub rule: crate::anomaly::AnomalyRule,
    pub webhook: crate::webhook::Webhook,
}

/// A project's policy (`projects[].policy`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// false = dry run: decisions are logged and counted, nothing is blocked.
    pub enforce: bool,
    /// Budget pools. Non-empty: only assets covered by a pool may be paid.
    pub budgets: Vec<BudgetRule>,
    pub allow_hosts: Vec<HostPattern>,
    pub block_hosts: Vec<HostPattern>,
    pub host_caps: Vec<HostCap>,
    /// Allowed chain ids (empty: every network `payments.assets` allows).
    pub networks: Vec<u64>,
    /// Allowed recipients (empty: every recipient `payments.pay_to` allows).
    pub pay_to: Vec<Address>,
    pub approval: Option<Approval>,
    pub anomaly: Option<AnomalyAlert>,
}

/// What an offer looks like to the policy.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    pub host: &'a str,
    pub chain_id: u64,
    pub symbol: &'a str,
    pub asset: Address,
    pub pay_to: Address,
    pub amount: U256,
}

/// Why the policy refuses. [`Violation::code`] is the agent-facing error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    HostBlocked {
        host: String,
        pattern: String,
    },
    HostNotAllowed {
        host: String,
    },
    NetworkNotAllowed {
        network: String,
    },
    AssetNotAllowed {
        symbol: String,
        network: String,
    },
    PayToNotAllowed {
        pay_to: Address,
    },
    PerRequestLimit {
        pool: String,
        amount: U256,
        limit: U256,
    },
    HostPriceCap {
        host: String,
        amount: U256,
        limit: U256,
    },
    Budget {
        pool: String,
        denial: Box<Denial>,
    },
    ApprovalDenied {
        reason: String,
    },
}

impl Violation {
    pub fn code(&self) -> &'static str {
        match self {
            Violation::HostBlocked { .. } => "HOST_BLOCKED",
            Violation::HostNotAllowed { .. } => "HOST_NOT_ALLOWED",
            Violation::NetworkNotAllowed { .. } => "NETWORK_NOT_ALLOWED",
            Violation::AssetNotAllowed { .. } => "ASSET_NOT_ALLOWED",
            Violation::PayToNotAllowed { .. } => "PAY_TO_NOT_ALLOWED",
            Violation::PerRequestLimit { .. } => "PER_REQUEST_LIMIT_EXCEEDED",
            Violation::HostPriceCap { .. } => "HOST_PRICE_CAP_EXCEEDED",
            Violation::Budget { denial, .. } => match denial.window {
                Window::Daily => "DAILY_BUDGET_EXCEEDED",
                Window::Monthly => "MONTHLY_BUDGET_EXCEEDED",
            },
            Violation::ApprovalDenied { .. } => "APPROVAL_DENIED",
        }
    }

    /// Machine-readable details for the JSON error body (amounts as decimal strings).
    pub fn details(&self) -> Value {
        match self {
            Violation::HostBlocked { host, pattern } => json!({"host": host, "pattern": pattern}),
            Violation::HostNotAllowed { host } => json!({"host": host}),
            Violation::NetworkNotAllowed { network } => json!({"network": network}),
            Violation::AssetNotAllowed { symbol, network } => {
                json!({"asset": symbol, "network": network})
            }
            Violation::PayToNotAllowed { pay_to } => json!({"payTo": pay_to.to_string()}),
            Violation::PerRequestLimit {
                pool,
                amount,
                limit,
            } => {
                json!({"pool": pool, "amount": amount.to_string(), "limit": limit.to_string()})
            }
            Violation::HostPriceCap {
                host,
                amount,
                limit,
            } => {
                json!({"host": host, "amount": amount.to_string(), "limit": limit.to_string()})
            }
            Violation::Budget { pool, denial } => json!({
                "pool": pool,
                "window": denial.window.as_str(),
                "limit": denial.limit.to_string(),
                "used": denial.used.to_string(),
                "amount": denial.amount.to_string(),
                "remaining": denial.limit.saturating_sub(denial.used).to_string(),
            }),
            Violation::ApprovalDenied { reason } => json!({"reason": reason}),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::HostBlocked { host, pattern } => {
                write!(f, "host {host} is blocked by the policy ({pattern})")
            }
            Violation::HostNotAllowed { host } => {
                write!(f, "host {host} is not in the policy's allow list")
            }
            Violation::NetworkNotAllowed { network } => {
                write!(f, "network {network} is not allowed by the policy")
            }
            Violation::AssetNotAllowed { symbol, network } => {
                write!(
                    f,
                    "asset {symbol} on {network} is not allowed by the policy"
                )
            }
            Violation::PayToNotAllowed { pay_to } => {
                write!(f, "recipient {pay_to} is not allowed by the policy")
            }
            Violation::PerRequestLimit {
                pool,
                amount,
                limit,
            } => write!(
                f,
                "{amount} exceeds the per-request limit of {limit} ({pool} base units)"
            ),
            Violation::HostPriceCap {
                host,
                amount,
                limit,
            } => {
                write!(f, "{amount} exceeds the price cap of {limit} for {host}")
            }
            Violation::Budget { pool, denial } => write!(f, "{pool}: {denial}"),
            Violation::ApprovalDenied { reason } => write!(f, "approval denied: {reason}"),
        }
    }
}

impl Policy {
    /// Block list first, then the allow list (empty = allow all).
    pub fn check_host(&self, host: &str) -> Result<(), Violation> {
        let host = normalise(host);
        if let Some(p) = self.block_hosts.iter().find(|p| p.matches(&host)) {
            return Err(Violation::HostBlocked {
                host,
                pattern: p.to_string(),
            });
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|p| p.matches(&host)) {
            return Err(Violation::HostNotAllowed { host });
        }
        Ok(())
    }

    /// Checks one offer (host lists excluded: see [`Policy::check_host`]). On success, the
    /// budget pool it is charged to (`None` when the policy defines no budgets).
    pub fn check_spend(&self, s: &Spend<'_>) -> Result<Option<&BudgetRule>, Violation> {
        let network = crate::x402::networks::caip2(s.chain_id);
        if !self.networks.is_empty() && !self.networks.contains(&s.chain_id) {
            return Err(Violation::NetworkNotAllowed { network });
        }
        if !self.pay_to.is_empty() && !self.pay_to.contains(&s.pay_to) {
            return Err(Violation::PayToNotAllowed { pay_to: s.pay_to });
        }
        let host = normalise(s.host);
        if let Some(cap) = self
            .host_caps
            .iter()
            .find(|c| c.symbol == s.symbol && c.pattern.matches(&host) && s.amount > c.max)
        {
            return Err(Violation::HostPriceCap {
                host,
                amount: s.amount,
                limit: cap.max,
            });
        }
        if self.budgets.is_empty() {
            return Ok(None);
        }
        let rule = self
            .budgets
            .iter()
            .filter(|b| b.covers(s.symbol, s.chain_id))
            // A network-specific pool wins over a symbol-wide one.
            .max_by_key(|b| b.chain_id.is_some())
            .ok_or_else(|| Violation::AssetNotAllowed {
                symbol: s.symbol.to_string(),
                network,
            })?;
        if let Some(limit) = rule.per_request.filter(|l| s.amount > *l) {
            return Err(Violation::PerRequestLimit {
                pool: rule.pool.clone(),
                amount: s.amount,
                limit,
            });
        }
        Ok(Some(rule))
    }
}

/// Which policy applies to a project: an active one from the database (admin API) overrides
/// the YAML one. Looked up per request in memory; the database is only read by the poller.
#[derive(Default)]
pub struct PolicyBook {
    overrides: ArcSwap<HashMap<String, Arc<Policy>>>,
    /// Wakes the poller at once after a write through this process's admin API.
    changed: tokio::sync::Notify,
    /// Changes announced with [`PolicyBook::changed`] (tickets).
    requested: AtomicU64,
    /// The highest ticket a finished look at the database covered.
    looked: tokio::sync::watch::Sender<u64>,
}

impl PolicyBook {
    pub fn effective(&self, project: &Project) -> Option<Arc<Policy>> {
        let overrides = self.overrides.load();
        overrides
            .get(&project.id)
            .cloned()
            .or_else(|| project.policy.clone())
    }

    /// The database policies currently applied, by project.
    pub fn overrides(&self) -> Arc<HashMap<String, Arc<Policy>>> {
        self.overrides.load_full()
    }

    /// Applies a new set of database policies (see `live::sync_policies`).
    pub fn replace(&self, overrides: HashMap<String, Arc<Policy>>) {
        self.overrides.store(Arc::new(overrides));
    }

    /// Says the database changed (a policy write of this process, done before the call): the
    /// poller looks again at once instead of at its next tick. Returns a ticket for
    /// [`PolicyBook::applied`].
    pub fn changed(&self) -> u64 {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.notify_one();
        ticket
    }

    /// Waits (at most `timeout`) until a look at the database that began after the change of
    /// `ticket` has finished; true once one has.
    pub async fn applied(&self, ticket: u64, timeout: std::time::Duration) -> bool {
        let mut looked = self.looked.subscribe();
        tokio::time::timeout(timeout, looked.wait_for(|n| *n >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// For the poller: waits until [`PolicyBook::changed`] is called or `poll` passed; returns
    /// the ticket the coming look covers (pass it to [`PolicyBook::looked`]).
    pub async fn next_look(&self, poll: std::time::Duration) -> u64 {
        tokio::select! {
            _ = self.changed.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        self.requested.load(Ordering::SeqCst)
    }

    /// For the poller: a look that began at `ticket` is over (whatever it found).
    pub fn looked(&self, ticket: u64) {
        self.looked.send_if_modified(|n| {
            let newer = ticket > *n;
            *n = (*n).max(ticket);
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pattern_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "API.Example.COM.", true),
            ("api.example.com", "x.api.example.com", false),
            ("api.example.com", "example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "example.com.evil.net", false),
            ("*", "anything.at.all", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("*.0.0.1", "127.0.0.1", true),
        ];
        for (pattern, host, expected) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(
                p.matches(&normalise(host)),
                *expected,
                "{pattern} vs {host}"
            );
        }
        for bad in [
            "",
            "*.",
            "a..b",
            "*example.com",
            "ex ample.com",
            "a.*.com",
            "https://x.com",
        ] {
            assert_eq!(HostPattern::parse(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn block_list_wins_and_an_empty_allow_list_allows_all() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        let mut policy = Policy {
            block_hosts: vec![p("evil.example.com")],
            ..Policy::default()
        };
        assert!(policy.check_host("api.example.com").is_ok());
        assert_eq!(
            policy.check_host("evil.example.com").unwrap_err().code(),
            "HOST_BLOCKED"
        );
        policy.allow_hosts = vec![p("*.example.com")];
        assert_eq!(
            policy.check_host("evil.example.com").unwrap_err().code(),
            "HOST_BLOCKED"
        );
        assert!(policy.check_host("api.example.com").is_ok());
        assert_eq!(
            policy.check_host("example.com").unwrap_err().code(),
            "HOST_NOT_ALLOWED"
        );
    }

    #[test]
    fn offers_are_checked_against_networks_recipients_caps_pools_and_per_request() {
        let usdc = Address::repeat_byte(1);
        let payee = Address::repeat_byte(2);
        let policy = Policy {
            enforce: true,
            budgets: vec![
                BudgetRule {
                    pool: "USDC".into(),
                    symbol: "USDC".into(),
                    chain_id: None,
                    per_request: Some(U256::from(100)),
                    daily: Some(U256::from(1000)),
                    monthly: None,
                },
                BudgetRule {
                    pool: "USDC@eip155:8453".into(),
                    symbol: "USDC".into(),
                    chain_id: Some(8453),
                    per_request: Some(U256::from(50)),
                    daily: None,
                    monthly: None,
                },
            ],
            host_caps: vec![HostCap {
                pattern: HostPattern::parse("*.cheap.dev").unwrap(),
                symbol: "USDC".into(),
                max: U256::from(10),
            }],
            networks: vec![84532, 8453],
            pay_to: vec![payee],
            ..Policy::default()
        };
        let spend = |host, chain_id, symbol, pay_to, amount: u64| Spend {
            host,
            chain_id,
            symbol,
            asset: usdc,
            pay_to,
            amount: U256::from(amount),
        };
        let ok = policy
            .check_spend(&spend("a.dev", 84532, "USDC", payee, 100))
            .unwrap();
        assert_eq!(ok.unwrap().pool, "USDC");
        let code = |s| policy.check_spend(&s).unwrap_err().code();
        assert_eq!(
            code(spend("a.dev", 84532, "USDC", payee, 101)),
            "PER_REQUEST_LIMIT_EXCEEDED"
        );
        // The network-specific pool applies on Base.
        assert_eq!(
            code(spend("a.dev", 8453, "USDC", payee, 60)),
            "PER_REQUEST_LIMIT_EXCEEDED"
        );
        assert_eq!(
            code(spend("a.dev", 1, "USDC", payee, 1)),
            "NETWORK_NOT_ALLOWED"
        );
        assert_eq!(
            code(spend("a.dev", 84532, "EURC", payee, 1)),
            "ASSET_NOT_ALLOWED"
        );
        assert_eq!(
            code(spend("a.dev", 84532, "USDC", Address::ZERO, 1)),
            "PAY_TO_NOT_ALLOWED"
        );
        assert_eq!(
            code(spend("x.cheap.dev", 84532, "USDC", payee, 11)),
            "HOST_PRICE_CAP_EXCEEDED"
        );
        assert!(
            policy
                .check_spend(&spend("x.cheap.dev", 84532, "USDC", payee, 10))
                .is_ok()
        );
    }
}
