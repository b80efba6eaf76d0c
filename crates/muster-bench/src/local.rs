//! The server under test as a child process (`muster serve` on a fresh SQLite file), and its
//! resident memory and CPU time read from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Serialize;

use crate::BenchError;

/// Linux reports CPU time in clock ticks of USER_HZ, 100 per second on every mainstream build.
const TICKS_PER_SECOND: f64 = 100.0;

const DB_FILE: &str = "bench.db";
const CONFIG_FILE: &str = "muster.toml";

/// A `muster serve` child on a temporary database; killed when dropped.
pub struct LocalServer {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

/// Memory, CPU and writes of a process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
    /// `/proc/PID/io`, when readable (it needs the same user, or a kernel with task I/O
    /// accounting).
    pub io: Option<IoCounters>,
}

/// The write side of `/proc/PID/io`, summed over the process's threads by the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IoCounters {
    /// Bytes the process caused to be sent to storage: page-cache pages it dirtied, counted
    /// when they become dirty (so a page rewritten before writeback counts once).
    pub write_bytes: u64,
    /// Bytes passed to write(), pwrite() and writev() on any file: pipes and sockets too.
    pub wchar: u64,
}

impl LocalServer {
    /// Starts `binary serve` on 127.0.0.1:0 and waits for the address it reports.
    pub fn start(binary: &Path, env: &[(&str, &str)]) -> Result<LocalServer, BenchError> {
        LocalServer::start_with_config(binary, None, env)
    }

    /// As [`LocalServer::start`], with `config` (TOML) as its config file: written next to the
    /// database and named by MUSTER_CONFIG, for the settings that have no variable
    /// (`[[git.sources]]`, `[[git.rules]]`).
    pub fn start_with_config(
        binary: &Path,
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<LocalServer, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(format!("temp dir: {e}")))?;
        let mut cmd = Command::new(binary);
        if let Some(config) = config {
            let path = dir.path().join(CONFIG_FILE);
            std::fs::write(&path, config)
                .map_err(|e| BenchError::Setup(format!("cannot write {}: {e}", path.display())))?;
            cmd.env("MUSTER_CONFIG", path);
        }
        cmd.arg("serve")
            .env("DB_PATH", dir.path().join(DB_FILE))
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
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The SQLite database the server writes.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join(DB_FILE)
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

/// Reads VmRSS, VmHWM, utime + stime and the write counters of `pid`.
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
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|text| parse_io(&text));
    Some(Usage {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        cpu_seconds: parse_cpu_ticks(&stat)? as f64 / TICKS_PER_SECOND,
        io,
    })
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name (which may hold spaces and parentheses) start after the
    // last ')'; utime and stime are the 14th and 15th fields of the line.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `write_bytes` and `wchar` from the text of `/proc/PID/io`.
pub fn parse_io(text: &str) -> Option<IoCounters> {
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    Some(IoCounters {
        write_bytes: field("write_bytes")?,
        wchar: field("wchar")?,
    })
}

/// The running executable: `muster bench` measures the very binary it is part of.
pub fn this_binary() -> Result<PathBuf, BenchError> {
    std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find this executable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_a_strange_command_name() {
        let stat = "4242 (mus) ter (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 129 0 0 20 0 9 0 123456 45678592 2100 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(731 + 129));
        assert_eq!(parse_cpu_ticks("4242 (muster) S 1"), None);
    }

    #[test]
    fn io_counters_are_read_by_name() {
        let io = "rchar: 6976\nwchar: 1048576\nsyscr: 10\nsyscw: 300\nread_bytes: 0\n\
                  write_bytes: 409600\ncancelled_write_bytes: 4096\n";
        assert_eq!(
            parse_io(io),
            Some(IoCounters {
                write_bytes: 409_600,
                wchar: 1_048_576
            })
        );
        // A kernel without task I/O accounting has no such file; a cut-off one has no figure.
        assert_eq!(parse_io("rchar: 1\nwchar: 2\n"), None);
    }
}
