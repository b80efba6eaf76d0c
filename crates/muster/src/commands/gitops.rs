//! `muster gitops …`: what a push would deploy before it does (`plan`), and what pushes did
//! (`deployments`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use muster_api::{ErrorCode, GitPlan};
use muster_client::ClientError;

use super::connection::Session;
use crate::output;

#[derive(Subcommand)]
pub(crate) enum GitopsCommand {
    /// Show which rules a push would deploy and why (which file matched which glob), without
    /// deploying anything. FILE is the forge's push payload as JSON (`-` reads stdin).
    Plan {
        /// The [[git.sources]] entry the push would come to.
        #[arg(long)]
        source: String,
        file: PathBuf,
    },
    /// List deployments, newest first, with their state.
    Deployments {
        /// Only this repository (owner/name).
        #[arg(long)]
        repo: Option<String>,
        /// How many (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub(crate) async fn run(session: &Session, command: GitopsCommand) -> anyhow::Result<ExitCode> {
    match command {
        GitopsCommand::Plan { source, file } => plan(session, &source, &file).await,
        GitopsCommand::Deployments { repo, limit } => {
            deployments(session, repo.as_deref(), limit).await
        }
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

async fn plan(session: &Session, source: &str, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let payload = read_payload(file)?;
    let plan = match session.client.gitops_plan(source, payload).await {
        Ok(plan) => plan,
        // The server's words name the source or the field that is wrong.
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
        let task = match (&rule.kind, &rule.lock_key) {
            (Some(kind), Some(lock)) => format!("{kind}, lock {lock}"),
            (Some(kind), None) => kind.clone(),
            _ => "-".into(),
        };
        output::add_row(
            &mut table,
            vec![rule.rule.clone(), rule.outcome.clone(), task, why],
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

async fn deployments(
    session: &Session,
    repo: Option<&str>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let list = session
        .client
        .deployments(repo, limit)
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
        let rules: Vec<String> = d
            .rules
            .iter()
            .filter(|r| r.task_id.is_some())
            .map(|r| {
                format!(
                    "{} ({})",
                    r.rule,
                    r.task_state.map_or("pruned", |s| s.as_str())
                )
            })
            .collect();
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
