//! The 402 offer: v2 in the base64 `PAYMENT-REQUIRED` header (§2.2), v1 in the JSON body (§2.1).
//!
//! Each usable entry becomes an [`Offer`] with typed fields *and* its raw JSON, because a v2
//! server deep-compares the `accepted` echo with what it offered (§3.3): the raw bytes are sent
//! back untouched. Entries pag0 cannot use (non-EVM network, malformed amount, ...) are listed
//! in [`PaymentRequired::unusable`] with the reason, so a decline can explain itself.

use alloy_primitives::{Address, U256};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{decode_b64, networks, parse_amount};

/// Protocol version of an offer or payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    /// The request header that carries a payment of this version (§3.1).
    pub fn payment_header(self) -> &'static str {
        match self {
            Version::V1 => super::X_PAYMENT_HEADER,
            Version::V2 => super::PAYMENT_SIGNATURE_HEADER,
        }
    }
}

/// Why a 402 could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the value is not valid base64")]
    Base64,
    #[error("the value is larger than pag0 accepts")]
    TooLarge,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unsupported x402Version {0}")]
    Version(u64),
    #[error("the offer lists no payment options")]
    NoOffers,
    #[error("invalid field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

/// One payment option pag0 could sign.
#[derive(Debug, Clone)]
pub struct Offer {
    pub version: Version,
    /// Position in the server's `accepts` list.
    pub index: usize,
    pub scheme: String,
    /// As written by the server (`base-sepolia` or `eip155:84532`).
    pub network: String,
    pub chain_id: u64,
    /// Atomic units: `amount` (v2) or `maxAmountRequired` (v1); for `exact` the amount to sign.
    pub amount: U256,
    pub asset: Address,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    /// EIP-712 domain `name` / `version` from `extra` (§4.1).
    pub domain_name: Option<String>,
    pub domain_version: Option<String>,
    /// `extra.assetTransferMethod` (`eip3009` when absent, §3.4).
    pub transfer_method: Option<String>,
    /// The entry exactly as received.
    pub raw: Box<RawValue>,
}

