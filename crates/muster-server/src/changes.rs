//! The one fan-out of committed changes. Every task transition the store commits comes back
//! as a [`Change`], and every change of an agent's standing as an [`AgentChange`]; this module
//! alone tells the dispatcher, wakes long-polls, publishes to the event feed and counts
//! metrics, so no verb can forget one of them or announce it twice.

use std::sync::Arc;

use muster_api::{Agent, AgentStatus, Event};

use crate::dispatch::{DispatchEvent, Dispatcher};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Change;

/// A change of an agent's standing.
#[derive(Debug, Clone)]
pub enum AgentChange {
    /// It registered (new or again): its capabilities and concurrency may have changed.
    Registered { agent: Box<Agent>, at_ms: i64 },
    /// Its status changed (online, draining, offline).
    Status {
        agent_id: String,
        status: AgentStatus,
    },
    /// It reported its load; only the dispatcher's scoring cares.
    Load {
        agent_id: String,
        cpu_percent: f64,
        memory_percent: f64,
    },
    /// An operator removed it.
    Removed { agent_id: String },
}

/// Where committed changes go. Cheap to clone.
#[derive(Clone)]
pub struct Changes {
    dispatcher: Dispatcher,
    registry: Arc<Registry>,
    pub events: Arc<EventHub>,
    pub metrics: Metrics,
}

impl Changes {
    pub fn new(
        dispatcher: Dispatcher,
        registry: Arc<Registry>,
        events: Arc<EventHub>,
        metrics: Metrics,
    ) -> Self {
        Changes {
            dispatcher,
            registry,
            events,
            metrics,
        }
    }

    /// The dispatcher's handle, for waiting until it has settled (tests, the bench).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Announces one committed task transition.
    pub fn task(&self, mut change: Change) {
        let then = std::mem::take(&mut change.then);
        self.count(&change);
        match (change.released, change.requeued) {
            // One event, so the dispatcher never sees the slot free without the task back.
            (Some(released), Some(queued)) => self
                .dispatcher
                .send(DispatchEvent::Requeued { released, queued }),
            (Some(released), None) => self.dispatcher.send(DispatchEvent::Released(released)),
            (None, Some(queued)) => self.dispatcher.send(DispatchEvent::Queued(queued)),
            (None, None) => {}
        }
        if let Some(dropped) = change.dropped {
            self.dispatcher.send(DispatchEvent::Dropped(dropped));
        }
        if let Some(agent) = &change.wake_agent {
            self.registry.wake(agent);
        }
        self.events.signal_task(change.task_id);
        self.events.publish(Event::Task {
            task_id: change.task_id,
            state: change.state,
            agent_id: change.agent_id,
            attempt: change.attempt,
        });
        if let Some((incident_id, state)) = change.incident {
            self.events.publish(Event::Incident { incident_id, state });
        }
        // After the change that caused them: a released lock key before the task that waits
        // for it.
        for next in then {
            self.task(next);
        }
    }

    /// New log lines of a task: only its followers care.
    pub fn logs_appended(&self, task_id: uuid::Uuid) {
        self.events.signal_task(task_id);
    }

    fn count(&self, change: &Change) {
        let state = change.state;
        self.metrics
            .transitions
            .with_label_values(&[state.as_str()])
            .inc();
        if change.submitted {
            self.metrics.submitted.inc();
        }
        if state.is_final() {
            self.metrics
                .finished
                .with_label_values(&[state.as_str()])
                .inc();
        }
        if change.lost_attempt {
            self.metrics.attempts_lost.inc();
        }
    }

    /// Announces a change of an agent's standing.
    pub fn agent(&self, change: AgentChange) {
        match change {
            AgentChange::Registered { agent, at_ms } => {
                self.registry
                    .upsert(&agent.agent_id, agent.status, at_ms, true);
                // Published before the dispatcher hears of it, so the feed never shows a task
                // assigned to an agent it has not seen register.
                self.events.publish(Event::Agent {
                    agent_id: agent.agent_id.clone(),
                    status: Some(agent.status),
                });
                let agent = *agent;
                self.dispatcher.send(DispatchEvent::AgentChanged {
                    agent_id: agent.agent_id,
                    capabilities: agent.capabilities,
                    kinds: agent.kinds,
                    max_concurrency: agent.max_concurrency,
                    status: agent.status,
                });
            }
            AgentChange::Status { agent_id, status } => {
                self.registry.set_status(&agent_id, status);
                self.events.publish(Event::Agent {
                    agent_id: agent_id.clone(),
                    status: Some(status),
                });
                self.dispatcher
                    .send(DispatchEvent::AgentStatus { agent_id, status });
            }
            AgentChange::Load {
                agent_id,
                cpu_percent,
                memory_percent,
            } => self.dispatcher.send(DispatchEvent::AgentLoad {
                agent_id,
                cpu_percent,
                memory_percent,
            }),
            AgentChange::Removed { agent_id } => {
                self.registry.remove(&agent_id);
                self.dispatcher.send(DispatchEvent::AgentRemoved {
                    agent_id: agent_id.clone(),
                });
                self.events.publish(Event::Agent {
                    agent_id,
                    status: None,
                });
            }
        }
    }
}
