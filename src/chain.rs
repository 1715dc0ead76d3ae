//! EIP-3009 authorizations and token transfers on chain, read over JSON-RPC (alloy's
//! provider): whether a payer's authorization (nonce) was used and in which transaction, what a
//! transaction moved, and every transfer out of a wallet. Knows nothing of the proxy.

use alloy_primitives::{Address, B256, U256};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_types_eth::{BlockNumberOrTag, Filter, TransactionRequest};
use alloy_sol_types::{SolCall, SolEvent, sol};

use crate::config::Secret;

sol! {
    /// EIP-3009: whether `nonce` of `authorizer` was used (or canceled).
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    /// EIP-3009: emitted when an authorization is used.
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    /// ERC-20.
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// Longest wait for one JSON-RPC answer (a node that never answers must not stall a job).
const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One ERC-20 transfer, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLog {
    pub token: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub tx: B256,
    pub log_index: u64,
    pub block: u64,
}

/// What a mined transaction did, as far as payments go.
#[derive(Debug, Clone, Default)]
pub struct TxFacts {
    /// `false`: it reverted (it moved nothing).
    pub success: bool,
    pub block: u64,
    pub transfers: Vec<TransferLog>,
    /// EIP-3009 authorizations it used: (token, authorizer, nonce).
    pub authorizations: Vec<(Address, Address, B256)>,
}

/// How many blocks back the `AuthorizationUsed` log of a used authorization is looked for (RPC
/// providers commonly cap `eth_getLogs` ranges at 10 000).
pub const LOG_LOOKBACK_BLOCKS: u64 = 9_999;

/// What the chain says about one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnChain {
    /// Used: the payment was settled (its transaction, when its log was found).
    Used { tx: Option<B256> },
    /// Not used as of the latest block, whose timestamp is given: once that timestamp is at or
    /// past the authorization's `validBefore`, no later block can settle it.
    Unused { latest_block_time: u64 },
}

/// One network's JSON-RPC endpoint.
pub struct Chain {
    provider: RootProvider,
    /// The URL (it may carry an API key): removed from every error.
    url: Secret,
}

