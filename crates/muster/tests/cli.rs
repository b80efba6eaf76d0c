//! The binary's own duties: refusing bad settings with the variable named, checking and showing
//! the settings, re-reading them on SIGHUP, online backup, a graceful stop on SIGTERM, and
//! checking the audit log's chain.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Served;
use serde_json::{Value, json};

fn muster() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.env_remove("API_KEY")
        .env_remove("AGENT_KEY")
        .env_remove("MUSTER_CONFIG");
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

#[test]
fn backup_finds_the_database_the_way_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    let absent = dir.path().join("from-the-file.db");
    std::fs::write(
        &file,
        format!(
            "[server]\ndb_path = {:?}\napi_key_env = \"NOT_SET_HERE\"\n",
            absent.display().to_string()
        ),
    )
    .unwrap();
    let out = muster()
        .arg("backup")
        .arg(dir.path().join("copy.db"))
        .env("MUSTER_CONFIG", &file)
        .env_remove("DB_PATH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // It went for the file's db_path, and did not need the key's variable to get there.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("from-the-file.db"), "{stderr}");
    assert!(!stderr.contains("NOT_SET_HERE"), "{stderr}");
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

#[test]
fn config_check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(
        &file,
        "[server]\naddr = \"127.0.0.1:8000\"\nlease = \"2m\"\napi_key_env = \"MUSTER_ADMIN_KEY\"\n",
    )
    .unwrap();
    // The variable a `*_env` key names need not be set where the file is checked.
    let out = muster()
        .args(["config", "check"])
        .arg(&file)
        .env_remove("MUSTER_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: ok", file.display())
    );
}

#[test]
fn config_check_names_the_file_line_and_field_of_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    for (text, expected) in [
        (
            "[server]\naddr = \"127.0.0.1:8000\"\nlease = \"soon\"\n",
            ":3: server.lease: \"soon\" is invalid: expected a duration such as 90s, 5m or 12h",
        ),
        (
            "[server]\nleese = \"2m\"\n",
            ":2: server.leese: unknown key",
        ),
        (
            "[server]\napi_key = \"hunter2\"\n",
            ":2: server.api_key: keys are never written in the config file",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = muster()
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}{expected}", file.display())),
            "{text}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[test]
fn a_bad_config_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    let db = dir.path().join("m.db");
    std::fs::write(&file, "[server]\nbody_limit = \"1MB\"\n").unwrap();
    let out = muster()
        .arg("serve")
        .env("DB_PATH", &db)
        .env("ADDR", "127.0.0.1:0")
        .env("MUSTER_CONFIG", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2: server.body_limit: \"1MB\" is invalid: expected a number of bytes such as 1048576",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!db.exists(), "a refused start must not create the database");
}

#[test]
fn config_show_redacts_keys_and_says_where_values_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(&file, "[server]\nlease = \"2m\"\n").unwrap();
    let out = muster()
        .args(["config", "show", "--config"])
        .arg(&file)
        .args(["--addr", "127.0.0.1:9999"])
        .env("API_KEY", "hunter2-admin")
        .env("AGENT_KEY", "hunter2-agent")
        .env("RETENTION", "7d")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let row = |var: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{var} ")))
            .unwrap_or_else(|| panic!("no {var} row: {stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("API_KEY"), "API_KEY api_key_env [redacted] env API_KEY");
    assert_eq!(
        row("AGENT_KEY"),
        "AGENT_KEY agent_key_env [redacted] env AGENT_KEY"
    );
    assert_eq!(row("ADDR"), "ADDR addr 127.0.0.1:9999 flag --addr");
    assert_eq!(row("RETENTION"), "RETENTION retention 7d env RETENTION");
    assert_eq!(
        row("LEASE"),
        format!("LEASE lease 2m file {}:2", file.display())
    );

    let out = muster()
        .args(["config", "show", "--json"])
        .env("API_KEY", "hunter2-admin")
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let api_key = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["variable"] == "API_KEY")
        .unwrap();
    assert_eq!(api_key["value"], "[redacted]");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    // Agents would hold the admin key: said on standard error, not in the JSON.
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: AGENT_KEY is not set"));
}

#[test]
fn serve_help_lists_every_setting() {
    let out = muster().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "ADDR",
        "DB_PATH",
        "PUBLIC_URL",
        "API_KEY",
        "AGENT_KEY",
        "LOG_FORMAT",
        "HEARTBEAT_TIMEOUT",
        "ASSIGN_TIMEOUT",
        "LEASE",
        "RETENTION",
        "MAX_RETRIES",
        "RETRY_BACKOFF",
        "RETRY_BACKOFF_MAX",
        "BODY_LIMIT",
        "SWEEP_INTERVAL",
        "SHUTDOWN_GRACE",
        "SESSION_IDLE",
        "MUSTER_CONFIG",
        "DATABASE_URL",
    ] {
        assert!(
            help.contains(&format!("\n  {var}, ")) || help.contains(&format!("\n  {var}  ")),
            "{var} missing:\n{help}"
        );
    }
    assert!(help.contains("(default: 90s)"), "{help}");
}

