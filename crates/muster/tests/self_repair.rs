//! Self-repair end to end, with real processes: a `muster serve` reading its config file and a
//! `muster agent` whose allow-list runs `docker restart {container}`, the `docker` on its PATH
//! a stand-in script that records its arguments and brings the service back. Local HTTP
//! servers stand in for the model (Ollama's wire format), the notifier's webhook and the
//! probed service. An Uptime Kuma down alert goes in; the incident must come out resolved,
//! with the notices sent and its whole story in an audit log whose chain verifies.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use common::{AgentProcess, Served, serve};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const KUMA_TOKEN: &str = "kuma-e2e-token-0123456789";
const HOOK_SECRET: &str = "whsec-e2e-0123456789abcdef";

/// What the stand-ins saw.
#[derive(Default)]
struct Seen {
    /// Bodies the model was sent.
    asked: Vec<Value>,
    /// `(X-Muster-Event, body)` of each webhook delivery.
    notices: Vec<(String, Value)>,
    /// Statuses the probe answered.
    probes: Vec<u16>,
}

type Shared = Arc<Mutex<Seen>>;

/// Ollama's `/api/chat` answer: the model calls `restart_container` for jellyfin.
async fn model(State(seen): State<Shared>, axum::Json(body): axum::Json<Value>) -> String {
    seen.lock().unwrap().asked.push(body);
    json!({
        "model": "qwen2.5:7b",
        "created_at": "2026-11-28T10:00:01.5Z",
        "message": {
            "role": "assistant",
            "content": "Jellyfin refuses connections; restarting its container should bring it back.",
            "tool_calls": [{"function": {"name": "restart_container",
                                          "arguments": {"container": "jellyfin"}}}]
        },
        "done_reason": "stop",
        "done": true,
        "total_duration": 5_191_566_416u64,
        "prompt_eval_count": 640,
        "prompt_eval_duration": 383_809_000,
        "eval_count": 42,
        "eval_duration": 799_921_000,
    })
    .to_string()
}

async fn webhook(
    State(seen): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    let event = headers
        .get("x-muster-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().notices.push((event, body));
    StatusCode::OK
}

/// The service: down until the stand-in `docker` has restarted it (written its marker file).
async fn health(State((seen, marker)): State<(Shared, PathBuf)>) -> StatusCode {
    let status = if marker.exists() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    seen.lock().unwrap().probes.push(status.as_u16());
    status
}

fn server_config(dir: &Path, llm: &str, hook: &str, probe: &str) -> PathBuf {
    let path = dir.join("muster.toml");
    let config = format!(
        r#"
[[llm.providers]]
name = "basement"
api = "ollama"
url = "{llm}"
model = "qwen2.5:7b"
max_retries = 0

[[alerts.sources]]
name = "kuma"
kind = "uptime-kuma"
token_env = "KUMA_TOKEN"

[[notify.channels]]
name = "hook"
kind = "webhook"
url = "{hook}/hook"
secret_env = "HOOK_SECRET"

[[notify.rules]]
on = ["incident.*"]
to = ["hook"]
quiet = "0s"

[[actions]]
name = "restart_container"
description = "Restart a Docker container"
params = {{ container = "^[a-z0-9][a-z0-9_.-]{{0,62}}$" }}
capability = "docker"

[repair]
cooldown = "0s"
max_per_hour = 3

[[repair.targets]]
name = "jellyfin"
monitor = "jellyfin"
provider = "basement"
actions = ["restart_container"]
verify = {{ http = "{probe}/health", status = 200, within = "30s" }}
"#
    );
    std::fs::write(&path, config).unwrap();
    path
}

fn agent_config(dir: &Path) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        r#"
[agent]
id = "nas"
heartbeat_s = 1

[[actions]]
name = "restart_container"
argv = ["docker", "restart", "{container}"]
params = { container = "^[a-z0-9][a-z0-9_.-]{0,62}$" }
capability = "docker"
"#,
    )
    .unwrap();
    path
}

