//! Task operations against every backend: submit, assign, claim, cancel, operator retry,
//! expiry and pruning.

use muster_api::{AttemptOutcome, TaskState};
use muster_server::store::{ExpiryRules, TaskFilter};
use serde_json::json;

use crate::*;

const RULES: ExpiryRules = ExpiryRules {
    assign_timeout_ms: 10_000,
};

#[tokio::test]
async fn submit_persists_a_queued_task_and_an_idempotency_key_returns_the_first() {
    for b in backends().await {
        let mut first = new_task(0);
        first.idempotency_key = Some("once".into());
        let s = submit(&b, first, T0).await;
        let stored = task(&b, s.task.id).await;
        assert_eq!(
            stored.state,
            TaskState::Queued,
            "[{}] persisted queued",
            b.name
        );
        assert_eq!(stored.attempt, 0, "[{}] no attempt yet", b.name);
        assert_eq!(stored.payload, json!({"n": 1}), "[{}] payload kept", b.name);
        let queued = b.store.queued(0, 10).await.expect("queued");
        assert_eq!(queued.len(), 1, "[{}] one task in the queue", b.name);
        assert_eq!(queued[0].seq, seq(&s), "[{}] the queue holds it", b.name);

        let mut again = new_task(3);
        again.idempotency_key = Some("once".into());
        let again_id = again.id;
        let dup = b.store.submit(again, T0 + 1).await.expect("submit again");
        assert!(!dup.created, "[{}] the key names an existing task", b.name);
        assert!(dup.change.is_none(), "[{}] nothing changed", b.name);
        assert_eq!(
            dup.task.id, s.task.id,
            "[{}] the first task is returned",
            b.name
        );
        assert_eq!(
            dup.task.max_retries, 0,
            "[{}] the first task's fields",
            b.name
        );
        assert_not_found(
            &b,
            "the duplicate was not stored",
            b.store.task(again_id).await,
        );
        let page = b
            .store
            .tasks(TaskFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("tasks");
        assert_eq!(page.tasks.len(), 1, "[{}] still one task", b.name);
    }
}

#[tokio::test]
async fn assign_applies_only_to_queued_due_tasks() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        let due = submit(&b, new_task(0), T0).await;
        let mut later = new_task(0);
        later.run_after = Some(T0 + 60_000);
        let later = submit(&b, later, T0).await;
        let cancelled = submit(&b, new_task(0), T0).await;
        let c = b
            .store
            .cancel(cancelled.task.id, operator(), T0)
            .await
            .expect("cancel");
        assert_legal(&b, TaskState::Queued, &c.change).await;

        let applied = b
            .store
            .assign(
                vec![
                    order(seq(&due), "a1", T0 + 1),
                    order(seq(&later), "a1", T0 + 1),
                    order(seq(&cancelled), "a1", T0 + 1),
                ],
                T0 + 1,
            )
            .await
            .expect("assign");
        let applied: Vec<_> = applied
            .into_iter()
            .map(|a| a.map(|a| (a.task_id, a.attempt)))
            .collect();
        assert_eq!(
            applied,
            vec![Some((due.task.id, 0)), None, None],
            "[{}] only the queued, due task is assigned",
            b.name
        );
        let stored = task(&b, due.task.id).await;
        assert_eq!(stored.state, TaskState::Assigned, "[{}]", b.name);
        assert_eq!(stored.agent_id.as_deref(), Some("a1"), "[{}]", b.name);
        assert_eq!(
            stored.assignment.map(|a| a.agent_id).as_deref(),
            Some("a1"),
            "[{}] the assignment is kept",
            b.name
        );
        assert_eq!(
            state(&b, later.task.id).await,
            TaskState::Queued,
            "[{}]",
            b.name
        );
        assert_eq!(
            state(&b, cancelled.task.id).await,
            TaskState::Cancelled,
            "[{}]",
            b.name
        );
        // Assigned already: a second order is refused too.
        assert_eq!(
            assign(&b, seq(&due), "a1", T0 + 2).await,
            None,
            "[{}] an assigned task is not assigned again",
            b.name
        );
        // Once due, the delayed task is assigned.
        assert_eq!(
            assign(&b, seq(&later), "a1", T0 + 60_000).await,
            Some((later.task.id, 0)),
            "[{}] a task is assigned once its run_after passed",
            b.name
        );
    }
}

