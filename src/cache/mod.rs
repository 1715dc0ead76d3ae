//! Response cache storage for pingora-cache: an in-process memory tier, bounded by bytes, in
//! front of an optional Redis tier that every instance shares.
//!
//! An entry is the two serialized [`CacheMeta`] blobs, the body and the primary key it was
//! stored under. A lookup tries memory, then Redis (a Redis hit is copied into memory). A
//! finished miss goes into memory at once and into Redis in the background; a miss handler
//! dropped before `finish` writes nothing (a failed write). Redis errors never fail a request.
//!
//! The primary key is `scope \n METHOD \n URL \n body-hash`; the scope is also the key's
//! `user_tag` and the first part of the entry id (`scope:hash`), so purges can select by scope
//! and match URLs. This module knows nothing of requests or rules (see `stages::cache`).

mod entry;
mod memory;
mod redis;
pub mod stats;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CompactCacheKey};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use serde::{Deserialize, Serialize};

pub use entry::{DecodedMetas, Entry, Ready};
pub use memory::MemoryTier;
pub use redis::{RedisTier, TierError};
pub use stats::CacheStats;

use crate::metrics::Metrics;

/// (scope, method, url) of a primary key.
pub fn primary_parts(primary: &str) -> (&str, &str, &str) {
    let mut parts = primary.splitn(4, '\n');
    let scope = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    let url = parts.next().unwrap_or("");
    (scope, method, url)
}

/// Builds the primary key (see the module docs). None of the parts contains a newline.
pub fn primary_key(scope: &str, method: &str, url: &str, body_hash: &str) -> String {
    format!("{scope}\n{method}\n{url}\n{body_hash}")
}

/// An entry and the tier that had it.
pub type Found = Option<(Arc<Entry>, Tier)>;

/// What the cache stage's lookup found when it could not answer itself, carried in the
/// [`CacheKey`]'s extensions so that pingora-cache's lookup does not ask the tiers again.
/// Only the first lookup takes it: after waiting on the cache lock pingora-cache looks up
/// again, and must see what the request holding the lock stored.
#[derive(Debug, Clone)]
pub struct Prefetched(Arc<std::sync::Mutex<Option<Found>>>);

impl Prefetched {
    pub fn new(found: Found) -> Prefetched {
        Prefetched(Arc::new(std::sync::Mutex::new(Some(found))))
    }

    fn take(&self) -> Option<Found> {
        self.0.lock().expect("prefetch lock").take()
    }
}

/// When the request that may fill an entry started, carried in the [`CacheKey`]'s extensions:
/// a purge after that moment wins over the fill.
#[derive(Debug, Clone, Copy)]
pub struct FillStarted(pub SystemTime);

/// The fleet-wide fill lock a request holds for the entry it fills, carried in the
/// [`CacheKey`]'s extensions: the entry's Redis write releases it, so a request waiting in
/// another process never sees the lock gone before the entry is there. `handed` says the
/// response was handed over for storing; otherwise the request's end releases the lock.
#[derive(Debug, Clone)]
pub struct FillLock {
    pub token: String,
    pub handed: Arc<std::sync::atomic::AtomicBool>,
}

/// Which tier answered a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
        }
    }
}

/// Storage settings (changing them needs a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// Memory tier size in bytes (0: no memory tier).
    pub memory_bytes: u64,
    /// Redis tier: (url, key prefix, timeout).
    pub redis: Option<(String, String, Duration)>,
}

/// The pingora-cache [`Storage`] of pag0. Lives for the whole process (`&'static`).
pub struct CacheStore {
    memory: Option<MemoryTier>,
    redis: Option<Arc<RedisTier>>,
    /// Without a memory tier: the decoded metas of recent Redis hits.
    decoded: Option<DecodedMetas>,
    metrics: Arc<Metrics>,
    /// Purges of the last [`PURGE_MEMORY`], so a fill that started before one of them is not
    /// stored after it (it would bring the purged answer back).
    recent_purges: std::sync::Mutex<Vec<(SystemTime, PurgeFilter)>>,
}

/// How long a purge is remembered against fills still in flight (longer than any upstream
/// answer may take).
const PURGE_MEMORY: Duration = Duration::from_secs(600);
/// Bound of [`DecodedMetas`] (headers only).
const DECODED_METAS_BYTES: u64 = 8 << 20;
/// Most purges remembered at once (older ones are forgotten first).
const MAX_RECENT_PURGES: usize = 1_000;

