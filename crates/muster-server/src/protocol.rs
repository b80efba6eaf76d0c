//! The agent protocol's verbs: register, heartbeat, claim (the long-poll), and the reports of
//! a running attempt (logs, complete, fail). The HTTP handlers only parse and answer; what an
//! agent's message means is decided here, beside [`crate::operator`]'s verbs.

use std::time::Duration;

use muster_api::limits::{
    MAX_CLAIM_BATCH, MAX_CONCURRENCY, MAX_ERROR_CHARS, MAX_HOST_CHARS, MAX_ID_CHARS,
    MAX_KIND_CHARS, MAX_KINDS, MAX_LINES, MAX_REPORT_BATCH, MAX_VERSION_CHARS, MAX_WAIT_S,
};
use muster_api::{
    Agent, AgentStatus, AppendLogs, ClaimedTasks, CompleteTask, ErrorCode, FailTask, Heartbeat,
    HeartbeatAck, RegisterAgent, Report, ReportOutcome, ReportResult, Task,
};
use uuid::Uuid;

use tokio::sync::oneshot;

use crate::app::{App, AppState};
use crate::bounds;
use crate::changes::AgentChange;
use crate::error::{ApiError, StoreError};
use crate::handoff;
use crate::operator;
use crate::store::{AttemptEnd, AttemptReport, DrainBy};

fn not_registered(agent_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("agent {agent_id} is not registered; register again"),
    )
}

fn validate_instance_id(instance_id: &Option<String>) -> Result<(), ApiError> {
    if let Some(id) = instance_id
        && (id.trim().is_empty()
            || bounds::longer_than(id, MAX_ID_CHARS)
            || id.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "instance_id",
            format!(
                "must be 1 to {MAX_ID_CHARS} characters, not blank, without control characters"
            ),
        ));
    }
    Ok(())
}

fn validate_registration(reg: &RegisterAgent) -> Result<(), ApiError> {
    validate_instance_id(&reg.instance_id)?;
    let id = &reg.agent_id;
    if id.trim().is_empty() || bounds::longer_than(id, MAX_ID_CHARS) {
        return Err(ApiError::invalid(
            "agent_id",
            format!("must be 1 to {MAX_ID_CHARS} characters, not blank"),
        ));
    }
    if id.contains('/') || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "agent_id",
            "must not contain '/' or control characters",
        ));
    }
    if let Some(n) = reg.max_concurrency
        && !(1..=MAX_CONCURRENCY).contains(&n)
    {
        return Err(ApiError::invalid(
            "max_concurrency",
            format!("must be between 1 and {MAX_CONCURRENCY}"),
        ));
    }
    bounds::text("host", &reg.host, MAX_HOST_CHARS)?;
    bounds::capabilities(&reg.capabilities)?;
    bounds::mcp_servers(&reg.mcp_servers)?;
    bounds::labels(&reg.labels)?;
    if let Some(version) = &reg.version {
        bounds::text("version", version, MAX_VERSION_CHARS)?;
    }
    bounds::count("kinds", &reg.kinds, MAX_KINDS)?;
    for (i, kind) in reg.kinds.iter().enumerate() {
        bounds::required_text(&format!("kinds[{i}]"), kind, MAX_KIND_CHARS)?;
    }
    Ok(())
}

/// A registration: the agent as it now stands, and whether it is new.
pub struct Registered {
    pub agent: Agent,
    pub created: bool,
}

/// Records (or refreshes) an agent; it may take work at once.
pub async fn register(app: &App, reg: RegisterAgent) -> Result<Registered, ApiError> {
    validate_registration(&reg)?;
    let now = app.now_ms();
    let registered = app.store.register_agent(reg, now).await?;
    let agent = registered.agent;
    let created = registered.created;
    if !registered.changes.is_empty() {
        tracing::warn!(
            agent_id = %agent.agent_id,
            tasks = registered.changes.len(),
            "agent started again as a new process; its earlier tasks go back to the queue"
        );
    }
    for change in registered.changes {
        app.changes.task(change);
    }
    app.changes.agent(AgentChange::Registered {
        agent: Box::new(agent.clone()),
        at_ms: now,
    });
    let mut agent = agent;
    app.registry.decorate(&mut agent);
    Ok(Registered { agent, created })
}

