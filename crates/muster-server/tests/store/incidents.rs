//! Incidents against every backend: alerts of one key folding into one open incident, a
//! recovery closing it, conditional steps, a repair's task submitted with its step (or held by
//! a pause, the hourly cap, the cooldown), the task's end moving the incident on, and the
//! story with its audit records.

use std::collections::BTreeMap;

use muster_api::{ChoiceBy, IncidentState, RepairChoice, TaskState};
use muster_server::alerts::{Alert, AlertState};
use muster_server::audit::Actor;
use muster_server::store::{
    AlertEffect, AlertIn, IncidentFilter, IncidentStep, Lane, RepairHeld, RepairRun, Topic,
};
use serde_json::json;
use uuid::Uuid;

use crate::*;

use IncidentState::{Deciding, Escalated, Open, Repairing, Resolved, Verifying};

const T0: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

fn alert(key: &str, state: AlertState) -> AlertIn {
    AlertIn {
        source: "kuma".into(),
        alert: Alert {
            key: key.into(),
            monitor: "jellyfin".into(),
            state,
            labels: BTreeMap::new(),
            message: "timeout".into(),
            at: None,
            url: None,
        },
        target: Some("jellyfin".into()),
        max_steps: 2,
    }
}

async fn open(b: &Backend, key: &str, now: i64) -> Uuid {
    let r = b
        .store
        .record_alerts(vec![alert(key, AlertState::Firing)], now)
        .await
        .expect("record");
    assert_eq!(r[0].effect, AlertEffect::Opened, "[{}]", b.name);
    r[0].incident.expect("an incident").0
}

fn choice() -> RepairChoice {
    RepairChoice {
        action: "restart_container".into(),
        params: BTreeMap::from([("container".to_owned(), "jellyfin".to_owned())]),
        risky: false,
        by: ChoiceBy::Model,
        reasoning: None,
    }
}

fn run_step(id: Uuid, from: &[IncidentState], max_per_hour: u32, cooldown_ms: i64) -> IncidentStep {
    let mut task = new_task(0);
    task.kind = "action".into();
    task.capabilities = vec!["docker".into()];
    let mut step = IncidentStep::new(
        id,
        from,
        Repairing,
        Actor::System,
        "repair_started",
        "running",
    );
    step.run = Some(RepairRun {
        task,
        target: "jellyfin".into(),
        action: "restart_container".into(),
        max_per_hour,
        cooldown_ms,
        verify_within_ms: 60_000,
    });
    step.choice = Some(Some(choice()));
    step.count_step = true;
    step
}

