//! GitOps deployments against every backend: a push recorded with its tasks in one
//! transaction, a redelivery answering the first, and the state read from the tasks.

use muster_api::{DeploymentState, PlannedRule, TaskState};
use muster_server::store::{DeploymentFilter, NewDeployment};
use serde_json::json;
use uuid::Uuid;

use crate::*;

fn planned(rule: &str, outcome: &str) -> PlannedRule {
    PlannedRule {
        rule: rule.into(),
        outcome: outcome.into(),
        why: None,
        matched: Vec::new(),
        excluded: Vec::new(),
        fallback: false,
        kind: Some("ansible".into()),
        lock_key: Some("deploy:ops/homelab:media".into()),
        task_id: None,
        task_state: None,
    }
}

fn push(delivery: &str, repo: &str) -> NewDeployment {
    let mut media = new_task(0);
    media.lock_key = Some("deploy:ops/homelab:media".into());
    media.payload = json!({"playbook": "media.yml"});
    NewDeployment {
        id: Uuid::now_v7(),
        source: "infra".into(),
        delivery: delivery.into(),
        repo: repo.into(),
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        before: "0".repeat(40),
        sha: "a".repeat(40),
        author: "Ada".into(),
        message: "media: new port".into(),
        changed: vec!["ansible/media/site.yml".into()],
        complete: true,
        rules: vec![
            (planned("media", "matched"), Some(media)),
            (planned("dns", "skipped"), None),
        ],
    }
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
        assert_eq!(stored.lock_key.as_deref(), Some("deploy:ops/homelab:media"));

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
