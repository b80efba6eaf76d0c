//! The operator's actions on tasks and agents: submit, cancel, retry, drain and remove. The v1
//! API handlers and the web UI both call these, so a task submitted from a form is validated,
//! stored, dispatched and announced exactly like one submitted as JSON.

use muster_api::limits::MAX_SUBMIT_BATCH;
use muster_api::{
    Agent, AgentStatus, ErrorCode, NotifyChannel, NotifyTestResult, SubmitResult, SubmitTask, Task,
};
use uuid::Uuid;

use crate::app::App;
use crate::audit::{Actor, Via};
use crate::bounds;
use crate::changes::AgentChange;
use crate::error::ApiError;
use crate::store::{DrainBy, NewTask};

/// Checks a submission and normalises it (capabilities sorted and unique); errors name the field.
pub fn validate_submit(req: SubmitTask, default_max_retries: u32) -> Result<NewTask, ApiError> {
    bounds::submit(&req)?;
    let mut capabilities = req.capabilities;
    capabilities.sort();
    capabilities.dedup();
    Ok(NewTask {
        id: Uuid::now_v7(),
        kind: req.kind,
        payload: req.payload,
        capabilities,
        priority: req.priority,
        max_retries: req.max_retries.unwrap_or(default_max_retries),
        timeout_s: req.timeout_s,
        lock_key: req.lock_key,
        idempotency_key: req.idempotency_key,
        run_after: req.run_after.map(|t| t.timestamp_millis()),
        labels: req.labels,
    })
}

/// A submitted task, and whether it is new (false: its idempotency key named an existing one).
#[derive(Debug)]
pub struct SubmitOutcome {
    pub task: Task,
    pub created: bool,
}

/// Validates, persists (durable before it returns) and queues a task.
pub async fn submit(app: &App, req: SubmitTask) -> Result<SubmitOutcome, ApiError> {
    let new = validate_submit(req, app.settings().default_max_retries)?;
    let submitted = app.store.submit(new, app.now_ms()).await?;
    if let Some(change) = submitted.change {
        app.changes.task(change);
    }
    Ok(SubmitOutcome {
        task: submitted.task,
        created: submitted.created,
    })
}

/// Many submissions at once, each validated alone as [`submit`] validates one (a refused one
/// gets 422 with its message and the others go on), each with its own idempotency key, all
/// stored in one store operation (one commit), then announced. In order, what the single
/// route would have answered for each.
pub async fn submit_many(
    app: &App,
    tasks: Vec<serde_json::Value>,
) -> Result<Vec<SubmitResult>, ApiError> {
    bounds::count("tasks", &tasks, MAX_SUBMIT_BATCH)?;
    let default_max_retries = app.settings().default_max_retries;
    let mut results = Vec::with_capacity(tasks.len());
    let mut valid = Vec::with_capacity(tasks.len());
    for raw in tasks {
        let checked = serde_path_to_error::deserialize::<_, SubmitTask>(raw)
            .map_err(|err| ApiError::new(ErrorCode::InvalidField, err.to_string()))
            .and_then(|req| validate_submit(req, default_max_retries));
        match checked {
            Ok(new) => {
                valid.push(new);
                results.push(None);
            }
            Err(err) => results.push(Some(refused(&err))),
        }
    }
    let stored = if valid.is_empty() {
        Vec::new()
    } else {
        app.store.submit_many(valid, app.now_ms()).await?
    };
    // The store answered the valid submissions in order: they fill the gaps.
    let mut stored = stored.into_iter();
    Ok(results
        .into_iter()
        .map(|judged| {
            judged.unwrap_or_else(|| match stored.next() {
                Some(Ok(submitted)) => {
                    if let Some(change) = submitted.change {
                        app.changes.task(change);
                    }
                    SubmitResult {
                        status: if submitted.created { 201 } else { 200 },
                        task: Some(submitted.task),
                        error: None,
                    }
                }
                Some(Err(err)) => refused(&ApiError::from(err)),
                None => refused(&ApiError::new(
                    ErrorCode::Unavailable,
                    "the store did not answer this submission; send it again",
                )),
            })
        })
        .collect())
}

