//! Live agent state that changes with every heartbeat and never needs to be durable: when each
//! agent was last heard from, its reported load, and the wake-up handle of its long-poll.
//!
//! Owned by the app state; handlers, the sweeper and the dispatcher share it. The lock is
//! held only for map look-ups, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use muster_api::{Agent, AgentStatus, Task};
use tokio::sync::{Notify, oneshot};

use crate::clock::to_utc;

#[derive(Debug)]
struct Live {
    status: AgentStatus,
    last_seen_ms: i64,
    heard_from: bool,
    cpu_percent: f64,
    memory_percent: f64,
    wake: Arc<Notify>,
    /// Long-polls waiting for work, oldest first.
    waiters: Vec<Waiter>,
}

/// A long-poll waiting for work. The dispatcher takes it and starts up to `max` tasks in the
/// assignment's own update, with a lease of `lease_ms`, and hands them over through `tx`; a
/// waiter dropped without tasks sends its long-poll back to claim for itself.
#[derive(Debug)]
pub struct Waiter {
    id: u64,
    pub max: usize,
    pub lease_ms: i64,
    pub tx: oneshot::Sender<Vec<Task>>,
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, Live>>,
    next_waiter: AtomicU64,
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
            waiters: Vec::new(),
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

    /// Puts a long-poll in line for the dispatcher to start tasks for; `None` for an unknown
    /// agent. The id withdraws it ([`Registry::withdraw`]); the receiver gets the tasks.
    pub fn wait_for_tasks(
        &self,
        agent_id: &str,
        max: usize,
        lease_ms: i64,
    ) -> Option<(u64, oneshot::Receiver<Vec<Task>>)> {
        let mut agents = self.lock();
        let live = agents.get_mut(agent_id)?;
        // Long-polls that hung up leave their waiter behind; it goes at the next one.
        live.waiters.retain(|w| !w.tx.is_closed());
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        live.waiters.push(Waiter {
            id,
            max,
            lease_ms,
            tx,
        });
        Some((id, rx))
    }

    /// Takes a waiter back out of line; false when the dispatcher already took it, and so is
    /// about to answer through it.
    pub fn withdraw(&self, agent_id: &str, id: u64) -> bool {
        let mut agents = self.lock();
        let Some(live) = agents.get_mut(agent_id) else {
            return false;
        };
        let before = live.waiters.len();
        live.waiters.retain(|w| w.id != id);
        live.waiters.len() < before
    }

    /// The agent's oldest waiter whose long-poll is still there, taken out of line.
    pub fn take_waiter(&self, agent_id: &str) -> Option<Waiter> {
        let mut agents = self.lock();
        let waiters = &mut agents.get_mut(agent_id)?.waiters;
        while !waiters.is_empty() {
            let waiter = waiters.remove(0);
            if !waiter.tx.is_closed() {
                return Some(waiter);
            }
        }
        None
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

    /// Long-polls waiting for work whose client is still there, for metrics.
    pub fn waiting(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|l| &l.waiters)
            .filter(|w| !w.tx.is_closed())
            .count()
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
