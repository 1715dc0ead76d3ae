//! Validation of `audit:`.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use serde_yaml::Value;

use super::Validator;
use super::file::*;
use crate::audit::{Agent, Mode, Settings};
use crate::policy::HostPattern;

impl<E: Fn(&str) -> Option<String>> Validator<'_, E> {
    /// `None` when the section is absent (no audit) or invalid (the issues say why).
    pub(super) fn audit(
        &mut self,
        f: Option<FileAudit>,
        admin: &super::AdminSettings,
        wallets: &[Address],
    ) -> Option<Arc<Settings>> {
        let f = f?;
        let before = self.issues.len();
        let rpc_url = match f.rpc_url.as_deref() {
            None => {
                self.issue("audit.rpc_url", "is required (the chain's JSON-RPC URL)");
                None
            }
            Some(raw) => self.rpc_url(raw, "audit.rpc_url"),
        };
        let chain_id = match f.chain_id {
            Some(0) | None => {
                self.issue("audit.chain_id", "is required (a positive chain id)");
                0
            }
            Some(id) => id,
        };
        let registry = self.one_address(
            f.reputation_registry.as_deref(),
            "audit.reputation_registry",
            true,
        );
        let identity = self.one_address(
            f.identity_registry.as_deref(),
            "audit.identity_registry",
            false,
        );
        let signer = match f.signer {
            None => {
                self.issue(
                    "audit.signer",
                    "is required: one of private_key, key_file or keystore (not a payment wallet)",
                );
                None
            }
            Some(w) => self.private_key(w, "audit.signer"),
        };
        if let Some(s) = &signer
            && wallets.contains(&s.address())
        {
            self.issue(
                "audit.signer",
                format!(
                    "{} is a project's payment wallet: feedback is signed with a key of its own",
                    s.address()
                ),
            );
        }
        let mut agents = Vec::new();
        for (i, a) in self.list::<FileAgent>(Value::Sequence(f.agents), "audit.agents") {
            let at = format!("audit.agents[{i}]");
            let Some(host) = HostPattern::parse(&a.host) else {
                self.issue(
                    &format!("{at}.host"),
                    format!(
                        "invalid host pattern {:?} (host, host:port or *.domain)",
                        a.host
                    ),
                );
                continue;
            };
            let id = match &a.agent_id {
                Value::Number(n) => n.as_u64().map(U256::from),
                Value::String(s) => U256::from_str_radix(s.trim(), 10).ok(),
                _ => None,
            };
            let Some(agent_id) = id else {
                self.issue(
                    &format!("{at}.agent_id"),
                    "must be the agent's id in the Identity Registry (a non-negative integer)",
                );
                continue;
            };
            agents.push(Agent { host, agent_id });
        }
        let mode = match f.mode.as_deref() {
            None | Some("hourly") => Mode::Hourly,
            Some("per_payment") => Mode::PerPayment,
            Some(other) => {
                self.issue(
                    "audit.mode",
                    format!("unknown mode {other:?}, expected per_payment or hourly"),
                );
                Mode::Hourly
            }
        };
        let confirmations = f
            .confirmations
            .unwrap_or(crate::audit::DEFAULT_CONFIRMATIONS);
        if confirmations > crate::audit::MAX_CONFIRMATIONS {
            self.issue(
                "audit.confirmations",
                format!("must be at most {}", crate::audit::MAX_CONFIRMATIONS),
            );
        }
        let public_url = match f.public_url {
            Some(raw) => match url::Url::parse(&raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {
                    raw.trim_end_matches('/').to_string()
                }
                _ => {
                    self.issue(
                        "audit.public_url",
                        "must be an http(s) base URL without a query (where /api/audit/feedback/{id} is reachable)",
                    );
                    String::new()
                }
            },
            None => format!("http://{}", admin.listen),
        };
        let reconcile = self.positive(
            f.reconcile_seconds,
            crate::audit::DEFAULT_RECONCILE_SECONDS,
            "audit.reconcile_seconds",
        );
        let reputation = self.positive(
            f.reputation_seconds,
            crate::audit::DEFAULT_REPUTATION_SECONDS,
            "audit.reputation_seconds",
        );
        let replace_after = self.positive(
            f.replace_after_seconds,
            crate::audit::DEFAULT_REPLACE_AFTER_SECONDS,
            "audit.replace_after_seconds",
        );
        let trusted = self.addresses(&f.trusted_reviewers, "audit.trusted_reviewers");
        if self.issues.len() > before {
            return None;
        }
        let signer = signer?;
        let mut trusted_reviewers = trusted;
        if !trusted_reviewers.contains(&signer.address()) {
            trusted_reviewers.push(signer.address());
        }
        Some(Arc::new(Settings {
            rpc_url: rpc_url?,
            chain_id,
            reputation_registry: registry?,
            identity_registry: identity,
            signer: crate::audit::Signer::new(signer),
            agents,
            mode,
            confirmations,
            public_records: f.public_records.unwrap_or(false),
            public_url,
            reconcile: Duration::from_secs(reconcile),
            reputation: Duration::from_secs(reputation),
            replace_after: Duration::from_secs(replace_after),
            trusted_reviewers,
        }))
    }

    /// An http(s) JSON-RPC URL: plain, or an `${ENV}` reference when it carries an API key.
    pub(super) fn rpc_url(&mut self, raw: &str, path: &str) -> Option<super::Secret> {
        let url = if raw.starts_with("${") {
            self.secret(raw, path)?
        } else {
            super::Secret::plain(raw.to_string())
        };
        if !url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            self.issue(path, "must be an http(s) URL");
            return None;
        }
        Some(url)
    }

    fn one_address(&mut self, raw: Option<&str>, path: &str, required: bool) -> Option<Address> {
        match raw {
            None => {
                if required {
                    self.issue(path, "is required (a contract address)");
                }
                None
            }
            Some(raw) => match raw.trim().parse::<Address>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.issue(path, format!("invalid address {raw:?}"));
                    None
                }
            },
        }
    }
}
