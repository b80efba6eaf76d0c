//! The real `muster` binary, killed with SIGKILL under load and restarted on the same file:
//! every task whose submit was acknowledged is still there, and each one still reaches a final
//! state.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Served;
use serde_json::{Value, json};

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
    while acked.lock().unwrap().len() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
