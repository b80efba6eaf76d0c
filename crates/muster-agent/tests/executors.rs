//! The executors against a real control plane: allow-listed actions run locally and over a
//! real sshd on loopback, refuse what their patterns refuse (and run nothing), stream their
//! output, and die with their process group on cancel and on timeout.

mod support;

use std::time::Duration;

use muster_api::{AttemptOutcome, TaskState};
use serde_json::json;
use support::{Plane, Sshd, alive, read_pid, sshd_binary, start_agent, wait_gone};

fn config(dir: &std::path::Path, hosts: &str) -> String {
    format!(
        r#"
[agent]
id = "exec-test"
max_concurrency = 2
heartbeat_s = 1

[[actions]]
name = "greet"
argv = ["sh", "-c", "echo hello $0; echo oops >&2; exit $1", "{{who}}", "{{code}}"]
params = {{ who = "[a-z]+", code = "[0-9]+" }}

[[actions]]
name = "touch"
argv = ["touch", "{dir}/{{file}}"]
params = {{ file = "[a-z0-9_.-]+" }}

[[actions]]
name = "say"
argv = ["echo", "{{text}}"]
params = {{ text = ".*" }}

[[actions]]
name = "hang"
argv = ["sh", "-c", "echo $$ > {dir}/pid; sleep 300 & wait"]
timeout_s = 300

[[actions]]
name = "hang_tree"
argv = ["sh", "-c", "sleep 300 & echo $! > {dir}/child; echo $$ > {dir}/pid; wait"]
timeout_s = 300

{hosts}
"#,
        dir = dir.display()
    )
}

#[tokio::test]
async fn an_action_streams_its_output_and_its_exit_code_decides() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), ""));
    let ok = plane
        .submit(
            "action",
            json!({"action": "greet", "params": {"who": "world", "code": "0"}}),
        )
        .await;
    let ok = plane.wait_final(&ok).await;
    assert_eq!(ok.state, TaskState::Completed, "{ok:?}");
    assert_eq!(ok.result.as_ref().unwrap()["exit_code"], 0);
    let logs = plane.client.logs(ok.id, 0, 100).await.unwrap().lines;
    assert!(
        logs.iter()
            .any(|l| l.text == "hello world" && l.stream == muster_api::LogStream::Stdout),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.text == "oops" && l.stream == muster_api::LogStream::Stderr),
        "{logs:?}"
    );

    let bad = plane
        .submit(
            "action",
            json!({"action": "greet", "params": {"who": "world", "code": "3"}}),
        )
        .await;
    let bad = plane.wait_final(&bad).await;
    assert_eq!(bad.state, TaskState::Failed);
    assert!(
        bad.error.as_deref().unwrap().contains("exited with code 3"),
        "{bad:?}"
    );
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_parameter_that_fails_its_pattern_fails_the_task_and_runs_nothing() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), ""));
    let marker = dir.path().join("pwned");
    let task = plane
        .submit("action", json!({"action": "touch", "params": {"file": format!("x; touch {}", marker.display())}}))
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.error.as_deref().unwrap().contains("file"), "{task:?}");
    // An action this agent does not allow is refused by name.
    let unknown = plane
        .submit("action", json!({"action": "rm", "params": {}}))
        .await;
    let unknown = plane.wait_final(&unknown).await;
    assert!(
        unknown
            .error
            .as_deref()
            .unwrap()
            .contains("\"rm\" is not allowed"),
        "{unknown:?}"
    );
    assert!(!marker.exists(), "the injected command ran");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "touch ran"
    );
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn cancelling_a_running_action_kills_its_processes() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), ""));
    let task = plane.submit("action", json!({"action": "hang"})).await;
    let pid = read_pid(&dir.path().join("pid")).await;
    assert!(alive(pid));
    plane.client.cancel(task.id).await.unwrap();
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Cancelled, "{task:?}");
    assert!(!alive(pid), "process {pid} survived the cancel");
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_timeout_kills_the_action() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), ""));
    let mut submit = muster_api::SubmitTask {
        kind: "action".into(),
        payload: json!({"action": "hang"}),
        capabilities: vec![],
        priority: 0,
        max_retries: Some(0),
        timeout_s: Some(1),
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Default::default(),
    };
    submit.timeout_s = Some(1);
    let (task, _) = plane.client.submit(&submit).await.unwrap();
    let pid = read_pid(&dir.path().join("pid")).await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} outlived its timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempt = &task.attempts[0];
    assert!(
        matches!(
            attempt.outcome,
            AttemptOutcome::TimedOut | AttemptOutcome::Failed
        ),
        "{attempt:?}"
    );
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn actions_run_over_ssh_with_every_argument_quoted() {
    let Some(binary) = sshd_binary() else { return };
    let sshd = Sshd::start(&binary);
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), &sshd.host_config("box")));
    let marker = dir.path().join("pwned");

    let task = plane
        .submit(
            "action",
            json!({"action": "greet", "params": {"who": "remote", "code": "0"}, "host": "box"}),
        )
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(
        task.state,
        TaskState::Completed,
        "{task:?} logs: {}",
        plane.log_text(&task).await
    );
    assert!(plane.log_text(&task).await.contains("hello remote"));
    // Over the forced terminal, stderr arrives merged into stdout; no line keeps its CR, and
    // the client's own notices stay out of the log.
    let logs = plane.client.logs(task.id, 0, 100).await.unwrap().lines;
    assert!(
        logs.iter()
            .any(|l| l.text == "oops" && l.stream == muster_api::LogStream::Stdout),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .all(|l| !l.text.contains('\r') && !l.text.contains("Connection to")),
        "{logs:?}"
    );

    // A value that passes a permissive pattern still reaches the remote side as one word.
    let injected = format!("x; touch {}", marker.display());
    let task = plane
        .submit(
            "action",
            json!({"action": "say", "params": {"text": injected}, "host": "box"}),
        )
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert!(plane.log_text(&task).await.contains(&injected));
    assert!(
        !marker.exists(),
        "the remote shell ran the injected command"
    );

    // A value that fails its pattern runs nothing at all.
    let task = plane
        .submit("action", json!({"action": "touch", "params": {"file": format!("a; touch {}", marker.display())}, "host": "box"}))
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(!marker.exists());
    stop.cancel();
    agent.await.unwrap();
}

