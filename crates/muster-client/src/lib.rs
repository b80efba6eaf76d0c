//! The Rust side of joining muster: a typed async client of the v1 HTTP API ([`client`]) and the
//! agent runtime that registers, heartbeats, long-polls for tasks and runs them through
//! handlers ([`runtime`]).
//!
//! Architecture Invariant: this crate depends on `muster-api` for its types and on no server
//! crate (no axum, no SQLite), so an agent binary stays small.

pub mod client;
pub mod load;
pub mod runtime;

pub use client::{Claim, Client, ClientError, LogEvent, TaskQuery};
pub use runtime::{AgentOptions, AgentRuntime, Handler, HandlerError, LogSink, TaskContext};
