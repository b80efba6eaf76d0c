//! GitOps: pushes to a forge (Gitea, Forgejo, GitHub, GitLab) that start work in muster.
//!
//! - [`forge`]: the inbound push webhooks, without I/O: which forge, which event, the delivery
//!   id, the signature checked over the raw body, and the push read into one [`forge::Push`].

pub mod forge;
