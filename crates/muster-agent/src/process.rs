//! Starting and stopping processes: the one place in muster that spawns programs.
//!
//! Programs start without a shell (argv goes straight to exec), in a process group of their
//! own so that a timeout or a cancel can kill everything they started. Output is streamed to
//! the task's log line by line as it comes; the exit code decides the outcome.

use std::process::Stdio;
use std::time::Duration;

use muster_api::LogStream;
use muster_client::{HandlerError, TaskContext};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest log line kept; longer lines are cut so one runaway line cannot bloat the store.
const MAX_LINE: usize = 64 * 1024;

/// How long a process group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Runs `argv` to the end, or until `timeout` or a cancel, which kill its process group.
pub async fn run(
    ctx: &TaskContext,
    argv: &[String],
    timeout: Option<Duration>,
) -> Result<Value, HandlerError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| HandlerError::Permanent(format!("cannot start {:?}: {e}", argv[0])))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    ctx.log(
        LogStream::System,
        format!(
            "$ {}",
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
        ),
    );
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let ended = async {
        tokio::join!(
            pump(stdout, LogStream::Stdout, ctx),
            pump(stderr, LogStream::Stderr, ctx)
        );
        child.wait().await
    };
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let stopped_because = tokio::select! {
        status = ended => {
            let status = status.map_err(|e| HandlerError::Retryable(format!("waiting for the process failed: {e}")))?;
            return match status.code() {
                Some(0) => {
                    ctx.log(LogStream::System, "exit code 0");
                    Ok(json!({"exit_code": 0}))
                }
                Some(code) => {
                    ctx.log(LogStream::System, format!("exit code {code}"));
                    Err(HandlerError::Retryable(format!("{:?} exited with code {code}", argv[0])))
                }
                None => Err(HandlerError::Retryable(format!("{:?} was killed by a signal", argv[0]))),
            };
        }
        _ = ctx.cancellation().cancelled() => "cancelled",
        _ = deadline => "timed out",
    };
    if let Some(pid) = pid {
        kill_group(pid, &mut child).await;
    }
    ctx.log(
        LogStream::System,
        format!("{stopped_because}: killed the process group"),
    );
    match stopped_because {
        "cancelled" => Err(HandlerError::Cancelled("the process was killed".into())),
        _ => Err(HandlerError::Retryable(format!(
            "timed out after {}s; the process was killed",
            timeout.unwrap_or_default().as_secs()
        ))),
    }
}

/// SIGTERM to the whole group, then SIGKILL if it is still there after a grace period.
async fn kill_group(pid: Pid, child: &mut tokio::process::Child) {
    let _ = killpg(pid, Signal::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever else the group started may outlive its leader; make sure it is gone.
    let _ = killpg(pid, Signal::SIGKILL);
}

async fn pump(reader: impl AsyncRead + Unpin, stream: LogStream, ctx: &TaskContext) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                buf.truncate(MAX_LINE);
                ctx.log(stream, String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
}
