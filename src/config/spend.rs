//! Validation of the spend-firewall sections: `database`, `redis`, `budgets` and
//! `projects[].policy`.

use std::path::Path;
use std::time::Duration;

use alloy_primitives::U256;

use super::Validator;
use super::file::*;
use super::runtime::*;
use super::secret::Secret;
use crate::anomaly::AnomalyRule;
use crate::policy::{AnomalyAlert, Approval, BudgetRule, HostCap, HostPattern, Policy};
use crate::store::{DatabaseConfig, DatabaseKind};
use crate::webhook::Webhook;

impl<E: Fn(&str) -> Option<String>> Validator<'_, E> {
    /// A URL that may carry a password: an `${ENV}` reference, or plain text without one.
    fn url_secret(&mut self, raw: &str, path: &str) -> Option<Secret> {
        if raw.trim_start().starts_with("${") {
            return self.secret(raw, path);
        }
        let secret_inside = match url::Url::parse(raw) {
            Ok(u) => u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password"),
            // An unparsable postgres/redis URL might still carry a password: do not print it.
            Err(_) => !raw.starts_with("sqlite:"),
        };
        if secret_inside {
            self.issue(
                path,
                "a URL with a password must be an environment reference like ${PAG0_DATABASE_URL}",
            );
            return None;
        }
        Some(Secret::plain(raw))
    }

    pub(super) fn database(&mut self, f: FileDatabase) -> DatabaseConfig {
        let raw = f.url.as_deref().unwrap_or(DEFAULT_DATABASE_URL);
        let url = self
            .url_secret(raw, "database.url")
            .unwrap_or_else(Secret::unset);
        let value = url.expose().to_string();
        let (kind, url) = if let Some(file) = value
            .strip_prefix("sqlite://")
            .or_else(|| value.strip_prefix("sqlite:"))
        {
            // A relative SQLite file lives next to the config file.
            let (file, query) = file.split_once('?').unwrap_or((file, ""));
            let path = if file == ":memory:" || Path::new(file).is_absolute() {
                file.to_string()
            } else {
                self.base_dir.join(file).display().to_string()
            };
            let url = match query {
                "" => format!("sqlite:{path}"),
                q => format!("sqlite:{path}?{q}"),
            };
            (DatabaseKind::Sqlite, Secret::plain(url))
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            (DatabaseKind::Postgres, url)
        } else {
            if !value.is_empty() {
                self.issue(
                    "database.url",
                    format!("unsupported database URL {url} (sqlite:<file> or postgres://…)"),
                );
            }
            (DatabaseKind::Sqlite, url)
        };
        let spool = f.spool_file.as_deref().unwrap_or(DEFAULT_SPOOL_FILE);
        DatabaseConfig {
            url,
            kind,
            spool_file: self.base_dir.join(spool),
            timeout: Duration::from_millis(self.positive(
                f.timeout_ms,
                DEFAULT_DATABASE_TIMEOUT_MS,
                "database.timeout_ms",
            )),
        }
    }

    pub(super) fn analytics(
        &mut self,
        f: FileAnalytics,
        database: &DatabaseConfig,
    ) -> crate::analytics::Settings {
        let retention_days = f.retention_days.unwrap_or(DEFAULT_ANALYTICS_RETENTION_DAYS);
        let rollup_retention_days = f
            .rollup_retention_days
            .unwrap_or(DEFAULT_ANALYTICS_ROLLUP_RETENTION_DAYS);
        if retention_days == 0 {
            self.issue("analytics.retention_days", "must be greater than 0");
        }
        if rollup_retention_days < retention_days {
            self.issue(
                "analytics.rollup_retention_days",
                format!("must be at least analytics.retention_days ({retention_days})"),
            );
        }
        let positive = |v: &mut Self, value: Option<usize>, default: usize, path: &str| {
            v.positive(value.map(|n| n as u64), default as u64, path) as usize
        };
        let spool = f
            .spool_file
            .as_deref()
            .unwrap_or(DEFAULT_ANALYTICS_SPOOL_FILE);
        if self.base_dir.join(spool) == database.spool_file {
            self.issue(
                "analytics.spool_file",
                "must differ from database.spool_file (each spool and write-ahead file has one owner)",
            );
        }
        crate::analytics::Settings {
            enabled: f.enabled.unwrap_or(DEFAULT_ANALYTICS_ENABLED),
            retention_days,
            rollup_retention_days,
            queue_capacity: positive(
                self,
                f.queue_capacity,
                DEFAULT_ANALYTICS_QUEUE_CAPACITY,
                "analytics.queue_capacity",
            ),
            batch_rows: positive(
                self,
                f.batch_rows,
                DEFAULT_ANALYTICS_BATCH_ROWS,
                "analytics.batch_rows",
            ),
            flush_interval: Duration::from_millis(self.positive(
                f.flush_interval_ms,
                DEFAULT_ANALYTICS_FLUSH_INTERVAL_MS,
                "analytics.flush_interval_ms",
            )),
            spool_file: self.base_dir.join(spool),
            write_timeout: database.timeout,
        }
    }

    pub(super) fn redis(&mut self, f: FileRedis) -> Option<RedisSettings> {
        let (raw, cluster): (Vec<(String, String)>, bool) = match (f.url, f.cluster) {
            (Some(url), None) => (vec![("redis.url".to_string(), url)], false),
            (None, Some(nodes)) if !nodes.is_empty() => (
                nodes
                    .into_iter()
                    .enumerate()
                    .map(|(i, u)| (format!("redis.cluster[{i}]"), u))
                    .collect(),
                true,
            ),
            (None, Some(_)) => {
                self.issue("redis.cluster", "list at least one seed node URL");
                return None;
            }
            (None, None) => {
                self.issue("redis", "set url (one server) or cluster (seed node URLs)");
                return None;
            }
            (Some(_), Some(_)) => {
                self.issue("redis.cluster", "set either url or cluster, not both");
                return None;
            }
        };
        let count = raw.len();
        let mut urls = Vec::with_capacity(count);
        for (path, raw) in raw {
            let Some(url) = self.url_secret(&raw, &path) else {
                continue;
            };
            let value = url.expose();
            if !value.starts_with("redis://") && !value.starts_with("rediss://")
                || value.contains(char::is_whitespace)
            {
                self.issue(&path, format!("expected redis://host:port, got {url}"));
                continue;
            }
            urls.push(url);
        }
        if urls.len() < count {
            return None;
        }
        // What `LazyRedis::open` takes: the URL, or `cluster` and the seed URLs, by spaces.
        if cluster {
            urls.insert(0, Secret::plain("cluster"));
        }
        let url = Secret::joined(&urls, " ");
        let key_prefix = f
            .key_prefix
            .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string());
        if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
            self.issue(
                "redis.key_prefix",
                "must be non-empty, without braces or spaces",
            );
        }
        Some(RedisSettings {
            url,
            cluster,
            key_prefix,
            timeout: Duration::from_millis(self.positive(
                f.timeout_ms,
                DEFAULT_REDIS_TIMEOUT_MS,
                "redis.timeout_ms",
            )),
        })
    }

    pub(super) fn budgets(&mut self, f: FileBudgets, redis: bool) -> BudgetSettings {
        let ledger = match f.ledger.as_deref() {
            None | Some("memory") => LedgerKind::Memory,
            Some("redis") => {
                if !redis {
                    self.issue("budgets.ledger", "the redis ledger needs a redis: section");
                }
                LedgerKind::Redis
            }
            Some(other) => {
                self.issue(
                    "budgets.ledger",
                    format!("unknown ledger {other:?}, expected memory or redis"),
                );
                LedgerKind::Memory
            }
        };
        let redis_down = match f.redis_down.as_deref() {
            None | Some("fail_closed") => RedisDown::FailClosed,
            Some("in_process") => RedisDown::InProcess,
            Some(other) => {
                self.issue(
                    "budgets.redis_down",
                    format!("unknown value {other:?}, expected fail_closed or in_process"),
                );
                RedisDown::FailClosed
            }
        };
        BudgetSettings {
            ledger,
            redis_down,
            reservation_ttl: Duration::from_secs(self.positive(
                f.reservation_ttl_seconds,
                DEFAULT_RESERVATION_TTL_SECONDS,
                "budgets.reservation_ttl_seconds",
            )),
            commit_without_receipt: f
                .commit_without_receipt
                .unwrap_or(DEFAULT_COMMIT_WITHOUT_RECEIPT),
            release_unsettled: f.release_unsettled.unwrap_or(false),
        }
    }

    /// The decimals shared by every allowed asset with `symbol` (on `chain_id`, if given).
    fn symbol_decimals(
        &mut self,
        payments: &Payments,
        symbol: &str,
        chain_id: Option<u64>,
        path: &str,
    ) -> Option<u8> {
        let matching: Vec<&Asset> = payments
            .assets
            .iter()
            .filter(|a| a.symbol == symbol && chain_id.is_none_or(|c| c == a.chain_id))
            .collect();
        let Some(first) = matching.first() else {
            self.issue(
                path,
                format!(
                    "no asset {symbol:?} in payments.assets{}",
                    match chain_id {
                        Some(c) => format!(" on {}", crate::x402::networks::caip2(c)),
                        None => String::new(),
                    }
                ),
            );
            return None;
        };
        if matching.iter().any(|a| a.decimals != first.decimals) {
            self.issue(
                path,
                format!("the {symbol} assets have different decimals: give each budget a network"),
            );
            return None;
        }
        Some(first.decimals)
    }

    fn amount(
        &mut self,
        raw: Option<&str>,
        decimals: u8,
        symbol: &str,
        path: &str,
    ) -> Option<U256> {
        let raw = raw?;
        match super::parse_units(raw, decimals, symbol) {
            Ok(v) => Some(v),
            Err(why) => {
                self.issue(path, format!("{why} ({raw:?})"));
                None
            }
        }
    }

    fn cooldown(&mut self, raw: Option<u64>, path: &str) -> u64 {
        let value = raw.unwrap_or(DEFAULT_ANOMALY_COOLDOWN_SECONDS);
        if value > MAX_ANOMALY_COOLDOWN_SECONDS {
            self.issue(
                &format!("{path}.cooldown_seconds"),
                format!("at most {MAX_ANOMALY_COOLDOWN_SECONDS} (31 days)"),
            );
            return DEFAULT_ANOMALY_COOLDOWN_SECONDS;
        }
        value
    }

    fn webhook(
        &mut self,
        url: &str,
        token: Option<&str>,
        timeout_ms: Option<u64>,
        default_timeout_ms: u64,
        path: &str,
    ) -> Option<Webhook> {
        let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            self.issue(
                &format!("{path}.webhook"),
                format!("invalid URL {url:?} (http or https)"),
            );
        }
        let token = match token {
            Some(t) => Some(self.secret(t, &format!("{path}.token"))?),
            None => None,
        };
        let timeout = Duration::from_millis(self.positive(
            timeout_ms,
            default_timeout_ms,
            &format!("{path}.timeout_ms"),
        ));
        ok.then(|| Webhook {
            url: url.to_string(),
            token,
            timeout,
        })
    }

    pub(super) fn policy(
        &mut self,
        f: FilePolicy,
        payments: &Payments,
        settings: &BudgetSettings,
        path: &str,
    ) -> Policy {
        let mut budgets: Vec<BudgetRule> = Vec::new();
        for (i, b) in f.budgets.iter().enumerate() {
            let at = format!("{path}.budgets[{i}]");
            let chain_id = match &b.network {
                None => None,
                Some(n) => match crate::x402::networks::chain_id(n) {
                    Some(c) => Some(c),
                    None => {
                        self.issue(
                            &format!("{at}.network"),
                            format!("unknown EVM network {n:?}"),
                        );
                        continue;
                    }
                },
            };
            let Some(decimals) =
                self.symbol_decimals(payments, &b.asset, chain_id, &format!("{at}.asset"))
            else {
                continue;
            };
            let per_request = self.amount(
                b.per_request.as_deref(),
                decimals,
                &b.asset,
                &format!("{at}.per_request"),
            );
            let daily = self.amount(
                b.daily.as_deref(),
                decimals,
                &b.asset,
                &format!("{at}.daily"),
            );
            let monthly = self.amount(
                b.monthly.as_deref(),
                decimals,
                &b.asset,
                &format!("{at}.monthly"),
            );
            let ordered = [per_request, daily, monthly];
            let present: Vec<U256> = ordered.iter().flatten().copied().collect();
            if present.windows(2).any(|w| w[0] > w[1]) {
                self.issue(&at, "limits must satisfy per_request <= daily <= monthly");
            }
            if present.iter().any(|v| v.is_zero()) {
                self.issue(
                    &at,
                    "a limit of 0 blocks every payment: remove the asset instead",
                );
            }
            let pool = match chain_id {
                Some(c) => format!("{}@{}", b.asset, crate::x402::networks::caip2(c)),
                None => b.asset.clone(),
            };
            if budgets.iter().any(|r| r.pool == pool) {
                self.issue(&at, format!("a budget for {pool} is listed twice"));
                continue;
            }
            budgets.push(BudgetRule {
                pool,
                symbol: b.asset.clone(),
                chain_id,
                per_request,
                daily,
                monthly,
            });
        }
        let allow_hosts = self.host_patterns(&f.allow_hosts, &format!("{path}.allow_hosts"));
        let block_hosts = self.host_patterns(&f.block_hosts, &format!("{path}.block_hosts"));
        let mut host_caps = Vec::new();
        for (i, c) in f.host_caps.iter().enumerate() {
            let at = format!("{path}.host_caps[{i}]");
            let Some(pattern) = HostPattern::parse(&c.host) else {
                self.issue(
                    &format!("{at}.host"),
                    format!("invalid host pattern {:?}", c.host),
                );
                continue;
            };
            let Some(symbol) = c.max.split_whitespace().nth(1) else {
                self.issue(&format!("{at}.max"), "give the asset: \"0.01 USDC\"");
                continue;
            };
            let symbol = symbol.to_string();
            let Some(decimals) =
                self.symbol_decimals(payments, &symbol, None, &format!("{at}.max"))
            else {
                continue;
            };
            if let Some(max) = self.amount(Some(&c.max), decimals, &symbol, &format!("{at}.max")) {
                host_caps.push(HostCap {
                    pattern,
                    symbol,
                    max,
                });
            }
        }
        let networks = f
            .networks
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let c = crate::x402::networks::chain_id(n);
                if c.is_none() {
                    self.issue(
                        &format!("{path}.networks[{i}]"),
                        format!("unknown EVM network {n:?}"),
                    );
                }
                c
            })
            .collect();
        let pay_to = self.addresses(&f.pay_to, &format!("{path}.pay_to"));
        let approval = f.approval.and_then(|a| {
            let at = format!("{path}.approval");
            let webhook = self.webhook(
                &a.webhook,
                a.token.as_deref(),
                a.timeout_ms,
                DEFAULT_APPROVAL_TIMEOUT_MS,
                &at,
            );
            // The budget stays held while the approver thinks: the hold must outlive the wait.
            if let Some(w) = &webhook
                && w.timeout * 2 > settings.reservation_ttl
            {
                self.issue(
                    &format!("{at}.timeout_ms"),
                    format!(
                        "must be at most half of budgets.reservation_ttl_seconds ({} s)",
                        settings.reservation_ttl.as_secs()
                    ),
                );
            }
            let Some(symbol) = a.threshold.split_whitespace().nth(1).map(str::to_string) else {
                self.issue(&format!("{at}.threshold"), "give the asset: \"0.05 USDC\"");
                return None;
            };
            let decimals =
                self.symbol_decimals(payments, &symbol, None, &format!("{at}.threshold"))?;
            let threshold = self.amount(
                Some(&a.threshold),
                decimals,
                &symbol,
                &format!("{at}.threshold"),
            )?;
            Some(Approval {
                symbol,
                threshold,
                webhook: webhook?,
            })
        });
        let anomaly = f.anomaly.and_then(|a| {
            let at = format!("{path}.anomaly");
            let webhook = self.webhook(
                &a.webhook,
                a.token.as_deref(),
                None,
                DEFAULT_ALERT_TIMEOUT_MS,
                &at,
            )?;
            let factor = self.positive(
                a.factor.map(u64::from),
                u64::from(DEFAULT_ANOMALY_FACTOR),
                &format!("{at}.factor"),
            );
            let trailing_hours = self.positive(
                a.trailing_hours.map(u64::from),
                u64::from(DEFAULT_ANOMALY_TRAILING_HOURS),
                &format!("{at}.trailing_hours"),
            );
            if trailing_hours > 24 * 31 {
                self.issue(&format!("{at}.trailing_hours"), "at most 744 (31 days)");
            }
            Some(AnomalyAlert {
                rule: AnomalyRule {
                    factor: factor.min(u64::from(u32::MAX)) as u32,
                    trailing_hours: trailing_hours.min(744) as u32,
                    cooldown_seconds: self.cooldown(a.cooldown_seconds, &at),
                },
                webhook,
            })
        });
        Policy {
            approval,
            anomaly,
            enforce: f.enforce.unwrap_or(true),
            budgets,
            allow_hosts,
            block_hosts,
            host_caps,
            networks,
            pay_to,
        }
    }
}
