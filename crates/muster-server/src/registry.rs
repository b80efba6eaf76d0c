//! Live agent state that changes with every heartbeat and never needs to be durable: when each
//! agent was last heard from, its reported load, and the wake-up handle of its long-poll.
//!
//! Owned by the app state; handlers, the sweeper and the dispatcher share it. The lock is
//! held only for map look-ups, never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use muster_api::{Agent, AgentStatus};
use tokio::sync::Notify;

use crate::clock::to_utc;

#[derive(Debug)]
struct Live {
    status: AgentStatus,
    last_seen_ms: i64,
    heard_from: bool,
    cpu_percent: f64,
    memory_percent: f64,
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, Live>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.agents.lock().expect("registry lock poisoned")
    }

    /// Adds or refreshes an agent: at start (from the store, `heard_from` false) or on register.
    pub fn upsert(&self, agent_id: &str, status: AgentStatus, now_ms: i64, heard_from: bool) {
        let mut agents = self.lock();
        let live = agents.entry(agent_id.to_owned()).or_insert_with(|| Live {
            status,
            last_seen_ms: now_ms,
            heard_from,
            cpu_percent: 0.0,
            memory_percent: 0.0,
            wake: Arc::new(Notify::new()),
        });
        live.status = status;
        live.last_seen_ms = now_ms;
        live.heard_from |= heard_from;
    }

    /// Records a heartbeat; `None` when the agent is unknown (it must register again).
    pub fn heartbeat(
        &self,
        agent_id: &str,
        now_ms: i64,
        cpu: f64,
        mem: f64,
    ) -> Option<AgentStatus> {
        let mut agents = self.lock();
        let live = agents.get_mut(agent_id)?;
        live.last_seen_ms = now_ms;
        live.heard_from = true;
        live.cpu_percent = cpu;
        live.memory_percent = mem;
        Some(live.status)
    }

    /// Any sign of life (a claim) keeps the agent online, like a heartbeat without load.
    pub fn touch(&self, agent_id: &str, now_ms: i64) -> Option<AgentStatus> {
        let mut agents = self.lock();
        let live = agents.get_mut(agent_id)?;
        live.last_seen_ms = now_ms;
        live.heard_from = true;
        Some(live.status)
    }

    pub fn set_status(&self, agent_id: &str, status: AgentStatus) {
        if let Some(live) = self.lock().get_mut(agent_id) {
            live.status = status;
        }
    }

    pub fn status(&self, agent_id: &str) -> Option<AgentStatus> {
        self.lock().get(agent_id).map(|l| l.status)
    }

    pub fn remove(&self, agent_id: &str) {
        if let Some(live) = self.lock().remove(agent_id) {
            live.wake.notify_waiters();
        }
    }

    /// The handle a long-poll waits on; `None` for an unknown agent.
    pub fn waker(&self, agent_id: &str) -> Option<Arc<Notify>> {
        self.lock().get(agent_id).map(|l| l.wake.clone())
    }

    /// Wakes the agent's waiting long-polls (a task was assigned, or one must be cancelled).
    pub fn wake(&self, agent_id: &str) {
        if let Some(live) = self.lock().get(agent_id) {
            live.wake.notify_waiters();
        }
    }

    /// Agents not offline whose last sign of life is older than `cutoff_ms`.
    pub fn lapsed(&self, cutoff_ms: i64) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.status != AgentStatus::Offline && l.last_seen_ms < cutoff_ms)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Counts by status, for metrics.
    pub fn count_by_status(&self) -> HashMap<AgentStatus, usize> {
        let mut counts = HashMap::new();
        for live in self.lock().values() {
            *counts.entry(live.status).or_default() += 1;
        }
        counts
    }

    /// Fills the live fields of an agent read from the store.
    pub fn decorate(&self, agent: &mut Agent) {
        if let Some(live) = self.lock().get(&agent.agent_id) {
            agent.status = live.status;
            if live.heard_from {
                agent.last_heartbeat_at = Some(to_utc(live.last_seen_ms));
                agent.cpu_percent = Some(live.cpu_percent);
                agent.memory_percent = Some(live.memory_percent);
            }
        }
    }
}
