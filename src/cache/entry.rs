//! One stored response, and its meta decoded once for hits that skip pingora-cache.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;

/// One cached response.
#[derive(Debug)]
pub struct Entry {
    /// `scope \n METHOD \n URL \n body-hash`.
    pub primary: String,
    /// `CacheMeta::serialize()`: internal meta, response header.
    pub meta: [Bytes; 2],
    pub body: Bytes,
    /// When even a stale copy is useless (freshness plus the stale windows).
    pub expires_at: SystemTime,
    /// The meta decoded on first use (see [`Entry::ready`]).
    ready: OnceLock<Option<Arc<Ready>>>,
}

/// What a fresh hit needs from the meta: the stored response header and its freshness.
/// Entries are immutable (a revalidation stores a new one), so this never goes out of date.
#[derive(Debug)]
pub struct Ready {
    pub header: ResponseHeader,
    pub fresh_until: SystemTime,
    /// Its `Age` counts from here (when it was stored or last revalidated).
    pub epoch: SystemTime,
}

impl Entry {
    pub fn new(primary: String, meta: [Bytes; 2], body: Bytes, expires_at: SystemTime) -> Entry {
        Entry {
            primary,
            meta,
            body,
            expires_at,
            ready: OnceLock::new(),
        }
    }

    /// The decoded meta, unless the entry can only be served by pingora-cache: unreadable
    /// meta, or a response with `Vary` (its variants are keyed by request headers).
    pub fn ready(&self) -> Option<&Arc<Ready>> {
        self.ready.get_or_init(|| decode(&self.meta)).as_ref()
    }

    pub fn size(&self) -> usize {
        self.primary.len() + self.meta[0].len() + self.meta[1].len() + self.body.len()
    }
}

fn decode(meta: &[Bytes; 2]) -> Option<Arc<Ready>> {
    let meta = CacheMeta::deserialize(&meta[0], &meta[1]).ok()?;
    if meta.headers().contains_key(http::header::VARY) || meta.variance().is_some() {
        return None;
    }
    Some(Arc::new(Ready {
        header: meta.response_header_copy(),
        fresh_until: meta.fresh_until(),
        epoch: meta.epoch(),
    }))
}

/// Decoded metas by entry id, for a store without a memory tier: every Redis hit brings a new
/// [`Entry`], and this saves decoding its meta again when the blobs are the ones decoded
/// before. Only headers are kept (no bodies), bounded by the blobs' size.
pub struct DecodedMetas {
    metas: moka::sync::Cache<String, Arc<Decoded>>,
}

/// Meta blobs and what they decode to.
type Decoded = ([Bytes; 2], Option<Arc<Ready>>);

impl DecodedMetas {
    pub fn new(max_bytes: u64) -> DecodedMetas {
        DecodedMetas {
            metas: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|id: &String, m: &Arc<Decoded>| {
                    // The decoded header takes a few times the space of its compressed blob.
                    let blobs = m.0[0].len() + 4 * m.0[1].len();
                    u32::try_from(id.len() + blobs).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Gives `entry` (just read under `id`) the decoded meta remembered for the same blobs,
    /// or decodes and remembers it.
    pub fn apply(&self, id: &str, entry: &Entry) {
        if let Some(known) = self.metas.get(id)
            && known.0 == entry.meta
        {
            let _ = entry.ready.set(known.1.clone());
            return;
        }
        let ready = entry.ready().cloned();
        self.metas
            .insert(id.to_string(), Arc::new((entry.meta.clone(), ready)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(etag: &str, vary: bool) -> Entry {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("etag", etag).unwrap();
        if vary {
            header.insert_header("vary", "accept").unwrap();
        }
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let (m0, m1) = meta.serialize().unwrap();
        let body = Bytes::from_static(b"body");
        Entry::new("p\nGET\nu\n".into(), [m0.into(), m1.into()], body, now)
    }

    fn etag(entry: &Entry) -> &str {
        let ready = entry.ready().unwrap();
        ready.header.headers["etag"].to_str().unwrap()
    }

    #[test]
    fn decoded_metas_are_reused_only_for_the_same_blobs() {
        let metas = DecodedMetas::new(1 << 20);
        let first = entry("\"a\"", false);
        metas.apply("id", &first);
        let again = Entry::new(
            first.primary.clone(),
            first.meta.clone(),
            first.body.clone(),
            first.expires_at,
        );
        metas.apply("id", &again);
        let (a, b) = (first.ready().unwrap(), again.ready().unwrap());
        assert!(Arc::ptr_eq(a, b), "the same blobs are decoded once");

        // Another fill under the same id has other blobs: decoded anew.
        let refilled = entry("\"b\"", false);
        metas.apply("id", &refilled);
        assert_eq!(etag(&refilled), "\"b\"");
        assert_eq!(etag(&first), "\"a\"");
    }

    #[test]
    fn responses_with_vary_are_left_to_pingora_cache() {
        assert!(entry("\"a\"", true).ready().is_none());
        assert!(entry("\"a\"", false).ready().is_some());
    }
}