/// A plain HTTP/1.1 server on loopback that answers every request `200 ok` and keeps the
/// request line and headers of each, so a test can see exactly what the executor sent.
async fn recording_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn http_calls_stay_under_the_allowed_prefix_and_keep_their_headers_to_the_agent() {
    let (port, seen) = recording_server().await;
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let http = format!("[http]\nallow = [\"http://127.0.0.1:{port}/api/\"]\n");
    let (stop, agent) = start_agent(&plane, &config(dir.path(), &http));
    let base = format!("http://127.0.0.1:{port}");

    let ok = plane
        .submit("http", json!({"url": format!("{base}/api/ok")}))
        .await;
    let ok = plane.wait_final(&ok).await;
    assert_eq!(ok.state, TaskState::Completed, "{ok:?}");

    // Paths that a server may resolve to somewhere outside /api/ never leave the agent.
    for path in [
        "/api/..%2fsecret",
        "/api/..%2Fsecret",
        "/api/../secret",
        "/api/%2e%2e/secret",
        "/api/.%2E/secret",
        "/api/x/..%2f..%2fsecret",
    ] {
        let task = plane
            .submit("http", json!({"url": format!("{base}{path}")}))
            .await;
        let task = plane.wait_final(&task).await;
        assert_eq!(task.state, TaskState::Failed, "{path}: {task:?}");
    }
    // Headers that steer the connection or the framing, or name another host, are the
    // agent's to set; the error names the header.
    for header in [
        "Host",
        "host",
        "Connection",
        "Keep-Alive",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    ] {
        let task = plane
            .submit(
                "http",
                json!({"url": format!("{base}/api/ok"), "headers": {header: "1"}}),
            )
            .await;
        let task = plane.wait_final(&task).await;
        assert_eq!(task.state, TaskState::Failed, "{header}: {task:?}");
        let error = task.error.as_deref().unwrap();
        assert!(error.contains(header), "{header}: {error}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "only the allowed call may be sent: {seen:#?}"
    );
    assert!(seen[0].starts_with("GET /api/ok HTTP/1.1\r\n"), "{seen:?}");
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_cancelled_or_timed_out_action_over_ssh_stops_on_the_remote_host() {
    let Some(binary) = sshd_binary() else { return };
    let sshd = Sshd::start(&binary);
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), &sshd.host_config("box")));
    let (pid_file, child_file) = (dir.path().join("pid"), dir.path().join("child"));

    // Cancelled: the local ssh client is killed, and the remote shell and what it started
    // (the remote host is this machine, so its pids are visible here) go with it.
    let task = plane
        .submit("action", json!({"action": "hang_tree", "host": "box"}))
        .await;
    let (pid, child) = (read_pid(&pid_file).await, read_pid(&child_file).await);
    plane.client.cancel(task.id).await.unwrap();
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Cancelled, "{task:?}");
    wait_gone(pid, "the remote shell of a cancelled action").await;
    wait_gone(child, "the remote child of a cancelled action").await;

    // Timed out: the same.
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::remove_file(&child_file).unwrap();
    let submit = muster_api::SubmitTask {
        kind: "action".into(),
        payload: json!({"action": "hang_tree", "host": "box"}),
        capabilities: vec![],
        priority: 0,
        max_retries: Some(0),
        timeout_s: Some(2),
        lock_key: None,
        idempotency_key: None,
        run_after: None,
        labels: Default::default(),
    };
    let (task, _) = plane.client.submit(&submit).await.unwrap();
    let (pid, child) = (read_pid(&pid_file).await, read_pid(&child_file).await);
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    wait_gone(pid, "the remote shell of a timed-out action").await;
    wait_gone(child, "the remote child of a timed-out action").await;
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_canary_task_is_answered_with_its_nonce_and_the_agents_id() {
    let plane = Plane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &config(dir.path(), ""));
    let task = plane
        .submit(
            "canary",
            json!({"canary": "path", "run": "0193-run", "nonce": "9f3c"}),
        )
        .await;
    let done = plane.wait_final(&task).await;
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert_eq!(
        done.result,
        Some(json!({"nonce": "9f3c", "agent": "exec-test", "canary": "path", "run": "0193-run"}))
    );
    // Without a nonce there is nothing to prove: it fails, and is not retried.
    let bare = plane.submit("canary", json!({})).await;
    let done = plane.wait_final(&bare).await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    let error = done.error.unwrap_or_default();
    assert!(error.contains("this one has none"), "{error}");
    stop.cancel();
    agent.await.unwrap();
}
