//! The dispatcher actor: owns the [`DispatchState`] and persists its plans.
//!
//! One task, fed through the [`Dispatcher`] handle by the change fan-out (a submit, a finished
//! task, a registration, a heartbeat). After each batch of events it plans rounds until none
//! assigns anything, applies each round with one conditional [`Store::assign`], undoes what
//! the store refused and announces what it accepted through [`Changes`]. It owns no handle
//! that keeps it alive on its own terms: the server aborts it at shutdown, after the HTTP
//! side has stopped sending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::changes::Changes;
use crate::clock::Clock;
use crate::dispatch::{DispatchEvent, DispatchState};
use crate::store::{AssignOrder, Change, Store};

/// Starts the actor on the receiving end of [`crate::dispatch::Dispatcher::channel`].
pub fn spawn(
    state: DispatchState,
    events: mpsc::UnboundedReceiver<DispatchEvent>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    changes: Changes,
) -> tokio::task::JoinHandle<()> {
    let actor = Actor {
        state,
        store,
        clock,
        changes,
    };
    tokio::spawn(actor.run(events))
}

struct Actor {
    state: DispatchState,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    changes: Changes,
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

    /// One round: plan, persist, undo what the store refused, wake the chosen agents. True when
    /// something was refused and another round may assign more.
    async fn dispatch_round(&mut self) -> bool {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let planned = self.state.plan(now);
        if planned.is_empty() {
            return false;
        }
        let orders: Vec<AssignOrder> = planned.iter().map(|p| p.order.clone()).collect();
        let mut refused = false;
        match self.store.assign(orders, now).await {
            Ok(applied) => {
                for (p, applied) in planned.into_iter().zip(applied) {
                    if let Some((task_id, attempt)) = applied {
                        self.changes
                            .task(Change::assigned(task_id, attempt, p.order.agent_id));
                    } else {
                        // Cancelled or changed since it was queued: it no longer belongs here.
                        self.state.undo(p, false, now);
                        refused = true;
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
        self.changes
            .metrics
            .dispatch_seconds
            .observe(started.elapsed().as_secs_f64());
        refused
    }
}
