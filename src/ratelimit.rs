//! Per-key rate limits with GCRA (the generic cell rate algorithm: a token bucket kept as one
//! number, the theoretical arrival time of the next request). In-process by default; with
//! `redis:` configured, one atomic Redis script per request shares each project's limit
//! between every pag0 instance, with the in-process limiter standing in while Redis is down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::IntCounter;
use redis::Script;

use crate::config::RateLimit;
use crate::redis_client::LazyRedis;

/// The verdict on one request, and what the `X-RateLimit-*` headers say about the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The burst: requests that may arrive at once.
    pub limit: u32,
    /// Requests that may still arrive at once after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Refused: until the next request fits.
    pub retry_after: Duration,
}

/// Decides whether one more request under `key` fits its limit.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Decision;
}

/// The time between two requests at the limit's rate and the burst's worth of it (µs; a
/// rate above a million per second counts as one per µs).
fn spacing(limit: RateLimit) -> (u64, u64) {
    let interval = (1_000_000 / u64::from(limit.requests_per_second.max(1))).max(1);
    (interval, interval * u64::from(limit.burst.max(1)))
}

/// One GCRA step at `now` (µs) for a bucket whose next request was due at `tat` (µs; `None`:
/// a fresh bucket): the decision and, when allowed, the new `tat`.
pub fn gcra(tat: Option<u64>, now: u64, limit: RateLimit) -> (Decision, Option<u64>) {
    let (interval, tolerance) = spacing(limit);
    let tat = tat.unwrap_or(now).max(now);
    let next = tat + interval;
    let allow_at = next.saturating_sub(tolerance);
    if now < allow_at {
        let decision = Decision {
            allowed: false,
            limit: limit.burst,
            remaining: 0,
            reset: Duration::from_micros(tat - now),
            retry_after: Duration::from_micros(allow_at - now),
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        limit: limit.burst,
        remaining: ((tolerance - (next - now)) / interval) as u32,
        reset: Duration::from_micros(next - now),
        retry_after: Duration::ZERO,
    };
    (decision, Some(next))
}

/// Buckets in this process's memory.
pub struct LocalRateLimiter {
    tats: Mutex<HashMap<String, u64>>,
    epoch: Instant,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        LocalRateLimiter {
            tats: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl LocalRateLimiter {
    /// The step with the clock passed in (so tests need not sleep).
    fn acquire_at(&self, key: &str, limit: RateLimit, now: Instant) -> Decision {
        let now = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let (decision, next) = gcra(tats.get(key).copied(), now, limit);
        if let Some(next) = next {
            match tats.get_mut(key) {
                Some(tat) => *tat = next,
                None => {
                    tats.insert(key.to_string(), next);
                }
            }
        }
        decision
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Decision {
        self.acquire_at(key, limit, Instant::now())
    }
}

/// GCRA in Redis, on Redis's clock (instances may disagree on time; Redis is one). Returns
/// `{allowed, remaining, reset_us, retry_after_us}`; the key expires once the bucket is full.
const GCRA_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next = tat + interval
local allow_at = next - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], next, 'PX', math.ceil((next - now) / 1000) + 1)
return {1, math.floor((tolerance - (next - now)) / interval), next - now, 0}
"#;

/// After a failed Redis call, requests use the in-process buckets for this long before Redis
/// is tried again (no timeout or connect attempt per request during an outage).
const RECONNECT_COOLDOWN: Duration = Duration::from_millis(500);

/// Buckets in Redis, shared by every instance; the in-process ones while Redis is down.
pub struct RedisRateLimiter {
    redis: LazyRedis,
    prefix: String,
    script: Script,
    fallback: LocalRateLimiter,
    last_failure: Mutex<Option<Instant>>,
    /// `pag0_rate_limit_fallbacks_total`.
    fallbacks: IntCounter,
}

impl RedisRateLimiter {
    pub fn new(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
        fallbacks: IntCounter,
    ) -> Result<RedisRateLimiter, String> {
        Ok(RedisRateLimiter {
            redis: LazyRedis::open(url, timeout)?,
            prefix: format!("{key_prefix}:rl"),
            script: Script::new(GCRA_LUA),
            fallback: LocalRateLimiter::default(),
            last_failure: Mutex::new(None),
            fallbacks,
        })
    }

    async fn shared(&self, key: &str, limit: RateLimit) -> Result<Decision, String> {
        let cooling = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < RECONNECT_COOLDOWN);
        if cooling {
            return Err("Redis failed a moment ago".into());
        }
        let result = self.call(key, limit).await;
        if result.is_err() {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        result
    }

    async fn call(&self, key: &str, limit: RateLimit) -> Result<Decision, String> {
        let mut con = match self.redis.connected() {
            Some(c) => c,
            None => self
                .redis
                .get()
                .await
                .map_err(|e| format!("cannot connect to Redis: {e}"))?,
        };
        let (interval, tolerance) = spacing(limit);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}:{key}", self.prefix))
            .arg(interval)
            .arg(tolerance);
        let call = invocation.invoke_async::<(u8, u64, u64, u64)>(&mut con);
        let (allowed, remaining, reset, retry_after) =
            match tokio::time::timeout(self.redis.timeout(), call).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(format!("Redis: {e}")),
                Err(_) => return Err("Redis did not answer in time".into()),
            };
        Ok(Decision {
            allowed: allowed == 1,
            limit: limit.burst,
            remaining: remaining as u32,
            reset: Duration::from_micros(reset),
            retry_after: Duration::from_micros(retry_after),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Decision {
        match self.shared(key, limit).await {
            Ok(decision) => decision,
            Err(e) => {
                log::debug!("rate limit of {key} decided in-process: {e}");
                self.fallbacks.inc();
                self.fallback.acquire(key, limit).await
            }
        }
    }
}

/// The limiter for a configuration: Redis-backed when `redis:` is set, else in-process.
pub fn limiter(
    redis: Option<&crate::config::RedisSettings>,
    fallbacks: IntCounter,
) -> Result<Arc<dyn RateLimiter>, String> {
    Ok(match redis {
        Some(r) => Arc::new(RedisRateLimiter::new(
            r.url.expose(),
            &r.key_prefix,
            r.timeout,
            fallbacks,
        )?),
        None => Arc::new(LocalRateLimiter::default()),
    })
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
        let remaining: Vec<u32> = (0..3)
            .map(|_| limiter.acquire_at("a", limit, t0))
            .map(|d| {
                assert!(d.allowed);
                d.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.acquire_at("a", limit, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(
            refused.reset,
            Duration::from_millis(1500),
            "full again in 1.5 s"
        );
        assert!(
            limiter.acquire_at("b", limit, t0).allowed,
            "buckets are per key"
        );
        let half = t0 + Duration::from_millis(500);
        assert!(limiter.acquire_at("a", limit, half).allowed);
        assert!(!limiter.acquire_at("a", limit, half).allowed);
        // A long pause refills to the burst size, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.acquire_at("a", limit, later).allowed);
        }
        assert!(!limiter.acquire_at("a", limit, later).allowed);
    }

    #[test]
    fn gcra_admits_the_rate_over_time() {
        let limit = RateLimit {
            requests_per_second: 10,
            burst: 5,
        };
        // One request every millisecond for two seconds: burst + rate × time get through.
        let mut tat = None;
        let mut admitted = 0;
        for ms in 0..2000u64 {
            let (d, next) = gcra(tat, ms * 1000, limit);
            if d.allowed {
                admitted += 1;
                tat = next;
            }
        }
        assert_eq!(admitted, 5 + 20 - 1, "{admitted}");
    }

    #[test]
    fn huge_rates_do_not_overflow_or_divide_by_zero() {
        let limit = RateLimit {
            requests_per_second: u32::MAX,
            burst: u32::MAX,
        };
        let (d, next) = gcra(None, 5, limit);
        assert!(d.allowed && next.is_some());
        assert_eq!(d.remaining, u32::MAX - 1);
    }
}
