//! The writer side of analytics: batches from the queue to SQL, the spool while the database
//! is away, its replay, recovery of what dead processes wrote ahead, retention, and which
//! write-ahead records are persisted (so their segments can go).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::sql::{self, InsertError};
use super::{Counters, Record, Settings};
use crate::store::{Db, Spool, StoreError, Wal, beside};

pub enum Msg {
    /// A record and its sequence numbers in the write-ahead file: its own, and that of the
    /// early copy it replaces (`None`: not written there).
    Record([Option<u64>; 2], Box<Record>),
    /// Answered once every record sent before it is in the database or the spool.
    Flush(oneshot::Sender<()>),
}

/// Size of a write-ahead segment (64 MiB: about 100 000 records).
const WAL_SEGMENT_BYTES: u64 = 64 << 20;
/// How long batches bypass the database after it failed.
const DOWN_BACKOFF_MS: i64 = 1_000;
/// How often the spool is replayed.
const REPLAY_INTERVAL: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);

fn now_ms() -> i64 {
    crate::clock::unix_millis() as i64
}

/// Sequence numbers of the write-ahead file that are persisted: all up to `next - 1`, and the
/// ones in `done` (persisted out of order).
struct Watermark {
    next: u64,
    done: BTreeSet<u64>,
}

pub struct Core {
    pub db: Db,
    pub settings: Settings,
    spool: Spool<Record>,
    /// Rows the database refused, kept for an operator.
    rejected: Spool<Record>,
    /// Records waiting in the spool (read at start, then counted).
    spool_rows: AtomicU64,
    /// `None` when analytics is off.
    wal: Option<Wal>,
    /// Where the write-ahead segments are (this and dead processes').
    wal_base: PathBuf,
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

impl Core {
    pub fn open(db: Db, settings: Settings, counters: Counters) -> Result<Core, StoreError> {
        let wal_base = beside(&settings.spool_file, ".wal");
        let wal = match settings.enabled {
            true => Some(Wal::open(wal_base.clone(), WAL_SEGMENT_BYTES)?),
            false => None,
        };
        Ok(Core {
            db,
            spool: Spool::new(settings.spool_file.clone()),
            rejected: Spool::new(beside(&settings.spool_file, ".rejected")),
            spool_rows: AtomicU64::new(0),
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
        })
    }

    /// `instance` and a sequence number as 32 hex digits (no formatting machinery: one per
    /// request).
    pub fn next_id(&self) -> String {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        crate::store::hex_into(&mut id[..16], self.instance);
        crate::store::hex_into(&mut id[16..], seq);
        // Hex digits only: always valid UTF-8, nothing is replaced.
        String::from_utf8_lossy(&id).into_owned()
    }