#[tokio::test]
async fn claim_starts_an_attempt_with_a_lease_and_answers_nothing_when_nothing_is_assigned() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        let empty = b.store.claim("a1", T0, T0 + 30_000).await.expect("claim");
        assert!(empty.task.is_none(), "[{}] nothing assigned", b.name);
        assert!(empty.change.is_none(), "[{}] nothing changed", b.name);
        assert!(empty.cancel.is_empty(), "[{}] nothing to stop", b.name);

        let s = submit(&b, new_task(0), T0).await;
        // Queued but not assigned: still nothing to claim.
        let none = b.store.claim("a1", T0, T0 + 30_000).await.expect("claim");
        assert!(
            none.task.is_none(),
            "[{}] a queued task is not claimable",
            b.name
        );
        assert!(
            assign(&b, seq(&s), "a1", T0 + 1).await.is_some(),
            "[{}]",
            b.name
        );
        // Another agent cannot claim a1's task.
        let other = b
            .store
            .claim("a2", T0 + 2, T0 + 30_000)
            .await
            .expect("claim");
        assert!(
            other.task.is_none(),
            "[{}] not another agent's task",
            b.name
        );

        let claimed = b
            .store
            .claim("a1", T0 + 2, T0 + 30_000)
            .await
            .expect("claim");
        let t = claimed.task.expect("the assigned task");
        assert_eq!(t.id, s.task.id, "[{}]", b.name);
        assert_eq!(t.state, TaskState::Running, "[{}]", b.name);
        assert_eq!(t.attempt, 1, "[{}] attempt + 1", b.name);
        let change = claimed.change.expect("a change");
        assert_eq!(change.attempt, 1, "[{}]", b.name);
        assert_legal(&b, TaskState::Assigned, &change).await;
        let stored = task(&b, t.id).await;
        assert_eq!(stored.attempts.len(), 1, "[{}] an attempt record", b.name);
        let a = &stored.attempts[0];
        assert_eq!(a.attempt, 1, "[{}]", b.name);
        assert_eq!(a.agent_id, "a1", "[{}]", b.name);
        assert_eq!(a.outcome, AttemptOutcome::Running, "[{}]", b.name);
        assert_eq!(a.started_at, to_utc(T0 + 2), "[{}]", b.name);
        assert!(a.ended_at.is_none(), "[{}]", b.name);
        // The lease: lapsed after lease_until, not before.
        assert_eq!(
            b.store.stats(T0 + 30_000).await.expect("stats").past_lease,
            0,
            "[{}] the lease runs until lease_until",
            b.name
        );
        assert_eq!(
            b.store.stats(T0 + 30_001).await.expect("stats").past_lease,
            1,
            "[{}] the lease lapses after lease_until",
            b.name
        );
        // Claimed once: nothing more.
        let again = b
            .store
            .claim("a1", T0 + 3, T0 + 30_000)
            .await
            .expect("claim");
        assert!(again.task.is_none(), "[{}] claimed only once", b.name);
    }
}

#[tokio::test]
async fn cancel_of_a_queued_or_assigned_task_is_at_once() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        let queued = submit(&b, new_task(0), T0).await;
        let c = b
            .store
            .cancel(queued.task.id, operator(), T0 + 1)
            .await
            .expect("cancel");
        assert_eq!(c.task.state, TaskState::Cancelled, "[{}]", b.name);
        assert!(c.task.finished_at.is_some(), "[{}] finished", b.name);
        assert_legal(&b, TaskState::Queued, &c.change).await;

        let assigned = submit(&b, new_task(0), T0).await;
        assert!(assign(&b, seq(&assigned), "a1", T0 + 1).await.is_some());
        let c = b
            .store
            .cancel(assigned.task.id, operator(), T0 + 2)
            .await
            .expect("cancel");
        assert_eq!(c.task.state, TaskState::Cancelled, "[{}]", b.name);
        assert_legal(&b, TaskState::Assigned, &c.change).await;
        assert_eq!(
            c.change.released.as_ref().map(|r| r.agent_id.as_str()),
            Some("a1"),
            "[{}] the agent's slot is freed",
            b.name
        );
        let claimed = b
            .store
            .claim("a1", T0 + 3, T0 + 30_000)
            .await
            .expect("claim");
        assert!(
            claimed.task.is_none(),
            "[{}] a cancelled task is not claimed",
            b.name
        );
        assert!(
            b.store
                .snapshot()
                .await
                .expect("snapshot")
                .active
                .is_empty(),
            "[{}] nothing active",
            b.name
        );
    }
}