#[test]
fn a_database_that_cannot_be_opened_is_named_once_with_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no-such-dir").join("m.db");
    let out = muster()
        .arg("serve")
        .env("DB_PATH", &db)
        .env("ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(&format!("error: cannot use the database {}", db.display())),
        "{stderr}"
    );
    assert!(stderr.contains("DB_PATH"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {stderr}"
    );
}

#[test]
fn logs_written_to_a_pipe_hold_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = muster()
        .arg("serve")
        .env("DB_PATH", dir.path().join("m.db"))
        .env("ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "pretty")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let serving = loop {
        match receive.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("muster serving") => break line,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no \"muster serving\" line within 20s; saw {seen:?}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    seen.push(serving);
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "an escape sequence in {line:?}");
    }
}

#[test]
fn agent_help_describes_the_config_file() {
    let out = muster().args(["agent", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "[agent]",
        "[[actions]]",
        "[[hosts]]",
        "[http]",
        "[deploy]",
        "key_env",
        "examples/agent.toml",
    ] {
        assert!(help.contains(expected), "{expected} missing:\n{help}");
    }
}

#[test]
fn task_logs_help_lists_the_exit_statuses() {
    let out = muster().args(["task", "logs", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let status = help
        .split_once("Exit status:")
        .unwrap_or_else(|| panic!("no exit statuses:\n{help}"))
        .1;
    for (code, meaning) in [
        ("0", "completed"),
        ("1", "could not be read"),
        ("2", "usage"),
        ("3", "failed or was cancelled"),
    ] {
        assert!(
            status
                .lines()
                .any(|l| l.trim_start().starts_with(code) && l.contains(meaning)),
            "{code} ({meaning}) missing:\n{help}"
        );
    }
}

/// The JSON log lines of a running `muster serve`, with a deadline on each wait.
struct LogLines(mpsc::Receiver<Value>);

impl LogLines {
    fn follow(child: &mut std::process::Child) -> LogLines {
        let stdout = child.stdout.take().expect("stdout piped");
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if send.send(entry).is_err() {
                    return;
                }
            }
        });
        LogLines(receive)
    }

    /// The first line (from here on) whose message contains `text`.
    fn wait_for(&self, text: &str) -> Value {
        loop {
            let entry = self
                .0
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no log line containing {text:?} within 20s"));
            if entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(text))
            {
                return entry;
            }
        }
    }
}

#[test]
fn serve_warns_at_start_when_agents_would_hold_the_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = muster()
        .arg("serve")
        .env("DB_PATH", dir.path().join("m.db"))
        .env("ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("API_KEY", "admin-key-only")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logs = LogLines::follow(&mut child);
    let warning = logs.wait_for("AGENT_KEY is not set");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(
        !warning.to_string().contains("admin-key-only"),
        "the warning shows the key: {warning}"
    );
    logs.wait_for("muster serving");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sighup_rereads_the_file_and_keeps_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    let db = dir.path().join("m.db");
    let write = |lease: &str, addr: &str| {
        std::fs::write(
            &file,
            format!(
                "[server]\naddr = \"{addr}\"\ndb_path = {:?}\nlog_format = \"json\"\nlease = \"{lease}\"\n",
                db.display().to_string()
            ),
        )
        .unwrap();
    };
    write("60s", "127.0.0.1:0");
    let mut child = muster()
        .args(["serve", "--config"])
        .arg(&file)
        .env_remove("ADDR")
        .env_remove("DB_PATH")
        .env_remove("LOG_FORMAT")
        .env_remove("LEASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let logs = LogLines::follow(&mut child);
    logs.wait_for("muster serving");
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    write("2m", "127.0.0.1:1");
    hangup();
    let note = logs.wait_for("ADDR changed from 127.0.0.1:0 to 127.0.0.1:1");
    assert!(
        note["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("only after a restart"),
        "{note}"
    );
    let reread = logs.wait_for("configuration re-read");
    assert_eq!(reread["fields"]["changed"], "[\"LEASE\"]", "{reread}");
    logs.wait_for("reloaded");

    // A bad file is refused with its line and field, and the server keeps running.
    std::fs::write(&file, "[server]\nlease = \"later\"\n").unwrap();
    hangup();
    let refused = logs.wait_for("reload refused");
    let error = refused["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{}:2: server.lease", file.display())),
        "{refused}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the server stopped");
    let _ = child.kill();
    let _ = child.wait();
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
