//! GitOps: pushes to a forge (Gitea, Forgejo, GitHub, GitLab) become deployments.
//!
//! - [`forge`]: the inbound push webhooks, without I/O: which forge, which event, the delivery
//!   id, the signature checked over the raw body, and the push read into one [`forge::Push`].
//! - [`forge_api`]: the outbound calls to a forge's API: a commit status on the pushed commit,
//!   and the full list of changed files when the push's own list cannot be trusted.
//! - [`sources`]: the forges muster takes hooks from, and the `[git]` section as a whole.
//! - [`rules`]: which pushes deploy what; [`plan`] puts a push against its source's rules, for
//!   a preview and for the deployment's record.

pub mod forge;
pub mod forge_api;
pub mod plan;
pub mod rules;
pub mod sources;

pub use rules::RuleSpec as GitRuleSpec;
pub use sources::{GitConfig, Source, SourceSpec};
