//! GitOps: pushes to a forge become deployments. [`sources`] holds the forges muster takes
//! hooks from and the `[git]` section as a whole; [`rules`] decides which pushes deploy what;
//! [`plan`] puts a push against its source's rules, for a preview and for the deployment's
//! record.
pub mod plan;
pub mod rules;
pub mod sources;

pub use rules::RuleSpec as GitRuleSpec;
pub use sources::{GitConfig, Source, SourceSpec};
