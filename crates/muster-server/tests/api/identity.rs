//! Agent identity: a new process is known at registration by its `instance_id` and its
//! predecessor's tasks come back at once; drains are durable, the operator's, or the agent's
//! own for the process that made it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

async fn register_instance(t: &TestApp, agent_id: &str, instance_id: &str) -> Value {
    let (status, body) = t
        .post(
            "/api/v1/agents/register",
            json!({"agent_id": agent_id, "capabilities": ["shell"], "max_concurrency": 2,
                   "instance_id": instance_id}),
        )
        .await;
    assert!(status.is_success(), "register: {status} {body}");
    body
}

fn id(task: &Value) -> &str {
    task["id"].as_str().expect("task id")
}

#[tokio::test]
async fn a_new_process_gets_its_predecessors_tasks_back_at_once() {
    let t = TestApp::spawn().await;
    register_instance(&t, "a1", "first").await;
    let running = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("claimed");
    assert_eq!(claimed["id"], running["id"]);
    // The same process registering again (after a 404, say) keeps its task.
    register_instance(&t, "a1", "first").await;
    assert_eq!(t.task(id(&running)).await["state"], "running");
    // A new process: the old one's attempt is lost now, not after the heartbeat timeout.
    register_instance(&t, "a1", "second").await;
    let task = t.task(id(&running)).await;
    assert_eq!(task["state"], "queued", "{task}");
    assert_eq!(task["attempts"][0]["outcome"], "lost");
    // The old process's late report is refused.
    let (status, reply) = t.complete(&claimed, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    let shown = t.get("/api/v1/agents/a1").await.1;
    assert_eq!(shown["instance_id"], "second");
}

#[tokio::test]
async fn a_drain_survives_a_lapse_and_a_restart() {
    let t = TestApp::spawn().await;
    register_instance(&t, "a1", "p1").await;
    let (status, drained) = t.post("/api/v1/agents/a1/drain", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{drained}");
    assert_eq!(drained["drained_by"], "operator");
    t.advance(t.app.settings().heartbeat_timeout + Duration::from_secs(1));
    assert_eq!(t.sweep().await.agents_offline, ["a1"]);
    let dir = t.stop().await;

    let t = TestApp::spawn_in(dir, |_| {}).await;
    let (status, ack) = t
        .heartbeat("a1", json!({"cpu_percent": 1.0, "memory_percent": 1.0}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["status"], "draining", "the drain was forgotten: {ack}");
    // Even a new process of the agent stays drained: the operator drained it, not the agent.
    let agent = register_instance(&t, "a1", "p2").await;
    assert_eq!(agent["status"], "draining", "{agent}");
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    assert!(t.claim("a1", 0).await.is_none());
    assert_eq!(t.task(id(&task)).await["state"], "queued");
}

#[tokio::test]
async fn an_agents_own_drain_ends_with_its_process() {
    let t = TestApp::spawn().await;
    register_instance(&t, "a1", "p1").await;
    let (status, drained) = t
        .post("/api/v1/agents/a1/drain", json!({"instance_id": "p1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{drained}");
    assert_eq!(drained["drained_by"], "agent");
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    assert!(
        t.claim("a1", 0).await.is_none(),
        "a draining agent took work"
    );
    // Its next process starts fresh.
    let agent = register_instance(&t, "a1", "p2").await;
    assert_eq!(agent["status"], "online", "{agent}");
    assert_eq!(
        t.claim("a1", 5).await.expect("online again")["id"],
        task["id"]
    );
    // An agent's drain never overrides the operator's.
    let (status, _) = t.post("/api/v1/agents/a1/drain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = t
        .post("/api/v1/agents/a1/drain", json!({"instance_id": "p2"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["drained_by"], "operator");
    register_instance(&t, "a1", "p3").await;
    assert_eq!(t.get("/api/v1/agents/a1").await.1["status"], "draining");
}

#[tokio::test]
async fn a_bad_instance_id_is_refused_and_changes_nothing() {
    let t = TestApp::spawn().await;
    let (status, reply) = t
        .post(
            "/api/v1/agents/register",
            json!({"agent_id": "a1", "instance_id": "x".repeat(201)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("instance_id"),
        "{reply}"
    );
    let (status, _) = t.get("/api/v1/agents/a1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_kinds_an_agent_handles_are_bounded_and_named_when_wrong() {
    let t = TestApp::spawn().await;
    for (kinds, field) in [
        (json!(["ok", ""]), "kinds[1]"),
        (json!(["x".repeat(201)]), "kinds[0]"),
        (
            json!((0..101).map(|i| i.to_string()).collect::<Vec<_>>()),
            "kinds",
        ),
    ] {
        let (status, reply) = t
            .post(
                "/api/v1/agents/register",
                json!({"agent_id": "a1", "kinds": kinds}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{message}");
    }
    let (status, _) = t.get("/api/v1/agents/a1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