/// A heartbeat: the agent is alive, its load is this, and (when it lists them) these are the
/// attempts it runs. Answers its status and the tasks it must stop.
pub async fn heartbeat(
    app: &App,
    agent_id: &str,
    beat: Heartbeat,
) -> Result<HeartbeatAck, ApiError> {
    if let Some(running) = &beat.running {
        // No agent runs more than the largest max_concurrency.
        bounds::count("running", running, MAX_CONCURRENCY as usize)?;
    }
    for (field, value) in [
        ("cpu_percent", beat.cpu_percent),
        ("memory_percent", beat.memory_percent),
    ] {
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(ApiError::invalid(field, "must be between 0 and 100"));
        }
    }
    let now = app.now_ms();
    let mut status = app
        .registry
        .heartbeat(agent_id, now, beat.cpu_percent, beat.memory_percent)
        .ok_or_else(|| not_registered(agent_id))?;
    let settings = app.settings();
    let lease_until = now + settings.lease.as_millis() as i64;
    let cap = settings.unlisted_lease_cap.as_millis() as i64;
    let cancel = app
        .store
        .heartbeat(agent_id, beat.running, lease_until, cap)
        .await?;
    if status == AgentStatus::Offline {
        // It was given up on, but it is back: it may take work again (unless it was drained).
        let back = app.store.agent_back(agent_id, now).await?;
        app.changes.agent(AgentChange::Status {
            agent_id: agent_id.to_owned(),
            status: back,
        });
        status = back;
    }
    app.changes.agent(AgentChange::Load {
        agent_id: agent_id.to_owned(),
        cpu_percent: beat.cpu_percent,
        memory_percent: beat.memory_percent,
    });
    Ok(HeartbeatAck { status, cancel })
}

/// What a claim hands the agent: a task now running (or none), and running tasks to stop.
pub struct Claim {
    pub task: Option<Task>,
    pub cancel: Vec<Uuid>,
}

/// Waits up to `wait_s` for a task assigned to the agent and starts its next attempt. Returns
/// early, without a task, when one of the agent's running tasks must be cancelled or the
/// server shuts down. A batch claim of one.
pub async fn claim(app: &AppState, agent_id: &str, wait_s: u64) -> Result<Claim, ApiError> {
    let batch = claim_up_to(app, agent_id, wait_s, 1).await?;
    Ok(Claim {
        task: batch.tasks.into_iter().next(),
        cancel: batch.cancel,
    })
}

/// Checks a batch claim's `max`: 1 to [`MAX_CLAIM_BATCH`].
pub fn claim_max(max: Option<u32>) -> Result<usize, ApiError> {
    match max {
        None => Ok(1),
        Some(n) if (1..=MAX_CLAIM_BATCH).contains(&n) => Ok(n as usize),
        Some(_) => Err(ApiError::invalid(
            "max",
            format!("must be between 1 and {MAX_CLAIM_BATCH}"),
        )),
    }
}

