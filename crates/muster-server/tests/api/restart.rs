//! Restarts judge nobody by the time the server was away: a reboot of the control plane does
//! not take running work from agents that kept working meanwhile.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_restart_after_a_long_outage_takes_no_work_from_healthy_agents() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "deploy", "capabilities": ["shell"], "max_retries": 0}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("claimed");
    let lease = t.app.settings().lease;
    // The box reboots and the server is away for three leases; the agent kept working.
    let t = t.restart_after(lease * 3).await;
    let swept = t.sweep().await;
    assert!(swept.agents_offline.is_empty(), "{swept:?}");
    let id = task["id"].as_str().unwrap();
    let now = t.task(id).await;
    assert_eq!(
        now["state"], "running",
        "the first sweep took the task: {now}"
    );
    // The agent speaks up within its grace, and its report is accepted.
    let running = json!([{"task_id": claimed["id"], "attempt": claimed["attempt"]}]);
    let (status, ack) = t
        .heartbeat(
            "a1",
            json!({"cpu_percent": 1.0, "memory_percent": 1.0, "running": running}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["cancel"], json!([]));
    let (status, done) = t.complete(&claimed, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["state"], "completed");
}

#[tokio::test]
async fn an_agent_that_stays_silent_after_a_restart_loses_its_work_one_lease_later() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "deploy", "capabilities": ["shell"]}))
        .await;
    t.claim("a1", 5).await.expect("claimed");
    let lease = t.app.settings().lease;
    let t = t.restart_after(lease * 3).await;
    t.advance(lease + Duration::from_secs(1));
    t.sweep().await;
    let now = t.task(task["id"].as_str().unwrap()).await;
    assert_eq!(now["state"], "queued", "{now}");
    assert_eq!(now["attempts"][0]["outcome"], "lost");
}
