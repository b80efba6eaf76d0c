//! The `muster` binary: a thin CLI over the library crates.

mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::agents::AgentsCommand;
use commands::audit::AuditCommand;
use commands::bench::BenchArgs;
use commands::connection::ServerArgs;
use commands::daemons::AgentArgs;
use commands::task::TaskCommand;

#[derive(Parser)]
#[command(
    name = "muster",
    version,
    about = "Coordination layer for homelab automation and AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (configured by environment variables: ADDR, DB_PATH, API_KEY, …).
    Serve,
    /// Run an agent with the executors described by a TOML file.
    Agent(AgentArgs),
    /// Submit, list, inspect, cancel and retry tasks, and read their logs.
    Task {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// List, inspect, drain and remove registered agents.
    Agents {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Measure: end-to-end throughput and latency by default, or one figure (see --help).
    Bench(BenchArgs),
    /// Copy the database to FILE through SQLite's online backup (safe while serving).
    Backup {
        /// Where to write the copy.
        file: PathBuf,
        /// The database to copy; defaults to DB_PATH or muster.db.
        #[arg(long, env = "DB_PATH", default_value = "muster.db")]
        db: PathBuf,
    },
    /// Check the audit log's hash chain in the database file.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

fn main() -> ExitCode {
    // Usage errors exit with 2 from inside `parse`; everything below exits with 1 on error.
    let outcome = match Cli::parse().command {
        Command::Serve => commands::daemons::serve(),
        Command::Agent(args) => commands::daemons::agent(args),
        Command::Task { server, command } => commands::operate(server, async |session| {
            commands::task::run(session, command).await
        }),
        Command::Agents { server, command } => commands::operate(server, async |session| {
            commands::agents::run(session, command).await
        }),
        Command::Bench(args) => commands::bench::run(args),
        Command::Backup { file, db } => commands::daemons::backup(&file, &db),
        Command::Audit { command } => commands::audit::run(command),
    };
    outcome.unwrap_or_else(|err| output::report_error(&err))
}