fn refused(err: &ApiError) -> SubmitResult {
    SubmitResult {
        status: err.code.http_status(),
        task: None,
        error: Some(err.message.clone()),
    }
}

/// Cancels a queued or assigned task at once; a running one's agent is told to stop. The audit
/// log records the operator, acting `via` the API or the UI.
pub async fn cancel(app: &App, task_id: Uuid, via: Via) -> Result<Task, ApiError> {
    let changed = app
        .store
        .cancel(task_id, Actor::operator(via), app.now_ms())
        .await?;
    app.changes.task(changed.change);
    Ok(changed.task)
}

/// Queues a failed or cancelled task again; audited like [`cancel`].
pub async fn retry(app: &App, task_id: Uuid, via: Via) -> Result<Task, ApiError> {
    let changed = app
        .store
        .retry(task_id, Actor::operator(via), app.now_ms())
        .await?;
    app.changes.task(changed.change);
    Ok(changed.task)
}

/// Every agent with its live fields (status, last heartbeat, load) filled in.
pub async fn agents(app: &App) -> Result<Vec<Agent>, ApiError> {
    let mut agents = app.store.agents().await?;
    for agent in &mut agents {
        app.registry.decorate(agent);
    }
    Ok(agents)
}

/// One agent with its live fields filled in.
pub async fn agent(app: &App, agent_id: &str) -> Result<Agent, ApiError> {
    let mut agent = app.store.agent(agent_id).await?;
    app.registry.decorate(&mut agent);
    Ok(agent)
}

/// An operator's drain: the agent takes no new tasks until undrained, across heartbeat
/// lapses, restarts and registrations; its running tasks go on.
pub async fn drain(app: &App, agent_id: &str, via: Via) -> Result<Agent, ApiError> {
    let agent = app
        .store
        .drain_agent(agent_id, DrainBy::Operator(via), app.now_ms())
        .await?;
    announce_status(app, &agent);
    self::agent(app, agent_id).await
}

/// Ends a drain: the agent takes tasks again.
pub async fn undrain(app: &App, agent_id: &str, via: Via) -> Result<Agent, ApiError> {
    let agent = app.store.undrain_agent(agent_id, via, app.now_ms()).await?;
    announce_status(app, &agent);
    self::agent(app, agent_id).await
}

/// Tells the rest of the server the status the store now holds for the agent (an offline
/// agent stays offline in memory until it is heard from).
pub(crate) fn announce_status(app: &App, agent: &Agent) {
    if app.registry.status(&agent.agent_id) == Some(AgentStatus::Offline) {
        return;
    }
    app.changes.agent(AgentChange::Status {
        agent_id: agent.agent_id.clone(),
        status: agent.status,
    });
}

/// Forgets the agent; its assigned and running tasks go back to the queue.
pub async fn remove(app: &App, agent_id: &str, via: Via) -> Result<(), ApiError> {
    let changes = app.store.remove_agent(agent_id, via, app.now_ms()).await?;
    for change in changes {
        app.changes.task(change);
    }
    app.changes.agent(AgentChange::Removed {
        agent_id: agent_id.to_owned(),
    });
    Ok(())
}

/// Puts reloaded settings in force and records the reload (which fields changed, never their
/// values, which may be secrets) in the audit log.
pub async fn reload_settings(
    app: &App,
    settings: crate::config::Settings,
    changed: &[&str],
) -> Result<(), ApiError> {
    app.replace_settings(settings);
    let detail = serde_json::json!({ "changed": changed });
    crate::outbox::record_audit(
        app,
        vec![crate::audit::AuditRecord::config_reloaded(
            app.now_ms(),
            detail,
        )],
    )
    .await?;
    Ok(())
}

/// A task with its attempts and, while it is queued, why it waits.
pub async fn task(app: &App, task_id: Uuid) -> Result<Task, ApiError> {
    let mut task = app.store.task(task_id).await?;
    if task.state == muster_api::TaskState::Queued {
        task.waiting = Some(why_waiting(app, &task).await?);
    }
    Ok(task)
}

