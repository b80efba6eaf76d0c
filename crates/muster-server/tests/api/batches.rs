//! The batch routes end to end: the long-poll for many tasks (`tasks/claim`), many reports in
//! one request (`reports`), and many submissions in one request (`tasks/batch`), with their
//! refusals.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, secret};
use crate::streams::follow_events;

/// A deadline for waits that must end; only a broken server reaches it.
const BOUND: Duration = Duration::from_secs(30);

fn ids(tasks: &Value) -> Vec<String> {
    tasks
        .as_array()
        .unwrap_or_else(|| panic!("a list of tasks: {tasks}"))
        .iter()
        .map(|t| t["id"].as_str().expect("a task id").to_owned())
        .collect()
}

/// One batch claim; asserts 200 and answers the body.
async fn claim_batch(t: &TestApp, agent_id: &str, wait_s: u64, max: u32) -> Value {
    let (status, body) = t
        .get(&format!(
            "/api/v1/agents/{agent_id}/tasks/claim?wait={wait_s}&max={max}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn report(t: &TestApp, agent_id: &str, reports: Value) -> (StatusCode, Value) {
    t.post(
        &format!("/api/v1/agents/{agent_id}/reports"),
        json!({ "reports": reports }),
    )
    .await
}

/// Asserts a 422 naming `field` at the start of its message.
fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.starts_with(&format!("{field}:")), "{message}");
}

async fn state(t: &TestApp, id: &str) -> String {
    t.task(id).await["state"]
        .as_str()
        .expect("a state")
        .to_owned()
}

#[tokio::test]
async fn a_batch_claim_takes_up_to_max_tasks_each_running_with_its_attempt() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 10).await;
    let mut by_priority = Vec::new();
    for priority in [0, 3, 1, 3, 2] {
        let task = t
            .submit(json!({"kind": "echo", "capabilities": ["shell"], "priority": priority}))
            .await;
        by_priority.push(task["id"].as_str().unwrap().to_owned());
    }
    t.settle().await;
    let mut feed = follow_events(&t, None).await;

    let batch = claim_batch(&t, "nas", 5, 3).await;
    let claimed = ids(&batch["tasks"]);
    assert_eq!(
        claimed,
        vec![
            by_priority[1].clone(),
            by_priority[3].clone(),
            by_priority[4].clone()
        ],
        "the three of highest priority, the older first among equals"
    );
    assert_eq!(batch["cancel"], json!([]));
    for task in batch["tasks"].as_array().unwrap() {
        assert_eq!(task["state"], "running", "{task}");
        assert_eq!(task["attempt"], 1, "{task}");
        assert_eq!(task["agent_id"], "nas", "{task}");
        let stored = t.task(task["id"].as_str().unwrap()).await;
        assert_eq!(stored["state"], "running");
        assert_eq!(stored["attempts"][0]["outcome"], "running", "{stored}");
        assert_eq!(stored["attempts"][0]["agent_id"], "nas", "{stored}");
    }
    // Each claimed task went out on the event feed as its own change.
    let mut unseen: BTreeSet<String> = claimed.iter().cloned().collect();
    while !unseen.is_empty() {
        let event = feed.expect_event().await;
        let data = event.json();
        if event.event == "task" && data["state"] == "running" {
            assert_eq!(data["attempt"], 1, "{data}");
            unseen.remove(data["task_id"].as_str().unwrap());
        }
    }

    // Fewer than asked for: the rest; then nothing, as an empty list.
    let rest = claim_batch(&t, "nas", 0, 100).await;
    assert_eq!(
        ids(&rest["tasks"]),
        vec![by_priority[2].clone(), by_priority[0].clone()]
    );
    let none = claim_batch(&t, "nas", 0, 5).await;
    assert_eq!(none, json!({"tasks": [], "cancel": []}));
    // The single-task route is unchanged beside it.
    assert!(t.claim("nas", 0).await.is_none());
}