#[tokio::test]
async fn cancel_of_a_running_task_asks_the_agent_and_its_end_is_the_cancel() {
    for b in backends().await {
        let t = running(&b, new_task(5), "a1", T0).await;
        let c = b
            .store
            .cancel(t.id, operator(), T0 + 1)
            .await
            .expect("cancel");
        assert_eq!(
            c.task.state,
            TaskState::Running,
            "[{}] still running",
            b.name
        );
        assert!(c.task.cancel_requested, "[{}] cancel_requested", b.name);
        assert_eq!(
            c.change.state,
            TaskState::Running,
            "[{}] no move yet",
            b.name
        );
        assert_eq!(
            c.change.wake_agent.as_deref(),
            Some("a1"),
            "[{}] the agent hears at once",
            b.name
        );
        let hb = b
            .store
            .heartbeat("a1", None, T0 + 60_000, UNLISTED_CAP)
            .await
            .expect("heartbeat");
        assert_eq!(
            hb,
            vec![t.id],
            "[{}] the heartbeat answers the cancel",
            b.name
        );
        let claimed = b
            .store
            .claim("a1", T0 + 2, T0 + 30_000)
            .await
            .expect("claim");
        assert_eq!(
            claimed.cancel,
            vec![t.id],
            "[{}] claim answers the cancel",
            b.name
        );
        // Cancelling twice is still a request, not an error.
        let twice = b
            .store
            .cancel(t.id, operator(), T0 + 3)
            .await
            .expect("cancel again");
        assert!(twice.task.cancel_requested, "[{}]", b.name);

        // The agent stops and reports a (retryable) failure: the end is the cancel.
        let f = b
            .store
            .fail(t.id, 1, "stopped".into(), true, T0 + 4)
            .await
            .expect("fail");
        assert_eq!(
            f.task.state,
            TaskState::Cancelled,
            "[{}] the cancel wins",
            b.name
        );
        assert_legal(&b, TaskState::Running, &f.change).await;
        let stored = task(&b, t.id).await;
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Cancelled,
            "[{}] the attempt ended cancelled",
            b.name
        );
        assert!(stored.finished_at.is_some(), "[{}]", b.name);
    }
}

#[tokio::test]
async fn cancel_of_a_finished_task_is_a_conflict() {
    for b in backends().await {
        let t = running(&b, new_task(0), "a1", T0).await;
        complete(&b, t.id, 1, json!({}), None, T0 + 1).await;
        assert_conflict(
            &b,
            "cancel completed",
            b.store.cancel(t.id, operator(), T0 + 2).await,
        );
        let f = running(&b, new_task(0), "a1", T0).await;
        fail(&b, f.id, 1, "no".into(), false, T0 + 1).await;
        assert_conflict(
            &b,
            "cancel failed",
            b.store.cancel(f.id, operator(), T0 + 2).await,
        );
        let q = submit(&b, new_task(0), T0).await;
        b.store
            .cancel(q.task.id, operator(), T0)
            .await
            .expect("cancel");
        assert_conflict(
            &b,
            "cancel cancelled",
            b.store.cancel(q.task.id, operator(), T0 + 1).await,
        );
        assert_eq!(state(&b, t.id).await, TaskState::Completed, "[{}]", b.name);
        assert_eq!(state(&b, f.id).await, TaskState::Failed, "[{}]", b.name);
        assert_not_found(
            &b,
            "cancel of an unknown task",
            b.store.cancel(Uuid::now_v7(), operator(), T0).await,
        );
    }
}

