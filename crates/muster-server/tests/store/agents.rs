//! Agent operations against every backend: heartbeats and leases, going offline, removal,
//! re-registration by a new process, and drains.

use muster_api::{AgentStatus, AttemptOutcome, RunningTask, TaskState};
use muster_server::store::DrainBy;

use crate::*;
use muster_server::audit::Via;

#[tokio::test]
async fn a_heartbeat_listing_its_tasks_extends_only_those_and_names_the_stale_ones() {
    for b in backends().await {
        let t1 = running(&b, new_task(0), "a1", T0).await;
        let t2 = running(&b, new_task(0), "a1", T0).await;
        let unknown = Uuid::now_v7();
        let stop = b
            .store
            .heartbeat(
                "a1",
                Some(vec![
                    RunningTask {
                        task_id: t1.id,
                        attempt: 1,
                    },
                    // A stale attempt of a current task, and a task the store never had.
                    RunningTask {
                        task_id: t2.id,
                        attempt: 7,
                    },
                    RunningTask {
                        task_id: unknown,
                        attempt: 1,
                    },
                ]),
                T0 + 90_000,
                UNLISTED_CAP,
            )
            .await
            .expect("heartbeat");
        let mut expected = vec![t2.id, unknown];
        expected.sort();
        let mut stop = stop;
        stop.sort();
        assert_eq!(stop, expected, "[{}] the stale attempts are named", b.name);
        // t1's lease was extended to T0 + 90 s; t2's still ends at T0 + 30 s.
        let changes = b.store.expire(T0 + 30_001, rules()).await.expect("expire");
        assert_eq!(
            changes.iter().map(|c| c.task_id).collect::<Vec<_>>(),
            vec![t2.id],
            "[{}] only the unlisted task's lease lapsed",
            b.name
        );
        assert_all_legal(&b, TaskState::Running, &changes).await;
        assert_eq!(state(&b, t1.id).await, TaskState::Running, "[{}]", b.name);
        assert!(
            b.store
                .expire(T0 + 90_000, rules())
                .await
                .expect("expire")
                .is_empty(),
            "[{}] the listed task's lease runs until the new lease_until",
            b.name
        );
        assert_not_found(
            &b,
            "heartbeat of an unknown agent",
            b.store.heartbeat("nobody", None, T0, UNLISTED_CAP).await,
        );
    }
}

fn rules() -> muster_server::store::ExpiryRules {
    muster_server::store::ExpiryRules {
        assign_timeout_ms: 10_000,
    }
}

/// Gives `agent_id` one assigned and one running task; answers (assigned, running).
async fn busy(b: &Backend, agent_id: &str) -> (Uuid, Uuid) {
    let run = running(b, new_task(2), agent_id, T0).await;
    let s = submit(b, new_task(2), T0).await;
    assert!(
        assign(b, seq(&s), agent_id, T0 + 1).await.is_some(),
        "[{}]",
        b.name
    );
    (s.task.id, run.id)
}

/// Checks the hand-back of `busy`'s tasks: the assigned one unassigned without an attempt
/// spent, the running one's attempt lost and the task queued again.
async fn assert_handed_back(b: &Backend, what: &str, changes: &[Change], ids: (Uuid, Uuid)) {
    let (assigned, run) = ids;
    assert_eq!(
        changes.len(),
        2,
        "[{}] {what}: both tasks handed back",
        b.name
    );
    for change in changes {
        let before = if change.task_id == assigned {
            TaskState::Assigned
        } else {
            TaskState::Running
        };
        assert_legal(b, before, change).await;
        assert_eq!(change.state, TaskState::Queued, "[{}] {what}", b.name);
        assert!(change.released.is_some(), "[{}] {what}: slot freed", b.name);
    }
    let a = task(b, assigned).await;
    assert_eq!(a.state, TaskState::Queued, "[{}] {what}", b.name);
    assert_eq!(a.attempt, 0, "[{}] {what}: no attempt spent", b.name);
    assert!(a.agent_id.is_none(), "[{}] {what}: unassigned", b.name);
    let r = task(b, run).await;
    assert_eq!(r.state, TaskState::Queued, "[{}] {what}: retried", b.name);
    assert_eq!(
        r.attempts[0].outcome,
        AttemptOutcome::Lost,
        "[{}] {what}: the attempt was lost",
        b.name
    );
    assert!(
        b.store
            .snapshot()
            .await
            .expect("snapshot")
            .active
            .is_empty(),
        "[{}] {what}: nothing active",
        b.name
    );
}

