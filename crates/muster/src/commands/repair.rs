//! `muster incidents …` and `muster repair …`: self-repair as an operator sees it — the
//! incidents monitoring alerts opened (`list`, `show` with its story), answering a risky
//! repair that waits (`approve`, `deny`), and holding self-repair for everything or one target
//! (`status`, `pause`, `resume`).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use muster_api::{ErrorCode, Incident, IncidentState, RepairChoice, RepairStatus};
use muster_client::ClientError;
use uuid::Uuid;

use super::connection::Session;
use crate::output;

/// The most characters of an incident's reason the list shows; `show` has all of it.
const REASON_SHOWN: usize = 60;

#[derive(Subcommand)]
pub(crate) enum IncidentsCommand {
    /// List incidents, newest first: what each waits for or why it closed.
    List {
        /// Only incidents in this state: open, deciding, awaiting_approval, repairing,
        /// verifying, resolved, escalated.
        #[arg(long, value_parser = parse_state)]
        state: Option<IncidentState>,
        /// Only incidents not yet resolved or escalated.
        #[arg(long, conflicts_with = "state")]
        open: bool,
        /// Only this [[repair.targets]] entry's incidents.
        #[arg(long)]
        target: Option<String>,
        /// How many (1 to 200).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
    },
    /// Show one incident: what fired, the action chosen, and its story step by step.
    Show {
        /// The incident's id (`muster incidents list` shows it).
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
    /// Approve the risky action an incident waits with (audited): its task is submitted,
    /// unless a pause, the hourly cap or the cooldown holds it.
    Approve {
        /// The incident's id (`muster incidents list` shows it).
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
    /// Deny the risky action an incident waits with (audited): nothing runs, and the
    /// incident is escalated.
    Deny {
        /// The incident's id (`muster incidents list` shows it).
        #[arg(value_parser = parse_id)]
        id: Uuid,
        /// Why, for the incident's story and the audit log (at most 500 characters).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum RepairCommand {
    /// Show whether self-repair is paused, and each target: who decides, its actions, its
    /// pause, and its repairs in the last hour against its cap.
    Status,
    /// Pause self-repair (audited), for every target or one: incidents are still recorded
    /// and decided; nothing runs.
    Pause {
        /// A [[repair.targets]] entry; without it, all of self-repair.
        #[arg(long)]
        target: Option<String>,
    },
    /// Resume self-repair (audited), for every target or one.
    Resume {
        /// A [[repair.targets]] entry; without it, all of self-repair.
        #[arg(long)]
        target: Option<String>,
    },
}

pub(crate) async fn run_incidents(
    session: &Session,
    command: IncidentsCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        IncidentsCommand::List {
            state,
            open,
            target,
            limit,
        } => list(session, state, open, target.as_deref(), limit).await,
        IncidentsCommand::Show { id } => show(session, id).await,
        IncidentsCommand::Approve { id } => approve(session, id).await,
        IncidentsCommand::Deny { id, reason } => deny(session, id, reason.as_deref()).await,
    }
}

pub(crate) async fn run_repair(
    session: &Session,
    command: RepairCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        RepairCommand::Status => status(session).await,
        RepairCommand::Pause { target } => set_paused(session, target.as_deref(), true).await,
        RepairCommand::Resume { target } => set_paused(session, target.as_deref(), false).await,
    }
}

fn parse_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        format!(
            "{text:?} is not an incident id: the whole UUID, as `muster incidents list` shows it"
        )
    })
}

fn parse_state(text: &str) -> Result<IncidentState, String> {
    IncidentState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = IncidentState::ALL.iter().map(|s| s.as_str()).collect();
        format!("not one of {}", names.join(", "))
    })
}

/// `reboot_host (host=nas)`.
fn describe(choice: &RepairChoice) -> String {
    if choice.params.is_empty() {
        return choice.action.clone();
    }
    let params: Vec<String> = choice
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{} ({})", choice.action, params.join(", "))
}

/// The first `max` characters of `text` on one line, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `2025-05-01 10:00:03`: a story's times, all in UTC.
fn story_time(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%d %H:%M:%S").to_string()
}

