//! The store conformance suite: every lifecycle rule checked against each `Store` backend
//! directly, without HTTP. A backend joins by adding one constructor to [`backends`]; every test
//! loops over all of them with a fresh store and names the backend in each assertion.
//! Time is explicit (`now` in milliseconds), never slept.

// Test helpers are `pub` for the modules of this one test binary, not for the world.
#![allow(unreachable_pub)]

mod agents;
mod batches;
mod deployments;
mod durability;
mod handoff;
mod incidents;
mod llm;
mod notifications;
mod reports;
mod tasks;

use std::io::Write;
use std::sync::{Arc, Once};

use futures::future::BoxFuture;
use muster_api::{AppendLogs, Assignment, LogStream, NewLogLine, RegisterAgent, Task, TaskState};
use muster_server::clock::to_utc;
use muster_server::error::StoreError;
use muster_server::lifecycle::is_legal;
use muster_server::store::sqlite::SqliteStore;
use muster_server::store::{AssignOrder, Change, Changed, NewTask, RetryPolicy, Store, Submitted};
use serde_json::json;
use uuid::Uuid;

/// The actor of the suite's operator verbs.
pub fn operator() -> muster_server::audit::Actor {
    muster_server::audit::Actor::operator(muster_server::audit::Via::Api)
}

/// The one retry policy of the suite: a first retry waits 500..1500 ms.
pub fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff_base_ms: 1000,
        backoff_max_ms: 60_000,
    }
}

/// The lease cap of agents whose heartbeats list nothing (six hours, the default).
pub const UNLISTED_CAP: i64 = 6 * 3_600_000;

/// The start of every test's time line (2023-11-14T22:13:20Z), in milliseconds.
pub const T0: i64 = 1_700_000_000_000;

/// How a backend opens its store again over the same data (after `close`).
pub type Reopen = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Store>> + Send + Sync>;

/// One backend under test: its name, a fresh store, whatever keeps its data alive (a temporary
/// directory, a schema), and how to open it again.
pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn Store>,
    pub reopen: Reopen,
    pub _guard: Box<dyn std::any::Any + Send>,
}

static NO_POSTGRES: Once = Once::new();

/// Every backend this build has, each with a fresh, empty store.
pub async fn backends() -> Vec<Backend> {
    let all = vec![sqlite()];
    if std::env::var_os("MUSTER_TEST_DATABASE_URL").is_some() {
        NO_POSTGRES.call_once(|| {
            // Straight to stderr, past the test harness's capture, so it is seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no PostgreSQL store in this build; the conformance suite ran \
                 against SQLite only ***\n"
            );
        });
    }
    // A PostgreSQL backend joins here, pushed when the variable names a database.
    all
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("muster.db");
    let store = SqliteStore::open(&path, policy()).expect("SQLite opens");
    let reopen: Reopen = Box::new(move || {
        let path = path.clone();
        Box::pin(async move {
            let store = SqliteStore::open(&path, policy()).expect("SQLite opens again");
            Arc::new(store) as Arc<dyn Store>
        })
    });
    Backend {
        name: "sqlite",
        store: Arc::new(store),
        reopen,
        _guard: Box::new(dir),
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/// A task with the suite's defaults: kind `echo`, no capabilities, priority 0.
pub fn new_task(max_retries: u32) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        kind: "echo".into(),
        payload: json!({"n": 1}),
        capabilities: Vec::new(),
        priority: 0,
        max_retries,
        timeout_s: None,
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Default::default(),
    }
}

/// A registration of `agent_id` by the process `instance`.
pub fn registration(agent_id: &str, instance: Option<&str>) -> RegisterAgent {
    RegisterAgent {
        agent_id: agent_id.into(),
        host: "127.0.0.1".into(),
        port: None,
        capabilities: Vec::new(),
        mcp_servers: Vec::new(),
        max_concurrency: Some(4),
        labels: Default::default(),
        version: None,
        instance_id: instance.map(str::to_owned),
        kinds: Vec::new(),
    }
}

pub fn logs(attempt: u32, lines: &[&str]) -> AppendLogs {
    AppendLogs {
        attempt,
        lines: lines
            .iter()
            .map(|text| NewLogLine {
                ts: None,
                stream: LogStream::Stdout,
                text: (*text).to_owned(),
            })
            .collect(),
    }
}

/// Submits `task` and checks it was created queued; answers the submission.
pub async fn submit(b: &Backend, task: NewTask, now: i64) -> Submitted {
    let s = b.store.submit(task, now).await.expect("submit");
    assert!(s.created, "[{}] a new task is created", b.name);
    assert_eq!(s.task.state, TaskState::Queued, "[{}] submitted", b.name);
    let change = s.change.as_ref().expect("a created task enters the queue");
    assert_eq!(change.state, TaskState::Queued, "[{}]", b.name);
    assert!(
        change.requeued.is_some(),
        "[{}] the change queues it",
        b.name
    );
    s
}