#[tokio::test]
async fn an_agent_going_offline_hands_its_tasks_back() {
    for b in backends().await {
        let ids = busy(&b, "a1").await;
        let changes = b.store.agent_offline("a1", T0 + 2).await.expect("offline");
        assert_handed_back(&b, "offline", &changes, ids).await;
        assert_eq!(
            b.store.agent("a1").await.expect("agent").status,
            AgentStatus::Offline,
            "[{}]",
            b.name
        );
        assert_not_found(
            &b,
            "offline of an unknown agent",
            b.store.agent_offline("nobody", T0).await,
        );
    }
}

#[tokio::test]
async fn removing_an_agent_hands_its_tasks_back() {
    for b in backends().await {
        let ids = busy(&b, "a1").await;
        let changes = b
            .store
            .remove_agent("a1", Via::Api, T0 + 2)
            .await
            .expect("remove");
        assert_handed_back(&b, "remove", &changes, ids).await;
        assert_not_found(&b, "the removed agent", b.store.agent("a1").await);
        assert_not_found(
            &b,
            "removal of an unknown agent",
            b.store.remove_agent("a1", Via::Api, T0 + 3).await,
        );
    }
}

#[tokio::test]
async fn a_new_process_registering_gets_its_predecessors_tasks_handed_back() {
    for b in backends().await {
        // `running` registers a1 with instance i1.
        let ids = busy(&b, "a1").await;
        let same = b
            .store
            .register_agent(registration("a1", Some("i1")), T0 + 2)
            .await
            .expect("register");
        assert!(!same.created, "[{}] a known agent", b.name);
        assert!(
            same.changes.is_empty(),
            "[{}] the same process keeps its tasks",
            b.name
        );
        assert_eq!(state(&b, ids.0).await, TaskState::Assigned, "[{}]", b.name);
        assert_eq!(state(&b, ids.1).await, TaskState::Running, "[{}]", b.name);

        let new = b
            .store
            .register_agent(registration("a1", Some("i2")), T0 + 3)
            .await
            .expect("register");
        assert!(!new.created, "[{}]", b.name);
        assert_eq!(new.agent.instance_id.as_deref(), Some("i2"), "[{}]", b.name);
        assert_handed_back(&b, "new instance", &new.changes, ids).await;
    }
}

#[tokio::test]
async fn an_operators_drain_lasts_until_undrained() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        let a = b
            .store
            .drain_agent("a1", DrainBy::Operator(Via::Api), T0 + 1)
            .await
            .expect("drain");
        assert_eq!(a.status, AgentStatus::Draining, "[{}]", b.name);
        assert_eq!(a.drained_by.as_deref(), Some("operator"), "[{}]", b.name);

        b.store.agent_offline("a1", T0 + 2).await.expect("offline");
        let back = b.store.agent_back("a1", T0 + 3).await.expect("back");
        assert_eq!(
            back,
            AgentStatus::Draining,
            "[{}] drained after offline",
            b.name
        );
        let again = b
            .store
            .register_agent(registration("a1", Some("i2")), T0 + 4)
            .await
            .expect("register");
        assert_eq!(
            again.agent.status,
            AgentStatus::Draining,
            "[{}] drained across a new process",
            b.name
        );
        assert_eq!(
            again.agent.drained_by.as_deref(),
            Some("operator"),
            "[{}]",
            b.name
        );
        // The agent's own drain does not weaken it.
        let own = b
            .store
            .drain_agent("a1", DrainBy::Instance("i2".into()), T0 + 5)
            .await
            .expect("drain by instance");
        assert_eq!(own.drained_by.as_deref(), Some("operator"), "[{}]", b.name);
        let again = b
            .store
            .register_agent(registration("a1", Some("i3")), T0 + 6)
            .await
            .expect("register");
        assert_eq!(again.agent.status, AgentStatus::Draining, "[{}]", b.name);

        let undrained = b
            .store
            .undrain_agent("a1", Via::Api, T0 + 7)
            .await
            .expect("undrain");
        assert_eq!(undrained.status, AgentStatus::Online, "[{}]", b.name);
        assert!(undrained.drained_by.is_none(), "[{}]", b.name);
        assert_not_found(
            &b,
            "drain of an unknown agent",
            b.store
                .drain_agent("nobody", DrainBy::Operator(Via::Api), T0)
                .await,
        );
        assert_not_found(
            &b,
            "undrain of an unknown agent",
            b.store.undrain_agent("nobody", Via::Api, T0).await,
        );
    }
}