async fn list(
    session: &Session,
    state: Option<IncidentState>,
    open: bool,
    target: Option<&str>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let list = match session
        .client
        .incidents(state, open, target, limit as usize)
        .await
    {
        Ok(list) => list,
        Err(ClientError::Api {
            code: ErrorCode::InvalidField,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => return Err(session.explain(err, "list", "incidents")),
    };
    if session.json {
        output::emit_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.incidents.is_empty() {
        output::note(if state.is_some() || open || target.is_some() {
            "no incidents match"
        } else {
            "no incidents yet: alerts to /hooks/alerts/<source> open them"
        });
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&[
        "ID", "STATE", "MONITOR", "TARGET", "STEPS", "ALERTS", "OPENED", "REASON",
    ]);
    for i in &list.incidents {
        output::add_row(
            &mut table,
            vec![
                i.id.to_string(),
                i.state.as_str().to_owned(),
                i.monitor.clone(),
                output::or_dash(i.target.as_deref()),
                format!("{}/{}", i.steps, i.max_steps),
                i.alerts.to_string(),
                output::ago(i.opened_at),
                i.reason
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |r| truncate(r, REASON_SHOWN)),
            ],
        );
    }
    output::emit(table.trim_fmt())?;
    Ok(ExitCode::SUCCESS)
}

async fn show(session: &Session, id: Uuid) -> anyhow::Result<ExitCode> {
    let incident = match session.client.incident(id).await {
        Ok(incident) => incident,
        Err(ClientError::Api {
            code: ErrorCode::NotFound,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => return Err(session.explain(err, "show", &format!("incident {id}"))),
    };
    if session.json {
        output::emit_json(&incident)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::emit(incident_fields(&incident).trim_fmt())?;
    if let Some(choice) = &incident.choice {
        let mut rows = vec![
            ("action", describe(choice)),
            ("chosen by", choice.by.as_str().to_owned()),
            (
                "risky",
                if choice.risky {
                    "yes: it runs only once an operator approves it"
                } else {
                    "no"
                }
                .to_owned(),
            ),
        ];
        if let Some(reasoning) = choice.reasoning.as_deref().filter(|r| !r.is_empty()) {
            rows.push(("reasoning", reasoning.to_owned()));
        }
        output::emit(format!("\nchoice:\n{}", output::fields(rows).trim_fmt()))?;
    }
    if !incident.events.is_empty() {
        let mut story = output::table(&["TIME (UTC)", "KIND", "ACTOR", "MESSAGE"]);
        for e in &incident.events {
            output::add_row(
                &mut story,
                vec![
                    story_time(e.at),
                    e.kind.clone(),
                    e.actor.clone(),
                    e.message.clone(),
                ],
            );
        }
        output::emit(format!("\nstory:\n{}", story.trim_fmt()))?;
    }
    if incident.state == IncidentState::AwaitingApproval {
        output::note(format!(
            "\nit waits for an operator: muster incidents approve {id}, or muster incidents \
             deny {id} --reason TEXT"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn incident_fields(i: &Incident) -> comfy_table::Table {
    let mut rows = vec![
        ("id", i.id.to_string()),
        ("state", i.state.as_str().to_owned()),
        ("reason", output::or_dash(i.reason.as_deref())),
        ("monitor", i.monitor.clone()),
        ("message", output::or_dash(Some(i.message.as_str()))),
        ("source", format!("{} (key {})", i.source, i.key)),
        ("target", output::or_dash(i.target.as_deref())),
        ("labels", output::labels(&i.labels)),
    ];
    if let Some(url) = &i.url {
        rows.push(("url", url.clone()));
    }
    rows.extend([
        ("alerts", i.alerts.to_string()),
        ("steps", format!("{} of at most {}", i.steps, i.max_steps)),
        (
            "target repairs",
            format!(
                "{} in the last hour (cap {})",
                i.repairs_last_hour, i.max_repairs_per_hour
            ),
        ),
        (
            "task",
            i.task_id.map_or_else(|| "-".to_owned(), |t| t.to_string()),
        ),
    ]);
    if let Some(at) = i.approval_expires_at {
        rows.push(("approval expires", output::when(at)));
    }
    if let Some(at) = i.due_at {
        rows.push(("looked at next", output::when(at)));
    }
    rows.extend([
        ("opened", output::when(i.opened_at)),
        ("updated", output::when(i.updated_at)),
        ("closed", output::when_opt(i.closed_at)),
    ]);
    output::fields(rows)
}

/// The server's words for an answer it refused: the incident is unknown, nothing waits for
/// approval (or it expired), or the reason is too long.
fn refused(err: ClientError, session: &Session, verb: &str, id: Uuid) -> anyhow::Error {
    match err {
        ClientError::Api {
            code: ErrorCode::NotFound,
            message,
            ..
        } => anyhow::anyhow!("{message}"),
        ClientError::Api {
            code: ErrorCode::Conflict | ErrorCode::InvalidField,
            message,
            ..
        } => anyhow::anyhow!("cannot {verb}: {message}"),
        err => session.explain(err, verb, &format!("incident {id}")),
    }
}

async fn approve(session: &Session, id: Uuid) -> anyhow::Result<ExitCode> {
    let incident = session
        .client
        .approve_incident(id)
        .await
        .map_err(|err| refused(err, session, "approve", id))?;
    if session.json {
        output::emit_json(&incident)?;
        return Ok(ExitCode::SUCCESS);
    }
    let action = incident
        .choice
        .as_ref()
        .map_or_else(|| "the action".to_owned(), describe);
    match (incident.state, incident.task_id) {
        (IncidentState::Repairing, Some(task)) => output::emit(format!(
            "approved {action}: incident {id} is repairing, task {task}"
        ))?,
        // A pause or the cap escalated it, or the cooldown sent it back to wait.
        (state, _) => output::emit(format!(
            "approved {action}, but incident {id} is {state}: {}",
            output::or_dash(incident.reason.as_deref())
        ))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn deny(session: &Session, id: Uuid, reason: Option<&str>) -> anyhow::Result<ExitCode> {
    let incident = session
        .client
        .deny_incident(id, reason)
        .await
        .map_err(|err| refused(err, session, "deny", id))?;
    if session.json {
        output::emit_json(&incident)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::emit(format!(
        "denied: incident {id} is {}: {}",
        incident.state,
        output::or_dash(incident.reason.as_deref())
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn status(session: &Session) -> anyhow::Result<ExitCode> {
    let status = session
        .client
        .repair_status()
        .await
        .map_err(|err| session.explain(err, "read", "self-repair's status"))?;
    if session.json {
        output::emit_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::emit(overall(&status))?;
    if status.targets.is_empty() {
        output::note("no [[repair.targets]] entries: incidents are recorded, nothing is repaired");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&[
        "TARGET",
        "DECIDES",
        "ACTIONS",
        "PAUSED",
        "REPAIRS LAST HOUR",
    ]);
    for t in &status.targets {
        let own = status
            .pauses
            .iter()
            .find(|p| p.target.as_deref() == Some(t.name.as_str()));
        let paused = match (own, t.paused) {
            (Some(p), _) => format!("yes, by {} {}", p.paused_by, output::ago(p.paused_at)),
            (None, true) => "yes (all of self-repair)".to_owned(),
            (None, false) => "no".to_owned(),
        };
        output::add_row(
            &mut table,
            vec![
                t.name.clone(),
                t.provider
                    .as_deref()
                    .map_or_else(|| "runbook".to_owned(), |p| format!("model {p}")),
                output::list_or_dash(&t.actions),
                paused,
                format!("{}/{}", t.repairs_last_hour, t.max_repairs_per_hour),
            ],
        );
    }
    output::emit(table.trim_fmt())?;
    // A pause of a target the config no longer has still stands in the database: say what it
    // means, and how to lift it.
    for p in &status.pauses {
        if let Some(name) = &p.target
            && !status.targets.iter().any(|t| &t.name == name)
        {
            output::note(format!(
                "target {name} is paused (by {}, {}) but no longer configured: the pause \
                 holds again if the target comes back (muster repair resume --target {name} \
                 lifts it)",
                p.paused_by,
                output::when(p.paused_at)
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The line saying whether all of self-repair is paused, and by whom.
fn overall(status: &RepairStatus) -> String {
    match status.pauses.iter().find(|p| p.target.is_none()) {
        Some(p) => format!(
            "self-repair is paused for every target, by {} at {}: incidents are recorded and \
             decided; nothing runs",
            p.paused_by,
            output::when(p.paused_at)
        ),
        None if status.paused => "self-repair is paused for every target".to_owned(),
        None => {
            let held = status.targets.iter().filter(|t| t.paused).count();
            match held {
                0 => "self-repair is on".to_owned(),
                n => format!("self-repair is on; {n} target(s) paused"),
            }
        }
    }
}

async fn set_paused(
    session: &Session,
    target: Option<&str>,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let verb = if paused { "pause" } else { "resume" };
    let answer = match session.client.repair_set_paused(target, paused).await {
        Ok(answer) => answer,
        // The server's words name the target and the configured ones.
        Err(ClientError::Api {
            code: ErrorCode::NotFound | ErrorCode::InvalidField,
            message,
            ..
        }) => anyhow::bail!("cannot {verb}: {message}"),
        Err(err) => {
            let subject = match target {
                Some(t) => format!("self-repair of target {t}"),
                None => "self-repair".to_owned(),
            };
            return Err(session.explain(err, verb, &subject));
        }
    };
    if session.json {
        output::emit_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = match &answer.target {
        Some(t) => format!("self-repair of target {t}"),
        None => "all of self-repair".to_owned(),
    };
    // A target's resume does not lift a pause of everything: say so rather than let the
    // operator believe repairs run.
    let all_paused = !paused
        && answer.target.is_some()
        && session
            .client
            .repair_status()
            .await
            .is_ok_and(|status| status.paused);
    let still = "all of self-repair is still paused: nothing runs until `muster repair resume`";
    output::emit(match (paused, answer.changed) {
        (true, true) => format!(
            "paused {what}: incidents are still recorded and decided; nothing runs until it \
             is resumed"
        ),
        (true, false) => format!("{what} was paused already"),
        (false, true) if all_paused => format!("resumed {what}, but {still}"),
        (false, true) => format!("resumed {what}: repairs run again"),
        (false, false) if all_paused => format!("{what} was not paused, but {still}"),
        (false, false) => format!("{what} was not paused"),
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("two\nlines", 20), "two lines");
        let cut = truncate(&"x".repeat(100), 10);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_state_names_the_ones_there_are() {
        assert_eq!(
            parse_state("awaiting_approval"),
            Ok(IncidentState::AwaitingApproval)
        );
        let err = parse_state("down").unwrap_err();
        assert!(err.contains("open") && err.contains("escalated"), "{err}");
    }
}
