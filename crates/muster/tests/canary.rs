//! A canary end to end, with real processes: `muster serve` reads a config with a canary on a
//! seconds cron, sends its signed requests to its own hook over loopback, and a real
//! `muster agent` answers the tasks with its built-in `canary` executor; the `canary.passed`
//! messages reach a local webhook standing in for the channel. Then the agent is stopped
//! (SIGTERM, as an init system stops it): the next run fails at the agent leg and
//! `canary.failed` reaches the webhook the notify rule names.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{AgentProcess, Served};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const HOOK_SECRET: &str = "whsec-canary-e2e-0123456789";

/// `(path, X-Muster-Event, body)` of each webhook delivery.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

async fn webhook(
    State(seen): State<Seen>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    let event = headers
        .get("x-muster-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push((path, event, body));
    StatusCode::OK
}

/// Serves the stand-in webhook; its base URL.
async fn serve_webhook(seen: Seen) -> String {
    common::serve(
        Router::new()
            .route("/{path}", post(webhook))
            .with_state(seen),
    )
    .await
}

fn server_config(dir: &Path, hook: &str) -> PathBuf {
    let path = dir.join("muster.toml");
    let config = format!(
        r#"
[[notify.channels]]
name = "canary-hook"
kind = "webhook"
url = "{hook}/canary"
secret_env = "HOOK_SECRET"

[[notify.channels]]
name = "alerts"
kind = "webhook"
url = "{hook}/alerts"
secret_env = "HOOK_SECRET"

[[notify.rules]]
on = ["canary.failed"]
to = ["alerts"]
quiet = "0s"

[[canaries]]
name = "path"
cron = "*/3 * * * * *"
within = "10s"
channel = "canary-hook"
"#
    );
    std::fs::write(&path, config).unwrap();
    path
}

fn agent_config(dir: &Path) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, "[agent]\nid = \"nas\"\nheartbeat_s = 1\n").unwrap();
    path
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The last verdict of canary `path`, once `done` holds for it.
async fn last_run(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    common::until(DEADLINE, what, || async {
        let list = get_json(client, format!("{base}/api/v1/canaries")).await;
        let last = list["canaries"][0]["last"].clone();
        done(&last).then_some(last)
    })
    .await
}

async fn metric(client: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_passes_through_a_real_agent_and_fails_and_notifies_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let hook = serve_webhook(seen.clone()).await;
    let config = server_config(dir.path(), &hook);
    let served = Served::start(
        &dir.path().join("m.db"),
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("HOOK_SECRET", HOOK_SECRET),
        ],
    );
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let mut agent = AgentProcess::start(&base, &agent_config(dir.path()));

    let passed = last_run(&client, &base, "a run passes", |last| {
        last["outcome"] == "passed"
    })
    .await;
    assert_eq!(passed["trigger"], "cron", "{passed:#}");
    assert_eq!(passed["agent_id"], "nas");
    assert!(passed["delivered_at"].is_string(), "{passed:#}");
    let task = get_json(
        &client,
        format!(
            "{base}/api/v1/tasks/{}",
            passed["task_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(task["kind"], "canary");
    assert_eq!(task["result"]["agent"], "nas", "{task:#}");
    assert_eq!(task["result"]["nonce"], task["payload"]["nonce"]);
    common::until(DEADLINE, "canary.passed reaches its channel", || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(path, event, _)| path == "canary" && event == "canary.passed")
            .then_some(())
    })
    .await;
    assert_eq!(
        metric(&client, &base, r#"muster_canary_success{canary="path"}"#).await,
        Some(1.0)
    );

    // The agent goes away: a later run finds no one to take its task.
    agent.signal("-TERM");
    assert!(
        agent.wait_exit(DEADLINE).success(),
        "the agent leaves cleanly"
    );
    let failed = last_run(&client, &base, "a run fails", |last| {
        last["outcome"] == "failed"
    })
    .await;
    assert_eq!(failed["leg"], "agent", "{failed:#}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .starts_with("no agent took the task within 10s"),
        "{failed:#}"
    );
    let body = common::until(
        DEADLINE,
        "canary.failed reaches the rule's channel",
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .find(|(path, event, _)| path == "alerts" && event == "canary.failed")
                .map(|(_, _, body)| body.clone())
        },
    )
    .await;
    assert_eq!(body["subject"], "canary:path");
    assert_eq!(
        metric(&client, &base, r#"muster_canary_success{canary="path"}"#).await,
        Some(0.0)
    );
    assert!(served.terminate().success(), "muster serve stops cleanly");
}
