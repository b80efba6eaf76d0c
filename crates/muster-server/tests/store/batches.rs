//! Batches against every backend: a claim of many tasks, many reports and many submissions,
//! each one store operation in which every item is judged alone.

use muster_api::{AttemptOutcome, TaskState};
use muster_server::store::{AttemptEnd, AttemptReport, Change, ExpiryRules};
use serde_json::json;
use uuid::Uuid;

use crate::*;

fn completed(task_id: Uuid, attempt: u32, n: i64) -> AttemptReport {
    AttemptReport {
        task_id,
        attempt,
        end: AttemptEnd::Completed {
            result: json!({"n": n}),
            usage: Some(json!({"tokens": n})),
        },
    }
}

fn failed(task_id: Uuid, attempt: u32, retryable: bool) -> AttemptReport {
    AttemptReport {
        task_id,
        attempt,
        end: AttemptEnd::Failed {
            error: format!("boom {task_id}"),
            retryable,
        },
    }
}

/// A queued task of `priority`, assigned to `agent_id`; answers its id.
async fn assigned(b: &Backend, priority: i32, agent_id: &str, now: i64) -> Uuid {
    let mut t = new_task(0);
    t.priority = priority;
    let s = submit(b, t, now).await;
    assert!(
        assign(b, seq(&s), agent_id, now).await.is_some(),
        "[{}] assigned",
        b.name
    );
    s.task.id
}

