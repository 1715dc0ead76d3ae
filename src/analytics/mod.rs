//! Request analytics: one record per request pag0 answers, written to SQL off the request
//! path, never lost.
//!
//! ```text
//!  logging ── record ─▶ write-ahead file ─▶ bounded queue ─▶ writer: batches ─▶ SQL
//!                        (mmap, a copy)         │ (full)       │ (database down or slow)  ▲
//!                                               └─▶ spool (fsynced) ◀─┘   replay every 1 s ─┘
//! ```
//!
//! A record gets its id (instance id + sequence) and is copied into a memory-mapped
//! write-ahead file ([`crate::store::Wal`]) before it is queued, and an early copy is written
//! there just before the answer leaves pag0: a crash at any instant loses nothing, the next
//! start moves what the dead process left into the spool. Segments are deleted once everything
//! in them is in the database or the spool. Rows are inserted `ON CONFLICT DO NOTHING`, so a
//! replay writes each row exactly once; rollups count only rows that were new (see [`sql`]).
//! A row the database refuses (not a failure to reach it) goes to a file of its own
//! (`<spool>.rejected`) instead of blocking the others. A graceful shutdown drains the queue
//! ([`Analytics::drain`]). This module knows nothing of Pingora: the proxy's `logging` hook
//! builds the [`Record`].

pub mod query;
mod record;
pub mod sql;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use crate::metrics::status_class;
use crate::store::{Db, StoreError};
pub use record::{
    BUCKETS, BUCKETS_US, CacheOutcome, Histogram, Money, Paid, PaymentOutcome, Record, bucket,
    quantile,
};
use writer::{Core, Msg};

/// `analytics:` settings (changes need a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    /// Raw rows are kept this long.
    pub retention_days: u32,
    /// Hourly rollups are kept this long.
    pub rollup_retention_days: u32,
    /// Records waiting for the writer; beyond it they go straight to the spool.
    pub queue_capacity: usize,
    /// Most rows per write.
    pub batch_rows: usize,
    /// How long the writer waits for a batch to fill.
    pub flush_interval: Duration,
    /// Records wait here while the database cannot take them.
    pub spool_file: PathBuf,
    /// A write that takes longer goes to the spool.
    pub write_timeout: Duration,
}

/// The writer's metrics (registered in [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct Counters {
    /// `pag0_analytics_records_written_total`
    pub written: prometheus::IntCounter,
    /// `pag0_analytics_records_spooled_total`
    pub spooled: prometheus::IntCounter,
    /// `pag0_analytics_records_replayed_total`
    pub replayed: prometheus::IntCounter,
    /// `pag0_analytics_records_dropped_total`: the database and the spool both failed.
    pub dropped: prometheus::IntCounter,
    /// `pag0_analytics_records_rejected_total`: refused by the database (kept in
    /// `<spool>.rejected`).
    pub rejected: prometheus::IntCounter,
    /// `pag0_analytics_queue_depth`
    pub queue_depth: prometheus::IntGauge,
    /// `pag0_analytics_queue_depth_peak`
    pub queue_peak: prometheus::IntGauge,
    /// `pag0_analytics_batch_seconds`
    pub batch_seconds: prometheus::Histogram,
}

/// A request's record, written ahead before the agent could see the answer (so a crash right
/// after cannot lose it); [`Analytics::finish`] completes and queues it. Dropped unfinished
/// (the request ended without `logging`), it is queued as it is.
pub struct Ahead {
    early: Option<(u64, Box<Record>)>,
    analytics: Arc<Analytics>,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.early {
            Some((seq, r)) => write!(f, "Ahead({}, seq {seq})", r.id),
            None => f.write_str("Ahead(consumed)"),
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some((seq, record)) = self.early.take() {
            self.analytics.enqueue(*record, [Some(seq), None]);
        }
    }
}

/// The recorder handed to the proxy. Cheap to call: a record is copied into the write-ahead
/// file and moved into a queue; nothing on the request path waits for the database or a disk.
pub struct Analytics {
    core: Arc<Core>,
    queue: Option<mpsc::Sender<Msg>>,
    /// Where records go when the queue is full: a task that appends them to the spool.
    overflow: Option<mpsc::UnboundedSender<Msg>>,
}