/// What a purge selects: entries of one scope (all when `None`), by exact URL or URL pattern.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PurgeFilter {
    pub scope: Option<String>,
    pub url: Option<String>,
    pub pattern: Option<String>,
}

impl PurgeFilter {
    pub fn matches(&self, primary: &str) -> bool {
        let (scope, _, url) = primary_parts(primary);
        self.scope.as_deref().is_none_or(|s| s == scope)
            && self.url.as_deref().is_none_or(|u| u == url)
            && self
                .pattern
                .as_deref()
                .is_none_or(|p| crate::glob::matches(p, url))
    }
}

/// Entries a purge removed, per tier.
#[derive(Debug, Default, Serialize)]
pub struct PurgeCount {
    pub memory: usize,
    pub redis: usize,
}

/// Size of the tiers, for `/api/cache/stats` and `/health`.
#[derive(Debug, Serialize)]
pub struct StoreUsage {
    pub memory_entries: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    /// `None`: no Redis tier; else whether it is in use right now (not cooling down).
    pub redis_up: Option<bool>,
}

/// `scope:hash`, the hash being pingora-cache's `combined()` hex (written without its
/// per-byte formatting: this runs on every lookup).
fn entry_id(key: &impl CacheHashKey) -> String {
    let hash = key.combined_bin();
    let mut id = String::with_capacity(key.user_tag().len() + 1 + 2 * hash.len());
    id.push_str(key.user_tag());
    id.push(':');
    id.push_str(&hex::encode(hash));
    id
}

fn internal(context: &'static str, e: impl std::fmt::Display) -> Box<Error> {
    Error::explain(ErrorType::InternalError, format!("{context}: {e}"))
}

impl CacheStore {
    pub fn new(settings: &StoreSettings, metrics: Arc<Metrics>) -> Result<CacheStore, String> {
        let redis = match &settings.redis {
            Some((url, prefix, timeout)) => Some(Arc::new(RedisTier::new(url, prefix, *timeout)?)),
            None => None,
        };
        let memory = (settings.memory_bytes > 0).then(|| MemoryTier::new(settings.memory_bytes));
        Ok(CacheStore {
            decoded: (memory.is_none() && redis.is_some())
                .then(|| DecodedMetas::new(DECODED_METAS_BYTES)),
            memory,
            redis,
            metrics,
            recent_purges: Default::default(),
        })
    }

    fn remember_purge(&self, filter: &PurgeFilter) {
        let now = SystemTime::now();
        let mut purges = self.recent_purges.lock().expect("purges lock");
        purges.retain(|(at, _)| now.duration_since(*at).unwrap_or_default() < PURGE_MEMORY);
        if purges.len() >= MAX_RECENT_PURGES {
            purges.remove(0);
        }
        purges.push((now, filter.clone()));
    }

    /// Whether a purge that matches `primary` happened after `started`.
    fn purged_since(&self, primary: &str, started: SystemTime) -> bool {
        let purges = self.recent_purges.lock().expect("purges lock");
        purges
            .iter()
            .any(|(at, filter)| *at >= started && filter.matches(primary))
    }