#[tokio::test]
async fn operator_retry_requeues_failed_and_cancelled_tasks_with_retries_renewed() {
    for b in backends().await {
        // max_retries 1: attempt 1 fails (retry), attempt 2 fails (out of retries).
        let t = running(&b, new_task(1), "a1", T0).await;
        let f = b
            .store
            .fail(t.id, 1, "x".into(), true, T0 + 1)
            .await
            .expect("fail");
        assert_eq!(f.task.state, TaskState::Queued, "[{}]", b.name);
        let due = f
            .change
            .requeued
            .as_ref()
            .expect("requeued")
            .run_after
            .expect("backoff");
        assert!(
            assign(&b, f.change.requeued.as_ref().unwrap().seq, "a1", due)
                .await
                .is_some()
        );
        let c = b.store.claim("a1", due, due + 30_000).await.expect("claim");
        assert_eq!(c.task.expect("claimed").attempt, 2, "[{}]", b.name);
        let f = b
            .store
            .fail(t.id, 2, "x".into(), true, due + 1)
            .await
            .expect("fail");
        assert_eq!(
            f.task.state,
            TaskState::Failed,
            "[{}] retries spent",
            b.name
        );

        let r = b
            .store
            .retry(t.id, operator(), due + 2)
            .await
            .expect("retry");
        assert_eq!(r.task.state, TaskState::Queued, "[{}]", b.name);
        assert!(r.task.error.is_none(), "[{}] the error is cleared", b.name);
        assert!(r.task.run_after.is_none(), "[{}] due at once", b.name);
        assert_legal(&b, TaskState::Failed, &r.change).await;
        let seq3 = r.change.requeued.as_ref().expect("requeued").seq;
        assert!(
            assign(&b, seq3, "a1", due + 3).await.is_some(),
            "[{}]",
            b.name
        );
        let c = b
            .store
            .claim("a1", due + 3, due + 30_000)
            .await
            .expect("claim");
        assert_eq!(c.task.expect("claimed").attempt, 3, "[{}]", b.name);
        let f = b
            .store
            .fail(t.id, 3, "x".into(), true, due + 4)
            .await
            .expect("fail");
        assert_eq!(
            f.task.state,
            TaskState::Queued,
            "[{}] after an operator retry the retries are renewed",
            b.name
        );

        // A cancelled task is retried too, its cancel request forgotten.
        let k = running(&b, new_task(0), "a2", T0).await;
        let c = b
            .store
            .cancel(k.id, operator(), T0 + 1)
            .await
            .expect("cancel");
        assert_eq!(
            c.change.state,
            TaskState::Running,
            "[{}] no move yet",
            b.name
        );
        fail(&b, k.id, 1, "stopped".into(), false, T0 + 2).await;
        let r = b
            .store
            .retry(k.id, operator(), T0 + 3)
            .await
            .expect("retry");
        assert_eq!(r.task.state, TaskState::Queued, "[{}]", b.name);
        assert!(!r.task.cancel_requested, "[{}] the cancel is over", b.name);
        assert_legal(&b, TaskState::Cancelled, &r.change).await;

        // Anything else is a conflict, and nothing changes.
        let q = submit(&b, new_task(0), T0).await;
        assert_conflict(
            &b,
            "retry queued",
            b.store.retry(q.task.id, operator(), T0).await,
        );
        assert_conflict(
            &b,
            "retry the queued retry",
            b.store.retry(k.id, operator(), T0 + 4).await,
        );
        let run = running(&b, new_task(0), "a3", T0).await;
        assert_conflict(
            &b,
            "retry running",
            b.store.retry(run.id, operator(), T0 + 1).await,
        );
        assert_eq!(state(&b, run.id).await, TaskState::Running, "[{}]", b.name);
        complete(&b, run.id, 1, json!({}), None, T0 + 2).await;
        assert_conflict(
            &b,
            "retry completed",
            b.store.retry(run.id, operator(), T0 + 3).await,
        );
        assert_eq!(
            state(&b, run.id).await,
            TaskState::Completed,
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn expire_returns_an_unclaimed_assignment_without_spending_an_attempt() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        let s = submit(&b, new_task(0), T0).await;
        assert!(
            assign(&b, seq(&s), "a1", T0).await.is_some(),
            "[{}]",
            b.name
        );
        let early = b
            .store
            .expire(T0 + RULES.assign_timeout_ms - 1, RULES)
            .await
            .expect("expire");
        assert!(
            early.is_empty(),
            "[{}] not yet past the assign timeout",
            b.name
        );
        let changes = b
            .store
            .expire(T0 + RULES.assign_timeout_ms, RULES)
            .await
            .expect("expire");
        assert_eq!(changes.len(), 1, "[{}] the assignment expired", b.name);
        assert_all_legal(&b, TaskState::Assigned, &changes).await;
        assert!(
            changes[0].requeued.is_some(),
            "[{}] back in the queue",
            b.name
        );
        let stored = task(&b, s.task.id).await;
        assert_eq!(stored.state, TaskState::Queued, "[{}]", b.name);
        assert_eq!(stored.attempt, 0, "[{}] no attempt spent", b.name);
        assert!(stored.agent_id.is_none(), "[{}] unassigned", b.name);
        assert!(stored.attempts.is_empty(), "[{}] no attempt record", b.name);
    }
}

#[tokio::test]
async fn expire_ends_a_running_attempt_whose_lease_lapsed_as_lost() {
    for b in backends().await {
        let t = running(&b, new_task(1), "a1", T0).await;
        // `running` claims with a lease until T0 + 30 s.
        let early = b.store.expire(T0 + 30_000, RULES).await.expect("expire");
        assert!(early.is_empty(), "[{}] the lease has not lapsed", b.name);
        let changes = b.store.expire(T0 + 30_001, RULES).await.expect("expire");
        assert_eq!(changes.len(), 1, "[{}] one lapsed lease", b.name);
        assert_all_legal(&b, TaskState::Running, &changes).await;
        assert_eq!(changes[0].state, TaskState::Queued, "[{}] retried", b.name);
        let stored = task(&b, t.id).await;
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Lost,
            "[{}]",
            b.name
        );
        assert!(stored.attempts[0].ended_at.is_some(), "[{}]", b.name);
        assert!(
            stored.run_after.expect("a backoff") >= to_utc(T0 + 30_001 + 500),
            "[{}] retried after the backoff",
            b.name
        );
    }
}

