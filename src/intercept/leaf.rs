//! Leaf certificates for intercepted hosts: minted by the local CA on first use, kept in a
//! bounded cache with the host's TLS session cache (so an agent's next tunnel to the host
//! resumes its session), and served by a per-tunnel TLS configuration that only answers a
//! ClientHello naming the host the agent sent `CONNECT` for.
//!
//! Resumption cannot bypass the SNI check: each host has its own session store, whose sessions
//! were all established through that check, and rustls resumes a session only for the same
//! SNI it was established with (RFC 6066 §3).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert, ServerConfig,
    version,
};

use super::ca::{CaError, LEAF_VALIDITY, LocalCa};

/// TLS sessions kept per intercepted host for resumption.
const SESSIONS_PER_HOST: usize = 256;

/// A cached leaf is re-minted after this long, well before it expires ([`LEAF_VALIDITY`]).
const LEAF_REUSE: Duration = Duration::from_secs(86_400);
const _: () = assert!(LEAF_REUSE.as_secs() * 2 < LEAF_VALIDITY.as_secs());

/// The local CA with its cache of minted leaves. `Debug` never shows a key.
pub struct Interceptor {
    ca: LocalCa,
    leaves: moka::sync::Cache<String, Arc<HostTls>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Interceptor({:?}, {} leaves)",
            self.ca,
            self.leaves.entry_count()
        )
    }
}

/// Why a tunnel's TLS handshake was refused by pag0 (rather than failed by the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniRefusal {
    /// The ClientHello named no host, but the CONNECT named a host name.
    Missing,
    /// The ClientHello named another host than the CONNECT.
    Mismatch(String),
}

impl Interceptor {
    /// Loads the CA from `dir`, creating it on first start. Returns whether it was created.
    pub fn load_or_create(
        dir: &std::path::Path,
        leaf_cache_size: u64,
    ) -> Result<(Interceptor, bool), CaError> {
        let (ca, created) = LocalCa::load_or_create(dir)?;
        Ok((Self::new(ca, leaf_cache_size), created))
    }

    pub fn new(ca: LocalCa, leaf_cache_size: u64) -> Interceptor {
        Interceptor {
            ca,
            leaves: moka::sync::Cache::builder()
                .max_capacity(leaf_cache_size)
                .time_to_live(LEAF_REUSE)
                .build(),
            provider: crypto_provider(),
        }
    }

    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    /// How many minted leaves are cached (approximately: evictions settle lazily).
    pub fn cached_leaves(&self) -> u64 {
        self.leaves.entry_count()
    }

    /// The leaf and session cache for `host` (lowercase DNS name or IP literal): from the
    /// cache, else minted (concurrent callers for one host wait for one mint). Returns whether
    /// it was minted.
    pub fn leaf(&self, host: &str) -> Result<(Arc<HostTls>, bool), CaError> {
        let mut minted = false;
        let tls = self
            .leaves
            .try_get_with(host.to_string(), || {
                minted = true;
                Ok::<_, CaError>(Arc::new(HostTls {
                    leaf: self.mint(host)?,
                    sessions: rustls::server::ServerSessionMemoryCache::new(SESSIONS_PER_HOST),
                }))
            })
            .map_err(|e: Arc<CaError>| CaError::Cert(e.to_string()))?;
        Ok((tls, minted))
    }

    /// Mints a leaf for `host` and turns it into what rustls serves.
    pub fn mint(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let leaf = self.ca.mint(host)?;
        let key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(leaf.key_der.into()))
            .map_err(|e| CaError::Cert(format!("leaf key: {e}")))?;
        let chain = vec![CertificateDer::from(leaf.cert_der)];
        Ok(Arc::new(CertifiedKey::new(chain, key)))
    }

    /// A TLS acceptor for one tunnel to `host`: it presents the host's leaf, resumes the
    /// host's sessions, offers `http/1.1` only, and refuses a ClientHello whose SNI is missing
    /// (for a host name) or names another host.
    pub fn acceptor(
        &self,
        host: &str,
        tls: &HostTls,
    ) -> Result<(Acceptor, Arc<SniCheck>), CaError> {
        let check = Arc::new(SniCheck {
            host: host.to_string(),
            ip_literal: host.parse::<std::net::IpAddr>().is_ok(),
            leaf: tls.leaf.clone(),
            refused: OnceLock::new(),
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .map_err(|e| CaError::Cert(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(check.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = tls.sessions.clone();
        Ok((Acceptor::from_server_config(Arc::new(config)), check))
    }
}

/// What an intercepted host's tunnels share: its leaf and its TLS session cache.
pub struct HostTls {
    pub leaf: Arc<CertifiedKey>,
    sessions: Arc<rustls::server::ServerSessionMemoryCache>,
}

impl std::fmt::Debug for HostTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostTls")
    }
}

/// Answers the ClientHello of one tunnel (see [`Interceptor::acceptor`]) and remembers why it
/// refused one.
#[derive(Debug)]
pub struct SniCheck {
    host: String,
    ip_literal: bool,
    leaf: Arc<CertifiedKey>,
    refused: OnceLock<SniRefusal>,
}

impl SniCheck {
    /// Why the handshake was refused, if it was refused here.
    pub fn refused(&self) -> Option<&SniRefusal> {
        self.refused.get()
    }
}

impl ResolvesServerCert for SniCheck {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(sni) if sni.eq_ignore_ascii_case(&self.host) => Some(self.leaf.clone()),
            // Clients send no SNI for IP literals (RFC 6066 §3).
            None if self.ip_literal => Some(self.leaf.clone()),
            None => {
                let _ = self.refused.set(SniRefusal::Missing);
                None
            }
            Some(other) => {
                let _ = self.refused.set(SniRefusal::Mismatch(other.to_string()));
                None
            }
        }
    }
}

/// The process's rustls provider (Pingora installs `ring` as the default).
fn crypto_provider() -> Arc<CryptoProvider> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .expect("a default rustls provider was just installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_minted_once_per_host_and_the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (interceptor, created) = Interceptor::load_or_create(dir.path(), 2).unwrap();
        assert!(created);
        let (first, minted) = interceptor.leaf("api.example.com").unwrap();
        assert!(minted);
        let (again, minted) = interceptor.leaf("api.example.com").unwrap();
        assert!(!minted, "the second tunnel to a host reuses its leaf");
        assert!(Arc::ptr_eq(&first, &again));
        let (other, minted) = interceptor.leaf("other.example.com").unwrap();
        assert!(minted);
        assert_ne!(other.leaf.cert[0], first.leaf.cert[0]);
        assert!(
            !Arc::ptr_eq(&other.sessions, &first.sessions),
            "one session store per host"
        );
        for i in 0..20 {
            interceptor.leaf(&format!("h{i}.example.com")).unwrap();
        }
        interceptor.leaves.run_pending_tasks();
        assert!(
            interceptor.leaves.entry_count() <= 2,
            "bounded by leaf_cache_size"
        );
        assert!(!format!("{interceptor:?}").contains("PRIVATE"));
    }

    #[test]
    fn an_acceptor_is_built_for_names_and_ip_literals() {
        let dir = tempfile::tempdir().unwrap();
        let (interceptor, _) = Interceptor::load_or_create(dir.path(), 8).unwrap();
        for host in ["api.example.com", "127.0.0.1", "::1"] {
            let (tls, _) = interceptor.leaf(host).unwrap();
            let (_, check) = interceptor.acceptor(host, &tls).unwrap();
            assert_eq!(check.ip_literal, host.parse::<std::net::IpAddr>().is_ok());
            assert!(check.refused().is_none());
        }
    }
}