    /// Moves the store to the heap for good: pingora-cache wants `&'static` storage.
    pub fn leak(self) -> &'static CacheStore {
        Box::leak(Box::new(self))
    }

    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }

    fn tier_error(&self, op: &str, e: &TierError) {
        let kind = match e {
            TierError::CoolingDown => "skipped",
            TierError::Failed(_) => "error",
        };
        self.metrics
            .cache_tier_errors
            .with_label_values(&["redis", op, kind])
            .inc();
        if let TierError::Failed(e) = e {
            log::debug!("cache {op}: {e}");
        }
    }

    /// Looks `key` up in memory, then Redis (a Redis hit is copied into memory), for the cache
    /// stage's own hit path; what it found goes on to pingora-cache's lookup as [`Prefetched`].
    pub async fn find_entry(&self, key: &CacheKey) -> Found {
        let id = entry_id(key);
        let found = self.find(&id).await;
        if let (Some((entry, Tier::Redis)), Some(decoded)) = (&found, &self.decoded) {
            decoded.apply(&id, entry);
        }
        found
    }

    async fn find(&self, id: &str) -> Option<(Arc<Entry>, Tier)> {
        if let Some(entry) = self.memory.as_ref().and_then(|m| m.get(id)) {
            return Some((entry, Tier::Memory));
        }
        let redis = self.redis.as_ref()?;
        match redis.get(id).await {
            Ok(Some(entry)) => {
                let entry = Arc::new(entry);
                if let Some(m) = &self.memory {
                    m.insert(id.to_string(), entry.clone());
                }
                Some((entry, Tier::Redis))
            }
            Ok(None) => None,
            Err(e) => {
                self.tier_error("lookup", &e);
                None
            }
        }
    }

    /// Takes the fleet-wide fill lock of `key` for `token` until `ttl`. `Ok(true)` without a
    /// Redis tier (the process's own cache lock is the only one).
    pub async fn lock_fill(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        match &self.redis {
            Some(redis) => redis.try_fill_lock(&entry_id(key), token, ttl).await,
            None => Ok(true),
        }
    }

    /// Releases the fill lock `lock` of `key` (or of entry `id`).
    pub async fn release_fill(&self, key: &CacheKey, lock: &FillLock) {
        self.release_fill_id(&entry_id(key), Some(lock)).await
    }

    async fn release_fill_id(&self, id: &str, lock: Option<&FillLock>) {
        if let (Some(redis), Some(lock)) = (&self.redis, lock)
            && let Err(e) = redis.release_fill_lock(id, &lock.token).await
        {
            self.tier_error("unlock", &e);
        }
    }

    /// Stores a finished miss. With a memory tier the Redis write happens in the background
    /// (requests waiting on the cache lock find the entry in memory); without one it is
    /// awaited, so they find it in Redis. The fill lock goes once the Redis write is over.
    async fn put(
        &'static self,
        id: String,
        entry: Entry,
        started: SystemTime,
        lock: Option<FillLock>,
    ) {
        if self.purged_since(&entry.primary, started) {
            return self.release_fill_id(&id, lock.as_ref()).await;
        }
        let entry = Arc::new(entry);
        if let Some(m) = &self.memory {
            m.insert(id.clone(), entry.clone());
            // A purge that arrived meanwhile wins.
            if self.purged_since(&entry.primary, started) {
                m.remove(&id);
                return self.release_fill_id(&id, lock.as_ref()).await;
            }
        }
        let Some(redis) = &self.redis else {
            return;
        };
        if self.memory.is_none() {
            self.write_redis(&id, &entry, started).await;
            return self.release_fill_id(&id, lock.as_ref()).await;
        }
        match redis.write_permit() {
            Some(permit) => {
                tokio::spawn(async move {
                    self.write_redis(&id, &entry, started).await;
                    self.release_fill_id(&id, lock.as_ref()).await;
                    drop(permit);
                });
            }
            None => {
                self.metrics
                    .cache_tier_errors
                    .with_label_values(&["redis", "write", "skipped"])
                    .inc();
                self.release_fill_id(&id, lock.as_ref()).await;
            }
        }
    }

    /// Writes an entry to Redis; removes it again if a matching purge arrived meanwhile (the
    /// purge's SCAN may already have passed its key).
    async fn write_redis(&self, id: &str, entry: &Entry, started: SystemTime) {
        let Some(redis) = &self.redis else {
            return;
        };
        match redis.put(id, entry).await {
            Err(e) => self.tier_error("write", &e),
            Ok(()) if self.purged_since(&entry.primary, started) => {
                if let Err(e) = redis.remove(id).await {
                    self.tier_error("purge", &e);
                }
            }
            Ok(()) => {}
        }
    }

    /// Removes the entries `filter` selects from both tiers and tells the other instances.
    pub async fn purge_matching(&self, filter: &PurgeFilter) -> Result<PurgeCount, String> {
        self.remember_purge(filter);
        let mut count = PurgeCount {
            memory: self
                .memory
                .as_ref()
                .map_or(0, |m| m.remove_matching(|p| filter.matches(p))),
            redis: 0,
        };
        if let Some(redis) = &self.redis {
            // Announce first, so other instances stop storing fills of these entries before
            // the SCAN passes their keys (their late writes remove themselves again).
            let message = serde_json::to_string(filter).expect("serializable");
            if let Err(e) = redis.announce_purge(&message).await {
                self.tier_error("purge", &e);
                return Err(format!(
                    "{e}; other instances may keep their in-memory copies until they expire"
                ));
            }
            count.redis = redis
                .remove_matching(filter.scope.as_deref(), &|p| filter.matches(p))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(count)
    }

    /// Applies a purge announced by an instance (see [`RedisTier::follow_purges`]).
    pub fn apply_announced_purge(&self, message: &str) {
        match serde_json::from_str::<PurgeFilter>(message) {
            Ok(filter) => {
                self.remember_purge(&filter);
                if let Some(m) = &self.memory {
                    m.remove_matching(|p| filter.matches(p));
                }
            }
            Err(e) => log::warn!("ignoring a malformed cache purge announcement: {e}"),
        }
    }

    pub fn usage(&self) -> StoreUsage {
        let (entries, bytes) = self.memory.as_ref().map_or((0, 0), |m| m.usage());
        StoreUsage {
            memory_entries: entries,
            memory_bytes: bytes,
            memory_limit_bytes: self.memory.as_ref().map(MemoryTier::limit),
            redis_up: self.redis.as_ref().map(|r| r.healthy()),
        }
    }
}

