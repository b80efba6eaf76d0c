//! The hand-over to a waiting long-poll, against every backend: an assignment that starts the
//! task in the same update, and the undoing of a claim whose answer reached no one.

use muster_api::{AttemptOutcome, TaskState};
use muster_server::store::AssignOrder;
use serde_json::json;

use crate::*;

fn starting(seq: i64, agent_id: &str, now: i64, lease_until: i64) -> AssignOrder {
    AssignOrder {
        start: Some(lease_until),
        ..order(seq, agent_id, now)
    }
}

#[tokio::test]
async fn an_assignment_that_starts_the_task_runs_it_as_a_claim_would() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        let s = submit(&b, new_task(1), T0).await;
        let mut applied = b
            .store
            .assign(vec![starting(seq(&s), "a1", T0 + 1, T0 + 30_000)], T0 + 1)
            .await
            .expect("assign");
        let applied = applied
            .pop()
            .flatten()
            .expect("a queued, due task is applied");
        assert_eq!(applied.task_id, s.task.id, "[{}]", b.name);
        assert_eq!(applied.attempt, 1, "[{}] the new attempt's number", b.name);
        let started = applied.started.expect("the order started the task");
        assert_eq!(started.state, TaskState::Running, "[{}]", b.name);
        assert_eq!(started.attempt, 1, "[{}]", b.name);
        assert_eq!(started.agent_id.as_deref(), Some("a1"), "[{}]", b.name);
        assert!(started.assignment.is_some(), "[{}] its assignment", b.name);

        let stored = task(&b, s.task.id).await;
        assert_eq!(
            stored.state,
            TaskState::Running,
            "[{}] stored running",
            b.name
        );
        assert_eq!(stored.attempts.len(), 1, "[{}] an attempt record", b.name);
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Running,
            "[{}]",
            b.name
        );
        assert_eq!(
            stored.attempts[0].started_at,
            to_utc(T0 + 1),
            "[{}]",
            b.name
        );
        assert_eq!(
            b.store.stats(T0 + 30_001).await.expect("stats").past_lease,
            1,
            "[{}] the order's lease holds until lease_until",
            b.name
        );
        let again = b
            .store
            .claim("a1", T0 + 2, T0 + 30_000)
            .await
            .expect("claim");
        assert!(again.task.is_none(), "[{}] nothing left to claim", b.name);
        let done = complete(&b, s.task.id, 1, json!({"ok": true}), None, T0 + 3).await;
        assert_eq!(done.task.state, TaskState::Completed, "[{}]", b.name);

        // A start order for a task no longer queued is refused like any order.
        let gone = submit(&b, new_task(0), T0 + 4).await;
        b.store
            .cancel(gone.task.id, operator(), T0 + 5)
            .await
            .expect("cancel");
        let refused = b
            .store
            .assign(
                vec![starting(seq(&gone), "a1", T0 + 6, T0 + 30_000)],
                T0 + 6,
            )
            .await
            .expect("assign");
        assert!(
            refused[0].is_none(),
            "[{}] a cancelled task is not started",
            b.name
        );
        assert_eq!(
            state(&b, gone.task.id).await,
            TaskState::Cancelled,
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn a_claim_that_reached_no_one_is_put_back_as_if_never_claimed() {
    for b in backends().await {
        // A second attempt, so putting it back must restore the first attempt's facts.
        let first = running(&b, new_task(2), "a1", T0).await;
        fail(&b, first.id, 1, "flaky".into(), true, T0 + 10).await;
        let due = T0 + 60_000;
        let queued = b.store.queued(0, 10).await.expect("queued");
        assert_eq!(
            assign(&b, queued[0].seq, "a1", due).await,
            Some((first.id, 1)),
            "[{}] assigned again after its backoff",
            b.name
        );
        let second = b
            .store
            .claim("a1", due + 1, due + 30_000)
            .await
            .expect("claim")
            .task
            .expect("claimed");
        assert_eq!(second.attempt, 2, "[{}]", b.name);

        let put_back = b
            .store
            .unclaim(vec![(first.id, 2)], due + 2)
            .await
            .expect("unclaim");
        assert_eq!(put_back.len(), 1, "[{}] one task put back", b.name);
        let change = &put_back[0];
        assert_eq!(change.state, TaskState::Assigned, "[{}]", b.name);
        assert_eq!(change.attempt, 1, "[{}] the attempt before", b.name);
        assert_eq!(
            change.wake_agent.as_deref(),
            Some("a1"),
            "[{}] the agent's next long-poll is woken for it",
            b.name
        );
        assert_legal(&b, TaskState::Running, change).await;
        let stored = task(&b, first.id).await;
        assert_eq!(stored.attempt, 1, "[{}] no attempt spent", b.name);
        assert_eq!(
            stored.attempts.len(),
            1,
            "[{}] the undone attempt left no record",
            b.name
        );
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Failed,
            "[{}]",
            b.name
        );
        assert_eq!(
            b.store
                .stats(due + 1_000_000)
                .await
                .expect("stats")
                .past_lease,
            0,
            "[{}] no lease left running",
            b.name
        );

        // Its next claim starts attempt 2 afresh, and it runs to the end.
        let again = b
            .store
            .claim("a1", due + 3, due + 30_000)
            .await
            .expect("claim")
            .task
            .expect("claimed again");
        assert_eq!((again.id, again.attempt), (first.id, 2), "[{}]", b.name);
        complete(&b, first.id, 2, json!({}), None, due + 4).await;

        // A stale or finished attempt is left alone.
        let none = b
            .store
            .unclaim(vec![(first.id, 2), (first.id, 1)], due + 5)
            .await
            .expect("unclaim");
        assert!(
            none.is_empty(),
            "[{}] a finished task is not put back",
            b.name
        );
        assert_eq!(
            state(&b, first.id).await,
            TaskState::Completed,
            "[{}]",
            b.name
        );
    }
}
