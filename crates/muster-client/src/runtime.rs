//! The agent runtime: what every Rust agent runs to take part in muster.
//!
//! [`AgentRuntime::run`] registers, starts the heartbeat loop (host load, the attempts it runs,
//! cancellations back), then long-polls for tasks while it has a free slot (at most
//! `max_concurrency` at once). Each task goes to the [`Handler`] of its kind through
//! [`AgentRuntime::run_one`]: log lines are batched to the server as they come, the result is
//! reported with the task's attempt, and a cancellation (from the server, or a drain) stops the
//! handler after a grace period. The loop re-registers when the server forgot the agent, backs
//! off with jitter while the server is unreachable, and on shutdown drains: it stops claiming,
//! lets running tasks finish (or hands them back as retryable once the drain timeout passes),
//! then stops heartbeating and returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use muster_api::{
    AppendLogs, CompleteTask, FailTask, Heartbeat, Labels, LogStream, NewLogLine, RegisterAgent,
    RunningTask, Task,
};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::{Client, ClientError};
use crate::load::LoadSampler;

/// How a handler's run ended badly; the variant decides what happens next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt (the server retries while the task's retries last).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way again: no retry.
    #[error("{0}")]
    Permanent(String),
    /// Stopped because it was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
}

/// Runs tasks of one kind.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs the task; the value becomes the task's `result`. Long work should watch
    /// [`TaskContext::cancellation`] and stop when it fires.
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError>;
}

/// What a handler gets: the task, a log sink and its cancellation.
pub struct TaskContext {
    task: Task,
    logs: mpsc::UnboundedSender<NewLogLine>,
    cancel: CancellationToken,
}

impl TaskContext {
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Queues a log line; lines reach the server in batches, before the result.
    pub fn log(&self, stream: LogStream, text: impl Into<String>) {
        let _ = self.logs.send(NewLogLine {
            ts: Some(chrono::Utc::now()),
            stream,
            text: text.into(),
        });
    }

    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// How an agent presents itself and paces its work.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub agent_id: String,
    pub host: String,
    pub port: Option<u16>,
    pub capabilities: Vec<String>,
    pub labels: Labels,
    pub version: Option<String>,
    pub max_concurrency: u32,
    pub heartbeat_interval: Duration,
    /// How long one claim long-polls.
    pub claim_wait: Duration,
    /// How long a cancelled handler gets to stop before it is abandoned.
    pub cancel_grace: Duration,
    /// How long a drain waits for running tasks before handing them back.
    pub drain_timeout: Duration,
    /// How often queued log lines are sent.
    pub log_flush: Duration,
}

