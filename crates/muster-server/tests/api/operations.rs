//! Operations: retention pruning of finished tasks and their logs.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn finished_tasks_and_their_logs_are_pruned_after_the_retention_period() {
    let t = TestApp::spawn_with(|s| s.retention = Duration::from_secs(7 * 86400)).await;
    t.register("a", &[], 1).await;
    let old = t.submit(json!({"kind": "old"})).await;
    let claimed = t.claim("a", 5).await.expect("claimed");
    let logs = json!({"attempt": 1, "lines": [{"text": "done"}]});
    let (status, _) = t
        .post(
            &format!("/api/v1/tasks/{}/logs", old["id"].as_str().unwrap()),
            logs,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    t.complete(&claimed, json!({})).await;
    let unfinished = t
        .submit(json!({"kind": "waiting", "capabilities": ["nobody"]}))
        .await;

    // Nothing is pruned inside the retention period.
    t.advance(Duration::from_secs(6 * 86400));
    let pruned = muster_server::sweeper::prune_once(&t.app).await.unwrap();
    assert_eq!(pruned.tasks, 0);

    t.advance(Duration::from_secs(2 * 86400));
    let pruned = muster_server::sweeper::prune_once(&t.app).await.unwrap();
    assert_eq!((pruned.tasks, pruned.log_lines), (1, 1));
    let (status, _) = t
        .get(&format!("/api/v1/tasks/{}", old["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A task that has not finished is never pruned, however old.
    let (status, body) = t
        .get(&format!(
            "/api/v1/tasks/{}",
            unfinished["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