#[tokio::test]
async fn an_agents_own_drain_needs_its_current_instance_and_ends_with_its_process() {
    for b in backends().await {
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .expect("register");
        assert_conflict(
            &b,
            "drain by a stale instance",
            b.store
                .drain_agent("a1", DrainBy::Instance("i0".into()), T0 + 1)
                .await,
        );
        assert_eq!(
            b.store.agent("a1").await.expect("agent").status,
            AgentStatus::Online,
            "[{}] a refused drain changes nothing",
            b.name
        );
        let a = b
            .store
            .drain_agent("a1", DrainBy::Instance("i1".into()), T0 + 2)
            .await
            .expect("drain");
        assert_eq!(a.status, AgentStatus::Draining, "[{}]", b.name);
        assert_eq!(a.drained_by.as_deref(), Some("agent"), "[{}]", b.name);
        // The same process registering again stays drained.
        let same = b
            .store
            .register_agent(registration("a1", Some("i1")), T0 + 3)
            .await
            .expect("register");
        assert_eq!(same.agent.status, AgentStatus::Draining, "[{}]", b.name);
        // A new process undoes it.
        let new = b
            .store
            .register_agent(registration("a1", Some("i2")), T0 + 4)
            .await
            .expect("register");
        assert_eq!(
            new.agent.status,
            AgentStatus::Online,
            "[{}] a new process undoes the agent's own drain",
            b.name
        );
        assert!(new.agent.drained_by.is_none(), "[{}]", b.name);

        // An undrain ends the agent's own drain too.
        b.store
            .drain_agent("a1", DrainBy::Instance("i2".into()), T0 + 5)
            .await
            .expect("drain");
        let undrained = b
            .store
            .undrain_agent("a1", Via::Api, T0 + 6)
            .await
            .expect("undrain");
        assert_eq!(undrained.status, AgentStatus::Online, "[{}]", b.name);
        assert!(undrained.drained_by.is_none(), "[{}]", b.name);
    }
}

#[tokio::test]
async fn an_agent_that_lists_nothing_keeps_a_task_only_up_to_its_timeout_or_the_cap() {
    for b in backends().await {
        let mut timed = new_task(0);
        timed.timeout_s = Some(600);
        let timed = running(&b, timed, "a1", T0).await;
        let open = running(&b, new_task(0), "a1", T0).await;
        // Heartbeats without a list, long after the timeout and the cap: leases stop there.
        let late = T0 + UNLISTED_CAP + 3_600_000;
        b.store
            .heartbeat("a1", None, late + 60_000, UNLISTED_CAP)
            .await
            .expect("heartbeat");
        let changes = b
            .store
            .expire(
                late,
                muster_server::store::ExpiryRules {
                    assign_timeout_ms: 30_000,
                },
            )
            .await
            .expect("expire");
        let ended: Vec<_> = changes.iter().map(|c| c.task_id).collect();
        assert!(
            ended.contains(&open.id),
            "[{}] the cap did not end {ended:?}",
            b.name
        );
        assert!(ended.contains(&timed.id), "[{}] {ended:?}", b.name);
    }
}
