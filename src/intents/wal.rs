//! The write-ahead file of payment intents: checksummed lines copied, on the request's own
//! thread and before the payment header is sent, into a segment file that is preallocated and
//! mapped shared. Once copied, the record is in the kernel's page cache and survives a crash
//! of pag0 at any instant (like the SQLite journal in WAL mode with `synchronous=NORMAL`; a
//! power loss is not covered); no system call is made per record. Records reach the SQL table
//! in the background (the settler); a segment is deleted once every record in it is there,
//! usually before the kernel ever writes it back. On start, segments left by a process that is
//! gone are read back into the table (recovery); their unused tail is zeros, which no
//! checksummed line matches.
//!
//! Files: `<base>.<pid>.<n>`, one writer process each, [`SEGMENT_BYTES`] each.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::MmapMut;

use crate::store::{Intent, IntentEvent, StoreError, spool_line, spool_records};

/// An [`IntentEvent::Sent`] line written from a borrowed intent (same JSON).
#[derive(serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum SentRef<'a> {
    Sent(&'a Intent),
}

/// Size of a segment (allocated on disk up front, so a copy into it never meets a full disk).
pub const SEGMENT_BYTES: u64 = 8 << 20;

pub struct Wal {
    base: PathBuf,
    pid: u32,
    inner: Mutex<Inner>,
}

struct Inner {
    map: MmapMut,
    segment: u64,
    /// Bytes used in `map`.
    bytes: u64,
    /// Sequence number of the last record appended.
    seq: u64,
    /// Closed segments with the sequence number of their last record.
    closed: VecDeque<(u64, u64)>,
}

fn segment_path(base: &Path, pid: u32, segment: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{pid}.{segment}"));
    PathBuf::from(name)
}

/// A new segment of [`SEGMENT_BYTES`], its blocks allocated, mapped shared.
fn create(path: &Path) -> Result<MmapMut, StoreError> {
    let fail = |e: std::io::Error| StoreError(format!("cannot create {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(fail)?;
    // Real blocks, not a sparse file: a full disk shows here, not as a SIGBUS on a copy.
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SEGMENT_BYTES as libc::off_t) };
    if rc != 0 {
        return Err(fail(std::io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: the file is this process's own (named by its pid) and never truncated while
    // mapped; other processes only read it after this one is gone.
    unsafe { MmapMut::map_mut(&file) }.map_err(fail)
}

impl Wal {
    /// Opens this process's first segment under `base`.
    pub fn open(base: PathBuf) -> Result<Wal, StoreError> {
        let pid = std::process::id();
        let map = create(&segment_path(&base, pid, 0))?;
        Ok(Wal {
            base,
            pid,
            inner: Mutex::new(Inner {
                map,
                segment: 0,
                bytes: 0,
                seq: 0,
                closed: VecDeque::new(),
            }),
        })
    }

    /// Appends `intent` and, still holding the file (so calls see sequence numbers in
    /// order), hands it to `then` with its sequence number.
    pub fn append(&self, intent: Intent, then: impl FnOnce(u64, Intent)) -> Result<(), StoreError> {
        let line = spool_line(&SentRef::Sent(&intent))?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.bytes + line.len() as u64 > SEGMENT_BYTES {
            let next = inner.segment + 1;
            let map = create(&segment_path(&self.base, self.pid, next))?;
            let (segment, seq) = (inner.segment, inner.seq);
            inner.closed.push_back((segment, seq));
            inner.map = map;
            inner.segment = next;
            inner.bytes = 0;
        }
        let at = inner.bytes as usize;
        let Some(slot) = inner.map.get_mut(at..at + line.len()) else {
            return Err(StoreError("an intent record larger than a segment".into()));
        };
        slot.copy_from_slice(&line);
        inner.bytes += line.len() as u64;
        inner.seq += 1;
        then(inner.seq, intent);
        Ok(())
    }

    /// Every record up to `seq` is in the database (or its spool): closed segments holding
    /// nothing later are deleted.
    pub fn persisted(&self, seq: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(segment, last)) = inner.closed.front() {
            if last > seq {
                break;
            }
            inner.closed.pop_front();
            let path = segment_path(&self.base, self.pid, segment);
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }

    /// Segments under `base` written by processes that are no longer running, with the
    /// intents they hold (a torn last line is skipped).
    pub fn leftovers(base: &Path) -> Result<Vec<(PathBuf, Vec<Intent>)>, StoreError> {
        let dir = match base.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let Some(stem) = base.file_name().and_then(|n| n.to_str()) else {
            return Ok(Vec::new());
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError(format!("cannot list {}: {e}", dir.display()))),
        };
        let own = std::process::id();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(stem)) else {
                continue;
            };
            let mut parts = rest.trim_start_matches('.').split('.');
            let (Some(Ok(pid)), Some(Ok(_segment)), None) = (
                parts.next().map(str::parse::<u32>),
                parts.next().map(str::parse::<u64>),
                parts.next(),
            ) else {
                continue;
            };
            if pid == own || alive(pid) {
                continue;
            }
            let path = entry.path();
            let bytes = std::fs::read(&path)
                .map_err(|e| StoreError(format!("cannot read {}: {e}", path.display())))?;
            let intents = spool_records::<IntentEvent>(&bytes)
                .into_iter()
                .filter_map(|e| match e {
                    IntentEvent::Sent(i) => Some(*i),
                    IntentEvent::Outcome(_) => None,
                })
                .collect();
            found.push((path, intents));
        }
        Ok(found)
    }
}