/// A `docker` that records its arguments, marks the service healthy and answers as
/// `docker restart` does (the container's name).
fn stand_in_docker(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("docker");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\ntouch '{marker}'\necho \"$2\"\n",
            log = dir.join("docker.log").display(),
            marker = dir.join("healthy").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kuma_alert_is_repaired_by_a_real_agent_verified_notified_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Shared = Arc::default();
    let llm = serve(
        Router::new()
            .route("/api/chat", post(model))
            .with_state(seen.clone()),
    )
    .await;
    let hook = serve(
        Router::new()
            .route("/hook", post(webhook))
            .with_state(seen.clone()),
    )
    .await;
    let probe = serve(
        Router::new()
            .route("/health", get(health))
            .with_state((seen.clone(), dir.path().join("healthy"))),
    )
    .await;

    let config = server_config(dir.path(), &llm, &hook, &probe);
    let db = dir.path().join("m.db");
    let served = Served::start(
        &db,
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("KUMA_TOKEN", KUMA_TOKEN),
            ("HOOK_SECRET", HOOK_SECRET),
        ],
    );
    let base = served.base.clone();
    let client = reqwest::Client::new();

    let bin = stand_in_docker(dir.path());
    let mut path = OsString::from(bin.as_os_str());
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    let _agent = AgentProcess::start_with_env(&base, &agent_config(dir.path()), &[("PATH", &path)]);
    common::until(DEADLINE, "the agent registers with docker", || async {
        let agent = get_json(&client, format!("{base}/api/v1/agents/nas")).await;
        agent["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "docker"))
            .then_some(())
    })
    .await;

    // Uptime Kuma: jellyfin is down.
    let alert = json!({
        "heartbeat": {"monitorID": 1, "status": 0, "msg": "connect ECONNREFUSED 10.0.0.5:8096",
                      "time": "2026-11-28 10:00:00.123", "ping": null, "important": true,
                      "duration": 60},
        "monitor": {"id": 1, "name": "jellyfin", "type": "http",
                    "url": "http://jellyfin.lan:8096/health", "hostname": null, "port": null,
                    "interval": 60, "tags": [], "notificationIDList": {"1": true}},
        "msg": "[jellyfin] [🔴 Down] connect ECONNREFUSED 10.0.0.5:8096"
    });
    let answer = client
        .post(format!("{base}/hooks/alerts/kuma"))
        .bearer_auth(KUMA_TOKEN)
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["message"], "1 opened", "{answer}");
    let id = answer["incidents"][0].as_str().unwrap().to_owned();

    let incident = common::until(DEADLINE, "the incident is resolved", || async {
        let incident = get_json(&client, format!("{base}/api/v1/incidents/{id}")).await;
        assert!(
            incident["state"] != "escalated",
            "escalated instead: {incident:#}"
        );
        (incident["state"] == "resolved").then_some(incident)
    })
    .await;

    // The real agent ran the stand-in docker with the allow-listed argv.
    let ran = std::fs::read_to_string(dir.path().join("docker.log")).unwrap();
    assert_eq!(ran, "restart jellyfin\n");
    let task_id = incident["task_id"].as_str().unwrap();
    let task = get_json(&client, format!("{base}/api/v1/tasks/{task_id}")).await;
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["agent_id"], "nas");
    assert_eq!(task["kind"], "action");
    assert_eq!(task["result"]["action"], "restart_container", "{task}");
    let logs = get_json(&client, format!("{base}/api/v1/tasks/{task_id}/logs")).await;
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"] == "jellyfin"),
        "{logs}"
    );

    assert_eq!(incident["choice"]["by"], "model");
    assert_eq!(incident["choice"]["params"]["container"], "jellyfin");
    assert!(
        incident["reason"]
            .as_str()
            .unwrap()
            .contains("answered 200"),
        "{incident}"
    );
    let story: Vec<&str> = incident["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        story,
        [
            "opened",
            "deciding",
            "decided",
            "repair_started",
            "repair_ended",
            "verified"
        ]
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.asked.len(), 1, "the model was asked once");
        let tools: Vec<&str> = seen.asked[0]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(tools, ["restart_container"]);
        assert_eq!(
            seen.probes.last(),
            Some(&200),
            "the probe saw it back: {:?}",
            seen.probes
        );
    }

    // The notices reached the webhook.
    let subject = format!("incident:{id}");
    let events = common::until(
        DEADLINE,
        "incident.opened and incident.resolved delivered",
        || async {
            let seen = seen.lock().unwrap();
            let events: Vec<String> = seen
                .notices
                .iter()
                .filter(|(_, body)| body["subject"] == subject)
                .map(|(event, _)| event.clone())
                .collect();
            events
                .iter()
                .any(|e| e == "incident.resolved")
                .then_some(events)
        },
    )
    .await;
    assert_eq!(events, ["incident.opened", "incident.resolved"]);

    // The audit log tells the same story, and its chain holds.
    let actions = common::until(DEADLINE, "the incident's audit records", || async {
        let page = get_json(&client, format!("{base}/api/v1/audit?limit=1000")).await;
        let actions: Vec<String> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["subject"] == subject)
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect();
        (actions.len() >= 6).then_some(actions)
    })
    .await;
    assert_eq!(
        actions,
        [
            "incident.opened",
            "incident.deciding",
            "incident.decided",
            "incident.repair_started",
            "incident.repair_ended",
            "incident.verified"
        ]
    );
    let usage = get_json(
        &client,
        format!("{base}/api/v1/llm/usage?group_by=workflow"),
    )
    .await;
    assert_eq!(usage["rows"][0]["workflow"], "repair", "{usage}");
    assert_eq!(usage["rows"][0]["input_tokens"], 640);
    assert_eq!(usage["rows"][0]["output_tokens"], 42);

    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .output()
        .expect("muster audit verify runs");
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(said.contains("audit chain ok"), "{said}");
    assert!(served.terminate().success(), "muster serve stops cleanly");
}
