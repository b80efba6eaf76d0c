//! The runtime's batching against a scripted stand-in for the server: a claim asks for every
//! free slot, a report goes at once when none is in flight and together with the others that
//! finished while one was, one oversize result costs the others nothing, and a handler's usage
//! goes with its completed report.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use muster_api::{
    Agent, AgentStatus, ErrorBody, ErrorCode, ErrorDetail, HeartbeatAck, LogsAccepted, ReportBatch,
    ReportResults, TaskState,
};
use serde_json::json;
use tokio::sync::Notify;

use super::*;

/// What the stand-in answers and what it saw.
#[derive(Default)]
struct Script {
    /// The answers of successive claims; once they run out, claims wait out their `wait`.
    claims: Mutex<VecDeque<Vec<Task>>>,
    /// The `max` of every claim, in order.
    maxes: Mutex<Vec<u32>>,
    /// Every reports request: its reports, in order.
    reports: Mutex<Vec<Vec<Report>>>,
    /// When set, the first reports request is answered only once `release` is notified.
    hold_first: AtomicBool,
    release: Notify,
    /// Notified at every claim and every reports request.
    seen: Notify,
    /// Reports requests whose body holds a result with this text are refused with 413.
    too_large: Mutex<Option<String>>,
}

impl Script {
    fn maxes(&self) -> Vec<u32> {
        self.maxes.lock().unwrap().clone()
    }

    fn reports(&self) -> Vec<Vec<Report>> {
        self.reports.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds, woken by each request the stand-in sees.
    async fn until(&self, what: &str, done: impl Fn(&Script) -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let seen = self.seen.notified();
                tokio::pin!(seen);
                seen.as_mut().enable();
                if done(self) {
                    return;
                }
                seen.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never saw {what}"));
    }
}

fn agent(agent_id: &str) -> Agent {
    Agent {
        agent_id: agent_id.to_owned(),
        host: "h".into(),
        port: None,
        capabilities: Vec::new(),
        mcp_servers: Vec::new(),
        max_concurrency: 4,
        labels: Labels::new(),
        version: None,
        status: AgentStatus::Online,
        instance_id: None,
        kinds: Vec::new(),
        drained_by: None,
        registered_at: chrono::Utc::now(),
        last_heartbeat_at: None,
        cpu_percent: None,
        memory_percent: None,
        active_tasks: 0,
    }
}

fn task(kind: &str) -> Task {
    let now = chrono::Utc::now();
    Task {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        state: TaskState::Running,
        payload: Value::Null,
        capabilities: Vec::new(),
        priority: 0,
        max_retries: 0,
        timeout_s: None,
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Labels::new(),
        attempt: 1,
        agent_id: Some("a1".into()),
        cancel_requested: false,
        created_at: now,
        updated_at: now,
        finished_at: None,
        result: None,
        usage: None,
        error: None,
        assignment: None,
        attempts: Vec::new(),
        waiting: None,
    }
}

/// The answer to a registration and to a drain.
async fn the_agent() -> Json<Agent> {
    Json(agent("a1"))
}

async fn claim(
    State(script): State<Arc<Script>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<muster_api::ClaimedTasks> {
    let max = query["max"].parse().expect("max is a number");
    script.maxes.lock().unwrap().push(max);
    let next = script.claims.lock().unwrap().pop_front();
    script.seen.notify_waiters();
    let tasks = match next {
        Some(tasks) => tasks,
        None => {
            let wait: u64 = query["wait"].parse().expect("wait is a number");
            tokio::time::sleep(Duration::from_secs(wait)).await;
            Vec::new()
        }
    };
    Json(muster_api::ClaimedTasks {
        tasks,
        cancel: Vec::new(),
    })
}

async fn reports(State(script): State<Arc<Script>>, Json(batch): Json<ReportBatch>) -> Response {
    let first = {
        let mut seen = script.reports.lock().unwrap();
        seen.push(batch.reports.clone());
        seen.len() == 1
    };
    script.seen.notify_waiters();
    if first && script.hold_first.load(Ordering::SeqCst) {
        script.release.notified().await;
    }
    let marker = script.too_large.lock().unwrap().clone();
    if let Some(marker) = marker
        && batch
            .reports
            .iter()
            .any(|r| r.result.to_string().contains(&marker))
    {
        let body = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::PayloadTooLarge,
                message: "the body is larger than the server accepts".into(),
            },
        };
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
    }
    let results = batch
        .reports
        .iter()
        .map(|r| ReportResult {
            task_id: Some(r.task_id),
            status: 200,
            error: None,
        })
        .collect();
    Json(ReportResults { results }).into_response()
}