#[tokio::test]
async fn expire_ends_an_attempt_past_its_timeout_as_timed_out() {
    for b in backends().await {
        let mut slow = new_task(0);
        slow.timeout_s = Some(5);
        let t = running(&b, slow, "a1", T0).await;
        let early = b.store.expire(T0 + 4_999, RULES).await.expect("expire");
        assert!(early.is_empty(), "[{}] within its timeout", b.name);
        let changes = b.store.expire(T0 + 5_000, RULES).await.expect("expire");
        assert_eq!(changes.len(), 1, "[{}] timed out", b.name);
        assert_all_legal(&b, TaskState::Running, &changes).await;
        assert_eq!(
            changes[0].state,
            TaskState::Failed,
            "[{}] no retries left: failed",
            b.name
        );
        let stored = task(&b, t.id).await;
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::TimedOut,
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn prune_deletes_old_finished_tasks_with_their_logs_and_keeps_the_rest() {
    for b in backends().await {
        let old = running(&b, new_task(0), "a1", T0).await;
        b.store
            .append_logs(old.id, logs(1, &["one", "two"]), u64::MAX, T0 + 1)
            .await
            .expect("logs");
        complete(&b, old.id, 1, json!({}), None, T0 + 10).await;
        let newer = running(&b, new_task(0), "a1", T0).await;
        b.store
            .append_logs(newer.id, logs(1, &["kept"]), u64::MAX, T0 + 1)
            .await
            .expect("logs");
        complete(&b, newer.id, 1, json!({}), None, T0 + 1_000).await;
        let unfinished = submit(&b, new_task(0), T0).await;
        let live = running(&b, new_task(0), "a1", T0).await;

        let pruned = b.store.prune(T0 + 500).await.expect("prune");
        assert_eq!(pruned.tasks, 1, "[{}] one old finished task", b.name);
        assert_eq!(pruned.log_lines, 2, "[{}] with its two lines", b.name);
        assert_not_found(&b, "the pruned task", b.store.task(old.id).await);
        assert_not_found(
            &b,
            "the pruned task's logs",
            b.store.logs(old.id, 0, 10).await,
        );
        assert_eq!(
            b.store.logs(newer.id, 0, 10).await.expect("logs").len(),
            1,
            "[{}] a newer task keeps its logs",
            b.name
        );
        assert_eq!(
            state(&b, newer.id).await,
            TaskState::Completed,
            "[{}]",
            b.name
        );
        assert_eq!(
            state(&b, unfinished.task.id).await,
            TaskState::Queued,
            "[{}]",
            b.name
        );
        assert_eq!(state(&b, live.id).await, TaskState::Running, "[{}]", b.name);
        let again = b.store.prune(T0 + 500).await.expect("prune");
        assert_eq!(again.tasks, 0, "[{}] nothing more to prune", b.name);
    }
}

#[tokio::test]
async fn each_attempt_keeps_the_assignment_it_ran_under() {
    for b in backends().await {
        let task = running(&b, new_task(1), "a1", T0).await;
        fail(&b, task.id, 1, "flaky".into(), true, T0 + 1).await;
        b.store
            .register_agent(registration("a2", Some("i1")), T0 + 2)
            .await
            .expect("register");
        let seq = b.store.queued(0, 10).await.unwrap()[0].seq;
        assign(&b, seq, "a2", T0 + 5_000)
            .await
            .expect("assigned again");
        let shown = b.store.task(task.id).await.unwrap();
        let agents = |t: &Task| -> Vec<String> {
            t.attempts
                .iter()
                .map(|a| {
                    a.assignment
                        .as_ref()
                        .expect("an assignment")
                        .agent_id
                        .clone()
                })
                .collect()
        };
        assert_eq!(
            agents(&shown),
            ["a1"],
            "[{}] assigned, not yet claimed",
            b.name
        );
        assert_eq!(
            shown.assignment.as_ref().unwrap().agent_id,
            "a2",
            "[{}]",
            b.name
        );
        b.store
            .claim("a2", T0 + 5_001, T0 + 65_000)
            .await
            .expect("claim");
        let shown = b.store.task(task.id).await.unwrap();
        assert_eq!(agents(&shown), ["a1", "a2"], "[{}]", b.name);
    }
}
