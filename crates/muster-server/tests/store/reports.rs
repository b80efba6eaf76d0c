//! An agent's reports against every backend: logs, completion and failure, accepted only for
//! the running attempt; what a failure leads to.

use muster_api::{AttemptOutcome, TaskState};
use muster_server::store::Released;
use serde_json::json;

use crate::*;

#[tokio::test]
async fn reports_for_a_stale_attempt_are_conflicts_and_change_nothing() {
    for b in backends().await {
        // Attempt 1 is lost; attempt 2 runs. Reports for attempt 1 (and 3) are refused.
        let t = running(&b, new_task(3), "a1", T0).await;
        let lost = b.store.agent_offline("a1", T0 + 1).await.expect("offline");
        assert_all_legal(&b, TaskState::Running, &lost).await;
        b.store.agent_back("a1", T0 + 2).await.expect("back");
        let requeued = lost[0].requeued.as_ref().expect("requeued");
        let due = requeued.run_after.expect("a backoff");
        assert!(
            assign(&b, requeued.seq, "a1", due).await.is_some(),
            "[{}]",
            b.name
        );
        let c = b.store.claim("a1", due, due + 30_000).await.expect("claim");
        assert_eq!(c.task.expect("claimed").attempt, 2, "[{}]", b.name);
        let before = task(&b, t.id).await;

        for stale in [1, 3] {
            assert_conflict(
                &b,
                &format!("logs of attempt {stale}"),
                b.store
                    .append_logs(t.id, logs(stale, &["late"]), u64::MAX, due + 1)
                    .await,
            );
            assert_conflict(
                &b,
                &format!("complete attempt {stale}"),
                b.store
                    .complete(t.id, stale, json!({"late": true}), None, due + 1)
                    .await,
            );
            for retryable in [true, false] {
                assert_conflict(
                    &b,
                    &format!("fail attempt {stale}"),
                    b.store
                        .fail(t.id, stale, "late".into(), retryable, due + 1)
                        .await,
                );
            }
        }
        let after = task(&b, t.id).await;
        assert_eq!(
            after.state,
            TaskState::Running,
            "[{}] still running",
            b.name
        );
        assert_eq!(after.attempt, 2, "[{}] still attempt 2", b.name);
        assert!(after.result.is_none(), "[{}] no result stored", b.name);
        assert_eq!(after.error, before.error, "[{}] no error stored", b.name);
        assert_eq!(
            after.updated_at, before.updated_at,
            "[{}] untouched",
            b.name
        );
        assert_eq!(
            after.attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
            vec![AttemptOutcome::Lost, AttemptOutcome::Running],
            "[{}] the attempt records are untouched",
            b.name
        );
        assert!(
            b.store.logs(t.id, 0, 10).await.expect("logs").is_empty(),
            "[{}] no stale log line stored",
            b.name
        );

        // A finished task refuses every report too.
        complete(&b, t.id, 2, json!({"ok": true}), None, due + 2).await;
        assert_conflict(
            &b,
            "logs after completion",
            b.store
                .append_logs(t.id, logs(2, &["after"]), u64::MAX, due + 3)
                .await,
        );
        assert_conflict(
            &b,
            "complete twice",
            b.store.complete(t.id, 2, json!({}), None, due + 3).await,
        );
        assert_conflict(
            &b,
            "fail after completion",
            b.store.fail(t.id, 2, "x".into(), true, due + 3).await,
        );
        assert_eq!(
            task(&b, t.id).await.result,
            Some(json!({"ok": true})),
            "[{}] the first completion stands",
            b.name
        );
    }
}

#[tokio::test]
async fn logs_of_the_running_attempt_are_stored() {
    for b in backends().await {
        let t = running(&b, new_task(0), "a1", T0).await;
        let n = b
            .store
            .append_logs(t.id, logs(1, &["a", "b"]), u64::MAX, T0 + 1)
            .await
            .expect("logs");
        assert_eq!(n, 2, "[{}] two lines accepted", b.name);
        let lines = b.store.logs(t.id, 0, 10).await.expect("logs");
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"],
            "[{}]",
            b.name
        );
        assert!(lines.iter().all(|l| l.attempt == 1), "[{}]", b.name);
    }
}

