//! The shared tier: one Redis hash per entry, written by whichever instance filled it and read
//! by all of them.
//!
//! Key `<prefix>:cache:<scope>:<hash>` → hash {`m0`, `m1`: the two serialized meta blobs,
//! `b`: body, `u`: primary key (for purges), `x`: expiry in unix ms}; the key itself expires
//! with the entry (`PEXPIREAT`). Purges are announced on `<prefix>:cache:purge` so every
//! instance drops them from its memory tier too. `<prefix>:cache:lock:<scope>:<hash>` is the
//! fleet-wide fill lock of an entry (see `CacheStage::fleet_fill`): its holder's token, until
//! the entry is written (or the lock timeout).
//!
//! Redis never fails a request: errors are counted, a lookup becomes a miss, a write is
//! dropped, and after an error the tier is skipped for [`COOLDOWN`] before it is tried again
//! (the connection manager reconnects by itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::redis_client::RedisConn;
use bytes::Bytes;
use futures::StreamExt;
use redis::AsyncCommands;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::clock::unix_millis;
use crate::redis_client::LazyRedis;
use tokio::sync::Semaphore;

use super::Entry;

/// After a Redis error, the tier is skipped this long.
pub const COOLDOWN: Duration = Duration::from_secs(1);
/// Writes in flight at once; more are dropped (and counted) rather than queued.
const MAX_WRITES_IN_FLIGHT: usize = 512;
/// Keys fetched per SCAN round of a purge.
const SCAN_COUNT: usize = 1_000;

/// Rewrites meta and expiry of an existing entry (never resurrects a purged one).
static UPDATE_META: once_cell::sync::Lazy<redis::Script> = once_cell::sync::Lazy::new(|| {
    redis::Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
         redis.call('HSET', KEYS[1], 'm0', ARGV[1], 'm1', ARGV[2], 'x', ARGV[3]) \
         redis.call('PEXPIREAT', KEYS[1], ARGV[3]) return 1",
    )
});

/// Deletes a fill lock only if the given token still holds it.
static RELEASE_LOCK: once_cell::sync::Lazy<redis::Script> = once_cell::sync::Lazy::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
          return 0",
    )
});

pub struct RedisTier {
    redis: LazyRedis,
    /// `<prefix>:cache`
    prefix: String,
    /// Unix ms until which the tier is skipped (0: healthy).
    down_until: AtomicU64,
    writes: Arc<Semaphore>,
}

/// Why a Redis call did not happen or failed (counted by the caller, never shown to agents).
#[derive(Debug)]
pub enum TierError {
    /// Skipped: the tier failed within the last [`COOLDOWN`].
    CoolingDown,
    Failed(String),
}

