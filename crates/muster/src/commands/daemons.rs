//! The long-running subcommands, `serve` and `agent`, with the tracing and stop signal they
//! share, the SIGHUP reload of `serve`'s settings, and `backup`, which works on the server's
//! database file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use muster_server::config::{LogFormat, Overrides, Sources};
use muster_server::error::StoreError;
use muster_server::server::StartError;
use muster_server::{Server, Settings};

/// `muster agent --help`'s account of the config file.
pub(crate) const AGENT_CONFIG_HELP: &str = "\
The config file (TOML) says who the agent is and what it may run; nothing else runs:

  [server]     url: the control plane (--url and MUSTER_URL win);
               key_env: the name of a variable holding the agent key, which must then be
               set (the key itself never goes in the file)
  [agent]      id (required), capabilities, max_concurrency (default 1), labels,
               heartbeat_s (default 10)
  [[actions]]  name, argv (a template: [\"docker\", \"restart\", \"{container}\"]), params (a
               regular expression per parameter), capability, timeout_s, host
  [[hosts]]    name, ssh (user@host), port, identity_file, options: where actions may run
               over SSH
  [http]       allow (URL prefixes), timeout_s: for tasks of kind \"http\"
  [deploy]     workdir (required), repos (clone URLs: exact, or a prefix ending in /),
               ansible_playbook, terraform (programs, or false), git, timeout_s: for
               tasks of kind \"ansible\" and \"terraform\" at a pushed commit
  [llm]        provider, workflow, system, max_turns (default 10), max_tokens, actions
               (default: every action not risky), tool_timeout_s: LLM sessions, tasks of
               kind \"llm\" whose model turns go through the server
  [[mcp.servers]]  name, command + args + env + env_from (stdio) or url + token_env
               (streamable HTTP), tools (the allow-list): MCP tools for those sessions

A task of kind \"action\" names one and its parameters:
  muster task submit action --cap docker \\
    --payload '{\"action\": \"restart_container\", \"params\": {\"container\": \"jellyfin\"}}'
A parameter that fails its pattern fails the task before anything runs.

examples/agent.toml in muster's repository is a complete, commented example.

Key: --key, else MUSTER_AGENT_KEY, else MUSTER_API_KEY, else the file's key_env; none is
needed when the server has no AGENT_KEY or API_KEY.";

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The agent's TOML file: its id, capabilities and executors.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The control plane's base URL; overrides the file.
    #[arg(long, env = "MUSTER_URL")]
    url: Option<String>,
    /// The agent key (the server's AGENT_KEY); MUSTER_API_KEY is used when MUSTER_AGENT_KEY is
    /// unset. Overrides the file. Not needed when the server has no key.
    #[arg(long, env = "MUSTER_AGENT_KEY", hide_env_values = true)]
    key: Option<String>,
}

/// The flags of `muster serve`, the highest layer of the settings; `muster config show` takes
/// the same ones so it shows what `serve` would run with.
#[derive(clap::Args, Default)]
pub(crate) struct ServeArgs {
    /// Listen address, IP:PORT; wins over ADDR and the file's addr.
    #[arg(long, value_name = "IP:PORT")]
    addr: Option<String>,
    /// The SQLite database file; wins over DB_PATH and the file's db_path.
    #[arg(long, value_name = "PATH")]
    db: Option<String>,
    /// The TOML config file; wins over MUSTER_CONFIG.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The process environment, the one place the binary hands it to the settings.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl ServeArgs {
    pub(crate) fn sources(&self) -> Sources<fn(&str) -> Option<String>> {
        Sources {
            file: self.config.clone(),
            env: process_env,
            flags: Overrides {
                addr: self.addr.clone(),
                db_path: self.db.clone(),
            },
        }
    }
}