impl Analytics {
    /// Opens the write-ahead file and starts the writer (which first recovers what dead
    /// processes left), the overflow spooler, the spool replay and retention on `spawn` (the
    /// state runtime). Disabled, it opens nothing.
    pub fn start(
        db: Db,
        settings: Settings,
        counters: Counters,
        spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) -> Result<Arc<Analytics>, StoreError> {
        let enabled = settings.enabled;
        let core = Arc::new(Core::open(db, settings, counters)?);
        if !enabled {
            return Ok(Arc::new(Analytics {
                core,
                queue: None,
                overflow: None,
            }));
        }
        let (tx, rx) = mpsc::channel(core.settings.queue_capacity.max(1));
        let (overflow_tx, overflow_rx) = mpsc::unbounded_channel();
        spawn(Box::pin(core.clone().write_loop(rx)));
        spawn(Box::pin(core.clone().overflow_loop(overflow_rx)));
        spawn(Box::pin(core.clone().replay_loop()));
        spawn(Box::pin(core.clone().retention_loop()));
        Ok(Arc::new(Analytics {
            core,
            queue: Some(tx),
            overflow: Some(overflow_tx),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Writes an early copy of a request's record ahead, not queued: if pag0 dies before the
    /// final record, recovery finds this one. Call it before the answer goes to the agent.
    pub fn write_ahead(self: &Arc<Self>, mut record: Record) -> Option<Ahead> {
        self.queue.as_ref()?;
        record.id = self.core.next_id();
        let mut seq = None;
        self.core
            .write_ahead(crate::store::spool_line(&record), |s| seq = Some(s));
        Some(Ahead {
            early: Some((seq?, Box::new(record))),
            analytics: self.clone(),
        })
    }

    /// The request is over: brings its early copy up to date (`update`) and queues it. Its
    /// write-ahead copy stays the early one (a crash from here on recovers that one).
    pub fn finish(&self, mut ahead: Ahead, update: impl FnOnce(&mut Record)) {
        if let Some((seq, mut record)) = ahead.early.take() {
            update(&mut record);
            self.enqueue(*record, [Some(seq), None]);
        }
    }

    /// Writes the record of a request that had no early copy ahead, and queues it.
    pub fn record(&self, mut record: Record) {
        if self.queue.is_none() {
            return;
        }
        record.id = self.core.next_id();
        // Queued under the file's lock: the writer sees records in about file order.
        let line = crate::store::spool_line(&record);
        let mut record = Some(record);
        let written = self.core.write_ahead(line, |seq| {
            if let Some(r) = record.take() {
                self.enqueue(r, [Some(seq), None]);
            }
        });
        if !written && let Some(r) = record.take() {
            self.enqueue(r, [None, None]);
        }
    }

    /// Into the queue or, when it is full, to the overflow spooler (never waits, never drops).
    fn enqueue(&self, record: Record, seqs: [Option<u64>; 2]) {
        let (Some(queue), Some(overflow)) = (&self.queue, &self.overflow) else {
            return;
        };
        if let Err(e) = queue.try_send(Msg::Record(seqs, Box::new(record))) {
            let _ = overflow.send(e.into_inner());
        }
    }

    /// Waits until every record queued so far is in the database or the spool (at most
    /// `timeout`), then retires the write-ahead file; false if it took longer or records are
    /// still unaccounted for.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let (Some(queue), Some(overflow)) = (&self.queue, &self.overflow) else {
            return true;
        };
        let (done, wait) = oneshot::channel();
        let (spooled, wait_spooled) = oneshot::channel();
        let drained = tokio::time::timeout(timeout, async {
            let _ = overflow.send(Msg::Flush(spooled));
            queue.send(Msg::Flush(done)).await.is_ok()
                && wait.await.is_ok()
                && wait_spooled.await.is_ok()
        })
        .await
        .unwrap_or(false);
        drained && self.core.retire()
    }

    /// Records waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.core.spool_rows()
    }

    /// The database the records go to (for queries).
    pub fn db(&self) -> &Db {
        &self.core.db
    }

    pub fn settings(&self) -> &Settings {
        &self.core.settings
    }
}
