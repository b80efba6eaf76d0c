//! The agent runtime: what every Rust agent runs to take part in muster.
//!
//! [`AgentRuntime::run`] registers, starts the heartbeat loop (host load, the attempts it runs,
//! cancellations back), then long-polls for as many tasks as it has free slots, in one batch
//! claim (at most `max_concurrency` run at once). Each task goes to the [`Handler`] of its kind
//! through [`AgentRuntime::run_one`]: log lines are batched to the server as they come, the
//! result is reported with the task's attempt through the one reporter, which sends at once
//! when no report is in flight and otherwise sends together the outcomes that finished
//! meanwhile (`POST /api/v1/agents/{id}/reports`), and a cancellation (from the server, or a
//! drain) stops the handler after a grace period. The loop re-registers when the server forgot the agent, backs
//! off with jitter while the server is unreachable, and on shutdown drains: it stops claiming,
//! lets running tasks finish (or hands them back as retryable once the drain timeout passes),
//! then stops heartbeating and returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use muster_api::limits::{MAX_CLAIM_BATCH, MAX_ERROR_CHARS, MAX_REPORT_BATCH};
use muster_api::{
    AppendLogs, Heartbeat, Labels, LogStream, NewLogLine, RegisterAgent, Report, ReportOutcome,
    ReportResult, RunningTask, Task,
};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
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

/// What a handler gets: the task, a log sink, its cancellation, and a place for its usage.
pub struct TaskContext {
    task: Task,
    logs: LogSink,
    cancel: CancellationToken,
    usage: Mutex<Option<Value>>,
}