/// Serves `script` on loopback; answers a client of it.
async fn stand_in(script: Arc<Script>) -> Client {
    let app = axum::Router::new()
        .route("/api/v1/agents/register", post(the_agent))
        .route(
            "/api/v1/agents/{id}/heartbeat",
            post(|| async {
                Json(HeartbeatAck {
                    status: AgentStatus::Online,
                    cancel: Vec::new(),
                })
            }),
        )
        .route("/api/v1/agents/{id}/drain", post(the_agent))
        .route("/api/v1/agents/{id}/tasks/claim", get(claim))
        .route("/api/v1/agents/{id}/reports", post(reports))
        .route(
            "/api/v1/tasks/{id}/logs",
            post(|| async { Json(LogsAccepted { accepted: 0 }) }),
        )
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Client::new(&base, None).unwrap()
}

fn options(max_concurrency: u32) -> AgentOptions {
    let mut o = AgentOptions::new("a1");
    o.max_concurrency = max_concurrency;
    o.heartbeat_interval = Duration::from_secs(3600);
    o.claim_wait = Duration::from_secs(1);
    o
}

/// Runs until released, counting how many have finished.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<Notify>,
    finished: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Gate {
    async fn run(&self, _ctx: &TaskContext) -> Result<Value, HandlerError> {
        self.open.notified().await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(json!("done"))
    }
}

#[tokio::test]
async fn a_claim_asks_for_every_free_slot() {
    let script = Arc::new(Script::default());
    let (first, second) = (vec![task("gate"), task("gate")], vec![task("gate")]);
    let all: Vec<Uuid> = first.iter().chain(&second).map(|t| t.id).collect();
    script.claims.lock().unwrap().extend([first, second]);
    let client = stand_in(script.clone()).await;
    let gate = Gate::default();
    let runtime = AgentRuntime::new(client, options(4)).handle("gate", gate.clone());
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let agent = tokio::spawn(runtime.run(async move { signal.cancelled().await }));

    // Four slots free: four asked for. Two came and run: two asked for. One more: one left.
    script.until("three claims", |s| s.maxes().len() >= 3).await;
    assert_eq!(script.maxes()[..3], [4, 2, 1]);

    // Released, the three report (the order of their endings is theirs to choose).
    while gate.finished.load(Ordering::SeqCst) < 3 {
        gate.open.notify_waiters();
        tokio::task::yield_now().await;
    }
    script
        .until("the three reports", |s| {
            s.reports().iter().map(Vec::len).sum::<usize>() >= 3
        })
        .await;
    let mut reported: Vec<Uuid> = script
        .reports()
        .iter()
        .flatten()
        .map(|r| r.task_id)
        .collect();
    reported.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(reported, expected, "each reported once");
    assert!(
        script
            .reports()
            .iter()
            .flatten()
            .all(|r| r.outcome == ReportOutcome::Completed && r.result == json!("done"))
    );
    stop.cancel();
    agent.await.unwrap().unwrap();
}

fn done(n: u32) -> Report {
    Report::completed(Uuid::now_v7(), n, json!({"n": n}), None)
}

/// Queues a report straight into the running reporter, as a finished task would, without
/// waiting for its answer; answers the receiver of that answer.
fn queue(shared: &Shared, report: Report) -> oneshot::Receiver<()> {
    let (answered, answer) = oneshot::channel();
    let taken = shared
        .reporter
        .get()
        .expect("the reporter runs")
        .queue
        .send(PendingReport { report, answered });
    assert!(taken.is_ok(), "the reporter takes reports");
    answer
}

