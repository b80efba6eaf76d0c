//! The operator commands (`muster task …`, `muster agents …`) run as the real binary against a
//! real `muster serve`, with the agent's side played over plain HTTP.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Served;
use serde_json::{Value, json};

/// How long anything in these tests may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(20);

/// `muster` with none of the caller's settings leaking in.
fn muster(base: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.env("MUSTER_URL", base)
        .env_remove("MUSTER_API_KEY")
        .env_remove("MUSTER_AGENT_KEY")
        .env_remove("API_KEY")
        .env_remove("AGENT_KEY");
    cmd
}

fn run(base: &str, args: &[&str]) -> Output {
    muster(base).args(args).output().expect("muster runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and insists on success, returning standard output.
fn ok(base: &str, args: &[&str]) -> String {
    let out = run(base, args);
    assert!(
        out.status.success(),
        "muster {args:?} failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn ok_json(base: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = ok(base, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
}

/// Runs and insists on exit status 1, returning standard error.
fn fails(base: &str, args: &[&str]) -> String {
    let out = run(base, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "muster {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("panicked") && !stderr(&out).contains("backtrace"),
        "{}",
        stderr(&out)
    );
    stderr(&out)
}

/// The id in `created task <id> (queued)`.
fn submitted_id(text: &str) -> String {
    let id = text
        .split_whitespace()
        .find(|word| uuid::Uuid::parse_str(word).is_ok())
        .unwrap_or_else(|| panic!("no task id in {text:?}"));
    id.to_owned()
}

/// An agent played by the test over plain HTTP, the way the README's curl examples do.
struct FakeAgent {
    http: reqwest::Client,
    base: String,
    id: String,
}

impl FakeAgent {
    async fn register(base: &str, id: &str, capabilities: &[&str]) -> FakeAgent {
        let agent = FakeAgent {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            id: id.to_owned(),
        };
        let body = json!({"agent_id": id, "host": "10.0.0.7", "port": 8080,
            "capabilities": capabilities, "mcp_servers": []});
        agent.post("/api/v1/agents/register", body).await;
        agent
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Claims the task the server assigned to this agent; returns (id, attempt).
    async fn claim(&self) -> (String, u64) {
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/agents/{}/tasks/next?wait=10",
                self.base, self.id
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "no task to claim");
        let task: Value = resp.json().await.unwrap();
        assert_eq!(task["state"], "running");
        (
            task["id"].as_str().unwrap().to_owned(),
            task["attempt"].as_u64().unwrap(),
        )
    }

    async fn log(&self, task: &str, attempt: u64, lines: Value) {
        let path = format!("/api/v1/tasks/{task}/logs");
        self.post(&path, json!({"attempt": attempt, "lines": lines}))
            .await;
    }

    async fn complete(&self, task: &str, attempt: u64) {
        let path = format!("/api/v1/tasks/{task}/complete");
        self.post(
            &path,
            json!({"attempt": attempt, "result": {"exit_code": 0}}),
        )
        .await;
    }

    async fn fail(&self, task: &str, attempt: u64, error: &str) {
        let path = format!("/api/v1/tasks/{task}/fail");
        self.post(
            &path,
            json!({"attempt": attempt, "error": error, "retryable": false}),
        )
        .await;
    }
}

/// A running `muster task logs --follow` whose output lines arrive on a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(base: &str, task: &str) -> Follower {
        Follower::start_with(muster(base), task)
    }

    fn start_with(mut command: Command, task: &str) -> Follower {
        let mut child = command
            .args(["task", "logs", task, "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("muster starts");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a printed line contains `needle`.
    fn expect_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {needle:?} in time; saw {:?}", self.seen),
            }
        }
    }

    /// Waits for the exit, within the deadline; returns the code and standard error.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the follower did not exit when its task ended");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err).unwrap();
        (status.code(), err)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // A failed assertion must not leave the follower running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn submit_list_show_cancel_retry() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();

    // No agent has `gpu`, so the task stays queued until the test moves it.
    let out = ok(
        base,
        &[
            "task",
            "submit",
            "render",
            "--payload",
            r#"{"scene": 7}"#,
            "--cap",
            "gpu",
            "--priority",
            "5",
            "--label",
            "env=lab",
            "--timeout",
            "60",
        ],
    );
    assert!(out.starts_with("created task"), "{out}");
    assert!(out.contains("queued"), "{out}");
    let id = submitted_id(&out);

    let table = ok(base, &["task", "list"]);
    assert!(table.lines().next().unwrap().contains("STATE"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .expect("the task is listed");
    assert!(row.contains("render") && row.contains("queued"), "{row}");

    let listed = ok_json(base, &["task", "list", "--state", "queued"]);
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let none = ok_json(base, &["task", "list", "--state", "completed"]);
    assert_eq!(none["tasks"], json!([]));

    let shown = ok(base, &["task", "show", &id]);
    for expected in [
        &id,
        "render",
        "queued",
        "gpu",
        "env=lab",
        r#"{"scene":7}"#,
        "60s",
        "waiting:",
        "no registered agent has capabilities [gpu]",
    ] {
        assert!(shown.contains(expected), "{expected} missing from {shown}");
    }
    let task = ok_json(base, &["task", "show", &id]);
    assert_eq!(task["priority"], 5);
    assert_eq!(task["payload"], json!({"scene": 7}));

    let out = ok(base, &["task", "cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(ok_json(base, &["task", "show", &id])["state"], "cancelled");
    // A finished task cannot be cancelled again; the server's reason is passed on.
    let err = fails(base, &["task", "cancel", &id]);
    assert!(err.contains("cannot cancel task"), "{err}");

    let out = ok(base, &["task", "retry", &id]);
    assert!(out.contains("queued"), "{out}");
    assert_eq!(ok_json(base, &["task", "show", &id])["state"], "queued");
}

#[test]
fn list_all_follows_the_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    for n in 0..5 {
        ok(
            base,
            &["task", "submit", "page", "--payload", &n.to_string()],
        );
    }

    let out = run(base, &["task", "list", "--limit", "2"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 3, "header and two rows");
    assert!(stderr(&out).contains("--all"), "{}", stderr(&out));

    let page = ok_json(base, &["task", "list", "--limit", "2"]);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string(), "{page}");

    let all = ok_json(base, &["task", "list", "--limit", "2", "--all"]);
    assert_eq!(all["tasks"].as_array().unwrap().len(), 5, "{all}");
    assert!(all["next_cursor"].is_null());
}

#[test]
fn an_idempotent_resubmit_says_it_found_the_existing_task() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let args = ["task", "submit", "deploy", "--idempotency-key", "push-41"];

    let first = ok(base, &args);
    assert!(first.starts_with("created task"), "{first}");
    let second = ok(base, &args);
    assert!(second.starts_with("existing task"), "{second}");
    assert!(second.contains("push-41"), "{second}");
    assert_eq!(submitted_id(&first), submitted_id(&second));

    let again = ok_json(base, &args);
    assert_eq!(again["id"], submitted_id(&first).as_str());
    let listed = ok_json(base, &["task", "list"]);
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn logs_print_what_the_agent_posted_and_show_lists_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let agent = FakeAgent::register(base, "nas", &["docker"]).await;
    let id = submitted_id(&ok(base, &["task", "submit", "restart", "--cap", "docker"]));
    let (claimed, attempt) = agent.claim().await;
    assert_eq!(claimed, id);

    let empty = run(base, &["task", "logs", &id]);
    assert!(empty.status.success());
    assert!(stdout(&empty).is_empty(), "{}", stdout(&empty));

    agent
        .log(
            &id,
            attempt,
            json!([{"stream": "stdout", "text": "pulling image"},
                   {"stream": "stderr", "text": "warning: slow mirror"}]),
        )
        .await;
    agent.complete(&id, attempt).await;

    let out = ok(base, &["task", "logs", &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (ts, rest) = lines[0].split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "the line starts with its time: {}",
        lines[0]
    );
    assert_eq!(rest, "stdout pulling image");
    assert!(
        lines[1].ends_with(" stderr warning: slow mirror"),
        "{}",
        lines[1]
    );

    let page = ok_json(base, &["task", "logs", &id]);
    assert_eq!(page["lines"].as_array().unwrap().len(), 2, "{page}");

    let shown = ok(base, &["task", "show", &id]);
    let attempt_row = shown
        .lines()
        .skip_while(|l| !l.starts_with("ATTEMPT"))
        .nth(1)
        .unwrap_or_else(|| panic!("no attempts table in {shown}"));
    assert!(
        attempt_row.contains("nas") && attempt_row.contains("completed"),
        "{attempt_row}"
    );
    assert!(
        shown.contains("CANDIDATE"),
        "the assignment's candidates: {shown}"
    );
}

#[tokio::test]
async fn follow_prints_lines_as_they_come_and_exits_0_when_the_task_completes() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let agent = FakeAgent::register(base, "builder", &["build"]).await;
    let id = submitted_id(&ok(base, &["task", "submit", "build", "--cap", "build"]));
    let (_, attempt) = agent.claim().await;
    agent
        .log(&id, attempt, json!([{"text": "before the follower"}]))
        .await;

    let mut follower = Follower::start(base, &id);
    follower.expect_line("stdout before the follower");
    // Each line is posted only after the previous one was printed: they arrive live.
    agent
        .log(&id, attempt, json!([{"text": "compiling 1 of 2"}]))
        .await;
    follower.expect_line("compiling 1 of 2");
    agent
        .log(
            &id,
            attempt,
            json!([{"stream": "stderr", "text": "compiling 2 of 2"}]),
        )
        .await;
    assert!(
        follower
            .expect_line("compiling 2 of 2")
            .contains(" stderr ")
    );
    agent.complete(&id, attempt).await;

    let (code, err) = follower.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("completed"),
        "the final state is printed: {err}"
    );
}

#[tokio::test]
async fn follow_exits_non_zero_when_the_task_fails() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let agent = FakeAgent::register(base, "runner", &["ansible"]).await;
    let id = submitted_id(&ok(base, &["task", "submit", "play", "--cap", "ansible"]));
    let (_, attempt) = agent.claim().await;

    let mut follower = Follower::start(base, &id);
    agent
        .log(&id, attempt, json!([{"text": "TASK [restart]"}]))
        .await;
    follower.expect_line("TASK [restart]");
    agent.fail(&id, attempt, "host unreachable").await;

    let (code, err) = follower.wait();
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("failed") && err.contains("host unreachable"),
        "{err}"
    );
}

