//! The signing pool: a few dedicated OS threads that compute EIP-712 hashes and ECDSA
//! signatures (30–55 µs each on the bench VM), so a paid call never holds a Pingora worker
//! thread for them and the worker keeps proxying other requests meanwhile.
//!
//! One pool per process, sized once at startup (`payments.signer_threads`; 0 signs inline on
//! the worker); code that signs before the server configured it (tests, benches, `pag0 -t`)
//! gets the default size.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

/// Signer threads when the YAML does not say: one sustains ~30k signatures/s, far above the
/// paid traffic of one instance, and leaves the other cores to Pingora.
pub const DEFAULT_SIGNER_THREADS: usize = 1;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs from one queue (none: inline).
pub struct SigningPool {
    jobs: Option<Sender<Job>>,
    threads: usize,
}

static POOL: OnceLock<SigningPool> = OnceLock::new();

impl SigningPool {
    fn start(threads: usize) -> SigningPool {
        if threads == 0 {
            return SigningPool {
                jobs: None,
                threads,
            };
        }
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let queue: Receiver<Job> = queue.clone();
            std::thread::Builder::new()
                .name(format!("pag0-signer-{i}"))
                .spawn(move || {
                    crate::sched::background_thread();
                    // A panicking job drops its reply channel (the caller sees an error); the
                    // thread itself stays.
                    while let Ok(job) = queue.recv() {
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("cannot start a signer thread");
        }
        SigningPool {
            jobs: Some(jobs),
            threads,
        }
    }

    /// Sizes the process's pool; the first call wins (a reload cannot resize it).
    pub fn configure(threads: usize) {
        let active = POOL.get_or_init(|| SigningPool::start(threads)).threads;
        if active != threads {
            log::warn!(
                "payments.signer_threads: this process already signs with {active} thread(s); {threads} applies after a restart"
            );
        }
    }

    /// The process's pool (started with the default size if nobody configured it).
    pub fn global() -> &'static SigningPool {
        POOL.get_or_init(|| SigningPool::start(DEFAULT_SIGNER_THREADS))
    }

    /// Whether work runs on the caller's thread (`signer_threads: 0`).
    pub fn runs_inline(&self) -> bool {
        self.jobs.is_none()
    }

    /// Queues `work` on a signer thread without waiting for it; `false` (and `work` dropped
    /// unrun) when the pool runs inline.
    pub fn spawn(&self, work: impl FnOnce() + Send + 'static) -> bool {
        match &self.jobs {
            Some(jobs) => jobs.send(Box::new(work)).is_ok(),
            None => false,
        }
    }

    /// Runs `work` on a signer thread and waits for its result without blocking the caller's
    /// thread (inline pools run it here). `None` if the work panicked.
    pub async fn run<R, F>(&self, work: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let Some(jobs) = &self.jobs else {
            return catch_unwind(AssertUnwindSafe(work)).ok();
        };
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(work());
        });
        jobs.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_on_a_signer_thread_and_survives_a_panic() {
        let pool = SigningPool::start(2);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("pag0-signer-"));
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, None);
        // Both threads are still there after a panic.
        let all = futures::future::join_all((0..8).map(|i| pool.run(move || i * 2))).await;
        assert_eq!(all, (0..8).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn zero_threads_runs_inline() {
        let pool = SigningPool::start(0);
        let here = std::thread::current().id();
        assert_eq!(
            pool.run(move || std::thread::current().id() == here).await,
            Some(true)
        );
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, None);
    }
}
