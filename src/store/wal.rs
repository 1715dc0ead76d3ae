//! Write-ahead files: checksummed lines copied, on the request's own thread, into a segment
//! file that is preallocated and mapped shared. Once copied, a record is in the kernel's page
//! cache and survives a crash of pag0 at any instant (like the SQLite journal in WAL mode with
//! `synchronous=NORMAL`; a power loss is not covered); no system call is made per record.
//! Records reach SQL in the background; a segment is deleted once every record in it is there,
//! usually before the kernel ever writes it back. On start, segments left by a process that is
//! gone are read back (recovery); their unused tail is zeros, which no checksummed line matches.
//!
//! Pages of the open segment whose records are all persisted are dropped from pag0's memory
//! (`MADV_DONTNEED`: the data stays in the file), so a segment costs memory only for records
//! on their way to SQL, not for its whole size.
//!
//! Files: `<base>.<instance>.<n>`, one writer each. A writer holds an exclusive `flock` on its
//! segments for as long as it lives; a segment nobody holds is a leftover. (The pid is not
//! enough: in a container pag0 gets the same pid after every restart.)

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::MmapMut;
use serde::de::DeserializeOwned;

use super::{StoreError, spool_records};

/// Size of a payment-intent segment (allocated on disk up front, so a copy into it never meets
/// a full disk).
pub const SEGMENT_BYTES: u64 = 8 << 20;

pub struct Wal {
    base: PathBuf,
    /// This writer's part of the file names: pid and a random suffix.
    instance: String,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// Held by [`Wal::persisted`] for its whole pass, so that passes run one at a time and a
    /// mapping one of them releases pages of is not unmapped meanwhile.
    releasing: Mutex<()>,
}

struct Inner {
    map: MmapMut,
    /// The open segment, locked for as long as it is mapped.
    _file: File,
    segment: u64,
    /// Bytes used in `map`.
    bytes: u64,
    /// Sequence number of the last record appended.
    seq: u64,
    /// The open segment was deleted by [`Wal::retire`].
    retired: bool,
    /// Closed segments with the sequence number of their last record, each still locked.
    closed: VecDeque<(u64, u64, File)>,
    /// In the open segment: (sequence number, page boundary) where a record ending past the
    /// boundary was appended; once that record is persisted, every page before the boundary
    /// holds persisted records only.
    pages: VecDeque<(u64, u64)>,
    /// Bytes of the open segment's mapping already given back to the kernel.
    released: u64,
    /// Mappings of segments closed since the last [`Wal::persisted`] pass, unmapped by the
    /// next one (outside the lock appends take).
    stale_maps: Vec<MmapMut>,
}

/// The page size the mapping is released in (`MADV_DONTNEED` works on whole pages; 4 KiB
/// divides every page size Linux uses).
const PAGE: u64 = 4096;

fn segment_path(base: &Path, instance: &str, segment: u64) -> PathBuf {
    super::beside(base, &format!(".{instance}.{segment}"))
}