#[tokio::test]
async fn agents_list_show_drain_remove() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    FakeAgent::register(base, "pi-4", &["docker", "gpio"]).await;

    let table = ok(base, &["agents", "list"]);
    let row = table.lines().find(|l| l.contains("pi-4")).expect("listed");
    assert!(
        row.contains("online") && row.contains("docker,gpio"),
        "{row}"
    );
    let listed = ok_json(base, &["agents", "list"]);
    assert_eq!(listed["agents"][0]["agent_id"], "pi-4");

    let shown = ok(base, &["agents", "show", "pi-4"]);
    assert!(shown.contains("10.0.0.7:8080"), "{shown}");

    let out = ok(base, &["agents", "drain", "pi-4"]);
    assert!(out.contains("draining"), "{out}");
    assert_eq!(
        ok_json(base, &["agents", "show", "pi-4"])["status"],
        "draining"
    );

    let out = ok(base, &["agents", "remove", "pi-4"]);
    assert!(out.contains("removed agent pi-4"), "{out}");
    let listed = ok_json(base, &["agents", "list"]);
    assert_eq!(listed["agents"], json!([]));

    let err = fails(base, &["agents", "remove", "pi-4"]);
    assert!(err.contains("agent pi-4 not found"), "{err}");
}

#[test]
fn an_unreachable_server_is_named_with_what_to_do() {
    // A port that was just free and is now closed: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["task", "list", "--url", url.as_str()],
        vec!["agents", "list", "--url", url.as_str()],
    ] {
        let err = fails("http://unused.invalid", &args);
        assert!(
            err.contains(&format!("cannot reach muster at {url}")),
            "{err}"
        );
        assert!(err.contains("MUSTER_URL"), "{err}");
    }
    // MUSTER_URL alone is enough.
    let err = fails(
        &url,
        &["task", "show", "0196a3c4-5e1f-7b2a-9c3d-4e5f6a7b8c9d"],
    );
    assert!(err.contains(&url), "{err}");
}

