//! Reading what others produced: settlement receipts on paid responses (§5) and payment
//! headers sent by agents in relay mode (§3.2, §3.3).

use alloy_primitives::{Address, B256, U256};
use serde::Deserialize;
use serde_json::Value;

use super::sign::{Authorization, WirePayload};
use super::wire::{ParseError, Version};
use super::{decode_b64, networks, parse_amount};

/// A settlement receipt (`PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// A missing `success` counts as failure (x402-rs `validate_settlement`, issue #65).
    pub success: bool,
    pub transaction: Option<String>,
    pub network: Option<String>,
    pub payer: Option<String>,
    pub error_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReceipt {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    payer: Option<String>,
    #[serde(default, alias = "error_reason")]
    error_reason: Option<String>,
}

/// Parses a receipt header value (base64 JSON; unknown fields ignored).
pub fn parse_receipt(value: &[u8]) -> Result<Receipt, ParseError> {
    let json = decode_b64(value)?;
    let raw: RawReceipt =
        serde_json::from_slice(&json).map_err(|e| ParseError::Json(e.to_string()))?;
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(Receipt {
        success: raw.success == Some(true),
        transaction: non_empty(raw.transaction),
        network: non_empty(raw.network),
        payer: non_empty(raw.payer),
        error_reason: non_empty(raw.error_reason),
    })
}

/// `raw` as a transaction hash of `network`, if it has that network's form (EVM, `eip155:*`
/// or a v1 name: `0x` and 64 hex digits, returned lowercase). A receipt is an upstream's word: anything
/// else in its `transaction` is not a hash, whatever it claims.
pub fn transaction_hash(network: &str, raw: &str) -> Option<String> {
    networks::chain_id(network)?;
    let digits = raw.strip_prefix("0x")?;
    (digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("0x{}", digits.to_ascii_lowercase()))
}

/// An agent-signed payment, decoded for checking (relay mode).
#[derive(Debug, Clone)]
pub struct DecodedPayment {
    pub version: Version,
    pub scheme: String,
    pub network: String,
    pub chain_id: Option<u64>,
    /// v2: the offer the agent says it accepted (asset, payTo, amount are checked against it).
    pub accepted: Option<Value>,
    pub authorization: Authorization,
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPayment {
    x402_version: u64,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    accepted: Option<Value>,
    payload: WirePayload,
}

fn field(field: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError::Field {
        field,
        reason: reason.into(),
    }
}

fn address(name: &'static str, raw: &str) -> Result<Address, ParseError> {
    raw.parse().map_err(|_| field(name, "not an address"))
}

fn seconds(name: &'static str, raw: &str) -> Result<u64, ParseError> {
    let v = parse_amount(raw).ok_or_else(|| field(name, "not a decimal integer"))?;
    u64::try_from(v).map_err(|_| field(name, "out of range"))
}

/// Decodes an `X-PAYMENT` (v1) or `PAYMENT-SIGNATURE` (v2) header value.
pub fn decode_payment_header(value: &[u8]) -> Result<DecodedPayment, ParseError> {
    let json = decode_b64(value)?;
    let raw: RawPayment =
        serde_json::from_slice(&json).map_err(|e| ParseError::Json(e.to_string()))?;
    let version = match raw.x402_version {
        1 => Version::V1,
        2 => Version::V2,
        other => return Err(ParseError::Version(other)),
    };
    let text =
        |v: &Value, key: &'static str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let (scheme, network) = match (version, &raw.accepted) {
        (Version::V2, Some(acc)) => (text(acc, "scheme"), text(acc, "network")),
        (Version::V2, None) => return Err(field("accepted", "missing")),
        (Version::V1, _) => (raw.scheme.clone(), raw.network.clone()),
    };
    let scheme = scheme.ok_or_else(|| field("scheme", "missing"))?;
    let network = network.ok_or_else(|| field("network", "missing"))?;
    let a = &raw.payload.authorization;
    let nonce_hex = a
        .nonce
        .strip_prefix("0x")
        .ok_or_else(|| field("nonce", "expected 0x + 64 hex digits"))?;
    let mut nonce = [0u8; 32];
    hex::decode_to_slice(nonce_hex, &mut nonce)
        .map_err(|_| field("nonce", "expected 0x + 64 hex digits"))?;
    let signature = raw
        .payload
        .signature
        .strip_prefix("0x")
        .and_then(|s| hex::decode(s).ok())
        .filter(|s| s.len() >= 65)
        .ok_or_else(|| field("signature", "expected 0x + at least 65 bytes of hex"))?;
    let authorization = Authorization {
        from: address("authorization.from", &a.from)?,
        to: address("authorization.to", &a.to)?,
        value: parse_amount(&a.value)
            .ok_or_else(|| field("authorization.value", "not a decimal integer"))?,
        valid_after: seconds("authorization.validAfter", &a.valid_after)?,
        valid_before: seconds("authorization.validBefore", &a.valid_before)?,
        nonce: B256::from(nonce),
    };
    Ok(DecodedPayment {
        version,
        chain_id: networks::chain_id(&network),
        scheme,
        network,
        accepted: raw.accepted,
        authorization,
        signature,
    })
}

