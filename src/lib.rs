//! pag0: a payment-aware forward/reverse HTTP proxy for AI agents, built on Pingora.
//!
//! Layout: [`config`] (YAML → validated config), [`net`] (DNS, address classes),
//! [`ratelimit`], [`metrics`], [`stages`] (pipeline plugins), [`proxy`] (the Pingora glue),
//! [`cache`] (response cache storage: memory and Redis tiers), [`budget`] / [`store`] /
//! [`settle`] (spend ledger and journal), [`intents`] (write-ahead payment intents), [`analytics`] (request records), [`curation`]
//! (endpoint scores), [`audit`] (ERC-8004 feedback, reconciliation), [`x402`] (payments), [`admin`] (health, metrics,
//! reload, admin API), [`live`] (reloadable state), [`server`] (assembly).

pub mod admin;
pub mod analytics;
pub mod anomaly;
pub mod audit;
pub mod budget;
pub mod cache;
pub mod chain;
pub mod clock;
pub mod config;
pub mod curation;
pub mod demo;
pub mod glob;
pub mod idempotency;
pub mod intents;
pub mod intercept;
pub mod keys;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod redis_client;
pub mod sched;
pub mod server;
pub mod settle;
pub mod stages;
pub mod store;
pub mod webhook;
pub mod x402;