#[test]
fn a_wrong_key_is_refused_with_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[("API_KEY", "right-key")]);
    let base = served.base.as_str();

    let err = fails(base, &["task", "list", "--key", "wrong-key"]);
    assert!(err.contains("refused the key"), "{err}");
    assert!(
        err.contains("--key") && err.contains("MUSTER_API_KEY"),
        "{err}"
    );
    assert!(!err.contains("wrong-key"), "the key is never echoed: {err}");

    let err = fails(base, &["agents", "list"]);
    assert!(err.contains("MUSTER_API_KEY"), "{err}");

    ok(base, &["task", "list", "--key", "right-key"]);
    let out = muster(base)
        .env("MUSTER_API_KEY", "right-key")
        .args(["agents", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_unknown_task_is_not_found_and_a_bad_id_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let unknown = "0196a3c4-5e1f-7b2a-9c3d-4e5f6a7b8c9d";

    for command in ["show", "cancel", "retry", "logs"] {
        let err = fails(base, &["task", command, unknown]);
        assert!(
            err.contains(&format!("task {unknown} not found")),
            "{command}: {err}"
        );
    }
    let err = fails(base, &["task", "logs", unknown, "--follow"]);
    assert!(err.contains("not found"), "{err}");

    let out = run(base, &["task", "show", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a task id"), "{}", stderr(&out));

    let out = run(base, &["task", "submit", "x", "--payload", "{broken"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--payload"), "{}", stderr(&out));
}

/// A child process that is killed if the test fails before it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn muster_agent_runs_tasks_from_its_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[("API_KEY", "ops-key")]);
    let base = served.base.as_str();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        r#"
[agent]
id = "cli-agent"
capabilities = ["echo"]
heartbeat_s = 1

[[actions]]
name = "say"
argv = ["echo", "{text}"]
params = { text = "[a-z ]+" }
"#,
    )
    .unwrap();
    // With no MUSTER_AGENT_KEY the agent falls back to MUSTER_API_KEY (the server's AGENT_KEY
    // defaults to its API_KEY).
    let mut agent = KillOnDrop(
        muster(base)
            .args(["agent", "--config"])
            .arg(&config)
            .env("MUSTER_API_KEY", "ops-key")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("muster agent starts"),
    );
    let deadline = Instant::now() + DEADLINE;
    while !ok(base, &["agents", "list", "--key", "ops-key"]).contains("cli-agent") {
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "muster agent exited early"
        );
        assert!(Instant::now() < deadline, "the agent never registered");
        std::thread::sleep(Duration::from_millis(50));
    }

    let payload = r#"{"action": "say", "params": {"text": "hello from the agent"}}"#;
    let submit = [
        "task",
        "submit",
        "action",
        "--cap",
        "echo",
        "--payload",
        payload,
    ];
    let id = submitted_id(&ok(base, &[&submit[..], &["--key", "ops-key"]].concat()));
    let mut with_key = muster(base);
    with_key.env("MUSTER_API_KEY", "ops-key");
    let mut follower = Follower::start_with(with_key, &id);
    follower.expect_line("stdout hello from the agent");
    let (code, err) = follower.wait();
    assert_eq!(code, Some(0), "{err}");
    let task = ok_json(base, &["task", "show", &id, "--key", "ops-key"]);
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["result"]["exit_code"], 0, "{task}");

    let status = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "muster agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "muster agent exited with {status}");
}

#[tokio::test]
async fn a_task_is_named_by_the_start_or_the_end_of_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let first = submitted_id(&ok(base, &["task", "submit", "render", "--cap", "gpu"]));
    let second = submitted_id(&ok(base, &["task", "submit", "encode", "--cap", "gpu"]));
    let simple = |id: &str| id.replace('-', "");

    // UUIDv7 ids begin with their time: tasks submitted together share their first
    // characters, so those name both and the command lists them.
    let shared: String = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    // (Eight characters change every 65 s, so two of them almost always match.)
    let shared = &shared[..shared.len().min(8)];
    assert!(!shared.is_empty(), "{first} {second}");
    let err = fails(base, &["task", "show", shared]);
    assert!(err.contains("ambiguous: 2 tasks"), "{err}");
    assert!(err.contains(&first) && err.contains(&second), "{err}");
    assert!(err.contains("render") && err.contains("encode"), "{err}");

    // Enough of the start names one, with or without its dashes, in either case.
    let start = &first[..28];
    assert_eq!(
        ok_json(base, &["task", "show", start])["id"],
        first.as_str()
    );
    let start = simple(&first)[..24].to_uppercase();
    assert_eq!(
        ok_json(base, &["task", "show", &start])["id"],
        first.as_str()
    );
    // So does the end, which the web UI shows as a task's short id.
    let short = &simple(&second)[24..];
    assert_eq!(short.len(), 8);
    let shown = ok(base, &["task", "show", short]);
    assert!(
        shown.contains(&second) && shown.contains("encode"),
        "{shown}"
    );

    // Every command that takes an id takes a part of one.
    let out = ok(base, &["task", "cancel", short]);
    assert!(out.contains(&format!("cancelled task {second}")), "{out}");
    let out = ok(base, &["task", "retry", short]);
    assert!(out.contains("queued"), "{out}");
    let out = run(base, &["task", "logs", short]);
    assert!(out.status.success(), "{}", stderr(&out));

    let err = fails(base, &["task", "show", "ffff0000ffff"]);
    assert!(err.contains("no task starts with ffff0000ffff"), "{err}");
    let out = run(base, &["task", "show", "xyz"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a task id"), "{}", stderr(&out));
}

#[tokio::test]
async fn logs_mark_each_line_with_its_attempt_once_a_task_ran_again() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let agent = FakeAgent::register(base, "runner", &["ansible"]).await;
    let id = submitted_id(&ok(base, &["task", "submit", "play", "--cap", "ansible"]));
    let (_, attempt) = agent.claim().await;
    assert_eq!(attempt, 1);
    agent
        .log(&id, attempt, json!([{"text": "first try"}]))
        .await;
    // One attempt so far: the lines carry no mark.
    let out = ok(base, &["task", "logs", &id]);
    assert!(out.trim_end().ends_with(" stdout first try"), "{out}");
    agent.fail(&id, attempt, "host unreachable").await;
    ok(base, &["task", "retry", &id]);
    let (_, attempt) = agent.claim().await;
    assert_eq!(attempt, 2);

    let mut follower = Follower::start(base, &id);
    assert!(
        follower
            .expect_line("first try")
            .ends_with(" stdout [1] first try")
    );
    agent
        .log(
            &id,
            attempt,
            json!([{"stream": "stderr", "text": "second try"}]),
        )
        .await;
    assert!(
        follower
            .expect_line("second try")
            .ends_with(" stderr [2] second try")
    );
    agent.complete(&id, attempt).await;
    let (code, err) = follower.wait();
    assert_eq!(code, Some(0), "{err}");

    let out = ok(base, &["task", "logs", &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].ends_with(" stdout [1] first try"), "{out}");
    assert!(lines[1].ends_with(" stderr [2] second try"), "{out}");
}

#[tokio::test]
async fn escape_sequences_in_task_data_are_shown_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let agent = FakeAgent::register(base, "nas", &["docker"]).await;
    let id = submitted_id(&ok(
        base,
        &[
            "task",
            "submit",
            "restart",
            "--cap",
            "docker",
            "--payload",
            r#"{"note": "\u001b[5mblink"}"#,
        ],
    ));
    let (_, attempt) = agent.claim().await;
    agent
        .log(
            &id,
            attempt,
            json!([{"text": "\u{1b}[31mred\u{1b}[0m\r\u{1b}]0;owned\u{7}\ttab"}]),
        )
        .await;
    let mut follower = Follower::start(base, &id);
    let line = follower.expect_line("red");
    assert!(
        line.ends_with(r" stdout \x1b[31mred\x1b[0m\r\x1b]0;owned\x07	tab"),
        "{line:?}"
    );
    agent.fail(&id, attempt, "exit \u{1b}[2J1").await;
    let (code, err) = follower.wait();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(r"exit \x1b[2J1"), "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");

    for args in [
        vec!["task", "logs", id.as_str()],
        vec!["task", "show", id.as_str()],
        vec!["task", "list"],
    ] {
        let out = run(base, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text.contains('\u{1b}'),
            "{args:?} printed an escape: {text:?}"
        );
        assert!(!text.contains('\r') && !text.contains('\u{7}'), "{text:?}");
    }
    let shown = ok(base, &["task", "show", &id]);
    assert!(shown.contains(r"exit \x1b[2J1"), "{shown}");
    assert!(shown.contains(r"\u001b[5mblink"), "{shown}");
    // Scripts still get the data exactly, as JSON.
    let task = ok_json(base, &["task", "show", &id]);
    assert_eq!(task["error"], "exit \u{1b}[2J1");
}

