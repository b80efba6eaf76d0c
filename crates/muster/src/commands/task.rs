//! `muster task …`: submit tasks, list and inspect them, cancel and retry them, read and
//! follow their logs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use futures::StreamExt;
use muster_api::{Labels, LogLine, LogPage, SubmitTask, Task, TaskList, TaskState};
use muster_client::{LogEvent, TaskQuery};
use serde_json::Value;
use uuid::Uuid;

use super::connection::Session;
use crate::output;

/// The exit status of `task logs --follow` when the task ended failed or cancelled, distinct
/// from 1 (the command itself failed) so a script can tell the two apart.
const TASK_DID_NOT_COMPLETE: u8 = 3;

/// Lines per request when reading stored logs.
const LOG_PAGE: usize = 1000;

/// Tasks per request when `task list --all` follows the cursors.
const LIST_PAGE_ALL: usize = 500;

#[derive(Subcommand)]
pub(crate) enum TaskCommand {
    /// Submit a task; prints its id and state.
    Submit(SubmitArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task: its fields, its attempts and why it went to its agent.
    Show {
        #[arg(value_parser = parse_task_id)]
        id: Uuid,
    },
    /// Cancel a task: a queued one at once, a running one by telling its agent to stop.
    Cancel {
        #[arg(value_parser = parse_task_id)]
        id: Uuid,
    },
    /// Queue a failed or cancelled task again.
    Retry {
        #[arg(value_parser = parse_task_id)]
        id: Uuid,
    },
    /// Print a task's log lines as `time stream text`.
    #[command(
        after_help = "With --follow the exit status is 0 when the task completed, \
        3 when it failed or was cancelled, and 1 when the logs could not be read.\n\
        With --follow --json each line is one JSON document, the last one {\"state\": …}."
    )]
    Logs {
        #[arg(value_parser = parse_task_id)]
        id: Uuid,
        /// Keep printing lines as they come until the task ends, then print its final state.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Args)]
pub(crate) struct SubmitArgs {
    /// The task's kind; agents choose their handler by it.
    kind: String,
    /// The payload, as JSON text.
    #[arg(long, value_name = "JSON", value_parser = parse_json, conflicts_with = "payload_file")]
    payload: Option<Value>,
    /// Read the payload (JSON) from FILE; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// A capability the agent must have; repeat for several.
    #[arg(long = "cap", value_name = "CAP")]
    capabilities: Vec<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Retries after the first attempt (the server's default otherwise).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Upper bound of one attempt, in seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u32>,
    /// At most one task per lock key is assigned or running at a time.
    #[arg(long, value_name = "K")]
    lock_key: Option<String>,
    /// Submitting again with the same key returns the first task instead of a new one.
    #[arg(long, value_name = "K")]
    idempotency_key: Option<String>,
    /// Not before this time (RFC 3339, e.g. 2025-05-01T22:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    run_after: Option<DateTime<Utc>>,
    /// A label `key=value`; repeat for several.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// Only tasks in this state (queued, assigned, running, completed, failed, cancelled).
    #[arg(long, value_parser = parse_state)]
    state: Option<TaskState>,
    /// Only tasks of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only tasks of this agent.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// How many tasks per page (the server's default, 50, otherwise; at most 500).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Follow the cursors to the end instead of stopping after one page.
    #[arg(long)]
    all: bool,
}

pub(crate) async fn run(session: &Session, command: TaskCommand) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Submit(args) => submit(session, args).await?,
        TaskCommand::List(args) => list(session, args).await?,
        TaskCommand::Show { id } => show(session, id).await?,
        TaskCommand::Cancel { id } => cancel(session, id).await?,
        TaskCommand::Retry { id } => retry(session, id).await?,
        TaskCommand::Logs { id, follow: false } => logs(session, id).await?,
        TaskCommand::Logs { id, follow: true } => return follow_logs(session, id).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn submit(session: &Session, args: SubmitArgs) -> anyhow::Result<()> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(payload), _) => payload.clone(),
        (None, Some(file)) => read_payload(file)?,
        (None, None) => Value::Null,
    };
    let request = SubmitTask {
        kind: args.kind,
        payload,
        capabilities: args.capabilities,
        priority: args.priority,
        max_retries: args.max_retries,
        timeout_s: args.timeout,
        lock_key: args.lock_key,
        idempotency_key: args.idempotency_key,
        run_after: args.run_after,
        labels: args.labels.into_iter().collect::<Labels>(),
    };
    let (task, created) = session
        .client
        .submit(&request)
        .await
        .map_err(|err| session.explain(err, "submit", &format!("task {:?}", request.kind)))?;
    if session.json {
        return output::emit_json(&task);
    }
    if created {
        output::emit(format!("created task {} ({})", task.id, task.state))
    } else {
        output::emit(format!(
            "existing task {} ({}): the idempotency key {:?} was used before, nothing new was queued",
            task.id,
            task.state,
            task.idempotency_key.as_deref().unwrap_or_default()
        ))
    }
}

