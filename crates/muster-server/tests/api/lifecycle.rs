//! The task lifecycle over HTTP: submit, dispatch, claim, report, retry, cancel, expiry.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

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