#[test]
fn action_tasks_are_listed_by_their_action() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.as_str();
    let payload = r#"{"action": "restart_container", "params": {"container": "jellyfin"}}"#;
    let id = submitted_id(&ok(
        base,
        &[
            "task",
            "submit",
            "action",
            "--cap",
            "docker",
            "--payload",
            payload,
        ],
    ));
    let other = submitted_id(&ok(base, &["task", "submit", "backup"]));

    let table = ok(base, &["task", "list"]);
    assert!(table.lines().next().unwrap().contains("TASK"), "{table}");
    let row = table.lines().find(|l| l.contains(&id)).expect("listed");
    assert!(row.contains("restart_container"), "{row}");
    let row = table.lines().find(|l| l.contains(&other)).expect("listed");
    assert!(row.contains("backup"), "{row}");
    let shown = ok(base, &["task", "show", &id]);
    assert!(shown.contains("restart_container"), "{shown}");
}

#[tokio::test]
async fn an_offline_agent_is_listed_without_its_stale_load() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        &dir.path().join("m.db"),
        &[("HEARTBEAT_TIMEOUT", "1s"), ("SWEEP_INTERVAL", "1s")],
    );
    let base = served.base.as_str();
    let agent = FakeAgent::register(base, "pi-4", &["gpio"]).await;
    agent
        .post(
            "/api/v1/agents/pi-4/heartbeat",
            json!({"cpu_percent": 87.0, "memory_percent": 64.0}),
        )
        .await;
    let row = ok(base, &["agents", "list"]);
    assert!(row.contains("87.0%") && row.contains("64.0%"), "{row}");

    let deadline = Instant::now() + DEADLINE;
    while ok_json(base, &["agents", "show", "pi-4"])["status"] != "offline" {
        assert!(Instant::now() < deadline, "the agent never went offline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = ok(base, &["agents", "list"]);
    let row = table.lines().find(|l| l.contains("pi-4")).expect("listed");
    assert!(row.contains("offline"), "{row}");
    assert!(!row.contains('%'), "no stale load: {row}");
    let shown = ok(base, &["agents", "show", "pi-4"]);
    assert!(!shown.contains("87.0%"), "no stale load: {shown}");
}

/// A webhook receiver on a thread: answers each request 200 with `{"ok":true}`.
fn receiver() -> String {
    format!("{}/hook", answering(r#"{"ok":true}"#.to_owned()))
}

/// A plain HTTP service on loopback that answers every request 200 with `body`; its base URL.
fn answering(body: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut request = vec![0u8; length];
            let _ = stream.read_exact(&mut request);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    url
}

#[test]
fn notify_test_sends_a_message_and_prints_what_the_service_answered() {
    let url = receiver();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    std::fs::write(
        &config,
        format!(
            "[[notify.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
             secret_env = \"HOOK_SECRET\"\n\n[[notify.rules]]\non = [\"task.failed\"]\nto = [\"hook\"]\n"
        ),
    )
    .unwrap();
    let served = Served::start(
        &dir.path().join("muster.db"),
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("HOOK_SECRET", "a-webhook-secret-0123456789"),
        ],
    );
    let base = served.base.as_str();

    let out = ok(base, &["notify", "test", "hook"]);
    assert!(out.contains("hook: delivered: HTTP 200 in "), "{out}");
    assert!(out.contains("the service answered: {\"ok\":true}"), "{out}");
    let channels = ok(base, &["notify", "channels"]);
    assert!(
        channels.contains("hook")
            && channels.contains("webhook")
            && channels.contains("task.failed"),
        "{channels}"
    );
    assert!(!channels.contains("a-webhook-secret"), "{channels}");
    let err = fails(base, &["notify", "test", "pager"]);
    assert!(err.contains("\"pager\"") && err.contains("hook"), "{err}");
    let audit: Value = serde_json::from_str(&ok(base, &["notify", "list", "--json"])).unwrap();
    assert_eq!(
        audit["notifications"],
        json!([]),
        "a test message is not a notification"
    );
}

#[test]
fn gitops_plan_names_the_matched_files_and_deployments_list_what_pushes_made() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    std::fs::write(
        &config,
        "[[git.sources]]\nname = \"infra\"\nforge = \"github\"\nsecret_env = \"HOOK_SECRET\"\n\n\
         [[git.rules]]\nname = \"web\"\nsource = \"infra\"\nbranch = \"main\"\n\
         paths = [\"roles/web/**\"]\ntask = { kind = \"ansible\", payload = { playbook = \"web.yml\" } }\n\
         lock_key = \"deploy:{repo}:{playbook}\"\n\n\
         [[git.rules]]\nname = \"dns\"\nsource = \"infra\"\nbranch = \"main\"\n\
         paths = [\"roles/dns/**\"]\ntask = { kind = \"ansible\" }\n",
    )
    .unwrap();
    let served = Served::start(
        &dir.path().join("muster.db"),
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("HOOK_SECRET", "a-hook-secret-0123456789"),
        ],
    );
    let base = served.base.as_str();
    let payload = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../muster-server/tests/fixtures/forges/github/push.json"
    );

    let out = ok(base, &["gitops", "plan", "--source", "infra", payload]);
    assert!(
        out.contains("push of homelab/infra main at c3d4e5f6"),
        "{out}"
    );
    assert!(
        out.contains("roles/web/tasks.yml (roles/web/**)")
            && out.contains("deploy:homelab/infra:web.yml"),
        "{out}"
    );
    assert!(out.contains("none of the"), "dns says why it skips: {out}");
    let plan = ok_json(base, &["gitops", "plan", "--source", "infra", payload]);
    assert_eq!(plan["rules"][0]["outcome"], "matched");
    assert_eq!(plan["rules"][1]["outcome"], "skipped");

    let err = fails(base, &["gitops", "plan", "--source", "nowhere", payload]);
    assert!(err.contains("\"nowhere\""), "{err}");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"ref\": 3}").unwrap();
    let err = fails(
        base,
        &[
            "gitops",
            "plan",
            "--source",
            "infra",
            junk.to_str().unwrap(),
        ],
    );
    assert!(err.contains("payload: not a GitHub push"), "{err}");
    // A plan deploys nothing.
    let list = ok_json(base, &["gitops", "deployments"]);
    assert_eq!(list["deployments"], json!([]), "{list}");
}

