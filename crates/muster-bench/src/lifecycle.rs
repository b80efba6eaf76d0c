//! `muster bench`: N simulated agents long-poll, claim and complete over real HTTP while
//! submitters post M tasks; then, with the agents idle and waiting, single probe tasks measure
//! submit → claim latency. Each task carries its submit time (µs since the run began) in its
//! payload, so latencies need no shared bookkeeping.
//!
//! Three modes: [`Mode::Default`] (one submit call per task; agents claim up to their slots
//! per call and report in batches when the server has the batch routes),
//! [`Mode::PeerStyle`] (the peer queues' method, one call per task for everything) and
//! [`Mode::Batch`] (bulk submit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use muster_api::{CompleteTask, RegisterAgent, SubmitTask};
use muster_client::Client;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};

use crate::BenchError;
use crate::local::{IoCounters, LocalServer, Usage, this_binary};
use crate::routes::{Answer, BatchRoutes, Completion};
use crate::stats::Percentiles;
use crate::wal::{WalSampler, WalStats};

/// How submitters and agents talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One submit call per task; agents use the batch claim and reports routes when the
    /// server has them, else one task per call.
    Default,
    /// Exactly the peer queues' measurement: one submit call per task, agents claim and
    /// report one task per call, 200 warm-up tasks before the clock, probes 20 ms apart.
    PeerStyle,
    /// Submitters send `batch_size` tasks per call to the bulk submit route.
    Batch,
}

impl Mode {
    /// Tasks pushed through before the clock starts, as the peers do.
    pub fn warmup(self) -> usize {
        match self {
            Mode::PeerStyle => 200,
            Mode::Default | Mode::Batch => 0,
        }
    }

    /// The pause before each idle probe: the peers' 20 ms, else the 2 ms this bench always used.
    fn probe_gap(self) -> Duration {
        match self {
            Mode::PeerStyle => Duration::from_millis(20),
            Mode::Default | Mode::Batch => Duration::from_millis(2),
        }
    }
}

/// The routes the agents used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentRoutes {
    /// `GET …/tasks/next` and `POST /api/v1/tasks/{id}/complete`, one task per call.
    Single,
    /// `GET …/tasks/claim?max=` and `POST …/reports`, up to `slots` tasks per call.
    Batch,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// A running server; `None` starts one of its own on a temporary SQLite file.
    pub url: Option<String>,
    pub key: Option<String>,
    pub mode: Mode,
    /// Tasks per bulk submit call ([`Mode::Batch`]).
    pub batch_size: usize,
    pub agents: usize,
    /// Concurrent claim loops (and `max_concurrency`) per agent.
    pub slots: u32,
    pub tasks: usize,
    /// Concurrent submitters.
    pub concurrency: usize,
    /// Sequential probe tasks measured with idle agents waiting.
    pub probes: usize,
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: None,
            key: None,
            mode: Mode::Default,
            batch_size: 100,
            agents: 8,
            slots: 4,
            tasks: 20_000,
            concurrency: 16,
            probes: 200,
            progress: true,
        }
    }
}

/// What `muster bench` prints (or emits as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: String,
    pub mode: Mode,
    pub agent_routes: AgentRoutes,
    /// Tasks per bulk submit call; only in [`Mode::Batch`].
    pub batch_size: Option<usize>,
    /// Tasks run before the clock started.
    pub warmup: usize,
    pub tasks: usize,
    pub agents: usize,
    pub slots_per_agent: u32,
    pub submitters: usize,
    /// Load start to the last completion.
    pub seconds: f64,
    /// Tasks completed per second, end to end.
    pub tasks_per_s: f64,
    /// Load start until every submitter had its last answer.
    pub submit_seconds: f64,
    /// Tasks the server accepted per second of the submit phase (the peers' `enqueue_per_s`).
    pub submit_per_s: f64,
    pub submit_to_claim: Percentiles,
    pub submit_to_complete: Percentiles,
    /// Submit → claim of single tasks while every agent waits idle.
    pub idle_submit_to_claim: Percentiles,
    pub errors: usize,
    /// Only for a server this run started.
    pub server_usage: Option<ServerUsage>,
}

