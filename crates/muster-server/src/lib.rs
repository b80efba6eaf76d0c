//! muster's control plane.
//!
//! Map of the crate, from the edges down:
//! - [`http`]: the axum router, the v1 handlers, SSE and OpenAPI; [`ui`]: the web UI's pages.
//!   Both call the verbs and share [`auth`] (keys, sessions) and [`extract`] (request parsing
//!   with errors in the API's envelope); neither imports the other's handlers.
//! - [`operator`]: the operator's verbs (submit, cancel, retry, drain, remove);
//!   [`protocol`]: the agent's verbs (register, heartbeat, claim, reports); both bound what
//!   clients send through [`bounds`].
//! - [`sweeper`]: the loop that marks silent agents offline, expires leases and prunes;
//!   [`outbox`]: the loop that delivers outbox rows (written with the change that causes them)
//!   to their consumers, at least once; [`messenger`]: the loop that sends notifications.
//! - [`notice`]: what happened that an operator may want to hear of (written by the store);
//!   [`notify`]: notification channels and rules, and sending one message over one channel.
//! - [`chat`]: chat commands' pure parts (`[chat.telegram]`, Telegram's updates, commands,
//!   replies); [`chatter`]: the loop that long-polls Telegram, carries commands out through
//!   the verbs and answers.
//! - [`alerts`]: monitoring webhooks (Uptime Kuma, Alertmanager, a generic form) read into
//!   alerts without I/O, for self-repair's incidents.
//! - [`gitops`]: forge push webhooks read and verified without I/O, and the forges' commit
//!   status and compare APIs.
//! - [`canaries`]: canaries as pure rules (config, the hook's signature, judging a run);
//!   [`canary_runs`]: their verbs (start a run, take its hook, drive it to a verdict, list);
//!   [`canary_runner`]: the loop that fires them on their cron.
//! - [`ledger`]: the verbs of LLM calls (a budget checked before the call, the call, its
//!   price and its ledger row with any `budget.*` notice), and the ledger's reads.
//! - [`llm`]: `[[llm.providers]]` (each a `muster_llm::Provider` with its price) and
//!   `[[llm.budgets]]` (periods, verdicts, spikes) as pure rules.
//! - [`audit`]: the audit log's hash chain as pure logic (records, canonical bytes, checkpoint
//!   signatures, verification); the outbox's `audit` consumer appends to it.
//! - [`store`]: the `Store` trait of durable domain operations; [`store::sqlite`] implements it.
//! - [`changes`]: the one fan-out of a committed change to the [`dispatcher`] (the actor over
//!   [`dispatch`]'s pure index), the [`registry`]'s wake-ups, the [`events`] feed and
//!   [`metrics`]; [`handoff`]: started tasks to the long-poll that asked, or back to assigned
//!   when it hung up.
//! - [`deployments`]: the GitOps verbs (a verified push becomes a deployment, previews,
//!   redeploys, pauses, the history); [`commit_status`]: a deployment's state sent to its
//!   forge, for the outbox's remote lane; [`tally`]: refusals counted per key and minute for
//!   the audit log.
//! - [`app`]: the shared state; [`server`]: builds all of the above from settings and a bound
//!   listener, runs it and shuts it down; [`connections`]: its accept loop, with the
//!   connection cap and the idle timeout.
//! - [`config`]: settings as one typed tree (defaults, file, environment, flags), secrets
//!   that never print ([`secret`]); [`lifecycle`]: the task lifecycle's pure rules; [`sessions`]: web UI sessions;
//!   [`clock`]: time; [`error`]: the store's and the API's error types.

pub mod alerts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bounds;
pub mod canaries;
pub mod canary_runner;
pub mod canary_runs;

pub mod changes;
pub mod chat;
pub mod chatter;
pub mod clock;
pub mod commit_status;
pub mod config;
pub mod connections;
pub mod deployments;
pub mod dispatch;
pub mod dispatcher;
pub mod error;
pub mod events;
pub mod extract;
pub mod gitops;
pub mod handoff;
pub mod http;
pub mod incidents;
pub mod ledger;
pub mod lifecycle;
pub mod llm;
pub mod messenger;
pub mod metrics;
pub mod notice;
pub mod notify;
pub mod operator;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod repair;
pub mod repairer;
pub mod scheduler;
pub mod schedules;
pub mod secret;
pub mod server;
pub mod sessions;
pub mod store;
pub mod sweeper;
pub mod tally;
pub mod ui;

pub use app::App;
pub use config::Settings;
pub use server::Server;
