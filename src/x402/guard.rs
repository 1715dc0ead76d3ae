//! Replay guard for agent-signed payments (relay mode): an authorization nonce is accepted once
//! per payer until it expires. The guards live with the idempotency records (the database, or
//! Redis), shared by every pag0 process on them and kept across restarts.

use alloy_primitives::{Address, B256};
use async_trait::async_trait;

#[async_trait]
pub trait NonceGuard: Send + Sync {
    /// Claims `(payer, nonce)` until `until` (unix seconds). `Ok(false)`: already claimed;
    /// an error: the guard is unreachable (nothing may be relayed).
    async fn claim(
        &self,
        payer: Address,
        nonce: B256,
        until: u64,
        now: u64,
    ) -> Result<bool, String>;
}