/// The server's costs over the load phase (warm-up and probes excluded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerUsage {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    /// CPU time over wall time during the load phase (100 = one core).
    pub cpu_percent: f64,
    /// Server CPU time (user + system) per task, in µs.
    pub cpu_us_per_task: f64,
    /// `write_bytes` of /proc/PID/io: bytes sent towards the disk (pages dirtied).
    pub disk_write_bytes: Option<u64>,
    pub disk_write_bytes_per_task: Option<f64>,
    /// `wchar` of /proc/PID/io: bytes passed to write() and its kin, on files, pipes (the
    /// log) and sockets written with write/writev alike.
    pub write_call_bytes: Option<u64>,
    pub write_call_bytes_per_task: Option<f64>,
    /// SQLite's commits and WAL frames, read from the WAL index.
    pub wal: Option<WalStats>,
    pub tasks_per_commit: Option<f64>,
}

#[derive(Default)]
struct Samples {
    claim: Vec<Duration>,
    complete: Vec<Duration>,
    probe_claim: Vec<Duration>,
}

struct Shared {
    client: Client,
    routes: BatchRoutes,
    started: Instant,
    completed: AtomicUsize,
    /// When the latest completion was reported, µs since `started`: the load's end, exact
    /// however late the bench's own loop notices it.
    last_completion: AtomicU64,
    /// Tasks the server accepted, over every phase.
    accepted: AtomicUsize,
    errors: AtomicUsize,
    stop: AtomicBool,
    /// Why the run must stop early (a server without a route the mode needs).
    abort: std::sync::Mutex<Option<String>>,
    samples: Mutex<Samples>,
    finished: Notify,
}

impl Shared {
    fn abort(&self, why: String) {
        self.abort.lock().expect("abort lock").get_or_insert(why);
        self.finished.notify_waiters();
    }

    /// Counts tasks whose report came back.
    fn done(&self, tasks: usize) {
        self.last_completion
            .fetch_max(micros_since(self.started), Ordering::SeqCst);
        self.completed.fetch_add(tasks, Ordering::SeqCst);
        self.finished.notify_waiters();
    }

    fn aborted(&self) -> Option<String> {
        self.abort.lock().expect("abort lock").clone()
    }
}

fn micros_since(started: Instant) -> u64 {
    started.elapsed().as_micros() as u64
}

pub async fn run(opts: Options) -> Result<Report, BenchError> {
    let local = match &opts.url {
        Some(_) => None,
        None => Some(LocalServer::start(&this_binary()?, &[])?),
    };
    let base = opts
        .url
        .clone()
        .or_else(|| local.as_ref().map(|l| l.base.clone()))
        .expect("a server");
    let client = Client::new(&base, opts.key.clone())?;
    client.health().await?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let capability = format!("bench-{}", &run_id[20..]);
    for a in 0..opts.agents {
        client
            .register(&RegisterAgent {
                agent_id: format!("{capability}-{a}"),
                host: "127.0.0.1".into(),
                port: None,
                capabilities: vec![capability.clone()],
                mcp_servers: vec![],
                max_concurrency: Some(opts.slots),
                labels: Default::default(),
                version: None,
                instance_id: None,
                kinds: Vec::new(),
            })
            .await?;
    }
    let shared = Arc::new(Shared {
        client,
        routes: BatchRoutes::new(&base, opts.key.clone())?,
        started: Instant::now(),
        completed: AtomicUsize::new(0),
        last_completion: AtomicU64::new(0),
        accepted: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        abort: std::sync::Mutex::new(None),
        samples: Mutex::new(Samples::default()),
        finished: Notify::new(),
    });
    let agent_routes = match opts.mode {
        Mode::PeerStyle => Ok(AgentRoutes::Single),
        Mode::Default | Mode::Batch => batch_claims_answer(&shared, &capability).await,
    };
    let agent_routes = match agent_routes {
        Ok(routes) => routes,
        Err(e) => {
            remove_agents(&shared, &capability, opts.agents).await;
            return Err(e);
        }
    };
    let mut agents = Vec::new();
    for a in 0..opts.agents {
        let agent_id = format!("{capability}-{a}");
        match agent_routes {
            AgentRoutes::Single => {
                for _ in 0..opts.slots {
                    agents.push(tokio::spawn(agent_loop(shared.clone(), agent_id.clone())));
                }
            }
            // One loop per agent: it claims as many tasks as it has free slots (the route
            // takes at most 100 per call).
            AgentRoutes::Batch => {
                agents.push(tokio::spawn(batch_agent_loop(
                    shared.clone(),
                    agent_id,
                    opts.slots.clamp(1, 100),
                )));
            }
        }
    }

    let result = drive(&opts, &shared, local.as_ref(), &capability, agent_routes).await;
    shared.stop.store(true, Ordering::SeqCst);
    for a in agents {
        let _ = a.await;
    }
    remove_agents(&shared, &capability, opts.agents).await;
    result
}

