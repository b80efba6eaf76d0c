//! The agent runtime against a real control plane on 127.0.0.1:0: tasks run through their
//! handlers with logs and results, concurrency stays bounded, a cancel reaches the handler, a
//! forgotten agent registers again, and a drain finishes running work without claiming more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use muster_api::{LogStream, SubmitTask, Task, TaskState};
use muster_client::{AgentOptions, AgentRuntime, Client, Handler, HandlerError, TaskContext};
use muster_server::{Server, Settings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Plane {
    client: Client,
    base: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn plane() -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::new(dir.path().join("muster.db"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::build(settings, listener).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new(&base, None).unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(server.run(async move { signal.cancelled().await }));
    Plane {
        client,
        base,
        stop,
        _dir: dir,
    }
}

fn options(id: &str, max_concurrency: u32) -> AgentOptions {
    let mut o = AgentOptions::new(id);
    o.capabilities = vec!["test".into()];
    o.max_concurrency = max_concurrency;
    o.heartbeat_interval = Duration::from_millis(200);
    o.claim_wait = Duration::from_secs(1);
    o.cancel_grace = Duration::from_secs(5);
    o
}

async fn submit(client: &Client, kind: &str, payload: Value) -> Task {
    let task = SubmitTask {
        kind: kind.into(),
        payload,
        capabilities: vec!["test".into()],
        priority: 0,
        max_retries: Some(0),
        timeout_s: None,
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Default::default(),
    };
    client.submit(&task).await.unwrap().0
}

async fn wait_for(client: &Client, task: &Task, state: TaskState) -> Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = client.task(task.id).await.unwrap();
        if t.state == state {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {state}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn spawn(runtime: AgentRuntime) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let handle = tokio::spawn(async move {
        runtime
            .run(async move { signal.cancelled().await })
            .await
            .unwrap();
    });
    (stop, handle)
}

/// Echoes the payload after logging two lines.
struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        ctx.log(LogStream::Stdout, "first");
        ctx.log(LogStream::Stderr, "second");
        Ok(json!({"echo": ctx.task().payload}))
    }
}

/// Waits until cancelled or released, counting how many run at once.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<tokio::sync::Notify>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Gate {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        let outcome = tokio::select! {
            _ = self.open.notified() => Ok(json!("released")),
            _ = ctx.cancellation().cancelled() => Err(HandlerError::Cancelled("stopped".into())),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

#[tokio::test]
async fn tasks_run_through_their_handler_with_logs_and_results() {
    let p = plane().await;
    let (stop, agent) =
        spawn(AgentRuntime::new(p.client.clone(), options("echo", 1)).handle("echo", Echo));
    let task = submit(&p.client, "echo", json!({"n": 7})).await;
    let done = wait_for(&p.client, &task, TaskState::Completed).await;
    assert_eq!(done.result, Some(json!({"echo": {"n": 7}})));
    let lines = p.client.logs(task.id, 0, 10).await.unwrap().lines;
    let texts: Vec<_> = lines.iter().map(|l| (l.stream, l.text.as_str())).collect();
    assert_eq!(
        texts,
        [(LogStream::Stdout, "first"), (LogStream::Stderr, "second")]
    );
    // A kind it has no handler for is never routed to it: it registered the kinds it handles.
    let odd = submit(&p.client, "unknown-kind", json!({})).await;
    let after = submit(&p.client, "echo", json!({"n": 8})).await;
    wait_for(&p.client, &after, TaskState::Completed).await;
    let odd = p.client.task(odd.id).await.unwrap();
    assert_eq!(odd.state, TaskState::Queued, "{odd:?}");
    let me = p.client.agent("echo").await.unwrap();
    assert_eq!(me.kinds, ["echo"]);
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn concurrency_stays_within_max_concurrency() {
    let p = plane().await;
    let gate = Gate::default();
    let (stop, agent) = spawn(
        AgentRuntime::new(p.client.clone(), options("bounded", 2)).handle("gate", gate.clone()),
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(submit(&p.client, "gate", json!({})).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate.running.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give it every chance to over-claim before releasing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let before = gate.started.load(Ordering::SeqCst);
        gate.open.notify_waiters();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gate.started.load(Ordering::SeqCst) == before && before < 5 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in &tasks {
        while p.client.task(t.id).await.unwrap().state != TaskState::Completed {
            gate.open.notify_waiters();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(gate.peak.load(Ordering::SeqCst), 2);
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_cancel_reaches_the_running_handler() {
    let p = plane().await;
    let gate = Gate::default();
    let (stop, agent) = spawn(
        AgentRuntime::new(p.client.clone(), options("cancel", 1)).handle("gate", gate.clone()),
    );
    let task = submit(&p.client, "gate", json!({})).await;
    wait_for(&p.client, &task, TaskState::Running).await;
    p.client.cancel(task.id).await.unwrap();
    let done = wait_for(&p.client, &task, TaskState::Cancelled).await;
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(gate.running.load(Ordering::SeqCst), 0);
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_removed_agent_registers_again_and_keeps_working() {
    let p = plane().await;
    let (stop, agent) =
        spawn(AgentRuntime::new(p.client.clone(), options("phoenix", 1)).handle("echo", Echo));
    let first = submit(&p.client, "echo", json!(1)).await;
    wait_for(&p.client, &first, TaskState::Completed).await;
    p.client.remove_agent("phoenix").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.client.agent("phoenix").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never registered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = submit(&p.client, "echo", json!(2)).await;
    wait_for(&p.client, &second, TaskState::Completed).await;
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_drain_finishes_running_work_and_claims_nothing_new() {
    let p = plane().await;
    let gate = Gate::default();
    let (stop, agent) = spawn(
        AgentRuntime::new(p.client.clone(), options("drainer", 1)).handle("gate", gate.clone()),
    );
    let running = submit(&p.client, "gate", json!({})).await;
    wait_for(&p.client, &running, TaskState::Running).await;
    stop.cancel();
    let waiting = submit(&p.client, "gate", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open.notify_waiters();
    agent.await.unwrap();
    wait_for(&p.client, &running, TaskState::Completed).await;
    let waiting = p.client.task(waiting.id).await.unwrap();
    assert!(
        matches!(waiting.state, TaskState::Queued | TaskState::Assigned),
        "{waiting:?}"
    );
    assert_eq!(gate.started.load(Ordering::SeqCst), 1);
}

/// Requests the server answered on `route`, by its request metrics.
async fn requests_on(p: &Plane, method: &str, route: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", p.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = format!("method=\"{method}\",route=\"{route}\"");
    text.lines()
        .filter(|l| l.starts_with("muster_http_request_seconds_count{") && l.contains(&labels))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Fails with a retryable error.
struct Flaky;

#[async_trait]
impl Handler for Flaky {
    async fn run(&self, _ctx: &TaskContext) -> Result<Value, HandlerError> {
        Err(HandlerError::Retryable("not today".into()))
    }
}

#[tokio::test]
async fn the_runtime_claims_and_reports_through_the_batch_routes() {
    let p = plane().await;
    let (stop, agent) = spawn(
        AgentRuntime::new(p.client.clone(), options("batcher", 4))
            .handle("echo", Echo)
            .handle("flaky", Flaky),
    );
    let mut tasks = Vec::new();
    for n in 0..6 {
        tasks.push(submit(&p.client, "echo", json!({"n": n})).await);
    }
    let flaky = submit(&p.client, "flaky", json!({})).await;
    for t in &tasks {
        wait_for(&p.client, t, TaskState::Completed).await;
    }
    let failed = wait_for(&p.client, &flaky, TaskState::Failed).await;
    assert_eq!(failed.error.as_deref(), Some("not today"));
    stop.cancel();
    agent.await.unwrap();

    let claims = "/api/v1/agents/{id}/tasks/claim";
    let reports = "/api/v1/agents/{id}/reports";
    assert!(requests_on(&p, "GET", claims).await > 0, "batch claims");
    assert!(requests_on(&p, "POST", reports).await > 0, "batch reports");
    for (method, route) in [
        ("GET", "/api/v1/agents/{id}/tasks/next"),
        ("POST", "/api/v1/tasks/{id}/complete"),
        ("POST", "/api/v1/tasks/{id}/fail"),
    ] {
        assert_eq!(
            requests_on(&p, method, route).await,
            0,
            "the single-task route {route} is left to plain-HTTP agents"
        );
    }
}