impl AgentOptions {
    pub fn new(agent_id: impl Into<String>) -> Self {
        AgentOptions {
            agent_id: agent_id.into(),
            host: hostname(),
            port: None,
            capabilities: Vec::new(),
            labels: Labels::new(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            max_concurrency: 1,
            heartbeat_interval: Duration::from_secs(10),
            claim_wait: Duration::from_secs(25),
            cancel_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(60),
            log_flush: Duration::from_millis(200),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

struct Running {
    attempt: u32,
    cancel: CancellationToken,
}

struct Shared {
    client: Client,
    options: AgentOptions,
    handlers: HashMap<String, Arc<dyn Handler>>,
    running: Mutex<HashMap<Uuid, Running>>,
    draining: AtomicBool,
    /// Drawn once per process: the server tells a restart from a re-registration by it, and
    /// lets this process (and no other holder of the agent key) drain this agent.
    instance_id: String,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running.lock().expect("running map poisoned")
    }

    fn cancel(&self, ids: &[Uuid]) {
        let running = self.running();
        for id in ids {
            if let Some(r) = running.get(id) {
                tracing::info!(task_id = %id, "the server cancelled this task; stopping it");
                r.cancel.cancel();
            }
        }
    }

    fn registration(&self) -> RegisterAgent {
        let o = &self.options;
        RegisterAgent {
            agent_id: o.agent_id.clone(),
            host: o.host.clone(),
            port: o.port,
            capabilities: o.capabilities.clone(),
            mcp_servers: Vec::new(),
            max_concurrency: Some(o.max_concurrency),
            labels: o.labels.clone(),
            version: o.version.clone(),
            instance_id: Some(self.instance_id.clone()),
            // Only the kinds it has handlers for are routed to it.
            kinds: {
                let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
                kinds.sort();
                kinds
            },
        }
    }

    /// Registers, retrying while the server is unreachable; a refusal (bad key, invalid
    /// options) is returned.
    async fn register(&self, stop: &CancellationToken) -> Result<(), ClientError> {
        let mut backoff = Backoff::default();
        loop {
            match self.client.register(&self.registration()).await {
                Ok(_) => {
                    tracing::info!(agent_id = %self.options.agent_id, server = self.client.base_url(), "registered");
                    return Ok(());
                }
                Err(err) if err.is_transient() => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %err, ?wait, "cannot register yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return Err(err),
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Exponential backoff with jitter, from 200 ms up to 30 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = 200u64.saturating_mul(1 << self.failures.min(8)).min(30_000);
        let jitter = 0.5 + rand::random::<f64>();
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// An agent: options, a client and handlers by task kind.
pub struct AgentRuntime {
    shared: Arc<Shared>,
}

/// A builder-side handle to add handlers before [`AgentRuntime::run`].
impl AgentRuntime {
    pub fn new(client: Client, options: AgentOptions) -> Self {
        AgentRuntime {
            shared: Arc::new(Shared {
                client,
                options,
                handlers: HashMap::new(),
                running: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(false),
                instance_id: uuid::Uuid::now_v7().to_string(),
            }),
        }
    }

    /// Routes tasks of `kind` to `handler`.
    pub fn handle(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("handlers are added before the runtime starts")
            .handlers
            .insert(kind.into(), Arc::new(handler));
        self
    }

    pub fn options(&self) -> &AgentOptions {
        &self.shared.options
    }

    /// Runs until `shutdown` completes, then drains. Errors only when the server refuses the
    /// agent (a wrong key, invalid options).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ClientError> {
        let shared = self.shared;
        let stop = CancellationToken::new();
        tokio::pin!(shutdown);
        tokio::select! {
            result = shared.register(&stop) => result?,
            _ = &mut shutdown => return Ok(()),
        }
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat_stop.clone()));
        let slots = Arc::new(Semaphore::new(
            shared.options.max_concurrency.max(1) as usize
        ));
        let mut tasks = JoinSet::new();
        let mut backoff = Backoff::default();
        let outcome = loop {
            while tasks.try_join_next().is_some() {}
            // A slot first, then a claim: the agent never holds more tasks than it can run.
            let permit: OwnedSemaphorePermit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
                _ = &mut shutdown => break Ok(()),
            };
            let claim = tokio::select! {
                claim = shared.client.next_task(&shared.options.agent_id, shared.options.claim_wait) => claim,
                _ = &mut shutdown => break Ok(()),
            };
            match claim {
                Ok(claim) => {
                    backoff.reset();
                    shared.cancel(&claim.cancel);
                    if let Some(task) = claim.task {
                        track(&shared, &task);
                        let shared = shared.clone();
                        tasks.spawn(async move { run_tracked(&shared, task, permit).await });
                    }
                }
                Err(err) if err.is_not_found() => {
                    tracing::warn!("the server does not know this agent; registering again");
                    if let Err(err) = shared.register(&stop).await {
                        break Err(err);
                    }
                }
                Err(err) if err.is_transient() => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %err, ?wait, "claim failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut shutdown => break Ok(()),
                    }
                }
                Err(err) => break Err(err),
            }
        };
        // Leaving: first tell the server to assign nothing more here, then finish what runs.
        if outcome.is_ok()
            && let Err(err) = shared
                .client
                .drain_self(&shared.options.agent_id, &shared.instance_id)
                .await
        {
            tracing::warn!(error = %err, "could not mark this agent draining");
        }
        drain(&shared, &mut tasks).await;
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        tracing::info!(agent_id = %shared.options.agent_id, "agent stopped");
        outcome
    }

    /// Runs one claimed task through its handler and reports the outcome. This is the step the
    /// claim loop repeats; tests drive it directly.
    pub async fn run_one(&self, task: Task) {
        track(&self.shared, &task);
        run_task(&self.shared, task).await;
    }
}

fn track(shared: &Shared, task: &Task) {
    shared.running().insert(
        task.id,
        Running {
            attempt: task.attempt,
            cancel: CancellationToken::new(),
        },
    );
}

async fn run_tracked(shared: &Arc<Shared>, task: Task, permit: OwnedSemaphorePermit) {
    run_task(shared, task).await;
    drop(permit);
}

/// Stops claiming is done by the caller; this waits for running tasks, then hands back what
/// did not finish in time.
async fn drain(shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
    shared.draining.store(true, Ordering::SeqCst);
    let running = shared.running().len();
    if running > 0 {
        tracing::info!(running, timeout = ?shared.options.drain_timeout, "draining: waiting for running tasks");
    }
    let finished = tokio::time::timeout(shared.options.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!("drain timeout: cancelling the remaining tasks and handing them back");
        for r in shared.running().values() {
            r.cancel.cancel();
        }
        let grace = shared.options.cancel_grace + Duration::from_secs(5);
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.abort_all();
        }
    }
}

