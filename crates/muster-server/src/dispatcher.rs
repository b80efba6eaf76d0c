//! The dispatcher actor: owns the [`DispatchState`] and persists its plans.
//!
//! One task, fed through the [`Dispatcher`] handle by the change fan-out (a submit, a finished
//! task, a registration, a heartbeat). After each batch of events it plans rounds until none
//! assigns anything, applies each round with one conditional [`Store::assign`], undoes what
//! the store refused and announces what it accepted through [`Changes`]. A task whose agent
//! is already waiting in a long-poll is started in that same update and handed to the
//! long-poll, so submit to a waiting agent costs one commit after the submit's. It owns no handle
//! that keeps it alive on its own terms: the server aborts it at shutdown, after the HTTP
//! side has stopped sending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use muster_api::{Task, TaskState};

use crate::changes::Changes;
use crate::clock::Clock;
use crate::dispatch::{DispatchEvent, DispatchState, Planned};
use crate::handoff;
use crate::registry::{Registry, Waiter};
use crate::store::{AssignOrder, Change, Store};

/// Starts the actor on the receiving end of [`crate::dispatch::Dispatcher::channel`].
pub fn spawn(
    state: DispatchState,
    events: mpsc::UnboundedReceiver<DispatchEvent>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    changes: Changes,
    registry: Arc<Registry>,
) -> tokio::task::JoinHandle<()> {
    let actor = Actor {
        state,
        store,
        clock,
        changes,
        registry,
    };
    tokio::spawn(actor.run(events))
}

struct Actor {
    state: DispatchState,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    changes: Changes,
    registry: Arc<Registry>,
}

/// A waiting long-poll taken for one round, and the tasks started for it.
struct Handing {
    waiter: Waiter,
    started: Vec<Task>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<DispatchEvent>) {
        // Something may already be assignable from the snapshot.
        self.dispatch_once().await;
        loop {
            let mut settled = Vec::new();
            let sleep = self.state.next_due().map(|due| {
                let wait = (due - self.clock.now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait))
            });
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => self.absorb(event, &mut settled),
                    None => return,
                },
                _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {}
            }
            // Everything already queued is applied before one round, which amortises a round
            // over a burst of submits.
            while let Ok(event) = rx.try_recv() {
                self.absorb(event, &mut settled);
            }
            self.dispatch_once().await;
            for done in settled {
                let _ = done.send(());
            }
        }
    }

    fn absorb(&mut self, event: DispatchEvent, settled: &mut Vec<oneshot::Sender<()>>) {
        if let DispatchEvent::Settle(done) = event {
            settled.push(done);
        } else {
            self.state.apply(event, self.clock.now_ms());
        }
    }

    /// One round: plan, persist, undo what the store refused, wake the chosen agents.
    async fn dispatch_once(&mut self) {
        // A refused assignment (its task was cancelled meanwhile) gave back the slot or lock it
        // had booked, so plan again until a round is refused nothing.
        while self.dispatch_round().await {}
    }

    /// One round: plan, persist, undo what the store refused, wake the chosen agents or hand
    /// the tasks to their waiting long-polls. True when something was refused and another round
    /// may assign more.
    async fn dispatch_round(&mut self) -> bool {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let mut planned = self.state.plan(now);
        if planned.is_empty() {
            return false;
        }
        let (mut handing, handed_to) = self.take_waiters(&mut planned, now);
        let orders: Vec<AssignOrder> = planned.iter().map(|p| p.order.clone()).collect();
        let mut refused = false;
        match self.store.assign(orders, now).await {
            Ok(applied) => {
                for ((p, applied), to) in planned.into_iter().zip(applied).zip(handed_to) {
                    let Some(applied) = applied else {
                        // Cancelled or changed since it was queued: it no longer belongs here.
                        self.state.undo(p, false, now);
                        refused = true;
                        continue;
                    };
                    let agent_id = p.order.agent_id;
                    match (applied.started, to) {
                        (Some(task), Some(to)) => {
                            let before = applied.attempt - 1;
                            self.changes.task(Change::new(
                                applied.task_id,
                                TaskState::Assigned,
                                before,
                                Some(agent_id.clone()),
                            ));
                            self.changes.task(Change::new(
                                applied.task_id,
                                TaskState::Running,
                                applied.attempt,
                                Some(agent_id),
                            ));
                            handing[to].started.push(task);
                        }
                        _ => self.changes.task(Change::assigned(
                            applied.task_id,
                            applied.attempt,
                            agent_id,
                        )),
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "could not persist assignments; will retry");
                for p in planned {
                    self.state.undo(p, true, now);
                }
                // Without a pause a broken store would spin this loop.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // A waiter handed nothing (refused, or the store failed) is dropped, which sends its
        // long-poll back to claim for itself.
        for Handing { waiter, started } in handing {
            if !started.is_empty() {
                self.changes.metrics.started("handed_over", started.len());
                handoff::hand_over(
                    waiter.tx,
                    started,
                    |tasks| tasks,
                    self.store.as_ref(),
                    &self.changes,
                    now,
                )
                .await;
            }
        }
        self.changes
            .metrics
            .dispatch_seconds
            .observe(started.elapsed().as_secs_f64());
        refused
    }

    /// Takes the waiting long-polls of the round's agents and marks, for each, up to its `max`
    /// of the agent's orders (in plan order, best first) to start at once. Answers the waiters
    /// and, per order, the index of the waiter it goes to.
    fn take_waiters(
        &self,
        planned: &mut [Planned],
        now: i64,
    ) -> (Vec<Handing>, Vec<Option<usize>>) {
        let mut handing: Vec<Handing> = Vec::new();
        let mut handed_to = vec![None; planned.len()];
        // Per agent of this round: the waiter being filled and how many it still takes; `None`
        // once the agent has no more waiting.
        let mut filling: std::collections::HashMap<String, Option<(usize, usize)>> =
            std::collections::HashMap::new();
        for (i, p) in planned.iter_mut().enumerate() {
            let agent_id = &p.order.agent_id;
            let slot = filling.entry(agent_id.clone()).or_insert(Some((0, 0)));
            if slot.is_some_and(|(_, room)| room == 0) {
                *slot = self.registry.take_waiter(agent_id).map(|waiter| {
                    let room = waiter.max.max(1);
                    handing.push(Handing {
                        waiter,
                        started: Vec::new(),
                    });
                    (handing.len() - 1, room)
                });
            }
            if let Some((to, room)) = slot {
                p.order.start = Some(now + handing[*to].waiter.lease_ms);
                handed_to[i] = Some(*to);
                *room -= 1;
            }
        }
        (handing, handed_to)
    }
}
