//! Notices: things that happened which an operator may want to hear about (a task failed for
//! good, an agent went offline). The store writes one as an outbox row in the transaction of
//! the change it reports, so a crash can delay a notification but never lose it; the outbox's
//! `notice` consumer matches it against the rules and queues one notification per channel.
//! A leaf module: the store writes notices and the notifiers read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// The events a rule can name, and what each means (for the README and config errors).
pub const EVENTS: &[(&str, &str)] = &[
    (
        TASK_FAILED,
        "a task failed for good: its retries are spent, it was not retryable, or it kept losing its agent",
    ),
    (
        AGENT_OFFLINE,
        "an agent stopped heartbeating and its tasks went back to the queue",
    ),
    (
        AGENT_ONLINE,
        "an agent registered for the first time, or was heard from again after being offline",
    ),
    (
        BUDGET_EXCEEDED,
        "a workflow spent its LLM budget for the day or month (then its calls are refused or go to the fallback model)",
    ),
    (
        BUDGET_SPIKE,
        "a workflow's LLM spend today passed its spike factor times the median of the seven days before",
    ),
    (
        INCIDENT_OPENED,
        "a monitor reported an outage and muster opened an incident for it",
    ),
    (
        INCIDENT_APPROVAL,
        "a repair chose a risky action: it waits for an operator to approve it on the incident's page",
    ),
    (
        INCIDENT_RESOLVED,
        "an incident's thing is up again: a repair healed it, or the monitor reported it recovered",
    ),
    (
        INCIDENT_ESCALATED,
        "self-repair stopped and a human must act: the reason says why (nothing allowed was chosen, repairs did not heal it, a cap or a pause held them, an approval was denied or expired)",
    ),
    (
        DEPLOYMENT_FAILED,
        "a GitOps deployment ended with a task failed or cancelled (a failed check stops its rule's real run)",
    ),
    (
        CANARY_FAILED,
        "a canary's run failed (its first failure after a pass; further failures of one outage say nothing): the reason names the leg that did not get through",
    ),
    (CANARY_RECOVERED, "a canary passed again after failing"),
];

pub const TASK_FAILED: &str = "task.failed";
pub const AGENT_OFFLINE: &str = "agent.offline";
pub const AGENT_ONLINE: &str = "agent.online";
pub const DEPLOYMENT_FAILED: &str = "deployment.failed";
pub const BUDGET_EXCEEDED: &str = "budget.exceeded";
pub const BUDGET_SPIKE: &str = "budget.spike";
pub const INCIDENT_OPENED: &str = "incident.opened";
pub const INCIDENT_APPROVAL: &str = "incident.approval";
pub const INCIDENT_RESOLVED: &str = "incident.resolved";
pub const INCIDENT_ESCALATED: &str = "incident.escalated";
pub const CANARY_FAILED: &str = "canary.failed";
pub const CANARY_RECOVERED: &str = "canary.recovered";
/// The message a passing canary run sends straight to its canary's channel (not through the
/// rules, and so not in [`EVENTS`]): its delivery is the run's last leg.
pub const CANARY_PASSED: &str = "canary.passed";

/// The README's table of events, drawn from [`EVENTS`]; a test checks that the README carries
/// it verbatim.
pub fn markdown_table() -> String {
    let mut out = String::from("| event | when |\n| --- | --- |\n");
    for (event, meaning) in EVENTS {
        out.push_str(&format!("| `{event}` | {meaning} |\n"));
    }
    out
}

/// Whether `name` is an event this build emits.
pub fn is_event(name: &str) -> bool {
    EVENTS.iter().any(|(e, _)| *e == name)
}

/// One thing that happened, as the outbox carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// One of [`EVENTS`].
    pub event: String,
    /// When it happened (ms since the epoch).
    pub at: i64,
    /// What it is about: `task:<id>`, `agent:<id>`.
    pub subject: String,
    /// Notices of one group share a quiet period: an agent's ups and downs (`agent:<id>`),
    /// failures of one task kind (`task-kind:<kind>`), so a flapping agent or a failing batch
    /// makes one message and a count, not a hundred messages.
    pub group: String,
    /// The UI page of the thing, relative to `PUBLIC_URL` (`/tasks/<id>`).
    pub path: Option<String>,
    /// What message templates see besides `event`, `at` and `link`: `task` or `agent`.
    pub data: Value,
}

/// What a task.failed notice says of its task.
pub struct FailedTask<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub attempt: u32,
    pub error: &'a str,
    pub agent_id: Option<&'a str>,
}

impl Notice {
    pub fn task_failed(task: FailedTask<'_>, at: i64) -> Notice {
        Notice {
            event: TASK_FAILED.to_owned(),
            at,
            subject: format!("task:{}", task.id),
            group: format!("task-kind:{}", task.kind),
            path: Some(format!("/tasks/{}", task.id)),
            data: json!({
                "task": {
                    "id": task.id,
                    "kind": task.kind,
                    "labels": task.labels,
                    "attempt": task.attempt,
                    "error": task.error,
                    "agent": task.agent_id,
                }
            }),
        }
    }

    pub fn agent_offline(agent_id: &str, hostname: &str, at: i64) -> Notice {
        Notice::agent(AGENT_OFFLINE, agent_id, hostname, false, at)
    }

