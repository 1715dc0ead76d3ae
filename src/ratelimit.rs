//! Per-key token buckets. In-process now; a Redis implementation will share buckets between
//! instances behind the same [`RateLimiter`] trait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::RateLimit;

/// Decides whether one more request under `key` fits its limit.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one token from `key`'s bucket. `Err(wait)`: the bucket is empty and the next
    /// token arrives after `wait`.
    async fn acquire(&self, key: &str, limit: RateLimit) -> Result<(), Duration>;
}

/// Token buckets in this process's memory.
#[derive(Default)]
pub struct LocalRateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl LocalRateLimiter {
    /// The pure bucket step, with the clock passed in (so tests need not sleep).
    fn acquire_at(&self, key: &str, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(limit.requests_per_second);
        let burst = f64::from(limit.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = match buckets.get_mut(key) {
            Some(b) => b,
            None => buckets.entry(key.to_string()).or_insert(Bucket {
                tokens: burst,
                refilled: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Result<(), Duration> {
        self.acquire_at(key, limit, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_key() {
        let limiter = LocalRateLimiter::default();
        let limit = RateLimit {
            requests_per_second: 2,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.acquire_at("a", limit, t0).is_ok());
        }
        let wait = limiter.acquire_at("a", limit, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            limiter.acquire_at("b", limit, t0).is_ok(),
            "buckets are per key"
        );
        assert!(
            limiter
                .acquire_at("a", limit, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .acquire_at("a", limit, t0 + Duration::from_millis(500))
                .is_err()
        );
        // A long pause refills to the burst size, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.acquire_at("a", limit, later).is_ok());
        }
        assert!(limiter.acquire_at("a", limit, later).is_err());
    }
}