/// Leaves the registry as we found it when benchmarking a shared server.
async fn remove_agents(shared: &Shared, capability: &str, agents: usize) {
    for a in 0..agents {
        let _ = shared
            .client
            .remove_agent(&format!("{capability}-{a}"))
            .await;
    }
}

/// Whether the server has the batch claim route: one claim that takes nothing (`wait=0`).
/// A 404 means it has not, and every agent uses the single-task routes from then on.
async fn batch_claims_answer(shared: &Shared, capability: &str) -> Result<AgentRoutes, BenchError> {
    let agent = format!("{capability}-0");
    match shared.routes.claim(&agent, Duration::ZERO, 1).await {
        Ok(Answer::NoRoute(_)) => Ok(AgentRoutes::Single),
        Ok(Answer::Done(tasks)) if tasks.is_empty() => Ok(AgentRoutes::Batch),
        Ok(Answer::Done(_)) => Err(BenchError::Setup(
            "the batch claim route handed out a task before any was submitted".into(),
        )),
        Err(e) => Err(BenchError::Setup(format!(
            "the batch claim route (GET /api/v1/agents/{{id}}/tasks/claim) answered {e}"
        ))),
    }
}

/// Warm-up, the timed load, then the idle probes.
async fn drive(
    opts: &Options,
    shared: &Arc<Shared>,
    local: Option<&LocalServer>,
    capability: &str,
    agent_routes: AgentRoutes,
) -> Result<Report, BenchError> {
    let warmup = opts.mode.warmup();
    for _ in 0..warmup {
        submit(shared, capability, "warmup").await;
    }
    let warm = shared.accepted.load(Ordering::SeqCst);
    wait_until(shared, || shared.completed.load(Ordering::SeqCst) >= warm).await;
    if let Some(why) = shared.aborted() {
        return Err(BenchError::Setup(why));
    }
    let base_completed = shared.completed.load(Ordering::SeqCst);
    let base_accepted = shared.accepted.load(Ordering::SeqCst);

    let progress = if opts.progress {
        let bar = ProgressBar::new(opts.tasks as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}")
                .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let wal = local.map(|l| WalSampler::start(&l.db_path()));
    let before = local.map(LocalServer::usage);
    let load_started = Instant::now();
    let load_started_us = micros_since(shared.started);
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..opts.concurrency {
        let (shared, next, capability) = (shared.clone(), next.clone(), capability.to_owned());
        let (total, mode, batch_size) = (opts.tasks, opts.mode, opts.batch_size.max(1));
        submitters.push(tokio::spawn(async move {
            match mode {
                Mode::Batch => loop {
                    let first = next.fetch_add(batch_size, Ordering::Relaxed);
                    if first >= total || shared.aborted().is_some() {
                        break;
                    }
                    submit_batch(&shared, &capability, batch_size.min(total - first)).await;
                },
                Mode::Default | Mode::PeerStyle => {
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        submit(&shared, &capability, "load").await;
                    }
                }
            }
            Instant::now()
        }));
    }
    // Done when every accepted task completed: all of them, or fewer once the submitters
    // have finished with some refused (the refusals count as errors).
    wait_until(shared, || {
        let done = shared.completed.load(Ordering::SeqCst) - base_completed;
        progress.set_position(done as u64);
        let submitting = submitters.iter().any(|s| !s.is_finished());
        let accepted = shared.accepted.load(Ordering::SeqCst) - base_accepted;
        done >= opts.tasks || (!submitting && done >= accepted)
    })
    .await;
    let last = shared.last_completion.load(Ordering::SeqCst);
    let seconds = if last > load_started_us {
        (last - load_started_us) as f64 / 1e6
    } else {
        load_started.elapsed().as_secs_f64()
    };
    let after = local.map(LocalServer::usage);
    let wal = wal.and_then(WalSampler::finish);
    progress.finish_and_clear();
    let mut submit_done = load_started;
    for s in submitters {
        if let Ok(at) = s.await {
            submit_done = submit_done.max(at);
        }
    }
    if let Some(why) = shared.aborted() {
        return Err(BenchError::Setup(why));
    }
    let completed = shared.completed.load(Ordering::SeqCst) - base_completed;
    let accepted = shared.accepted.load(Ordering::SeqCst) - base_accepted;
    let submit_seconds = (submit_done - load_started).as_secs_f64();

    // Idle latency: one task at a time, every agent already waiting in a long-poll.
    for _ in 0..opts.probes {
        tokio::time::sleep(opts.mode.probe_gap()).await;
        submit(shared, capability, "probe").await;
        let target = shared.accepted.load(Ordering::SeqCst);
        wait_until(shared, || shared.completed.load(Ordering::SeqCst) >= target).await;
    }

    let mut samples = shared.samples.lock().await;
    let server_usage = match (before, after, local) {
        (Some(b), Some(a), Some(l)) => Some(server_usage(b, a, l.usage(), seconds, completed, wal)),
        _ => None,
    };
    Ok(Report {
        server: shared.client.base_url().to_owned(),
        mode: opts.mode,
        agent_routes,
        batch_size: (opts.mode == Mode::Batch).then_some(opts.batch_size.max(1)),
        warmup,
        tasks: opts.tasks,
        agents: opts.agents,
        slots_per_agent: opts.slots,
        submitters: opts.concurrency,
        seconds,
        tasks_per_s: completed as f64 / seconds,
        submit_seconds,
        submit_per_s: accepted as f64 / submit_seconds.max(1e-9),
        submit_to_claim: Percentiles::of(&mut samples.claim),
        submit_to_complete: Percentiles::of(&mut samples.complete),
        idle_submit_to_claim: Percentiles::of(&mut samples.probe_claim),
        errors: shared.errors.load(Ordering::Relaxed),
        server_usage,
    })
}

