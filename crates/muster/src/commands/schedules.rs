//! `muster schedules …`: what the server fires on a clock — every schedule with its next and
//! last firing (`list`), one with its task and latest firings (`show`), firing one now (`run`),
//! and holding one (`pause`, `resume`).

use std::process::ExitCode;

use clap::Subcommand;
use muster_api::{ErrorCode, Schedule, ScheduleFiring};
use muster_client::ClientError;

use super::connection::Session;
use crate::output;

#[derive(Subcommand)]
pub(crate) enum SchedulesCommand {
    /// List every schedule: where it is defined, its cron and time zone, its next firing, its
    /// last firing with its task's state, and whether it is paused.
    List,
    /// Show one schedule: its facts, the task each firing submits, and its latest firings.
    Show {
        /// The schedule's name (`muster schedules list` shows them).
        name: String,
    },
    /// Fire a schedule now, even while it is paused (audited); prints the task it submitted.
    Run {
        /// The schedule's name (`muster schedules list` shows them).
        name: String,
    },
    /// Pause a schedule (audited): its firings are skipped until it is resumed.
    Pause {
        /// The schedule's name (`muster schedules list` shows them).
        name: String,
    },
    /// Resume a paused schedule (audited): it fires from its next instant on; what came due
    /// while it was paused stays skipped.
    Resume {
        /// The schedule's name (`muster schedules list` shows them).
        name: String,
    },
}

pub(crate) async fn run(session: &Session, command: SchedulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        SchedulesCommand::List => list(session).await,
        SchedulesCommand::Show { name } => show(session, &name).await,
        SchedulesCommand::Run { name } => run_now(session, &name).await,
        SchedulesCommand::Pause { name } => set_paused(session, &name, true).await,
        SchedulesCommand::Resume { name } => set_paused(session, &name, false).await,
    }
}

/// The error for a request about the schedule `name`: an unknown name says where the names
/// are; the server's refusals keep its words.
fn refused(err: ClientError, session: &Session, verb: &str, name: &str) -> anyhow::Error {
    match err {
        ClientError::Api {
            code: ErrorCode::NotFound,
            ..
        } => anyhow::anyhow!("no schedule named {name}; `muster schedules list` shows them"),
        ClientError::Api {
            code: ErrorCode::Conflict | ErrorCode::InvalidField,
            message,
            ..
        } => anyhow::anyhow!("cannot {verb} schedule {name}: {message}"),
        err => session.explain(err, verb, &format!("schedule {name}")),
    }
}

/// The task's state now, `pruned` once retention removed it.
fn task_state(f: &ScheduleFiring) -> String {
    f.task_state
        .map_or_else(|| "pruned".to_owned(), |s| s.as_str().to_owned())
}

/// `yes, by operator:ui 5m ago` or `no`.
fn paused(s: &Schedule) -> String {
    if !s.paused {
        return "no".to_owned();
    }
    let mut text = "yes".to_owned();
    if let Some(by) = &s.paused_by {
        text.push_str(&format!(", by {by}"));
    }
    if let Some(at) = s.paused_at {
        text.push_str(&format!(" {}", output::ago(at)));
    }
    text
}

/// The next firing, or why there is none.
fn next(s: &Schedule) -> String {
    match (s.paused, s.next_fire_at) {
        (true, _) => "- (paused)".to_owned(),
        (false, Some(at)) => output::when(at),
        (false, None) => "never again".to_owned(),
    }
}

