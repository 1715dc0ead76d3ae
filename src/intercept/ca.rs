//! The local CA: created once (`pag0 ca init`, or on first use), kept as two PEM files in a
//! directory — `ca.crt` (give it to agents to trust) and `ca.key` (mode 0600, never logged) —
//! and used to mint one leaf certificate per intercepted host.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

/// CA certificate file name inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA private key file name inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a new CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Leaves are valid from an hour ago (clock skew) for this long.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate: {0}")]
    Cert(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A CA that can sign leaf certificates. `Debug` shows the certificate file, never the key.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    /// The CA as an issuer (same name and key as `cert_pem`; rcgen signs with it).
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalCa({})", self.dir.join(CA_CERT_FILE).display())
    }
}

/// A leaf certificate for one host and its private key (both DER).
pub struct MintedLeaf {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for MintedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MintedLeaf({} bytes of certificate)",
            self.cert_der.len()
        )
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never shortened to fewer bytes
    SerialNumber::from_slice(&bytes)
}

impl LocalCa {
    /// Loads the CA from `dir`, or creates it there when neither file exists. Returns the CA
    /// and whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(LocalCa, bool), CaError> {
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Self::load(dir)?, false)),
            (false, false) => Ok((Self::create(dir)?, true)),
            (true, false) => Err(file_error(&key, "missing (the CA certificate exists)")),
            (false, true) => Err(file_error(&cert, "missing (the CA key exists)")),
        }
    }

    /// Loads an existing CA; refuses a key file readable by group or others.
    pub fn load(dir: &Path) -> Result<LocalCa, CaError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let mode = std::fs::metadata(&key_path)
            .map_err(|e| file_error(&key_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(file_error(
                &key_path,
                format!("mode {:o} is too open; chmod 600 it", mode & 0o777),
            ));
        }
        let cert_pem =
            std::fs::read_to_string(&cert_path).map_err(|e| file_error(&cert_path, e))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_error(&key_path, e))?;
        // The key's error never quotes the file's content.
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| file_error(&key_path, "not a PEM private key pag0 can use"))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(|e| file_error(&cert_path, format!("not a CA certificate: {e}")))?;
        let issuer = params
            .self_signed(&key)
            .map_err(|e| CaError::Cert(e.to_string()))?;
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
            key,
        })
    }

    /// Creates a new CA (P-256) in `dir`: the key is written with mode 0600 before anything
    /// else, and never overwritten.
    pub fn create(dir: &Path) -> Result<LocalCa, CaError> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let key = KeyPair::generate().map_err(|e| CaError::Cert(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        let mut id = [0u8; 4];
        rand::rng().fill_bytes(&mut id);
        name.push(
            DnType::CommonName,
            format!("pag0 local CA {}", hex::encode(id)),
        );
        name.push(
            DnType::OrganizationName,
            "pag0 (TLS interception for agents)",
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Cert(e.to_string()))?;
        let key_path = dir.join(CA_KEY_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| file_error(&key_path, e))?;
        file.write_all(key.serialize_pem().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| file_error(&key_path, e))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let cert_pem = cert.pem();
        std::fs::write(&cert_path, &cert_pem).map_err(|e| file_error(&cert_path, e))?;
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer: cert,
            key,
        })
    }

    /// The CA certificate (PEM), what agents must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Mints a leaf for `host` (a DNS name or an IP address, which becomes an IP SAN): server
    /// auth only, a fresh P-256 key, a random serial, valid from an hour ago for
    /// [`LEAF_VALIDITY`].
    pub fn mint(&self, host: &str) -> Result<MintedLeaf, CaError> {
        let mut params = CertificateParams::new(vec![host.to_string()])
            .map_err(|e| CaError::Cert(format!("{host:?}: {e}")))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(|e| CaError::Cert(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| CaError::Cert(e.to_string()))?;
        Ok(MintedLeaf {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::client::danger::ServerCertVerifier;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    fn verifier(ca: &LocalCa) -> Arc<WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes())
            .map(|c: CertificateDer<'static>| c)
            .unwrap();
        roots.add(der).unwrap();
        WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    fn verifies(ca: &LocalCa, leaf: &MintedLeaf, name: &str) -> bool {
        verifier(ca)
            .verify_server_cert(
                &CertificateDer::from(leaf.cert_der.clone()),
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn a_new_ca_is_kept_private_and_reloads_as_the_same_authority() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = LocalCa::load_or_create(dir.path()).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));

        let (again, created) = LocalCa::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(again.cert_pem(), ca.cert_pem());
        // A leaf minted after the reload chains to the certificate agents were given.
        let leaf = again.mint("api.example.com").unwrap();
        assert!(verifies(&ca, &leaf, "api.example.com"));
    }

    #[test]
    fn leaves_name_their_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = LocalCa::load_or_create(dir.path()).unwrap();
        let leaf = ca.mint("api.example.com").unwrap();
        assert!(verifies(&ca, &leaf, "api.example.com"));
        assert!(!verifies(&ca, &leaf, "other.example.com"));
        let ip = ca.mint("127.0.0.1").unwrap();
        assert!(verifies(&ca, &ip, "127.0.0.1"));
        // Another CA's leaves are not trusted.
        let other_dir = tempfile::tempdir().unwrap();
        let (other, _) = LocalCa::load_or_create(other_dir.path()).unwrap();
        assert!(!verifies(
            &ca,
            &other.mint("api.example.com").unwrap(),
            "api.example.com"
        ));
        // Two leaves never share a serial or a key.
        let again = ca.mint("api.example.com").unwrap();
        assert_ne!(again.key_der, leaf.key_der);
        assert_ne!(again.cert_der, leaf.cert_der);
    }

    #[test]
    fn unsafe_or_half_present_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::create(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = LocalCa::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("too open"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = LocalCa::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        // create never overwrites a key.
        let dir = tempfile::tempdir().unwrap();
        LocalCa::create(dir.path()).unwrap();
        assert!(LocalCa::create(dir.path()).is_err());
    }
}
