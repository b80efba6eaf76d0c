//! One server per database file: an exclusive lock on `<db>.lock`, held by the writer thread
//! for the store's life. Two servers on one file would each mark the other's agents offline
//! and hand their tasks out twice; the second refuses to start and names the first.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// The held lock; released when dropped (and by the OS if the process dies).
#[derive(Debug)]
pub(super) struct DbLock {
    _file: File,
}

pub(super) fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

impl DbLock {
    pub(super) fn acquire(db: &Path) -> Result<DbLock, StoreError> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open the lock file {}: {e}",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another muster serve (pid {holder})")
                };
                return Err(StoreError::Unavailable(format!(
                    "{who} is already serving {}: one server per database file. Stop it, or \
                     give this one another DB_PATH (lock: {})",
                    db.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
        // Our pid, for the message a second server prints.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(DbLock { _file: file })
    }
}
