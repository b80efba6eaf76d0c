//! `muster gitops …`: what a push would deploy before it does (`plan`), what pushes did
//! (`deployments`), running one again (`redeploy`), and holding a source or rule (`pause`,
//! `resume`, `pauses`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use muster_api::{DeploymentState, ErrorCode, GitPlan, PauseScope, PlannedRule, TaskState};
use muster_client::ClientError;
use uuid::Uuid;

use super::connection::Session;
use crate::output;

#[derive(Subcommand)]
pub(crate) enum GitopsCommand {
    /// Show which rules a push would deploy and why (which file matched which glob), without
    /// deploying anything. FILE is the forge's push payload as JSON (`-` reads stdin); or
    /// name a push the source recorded with --delivery, planned again under today's rules.
    Plan {
        /// The [[git.sources]] entry the push would come to.
        #[arg(long)]
        source: String,
        /// The delivery id of a recorded push (`muster gitops deployments --json` shows it).
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        delivery: Option<String>,
        file: Option<PathBuf>,
    },
    /// List deployments, newest first, with their state.
    Deployments {
        /// Only this repository (owner/name).
        #[arg(long)]
        repo: Option<String>,
        /// Only deployments this rule matched.
        #[arg(long)]
        rule: Option<String>,
        /// Only deployments in this state: pending, running, paused, succeeded, failed,
        /// skipped.
        #[arg(long, value_parser = parse_state)]
        state: Option<DeploymentState>,
        /// How many (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run a past deployment's tasks again, at its commit, as a new deployment (audited).
    Redeploy {
        /// The deployment's id.
        id: Uuid,
    },
    /// Pause a source or a rule (audited): pushes are still recorded and planned, and their
    /// tasks wait until it is resumed.
    Pause {
        #[command(flatten)]
        target: PauseTarget,
    },
    /// Resume a paused source or rule (audited): the tasks it held are submitted, oldest push
    /// first.
    Resume {
        #[command(flatten)]
        target: PauseTarget,
    },
    /// List the paused sources and rules.
    Pauses,
}

/// One source or one rule.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct PauseTarget {
    /// A [[git.sources]] entry: every rule watching it.
    #[arg(long)]
    source: Option<String>,
    /// A [[git.rules]] entry, by name.
    #[arg(long)]
    rule: Option<String>,
}

impl PauseTarget {
    fn scope_and_name(self) -> (PauseScope, String) {
        match (self.source, self.rule) {
            (Some(source), _) => (PauseScope::Source, source),
            (None, Some(rule)) => (PauseScope::Rule, rule),
            (None, None) => unreachable!("clap requires one of --source and --rule"),
        }
    }
}

pub(crate) async fn run(session: &Session, command: GitopsCommand) -> anyhow::Result<ExitCode> {
    match command {
        GitopsCommand::Plan {
            source,
            delivery,
            file,
        } => plan(session, &source, delivery.as_deref(), file.as_ref()).await,
        GitopsCommand::Deployments {
            repo,
            rule,
            state,
            limit,
        } => deployments(session, repo.as_deref(), rule.as_deref(), state, limit).await,
        GitopsCommand::Redeploy { id } => redeploy(session, id).await,
        GitopsCommand::Pause { target } => set_paused(session, target, true).await,
        GitopsCommand::Resume { target } => set_paused(session, target, false).await,
        GitopsCommand::Pauses => pauses(session).await,
    }
}

fn read_payload(file: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the payload from stdin")?
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the payload {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON: save the forge's push payload (the webhook's body) as a file",
            file.display()
        )
    })
}

