//! Outbox rows on SQLite: [`insert_outbox`], which any write operation calls inside its own
//! transaction so the row commits with the change that causes it, and the delivery loop's
//! reads and updates (due rows, delivered, failed, pruning).

use std::cell::Cell;

use rusqlite::{Connection, params};
use uuid::Uuid;

use super::rows::{json_col, uuid_col};
use crate::store::{Lane, OutboxFailure, OutboxItem, OutboxRow, StoreResult};

/// Delivered rows deleted per retention transaction.
const PRUNE_BATCH: usize = 1000;

thread_local! {
    /// Set when an operation on this thread wrote an outbox row. Operations are plain
    /// functions of a connection and every write runs on the one writer thread, so the flag
    /// lives beside them there; the writer takes it after each COMMIT to wake the delivery
    /// loop. A rolled-back row leaves it set: a needless wake-up costs one empty query.
    static WROTE: Cell<bool> = const { Cell::new(false) };
}

/// Whether outbox rows were written since the last call (the writer asks after a commit).
pub(super) fn take_written() -> bool {
    WROTE.with(|w| w.replace(false))
}

/// Writes `item` as an undelivered row due at `now`. Call it inside the write operation whose
/// change causes it, so both commit or neither does.
pub(crate) fn insert_outbox(conn: &Connection, item: &OutboxItem, now: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO outbox (id, topic, payload, created_at, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![
        item.id.to_string(),
        item.topic.as_str(),
        serde_json::to_string(&item.payload)?,
        now
    ])?;
    WROTE.with(|w| w.set(true));
    Ok(())
}

pub(super) fn enqueue(conn: &Connection, items: Vec<OutboxItem>, now: i64) -> StoreResult<()> {
    for item in &items {
        insert_outbox(conn, item, now)?;
    }
    Ok(())
}

pub(super) fn due(
    conn: &Connection,
    now: i64,
    limit: usize,
    lane: Lane,
) -> StoreResult<Vec<OutboxRow>> {
    // The remote lane's topics; every other topic (one this build does not know included)
    // is local.
    let mut stmt = conn.prepare_cached(
        "SELECT id, topic, payload, attempts, created_at FROM outbox \
         WHERE delivered_at IS NULL AND next_attempt_at <= ?1 \
         AND (topic IN ('commit_status')) = ?3 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![now, limit as i64, lane == Lane::Remote], |row| {
            Ok(OutboxRow {
                id: uuid_col(row, "id")?,
                topic: row.get("topic")?,
                payload: json_col(row, "payload")?,
                attempts: row.get("attempts")?,
                created_at: row.get("created_at")?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn mark_delivered(conn: &Connection, ids: Vec<Uuid>, now: i64) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL \
         WHERE id = ?1 AND delivered_at IS NULL",
    )?;
    for id in ids {
        stmt.execute(params![id.to_string(), now])?;
    }
    Ok(())
}

pub(super) fn mark_failed(conn: &Connection, failures: Vec<OutboxFailure>) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 \
         WHERE id = ?1 AND delivered_at IS NULL",
    )?;
    for f in failures {
        stmt.execute(params![f.id.to_string(), f.error, f.next_attempt_at])?;
    }
    Ok(())
}

pub(super) fn prune(conn: &Connection, delivered_before: i64) -> StoreResult<u64> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE delivered_at IS NOT NULL AND delivered_at < ?1 LIMIT ?2)",
        )?
        .execute(params![delivered_before, PRUNE_BATCH as i64])?;
    Ok(deleted as u64)
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use serde_json::json;

    use crate::audit::AuditRecord;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Lane, NewTask, OutboxFailure, OutboxItem, RetryPolicy, Store, Topic};

    fn store(dir: &tempfile::TempDir) -> SqliteStore {
        let policy = RetryPolicy {
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
        };
        SqliteStore::open(&dir.path().join("outbox.db"), policy).unwrap()
    }

    fn task() -> NewTask {
        NewTask {
            id: uuid::Uuid::now_v7(),
            kind: "k".into(),
            payload: json!({}),
            capabilities: vec![],
            priority: 0,
            max_retries: 0,
            timeout_s: None,
            lock_key: None,
            idempotency_key: None,
            run_after: None,
            labels: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_commit_that_wrote_outbox_rows_wakes_the_delivery_loop_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let wake = store.outbox_written();
        store.submit(task(), 1).await.unwrap();
        assert!(
            wake.notified().now_or_never().is_none(),
            "no row, no wake-up"
        );
        let item = OutboxItem::audit(&AuditRecord::config_reloaded(1, json!({})));
        store.enqueue(vec![item], 1).await.unwrap();
        assert!(
            wake.notified().now_or_never().is_some(),
            "woken after the commit"
        );
        store.close().await;
    }

    /// The due query names the remote lane's topics in SQL; each topic must come out in the
    /// lane [`Topic::lane`] gives it.
    #[tokio::test]
    async fn each_topic_is_due_in_its_own_lane() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let items = vec![
            OutboxItem::audit(&AuditRecord::config_reloaded(1, json!({}))),
            OutboxItem::commit_status(uuid::Uuid::now_v7()),
        ];
        store.enqueue(items.clone(), 100).await.unwrap();
        for lane in [Lane::Local, Lane::Remote] {
            let due = store.due_outbox(100, 10, lane).await.unwrap();
            let want: Vec<_> = items
                .iter()
                .filter(|i| i.topic.lane() == lane)
                .map(|i| i.id)
                .collect();
            assert_eq!(
                due.iter().map(|r| r.id).collect::<Vec<_>>(),
                want,
                "{lane:?}"
            );
            for row in due {
                assert_eq!(Topic::parse(&row.topic).unwrap().lane(), lane);
            }
        }
        store.close().await;
    }

    #[tokio::test]
    async fn outbox_rows_are_due_until_delivered_and_wait_out_their_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let items: Vec<OutboxItem> = (0..2)
            .map(|n| OutboxItem::audit(&AuditRecord::config_reloaded(n, json!({"n": n}))))
            .collect();
        store.enqueue(items.clone(), 100).await.unwrap();
        assert!(
            store
                .due_outbox(99, 10, Lane::Local)
                .await
                .unwrap()
                .is_empty(),
            "not due yet"
        );
        let due = store.due_outbox(100, 10, Lane::Local).await.unwrap();
        assert_eq!(
            due.iter().map(|r| r.id).collect::<Vec<_>>(),
            [items[0].id, items[1].id]
        );
        assert_eq!(due[1].payload, items[1].payload);

        store.mark_delivered(vec![items[0].id], 200).await.unwrap();
        let failure = OutboxFailure {
            id: items[1].id,
            error: "consumer down".into(),
            next_attempt_at: 5_000,
        };
        store.mark_failed(vec![failure]).await.unwrap();
        assert!(
            store
                .due_outbox(4_999, 10, Lane::Local)
                .await
                .unwrap()
                .is_empty()
        );
        let again = store.due_outbox(5_000, 10, Lane::Local).await.unwrap();
        assert_eq!((again.len(), again[0].attempts), (1, 1));

        // Only delivered rows are pruned, and only past the cutoff.
        assert_eq!(store.prune_outbox(200).await.unwrap(), 0);
        assert_eq!(store.prune_outbox(201).await.unwrap(), 1);
        assert_eq!(store.prune_outbox(i64::MAX).await.unwrap(), 0);
        assert_eq!(
            store
                .due_outbox(5_000, 10, Lane::Local)
                .await
                .unwrap()
                .len(),
            1
        );
        store.close().await;
    }
}