impl TaskContext {
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Queues a log line; lines reach the server in batches, before the result.
    pub fn log(&self, stream: LogStream, text: impl Into<String>) {
        self.logs.log(stream, text);
    }

    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// A handle that queues log lines like [`TaskContext::log`], for a task of the handler's
    /// own (a child's stderr, say). The task's report waits until every handle is dropped, so
    /// such a task must end with the handler.
    pub fn log_sink(&self) -> LogSink {
        self.logs.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Sets what the task consumed (an LLM session's tokens and cost): it goes with the
    /// completed report as the task's `usage`. A failed report carries none (the server's rule).
    pub fn set_usage(&self, usage: Value) {
        *self.usage.lock().expect("usage lock poisoned") = Some(usage);
    }
}

/// Queues log lines for one task; see [`TaskContext::log_sink`].
#[derive(Clone)]
pub struct LogSink(mpsc::UnboundedSender<NewLogLine>);

impl LogSink {
    /// Queues a log line; lines reach the server in batches, before the result.
    pub fn log(&self, stream: LogStream, text: impl Into<String>) {
        let _ = self.0.send(NewLogLine {
            ts: Some(chrono::Utc::now()),
            stream,
            text: text.into(),
        });
    }
}

/// How an agent presents itself and paces its work.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub agent_id: String,
    pub host: String,
    pub port: Option<u16>,
    pub capabilities: Vec<String>,
    /// The MCP servers it offers, as the register body's `mcp_servers` (each at most 16 KiB
    /// as JSON, at most 50).
    pub mcp_servers: Vec<Value>,
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
            mcp_servers: Vec::new(),
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

/// A finished attempt waiting for the reporter, and the task that waits for its answer.
struct PendingReport {
    report: Report,
    answered: oneshot::Sender<()>,
}

/// The way to the reporter: its queue, and the task that sends what queues up.
struct Reporter {
    queue: mpsc::UnboundedSender<PendingReport>,
    task: tokio::task::JoinHandle<()>,
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
    /// Started at the first report. Its task holds only a weak reference, so it ends when the
    /// runtime is dropped; [`AgentRuntime::run`] also stops it once it has drained.
    reporter: OnceLock<Reporter>,
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

    /// Reports an attempt's end through the reporter and waits until the server has answered
    /// it (or it was given up on): the attempt stays in the heartbeat's `running` list, and its
    /// slot taken, until then.
    async fn report(self: &Arc<Self>, report: Report) {
        let reporter = self.reporter.get_or_init(|| {
            let (queue, pending) = mpsc::unbounded_channel();
            let task = tokio::spawn(report_loop(Arc::downgrade(self), pending));
            Reporter { queue, task }
        });
        let (answered, answer) = oneshot::channel();
        if reporter
            .queue
            .send(PendingReport { report, answered })
            .is_ok()
        {
            // An error means the reporter dropped it (stopped, or gave up): nothing to wait for.
            let _ = answer.await;
        }
    }

    fn stop_reporting(&self) {
        if let Some(reporter) = self.reporter.get() {
            reporter.task.abort();
        }
    }

    fn registration(&self) -> RegisterAgent {
        let o = &self.options;
        RegisterAgent {
            agent_id: o.agent_id.clone(),
            host: o.host.clone(),
            port: o.port,
            capabilities: o.capabilities.clone(),
            mcp_servers: o.mcp_servers.clone(),
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
                reporter: OnceLock::new(),
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
            // Slots first, then a claim: the agent never holds more tasks than it can run. It
            // waits for one free slot, then takes every other free one, and asks for that many.
            let first: OwnedSemaphorePermit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
                _ = &mut shutdown => break Ok(()),
            };
            let mut permits = vec![first];
            while permits.len() < MAX_CLAIM_BATCH as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let claim = tokio::select! {
                claim = shared.client.claim_many(
                    &shared.options.agent_id,
                    shared.options.claim_wait,
                    permits.len() as u32,
                ) => claim,
                _ = &mut shutdown => break Ok(()),
            };
            match claim {
                Ok(claim) => {
                    backoff.reset();
                    shared.cancel(&claim.cancel);
                    for task in claim.tasks {
                        let Some(permit) = permits.pop() else {
                            // Never from a server that keeps to `max`; its lease will lapse.
                            tracing::error!(task_id = %task.id, "the server sent more tasks than asked for; not running this one");
                            continue;
                        };
                        track(&shared, &task);
                        let shared = shared.clone();
                        tasks.spawn(async move { run_tracked(&shared, task, permit).await });
                    }
                    // Permits left over are dropped here: those slots are free again.
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
        // Every task has had its report answered, or was abandoned at the drain timeout.
        shared.stop_reporting();
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

async fn run_task(shared: &Arc<Shared>, task: Task) {
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
        logs: LogSink(log_tx),
        cancel: cancel.clone(),
        usage: Mutex::new(None),
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
    let usage = ctx.usage.lock().expect("usage lock poisoned").take();
    drop(ctx);
    let _ = flusher.await;
    let outcome = match outcome {
        Err(HandlerError::Cancelled(why)) if shared.draining.load(Ordering::SeqCst) => Err(
            HandlerError::Retryable(format!("agent is shutting down; handed back ({why})")),
        ),
        other => other,
    };
    shared.report(report_of(&task, outcome, usage)).await;
    shared.running().remove(&task.id);
}

/// The report of an attempt's end, with the usage the handler set when it completed. An
/// error text longer than the server takes is cut, so the report is not refused for it.
fn report_of(task: &Task, outcome: Result<Value, HandlerError>, usage: Option<Value>) -> Report {
    match outcome {
        Ok(result) => Report::completed(task.id, task.attempt, result, usage),
        Err(err) => {
            let retryable = matches!(err, HandlerError::Retryable(_));
            let mut error = err.to_string();
            if error.chars().count() > MAX_ERROR_CHARS {
                let cut = error
                    .char_indices()
                    .nth(MAX_ERROR_CHARS - 16)
                    .map_or(error.len(), |(at, _)| at);
                error.truncate(cut);
                error.push_str(" …[cut]");
            }
            Report::failed(task.id, task.attempt, error, retryable)
        }
    }
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

/// The reporter: sends each report as soon as it comes when none is in flight, and together
/// (up to [`MAX_REPORT_BATCH`]) the reports that came while one was. So a report never waits
/// for others to gather, and a burst of endings costs one request and one commit. Ends when
/// the runtime is dropped (its queue closes) or stopped.
async fn report_loop(shared: Weak<Shared>, mut pending: mpsc::UnboundedReceiver<PendingReport>) {
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_REPORT_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        send_reports(&shared, batch).await;
    }
}

/// How a batch of reports went.
enum Sent {
    /// One result per report, in order.
    Answered(Vec<ReportResult>),
    /// The body was over the server's limit: some result is too large.
    TooLarge(ClientError),
    /// Given up on: the leases will lapse and the tasks run again.
    Lost,
}

/// Sends one batch; answers each report's waiting task once the server has judged it. A
/// report the server could not take just now (503 for it alone) is sent again.
async fn send_reports(shared: &Shared, batch: Vec<PendingReport>) {
    let mut reports: Vec<Report> = batch.iter().map(|p| p.report.clone()).collect();
    let mut backoff = Backoff::default();
    while !reports.is_empty() {
        match deliver(shared, &reports).await {
            Sent::Answered(results) => {
                let mut again = Vec::new();
                for (report, result) in reports.into_iter().zip(&results) {
                    if matches!(result.status, 429 | 500 | 503) && backoff.failures < 12 {
                        again.push(report);
                    } else {
                        log_result(&report, result);
                    }
                }
                reports = again;
                if !reports.is_empty() {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
            // One oversize result must not cost the other reports theirs: each goes alone.
            Sent::TooLarge(_) if reports.len() > 1 => {
                for report in reports {
                    send_alone(shared, report).await;
                }
                break;
            }
            Sent::TooLarge(err) => {
                refused_result(shared, &reports[0], &err).await;
                break;
            }
            Sent::Lost => break,
        }
    }
    for pending in batch {
        let _ = pending.answered.send(());
    }
}

async fn send_alone(shared: &Shared, report: Report) {
    match deliver(shared, std::slice::from_ref(&report)).await {
        Sent::Answered(results) => log_result(&report, &results[0]),
        Sent::TooLarge(err) => refused_result(shared, &report, &err).await,
        Sent::Lost => {}
    }
}

/// A result the server will not take ends the attempt as a failure that says so, rather than
/// leaving the task to run again and again.
async fn refused_result(shared: &Shared, report: &Report, err: &ClientError) {
    if report.outcome != ReportOutcome::Completed {
        tracing::error!(task_id = %report.task_id, error = %err, "report refused; the lease will expire and the task run again");
        return;
    }
    let failed = Report::failed(
        report.task_id,
        report.attempt,
        format!("the server refused the handler's result: {err}"),
        false,
    );
    if let Sent::Answered(results) = deliver(shared, std::slice::from_ref(&failed)).await {
        log_result(&failed, &results[0]);
    }
}

/// Sends a batch of reports, retrying while the server is unreachable (the leases keep the
/// tasks ours meanwhile) and registering again if the server forgot this agent.
async fn deliver(shared: &Shared, reports: &[Report]) -> Sent {
    let mut backoff = Backoff::default();
    loop {
        match shared
            .client
            .report_many(&shared.options.agent_id, reports)
            .await
        {
            Ok(results) => return Sent::Answered(results),
            Err(err) if err.is_too_large() => return Sent::TooLarge(err),
            Err(err) if err.is_not_found() && backoff.failures < 12 => {
                tracing::warn!("reports: the server does not know this agent; registering again");
                if let Err(err) = shared.client.register(&shared.registration()).await {
                    tracing::warn!(error = %err, "registering again failed");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(err) if err.is_transient() && backoff.failures < 12 => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, ?wait, reports = reports.len(), "report failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(err) => {
                tracing::error!(error = %err, reports = reports.len(), "reports lost; the leases will expire and the tasks run again");
                return Sent::Lost;
            }
        }
    }
}

fn log_result(report: &Report, result: &ReportResult) {
    let error = result.error.as_deref().unwrap_or("");
    match result.status {
        200 => tracing::info!(task_id = %report.task_id, outcome = %report.outcome, "reported"),
        // A stale attempt: another attempt owns the task now, and the server keeps what it has.
        404 | 409 => {
            tracing::warn!(task_id = %report.task_id, attempt = report.attempt, error, "report refused: the attempt is no longer current")
        }
        status => {
            tracing::error!(task_id = %report.task_id, status, error, "report refused; the lease will expire and the task run again")
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

#[cfg(test)]
mod tests;