impl DecodedPayment {
    /// v2: the amount the agent claims to have accepted (`accepted.amount`).
    pub fn accepted_amount(&self) -> Option<U256> {
        self.accepted
            .as_ref()?
            .get("amount")?
            .as_str()
            .and_then(parse_amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn receipts_success_failure_and_missing_success() {
        let ok = parse_receipt(b64(r#"{"success":true,"transaction":"0x1234","network":"eip155:84532","payer":"0x857b"}"#).as_bytes()).unwrap();
        assert!(ok.success);
        assert_eq!(ok.transaction.as_deref(), Some("0x1234"));
        let failed = parse_receipt(b64(r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}"#).as_bytes()).unwrap();
        assert!(!failed.success);
        assert_eq!(
            (failed.transaction, failed.error_reason.as_deref()),
            (None, Some("insufficient_funds"))
        );
        let snake = parse_receipt(
            b64(r#"{"success":false,"error_reason":"invalid_signature"}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(snake.error_reason.as_deref(), Some("invalid_signature"));
        let missing =
            parse_receipt(b64(r#"{"transaction":"0xabc","requirements":{}}"#).as_bytes()).unwrap();
        assert!(!missing.success, "a missing success is a failure");
        assert!(parse_receipt(b"not base64!").is_err());
    }

    #[test]
    fn decodes_vector_b_headers_of_both_versions() {
        let v1 = "eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QiLCJuZXR3b3JrIjoiYmFzZS1zZXBvbGlhIiwicGF5bG9hZCI6eyJzaWduYXR1cmUiOiIweDJhNmU5Y2Q0YmE1OTBmMDIyNDQxYzdkYTcyMmFmZWYxOWViNDI3ODIxNmZiZDk1ZWY4MTQ3YmJhNTIzYTJkMDU0ZjAzZjYxNjk5OTQ4ZGFlYzY1ZjIyNzE0MmZjZDcwNThhMDkyMjVlOGE5Mzg2NmFhNGZmOGZkOWZjOWE2NzRiMWIiLCJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweGYzOUZkNmU1MWFhZDg4RjZGNGNlNmFCODgyNzI3OWNmZkZiOTIyNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMTc0MDY3MTQ4OSIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjE0OSIsIm5vbmNlIjoiMHgwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAxIn19fQ==";
        let d = decode_payment_header(v1.as_bytes()).unwrap();
        assert_eq!(
            (d.version, d.scheme.as_str(), d.network.as_str(), d.chain_id),
            (Version::V1, "exact", "base-sepolia", Some(84532))
        );
        assert_eq!(d.authorization.value, U256::from(10000));
        assert_eq!(d.authorization.nonce, B256::with_last_byte(1));
        assert_eq!(d.signature.len(), 65);
        let domain = crate::x402::sign::TokenDomain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: 84532,
            verifying_contract: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
                .parse()
                .unwrap(),
        };
        assert_eq!(
            crate::x402::sign::recover_signer(&domain, &d.authorization, &d.signature),
            Some(d.authorization.from)
        );
    }

    #[test]
    fn malformed_payments_are_errors() {
        for bad in [
            "",
            "%%%",
            &b64("{}"),
            &b64(r#"{"x402Version":9,"payload":{}}"#),
            &b64(
                r#"{"x402Version":2,"payload":{"signature":"0x00","authorization":{"from":"0x0","to":"0x0","value":"1","validAfter":"0","validBefore":"1","nonce":"0x00"}}}"#,
            ),
            &b64(
                r#"{"x402Version":1,"scheme":"exact","network":"base","payload":{"signature":"0x00","authorization":{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","value":"-1","validAfter":"0","validBefore":"1","nonce":"0x00"}}}"#,
            ),
        ] {
            assert!(decode_payment_header(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_hash_of_the_network_form_is_a_transaction() {
        let hash = format!("0x{}", "Ab".repeat(32));
        assert_eq!(
            transaction_hash("eip155:84532", &hash),
            Some(format!("0x{}", "ab".repeat(32)))
        );
        for bad in [
            "javascript:alert('tx')//<img src=x onerror=alert(1)>",
            "0x1234",
            &format!("0x{}", "g".repeat(64)),
            &"a".repeat(66),
            &format!("0x{}", "a".repeat(65)),
            "",
        ] {
            assert_eq!(transaction_hash("eip155:8453", bad), None, "{bad}");
        }
        assert!(transaction_hash("base-sepolia", &hash).is_some());
        assert_eq!(transaction_hash("solana:mainnet", &hash), None);
    }
}
