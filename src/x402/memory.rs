//! Price memory: the offer an endpoint accepted last time, so the next call is signed up front
//! and costs one upstream round trip instead of two. In this process ([`LocalPriceMemory`]),
//! or shared by every process on one Redis ([`SharedPriceMemory`]: the 402 as it arrived, read
//! again by the process that recalls it, with a memory tier in front).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::wire::{PaymentRequired, Version, parse_v1_body, parse_v2_header};
use crate::redis_client::LazyRedis;

/// What is remembered for an endpoint: the 402 as the server sent it and which offer was paid.
#[derive(Debug)]
pub struct Remembered {
    pub required: PaymentRequired,
    pub offer_index: usize,
    /// The offer as it arrived: the v2 `PAYMENT-REQUIRED` header value or the v1 body.
    pub wire: Bytes,
}

impl Remembered {
    /// `version (1 or 2) | offer index u32 | wire`, big-endian.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.wire.len());
        out.push(match self.required.version {
            Version::V1 => 1,
            Version::V2 => 2,
        });
        out.extend_from_slice(&(self.offer_index as u32).to_be_bytes());
        out.extend_from_slice(&self.wire);
        out
    }

    /// What [`encode`](Self::encode) wrote, parsed again; `None` for anything else.
    fn decode(bytes: &[u8]) -> Option<Remembered> {
        let (&version, rest) = bytes.split_first()?;
        let (index, wire) = rest.split_at_checked(4)?;
        let required = match version {
            1 => parse_v1_body(wire),
            2 => parse_v2_header(wire),
            _ => return None,
        }
        .ok()?;
        Some(Remembered {
            required,
            offer_index: u32::from_be_bytes(index.try_into().ok()?) as usize,
            wire: Bytes::copy_from_slice(wire),
        })
    }
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

/// Price memory shared through Redis (`<prefix>:price:<key>`, with the entry's TTL), with this
/// process's memory in front. Redis errors only cost the round trip it would have saved. An
/// endpoint Redis knew no price for is not asked about again for [`SHARED_MISS_TTL`]: every
/// request on its way upstream recalls, and most endpoints are free.
pub struct SharedPriceMemory {
    local: LocalPriceMemory,
    redis: LazyRedis,
    prefix: String,
    /// Keys Redis had no price for, and when it said so.
    misses: Mutex<HashMap<String, Instant>>,
}

/// How long an endpoint without a shared price is taken not to have one (a price another
/// process learns is used here this much later at most).
pub const SHARED_MISS_TTL: Duration = Duration::from_secs(1);

impl SharedPriceMemory {
    /// `url` is `redis://…`; nothing is connected until first use.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<Self, String> {
        Ok(SharedPriceMemory {
            local: LocalPriceMemory::default(),
            redis: LazyRedis::open(url, timeout)?,
            prefix: format!("{key_prefix}:price"),
            misses: Mutex::default(),
        })
    }

    /// Whether Redis said within [`SHARED_MISS_TTL`] that `key` has no price.
    fn missed_lately(&self, key: &str) -> bool {
        let misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        misses
            .get(key)
            .is_some_and(|at| at.elapsed() < SHARED_MISS_TTL)
    }

    fn note_miss(&self, key: &str) {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        if misses.len() >= LOCAL_PRICE_MEMORY_CAPACITY {
            misses.retain(|_, at| at.elapsed() < SHARED_MISS_TTL);
        }
        if misses.len() < LOCAL_PRICE_MEMORY_CAPACITY {
            misses.insert(key.to_string(), Instant::now());
        }
    }

    fn forget_miss(&self, key: &str) {
        self.misses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    async fn fetch(&self, key: &str) -> Result<Option<(Remembered, Duration)>, String> {
        let mut c = self.redis.connection().await?;
        let (bytes, ttl_ms): (Option<Vec<u8>>, i64) = redis::pipe()
            .get(self.key(key))
            .pttl(self.key(key))
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(bytes
            .and_then(|b| Remembered::decode(&b))
            .filter(|_| ttl_ms > 0)
            .map(|r| (r, Duration::from_millis(ttl_ms as u64))))
    }
}

#[async_trait]
impl PriceMemory for SharedPriceMemory {
    async fn recall(&self, key: &str) -> Option<Arc<Remembered>> {
        if let Some(known) = self.local.recall(key).await {
            return Some(known);
        }
        if self.missed_lately(key) {
            return None;
        }
        match self.fetch(key).await {
            Ok(Some((known, ttl))) => {
                let known = Arc::new(known);
                self.local
                    .remember(key.to_string(), known.clone(), ttl)
                    .await;
                Some(known)
            }
            Ok(None) => {
                self.note_miss(key);
                None
            }
            Err(e) => {
                log::debug!("shared price memory: {e}");
                self.note_miss(key);
                None
            }
        }
    }

    async fn remember(&self, key: String, value: Arc<Remembered>, ttl: Duration) {
        let shared = self.key(&key);
        let encoded = value.encode();
        self.forget_miss(&key);
        self.local.remember(key, value, ttl).await;
        let result = match self.redis.connection().await {
            Ok(mut c) => redis::cmd("SET")
                .arg(shared)
                .arg(encoded)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            log::debug!("shared price memory: {e}");
        }
    }

    async fn forget(&self, key: &str) {
        self.local.forget(key).await;
        if let Ok(mut c) = self.redis.connection().await {
            let _ = redis::cmd("DEL")
                .arg(self.key(key))
                .query_async::<()>(&mut c)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered() -> Arc<Remembered> {
        let body = br#"{"x402Version":1,"accepts":[{"scheme":"exact","network":"base","maxAmountRequired":"1","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e"}]}"#;
        Arc::new(Remembered {
            required: parse_v1_body(body).unwrap(),
            offer_index: 0,
            wire: Bytes::from_static(body),
        })
    }

    #[test]
    fn a_remembered_offer_round_trips_through_its_encoding() {
        let r = remembered();
        let back = Remembered::decode(&r.encode()).unwrap();
        assert_eq!(back.wire, r.wire);
        assert_eq!(back.offer_index, 0);
        assert_eq!(back.required.offers[0].amount, r.required.offers[0].amount);
        assert!(Remembered::decode(&[2, 0, 0, 0, 0]).is_none(), "no offer");
        assert!(Remembered::decode(&[9]).is_none());
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
