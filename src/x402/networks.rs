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

/// EIP-712 domains (name, version) of well-known USDC deployments (x402-protocol §6.2), the
/// defaults of `payments.assets[].eip712`.
const USDC_DOMAINS: &[(u64, &str, &str, &str)] = &[
    (
        8453,
        "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "USD Coin",
        "2",
    ),
    (
        84532,
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "USDC",
        "2",
    ),
    (
        43114,
        "0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E",
        "USD Coin",
        "2",
    ),
    (
        43113,
        "0x5425890298aed601595a70AB815c96711a31Bc65",
        "USD Coin",
        "2",
    ),
    (
        137,
        "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359",
        "USD Coin",
        "2",
    ),
    (
        80002,
        "0x41E94Eb019C0762f9Bfcf9Fb1E58725BfB0e7582",
        "USDC",
        "2",
    ),
    (
        42161,
        "0xaf88d065e77c8cC2239327C5EDb3A432268e5831",
        "USD Coin",
        "2",
    ),
    (
        421614,
        "0x75faf114eafb1BDbe2F0316DF893fd58CE46AA4d",
        "USD Coin",
        "2",
    ),
    (
        1329,
        "0xe15fC38F6D8c56aF07bbCBe3BAf5708A2Bf42392",
        "USDC",
        "2",
    ),
    (
        1328,
        "0x4fCF1784B31630811181f670Aea7A7bEF803eaED",
        "USDC",
        "2",
    ),
    (
        4689,
        "0xcdf79194c6c285077a58da47641d4dbe51f63542",
        "Bridged USDC",
        "2",
    ),
    (
        143,
        "0x754704Bc059F8C67012fEd69BC8A327a5aafb603",
        "USDC",
        "2",
    ),
];

/// The pinned EIP-712 domain (name, version) of a well-known token, if any.
pub fn known_domain(
    chain_id: u64,
    address: alloy_primitives::Address,
) -> Option<(&'static str, &'static str)> {
    USDC_DOMAINS
        .iter()
        .find(|(id, a, _, _)| *id == chain_id && a.parse().ok() == Some(address))
        .map(|(_, _, name, version)| (*name, *version))
}

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

    #[test]
    fn pinned_usdc_domains() {
        let base = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
            .parse()
            .unwrap();
        assert_eq!(known_domain(8453, base), Some(("USD Coin", "2")));
        let sepolia = "0x036cbd53842c5426634e7929541ec2318f3dcf7e"
            .parse()
            .unwrap();
        assert_eq!(known_domain(84532, sepolia), Some(("USDC", "2")));
        assert_eq!(known_domain(1, base), None, "same address, other chain");
        assert!(
            USDC_DOMAINS
                .iter()
                .all(|(_, a, _, _)| a.parse::<alloy_primitives::Address>().is_ok())
        );
    }
}
