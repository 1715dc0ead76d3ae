//! Network identifiers → EVM chain ids (§6.1): v1 names from a pinned table, v2 CAIP-2 ids.

/// v1 network names and chain ids, as `@x402/evm` and the Go SDK define them (§6.1). The
/// Python SDK disagrees for four names; these values are the TS/Go ones.
const V1_NETWORKS: &[(&str, u64)] = &[
    ("base", 8453),
    ("base-sepolia", 84532),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("iotex", 4689),
    ("peaq", 3338),
    ("abstract", 2741),
    ("abstract-testnet", 11124),
    ("story", 1514),
    ("educhain", 41923),
    ("skale-base-sepolia", 324705682),
    ("ethereum", 1),
    ("sepolia", 11155111),
    ("megaeth", 4326),
    ("monad", 143),
    ("stable", 988),
    ("stable-testnet", 2201),
];

/// The EVM chain id of a network id: a v1 name (`base-sepolia`) or CAIP-2 (`eip155:84532`).
/// `None` for unknown names and non-EVM networks (Solana etc.).
pub fn chain_id(network: &str) -> Option<u64> {
    if let Some(reference) = network.strip_prefix("eip155:") {
        if reference.is_empty()
            || reference.len() > 20
            || !reference.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        return reference.parse().ok();
    }
    V1_NETWORKS
        .iter()
        .find(|(name, _)| *name == network)
        .map(|(_, id)| *id)
}

/// The CAIP-2 id of an EVM chain (`eip155:<id>`), the form pag0 uses in config and metrics.
pub fn caip2(chain_id: u64) -> String {
    format!("eip155:{chain_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_names_and_caip2() {
        assert_eq!(chain_id("base"), Some(8453));
        assert_eq!(chain_id("base-sepolia"), Some(84532));
        assert_eq!(
            chain_id("sei-testnet"),
            Some(1328),
            "TS/Go value, not Python's"
        );
        assert_eq!(chain_id("eip155:84532"), Some(84532));
        assert_eq!(chain_id("eip155:31337"), Some(31337));
        assert_eq!(chain_id("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"), None);
        assert_eq!(chain_id("eip155:"), None);
        assert_eq!(chain_id("eip155:-1"), None);
        assert_eq!(chain_id("eip155:99999999999999999999999"), None);
        assert_eq!(chain_id("mainnet"), None);
        assert_eq!(caip2(8453), "eip155:8453");
    }
}
