//! muster's measurements. [`lifecycle`] is `muster bench`: simulated agents over real HTTP
//! drive submit → claim → complete and the summary gives throughput and latency
//! percentiles. [`figures`] measures the rest of DESIGN.md's table (start-up time, idle memory,
//! heartbeat cost, queue depth). [`local`] runs the server under test as a child process so its
//! memory, CPU time and writes can be read from /proc, and [`wal`] reads its SQLite commits
//! from the WAL index. [`routes`] calls the batch routes (bulk submit, batch claim, reports).
//! [`webhooks`] measures GitOps push hooks: signed pushes accepted per second, and push →
//! claim by a waiting agent.

pub mod figures;
pub mod lifecycle;
pub mod local;
pub mod routes;
pub mod stats;
pub mod wal;
pub mod webhooks;

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Client(#[from] muster_client::ClientError),
}
