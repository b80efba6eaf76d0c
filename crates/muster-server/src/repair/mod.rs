//! Self-repair's pure parts: the config sections ([`config`]) and the decision
//! ([`decide`]: the prompt and tools the model is given, and the validation of its answer,
//! which is untrusted input). The verbs that record incidents and run repairs are
//! [`crate::incidents`]; the loop that drives them is [`crate::repairer`].

pub mod config;
pub mod decide;

pub use config::{Action, AlertSource, RepairConfig, Target};