/// The long-poll for up to `max` tasks: waits up to `wait_s` for tasks assigned to the agent
/// and starts the next attempt of as many as are assigned (at most `max`), answering as soon
/// as one is claimed. Like [`claim`], it answers early without tasks for a cancel or a
/// shutdown.
///
/// While it waits, the long-poll stands in the registry's line: the dispatcher starts tasks
/// for it in the assignment's own update and hands them over, so a task submitted to an idle
/// agent costs one commit after the submit's, not two. Tasks started for a long-poll that hung
/// up go back to assigned ([`handoff`]).
pub async fn claim_up_to(
    app: &AppState,
    agent_id: &str,
    wait_s: u64,
    max: usize,
) -> Result<ClaimedTasks, ApiError> {
    if wait_s > MAX_WAIT_S {
        return Err(ApiError::invalid(
            "wait",
            format!("must be at most {MAX_WAIT_S} seconds"),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    let waker = app
        .registry
        .waker(agent_id)
        .ok_or_else(|| not_registered(agent_id))?;
    let mut woken = false;
    loop {
        app.registry
            .touch(agent_id, app.now_ms())
            .ok_or_else(|| not_registered(agent_id))?;
        // Enabled before the claim so that an assignment landing in between still wakes us.
        let notified = waker.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let lease_ms = app.settings().lease.as_millis() as i64;
        let answer = claim_assigned(app, agent_id, max, lease_ms).await?;
        if !answer.tasks.is_empty() {
            return Ok(answer);
        }
        // A wake-up without a task means a cancel for this agent: answer at once.
        if (woken && !answer.cancel.is_empty()) || tokio::time::Instant::now() >= deadline {
            return Ok(answer);
        }
        let (waiter, handed) = app
            .registry
            .wait_for_tasks(agent_id, max, lease_ms)
            .ok_or_else(|| not_registered(agent_id))?;
        tokio::pin!(handed);
        let mut shutting_down = false;
        tokio::select! {
            tasks = &mut handed => match tasks {
                Ok(tasks) => return Ok(ClaimedTasks { tasks, cancel: answer.cancel }),
                // The dispatcher took this waiter but started nothing: claim again.
                Err(_) => continue,
            },
            _ = &mut notified => woken = true,
            _ = tokio::time::sleep_until(deadline) => {}
            _ = app.shutdown.cancelled() => shutting_down = true,
        }
        if !app.registry.withdraw(agent_id, waiter) {
            // The dispatcher took this waiter: its answer is one commit away.
            if let Ok(tasks) = handed.await
                && !tasks.is_empty()
            {
                return Ok(ClaimedTasks {
                    tasks,
                    cancel: answer.cancel,
                });
            }
        }
        if shutting_down {
            return Ok(answer);
        }
    }
}

/// Claims up to `max` of the tasks already assigned to the agent. The claim runs on its own
/// task and hands its answer over, so a long-poll that hangs up while it commits leaves no
/// task running that no one runs ([`handoff`]).
async fn claim_assigned(
    app: &AppState,
    agent_id: &str,
    max: usize,
    lease_ms: i64,
) -> Result<ClaimedTasks, ApiError> {
    let (tx, rx) = oneshot::channel();
    let app = app.clone();
    let agent_id = agent_id.to_owned();
    tokio::spawn(async move {
        let now = app.now_ms();
        let claimed = app
            .store
            .claim_many(&agent_id, max, now, now + lease_ms)
            .await;
        let claimed = claimed.map(|claimed| {
            app.changes.metrics.started("claimed", claimed.tasks.len());
            for change in claimed.changes {
                app.changes.task(change);
            }
            ClaimedTasks {
                tasks: claimed.tasks,
                cancel: claimed.cancel,
            }
        });
        let tasks_of =
            |claimed: Result<ClaimedTasks, _>| claimed.map(|c| c.tasks).unwrap_or_default();
        handoff::hand_over(tx, claimed, tasks_of, app.store.as_ref(), &app.changes, now).await;
    });
    match rx.await {
        Ok(claimed) => Ok(claimed?),
        Err(_) => Err(StoreError::Unavailable("the claim ended without an answer".into()).into()),
    }
}

/// Stores log lines of the running attempt; refused (409) for an attempt that is not current.
/// Past `LOG_LIMIT` bytes of text per task, lines are counted instead of kept.
pub async fn append_logs(app: &App, task_id: Uuid, logs: AppendLogs) -> Result<usize, ApiError> {
    if logs.lines.len() > MAX_LINES {
        return Err(ApiError::invalid(
            "lines",
            format!("at most {MAX_LINES} lines per post"),
        ));
    }
    let max_bytes = app.settings().log_limit as u64;
    let accepted = app
        .store
        .append_logs(task_id, logs, max_bytes, app.now_ms())
        .await?;
    app.changes.logs_appended(task_id);
    Ok(accepted)
}

/// The attempt succeeded.
pub async fn complete(app: &App, task_id: Uuid, req: CompleteTask) -> Result<Task, ApiError> {
    let changed = app
        .store
        .complete(task_id, req.attempt, req.result, req.usage, app.now_ms())
        .await?;
    app.changes.task(changed.change);
    Ok(changed.task)
}

fn check_error_text(error: &str) -> Result<(), ApiError> {
    if bounds::longer_than(error, MAX_ERROR_CHARS) {
        return Err(ApiError::invalid(
            "error",
            format!("must be at most {MAX_ERROR_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The attempt failed; the lifecycle rules decide between a retry and the end.
pub async fn fail(app: &App, task_id: Uuid, req: FailTask) -> Result<Task, ApiError> {
    check_error_text(&req.error)?;
    let changed = app
        .store
        .fail(task_id, req.attempt, req.error, req.retryable, app.now_ms())
        .await?;
    app.changes.task(changed.change);
    Ok(changed.task)
}

/// Reads one report of a batch; answers the task id it names, when it names one that can be
/// read, beside the verdict.
fn read_report(raw: serde_json::Value) -> (Option<Uuid>, Result<AttemptReport, ApiError>) {
    let task_id = raw
        .get("task_id")
        .and_then(|v| v.as_str())
        .and_then(|v| Uuid::parse_str(v).ok());
    (task_id, parse_report(raw))
}

/// One report of a batch read as the single routes read theirs: its fields as `complete` or
/// `fail` take them, refused (422, naming the field) as they would refuse them.
fn parse_report(raw: serde_json::Value) -> Result<AttemptReport, ApiError> {
    let report: Report = serde_path_to_error::deserialize(raw)
        .map_err(|err| ApiError::new(ErrorCode::InvalidField, err.to_string()))?;
    let end = match report.outcome {
        ReportOutcome::Completed => {
            if report.error.is_some() {
                return Err(ApiError::invalid(
                    "error",
                    "only a failed report carries an error",
                ));
            }
            AttemptEnd::Completed {
                result: report.result,
                usage: report.usage,
            }
        }
        ReportOutcome::Failed => {
            if !report.result.is_null() {
                return Err(ApiError::invalid(
                    "result",
                    "only a completed report carries a result",
                ));
            }
            if report.usage.is_some() {
                return Err(ApiError::invalid(
                    "usage",
                    "only a completed report carries usage",
                ));
            }
            let error = report.error.ok_or_else(|| {
                ApiError::invalid("error", "a failed report must say what went wrong")
            })?;
            check_error_text(&error)?;
            AttemptEnd::Failed {
                error,
                retryable: report.retryable,
            }
        }
    };
    Ok(AttemptReport {
        task_id: report.task_id,
        attempt: report.attempt,
        end,
    })
}

/// The status of an item of a batch that was applied (or, before the store answered, is valid).
const APPLIED: u16 = 200;

/// The verdict on one item of a batch: the status and message the single route would have
/// answered.
fn verdict(err: &ApiError) -> (u16, Option<String>) {
    (err.code.http_status(), Some(err.message.clone()))
}

/// Many attempts' ends at once, each judged alone as `complete` and `fail` judge one (a stale
/// attempt is refused alone; the rest are applied), all in one store operation and so one
/// commit, answered after it. Like the single routes, a report is not checked against the
/// agent that sends it: the attempt number is the fence. The agent must be registered, as for
/// its heartbeat and claim, so a forgotten agent learns to register again.
pub async fn report_many(
    app: &App,
    agent_id: &str,
    reports: Vec<serde_json::Value>,
) -> Result<Vec<ReportResult>, ApiError> {
    bounds::count("reports", &reports, MAX_REPORT_BATCH)?;
    if app.registry.status(agent_id).is_none() {
        return Err(not_registered(agent_id));
    }
    let mut results = Vec::with_capacity(reports.len());
    let mut valid = Vec::with_capacity(reports.len());
    for raw in reports {
        let (task_id, read) = read_report(raw);
        let (status, error) = match read {
            Ok(report) => {
                valid.push(report);
                (APPLIED, None)
            }
            Err(err) => verdict(&err),
        };
        results.push(ReportResult {
            task_id,
            status,
            error,
        });
    }
    let applied = if valid.is_empty() {
        Vec::new()
    } else {
        app.store.report_many(valid, app.now_ms()).await?
    };
    // The store answered the valid reports in order: they fill the results still at 200.
    let mut applied = applied.into_iter();
    for result in results.iter_mut().filter(|r| r.error.is_none()) {
        match applied.next() {
            Some(Ok(change)) => app.changes.task(change),
            Some(Err(err)) => (result.status, result.error) = verdict(&ApiError::from(err)),
            None => {
                (result.status, result.error) = verdict(&ApiError::new(
                    ErrorCode::Unavailable,
                    "the store did not answer this report; send it again",
                ))
            }
        }
    }
    Ok(results)
}

/// An agent process drains itself on its way out, naming its `instance_id`: no task is
/// assigned to it while the server still believes it alive. Its next process undoes it.
pub async fn drain_self(app: &App, agent_id: &str, instance_id: String) -> Result<Agent, ApiError> {
    validate_instance_id(&Some(instance_id.clone()))?;
    let agent = app
        .store
        .drain_agent(agent_id, DrainBy::Instance(instance_id), app.now_ms())
        .await?;
    operator::announce_status(app, &agent);
    operator::agent(app, agent_id).await
}

#[cfg(test)]
mod tests {
    use muster_api::limits::AGENT_ID_PATTERN;

    use super::*;

    fn registration(agent_id: &str) -> RegisterAgent {
        serde_json::from_value(serde_json::json!({ "agent_id": agent_id })).unwrap()
    }

    /// The OpenAPI document's agent id pattern accepts exactly the ids a registration does.
    #[test]
    fn the_documents_agent_id_pattern_agrees_with_registration() {
        let pattern = regex::Regex::new(AGENT_ID_PATTERN).unwrap();
        let characters = (0..=0x3100)
            .chain([0xfeff, 0x1_f600, 0x10_ffff])
            .filter_map(char::from_u32);
        for c in characters {
            for id in [c.to_string(), format!("a{c}b"), format!(" {c} ")] {
                assert_eq!(
                    pattern.is_match(&id),
                    validate_registration(&registration(&id)).is_ok(),
                    "{id:?}"
                );
            }
        }
        let longest = "é".repeat(MAX_ID_CHARS);
        assert!(validate_registration(&registration(&longest)).is_ok());
        assert!(validate_registration(&registration(&format!("{longest}x"))).is_err());
    }
}
