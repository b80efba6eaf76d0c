//! The audit log on SQLite: appending records to the chain (once per outbox row), the reads of
//! the API and the UI, pruning behind a signed checkpoint, the key file beside the database,
//! and [`audit_chain`], which reads a database file read-only for `muster audit verify`. The
//! chain's rules are in [`crate::audit`]; this file only stores and loads.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::TryRngCore;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::audit::{self, AuditKey, AuditRecord, Chain, Checkpoint, GENESIS, StoredEntry};
use crate::error::StoreError;
use crate::store::StoreResult;

/// Entries pruned per transaction.
const PRUNE_BATCH: usize = 500;

const ENTRY_COLS: &str = "seq, at, actor, action, subject, detail, outbox_id, prev_hash, hash";

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok(StoredEntry {
        seq: row.get("seq")?,
        at: row.get("at")?,
        actor: row.get("actor")?,
        action: row.get("action")?,
        subject: row.get("subject")?,
        detail: row.get("detail")?,
        id: row.get("outbox_id")?,
        prev_hash: row.get("prev_hash")?,
        hash: row.get("hash")?,
    })
}

fn checkpoint(conn: &Connection) -> StoreResult<Option<Checkpoint>> {
    Ok(conn
        .prepare_cached("SELECT seq, hash, count, at, signature FROM audit_checkpoint")?
        .query_row([], |row| {
            Ok(Checkpoint {
                seq: row.get("seq")?,
                hash: row.get("hash")?,
                count: row.get("count")?,
                at: row.get("at")?,
                signature: row.get("signature")?,
            })
        })
        .optional()?)
}

/// The seq and hash the next entry follows: the last entry's, else the checkpoint's, else the
/// genesis.
fn head(conn: &Connection) -> StoreResult<(i64, String)> {
    let last = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get("seq")?, row.get("hash")?)))
        .optional()?;
    if let Some(last) = last {
        return Ok(last);
    }
    Ok(checkpoint(conn)?.map_or((0, GENESIS.to_owned()), |cp| (cp.seq, cp.hash)))
}

pub(super) fn append(conn: &Connection, records: Vec<(Uuid, AuditRecord)>) -> StoreResult<usize> {
    let (mut seq, mut prev_hash) = head(conn)?;
    let mut exists = conn.prepare_cached("SELECT 1 FROM audit WHERE outbox_id = ?1")?;
    let mut insert = conn.prepare_cached(&format!(
        "INSERT INTO audit ({ENTRY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?;
    let mut appended = 0;
    for (id, record) in records {
        let id = id.to_string();
        // The single writer runs appends one at a time, so this check and the insert below
        // cannot interleave with another append; UNIQUE(outbox_id) backs it up regardless.
        if exists.exists([&id])? {
            continue;
        }
        seq += 1;
        let entry = StoredEntry::chained(seq, &prev_hash, &id, &record);
        insert.execute(params![
            entry.seq,
            entry.at,
            entry.actor,
            entry.action,
            entry.subject,
            entry.detail,
            entry.id,
            entry.prev_hash,
            entry.hash
        ])?;
        prev_hash = entry.hash;
        appended += 1;
    }
    Ok(appended)
}

pub(super) fn after(conn: &Connection, after: i64, limit: usize) -> StoreResult<Vec<StoredEntry>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let entries = stmt
        .query_map(params![after, limit as i64], entry_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(entries)
}

pub(super) fn before(
    conn: &Connection,
    before: Option<i64>,
    limit: usize,
) -> StoreResult<Vec<StoredEntry>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLS} FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let entries = stmt
        .query_map(
            params![before.unwrap_or(i64::MAX), limit as i64],
            entry_from_row,
        )?
        .collect::<Result<_, _>>()?;
    Ok(entries)
}

pub(super) fn read_checkpoint(conn: &Connection) -> StoreResult<Option<Checkpoint>> {
    checkpoint(conn)
}

