//! `muster bench` end to end on a small load: it starts its own server, drives the whole
//! lifecycle and reports figures that add up; the figure subcommands answer in one line, and
//! the webhooks figure counts its pushes and refusals.

use std::process::{Command, Output};

use serde_json::Value;

fn run_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_muster"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("MUSTER_URL")
        .env_remove("MUSTER_API_KEY")
        .output()
        .expect("muster bench runs")
}

fn bench(args: &[&str]) -> Value {
    let out = run_bench(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

const SMALL: &[&str] = &[
    "--tasks",
    "300",
    "--agents",
    "2",
    "--slots",
    "2",
    "--concurrency",
    "4",
    "--probes",
    "5",
];

/// The server's costs per task add up with its totals, and the WAL index was read.
fn assert_server_costs(report: &Value) {
    let u = &report["server_usage"];
    let tasks = report["tasks"].as_f64().unwrap();
    let per_task = u["cpu_us_per_task"].as_f64().unwrap();
    let total = u["cpu_seconds"].as_f64().unwrap() * 1e6 / tasks;
    assert!((per_task - total).abs() < 1e-6, "{report}");
    for (total, per) in [
        ("disk_write_bytes", "disk_write_bytes_per_task"),
        ("write_call_bytes", "write_call_bytes_per_task"),
    ] {
        let (total, per) = (u[total].as_f64().unwrap(), u[per].as_f64().unwrap());
        assert!(total > 0.0, "{report}");
        assert!((per - total / tasks).abs() < 1e-6, "{report}");
    }
    let wal = &u["wal"];
    assert!(wal["commits"].as_u64().unwrap() > 0, "{report}");
    // Every commit appends a frame; only intervals without a WAL restart are counted, and a
    // starved sampler may have seen none.
    if wal["sampled_commit_share"].as_f64().unwrap() > 0.0 {
        assert!(
            wal["frames_per_commit"].as_f64().unwrap() >= 1.0,
            "{report}"
        );
    }
    assert_eq!(wal["page_size"], 4096, "{report}");
}

#[test]
fn a_small_load_run_reports_every_figure() {
    let report = bench(SMALL);
    assert_eq!(report["mode"], "default", "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["tasks"], 300);
    assert_eq!(report["submit_to_claim"]["count"], 300, "{report}");
    assert_eq!(report["submit_to_complete"]["count"], 300, "{report}");
    assert_eq!(report["idle_submit_to_claim"]["count"], 5, "{report}");
    assert!(report["tasks_per_s"].as_f64().unwrap() > 0.0);
    let claim = &report["submit_to_claim"];
    assert!(
        claim["p50_ms"].as_f64() <= claim["p99_ms"].as_f64(),
        "{report}"
    );
    assert!(
        report["server_usage"]["rss_mib"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["submit_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert_server_costs(&report);
}

#[test]
fn peer_style_uses_the_single_task_routes_after_a_warm_up() {
    let report = bench(&[SMALL, &["--peer-style"]].concat());
    assert_eq!(report["mode"], "peer-style", "{report}");
    assert_eq!(report["agent_routes"], "single", "{report}");
    assert_eq!(report["warmup"], 200, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // The warm-up tasks are run but not measured.
    assert_eq!(report["submit_to_claim"]["count"], 300, "{report}");
    assert_eq!(report["idle_submit_to_claim"]["count"], 5, "{report}");
    assert_server_costs(&report);
}

#[test]
fn batch_submits_through_the_bulk_route_or_says_the_server_has_none() {
    let out = run_bench(&[SMALL, &["--batch", "--batch-size", "40"]].concat());
    if out.status.success() {
        let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(report["mode"], "batch", "{report}");
        assert_eq!(report["batch_size"], 40, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["submit_to_complete"]["count"], 300, "{report}");
    } else {
        // A server built without the bulk route answers 404 or 405; the run stops and says so.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("has no bulk submit"), "{stderr}");
    }
}

#[test]
fn the_figure_subcommands_measure_a_fresh_server() {
    let startup = bench(&["startup", "--runs", "2"]);
    assert_eq!(startup["runs"], 2);
    assert!(startup["median_ms"].as_f64().unwrap() > 0.0);
    let memory = bench(&["idle-memory", "--idle", "100ms"]);
    assert!(memory["rss_mib"].as_f64().unwrap() > 0.0);
    let queue = bench(&["queue-depth", "--levels", "10,50", "--probes", "3"]);
    assert_eq!(queue["levels"][1]["queued"], 50, "{queue}");
    assert_eq!(queue["levels"][1]["submit_to_claim"]["count"], 3, "{queue}");
    let beats = bench(&[
        "heartbeats",
        "--agents",
        "20",
        "--interval",
        "1s",
        "--duration",
        "1s",
    ]);
    assert_eq!(beats["agents"], 20, "{beats}");
    assert_eq!(beats["errors"], 0, "{beats}");
    assert!(beats["heartbeats"].as_u64().unwrap() >= 10, "{beats}");
}

#[test]
fn the_webhooks_figure_counts_every_push_and_every_refusal() {
    let w = bench(&[
        "webhooks",
        "--pushes",
        "20",
        "--concurrency",
        "4",
        "--wrong-signatures",
        "3",
        "--probes",
        "5",
    ]);
    assert_eq!(w["forge"], "gitea", "{w}");
    assert_eq!(w["errors"], 0, "{w}");
    assert_eq!(w["error_samples"], serde_json::json!([]), "{w}");
    let accept = &w["accept"];
    assert_eq!(accept["pushes"], 20, "{w}");
    assert_eq!(accept["concurrency"], 4, "{w}");
    assert_eq!(accept["accepted"], 20, "{w}");
    assert_eq!(accept["answer"]["count"], 20, "{w}");
    assert_eq!(accept["wrong_signature_sent"], 3, "{w}");
    assert_eq!(accept["wrong_signature_refused"], 3, "{w}");
    assert!(accept["accepted_per_s"].as_f64().unwrap() > 0.0, "{w}");
    assert!(
        accept["server"]["peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{w}"
    );
    let claim = &w["push_to_claim"];
    assert_eq!(claim["pushes"], 5, "{w}");
    assert_eq!(claim["claimed"], 5, "{w}");
    assert_eq!(claim["latency"]["count"], 5, "{w}");
    for key in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        assert!(claim["latency"][key].is_f64(), "{key}: {w}");
    }
}

/// A stand-in for a server with the batch routes, in front of a real one without them: it
/// answers the batch claim, batch reports and bulk submit by calling the single-task routes,
/// and passes every other request through. It lets the bench's batch agents and bulk
/// submitters run end to end before the server has those routes.
mod facade {
    use axum::Json;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, Query, Request, State};
    use axum::http::header::CONTENT_TYPE;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use serde_json::{Value, json};
    use std::collections::HashMap;

    #[derive(Clone)]
    struct Real {
        http: reqwest::Client,
        base: String,
    }

    /// Serves the facade on a free port; its base URL.
    pub(crate) async fn start(base: String) -> String {
        let real = Real {
            http: reqwest::Client::new(),
            base,
        };
        let app = Router::new()
            .route("/api/v1/agents/{id}/tasks/claim", get(claim))
            .route("/api/v1/agents/{id}/reports", post(reports))
            .route("/api/v1/tasks/batch", post(submit_batch))
            .fallback(pass)
            .with_state(real);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// The first task waits as long as asked, the rest only take what is already there.
    async fn claim(
        State(real): State<Real>,
        Path(agent): Path<String>,
        Query(query): Query<HashMap<String, u64>>,
    ) -> Json<Value> {
        let (mut wait, max) = (query["wait"], query["max"]);
        let mut tasks = Vec::new();
        while (tasks.len() as u64) < max {
            let url = format!("{}/api/v1/agents/{agent}/tasks/next?wait={wait}", real.base);
            let resp = real.http.get(url).send().await.unwrap();
            if resp.status() != 200 {
                break;
            }
            tasks.push(resp.json::<Value>().await.unwrap());
            wait = 0;
        }
        Json(json!({"tasks": tasks, "cancel": []}))
    }

    async fn reports(State(real): State<Real>, Json(body): Json<Value>) -> Json<Value> {
        let mut results = Vec::new();
        for r in body["reports"].as_array().unwrap() {
            assert_eq!(r["outcome"], "completed");
            let url = format!(
                "{}/api/v1/tasks/{}/complete",
                real.base,
                r["task_id"].as_str().unwrap()
            );
            let body = json!({"attempt": r["attempt"], "result": r["result"]});
            let status = real
                .http
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status();
            results.push(json!({"task_id": r["task_id"], "status": status.as_u16()}));
        }
        Json(json!({"results": results}))
    }

    async fn submit_batch(State(real): State<Real>, Json(body): Json<Value>) -> Json<Value> {
        let mut results = Vec::new();
        for task in body["tasks"].as_array().unwrap() {
            let url = format!("{}/api/v1/tasks", real.base);
            let resp = real.http.post(url).json(task).send().await.unwrap();
            let status = resp.status().as_u16();
            results.push(json!({"status": status, "task": resp.json::<Value>().await.unwrap()}));
        }
        Json(json!({"results": results}))
    }

    async fn pass(State(real): State<Real>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut forward = real
            .http
            .request(parts.method, format!("{}{path}", real.base))
            .body(body);
        if let Some(kind) = parts.headers.get(CONTENT_TYPE) {
            forward = forward.header(CONTENT_TYPE, kind);
        }
        let resp = forward.send().await.unwrap();
        let (status, kind) = (resp.status(), resp.headers().get(CONTENT_TYPE).cloned());
        let mut out = (status, resp.bytes().await.unwrap()).into_response();
        if let Some(kind) = kind {
            out.headers_mut().insert(CONTENT_TYPE, kind);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_batch_routes_agents_claim_and_report_in_batches_and_submits_go_in_bulk() {
    let real = muster_bench::local::LocalServer::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_muster")),
        &[],
    )
    .unwrap();
    let url = facade::start(real.base.clone()).await;
    for extra in [&[][..], &["--batch", "--batch-size", "40"][..]] {
        let args: Vec<String> = [SMALL, &["--url", &url], extra]
            .concat()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let out = tokio::task::spawn_blocking(move || {
            run_bench(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("{}", String::from_utf8_lossy(&out.stderr));
        });
        assert!(out.status.success(), "{report}");
        assert_eq!(report["agent_routes"], "batch", "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["submit_to_complete"]["count"], 300, "{report}");
        assert_eq!(report["idle_submit_to_claim"]["count"], 5, "{report}");
        // Not a server this run started: no /proc or WAL figures.
        assert!(report["server_usage"].is_null(), "{report}");
    }
}
