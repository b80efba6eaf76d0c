//! The figures of DESIGN.md's table beyond throughput, each measured against a fresh
//! `muster serve` child: time from exec to the first `/health` 200, idle memory, the CPU cost
//! of many heartbeating agents, and claim latency and memory as the queue grows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use muster_api::{Heartbeat, RegisterAgent, SubmitTask};
use muster_client::Client;
use serde::Serialize;
use serde_json::json;

use crate::BenchError;
use crate::local::{LocalServer, usage};
use crate::stats::{Percentiles, median};

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// One GET /health over a fresh connection; true on a 200.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(50)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(setup)?;
    Ok(listener.local_addr().map_err(setup)?.port())
}

#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// Exec to the first `/health` 200 on a fresh database, `runs` times.
pub fn startup(binary: &Path, runs: usize) -> Result<Startup, BenchError> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let dir = tempfile::tempdir().map_err(setup)?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .env("DB_PATH", dir.path().join("start.db"))
            .env("ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(setup)?;
        let elapsed = loop {
            if health_ok(addr) {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(setup("the server did not answer /health within 10 s"));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let _ = child.kill();
        let _ = child.wait();
        times.push(elapsed.as_secs_f64() * 1000.0);
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    Ok(Startup {
        runs,
        median_ms: median(&mut times),
        min_ms: min,
        max_ms: max,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// Resident memory of a server that started, answered one `/health` and idled a while.
pub async fn idle_memory(binary: &Path, idle: Duration) -> Result<IdleMemory, BenchError> {
    let server = LocalServer::start(binary, &[])?;
    Client::new(&server.base, None)?.health().await?;
    tokio::time::sleep(idle).await;
    let u = server.usage();
    Ok(IdleMemory {
        rss_mib: u.rss_kib as f64 / 1024.0,
        peak_rss_mib: u.peak_rss_kib as f64 / 1024.0,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Heartbeats {
    pub agents: usize,
    pub interval_s: f64,
    pub seconds: f64,
    pub heartbeats: usize,
    pub errors: usize,
    /// Server CPU time over wall time (100 = one core).
    pub cpu_percent: f64,
    pub rss_mib: f64,
}

/// `agents` agents, each heartbeating every `interval`, spread evenly, for `duration`.
pub async fn heartbeats(
    binary: &Path,
    agents: usize,
    interval: Duration,
    duration: Duration,
) -> Result<Heartbeats, BenchError> {
    let server = LocalServer::start(binary, &[("HEARTBEAT_TIMEOUT", "10m")])?;
    let client = Client::new(&server.base, None)?;
    let registered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..32 {
        let (client, registered) = (client.clone(), registered.clone());
        workers.push(tokio::spawn(async move {
            let mut a = w;
            while a < agents {
                let reg = RegisterAgent {
                    agent_id: format!("hb-{a}"),
                    host: "10.0.0.1".into(),
                    port: Some(9000),
                    capabilities: vec!["shell".into()],
                    mcp_servers: vec![],
                    max_concurrency: Some(1),
                    labels: Default::default(),
                    version: None,
                    instance_id: None,
                    kinds: Vec::new(),
                };
                if client.register(&reg).await.is_ok() {
                    registered.fetch_add(1, Ordering::Relaxed);
                }
                a += 32;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    // The beats, paced: one every interval/agents, handed to a pool of senders.
    let (tx, rx) = tokio::sync::mpsc::channel::<usize>(4096);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let sent = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..64 {
        let (client, rx, sent, errors) = (client.clone(), rx.clone(), sent.clone(), errors.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(a) = next else { return };
                let beat = Heartbeat {
                    cpu_percent: 12.5,
                    memory_percent: 40.0,
                    active_tasks: 0,
                    running: Some(vec![]),
                };
                match client.heartbeat(&format!("hb-{a}"), &beat).await {
                    Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let before = server.usage();
    let started = Instant::now();
    let gap = interval.div_f64(agents.max(1) as f64);
    let mut ticker = tokio::time::interval(gap.max(Duration::from_micros(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut a = 0usize;
    while started.elapsed() < duration {
        ticker.tick().await;
        let _ = tx.send(a % agents.max(1)).await;
        a += 1;
    }
    drop(tx);
    for s in senders {
        let _ = s.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = server.usage();
    Ok(Heartbeats {
        agents: registered.load(Ordering::Relaxed),
        interval_s: interval.as_secs_f64(),
        seconds,
        heartbeats: sent.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        cpu_percent: (after.cpu_seconds - before.cpu_seconds) / seconds * 100.0,
        rss_mib: after.rss_kib as f64 / 1024.0,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueLevel {
    pub queued: usize,
    pub submit_to_claim: Percentiles,
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub levels: Vec<QueueLevel>,
    pub fill_tasks_per_s: f64,
}

/// Fills the queue with tasks no agent can take, and at each level measures submit → claim of
/// probe tasks for a waiting agent, and the server's memory. With `distinct`, every queued task
/// needs a capability set of its own.
pub async fn queue_depth(
    binary: &Path,
    levels: &[usize],
    probes: usize,
    distinct: bool,
) -> Result<QueueDepth, BenchError> {
    let server = LocalServer::start(binary, &[])?;
    let client = Client::new(&server.base, None)?;
    client
        .register(&RegisterAgent {
            agent_id: "probe".into(),
            host: "127.0.0.1".into(),
            port: None,
            capabilities: vec!["probe".into()],
            mcp_servers: vec![],
            max_concurrency: Some(1),
            labels: Default::default(),
            version: None,
            instance_id: None,
            kinds: Vec::new(),
        })
        .await?;
    let mut queued = 0usize;
    let mut out = Vec::new();
    let mut fill_time = Duration::ZERO;
    for &level in levels {
        let started = Instant::now();
        fill(&client, queued, level.saturating_sub(queued), distinct).await;
        fill_time += started.elapsed();
        queued = level.max(queued);
        let mut samples = Vec::with_capacity(probes);
        for _ in 0..probes {
            samples.push(probe(&client).await?);
        }
        let u = usage(server.pid()).unwrap_or_default();
        out.push(QueueLevel {
            queued,
            submit_to_claim: Percentiles::of(&mut samples),
            rss_mib: u.rss_kib as f64 / 1024.0,
        });
    }
    Ok(QueueDepth {
        levels: out,
        fill_tasks_per_s: queued as f64 / fill_time.as_secs_f64().max(1e-9),
    })
}

async fn fill(client: &Client, first: usize, count: usize, distinct: bool) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let capability = if distinct {
                    format!("nobody-{}", first + n)
                } else {
                    "nobody".to_owned()
                };
                let task = SubmitTask {
                    kind: "backlog".into(),
                    payload: json!({"n": 1}),
                    capabilities: vec![capability],
                    priority: 0,
                    max_retries: None,
                    timeout_s: None,
                    lock_key: None,
                    idempotency_key: None,
                    run_after: None,
                    labels: Default::default(),
                };
                let _ = client.submit(&task).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Submits one probe while the agent waits, claims and completes it; submit → claim time.
async fn probe(client: &Client) -> Result<Duration, BenchError> {
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.next_task("probe", Duration::from_secs(10)).await })
    };
    // Let the long-poll reach the server before the submit.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let task = SubmitTask {
        kind: "probe".into(),
        payload: json!({}),
        capabilities: vec!["probe".into()],
        priority: 0,
        max_retries: Some(0),
        timeout_s: None,
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Default::default(),
    };
    client.submit(&task).await?;
    let claim = waiting.await.map_err(setup)??;
    let elapsed = started.elapsed();
    let task = claim
        .task
        .ok_or_else(|| setup("the probe was not claimed within 10 s"))?;
    let report = muster_api::CompleteTask {
        attempt: task.attempt,
        result: json!({}),
        usage: None,
    };
    client.complete(task.id, &report).await?;
    Ok(elapsed)
}
