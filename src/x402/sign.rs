//! EIP-3009 `TransferWithAuthorization` signing (EIP-712, §4.1) and the payment header (§3).
//!
//! Signing sits behind [`PaymentSigner`] so Permit2 (`exact` with `assetTransferMethod:
//! permit2`) and `upto` can be added as further implementations.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::{PrivateKeySigner, Secp256k1Signer};
use alloy_sol_types::{Eip712Domain, SolStruct, sol};
use async_trait::async_trait;
use rand::RngCore;
use serde::Serialize;
use serde_json::value::RawValue;

use super::pool::SigningPool;
use super::stock::{REFILL_PART, Refill, ShelfKey, Stock};
use super::wire::{Offer, PaymentRequired, Version};

sol! {
    /// The EIP-3009 message (typehash 0x7c7c6cdb…2267, §4.1).
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// `validAfter` = now − this, absorbing a payer clock that runs fast (§4.2).
pub const VALID_AFTER_SLACK_SECONDS: u64 = 600;

/// What the payer authorizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
}

/// The EIP-712 domain of an EIP-3009 token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenDomain {
    pub name: String,
    pub version: String,
    pub chain_id: u64,
    pub verifying_contract: Address,
}

impl TokenDomain {
    fn eip712(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some(Cow::Owned(self.name.clone())),
            Some(Cow::Owned(self.version.clone())),
            Some(U256::from(self.chain_id)),
            Some(self.verifying_contract),
            None,
        )
    }

    /// The domain of an offer: name/version from `extra`, chain from the network, contract =
    /// asset. `None` when `extra` lacks name or version (then nothing valid can be signed, §4.1).
    pub fn of(offer: &Offer) -> Option<TokenDomain> {
        Some(TokenDomain {
            name: offer.domain_name.clone()?,
            version: offer.domain_version.clone()?,
            chain_id: offer.chain_id,
            verifying_contract: offer.asset,
        })
    }
}

/// The EIP-712 digest that gets signed.
pub fn signing_hash(domain: &TokenDomain, auth: &Authorization) -> B256 {
    signing_hash_in(domain.eip712().separator(), auth)
}

/// The EIP-712 digest of `auth` under a domain separator already computed (a batch of
/// signatures for one domain hashes the domain once).
fn signing_hash_in(separator: B256, auth: &Authorization) -> B256 {
    let message = TransferWithAuthorization {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        validAfter: U256::from(auth.valid_after),
        validBefore: U256::from(auth.valid_before),
        nonce: auth.nonce,
    };
    let mut digest = [0u8; 66];
    digest[..2].copy_from_slice(&[0x19, 0x01]);
    digest[2..34].copy_from_slice(separator.as_slice());
    digest[34..].copy_from_slice(message.eip712_hash_struct().as_slice());
    alloy_primitives::keccak256(digest)
}

/// The address that produced `signature` (65 bytes r‖s‖v) over `auth` in `domain`.
pub fn recover_signer(
    domain: &TokenDomain,
    auth: &Authorization,
    signature: &[u8],
) -> Option<Address> {
    let sig = alloy_primitives::Signature::try_from(signature).ok()?;
    sig.recover_address_from_prehash(&signing_hash(domain, auth))
        .ok()
}

/// A signed authorization for one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPayment {
    pub authorization: Authorization,
    /// 65 bytes r‖s‖v, v ∈ {27, 28} (§4.3).
    pub signature: [u8; 65],
    /// Signed ahead and taken from the stock (see [`Stock`]) rather than signed for the call.
    pub presigned: bool,
}

/// Why an offer could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("scheme {0:?} is not supported (only exact)")]
    UnsupportedScheme(String),
    #[error("asset transfer method {0:?} is not supported (only eip3009)")]
    UnsupportedTransferMethod(String),
    #[error("the offer's extra lacks the EIP-712 domain name/version")]
    MissingDomain,
    #[error("signing failed")]
    Signer,
}

