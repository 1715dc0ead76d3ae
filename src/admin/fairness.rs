//! Fair shares of the admin API's reads (`GET /api/…`: analytics, curation, spend, budgets,
//! audit). They run database queries, so one caller flooding them could take the admin
//! listener's thread, the database connections the analytics writer needs, and `/health`
//! with them. Each credential (admin token or project key, as presented) may run at most
//! [`PER_KEY_CONCURRENCY`] reads at once and start [`PER_KEY_RATE`] a second (bursts of
//! [`PER_KEY_BURST`]); all callers together run at most [`TOTAL_CONCURRENCY`]; a read takes at
//! most [`QUERY_TIMEOUT`]. Over a bound the answer is `429 TOO_MANY_REQUESTS` with
//! `Retry-After: 1`; a read that takes too long is `503 QUERY_TIMEOUT`. The reads run on a
//! thread of their own (`pag0-admin-api`), so the admin listener's thread, which accepts
//! connections and answers `/health`, `/metrics`, `/reload`, the dashboard's files and the
//! refusals, is never busy with them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::AdminState;

/// Reads one credential may run at once.
pub const PER_KEY_CONCURRENCY: usize = 8;
/// Reads one credential may start per second, on average...
pub const PER_KEY_RATE: f64 = 20.0;
/// ... and at once after a quiet time.
pub const PER_KEY_BURST: f64 = 40.0;
/// Reads all callers together may run at once.
pub const TOTAL_CONCURRENCY: usize = 32;
/// How long a read may wait for a place among [`TOTAL_CONCURRENCY`] before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The longest a read may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Shares kept for credentials seen lately; beyond, idle ones are forgotten.
const MAX_KEYS: usize = 4096;

/// The shares of every credential, and of all of them.
pub struct Fairness {
    total: Arc<Semaphore>,
    keys: Mutex<HashMap<[u8; 32], Arc<Share>>>,
    reads: ReadRuntime,
}

/// Where the reads run; shut down without waiting when the admin service ends.
struct ReadRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ReadRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One credential's share.
struct Share {
    running: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

/// A token bucket (tokens are reads; a rate, not money, so floating point is fine).
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * PER_KEY_RATE;
        self.tokens = (self.tokens + refill).min(PER_KEY_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * PER_KEY_RATE >= PER_KEY_BURST
    }
}

impl Fairness {
    pub fn new() -> std::io::Result<Fairness> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pag0-admin-api")
            .enable_all()
            .build()?;
        Ok(Fairness {
            total: Arc::new(Semaphore::new(TOTAL_CONCURRENCY)),
            keys: Mutex::new(HashMap::new()),
            reads: ReadRuntime(Some(runtime)),
        })
    }

    fn share(&self, key: [u8; 32]) -> Arc<Share> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            let now = Instant::now();
            keys.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || !s.bucket.lock().unwrap_or_else(|p| p.into_inner()).full(now)
            });
        }
        keys.entry(key)
            .or_insert_with(|| {
                Arc::new(Share {
                    running: Arc::new(Semaphore::new(PER_KEY_CONCURRENCY)),
                    bucket: Mutex::new(Bucket {
                        tokens: PER_KEY_BURST,
                        at: Instant::now(),
                    }),
                })
            })
            .clone()
    }
}

/// The credential a request presents (whichever header), hashed: the key of its share.
fn credential(req: &Request) -> [u8; 32] {
    let h = req.headers();
    let presented = h
        .get(header::AUTHORIZATION)
        .or_else(|| h.get(crate::stages::API_KEY_HEADER))
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    Sha256::digest(presented).into()
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let mut resp = super::error(status, code, message);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

/// Middleware: applies the shares to `GET /api/…`; anything else passes.
pub async fn limit(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET || !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let fairness = &state.fairness;
    let share = fairness.share(credential(&req));
    let busy = |what: &str| {
        refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            &format!("{what}; retry in a second"),
        )
    };
    let taken = share
        .bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(Instant::now());
    if !taken {
        return busy("this credential started too many API reads");
    }
    let Ok(_mine) = share.running.clone().try_acquire_owned() else {
        return busy("this credential runs too many API reads at once");
    };
    let total = tokio::time::timeout(QUEUE_WAIT, fairness.total.clone().acquire_owned()).await;
    let Ok(Ok(_place)) = total else {
        return busy("the admin API runs as many reads as it may");
    };
    let read = async move { tokio::time::timeout(QUERY_TIMEOUT, next.run(req)).await };
    let ran = match &fairness.reads.0 {
        Some(rt) => rt.spawn(read).await,
        None => Ok(read.await),
    };
    match ran {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "QUERY_TIMEOUT",
            "the query took too long; narrow it (a shorter range, a lower limit)",
        ),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "the read failed",
        ),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let start = Instant::now();
        let mut b = Bucket {
            tokens: PER_KEY_BURST,
            at: start,
        };
        let burst = (0..1000).filter(|_| b.take(start)).count();
        assert_eq!(burst, PER_KEY_BURST as usize);
        let later = start + Duration::from_millis(100);
        let refilled = (0..1000).filter(|_| b.take(later)).count();
        assert_eq!(refilled, (PER_KEY_RATE / 10.0) as usize);
        assert!(b.full(start + Duration::from_secs(10)));
    }
}