async fn audit_actions(b: &Backend) -> Vec<String> {
    let mut out = Vec::new();
    for lane in [Lane::Local, Lane::Remote] {
        for row in b
            .store
            .due_outbox(i64::MAX, 10_000, lane)
            .await
            .expect("outbox")
        {
            if row.topic == Topic::Audit.as_str() {
                out.push(
                    row.payload["action"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    out
}

#[tokio::test]
async fn alerts_of_one_key_fold_into_one_incident_and_a_recovery_closes_it() {
    for b in backends().await {
        let id = open(&b, "kuma:1", T0).await;
        let storm: Vec<AlertIn> = (0..49)
            .map(|_| alert("kuma:1", AlertState::Firing))
            .collect();
        let folded = b.store.record_alerts(storm, T0 + 1).await.expect("storm");
        assert!(
            folded
                .iter()
                .all(|r| r.effect == AlertEffect::Folded && r.incident.map(|i| i.0) == Some(id)),
            "[{}] repeats fold",
            b.name
        );
        let list = b
            .store
            .incidents(
                IncidentFilter {
                    limit: 10,
                    ..Default::default()
                },
                T0,
            )
            .await
            .expect("list");
        assert_eq!(list.len(), 1, "[{}] one incident for the storm", b.name);
        assert_eq!(list[0].alerts, 50);
        let other = open(&b, "kuma:2", T0 + 2).await;
        assert_ne!(other, id, "[{}] another key is another incident", b.name);

        let up = b
            .store
            .record_alerts(vec![alert("kuma:1", AlertState::Resolved)], T0 + 3)
            .await
            .expect("up");
        assert_eq!(up[0].effect, AlertEffect::Resolved);
        let closed = b.store.incident(id, T0 + 3).await.expect("incident");
        assert_eq!(closed.state, Resolved);
        assert!(closed.closed_at.is_some());
        let again = b
            .store
            .record_alerts(vec![alert("kuma:1", AlertState::Resolved)], T0 + 4)
            .await
            .expect("up again");
        assert_eq!(again[0].effect, AlertEffect::Unmatched, "[{}]", b.name);
        let reopened = open(&b, "kuma:1", T0 + 5).await;
        assert_ne!(
            reopened, id,
            "[{}] a closed incident takes no more alerts",
            b.name
        );

        // An escalated incident keeps its key: a storm after the escalation folds into it, and
        // the recovery resolves it.
        let escalated = open(&b, "kuma:3", T0).await;
        let mut give_up = IncidentStep::new(
            escalated,
            &[Open],
            Escalated,
            Actor::System,
            "refused",
            "no",
        );
        give_up.reason = Some(Some("nothing ran".into()));
        b.store.step_incident(give_up, T0).await.unwrap();
        let storm: Vec<AlertIn> = (0..10)
            .map(|_| alert("kuma:3", AlertState::Firing))
            .collect();
        let folded = b.store.record_alerts(storm, T0 + 1).await.unwrap();
        assert!(
            folded
                .iter()
                .all(|r| r.effect == AlertEffect::Folded
                    && r.incident.map(|i| i.0) == Some(escalated)),
            "[{}] a storm after an escalation opens nothing new",
            b.name
        );
        let up = b
            .store
            .record_alerts(vec![alert("kuma:3", AlertState::Resolved)], T0 + 2)
            .await
            .unwrap();
        assert_eq!(
            (up[0].effect, up[0].incident.map(|i| i.0)),
            (AlertEffect::Resolved, Some(escalated))
        );
        let i = b.store.incident(escalated, T0 + 2).await.unwrap();
        assert_eq!((i.state, i.alerts), (Resolved, 11), "[{}]", b.name);
        assert!(i.reason.unwrap().contains("after the escalation"));

        let mut unmatched = alert("kuma:9", AlertState::Firing);
        unmatched.target = None;
        let r = b
            .store
            .record_alerts(vec![unmatched], T0)
            .await
            .expect("record");
        let i = b
            .store
            .incident(r[0].incident.unwrap().0, T0)
            .await
            .unwrap();
        assert_eq!(i.state, Escalated, "[{}] nothing may repair it", b.name);
        assert!(i.reason.unwrap().contains("no [[repair.targets]]"));
    }
}

#[tokio::test]
async fn a_step_is_conditional_and_a_repair_runs_in_its_transaction_until_its_task_ends() {
    for b in backends().await {
        let id = open(&b, "kuma:1", T0).await;
        let wrong = b
            .store
            .step_incident(
                IncidentStep::new(id, &[Verifying], Resolved, Actor::System, "verified", "x"),
                T0,
            )
            .await;
        assert_conflict(&b, "a step from a state it is not in", wrong);
        b.store
            .step_incident(
                IncidentStep::new(id, &[Open], Deciding, Actor::System, "deciding", "asking"),
                T0,
            )
            .await
            .expect("deciding");
        let stepped = b
            .store
            .step_incident(run_step(id, &[Deciding], 3, 0), T0 + 1)
            .await
            .expect("run");
        assert_eq!(stepped.held, None);
        let change = stepped.change.expect("the repair task is queued");
        let incident = stepped.incident;
        assert_eq!(incident.state, Repairing);
        assert_eq!(incident.steps, 1);
        assert_eq!(incident.task_id, Some(change.task_id));
        assert_eq!(incident.repairs_last_hour, 1);
        assert_eq!(state(&b, change.task_id).await, TaskState::Queued);

        let seq = change.requeued.as_ref().unwrap().seq;
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .unwrap();
        assign(&b, seq, "a1", T0 + 2).await.expect("assigned");
        let claimed = b.store.claim("a1", T0 + 2, T0 + 60_000).await.unwrap();
        let task = claimed.task.expect("claimed");
        complete(&b, task.id, task.attempt, json!({}), None, T0 + 3).await;
        let verifying = b.store.incident(id, T0 + 3).await.unwrap();
        assert_eq!(
            verifying.state, Verifying,
            "[{}] a completed repair is verified",
            b.name
        );
        assert_eq!(
            verifying.due_at.map(|d| d.timestamp_millis()),
            Some(T0 + 3 + 60_000),
            "[{}] within the target's time limit",
            b.name
        );
        let kinds: Vec<&str> = verifying.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["opened", "deciding", "repair_started", "repair_ended"]
        );
        let audit = audit_actions(&b).await;
        for kind in &kinds {
            assert!(
                audit.contains(&format!("incident.{kind}")),
                "[{}] incident.{kind} is audited: {audit:?}",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn a_failed_repair_is_decided_again_then_escalates_when_its_steps_are_spent() {
    for b in backends().await {
        let id = open(&b, "kuma:1", T0).await;
        b.store
            .register_agent(registration("a1", Some("i1")), T0)
            .await
            .unwrap();
        for step in 1..=2 {
            let stepped = b
                .store
                .step_incident(run_step(id, &[Open], 10, 0), T0 + step)
                .await
                .expect("run");
            let seq = stepped.change.unwrap().requeued.unwrap().seq;
            assign(&b, seq, "a1", T0 + step).await.expect("assigned");
            let task = b
                .store
                .claim("a1", T0 + step, T0 + HOUR)
                .await
                .unwrap()
                .task
                .unwrap();
            fail(
                &b,
                task.id,
                task.attempt,
                "docker: no such container".into(),
                false,
                T0 + step,
            )
            .await;
            let i = b.store.incident(id, T0 + step).await.unwrap();
            if step == 1 {
                assert_eq!(i.state, Open, "[{}] decided again", b.name);
                assert!(i.reason.unwrap().contains("no such container"));
            } else {
                assert_eq!(i.state, Escalated, "[{}] no steps left", b.name);
                assert!(
                    i.reason.unwrap().contains("no repair steps left"),
                    "[{}]",
                    b.name
                );
            }
        }
    }
}

#[tokio::test]
async fn a_pause_the_hourly_cap_and_the_cooldown_hold_a_repair_and_say_so() {
    for b in backends().await {
        // The cooldown: a repair of the target a minute ago keeps the next waiting.
        let first = open(&b, "kuma:1", T0).await;
        b.store
            .step_incident(run_step(first, &[Open], 10, 0), T0)
            .await
            .unwrap();
        let second = open(&b, "kuma:2", T0).await;
        let held = b
            .store
            .step_incident(run_step(second, &[Open], 10, 5 * 60_000), T0 + 60_000)
            .await
            .unwrap();
        assert_eq!(
            held.held,
            Some(RepairHeld::Cooling {
                until: T0 + 5 * 60_000
            })
        );
        assert!(held.change.is_none(), "[{}] nothing submitted", b.name);
        assert_eq!(held.incident.state, Open);
        assert_eq!(
            held.incident.due_at.map(|d| d.timestamp_millis()),
            Some(T0 + 5 * 60_000)
        );

        // The cap: one repair in the last hour and a cap of one.
        let capped = b
            .store
            .step_incident(run_step(second, &[Open], 1, 0), T0 + 2 * 60_000)
            .await
            .unwrap();
        assert_eq!(capped.held, Some(RepairHeld::Capped { repairs: 1 }));
        assert_eq!(capped.incident.state, Escalated);
        assert!(
            capped
                .incident
                .reason
                .as_deref()
                .unwrap()
                .contains("max_per_hour = 1")
        );

        // A pause, of everything then of the target.
        for target in [None, Some("jellyfin".to_owned())] {
            let id = open(&b, &format!("kuma:p{}", target.is_some()), T0).await;
            assert!(
                b.store
                    .pause_repair(target.clone(), operator(), T0)
                    .await
                    .unwrap()
            );
            assert!(
                !b.store
                    .pause_repair(target.clone(), operator(), T0)
                    .await
                    .unwrap()
            );
            let paused = b
                .store
                .step_incident(run_step(id, &[Open], 10, 0), T0 + 2 * HOUR)
                .await
                .unwrap();
            assert_eq!(
                paused.held,
                Some(RepairHeld::Paused {
                    target: target.clone()
                })
            );
            assert_eq!(paused.incident.state, Escalated);
            assert!(
                paused
                    .incident
                    .reason
                    .as_deref()
                    .unwrap()
                    .contains("paused")
            );
            assert_eq!(b.store.repair_pauses().await.unwrap().len(), 1);
            assert!(
                b.store
                    .resume_repair(target.clone(), operator(), T0)
                    .await
                    .unwrap()
            );
            assert!(b.store.repair_pauses().await.unwrap().is_empty());
        }
        let audit = audit_actions(&b).await;
        assert_eq!(
            audit.iter().filter(|a| *a == "repair.pause").count(),
            2,
            "[{}]",
            b.name
        );
        assert_eq!(
            audit.iter().filter(|a| *a == "repair.resume").count(),
            2,
            "[{}]",
            b.name
        );
        assert_eq!(
            b.store.repairs_since(T0 - HOUR).await.unwrap(),
            vec![("jellyfin".to_owned(), 1)],
            "[{}] held repairs are not counted",
            b.name
        );
    }
}

#[tokio::test]
async fn due_incidents_are_the_undecided_the_expired_approvals_and_the_verifying() {
    for b in backends().await {
        let undecided = open(&b, "kuma:1", T0).await;
        let waiting = open(&b, "kuma:2", T0).await;
        let mut ask = IncidentStep::new(
            waiting,
            &[Open],
            IncidentState::AwaitingApproval,
            Actor::System,
            "approval_requested",
            "risky",
        );
        ask.approval_expires_at = Some(Some(T0 + 1000));
        b.store.step_incident(ask, T0).await.unwrap();
        let due = |now| {
            let store = b.store.clone();
            async move {
                let mut ids: Vec<Uuid> = store
                    .due_incidents(now)
                    .await
                    .unwrap()
                    .iter()
                    .map(|i| i.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(due(T0).await, vec![undecided], "[{}]", b.name);
        let mut both = vec![undecided, waiting];
        both.sort();
        assert_eq!(
            due(T0 + 1000).await,
            both,
            "[{}] the approval expired",
            b.name
        );

        assert_eq!(
            b.store.prune_incidents(i64::MAX).await.unwrap(),
            0,
            "[{}] open ones stay",
            b.name
        );
        b.store
            .record_alerts(vec![alert("kuma:1", AlertState::Resolved)], T0 + 5)
            .await
            .unwrap();
        assert_eq!(
            b.store.prune_incidents(T0 + 6).await.unwrap(),
            1,
            "[{}]",
            b.name
        );
        assert_not_found(
            &b,
            "a pruned incident",
            b.store.incident(undecided, T0).await,
        );
    }
}