#[tokio::test]
async fn gitops_pause_holds_a_push_resume_runs_it_and_redeploy_runs_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    std::fs::write(
        &config,
        "[[git.sources]]\nname = \"infra\"\nforge = \"gitlab\"\nsecret_env = \"HOOK_SECRET\"\n\n\
         [[git.rules]]\nname = \"web\"\nsource = \"infra\"\nbranch = \"main\"\n\
         paths = [\"roles/web/**\"]\ntask = { kind = \"ansible\", payload = { playbook = \"web.yml\" } }\n\
         check_first = true\n",
    )
    .unwrap();
    const SECRET: &str = "a-hook-secret-0123456789";
    let served = Served::start(
        &dir.path().join("muster.db"),
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("HOOK_SECRET", SECRET),
        ],
    );
    let base = served.base.as_str();

    let out = ok(base, &["gitops", "pause", "--rule", "web"]);
    assert!(out.contains("paused rule web"), "{out}");
    let again = ok(base, &["gitops", "pause", "--rule", "web"]);
    assert!(again.contains("was paused already"), "{again}");
    let err = fails(base, &["gitops", "pause", "--source", "nowhere"]);
    assert!(
        err.contains("\"nowhere\"") && err.contains("infra"),
        "{err}"
    );
    let pauses = ok(base, &["gitops", "pauses"]);
    assert!(
        pauses.contains("rule") && pauses.contains("web"),
        "{pauses}"
    );
    assert!(pauses.contains("operator:api"), "{pauses}");

    // A push while paused is recorded, and waits.
    let payload = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../muster-server/tests/fixtures/forges/gitlab/push.json"
    ))
    .unwrap();
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/hooks/git/infra"))
        .header("content-type", "application/json")
        .header("X-Gitlab-Event", "Push Hook")
        .header("Idempotency-Key", "cli-1")
        .header("X-Gitlab-Token", SECRET)
        .body(payload)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "deployed", "{answer}");
    let id = answer["deployment"]["id"].as_str().unwrap().to_owned();
    let list = ok(base, &["gitops", "deployments"]);
    assert!(
        list.contains("paused") && list.contains("web (held by a pause)"),
        "{list}"
    );

    let out = ok(base, &["gitops", "resume", "--rule", "web"]);
    assert!(
        out.contains("resumed rule web: 1 held task(s) submitted"),
        "{out}"
    );
    let list = ok(base, &["gitops", "deployments"]);
    assert!(list.contains("web (check queued)"), "{list}");
    let out = ok(base, &["gitops", "resume", "--rule", "web"]);
    assert!(out.contains("was not paused"), "{out}");

    let plan = ok(
        base,
        &["gitops", "plan", "--source", "infra", "--delivery", "cli-1"],
    );
    assert!(
        plan.contains("roles/web/tasks.yml (roles/web/**)") && plan.contains("check first"),
        "{plan}"
    );
    let err = fails(
        base,
        &["gitops", "plan", "--source", "infra", "--delivery", "never"],
    );
    assert!(err.contains("\"never\""), "{err}");

    let out = ok(base, &["gitops", "redeploy", &id]);
    assert!(out.contains(&format!("redeploys {id}")), "{out}");
    let err = fails(
        base,
        &["gitops", "redeploy", &uuid::Uuid::now_v7().to_string()],
    );
    assert!(err.contains("not found") || err.contains("no "), "{err}");
    let list = ok_json(base, &["gitops", "deployments"]);
    assert_eq!(list["deployments"][0]["redeploy_of"], id.as_str(), "{list}");
    let none = ok_json(base, &["gitops", "deployments", "--state", "failed"]);
    assert_eq!(none["deployments"], json!([]), "{none}");
    let by_rule = ok_json(base, &["gitops", "deployments", "--rule", "web"]);
    assert_eq!(
        by_rule["deployments"].as_array().unwrap().len(),
        2,
        "{by_rule}"
    );
    let usage = run(base, &["gitops", "deployments", "--state", "broken"]);
    assert_eq!(usage.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&usage.stderr);
    assert!(err.contains("not one of pending"), "{err}");
}

