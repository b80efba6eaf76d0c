//! The real `muster` binary, killed with SIGKILL under load and restarted on the same file:
//! every task whose submit was acknowledged is still there, every report acknowledged in a
//! batch is still applied, and each task still reaches a final state.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Served;
use serde_json::{Value, json};

/// Waits until `n` of `what` were acknowledged; fails loudly if the load stalls first.
async fn acknowledged<T>(acked: &Mutex<Vec<T>>, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let count = acked.lock().unwrap().len();
        if count >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {count} {what} acknowledged in 60 s, expected {n}: the load stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("muster.db");
    let client = reqwest::Client::new();
    let served = Served::start(&db, &[]);
    let base = served.base.clone();

    // An agent takes some tasks so that running and assigned tasks are caught by the kill too.
    let register = json!({"agent_id": "worker", "host": "h", "port": 1, "capabilities": [], "mcp_servers": [], "max_concurrency": 4});
    let r = client
        .post(format!("{base}/api/v1/agents/register"))
        .json(&register)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut submitters = Vec::new();
    for worker in 0..8 {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        submitters.push(tokio::spawn(async move {
            for n in 0..10_000 {
                let body = json!({"kind": "crash-test", "payload": {"worker": worker, "n": n}});
                let Ok(resp) = client
                    .post(format!("{base}/api/v1/tasks"))
                    .json(&body)
                    .send()
                    .await
                else {
                    return; // the server died under us: this submit was never acknowledged
                };
                if resp.status() != reqwest::StatusCode::CREATED {
                    return;
                }
                let Ok(task) = resp.json::<Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(task["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    let claimer = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            while let Ok(resp) = client
                .get(format!("{base}/api/v1/agents/worker/tasks/next?wait=1"))
                .send()
                .await
            {
                if resp.status() == reqwest::StatusCode::OK {
                    let Ok(task) = resp.json::<Value>().await else {
                        return;
                    };
                    let url = format!(
                        "{base}/api/v1/tasks/{}/complete",
                        task["id"].as_str().unwrap()
                    );
                    let _ = client
                        .post(url)
                        .json(&json!({"attempt": task["attempt"], "result": {}}))
                        .send()
                        .await;
                }
            }
        })
    };
    // Kill mid-load, once a good number of submits were acknowledged.
    acknowledged(&acked, 500, "submits").await;
    served.kill();
    for s in submitters {
        s.await.unwrap();
    }
    claimer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);

    // Restart with short timings so tasks caught running are rescued quickly.
    let served = Served::start(
        &db,
        &[
            ("LEASE", "1s"),
            ("HEARTBEAT_TIMEOUT", "1s"),
            ("SWEEP_INTERVAL", "100ms"),
            ("ASSIGN_TIMEOUT", "1s"),
        ],
    );
    let base = served.base.clone();
    for id in &acked {
        let resp = client
            .get(format!("{base}/api/v1/tasks/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            reqwest::StatusCode::OK,
            "acknowledged task {id} was lost"
        );
    }

    // Every acknowledged task still reaches a final state.
    let register = json!({"agent_id": "after", "host": "h", "port": 1, "capabilities": [], "mcp_servers": [], "max_concurrency": 16});
    client
        .post(format!("{base}/api/v1/agents/register"))
        .json(&register)
        .send()
        .await
        .unwrap();
    let mut remaining = acked.len();
    let mut idle_rounds = 0;
    while remaining > 0 && idle_rounds < 30 {
        let resp = client
            .get(format!("{base}/api/v1/agents/after/tasks/next?wait=1"))
            .send()
            .await
            .unwrap();
        if resp.status() != reqwest::StatusCode::OK {
            idle_rounds += 1;
            let _ = client
                .post(format!("{base}/api/v1/agents/after/heartbeat"))
                .json(&json!({}))
                .send()
                .await;
            remaining = count_unfinished(&client, &base).await;
            continue;
        }
        let task: Value = resp.json().await.unwrap();
        let url = format!(
            "{base}/api/v1/tasks/{}/complete",
            task["id"].as_str().unwrap()
        );
        let r = client
            .post(url)
            .json(&json!({"attempt": task["attempt"], "result": {}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert_eq!(
        count_unfinished(&client, &base).await,
        0,
        "some tasks never finished after the restart"
    );
    for id in &acked {
        let task: Value = client
            .get(format!("{base}/api/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(task["state"], "completed", "{task}");
    }
    drop(served);
}

/// What a batch-reporting agent does with an attempt: complete it, fail it for good, or (for
/// `flaky` tasks) fail the first attempt as retryable and complete the next.
fn report_for(task: &Value, agent: &str) -> Value {
    let attempt = task["attempt"].as_u64().unwrap();
    let id = task["id"].clone();
    match task["kind"].as_str().unwrap() {
        "doomed" => json!({"task_id": id, "attempt": attempt, "outcome": "failed",
                           "error": format!("doomed by {agent}"), "retryable": false}),
        "flaky" if attempt == 1 => json!({"task_id": id, "attempt": attempt, "outcome": "failed",
                                          "error": format!("flaky at {attempt}"), "retryable": true}),
        _ => json!({"task_id": id, "attempt": attempt, "outcome": "completed",
                    "result": {"by": agent, "attempt": attempt}}),
    }
}

/// Claims in batches and reports in batches until the server stops answering; records every
/// report the server answered 200 for, with the report itself.
async fn batch_agent(
    client: reqwest::Client,
    base: String,
    agent: String,
    acked: Arc<Mutex<Vec<Value>>>,
) {
    let register =
        json!({"agent_id": agent, "host": "h", "capabilities": [], "max_concurrency": 32});
    let Ok(r) = client
        .post(format!("{base}/api/v1/agents/register"))
        .json(&register)
        .send()
        .await
    else {
        return;
    };
    assert!(r.status().is_success());
    loop {
        let Ok(resp) = client
            .get(format!(
                "{base}/api/v1/agents/{agent}/tasks/claim?wait=1&max=32"
            ))
            .send()
            .await
        else {
            return;
        };
        let Ok(claimed) = resp.json::<Value>().await else {
            return;
        };
        let tasks = claimed["tasks"].as_array().cloned().unwrap_or_default();
        if tasks.is_empty() {
            continue;
        }
        let reports: Vec<Value> = tasks.iter().map(|t| report_for(t, &agent)).collect();
        let Ok(resp) = client
            .post(format!("{base}/api/v1/agents/{agent}/reports"))
            .json(&json!({"reports": reports}))
            .send()
            .await
        else {
            return; // cut off: these reports were never acknowledged
        };
        if resp.status() != reqwest::StatusCode::OK {
            return;
        }
        let Ok(answer) = resp.json::<Value>().await else {
            return;
        };
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), reports.len(), "{answer}");
        let mut acked = acked.lock().unwrap();
        for (report, result) in reports.into_iter().zip(results) {
            // Nothing else reports these tasks before the kill: every report is current.
            assert_eq!(result["status"], 200, "{result}");
            acked.push(report);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_agents_send_batch_reports_loses_no_acknowledged_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("muster.db");
    let client = reqwest::Client::new();
    // Retries come due at once, so flaky tasks run their second attempt under the same load.
    let fast = [("RETRY_BACKOFF", "10ms"), ("RETRY_BACKOFF_MAX", "10ms")];
    let served = Served::start(&db, &fast);
    let base = served.base.clone();

    // Every task is submitted, in bulk, before the agents start.
    let mut submitted: Vec<String> = Vec::new();
    for batch in 0..6 {
        let tasks: Vec<Value> = (0..500)
            .map(|n| {
                let kind = ["plain", "doomed", "flaky"][n % 3];
                json!({"kind": kind, "payload": {"batch": batch, "n": n}, "max_retries": 1})
            })
            .collect();
        let answer: Value = client
            .post(format!("{base}/api/v1/tasks/batch"))
            .json(&json!({ "tasks": tasks }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for result in answer["results"].as_array().unwrap() {
            assert_eq!(result["status"], 201, "{result}");
            submitted.push(result["task"]["id"].as_str().unwrap().to_owned());
        }
    }

    let acked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let agents: Vec<_> = (0..4)
        .map(|n| {
            tokio::spawn(batch_agent(
                client.clone(),
                base.clone(),
                format!("batcher-{n}"),
                acked.clone(),
            ))
        })
        .collect();
    // Kill mid-load, once a good number of reports were acknowledged.
    acknowledged(&acked, 600, "reports").await;
    served.kill();
    for agent in agents {
        agent.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 600);
    assert!(
        acked.len() < submitted.len() + submitted.len() / 3,
        "the kill came after the load was over"
    );

    let served = Served::start(
        &db,
        &[
            ("LEASE", "1s"),
            ("HEARTBEAT_TIMEOUT", "1s"),
            ("SWEEP_INTERVAL", "100ms"),
            ("ASSIGN_TIMEOUT", "1s"),
            ("RETRY_BACKOFF", "10ms"),
            ("RETRY_BACKOFF_MAX", "10ms"),
        ],
    );
    let base = served.base.clone();
    // Every acknowledged report is still applied.
    for report in &acked {
        let id = report["task_id"].as_str().unwrap();
        let task: Value = client
            .get(format!("{base}/api/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let attempt = report["attempt"].as_u64().unwrap() as usize;
        let record = &task["attempts"][attempt - 1];
        match (report["outcome"].as_str(), report["retryable"].as_bool()) {
            (Some("completed"), _) => {
                assert_eq!(task["state"], "completed", "lost: {report} {task}");
                assert_eq!(task["result"], report["result"], "{task}");
                assert_eq!(record["outcome"], "completed", "{task}");
            }
            (Some("failed"), Some(false)) => {
                assert_eq!(task["state"], "failed", "lost: {report} {task}");
                assert_eq!(task["error"], report["error"], "{task}");
            }
            _ => {
                // A retryable failure: its attempt ended failed, whatever came after.
                assert_eq!(record["outcome"], "failed", "lost: {report} {task}");
                assert_eq!(record["error"], report["error"], "{task}");
            }
        }
    }

    // Every task still reaches one final state: an agent finishes what is left.
    let after = "after".to_owned();
    let finisher = tokio::spawn(batch_agent(
        client.clone(),
        base.clone(),
        after.clone(),
        Arc::default(),
    ));
    let mut idle_rounds = 0;
    while count_unfinished(&client, &base).await > 0 && idle_rounds < 300 {
        idle_rounds += 1;
        let _ = client
            .post(format!("{base}/api/v1/agents/{after}/heartbeat"))
            .json(&json!({}))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count_unfinished(&client, &base).await,
        0,
        "some tasks never finished after the restart"
    );
    for id in &submitted {
        let task: Value = client
            .get(format!("{base}/api/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let state = task["state"].as_str().unwrap();
        let expected = if task["kind"] == "doomed" {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(state, expected, "{task}");
    }
    drop(served);
    finisher.abort();
}

async fn count_unfinished(client: &reqwest::Client, base: &str) -> usize {
    let mut n = 0;
    for state in ["queued", "assigned", "running"] {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{base}/api/v1/tasks?state={state}&limit=500");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            n += page["tasks"].as_array().unwrap().len();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
    }
    n
}

/// A webhook receiver on loopback: it records each request's delivery id, holds the first
/// request open without answering (the server is killed meanwhile), and answers 200 to the
/// rest.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let id = headers
                    .get("x-muster-delivery")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let first = {
                    let mut seen = record.lock().unwrap();
                    seen.push(id);
                    seen.len() == 1
                };
                if first {
                    std::future::pending::<()>().await;
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Fails a task of `kind` for good through `agent`.
async fn fail_a_task(client: &reqwest::Client, base: &str, agent: &str, kind: &str) {
    let register = json!({"agent_id": agent, "host": "h", "port": 1, "capabilities": [], "mcp_servers": [], "max_concurrency": 1});
    let r = client
        .post(format!("{base}/api/v1/agents/register"))
        .json(&register)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let submit = json!({"kind": kind, "max_retries": 0});
    let r = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&submit)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let task: Value = client
        .get(format!("{base}/api/v1/agents/{agent}/tasks/next?wait=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client
        .post(format!(
            "{base}/api/v1/tasks/{}/fail",
            task["id"].as_str().unwrap()
        ))
        .json(&json!({"attempt": task["attempt"], "error": "boom", "retryable": false}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn wait_for(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    for _ in 0..1500 {
        let now = seen.lock().unwrap().clone();
        if now.len() >= n {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the receiver got {:?}, expected {n} requests",
        seen.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_cut_off_by_sigkill_goes_out_after_the_restart_under_its_delivery_id() {
    let (url, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("muster.db");
    let config = dir.path().join("muster.toml");
    std::fs::write(
        &config,
        format!(
            "[[notify.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
             secret_env = \"HOOK_SECRET\"\ntimeout = \"1h\"\n\n\
             [[notify.rules]]\non = [\"task.failed\"]\nto = [\"hook\"]\n"
        ),
    )
    .unwrap();
    let env = [
        ("MUSTER_CONFIG", config.to_str().unwrap()),
        ("HOOK_SECRET", "a-webhook-secret-0123456789"),
    ];
    let client = reqwest::Client::new();
    let served = Served::start(&db, &env);
    fail_a_task(&client, &served.base, "nas", "backup").await;
    // The notification is on its way and the receiver holds it: the server dies mid-send.
    let first = wait_for(&seen, 1).await;
    served.kill();

    let served = Served::start(&db, &env);
    let base = served.base.clone();
    let again = wait_for(&seen, 2).await;
    assert_eq!(again[1], first[0], "sent again under the same delivery id");
    // Another notification after it: once that arrives, nothing else was sent in between.
    fail_a_task(&client, &base, "nas", "restore").await;
    let all = wait_for(&seen, 3).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_ne!(all[2], all[0]);

    let page: Value = client
        .get(format!("{base}/api/v1/notifications"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cut = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == first[0].as_str())
        .expect("the first notification")
        .clone();
    assert_eq!(cut["state"], "delivered", "{cut}");
    let attempts = cut["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{cut}");
    assert!(
        attempts[0]["detail"].as_str().unwrap().contains("cut off"),
        "{cut}"
    );
    assert_eq!(attempts[1]["outcome"], "delivered");
}