/// Whether process `pid` exists (a pag0 being replaced by a graceful upgrade still runs).
fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process; it sends nothing.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::U256;

    fn intent(id: &str) -> Intent {
        Intent {
            id: id.into(),
            project: "p".into(),
            pool: String::new(),
            network: "eip155:1".into(),
            asset: "0x0000000000000000000000000000000000000001".into(),
            payer: "0x0000000000000000000000000000000000000002".into(),
            pay_to: "0x0000000000000000000000000000000000000003".into(),
            amount: U256::from(5),
            nonce: format!("0x{}", "ab".repeat(32)),
            valid_after: 1,
            valid_before: 2,
            url: "http://x/".into(),
            idempotency_key: None,
            source: "wallet".into(),
            window_day: "2026-12-03".into(),
            window_month: "2026-12".into(),
            created_at: 3,
        }
    }

    #[test]
    fn appends_in_order_rotates_and_deletes_what_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("j.wal");
        let wal = Wal::open(base.clone()).unwrap();
        let mut seqs = Vec::new();
        for i in 0..3 {
            wal.append(intent(&format!("i{i}")), |s, _| seqs.push(s))
                .unwrap();
        }
        assert_eq!(seqs, [1, 2, 3]);
        // The segment is preallocated: its records read back, its zero tail is ignored.
        let first = segment_path(&base, std::process::id(), 0);
        let bytes = std::fs::read(&first).unwrap();
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES);
        let ids: Vec<String> = spool_records::<IntentEvent>(&bytes)
            .into_iter()
            .map(|e| match e {
                IntentEvent::Sent(i) => i.id,
                IntentEvent::Outcome(o) => o.id,
            })
            .collect();
        assert_eq!(ids, ["i0", "i1", "i2"]);
        // Force a rotation: the closed segment goes once everything in it is persisted.
        wal.inner.lock().unwrap().bytes = SEGMENT_BYTES - 10;
        wal.append(intent("i3"), |_, _| {}).unwrap();
        let pid = std::process::id();
        assert!(segment_path(&base, pid, 0).exists());
        assert!(segment_path(&base, pid, 1).exists());
        wal.persisted(2);
        assert!(
            segment_path(&base, pid, 0).exists(),
            "seq 3 is not persisted yet"
        );
        wal.persisted(3);
        assert!(!segment_path(&base, pid, 0).exists());
        assert!(
            segment_path(&base, pid, 1).exists(),
            "the open segment stays"
        );
        // This process's own segments are never leftovers.
        assert!(Wal::leftovers(&base).unwrap().is_empty());
    }

    #[test]
    fn leftovers_of_a_dead_process_are_read_back_without_their_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("j.wal");
        // A pid no process has (above the kernel's pid_max limit of 2^22).
        let dead = segment_path(&base, 5_000_000, 7);
        let mut bytes = Vec::new();
        for id in ["a", "b"] {
            bytes.extend(spool_line(&IntentEvent::Sent(Box::new(intent(id)))).unwrap());
        }
        let torn = spool_line(&IntentEvent::Sent(Box::new(intent("c")))).unwrap();
        bytes.extend(&torn[..torn.len() / 2]);
        std::fs::write(&dead, bytes).unwrap();
        std::fs::write(dir.path().join("j.wal.notapid.1"), "x").unwrap();
        let found = Wal::leftovers(&base).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, dead);
        let ids: Vec<&str> = found[0].1.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