async fn list(session: &Session) -> anyhow::Result<ExitCode> {
    let list = session
        .client
        .schedules()
        .await
        .map_err(|err| session.explain(err, "list", "schedules"))?;
    if session.json {
        output::emit_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.schedules.is_empty() {
        output::note(
            "no schedules yet: add [[schedules]] to the config file (and reload), or create one \
             with POST /api/v1/schedules",
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&[
        "NAME",
        "ORIGIN",
        "CRON",
        "ZONE",
        "NEXT",
        "LAST",
        "TASK STATE",
        "PAUSED",
    ]);
    for s in &list.schedules {
        let (last, state) = match &s.last {
            Some(f) => (
                format!("{} ({})", output::ago(f.fire_at), f.trigger.as_str()),
                task_state(f),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        output::add_row(
            &mut table,
            vec![
                s.name.clone(),
                s.origin.as_str().to_owned(),
                s.cron.clone(),
                s.timezone.clone(),
                next(s),
                last,
                state,
                paused(s),
            ],
        );
    }
    output::emit(table.trim_fmt())?;
    Ok(ExitCode::SUCCESS)
}

async fn show(session: &Session, name: &str) -> anyhow::Result<ExitCode> {
    let detail = session
        .client
        .schedule(name)
        .await
        .map_err(|err| refused(err, session, "show", name))?;
    if session.json {
        output::emit_json(&detail)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = &detail.schedule;
    let t = &s.task;
    let rows = vec![
        ("name", s.name.clone()),
        ("origin", s.origin.as_str().to_owned()),
        ("cron", format!("{} in {}", s.cron, s.timezone)),
        ("next", next(s)),
        ("missed", s.missed.clone()),
        ("lock key", output::or_dash(s.lock_key.as_deref())),
        ("paused", paused(s)),
        ("task kind", t.kind.clone()),
        ("capabilities", output::list_or_dash(&t.capabilities)),
        ("priority", t.priority.to_string()),
        (
            "max retries",
            t.max_retries
                .map_or_else(|| "server default".to_owned(), |n| n.to_string()),
        ),
        (
            "timeout",
            t.timeout_s
                .map_or_else(|| "-".to_owned(), |secs| format!("{secs}s")),
        ),
        ("labels", output::labels(&t.labels)),
        ("payload", serde_json::to_string(&t.payload)?),
    ];
    output::emit(output::fields(rows).trim_fmt())?;
    if detail.firings.is_empty() {
        output::note("\nit has not fired yet");
        return Ok(ExitCode::SUCCESS);
    }
    let mut firings = output::table(&["FIRE AT", "TRIGGER", "BY", "TASK", "STATE"]);
    for f in &detail.firings {
        output::add_row(
            &mut firings,
            vec![
                output::when(f.fire_at),
                f.trigger.as_str().to_owned(),
                f.actor.clone(),
                f.task_id.to_string(),
                task_state(f),
            ],
        );
    }
    output::emit(format!("\nfirings:\n{}", firings.trim_fmt()))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_now(session: &Session, name: &str) -> anyhow::Result<ExitCode> {
    let ran = session
        .client
        .run_schedule(name)
        .await
        .map_err(|err| refused(err, session, "run", name))?;
    if session.json {
        output::emit_json(&ran)?;
        return Ok(ExitCode::SUCCESS);
    }
    let task = &ran.task;
    output::emit(format!(
        "ran {name}: task {} ({}) is {}\nfollow it: muster task logs --follow {}",
        task.id, task.kind, task.state, task.id
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(session: &Session, name: &str, pause: bool) -> anyhow::Result<ExitCode> {
    let verb = if pause { "pause" } else { "resume" };
    let answer = session
        .client
        .schedule_set_paused(name, pause)
        .await
        .map_err(|err| refused(err, session, verb, name))?;
    if session.json {
        output::emit_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = &answer.schedule;
    output::emit(match (pause, answer.changed) {
        (true, true) => format!(
            "paused {name}: its firings are skipped until `muster schedules resume {name}` \
             (`muster schedules run {name}` still fires it)"
        ),
        (true, false) => format!("{name} was paused already"),
        (false, true) => format!(
            "resumed {name}: next firing {}; what came due while it was paused stays skipped",
            next(s)
        ),
        (false, false) => format!("{name} was not paused"),
    })?;
    Ok(ExitCode::SUCCESS)
}
