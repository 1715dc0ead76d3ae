//! EIP-3009 authorizations on chain, read over JSON-RPC (alloy's provider): whether a payer's
//! authorization (nonce) was used, and in which transaction. Knows nothing of the proxy.

use alloy_primitives::{Address, B256};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_types_eth::{BlockNumberOrTag, Filter, TransactionRequest};
use alloy_sol_types::{SolCall, SolEvent, sol};

use crate::config::Secret;

sol! {
    /// EIP-3009: whether `nonce` of `authorizer` was used (or canceled).
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    /// EIP-3009: emitted when an authorization is used.
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
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
        e.to_string().replace(self.url.expose(), "<rpc url>")
    }

    /// Whether `authorizer`'s authorization `nonce` on `token` was used.
    pub async fn authorization(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<OnChain, String> {
        let latest = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(|e| self.error(e))?
            .ok_or("the RPC has no latest block")?;
        let (number, time) = (latest.header.number, latest.header.timestamp);
        let call = authorizationStateCall { authorizer, nonce }.abi_encode();
        let request = TransactionRequest::default().to(token).input(call.into());
        let out = self
            .provider
            .call(request)
            .block(number.into())
            .await
            .map_err(|e| self.error(e))?;
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
        let tx = match self.provider.get_logs(&filter).await {
            Ok(logs) => logs.iter().find_map(|l| l.transaction_hash),
            Err(e) => {
                log::debug!("AuthorizationUsed log lookup: {}", self.error(e));
                None
            }
        };
        Ok(OnChain::Used { tx })
    }
}
