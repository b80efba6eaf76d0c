//! The long-running subcommands, `serve` and `agent`, with the tracing and stop signal they
//! share, and `backup`, which works on the server's database file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use muster_server::config::LogFormat;
use muster_server::{Server, Settings};

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The agent's TOML file: its id, capabilities and executors.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The control plane's base URL; overrides the file.
    #[arg(long, env = "MUSTER_URL")]
    url: Option<String>,
    /// The agent key (the server's AGENT_KEY); MUSTER_API_KEY is used when MUSTER_AGENT_KEY is
    /// unset. Overrides the file.
    #[arg(long, env = "MUSTER_AGENT_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[tokio::main]
pub(crate) async fn serve() -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env()?;
    init_tracing(settings.log_format);
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} (ADDR)", settings.addr))?;
    let db = settings.db_path.clone();
    let server = Server::build(settings, listener).await?;
    tracing::info!(addr = %server.local_addr(), db = %db.display(), "muster serving");
    server.run(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
pub(crate) async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_tracing(log_format_from_env()?);
    // clap reads one variable per flag; the admin key is the documented fallback.
    let key = args
        .key
        .filter(|k| !k.is_empty())
        .or_else(|| std::env::var("MUSTER_API_KEY").ok())
        .filter(|k| !k.is_empty());
    // The agent's errors already name the file, the field or the server at fault.
    muster_agent::run(&args.config, args.url, key, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn backup(file: &Path, db: &Path) -> anyhow::Result<ExitCode> {
    muster_server::store::sqlite::backup(db, file)
        .with_context(|| format!("backing up {} to {}", db.display(), file.display()))?;
    eprintln!("backed up {} to {}", db.display(), file.display());
    Ok(ExitCode::SUCCESS)
}

/// `LOG_FORMAT` as `serve` reads it, for the agent, which has no server settings.
fn log_format_from_env() -> anyhow::Result<LogFormat> {
    match std::env::var("LOG_FORMAT").ok().as_deref() {
        None | Some("") | Some("pretty") => Ok(LogFormat::Pretty),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => anyhow::bail!("LOG_FORMAT={other:?}: expected json or pretty"),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
