//! Idempotency records: the first paid response for an `Idempotency-Key`, so a retried request
//! is answered from here and never signs again. In-process now; a Redis implementation will
//! share records between instances behind the same trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

/// A response kept for replay.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// `None` when the body was too large to keep (a replay then says so instead).
    pub body: Option<Bytes>,
}

/// What a new request with a key finds.
#[derive(Debug)]
pub enum Begin {
    /// First use: the caller proceeds and later completes or releases the key.
    New,
    /// The first request with this key is still running.
    InFlight,
    /// The key was used for a different request (method, URL or body).
    Mismatch,
    /// The first request's response.
    Done(Arc<StoredResponse>),
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request with `fingerprint`, or reports what the key already holds.
    async fn begin(&self, key: &str, fingerprint: [u8; 32], window: Duration) -> Begin;
    /// Records the response of the claimed request; it is replayed until the window ends.
    async fn complete(&self, key: &str, response: Arc<StoredResponse>, window: Duration);
    /// Frees a claimed key whose request ended without anything worth replaying.
    async fn release(&self, key: &str);
}

/// Records kept in memory at most; expired ones are dropped first.
pub const LOCAL_IDEMPOTENCY_CAPACITY: usize = 100_000;

struct Entry {
    fingerprint: [u8; 32],
    expires: Instant,
    response: Option<Arc<StoredResponse>>,
}

#[derive(Default)]
pub struct LocalIdempotencyStore {
    entries: Mutex<HashMap<String, Entry>>,
}

#[async_trait]
impl IdempotencyStore for LocalIdempotencyStore {
    async fn begin(&self, key: &str, fingerprint: [u8; 32], window: Duration) -> Begin {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(key)
            && e.expires > now
        {
            return match &e.response {
                _ if e.fingerprint != fingerprint => Begin::Mismatch,
                None => Begin::InFlight,
                Some(r) => Begin::Done(r.clone()),
            };
        }
        if entries.len() >= LOCAL_IDEMPOTENCY_CAPACITY {
            entries.retain(|_, e| e.expires > now);
        }
        entries.insert(
            key.to_string(),
            Entry {
                fingerprint,
                expires: now + window,
                response: None,
            },
        );
        Begin::New
    }

    async fn complete(&self, key: &str, response: Arc<StoredResponse>, window: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(key) {
            e.response = Some(response);
            e.expires = Instant::now() + window;
        }
    }

    async fn release(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(key).is_some_and(|e| e.response.is_none()) {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claim_replay_mismatch_release_expiry() {
        let store = LocalIdempotencyStore::default();
        let w = Duration::from_secs(60);
        assert!(matches!(store.begin("k", [1; 32], w).await, Begin::New));
        assert!(matches!(
            store.begin("k", [1; 32], w).await,
            Begin::InFlight
        ));
        assert!(matches!(
            store.begin("k", [2; 32], w).await,
            Begin::Mismatch
        ));
        let resp = Arc::new(StoredResponse {
            status: 200,
            headers: vec![],
            body: Some(Bytes::from_static(b"ok")),
        });
        store.complete("k", resp, w).await;
        store.release("k").await; // a completed record is not released
        match store.begin("k", [1; 32], w).await {
            Begin::Done(r) => assert_eq!(r.body.as_deref(), Some(&b"ok"[..])),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.begin("j", [1; 32], w).await, Begin::New));
        store.release("j").await;
        assert!(
            matches!(store.begin("j", [9; 32], w).await, Begin::New),
            "released keys are free again"
        );
        assert!(matches!(
            store.begin("e", [1; 32], Duration::ZERO).await,
            Begin::New
        ));
        assert!(
            matches!(store.begin("e", [2; 32], w).await, Begin::New),
            "expired records are gone"
        );
    }
}
