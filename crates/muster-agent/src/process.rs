//! Starting and stopping processes: the one place in muster that spawns programs.
//!
//! Programs start without a shell (argv goes straight to exec), in a process group of their
//! own so that a timeout or a cancel can kill everything they started. Output is streamed to
//! the task's log line by line as it comes; the exit code decides the outcome.
//!
//! How a program is started is the [`Launcher`]'s choice. Spawned directly, an action outlives
//! an agent killed with SIGKILL (no code of the agent runs then), and after failover the work
//! runs twice. Under a supervisor the action's whole process group dies with the agent: the
//! supervisor's stdin is a pipe whose other end only the agent holds, and the kernel closes it
//! when the agent dies, however it dies. `muster agent` supervises through its own executable
//! (`muster __exec-child`); a program that embeds this crate chooses, and spawns directly
//! unless it names a supervisor.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

/// How [`run`] starts a program.
#[derive(Debug, Clone, Default)]
pub enum Launcher {
    /// As a child of the agent. If the agent is killed with SIGKILL the program keeps running
    /// (a cancel, a timeout or a drain still kill its group).
    #[default]
    Direct,
    /// As `program args… argv…`, a supervisor that must: start `argv` in its own process group
    /// (the agent makes the supervisor a group leader), with stdin from /dev/null and its
    /// stdout and stderr; kill that group with SIGKILL when its own stdin, a pipe the agent
    /// holds and never writes to, reaches end of file; leave SIGTERM to the action (the agent
    /// sends it to the whole group on a cancel); and exit as the action exited.
    /// `muster __exec-child --` is one.
    Supervised {
        program: PathBuf,
        args: Vec<OsString>,
    },
}

/// Runs `argv` to the end, or until `timeout` or a cancel, which kill its process group.
pub async fn run(
    ctx: &TaskContext,
    launcher: &Launcher,
    argv: &[String],
    timeout: Option<Duration>,
) -> Result<Value, HandlerError> {
    let (mut child, agent_alive) = spawn(ctx, launcher, argv)?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    // Should this future be dropped before the program ends (the runtime gives up on a
    // handler that outlives its cancel grace), the whole group goes, not only its leader.
    // Declared after `child`, so it runs while the leader is not yet reaped and its group id
    // cannot have been reused.
    let mut group_guard = GroupGuard(pid);
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
            group_guard.0 = None;
            drop(agent_alive);
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
    group_guard.0 = None;
    drop(agent_alive);
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

/// Starts `argv` the way `launcher` says, as the leader of a new process group, and returns
/// the child with, under a supervisor, the pipe end that keeps it from killing the group.
fn spawn(
    ctx: &TaskContext,
    launcher: &Launcher,
    argv: &[String],
) -> Result<(tokio::process::Child, Option<tokio::process::ChildStdin>), HandlerError> {
    let cannot_start =
        |e: std::io::Error| HandlerError::Permanent(format!("cannot start {:?}: {e}", argv[0]));
    let direct = || command(&argv[0], &argv[1..], Stdio::null()).spawn();
    let Launcher::Supervised { program, args } = launcher else {
        return Ok((direct().map_err(cannot_start)?, None));
    };
    // The supervisor reports a program it cannot start only through its exit code, which any
    // program may also use; look first, so that a missing program fails the task for good, as
    // it does when spawned directly.
    if !findable(&argv[0]) {
        return Err(cannot_start(std::io::ErrorKind::NotFound.into()));
    }
    let supervised = command(program, args, Stdio::piped()).args(argv).spawn();
    match supervised {
        Ok(mut child) => {
            // Held, never written, until the program ends: tokio's `wait` would close it.
            let agent_alive = child.stdin.take();
            Ok((child, agent_alive))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The supervisor's executable is gone (replaced by an upgrade, say); running the
            // action beats failing it, but say what protection it lacks.
            let warning = format!(
                "the supervisor {} cannot start ({e}); starting {:?} directly: it will \
                 outlive this agent if the agent is killed",
                program.display(),
                argv[0]
            );
            tracing::warn!("{warning}");
            ctx.log(LogStream::System, warning);
            Ok((direct().map_err(cannot_start)?, None))
        }
        Err(e) => Err(HandlerError::Retryable(format!(
            "cannot start the supervisor {}: {e}",
            program.display()
        ))),
    }
}

fn command(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[impl AsRef<std::ffi::OsStr>],
    stdin: Stdio,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Whether exec would find `program`: a path to an executable file, or a name found in one
/// of PATH's directories (the C library's default path when PATH is unset).
fn findable(program: &str) -> bool {
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path).any(|dir| executable(&dir.join(program)))
}

/// Kills a process group with SIGKILL when dropped, unless disarmed (set to `None`).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(pid, Signal::SIGKILL);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findable_looks_where_exec_looks() {
        assert!(findable("sh"));
        assert!(findable("/bin/sh"));
        assert!(!findable("no-such-program-here"));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            !findable(plain.to_str().unwrap()),
            "a file that is not executable"
        );
        assert!(!findable("/bin"), "a directory");
    }
}
