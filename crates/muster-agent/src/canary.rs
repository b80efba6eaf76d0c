//! The `canary` executor: answers a canary run's task at once with the run's nonce echoed and
//! this agent's id, so the server can check that the answer came through the whole path, from
//! this agent, for this run. It runs nothing.
//!
//! Payload: `{"canary": "path", "run": "0193…", "nonce": "9f…"}`; result:
//! `{"nonce": "9f…", "agent": "nas", "canary": "path", "run": "0193…"}`.

use async_trait::async_trait;
use muster_client::{Handler, HandlerError, TaskContext};
use serde_json::{Value, json};

/// The task kind canaries submit unless their entry names another.
pub const KIND: &str = "canary";

pub struct CanaryHandler {
    agent_id: String,
}

impl CanaryHandler {
    pub fn new(agent_id: impl Into<String>) -> Self {
        CanaryHandler {
            agent_id: agent_id.into(),
        }
    }
}

#[async_trait]
impl Handler for CanaryHandler {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let payload = &ctx.task().payload;
        let Some(nonce) = payload.get("nonce").and_then(Value::as_str) else {
            return Err(HandlerError::Permanent(
                "a canary task carries a nonce to echo; this one has none".into(),
            ));
        };
        Ok(json!({
            "nonce": nonce,
            "agent": self.agent_id,
            "canary": payload.get("canary"),
            "run": payload.get("run"),
        }))
    }
}