/// Signs payments for offers. Implementations: [`Eip3009Signer`]; Permit2 and `upto` later.
#[async_trait]
pub trait PaymentSigner: Send + Sync {
    /// The payer address.
    fn address(&self) -> Address;
    /// Signs `offer` with a validity window starting from `now` (unix seconds).
    async fn sign(&self, offer: &Offer, now: u64) -> Result<SignedPayment, SignError>;
}

/// Signs `exact` offers with EIP-3009 using a local private key. Signing runs on libsecp256k1
/// (about 4x faster than the pure-Rust k256 backend in benches/paid.sh; same RFC 6979
/// deterministic signatures, checked against vector B). Offers paid in a steady stream are
/// signed ahead in batches and served from a [`Stock`].
pub struct Eip3009Signer {
    key: Arc<Secp256k1Signer>,
    stock: Arc<Stock>,
}

impl fmt::Debug for Eip3009Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key; the address identifies the wallet.
        write!(f, "Eip3009Signer({})", self.key.address())
    }
}

impl Eip3009Signer {
    /// From a k256 signer (e.g. a decrypted keystore).
    pub fn new(key: PrivateKeySigner) -> Eip3009Signer {
        let key = Secp256k1Signer::from_bytes(&key.to_bytes())
            .expect("a valid k256 key is a valid secp256k1 key");
        Eip3009Signer::with_key(key)
    }

    /// From a hex private key (`0x…` or bare). The error never contains the key.
    pub fn from_hex(hex_key: &str) -> Result<Eip3009Signer, &'static str> {
        let hex_key = hex_key.trim();
        let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| "invalid private key")?;
        let key =
            Secp256k1Signer::from_bytes(&B256::from(bytes)).map_err(|_| "invalid private key")?;
        Ok(Eip3009Signer::with_key(key))
    }

    fn with_key(key: Secp256k1Signer) -> Eip3009Signer {
        Eip3009Signer {
            key: Arc::new(key),
            stock: Arc::default(),
        }
    }

    /// Has the signing pool sign `refill` and stock it, in parts queued behind the calls
    /// waiting for a signature; returns at once.
    fn order(&self, refill: Refill) {
        let batch = Batch {
            key: Arc::clone(&self.key),
            stock: Arc::clone(&self.stock),
            left: refill.count,
            refill,
        };
        SigningPool::global().spawn_background(move || batch.sign_part());
    }
    /// Signs a fully specified authorization (deterministic: RFC 6979).
    pub fn sign_authorization(
        &self,
        domain: &TokenDomain,
        auth: &Authorization,
    ) -> Result<[u8; 65], SignError> {
        sign_with(&self.key, domain.eip712().separator(), auth)
    }
}

/// The EIP-712 hash of `auth` under the domain `separator` and its ECDSA signature with `key`
/// (65 bytes: r, s, v).
fn sign_with(
    key: &Secp256k1Signer,
    separator: B256,
    auth: &Authorization,
) -> Result<[u8; 65], SignError> {
    let sig = key
        .sign_hash_sync(&signing_hash_in(separator, auth))
        .map_err(|_| SignError::Signer)?;
    Ok(sig.as_bytes())
}

#[async_trait]
impl PaymentSigner for Eip3009Signer {
    fn address(&self) -> Address {
        self.key.address()
    }

