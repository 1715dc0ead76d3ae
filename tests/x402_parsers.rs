//! Property tests: the 402 parsers, the payment-header decoder and the receipt parser never
//! panic on arbitrary input, and what pag0 signs decodes and recovers to its own address.

use base64::Engine;
use pag0::x402::{self, PaymentSigner};
use proptest::prelude::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// JSON-ish text built from the tokens the parsers look for, to get past the outer layers.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"x402Version\"".to_string()),
        Just("\"accepts\"".to_string()),
        Just("\"amount\"".to_string()),
        Just("\"maxAmountRequired\"".to_string()),
        Just("\"network\"".to_string()),
        Just("\"eip155:84532\"".to_string()),
        Just("\"payload\"".to_string()),
        Just("\"authorization\"".to_string()),
        Just("\"success\"".to_string()),
        Just("1".to_string()),
        Just("2".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        "\"[a-zA-Z0-9:x]{0,12}\"",
        "[0-9]{1,30}",
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = x402::parse_v2_header(&bytes);
        let _ = x402::parse_v1_body(&bytes);
        let _ = x402::decode_payment_header(&bytes);
        let _ = x402::parse_receipt(&bytes);
        let encoded = b64(&bytes);
        let _ = x402::parse_v2_header(encoded.as_bytes());
        let _ = x402::decode_payment_header(encoded.as_bytes());
        let _ = x402::parse_receipt(encoded.as_bytes());
    }

    #[test]
    fn parsers_never_panic_on_jsonish(text in jsonish()) {
        let _ = x402::parse_v1_body(text.as_bytes());
        let encoded = b64(text.as_bytes());
        let _ = x402::parse_v2_header(encoded.as_bytes());
        let _ = x402::decode_payment_header(encoded.as_bytes());
        let _ = x402::parse_receipt(encoded.as_bytes());
    }
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
