//! The task lifecycle over HTTP: submit, dispatch, claim, report, retry, cancel, expiry.

use std::collections::HashSet;
use std::time::Duration;

use muster_server::clock::Clock;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_submitted_task_runs_on_a_capable_agent_and_completes() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "payload": {"x": 1}}))
        .await;
    assert_eq!(task["state"], "queued");
    let claimed = t.claim("a1", 5).await.expect("a task");
    assert_eq!(claimed["id"], task["id"]);
    assert_eq!(claimed["state"], "running");
    assert_eq!(claimed["attempt"], 1);
    let (status, done) = t.complete(&claimed, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
    let stored = t.task(task["id"].as_str().unwrap()).await;
    assert_eq!(stored["result"], json!({"ok": true}));
    assert_eq!(stored["attempts"][0]["outcome"], "completed");
    assert_eq!(stored["assignment"]["agent_id"], "a1");
    let _ = Duration::from_secs(0);
}

// ---------------------------------------------------------------------------------------------
// Helpers of this file

type ClaimAnswer = (StatusCode, HeaderMap, Value);

fn id(task: &Value) -> &str {
    task["id"].as_str().expect("a task id")
}

fn ms(ts: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts.as_str().expect("a timestamp"))
        .expect("an RFC 3339 timestamp")
        .timestamp_millis()
}

fn assert_conflict(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
}