#[test]
fn llm_test_prints_the_answer_tokens_and_cost_and_usage_sums_the_ledger() {
    let provider = answering(
        serde_json::json!({
            "id": "c1", "object": "chat.completion", "model": "gpt-test-2026",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, operator!"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        })
        .to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    std::fs::write(
        &config,
        format!(
            "[[llm.providers]]\nname = \"cloud\"\napi = \"openai\"\nurl = \"{provider}/v1\"\n\
             model = \"gpt-test\"\nkey_env = \"CLOUD_KEY\"\nprice = {{ input = 0.5, output = 1.5 }}\n"
        ),
    )
    .unwrap();
    let served = Served::start(
        &dir.path().join("muster.db"),
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("CLOUD_KEY", "sk-cli-test-0123456789"),
        ],
    );
    let base = served.base.as_str();

    let out = ok(base, &["llm", "test", "cloud"]);
    assert!(
        out.contains("cloud (gpt-test-2026) answered in ")
            && out.contains("12 tokens in, 5 out, cost 0.000014")
            && out.contains("Hello, operator!"),
        "{out}"
    );
    let missing = run(base, &["llm", "test", "nowhere"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("\"nowhere\"") && err.contains("cloud"),
        "{err}"
    );

    let usage = ok(base, &["llm", "usage"]);
    assert!(
        usage.contains("test") && usage.contains("0.000014"),
        "{usage}"
    );
    let by_model = ok_json(base, &["llm", "usage", "--by", "model"]);
    assert_eq!(by_model["rows"][0]["model"], "gpt-test-2026", "{by_model}");
    assert_eq!(by_model["rows"][0]["input_tokens"], 12);
}

/// A monitor's generic alert, sent to the `mon` source with its bearer token; answers the id
/// of the incident it opened.
async fn alert(base: &str, token: &str, monitor: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/hooks/alerts/mon"))
        .bearer_auth(token)
        .json(&json!({"monitor": monitor, "status": "firing", "message": "down"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "recorded", "{answer}");
    answer["incidents"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no incident in {answer}"))
        .to_owned()
}

/// Waits (bounded) until the incident is in `state`; answers it.
async fn incident_in(base: &str, id: &str, state: &str) -> Value {
    common::until(
        DEADLINE,
        &format!("incident {id} to become {state}"),
        || async {
            let incident: Value = reqwest::get(format!("{base}/api/v1/incidents/{id}"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (incident["state"] == state).then_some(incident)
        },
    )
    .await
}

#[tokio::test]
async fn incidents_are_listed_shown_approved_and_denied_and_repair_pauses_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    std::fs::write(
        &config,
        "[[alerts.sources]]\nname = \"mon\"\nkind = \"generic\"\ntoken_env = \"MON_TOKEN\"\n\n\
         [[actions]]\nname = \"reboot_host\"\nparams = { host = \"^[a-z0-9-]+$\" }\n\
         capability = \"power\"\nrisky = true\n\n\
         [[repair.targets]]\nname = \"nas\"\nmonitor = \"nas*\"\nactions = [\"reboot_host\"]\n\
         params = { host = \"nas\" }\nrunbook = [\"reboot_host\"]\n",
    )
    .unwrap();
    const TOKEN: &str = "a-monitor-token-0123456789";
    let served = Served::start(
        &dir.path().join("muster.db"),
        &[
            ("MUSTER_CONFIG", config.to_str().unwrap()),
            ("MON_TOKEN", TOKEN),
        ],
    );
    let base = served.base.as_str();

    let none = ok_json(base, &["incidents", "list"]);
    assert_eq!(none["incidents"], json!([]), "{none}");

    // The risky runbook step waits for an operator.
    let id = alert(base, TOKEN, "nas-ping").await;
    incident_in(base, &id, "awaiting_approval").await;
    let list = ok(base, &["incidents", "list"]);
    assert!(
        list.contains(&id)
            && list.contains("awaiting_approval")
            && list.contains("nas-ping")
            && list.contains("0/2")
            && list.contains("waiting for approval of reboot_host"),
        "{list}"
    );
    let open = ok_json(base, &["incidents", "list", "--open", "--target", "nas"]);
    assert_eq!(open["incidents"][0]["id"], id.as_str(), "{open}");
    let resolved = ok_json(base, &["incidents", "list", "--state", "resolved"]);
    assert_eq!(resolved["incidents"], json!([]), "{resolved}");
    let usage = run(base, &["incidents", "list", "--state", "down"]);
    assert_eq!(usage.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&usage).contains("not one of open"),
        "{}",
        stderr(&usage)
    );

    let shown = ok(base, &["incidents", "show", &id]);
    assert!(
        shown.contains("awaiting_approval")
            && shown.contains("reboot_host (host=nas)")
            && shown.contains("runbook")
            && shown.contains("approval expires"),
        "{shown}"
    );
    let story = shown
        .split("story:")
        .nth(1)
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        story.contains("opened")
            && story.contains("decided")
            && story.contains("approval_requested")
            && story.contains("system"),
        "{story}"
    );
    let err = fails(
        base,
        &["incidents", "show", &uuid::Uuid::now_v7().to_string()],
    );
    assert!(err.contains("not found"), "{err}");
    let usage = run(base, &["incidents", "approve", "12ab"]);
    assert_eq!(usage.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&usage).contains("\"12ab\" is not an incident id"),
        "{}",
        stderr(&usage)
    );

    // Approved, its task is submitted (no agent has "power": it stays queued).
    let out = ok(base, &["incidents", "approve", &id]);
    assert!(
        out.contains(&format!(
            "approved reboot_host (host=nas): incident {id} is repairing, task "
        )),
        "{out}"
    );
    let again = fails(base, &["incidents", "approve", &id]);
    assert!(
        again.contains(&format!(
            "cannot approve: incident {id} is repairing: nothing waits for approval"
        )),
        "{again}"
    );
    let shown = ok_json(base, &["incidents", "show", &id]);
    assert_eq!(shown["state"], "repairing");
    let approved = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "approved")
        .unwrap_or_else(|| panic!("no approval in {shown}"));
    assert_eq!(approved["actor"], "operator:api", "{approved}");

    // Another monitor is another incident; denied, it escalates with the reason.
    let second = alert(base, TOKEN, "nas-web").await;
    assert_ne!(second, id);
    incident_in(base, &second, "awaiting_approval").await;
    let out = ok(
        base,
        &[
            "incidents",
            "deny",
            &second,
            "--reason",
            "the NAS is being rebuilt",
        ],
    );
    assert!(
        out.contains(&format!("denied: incident {second} is escalated"))
            && out.contains("the NAS is being rebuilt"),
        "{out}"
    );
    let err = fails(base, &["incidents", "deny", &second]);
    assert!(
        err.contains("cannot deny: ") && err.contains("is escalated: nothing waits"),
        "{err}"
    );
    let escalated = ok_json(base, &["incidents", "list", "--state", "escalated"]);
    assert_eq!(
        escalated["incidents"][0]["id"],
        second.as_str(),
        "{escalated}"
    );
    let open = ok_json(base, &["incidents", "list", "--open"]);
    assert_eq!(open["incidents"].as_array().unwrap().len(), 1, "{open}");

    // Pauses, per target and for everything.
    let out = ok(base, &["repair", "pause", "--target", "nas"]);
    assert!(out.contains("paused self-repair of target nas"), "{out}");
    let out = ok(base, &["repair", "pause", "--target", "nas"]);
    assert!(out.contains("target nas was paused already"), "{out}");
    let status = ok(base, &["repair", "status"]);
    assert!(
        status.contains("self-repair is on; 1 target(s) paused")
            && status.contains("runbook")
            && status.contains("reboot_host")
            && status.contains("yes, by operator:api")
            && status.contains("1/3"),
        "{status}"
    );
    let json = ok_json(base, &["repair", "status"]);
    assert_eq!(json["paused"], false, "{json}");
    assert_eq!(json["targets"][0]["paused"], true, "{json}");
    let err = fails(base, &["repair", "pause", "--target", "nope"]);
    assert!(
        err.contains("cannot pause") && err.contains("\"nope\"") && err.contains("nas"),
        "{err}"
    );

    let out = ok(base, &["repair", "pause"]);
    assert!(out.contains("paused all of self-repair"), "{out}");
    let status = ok(base, &["repair", "status"]);
    assert!(
        status.contains("self-repair is paused for every target, by operator:api"),
        "{status}"
    );
    let out = ok(base, &["repair", "resume", "--target", "nas"]);
    assert!(
        out.contains("resumed self-repair of target nas, but all of self-repair is still paused"),
        "{out}"
    );
    let out = ok(base, &["repair", "resume"]);
    assert!(out.contains("resumed all of self-repair"), "{out}");
    let out = ok(base, &["repair", "resume", "--target", "nas"]);
    assert!(out.contains("target nas was not paused"), "{out}");
    let json = ok_json(base, &["repair", "status"]);
    assert_eq!(json["paused"], false, "{json}");
    assert_eq!(json["targets"][0]["paused"], false, "{json}");
    assert_eq!(json["pauses"], json!([]), "{json}");
}

#[tokio::test]
async fn schedules_are_listed_shown_run_paused_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    // New Year's morning only: the loop, which looks every second, leaves it alone.
    std::fs::write(
        &config,
        "[[schedules]]\nname = \"from-file\"\ncron = \"0 4 1 1 *\"\n\
         task = { kind = \"tick\" }\nlock_key = \"ticks\"\n",
    )
    .unwrap();
    let served = Served::start(
        &dir.path().join("muster.db"),
        &[("MUSTER_CONFIG", config.to_str().unwrap())],
    );
    let base = served.base.as_str();
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/schedules"))
        .json(
            &json!({"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                      "task": {"kind": "backup", "payload": {"what": "photos"},
                               "labels": {"owner": "ops"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());

    let list = ok(base, &["schedules", "list"]);
    let header = list.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "ORIGIN",
        "CRON",
        "ZONE",
        "NEXT",
        "LAST",
        "TASK STATE",
        "PAUSED",
    ] {
        assert!(header.contains(column), "{column} in {list}");
    }
    let row = |list: &str, name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .to_owned()
    };
    let file = row(&list, "from-file");
    assert!(
        file.contains("config") && file.contains("0 4 1 1 *") && file.contains("UTC"),
        "{file}"
    );
    let nightly = row(&list, "nightly");
    assert!(
        nightly.contains("api")
            && nightly.contains("30 2 * * *")
            && nightly.contains("Europe/Berlin")
            && nightly.contains("(in ")
            && nightly.trim_end().ends_with("no"),
        "{nightly}"
    );
    let json = ok_json(base, &["schedules", "list"]);
    assert_eq!(json["schedules"][0]["name"], "from-file", "{json}");
    assert_eq!(json["schedules"][0]["origin"], "config", "{json}");
    assert_eq!(json["schedules"][1]["name"], "nightly", "{json}");

    // Run now: the task and how to follow it.
    let out = ok(base, &["schedules", "run", "nightly"]);
    let id = submitted_id(&out);
    assert!(
        out.contains(&format!("ran nightly: task {id} (backup) is queued"))
            && out.contains(&format!("muster task logs --follow {id}")),
        "{out}"
    );
    let task = ok_json(base, &["task", "show", &id]);
    assert_eq!(task["labels"]["schedule"], "nightly", "{task}");
    assert_eq!(task["payload"]["what"], "photos", "{task}");
    let ran = ok_json(base, &["schedules", "run", "nightly"]);
    assert_eq!(ran["firing"]["trigger"], "run", "{ran}");
    assert_eq!(ran["firing"]["actor"], "operator:api", "{ran}");
    assert_eq!(ran["task"]["kind"], "backup", "{ran}");

    let shown = ok(base, &["schedules", "show", "nightly"]);
    assert!(
        shown.contains("30 2 * * * in Europe/Berlin")
            && shown.contains("backup")
            && shown.contains("owner=ops")
            && shown.contains(r#"{"what":"photos"}"#),
        "{shown}"
    );
    let firings = shown
        .split("firings:")
        .nth(1)
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        firings.contains(&id) && firings.contains("run") && firings.contains("operator:api"),
        "{firings}"
    );
    let detail = ok_json(base, &["schedules", "show", "nightly"]);
    assert_eq!(detail["firings"].as_array().unwrap().len(), 2, "{detail}");
    let nightly = row(&ok(base, &["schedules", "list"]), "nightly");
    assert!(
        nightly.contains("(run)") && nightly.contains("queued"),
        "{nightly}"
    );

    // Pause and resume, each twice.
    let out = ok(base, &["schedules", "pause", "nightly"]);
    assert!(out.starts_with("paused nightly:"), "{out}");
    let out = ok(base, &["schedules", "pause", "nightly"]);
    assert!(out.contains("nightly was paused already"), "{out}");
    let nightly = row(&ok(base, &["schedules", "list"]), "nightly");
    assert!(
        nightly.contains("(paused)") && nightly.contains("yes, by operator:api"),
        "{nightly}"
    );
    let json = ok_json(base, &["schedules", "resume", "nightly"]);
    assert_eq!(json["changed"], true, "{json}");
    assert_eq!(json["schedule"]["paused"], false, "{json}");
    let out = ok(base, &["schedules", "resume", "nightly"]);
    assert!(out.contains("nightly was not paused"), "{out}");
    let out = ok(base, &["schedules", "pause", "nightly"]);
    assert!(out.starts_with("paused nightly:"), "{out}");
    let out = ok(base, &["schedules", "resume", "nightly"]);
    assert!(
        out.starts_with("resumed nightly: next firing ") && out.contains("stays skipped"),
        "{out}"
    );

    // An unknown name says where the names are, for every verb.
    for verb in ["show", "run", "pause", "resume"] {
        let err = fails(base, &["schedules", verb, "nope"]);
        assert!(
            err.contains("no schedule named nope; `muster schedules list` shows them"),
            "{verb}: {err}"
        );
    }
    let tasks = ok_json(base, &["task", "list", "--kind", "backup"]);
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len(),
        2,
        "nothing more ran: {tasks}"
    );
}
