//! API keys: generated here, stored in YAML only as `sha256:<hex>` digests.

use base64::Engine;
use rand::RngCore;

use crate::stages::key_digest;

/// A new random API key (32 bytes, URL-safe base64, `pag0_` prefix) and its config hash.
pub fn new_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "pag0_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = key_hash(&key);
    (key, hash)
}

/// The `sha256:<hex>` form that goes into `projects[].keys`.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(key_digest(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_key_hash;

    #[test]
    fn new_keys_are_unique_and_hash_round_trips() {
        let (k1, h1) = new_key();
        let (k2, _) = new_key();
        assert_ne!(k1, k2);
        assert!(k1.starts_with("pag0_") && k1.len() > 40);
        assert_eq!(parse_key_hash(&h1), Some(key_digest(&k1)));
    }
}
