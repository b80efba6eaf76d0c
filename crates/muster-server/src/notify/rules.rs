//! Placeholder for the notification rules (`[[notify.rules]]`); the real module replaces it.

#[derive(Debug, Clone, PartialEq)]
pub struct Rule;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct RuleSpec {}
