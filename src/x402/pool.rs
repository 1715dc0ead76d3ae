//! The signing pool: a few dedicated OS threads that compute EIP-712 hashes and ECDSA
//! signatures (20–35 µs each on the bench VM), so a paid call never holds a Pingora worker
//! thread for them and the worker keeps proxying other requests meanwhile.
//!
//! Two kinds of threads: `signer_threads` threads sign for calls that wait
//! ([`SigningPool::run`]), at normal priority; one more thread does background work
//! ([`SigningPool::spawn_background`]: stock refills) at a lower priority (see
//! [`crate::sched`]). A waiting call never queues behind a refill, and on a contended host the
//! refills give way: the stock then drains and calls are signed for themselves as before.
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

/// The two queues of a pool with threads.
struct Queues {
    waited_for: Sender<Job>,
    background: Sender<Job>,
}

/// A fixed set of threads taking jobs from two queues (none: inline).
pub struct SigningPool {
    queues: Option<Queues>,
    threads: usize,
}

static POOL: OnceLock<SigningPool> = OnceLock::new();

/// A pool thread: runs `jobs` until the pool is gone.
fn serve(jobs: Receiver<Job>, background: bool) {
    if background {
        crate::sched::background_thread();
    }
    // A panicking job drops its reply channel (the caller sees an error); the thread itself
    // stays.
    while let Ok(job) = jobs.recv() {
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// Starts a named pool thread serving `jobs`.
fn thread(name: String, jobs: Receiver<Job>, background: bool) {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || serve(jobs, background))
        .expect("cannot start a signer thread");
}

impl SigningPool {
    fn start(threads: usize) -> SigningPool {
        if threads == 0 {
            return SigningPool {
                queues: None,
                threads,
            };
        }
        let (waited_for, waited_for_rx) = crossbeam_channel::unbounded::<Job>();
        let (background, background_rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            thread(format!("pag0-signer-{i}"), waited_for_rx.clone(), false);
        }
        thread("pag0-presigner".into(), background_rx, true);
        SigningPool {
            queues: Some(Queues {
                waited_for,
                background,
            }),
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
        self.queues.is_none()
    }

    /// Queues `work` for the background thread, without waiting for it; `false` (and `work`
    /// dropped unrun) when the pool runs inline. Pieces run one after another: keep each short
    /// so that the next one (another shelf's refill) does not wait long.
    pub fn spawn_background(&self, work: impl FnOnce() + Send + 'static) -> bool {
        match &self.queues {
            Some(q) => q.background.send(Box::new(work)).is_ok(),
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
        let Some(queues) = &self.queues else {
            return catch_unwind(AssertUnwindSafe(work)).ok();
        };
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(work());
        });
        queues.waited_for.send(job).ok()?;
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
    async fn waited_for_work_never_waits_for_background_work() {
        let pool: &'static SigningPool = Box::leak(Box::new(SigningPool::start(1)));
        // Keep the background thread busy.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        assert!(pool.spawn_background(move || {
            started
                .send(std::thread::current().name().map(str::to_string))
                .unwrap();
            gate.recv().unwrap();
        }));
        let background = running.await.unwrap().unwrap();
        assert_eq!(background, "pag0-presigner");
        // A call is signed meanwhile, on a thread of its own.
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("pag0-signer-0"));
        release.send(()).unwrap();
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
        assert!(!pool.spawn_background(|| unreachable!("an inline pool runs nothing later")));
    }
}
