//! The hand-over to a waiting long-poll, end to end: a task submitted while its agent waits is
//! started in the assignment's own update and answers the long-poll; a long-poll that hung up
//! leaves nothing running.

use std::time::Duration;

use muster_api::Task;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::helpers::{TestApp, metrics_text, sample};

const BOUND: Duration = Duration::from_secs(30);

/// Waits until `/metrics` shows `series` at `value`, failing loudly with `what` after
/// [`BOUND`].
async fn until_metric(t: &TestApp, series: &str, value: f64, what: &str) {
    tokio::time::timeout(BOUND, async {
        loop {
            if sample(&metrics_text(t).await, series) == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {series} never reached {value}"));
}

#[tokio::test]
async fn a_task_submitted_while_its_agent_waits_answers_the_long_poll_from_its_assignment() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 4).await;
    let poll = tokio::spawn(
        t.request(Method::GET, "/api/v1/agents/nas/tasks/claim?wait=60&max=4")
            .send(),
    );
    until_metric(&t, "muster_long_polls_waiting", 1.0, "the long-poll waits").await;

    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let resp = tokio::time::timeout(BOUND, poll)
        .await
        .expect("the submit answered the long-poll")
        .expect("poll task")
        .expect("an answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let batch: Value = resp.json().await.expect("JSON");
    let got = &batch["tasks"][0];
    assert_eq!(got["id"], task["id"], "{batch}");
    assert_eq!(got["state"], "running");
    assert_eq!(got["attempt"], 1);
    assert_eq!(got["agent_id"], "nas");

    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, r#"muster_task_starts_total{how="handed_over"}"#),
        Some(1.0),
        "started in the assignment's update, not by a claim of its own:\n{text}"
    );
    assert_eq!(
        sample(&text, r#"muster_task_starts_total{how="claimed"}"#),
        None,
        "{text}"
    );
    assert_eq!(sample(&text, "muster_long_polls_waiting"), Some(0.0));
    // The history reads as any claim's: one running attempt, then the report ends it.
    let stored = t.task(task["id"].as_str().unwrap()).await;
    assert_eq!(stored["attempts"].as_array().unwrap().len(), 1, "{stored}");
    assert_eq!(stored["attempts"][0]["outcome"], "running");
    let (status, done) = t.complete(got, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
}

#[tokio::test]
async fn a_long_poll_that_hung_up_leaves_its_task_assigned_for_the_next_one() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 1).await;
    let poll = tokio::spawn(
        t.request(Method::GET, "/api/v1/agents/nas/tasks/next?wait=60")
            .send(),
    );
    until_metric(&t, "muster_long_polls_waiting", 1.0, "the long-poll waits").await;
    // The agent hangs up: dropping the request closes its connection.
    poll.abort();
    let _ = poll.await;
    until_metric(
        &t,
        "muster_long_polls_waiting",
        0.0,
        "the server noticed the long-poll hang up",
    )
    .await;

    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    let id = task["id"].as_str().unwrap();
    let stored = t.task(id).await;
    assert_eq!(
        stored["state"], "assigned",
        "not started for no one: {stored}"
    );
    assert_eq!(stored["attempt"], 0);
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, r#"muster_task_starts_total{how="put_back"}"#),
        None,
        "a waiter whose long-poll is gone is passed over, not started for:\n{text}"
    );
    let claimed = t
        .claim("nas", 5)
        .await
        .expect("the next long-poll takes it");
    assert_eq!(claimed["id"], task["id"]);
    assert_eq!(claimed["attempt"], 1, "no attempt was spent");
}

#[tokio::test]
async fn tasks_started_for_a_long_poll_that_is_gone_are_assigned_again() {
    // The narrow case: the long-poll hangs up after its claim committed, before the answer
    // went out. The hand-over finds no one and puts the task back.
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 2).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    let running = t.claim("nas", 5).await.expect("claimed");
    let started: Task = serde_json::from_value(running).expect("a task");
    assert_eq!(started.attempt, 1);

    let (tx, rx) = oneshot::channel::<Vec<Task>>();
    drop(rx);
    muster_server::handoff::hand_over(
        tx,
        vec![started],
        |tasks| tasks,
        t.app.store.as_ref(),
        &t.app.changes,
        t.app.now_ms(),
    )
    .await;

    let id = task["id"].as_str().unwrap();
    let stored = t.task(id).await;
    assert_eq!(stored["state"], "assigned", "{stored}");
    assert_eq!(stored["attempt"], 0);
    assert!(
        stored["attempts"].as_array().is_none_or(Vec::is_empty),
        "the undone attempt left no record: {stored}"
    );
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, r#"muster_task_starts_total{how="put_back"}"#),
        Some(1.0),
        "{text}"
    );
    // The change woke the agent: a waiting long-poll takes the task at once.
    let again = t.claim("nas", 5).await.expect("claimed again");
    assert_eq!(
        (again["id"].clone(), again["attempt"].clone()),
        (task["id"].clone(), json!(1))
    );
}
