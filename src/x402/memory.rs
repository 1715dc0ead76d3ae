//! Price memory: the offer an endpoint accepted last time, so the next call is signed up front
//! and costs one upstream round trip instead of two. In-process now; a Redis implementation
//! will share it between instances behind the same trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::wire::PaymentRequired;

/// What is remembered for an endpoint: the 402 as the server sent it and which offer was paid.
#[derive(Debug)]
pub struct Remembered {
    pub required: PaymentRequired,
    pub offer_index: usize,
}

/// Remembers paid offers per key (project + method + URL without query).
#[async_trait]
pub trait PriceMemory: Send + Sync {
    async fn recall(&self, key: &str) -> Option<Arc<Remembered>>;
    async fn remember(&self, key: String, value: Arc<Remembered>, ttl: Duration);
    async fn forget(&self, key: &str);
}

/// Entries kept in memory at most (oldest-expiring first out when full).
pub const LOCAL_PRICE_MEMORY_CAPACITY: usize = 10_000;

/// Price memory in this process.
#[derive(Default)]
pub struct LocalPriceMemory {
    entries: Mutex<HashMap<String, (Instant, Arc<Remembered>)>>,
}

#[async_trait]
impl PriceMemory for LocalPriceMemory {
    async fn recall(&self, key: &str) -> Option<Arc<Remembered>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((expires, value)) if *expires > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    async fn remember(&self, key: String, value: Arc<Remembered>, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= LOCAL_PRICE_MEMORY_CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= LOCAL_PRICE_MEMORY_CAPACITY
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (e, _))| *e)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, (now + ttl, value));
    }

    async fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::parse_v1_body;

    fn remembered() -> Arc<Remembered> {
        let body = br#"{"x402Version":1,"accepts":[{"scheme":"exact","network":"base","maxAmountRequired":"1","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e"}]}"#;
        Arc::new(Remembered {
            required: parse_v1_body(body).unwrap(),
            offer_index: 0,
        })
    }

    #[tokio::test]
    async fn remembers_until_the_ttl_and_forgets_on_request() {
        let memory = LocalPriceMemory::default();
        memory
            .remember("a".into(), remembered(), Duration::from_secs(60))
            .await;
        memory
            .remember("b".into(), remembered(), Duration::ZERO)
            .await;
        assert!(memory.recall("a").await.is_some());
        assert!(memory.recall("b").await.is_none(), "expired");
        memory.forget("a").await;
        assert!(memory.recall("a").await.is_none());
    }

    #[tokio::test]
    async fn capacity_is_bounded() {
        let memory = LocalPriceMemory::default();
        for i in 0..LOCAL_PRICE_MEMORY_CAPACITY + 5 {
            memory
                .remember(
                    format!("k{i}"),
                    remembered(),
                    Duration::from_secs(60 + i as u64),
                )
                .await;
        }
        assert_eq!(
            memory.entries.lock().unwrap().len(),
            LOCAL_PRICE_MEMORY_CAPACITY
        );
        assert!(
            memory
                .recall(&format!("k{}", LOCAL_PRICE_MEMORY_CAPACITY + 4))
                .await
                .is_some(),
            "newest kept"
        );
        assert!(
            memory.recall("k0").await.is_none(),
            "soonest-expiring evicted"
        );
    }
}