/// Whether `agent` may be given a task of `kind` needing `capabilities`, whatever its status:
/// it has them all, and handles the kind (an agent that names no kinds handles any).
pub fn takes(agent: &Agent, kind: &str, capabilities: &[String]) -> bool {
    capabilities.iter().all(|c| agent.capabilities.contains(c))
        && (agent.kinds.is_empty() || agent.kinds.iter().any(|k| k == kind))
}

/// Why a queued task is not running, as an operator would want to read it.
async fn why_waiting(app: &App, task: &Task) -> Result<String, ApiError> {
    let now = app.now_ms();
    if let Some(after) = task.run_after
        && after.timestamp_millis() > now
    {
        return Ok(format!(
            "run_after is {}: it waits until then",
            after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if let Some(lock) = &task.lock_key
        && let Some((holder, state)) = app.store.lock_blocker(task.id).await?
    {
        let how = if state == muster_api::TaskState::Queued {
            "is next, queued before it"
        } else {
            "holds it"
        };
        return Ok(format!(
            "its lock {lock:?} is taken: task {holder} ({state}) {how}"
        ));
    }
    let agents = agents(app).await?;
    let capable: Vec<&Agent> = agents
        .iter()
        .filter(|a| takes(a, &task.kind, &task.capabilities))
        .collect();
    let needs = if task.capabilities.is_empty() {
        format!("handles kind {:?}", task.kind)
    } else {
        format!(
            "has capabilities [{}] and handles kind {:?}",
            task.capabilities.join(", "),
            task.kind
        )
    };
    if capable.is_empty() {
        return Ok(format!("no registered agent {needs}"));
    }
    let online: Vec<&&Agent> = capable
        .iter()
        .filter(|a| a.status == AgentStatus::Online)
        .collect();
    if online.is_empty() {
        let named: Vec<String> = capable
            .iter()
            .map(|a| format!("{} ({})", a.agent_id, a.status))
            .collect();
        return Ok(format!(
            "no online agent {needs}; capable: {}",
            named.join(", ")
        ));
    }
    if online.iter().all(|a| a.active_tasks >= a.max_concurrency) {
        let named: Vec<String> = online
            .iter()
            .map(|a| format!("{} ({}/{})", a.agent_id, a.active_tasks, a.max_concurrency))
            .collect();
        return Ok(format!("every capable agent is busy: {}", named.join(", ")));
    }
    Ok("a capable agent has room: it is about to be assigned".to_owned())
}

/// The configured notification channels, without their secrets, each with the events its
/// rules send it.
pub fn notify_channels(app: &App) -> Vec<NotifyChannel> {
    let settings = app.settings();
    settings
        .notify
        .channels
        .iter()
        .map(|c| {
            let mut events: Vec<String> = settings
                .notify
                .rules
                .iter()
                .filter(|r| r.to.contains(&c.name))
                .flat_map(|r| r.on.iter().cloned())
                .collect();
            events.sort();
            events.dedup();
            NotifyChannel {
                name: c.name.clone(),
                kind: c.kind_name().to_owned(),
                target: c.describe(),
                events,
            }
        })
        .collect()
}

/// Sends a test message over the channel now and answers what its service said.
pub async fn test_channel(app: &App, name: &str, via: Via) -> Result<NotifyTestResult, ApiError> {
    let settings = app.settings();
    let Some(channel) = settings.notify.channel(name) else {
        let names: Vec<&str> = settings
            .notify
            .channels
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let configured = if names.is_empty() {
            "no channels are configured ([[notify.channels]] in the config file)".to_owned()
        } else {
            format!("the configured channels are {}", names.join(", "))
        };
        return Err(ApiError::new(
            muster_api::ErrorCode::NotFound,
            format!("no channel is named {name:?}; {configured}"),
        ));
    };
    Ok(crate::messenger::send_test(app, channel, Actor::operator(via)).await)
}