#[tokio::test]
async fn a_batch_claim_without_max_claims_one() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 4).await;
    for _ in 0..2 {
        t.submit(json!({"kind": "echo", "capabilities": ["shell"]}))
            .await;
    }
    t.settle().await;
    let (status, body) = t.get("/api/v1/agents/nas/tasks/claim?wait=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn a_batch_claim_refuses_a_bad_max_or_wait_or_a_cross_site_request_and_claims_nothing() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 4).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    for (query, field) in [
        ("max=0", "max"),
        ("max=101", "max"),
        ("max=-1", "max"),
        ("max=many", "max"),
        ("max=2&wait=121", "wait"),
    ] {
        let (status, body) = t
            .get(&format!("/api/v1/agents/nas/tasks/claim?{query}"))
            .await;
        assert_invalid(status, &body, field);
    }
    let (status, body) = t.get("/api/v1/agents/nas/tasks/claim?max=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["message"], "max: must be between 1 and 100",
        "{body}"
    );
    // A claim starts tasks: a browser's cross-site GET is refused like a write.
    let (status, body) = TestApp::send(
        t.request(Method::GET, "/api/v1/agents/nas/tasks/claim?max=2")
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(state(&t, task["id"].as_str().unwrap()).await, "assigned");
    let (status, body) = t.get("/api/v1/agents/ghost/tasks/claim?max=2").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The largest batch is accepted.
    let batch = claim_batch(&t, "nas", 0, 100).await;
    assert_eq!(ids(&batch["tasks"]), vec![task["id"].as_str().unwrap()]);
}

