//! Real `muster agent` processes against a real `muster serve`: an agent killed with SIGKILL
//! mid-task has its task run again on another agent (and its late report refused) and leaves
//! none of the action's processes running, and an agent sent SIGTERM finishes its running
//! task without claiming another.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{AgentProcess, Served};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

fn write_config(dir: &Path, agent_id: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{agent_id}.toml"));
    let config = format!(
        r#"
[agent]
id = "{agent_id}"
heartbeat_s = 1

[[actions]]
name = "work"
argv = ["sh", "-c", "echo started; sleep $0; echo finished", "{{seconds}}"]
params = {{ seconds = "[0-9]+" }}
capability = "work"

[[actions]]
name = "linger"
argv = ["sh", "-c", "sleep 300 & echo $! > $0/child; echo $$ > $0/pid; wait", "{dir}"]
capability = "work"

[[actions]]
name = "signals"
argv = ["sh", "-c", "grep -E '^Sig(Ign|Blk):' /proc/self/status; exit $0", "{{code}}"]
params = {{ code = "[0-9]+" }}
capability = "work"
"#,
        dir = dir.display()
    );
    std::fs::write(&path, config).unwrap();
    path
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Polls the task until `done` holds (bounded).
async fn wait_task(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let task = get(client, format!("{base}/api/v1/tasks/{id}")).await;
        if done(&task) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task never reached the expected state: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_registered(client: &reqwest::Client, base: &str, agent_id: &str) {
    let deadline = Instant::now() + DEADLINE;
    while client
        .get(format!("{base}/api/v1/agents/{agent_id}"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "{agent_id} never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(client: &reqwest::Client, base: &str, seconds: u32) -> String {
    submit_action(
        client,
        base,
        json!({"action": "work", "params": {"seconds": seconds.to_string()}}),
        2,
    )
    .await
}

async fn submit_action(
    client: &reqwest::Client,
    base: &str,
    payload: Value,
    max_retries: u32,
) -> String {
    let body = json!({"kind": "action", "capabilities": ["work"], "max_retries": max_retries,
                      "payload": payload});
    let task: Value = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    task["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_s_task_runs_again_elsewhere_and_its_late_report_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        &dir.path().join("m.db"),
        &[
            ("HEARTBEAT_TIMEOUT", "2s"),
            ("LEASE", "2s"),
            ("SWEEP_INTERVAL", "100ms"),
        ],
    );
    let base = served.base.clone();
    let client = reqwest::Client::new();

    let mut first = AgentProcess::start(&base, &write_config(dir.path(), "first"));
    wait_registered(&client, &base, "first").await;
    let id = submit(&client, &base, 3).await;
    let running = wait_task(&client, &base, &id, |t| t["state"] == "running").await;
    assert_eq!(running["agent_id"], "first");

    let _second = AgentProcess::start(&base, &write_config(dir.path(), "second"));
    wait_registered(&client, &base, "second").await;
    first.signal("-KILL");
    first.wait_exit(DEADLINE);

    let done = wait_task(&client, &base, &id, |t| t["state"] == "completed").await;
    assert_eq!(done["agent_id"], "second", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["attempts"][0]["agent_id"], "first");
    assert_eq!(done["attempts"][0]["outcome"], "lost", "{done}");
    assert_eq!(done["attempts"][1]["outcome"], "completed");
    let agent = get(&client, format!("{base}/api/v1/agents/first")).await;
    assert_eq!(agent["status"], "offline");

    // The first attempt's report, arriving late, is refused and changes nothing.
    let late = client
        .post(format!("{base}/api/v1/tasks/{id}/complete"))
        .json(&json!({"attempt": 1, "result": {"from": "the dead"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    let after = get(&client, format!("{base}/api/v1/tasks/{id}")).await;
    assert_eq!(after["result"], done["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.clone();
    let client = reqwest::Client::new();

    let mut agent = AgentProcess::start(&base, &write_config(dir.path(), "drainer"));
    wait_registered(&client, &base, "drainer").await;
    let running = submit(&client, &base, 2).await;
    wait_task(&client, &base, &running, |t| t["state"] == "running").await;
    agent.signal("-TERM");
    let later = submit(&client, &base, 0).await;

    let status = agent.wait_exit(DEADLINE);
    assert!(status.success(), "exit status {status}");
    let finished = get(&client, format!("{base}/api/v1/tasks/{running}")).await;
    assert_eq!(
        finished["state"], "completed",
        "the running task was not finished: {finished}"
    );
    let logs = get(&client, format!("{base}/api/v1/tasks/{running}/logs")).await;
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"] == "finished"),
        "{logs}"
    );
    let later = get(&client, format!("{base}/api/v1/tasks/{later}")).await;
    assert!(
        later["attempts"].as_array().is_none_or(|a| a.is_empty()),
        "claimed after SIGTERM: {later}"
    );
    assert!(
        matches!(later["state"].as_str(), Some("queued" | "assigned")),
        "{later}"
    );
}

/// True while a process with this pid exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| rest.split_whitespace().next() != Some("Z")),
        Err(_) => false,
    }
}

async fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_none_of_its_actions_processes_running() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.clone();
    let client = reqwest::Client::new();

    let mut agent = AgentProcess::start(&base, &write_config(dir.path(), "doomed"));
    wait_registered(&client, &base, "doomed").await;
    submit_action(&client, &base, json!({"action": "linger"}), 0).await;
    // The shell the agent started, and a process that shell started in turn.
    let shell = read_pid(&dir.path().join("pid")).await;
    let child = read_pid(&dir.path().join("child")).await;
    assert!(alive(shell) && alive(child));

    agent.signal("-KILL");
    agent.wait_exit(DEADLINE);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (pid, what) in [(shell, "the action"), (child, "the action's child")] {
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "{what} (pid {pid}) outlived the agent killed with SIGKILL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_starts_with_default_signals_and_its_exit_code_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let base = served.base.clone();
    let client = reqwest::Client::new();

    let _agent = AgentProcess::start(&base, &write_config(dir.path(), "plain"));
    wait_registered(&client, &base, "plain").await;
    let payload = json!({"action": "signals", "params": {"code": "3"}});
    let id = submit_action(&client, &base, payload, 0).await;
    let task = wait_task(&client, &base, &id, |t| t["state"] == "failed").await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{task}"
    );
    let logs = get(&client, format!("{base}/api/v1/tasks/{id}/logs")).await;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    // No standard signal ignored (Rust ignores SIGPIPE in its own processes) and none
    // blocked. Signals 32 and 33 are glibc's own: its posix_spawn leaves them ignored. What
    // this test process was started with (SIGHUP ignored under nohup, say) passes down to
    // every child by POSIX rules and is no fault of the agent's.
    let inherited = |state: &str| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(state)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    for (state, standard_signals) in [("SigIgn", 0x7fff_ffff_u64), ("SigBlk", u64::MAX)] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(state))
            .unwrap_or_else(|| panic!("no {state} line in {lines:?}"));
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        // SIGPIPE (bit 12) stays checked: Rust ignores it in this process, and the agent must
        // not pass that on.
        let sigpipe = 1u64 << 12;
        let ours = if state == "SigIgn" {
            inherited(state) & !sigpipe
        } else {
            0
        };
        assert_eq!(
            mask & standard_signals & !ours,
            0,
            "the action inherited a signal state: {line}"
        );
    }
}
