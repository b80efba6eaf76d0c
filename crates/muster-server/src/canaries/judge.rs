//! How a canary run is judged: from what the store recorded (the task's state, end and
//! answer; the notification's state and delivery), what the run waits for next, or how it
//! ended. Every leg is judged by the time the store recorded for it, not the time the runner
//! looked, so a slow look never fails a run that got through and never passes one that did not.
//! Also: which runs an operator hears of (`canary.failed` on the first failure after a pass,
//! `canary.recovered` on the first pass after a failure). Pure.

use std::time::Duration;

use muster_api::{CanaryLeg, CanaryOutcome, Notification, NotificationState, Task, TaskState};
use serde_json::Value;

use crate::notice;

/// What a run knows once its hook took the request and submitted the task.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub now: i64,
    pub fired_at: i64,
    pub deadline: i64,
    /// The value the answer must echo.
    pub nonce: &'a str,
    /// The task as it stands now (with `waiting` filled in, for a queued one).
    pub task: &'a Task,
    /// The canary has a channel: a right answer must then reach it as a notification.
    pub channel: bool,
    /// The `canary.passed` notification, once queued.
    pub notification: Option<&'a Notification>,
}

/// What the run does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The task has not ended and there is time left: wait for it.
    WaitForTask,
    /// The answer is right: queue `canary.passed` for the channel.
    Notify {
        agent_id: String,
    },
    /// The notification waits for (or is in) its send.
    WaitForDelivery,
    Done(Verdict),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every leg got through by the deadline; the latency runs from the firing to the last leg.
    Passed {
        latency_ms: u64,
    },
    Failed {
        leg: CanaryLeg,
        reason: String,
    },
}

impl Verdict {
    pub fn outcome(&self) -> CanaryOutcome {
        match self {
            Verdict::Passed { .. } => CanaryOutcome::Passed,
            Verdict::Failed { .. } => CanaryOutcome::Failed,
        }
    }
}

fn failed(leg: CanaryLeg, reason: impl Into<String>) -> Step {
    Step::Done(Verdict::Failed {
        leg,
        reason: reason.into(),
    })
}

