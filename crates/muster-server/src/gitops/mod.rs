//! GitOps: pushes to a forge become deployments. [`rules`] decides which pushes deploy what.
pub mod rules;
