//! The README's commands, run as written: its "Try it" block in bash against a real
//! `muster serve`, and its `muster agent` line, with no key, against a server without one.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Served;
use serde_json::Value;

/// How long a step may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md is readable")
}

/// The first ```sh block after the line `heading`.
fn sh_block(text: &str, heading: &str) -> String {
    let after = text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in README.md"))
        .1;
    let block = after
        .split_once("```sh\n")
        .unwrap_or_else(|| panic!("no sh block after {heading:?}"))
        .1;
    block
        .split_once("\n```")
        .expect("the block is closed")
        .0
        .to_owned()
}

/// `name` is on the PATH; when it is not, says so loudly (past the harness's capture).
fn have(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the README's commands need {name}, which is not installed ***\n"
        );
    }
    found
}

fn get(base: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(["-s", "--noproxy", "*", "--max-time", "10"])
        .arg(format!("{base}{path}"))
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits (bounded) for `child` to exit; kills it and fails when it does not.
fn wait(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_try_it_block_runs_as_written() {
    if !have("curl") || !have("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let address = served.base.trim_start_matches("http://");
    let block = sh_block(&readme(), "## Try it");
    assert!(block.contains("localhost:8000"), "{block}");
    let block = block.replace("localhost:8000", address);
    // Every request is bounded and must succeed; the endless event stream at the end is cut
    // after a moment, as a reader would with Ctrl-C.
    let script = format!(
        r#"set -euo pipefail
curl() {{
  case "$*" in
    *api/v1/events*) command curl --max-time 2 "$@" || [ $? -eq 28 ] ;;
    *) command curl --max-time 30 --fail-with-body "$@" ;;
  esac
}}
{block}
"#
    );
    let path = dir.path().join("try-it.sh");
    std::fs::write(&path, script).unwrap();
    let mut child = Command::new("bash")
        .arg(&path)
        .current_dir(dir.path())
        // A proxy from the environment must not carry requests meant for loopback.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
        text
    });
    let status = wait(&mut child, "the README's Try it block");
    let stdout = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
    assert!(
        status.success(),
        "the README's Try it block failed ({status}):\n{stdout}\n{stderr}"
    );

    // The claim handed the task out running, and the log follow replayed its line.
    assert!(stdout.contains(r#""state":"running""#), "{stdout}");
    assert!(stdout.contains("restarting jellyfin"), "{stdout}");
    let tasks = get(&served.base, "/api/v1/tasks");
    let task = &tasks["tasks"][0];
    assert_eq!(task["state"], "completed", "{tasks}");
    assert_eq!(task["result"]["exit_code"], 0, "{tasks}");
    assert!(
        stdout.contains(&format!("task {}", task["id"].as_str().unwrap())),
        "the block printed the id it kept: {stdout}"
    );
}

#[test]
fn the_agent_command_needs_no_key_when_the_server_has_none() {
    if !have("curl") {
        return;
    }
    let text = readme();
    let line = text
        .lines()
        .find(|l| l.starts_with("muster agent "))
        .expect("the README shows how to start an agent");
    let command = line.split('#').next().unwrap().trim();
    assert!(
        !command.contains(['\'', '"', '$', '\\']),
        "a plain command line: {command}"
    );
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("m.db"), &[]);
    let args: Vec<String> = command
        .split_whitespace()
        .skip(1)
        .map(|arg| arg.replace("http://127.0.0.1:8000", &served.base))
        .collect();
    assert!(
        args.contains(&served.base),
        "the line names the server: {command}"
    );
    let config = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("the line names a config file");
    let agent_id = muster_agent::AgentConfig::load(&repo().join(config))
        .expect("the README's config loads")
        .config
        .agent
        .id;
    let log = dir.path().join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(&args)
        .current_dir(repo())
        .env_remove("MUSTER_AGENT_KEY")
        .env_remove("MUSTER_API_KEY")
        .env_remove("MUSTER_URL")
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("muster agent starts");
    let deadline = Instant::now() + DEADLINE;
    let registered = loop {
        let agents = get(&served.base, "/api/v1/agents");
        let found = agents["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["agent_id"] == agent_id.as_str())
            .cloned();
        if let Some(found) = found {
            break found;
        }
        if let Some(status) = agent.try_wait().unwrap() {
            let why = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("`{command}` exited with {status} before registering: {why}");
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            panic!("`{command}` did not register within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(registered["status"], "online", "{registered}");
    let capabilities = registered["capabilities"].to_string();
    assert!(capabilities.contains("docker"), "{registered}");
}
