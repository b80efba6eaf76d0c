//! What a store committed survives `close` and a re-open over the same data.

use muster_api::{AgentStatus, AttemptOutcome, TaskState};
use muster_server::error::StoreError;
use muster_server::store::DrainBy;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn everything_committed_survives_close_and_reopen() {
    for b in backends().await {
        let done = running(&b, new_task(0), "a1", T0).await;
        b.store
            .append_logs(done.id, logs(1, &["kept"]), u64::MAX, T0 + 1)
            .await
            .expect("logs");
        complete(&b, done.id, 1, json!({"ok": true}), None, T0 + 2).await;
        let live = running(&b, new_task(0), "a1", T0).await;
        let mut keyed = new_task(0);
        keyed.idempotency_key = Some("k".into());
        let queued = submit(&b, keyed, T0).await;
        b.store
            .drain_agent(
                "a1",
                DrainBy::Operator(muster_server::audit::Via::Api),
                T0 + 3,
            )
            .await
            .expect("drain");
        b.store.close().await;
        match b
            .store
            .ping()
            .await
            .and(b.store.submit(new_task(0), T0 + 4).await.map(|_| ()))
        {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("[{}] a closed store refuses work: {other:?}", b.name),
        }

        let store = (b.reopen)().await;
        let d = store.task(done.id).await.expect("the completed task");
        assert_eq!(d.state, TaskState::Completed, "[{}]", b.name);
        assert_eq!(d.result, Some(json!({"ok": true})), "[{}]", b.name);
        assert_eq!(
            d.attempts[0].outcome,
            AttemptOutcome::Completed,
            "[{}]",
            b.name
        );
        let lines = store.logs(done.id, 0, 10).await.expect("logs");
        assert_eq!(lines.len(), 1, "[{}] the log line", b.name);
        let l = store.task(live.id).await.expect("the running task");
        assert_eq!(l.state, TaskState::Running, "[{}]", b.name);
        assert_eq!(l.attempt, 1, "[{}]", b.name);
        let q = store.task(queued.task.id).await.expect("the queued task");
        assert_eq!(q.state, TaskState::Queued, "[{}]", b.name);
        let queue = store.queued(0, 10).await.expect("queued");
        assert_eq!(
            queue.iter().map(|t| t.seq).collect::<Vec<_>>(),
            vec![seq(&queued)],
            "[{}] the queue is the same",
            b.name
        );
        let mut dup = new_task(0);
        dup.idempotency_key = Some("k".into());
        let dup = store.submit(dup, T0 + 5).await.expect("submit");
        assert!(!dup.created, "[{}] the idempotency key survived", b.name);
        let a = store.agent("a1").await.expect("the agent");
        assert_eq!(a.status, AgentStatus::Draining, "[{}]", b.name);
        assert_eq!(a.instance_id.as_deref(), Some("i1"), "[{}]", b.name);
        let snapshot = store.snapshot().await.expect("snapshot");
        assert_eq!(snapshot.active.len(), 1, "[{}] the running task", b.name);
        store.close().await;
    }
}
