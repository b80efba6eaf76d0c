//! GitOps deployments against every backend: a push recorded with its tasks in one
//! transaction, a redelivery answering the first, the state read from the tasks, a check
//! before the real run, pauses that hold and resumes that release in push order, redeploys,
//! and the commit statuses and notices a deployment's end writes.

use muster_api::{DeploymentState, PauseScope, PlannedRule, RuleOutcome, SubmitTask, TaskState};
use muster_server::notice::Notice;
use muster_server::store::{DeploymentFilter, Lane, NewDeployment, PauseOrder, Topic};
use serde_json::json;
use uuid::Uuid;

use crate::*;

fn rule_task(playbook: &str) -> SubmitTask {
    serde_json::from_value(json!({
        "kind": "ansible",
        "payload": {"playbook": playbook},
        "lock_key": format!("deploy:ops/homelab:{playbook}"),
        "max_retries": 0,
    }))
    .unwrap()
}

fn planned(rule: &str, outcome: RuleOutcome, task: Option<SubmitTask>) -> PlannedRule {
    PlannedRule {
        rule: rule.into(),
        outcome,
        why: None,
        matched: Vec::new(),
        excluded: Vec::new(),
        fallback: false,
        kind: task.as_ref().map(|t| t.kind.clone()),
        lock_key: task.as_ref().and_then(|t| t.lock_key.clone()),
        task,
        check_task: None,
        held: false,
        check_task_id: None,
        check_task_state: None,
        task_id: None,
        task_state: None,
    }
}

fn push(delivery: &str, repo: &str) -> NewDeployment {
    NewDeployment {
        id: Uuid::now_v7(),
        source: "infra".into(),
        delivery: delivery.into(),
        repo: repo.into(),
        clone_url: Some(format!("https://git.home/{repo}.git")),
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        before: "0".repeat(40),
        sha: "a".repeat(40),
        author: "Ada".into(),
        message: "media: new port".into(),
        changed: vec!["ansible/media/site.yml".into()],
        complete: true,
        statuses: true,
        rules: vec![
            planned("media", RuleOutcome::Matched, Some(rule_task("media.yml"))),
            planned("dns", RuleOutcome::Skipped, None),
        ],
    }
}

/// A push whose one rule checks first.
fn checked_push(delivery: &str) -> NewDeployment {
    let mut new = push(delivery, "ops/homelab");
    let mut check = rule_task("media.yml");
    check.payload["check"] = json!(true);
    new.rules[0].check_task = Some(check);
    new
}

/// The undelivered rows of `topic`, oldest first.
async fn outbox_rows(b: &Backend, topic: Topic) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for lane in [Lane::Local, Lane::Remote] {
        rows.extend(
            b.store
                .due_outbox(i64::MAX, 10_000, lane)
                .await
                .expect("due outbox")
                .into_iter()
                .filter(|row| row.topic == topic.as_str())
                .map(|row| row.payload),
        );
    }
    rows
}

/// Registers an agent (once) and runs the queued task `id` on it; answers the attempt.
async fn run(b: &Backend, id: Uuid, seq: i64, now: i64) -> u32 {
    if b.store.agent("a1").await.is_err() {
        b.store
            .register_agent(registration("a1", Some("i1")), now)
            .await
            .expect("register");
    }
    assign(b, seq, "a1", now).await.expect("assigned");
    let claimed = b.store.claim("a1", now, now + 30_000).await.expect("claim");
    let task = claimed.task.expect("claimed");
    assert_eq!(task.id, id, "[{}] the task claimed", b.name);
    task.attempt
}

fn seq_of(change: &muster_server::store::Change) -> i64 {
    change.requeued.as_ref().expect("queued").seq
}

