//! Handing tasks a claim started to the long-poll that asked for them.
//!
//! A claim commits before its answer can go out. A long-poll that hung up in between would
//! leave its tasks running with no one to run them until their lease ran out, and then cost
//! them an attempt. Here they go back to assigned instead, as if never claimed, and the
//! agent's next long-poll takes them.

use muster_api::Task;
use tokio::sync::oneshot;

use crate::changes::Changes;
use crate::store::Store;

/// Sends `value` to the long-poll waiting on `tx`; when it is gone, puts back the tasks
/// `value` started (`tasks_of`).
pub async fn hand_over<T>(
    tx: oneshot::Sender<T>,
    value: T,
    tasks_of: impl FnOnce(T) -> Vec<Task>,
    store: &dyn Store,
    changes: &Changes,
    now: i64,
) {
    if let Err(unsent) = tx.send(value) {
        put_back(store, changes, tasks_of(unsent), now).await;
    }
}

/// Puts started tasks that reached no one back to assigned.
async fn put_back(store: &dyn Store, changes: &Changes, tasks: Vec<Task>, now: i64) {
    if tasks.is_empty() {
        return;
    }
    let started = tasks.iter().map(|t| (t.id, t.attempt)).collect();
    match store.unclaim(started, now).await {
        Ok(put_back) => {
            changes.metrics.started("put_back", put_back.len());
            tracing::info!(
                tasks = put_back.len(),
                "a long-poll hung up while its claim committed; its tasks are assigned again"
            );
            for change in put_back {
                changes.task(change);
            }
        }
        Err(err) => tracing::warn!(
            error = %err,
            "could not put back tasks whose claim reached no one; their lease will end them"
        ),
    }
}
