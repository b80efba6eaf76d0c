//! muster's control plane.
//!
//! Map of the crate:
//! - [`config`]: settings read from the environment, secrets that never print.
//! - [`store`]: the `Store` trait of durable domain operations; [`store::sqlite`] implements it.
//! - [`dispatch`]: the actor that matches queued tasks to agents.
//! - [`registry`]: live agent state (last heartbeat, load, long-poll wake-ups).
//! - [`health`]: the loop that marks silent agents offline, expires leases and prunes.
//! - [`events`]: the live event feed behind SSE.
//! - [`http`]: the axum router, auth, the v1 handlers, SSE and OpenAPI.
//! - [`ui`]: the web UI: server-rendered pages, sessions with CSRF tokens, embedded assets.
//! - [`operator`]: the operator's actions (submit, cancel, retry, drain, remove), shared by the
//!   API and the UI.
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: builds all of the above from settings and a bound listener, and shuts it down.

pub mod clock;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod registry;
pub mod server;
pub mod store;
pub mod ui;

pub use config::Settings;
pub use server::{App, Server};