#[async_trait]
impl Storage for CacheStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = entry_id(key);
        let prefetched = key.extensions.get::<Prefetched>().and_then(|p| p.take());
        let found = match prefetched {
            Some(found) => found,
            None => self.find(&id).await,
        };
        let Some((entry, tier)) = found else {
            return Ok(None);
        };
        let meta = match CacheMeta::deserialize(&entry.meta[0], &entry.meta[1]) {
            Ok(meta) => meta,
            Err(e) => {
                // Written by an incompatible version: treat as a miss (it gets overwritten).
                log::debug!("cache entry {id} unreadable: {e}");
                return Ok(None);
            }
        };
        let hit = Hit {
            body: entry.body.clone(),
            range: (0, entry.body.len()),
            done: false,
            tier,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (m0, m1) = meta.serialize()?;
        let stale = meta
            .stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec());
        Ok(Box::new(Miss {
            store: self,
            started: key
                .extensions
                .get::<FillStarted>()
                .map_or(meta.created(), |s| s.0),
            id: entry_id(key),
            lock: key.extensions.get::<FillLock>().cloned(),
            primary: key.primary_key_str().unwrap_or_default().to_string(),
            meta: [Bytes::from(m0), Bytes::from(m1)],
            body: BytesMut::new(),
            expires_at: meta.fresh_until() + Duration::from_secs(u64::from(stale)),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key: &CompactCacheKey = target.key();
        let id = entry_id(key);
        let mut found = self.memory.as_ref().is_some_and(|m| m.remove(&id));
        if let Some(redis) = &self.redis {
            found |= redis.remove(&id).await.map_err(|e| internal("purge", e))?;
        }
        Ok(if found {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let id = entry_id(key);
        let (m0, m1) = meta.serialize()?;
        let blobs = [Bytes::from(m0), Bytes::from(m1)];
        let stale = meta
            .stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec());
        let expires_at = meta.fresh_until() + Duration::from_secs(u64::from(stale));
        let mut updated = false;
        if let Some(m) = &self.memory
            && let Some(old) = m.get(&id)
        {
            m.insert(
                id.clone(),
                Arc::new(Entry::new(
                    old.primary.clone(),
                    blobs.clone(),
                    old.body.clone(),
                    expires_at,
                )),
            );
            updated = true;
        }
        if let Some(redis) = &self.redis {
            match redis.update_meta(&id, &blobs, expires_at).await {
                Ok(found) => updated |= found,
                Err(e) => self.tier_error("update", &e),
            }
        }
        Ok(updated)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves one cached body (seekable, so ranges work on hits).
pub struct Hit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
    pub tier: Tier,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |e| e.min(len));
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek beyond the body");
        }
        self.range = (start, end);
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response body; only `finish` stores it.
struct Miss {
    store: &'static CacheStore,
    /// When the response was admitted (purges after this win).
    started: SystemTime,
    id: String,
    /// The fleet-wide fill lock this request holds, released once the entry is written.
    lock: Option<FillLock>,
    primary: String,
    meta: [Bytes; 2],
    body: BytesMut,
    expires_at: SystemTime,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss {
            store,
            started,
            id,
            lock,
            primary,
            meta,
            body,
            expires_at,
        } = *self;
        if let Some(lock) = &lock {
            lock.handed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let entry = Entry::new(primary, meta, body.freeze(), expires_at);
        let size = entry.size();
        store.put(id, entry, started, lock).await;
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids name Redis keys that other instances and earlier versions wrote: they must stay
    /// `scope:` + pingora-cache's own hex of the combined hash.
    #[test]
    fn entry_ids_are_scope_and_pingora_hex() {
        let key = CacheKey::new(primary_key("p.demo", "GET", "http://h/x", ""), "p.demo");
        assert_eq!(entry_id(&key), format!("p.demo:{}", key.combined()));
        let compact = key.to_compact();
        assert_eq!(entry_id(&compact), entry_id(&key));
    }
}
