//! Replay guard for agent-signed payments (relay mode): an authorization nonce is accepted once
//! per payer until it expires. In-process now; a Redis implementation will share it.

use std::collections::HashMap;
use std::sync::Mutex;

use alloy_primitives::{Address, B256};
use async_trait::async_trait;

#[async_trait]
pub trait NonceGuard: Send + Sync {
    /// Claims `(payer, nonce)` until `valid_before` (unix seconds). `false`: already claimed.
    async fn claim(&self, payer: Address, nonce: B256, valid_before: u64, now: u64) -> bool;
}

/// Claims kept in memory at most before expired ones are swept.
pub const LOCAL_NONCE_GUARD_SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct LocalNonceGuard {
    claimed: Mutex<HashMap<(Address, B256), u64>>,
}

#[async_trait]
impl NonceGuard for LocalNonceGuard {
    async fn claim(&self, payer: Address, nonce: B256, valid_before: u64, now: u64) -> bool {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.len() >= LOCAL_NONCE_GUARD_SWEEP_AT {
            claimed.retain(|_, until| *until > now);
        }
        match claimed.get(&(payer, nonce)) {
            Some(until) if *until > now => false,
            _ => {
                claimed.insert((payer, nonce), valid_before);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_nonce_is_accepted_once_per_payer_until_it_expires() {
        let g = LocalNonceGuard::default();
        let (a, b) = (Address::with_last_byte(1), Address::with_last_byte(2));
        let n = B256::with_last_byte(7);
        assert!(g.claim(a, n, 100, 10).await);
        assert!(!g.claim(a, n, 100, 50).await, "replayed");
        assert!(g.claim(b, n, 100, 50).await, "another payer");
        assert!(
            g.claim(a, n, 200, 100).await,
            "expired claim can be reused (the chain refuses it anyway)"
        );
    }
}