    /// Appends a record's line to the write-ahead file; `then` gets its sequence number under
    /// the file's lock. False (and logged once) if it could not be written.
    pub fn write_ahead(&self, line: Result<Vec<u8>, StoreError>, then: impl FnOnce(u64)) -> bool {
        let Some(wal) = &self.wal else {
            return false;
        };
        match line.and_then(|line| wal.append(&line, then)) {
            Ok(()) => {
                self.wal_failed.store(false, Ordering::Relaxed);
                true
            }
            Err(e) => {
                if !self.wal_failed.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "analytics: cannot write ahead ({e}); records are only queued until it works again"
                    );
                }
                false
            }
        }
    }

    pub fn spool_rows(&self) -> u64 {
        self.spool_rows.load(Ordering::Relaxed)
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
        if let Some(wal) = &self.wal {
            wal.persisted(through);
        }
    }

    /// Deletes the write-ahead file if everything written to it is persisted (graceful stop).
    pub fn retire(&self) -> bool {
        let through = self
            .persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            - 1;
        self.wal.as_ref().is_none_or(|wal| wal.retire(through))
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
            let mut last: HashMap<&str, usize> = HashMap::with_capacity(written.len());
            for (i, r) in written.iter().enumerate() {
                last.insert(&r.id, i);
            }
            let mut keep: Vec<usize> = last.into_values().collect();
            keep.sort_unstable();
            let mut records: Vec<Record> = keep.into_iter().map(|i| written[i].clone()).collect();
            let n = records.len();
            if n > 0 {
                if !self.spool_batch(&mut records).await {
                    continue;
                }
                log::info!(
                    "analytics: recovered {n} records written ahead by a process that stopped"
                );
            }
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }

    pub async fn write_loop(self: Arc<Core>, mut rx: mpsc::Receiver<Msg>) {
        let waiting = self.spool.read().await.map_or(0, |r| r.len());
        self.spool_rows.store(waiting as u64, Ordering::Relaxed);
        self.recover().await;
        let max = self.settings.batch_rows.max(1);
        let mut msgs = Vec::with_capacity(max);
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
            let (batch, seqs, flushes) = split(&mut msgs);
            if !batch.is_empty() {
                self.write(batch, seqs).await;
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Appends what did not fit in the queue to the spool, many records per fsync.
    pub async fn overflow_loop(self: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut msgs = Vec::new();
        loop {
            if rx.recv_many(&mut msgs, 10_000).await == 0 {
                return;
            }
            let (mut batch, seqs, flushes) = split(&mut msgs);
            if !batch.is_empty() && self.spool_batch(&mut batch).await {
                self.persisted(seqs);
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Writes a batch to the database, or to the spool when the database cannot take it;
    /// rows it refuses go to the rejected file. Its write-ahead copies go once it is safe.
    async fn write(&self, mut batch: Vec<Record>, seqs: Vec<Option<u64>>) {
        if now_ms() >= self.down_until.load(Ordering::Relaxed) {
            let started = std::time::Instant::now();
            match self.insert(&batch).await {
                Ok(_) => {
                    self.counters.written.inc_by(batch.len() as u64);
                    self.counters
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.persisted(seqs);
                    return;
                }
                Err(InsertError::Rejected(e)) => {
                    log::warn!(
                        "analytics: the database refused a batch ({e}); writing its rows one by one"
                    );
                    let mut unavailable = self.isolate(batch).await;
                    if unavailable.is_empty() || self.spool_batch(&mut unavailable).await {
                        self.persisted(seqs);
                    }
                    return;
                }
                Err(InsertError::Unavailable(e)) => log::warn!(
                    "analytics: the database did not take {} records, spooling them: {e}",
                    batch.len()
                ),
            }
            self.down_until
                .store(now_ms() + DOWN_BACKOFF_MS, Ordering::Relaxed);
        }
        if self.spool_batch(&mut batch).await {
            self.persisted(seqs);
        }
    }

    /// Writes `records` one by one after the database refused them together: the refused
    /// ones go to the rejected file; returns those it could not reach the database for.
    async fn isolate(&self, records: Vec<Record>) -> Vec<Record> {
        let mut unavailable = Vec::new();
        for r in records {
            match self.insert(std::slice::from_ref(&r)).await {
                Ok(_) => self.counters.written.inc(),
                Err(InsertError::Rejected(e)) => {
                    log::warn!(
                        "analytics: the database refused record {} ({e}); it is kept in {}",
                        r.id,
                        beside(&self.settings.spool_file, ".rejected").display()
                    );
                    match self.rejected.append(&r).await {
                        Ok(()) => self.counters.rejected.inc(),
                        Err(e) => {
                            log::error!("analytics: record {} is lost: {e}", r.id);
                            self.counters.dropped.inc();
                        }
                    }
                }
                Err(InsertError::Unavailable(_)) => unavailable.push(r),
            }
        }
        unavailable
    }

    /// Partitions for the batch's days, then the rows and rollups, within the write timeout.
    async fn insert(&self, batch: &[Record]) -> Result<usize, InsertError> {
        let write = async {
            let newest = batch.iter().map(|r| r.at_ms).max().unwrap_or_else(now_ms);
            if newest >= self.partitions_through.load(Ordering::Relaxed) {
                let today = now_ms().max(newest);
                sql::ensure_partitions(&self.db, today - sql::DAY_MS, today + 2 * sql::DAY_MS)
                    .await?;
                self.partitions_through.store(
                    (today + 2 * sql::DAY_MS).div_euclid(sql::DAY_MS) * sql::DAY_MS,
                    Ordering::Relaxed,
                );
            }
            sql::insert(&self.db, batch).await
        };
        tokio::time::timeout(self.settings.write_timeout, write)
            .await
            .unwrap_or_else(|_| {
                Err(InsertError::Unavailable(StoreError(format!(
                    "no answer within {:?}",
                    self.settings.write_timeout
                ))))
            })
    }

    /// Appends `rows` to the spool. A spool that cannot be written is retried for a while;
    /// then the rows are counted as dropped, loudly (false: their write-ahead copies stay,
    /// and the next start recovers them).
    async fn spool_batch(&self, rows: &mut Vec<Record>) -> bool {
        for attempt in 0..5u32 {
            match self.spool.append_all(rows).await {
                Ok(()) => {
                    self.spooled.store(true, Ordering::Release);
                    self.counters.spooled.inc_by(rows.len() as u64);
                    self.spool_rows
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
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
            "analytics: neither the database nor the spool took {} records",
            rows.len()
        );
        self.counters.dropped.inc_by(rows.len() as u64);
        rows.clear();
        false
    }

    pub async fn replay_loop(self: Arc<Core>) {
        loop {
            tokio::time::sleep(REPLAY_INTERVAL).await;
            match self.replay().await {
                Ok(0) => {}
                Ok(n) => log::info!("analytics: wrote {n} spooled records to the database"),
                Err(e) => log::debug!("analytics: spooled records wait for the database: {e}"),
            }
        }
    }

    /// Writes the spool to the database in batches and empties it once all are in (rows
    /// the database refuses go to the rejected file).
    async fn replay(&self) -> Result<usize, InsertError> {
        if !self.spooled.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut spool = self.spool.lock().await;
        let rows = spool.read()?;
        for chunk in rows.chunks(self.settings.batch_rows.max(1)) {
            let result = match self.insert(chunk).await {
                Err(InsertError::Rejected(_)) => {
                    match self.isolate(chunk.to_vec()).await.is_empty() {
                        true => Ok(0),
                        false => Err(InsertError::Unavailable(StoreError(
                            "the database went away".into(),
                        ))),
                    }
                }
                other => other,
            };
            if let Err(e) = result {
                self.down_until
                    .store(now_ms() + DOWN_BACKOFF_MS, Ordering::Relaxed);
                return Err(e);
            }
        }
        spool.clear()?;
        self.spool_rows.store(0, Ordering::Relaxed);
        self.spooled.store(false, Ordering::Release);
        self.down_until.store(0, Ordering::Relaxed);
        self.counters.replayed.inc_by(rows.len() as u64);
        Ok(rows.len())
    }

    pub async fn retention_loop(self: Arc<Core>) {
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

/// Records (with their write-ahead sequence numbers) and flush requests of a set of messages.
fn split(msgs: &mut Vec<Msg>) -> (Vec<Record>, Vec<Option<u64>>, Vec<oneshot::Sender<()>>) {
    let mut batch = Vec::with_capacity(msgs.len());
    let mut seqs = Vec::with_capacity(msgs.len() * 2);
    let mut flushes = Vec::new();
    for m in msgs.drain(..) {
        match m {
            Msg::Record(both, r) => {
                seqs.extend(both);
                batch.push(*r);
            }
            Msg::Flush(done) => flushes.push(done),
        }
    }
    (batch, seqs, flushes)
}
