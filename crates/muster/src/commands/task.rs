//! `muster task …`: submit tasks, list and inspect them, cancel and retry them, read and
//! follow their logs. A task is named by its whole id or by enough of its start (or of its
//! end, the short id the web UI shows) to pick out one task.

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

/// Tasks per request when `task list --all` follows the cursors, or a part of an id is
/// looked up.
const LIST_PAGE_ALL: usize = 500;

/// Matches listed when a part of an id names several tasks.
const AMBIGUOUS_SHOWN: usize = 10;

const TASK_ID_HELP: &str = "The task's id, or its first characters (as many as make it \
    unique), or the 8-character short id the web UI shows";

const LOGS_EXIT_STATUS: &str = "\
Exit status:
  0  the lines were printed; with --follow: the task completed
  1  the logs could not be read (no such task, the server unreachable or refusing the key)
  2  a usage error (a bad flag or task id)
  3  with --follow: the task failed or was cancelled

With --follow --json each line is one JSON document, the last one {\"state\": …}.";

#[derive(Subcommand)]
pub(crate) enum TaskCommand {
    /// Submit a task; prints its id and state.
    Submit(SubmitArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task: its fields, its attempts and why it went to its agent.
    Show {
        #[arg(value_parser = parse_task_id, help = TASK_ID_HELP)]
        id: TaskRef,
    },
    /// Cancel a task: a queued one at once, a running one by telling its agent to stop.
    Cancel {
        #[arg(value_parser = parse_task_id, help = TASK_ID_HELP)]
        id: TaskRef,
    },
    /// Queue a failed or cancelled task again.
    Retry {
        #[arg(value_parser = parse_task_id, help = TASK_ID_HELP)]
        id: TaskRef,
    },
    /// Print a task's log lines as `time stream text`; `time stream [N] text` when the task
    /// ran more than once (N is the attempt).
    #[command(after_help = LOGS_EXIT_STATUS)]
    Logs {
        #[arg(value_parser = parse_task_id, help = TASK_ID_HELP)]
        id: TaskRef,
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
    /// Not before this time (RFC 3339, e.g. 2026-11-27T09:00:00Z).
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
        TaskCommand::Show { id } => show(session, resolve(session, id).await?).await?,
        TaskCommand::Cancel { id } => cancel(session, resolve(session, id).await?).await?,
        TaskCommand::Retry { id } => retry(session, resolve(session, id).await?).await?,
        TaskCommand::Logs { id, follow } => {
            let id = resolve(session, id).await?;
            if follow {
                return follow_logs(session, id).await;
            }
            logs(session, id).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A task as named on the command line.
#[derive(Debug, Clone)]
pub(crate) enum TaskRef {
    /// A whole id.
    Id(Uuid),
    /// Part of one: what was typed, and its hex digits in lower case without dashes.
    Part { typed: String, digits: String },
}

/// The task `task` names. A part of an id is looked up by listing the tasks (the API has no
/// search by id); it must be the start or the end of exactly one task's id.
async fn resolve(session: &Session, task: TaskRef) -> anyhow::Result<Uuid> {
    let (typed, digits) = match task {
        TaskRef::Id(id) => return Ok(id),
        TaskRef::Part { typed, digits } => (typed, digits),
    };
    let mut query = TaskQuery {
        limit: Some(LIST_PAGE_ALL),
        ..TaskQuery::default()
    };
    let mut found = Vec::new();
    loop {
        let page = session
            .client
            .tasks(&query)
            .await
            .map_err(|err| session.explain(err, "look up", &format!("task {typed}")))?;
        found.extend(page.tasks.into_iter().filter(|task| {
            let id = task.id.simple().to_string();
            id.starts_with(&digits) || id.ends_with(&digits)
        }));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    match found.as_slice() {
        [] => anyhow::bail!(
            "no task starts with {typed} (nor ends with it, as the web UI's short ids do)"
        ),
        [one] => Ok(one.id),
        many => {
            let mut listed: Vec<String> = many
                .iter()
                .take(AMBIGUOUS_SHOWN)
                .map(|t| format!("{} ({}, {})", t.id, title(t), t.state))
                .collect();
            if many.len() > AMBIGUOUS_SHOWN {
                listed.push(format!("and {} more", many.len() - AMBIGUOUS_SHOWN));
            }
            anyhow::bail!(
                "ambiguous: {} tasks start or end with {typed}: {}; give more of the id",
                many.len(),
                listed.join(", ")
            )
        }
    }
}

/// What a person calls a task: an action task (`muster agent`'s kind `action`) by the action
/// it runs, any other by its kind.
fn title(task: &Task) -> String {
    match task.payload.get("action").and_then(Value::as_str) {
        Some(action) if task.kind == "action" && !action.is_empty() => action.to_owned(),
        _ => task.kind.clone(),
    }
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
        output::note("no tasks");
        return Ok(());
    }
    // TASK is the kind, or the action an action task runs.
    let mut table = output::table(&[
        "ID", "TASK", "STATE", "AGENT", "ATTEMPT", "PRIORITY", "CREATED",
    ]);
    for task in &tasks {
        output::add_row(
            &mut table,
            vec![
                task.id.to_string(),
                title(task),
                state_text(task),
                output::or_dash(task.agent_id.as_deref()),
                task.attempt.to_string(),
                task.priority.to_string(),
                output::ago(task.created_at),
            ],
        );
    }
    output::emit(table.trim_fmt())?;
    if next_cursor.is_some() {
        output::note("more tasks exist: --all lists them all");
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
            output::add_row(
                &mut attempts,
                vec![
                    attempt.attempt.to_string(),
                    attempt.agent_id.clone(),
                    output::ago(attempt.started_at),
                    duration,
                    attempt.outcome.to_string(),
                    output::or_dash(attempt.error.as_deref()),
                ],
            );
        }
        output::emit(format!("\nattempts:\n{}", attempts.trim_fmt()))?;
    }
    if let Some(assignment) = &task.assignment {
        let mut candidates =
            output::table(&["CANDIDATE", "SCORE", "ACTIVE", "CPU", "MEMORY", "CHOSEN"]);
        for candidate in &assignment.candidates {
            output::add_row(
                &mut candidates,
                vec![
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
                ],
            );
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
    let mut rows = vec![("id", task.id.to_string()), ("kind", task.kind.clone())];
    if title(task) != task.kind {
        rows.push(("action", title(task)));
    }
    rows.extend([("state", state_text(task))]);
    if let Some(why) = &task.waiting {
        rows.push(("waiting", why.clone()));
    }
    rows.extend([
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
    ]);
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

/// `time stream text`, or `time stream [attempt] text` when `attempts` says the task ran more
/// than once.
fn log_text(line: &LogLine, attempts: &mut Attempts) -> String {
    let time = output::log_time(line.ts);
    if attempts.several(line) {
        format!("{time} {} [{}] {}", line.stream, line.attempt, line.text)
    } else {
        format!("{time} {} {}", line.stream, line.text)
    }
}

/// Whether a task's lines need their attempt: once it has had a second attempt, every line
/// is marked with the attempt that wrote it.
struct Attempts {
    several: bool,
}

impl Attempts {
    /// Asks the server how many attempts the task has had so far.
    async fn of(session: &Session, id: Uuid, doing: &str) -> anyhow::Result<Attempts> {
        let task = session
            .client
            .task(id)
            .await
            .map_err(|err| session.explain(err, doing, &format!("task {id}")))?;
        Ok(Attempts {
            several: task.attempt > 1,
        })
    }

    /// A line of a later attempt shows there have been several (a retry began while
    /// following).
    fn several(&mut self, line: &LogLine) -> bool {
        self.several |= line.attempt > 1;
        self.several
    }
}

async fn logs(session: &Session, id: Uuid) -> anyhow::Result<()> {
    let mut attempts = Attempts::of(session, id, "read the logs of").await?;
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
                output::emit(log_text(line, &mut attempts))?;
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
        output::note(format_args!("no log lines for task {id}"));
    }
    Ok(())
}

async fn follow_logs(session: &Session, id: Uuid) -> anyhow::Result<ExitCode> {
    let subject = format!("task {id}");
    let explain = |err| session.explain(err, "follow the logs of", &subject);
    let mut attempts = Attempts::of(session, id, "follow the logs of").await?;
    let stream = session.client.follow_logs(id, 0).await.map_err(explain)?;
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event.map_err(explain)? {
            LogEvent::Line(line) if session.json => output::emit_json_line(&line)?,
            LogEvent::Line(line) => output::emit(log_text(&line, &mut attempts))?,
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
            Some(error) => output::note(format_args!("task {id} {state}: {error}")),
            None => output::note(format_args!("task {id} {state}")),
        }
    }
    Ok(if state == TaskState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(TASK_DID_NOT_COMPLETE)
    })
}

// --- argument parsers: a bad value is a usage error (exit 2) that names the flag.

fn parse_task_id(text: &str) -> Result<TaskRef, String> {
    let trimmed = text.trim();
    if let Ok(id) = Uuid::parse_str(trimmed) {
        return Ok(TaskRef::Id(id));
    }
    let digits: String = trimmed
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if !digits.is_empty() && digits.len() < 32 && digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(TaskRef::Part {
            typed: trimmed.to_owned(),
            digits,
        });
    }
    Err(format!(
        "{text:?} is not a task id (a UUID such as 0196a3c4-5e1f-7b2a-9c3d-4e5f6a7b8c9d, \
         or its first characters)"
    ))
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{text:?} is not a time: expected RFC 3339, a date, T, a time and a zone, \
                 such as 2026-11-27T09:00:00Z or 2026-11-27T10:00:00+01:00"
            )
        })
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
    fn a_task_is_named_by_its_id_or_part_of_it() {
        let id = "0196a3c4-5e1f-7b2a-9c3d-4e5f6a7b8c9d";
        assert!(matches!(parse_task_id(id), Ok(TaskRef::Id(_))));
        match parse_task_id("0196A3C4-5e1f") {
            Ok(TaskRef::Part { typed, digits }) => {
                assert_eq!(typed, "0196A3C4-5e1f");
                assert_eq!(digits, "0196a3c45e1f");
            }
            other => panic!("{other:?}"),
        }
        for bad in ["", "-", "not-an-id", "0196a3c4 5e1f", &format!("{id}0")] {
            let err = parse_task_id(bad).unwrap_err();
            assert!(err.contains("not a task id"), "{bad}: {err}");
        }
    }

    #[test]
    fn action_tasks_are_called_by_their_action() {
        let mut task: Task = serde_json::from_value(serde_json::json!({
            "id": "0196a3c4-5e1f-7b2a-9c3d-4e5f6a7b8c9d", "kind": "action",
            "payload": {"action": "restart_container", "params": {"container": "jellyfin"}},
            "state": "queued", "capabilities": [], "priority": 0, "max_retries": 3,
            "labels": {}, "attempt": 0, "cancel_requested": false, "attempts": [],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(title(&task), "restart_container");
        task.kind = "restart".into();
        assert_eq!(title(&task), "restart");
    }

    #[test]
    fn a_bad_time_says_the_form_with_an_example() {
        assert!(parse_time("2026-11-27T09:00:00Z").is_ok());
        let err = parse_time("tomorrow").unwrap_err();
        assert!(
            err.contains("RFC 3339") && err.contains("2026-11-27T09:00:00Z"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_state_lists_the_good_ones() {
        assert_eq!(parse_state("running").unwrap(), TaskState::Running);
        let err = parse_state("done").unwrap_err();
        assert!(err.contains("queued") && err.contains("cancelled"), "{err}");
    }
}
