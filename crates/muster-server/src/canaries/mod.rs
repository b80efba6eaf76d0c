//! Canaries, as pure logic: a synthetic event pushed through the whole path (a signed request
//! to muster's own hook route, the task it submits, a real agent's answer, and optionally a
//! delivered notification) on a cron schedule, and judged. [`config`] checks `[[canaries]]`
//! entries; [`hook`] signs and verifies the hook's body with a key only the server holds;
//! [`judge`] decides, from what the store recorded, what a run waits for next or how it
//! ended. The verbs are [`crate::canary_runs`], the loop [`crate::canary_runner`].

pub mod config;
pub mod hook;
pub mod judge;

pub use config::{Canary, CanarySpec};
pub use hook::HookKey;