#[tokio::main]
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let sources = args.sources();
    let settings = Settings::load(&sources)?;
    init_tracing(settings.log_format);
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    // SIGHUP ends a process that does not handle it, so the handler is in place before the
    // server starts and before anyone could learn its address.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {} (ADDR, --addr or addr)", settings.addr))?;
    let db = settings.db_path.clone();
    let running = settings.clone();
    let server = Server::build(settings, listener)
        .await
        .map_err(|err| start_error(err, &db))?;
    #[cfg(unix)]
    let reloads = {
        let app = server.app();
        let apply = move |new: Settings, changed: Vec<&'static str>| {
            let app = app.clone();
            async move {
                if let Err(err) =
                    muster_server::operator::reload_settings(&app, new, &changed).await
                {
                    tracing::error!(error = %err.message, "the reload is in force but could not be audited");
                }
            }
        };
        tokio::spawn(reload_loop(apply, hangups, sources, running))
    };
    #[cfg(not(unix))]
    drop((sources, running));
    tracing::info!(addr = %server.local_addr(), db = %db.display(), "muster serving");
    server.run(shutdown_signal()).await;
    #[cfg(unix)]
    reloads.abort();
    Ok(ExitCode::SUCCESS)
}

/// Why `serve` could not start, said once (each error's message already holds its cause, so
/// its source chain is not repeated) and, for the database, naming the settings that chose
/// the file.
fn start_error(err: StartError, db: &Path) -> anyhow::Error {
    match err {
        StartError::Store(store) => {
            let why = match store {
                StoreError::Unavailable(why) => why,
                other => other.to_string(),
            };
            anyhow::anyhow!(
                "cannot use the database {} (DB_PATH, --db or the config file's db_path): {why}",
                db.display()
            )
        }
        other => anyhow::anyhow!("{other}"),
    }
}

/// Loads the settings again on every SIGHUP, through the same sources as the start, and hands
/// the ones to run with to `apply`. A reload that fails is logged (naming the file, line and
/// field) and changes nothing; settings only a restart can change keep their running values
/// and are named in the log. Owned by `serve`, which aborts it once the server has stopped.
#[cfg(unix)]
async fn reload_loop<E, F>(
    apply: impl Fn(Settings, Vec<&'static str>) -> F + Send + 'static,
    mut hangups: tokio::signal::unix::Signal,
    sources: Sources<E>,
    mut current: Settings,
) where
    E: Fn(&str) -> Option<String> + Send + Sync + 'static,
    F: std::future::Future<Output = ()>,
{
    while hangups.recv().await.is_some() {
        // The file is small and read once per signal, so reading it inline holds a runtime
        // worker only for a moment; a blocking task would add nothing.
        let reloaded = match current.reload_from(&sources) {
            Ok(reloaded) => reloaded,
            Err(err) => {
                tracing::error!(error = %err, "reload refused; keeping the running settings");
                continue;
            }
        };
        for note in &reloaded.restart_needed {
            tracing::warn!("{note}");
        }
        if reloaded.changed.is_empty() {
            tracing::info!("configuration re-read: nothing to apply");
            continue;
        }
        tracing::info!(changed = ?reloaded.changed, "configuration re-read");
        for warning in reloaded.settings.warnings() {
            tracing::warn!("{warning}");
        }
        current = reloaded.settings;
        apply(current.clone(), reloaded.changed.clone()).await;
        tracing::info!(changed = ?reloaded.changed, "settings reloaded and in force");
    }
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
    let launcher = crate::exec_child::launcher();
    muster_agent::run(&args.config, args.url, key, launcher, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Copies the database: `db` when given, else the one `serve` would open (DB_PATH, the
/// config file's db_path, or muster.db).
pub(crate) fn backup(file: &Path, db: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let db = match db {
        Some(db) => db,
        None => muster_server::config::db_path(&ServeArgs::default().sources())?,
    };
    let db = db.as_path();
    muster_server::store::backup(db, file)
        .with_context(|| format!("backing up {} to {}", db.display(), file.display()))?;
    eprintln!("backed up {} to {}", db.display(), file.display());
    Ok(ExitCode::SUCCESS)
}

/// The agent's `LOG_FORMAT`, read and worded as `serve` reads it; the agent has no server
/// settings.
fn log_format_from_env() -> anyhow::Result<LogFormat> {
    match process_env("LOG_FORMAT").filter(|v| !v.trim().is_empty()) {
        None => Ok(LogFormat::Pretty),
        Some(value) => value
            .parse()
            .map_err(|why| anyhow::anyhow!("LOG_FORMAT={value:?} is invalid: {why}")),
    }
}

/// Logs go to standard output; colours only when that is a terminal and `NO_COLOR` is unset,
/// so a log file or a journal never holds escape sequences.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
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
