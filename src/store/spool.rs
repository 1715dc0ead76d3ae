//! Local spool: journal rows that wait for the database, as fsynced JSON lines.

use std::io::Write;
use std::path::PathBuf;

use tokio::sync::{Mutex, MutexGuard};

use super::{SpendRecord, StoreError};

/// An append-only file of [`SpendRecord`]s. Appends are fsynced before they return, so a row
/// acknowledged here survives a crash.
pub struct Spool {
    file: Mutex<PathBuf>,
}

/// Exclusive access to the spool (a replay holds it so no append slips between read and clear).
pub struct SpoolGuard<'a>(MutexGuard<'a, PathBuf>);

impl Spool {
    pub fn new(path: PathBuf) -> Spool {
        Spool {
            file: Mutex::new(path),
        }
    }

    pub async fn lock(&self) -> SpoolGuard<'_> {
        SpoolGuard(self.file.lock().await)
    }

    pub async fn append(&self, rec: &SpendRecord) -> Result<(), StoreError> {
        let guard = self.lock().await;
        let mut line = serde_json::to_vec(rec).map_err(|e| StoreError(e.to_string()))?;
        line.push(b'\n');
        let path = guard.0.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&line)?;
            f.sync_data()
        })
        .await
        .map_err(|e| StoreError(e.to_string()))?
        .map_err(|e| StoreError(format!("cannot write the spool {}: {e}", guard.0.display())))
    }

    pub async fn read(&self) -> Result<Vec<SpendRecord>, StoreError> {
        self.lock().await.read()
    }
}

impl SpoolGuard<'_> {
    /// Every row in the spool (a torn last line from a crash mid-append is skipped).
    pub fn read(&self) -> Result<Vec<SpendRecord>, StoreError> {
        let text = match std::fs::read_to_string(&*self.0) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError(format!(
                    "cannot read the spool {}: {e}",
                    self.0.display()
                )));
            }
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
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