/// A parsed 402.
#[derive(Debug)]
pub struct PaymentRequired {
    pub version: Version,
    pub error: Option<String>,
    /// v2 `resource`, echoed in the payment.
    pub resource: Option<Box<RawValue>>,
    /// v2 `extensions`, echoed in the payment.
    pub extensions: Option<Box<RawValue>>,
    pub offers: Vec<Offer>,
    /// Entries that cannot be paid by pag0: `(index in accepts, reason)`.
    pub unusable: Vec<(usize, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequired {
    x402_version: u64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    resource: Option<Box<RawValue>>,
    #[serde(default)]
    accepts: Vec<Box<RawValue>>,
    #[serde(default)]
    extensions: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOffer {
    scheme: String,
    network: String,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    max_amount_required: Option<String>,
    asset: String,
    pay_to: String,
    max_timeout_seconds: u64,
    #[serde(default)]
    extra: Option<RawExtra>,
}

#[derive(Deserialize)]
struct RawExtra {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default, rename = "assetTransferMethod")]
    transfer_method: Option<String>,
}

/// Parses the v2 `PAYMENT-REQUIRED` header value.
pub fn parse_v2_header(value: &[u8]) -> Result<PaymentRequired, ParseError> {
    let json = decode_b64(value)?;
    let required = parse_json(&json)?;
    match required.version {
        Version::V2 => Ok(required),
        Version::V1 => Err(ParseError::Version(1)),
    }
}

/// Parses a v1 402 body (`{"x402Version":1,"accepts":[...]}`).
pub fn parse_v1_body(body: &[u8]) -> Result<PaymentRequired, ParseError> {
    let required = parse_json(body)?;
    match required.version {
        Version::V1 => Ok(required),
        Version::V2 => Err(ParseError::Version(2)),
    }
}

fn parse_json(json: &[u8]) -> Result<PaymentRequired, ParseError> {
    let raw: RawRequired =
        serde_json::from_slice(json).map_err(|e| ParseError::Json(e.to_string()))?;
    let version = match raw.x402_version {
        1 => Version::V1,
        2 => Version::V2,
        other => return Err(ParseError::Version(other)),
    };
    if raw.accepts.is_empty() {
        return Err(ParseError::NoOffers);
    }
    let mut offers = Vec::new();
    let mut unusable = Vec::new();
    for (index, entry) in raw.accepts.into_iter().enumerate() {
        match parse_offer(version, index, entry) {
            Ok(offer) => offers.push(offer),
            Err(reason) => unusable.push((index, reason)),
        }
    }
    Ok(PaymentRequired {
        version,
        error: raw.error,
        resource: raw.resource,
        extensions: raw.extensions,
        offers,
        unusable,
    })
}

fn parse_offer(version: Version, index: usize, raw: Box<RawValue>) -> Result<Offer, String> {
    let o: RawOffer = serde_json::from_str(raw.get()).map_err(|e| format!("invalid entry: {e}"))?;
    let amount_text = match version {
        Version::V1 => o.max_amount_required.as_deref(),
        Version::V2 => o.amount.as_deref(),
    }
    .ok_or_else(|| {
        format!(
            "missing {}",
            if version == Version::V1 {
                "maxAmountRequired"
            } else {
                "amount"
            }
        )
    })?;
    let amount =
        parse_amount(amount_text).ok_or_else(|| format!("invalid amount {amount_text:?}"))?;
    let chain_id = networks::chain_id(&o.network)
        .ok_or_else(|| format!("unsupported network {:?}", o.network))?;
    let asset: Address = o
        .asset
        .parse()
        .map_err(|_| format!("invalid asset address {:?}", o.asset))?;
    let pay_to: Address = o
        .pay_to
        .parse()
        .map_err(|_| format!("invalid payTo address {:?}", o.pay_to))?;
    let (domain_name, domain_version, transfer_method) = match o.extra {
        Some(e) => (e.name, e.version, e.transfer_method),
        None => (None, None, None),
    };
    Ok(Offer {
        version,
        index,
        scheme: o.scheme,
        network: o.network,
        chain_id,
        amount,
        asset,
        pay_to,
        max_timeout_seconds: o.max_timeout_seconds,
        domain_name,
        domain_version,
        transfer_method,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const V2: &str = r#"{"x402Version":2,"error":"PAYMENT-SIGNATURE header is required","resource":{"url":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}},{"scheme":"exact","network":"solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp","amount":"1","asset":"EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v","payTo":"x","maxTimeoutSeconds":60}],"extensions":{"bazaar":{"info":{}}}}"#;

    #[test]
    fn v2_header_keeps_raw_entries_and_lists_unusable_ones() {
        let header = base64::engine::general_purpose::STANDARD.encode(V2);
        let req = parse_v2_header(header.as_bytes()).unwrap();
        assert_eq!(req.version, Version::V2);
        assert_eq!(req.offers.len(), 1);
        let o = &req.offers[0];
        assert_eq!(
            (o.chain_id, o.amount, o.max_timeout_seconds),
            (84532, U256::from(10000), 60)
        );
        assert_eq!(o.domain_name.as_deref(), Some("USDC"));
        assert!(
            o.raw
                .get()
                .starts_with(r#"{"scheme":"exact","network":"eip155:84532","amount":"10000""#)
        );
        assert_eq!(req.unusable.len(), 1);
        assert!(
            req.unusable[0].1.contains("unsupported network"),
            "{:?}",
            req.unusable
        );
        assert_eq!(req.extensions.unwrap().get(), r#"{"bazaar":{"info":{}}}"#);
        // Unpadded base64 is accepted too.
        assert!(parse_v2_header(header.trim_end_matches('=').as_bytes()).is_ok());
    }

    #[test]
    fn v1_body() {
        let body = br#"{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"https://api.example.com/premium-data","description":"","mimeType":"","outputSchema":null,"payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","extra":{"name":"USDC","version":"2"}}]}"#;
        let req = parse_v1_body(body).unwrap();
        assert_eq!(req.version, Version::V1);
        assert_eq!(req.offers[0].chain_id, 84532);
        assert_eq!(req.offers[0].amount, U256::from(10000));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(parse_v2_header(b"%%%").unwrap_err(), ParseError::Base64);
        assert!(matches!(
            parse_v1_body(b"{}").unwrap_err(),
            ParseError::Json(_)
        ));
        assert_eq!(
            parse_v1_body(br#"{"x402Version":3,"accepts":[]}"#).unwrap_err(),
            ParseError::Version(3)
        );
        assert_eq!(
            parse_v1_body(br#"{"x402Version":1,"accepts":[]}"#).unwrap_err(),
            ParseError::NoOffers
        );
        let bad_amount = br#"{"x402Version":1,"accepts":[{"scheme":"exact","network":"base","maxAmountRequired":"0x10","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e"}]}"#;
        let req = parse_v1_body(bad_amount).unwrap();
        assert!(req.offers.is_empty());
        assert!(req.unusable[0].1.contains("invalid amount"));
        assert_eq!(
            parse_v2_header(&vec![b'A'; crate::x402::MAX_HEADER_LEN + 4]).unwrap_err(),
            ParseError::TooLarge
        );
    }
}