    async fn sign(&self, offer: &Offer, now: u64) -> Result<SignedPayment, SignError> {
        if offer.scheme != "exact" {
            return Err(SignError::UnsupportedScheme(offer.scheme.clone()));
        }
        if let Some(method) = offer.transfer_method.as_deref().filter(|m| *m != "eip3009") {
            return Err(SignError::UnsupportedTransferMethod(method.to_string()));
        }
        let shelf = ShelfKey {
            domain: TokenDomain::of(offer).ok_or(SignError::MissingDomain)?,
            to: offer.pay_to,
            value: offer.amount,
            max_timeout_seconds: offer.max_timeout_seconds,
        };
        let pool = SigningPool::global();
        if !pool.runs_inline() {
            let (ready, refill) = self.stock.take(&shelf, now);
            if let Some(refill) = refill {
                self.order(refill);
            }
            if let Some(payment) = ready {
                return Ok(payment);
            }
        }
        let authorization = new_authorization(self.key.address(), &shelf, now);
        // The EIP-712 hash (seven keccaks) and the ECDSA signature run on the signing pool,
        // off Pingora's worker threads.
        let key = Arc::clone(&self.key);
        let auth = authorization.clone();
        let signature = pool
            .run(move || sign_with(&key, shelf.domain.eip712().separator(), &auth))
            .await
            .ok_or(SignError::Signer)??;
        Ok(SignedPayment {
            authorization,
            signature,
            presigned: false,
        })
    }
}

/// A stock refill under way on the signing pool.
struct Batch {
    key: Arc<Secp256k1Signer>,
    stock: Arc<Stock>,
    refill: Refill,
    /// Signatures still to make.
    left: usize,
}

impl Batch {
    /// Signs and stocks the next [`REFILL_PART`] authorizations, then queues the rest.
    fn sign_part(mut self) {
        let shelf = &self.refill.key;
        // Hashed once per part, not per signature.
        let separator = shelf.domain.eip712().separator();
        let mut part = Vec::with_capacity(self.left.min(REFILL_PART));
        while part.len() < REFILL_PART && self.left > 0 {
            let authorization = new_authorization(self.key.address(), shelf, self.refill.now);
            let Ok(signature) = sign_with(&self.key, separator, &authorization) else {
                self.left = 0;
                break;
            };
            self.left -= 1;
            part.push(SignedPayment {
                authorization,
                signature,
                presigned: true,
            });
        }
        self.stock.put(&self.refill, part, false);
        if self.left > 0 {
            SigningPool::global().spawn_background(move || self.sign_part());
        }
    }
}

impl Drop for Batch {
    /// Ends the refill however it ends (done, failed, panicked), so the shelf can be refilled.
    fn drop(&mut self) {
        self.stock.put(&self.refill, Vec::new(), true);
    }
}

/// A fresh authorization (32 random bytes of nonce) for the window starting at `now`.
fn new_authorization(from: Address, shelf: &ShelfKey, now: u64) -> Authorization {
    let mut nonce = [0u8; 32];
    rand::rng().fill_bytes(&mut nonce);
    Authorization {
        from,
        to: shelf.to,
        value: shelf.value,
        valid_after: now.saturating_sub(VALID_AFTER_SLACK_SECONDS),
        valid_before: now.saturating_add(shelf.max_timeout_seconds),
        nonce: B256::from(nonce),
    }
}

// === the payment header (§3.2, §3.3) ===

/// `payload.authorization` on the wire (§3.2): every field a string. Written by pag0's signer,
/// read back when relaying an agent's payment.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireAuthorization {
    pub from: String,
    pub to: String,
    pub value: String,
    pub valid_after: String,
    pub valid_before: String,
    pub nonce: String,
}

/// `payload` on the wire: signature and authorization.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct WirePayload {
    pub signature: String,
    pub authorization: WireAuthorization,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V1Payment<'a> {
    x402_version: u8,
    scheme: &'a str,
    network: &'a str,
    payload: WirePayload,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V2Payment<'a> {
    x402_version: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    accepted: &'a RawValue,
    payload: WirePayload,
    #[serde(skip_serializing_if = "Option::is_none")]
    extensions: Option<&'a RawValue>,
}

fn wire_payload(signed: &SignedPayment) -> WirePayload {
    let a = &signed.authorization;
    WirePayload {
        signature: format!("0x{}", hex::encode(signed.signature)),
        authorization: WireAuthorization {
            from: super::checksummed(&a.from),
            to: super::checksummed(&a.to),
            value: a.value.to_string(),
            valid_after: a.valid_after.to_string(),
            valid_before: a.valid_before.to_string(),
            nonce: format!("{:#x}", a.nonce),
        },
    }
}

