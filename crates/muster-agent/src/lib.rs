//! The executors `muster agent` runs: allow-listed actions (argv templates whose parameters are
//! checked against patterns, run locally or over SSH), HTTP calls to allow-listed URLs,
//! deployments (Ansible playbooks, Terraform modules) from allow-listed repositories at the
//! pushed commit; canary tasks, answered at once so the server can prove its whole path;
//! and LLM sessions whose tools are the allowed actions and MCP servers' tools.
//! The configuration is one TOML file ([`config`]); [`run`] turns it into an agent runtime.
//!
//! Architecture Invariant: only [`process`] starts programs, never through a local shell; the
//! agent talks to the control plane through `muster-client` alone.

pub mod action;
pub mod canary;
pub mod config;
pub mod deploy;
pub mod http_call;
pub mod llm;
pub mod process;
pub mod template;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use muster_client::{AgentOptions, AgentRuntime, Client};

pub use config::AgentConfig;
pub use process::Launcher;

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Client(#[from] muster_client::ClientError),
}

/// The server used when neither the flags nor the file name one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// Builds the runtime for a checked config: an `action` handler always, starting programs the
/// way `launcher` says, a `canary` handler always (it runs nothing), an `http` handler when
/// the config allows URLs, an `llm` handler when it has an `[llm]` section, and `ansible` and
/// `terraform` handlers when it has a `[deploy]` section that turns them on.
pub fn runtime(
    checked: config::Checked,
    client: Client,
    launcher: Launcher,
) -> Result<AgentRuntime, AgentError> {
    for warning in &checked.warnings {
        tracing::warn!("{warning}");
    }
    let agent = &checked.config.agent;
    let mut options = AgentOptions::new(agent.id.clone());
    options.capabilities = checked.capabilities();
    options.mcp_servers = checked.mcp_servers();
    options.max_concurrency = agent.max_concurrency;
    options.labels = agent.labels.clone();
    if let Some(s) = agent.heartbeat_s {
        options.heartbeat_interval = Duration::from_secs(s.max(1));
    }
    let http = checked.config.http.clone();
    let deploy = checked.config.deploy.clone();
    let checked = Arc::new(checked);
    let agent_id = options.agent_id.clone();
    let llm = llm::LlmHandler::new(checked.clone(), client.clone(), launcher.clone());
    let mut runtime = AgentRuntime::new(client, options)
        .handle(
            "action",
            action::ActionHandler::new(checked, launcher.clone()),
        )
        .handle(canary::KIND, canary::CanaryHandler::new(agent_id));
    if let Some(llm) = llm {
        runtime = runtime.handle("llm", llm);
    }
    if let Some(http) = http {
        let timeout = Duration::from_secs(http.timeout_s.unwrap_or(30));
        runtime = runtime.handle(
            "http",
            http_call::HttpHandler::new(&http.allow, timeout).map_err(AgentError::Config)?,
        );
    }
    if let Some(deploy) = deploy {
        let deployer =
            Arc::new(deploy::Deployer::new(deploy, launcher).map_err(AgentError::Config)?);
        for tool in deploy::Tool::ALL {
            if let Some(handler) = deploy::DeployHandler::new(deployer.clone(), tool) {
                runtime = runtime.handle(tool.kind(), handler);
            }
        }
    }
    Ok(runtime)
}

/// Runs the agent described by the TOML file at `config_path` until `shutdown` completes,
/// then drains. `url` and `key` override the file's server settings; `launcher` says how
/// actions start (see [`Launcher`]).
pub async fn run(
    config_path: &Path,
    url: Option<String>,
    key: Option<String>,
    launcher: Launcher,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let checked = AgentConfig::load(config_path).map_err(AgentError::Config)?;
    let url = url
        .or_else(|| checked.config.server.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let key = match (key, &checked.config.server.key_env) {
        (Some(key), _) => Some(key),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            AgentError::Config(format!("server.key_env names {var}, which is not set"))
        })?),
        (None, None) => None,
    };
    let client = Client::new(&url, key)?;
    let supervised = matches!(launcher, Launcher::Supervised { .. });
    let runtime = runtime(checked, client, launcher)?;
    tracing::info!(
        agent_id = %runtime.options().agent_id,
        capabilities = ?runtime.options().capabilities,
        server = %url,
        supervised,
        "agent starting"
    );
    runtime.run(shutdown).await?;
    Ok(())
}
