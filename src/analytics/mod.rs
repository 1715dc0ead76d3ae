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
//! write-ahead file ([`crate::store::Wal`]) before it is queued: a crash of pag0 at any instant
//! loses nothing, the next start moves what the dead process left into the spool. Segments
//! are deleted once everything in them is in the database or the spool. Rows are inserted
//! `ON CONFLICT DO NOTHING`, so a replay writes each row exactly once; rollups count only rows
//! that were new (see [`sql`]). A graceful shutdown drains the queue ([`Analytics::drain`]).
//! This module knows nothing of Pingora: the proxy's `logging` hook builds the [`Record`].

pub mod query;
mod record;
pub mod sql;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use crate::metrics::status_class;
use crate::store::{Db, Spool, StoreError, Wal};
pub use record::{
    BUCKETS, BUCKETS_US, CacheOutcome, Histogram, Money, Paid, PaymentOutcome, Record, bucket,
    quantile,
};

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
    /// `pag0_analytics_queue_depth`
    pub queue_depth: prometheus::IntGauge,
    /// `pag0_analytics_queue_depth_peak`
    pub queue_peak: prometheus::IntGauge,
    /// `pag0_analytics_batch_seconds`
    pub batch_seconds: prometheus::Histogram,
}

enum Msg {
    /// A record and its sequence numbers in the write-ahead file: its own, and that of the
    /// early copy it replaces (`None`: not written there).
    Record([Option<u64>; 2], Box<Record>),
    /// Answered once every record sent before it is in the database or the spool.
    Flush(oneshot::Sender<()>),
}

/// An early copy of a request's record, written ahead before the agent could see the answer
/// (so a crash right after cannot lose it); the request's final record replaces it.
#[derive(Debug, Clone)]
pub struct Ahead {
    id: String,
    seq: u64,
}

/// The recorder handed to the proxy. Cheap to call: a record is moved into a queue.
pub struct Analytics {
    queue: Option<mpsc::Sender<Msg>>,
    core: Arc<Core>,
}

struct Core {
    db: Db,
    settings: Settings,
    spool: Spool<Record>,
    wal: Wal,
    /// Where the write-ahead file's segments are (this and dead processes').
    wal_base: PathBuf,
    /// Which write-ahead records are in the database or the spool.
    persisted: Mutex<Watermark>,
    /// The write-ahead file failed (logged once until it works again).
    wal_failed: AtomicBool,
    counters: Counters,
    /// Random per process: ids of two instances (or two runs) never collide.
    instance: u64,
    sequence: AtomicU64,
    /// Until this time (unix ms) batches go straight to the spool: the database just failed.
    down_until: AtomicI64,
    /// The spool may hold records (set on append, cleared by a replay that emptied it).
    spooled: AtomicBool,
    /// Daily partitions exist up to this day's start (unix ms).
    partitions_through: AtomicI64,
}

/// Size of a write-ahead segment (64 MiB: about 100 000 records).
const WAL_SEGMENT_BYTES: u64 = 64 << 20;

/// Sequence numbers of the write-ahead file that are persisted: all up to `next - 1`, and the
/// ones in `done` (persisted out of order).
struct Watermark {
    next: u64,
    done: BTreeSet<u64>,
}

/// How long batches bypass the database after a failed write.
const DOWN_BACKOFF_MS: i64 = 1_000;
/// How often the spool is replayed.
const REPLAY_INTERVAL: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);

fn now_ms() -> i64 {
    crate::clock::unix_millis() as i64
}

