//! Local spools: rows that wait for the database, as fsynced, checksummed lines.
//!
//! A line is `<crc32 of the JSON, 8 hex digits> <JSON>`. A line torn by a crash mid-append (or
//! damaged on disk) fails its checksum and is skipped; nothing half-written is ever read back
//! as a record. Lines without a checksum (spools written by pag0 before 0.2) are still read.

use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, MutexGuard};

use super::StoreError;

/// An append-only file of `T`s. Appends are fsynced before they return, so a row acknowledged
/// here survives a crash.
pub struct Spool<T> {
    file: Mutex<PathBuf>,
    _rows: PhantomData<fn() -> T>,
}

/// Exclusive access to the spool (a replay holds it so no append slips between read and clear).
pub struct SpoolGuard<'a, T>(MutexGuard<'a, PathBuf>, PhantomData<fn() -> T>);

/// One checksummed line (with its `\n`), in one allocation: the JSON is written after room
/// for the checksum, which is filled in last (every request's analytics record comes here).
pub fn line<T: Serialize>(row: &T) -> Result<Vec<u8>, StoreError> {
    const PREFIX: usize = 9;
    let mut line = Vec::with_capacity(640);
    line.extend_from_slice(b"00000000 ");
    serde_json::to_writer(&mut line, row).map_err(|e| StoreError(e.to_string()))?;
    let crc = crc32fast::hash(&line[PREFIX..]);
    hex_into(&mut line[..8], u64::from(crc));
    line.push(b'\n');
    Ok(line)
}

/// Writes `v`'s last `out.len()` hex digits (lower case, zero-padded) into `out`.
pub fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// The intact records of a spool file's bytes, in order.
pub fn records<T: DeserializeOwned>(bytes: &[u8]) -> Vec<T> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(verified)
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}

/// The JSON of a line whose checksum holds (or of a legacy line without one).
fn verified(line: &str) -> Option<&str> {
    if line.starts_with('{') {
        return Some(line);
    }
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc).then_some(json)
}

impl<T: Serialize + DeserializeOwned> Spool<T> {
    pub fn new(path: PathBuf) -> Spool<T> {
        Spool {
            file: Mutex::new(path),
            _rows: PhantomData,
        }
    }

    pub async fn lock(&self) -> SpoolGuard<'_, T> {
        SpoolGuard(self.file.lock().await, PhantomData)
    }

    pub async fn append(&self, row: &T) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(row)).await
    }

    /// Appends `rows` with one fsync.
    pub async fn append_all(&self, rows: &[T]) -> Result<(), StoreError> {
        let guard = self.lock().await;
        let mut bytes = Vec::new();
        for row in rows {
            bytes.extend(line(row)?);
        }
        let path = guard.0.clone();
        tokio::task::spawn_blocking(move || append_synced(&path, &bytes))
            .await
            .map_err(|e| StoreError(e.to_string()))?
            .map_err(|e| StoreError(format!("cannot write the spool {}: {e}", guard.0.display())))
    }

    pub async fn read(&self) -> Result<Vec<T>, StoreError> {
        self.lock().await.read()
    }
}

fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // After a crash mid-append the file may end inside a line: end that line first, or the
    // torn bytes would spoil the checksum of the row appended now.
    let len = f.metadata()?.len();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    f.write_all(bytes)?;
    f.sync_data()
}

impl<T: DeserializeOwned> SpoolGuard<'_, T> {
    /// Every intact row in the spool, in the order appended.
    pub fn read(&self) -> Result<Vec<T>, StoreError> {
        let text = match std::fs::read(&*self.0) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError(format!(
                    "cannot read the spool {}: {e}",
                    self.0.display()
                )));
            }
        };
        Ok(records(&text))
    }

    pub fn clear(&mut self) -> Result<(), StoreError> {
        match std::fs::remove_file(&*self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError(format!(
                "cannot clear the spool {}: {e}",
                self.0.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_the_checksum_in_hex_then_the_json() {
        let row = vec!["a\"b".to_string(); 40];
        let json = serde_json::to_string(&row).unwrap();
        let expected = format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()));
        assert_eq!(String::from_utf8(line(&row).unwrap()).unwrap(), expected);
        for v in [0, 1, 0xabc, u64::from(u32::MAX), u64::MAX - 7, u64::MAX] {
            let mut out = [0u8; 16];
            hex_into(&mut out, v);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
        }
    }

    #[tokio::test]
    async fn torn_and_damaged_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.spool");
        let spool: Spool<Vec<u32>> = Spool::new(path.clone());
        spool.append_all(&[vec![1], vec![2, 3]]).await.unwrap();
        // A crash in the middle of an append: the last line is cut short.
        let full = line(&vec![4u32, 5, 6]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&full[..full.len() - 4]).unwrap();
        drop(f);
        assert_eq!(spool.read().await.unwrap(), vec![vec![1], vec![2, 3]]);
        // A damaged byte inside a line that still parses as JSON fails its checksum.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[2,3]", "[2,9]");
        std::fs::write(&path, text).unwrap();
        assert_eq!(spool.read().await.unwrap(), vec![vec![1]]);
        // An append after a torn tail is intact.
        spool.append(&vec![7]).await.unwrap();
        assert_eq!(spool.read().await.unwrap(), vec![vec![1], vec![7]]);
        // Legacy lines (no checksum) are still read.
        std::fs::write(&path, "[7]\n{\"x\":1}\n").unwrap();
        let legacy: Spool<serde_json::Value> = Spool::new(path.clone());
        assert_eq!(legacy.read().await.unwrap().len(), 1);
        spool.append(&vec![8]).await.unwrap();
        assert_eq!(spool.read().await.unwrap(), vec![vec![8]]);
    }
}
