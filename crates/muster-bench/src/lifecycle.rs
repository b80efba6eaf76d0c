//! `muster bench`: N simulated agents long-poll, claim and complete over real HTTP while
//! submitters post M tasks; then, with the agents idle and waiting, single probe tasks measure
//! submit → claim latency. Each task carries its submit time (µs since the run began) in its
//! payload, so latencies need no shared bookkeeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use muster_api::{CompleteTask, RegisterAgent, SubmitTask};
use muster_client::Client;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Mutex, Notify};

use crate::BenchError;
use crate::local::{LocalServer, Usage, this_binary};
use crate::stats::Percentiles;

#[derive(Debug, Clone)]
pub struct Options {
    /// A running server; `None` starts one of its own on a temporary SQLite file.
    pub url: Option<String>,
    pub key: Option<String>,
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
    pub tasks: usize,
    pub agents: usize,
    pub slots_per_agent: u32,
    pub submitters: usize,
    pub seconds: f64,
    pub tasks_per_s: f64,
    pub submit_to_claim: Percentiles,
    pub submit_to_complete: Percentiles,
    /// Submit → claim of single tasks while every agent waits idle.
    pub idle_submit_to_claim: Percentiles,
    pub errors: usize,
    /// Only for a server this run started.
    pub server_usage: Option<ServerUsage>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerUsage {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    /// CPU time over wall time during the load phase (100 = one core).
    pub cpu_percent: f64,
}

#[derive(Default)]
struct Samples {
    claim: Vec<Duration>,
    complete: Vec<Duration>,
    probe_claim: Vec<Duration>,
}

struct Shared {
    client: Client,
    started: Instant,
    completed: AtomicUsize,
    errors: AtomicUsize,
    stop: AtomicBool,
    samples: Mutex<Samples>,
    finished: Notify,
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
        started: Instant::now(),
        completed: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        samples: Mutex::new(Samples::default()),
        finished: Notify::new(),
    });
    let mut agents = Vec::new();
    for a in 0..opts.agents {
        for _ in 0..opts.slots {
            let agent_id = format!("{capability}-{a}");
            agents.push(tokio::spawn(agent_loop(shared.clone(), agent_id)));
        }
    }

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
    let before = local.as_ref().map(LocalServer::usage);
    let load_started = Instant::now();
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..opts.concurrency {
        let (shared, submitted, capability) =
            (shared.clone(), submitted.clone(), capability.clone());
        let total = opts.tasks;
        submitters.push(tokio::spawn(async move {
            while submitted.fetch_add(1, Ordering::Relaxed) < total {
                submit(&shared, &capability, "load").await;
            }
        }));
    }
    loop {
        let done = shared.completed.load(Ordering::Relaxed);
        progress.set_position(done as u64);
        if done >= opts.tasks {
            break;
        }
        tokio::select! {
            _ = shared.finished.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let seconds = load_started.elapsed().as_secs_f64();
    let after = local.as_ref().map(LocalServer::usage);
    progress.finish_and_clear();
    for s in submitters {
        let _ = s.await;
    }

    // Idle latency: one task at a time, every agent already waiting in a long-poll.
    for _ in 0..opts.probes {
        let target = shared.completed.load(Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        submit(&shared, &capability, "probe").await;
        while shared.completed.load(Ordering::SeqCst) < target {
            tokio::select! {
                _ = shared.finished.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for a in agents {
        let _ = a.await;
    }
    for a in 0..opts.agents {
        // Leave the registry as we found it when benchmarking a shared server.
        let _ = shared
            .client
            .remove_agent(&format!("{capability}-{a}"))
            .await;
    }

    let mut samples = shared.samples.lock().await;
    let server_usage = match (before, after, local.as_ref()) {
        (Some(b), Some(a), Some(l)) => Some(server_usage(b, a, l.usage(), seconds)),
        _ => None,
    };
    Ok(Report {
        server: base,
        tasks: opts.tasks,
        agents: opts.agents,
        slots_per_agent: opts.slots,
        submitters: opts.concurrency,
        seconds,
        tasks_per_s: opts.tasks as f64 / seconds,
        submit_to_claim: Percentiles::of(&mut samples.claim),
        submit_to_complete: Percentiles::of(&mut samples.complete),
        idle_submit_to_claim: Percentiles::of(&mut samples.probe_claim),
        errors: shared.errors.load(Ordering::Relaxed),
        server_usage,
    })
}

fn server_usage(before: Usage, after: Usage, end: Usage, seconds: f64) -> ServerUsage {
    let cpu = after.cpu_seconds - before.cpu_seconds;
    ServerUsage {
        rss_mib: end.rss_kib as f64 / 1024.0,
        peak_rss_mib: end.peak_rss_kib as f64 / 1024.0,
        cpu_seconds: cpu,
        cpu_percent: cpu / seconds * 100.0,
    }
}

async fn submit(shared: &Shared, capability: &str, phase: &str) {
    let task = SubmitTask {
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
    };
    if shared.client.submit(&task).await.is_err() {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
}

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
        let submitted_at = task.payload["t"].as_u64().unwrap_or(claimed_at);
        let probe = task.payload["phase"] == "probe";
        let report = CompleteTask {
            attempt: task.attempt,
            result: json!({"ok": true}),
            usage: None,
        };
        let ok = shared.client.complete(task.id, &report).await.is_ok();
        let completed_at = micros_since(shared.started);
        {
            let mut samples = shared.samples.lock().await;
            let claim = Duration::from_micros(claimed_at.saturating_sub(submitted_at));
            if probe {
                samples.probe_claim.push(claim);
            } else {
                samples.claim.push(claim);
                samples.complete.push(Duration::from_micros(
                    completed_at.saturating_sub(submitted_at),
                ));
            }
        }
        if !ok {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        shared.completed.fetch_add(1, Ordering::SeqCst);
        shared.finished.notify_waiters();
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "server            {}", self.server)?;
        writeln!(
            f,
            "load              {} tasks, {} agents × {} slots, {} submitters",
            self.tasks, self.agents, self.slots_per_agent, self.submitters
        )?;
        writeln!(
            f,
            "throughput        {:.0} tasks/s ({:.2} s)",
            self.tasks_per_s, self.seconds
        )?;
        writeln!(f, "submit → claim    {}", self.submit_to_claim)?;
        writeln!(f, "submit → complete {}", self.submit_to_complete)?;
        writeln!(
            f,
            "idle submit→claim {} ({} probes)",
            self.idle_submit_to_claim, self.idle_submit_to_claim.count
        )?;
        writeln!(f, "errors            {}", self.errors)?;
        if let Some(u) = &self.server_usage {
            writeln!(
                f,
                "server            RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} s ({:.0}% of one core)",
                u.rss_mib, u.peak_rss_mib, u.cpu_seconds, u.cpu_percent
            )?;
        }
        Ok(())
    }
}