/// `ms` as an operator reads it (`1m`, `2s 500ms`).
fn span(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// The next step of a run whose hook took its request.
pub fn next(p: &Progress<'_>) -> Step {
    let within = span(p.deadline - p.fired_at);
    let overdue = p.now >= p.deadline;
    let task = p.task;
    let agent = task.agent_id.as_deref().unwrap_or("none");
    match task.state {
        TaskState::Queued | TaskState::Assigned if overdue => {
            let why = match (&task.waiting, task.state) {
                (_, TaskState::Assigned) => {
                    format!("agent {agent} was given the task but did not claim it")
                }
                (Some(waiting), _) => waiting.clone(),
                (None, _) => "it is still queued".to_owned(),
            };
            failed(
                CanaryLeg::Agent,
                format!("no agent took the task within {within}: {why}"),
            )
        }
        TaskState::Running if overdue => failed(
            CanaryLeg::Task,
            format!("agent {agent} took the task but did not answer within {within}"),
        ),
        TaskState::Queued | TaskState::Assigned | TaskState::Running => Step::WaitForTask,
        TaskState::Failed => failed(
            CanaryLeg::Task,
            format!(
                "the task failed on agent {agent}: {}",
                task.error.as_deref().unwrap_or("no error given")
            ),
        ),
        TaskState::Cancelled => failed(CanaryLeg::Task, "the task was cancelled"),
        TaskState::Completed => {
            let answered = task.finished_at.map_or(p.now, |at| at.timestamp_millis());
            if answered > p.deadline {
                return failed(
                    CanaryLeg::Task,
                    format!(
                        "agent {agent} answered {} after the firing, later than within ({within})",
                        span(answered - p.fired_at)
                    ),
                );
            }
            let agent_id = match check_answer(task.result.as_ref(), p.nonce, agent) {
                Ok(agent_id) => agent_id,
                Err(why) => return failed(CanaryLeg::Answer, why),
            };
            if !p.channel {
                return Step::Done(Verdict::Passed {
                    latency_ms: (answered - p.fired_at).max(0) as u64,
                });
            }
            delivery(p, agent_id, &within, overdue)
        }
    }
}

/// The notification leg of a run whose answer was right.
fn delivery(p: &Progress<'_>, agent_id: String, within: &str, overdue: bool) -> Step {
    let Some(n) = p.notification else {
        if overdue {
            return failed(
                CanaryLeg::Notification,
                format!("the answer left no time within {within} to send the notification"),
            );
        }
        return Step::Notify { agent_id };
    };
    let last_error = || n.error.clone().unwrap_or_else(|| "not sent yet".to_owned());
    match n.state {
        NotificationState::Delivered => {
            let at = n.finished_at.map_or(p.now, |t| t.timestamp_millis());
            if at > p.deadline {
                failed(
                    CanaryLeg::Notification,
                    format!(
                        "the notification reached {} {} after the firing, later than within \
                         ({within})",
                        n.channel,
                        span(at - p.fired_at)
                    ),
                )
            } else {
                Step::Done(Verdict::Passed {
                    latency_ms: (at - p.fired_at).max(0) as u64,
                })
            }
        }
        NotificationState::Failed => failed(
            CanaryLeg::Notification,
            format!(
                "{} did not take the notification: {}",
                n.channel,
                last_error()
            ),
        ),
        NotificationState::Pending if overdue => failed(
            CanaryLeg::Notification,
            format!(
                "the notification did not reach {} within {within}: {}",
                n.channel,
                last_error()
            ),
        ),
        NotificationState::Pending => Step::WaitForDelivery,
    }
}

/// Checks the agent's answer: a JSON object echoing the run's `nonce` and naming the agent
/// that ran it (`ran_on`). Answers the agent's id, or what is wrong.
pub fn check_answer(result: Option<&Value>, nonce: &str, ran_on: &str) -> Result<String, String> {
    let Some(answer) = result.and_then(Value::as_object) else {
        let shown = result.map_or("nothing".to_owned(), |v| {
            crate::notify::cut(&v.to_string(), 80)
        });
        return Err(format!(
            "the answer is malformed: expected a JSON object with nonce and agent, got {shown}"
        ));
    };
    match answer.get("nonce").and_then(Value::as_str) {
        None => return Err("the answer is malformed: it has no nonce".into()),
        Some(given) if given != nonce => {
            return Err(format!(
                "the answer's nonce {:?} is not the run's: it answers another request",
                crate::notify::cut(given, 80)
            ));
        }
        Some(_) => {}
    }
    match answer.get("agent").and_then(Value::as_str) {
        None | Some("") => Err("the answer is malformed: it names no agent".into()),
        Some(named) if named != ran_on => Err(format!(
            "the answer names agent {:?}, but the task ran on {ran_on}",
            crate::notify::cut(named, 80)
        )),
        Some(named) => Ok(named.to_owned()),
    }
}

/// The notice a run's verdict sends, given the verdict of the canary's run before it (passed
/// or failed; interrupted runs do not count): `canary.failed` when it fails after a pass (or
/// as its first run), `canary.recovered` when it passes after a failure. A long outage is one
/// message, not one per firing; notify rules' quiet periods fold a flapping canary's.
pub fn notice_for(previous: Option<CanaryOutcome>, now: CanaryOutcome) -> Option<&'static str> {
    match (previous, now) {
        (Some(CanaryOutcome::Failed), CanaryOutcome::Failed) => None,
        (_, CanaryOutcome::Failed) => Some(notice::CANARY_FAILED),
        (Some(CanaryOutcome::Failed), CanaryOutcome::Passed) => Some(notice::CANARY_RECOVERED),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    const FIRED: i64 = 1_800_000_000_000;
    const DEADLINE: i64 = FIRED + 60_000;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap()
    }

    fn task(state: TaskState) -> Task {
        serde_json::from_value(json!({
            "id": Uuid::now_v7(), "kind": "canary", "state": state, "payload": {},
            "capabilities": [], "priority": 0, "max_retries": 0, "timeout_s": 60,
            "lock_key": null, "idempotency_key": null, "run_after": null, "labels": {},
            "attempt": 1, "agent_id": "nas", "cancel_requested": false,
            "created_at": at(FIRED), "updated_at": at(FIRED), "finished_at": null,
            "result": null, "usage": null, "error": null, "assignment": null,
        }))
        .unwrap()
    }

    fn answered(ms: i64, result: Value) -> Task {
        let mut t = task(TaskState::Completed);
        t.finished_at = Some(at(ms));
        t.result = Some(result);
        t
    }

    fn notification(state: NotificationState, finished: Option<i64>) -> Notification {
        serde_json::from_value(json!({
            "id": Uuid::now_v7(), "channel": "phone", "event": "canary.passed",
            "subject": "canary:path", "title": "t", "message": "m", "link": null, "count": 1,
            "digest": false, "state": state, "created_at": at(FIRED),
            "next_attempt_at": null, "finished_at": finished.map(at),
            "error": if state == NotificationState::Delivered { Value::Null } else { json!("HTTP 503") },
            "attempts": [],
        }))
        .unwrap()
    }

    fn progress<'a>(
        now: i64,
        task: &'a Task,
        channel: bool,
        n: Option<&'a Notification>,
    ) -> Progress<'a> {
        Progress {
            now,
            fired_at: FIRED,
            deadline: DEADLINE,
            nonce: "n0nce",
            task,
            channel,
            notification: n,
        }
    }

    fn failure(step: Step) -> (CanaryLeg, String) {
        match step {
            Step::Done(Verdict::Failed { leg, reason }) => (leg, reason),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_right_answer_passes_with_the_latency_to_the_last_leg() {
        let good = answered(FIRED + 120, json!({"nonce": "n0nce", "agent": "nas"}));
        // Looked at late: the answer's own time counts.
        assert_eq!(
            next(&progress(DEADLINE + 5_000, &good, false, None)),
            Step::Done(Verdict::Passed { latency_ms: 120 })
        );
        assert_eq!(
            next(&progress(FIRED + 130, &good, true, None)),
            Step::Notify {
                agent_id: "nas".into()
            }
        );
        let pending = notification(NotificationState::Pending, None);
        assert_eq!(
            next(&progress(FIRED + 140, &good, true, Some(&pending))),
            Step::WaitForDelivery
        );
        let delivered = notification(NotificationState::Delivered, Some(FIRED + 450));
        assert_eq!(
            next(&progress(DEADLINE + 1, &good, true, Some(&delivered))),
            Step::Done(Verdict::Passed { latency_ms: 450 })
        );
    }

    #[test]
    fn each_leg_fails_with_a_reason_that_names_it() {
        let mut queued = task(TaskState::Queued);
        queued.agent_id = None;
        queued.waiting = Some("no online agent handles kind canary".into());
        assert_eq!(
            next(&progress(DEADLINE - 1, &queued, false, None)),
            Step::WaitForTask
        );
        let (leg, why) = failure(next(&progress(DEADLINE, &queued, false, None)));
        assert_eq!(leg, CanaryLeg::Agent);
        assert_eq!(
            why,
            "no agent took the task within 1m: no online agent handles kind canary"
        );

        let running = task(TaskState::Running);
        let (leg, why) = failure(next(&progress(DEADLINE, &running, false, None)));
        assert_eq!(leg, CanaryLeg::Task);
        assert!(
            why.contains("nas took the task but did not answer within 1m"),
            "{why}"
        );

        let mut broken = task(TaskState::Failed);
        broken.error = Some("disk full".into());
        let (leg, why) = failure(next(&progress(FIRED + 1, &broken, false, None)));
        assert_eq!(
            (leg, why.as_str()),
            (CanaryLeg::Task, "the task failed on agent nas: disk full")
        );

        let late = answered(DEADLINE + 1, json!({"nonce": "n0nce", "agent": "nas"}));
        assert_eq!(
            failure(next(&progress(DEADLINE + 2, &late, false, None))).0,
            CanaryLeg::Task
        );

        for (result, expect) in [
            (
                json!("pong"),
                "the answer is malformed: expected a JSON object",
            ),
            (json!({"agent": "nas"}), "it has no nonce"),
            (
                json!({"nonce": "stale", "agent": "nas"}),
                "nonce \"stale\" is not the run's",
            ),
            (json!({"nonce": "n0nce"}), "it names no agent"),
            (
                json!({"nonce": "n0nce", "agent": "pi"}),
                "names agent \"pi\", but the task ran on nas",
            ),
        ] {
            let t = answered(FIRED + 100, result.clone());
            let (leg, why) = failure(next(&progress(FIRED + 200, &t, true, None)));
            assert_eq!(leg, CanaryLeg::Answer, "{result}");
            assert!(why.contains(expect), "{result}: {why}");
        }

        let good = answered(FIRED + 120, json!({"nonce": "n0nce", "agent": "nas"}));
        let stuck = notification(NotificationState::Pending, None);
        let (leg, why) = failure(next(&progress(DEADLINE, &good, true, Some(&stuck))));
        assert_eq!(leg, CanaryLeg::Notification);
        assert_eq!(
            why,
            "the notification did not reach phone within 1m: HTTP 503"
        );
        let refused = notification(NotificationState::Failed, Some(FIRED + 300));
        let (leg, why) = failure(next(&progress(FIRED + 400, &good, true, Some(&refused))));
        assert_eq!(
            (leg, why.as_str()),
            (
                CanaryLeg::Notification,
                "phone did not take the notification: HTTP 503"
            )
        );
        let slow = notification(NotificationState::Delivered, Some(DEADLINE + 10));
        assert_eq!(
            failure(next(&progress(DEADLINE + 20, &good, true, Some(&slow)))).0,
            CanaryLeg::Notification
        );
        assert_eq!(
            failure(next(&progress(DEADLINE, &good, true, None))).0,
            CanaryLeg::Notification
        );
    }

    #[test]
    fn an_operator_hears_of_the_first_failure_and_of_the_recovery() {
        use CanaryOutcome::{Failed, Passed};
        assert_eq!(notice_for(None, Failed), Some(notice::CANARY_FAILED));
        assert_eq!(
            notice_for(Some(Passed), Failed),
            Some(notice::CANARY_FAILED)
        );
        assert_eq!(
            notice_for(Some(Failed), Failed),
            None,
            "a long outage is one message"
        );
        assert_eq!(
            notice_for(Some(Failed), Passed),
            Some(notice::CANARY_RECOVERED)
        );
        assert_eq!(notice_for(Some(Passed), Passed), None);
        assert_eq!(notice_for(None, Passed), None);
    }
}
