//! The `muster` binary: a thin CLI over the library crates.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use muster_server::config::LogFormat;
use muster_server::{Server, Settings};

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
    /// Copy the database to FILE through SQLite's online backup (safe while serving).
    Backup {
        /// Where to write the copy.
        file: PathBuf,
        /// The database to copy; defaults to DB_PATH or muster.db.
        #[arg(long, env = "DB_PATH", default_value = "muster.db")]
        db: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve(),
        Command::Backup { file, db } => {
            muster_server::store::sqlite::backup(&db, &file)
                .with_context(|| format!("backing up {} to {}", db.display(), file.display()))?;
            eprintln!("backed up {} to {}", db.display(), file.display());
            Ok(())
        }
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

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    init_tracing(settings.log_format);
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} (ADDR)", settings.addr))?;
    let db = settings.db_path.clone();
    let server = Server::build(settings, listener).await?;
    tracing::info!(addr = %server.local_addr(), db = %db.display(), "muster serving");
    server.run(shutdown_signal()).await;
    Ok(())
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
