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
//!
//! A [`ServerProcess`] is the other kind: a program that runs beside a task and is spoken to
//! over its stdin and stdout (an MCP server over stdio). The supervisor cannot carry it (the
//! supervisor's stdin is its liveness pipe), and it needs none: its stdin is a pipe only the
//! agent holds, and a stdio MCP server exits when its stdin closes, as the MCP specification
//! has a client stop it, so it also ends with an agent killed outright.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use muster_api::LogStream;
use muster_client::{HandlerError, LogSink, TaskContext};
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

/// What to start: the argv, and where and with what environment when not the agent's own.
#[derive(Debug, Clone, Copy)]
pub struct Program<'a> {
    pub argv: &'a [String],
    /// The working directory; the agent's own when `None`.
    pub cwd: Option<&'a Path>,
    /// Variables set for the program on top of the agent's environment.
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> Program<'a> {
    /// `argv` in the agent's own directory and environment.
    pub fn new(argv: &'a [String]) -> Self {
        Program {
            argv,
            cwd: None,
            env: &[],
        }
    }
}

/// How a program that was let run to its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal nobody here sent (the OOM killer, an operator).
    Signal,
}

/// Runs `argv` to the end, or until `timeout` or a cancel, which kill its process group. The
/// exit code decides: 0 is the result `{"exit_code": 0}`, anything else a retryable error.
pub async fn run(
    ctx: &TaskContext,
    launcher: &Launcher,
    argv: &[String],
    timeout: Option<Duration>,
) -> Result<Value, HandlerError> {
    match run_program(ctx, launcher, Program::new(argv), timeout, &|_, _| {}).await? {
        Exit::Code(0) => Ok(json!({"exit_code": 0})),
        Exit::Code(code) => Err(HandlerError::Retryable(format!(
            "{:?} exited with code {code}",
            argv[0]
        ))),
        Exit::Signal => Err(HandlerError::Retryable(format!(
            "{:?} was killed by a signal",
            argv[0]
        ))),
    }
}

/// Runs `program` like [`run`], and hands every output line to `observe` as it goes to the
/// task's log, for executors that read what a program says (a summary, the last lines for an
/// error). How the program ended is the caller's to judge; only a start that fails, a cancel
/// and a timeout are errors here.
pub async fn run_program(
    ctx: &TaskContext,
    launcher: &Launcher,
    program: Program<'_>,
    timeout: Option<Duration>,
    observe: &(dyn Fn(LogStream, &str) + Sync),
) -> Result<Exit, HandlerError> {
    let argv = program.argv;
    let (mut child, agent_alive) = spawn(ctx, launcher, program)?;
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
            pump(stdout, LogStream::Stdout, ctx, observe),
            pump(stderr, LogStream::Stderr, ctx, observe)
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
            return Ok(match status.code() {
                Some(code) => {
                    ctx.log(LogStream::System, format!("exit code {code}"));
                    Exit::Code(code)
                }
                None => Exit::Signal,
            });
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

/// The agent's variables a [`ServerProcess`] gets besides its own: what programs need to be
/// found and to run, and nothing that may be a secret (the agent's key).
const SERVER_ENV_KEPT: [&str; 7] = ["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Longest line of a [`ServerProcess`]'s stderr kept in the task's log.
const MAX_SERVER_LINE: usize = 2_000;

/// A program running beside a task, spoken to over its stdin and stdout. Its whole process
/// group is killed when this is dropped (or [`ServerProcess::stop`] ends it more gently), so
/// it never outlives the session that started it.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// Disarmed only once the group has been stopped.
    group: GroupGuard,
    /// Copies its stderr into the task's log; stopped with the process.
    stderr: tokio::task::JoinHandle<()>,
}

/// A started [`ServerProcess`] with the ends the agent speaks through.
pub struct ServerPipes {
    pub process: ServerProcess,
    pub stdout: tokio::process::ChildStdout,
    pub stdin: tokio::process::ChildStdin,
}

impl ServerProcess {
    /// Starts `argv` with only `env` and [`SERVER_ENV_KEPT`] of the agent's variables, in a
    /// process group of its own; each line it writes to stderr goes to the task's log,
    /// prefixed with `label`.
    pub fn spawn(
        ctx: &TaskContext,
        label: &str,
        argv: &[String],
        env: &[(&str, &str)],
    ) -> Result<ServerPipes, String> {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(
                SERVER_ENV_KEPT
                    .iter()
                    .filter_map(|name| std::env::var_os(name).map(|value| (name, value))),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", argv[0]))?;
        let group = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));
        ctx.log(
            LogStream::System,
            format!(
                "{label}: $ {}",
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
            ),
        );
        let stdout = child.stdout.take().expect("stdout piped");
        let stdin = child.stdin.take().expect("stdin piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let stderr = tokio::spawn(copy_stderr(stderr, ctx.log_sink(), label.to_owned()));
        Ok(ServerPipes {
            process: ServerProcess {
                child,
                group,
                stderr,
            },
            stdout,
            stdin,
        })
    }

    /// Ends it: SIGTERM to its group, SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Some(pid) = self.group.0.take() {
            kill_group(pid, &mut self.child).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stderr.abort();
    }
}

async fn copy_stderr(stderr: tokio::process::ChildStderr, sink: LogSink, label: String) {
    let mut lines = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let cut: String = line.trim_end().chars().take(MAX_SERVER_LINE).collect();
                sink.log(LogStream::Stderr, format!("{label}: {cut}"));
            }
        }
    }
}

/// Starts `program` the way `launcher` says, as the leader of a new process group, and returns
/// the child with, under a supervisor, the pipe end that keeps it from killing the group.
fn spawn(
    ctx: &TaskContext,
    launcher: &Launcher,
    program: Program<'_>,
) -> Result<(tokio::process::Child, Option<tokio::process::ChildStdin>), HandlerError> {
    let argv = program.argv;
    let cannot_start =
        |e: std::io::Error| HandlerError::Permanent(format!("cannot start {:?}: {e}", argv[0]));
    let direct = || command(&argv[0], &argv[1..], Stdio::null(), program).spawn();
    let Launcher::Supervised {
        program: supervisor,
        args,
    } = launcher
    else {
        return Ok((direct().map_err(cannot_start)?, None));
    };
    // The supervisor reports a program it cannot start only through its exit code, which any
    // program may also use; look first, so that a missing program fails the task for good, as
    // it does when spawned directly.
    if !findable(&argv[0]) {
        return Err(cannot_start(std::io::ErrorKind::NotFound.into()));
    }
    // The supervisor starts the action in the directory and environment it has itself.
    let supervised = command(supervisor, args, Stdio::piped(), program)
        .args(argv)
        .spawn();
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
                supervisor.display(),
                argv[0]
            );
            tracing::warn!("{warning}");
            ctx.log(LogStream::System, warning);
            Ok((direct().map_err(cannot_start)?, None))
        }
        Err(e) => Err(HandlerError::Retryable(format!(
            "cannot start the supervisor {}: {e}",
            supervisor.display()
        ))),
    }
}

fn command(
    executable: impl AsRef<std::ffi::OsStr>,
    args: &[impl AsRef<std::ffi::OsStr>],
    stdin: Stdio,
    program: Program<'_>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(executable);
    if let Some(dir) = program.cwd {
        cmd.current_dir(dir);
    }
    cmd.envs(program.env.iter().copied());
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

async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    ctx: &TaskContext,
    observe: &(dyn Fn(LogStream, &str) + Sync),
) {
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
                let line = String::from_utf8_lossy(&buf).into_owned();
                observe(stream, &line);
                ctx.log(stream, line);
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