async fn list_tasks(t: &TestApp, query: &str) -> Value {
    let (status, body) = t.get(&format!("/api/v1/tasks{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The ids of a task list, in the order the server gave them.
fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| id(t).to_owned())
        .collect()
}

async fn agent(t: &TestApp, agent_id: &str) -> (StatusCode, Value) {
    t.get(&format!("/api/v1/agents/{agent_id}")).await
}

async fn drain(t: &TestApp, agent_id: &str) {
    let (status, body) = t
        .post(&format!("/api/v1/agents/{agent_id}/drain"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "draining");
}

async fn post_logs(t: &TestApp, task_id: &str, attempt: u64, lines: Value) -> (StatusCode, Value) {
    t.post(
        &format!("/api/v1/tasks/{task_id}/logs"),
        json!({"attempt": attempt, "lines": lines}),
    )
    .await
}

async fn logs(t: &TestApp, task_id: &str) -> Value {
    let (status, body) = t.get(&format!("/api/v1/tasks/{task_id}/logs")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Moves the server's clock just past the task's `run_after` (its retry backoff) and lets the
/// dispatcher act on it.
async fn reach_run_after(t: &TestApp, task_id: &str) {
    let task = t.task(task_id).await;
    let due = ms(&task["run_after"]);
    let now = t.clock.now_ms();
    if due >= now {
        t.advance(Duration::from_millis((due - now) as u64 + 1));
    }
    t.settle().await;
}

/// Starts a long-poll claim and returns once the server is holding it (the claim's sign of
/// life shows as the agent's `last_heartbeat_at`).
async fn start_waiting_claim(t: &TestApp, agent_id: &str, wait_s: u64) -> JoinHandle<ClaimAnswer> {
    let before = agent(t, agent_id).await.1["last_heartbeat_at"].clone();
    // A later server time makes the claim's touch visible as a new `last_heartbeat_at`.
    t.advance(Duration::from_secs(1));
    let req = t.request(
        Method::GET,
        &format!("/api/v1/agents/{agent_id}/tasks/next?wait={wait_s}"),
    );
    let handle = tokio::spawn(async move {
        let resp = req.send().await.expect("claim sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("claim body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("claim answer is JSON")
        };
        (status, headers, body)
    });
    let mut seen = false;
    for _ in 0..400 {
        if agent(t, agent_id).await.1["last_heartbeat_at"] != before {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "the claim of {agent_id} never reached the server");
    // From its sign of life to its wait is a few statements; let it get there.
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle
}

/// The answer of a claim started by [`start_waiting_claim`]. Its `wait` is longer than this
/// bound, so an answer within it means the claim was woken rather than timed out.
async fn woken_answer(handle: JoinHandle<ClaimAnswer>) -> ClaimAnswer {
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("the waiting claim was woken before its wait ran out")
        .expect("claim task")
}

// ---------------------------------------------------------------------------------------------
// Submit and dispatch

#[tokio::test]
async fn a_resubmit_with_the_same_idempotency_key_returns_the_first_task() {
    let t = TestApp::spawn().await;
    let first = t
        .submit(json!({"kind": "deploy", "idempotency_key": "push-abc", "payload": {"n": 1}}))
        .await;
    let (status, second) = t
        .post(
            "/api/v1/tasks",
            json!({"kind": "deploy", "idempotency_key": "push-abc", "payload": {"n": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(
        second["payload"],
        json!({"n": 1}),
        "the first task, unchanged"
    );
    let all = list_tasks(&t, "").await;
    assert_eq!(ids(&all), [id(&first)]);

    // Another key is another task.
    let other = t
        .submit(json!({"kind": "deploy", "idempotency_key": "push-def"}))
        .await;
    assert_ne!(other["id"], first["id"]);
    assert_eq!(
        list_tasks(&t, "").await["tasks"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn the_least_loaded_capable_agent_wins_and_the_assignment_says_why() {
    let t = TestApp::spawn().await;
    t.register("busy", &["gpu"], 5).await;
    let long = t
        .submit(json!({"kind": "train", "capabilities": ["gpu"]}))
        .await;
    let running = t.claim("busy", 5).await.expect("busy takes the first task");
    assert_eq!(running["id"], long["id"]);

    // `idle` is assigned (and finishes) a task after `busy` was, so only the load, not the
    // "least recently assigned" tie-break, can make it win the next one.
    t.register("idle", &["gpu"], 5).await;
    let short = t
        .submit(json!({"kind": "infer", "capabilities": ["gpu"]}))
        .await;
    let claimed = t.claim("idle", 5).await.expect("idle takes a task");
    assert_eq!(claimed["id"], short["id"]);
    let (status, body) = t.complete(&claimed, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let task = t
        .submit(json!({"kind": "infer", "capabilities": ["gpu"]}))
        .await;
    t.settle().await;
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "assigned");
    assert_eq!(stored["agent_id"], "idle");
    let assignment = &stored["assignment"];
    assert_eq!(assignment["agent_id"], "idle");
    let candidates = assignment["candidates"].as_array().expect("candidates");
    let names: Vec<&str> = candidates
        .iter()
        .map(|c| c["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["idle", "busy"], "best first: {assignment}");
    assert_eq!(candidates[0]["active"], 0);
    assert_eq!(candidates[1]["active"], 1);
    let best = candidates[0]["score"].as_f64().expect("a score");
    let second = candidates[1]["score"].as_f64().expect("a score");
    assert!(best > second, "{assignment}");
    let claimed = t.claim("idle", 5).await.expect("the assigned task");
    assert_eq!(claimed["id"], task["id"]);
    assert!(t.claim("busy", 0).await.is_none());
}

#[tokio::test]
async fn a_task_no_agent_can_take_stays_queued_until_a_capable_agent_registers() {
    let t = TestApp::spawn().await;
    t.register("shell-only", &["shell"], 4).await;
    t.register("gpu-only", &["gpu"], 4).await;
    let task = t
        .submit(json!({"kind": "render", "capabilities": ["gpu", "shell"]}))
        .await;
    t.settle().await;
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "queued");
    assert_eq!(stored["agent_id"], Value::Null);
    assert!(t.claim("shell-only", 0).await.is_none());
    assert!(t.claim("gpu-only", 0).await.is_none());

    t.register("both", &["shell", "gpu", "extra"], 1).await;
    let claimed = t.claim("both", 5).await.expect("the capable agent gets it");
    assert_eq!(claimed["id"], task["id"]);
    assert_eq!(claimed["attempt"], 1);
}

#[tokio::test]
async fn an_agent_never_holds_more_tasks_than_its_max_concurrency() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 2).await;
    let mut tasks = Vec::new();
    for n in 0..3 {
        tasks.push(
            t.submit(json!({"kind": "echo", "capabilities": ["shell"], "payload": {"n": n}}))
                .await,
        );
    }
    t.settle().await;
    let states = [
        t.task(id(&tasks[0])).await["state"].clone(),
        t.task(id(&tasks[1])).await["state"].clone(),
        t.task(id(&tasks[2])).await["state"].clone(),
    ];
    assert_eq!(states, ["assigned", "assigned", "queued"]);
    assert_eq!(agent(&t, "a1").await.1["active_tasks"], 2);

    let first = t.claim("a1", 5).await.expect("first");
    let second = t.claim("a1", 5).await.expect("second");
    assert_eq!(first["id"], tasks[0]["id"]);
    assert_eq!(second["id"], tasks[1]["id"]);
    assert!(t.claim("a1", 0).await.is_none(), "two are running already");
    assert_eq!(t.task(id(&tasks[2])).await["state"], "queued");

    let (status, body) = t.complete(&first, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let third = t.claim("a1", 5).await.expect("a slot came free");
    assert_eq!(third["id"], tasks[2]["id"]);
}

#[tokio::test]
async fn tasks_sharing_a_lock_key_run_one_at_a_time_in_order() {
    let t = TestApp::spawn().await;
    let lock = |n: u32| json!({"kind": "deploy", "capabilities": ["ansible"], "lock_key": "site", "payload": {"n": n}});
    // Queued before any agent can take them, so one dispatch round sees them all at once.
    let l1 = t.submit(lock(1)).await;
    let l2 = t.submit(lock(2)).await;
    let l3 = t.submit(lock(3)).await;
    let free = t
        .submit(json!({"kind": "ping", "capabilities": ["ansible"]}))
        .await;
    t.settle().await;
    // Room for everything at once: only the lock holds tasks back.
    t.register("a1", &["ansible"], 10).await;
    t.settle().await;
    assert_eq!(t.task(id(&l1)).await["state"], "assigned");
    assert_eq!(t.task(id(&l2)).await["state"], "queued");
    assert_eq!(t.task(id(&l3)).await["state"], "queued");
    assert_eq!(t.task(id(&free)).await["state"], "assigned");

    let c1 = t.claim("a1", 5).await.expect("l1");
    assert_eq!(c1["id"], l1["id"]);
    let c_free = t.claim("a1", 5).await.expect("the unlocked task");
    assert_eq!(c_free["id"], free["id"]);
    assert!(t.claim("a1", 0).await.is_none(), "l2 waits for the lock");
    assert_eq!(t.task(id(&l2)).await["state"], "queued");

    let (status, body) = t.complete(&c1, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c2 = t.claim("a1", 5).await.expect("l2 after l1");
    assert_eq!(c2["id"], l2["id"], "the older waiting task goes first");
    assert!(t.claim("a1", 0).await.is_none(), "l3 waits for l2");
    assert_eq!(t.task(id(&l3)).await["state"], "queued");

    // A final failure releases the lock too.
    let (status, body) = t.fail(&c2, "broken", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c3 = t.claim("a1", 5).await.expect("l3 after l2");
    assert_eq!(c3["id"], l3["id"]);
}

// ---------------------------------------------------------------------------------------------
// Claims and expiry

#[tokio::test]
async fn a_waiting_claim_returns_a_task_submitted_while_it_waits() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let waiting = start_waiting_claim(&t, "a1", 10).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let (status, _, body) = woken_answer(waiting).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], task["id"]);
    assert_eq!(body["state"], "running");
    assert_eq!(body["attempt"], 1);
}

#[tokio::test]
async fn an_assignment_not_claimed_in_time_goes_back_to_the_queue() {
    let t = TestApp::spawn().await;
    let assign_timeout = t.app.settings().assign_timeout;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    assert_eq!(t.task(id(&task)).await["agent_id"], "a1");
    // Draining keeps a1 from taking the task again once it is back in the queue, so the queue
    // is where we find it.
    drain(&t, "a1").await;

    t.advance(assign_timeout - Duration::from_secs(5));
    let (status, _) = t.heartbeat("a1", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    t.sweep().await;
    assert_eq!(
        t.task(id(&task)).await["state"],
        "assigned",
        "not yet timed out"
    );

    t.advance(Duration::from_secs(10));
    // a1 stays alive: the task must come back because it was not claimed, not because its
    // agent went offline.
    let (status, _) = t.heartbeat("a1", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let swept = t.sweep().await;
    assert!(swept.agents_offline.is_empty(), "{swept:?}");
    assert_eq!(agent(&t, "a1").await.1["status"], "draining");
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "queued");
    assert_eq!(stored["agent_id"], Value::Null);
    assert_eq!(stored["attempt"], 0, "no attempt was spent");
    assert!(t.claim("a1", 0).await.is_none());

    t.register("a2", &["shell"], 1).await;
    let claimed = t.claim("a2", 5).await.expect("another agent gets it");
    assert_eq!(claimed["id"], task["id"]);
    assert_eq!(claimed["attempt"], 1);
}

#[tokio::test]
async fn an_agent_that_stops_heartbeating_goes_offline_and_its_task_runs_elsewhere() {
    // A long backoff keeps the lost task visibly queued until the test moves the clock.
    let t = TestApp::spawn_with(|s| s.retry_backoff = Duration::from_secs(30)).await;
    let heartbeat_timeout = t.app.settings().heartbeat_timeout;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let first = t.claim("a1", 5).await.expect("a1 runs it");
    assert_eq!(first["attempt"], 1);
    t.register("a2", &["shell"], 1).await;

    t.advance(heartbeat_timeout + Duration::from_secs(1));
    let (status, _) = t.heartbeat("a2", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let swept = t.sweep().await;
    assert_eq!(swept.agents_offline, ["a1"]);
    assert_eq!(agent(&t, "a1").await.1["status"], "offline");
    assert_eq!(agent(&t, "a2").await.1["status"], "online");
    let lost = t.task(id(&task)).await;
    assert_eq!(lost["state"], "queued");
    assert_eq!(lost["attempts"][0]["agent_id"], "a1");
    assert_eq!(lost["attempts"][0]["outcome"], "lost");

    reach_run_after(&t, id(&task)).await;
    let second = t.claim("a2", 5).await.expect("a2 runs it again");
    assert_eq!(second["id"], task["id"]);
    assert_eq!(second["attempt"], 2);

    let before = t.task(id(&task)).await;
    let (status, body) = t.complete(&first, json!({"late": true})).await;
    assert_conflict(status, &body);
    let after = t.task(id(&task)).await;
    assert_eq!(after, before, "the late report changed nothing");
    assert_eq!(after["state"], "running");
    assert_eq!(after["agent_id"], "a2");
    assert_eq!(after["attempts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn reports_for_a_stale_attempt_are_refused_and_change_nothing() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 3}))
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");
    let (status, _) = post_logs(&t, id(&task), 1, json!([{"text": "one"}])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = t.fail(&first, "flaky", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    reach_run_after(&t, id(&task)).await;
    let second = t.claim("a1", 5).await.expect("attempt 2");
    assert_eq!(second["attempt"], 2);

    let before = t.task(id(&task)).await;
    let logs_before = logs(&t, id(&task)).await;
    let (status, body) = t.complete(&first, json!({"stale": true})).await;
    assert_conflict(status, &body);
    let (status, body) = t.fail(&first, "stale", true).await;
    assert_conflict(status, &body);
    let (status, body) = t.fail(&first, "stale", false).await;
    assert_conflict(status, &body);
    let (status, body) = post_logs(&t, id(&task), 1, json!([{"text": "stale"}])).await;
    assert_conflict(status, &body);
    // An attempt that never started is no more current than an old one.
    let (status, body) = post_logs(&t, id(&task), 3, json!([{"text": "future"}])).await;
    assert_conflict(status, &body);
    let mut future = second.clone();
    future["attempt"] = json!(3);
    let (status, body) = t.complete(&future, json!({})).await;
    assert_conflict(status, &body);
    assert_eq!(t.task(id(&task)).await, before);
    assert_eq!(logs(&t, id(&task)).await, logs_before);

    // Once the task is finished, even its last attempt may not report again.
    let (status, body) = t.complete(&second, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = t.task(id(&task)).await;
    let (status, body) = t.fail(&second, "after the fact", true).await;
    assert_conflict(status, &body);
    let (status, body) = t.complete(&second, json!({"again": true})).await;
    assert_conflict(status, &body);
    let (status, body) = post_logs(&t, id(&task), 2, json!([{"text": "late"}])).await;
    assert_conflict(status, &body);
    assert_eq!(t.task(id(&task)).await, done);
}

// ---------------------------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn a_retryable_failure_waits_an_exponential_backoff_before_running_again() {
    let base = Duration::from_secs(10);
    let t = TestApp::spawn_with(|s| {
        s.retry_backoff = base;
        s.retry_backoff_max = Duration::from_secs(3600);
    })
    .await;
    let base = base.as_millis() as i64;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 3}))
        .await;
    let mut running = t.claim("a1", 5).await.expect("attempt 1");
    for retry in 1..=3u32 {
        let (status, failed) = t.fail(&running, "flaky", true).await;
        assert_eq!(status, StatusCode::OK, "{failed}");
        assert_eq!(failed["state"], "queued");
        assert_eq!(failed["agent_id"], Value::Null);
        // base × 2^(retry−1), with a jitter factor in [0.5, 1.5).
        let raw = base << (retry - 1);
        let delay = ms(&failed["run_after"]) - ms(&failed["updated_at"]);
        assert!(
            (raw / 2..raw * 3 / 2).contains(&delay),
            "retry {retry}: delay {delay} ms for a raw backoff of {raw} ms"
        );
        t.settle().await;
        assert!(
            t.claim("a1", 0).await.is_none(),
            "retry {retry} must wait for its run_after"
        );
        assert_eq!(t.task(id(&task)).await["state"], "queued");

        reach_run_after(&t, id(&task)).await;
        running = t.claim("a1", 1).await.expect("due again");
        assert_eq!(running["id"], task["id"]);
        assert_eq!(running["attempt"], retry + 1);
    }
    let (status, body) = t.complete(&running, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<Value> = t.task(id(&task)).await["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "failed", "completed"]);
}

#[tokio::test]
async fn the_failure_after_the_last_retry_is_final() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 1}))
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");
    let (status, body) = t.fail(&first, "first", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "queued", "one retry is left");
    reach_run_after(&t, id(&task)).await;
    let second = t.claim("a1", 5).await.expect("attempt 2");
    assert_eq!(second["attempt"], 2);
    let (status, body) = t.fail(&second, "second", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed");

    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "failed");
    assert_eq!(stored["error"], "second");
    assert!(stored["finished_at"].is_string());
    let attempts = stored["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"], "first");
    assert_eq!(attempts[1]["outcome"], "failed");
    assert_eq!(attempts[1]["error"], "second");
    t.settle().await;
    assert!(
        t.claim("a1", 0).await.is_none(),
        "a failed task never runs again"
    );
}

#[tokio::test]
async fn a_failure_that_is_not_retryable_is_final_at_once() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 5}))
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");
    let (status, body) = t.fail(&first, "bad input", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed");
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "failed");
    assert_eq!(stored["error"], "bad input");
    assert_eq!(stored["attempts"].as_array().unwrap().len(), 1);
    t.settle().await;
    assert!(t.claim("a1", 0).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Operator actions

#[tokio::test]
async fn cancel_ends_a_queued_task_at_once_and_asks_the_agent_to_stop_a_running_one() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;

    // Queued (no agent can take it): cancelled at once.
    let queued = t
        .submit(json!({"kind": "render", "capabilities": ["gpu"]}))
        .await;
    t.settle().await;
    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/cancel", id(&queued)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    let stored = t.task(id(&queued)).await;
    assert_eq!(stored["state"], "cancelled");
    assert!(stored["finished_at"].is_string());
    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/cancel", id(&queued)), json!({}))
        .await;
    assert_conflict(status, &body);

    // Running: the agent is told, through a waiting claim and its heartbeat.
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let running = t.claim("a1", 5).await.expect("a1 runs it");
    let waiting = start_waiting_claim(&t, "a1", 10).await;
    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/cancel", id(&task)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["cancel_requested"], true);

    let (status, headers, body) = woken_answer(waiting).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let header = headers
        .get(muster_api::CANCEL_HEADER)
        .expect("the claim names the task to stop")
        .to_str()
        .unwrap();
    assert!(header.split(',').any(|i| i == id(&task)), "{header}");

    let (status, ack) = t.heartbeat("a1", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["cancel"], json!([id(&task)]));

    // The agent stops the handler and reports the failure: the task ends cancelled.
    let (status, body) = t.fail(&running, "stopped on request", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "cancelled");
    assert_eq!(stored["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(stored["attempts"][0]["outcome"], "cancelled");
    let (_, ack) = t.heartbeat("a1", json!({})).await;
    assert_eq!(ack["cancel"], json!([]), "nothing left to stop");

    // A completed task cannot be cancelled.
    let done = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("a1 runs it");
    assert_eq!(claimed["id"], done["id"]);
    let (status, body) = t.complete(&claimed, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/cancel", id(&done)), json!({}))
        .await;
    assert_conflict(status, &body);
    assert_eq!(t.task(id(&done)).await["state"], "completed");
}

#[tokio::test]
async fn an_operator_retry_runs_a_failed_task_again_but_not_a_completed_one() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 0}))
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");
    let (status, body) = t.fail(&first, "broken", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed", "no retries configured");

    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/retry", id(&task)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "queued");
    assert_eq!(body["error"], Value::Null);
    let second = t.claim("a1", 5).await.expect("it runs again");
    assert_eq!(second["id"], task["id"]);
    assert_eq!(second["attempt"], 2);
    let (status, body) = t.complete(&second, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = t.task(id(&task)).await;
    let outcomes: Vec<&Value> = stored["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["outcome"])
        .collect();
    assert_eq!(outcomes, ["failed", "completed"]);

    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/retry", id(&task)), json!({}))
        .await;
    assert_conflict(status, &body);
    assert_eq!(t.task(id(&task)).await, stored);
}

#[tokio::test]
async fn a_heartbeat_names_attempts_the_agent_must_stop_and_404s_for_an_unknown_agent() {
    let t = TestApp::spawn().await;
    let (status, body) = t.heartbeat("ghost", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    t.register("a1", &["shell"], 1).await;
    t.register("a2", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 3}))
        .await;
    t.settle().await;
    let runner = t.task(id(&task)).await["agent_id"]
        .as_str()
        .expect("assigned")
        .to_owned();
    let other = if runner == "a1" { "a2" } else { "a1" };
    // The runner's handler crashed on attempt 1 and the task came back to it as attempt 2.
    drain(&t, other).await;
    let first = t.claim(&runner, 5).await.expect("attempt 1");
    let (status, body) = t.fail(&first, "crashed", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    reach_run_after(&t, id(&task)).await;
    let second = t.claim(&runner, 5).await.expect("attempt 2");
    assert_eq!(second["attempt"], 2);

    let running = |attempt: u32| json!({"running": [{"task_id": id(&task), "attempt": attempt}]});
    // Its heartbeat still lists attempt 1: that one must stop.
    let (status, ack) = t.heartbeat(&runner, running(1)).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["cancel"], json!([id(&task)]));
    // The current attempt is not to be stopped.
    let (status, ack) = t.heartbeat(&runner, running(2)).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["cancel"], json!([]));
    // The current attempt number on another agent is not that agent's to run.
    let (status, ack) = t.heartbeat(other, running(2)).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["cancel"], json!([id(&task)]));
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "running");
    assert_eq!(stored["agent_id"], runner.as_str());
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_ended_and_retried_then_failed() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(
            json!({"kind": "echo", "capabilities": ["shell"], "timeout_s": 10, "max_retries": 1}),
        )
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");

    t.advance(Duration::from_secs(5));
    t.sweep().await;
    assert_eq!(
        t.task(id(&task)).await["state"],
        "running",
        "within its timeout"
    );

    t.advance(Duration::from_secs(6));
    let swept = t.sweep().await;
    assert!(swept.agents_offline.is_empty(), "{swept:?}");
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "queued", "one retry is left");
    assert_eq!(stored["attempts"][0]["outcome"], "timed_out");
    assert!(stored["attempts"][0]["ended_at"].is_string());
    // The agent still running attempt 1 is told to stop it.
    let (_, ack) = t
        .heartbeat(
            "a1",
            json!({"running": [{"task_id": id(&task), "attempt": first["attempt"]}]}),
        )
        .await;
    assert_eq!(ack["cancel"], json!([id(&task)]));

    reach_run_after(&t, id(&task)).await;
    let second = t.claim("a1", 5).await.expect("attempt 2");
    assert_eq!(second["attempt"], 2);
    t.advance(Duration::from_secs(11));
    t.sweep().await;
    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "failed", "no retry left");
    assert_eq!(stored["attempts"][1]["outcome"], "timed_out");
    let (status, body) = t.complete(&second, json!({})).await;
    assert_conflict(status, &body);
}

#[tokio::test]
async fn every_attempt_and_every_log_line_is_kept() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 1}))
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");
    let (status, body) = post_logs(
        &t,
        id(&task),
        1,
        json!([{"text": "one-a"}, {"text": "one-b", "stream": "stderr"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2);
    let (status, body) = t.fail(&first, "boom", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The retry runs on another agent.
    drain(&t, "a1").await;
    t.register("a2", &["shell"], 1).await;
    reach_run_after(&t, id(&task)).await;
    let second = t.claim("a2", 5).await.expect("attempt 2");
    assert_eq!(second["attempt"], 2);
    let (status, body) = post_logs(&t, id(&task), 2, json!([{"text": "two-a"}])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t.complete(&second, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let page = logs(&t, id(&task)).await;
    let lines: Vec<(u64, &str, &str)> = page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["attempt"].as_u64().unwrap(),
                l["stream"].as_str().unwrap(),
                l["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (1, "stdout", "one-a"),
            (1, "stderr", "one-b"),
            (2, "stdout", "two-a")
        ]
    );

    let stored = t.task(id(&task)).await;
    assert_eq!(stored["state"], "completed");
    let attempts = stored["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["agent_id"], "a1");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"], "boom");
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["agent_id"], "a2");
    assert_eq!(attempts[1]["outcome"], "completed");
    assert_eq!(attempts[1]["error"], Value::Null);
    for a in attempts {
        assert!(
            a["started_at"].is_string() && a["ended_at"].is_string(),
            "{a}"
        );
    }
}

#[tokio::test]
async fn a_drained_agent_gets_no_new_tasks_and_a_removed_one_gives_its_tasks_back() {
    // A long backoff keeps the released task visibly queued until the test moves the clock.
    let t = TestApp::spawn_with(|s| s.retry_backoff = Duration::from_secs(30)).await;
    let echo = json!({"kind": "echo", "capabilities": ["shell"]});
    t.register("a2", &["shell"], 5).await;
    for _ in 0..2 {
        t.submit(echo.clone()).await;
        t.claim("a2", 5).await.expect("a2 runs it");
    }
    t.register("a1", &["shell"], 5).await;
    let on_a1 = t.submit(echo.clone()).await;
    let claimed = t.claim("a1", 5).await.expect("the less loaded a1 runs it");
    assert_eq!(claimed["id"], on_a1["id"]);

    // a1 (1 running) would outscore a2 (2 running), but it is draining.
    drain(&t, "a1").await;
    let (status, ack) = t.heartbeat("a1", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["status"], "draining");
    let next = t.submit(echo.clone()).await;
    t.settle().await;
    let stored = t.task(id(&next)).await;
    assert_eq!(stored["agent_id"], "a2");
    let candidates: Vec<&Value> = stored["assignment"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["agent_id"])
        .collect();
    assert_eq!(candidates, ["a2"]);
    assert!(t.claim("a1", 0).await.is_none());
    assert_eq!(
        t.claim("a2", 5).await.expect("a2 runs it")["id"],
        next["id"]
    );

    let (status, body) = TestApp::send(t.request(Method::DELETE, "/api/v1/agents/a1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let released = t.task(id(&on_a1)).await;
    assert_eq!(released["state"], "queued");
    assert_eq!(released["agent_id"], Value::Null);
    assert_eq!(released["attempts"][0]["outcome"], "lost");
    let (status, body) = t.heartbeat("a1", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(agent(&t, "a1").await.0, StatusCode::NOT_FOUND);

    reach_run_after(&t, id(&on_a1)).await;
    let again = t.claim("a2", 5).await.expect("a2 runs the released task");
    assert_eq!(again["id"], on_a1["id"]);
    assert_eq!(again["attempt"], 2);
}

#[tokio::test]
async fn tasks_list_filters_and_pages_newest_first() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let mut all = Vec::new();
    for (kind, cap) in [
        ("echo", "shell"),
        ("build", "gpu"),
        ("echo", "shell"),
        ("build", "gpu"),
        ("echo", "shell"),
    ] {
        let task = t.submit(json!({"kind": kind, "capabilities": [cap]})).await;
        all.push(id(&task).to_owned());
    }
    let running = t.claim("a1", 5).await.expect("the oldest echo");
    assert_eq!(id(&running), all[0]);
    let newest_first =
        |picks: &[usize]| -> Vec<String> { picks.iter().map(|&i| all[i].clone()).collect() };

    assert_eq!(
        ids(&list_tasks(&t, "?state=running").await),
        newest_first(&[0])
    );
    assert_eq!(
        ids(&list_tasks(&t, "?state=queued").await),
        newest_first(&[4, 3, 2, 1])
    );
    assert_eq!(
        ids(&list_tasks(&t, "?kind=build").await),
        newest_first(&[3, 1])
    );
    assert_eq!(
        ids(&list_tasks(&t, "?agent_id=a1").await),
        newest_first(&[0])
    );
    assert_eq!(
        ids(&list_tasks(&t, "?kind=echo&state=queued").await),
        newest_first(&[4, 2])
    );
    assert!(ids(&list_tasks(&t, "?state=failed").await).is_empty());

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_owned(),
        };
        let page = list_tasks(&t, &query).await;
        let page_ids = ids(&page);
        assert!(page_ids.len() <= 2, "{page}");
        seen.extend(page_ids);
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first(&[4, 3, 2, 1, 0]));
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 5);

    // A page that reaches the end exactly says so.
    let exact = list_tasks(&t, "?limit=5").await;
    assert_eq!(ids(&exact).len(), 5);
    assert_eq!(exact["next_cursor"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// Dispatch after a cancel. A finished task is the event that must hand its agent the next one
// (DESIGN: "a finished task ... wakes it"); nothing else happens after it here, so a claim that
// is not answered at once means the dispatcher missed its chance.

#[tokio::test]
async fn a_cancelled_queued_task_does_not_hold_up_the_tasks_behind_it() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let echo = json!({"kind": "echo", "capabilities": ["shell"]});
    t.submit(echo.clone()).await;
    let running = t.claim("a1", 5).await.expect("a1 runs the first task");
    let cancelled = t.submit(echo.clone()).await;
    let next = t.submit(echo.clone()).await;
    t.settle().await;
    let (status, body) = t
        .post(
            &format!("/api/v1/tasks/{}/cancel", id(&cancelled)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");

    let (status, body) = t.complete(&running, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claimed = t.claim("a1", 1).await;
    assert_eq!(
        claimed.map(|c| c["id"].clone()),
        Some(next["id"].clone()),
        "a1 is free and the next task is queued: {}",
        t.task(id(&next)).await
    );
}

#[tokio::test]
async fn a_cancelled_task_waiting_on_a_lock_does_not_hold_up_the_next_one() {
    let t = TestApp::spawn().await;
    t.register("a1", &["ansible"], 10).await;
    let lock = |n: u32| json!({"kind": "deploy", "capabilities": ["ansible"], "lock_key": "site", "payload": {"n": n}});
    t.submit(lock(1)).await;
    let l2 = t.submit(lock(2)).await;
    let l3 = t.submit(lock(3)).await;
    let c1 = t.claim("a1", 5).await.expect("l1 holds the lock");
    let (status, body) = t
        .post(&format!("/api/v1/tasks/{}/cancel", id(&l2)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");

    let (status, body) = t.complete(&c1, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claimed = t.claim("a1", 1).await;
    assert_eq!(
        claimed.map(|c| c["id"].clone()),
        Some(l3["id"].clone()),
        "the lock is free and l3 is next: {}",
        t.task(id(&l3)).await
    );
}

#[tokio::test]
async fn a_drain_outlasts_a_lapse_in_heartbeats() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 2).await;
    drain(&t, "a1").await;
    t.advance(t.app.settings().heartbeat_timeout + Duration::from_secs(1));
    let swept = t.sweep().await;
    assert_eq!(swept.agents_offline, ["a1"]);
    let (_, shown) = agent(&t, "a1").await;
    assert_eq!(shown["status"], "offline");
    // Back from the outage, it is still draining and takes nothing new.
    let (status, ack) = t.heartbeat("a1", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["status"], "draining");
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    assert!(t.claim("a1", 0).await.is_none());
    assert_eq!(t.task(id(&task)).await["state"], "queued");
    // An operator's drain outlasts a registration too; undrain ends it.
    t.register("a1", &["shell"], 2).await;
    t.settle().await;
    assert!(t.claim("a1", 0).await.is_none());
    let (status, undrained) = t.post("/api/v1/agents/a1/undrain", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{undrained}");
    assert_eq!(undrained["status"], "online");
    assert_eq!(
        t.claim("a1", 5).await.expect("online again")["id"],
        task["id"]
    );
}

#[tokio::test]
async fn a_lost_attempt_does_not_use_up_a_retry() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 0}))
        .await;
    let first = t.claim("a1", 5).await.expect("attempt 1");
    // The agent dies holding it: no fault of the task, which runs again elsewhere.
    t.advance(t.app.settings().heartbeat_timeout + Duration::from_secs(1));
    assert_eq!(t.sweep().await.agents_offline, ["a1"]);
    let after = t.task(id(&task)).await;
    assert_eq!(
        after["state"], "queued",
        "a lost attempt spent the only try: {after}"
    );
    assert_eq!(after["attempts"][0]["outcome"], "lost");
    t.register("a2", &["shell"], 1).await;
    t.advance(Duration::from_secs(60));
    t.settle().await;
    let second = t.claim("a2", 5).await.expect("attempt 2");
    assert_eq!(second["id"], first["id"]);
    // A failure of its own is still final with no retries.
    let (status, body) = t.fail(&second, "broken", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed");
}

#[tokio::test]
async fn a_task_that_loses_every_agent_still_ends() {
    let t = TestApp::spawn().await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": 100}))
        .await;
    let mut state = String::new();
    for round in 0..10 {
        let agent = format!("victim-{round}");
        t.register(&agent, &["shell"], 1).await;
        t.advance(Duration::from_secs(3600));
        t.settle().await;
        if t.claim(&agent, 5).await.is_none() {
            break;
        }
        t.advance(t.app.settings().heartbeat_timeout + Duration::from_secs(1));
        t.sweep().await;
        state = t.task(id(&task)).await["state"]
            .as_str()
            .unwrap()
            .to_owned();
        if state == "failed" {
            break;
        }
    }
    assert_eq!(state, "failed", "a task that loses every agent must end");
    let stored = t.task(id(&task)).await;
    let lost = stored["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "lost")
        .count();
    assert_eq!(lost, 6, "{stored}");
}

#[tokio::test]
async fn a_retried_lock_holder_runs_before_the_next_version() {
    let t = TestApp::spawn().await;
    t.register("a1", &["ansible"], 4).await;
    let deploy = |version: &str, priority: i32| {
        json!({"kind": "deploy", "capabilities": ["ansible"], "lock_key": "deploy:media",
               "payload": {"version": version}, "priority": priority, "max_retries": 3})
    };
    let v1 = t.submit(deploy("v1", 0)).await;
    // A later version with a higher priority still waits its turn.
    let v2 = t.submit(deploy("v2", 50)).await;
    let first = t.claim("a1", 5).await.expect("v1 runs");
    assert_eq!(first["id"], v1["id"]);
    let (status, failed) = t.fail(&first, "network blip", true).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "queued");
    // During v1's backoff the key stays v1's: v2 must not deploy and be overwritten later.
    t.settle().await;
    assert!(
        t.claim("a1", 0).await.is_none(),
        "v2 took the lock during v1's backoff"
    );
    t.advance(Duration::from_secs(700));
    t.settle().await;
    let again = t.claim("a1", 5).await.expect("v1 again");
    assert_eq!(again["id"], v1["id"]);
    let (status, _) = t.complete(&again, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let last = t.claim("a1", 5).await.expect("then v2");
    assert_eq!(last["id"], v2["id"]);
}

#[tokio::test]
async fn a_queued_task_says_why_it_waits() {
    let t = TestApp::spawn().await;
    async fn why(t: &TestApp, task: Value) -> String {
        let shown = t.task(task["id"].as_str().unwrap()).await;
        assert_eq!(shown["state"], "queued", "{shown}");
        shown["waiting"].as_str().unwrap_or_default().to_owned()
    }
    let task = t
        .submit(json!({"kind": "render", "capabilities": ["gpu"]}))
        .await;
    let reason = why(&t, task.clone()).await;
    assert!(
        reason.contains("no registered agent has capabilities [gpu]"),
        "{reason}"
    );
    t.register("g1", &["gpu"], 1).await;
    t.settle().await;
    t.claim("g1", 5).await.expect("claimed");
    let second = t
        .submit(json!({"kind": "render", "capabilities": ["gpu"]}))
        .await;
    t.settle().await;
    let reason = why(&t, second.clone()).await;
    assert!(
        reason.contains("every capable agent is busy: g1 (1/1)"),
        "{reason}"
    );
    t.post("/api/v1/agents/g1/drain", json!({})).await;
    let reason = why(&t, second).await;
    assert!(
        reason.contains("no online agent") && reason.contains("g1 (draining)"),
        "{reason}"
    );

    let later = t
        .submit(json!({"kind": "render", "run_after": "2999-01-01T00:00:00Z"}))
        .await;
    assert!(
        why(&t, later)
            .await
            .contains("run_after is 2999-01-01T00:00:00Z")
    );

    t.register("d1", &["deploy"], 4).await;
    let holder = t
        .submit(json!({"kind": "deploy", "capabilities": ["deploy"], "lock_key": "k"}))
        .await;
    let next = t
        .submit(json!({"kind": "deploy", "capabilities": ["deploy"], "lock_key": "k"}))
        .await;
    t.settle().await;
    let reason = why(&t, next).await;
    let holder_id = holder["id"].as_str().unwrap();
    assert!(
        reason.contains(&format!("its lock \"k\" is taken: task {holder_id}")),
        "{reason}"
    );
}