fn read_payload(file: &Path) -> anyhow::Result<Value> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the payload from stdin")?
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the payload file {}", file.display()))?
    };
    serde_json::from_str(&text)
        .with_context(|| format!("the payload file {} is not JSON", file.display()))
}

async fn list(session: &Session, args: ListArgs) -> anyhow::Result<()> {
    let mut query = TaskQuery {
        state: args.state,
        kind: args.kind,
        agent_id: args.agent,
        limit: args.limit.or(args.all.then_some(LIST_PAGE_ALL)),
        cursor: None,
    };
    let mut tasks = Vec::new();
    let next_cursor = loop {
        let page = session
            .client
            .tasks(&query)
            .await
            .map_err(|err| session.explain(err, "list", "tasks"))?;
        tasks.extend(page.tasks);
        match page.next_cursor {
            Some(cursor) if args.all => query.cursor = Some(cursor),
            cursor => break cursor,
        }
    };
    if session.json {
        return output::emit_json(&TaskList { tasks, next_cursor });
    }
    if tasks.is_empty() {
        eprintln!("no tasks");
        return Ok(());
    }
    let mut table = output::table(&[
        "ID", "KIND", "STATE", "AGENT", "ATTEMPT", "PRIORITY", "CREATED",
    ]);
    for task in &tasks {
        table.add_row(vec![
            task.id.to_string(),
            task.kind.clone(),
            state_text(task),
            output::or_dash(task.agent_id.as_deref()),
            task.attempt.to_string(),
            task.priority.to_string(),
            output::ago(task.created_at),
        ]);
    }
    output::emit(table.trim_fmt())?;
    if next_cursor.is_some() {
        eprintln!("more tasks exist: --all lists them all");
    }
    Ok(())
}

/// The state, with a pending cancel said plainly.
fn state_text(task: &Task) -> String {
    if task.cancel_requested && !task.state.is_final() {
        format!("{} (cancelling)", task.state)
    } else {
        task.state.to_string()
    }
}

async fn show(session: &Session, id: Uuid) -> anyhow::Result<()> {
    let task = session
        .client
        .task(id)
        .await
        .map_err(|err| session.explain(err, "show", &format!("task {id}")))?;
    if session.json {
        return output::emit_json(&task);
    }
    output::emit(task_fields(&task).trim_fmt())?;
    if !task.attempts.is_empty() {
        let mut attempts = output::table(&[
            "ATTEMPT", "AGENT", "STARTED", "DURATION", "OUTCOME", "ERROR",
        ]);
        for attempt in &task.attempts {
            let duration = attempt.ended_at.map_or_else(
                || "-".to_owned(),
                |end| output::compact_span((end - attempt.started_at).num_seconds().max(0) as u64),
            );
            attempts.add_row(vec![
                attempt.attempt.to_string(),
                attempt.agent_id.clone(),
                output::ago(attempt.started_at),
                duration,
                attempt.outcome.to_string(),
                output::or_dash(attempt.error.as_deref()),
            ]);
        }
        output::emit(format!("\nattempts:\n{}", attempts.trim_fmt()))?;
    }
    if let Some(assignment) = &task.assignment {
        let mut candidates =
            output::table(&["CANDIDATE", "SCORE", "ACTIVE", "CPU", "MEMORY", "CHOSEN"]);
        for candidate in &assignment.candidates {
            candidates.add_row(vec![
                candidate.agent_id.clone(),
                format!("{:.3}", candidate.score),
                candidate.active.to_string(),
                output::percent(Some(candidate.cpu_percent)),
                output::percent(Some(candidate.memory_percent)),
                if candidate.agent_id == assignment.agent_id {
                    "yes"
                } else {
                    ""
                }
                .to_owned(),
            ]);
        }
        output::emit(format!(
            "\nassigned to {} at {}, from these candidates:\n{}",
            assignment.agent_id,
            output::when(assignment.assigned_at),
            candidates.trim_fmt()
        ))?;
    }
    Ok(())
}

fn task_fields(task: &Task) -> comfy_table::Table {
    let compact = |value: &Option<Value>| match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(v) => v.to_string(),
    };
    let mut rows = vec![
        ("id", task.id.to_string()),
        ("kind", task.kind.clone()),
        ("state", state_text(task)),
        ("agent", output::or_dash(task.agent_id.as_deref())),
        (
            "attempt",
            format!("{} (retries allowed: {})", task.attempt, task.max_retries),
        ),
        ("priority", task.priority.to_string()),
        ("capabilities", output::list_or_dash(&task.capabilities)),
        ("labels", output::labels(&task.labels)),
        ("lock key", output::or_dash(task.lock_key.as_deref())),
        (
            "idempotency key",
            output::or_dash(task.idempotency_key.as_deref()),
        ),
        (
            "timeout",
            task.timeout_s
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
        ),
    ];
    if task.run_after.is_some() {
        rows.push(("run after", output::when_opt(task.run_after)));
    }
    rows.extend([
        ("created", output::when(task.created_at)),
        ("updated", output::when(task.updated_at)),
        ("finished", output::when_opt(task.finished_at)),
        ("payload", compact(&Some(task.payload.clone()))),
        ("result", compact(&task.result)),
    ]);
    if task.usage.is_some() {
        rows.push(("usage", compact(&task.usage)));
    }
    rows.push(("error", output::or_dash(task.error.as_deref())));
    output::fields(rows)
}

