//! The server under test as a child process (`muster serve` on a fresh SQLite file), and its
//! resident memory and CPU time read from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Serialize;

use crate::BenchError;

/// Linux reports CPU time in clock ticks of USER_HZ, 100 per second on every mainstream build.
const TICKS_PER_SECOND: f64 = 100.0;

/// A `muster serve` child on a temporary database; killed when dropped.
pub struct LocalServer {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

/// Memory and CPU of a process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
}

impl LocalServer {
    /// Starts `binary serve` on 127.0.0.1:0 and waits for the address it reports.
    pub fn start(binary: &Path, env: &[(&str, &str)]) -> Result<LocalServer, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(format!("temp dir: {e}")))?;
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .env("DB_PATH", dir.path().join("bench.db"))
            .env("ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("API_KEY")
            .env_remove("AGENT_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", binary.display())))?;
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                return Err(BenchError::Setup(
                    "the server exited before it reported its address".into(),
                ));
            };
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = entry["fields"]["addr"].as_str() {
                break addr.to_owned();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(LocalServer {
            child,
            base: format!("http://{addr}"),
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn usage(&self) -> Usage {
        usage(self.pid()).unwrap_or_default()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads VmRSS, VmHWM and utime + stime of `pid`.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Usage {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        cpu_seconds: ticks / TICKS_PER_SECOND,
    })
}

/// The running executable: `muster bench` measures the very binary it is part of.
pub fn this_binary() -> Result<PathBuf, BenchError> {
    std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find this executable: {e}")))
}