/// The store's handle of a submitted task (for assign orders).
pub fn seq(s: &Submitted) -> i64 {
    s.change
        .as_ref()
        .and_then(|c| c.requeued.as_ref())
        .expect("a queued change")
        .seq
}

pub fn order(seq: i64, agent_id: &str, now: i64) -> AssignOrder {
    AssignOrder {
        seq,
        agent_id: agent_id.into(),
        assignment: Assignment {
            agent_id: agent_id.into(),
            assigned_at: to_utc(now),
            candidates: Vec::new(),
        },
        start: None,
    }
}

/// Assigns one task; answers whether the store applied the order.
pub async fn assign(b: &Backend, seq: i64, agent_id: &str, now: i64) -> Option<(Uuid, u32)> {
    let mut applied = b
        .store
        .assign(vec![order(seq, agent_id, now)], now)
        .await
        .expect("assign");
    assert_eq!(applied.len(), 1, "[{}] one answer per order", b.name);
    applied.pop().flatten().map(|a| (a.task_id, a.attempt))
}

/// Submits a task, registers `agent_id` (once), assigns and claims the task; answers the
/// running task.
pub async fn running(b: &Backend, task: NewTask, agent_id: &str, now: i64) -> Task {
    if b.store.agent(agent_id).await.is_err() {
        b.store
            .register_agent(registration(agent_id, Some("i1")), now)
            .await
            .expect("register");
    }
    let s = submit(b, task, now).await;
    let id = s.task.id;
    assert_eq!(
        assign(b, seq(&s), agent_id, now).await,
        Some((id, 0)),
        "[{}] a queued, due task is assigned",
        b.name
    );
    let claimed = b
        .store
        .claim(agent_id, now, now + 30_000)
        .await
        .expect("claim");
    let task = claimed.task.expect("the assigned task is claimed");
    assert_eq!(task.id, id, "[{}] the assigned task is claimed", b.name);
    assert_legal(
        b,
        TaskState::Assigned,
        claimed.change.as_ref().expect("a change"),
    )
    .await;
    task
}

/// Asserts that one committed change is a legal move from `before`, and that the store now
/// holds the state the change announces.
pub async fn assert_legal(b: &Backend, before: TaskState, change: &Change) {
    assert!(
        is_legal(before, change.state),
        "[{}] task {} moved {before} -> {}, which the lifecycle forbids",
        b.name,
        change.task_id,
        change.state
    );
    let stored = b
        .store
        .task_state(change.task_id)
        .await
        .expect("task_state");
    assert_eq!(
        stored, change.state,
        "[{}] the change of task {} says {}, the store holds {stored}",
        b.name, change.task_id, change.state
    );
}

/// [`assert_legal`] for a batch of changes whose tasks all stood at `before`.
pub async fn assert_all_legal(b: &Backend, before: TaskState, changes: &[Change]) {
    for change in changes {
        assert_legal(b, before, change).await;
    }
}

pub async fn task(b: &Backend, id: Uuid) -> Task {
    b.store.task(id).await.expect("task")
}

pub async fn state(b: &Backend, id: Uuid) -> TaskState {
    b.store.task_state(id).await.expect("task_state")
}

/// Asserts a `Conflict` answer.
pub fn assert_conflict<T: std::fmt::Debug>(b: &Backend, what: &str, got: Result<T, StoreError>) {
    match got {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("[{}] {what}: expected Conflict, got {other:?}", b.name),
    }
}

/// Asserts a `NotFound` answer.
pub fn assert_not_found<T: std::fmt::Debug>(b: &Backend, what: &str, got: Result<T, StoreError>) {
    match got {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("[{}] {what}: expected NotFound, got {other:?}", b.name),
    }
}

/// Completes the running attempt; checks the move is legal.
pub async fn complete(
    b: &Backend,
    id: Uuid,
    attempt: u32,
    result: serde_json::Value,
    usage: Option<serde_json::Value>,
    now: i64,
) -> Changed {
    let done = b
        .store
        .complete(id, attempt, result, usage, now)
        .await
        .expect("complete");
    assert_legal(b, TaskState::Running, &done.change).await;
    done
}

/// Fails the running attempt; checks the move is legal.
pub async fn fail(
    b: &Backend,
    id: Uuid,
    attempt: u32,
    error: String,
    retryable: bool,
    now: i64,
) -> Changed {
    let failed = b
        .store
        .fail(id, attempt, error, retryable, now)
        .await
        .expect("fail");
    assert_legal(b, TaskState::Running, &failed.change).await;
    failed
}
