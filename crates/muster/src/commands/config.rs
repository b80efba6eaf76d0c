//! `muster config show` and `muster config check`: the server's settings as `serve` would
//! build them, and a config file checked without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use muster_server::config;
use serde_json::json;

use super::daemons::ServeArgs;
use crate::output;

#[derive(clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the settings `muster serve` would run with, after every layer (defaults, the
    /// config file, the environment, flags), with where each value came from. Keys print as
    /// [redacted].
    Show {
        #[command(flatten)]
        serve: ServeArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file (syntax, keys, every value) without starting anything; the
    /// environment is not consulted.
    Check {
        /// The TOML file, e.g. /etc/muster/muster.toml.
        file: PathBuf,
    },
}

pub(crate) fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Show { serve, json } => show(&serve, json),
        ConfigCommand::Check { file } => {
            // The error already names the file, line and field.
            config::check_file(&file)?;
            output::emit(format!("{}: ok", file.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show(serve: &ServeArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let effective = config::effective(&serve.sources())?;
    // On standard error, so the table or the JSON stays clean for scripts.
    for warning in effective.settings.warnings() {
        eprintln!("warning: {warning}");
    }
    if as_json {
        let rows: Vec<_> = effective
            .shown
            .iter()
            .map(|row| {
                json!({
                    "variable": row.var,
                    "file_key": row.file_key,
                    "value": row.value,
                    "from": row.origin,
                })
            })
            .collect();
        output::emit_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&["VARIABLE", "FILE KEY", "VALUE", "FROM"]);
    for row in &effective.shown {
        table.add_row(vec![
            row.var.to_owned(),
            row.file_key.unwrap_or("-").to_owned(),
            row.value.clone().unwrap_or_else(|| "-".to_owned()),
            row.origin.clone(),
        ]);
    }
    output::emit(table)?;
    Ok(ExitCode::SUCCESS)
}