async fn cancel(session: &Session, id: Uuid) -> anyhow::Result<()> {
    let task = session
        .client
        .cancel(id)
        .await
        .map_err(|err| session.explain(err, "cancel", &format!("task {id}")))?;
    if session.json {
        return output::emit_json(&task);
    }
    if task.state == TaskState::Cancelled {
        output::emit(format!("cancelled task {id}"))
    } else {
        output::emit(format!(
            "asked agent {} to stop task {id} ({}); it ends cancelled once the agent stops it",
            output::or_dash(task.agent_id.as_deref()),
            task.state
        ))
    }
}

async fn retry(session: &Session, id: Uuid) -> anyhow::Result<()> {
    let task = session
        .client
        .retry(id)
        .await
        .map_err(|err| session.explain(err, "retry", &format!("task {id}")))?;
    if session.json {
        return output::emit_json(&task);
    }
    output::emit(format!("task {id} is {} again", task.state))
}

fn log_text(line: &LogLine) -> String {
    format!(
        "{} {} {}",
        output::log_time(line.ts),
        line.stream,
        line.text
    )
}

async fn logs(session: &Session, id: Uuid) -> anyhow::Result<()> {
    let mut after = 0;
    // Kept only for --json, which prints one document at the end; tables stream page by page.
    let mut kept = Vec::new();
    let mut printed = 0;
    loop {
        let page = session
            .client
            .logs(id, after, LOG_PAGE)
            .await
            .map_err(|err| session.explain(err, "read the logs of", &format!("task {id}")))?;
        if session.json {
            kept.extend(page.lines);
        } else {
            for line in &page.lines {
                output::emit(log_text(line))?;
            }
            printed += page.lines.len();
        }
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    if session.json {
        output::emit_json(&LogPage {
            lines: kept,
            next_after: None,
        })?;
    } else if printed == 0 {
        eprintln!("no log lines for task {id}");
    }
    Ok(())
}

async fn follow_logs(session: &Session, id: Uuid) -> anyhow::Result<ExitCode> {
    let subject = format!("task {id}");
    let explain = |err| session.explain(err, "follow the logs of", &subject);
    let stream = session.client.follow_logs(id, 0).await.map_err(explain)?;
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event.map_err(explain)? {
            LogEvent::Line(line) if session.json => output::emit_json_line(&line)?,
            LogEvent::Line(line) => output::emit(log_text(&line))?,
            LogEvent::End(state) => return finished(session, id, state).await,
        }
    }
    anyhow::bail!("the log stream of task {id} ended before the task did (the server stopped?)")
}

/// Reports how a followed task ended and picks the exit status from it.
async fn finished(session: &Session, id: Uuid, state: TaskState) -> anyhow::Result<ExitCode> {
    if session.json {
        output::emit_json_line(&serde_json::json!({ "state": state }))?;
    } else {
        // The error is worth one more request; without it the line still says how it ended.
        let error = match state {
            TaskState::Failed => session.client.task(id).await.ok().and_then(|t| t.error),
            _ => None,
        };
        match error {
            Some(error) => eprintln!("task {id} {state}: {error}"),
            None => eprintln!("task {id} {state}"),
        }
    }
    Ok(if state == TaskState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TASK_DID_NOT_COMPLETE)
    })
}

// --- argument parsers: a bad value is a usage error (exit 2) that names the flag.

fn parse_task_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        format!("{text:?} is not a task id (a UUID such as 0196a3c4-5e1f-7b2a-9c3d-4e5f6a7b8c9d)")
    })
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| format!("{err}; expected RFC 3339 such as 2025-05-01T22:00:00Z"))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not key=value")),
    }
}

fn parse_state(text: &str) -> Result<TaskState, String> {
    TaskState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
        format!("{text:?} is not one of {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_label("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert_eq!(parse_label("q=a=b").unwrap(), ("q".into(), "a=b".into()));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
    }

    #[test]
    fn a_bad_state_lists_the_good_ones() {
        assert_eq!(parse_state("running").unwrap(), TaskState::Running);
        let err = parse_state("done").unwrap_err();
        assert!(err.contains("queued") && err.contains("cancelled"), "{err}");
    }
}