/// Deletes one batch of entries older than `before`, oldest first, stopping at the first that
/// is not (entries are appended in delivery order, so `at` is almost but not quite monotonic,
/// and the chain must lose a prefix only). The entries must still chain from the checkpoint:
/// pruning never launders a change into a freshly signed checkpoint. The key is read (or, for
/// the first checkpoint, created) only when there is something to prune.
pub(super) fn prune(conn: &Connection, before: i64, now: i64, key_path: &Path) -> StoreResult<u64> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLS} FROM audit ORDER BY seq LIMIT ?1"
    ))?;
    let oldest: Vec<StoredEntry> = stmt
        .query_map([PRUNE_BATCH as i64], entry_from_row)?
        .collect::<Result<_, _>>()?;
    let doomed: Vec<StoredEntry> = oldest.into_iter().take_while(|e| e.at < before).collect();
    let Some(last) = doomed.last() else {
        return Ok(0);
    };
    let previous = checkpoint(conn)?;
    let key = match &previous {
        Some(_) => read_key(key_path)?.ok_or_else(|| {
            StoreError::Unavailable(format!(
                "the audit key {} is missing, so the audit checkpoint cannot be checked or \
                 moved; restore the file to prune the audit log",
                key_path.display()
            ))
        })?,
        None => load_or_create_key(key_path)?,
    };
    audit::verify(previous.as_ref(), Some(&key), &doomed).map_err(|broken| {
        StoreError::Conflict(format!(
            "not pruning the audit log: {broken}; run `muster audit verify`"
        ))
    })?;
    let count = previous.as_ref().map_or(0, |cp| cp.count) + doomed.len() as u64;
    let cp = key.checkpoint(last.seq, &last.hash, count, now);
    conn.prepare_cached("DELETE FROM audit WHERE seq <= ?1")?
        .execute([last.seq])?;
    conn.prepare_cached(
        "INSERT INTO audit_checkpoint (id, seq, hash, count, at, signature) \
         VALUES (1, ?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, \
         hash = excluded.hash, count = excluded.count, at = excluded.at, \
         signature = excluded.signature",
    )?
    .execute(params![cp.seq, cp.hash, cp.count, cp.at, cp.signature])?;
    Ok(doomed.len() as u64)
}

/// The key file of the database at `db`: `<db>.audit-key`.
pub fn key_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".audit-key");
    PathBuf::from(name)
}

/// The key in `path`; `None` when the file does not exist.
fn read_key(path: &Path) -> StoreResult<Option<AuditKey>> {
    match std::fs::read(path) {
        Ok(bytes) => AuditKey::from_bytes(&bytes).map(Some).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "the audit key {} is not 32 bytes long",
                path.display()
            ))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(StoreError::Unavailable(format!(
            "cannot read the audit key {}: {err}",
            path.display()
        ))),
    }
}