/// Starts a long-poll of `nas` and returns once the server is inside it.
async fn long_poll(
    t: &TestApp,
    path: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (_, before) = t.get("/api/v1/agents/nas").await;
    // Moves time on, so the claim's sign of life shows as a new last_heartbeat_at.
    t.advance(Duration::from_secs(60));
    let poll = tokio::spawn(t.request(Method::GET, path).send());
    tokio::time::timeout(BOUND, async {
        loop {
            let (_, now) = t.get("/api/v1/agents/nas").await;
            if now["last_heartbeat_at"] != before["last_heartbeat_at"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the long-poll reached the server");
    poll
}

#[tokio::test]
async fn a_batch_claim_wakes_when_tasks_are_assigned_while_it_waits() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 8).await;
    let poll = long_poll(&t, "/api/v1/agents/nas/tasks/claim?wait=60&max=8").await;
    assert!(!poll.is_finished(), "the long-poll answered with nothing");

    let (status, submitted) = t
        .post(
            "/api/v1/tasks/batch",
            json!({"tasks": [
                {"kind": "echo", "capabilities": ["shell"]},
                {"kind": "echo", "capabilities": ["shell"]},
                {"kind": "echo", "capabilities": ["shell"]},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{submitted}");
    let resp = poll
        .await
        .expect("poll task")
        .expect("the long-poll answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let batch: Value = resp.json().await.expect("JSON");
    let got = ids(&batch["tasks"]);
    // It answers as soon as one is claimed: the dispatcher may have assigned the others after.
    assert!(
        (1..=3).contains(&got.len()),
        "the waiting claim took the new tasks: {batch}"
    );
    t.settle().await;
    let rest = claim_batch(&t, "nas", 5, 8).await;
    let mut all: Vec<String> = got.into_iter().chain(ids(&rest["tasks"])).collect();
    all.sort();
    let mut expected: Vec<String> = submitted["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task"]["id"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(all, expected, "every task claimed once");
}

#[tokio::test]
async fn a_batch_claim_waiting_answers_at_once_with_a_task_to_stop() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 2).await;
    t.submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    let running = claim_batch(&t, "nas", 5, 2).await;
    let id = ids(&running["tasks"]).remove(0);
    let poll = long_poll(&t, "/api/v1/agents/nas/tasks/claim?wait=60&max=2").await;
    let (status, body) = t
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Well before the poll's own end: only the cancel can answer it in time.
    let resp = tokio::time::timeout(BOUND, poll)
        .await
        .expect("the cancel ended the long-poll")
        .expect("poll task")
        .expect("an answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let batch: Value = resp.json().await.expect("JSON");
    assert_eq!(batch, json!({"tasks": [], "cancel": [id]}));
}

#[tokio::test]
async fn a_batch_of_reports_is_judged_report_by_report() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 10).await;
    for retries in [0, 0, 1, 0, 0] {
        t.submit(json!({"kind": "echo", "capabilities": ["shell"], "max_retries": retries}))
            .await;
    }
    t.settle().await;
    let batch = claim_batch(&t, "nas", 5, 10).await;
    // Equal priorities: claimed in submit order, so the third is the one with a retry.
    let tasks = batch["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 5, "{batch}");
    assert_eq!(tasks[2]["max_retries"], 1, "{batch}");
    let id = |i: usize| tasks[i]["id"].as_str().unwrap().to_owned();
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, body) = report(
        &t,
        "nas",
        json!([
            {"task_id": id(0), "attempt": 1, "outcome": "completed",
             "result": {"ok": 1}, "usage": {"tokens": 3}},
            {"task_id": id(1), "attempt": 2, "outcome": "completed"},
            {"task_id": id(2), "attempt": 1, "outcome": "failed", "error": "flaky"},
            {"task_id": id(3), "attempt": 1, "outcome": "failed", "error": "broken",
             "retryable": false},
            {"task_id": unknown, "attempt": 1, "outcome": "completed"},
            {"task_id": id(4), "attempt": "one", "outcome": "completed"},
            {"task_id": id(4), "attempt": 1, "outcome": "failed"},
            {"task_id": id(4), "attempt": 1, "outcome": "failed", "error": "x".repeat(65_537)},
            {"task_id": id(4), "attempt": 1, "outcome": "completed", "error": "no"},
            {"task_id": "not-a-uuid", "attempt": 1, "outcome": "completed"},
            {"task_id": id(4), "attempt": 1, "outcome": "done"},
            {"task_id": id(4), "attempt": 1, "outcome": "completed", "result": [4]},
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![200, 409, 200, 200, 404, 422, 422, 422, 422, 422, 422, 200],
        "{body}"
    );
    let error = |i: usize| results[i]["error"].as_str().unwrap_or_default().to_owned();
    for i in [0, 2, 3, 11] {
        assert!(results[i].get("error").is_none(), "{}", results[i]);
    }
    assert!(error(1).contains("attempt 2 of task"), "{}", error(1));
    assert!(error(4).contains("not found"), "{}", error(4));
    assert!(error(5).starts_with("attempt: "), "{}", error(5));
    assert_eq!(error(6), "error: a failed report must say what went wrong");
    assert_eq!(error(7), "error: must be at most 65536 characters");
    assert_eq!(error(8), "error: only a failed report carries an error");
    assert!(error(9).starts_with("task_id: "), "{}", error(9));
    assert!(error(10).starts_with("outcome: "), "{}", error(10));
    // Each result names its task, when the report named one that can be read.
    for (i, expected) in [id(0), id(1), id(2), id(3), unknown.clone(), id(4)]
        .iter()
        .enumerate()
    {
        assert_eq!(results[i]["task_id"], expected.as_str(), "{}", results[i]);
    }
    assert!(results[9].get("task_id").is_none(), "{}", results[9]);

    let done = t.task(&id(0)).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], json!({"ok": 1}));
    assert_eq!(done["usage"], json!({"tokens": 3}));
    let stale = t.task(&id(1)).await;
    assert_eq!(
        (stale["state"].as_str(), stale["attempt"].as_u64()),
        (Some("running"), Some(1)),
        "the stale report changed nothing"
    );
    let retried = t.task(&id(2)).await;
    assert_eq!(retried["state"], "queued", "a retry: {retried}");
    assert_eq!(retried["attempts"][0]["outcome"], "failed");
    let failed = t.task(&id(3)).await;
    assert_eq!(
        (failed["state"].as_str(), failed["error"].as_str()),
        (Some("failed"), Some("broken"))
    );
    let last = t.task(&id(4)).await;
    assert_eq!(
        (last["state"].as_str(), &last["result"]),
        (Some("completed"), &json!([4])),
        "the refused reports before it changed nothing"
    );
}

#[tokio::test]
async fn a_report_for_another_agents_task_is_judged_as_the_single_routes_judge_it() {
    // The single routes (`POST /api/v1/tasks/{id}/complete`) name no agent: the attempt number
    // is the fence. The batch route keeps that rule rather than adding one of its own.
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 1).await;
    t.register("pi", &[], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    let claimed = claim_batch(&t, "nas", 5, 1).await;
    assert_eq!(claimed["tasks"][0]["id"], task["id"]);
    let (status, body) = report(
        &t,
        "pi",
        json!([{"task_id": task["id"], "attempt": 1, "outcome": "completed"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], 200, "{body}");
    assert_eq!(state(&t, task["id"].as_str().unwrap()).await, "completed");
}

#[tokio::test]
async fn a_report_batch_past_its_bounds_is_refused_whole_and_changes_nothing() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    claim_batch(&t, "nas", 5, 1).await;
    let valid = json!({"task_id": task["id"], "attempt": 1, "outcome": "completed"});
    let too_many: Vec<Value> = std::iter::repeat_n(valid.clone(), 101).collect();
    let (status, body) = report(&t, "nas", json!(too_many)).await;
    assert_invalid(status, &body, "reports");
    assert_eq!(body["error"]["message"], "reports: at most 100 entries");
    let (status, body) = t
        .post("/api/v1/agents/nas/reports", json!({"reports": 5}))
        .await;
    assert_invalid(status, &body, "reports");
    let (status, body) = t
        .post(
            "/api/v1/agents/nas/reports",
            json!({"reports": [valid], "extra": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = t.post("/api/v1/agents/nas/reports", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // An agent the server does not know is told to register again.
    let (status, body) = report(&t, "ghost", json!([valid])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("register again"),
        "{body}"
    );
    assert_eq!(state(&t, task["id"].as_str().unwrap()).await, "running");

    // An empty batch is a batch.
    let (status, body) = report(&t, "nas", json!([])).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"results": []})));
    // A hundred is the most, and is accepted.
    let hundred: Vec<Value> = std::iter::repeat_n(valid, 100).collect();
    let (status, body) = report(&t, "nas", json!(hundred)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses[0], 200, "the first completes it");
    assert!(statuses[1..].iter().all(|s| *s == 409), "the rest are late");
}

#[tokio::test]
async fn the_batch_routes_need_their_keys() {
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret("admin");
        s.agent_key = secret("agent");
    })
    .await;
    t.register("nas", &["shell"], 1).await;
    let call = |method: Method, path: &str, key: Option<&str>, body: Option<Value>| {
        let mut req = t.client.request(method, t.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        TestApp::send(req)
    };
    let submit = json!({"tasks": [{"kind": "echo", "capabilities": ["shell"]}]});
    for key in [None, Some("wrong")] {
        let (status, body) = call(
            Method::GET,
            "/api/v1/agents/nas/tasks/claim?max=2",
            key,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, body) = call(
            Method::POST,
            "/api/v1/agents/nas/reports",
            key,
            Some(json!({"reports": []})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, body) = call(
            Method::POST,
            "/api/v1/tasks/batch",
            key,
            Some(submit.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // The agent key submits nothing; it claims and reports.
    let (status, body) = call(
        Method::POST,
        "/api/v1/tasks/batch",
        Some("agent"),
        Some(submit.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = t.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tasks"], json!([]), "nothing was stored");
    let (status, body) = call(
        Method::POST,
        "/api/v1/tasks/batch",
        Some("admin"),
        Some(submit),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    t.settle().await;
    let (status, claimed) = call(
        Method::GET,
        "/api/v1/agents/nas/tasks/claim?wait=5&max=2",
        Some("agent"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let task = &claimed["tasks"][0];
    let (status, body) = call(
        Method::POST,
        "/api/v1/agents/nas/reports",
        Some("agent"),
        Some(json!({"reports": [{"task_id": task["id"], "attempt": task["attempt"], "outcome": "completed"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], 200, "{body}");
}

#[tokio::test]
async fn a_bulk_submit_judges_each_task_alone() {
    let t = TestApp::spawn().await;
    let (status, body) = t
        .post(
            "/api/v1/tasks/batch",
            json!({"tasks": [
                {"kind": "echo", "idempotency_key": "k1", "payload": {"n": 1}},
                {"kind": ""},
                {"kind": "echo", "payload": {"n": 2}},
                {"kind": "echo", "priority": "high"},
                {"kind": "echo", "idempotency_key": "k1", "payload": {"n": 3}},
                {"kind": "echo", "bogus": 1},
                {"kind": "echo", "lock_key": "x".repeat(501)},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 422, 201, 422, 200, 422, 422], "{body}");
    let error = |i: usize| results[i]["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(error(1), "kind: must not be empty");
    assert!(error(3).starts_with("priority: "), "{}", error(3));
    assert!(error(5).contains("unknown field `bogus`"), "{}", error(5));
    assert_eq!(error(6), "lock_key: must be at most 500 characters");
    for i in [1, 3, 5, 6] {
        assert!(results[i].get("task").is_none(), "{}", results[i]);
    }
    for i in [0, 2, 4] {
        assert!(results[i].get("error").is_none(), "{}", results[i]);
        assert_eq!(results[i]["task"]["state"], "queued", "{}", results[i]);
    }
    let first = results[0]["task"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        results[4]["task"]["id"], first,
        "a repeated key answers the first task"
    );
    assert_eq!(results[4]["task"]["payload"], json!({"n": 1}));
    let (_, listed) = t.get("/api/v1/tasks").await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2, "{listed}");

    // Idempotency across batches and with the single route.
    let (status, again) = t
        .post(
            "/api/v1/tasks/batch",
            json!({"tasks": [{"kind": "echo", "idempotency_key": "k1"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["results"][0]["status"], 200);
    assert_eq!(again["results"][0]["task"]["id"], first.as_str());
    let (status, single) = t
        .post(
            "/api/v1/tasks",
            json!({"kind": "echo", "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(single["id"], first.as_str());

    // Stored tasks are dispatched like any other.
    t.register("nas", &[], 4).await;
    t.settle().await;
    let batch = claim_batch(&t, "nas", 5, 4).await;
    assert_eq!(batch["tasks"].as_array().unwrap().len(), 2, "{batch}");
}

#[tokio::test]
async fn a_bulk_submit_past_its_bounds_is_refused_whole_and_stores_nothing() {
    let t = TestApp::spawn().await;
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"kind": "echo"})).collect();
    let (status, body) = t
        .post("/api/v1/tasks/batch", json!({"tasks": too_many}))
        .await;
    assert_invalid(status, &body, "tasks");
    assert_eq!(body["error"]["message"], "tasks: at most 1000 entries");
    let (status, body) = t.post("/api/v1/tasks/batch", json!({"task": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = TestApp::send(
        t.request(Method::POST, "/api/v1/tasks/batch")
            .header("content-type", "application/json")
            .body("{\"tasks\": ["),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, listed) = t.get("/api/v1/tasks").await;
    assert_eq!(listed["tasks"], json!([]), "nothing was stored");

    let thousand: Vec<Value> = (0..1000).map(|_| json!({"kind": "echo"})).collect();
    let (status, body) = t
        .post("/api/v1/tasks/batch", json!({"tasks": thousand}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 201),
        "a thousand is the most, and is accepted"
    );
}

#[tokio::test]
async fn the_document_states_the_batch_bounds_the_server_checks() {
    use muster_api::limits::{MAX_CLAIM_BATCH, MAX_REPORT_BATCH, MAX_SUBMIT_BATCH, MAX_WAIT_S};
    let t = TestApp::spawn().await;
    let (status, doc) = t.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let claim = &doc["paths"]["/api/v1/agents/{id}/tasks/claim"]["get"];
    let param = |name: &str| {
        claim["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} parameter: {claim}"))["schema"]
            .clone()
    };
    assert_eq!(param("max")["minimum"], json!(1));
    assert_eq!(param("max")["maximum"], json!(MAX_CLAIM_BATCH));
    assert_eq!(param("wait")["maximum"], json!(MAX_WAIT_S));
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ReportBatch"]["properties"]["reports"]["maxItems"],
        json!(MAX_REPORT_BATCH)
    );
    assert_eq!(
        schemas["SubmitBatch"]["properties"]["tasks"]["maxItems"],
        json!(MAX_SUBMIT_BATCH)
    );
    assert_eq!(
        schemas["ReportOutcome"]["enum"],
        json!(["completed", "failed"])
    );
}
