//! `muster agents …`: the registry as an operator sees it — list, show, drain, undrain, remove.

use std::process::ExitCode;

use clap::Subcommand;
use muster_api::{Agent, AgentStatus};

use super::connection::Session;
use crate::output;

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// List registered agents with their status and load.
    List,
    /// Show one agent.
    Show { id: String },
    /// Stop giving an agent new tasks until undrained (across restarts); the ones it runs go on.
    Drain { id: String },
    /// Let a drained agent take tasks again.
    Undrain { id: String },
    /// Forget an agent; its unfinished tasks go back to the queue.
    Remove { id: String },
}

pub(crate) async fn run(session: &Session, command: AgentsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AgentsCommand::List => list(session).await?,
        AgentsCommand::Show { id } => show(session, &id).await?,
        AgentsCommand::Drain { id } => drain(session, &id).await?,
        AgentsCommand::Undrain { id } => undrain(session, &id).await?,
        AgentsCommand::Remove { id } => remove(session, &id).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(session: &Session) -> anyhow::Result<()> {
    let list = session
        .client
        .agents()
        .await
        .map_err(|err| session.explain(err, "list", "agents"))?;
    if session.json {
        return output::emit_json(&list);
    }
    if list.agents.is_empty() {
        output::note("no agents registered");
        return Ok(());
    }
    let mut table = output::table(&[
        "AGENT",
        "STATUS",
        "HOST",
        "CAPABILITIES",
        "TASKS",
        "CPU",
        "MEMORY",
        "HEARTBEAT",
        "VERSION",
    ]);
    for agent in &list.agents {
        output::add_row(
            &mut table,
            vec![
                agent.agent_id.clone(),
                agent.status.to_string(),
                address(agent),
                output::list_or_dash(&agent.capabilities),
                format!("{}/{}", agent.active_tasks, agent.max_concurrency),
                output::percent(current(agent, agent.cpu_percent)),
                output::percent(current(agent, agent.memory_percent)),
                agent
                    .last_heartbeat_at
                    .map_or_else(|| "never".to_owned(), output::ago),
                output::or_dash(agent.version.as_deref()),
            ],
        );
    }
    output::emit(table.trim_fmt())
}

/// A load figure, or none for an offline agent: its last report says nothing about now.
fn current(agent: &Agent, load: Option<f64>) -> Option<f64> {
    load.filter(|_| agent.status != AgentStatus::Offline)
}

/// `host:port`, or the host alone when the agent listens nowhere.
fn address(agent: &Agent) -> String {
    let host = output::or_dash(Some(&agent.host));
    match agent.port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

async fn show(session: &Session, id: &str) -> anyhow::Result<()> {
    let agent = session
        .client
        .agent(id)
        .await
        .map_err(|err| session.explain(err, "show", &format!("agent {id}")))?;
    if session.json {
        return output::emit_json(&agent);
    }
    let mcp_servers: Vec<String> = agent
        .mcp_servers
        .iter()
        .map(|server| match server.get("name").and_then(|n| n.as_str()) {
            Some(name) => name.to_owned(),
            None => server.to_string(),
        })
        .collect();
    let rows = vec![
        ("agent", agent.agent_id.clone()),
        ("status", agent.status.to_string()),
        ("address", address(&agent)),
        ("capabilities", output::list_or_dash(&agent.capabilities)),
        ("mcp servers", output::list_or_dash(&mcp_servers)),
        (
            "tasks",
            format!(
                "{} active of {} at once",
                agent.active_tasks, agent.max_concurrency
            ),
        ),
        ("cpu", output::percent(current(&agent, agent.cpu_percent))),
        (
            "memory",
            output::percent(current(&agent, agent.memory_percent)),
        ),
        ("labels", output::labels(&agent.labels)),
        ("version", output::or_dash(agent.version.as_deref())),
        ("registered", output::when(agent.registered_at)),
        ("last heartbeat", output::when_opt(agent.last_heartbeat_at)),
    ];
    output::emit(output::fields(rows).trim_fmt())
}

async fn drain(session: &Session, id: &str) -> anyhow::Result<()> {
    let agent = session
        .client
        .drain(id)
        .await
        .map_err(|err| session.explain(err, "drain", &format!("agent {id}")))?;
    if session.json {
        return output::emit_json(&agent);
    }
    output::emit(format!(
        "agent {id} is {}: it takes no new tasks; its {} active task(s) go on",
        agent.status, agent.active_tasks
    ))
}

async fn undrain(session: &Session, id: &str) -> anyhow::Result<()> {
    let agent = session
        .client
        .undrain(id)
        .await
        .map_err(|err| session.explain(err, "undrain", &format!("agent {id}")))?;
    if session.json {
        return output::emit_json(&agent);
    }
    output::emit(format!(
        "agent {id} is {}: it takes tasks again",
        agent.status
    ))
}

async fn remove(session: &Session, id: &str) -> anyhow::Result<()> {
    session
        .client
        .remove_agent(id)
        .await
        .map_err(|err| session.explain(err, "remove", &format!("agent {id}")))?;
    if session.json {
        // The API answers 204 with no body; scripts still get one document to read.
        return output::emit_json(&serde_json::json!({ "agent_id": id, "removed": true }));
    }
    output::emit(format!(
        "removed agent {id}; its unfinished tasks went back to the queue"
    ))
}