async fn plan(
    session: &Session,
    source: &str,
    delivery: Option<&str>,
    file: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let asked = match (delivery, file) {
        (Some(delivery), _) => session.client.gitops_replan(source, delivery).await,
        (None, Some(file)) => {
            session
                .client
                .gitops_plan(source, read_payload(file)?)
                .await
        }
        (None, None) => anyhow::bail!("name the push: a payload FILE or --delivery ID"),
    };
    let plan = match asked {
        Ok(plan) => plan,
        // The server's words name the source, the delivery or the field that is wrong.
        Err(ClientError::Api {
            code: ErrorCode::NotFound | ErrorCode::InvalidField,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => return Err(session.explain(err, "plan", "the push")),
    };
    if session.json {
        output::emit_json(&plan)?;
    } else {
        print_plan(&plan)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn redeploy(session: &Session, id: Uuid) -> anyhow::Result<ExitCode> {
    let d = match session.client.redeploy(id).await {
        Ok(d) => d,
        Err(ClientError::Api {
            code: ErrorCode::NotFound | ErrorCode::Conflict,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => return Err(session.explain(err, "redeploy", "the deployment")),
    };
    if session.json {
        output::emit_json(&d)?;
    } else {
        output::emit(format!(
            "deployment {} redeploys {} of {} at {}: {}",
            d.id,
            id,
            d.repo,
            short(&d.sha),
            d.state.as_str()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(
    session: &Session,
    target: PauseTarget,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let (scope, name) = target.scope_and_name();
    let answer = match session.client.gitops_set_paused(scope, &name, paused).await {
        Ok(answer) => answer,
        Err(ClientError::Api {
            code: ErrorCode::NotFound,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => {
            let verb = if paused { "pause" } else { "resume" };
            return Err(session.explain(err, verb, &format!("{} {name}", scope.as_str())));
        }
    };
    if session.json {
        output::emit_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = format!("{} {}", scope.as_str(), answer.name);
    output::emit(match (paused, answer.changed) {
        (true, true) => format!("paused {what}: pushes are recorded, their tasks wait"),
        (true, false) => format!("{what} was paused already"),
        (false, true) => format!(
            "resumed {what}: {} held task(s) submitted",
            answer.released_tasks
        ),
        (false, false) => format!("{what} was not paused"),
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn pauses(session: &Session) -> anyhow::Result<ExitCode> {
    let list = session
        .client
        .gitops_pauses()
        .await
        .map_err(|err| session.explain(err, "list", "pauses"))?;
    if session.json {
        output::emit_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.pauses.is_empty() {
        output::note("nothing is paused");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&["SCOPE", "NAME", "PAUSED AT", "BY"]);
    for p in &list.pauses {
        output::add_row(
            &mut table,
            vec![
                p.scope.as_str().to_owned(),
                p.name.clone(),
                p.paused_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                p.paused_by.clone(),
            ],
        );
    }
    output::emit(table)?;
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &GitPlan) -> anyhow::Result<()> {
    let at = plan.branch.as_deref().unwrap_or(&plan.git_ref);
    output::emit(format!(
        "push of {} {at} at {} ({} changed files{})",
        plan.repo,
        short(&plan.sha),
        plan.changed.len(),
        if plan.complete {
            ""
        } else {
            "; the forge cut the list"
        }
    ))?;
    if plan.rules.is_empty() {
        output::note(format!(
            "no [[git.rules]] entry watches source {}: nothing would run",
            plan.source
        ));
        return Ok(());
    }
    let mut table = output::table(&["RULE", "OUTCOME", "TASK", "WHY"]);
    for rule in &plan.rules {
        let why = match (&rule.why, rule.matched.is_empty(), rule.fallback) {
            (Some(why), _, _) => why.clone(),
            (None, _, true) => "the list of changed files is incomplete: fallback = \"run\"".into(),
            (None, _, false) => rule
                .matched
                .iter()
                .map(|m| format!("{} ({})", m.path, m.glob))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut task = match (&rule.kind, &rule.lock_key) {
            (Some(kind), Some(lock)) => format!("{kind}, lock {lock}"),
            (Some(kind), None) => kind.clone(),
            _ => "-".into(),
        };
        if rule.check_task.is_some() {
            task.push_str(", check first");
        }
        output::add_row(
            &mut table,
            vec![
                rule.rule.clone(),
                rule.outcome.as_str().to_owned(),
                task,
                why,
            ],
        );
    }
    output::emit(table)?;
    if plan.nothing_to_do {
        output::note("nothing to do: no rule would deploy this push");
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

fn parse_state(text: &str) -> Result<DeploymentState, String> {
    DeploymentState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = DeploymentState::ALL.iter().map(|s| s.as_str()).collect();
        format!("not one of {}", names.join(", "))
    })
}

async fn deployments(
    session: &Session,
    repo: Option<&str>,
    rule: Option<&str>,
    state: Option<DeploymentState>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let list = session
        .client
        .deployments(repo, rule, state, limit)
        .await
        .map_err(|err| session.explain(err, "list", "deployments"))?;
    if session.json {
        output::emit_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.deployments.is_empty() {
        output::note("no deployments yet: pushes a [[git.rules]] entry matches appear here");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&[
        "ID",
        "STATE",
        "REPOSITORY",
        "BRANCH",
        "COMMIT",
        "AUTHOR",
        "RULES",
    ]);
    for d in &list.deployments {
        let rules: Vec<String> = d.rules.iter().filter_map(rule_state).collect();
        output::add_row(
            &mut table,
            vec![
                d.id.to_string(),
                d.state.as_str().to_owned(),
                d.repo.clone(),
                d.branch.clone().unwrap_or_else(|| d.git_ref.clone()),
                short(&d.sha).to_owned(),
                d.author.clone(),
                output::list_or_dash(&rules),
            ],
        );
    }
    output::emit(table)?;
    Ok(ExitCode::SUCCESS)
}

/// A rule of a deployment and where its tasks stand: `media (held)`, `media (check running)`,
/// `media (completed)`; `None` for a rule that submits nothing.
fn rule_state(r: &PlannedRule) -> Option<String> {
    let state = |s: Option<TaskState>| s.map_or("pruned", |s| s.as_str());
    let text = if r.held {
        "held by a pause".to_owned()
    } else if r.task_id.is_some() {
        state(r.task_state).to_owned()
    } else if r.check_task_id.is_some() {
        format!("check {}", state(r.check_task_state))
    } else {
        return None;
    };
    Some(format!("{} ({text})", r.rule))
}
