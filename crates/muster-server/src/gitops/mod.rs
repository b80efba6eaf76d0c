//! GitOps: pushes to a forge (Gitea, Forgejo, GitHub, GitLab) that start work in muster.
//!
//! - [`forge`]: the inbound push webhooks, without I/O: which forge, which event, the delivery
//!   id, the signature checked over the raw body, and the push read into one [`forge::Push`].
//! - [`forge_api`]: the outbound calls to a forge's API: a commit status on the pushed commit,
//!   and the full list of changed files when the push's own list cannot be trusted.

pub mod forge;
pub mod forge_api;
