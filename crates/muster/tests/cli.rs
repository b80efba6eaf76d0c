//! The binary's own duties: refusing bad settings with the variable named, online backup, a
//! graceful stop on SIGTERM, and checking the audit log's chain.

mod common;

use std::process::Command;

use common::Served;
use serde_json::{Value, json};

fn muster() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.env_remove("API_KEY").env_remove("AGENT_KEY");
    cmd
}

#[test]
fn a_bad_setting_stops_the_start_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    for (var, value, expected) in [
        ("HEARTBEAT_TIMEOUT", "soon", "HEARTBEAT_TIMEOUT"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("ADDR", "0.0.0.0:0", "API_KEY"),
        ("DATABASE_URL", "postgres://db/muster", "DATABASE_URL"),
    ] {
        let out = muster()
            .arg("serve")
            .env("DB_PATH", &db)
            .env("ADDR", "127.0.0.1:0")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
    }
    assert!(!db.exists(), "a refused start must not create the database");
}

#[tokio::test]
async fn backup_copies_a_live_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let copy = dir.path().join("copy.db");
    let served = Served::start(&db, &[]);
    let client = reqwest::Client::new();
    for n in 0..3 {
        let r = client
            .post(format!("{}/api/v1/tasks", served.base))
            .json(&json!({"kind": "backup-test", "payload": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let out = muster()
        .arg("backup")
        .arg(&copy)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(served);

    let restored = Served::start(&copy, &[]);
    let page: Value = client
        .get(format!("{}/api/v1/tasks?kind=backup-test", restored.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 3, "{page}");
}

#[test]
fn backup_of_a_missing_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = muster()
        .arg("backup")
        .arg(dir.path().join("copy.db"))
        .arg("--db")
        .arg(dir.path().join("absent.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.db"));
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let served = Served::start(&db, &[]);
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let register = json!({"agent_id": "a", "host": "h", "port": 1, "capabilities": ["shell"], "mcp_servers": []});
    client
        .post(format!("{base}/api/v1/agents/register"))
        .json(&register)
        .send()
        .await
        .unwrap();
    let task: Value = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&json!({"kind": "kept", "capabilities": ["gpu"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A long-poll in flight when the signal arrives is answered, not cut.
    let poll = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .get(format!("{base}/api/v1/agents/a/tasks/next?wait=60"))
                .send()
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || served.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let answer = poll.await.unwrap().expect("the long-poll got an answer");
    assert_eq!(answer.status(), 204);

    let served = Served::start(&db, &[]);
    let again: Value = client
        .get(format!(
            "{}/api/v1/tasks/{}",
            served.base,
            task["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["state"], "queued");
}

#[tokio::test]
async fn audit_verify_passes_on_an_untouched_log_and_names_a_changed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audited.db");
    let served = Served::start(&db, &[]);
    let client = reqwest::Client::new();
    let task: Value = client
        .post(format!("{}/api/v1/tasks", served.base))
        .json(&json!({"kind": "audited", "capabilities": ["nobody-has-this"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap();
    for verb in ["cancel", "retry", "cancel"] {
        let r = client
            .post(format!("{}/api/v1/tasks/{id}/{verb}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{verb}");
    }
    // The server's delivery loop appends them; wait (bounded) until it has.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let page: Value = client
                .get(format!("{}/api/v1/audit", served.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if page["entries"].as_array().is_some_and(|e| e.len() == 3) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("three audit entries");

    // Read-only, so it runs beside the server.
    let out = muster()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("audit chain ok: 3 entries (no checkpoint"),
        "{stdout}"
    );
    drop(served);

    // Someone with the file rewrites what the second entry says (dropping the trigger that
    // stops honest mistakes first).
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TRIGGER audit_append_only; \
             UPDATE audit SET detail = '{\"attempts_before\":0,\"from\":\"failed\"}' \
             WHERE seq = 2",
        )
        .unwrap();
    }
    // DB_PATH is read like `muster backup` reads it.
    let out = muster()
        .args(["audit", "verify"])
        .env("DB_PATH", &db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("entry seq 2 was changed"), "{stderr}");

    let out = muster()
        .args(["audit", "verify", "--db"])
        .arg(dir.path().join("absent.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.db"));
    assert!(
        !dir.path().join("absent.db").exists(),
        "verify creates nothing"
    );
}
