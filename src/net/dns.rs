//! Asynchronous, caching DNS resolution (hickory), so a name never blocks a worker thread.
//!
//! Pingora's `HttpPeer::new` resolves names synchronously and panics when a name does not
//! resolve; pag0 always resolves here first and builds peers from a `SocketAddr`.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::DnsSettings;

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

/// A shared resolver; its answer cache honours record TTLs.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// Builds a resolver from `/etc/resolv.conf` (falls back to no upstream servers, so only
    /// IP literals, `localhost` and `/etc/hosts` resolve, when the system config is unreadable).
    pub fn new(settings: &DnsSettings) -> Resolver {
        let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
            log::warn!(
                "cannot read the system DNS configuration ({e}); only /etc/hosts names will resolve"
            );
            TokioResolver::builder_with_config(
                ResolverConfig::default(),
                TokioRuntimeProvider::default(),
            )
        });
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = settings.timeout;
        opts.attempts = 1;
        opts.cache_size = settings.cache_size;
        let inner = builder.build().expect("resolver options are valid");
        Resolver { inner }
    }

    /// All addresses of `host`, IPv4 first (an IP literal is returned as is, without a lookup).
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let answer = self.inner.lookup_ip(host).await.map_err(|e| {
            let reason = e.to_string();
            // hickory's NXDOMAIN text embeds the whole query; agents need less.
            let reason = if reason.contains("no records found") {
                "no such host".to_string()
            } else {
                reason
            };
            ResolveError {
                host: host.to_string(),
                reason,
            }
        })?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        // Prefer IPv4 (the proxy connects to the first address; many hosts listen on v4 only).
        ips.sort_by_key(|ip| ip.is_ipv6());
        if ips.is_empty() {
            return Err(ResolveError {
                host: host.to_string(),
                reason: "no addresses".into(),
            });
        }
        Ok(ips)
    }
}