    /// `first`: it registered for the first time, rather than coming back.
    pub fn agent_online(agent_id: &str, hostname: &str, first: bool, at: i64) -> Notice {
        Notice::agent(AGENT_ONLINE, agent_id, hostname, first, at)
    }

    fn agent(event: &str, agent_id: &str, hostname: &str, first: bool, at: i64) -> Notice {
        Notice {
            event: event.to_owned(),
            at,
            subject: format!("agent:{agent_id}"),
            group: format!("agent:{agent_id}"),
            path: Some("/agents".to_owned()),
            data: json!({
                "agent": { "id": agent_id, "hostname": hostname, "first": first }
            }),
        }
    }

    /// A deployment ended with failures: `failed` names each failed rule and why.
    pub fn deployment_failed(d: &muster_api::Deployment, failed: Vec<Value>, at: i64) -> Notice {
        Notice {
            event: DEPLOYMENT_FAILED.to_owned(),
            at,
            subject: format!("deployment:{}", d.id),
            group: format!("git-repo:{}", d.repo),
            path: Some(format!("/deployments/{}", d.id)),
            data: json!({
                "deployment": {
                    "id": d.id,
                    "source": d.source,
                    "repo": d.repo,
                    "branch": d.branch,
                    "sha": d.sha,
                    "short_sha": d.sha.get(..8).unwrap_or(&d.sha),
                    "author": d.author,
                    "message": d.message.lines().next().unwrap_or_default(),
                    "failed": failed,
                }
            }),
        }
    }

    /// A workflow's LLM budget or spend crossed a line (`event`: [`BUDGET_EXCEEDED`] or
    /// [`BUDGET_SPIKE`]); `budget` is what templates see of it.
    pub fn budget(event: &str, workflow: &str, budget: Value, at: i64) -> Notice {
        Notice {
            event: event.to_owned(),
            at,
            subject: format!("budget:{workflow}"),
            group: format!("budget:{workflow}"),
            path: Some("/llm".to_owned()),
            data: json!({ "budget": budget }),
        }
    }

    /// Something happened to an incident (`event`: one of the `incident.*` events). Notices
    /// of one target (or monitor) share a quiet period.
    pub fn incident(event: &str, incident: &muster_api::Incident, at: i64) -> Notice {
        let choice = incident.choice.as_ref().map(|c| {
            json!({"action": c.action, "params": c.params, "risky": c.risky, "by": c.by.as_str()})
        });
        Notice {
            event: event.to_owned(),
            at,
            subject: format!("incident:{}", incident.id),
            group: format!(
                "incident:{}",
                incident.target.as_deref().unwrap_or(&incident.monitor)
            ),
            path: Some(format!("/incidents/{}", incident.id)),
            data: json!({
                "incident": {
                    "id": incident.id,
                    "source": incident.source,
                    "monitor": incident.monitor,
                    "target": incident.target,
                    "state": incident.state.as_str(),
                    "reason": incident.reason,
                    "message": incident.message,
                    "alerts": incident.alerts,
                    "steps": incident.steps,
                    "choice": choice,
                }
            }),
        }
    }

    /// A canary's run was judged (`event`: [`CANARY_FAILED`] or [`CANARY_RECOVERED`]). Notices
    /// of one canary share a quiet period, so a flapping canary makes a digest.
    pub fn canary(event: &str, run: &muster_api::CanaryRun, at: i64) -> Notice {
        Notice {
            event: event.to_owned(),
            at,
            subject: format!("canary:{}", run.canary),
            group: format!("canary:{}", run.canary),
            path: Some("/#canaries".to_owned()),
            data: json!({
                "canary": {
                    "name": run.canary,
                    "run": run.id,
                    "outcome": run.outcome.as_str(),
                    "leg": run.leg.map(|l| l.as_str()),
                    "reason": run.reason,
                    "latency_ms": run.latency_ms,
                    "fired_at": run.fired_at,
                    "task": run.task_id,
                    "agent": run.agent_id,
                }
            }),
        }
    }

    /// The task's kind, for rules that filter by kind.
    pub fn task_kind(&self) -> Option<&str> {
        self.data.pointer("/task/kind").and_then(Value::as_str)
    }

    /// A label of the task, for rules that filter by label.
    pub fn task_label(&self, name: &str) -> Option<&str> {
        self.data.get("task")?.get("labels")?.get(name)?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_carries_the_events_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's events table differs from notice::markdown_table(); paste:\n{table}"
        );
    }

    #[test]
    fn a_task_notice_carries_what_rules_filter_by() {
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let id = Uuid::now_v7();
        let notice = Notice::task_failed(
            FailedTask {
                id,
                kind: "backup",
                labels: &labels,
                attempt: 3,
                error: "disk full",
                agent_id: Some("nas"),
            },
            5,
        );
        assert_eq!(notice.task_kind(), Some("backup"));
        assert_eq!(notice.task_label("env"), Some("prod"));
        assert_eq!(notice.task_label("team"), None);
        assert_eq!(notice.group, "task-kind:backup");
        assert_eq!(notice.subject, format!("task:{id}"));
        let back: Notice = serde_json::from_value(serde_json::to_value(&notice).unwrap()).unwrap();
        assert_eq!(back, notice);
    }
}
