//! Runs the real `muster` binary for the tests of this crate.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A `muster serve` child process and the address it reported.
pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Served {
    pub(crate) fn start(db: &Path, extra_env: &[(&str, &str)]) -> Served {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
        cmd.arg("serve")
            .env("DB_PATH", db)
            .env("ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env_remove("API_KEY")
            .env_remove("AGENT_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("muster starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("muster printed its address before exiting")
                .expect("readable log line");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(addr) = entry["fields"]["addr"].as_str() {
                break addr.to_owned();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// Sends SIGTERM, as an init system would, and waits for the exit status.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.child.wait().expect("reaped")
    }

    pub(crate) fn kill(mut self) {
        // std's kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `muster agent --config FILE` child process.
pub(crate) struct AgentProcess {
    pub(crate) child: Child,
}

impl AgentProcess {
    pub(crate) fn start(base: &str, config: &Path) -> AgentProcess {
        Self::start_with_env(base, config, &[])
    }

    /// Starts an agent with `extra_env` set in its environment (a `PATH` with stand-in
    /// programs first, say).
    pub(crate) fn start_with_env(
        base: &str,
        config: &Path,
        extra_env: &[(&str, &std::ffi::OsStr)],
    ) -> AgentProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
        cmd.args(["agent", "--config"])
            .arg(config)
            .args(["--url", base])
            .env_remove("MUSTER_API_KEY")
            .env_remove("MUSTER_AGENT_KEY")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("muster agent starts");
        AgentProcess { child }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub(crate) fn wait_exit(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "muster agent did not exit in time"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `router` on a free loopback port for the rest of the test (a stand-in for a model, a
/// webhook receiver, a probed service); its base URL.
pub(crate) async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Polls `check` until it answers `Some`, failing loudly (naming `what`) once `deadline` has
/// passed.
pub(crate) async fn until<T, F, Fut>(deadline: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = std::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