/// Takes `file`'s exclusive lock without waiting; false if another writer holds it.
fn try_lock(file: &File) -> bool {
    // SAFETY: a plain system call on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A new segment of `bytes`, its blocks allocated, locked, mapped shared. It is prepared under
/// a temporary name (which recovery ignores) and renamed once locked.
fn create(path: &Path, bytes: u64) -> Result<(MmapMut, File), StoreError> {
    let fail = |e: std::io::Error| StoreError(format!("cannot create {}: {e}", path.display()));
    let temporary = super::beside(path, ".new");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(fail)?;
    if !try_lock(&file) {
        return Err(fail(std::io::Error::other("locked by another writer")));
    }
    // Real blocks, not a sparse file: a full disk shows here, not as a SIGBUS on a copy.
    // SAFETY: a plain system call on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    if rc != 0 {
        return Err(fail(std::io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: the file is this writer's own (a random name, locked) and never truncated while
    // mapped; others only read it once the lock is gone with this process.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)?;
    Ok((map, file))
}

impl Wal {
    /// Opens a new writer's first segment (of `segment_bytes`) under `base`.
    pub fn open(base: PathBuf, segment_bytes: u64) -> Result<Wal, StoreError> {
        let instance = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let (map, file) = create(&segment_path(&base, &instance, 0), segment_bytes)?;
        Ok(Wal {
            base,
            instance,
            segment_bytes,
            inner: Mutex::new(Inner {
                map,
                _file: file,
                segment: 0,
                bytes: 0,
                seq: 0,
                retired: false,
                closed: VecDeque::new(),
                pages: VecDeque::new(),
                released: 0,
                stale_maps: Vec::new(),
            }),
            releasing: Mutex::new(()),
        })
    }

    /// Appends one checksummed line (see [`super::spool_line`]) and, still holding the file
    /// (so calls see sequence numbers in order), hands its sequence number to `then`.
    pub fn append(&self, line: &[u8], then: impl FnOnce(u64)) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.bytes + line.len() as u64 > self.segment_bytes {
            let next = inner.segment + 1;
            let (map, file) = create(
                &segment_path(&self.base, &self.instance, next),
                self.segment_bytes,
            )?;
            let (segment, seq) = (inner.segment, inner.seq);
            let old = std::mem::replace(&mut inner._file, file);
            if !std::mem::take(&mut inner.retired) {
                inner.closed.push_back((segment, seq, old));
            }
            let old_map = std::mem::replace(&mut inner.map, map);
            inner.stale_maps.push(old_map);
            inner.segment = next;
            inner.bytes = 0;
            inner.pages.clear();
            inner.released = 0;
        }
        let at = inner.bytes as usize;
        let Some(slot) = inner.map.get_mut(at..at + line.len()) else {
            return Err(StoreError("a record larger than a segment".into()));
        };
        slot.copy_from_slice(line);
        inner.bytes += line.len() as u64;
        inner.seq += 1;
        let boundary = inner.bytes / PAGE * PAGE;
        if boundary > at as u64 / PAGE * PAGE {
            let seq = inner.seq;
            inner.pages.push_back((seq, boundary));
        }
        then(inner.seq);
        Ok(())
    }

    /// Every record up to `seq` is in the database (or its spool): closed segments holding
    /// nothing later are deleted, and pages holding only persisted records are released. The
    /// slow parts (unlinking and closing segment files, `madvise`, unmapping) run outside the
    /// lock appends take: the request that appends next never waits for them.
    pub fn persisted(&self, seq: u64) {
        let _pass = self.releasing.lock().unwrap_or_else(|p| p.into_inner());
        let (done, stale, release) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let mut done = Vec::new();
            while let Some((_, last, _)) = inner.closed.front() {
                if *last > seq {
                    break;
                }
                done.extend(inner.closed.pop_front());
            }
            let stale = std::mem::take(&mut inner.stale_maps);
            let mut boundary = inner.released;
            while let Some(&(last, end)) = inner.pages.front() {
                if last > seq {
                    break;
                }
                boundary = end;
                inner.pages.pop_front();
            }
            let mut release = None;
            if boundary > inner.released {
                let from = inner.released as usize;
                // SAFETY: `from` < `boundary` <= `bytes`, inside the mapping.
                let start = unsafe { inner.map.as_mut_ptr().add(from) };
                release = Some((start, (boundary - inner.released) as usize));
                inner.released = boundary;
            }
            (done, stale, release)
        };
        if let Some((start, len)) = release {
            // SAFETY: whole pages of our own mapping, before every byte a record is still being
            // copied to (appends go past `bytes` >= the boundary). The mapping stays mapped
            // meanwhile: a segment change only moves it to `stale_maps`, which only the next
            // pass (not concurrent with this one: `releasing`) unmaps. For a shared file
            // mapping the pages only leave this process; their data stays in the file.
            unsafe { libc::madvise(start.cast(), len, libc::MADV_DONTNEED) };
        }
        drop(stale);
        for (segment, _, file) in done {
            // Removed while still locked, then unlocked (the file closes).
            self.remove(segment);
            drop(file);
        }
    }

    /// When every record appended so far is persisted (up to `seq`), deletes the open segment
    /// too (a graceful stop: nothing is left to recover). A later append opens a new one.
    pub fn retire(&self, seq: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.seq > seq || !inner.closed.is_empty() {
            return false;
        }
        let segment = inner.segment;
        self.remove(segment);
        // The next append rotates (the file is gone; the mapping stays until then).
        inner.bytes = self.segment_bytes;
        inner.retired = true;
        true
    }

    fn remove(&self, segment: u64) {
        let path = segment_path(&self.base, &self.instance, segment);
        if let Err(e) = std::fs::remove_file(&path) {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }

    /// Segments under `base` that no running writer holds, with the records they hold (a torn
    /// last line is skipped). Delete each once its records are safe elsewhere.
    pub fn leftovers<T: DeserializeOwned>(
        base: &Path,
    ) -> Result<Vec<(PathBuf, Vec<T>)>, StoreError> {
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
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(stem)) else {
                continue;
            };
            // A segment a writer died preparing (see `create`): empty, removed once unlocked.
            if rest.ends_with(".new") {
                if let Ok(file) = File::open(entry.path())
                    && try_lock(&file)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            let Some((instance, segment)) = rest.strip_prefix('.').and_then(|r| r.rsplit_once('.'))
            else {
                continue;
            };
            if instance.is_empty() || instance.contains('.') || segment.parse::<u64>().is_err() {
                continue;
            }
            let path = entry.path();
            let read =
                |e: std::io::Error| StoreError(format!("cannot read {}: {e}", path.display()));
            let file = match File::open(&path) {
                Ok(f) => f,
                // Removed meanwhile by its writer (or another recovery): nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read(e)),
            };
            // Held by a running writer (this process's included): not a leftover. The lock
            // taken here is released when `file` closes.
            if !try_lock(&file) {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read(e)),
            };
            found.push((path, spool_records::<T>(&bytes)));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::spool_line;

    fn line(id: u32) -> Vec<u8> {
        spool_line(&vec![id]).unwrap()
    }

    #[test]
    fn appends_in_order_rotates_and_deletes_what_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("j.wal");
        let wal = Wal::open(base.clone(), 4096).unwrap();
        let mut seqs = Vec::new();
        for i in 0..3 {
            wal.append(&line(i), |s| seqs.push(s)).unwrap();
        }
        assert_eq!(seqs, [1, 2, 3]);
        // The segment is preallocated: its records read back, its zero tail is ignored.
        let first = segment_path(&base, &wal.instance, 0);
        let bytes = std::fs::read(&first).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(spool_records::<Vec<u32>>(&bytes), [[0], [1], [2]]);
        // Force a rotation: the closed segment goes once everything in it is persisted.
        wal.inner.lock().unwrap().bytes = 4090;
        wal.append(&line(3), |_| {}).unwrap();
        assert!(segment_path(&base, &wal.instance, 0).exists());
        assert!(segment_path(&base, &wal.instance, 1).exists());
        wal.persisted(2);
        assert!(first.exists(), "seq 3 is not persisted yet");
        wal.persisted(3);
        assert!(!first.exists());
        assert!(
            segment_path(&base, &wal.instance, 1).exists(),
            "the open segment stays"
        );
        // A running writer's segments (this process's) are never leftovers.
        assert!(Wal::leftovers::<Vec<u32>>(&base).unwrap().is_empty());
        // Retiring: only once everything is persisted; the next append opens a new segment.
        wal.append(&line(5), |_| {}).unwrap();
        assert!(!wal.retire(4));
        assert!(wal.retire(5));
        assert!(!segment_path(&base, &wal.instance, 1).exists());
        wal.append(&line(6), |_| {}).unwrap();
        assert!(segment_path(&base, &wal.instance, 2).exists());
    }

    #[test]
    fn pages_of_persisted_records_leave_memory_and_keep_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("p.wal");
        let wal = Wal::open(base.clone(), 64 << 10).unwrap();
        let record = |i: u32| spool_line(&vec![i; 100]).unwrap();
        let mut last = 0;
        for i in 0..100 {
            wal.append(&record(i), |s| last = s).unwrap();
        }
        let used = wal.inner.lock().unwrap().bytes;
        assert!(used > 3 * PAGE, "{used} bytes");
        // Half persisted: the pages before the first record still waiting are released.
        wal.persisted(50);
        let half = wal.inner.lock().unwrap().released;
        assert!(half > 0 && half.is_multiple_of(PAGE), "{half}");
        assert!(half <= used / 2 + PAGE, "{half} of {used}");
        // Nothing more persisted: nothing more released.
        wal.persisted(50);
        assert_eq!(wal.inner.lock().unwrap().released, half);
        wal.persisted(last);
        let all = wal.inner.lock().unwrap().released;
        assert_eq!(all, used / PAGE * PAGE);
        // Appends go on after a release, and the file holds every record, in order.
        wal.append(&record(100), |_| {}).unwrap();
        let bytes = std::fs::read(segment_path(&base, &wal.instance, 0)).unwrap();
        let records = spool_records::<Vec<u32>>(&bytes);
        assert_eq!(records.len(), 101);
        assert!(
            records
                .iter()
                .enumerate()
                .all(|(i, r)| r == &vec![i as u32; 100])
        );
    }

    #[test]
    fn leftovers_are_segments_nobody_holds_without_their_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("j.wal");
        // A segment of a writer that is gone (same pid as ours, as in a restarted container).
        let dead = segment_path(&base, &format!("{}-dead", std::process::id()), 7);
        let mut bytes = Vec::new();
        for id in [1, 2] {
            bytes.extend(line(id));
        }
        let torn = line(3);
        bytes.extend(&torn[..torn.len() / 2]);
        std::fs::write(&dead, bytes).unwrap();
        std::fs::write(dir.path().join("j.wal.x.notanumber"), "x").unwrap();
        let live = Wal::open(base.clone(), 4096).unwrap();
        live.append(&line(9), |_| {}).unwrap();
        let found = Wal::leftovers::<Vec<u32>>(&base).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, dead);
        assert_eq!(found[0].1, [[1], [2]]);
    }
}