#[tokio::test]
async fn a_push_is_recorded_with_its_tasks_and_a_redelivery_answers_the_first() {
    for b in backends().await {
        let first = b
            .store
            .record_deployment(push("d-1", "ops/homelab"), T0)
            .await
            .expect("record");
        assert!(first.created, "[{}]", b.name);
        assert_eq!(first.changes.len(), 1, "[{}] one task queued", b.name);
        let d = &first.deployment;
        assert_eq!(d.state, DeploymentState::Pending, "[{}]", b.name);
        let task_id = d.rules[0].task_id.expect("the matched rule's task");
        assert_eq!(
            d.rules[0].task_state,
            Some(TaskState::Queued),
            "[{}]",
            b.name
        );
        assert_eq!(
            d.rules[1].task_id, None,
            "[{}] a skipped rule submits none",
            b.name
        );
        let stored = task(&b, task_id).await;
        assert_eq!(
            stored.lock_key.as_deref(),
            Some("deploy:ops/homelab:media.yml")
        );

        let again = b
            .store
            .record_deployment(push("d-1", "ops/homelab"), T0 + 5)
            .await
            .expect("record again");
        assert!(!again.created, "[{}] a redelivery", b.name);
        assert!(again.changes.is_empty(), "[{}] submits nothing", b.name);
        assert_eq!(
            again.deployment.id, d.id,
            "[{}] the first deployment",
            b.name
        );
        let page = b
            .store
            .tasks(muster_server::store::TaskFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("tasks");
        assert_eq!(page.tasks.len(), 1, "[{}] one task in all", b.name);
    }
}

#[tokio::test]
async fn a_deployments_state_follows_its_tasks_and_the_list_pages_newest_first() {
    for b in backends().await {
        let first = b
            .store
            .record_deployment(push("d-1", "ops/homelab"), T0)
            .await
            .expect("record");
        let task_id = first.deployment.rules[0].task_id.unwrap();
        let seq = first.changes[0].requeued.as_ref().unwrap().seq;
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        assign(&b, seq, "a1", T0 + 1).await.expect("assigned");
        let running = b
            .store
            .claim("a1", T0 + 2, T0 + 30_000)
            .await
            .expect("claim");
        assert_eq!(running.task.unwrap().id, task_id);
        let read = |id| {
            let store = b.store.clone();
            async move { store.deployment(id).await.expect("deployment").state }
        };
        assert_eq!(
            read(first.deployment.id).await,
            DeploymentState::Running,
            "[{}]",
            b.name
        );
        fail(&b, task_id, 1, "playbook failed".into(), false, T0 + 3).await;
        assert_eq!(
            read(first.deployment.id).await,
            DeploymentState::Failed,
            "[{}]",
            b.name
        );

        let second = b
            .store
            .record_deployment(push("d-2", "ops/other"), T0 + 10)
            .await
            .expect("record");
        let all = b
            .store
            .deployments(DeploymentFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        let ids: Vec<Uuid> = all.iter().map(|d| d.id).collect();
        assert_eq!(
            ids,
            vec![second.deployment.id, first.deployment.id],
            "[{}]",
            b.name
        );
        let older = b
            .store
            .deployments(DeploymentFilter {
                limit: 10,
                before: Some(second.deployment.id),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(older.len(), 1, "[{}]", b.name);
        let by_repo = b
            .store
            .deployments(DeploymentFilter {
                limit: 10,
                repo: Some("ops/other".into()),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(by_repo.len(), 1, "[{}]", b.name);
        assert_eq!(by_repo[0].id, second.deployment.id, "[{}]", b.name);
        assert_not_found(
            &b,
            "an unknown deployment",
            b.store.deployment(Uuid::now_v7()).await,
        );
    }
}

#[tokio::test]
async fn retention_prunes_old_deployments_whose_tasks_all_ended_and_keeps_one_at_work() {
    for b in backends().await {
        let done = b
            .store
            .record_deployment(push("d-1", "ops/homelab"), T0)
            .await
            .expect("record");
        let working = b
            .store
            .record_deployment(push("d-2", "ops/homelab"), T0)
            .await
            .expect("record");
        let task_id = done.deployment.rules[0].task_id.unwrap();
        b.store
            .cancel(task_id, operator(), T0 + 1)
            .await
            .expect("cancel");
        assert_eq!(
            b.store.prune_deployments(T0).await.expect("prune"),
            0,
            "[{}] nothing is older than the cutoff",
            b.name
        );
        assert_eq!(
            b.store.prune_deployments(T0 + 10).await.expect("prune"),
            1,
            "[{}] the ended one goes",
            b.name
        );
        assert_not_found(
            &b,
            "a pruned deployment",
            b.store.deployment(done.deployment.id).await,
        );
        let kept = b
            .store
            .deployment(working.deployment.id)
            .await
            .expect("kept");
        assert_eq!(
            kept.state,
            DeploymentState::Pending,
            "[{}] still queued: kept",
            b.name
        );
    }
}

#[tokio::test]
async fn a_check_first_rule_submits_its_real_run_only_once_the_check_completed() {
    for b in backends().await {
        let first = b
            .store
            .record_deployment(checked_push("d-1"), T0)
            .await
            .expect("record");
        let d = &first.deployment;
        let check_id = d.rules[0].check_task_id.expect("the check is submitted");
        assert_eq!(d.rules[0].task_id, None, "[{}] the real run waits", b.name);
        assert_eq!(first.changes.len(), 1, "[{}] only the check", b.name);
        assert_eq!(task(&b, check_id).await.payload["check"], json!(true));
        assert_eq!(d.state, DeploymentState::Pending, "[{}]", b.name);

        let attempt = run(&b, check_id, seq_of(&first.changes[0]), T0 + 1).await;
        let done = complete(&b, check_id, attempt, json!({}), None, T0 + 2).await;
        let then = &done.change.then;
        assert_eq!(then.len(), 1, "[{}] the real run is submitted", b.name);
        let real = b.store.deployment(d.id).await.expect("deployment");
        let run_id = real.rules[0].task_id.expect("the real run");
        assert_eq!(then[0].task_id, run_id, "[{}]", b.name);
        assert_eq!(task(&b, run_id).await.payload.get("check"), None);
        assert_eq!(real.state, DeploymentState::Running, "[{}]", b.name);
        assert_eq!(
            real.rules[0].check_task_state,
            Some(TaskState::Completed),
            "[{}]",
            b.name
        );

        let attempt = run(&b, run_id, seq_of(&then[0]), T0 + 3).await;
        complete(&b, run_id, attempt, json!({}), None, T0 + 4).await;
        let ended = b.store.deployment(d.id).await.expect("deployment");
        assert_eq!(ended.state, DeploymentState::Succeeded, "[{}]", b.name);
        // One status when recorded, one per task's end; the consumer sends the state as it
        // is when it runs.
        let statuses = outbox_rows(&b, Topic::CommitStatus).await;
        assert_eq!(statuses.len(), 3, "[{}] {statuses:?}", b.name);
        assert!(statuses.iter().all(|s| s["deployment"] == json!(d.id)));
        let failed = outbox_rows(&b, Topic::Notice).await;
        assert!(
            failed.iter().all(|n| n["event"] != "deployment.failed"),
            "[{}] a success notifies no failure",
            b.name
        );
    }
}

#[tokio::test]
async fn a_failed_check_stops_the_real_run_and_the_deployment_fails_with_a_notice() {
    for b in backends().await {
        let first = b
            .store
            .record_deployment(checked_push("d-1"), T0)
            .await
            .expect("record");
        let d = &first.deployment;
        let check_id = d.rules[0].check_task_id.unwrap();
        let attempt = run(&b, check_id, seq_of(&first.changes[0]), T0 + 1).await;
        let failed = fail(&b, check_id, attempt, "exit code 2".into(), false, T0 + 2).await;
        assert!(failed.change.then.is_empty(), "[{}] no real run", b.name);
        let after = b.store.deployment(d.id).await.expect("deployment");
        assert_eq!(after.state, DeploymentState::Failed, "[{}]", b.name);
        assert_eq!(after.rules[0].task_id, None, "[{}]", b.name);
        let notices: Vec<Notice> = outbox_rows(&b, Topic::Notice)
            .await
            .into_iter()
            .map(|n| serde_json::from_value(n).unwrap())
            .filter(|n: &Notice| n.event == "deployment.failed")
            .collect();
        assert_eq!(notices.len(), 1, "[{}] one notice", b.name);
        let failed = &notices[0].data["deployment"]["failed"][0];
        assert_eq!(failed["rule"], "media", "[{}]", b.name);
        assert_eq!(failed["step"], "check", "[{}]", b.name);
        assert_eq!(failed["error"], "exit code 2", "[{}]", b.name);
        assert_eq!(
            notices[0].path.as_deref(),
            Some(format!("/deployments/{}", d.id).as_str())
        );

        // An operator's retry of the check runs the rule again.
        b.store
            .retry(check_id, operator(), T0 + 3)
            .await
            .expect("retry");
        let again = b.store.deployment(d.id).await.expect("deployment");
        assert_eq!(again.state, DeploymentState::Pending, "[{}]", b.name);
    }
}

#[tokio::test]
async fn a_paused_source_holds_tasks_and_a_resume_releases_them_in_push_order() {
    for b in backends().await {
        let pause = |scope, name: &str| PauseOrder {
            scope,
            name: name.into(),
            actor: operator(),
        };
        assert!(
            b.store
                .pause_gitops(pause(PauseScope::Source, "infra"), T0)
                .await
                .expect("pause")
        );
        assert!(
            !b.store
                .pause_gitops(pause(PauseScope::Source, "infra"), T0)
                .await
                .expect("pause again"),
            "[{}] pausing twice changes nothing",
            b.name
        );
        let held: Vec<_> = record_two_held(&b).await;
        for d in &held {
            assert_eq!(d.state, DeploymentState::Paused, "[{}]", b.name);
            assert!(d.rules[0].held, "[{}]", b.name);
            assert_eq!(d.rules[0].task_id, None, "[{}] nothing runs", b.name);
        }
        let pauses = b.store.gitops_pauses().await.expect("pauses");
        assert_eq!(pauses.len(), 1, "[{}]", b.name);
        assert_eq!(pauses[0].paused_by, "operator:api", "[{}]", b.name);
        assert_eq!(
            b.store.prune_deployments(i64::MAX).await.expect("prune"),
            0,
            "[{}] a held deployment is kept",
            b.name
        );

        // A rule pause still holds after its source resumes.
        b.store
            .pause_gitops(pause(PauseScope::Rule, "media"), T0 + 1)
            .await
            .expect("pause rule");
        let resumed = b
            .store
            .resume_gitops(pause(PauseScope::Source, "infra"), T0 + 2)
            .await
            .expect("resume");
        assert!(
            resumed.changed && resumed.changes.is_empty(),
            "[{}]",
            b.name
        );
        let resumed = b
            .store
            .resume_gitops(pause(PauseScope::Rule, "media"), T0 + 3)
            .await
            .expect("resume rule");
        assert_eq!(resumed.changes.len(), 2, "[{}] both pushes", b.name);
        let seqs: Vec<i64> = resumed.changes.iter().map(seq_of).collect();
        assert!(seqs[0] < seqs[1], "[{}] oldest push first", b.name);
        for (d, change) in held.iter().zip(&resumed.changes) {
            let now = b.store.deployment(d.id).await.expect("deployment");
            assert_eq!(now.rules[0].task_id, Some(change.task_id), "[{}]", b.name);
            assert!(!now.rules[0].held, "[{}]", b.name);
            assert_eq!(now.state, DeploymentState::Pending, "[{}]", b.name);
        }
        let again = b
            .store
            .resume_gitops(pause(PauseScope::Rule, "media"), T0 + 4)
            .await
            .expect("resume again");
        assert!(!again.changed, "[{}] not paused: nothing to do", b.name);
        let audit: Vec<String> = outbox_rows(&b, Topic::Audit)
            .await
            .into_iter()
            .map(|r| r["action"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            audit,
            [
                "gitops.pause",
                "gitops.pause",
                "gitops.resume",
                "gitops.resume"
            ],
            "[{}] each change audited once",
            b.name
        );
    }
}

/// Two pushes recorded while the source is paused.
async fn record_two_held(b: &Backend) -> Vec<muster_api::Deployment> {
    let mut out = Vec::new();
    for (n, delivery) in ["d-1", "d-2"].into_iter().enumerate() {
        let recorded = b
            .store
            .record_deployment(push(delivery, "ops/homelab"), T0 + n as i64)
            .await
            .expect("record");
        assert!(
            recorded.changes.is_empty(),
            "[{}] nothing submitted",
            b.name
        );
        out.push(recorded.deployment);
    }
    out
}

#[tokio::test]
async fn a_redeploy_submits_the_same_tasks_as_a_new_audited_deployment() {
    for b in backends().await {
        let first = b
            .store
            .record_deployment(push("d-1", "ops/homelab"), T0)
            .await
            .expect("record");
        let of = first.deployment.id;
        let again = b
            .store
            .redeploy(of, Uuid::now_v7(), false, operator(), T0 + 5)
            .await
            .expect("redeploy");
        assert!(again.created, "[{}]", b.name);
        let d = &again.deployment;
        assert_eq!(d.redeploy_of, Some(of), "[{}]", b.name);
        assert_eq!(d.sha, first.deployment.sha, "[{}]", b.name);
        assert_eq!(d.clone_url, first.deployment.clone_url, "[{}]", b.name);
        assert!(d.delivery.starts_with("redeploy:"), "[{}]", b.name);
        let new_task = d.rules[0].task_id.expect("a new task");
        assert_ne!(Some(new_task), first.deployment.rules[0].task_id);
        let stored = task(&b, new_task).await;
        assert_eq!(stored.payload["playbook"], "media.yml", "[{}]", b.name);
        assert_eq!(stored.max_retries, 0, "[{}] as validated", b.name);
        let audit = outbox_rows(&b, Topic::Audit).await;
        assert_eq!(audit.len(), 1, "[{}]", b.name);
        assert_eq!(audit[0]["action"], "deployment.redeploy", "[{}]", b.name);
        assert_eq!(audit[0]["subject"], format!("deployment:{of}"));

        let nothing = b
            .store
            .record_deployment(
                NewDeployment {
                    rules: vec![planned("dns", RuleOutcome::Skipped, None)],
                    ..push("d-3", "ops/homelab")
                },
                T0 + 6,
            )
            .await
            .expect("record");
        assert_conflict(
            &b,
            "a deployment with no task",
            b.store
                .redeploy(
                    nothing.deployment.id,
                    Uuid::now_v7(),
                    false,
                    operator(),
                    T0 + 7,
                )
                .await,
        );
        assert_not_found(
            &b,
            "an unknown deployment",
            b.store
                .redeploy(Uuid::now_v7(), Uuid::now_v7(), false, operator(), T0 + 7)
                .await,
        );
        let found = b
            .store
            .deployment_by_delivery("infra".into(), "d-1".into())
            .await
            .expect("by delivery");
        assert_eq!(found.id, of, "[{}]", b.name);
    }
}

#[tokio::test]
async fn the_list_filters_by_rule_and_by_the_state_read_from_the_tasks() {
    for b in backends().await {
        let mut ids = Vec::new();
        for n in 0..5 {
            let recorded = b
                .store
                .record_deployment(push(&format!("d-{n}"), "ops/homelab"), T0 + n)
                .await
                .expect("record");
            ids.push(recorded.deployment);
        }
        // The second-newest fails.
        let failing = &ids[3];
        let task_id = failing.rules[0].task_id.unwrap();
        b.store
            .cancel(task_id, operator(), T0 + 10)
            .await
            .expect("cancel");
        let list = |filter: DeploymentFilter| {
            let store = b.store.clone();
            async move {
                store
                    .deployments(filter)
                    .await
                    .expect("list")
                    .into_iter()
                    .map(|d| d.id)
                    .collect::<Vec<_>>()
            }
        };
        let failed = list(DeploymentFilter {
            state: Some(DeploymentState::Failed),
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(failed, vec![failing.id], "[{}]", b.name);
        let pending = list(DeploymentFilter {
            state: Some(DeploymentState::Pending),
            limit: 2,
            ..Default::default()
        })
        .await;
        assert_eq!(
            pending,
            vec![ids[4].id, ids[2].id],
            "[{}] skips the failed one",
            b.name
        );
        let older = list(DeploymentFilter {
            state: Some(DeploymentState::Pending),
            limit: 10,
            before: Some(ids[2].id),
            ..Default::default()
        })
        .await;
        assert_eq!(
            older,
            vec![ids[1].id, ids[0].id],
            "[{}] the next page",
            b.name
        );
        let by_rule = list(DeploymentFilter {
            rule: Some("media".into()),
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(by_rule.len(), 5, "[{}]", b.name);
        let skipped_rule = list(DeploymentFilter {
            rule: Some("dns".into()),
            limit: 10,
            ..Default::default()
        })
        .await;
        assert!(skipped_rule.is_empty(), "[{}] dns matched none", b.name);
    }
}

#[tokio::test]
async fn a_deployment_whose_source_has_no_status_api_queues_no_commit_status() {
    for b in backends().await {
        let first = b
            .store
            .record_deployment(
                NewDeployment {
                    statuses: false,
                    ..push("d-1", "ops/homelab")
                },
                T0,
            )
            .await
            .expect("record");
        let task_id = first.deployment.rules[0].task_id.unwrap();
        b.store
            .cancel(task_id, operator(), T0 + 1)
            .await
            .expect("cancel");
        assert!(
            outbox_rows(&b, Topic::CommitStatus).await.is_empty(),
            "[{}]",
            b.name
        );
        // Its failure is still told to the notification rules.
        let notices = outbox_rows(&b, Topic::Notice).await;
        assert!(
            notices.iter().any(|n| n["event"] == "deployment.failed"),
            "[{}] {notices:?}",
            b.name
        );
    }
}
