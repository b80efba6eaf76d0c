//! `muster __exec-child -- PROGRAM ARGS…`, hidden: the supervisor `muster agent` starts each
//! action through, so that the action and everything it starts die with the agent, even when
//! the agent is killed with SIGKILL and none of its code runs.
//!
//! Not a parent-death signal (`prctl(PR_SET_PDEATHSIG)`) and an exec: that signal reaches only
//! the process that set it, not the children an action forks (a shell's `sleep`, Ansible's
//! workers); it is cleared when a set-user-ID or file-capability program starts (`sudo`); and
//! it fires when the agent's *thread* that spawned it ends. Instead this process stays, as the
//! action's parent and the leader of its process group, and watches its stdin: a pipe whose
//! other end only the agent holds. The kernel closes that end when the agent dies, however it
//! dies, and end of file here kills the whole group. If the agent died before this process
//! began reading, the read ends at once: there is no window to close.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};

use nix::sys::signal::{Signal, killpg, raise};
use nix::unistd::{getpgrp, getpid};
use tokio::signal::unix::{SignalKind, signal};

/// The name `muster agent` passes to its own executable; hidden from `--help`.
pub(crate) const SUBCOMMAND: &str = "__exec-child";

/// How `muster agent` starts actions: through this executable, or directly when its path is
/// unknown (then an action outlives an agent killed with SIGKILL).
pub(crate) fn launcher() -> muster_agent::Launcher {
    match std::env::current_exe() {
        Ok(program) => muster_agent::Launcher::Supervised {
            program,
            args: vec![SUBCOMMAND.into(), "--".into()],
        },
        Err(err) => {
            tracing::warn!(
                error = %err,
                "cannot find this executable; actions start directly and would outlive the agent"
            );
            muster_agent::Launcher::Direct
        }
    }
}

/// Runs `argv` under supervision and exits as it exited.
pub(crate) fn run(argv: &[OsString]) -> ExitCode {
    // The group this process kills must be the action's alone, never its caller's (a shell's,
    // were someone to type this command).
    if getpgrp() != getpid() {
        eprintln!(
            "muster {SUBCOMMAND}: must lead its own process group; `muster agent` starts it so"
        );
        return ExitCode::from(126);
    }
    // The agent's cancel and timeout send SIGTERM to the whole group. It is meant for the
    // action; this process must outlive it to report how the action ended, so it catches it
    // (tokio's handler, installed for the life of the process, the one safe way here). Not
    // blocked: the action would inherit a blocked mask, which the standard library does not
    // clear, whereas a caught signal is back at its default after exec. Caught before the
    // action starts, so that no SIGTERM can arrive between the two.
    let _term = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|rt| {
            let term = rt.block_on(async { signal(SignalKind::terminate()) })?;
            Ok((rt, term))
        }) {
        Ok(held) => held,
        Err(err) => {
            eprintln!("muster {SUBCOMMAND}: cannot catch SIGTERM: {err}");
            return ExitCode::from(126);
        }
    };
    let mut action = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(action) => action,
        Err(err) => {
            eprintln!("muster {SUBCOMMAND}: cannot start {:?}: {err}", argv[0]);
            return ExitCode::from(127);
        }
    };
    std::thread::spawn(|| {
        // Nothing is ever written: this returns when the agent's end closes.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = killpg(getpgrp(), Signal::SIGKILL);
    });
    let status = match action.wait() {
        Ok(status) => status,
        Err(err) => {
            eprintln!("muster {SUBCOMMAND}: waiting for {:?}: {err}", argv[0]);
            return ExitCode::from(126);
        }
    };
    if let Some(code) = status.code() {
        return ExitCode::from(code as u8);
    }
    // Killed by a signal: die of the same one, so the agent sees what happened. A signal this
    // process catches or ignores (SIGTERM, SIGPIPE) leaves the shell's convention instead,
    // exit code 128 + its number.
    let number = status.signal().unwrap_or(0);
    if let Ok(signal) = Signal::try_from(number) {
        let _ = raise(signal);
    }
    ExitCode::from((128 + number) as u8)
}
