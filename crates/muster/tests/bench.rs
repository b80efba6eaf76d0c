//! `muster bench` end to end on a small load: it starts its own server, drives the whole
//! lifecycle and reports figures that add up; the figure subcommands answer in one line.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_muster"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("MUSTER_URL")
        .env_remove("MUSTER_API_KEY")
        .output()
        .expect("muster bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn a_small_load_run_reports_every_figure() {
    let report = bench(&[
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
    ]);
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