#[tokio::test]
async fn a_report_goes_at_once_when_idle_and_with_the_others_that_finished_while_one_was_in_flight()
{
    let script = Arc::new(Script::default());
    script.hold_first.store(true, Ordering::SeqCst);
    let client = stand_in(script.clone()).await;
    let shared = AgentRuntime::new(client, options(8)).shared;

    // Nothing in flight: the first report is sent alone, at once.
    let first = done(1);
    let sent = {
        let (shared, first) = (shared.clone(), first.clone());
        tokio::spawn(async move { shared.report(first).await })
    };
    script
        .until("the first report", |s| !s.reports().is_empty())
        .await;
    assert_eq!(script.reports(), vec![vec![first]]);

    // While it is in flight (held by the server), three more finish: they go together.
    let later = [done(2), done(3), done(4)];
    let answers: Vec<_> = later.iter().map(|r| queue(&shared, r.clone())).collect();
    script.release.notify_one();
    script
        .until("the second request", |s| s.reports().len() >= 2)
        .await;
    assert_eq!(script.reports()[1], later.to_vec());
    sent.await.expect("the first report was answered");
    for answer in answers {
        answer.await.expect("each report's task hears the answer");
    }
    assert_eq!(script.reports().len(), 2, "two requests for four reports");
}

#[tokio::test]
async fn an_oversize_result_costs_the_other_reports_of_its_batch_nothing() {
    let script = Arc::new(Script::default());
    script.hold_first.store(true, Ordering::SeqCst);
    *script.too_large.lock().unwrap() = Some("huge".into());
    let client = stand_in(script.clone()).await;
    let shared = AgentRuntime::new(client, options(8)).shared;

    let first = done(1);
    let sent = {
        let (shared, first) = (shared.clone(), first.clone());
        tokio::spawn(async move { shared.report(first).await })
    };
    script
        .until("the first report", |s| !s.reports().is_empty())
        .await;
    let huge = Report::completed(Uuid::now_v7(), 1, json!("huge"), None);
    let fine = done(2);
    let answers = [queue(&shared, huge.clone()), queue(&shared, fine.clone())];
    script.release.notify_one();
    sent.await.unwrap();
    for answer in answers {
        answer.await.expect("answered");
    }
    let requests = script.reports();
    assert_eq!(requests.len(), 5, "{requests:?}");
    assert_eq!(
        requests[1],
        vec![huge.clone(), fine.clone()],
        "together first"
    );
    assert_eq!(requests[2], vec![huge.clone()], "then each alone");
    // The result the server will not take ends the attempt as a failure saying so.
    let instead = &requests[3];
    assert_eq!(instead.len(), 1);
    assert_eq!(
        (instead[0].task_id, instead[0].outcome, instead[0].retryable),
        (huge.task_id, ReportOutcome::Failed, false)
    );
    assert!(
        instead[0]
            .error
            .as_deref()
            .unwrap()
            .contains("refused the handler's result"),
        "{instead:?}"
    );
    assert_eq!(requests[4], vec![fine], "the other report is applied");
}

/// Sets its usage, then completes, or fails when its payload says `fail`.
struct Metered;

#[async_trait]
impl Handler for Metered {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        ctx.set_usage(json!({"input_tokens": 7}));
        if ctx.task().payload["fail"] == json!(true) {
            return Err(HandlerError::Permanent("no".into()));
        }
        Ok(json!("ok"))
    }
}

#[tokio::test]
async fn a_handlers_usage_goes_with_its_completed_report_only() {
    let script = Arc::new(Script::default());
    let client = stand_in(script.clone()).await;
    let runtime = AgentRuntime::new(client, options(1)).handle("metered", Metered);
    let mut failing = task("metered");
    failing.payload = json!({"fail": true});
    runtime.run_one(task("metered")).await;
    runtime.run_one(failing).await;
    let reports = script.reports().concat();
    assert_eq!(reports[0].outcome, ReportOutcome::Completed);
    assert_eq!(reports[0].usage, Some(json!({"input_tokens": 7})));
    // The server takes usage with a completed report only.
    assert_eq!(reports[1].outcome, ReportOutcome::Failed);
    assert_eq!(reports[1].usage, None);
}