impl Chain {
    pub fn new(url: Secret) -> Result<Chain, String> {
        let parsed: url::Url = url
            .expose()
            .parse()
            .map_err(|e| format!("invalid RPC URL: {e}"))?;
        Ok(Chain {
            provider: RootProvider::new_http(parsed),
            url,
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> String {
        redact(&e.to_string(), &self.url)
    }

    async fn timed<T>(
        &self,
        call: impl std::future::IntoFuture<Output = alloy_provider::transport::TransportResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(RPC_TIMEOUT, call.into_future()).await {
            Ok(r) => r.map_err(|e| self.error(e)),
            Err(_) => Err(format!("the RPC did not answer within {RPC_TIMEOUT:?}")),
        }
    }

    /// The chain id the RPC serves.
    pub async fn chain_id(&self) -> Result<u64, String> {
        self.timed(self.provider.get_chain_id()).await
    }

    /// The RPC's URL as configured (prints as its `${ENV}` reference when it is a secret).
    pub fn url(&self) -> &Secret {
        &self.url
    }

    /// The latest block's number and timestamp.
    pub async fn latest(&self) -> Result<(u64, u64), String> {
        let block = self
            .timed(self.provider.get_block_by_number(BlockNumberOrTag::Latest))
            .await?
            .ok_or("the RPC has no latest block")?;
        Ok((block.header.number, block.header.timestamp))
    }

    /// A block's timestamp.
    pub async fn block_time(&self, number: u64) -> Result<u64, String> {
        let block = self
            .timed(self.provider.get_block_by_number(number.into()))
            .await?
            .ok_or_else(|| format!("the RPC has no block {number}"))?;
        Ok(block.header.timestamp)
    }

    /// The first block at or after unix second `time` (the block after `latest` when none is).
    pub async fn block_at(&self, time: u64, latest: u64) -> Result<u64, String> {
        let (mut lo, mut hi) = (0, latest + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.block_time(mid).await? < time {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// What a transaction did; `None` when the chain has no receipt for it (unknown or not
    /// mined yet).
    pub async fn transaction(&self, tx: B256) -> Result<Option<TxFacts>, String> {
        let Some(receipt) = self
            .timed(self.provider.get_transaction_receipt(tx))
            .await?
        else {
            return Ok(None);
        };
        let mut facts = TxFacts {
            success: receipt.status(),
            block: receipt.block_number.unwrap_or_default(),
            ..TxFacts::default()
        };
        for log in receipt.inner.logs() {
            if let Some(t) = transfer_of(log) {
                facts.transfers.push(t);
            } else if let Ok(used) = AuthorizationUsed::decode_log(&log.inner) {
                facts
                    .authorizations
                    .push((log.address(), used.authorizer, used.nonce));
            }
        }
        Ok(Some(facts))
    }

    /// Every transfer of `token` out of `from` in blocks `first..=last`.
    pub async fn transfers_from(
        &self,
        token: Address,
        from: Address,
        first: u64,
        last: u64,
    ) -> Result<Vec<TransferLog>, String> {
        let filter = Filter::new()
            .address(token)
            .event_signature(Transfer::SIGNATURE_HASH)
            .topic1(from.into_word())
            .from_block(first)
            .to_block(last);
        let logs = self.timed(self.provider.get_logs(&filter)).await?;
        Ok(logs.iter().filter_map(transfer_of).collect())
    }

    /// Every EIP-3009 authorization of `authorizer` used on `token` in blocks `first..=last`:
    /// (transaction, nonce).
    pub async fn authorizations_used(
        &self,
        token: Address,
        authorizer: Address,
        first: u64,
        last: u64,
    ) -> Result<Vec<(B256, B256)>, String> {
        let filter = Filter::new()
            .address(token)
            .event_signature(AuthorizationUsed::SIGNATURE_HASH)
            .topic1(authorizer.into_word())
            .from_block(first)
            .to_block(last);
        let logs = self.timed(self.provider.get_logs(&filter)).await?;
        Ok(logs
            .iter()
            .filter_map(|log| {
                let used = AuthorizationUsed::decode_log(&log.inner).ok()?;
                Some((log.transaction_hash?, used.nonce))
            })
            .collect())
    }

    /// Whether `authorizer`'s authorization `nonce` on `token` was used.
    pub async fn authorization(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<OnChain, String> {
        let (number, time) = self.latest().await?;
        let call = authorizationStateCall { authorizer, nonce }.abi_encode();
        let request = TransactionRequest::default().to(token).input(call.into());
        let out = self
            .timed(self.provider.call(request).block(number.into()))
            .await?;
        let used = authorizationStateCall::abi_decode_returns(&out)
            .map_err(|e| format!("authorizationState answer: {e}"))?;
        if !used {
            return Ok(OnChain::Unused {
                latest_block_time: time,
            });
        }
        let filter = Filter::new()
            .address(token)
            .event_signature(AuthorizationUsed::SIGNATURE_HASH)
            .topic1(authorizer.into_word())
            .topic2(nonce)
            .from_block(number.saturating_sub(LOG_LOOKBACK_BLOCKS))
            .to_block(number);
        // The state is proof enough; the transaction is a detail the log may not give.
        let tx = match self.timed(self.provider.get_logs(&filter)).await {
            Ok(logs) => logs.iter().find_map(|l| l.transaction_hash),
            Err(e) => {
                log::debug!("AuthorizationUsed log lookup: {e}");
                None
            }
        };
        Ok(OnChain::Used { tx })
    }
}

fn transfer_of(log: &alloy_rpc_types_eth::Log) -> Option<TransferLog> {
    let t = Transfer::decode_log(&log.inner).ok()?;
    Some(TransferLog {
        token: log.address(),
        from: t.from,
        to: t.to,
        value: t.value,
        tx: log.transaction_hash?,
        log_index: log.log_index?,
        block: log.block_number?,
    })
}

/// `text` without the RPC URL (it may carry an API key in its path, query or user info), in
/// the form it was written and the forms HTTP clients print it in (normalised by the URL
/// parser, or reduced to its path and query).
pub fn redact(text: &str, url: &Secret) -> String {
    let raw = url.expose();
    let mut out = text.replace(raw, "<rpc url>");
    if let Ok(parsed) = url::Url::parse(raw) {
        out = out.replace(parsed.as_str(), "<rpc url>");
        let tail = &parsed[url::Position::BeforePath..];
        if tail.len() > 1 {
            out = out.replace(tail, "/<rpc path>");
        }
        if let Some(password) = parsed.password() {
            out = out.replace(password, "<password>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_urls_are_redacted_in_every_printed_form() {
        let url = Secret::plain("https://RPC.example.com:443/v2/key-123?apikey=s3cret");
        for printed in [
            "error sending request for url (https://rpc.example.com/v2/key-123?apikey=s3cret)",
            "https://RPC.example.com:443/v2/key-123?apikey=s3cret: refused",
            "GET /v2/key-123?apikey=s3cret failed",
        ] {
            let clean = redact(printed, &url);
            assert!(!clean.contains("key-123"), "{clean}");
            assert!(!clean.contains("s3cret"), "{clean}");
        }
        let query = Secret::plain("https://h.example?key=abc");
        let clean = redact("error for url (https://h.example/?key=abc)", &query);
        assert!(!clean.contains("abc"), "{clean}");
    }
}