#[tokio::test]
async fn logs_past_the_limit_are_dropped_and_counted_in_one_last_line() {
    for b in backends().await {
        let t = running(&b, new_task(0), "a1", T0).await;
        // Ten bytes allowed: "aaaa" and "bbbb" fit, "cccc" would not, so it and every later
        // line are dropped, "d" included.
        let n = b
            .store
            .append_logs(t.id, logs(1, &["aaaa", "bbbb", "cccc", "d"]), 10, T0 + 1)
            .await
            .expect("logs");
        assert_eq!(n, 2, "[{}] two lines stored", b.name);
        let n = b
            .store
            .append_logs(t.id, logs(1, &["e"]), 10, T0 + 2)
            .await
            .expect("logs");
        assert_eq!(n, 0, "[{}] nothing more stored", b.name);
        let lines = b.store.logs(t.id, 0, 10).await.expect("logs");
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts.len(), 3, "[{}] {texts:?}", b.name);
        assert_eq!(texts[..2], ["aaaa", "bbbb"], "[{}]", b.name);
        assert!(
            texts[2].starts_with("3 lines dropped"),
            "[{}] one marker, last, with the count: {texts:?}",
            b.name
        );
        assert_eq!(
            lines[2].stream,
            muster_api::LogStream::System,
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn complete_stores_the_result_and_frees_the_agent_and_lock() {
    for b in backends().await {
        let mut locked = new_task(0);
        locked.lock_key = Some("repo".into());
        let t = running(&b, locked, "a1", T0).await;
        let active = b.store.snapshot().await.expect("snapshot").active;
        assert_eq!(
            active,
            vec![Released {
                agent_id: "a1".into(),
                lock_key: Some("repo".into())
            }],
            "[{}] the running task holds the agent and the lock",
            b.name
        );
        let done = b
            .store
            .complete(
                t.id,
                1,
                json!({"ok": 1}),
                Some(json!({"tokens": 3})),
                T0 + 5,
            )
            .await
            .expect("complete");
        assert_legal(&b, TaskState::Running, &done.change).await;
        assert_eq!(done.task.state, TaskState::Completed, "[{}]", b.name);
        assert_eq!(
            done.change.released,
            Some(Released {
                agent_id: "a1".into(),
                lock_key: Some("repo".into())
            }),
            "[{}] the agent's slot and the lock are released",
            b.name
        );
        let stored = task(&b, t.id).await;
        assert_eq!(stored.result, Some(json!({"ok": 1})), "[{}]", b.name);
        assert_eq!(stored.usage, Some(json!({"tokens": 3})), "[{}]", b.name);
        assert_eq!(stored.finished_at, Some(to_utc(T0 + 5)), "[{}]", b.name);
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Completed,
            "[{}]",
            b.name
        );
        assert!(
            b.store
                .snapshot()
                .await
                .expect("snapshot")
                .active
                .is_empty(),
            "[{}] nothing holds the agent or the lock any more",
            b.name
        );
    }
}

#[tokio::test]
async fn a_retryable_failure_is_retried_after_a_backoff_while_retries_remain() {
    for b in backends().await {
        let t = running(&b, new_task(1), "a1", T0).await;
        let now = T0 + 100;
        let f = b
            .store
            .fail(t.id, 1, "flaky".into(), true, now)
            .await
            .expect("fail");
        assert_legal(&b, TaskState::Running, &f.change).await;
        assert_eq!(f.task.state, TaskState::Queued, "[{}] retried", b.name);
        assert!(
            f.change.released.is_some(),
            "[{}] the agent is freed",
            b.name
        );
        let run_after = f.change.requeued.as_ref().expect("requeued").run_after;
        let run_after = run_after.expect("a backoff");
        // First retry: base 1000 ms × jitter in [0.5, 1.5).
        assert!(
            (now + 500..now + 1500).contains(&run_after),
            "[{}] run_after {run_after} is now + backoff·[0.5, 1.5)",
            b.name
        );
        let stored = task(&b, t.id).await;
        assert_eq!(stored.run_after, Some(to_utc(run_after)), "[{}]", b.name);
        assert!(stored.agent_id.is_none(), "[{}] no agent", b.name);
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Failed,
            "[{}]",
            b.name
        );
        // Not due before its run_after.
        assert_eq!(
            assign(
                &b,
                f.change.requeued.as_ref().unwrap().seq,
                "a1",
                run_after - 1
            )
            .await,
            None,
            "[{}] the retry waits for its backoff",
            b.name
        );

        // The second attempt fails too: retries exhausted, failed for good.
        assert!(
            assign(&b, f.change.requeued.as_ref().unwrap().seq, "a1", run_after)
                .await
                .is_some()
        );
        let c = b
            .store
            .claim("a1", run_after, run_after + 30_000)
            .await
            .expect("claim");
        assert_eq!(c.task.expect("claimed").attempt, 2, "[{}]", b.name);
        let f = b
            .store
            .fail(t.id, 2, "flaky".into(), true, run_after + 1)
            .await
            .expect("fail");
        assert_legal(&b, TaskState::Running, &f.change).await;
        assert_eq!(
            f.task.state,
            TaskState::Failed,
            "[{}] retries spent",
            b.name
        );
        assert_eq!(f.task.error.as_deref(), Some("flaky"), "[{}]", b.name);
        assert!(f.task.finished_at.is_some(), "[{}]", b.name);
        assert!(f.change.requeued.is_none(), "[{}] not queued", b.name);
    }
}

#[tokio::test]
async fn a_permanent_failure_fails_the_task_at_once() {
    for b in backends().await {
        let t = running(&b, new_task(5), "a1", T0).await;
        let f = b
            .store
            .fail(t.id, 1, "bad input".into(), false, T0 + 1)
            .await
            .expect("fail");
        assert_legal(&b, TaskState::Running, &f.change).await;
        assert_eq!(f.task.state, TaskState::Failed, "[{}]", b.name);
        assert!(
            f.change.released.is_some(),
            "[{}] the agent is freed",
            b.name
        );
        let stored = task(&b, t.id).await;
        assert_eq!(stored.error.as_deref(), Some("bad input"), "[{}]", b.name);
        assert_eq!(
            stored.attempts[0].outcome,
            AttemptOutcome::Failed,
            "[{}]",
            b.name
        );
    }
}
