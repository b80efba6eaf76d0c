//! The event hub: task and agent events for `GET /api/v1/events`, and per-task "something
//! changed" signals for log followers.
//!
//! Events carry ids `"{boot}-{n}"`. The last [`RING`] events stay in memory so a reconnecting
//! client resumes after its `Last-Event-ID`; when it cannot (the server restarted, or the id has
//! left the ring) it receives a `resync` event and reloads. Events are not stored durably: the
//! task table is the durable record, this is only its live feed.

use std::collections::VecDeque;
use std::sync::Mutex;

use muster_api::Event;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events kept for resumption (and the live channel's depth): enough for a client that
/// reconnects within seconds under load, small enough to cost little memory at idle.
const RING: usize = 1024;

#[derive(Debug, Clone)]
pub struct Numbered {
    pub id: String,
    pub event: Event,
}

#[derive(Debug)]
pub struct EventHub {
    boot: i64,
    ring: Mutex<(u64, VecDeque<(u64, Event)>)>,
    events: broadcast::Sender<Numbered>,
    task_signals: broadcast::Sender<Uuid>,
}

/// Where a resuming client starts.
#[derive(Debug)]
pub enum Resume {
    /// Replay these, then follow live.
    Replay(Vec<Numbered>),
    /// The id cannot be resumed: tell the client to reload.
    Resync,
}

impl EventHub {
    pub fn new(boot: i64) -> Self {
        EventHub {
            boot,
            ring: Mutex::new((0, VecDeque::new())),
            events: broadcast::channel(RING).0,
            task_signals: broadcast::channel(256).0,
        }
    }

    pub fn publish(&self, event: Event) {
        let mut ring = self.ring.lock().expect("event ring poisoned");
        ring.0 += 1;
        let n = ring.0;
        if ring.1.len() == RING {
            ring.1.pop_front();
        }
        ring.1.push_back((n, event.clone()));
        // Sent under the lock so live order matches ring order.
        let _ = self.events.send(Numbered {
            id: self.id(n),
            event,
        });
    }

    fn id(&self, n: u64) -> String {
        format!("{}-{n}", self.boot)
    }

    /// Subscribes first, then computes what to replay, so nothing falls between the two.
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (broadcast::Receiver<Numbered>, Resume) {
        let ring = self.ring.lock().expect("event ring poisoned");
        let rx = self.events.subscribe();
        let Some(last) = last_event_id else {
            return (rx, Resume::Replay(Vec::new()));
        };
        let parsed = last
            .split_once('-')
            .and_then(|(boot, n)| Some((boot.parse::<i64>().ok()?, n.parse::<u64>().ok()?)));
        let resume = match parsed {
            Some((boot, n)) if boot == self.boot && n <= ring.0 => {
                let oldest = ring
                    .1
                    .front()
                    .map(|(first, _)| *first)
                    .unwrap_or(ring.0 + 1);
                if n + 1 < oldest {
                    Resume::Resync
                } else {
                    Resume::Replay(
                        ring.1
                            .iter()
                            .filter(|(id, _)| *id > n)
                            .map(|(id, e)| Numbered {
                                id: self.id(*id),
                                event: e.clone(),
                            })
                            .collect(),
                    )
                }
            }
            _ => Resume::Resync,
        };
        (rx, resume)
    }

    /// Signals followers of `task_id` that it has new log lines or a new state.
    pub fn signal_task(&self, task_id: Uuid) {
        let _ = self.task_signals.send(task_id);
    }

    pub fn task_signals(&self) -> broadcast::Receiver<Uuid> {
        self.task_signals.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_event(n: usize) -> Event {
        Event::Agent {
            agent_id: format!("a{n}"),
            status: None,
        }
    }

    #[test]
    fn resumes_after_the_last_seen_id() {
        let hub = EventHub::new(7);
        for n in 0..3 {
            hub.publish(agent_event(n));
        }
        let (_, resume) = hub.subscribe(Some("7-1"));
        match resume {
            Resume::Replay(events) => {
                assert_eq!(
                    events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
                    ["7-2", "7-3"]
                );
            }
            Resume::Resync => panic!("should replay"),
        }
    }

    #[test]
    fn another_boot_or_a_forgotten_id_resyncs() {
        let hub = EventHub::new(7);
        for n in 0..(RING + 10) {
            hub.publish(agent_event(n));
        }
        assert!(matches!(hub.subscribe(Some("6-3")).1, Resume::Resync));
        assert!(matches!(hub.subscribe(Some("7-2")).1, Resume::Resync));
        assert!(matches!(hub.subscribe(Some("garbage")).1, Resume::Resync));
    }
}