/// Waits until `done` holds (or the run was aborted), woken by each completion.
async fn wait_until(shared: &Shared, mut done: impl FnMut() -> bool) {
    loop {
        // Registered before the check, so a completion between the two is not missed.
        let notified = shared.finished.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() || shared.aborted().is_some() {
            return;
        }
        tokio::select! {
            _ = notified => {}
            // Submitters finishing wake nobody; look again now and then.
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

fn server_usage(
    before: Usage,
    after: Usage,
    end: Usage,
    seconds: f64,
    tasks: usize,
    wal: Option<WalStats>,
) -> ServerUsage {
    let cpu = after.cpu_seconds - before.cpu_seconds;
    let per_task = |v: u64| v as f64 / tasks.max(1) as f64;
    let io = match (before.io, after.io) {
        (Some(b), Some(a)) => Some(IoCounters {
            write_bytes: a.write_bytes.saturating_sub(b.write_bytes),
            wchar: a.wchar.saturating_sub(b.wchar),
        }),
        _ => None,
    };
    ServerUsage {
        rss_mib: end.rss_kib as f64 / 1024.0,
        peak_rss_mib: end.peak_rss_kib as f64 / 1024.0,
        cpu_seconds: cpu,
        cpu_percent: cpu / seconds * 100.0,
        cpu_us_per_task: cpu * 1e6 / tasks.max(1) as f64,
        disk_write_bytes: io.map(|io| io.write_bytes),
        disk_write_bytes_per_task: io.map(|io| per_task(io.write_bytes)),
        write_call_bytes: io.map(|io| io.wchar),
        write_call_bytes_per_task: io.map(|io| per_task(io.wchar)),
        tasks_per_commit: wal
            .filter(|w| w.commits > 0)
            .map(|w| tasks as f64 / w.commits as f64),
        wal,
    }
}

fn bench_task(shared: &Shared, capability: &str, phase: &str) -> SubmitTask {
    SubmitTask {
        kind: "bench".into(),
        payload: json!({"t": micros_since(shared.started), "phase": phase}),
        capabilities: vec![capability.to_owned()],
        priority: 0,
        max_retries: Some(0),
        timeout_s: None,
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Default::default(),
    }
}

async fn submit(shared: &Shared, capability: &str, phase: &str) {
    match shared
        .client
        .submit(&bench_task(shared, capability, phase))
        .await
    {
        Ok(_) => {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
        }
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn submit_batch(shared: &Shared, capability: &str, count: usize) {
    let tasks: Vec<SubmitTask> = (0..count)
        .map(|_| bench_task(shared, capability, "load"))
        .collect();
    match shared.routes.submit(&tasks).await {
        Ok(Answer::Done(accepted)) => {
            shared.accepted.fetch_add(accepted, Ordering::SeqCst);
            shared.errors.fetch_add(count - accepted, Ordering::Relaxed);
        }
        Ok(Answer::NoRoute(status)) => shared.abort(format!(
            "the server at {} has no bulk submit: POST /api/v1/tasks/batch answered {status}",
            shared.client.base_url()
        )),
        Err(_) => {
            shared.errors.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// Records a claimed task's latencies (warm-up tasks are not measured).
async fn record(shared: &Shared, payload: &Value, claimed_at: u64, completed_at: u64) {
    let submitted_at = payload["t"].as_u64().unwrap_or(claimed_at);
    let claim = Duration::from_micros(claimed_at.saturating_sub(submitted_at));
    let mut samples = shared.samples.lock().await;
    match payload["phase"].as_str() {
        Some("probe") => samples.probe_claim.push(claim),
        Some("warmup") => {}
        _ => {
            samples.claim.push(claim);
            samples.complete.push(Duration::from_micros(
                completed_at.saturating_sub(submitted_at),
            ));
        }
    }
}

/// One slot of an agent: claims one task per call and completes it with another.
async fn agent_loop(shared: Arc<Shared>, agent_id: String) {
    while !shared.stop.load(Ordering::SeqCst) {
        let claim = match shared
            .client
            .next_task(&agent_id, Duration::from_secs(1))
            .await
        {
            Ok(claim) => claim,
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(task) = claim.task else { continue };
        let claimed_at = micros_since(shared.started);
        let report = CompleteTask {
            attempt: task.attempt,
            result: json!({"ok": true}),
            usage: None,
        };
        let ok = shared.client.complete(task.id, &report).await.is_ok();
        record(
            &shared,
            &task.payload,
            claimed_at,
            micros_since(shared.started),
        )
        .await;
        if !ok {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        shared.done(1);
    }
}

/// A whole agent on the batch routes: claims up to `max` tasks per call and reports them all
/// in one call.
async fn batch_agent_loop(shared: Arc<Shared>, agent_id: String, max: u32) {
    while !shared.stop.load(Ordering::SeqCst) {
        let tasks = match shared
            .routes
            .claim(&agent_id, Duration::from_secs(1), max)
            .await
        {
            Ok(Answer::Done(tasks)) => tasks,
            Ok(Answer::NoRoute(_)) | Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tasks.is_empty() {
            continue;
        }
        let claimed_at = micros_since(shared.started);
        let reports: Vec<Completion> = tasks
            .iter()
            .map(|t| Completion {
                task_id: t.id,
                attempt: t.attempt,
                outcome: "completed",
                result: json!({"ok": true}),
            })
            .collect();
        let taken = match shared.routes.report(&agent_id, &reports).await {
            Ok(Answer::Done(taken)) => taken,
            Ok(Answer::NoRoute(_)) | Err(_) => 0,
        };
        let completed_at = micros_since(shared.started);
        for t in &tasks {
            record(&shared, &t.payload, claimed_at, completed_at).await;
        }
        shared
            .errors
            .fetch_add(tasks.len() - taken, Ordering::Relaxed);
        shared.done(tasks.len());
    }
}

impl Mode {
    fn describe(self, routes: AgentRoutes, batch_size: Option<usize>, slots: u32) -> String {
        let submits = match (self, batch_size) {
            (Mode::Batch, Some(n)) => format!("bulk submits of {n} tasks"),
            _ => "one submit call per task".to_owned(),
        };
        let agents = match routes {
            AgentRoutes::Single => "agents claim and report one task per call".to_owned(),
            AgentRoutes::Batch => {
                format!("agents claim up to {slots} tasks per call and report them in one")
            }
        };
        let name = match self {
            Mode::Default => "default",
            Mode::PeerStyle => "peer-style",
            Mode::Batch => "batch",
        };
        let extra = match self {
            Mode::PeerStyle => "; 200 warm-up tasks, probes 20 ms apart",
            Mode::Default if routes == AgentRoutes::Single => {
                " (the server has no batch claim route)"
            }
            _ => "",
        };
        format!("{name}: {submits}, {agents}{extra}")
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode              {}",
            self.mode
                .describe(self.agent_routes, self.batch_size, self.slots_per_agent)
        )?;
        writeln!(f, "server            {}", self.server)?;
        writeln!(
            f,
            "load              {} tasks, {} agents × {} slots, {} submitters",
            self.tasks, self.agents, self.slots_per_agent, self.submitters
        )?;
        writeln!(
            f,
            "throughput        {:.0} tasks/s end to end ({:.2} s)",
            self.tasks_per_s, self.seconds
        )?;
        writeln!(
            f,
            "submit phase      {:.0} tasks/s accepted ({:.2} s)",
            self.submit_per_s, self.submit_seconds
        )?;
        writeln!(f, "submit → claim    {}", self.submit_to_claim)?;
        writeln!(f, "submit → complete {}", self.submit_to_complete)?;
        writeln!(
            f,
            "idle submit→claim {} ({} probes)",
            self.idle_submit_to_claim, self.idle_submit_to_claim.count
        )?;
        writeln!(f, "errors            {}", self.errors)?;
        let Some(u) = &self.server_usage else {
            return writeln!(
                f,
                "server costs      not available: the server is not one this run started \
                 (--url), so its /proc and database cannot be read"
            );
        };
        writeln!(
            f,
            "server            RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} s ({:.0}% of one core)",
            u.rss_mib, u.peak_rss_mib, u.cpu_seconds, u.cpu_percent
        )?;
        write!(
            f,
            "per task          server CPU {:.0} µs",
            u.cpu_us_per_task
        )?;
        match (u.disk_write_bytes_per_task, u.write_call_bytes_per_task) {
            (Some(disk), Some(calls)) => writeln!(
                f,
                ", {disk:.0} B written to disk, {calls:.0} B passed to write()"
            )?,
            _ => writeln!(f, "; disk writes not available (/proc/PID/io unreadable)")?,
        }
        match (&u.wal, u.tasks_per_commit) {
            (Some(w), Some(per_commit)) => writeln!(
                f,
                "SQLite            {} commits ({per_commit:.1} tasks each), {:.1} WAL frames of \
                 {} B per commit ({:.0}% of commits sampled), {} WAL restarts",
                w.commits,
                w.frames_per_commit,
                w.page_size,
                w.sampled_commit_share * 100.0,
                w.restarts
            )?,
            _ => writeln!(
                f,
                "SQLite            WAL index not readable: no commit figures"
            )?,
        }
        Ok(())
    }
}