impl Analytics {
    /// Opens the write-ahead file and starts the writer (which first recovers what dead
    /// processes left), the spool replay and retention on `spawn` (the state runtime).
    pub fn start(
        db: Db,
        settings: Settings,
        counters: Counters,
        spawn: impl Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    ) -> Result<Arc<Analytics>, StoreError> {
        let wal_base = {
            let mut name = settings.spool_file.as_os_str().to_owned();
            name.push(".wal");
            PathBuf::from(name)
        };
        let wal = Wal::open(wal_base.clone(), WAL_SEGMENT_BYTES)?;
        let core = Arc::new(Core {
            db,
            spool: Spool::new(settings.spool_file.clone()),
            wal,
            wal_base,
            persisted: Mutex::new(Watermark {
                next: 1,
                done: BTreeSet::new(),
            }),
            wal_failed: AtomicBool::new(false),
            counters,
            instance: rand::random(),
            sequence: AtomicU64::new(0),
            down_until: AtomicI64::new(0),
            spooled: AtomicBool::new(true),
            partitions_through: AtomicI64::new(i64::MIN),
            settings,
        });
        if !core.settings.enabled {
            core.wal.retire(0);
            return Ok(Arc::new(Analytics { queue: None, core }));
        }
        let (tx, rx) = mpsc::channel(core.settings.queue_capacity.max(1));
        spawn(Box::pin(core.clone().write_loop(rx)));
        spawn(Box::pin(core.clone().replay_loop()));
        spawn(Box::pin(core.clone().retention_loop()));
        Ok(Arc::new(Analytics {
            queue: Some(tx),
            core,
        }))
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Writes an early copy of a request's record ahead, not queued: if pag0 dies before the
    /// final record, recovery finds this one. Call it before the answer goes to the agent.
    pub fn write_ahead(&self, mut record: Record) -> Option<Ahead> {
        self.queue.as_ref()?;
        record.id = self.core.next_id();
        let mut seq = None;
        let written = crate::store::spool_line(&record)
            .and_then(|line| self.core.wal.append(&line, |s| seq = Some(s)));
        if let Err(e) = written {
            self.core.wal_error(e);
        }
        Some(Ahead {
            id: record.id,
            seq: seq?,
        })
    }

    /// Writes the final record ahead (a copy into the mapped file) and queues it; it replaces
    /// the early copy `ahead`. When the queue is full it goes to the spool now (never dropped).
    pub async fn record(&self, mut record: Record, ahead: Option<Ahead>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let early = ahead.as_ref().map(|a| a.seq);
        record.id = match ahead {
            Some(a) => a.id,
            None => self.core.next_id(),
        };
        let line = crate::store::spool_line(&record);
        let mut record = Some(Box::new(record));
        let mut overflow = None;
        let mut enqueue = |seq: Option<u64>| {
            if let Some(r) = record.take()
                && let Err(
                    mpsc::error::TrySendError::Full(Msg::Record(seq, r))
                    | mpsc::error::TrySendError::Closed(Msg::Record(seq, r)),
                ) = queue.try_send(Msg::Record([seq, early], r))
            {
                overflow = Some((seq, r));
            }
        };
        // Queued under the file's lock, so the queue is in file order.
        let written = line.and_then(|line| self.core.wal.append(&line, |seq| enqueue(Some(seq))));
        match written {
            Ok(()) => {
                self.core.wal_failed.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                self.core.wal_error(e);
                enqueue(None);
            }
        }
        if let Some((seqs, r)) = overflow {
            let mut rows = vec![*r];
            let _ = self.core.spool_batch(&mut rows).await;
            self.core.persisted(seqs);
        }
    }

    /// Waits until every record queued so far is in the database or the spool (at most
    /// `timeout`); false if it took longer.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let (done, wait) = oneshot::channel();
        let drained = tokio::time::timeout(timeout, async {
            queue.send(Msg::Flush(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false);
        // Everything written ahead is persisted: nothing to recover from this process.
        let through = self.core.persisted_through();
        drained && self.core.wal.retire(through)
    }

    /// Writes what waits in the spool to the database now; returns the records replayed.
    pub async fn replay(&self) -> Result<usize, crate::store::StoreError> {
        self.core.replay().await
    }

    /// Records waiting in the spool.
    pub async fn spooled(&self) -> usize {
        self.core.spool.read().await.map_or(0, |r| r.len())
    }

    /// The database the records go to (for queries).
    pub fn db(&self) -> &Db {
        &self.core.db
    }

    pub fn settings(&self) -> &Settings {
        &self.core.settings
    }
}

impl Core {
    fn wal_error(&self, e: StoreError) {
        if !self.wal_failed.swap(true, Ordering::Relaxed) {
            log::error!(
                "analytics: cannot write ahead ({e}); records are only queued until it works again"
            );
        }
    }

    /// Notes write-ahead records as persisted and deletes the segments they free.
    fn persisted(&self, seqs: impl IntoIterator<Item = Option<u64>>) {
        let through = {
            let mut w = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            for seq in seqs.into_iter().flatten() {
                if seq >= w.next {
                    w.done.insert(seq);
                }
            }
            loop {
                let next = w.next;
                if !w.done.remove(&next) {
                    break;
                }
                w.next += 1;
            }
            w.next - 1
        };
        self.wal.persisted(through);
    }

    /// Every write-ahead record up to this one is persisted.
    fn persisted_through(&self) -> u64 {
        self.persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            - 1
    }

    /// Moves what dead processes left in their write-ahead files to the spool (their ids are
    /// set, so rows already in the database are not written twice), then deletes the files.
    async fn recover(&self) {
        let leftovers = match Wal::leftovers::<Record>(&self.wal_base) {
            Ok(l) => l,
            Err(e) => {
                log::error!("analytics: cannot read leftover write-ahead files: {e}");
                return;
            }
        };
        for (path, written) in leftovers {
            // An early copy and its request's final record share an id: keep the last.
            let mut by_id = std::collections::HashMap::with_capacity(written.len());
            for (i, r) in written.iter().enumerate() {
                by_id.insert(r.id.as_str(), i);
            }
            let mut keep: Vec<usize> = by_id.into_values().collect();
            keep.sort_unstable();
            let mut records: Vec<Record> = keep.into_iter().map(|i| written[i].clone()).collect();
            let n = records.len();
            if n > 0 && !self.spool_batch(&mut records).await {
                continue;
            }
            if n > 0 {
                log::info!(
                    "analytics: recovered {n} records written ahead by a process that stopped"
                );
            }
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }

    fn next_id(&self) -> String {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{seq:016x}", self.instance)
    }

    async fn write_loop(self: Arc<Core>, mut rx: mpsc::Receiver<Msg>) {
        self.recover().await;
        let max = self.settings.batch_rows.max(1);
        let mut msgs = Vec::with_capacity(max);
        let mut batch: Vec<Record> = Vec::with_capacity(max);
        loop {
            if rx.recv_many(&mut msgs, max).await == 0 {
                return;
            }
            if msgs.len() < max && !msgs.iter().any(|m| matches!(m, Msg::Flush(_))) {
                // A few ms for the batch to fill (one transaction for many rows).
                tokio::time::sleep(self.settings.flush_interval).await;
                while msgs.len() < max {
                    match rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
            }
            let depth = (msgs.len() + rx.len()) as i64;
            self.counters.queue_depth.set(rx.len() as i64);
            if depth > self.counters.queue_peak.get() {
                self.counters.queue_peak.set(depth);
            }
            let mut flushes = Vec::new();
            let mut seqs = Vec::with_capacity(msgs.len());
            for m in msgs.drain(..) {
                match m {
                    Msg::Record(both, r) => {
                        seqs.extend(both);
                        batch.push(*r);
                    }
                    Msg::Flush(done) => flushes.push(done),
                }
            }
            if !batch.is_empty() {
                self.write(&mut batch).await;
                self.persisted(seqs);
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Writes a batch to the database, or to the spool when the database cannot take it.
    async fn write(&self, batch: &mut Vec<Record>) {
        if now_ms() >= self.down_until.load(Ordering::Relaxed) {
            let started = std::time::Instant::now();
            match tokio::time::timeout(self.settings.write_timeout, self.insert(batch)).await {
                Ok(Ok(_new)) => {
                    self.counters.written.inc_by(batch.len() as u64);
                    self.counters
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    batch.clear();
                    return;
                }
                Ok(Err(e)) => log::warn!(
                    "analytics: the database did not take {} records, spooling them: {e}",
                    batch.len()
                ),
                Err(_) => log::warn!(
                    "analytics: the database took longer than {:?}, spooling {} records",
                    self.settings.write_timeout,
                    batch.len()
                ),
            }
            self.down_until
                .store(now_ms() + DOWN_BACKOFF_MS, Ordering::Relaxed);
        }
        let _ = self.spool_batch(batch).await;
    }

    /// Partitions for the batch's days, then the rows and rollups.
    async fn insert(&self, batch: &[Record]) -> Result<usize, crate::store::StoreError> {
        let newest = batch.iter().map(|r| r.at_ms).max().unwrap_or_else(now_ms);
        if newest >= self.partitions_through.load(Ordering::Relaxed) {
            let today = now_ms().max(newest);
            sql::ensure_partitions(&self.db, today - sql::DAY_MS, today + 2 * sql::DAY_MS).await?;
            self.partitions_through.store(
                (today + 2 * sql::DAY_MS).div_euclid(sql::DAY_MS) * sql::DAY_MS,
                Ordering::Relaxed,
            );
        }
        sql::insert(&self.db, batch).await
    }

    /// Appends `rows` to the spool. A spool that cannot be written is retried for a while;
    /// then the rows are counted as dropped, loudly (false).
    async fn spool_batch(&self, rows: &mut Vec<Record>) -> bool {
        for attempt in 0..5u32 {
            match self.spool.append_all(rows).await {
                Ok(()) => {
                    self.spooled.store(true, Ordering::Release);
                    self.counters.spooled.inc_by(rows.len() as u64);
                    rows.clear();
                    return true;
                }
                Err(e) => {
                    log::error!("analytics: {e} (attempt {})", attempt + 1);
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        log::error!(
            "analytics: neither the database nor the spool took {} records; they are lost",
            rows.len()
        );
        self.counters.dropped.inc_by(rows.len() as u64);
        rows.clear();
        false
    }

    async fn replay_loop(self: Arc<Core>) {
        loop {
            tokio::time::sleep(REPLAY_INTERVAL).await;
            match self.replay().await {
                Ok(0) => {}
                Ok(n) => log::info!("analytics: wrote {n} spooled records to the database"),
                Err(e) => log::debug!("analytics: spooled records wait for the database: {e}"),
            }
        }
    }

    /// Writes the spool to the database in batches and empties it once all are in.
    async fn replay(&self) -> Result<usize, crate::store::StoreError> {
        if !self.spooled.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut spool = self.spool.lock().await;
        let rows = spool.read()?;
        for chunk in rows.chunks(self.settings.batch_rows.max(1)) {
            let written = tokio::time::timeout(self.settings.write_timeout, self.insert(chunk))
                .await
                .map_err(|_| crate::store::StoreError("the database is too slow".into()))
                .and_then(|r| r);
            if let Err(e) = written {
                self.down_until
                    .store(now_ms() + DOWN_BACKOFF_MS, Ordering::Relaxed);
                return Err(e);
            }
        }
        spool.clear()?;
        self.spooled.store(false, Ordering::Release);
        self.down_until.store(0, Ordering::Relaxed);
        self.counters.replayed.inc_by(rows.len() as u64);
        Ok(rows.len())
    }

    async fn retention_loop(self: Arc<Core>) {
        loop {
            let now = now_ms();
            let days = |d: u32| i64::from(d) * sql::DAY_MS;
            let expired = sql::expire(
                &self.db,
                now - days(self.settings.retention_days),
                now - days(self.settings.rollup_retention_days),
            )
            .await;
            match expired {
                Ok(n) if n > 0 => {
                    log::info!("analytics retention: {n} expired (partitions or rows)")
                }
                Ok(_) => {}
                Err(e) => log::debug!("analytics retention: {e}"),
            }
            tokio::time::sleep(RETENTION_INTERVAL).await;
        }
    }
}
