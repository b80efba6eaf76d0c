//! The `muster` binary: a thin CLI over the library crates.

mod commands;
mod exec_child;
mod output;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::agents::AgentsCommand;
use commands::audit::AuditCommand;
use commands::bench::BenchArgs;
use commands::config::ConfigCommand;
use commands::connection::ServerArgs;
use commands::daemons::{AgentArgs, ServeArgs};
use commands::gitops::GitopsCommand;
use commands::llm::LlmCommand;
use commands::notify::NotifyCommand;
use commands::repair::{IncidentsCommand, RepairCommand};
use commands::schedules::SchedulesCommand;
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
    /// Run the control plane, configured by a TOML file, environment variables and flags
    /// (`--help` lists every setting).
    #[command(after_long_help = muster_server::config::help_text())]
    Serve(ServeArgs),
    /// Run an agent with the executors described by a TOML file (`--help` describes it).
    #[command(after_long_help = commands::daemons::AGENT_CONFIG_HELP)]
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
    /// Notification channels: list them, send a test message, read what was sent.
    Notify {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// GitOps: what a push would deploy (plan), and the deployments pushes made.
    Gitops {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: GitopsCommand,
    },
    /// Schedules: each with its next and last firing (list), one's firings (show), fire one
    /// now (run), pause and resume.
    Schedules {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// LLM providers: check one with a short prompt (test), and what the calls cost (usage).
    Llm {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: LlmCommand,
    },
    /// Self-repair's incidents: list them, read one's story, approve or deny a risky repair.
    Incidents {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// Self-repair: its pauses and each target's repairs (status), pause and resume it.
    Repair {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: RepairCommand,
    },
    /// Measure: end-to-end throughput and latency by default, or one figure (see --help).
    Bench(BenchArgs),
    /// Copy the database to FILE through SQLite's online backup (safe while serving).
    Backup {
        /// Where to write the copy.
        file: PathBuf,
        /// The database to copy; defaults to the one `serve` would open (DB_PATH, the config
        /// file's db_path, or muster.db).
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
    },
    /// Show the effective server settings, or check a config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check the audit log's hash chain in the database file.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Internal: how `muster agent` runs an action (see exec_child.rs).
    #[command(name = exec_child::SUBCOMMAND, hide = true)]
    ExecChild {
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // Usage errors exit with 2 from inside `parse`; everything below exits with 1 on error.
    let outcome = match Cli::parse().command {
        Command::Serve(args) => commands::daemons::serve(args),
        Command::Agent(args) => commands::daemons::agent(args),
        Command::Task { server, command } => commands::operate(server, async |session| {
            commands::task::run(session, command).await
        }),
        Command::Agents { server, command } => commands::operate(server, async |session| {
            commands::agents::run(session, command).await
        }),
        Command::Gitops { server, command } => commands::operate(server, async |session| {
            commands::gitops::run(session, command).await
        }),
        Command::Schedules { server, command } => commands::operate(server, async |session| {
            commands::schedules::run(session, command).await
        }),
        Command::Llm { server, command } => commands::operate(server, async |session| {
            commands::llm::run(session, command).await
        }),
        Command::Notify { server, command } => commands::operate(server, async |session| {
            commands::notify::run(session, command).await
        }),
        Command::Incidents { server, command } => commands::operate(server, async |session| {
            commands::repair::run_incidents(session, command).await
        }),
        Command::Repair { server, command } => commands::operate(server, async |session| {
            commands::repair::run_repair(session, command).await
        }),
        Command::Bench(args) => commands::bench::run(args),
        Command::Backup { file, db } => commands::daemons::backup(&file, db),
        Command::Config { command } => commands::config::run(command),
        Command::Audit { command } => commands::audit::run(command),
        Command::ExecChild { argv } => Ok(exec_child::run(&argv)),
    };
    outcome.unwrap_or_else(|err| output::report_error(&err))
}
