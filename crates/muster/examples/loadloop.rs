//! A simple load loop against a running server: N agents (each with C claim loops) long-poll,
//! claim and complete while S submitters post M tasks. Prints one line of results.
//!
//! `cargo run --release -p muster --example loadloop -- URL [TASKS] [AGENTS] [PER_AGENT] [SUBMITTERS]`
//! The full instrument is `muster bench` (a later issue); this gives the first figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (tasks, agents, per_agent, submitters) = (arg(2, 20_000), arg(3, 4), arg(4, 8), arg(5, 16));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let run = uuid::Uuid::now_v7().simple().to_string();

    for a in 0..agents {
        let body = json!({"agent_id": format!("load-{run}-{a}"), "host": "127.0.0.1", "port": 0,
            "capabilities": ["load"], "mcp_servers": [], "max_concurrency": per_agent});
        let r = client
            .post(format!("{base}/api/v1/agents/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "register: {}", r.status());
    }
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let submitted = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for a in 0..agents {
        for _ in 0..per_agent {
            let (client, base, done, errors) =
                (client.clone(), base.clone(), done.clone(), errors.clone());
            let agent = format!("load-{run}-{a}");
            workers.push(tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < tasks {
                    let url = format!("{base}/api/v1/agents/{agent}/tasks/next?wait=1");
                    let Ok(resp) = client.get(url).send().await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if resp.status() != 200 {
                        continue;
                    }
                    let task: Value = resp.json().await.unwrap();
                    let url = format!(
                        "{base}/api/v1/tasks/{}/complete",
                        task["id"].as_str().unwrap()
                    );
                    let body = json!({"attempt": task["attempt"], "result": {"ok": true}});
                    match client.post(url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    for _ in 0..submitters {
        let (client, base, submitted, errors) = (
            client.clone(),
            base.clone(),
            submitted.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            while submitted.fetch_add(1, Ordering::Relaxed) < tasks {
                let body = json!({"kind": "load", "capabilities": ["load"], "payload": {"n": 1}});
                match client
                    .post(format!("{base}/api/v1/tasks"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "tasks={tasks} agents={agents} per_agent={per_agent} submitters={submitters} seconds={secs:.2} tasks_per_s={:.0} errors={}",
        tasks as f64 / secs,
        errors.load(Ordering::Relaxed)
    );
}
