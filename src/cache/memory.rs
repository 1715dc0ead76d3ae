//! The in-process tier: a byte-bounded map of entries (moka, TinyLFU admission and LRU
//! eviction), each expiring when even its stale copy is no longer useful.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::sync::Cache;

use super::Entry;

/// Entries by id (`scope:hash`), weighed by their size in bytes.
pub struct MemoryTier {
    entries: Cache<String, Arc<Entry>>,
    max_bytes: u64,
}

/// Each entry lives until its own `expires_at`.
struct UntilStale;

impl moka::Expiry<String, Arc<Entry>> for UntilStale {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(remaining(entry))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(entry))
    }
}

fn remaining(entry: &Entry) -> Duration {
    entry
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

impl MemoryTier {
    pub fn new(max_bytes: u64) -> MemoryTier {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|id: &String, entry: &Arc<Entry>| {
                u32::try_from(id.len() + entry.size()).unwrap_or(u32::MAX)
            })
            .expire_after(UntilStale)
            .build();
        MemoryTier { entries, max_bytes }
    }

    /// The byte limit it was created with.
    pub fn limit(&self) -> u64 {
        self.max_bytes
    }

    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.entries
            .get(id)
            .filter(|e| e.expires_at > SystemTime::now())
    }

    pub fn insert(&self, id: String, entry: Arc<Entry>) {
        self.entries.insert(id, entry);
    }

    pub fn remove(&self, id: &str) -> bool {
        self.entries.remove(id).is_some()
    }

    /// Removes every entry whose primary key `matches`; returns how many.
    pub fn remove_matching(&self, matches: impl Fn(&str) -> bool) -> usize {
        let ids: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(_, e)| matches(&e.primary))
            .map(|(id, _)| id)
            .collect();
        ids.iter().filter(|id| self.remove(id)).count()
    }

    /// (entries, bytes) after pending evictions are applied.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(i: usize, body: usize, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry::new(
            format!("p.demo\nGET\nhttp://h/{i}\n"),
            [Bytes::from_static(b"m0"), Bytes::from_static(b"m1")],
            Bytes::from(vec![b'x'; body]),
            SystemTime::now() + ttl,
        ))
    }

    #[test]
    fn evicts_down_to_the_byte_limit() {
        let tier = MemoryTier::new(64 * 1024);
        for i in 0..200 {
            tier.insert(
                format!("p.demo:{i}"),
                entry(i, 1024, Duration::from_secs(60)),
            );
        }
        let (entries, bytes) = tier.usage();
        assert!(bytes <= 64 * 1024, "{bytes} bytes kept");
        assert!(entries < 64 && entries > 20, "{entries} entries kept");
        let kept = (0..200)
            .filter(|i| tier.get(&format!("p.demo:{i}")).is_some())
            .count();
        assert_eq!(kept as u64, entries);
    }

    #[test]
    fn expired_entries_are_not_returned() {
        let tier = MemoryTier::new(1 << 20);
        tier.insert("a".into(), entry(1, 10, Duration::from_millis(50)));
        tier.insert("b".into(), entry(2, 10, Duration::from_secs(60)));
        assert!(tier.get("a").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(tier.get("a").is_none());
        assert!(tier.get("b").is_some());
        assert_eq!(tier.remove_matching(|p| p.contains("/2\n")), 1);
        assert!(tier.get("b").is_none());
    }
}