impl std::fmt::Display for TierError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierError::CoolingDown => f.write_str("Redis cache tier cooling down after an error"),
            TierError::Failed(e) => write!(f, "Redis cache tier: {e}"),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisTier {
    /// Nothing is connected until first use.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<RedisTier, String> {
        let redis = LazyRedis::open(url, timeout)?;
        Ok(RedisTier {
            redis,
            prefix: format!("{key_prefix}:cache"),
            down_until: AtomicU64::new(0),
            writes: Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT)),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}:{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:purge", self.prefix)
    }

    /// Whether the tier is currently usable (not cooling down after an error).
    pub fn healthy(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) <= unix_millis()
    }

    fn failed(&self, e: impl std::fmt::Display) -> TierError {
        self.down_until.store(
            unix_millis() + COOLDOWN.as_millis() as u64,
            Ordering::Relaxed,
        );
        TierError::Failed(e.to_string())
    }

    async fn connection(&self) -> Result<RedisConn, TierError> {
        if !self.healthy() {
            return Err(TierError::CoolingDown);
        }
        self.redis
            .get()
            .await
            .map_err(|e| self.failed(format!("cannot connect: {e}")))
    }

    /// Runs one call with the tier's timeout; an error starts the cooldown.
    async fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut RedisConn) -> redis::RedisResult<T>,
    ) -> Result<T, TierError> {
        let mut con = self.connection().await?;
        match tokio::time::timeout(self.redis.timeout(), f(&mut con)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed("no answer in time")),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Entry>, TierError> {
        let key = self.key(id);
        let fields: Vec<Option<Vec<u8>>> = self
            .call(async |c| c.hget(&key, &["m0", "m1", "b", "u", "x"]).await)
            .await?;
        let [m0, m1, b, u, x]: [Option<Vec<u8>>; 5] = match fields.try_into() {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let (Some(m0), Some(m1), Some(b), Some(u), Some(x)) = (m0, m1, b, u, x) else {
            return Ok(None); // absent, or a half-written/foreign value: a miss
        };
        let Some(expires_ms) = std::str::from_utf8(&x).ok().and_then(|x| x.parse().ok()) else {
            return Ok(None);
        };
        if expires_ms <= unix_millis() {
            return Ok(None);
        }
        Ok(Some(Entry::new(
            String::from_utf8_lossy(&u).into_owned(),
            [Bytes::from(m0), Bytes::from(m1)],
            Bytes::from(b),
            UNIX_EPOCH + Duration::from_millis(expires_ms),
        )))
    }

    /// Writes `entry` (one pipeline: HSET + PEXPIREAT).
    pub async fn put(&self, id: &str, entry: &Entry) -> Result<(), TierError> {
        let key = self.key(id);
        let expires = unix_ms(entry.expires_at);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("m0", entry.meta[0].as_ref()),
                    ("m1", entry.meta[1].as_ref()),
                    ("b", entry.body.as_ref()),
                    ("u", entry.primary.as_bytes()),
                    ("x", expires.to_string().as_bytes()),
                ],
            )
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(expires)
            .ignore();
        self.call(async |c| pipe.query_async::<()>(c).await).await
    }

    fn lock_key(&self, id: &str) -> String {
        format!("{}:lock:{id}", self.prefix)
    }

    /// Takes the fill lock of entry `id` for `token` until `ttl` (SET NX PX); `false`: another
    /// request in the fleet holds it.
    pub async fn try_fill_lock(
        &self,
        id: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let key = self.lock_key(id);
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .call(async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Releases the fill lock of entry `id` if `token` still holds it.
    pub async fn release_fill_lock(&self, id: &str, token: &str) -> Result<(), TierError> {
        let key = self.lock_key(id);
        self.call(async |c| {
            RELEASE_LOCK
                .key(&key)
                .arg(token)
                .invoke_async::<i64>(c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// A permit for one background write; `None` when too many are already in flight or the
    /// tier is cooling down (the write is then dropped).
    pub fn write_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if !self.healthy() {
            return None;
        }
        self.writes.clone().try_acquire_owned().ok()
    }

    /// Replaces the meta blobs and expiry of an entry that exists (after a revalidation);
    /// `false` if it does not.
    pub async fn update_meta(
        &self,
        id: &str,
        meta: &[Bytes; 2],
        expires_at: SystemTime,
    ) -> Result<bool, TierError> {
        let key = self.key(id);
        let expires = unix_ms(expires_at);
        let updated: i64 = self
            .call(async |c| {
                UPDATE_META
                    .key(&key)
                    .arg(meta[0].as_ref())
                    .arg(meta[1].as_ref())
                    .arg(expires)
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok(updated == 1)
    }

    pub async fn remove(&self, id: &str) -> Result<bool, TierError> {
        let key = self.key(id);
        let n: i64 = self.call(async |c| c.del(&key).await).await?;
        Ok(n > 0)
    }

    /// Deletes every entry of `scope` (all scopes when `None`) whose primary key `matches`;
    /// returns how many. Walks the keys with SCAN (O(entries); purges are rare).
    pub async fn remove_matching(
        &self,
        scope: Option<&str>,
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize, TierError> {
        let pattern = format!(
            "{}:{}:*",
            escape_glob(&self.prefix),
            scope.map_or("*".to_string(), escape_glob)
        );
        // A cluster's keys are walked primary by primary (SCAN sees one node's keys).
        let nodes: Vec<Option<(String, u16)>> = if self.redis.is_cluster() {
            let primaries = self.redis.primaries().await;
            primaries
                .map_err(|e| self.failed(e))?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let mut removed = 0;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) = match &node {
                    None => self.call(async |c| scan.query_async(c).await).await?,
                    Some((host, port)) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        let value = self
                            .call(async |c| match c {
                                RedisConn::Cluster(cluster) => {
                                    cluster.route_command(&scan, routing).await
                                }
                                RedisConn::Single(single) => scan.query_async(single).await,
                            })
                            .await?;
                        redis::from_redis_value(&value).map_err(|e| self.failed(e))?
                    }
                };
                removed += self.remove_keys(&keys, matches).await?;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// Deletes those of `keys` whose primary key `matches`; key by key on a cluster (the keys
    /// of one SCAN page are in different slots).
    async fn remove_keys(
        &self,
        keys: &[String],
        matches: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize, TierError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let primaries: Vec<Option<String>> = if self.redis.is_cluster() {
            let mut primaries = Vec::with_capacity(keys.len());
            for key in keys {
                primaries.push(self.call(async |c| c.hget(key, "u").await).await?);
            }
            primaries
        } else {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.hget(key, "u");
            }
            self.call(async |c| pipe.query_async(c).await).await?
        };
        let doomed: Vec<&String> = keys
            .iter()
            .zip(primaries)
            .filter(|(_, p)| p.as_deref().is_some_and(matches))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        if self.redis.is_cluster() {
            for key in doomed {
                removed += self.call(async |c| c.del::<_, usize>(key).await).await?;
            }
        } else if !doomed.is_empty() {
            removed = self.call(async |c| c.del(&doomed).await).await?;
        }
        Ok(removed)
    }

    /// Tells every instance (this one included) to apply `message` to its memory tier.
    pub async fn announce_purge(&self, message: &str) -> Result<(), TierError> {
        let channel = self.channel();
        self.call(async |c| c.publish::<_, _, ()>(&channel, message).await)
            .await
    }

    /// Listens for purge announcements for as long as the process runs, reconnecting after
    /// errors; `apply` gets each message.
    pub async fn follow_purges(self: Arc<Self>, apply: impl Fn(&str) + Send + 'static) {
        loop {
            match self.redis.client().get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(self.channel()).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            if let Ok(text) = msg.get_payload::<String>() {
                                apply(&text);
                            }
                        }
                    }
                }
                Err(e) => log::debug!("cache purge subscription: {e}"),
            }
            tokio::time::sleep(COOLDOWN).await;
        }
    }
}

/// Escapes Redis MATCH glob characters.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
