//! `muster llm …`: check a provider's key and price table with one short prompt (`test`), and
//! read what the LLM calls cost (`usage`).

use std::process::ExitCode;

use clap::Subcommand;
use muster_api::{ErrorCode, UsageGroup};
use muster_client::ClientError;

use super::connection::Session;
use crate::output;

#[derive(Subcommand)]
pub(crate) enum LlmCommand {
    /// Send a one-line prompt to a [[llm.providers]] entry and print the answer, the tokens,
    /// the latency and the cost (the call is in the ledger as workflow "test"); exits 1 when
    /// the provider failed.
    Test {
        /// The provider's name.
        provider: String,
        /// The prompt (default: a short greeting).
        #[arg(long)]
        prompt: Option<String>,
    },
    /// Print the LLM ledger summed: calls, errors, tokens and spend, and p95 latency per model.
    Usage {
        /// Sum per workflow, model, or day (per day and workflow).
        #[arg(long, default_value = "workflow", value_parser = parse_group)]
        by: UsageGroup,
        /// The last this many days, today included.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

fn parse_group(text: &str) -> Result<UsageGroup, String> {
    UsageGroup::parse(text).ok_or_else(|| {
        let names: Vec<&str> = UsageGroup::ALL.iter().map(|g| g.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

pub(crate) async fn run(session: &Session, command: LlmCommand) -> anyhow::Result<ExitCode> {
    match command {
        LlmCommand::Test { provider, prompt } => test(session, &provider, prompt.as_deref()).await,
        LlmCommand::Usage { by, days } => usage(session, by, days).await,
    }
}

async fn test(session: &Session, provider: &str, prompt: Option<&str>) -> anyhow::Result<ExitCode> {
    let result = match session.client.llm_test(provider, prompt).await {
        Ok(result) => result,
        // The server's words name the provider, the budget or what the provider said.
        Err(ClientError::Api {
            code:
                ErrorCode::NotFound
                | ErrorCode::InvalidField
                | ErrorCode::BudgetExceeded
                | ErrorCode::BadGateway,
            message,
            ..
        }) => {
            output::note(format!("{provider}: {message}"));
            return Ok(ExitCode::from(1));
        }
        Err(err) => return Err(session.explain(err, "test", &format!("provider {provider}"))),
    };
    if session.json {
        output::emit_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::emit(format!(
        "{} ({}) answered in {} ms: {} tokens in, {} out, cost {}",
        result.provider,
        result.model,
        result.latency_ms,
        result.input_tokens,
        result.output_tokens,
        money(result.cost)
    ))?;
    output::emit(result.answer.trim().to_owned())?;
    Ok(ExitCode::SUCCESS)
}

/// A sum of money as the ledger holds it: cents, or as many decimals as a cheap call takes.
fn money(amount: f64) -> String {
    if amount == 0.0 || amount.abs() >= 0.01 {
        format!("{amount:.2}")
    } else {
        format!("{amount:.6}").trim_end_matches('0').to_owned()
    }
}

async fn usage(session: &Session, by: UsageGroup, days: u32) -> anyhow::Result<ExitCode> {
    let usage = match session.client.llm_usage(by, days).await {
        Ok(usage) => usage,
        Err(ClientError::Api {
            code: ErrorCode::InvalidField,
            message,
            ..
        }) => anyhow::bail!("{message}"),
        Err(err) => return Err(session.explain(err, "read", "the LLM ledger")),
    };
    if session.json {
        output::emit_json(&usage)?;
        return Ok(ExitCode::SUCCESS);
    }
    if usage.rows.is_empty() {
        output::note(format!(
            "no LLM calls since {}",
            usage.since.format("%Y-%m-%d")
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let first = match by {
        UsageGroup::Workflow => vec!["WORKFLOW"],
        UsageGroup::Model => vec!["PROVIDER", "MODEL"],
        UsageGroup::Day => vec!["DAY", "WORKFLOW"],
    };
    let mut heads = first.clone();
    heads.extend(["CALLS", "ERRORS", "TOKENS IN", "TOKENS OUT", "COST"]);
    let mut table = output::table(&heads);
    for r in &usage.rows {
        let mut row: Vec<String> = match by {
            UsageGroup::Workflow => vec![r.workflow.clone().unwrap_or_default()],
            UsageGroup::Model => vec![
                r.provider.clone().unwrap_or_default(),
                r.model.clone().unwrap_or_default(),
            ],
            UsageGroup::Day => vec![
                r.day.clone().unwrap_or_default(),
                r.workflow.clone().unwrap_or_default(),
            ],
        };
        row.extend([
            r.calls.to_string(),
            r.errors.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            money(r.cost),
        ]);
        output::add_row(&mut table, row);
    }
    output::emit(table)?;
    if !usage.latency.is_empty() {
        let mut table = output::table(&["PROVIDER", "MODEL", "CALLS", "P95 LATENCY"]);
        for l in &usage.latency {
            output::add_row(
                &mut table,
                vec![
                    l.provider.clone(),
                    l.model.clone(),
                    l.calls.to_string(),
                    format!("{} ms", l.p95_ms),
                ],
            );
        }
        output::emit(table)?;
    }
    Ok(ExitCode::SUCCESS)
}
