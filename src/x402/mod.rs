//! x402 on the wire, for the paying side: 402 offers (v1 body, v2 header), EIP-3009 signing,
//! payment headers, settlement receipts. Knows nothing of Pingora; `stages` glue it in.
//!
//! References: `shared/reference/x402-protocol.md` (§ numbers in comments point there).

pub mod facilitator;
pub mod guard;
pub mod memory;
pub mod networks;
pub mod pool;
pub mod receipt;
pub mod sign;
pub mod stock;
pub mod wire;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

pub use guard::NonceGuard;
pub use memory::{LocalPriceMemory, PriceMemory, Remembered, SharedPriceMemory};
pub use pool::SigningPool;
pub use receipt::{
    DecodedPayment, Receipt, decode_payment_header, parse_receipt, transaction_hash,
};
pub use sign::{
    Authorization, Eip3009Signer, PaymentSigner, SignError, SignedPayment, payment_header,
};
pub use wire::{Offer, ParseError, PaymentRequired, Version, parse_v1_body, parse_v2_header};

/// v2 response header carrying the offer (base64 JSON).
pub const PAYMENT_REQUIRED_HEADER: &str = "payment-required";
/// v2 request header carrying the signed payment.
pub const PAYMENT_SIGNATURE_HEADER: &str = "payment-signature";
/// v1 request header carrying the signed payment.
pub const X_PAYMENT_HEADER: &str = "x-payment";
/// Receipt headers; either name may come with either version (§5 quirks).
pub const RECEIPT_HEADERS: [&str; 2] = ["payment-response", "x-payment-response"];

/// Largest base64 header value pag0 decodes (offers and payments are a few KiB at most).
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Standard alphabet; padding accepted with or without `=` (reference encoders pad; §1).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a base64 header value with the size limit applied.
fn decode_b64(value: &[u8]) -> Result<Vec<u8>, ParseError> {
    use base64::Engine;
    let value = value.trim_ascii();
    if value.len() > MAX_HEADER_LEN {
        return Err(ParseError::TooLarge);
    }
    B64.decode(value).map_err(|_| ParseError::Base64)
}

/// Addresses memoized per thread by [`checksummed`]; the memo starts over when full.
const CHECKSUM_MEMO_SIZE: usize = 256;

/// `addr` in EIP-55 mixed case. The same few addresses (the wallet, recipients, assets) are
/// written on every paid call, and each encoding costs a keccak, so they are memoized.
pub fn checksummed(addr: &alloy_primitives::Address) -> String {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static MEMO: RefCell<HashMap<alloy_primitives::Address, String>> = RefCell::default();
    }
    MEMO.with_borrow_mut(|memo| {
        if let Some(known) = memo.get(addr) {
            return known.clone();
        }
        if memo.len() >= CHECKSUM_MEMO_SIZE {
            memo.clear();
        }
        let text = addr.to_checksum(None);
        memo.insert(*addr, text.clone());
        text
    })
}

/// Parses a decimal amount in atomic units (`"10000"`); hex, signs and blanks are refused.
pub fn parse_amount(raw: &str) -> Option<alloy_primitives::U256> {
    if raw.is_empty() || raw.len() > 78 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    alloy_primitives::U256::from_str_radix(raw, 10).ok()
}

#[cfg(test)]
mod tests {
    use alloy_primitives::Address;

    #[test]
    fn checksummed_matches_eip55_when_memoized_and_after_the_memo_fills() {
        let known: Address = "0x209693bc6afc0c5328ba36faf03c514ef312287c"
            .parse()
            .unwrap();
        let eip55 = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
        assert_eq!(super::checksummed(&known), eip55);
        assert_eq!(super::checksummed(&known), eip55, "from the memo");
        for i in 0..=super::CHECKSUM_MEMO_SIZE as u64 {
            let other = Address::left_padding_from(&i.to_be_bytes());
            assert_eq!(super::checksummed(&other), other.to_checksum(None));
        }
        assert_eq!(
            super::checksummed(&known),
            eip55,
            "after the memo started over"
        );
    }
}
