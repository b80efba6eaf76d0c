//! The subcommands, one module each, and the runtime the operator commands share.

pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod daemons;
pub(crate) mod gitops;
pub(crate) mod llm;
pub(crate) mod notify;
pub(crate) mod repair;
pub(crate) mod schedules;
pub(crate) mod task;

use std::process::ExitCode;

use connection::{ServerArgs, Session};

/// Runs one operator command (`task …`, `agents …`) against the server named by `server`.
///
/// A single-threaded runtime is enough: each command makes a few requests in sequence.
pub(crate) fn operate(
    server: ServerArgs,
    command: impl AsyncFnOnce(&Session) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let session = Session::connect(server)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(command(&session))
}
