//! Property tests: what pag0 signs decodes and recovers to its own address. (That the parsers
//! never panic on arbitrary input is fuzzed in tests/fuzz.rs.)

use base64::Engine;
use pag0::x402::{self, PaymentSigner};
use proptest::prelude::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn signed_payments_round_trip(amount in 1u128.., timeout in 1u64..86_400, now in 1_000u64..4_000_000_000, v2 in any::<bool>()) {
        let signer = x402::Eip3009Signer::from_hex("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d").unwrap();
        let entry = format!(
            r#"{{"scheme":"exact","network":"{}","{}":"{amount}","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":{timeout},"extra":{{"name":"USDC","version":"2"}}}}"#,
            if v2 { "eip155:84532" } else { "base-sepolia" },
            if v2 { "amount" } else { "maxAmountRequired" },
        );
        let required = if v2 {
            x402::parse_v2_header(b64(format!(r#"{{"x402Version":2,"accepts":[{entry}]}}"#).as_bytes()).as_bytes()).unwrap()
        } else {
            x402::parse_v1_body(format!(r#"{{"x402Version":1,"accepts":[{entry}]}}"#).as_bytes()).unwrap()
        };
        let offer = &required.offers[0];
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let signed = rt.block_on(signer.sign(offer, now)).unwrap();
        let header = x402::payment_header(&required, offer, &signed);
        let decoded = x402::decode_payment_header(header.as_bytes()).unwrap();
        prop_assert_eq!(&decoded.authorization, &signed.authorization);
        prop_assert_eq!(decoded.authorization.value, alloy_primitives::U256::from(amount));
        prop_assert_eq!(decoded.chain_id, Some(84532));
        let domain = x402::sign::TokenDomain::of(offer).unwrap();
        prop_assert_eq!(x402::sign::recover_signer(&domain, &decoded.authorization, &decoded.signature), Some(signer.address()));
        if v2 {
            // The accepted entry comes back unchanged (byte equality: the vector B unit test).
            prop_assert_eq!(decoded.accepted.unwrap(), serde_json::from_str::<serde_json::Value>(&entry).unwrap());
        }
    }
}