async fn run_task(shared: &Shared, task: Task) {
    let cancel = shared
        .running()
        .get(&task.id)
        .map(|r| r.cancel.clone())
        .unwrap_or_default();
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let flusher = tokio::spawn(flush_logs(
        shared.client.clone(),
        task.id,
        task.attempt,
        log_rx,
        shared.options.log_flush,
        cancel.clone(),
    ));
    let ctx = TaskContext {
        task: task.clone(),
        logs: log_tx,
        cancel: cancel.clone(),
    };
    tracing::info!(task_id = %task.id, kind = %task.kind, attempt = task.attempt, "running task");
    let outcome = match shared.handlers.get(&task.kind) {
        None => Err(HandlerError::Permanent(format!(
            "agent {} has no handler for tasks of kind {:?}",
            shared.options.agent_id, task.kind
        ))),
        Some(handler) => {
            let run = handler.run(&ctx);
            tokio::pin!(run);
            tokio::select! {
                outcome = &mut run => outcome,
                _ = cancel.cancelled() => {
                    match tokio::time::timeout(shared.options.cancel_grace, &mut run).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(HandlerError::Cancelled(
                            "the handler did not stop within the grace period".into(),
                        )),
                    }
                }
            }
        }
    };
    drop(ctx);
    let _ = flusher.await;
    let outcome = match outcome {
        Err(HandlerError::Cancelled(why)) if shared.draining.load(Ordering::SeqCst) => Err(
            HandlerError::Retryable(format!("agent is shutting down; handed back ({why})")),
        ),
        other => other,
    };
    report(&shared.client, &task, outcome).await;
    shared.running().remove(&task.id);
}

/// Sends log lines in batches; stops the task if the server says its attempt is stale.
async fn flush_logs(
    client: Client,
    task_id: Uuid,
    attempt: u32,
    mut rx: mpsc::UnboundedReceiver<NewLogLine>,
    every: Duration,
    cancel: CancellationToken,
) {
    const BATCH: usize = 500;
    let mut open = true;
    while open {
        let mut lines = Vec::new();
        match rx.recv().await {
            Some(line) => lines.push(line),
            None => break,
        }
        let deadline = tokio::time::sleep(every);
        tokio::pin!(deadline);
        while lines.len() < BATCH {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => lines.push(line),
                    None => { open = false; break; }
                },
                _ = &mut deadline => break,
            }
        }
        let mut backoff = Backoff::default();
        let logs = AppendLogs { attempt, lines };
        loop {
            match client.append_logs(task_id, &logs).await {
                Ok(_) => break,
                Err(err) if err.is_conflict() || err.is_not_found() => {
                    tracing::warn!(%task_id, attempt, "the server refused logs for this attempt; stopping it");
                    cancel.cancel();
                    return;
                }
                Err(err) if err.is_transient() && backoff.failures < 8 => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(err) => {
                    tracing::warn!(%task_id, error = %err, dropped = logs.lines.len(), "log lines lost");
                    break;
                }
            }
        }
    }
}

/// Reports the outcome, retrying while the server is unreachable (the lease keeps the task
/// ours meanwhile). A stale attempt is logged and dropped: another attempt owns the task now.
async fn report(client: &Client, task: &Task, outcome: Result<Value, HandlerError>) {
    let mut backoff = Backoff::default();
    loop {
        let sent = match &outcome {
            Ok(result) => {
                let report = CompleteTask {
                    attempt: task.attempt,
                    result: result.clone(),
                    usage: None,
                };
                client.complete(task.id, &report).await
            }
            Err(err) => {
                let report = FailTask {
                    attempt: task.attempt,
                    error: err.to_string(),
                    retryable: matches!(err, HandlerError::Retryable(_)),
                };
                client.fail(task.id, &report).await
            }
        };
        match sent {
            Ok(t) => {
                tracing::info!(task_id = %task.id, state = %t.state, "reported");
                return;
            }
            Err(err) if err.is_conflict() || err.is_not_found() => {
                tracing::warn!(task_id = %task.id, attempt = task.attempt, error = %err, "report refused: the attempt is no longer current");
                return;
            }
            Err(err) if err.is_transient() && backoff.failures < 12 => {
                let wait = backoff.next_delay();
                tracing::warn!(task_id = %task.id, error = %err, ?wait, "report failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(err) => {
                tracing::error!(task_id = %task.id, error = %err, "report lost; the lease will expire and the task run again");
                return;
            }
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut sampler = LoadSampler::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.options.heartbeat_interval) => {}
            _ = stop.cancelled() => return,
        }
        let (cpu_percent, memory_percent) = sampler.sample();
        let running: Vec<RunningTask> = shared
            .running()
            .iter()
            .map(|(id, r)| RunningTask {
                task_id: *id,
                attempt: r.attempt,
            })
            .collect();
        let beat = Heartbeat {
            cpu_percent,
            memory_percent,
            active_tasks: running.len() as u32,
            running: Some(running),
        };
        match shared
            .client
            .heartbeat(&shared.options.agent_id, &beat)
            .await
        {
            Ok(ack) => shared.cancel(&ack.cancel),
            Err(err) if err.is_not_found() => {
                tracing::warn!("heartbeat: the server does not know this agent; registering again");
                if let Err(err) = shared.register(&stop).await {
                    tracing::error!(error = %err, "re-registration refused");
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
    }
}