/// The key in `path`, created with 32 bytes from the OS's CSPRNG (mode 0600) if it does not
/// exist yet.
fn load_or_create_key(path: &Path) -> StoreResult<AuditKey> {
    if let Some(key) = read_key(path)? {
        return Ok(key);
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StoreError::Unavailable(format!("the OS random source failed: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let cannot = |e: std::io::Error| {
        StoreError::Unavailable(format!(
            "cannot create the audit key {}: {e}",
            path.display()
        ))
    };
    let mut file = options.open(path).map_err(cannot)?;
    file.write_all(&bytes).map_err(cannot)?;
    // Durable before the checkpoint it signs commits.
    file.sync_all().map_err(cannot)?;
    Ok(AuditKey::from_bytes(&bytes).expect("32 bytes"))
}

/// Reads the audit chain of the database file at `db` (read-only, safe while a server writes
/// to it) with its checkpoint and the key beside it, for verification.
pub fn audit_chain(db: &Path) -> StoreResult<Chain> {
    if !db.exists() {
        return Err(StoreError::NotFound(format!("database {}", db.display())));
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let has_log: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit'",
        [],
        |row| row.get(0),
    )?;
    if !has_log {
        // An older schema, or not muster's file: `muster serve` creates the log on start.
        return Err(StoreError::NotFound(format!(
            "audit log in {}",
            db.display()
        )));
    }
    // One read transaction, so the checkpoint and the entries are of the same moment.
    conn.execute_batch("BEGIN")?;
    let checkpoint = checkpoint(&conn)?;
    let entries = after(&conn, i64::MIN, usize::MAX >> 1)?;
    conn.execute_batch("COMMIT")?;
    Ok(Chain {
        checkpoint,
        key: read_key(&key_path(db))?,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Broken, Via};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{RetryPolicy, Store};

    fn record(at: i64, n: u32) -> AuditRecord {
        AuditRecord::task_retried(
            at,
            Actor::operator(Via::Api),
            Uuid::from_u128(u128::from(n)),
            muster_api::TaskState::Failed,
            n,
        )
    }

    fn open(dir: &tempfile::TempDir) -> (SqliteStore, PathBuf) {
        let path = dir.path().join("audit.db");
        let store = SqliteStore::open(
            &path,
            RetryPolicy {
                backoff_base_ms: 1000,
                backoff_max_ms: 60_000,
            },
        )
        .expect("opens");
        (store, path)
    }

    #[tokio::test]
    async fn audit_append_is_once_per_outbox_row_and_chains() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(&dir);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let batch: Vec<(Uuid, AuditRecord)> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (*id, record(1000, n as u32)))
            .collect();
        assert_eq!(store.append_audit(batch.clone()).await.unwrap(), 3);
        // A redelivery of the same rows, alone or beside a new one.
        let new = (Uuid::now_v7(), record(1001, 9));
        let mut again = batch.clone();
        again.push(new);
        assert_eq!(store.append_audit(again).await.unwrap(), 1);
        let entries = store.audit_after(0, 100).await.unwrap();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(entries[0].id, ids[0].to_string());
        let newest = store.audit_before(None, 2).await.unwrap();
        assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 3]);
        store.close().await;
        let chain = audit_chain(&path).unwrap();
        assert_eq!(chain.verify().unwrap().entries, 4);
    }

    #[tokio::test]
    async fn audit_pruning_leaves_a_signed_checkpoint_and_a_chain_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(&dir);
        let old: Vec<(Uuid, AuditRecord)> =
            (0..3).map(|n| (Uuid::now_v7(), record(1000, n))).collect();
        let new: Vec<(Uuid, AuditRecord)> =
            (3..5).map(|n| (Uuid::now_v7(), record(5000, n))).collect();
        store.append_audit(old).await.unwrap();
        store.append_audit(new).await.unwrap();
        assert_eq!(store.prune_audit(2000, 9000).await.unwrap(), 3);
        assert_eq!(store.prune_audit(2000, 9000).await.unwrap(), 0);
        let cp = store
            .audit_checkpoint()
            .await
            .unwrap()
            .expect("a checkpoint");
        assert_eq!((cp.seq, cp.count, cp.at), (3, 3, 9000));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(&path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the key file is the owner's alone");
        }
        // Appends continue the numbering after the checkpoint, even with the table empty.
        assert_eq!(store.prune_audit(6000, 9100).await.unwrap(), 2);
        store
            .append_audit(vec![(Uuid::now_v7(), record(7000, 7))])
            .await
            .unwrap();
        let entries = store.audit_after(0, 10).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
        store.close().await;
        let ok = audit_chain(&path).unwrap().verify().expect("verifies");
        assert_eq!(ok.entries, 1);
        assert_eq!(ok.checkpoint.map(|cp| (cp.seq, cp.count)), Some((5, 5)));
    }

    #[tokio::test]
    async fn audit_pruning_refuses_a_broken_chain_and_a_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(&dir);
        let records: Vec<(Uuid, AuditRecord)> = (0..4)
            .map(|n| (Uuid::now_v7(), record(1000 + i64::from(n), n)))
            .collect();
        store.append_audit(records).await.unwrap();
        store.prune_audit(1001, 2000).await.unwrap();
        store.close().await;
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP TRIGGER audit_append_only; \
                 UPDATE audit SET detail = '{\"from\":\"cancelled\"}' WHERE seq = 3",
            )
            .unwrap();
        }
        let (store, _) = open(&dir);
        let err = store.prune_audit(5000, 6000).await.unwrap_err();
        assert!(err.to_string().contains("entry seq 3 was changed"), "{err}");
        store.close().await;
        assert_eq!(
            audit_chain(&path).unwrap().verify(),
            Err(Broken::Changed { seq: 3 })
        );
        std::fs::remove_file(key_path(&path)).unwrap();
        let (store, _) = open(&dir);
        let err = store.prune_audit(5000, 6000).await.unwrap_err();
        assert!(err.to_string().contains("audit key"), "{err}");
        store.close().await;
        assert!(matches!(
            audit_chain(&path).unwrap().verify(),
            Err(Broken::Checkpoint { seq: 1, .. })
        ));
    }

    #[test]
    fn audit_chain_of_a_missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = audit_chain(&dir.path().join("none.db")).unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        assert!(!dir.path().join("none.db").exists());
    }
}