#[tokio::test]
async fn a_batch_claim_takes_up_to_max_of_the_agents_tasks_highest_priority_first() {
    for b in backends().await {
        for agent in ["a1", "a2", "a3"] {
            b.store
                .register_agent(registration(agent, Some("i1")), T0)
                .await
                .expect("register");
        }
        // Submitted in this order; claimed by priority, then age.
        let mut ids = Vec::new();
        for priority in [0, 5, 1, 5, -1] {
            ids.push(assigned(&b, priority, "a1", T0).await);
        }
        let other = assigned(&b, 9, "a2", T0).await;

        let now = T0 + 1;
        let lease = now + 30_000;
        let batch = b
            .store
            .claim_many("a1", 3, now, lease)
            .await
            .expect("claim_many");
        let got: Vec<Uuid> = batch.tasks.iter().map(|t| t.id).collect();
        assert_eq!(
            got,
            vec![ids[1], ids[3], ids[2]],
            "[{}] the three of highest priority, the older first among equals",
            b.name
        );
        assert_eq!(
            batch.changes.iter().map(|c| c.task_id).collect::<Vec<_>>(),
            got,
            "[{}] one change per task, in order",
            b.name
        );
        assert_all_legal(&b, TaskState::Assigned, &batch.changes).await;
        for (t, change) in batch.tasks.iter().zip(&batch.changes) {
            assert_eq!(t.state, TaskState::Running, "[{}]", b.name);
            assert_eq!(t.attempt, 1, "[{}] a first attempt", b.name);
            assert_eq!(t.agent_id.as_deref(), Some("a1"), "[{}]", b.name);
            assert_eq!(
                (change.state, change.attempt, change.agent_id.as_deref()),
                (TaskState::Running, 1, Some("a1")),
                "[{}]",
                b.name
            );
            let stored = task(&b, t.id).await;
            assert_eq!(stored.attempts.len(), 1, "[{}] its attempt", b.name);
            let attempt = &stored.attempts[0];
            assert_eq!(
                (
                    attempt.attempt,
                    attempt.agent_id.as_str(),
                    attempt.outcome,
                    attempt.started_at.timestamp_millis()
                ),
                (1, "a1", AttemptOutcome::Running, now),
                "[{}] the attempt is recorded",
                b.name
            );
        }
        // Each got the lease: none lapsed at its end, all three just after.
        assert_eq!(
            b.store.stats(lease).await.expect("stats").past_lease,
            0,
            "[{}]",
            b.name
        );
        assert_eq!(
            b.store.stats(lease + 1).await.expect("stats").past_lease,
            3,
            "[{}] the three leases end at lease_until",
            b.name
        );
        let lost = b
            .store
            .expire(
                lease + 1,
                ExpiryRules {
                    assign_timeout_ms: i64::MAX / 2,
                },
            )
            .await
            .expect("expire");
        let mut lost_ids: Vec<Uuid> = lost.iter().map(|c| c.task_id).collect();
        lost_ids.sort();
        let mut claimed = got.clone();
        claimed.sort();
        assert_eq!(lost_ids, claimed, "[{}] the leases are theirs", b.name);

        // Nothing of another agent's: a2's task stays assigned, a3 has nothing.
        assert_eq!(state(&b, other).await, TaskState::Assigned, "[{}]", b.name);
        let none = b
            .store
            .claim_many("a3", 10, now, lease)
            .await
            .expect("claim_many");
        assert!(
            none.tasks.is_empty() && none.changes.is_empty(),
            "[{}] an agent with nothing assigned claims nothing",
            b.name
        );
        // The rest, fewer than asked for, then nothing.
        let rest = b
            .store
            .claim_many("a1", 10, now, lease)
            .await
            .expect("claim_many");
        assert_eq!(
            rest.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids[0], ids[4]],
            "[{}]",
            b.name
        );
        let empty = b
            .store
            .claim_many("a1", 10, now, lease)
            .await
            .expect("claim_many");
        assert!(empty.tasks.is_empty(), "[{}] claimed once", b.name);
        let theirs = b
            .store
            .claim_many("a2", 10, now, lease)
            .await
            .expect("claim_many");
        assert_eq!(
            theirs.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![other],
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn a_batch_claim_answers_the_tasks_to_cancel() {
    for b in backends().await {
        let t = running(&b, new_task(0), "a1", T0).await;
        b.store
            .cancel(t.id, operator(), T0 + 1)
            .await
            .expect("cancel");
        let batch = b
            .store
            .claim_many("a1", 5, T0 + 2, T0 + 30_000)
            .await
            .expect("claim_many");
        assert!(batch.tasks.is_empty(), "[{}]", b.name);
        assert_eq!(batch.cancel, vec![t.id], "[{}] stop it", b.name);
    }
}

#[tokio::test]
async fn a_batch_of_reports_is_judged_report_by_report() {
    for b in backends().await {
        let done = running(&b, new_task(0), "a1", T0).await;
        let stale = running(&b, new_task(0), "a1", T0).await;
        let mut retried = new_task(2);
        retried.kind = "retried".into();
        let retried = running(&b, retried, "a1", T0).await;
        let given_up = running(&b, new_task(2), "a1", T0).await;
        let unknown = Uuid::now_v7();
        let stale_before = task(&b, stale.id).await;

        let now = T0 + 10;
        let answers = b
            .store
            .report_many(
                vec![
                    completed(done.id, 1, 7),
                    completed(stale.id, 2, 8),
                    failed(retried.id, 1, true),
                    failed(given_up.id, 1, false),
                    completed(unknown, 1, 9),
                    // Judged after the first report of the batch, which finished the task.
                    completed(done.id, 1, 10),
                ],
                now,
            )
            .await
            .expect("report_many");
        assert_eq!(answers.len(), 6, "[{}] one answer per report", b.name);
        let change = |i: usize| -> &Change {
            answers[i]
                .as_ref()
                .unwrap_or_else(|e| panic!("[{}] report {i} applied: {e:?}", b.name))
        };
        for i in [0, 2, 3] {
            assert_legal(&b, TaskState::Running, change(i)).await;
        }
        assert_eq!(change(0).state, TaskState::Completed, "[{}]", b.name);
        assert_eq!(
            change(2).state,
            TaskState::Queued,
            "[{}] retries remain",
            b.name
        );
        assert!(change(2).requeued.is_some(), "[{}] requeued", b.name);
        assert_eq!(
            change(3).state,
            TaskState::Failed,
            "[{}] not retryable",
            b.name
        );
        for i in [0, 2, 3] {
            assert!(
                change(i).released.is_some(),
                "[{}] report {i} frees the agent's slot",
                b.name
            );
        }
        assert_conflict(&b, "a stale attempt", answers[1].clone());
        assert_not_found(&b, "an unknown task", answers[4].clone());
        assert_conflict(&b, "a second report of one attempt", answers[5].clone());

        let d = task(&b, done.id).await;
        assert_eq!(
            (d.state, d.result, d.usage),
            (
                TaskState::Completed,
                Some(json!({"n": 7})),
                Some(json!({"tokens": 7}))
            ),
            "[{}] the first report of the attempt stands",
            b.name
        );
        assert_eq!(
            d.attempts[0].outcome,
            AttemptOutcome::Completed,
            "[{}]",
            b.name
        );
        // The stale report changed nothing.
        let s = task(&b, stale.id).await;
        assert_eq!(
            (s.state, s.attempt, s.result, s.updated_at),
            (TaskState::Running, 1, None, stale_before.updated_at),
            "[{}] untouched",
            b.name
        );
        let g = task(&b, given_up.id).await;
        assert_eq!(g.state, TaskState::Failed, "[{}]", b.name);
        assert_eq!(
            g.error.as_deref(),
            Some(format!("boom {}", given_up.id).as_str()),
            "[{}]",
            b.name
        );

        // The retry runs as a second attempt once its backoff is over.
        let r = task(&b, retried.id).await;
        assert_eq!(
            (r.state, r.attempts[0].outcome),
            (TaskState::Queued, AttemptOutcome::Failed),
            "[{}]",
            b.name
        );
        let queued = change(2).requeued.clone().expect("requeued");
        let due = queued.run_after.expect("a backoff");
        assert!(
            assign(&b, queued.seq, "a1", due).await.is_some(),
            "[{}] assigned again",
            b.name
        );
        let again = b
            .store
            .claim_many("a1", 5, due, due + 30_000)
            .await
            .expect("claim_many");
        assert_eq!(
            again
                .tasks
                .iter()
                .map(|t| (t.id, t.attempt))
                .collect::<Vec<_>>(),
            vec![(retried.id, 2)],
            "[{}]",
            b.name
        );
        let last = b
            .store
            .report_many(
                vec![completed(retried.id, 2, 1), completed(stale.id, 1, 2)],
                due + 1,
            )
            .await
            .expect("report_many");
        assert!(
            last.iter().all(Result::is_ok),
            "[{}] both current: {last:?}",
            b.name
        );
        assert_eq!(
            state(&b, retried.id).await,
            TaskState::Completed,
            "[{}]",
            b.name
        );
        assert_eq!(
            state(&b, stale.id).await,
            TaskState::Completed,
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn a_batch_submit_keeps_idempotency_within_and_across_batches() {
    for b in backends().await {
        let keyed = |key: Option<&str>, n: i64| {
            let mut t = new_task(0);
            t.idempotency_key = key.map(str::to_owned);
            t.payload = json!({"n": n});
            t
        };
        let repeat = keyed(Some("k1"), 3);
        let repeat_id = repeat.id;
        let answers = b
            .store
            .submit_many(
                vec![
                    keyed(Some("k1"), 1),
                    keyed(None, 2),
                    repeat,
                    keyed(Some("k2"), 4),
                ],
                T0,
            )
            .await
            .expect("submit_many");
        let submitted: Vec<_> = answers.into_iter().map(|a| a.expect("stored")).collect();
        assert_eq!(
            submitted.iter().map(|s| s.created).collect::<Vec<_>>(),
            vec![true, true, false, true],
            "[{}] the repeated key inside the batch names the first",
            b.name
        );
        assert_eq!(
            submitted[2].task.id, submitted[0].task.id,
            "[{}] the first task answers for its key",
            b.name
        );
        assert_eq!(
            submitted[2].task.payload,
            json!({"n": 1}),
            "[{}] with its own fields",
            b.name
        );
        assert!(
            submitted[2].change.is_none(),
            "[{}] nothing changed",
            b.name
        );
        assert_not_found(
            &b,
            "the repeat was not stored",
            b.store.task(repeat_id).await,
        );
        for s in [&submitted[0], &submitted[1], &submitted[3]] {
            let change = s.change.as_ref().expect("a new task enters the queue");
            assert!(
                change.submitted && change.requeued.is_some(),
                "[{}]",
                b.name
            );
            assert_eq!(
                state(&b, s.task.id).await,
                TaskState::Queued,
                "[{}]",
                b.name
            );
        }
        let queue = b.store.queued(0, 10).await.expect("queued");
        assert_eq!(
            queue.len(),
            3,
            "[{}] three tasks queued, in submit order",
            b.name
        );
        assert!(
            queue.windows(2).all(|w| w[0].seq < w[1].seq),
            "[{}]",
            b.name
        );

        // Across batches, and across the single and batch verbs.
        let again = b
            .store
            .submit_many(vec![keyed(Some("k1"), 5), keyed(Some("k3"), 6)], T0 + 1)
            .await
            .expect("submit_many");
        let again: Vec<_> = again.into_iter().map(|a| a.expect("stored")).collect();
        assert_eq!(
            (again[0].created, again[0].task.id),
            (false, submitted[0].task.id),
            "[{}]",
            b.name
        );
        assert!(again[1].created, "[{}] a new key is a new task", b.name);
        let single = b
            .store
            .submit(keyed(Some("k3"), 7), T0 + 2)
            .await
            .expect("submit");
        assert_eq!(
            (single.created, single.task.id),
            (false, again[1].task.id),
            "[{}]",
            b.name
        );
        let empty = b.store.submit_many(Vec::new(), T0 + 3).await;
        assert!(empty.expect("an empty batch").is_empty(), "[{}]", b.name);
    }
}

#[tokio::test]
async fn batches_survive_close_and_reopen() {
    for b in backends().await {
        let t = running(&b, new_task(0), "a1", T0).await;
        let mut keyed = new_task(0);
        keyed.idempotency_key = Some("kept".into());
        let stored = b
            .store
            .submit_many(vec![keyed], T0 + 1)
            .await
            .expect("submit_many");
        let queued = stored[0].as_ref().expect("stored").task.id;
        let reported = b
            .store
            .report_many(vec![completed(t.id, 1, 1)], T0 + 2)
            .await
            .expect("report_many");
        assert!(reported[0].is_ok(), "[{}]", b.name);
        b.store.close().await;

        let store = (b.reopen)().await;
        assert_eq!(
            store.task(t.id).await.expect("task").state,
            TaskState::Completed,
            "[{}] the report was committed",
            b.name
        );
        let mut dup = new_task(0);
        dup.idempotency_key = Some("kept".into());
        let dup = store.submit(dup, T0 + 3).await.expect("submit");
        assert_eq!(
            (dup.created, dup.task.id),
            (false, queued),
            "[{}] the batch's task and key were committed",
            b.name
        );
        store.close().await;
    }
}