/// The value of the payment header for `offer` (`X-PAYMENT` for v1, `PAYMENT-SIGNATURE` for
/// v2: see [`Version::payment_header`]). v2 echoes the offer, `resource` and `extensions`
/// byte for byte as the server sent them.
pub fn payment_header(required: &PaymentRequired, offer: &Offer, signed: &SignedPayment) -> String {
    use base64::Engine;
    let json = match offer.version {
        Version::V1 => serde_json::to_vec(&V1Payment {
            x402_version: 1,
            scheme: &offer.scheme,
            network: &offer.network,
            payload: wire_payload(signed),
        }),
        Version::V2 => serde_json::to_vec(&V2Payment {
            x402_version: 2,
            resource: required.resource.as_deref(),
            accepted: &offer.raw,
            payload: wire_payload(signed),
            extensions: required.extensions.as_deref(),
        }),
    }
    .expect("payment JSON serializes");
    base64::engine::general_purpose::STANDARD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::wire::parse_v2_header;

    /// Anvil/Hardhat public test key #0 (§11 B). Never funded.
    const KEY_B: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn base_sepolia_usdc() -> TokenDomain {
        TokenDomain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: 84532,
            verifying_contract: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
                .parse()
                .unwrap(),
        }
    }

    fn auth_b() -> Authorization {
        Authorization {
            from: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                .parse()
                .unwrap(),
            to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
                .parse()
                .unwrap(),
            value: U256::from(10000),
            valid_after: 1740671489,
            valid_before: 1740672149,
            nonce: B256::with_last_byte(1),
        }
    }

    #[test]
    fn vector_b_digest_and_signature_byte_for_byte() {
        let signer = Eip3009Signer::from_hex(KEY_B).unwrap();
        assert_eq!(signer.address(), auth_b().from);
        let domain = base_sepolia_usdc();
        assert_eq!(
            format!("{:#x}", domain.eip712().separator()),
            "0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818"
        );
        assert_eq!(
            format!("{:#x}", signing_hash(&domain, &auth_b())),
            "0x6d2be4d68b1af132b9287ce51373f9c93ef9ef2a29b15fb52a073a960e2abebb"
        );
        let sig = signer.sign_authorization(&domain, &auth_b()).unwrap();
        assert_eq!(
            format!("0x{}", hex::encode(sig)),
            "0x2a6e9cd4ba590f022441c7da722afef19eb4278216fbd95ef8147bba523a2d054f03f61699948daec65f227142fcd7058a09225e8a93866aa4ff8fd9fc9a674b1b"
        );
        // Base mainnet USDC: different domain, different digest and signature.
        let mainnet = TokenDomain {
            name: "USD Coin".into(),
            version: "2".into(),
            chain_id: 8453,
            verifying_contract: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
                .parse()
                .unwrap(),
        };
        assert_eq!(
            format!("{:#x}", signing_hash(&mainnet, &auth_b())),
            "0xbc812937a6b84857818669be159905cae2ab8ec7fc9173f917446ff5da468ffa"
        );
        assert_eq!(
            format!(
                "0x{}",
                hex::encode(signer.sign_authorization(&mainnet, &auth_b()).unwrap())
            ),
            "0x7796853e405360adfe5d87b01beff5bb408d539d247b88dc2af35d9924196baf57f16f12b1677ddb2ba03b0743c5ee8684aac1a60dbc0c758d59d9bafe121a2a1b"
        );
    }

    #[test]
    fn vector_b_headers_byte_for_byte() {
        use base64::Engine;
        let offered = r#"{"x402Version":2,"resource":{"url":"https://api.example.com/premium-data","description":"Access to premium market data","mimeType":"application/json"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#;
        let required = parse_v2_header(
            base64::engine::general_purpose::STANDARD
                .encode(offered)
                .as_bytes(),
        )
        .unwrap();
        let signer = Eip3009Signer::from_hex(KEY_B).unwrap();
        let signature = signer
            .sign_authorization(&base_sepolia_usdc(), &auth_b())
            .unwrap();
        let signed = SignedPayment {
            authorization: auth_b(),
            signature,
            presigned: false,
        };
        let v2 = payment_header(&required, &required.offers[0], &signed);
        assert_eq!(
            v2,
            "eyJ4NDAyVmVyc2lvbiI6MiwicmVzb3VyY2UiOnsidXJsIjoiaHR0cHM6Ly9hcGkuZXhhbXBsZS5jb20vcHJlbWl1bS1kYXRhIiwiZGVzY3JpcHRpb24iOiJBY2Nlc3MgdG8gcHJlbWl1bSBtYXJrZXQgZGF0YSIsIm1pbWVUeXBlIjoiYXBwbGljYXRpb24vanNvbiJ9LCJhY2NlcHRlZCI6eyJzY2hlbWUiOiJleGFjdCIsIm5ldHdvcmsiOiJlaXAxNTU6ODQ1MzIiLCJhbW91bnQiOiIxMDAwMCIsImFzc2V0IjoiMHgwMzZDYkQ1Mzg0MmM1NDI2NjM0ZTc5Mjk1NDFlQzIzMThmM2RDRjdlIiwicGF5VG8iOiIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCJtYXhUaW1lb3V0U2Vjb25kcyI6NjAsImV4dHJhIjp7Im5hbWUiOiJVU0RDIiwidmVyc2lvbiI6IjIifX0sInBheWxvYWQiOnsic2lnbmF0dXJlIjoiMHgyYTZlOWNkNGJhNTkwZjAyMjQ0MWM3ZGE3MjJhZmVmMTllYjQyNzgyMTZmYmQ5NWVmODE0N2JiYTUyM2EyZDA1NGYwM2Y2MTY5OTk0OGRhZWM2NWYyMjcxNDJmY2Q3MDU4YTA5MjI1ZThhOTM4NjZhYTRmZjhmZDlmYzlhNjc0YjFiIiwiYXV0aG9yaXphdGlvbiI6eyJmcm9tIjoiMHhmMzlGZDZlNTFhYWQ4OEY2RjRjZTZhQjg4MjcyNzljZmZGYjkyMjY2IiwidG8iOiIweDIwOTY5M0JjNmFmYzBDNTMyOGJBMzZGYUYwM0M1MTRFRjMxMjI4N0MiLCJ2YWx1ZSI6IjEwMDAwIiwidmFsaWRBZnRlciI6IjE3NDA2NzE0ODkiLCJ2YWxpZEJlZm9yZSI6IjE3NDA2NzIxNDkiLCJub25jZSI6IjB4MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMSJ9fX0="
        );

        let v1_body = r#"{"x402Version":1,"accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"https://api.example.com/premium-data","description":"","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","extra":{"name":"USDC","version":"2"}}]}"#;
        let v1_required = crate::x402::wire::parse_v1_body(v1_body.as_bytes()).unwrap();
        let v1 = payment_header(&v1_required, &v1_required.offers[0], &signed);
        assert_eq!(
            v1,
            "eyJ4NDAyVmVyc2lvbiI6MSwic2NoZW1lIjoiZXhhY3QiLCJuZXR3b3JrIjoiYmFzZS1zZXBvbGlhIiwicGF5bG9hZCI6eyJzaWduYXR1cmUiOiIweDJhNmU5Y2Q0YmE1OTBmMDIyNDQxYzdkYTcyMmFmZWYxOWViNDI3ODIxNmZiZDk1ZWY4MTQ3YmJhNTIzYTJkMDU0ZjAzZjYxNjk5OTQ4ZGFlYzY1ZjIyNzE0MmZjZDcwNThhMDkyMjVlOGE5Mzg2NmFhNGZmOGZkOWZjOWE2NzRiMWIiLCJhdXRob3JpemF0aW9uIjp7ImZyb20iOiIweGYzOUZkNmU1MWFhZDg4RjZGNGNlNmFCODgyNzI3OWNmZkZiOTIyNjYiLCJ0byI6IjB4MjA5NjkzQmM2YWZjMEM1MzI4YkEzNkZhRjAzQzUxNEVGMzEyMjg3QyIsInZhbHVlIjoiMTAwMDAiLCJ2YWxpZEFmdGVyIjoiMTc0MDY3MTQ4OSIsInZhbGlkQmVmb3JlIjoiMTc0MDY3MjE0OSIsIm5vbmNlIjoiMHgwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAxIn19fQ=="
        );
    }

    #[test]
    fn vector_a_recovers_and_wrong_domains_do_not() {
        let auth = Authorization {
            from: "0x857b06519E91e3A54538791bDbb0E22373e36b66"
                .parse()
                .unwrap(),
            to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
                .parse()
                .unwrap(),
            value: U256::from(10000),
            valid_after: 1740672089,
            valid_before: 1740672154,
            nonce: "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
                .parse()
                .unwrap(),
        };
        let sig = hex::decode("2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c").unwrap();
        let domain = base_sepolia_usdc();
        assert_eq!(
            format!("{:#x}", signing_hash(&domain, &auth)),
            "0xf256992871671abcb27ff92885a7afa46218724e5fc0bac35d050115aa1d22e6"
        );
        assert_eq!(recover_signer(&domain, &auth, &sig), Some(auth.from));
        let wrong_name = TokenDomain {
            name: "USD Coin".into(),
            ..domain.clone()
        };
        assert_ne!(recover_signer(&wrong_name, &auth, &sig), Some(auth.from));
        let wrong_chain = TokenDomain {
            chain_id: 8453,
            ..domain
        };
        assert_ne!(recover_signer(&wrong_chain, &auth, &sig), Some(auth.from));
    }

    #[tokio::test]
    async fn sign_uses_the_offer_window_amount_and_a_fresh_nonce() {
        use base64::Engine;
        let offered = r#"{"x402Version":2,"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"123456","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":90,"extra":{"name":"USDC","version":"2"}}]}"#;
        let required = parse_v2_header(
            base64::engine::general_purpose::STANDARD
                .encode(offered)
                .as_bytes(),
        )
        .unwrap();
        let offer = &required.offers[0];
        let signer = Eip3009Signer::from_hex(KEY_B).unwrap();
        let now = 1_800_000_000;
        let a = signer.sign(offer, now).await.unwrap();
        let b = signer.sign(offer, now).await.unwrap();
        assert_ne!(
            a.authorization.nonce, b.authorization.nonce,
            "32 random bytes per payment"
        );
        assert_eq!(a.authorization.value, U256::from(123456));
        assert_eq!(a.authorization.to, offer.pay_to);
        assert_eq!(
            (a.authorization.valid_after, a.authorization.valid_before),
            (now - 600, now + 90)
        );
        let domain = TokenDomain::of(offer).unwrap();
        assert_eq!(
            recover_signer(&domain, &a.authorization, &a.signature),
            Some(signer.address())
        );
        assert!(
            !format!("{signer:?}").contains("ac0974"),
            "Debug never shows the key"
        );

        let mut no_domain = offer.clone();
        no_domain.domain_name = None;
        assert_eq!(
            signer.sign(&no_domain, now).await.unwrap_err(),
            SignError::MissingDomain
        );
        let mut permit2 = offer.clone();
        permit2.transfer_method = Some("permit2".into());
        assert!(matches!(
            signer.sign(&permit2, now).await.unwrap_err(),
            SignError::UnsupportedTransferMethod(_)
        ));
        let mut upto = offer.clone();
        upto.scheme = "upto".into();
        assert!(matches!(
            signer.sign(&upto, now).await.unwrap_err(),
            SignError::UnsupportedScheme(_)
        ));
    }
}
