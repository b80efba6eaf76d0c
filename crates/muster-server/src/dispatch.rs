//! Dispatch: which agent runs which queued task. [`DispatchState`] is the pure, in-memory
//! index and its planning; [`crate::dispatcher`] is the actor that owns it and persists plans.
//!
//! The actor owns an in-memory index of the queue and of agent capacity, fed by
//! events from the handlers and the sweeper (a submit, a finished task, a registration, a
//! heartbeat). Queued tasks are indexed by their capability set and kind ("group"), and each
//! agent keeps the heads of the groups it can serve, so a round looks only at the heads its
//! free agents could take: neither a million queued tasks nor twenty thousand distinct
//! capability sets that no agent can take cost anything per event. Tasks with a lock key wait
//! in that key's queue in submit order; only its oldest task may run, and only while no task
//! of the key is assigned or running, so a retried task keeps its place (through its backoff)
//! and priority never reorders one key's tasks. Tasks whose `run_after` is in the future wait
//! in a timer heap.
//!
//! The store stays the source of truth: every decision is applied by a conditional update
//! (`state = 'queued'`), and one that no longer holds (the task was cancelled meanwhile) is
//! simply undone here.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use muster_api::{AgentStatus, Assignment, Candidate};
use tokio::sync::{mpsc, oneshot};

use crate::clock::to_utc;
use crate::store::{AssignOrder, DispatchSnapshot, QueuedTask, Released, Store, StoreResult};

/// Candidates kept in an assignment's record (best first).
const CANDIDATES_KEPT: usize = 8;

/// What the dispatcher learns from the rest of the server.
#[derive(Debug)]
pub enum DispatchEvent {
    Queued(QueuedTask),
    Released(Released),
    /// A running task goes back to the queue (a retry): its agent slot is free, and it keeps
    /// its place at the head of its lock key, atomically, so that no later task of the key
    /// slips in between.
    Requeued {
        released: Released,
        queued: QueuedTask,
    },
    /// A queued task left the queue without running (cancelled): its lock key, if any, passes
    /// to the next task at once.
    Dropped(QueuedTask),
    /// An agent registered, changed status or concurrency.
    AgentChanged {
        agent_id: String,
        capabilities: Vec<String>,
        /// Task kinds it handles; empty: any.
        kinds: Vec<String>,
        max_concurrency: u32,
        status: AgentStatus,
    },
    AgentStatus {
        agent_id: String,
        status: AgentStatus,
    },
    AgentLoad {
        agent_id: String,
        cpu_percent: f64,
        memory_percent: f64,
    },
    AgentRemoved {
        agent_id: String,
    },
    /// Answered once every event sent before it has been applied and dispatched.
    Settle(oneshot::Sender<()>),
}

/// Cheap, cloneable handle to the dispatcher actor.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<DispatchEvent>,
}

impl Dispatcher {
    /// A handle and the receiving end the actor ([`crate::dispatcher::spawn`]) reads.
    pub fn channel() -> (Dispatcher, mpsc::UnboundedReceiver<DispatchEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Dispatcher { tx }, rx)
    }

    pub fn send(&self, event: DispatchEvent) {
        // The actor only stops at shutdown; an event sent after that has nothing left to affect.
        let _ = self.tx.send(event);
    }

    /// Waits until the dispatcher has applied all earlier events and assigned what it could.
    pub async fn settle(&self) {
        let (done, wait) = oneshot::channel();
        self.send(DispatchEvent::Settle(done));
        let _ = wait.await;
    }
}

/// Ordering key of a queued task, priority descending then age, packed into one word so that
/// a million queued tasks stay small: the top 16 bits are `i16::MAX − priority`, the low 48
/// bits the task's `seq`.
type QueueKey = u64;

const SEQ_BITS: u32 = 48;

fn queue_key(priority: i32, seq: i64) -> QueueKey {
    let priority = priority.clamp(i32::from(i16::MIN), i32::from(i16::MAX));
    let rank = (i32::from(i16::MAX) - priority) as u64;
    (rank << SEQ_BITS) | (seq as u64 & ((1 << SEQ_BITS) - 1))
}

fn seq_of(key: QueueKey) -> i64 {
    (key & ((1 << SEQ_BITS) - 1)) as i64
}

type GroupIx = u32;
type AgentIx = usize;

/// Where a queued task belongs: its group, and its lock key (interned).
#[derive(Debug, Clone, Copy)]
struct Entry {
    group: GroupIx,
    lock: Option<u32>,
}

/// Queued tasks that need the same capabilities and are of the same kind.
#[derive(Debug)]
struct Group {
    capabilities: Vec<String>,
    kind: String,
    /// Tasks that may be assigned now, best first.
    ready: BTreeSet<QueueKey>,
    /// Agents whose capabilities and kinds cover this group (whatever their load).
    servers: Vec<AgentIx>,
}

#[derive(Debug)]
struct Slot {
    agent_id: String,
    /// False once removed; the index stays so that others do not shift.
    present: bool,
    capabilities: Vec<String>,
    /// Kinds it handles, sorted; empty: any kind.
    kinds: Vec<String>,
    max_concurrency: u32,
    active: i64,
    cpu_percent: f64,
    memory_percent: f64,
    status: AgentStatus,
    /// Dispatch round counter at its last assignment; ties go to the least recent.
    last_assigned: u64,
    /// The head of every non-empty group it serves: its best task is the first.
    servable: BTreeSet<(QueueKey, GroupIx)>,
}

impl Slot {
    fn has_room(&self) -> bool {
        self.present
            && self.status == AgentStatus::Online
            && self.active < i64::from(self.max_concurrency)
    }

    fn serves(&self, group: &Group) -> bool {
        self.present
            && group
                .capabilities
                .iter()
                .all(|c| self.capabilities.binary_search(c).is_ok())
            && (self.kinds.is_empty() || self.kinds.binary_search(&group.kind).is_ok())
    }

    /// The design's weighted score: free slots weigh 0.4, spare CPU and memory 0.2.
    fn score(&self) -> f64 {
        let busy = (self.active as f64 / 10.0).clamp(0.0, 1.0);
        let load = ((self.cpu_percent + self.memory_percent) / 200.0).clamp(0.0, 1.0);
        0.4 * (1.0 - busy) + 0.2 * (1.0 - load)
    }
}

/// A task waiting in its lock key's queue.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    key: QueueKey,
    group: GroupIx,
    /// Its `run_after`, while in the future when it was queued.
    due: Option<i64>,
}

/// One lock key's tasks: at most one of them is ready, assigned or running at a time, and it
/// is always the oldest.
#[derive(Debug, Default)]
struct LockQueue {
    /// Queued tasks of the key by `seq` (submit order), not yet ready.
    waiting: BTreeMap<i64, Waiting>,
    /// The task of the key in its group's ready set, if any.
    ready: Option<i64>,
    /// Tasks of the key assigned or running.
    active: u32,
}

#[derive(Debug)]
struct Delayed {
    due: i64,
    key: QueueKey,
    entry: Entry,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.key) == (other.due, other.key)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed so the max-heap pops the earliest due first.
        (other.due, other.key).cmp(&(self.due, self.key))
    }
}

/// The dispatcher's memory. Pure: [`DispatchState::plan`] decides, the actor persists.
#[derive(Debug, Default)]
pub struct DispatchState {
    groups: Vec<Group>,
    group_ids: HashMap<(Vec<String>, String), GroupIx>,
    delayed: BinaryHeap<Delayed>,
    /// Lock keys of the ready tasks that have one (most have none, so this stays small).
    lock_of: HashMap<i64, u32>,
    locks: HashMap<u32, LockQueue>,
    lock_ids: HashMap<String, u32>,
    agents: Vec<Slot>,
    agent_ix: HashMap<String, AgentIx>,
    round: u64,
}

/// One planned assignment and what to undo if the store refuses it.
#[derive(Debug)]
pub struct Planned {
    pub order: AssignOrder,
    key: QueueKey,
    entry: Entry,
}

impl DispatchState {
    /// Memory rebuilt from the store at start: agents and what they hold. Queued tasks follow
    /// through [`DispatchState::load_queued`].
    pub fn from_snapshot(snapshot: DispatchSnapshot) -> Self {
        let mut state = DispatchState::default();
        for agent in snapshot.agents {
            state.upsert_agent(
                &agent.agent_id,
                agent.capabilities,
                agent.kinds,
                agent.max_concurrency,
                agent.status,
            );
        }
        for active in snapshot.active {
            if let Some(&a) = state.agent_ix.get(&active.agent_id) {
                state.agents[a].active += 1;
            }
            if let Some(lock) = active.lock_key {
                let lock = state.intern(&lock);
                state.locks.entry(lock).or_default().active += 1;
            }
        }
        state
    }

    /// Loads the store's queue, a page at a time, in submit order.
    pub async fn load_queued(&mut self, store: &dyn Store, now: i64) -> StoreResult<usize> {
        const PAGE: usize = 10_000;
        let mut after = 0;
        let mut loaded = 0;
        loop {
            let page = store.queued(after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(loaded);
            };
            after = last.seq;
            loaded += page.len();
            for task in page {
                self.enqueue(task, now);
            }
        }
    }

    fn intern(&mut self, lock: &str) -> u32 {
        if let Some(id) = self.lock_ids.get(lock) {
            return *id;
        }
        let id = self.lock_ids.len() as u32;
        self.lock_ids.insert(lock.to_owned(), id);
        id
    }

    fn group_of(&mut self, capabilities: Vec<String>, kind: String) -> GroupIx {
        let id_key = (capabilities, kind);
        if let Some(id) = self.group_ids.get(&id_key) {
            return *id;
        }
        let id = self.groups.len() as GroupIx;
        let (capabilities, kind) = id_key.clone();
        let mut group = Group {
            capabilities,
            kind,
            ready: BTreeSet::new(),
            servers: Vec::new(),
        };
        group.servers = (0..self.agents.len())
            .filter(|a| self.agents[*a].serves(&group))
            .collect();
        self.groups.push(group);
        self.group_ids.insert(id_key, id);
        id
    }

    /// Adds or removes one ready task of a group, keeping every server's view of the group's
    /// head current.
    fn set_ready(&mut self, group: GroupIx, key: QueueKey, ready: bool) {
        let g = &mut self.groups[group as usize];
        let before = g.ready.first().copied();
        if ready {
            g.ready.insert(key);
        } else {
            g.ready.remove(&key);
        }
        let after = g.ready.first().copied();
        if before == after {
            return;
        }
        for &a in &g.servers {
            let servable = &mut self.agents[a].servable;
            if let Some(head) = before {
                servable.remove(&(head, group));
            }
            if let Some(head) = after {
                servable.insert((head, group));
            }
        }
    }

    pub fn upsert_agent(
        &mut self,
        agent_id: &str,
        mut capabilities: Vec<String>,
        mut kinds: Vec<String>,
        max_concurrency: u32,
        status: AgentStatus,
    ) {
        capabilities.sort();
        capabilities.dedup();
        kinds.sort();
        kinds.dedup();
        let a = match self.agent_ix.get(agent_id) {
            Some(&a) => a,
            None => {
                self.agents.push(Slot {
                    agent_id: agent_id.to_owned(),
                    present: true,
                    capabilities: Vec::new(),
                    kinds: Vec::new(),
                    max_concurrency,
                    active: 0,
                    cpu_percent: 0.0,
                    memory_percent: 0.0,
                    status,
                    last_assigned: 0,
                    servable: BTreeSet::new(),
                });
                self.agent_ix
                    .insert(agent_id.to_owned(), self.agents.len() - 1);
                self.agents.len() - 1
            }
        };
        let slot = &mut self.agents[a];
        slot.present = true;
        slot.max_concurrency = max_concurrency;
        slot.status = status;
        if slot.capabilities != capabilities || slot.kinds != kinds || slot.servable.is_empty() {
            slot.capabilities = capabilities;
            slot.kinds = kinds;
            self.reindex_agent(a);
        }
    }

    /// Recomputes which groups an agent serves: once per registration, never per task.
    fn reindex_agent(&mut self, a: AgentIx) {
        self.agents[a].servable.clear();
        for (g, group) in self.groups.iter_mut().enumerate() {
            group.servers.retain(|s| *s != a);
            if self.agents[a].serves(group) {
                group.servers.push(a);
                if let Some(head) = group.ready.first() {
                    self.agents[a].servable.insert((*head, g as GroupIx));
                }
            }
        }
    }

    fn remove_agent(&mut self, agent_id: &str) {
        let Some(&a) = self.agent_ix.get(agent_id) else {
            return;
        };
        self.agents[a].present = false;
        self.reindex_agent(a);
    }

    pub fn apply(&mut self, event: DispatchEvent, now: i64) {
        match event {
            DispatchEvent::Queued(task) => self.enqueue(task, now),
            DispatchEvent::Released(released) => self.release(released, now),
            DispatchEvent::Requeued { released, queued } => {
                // The slot and the lock are freed without handing the key on: the retried
                // task, the oldest of its key, takes it back as it is queued.
                self.free_slot(&released.agent_id);
                if let Some(lock) = released.lock_key {
                    let lock = self.intern(&lock);
                    let q = self.locks.entry(lock).or_default();
                    q.active = q.active.saturating_sub(1);
                }
                self.enqueue(queued, now);
            }
            DispatchEvent::Dropped(task) => self.drop_queued(task, now),
            DispatchEvent::AgentChanged {
                agent_id,
                capabilities,
                kinds,
                max_concurrency,
                status,
            } => self.upsert_agent(&agent_id, capabilities, kinds, max_concurrency, status),
            DispatchEvent::AgentStatus { agent_id, status } => {
                if let Some(&a) = self.agent_ix.get(&agent_id) {
                    self.agents[a].status = status;
                }
            }
            DispatchEvent::AgentLoad {
                agent_id,
                cpu_percent,
                memory_percent,
            } => {
                if let Some(&a) = self.agent_ix.get(&agent_id) {
                    self.agents[a].cpu_percent = cpu_percent;
                    self.agents[a].memory_percent = memory_percent;
                }
            }
            DispatchEvent::AgentRemoved { agent_id } => self.remove_agent(&agent_id),
            DispatchEvent::Settle(_) => {}
        }
    }

    fn enqueue(&mut self, task: QueuedTask, now: i64) {
        let group = self.group_of(task.capabilities, task.kind);
        let key = queue_key(task.priority, task.seq);
        let due = task.run_after.filter(|due| *due > now);
        match task.lock_key.as_deref().map(|l| self.intern(l)) {
            None => match due {
                Some(due) => self.delayed.push(Delayed {
                    due,
                    key,
                    entry: Entry { group, lock: None },
                }),
                None => self.set_ready(group, key, true),
            },
            Some(lock) => {
                self.locks
                    .entry(lock)
                    .or_default()
                    .waiting
                    .insert(task.seq, Waiting { key, group, due });
                self.promote(lock, now);
            }
        }
    }

    /// Makes the oldest task of a lock key ready when no task of the key is ready, assigned
    /// or running, and it is due; a head still in its backoff holds the key until then.
    fn promote(&mut self, lock: u32, now: i64) {
        let Some(q) = self.locks.get_mut(&lock) else {
            return;
        };
        if q.active > 0 || q.ready.is_some() {
            return;
        }
        let Some((&seq, &head)) = q.waiting.first_key_value() else {
            self.locks.remove(&lock);
            return;
        };
        if let Some(due) = head.due
            && due > now
        {
            self.delayed.push(Delayed {
                due,
                key: head.key,
                entry: Entry {
                    group: head.group,
                    lock: Some(lock),
                },
            });
            return;
        }
        q.waiting.remove(&seq);
        q.ready = Some(seq);
        self.lock_of.insert(seq, lock);
        self.set_ready(head.group, head.key, true);
    }

    fn drop_queued(&mut self, task: QueuedTask, now: i64) {
        // Without a lock key a cancelled task may stay indexed: the store refuses it when
        // planned, and the plan is undone. With one, it must not hold its key meanwhile.
        let Some(lock) = task
            .lock_key
            .as_deref()
            .and_then(|l| self.lock_ids.get(l).copied())
        else {
            return;
        };
        let Some(q) = self.locks.get_mut(&lock) else {
            return;
        };
        q.waiting.remove(&task.seq);
        if q.ready == Some(task.seq) {
            q.ready = None;
            self.lock_of.remove(&task.seq);
            let group = self.group_ids.get(&(task.capabilities, task.kind)).copied();
            if let Some(group) = group {
                self.set_ready(group, queue_key(task.priority, task.seq), false);
            }
        }
        self.promote(lock, now);
    }

    fn free_slot(&mut self, agent_id: &str) {
        if let Some(&a) = self.agent_ix.get(agent_id) {
            let slot = &mut self.agents[a];
            slot.active = (slot.active - 1).max(0);
        }
    }

    fn release(&mut self, released: Released, now: i64) {
        self.free_slot(&released.agent_id);
        if let Some(lock) = released.lock_key {
            let lock = self.intern(&lock);
            let q = self.locks.entry(lock).or_default();
            q.active = q.active.saturating_sub(1);
            self.promote(lock, now);
        }
    }

    pub fn next_due(&self) -> Option<i64> {
        self.delayed.peek().map(|d| d.due)
    }

    /// Tasks held in memory: ready, delayed, or waiting for their lock key.
    pub fn queued_len(&self) -> usize {
        self.groups.iter().map(|g| g.ready.len()).sum::<usize>()
            + self
                .delayed
                .iter()
                .filter(|d| d.entry.lock.is_none())
                .count()
            + self.locks.values().map(|q| q.waiting.len()).sum::<usize>()
    }

    /// One dispatch round at `now`: the best task any agent with room can take goes to the
    /// best of the agents that can take it, until no agent with room serves a ready task.
    /// Each step looks at one head per agent, never at the queue or every group.
    pub fn plan(&mut self, now: i64) -> Vec<Planned> {
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            let d = self.delayed.pop().expect("peeked");
            match d.entry.lock {
                None => self.set_ready(d.entry.group, d.key, true),
                Some(lock) => {
                    if let Some(w) = self
                        .locks
                        .get_mut(&lock)
                        .and_then(|q| q.waiting.get_mut(&seq_of(d.key)))
                    {
                        w.due = None;
                    }
                    self.promote(lock, now);
                }
            }
        }
        self.round += 1;
        let mut planned = Vec::new();
        loop {
            let best = self
                .agents
                .iter()
                .filter(|s| s.has_room())
                .filter_map(|s| s.servable.first().copied())
                .min();
            let Some((key, group)) = best else { break };
            let candidates = self.candidates(group);
            let chosen = candidates[0].agent_id.clone();
            let seq = seq_of(key);
            self.set_ready(group, key, false);
            let lock = self.lock_of.remove(&seq);
            if let Some(lock) = lock {
                let q = self.locks.entry(lock).or_default();
                q.ready = None;
                q.active += 1;
            }
            let a = self.agent_ix[&chosen];
            let slot = &mut self.agents[a];
            slot.active += 1;
            slot.last_assigned = self.round * 1_000_000 + planned.len() as u64;
            planned.push(Planned {
                order: AssignOrder {
                    seq,
                    agent_id: chosen.clone(),
                    assignment: Assignment {
                        agent_id: chosen,
                        assigned_at: to_utc(now),
                        candidates,
                    },
                    start: None,
                },
                key,
                entry: Entry { group, lock },
            });
        }
        planned
    }

    /// The agents with room that serve `group`, best first; never empty when called from
    /// [`DispatchState::plan`], which picked the group through one of them.
    fn candidates(&self, group: GroupIx) -> Vec<Candidate> {
        let mut eligible: Vec<&Slot> = self.groups[group as usize]
            .servers
            .iter()
            .map(|a| &self.agents[*a])
            .filter(|s| s.has_room())
            .collect();
        eligible.sort_by(|a, b| {
            b.score()
                .total_cmp(&a.score())
                .then(a.last_assigned.cmp(&b.last_assigned))
                .then(a.agent_id.cmp(&b.agent_id))
        });
        eligible
            .into_iter()
            .take(CANDIDATES_KEPT)
            .map(|s| Candidate {
                agent_id: s.agent_id.clone(),
                score: (s.score() * 1000.0).round() / 1000.0,
                active: s.active.max(0) as u32,
                cpu_percent: s.cpu_percent,
                memory_percent: s.memory_percent,
            })
            .collect()
    }

    /// Takes back a planned assignment the store refused (`requeue` false: the task is gone)
    /// or could not persist (`requeue` true: it is still queued).
    pub fn undo(&mut self, planned: Planned, requeue: bool, now: i64) {
        self.free_slot(&planned.order.agent_id);
        let seq = seq_of(planned.key);
        match planned.entry.lock {
            None => {
                if requeue {
                    self.set_ready(planned.entry.group, planned.key, true);
                }
            }
            Some(lock) => {
                let q = self.locks.entry(lock).or_default();
                q.active = q.active.saturating_sub(1);
                if requeue {
                    q.waiting.insert(
                        seq,
                        Waiting {
                            key: planned.key,
                            group: planned.entry.group,
                            due: None,
                        },
                    );
                }
                self.promote(lock, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seq: i64, priority: i32, caps: &[&str], lock: Option<&str>) -> QueuedTask {
        QueuedTask {
            seq,
            kind: "echo".into(),
            priority,
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            lock_key: lock.map(str::to_owned),
            run_after: None,
        }
    }

    fn agent(state: &mut DispatchState, id: &str, caps: &[&str], max: u32) {
        state.upsert_agent(
            id,
            caps.iter().map(|c| c.to_string()).collect(),
            Vec::new(),
            max,
            AgentStatus::Online,
        );
    }

    #[test]
    fn higher_priority_then_older_goes_first() {
        let mut s = DispatchState::default();
        s.enqueue(task(1, 0, &[], None), 0);
        s.enqueue(task(2, 5, &[], None), 0);
        s.enqueue(task(3, 5, &[], None), 0);
        agent(&mut s, "a", &[], 1);
        let plan = s.plan(0);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].order.seq, 2);
    }

    #[test]
    fn the_least_loaded_capable_agent_wins() {
        let mut s = DispatchState::default();
        agent(&mut s, "busy", &["gpu"], 10);
        agent(&mut s, "idle", &["gpu"], 10);
        agent(&mut s, "incapable", &[], 10);
        let busy = s.agent_ix["busy"];
        s.agents[busy].active = 3;
        s.enqueue(task(1, 0, &["gpu"], None), 0);
        let plan = s.plan(0);
        assert_eq!(plan[0].order.agent_id, "idle");
        let ids: Vec<_> = plan[0]
            .order
            .assignment
            .candidates
            .iter()
            .map(|c| c.agent_id.as_str())
            .collect();
        assert_eq!(ids, ["idle", "busy"]);
    }

    #[test]
    fn a_held_lock_parks_tasks_in_order_until_released() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &[], 10);
        s.enqueue(task(1, 0, &[], Some("deploy")), 0);
        s.enqueue(task(2, 0, &[], Some("deploy")), 0);
        s.enqueue(task(3, 0, &[], Some("deploy")), 0);
        let plan = s.plan(0);
        assert_eq!(plan.iter().map(|p| p.order.seq).collect::<Vec<_>>(), [1]);
        assert!(s.plan(0).is_empty());
        s.release(
            Released {
                agent_id: "a".into(),
                lock_key: Some("deploy".into()),
            },
            0,
        );
        assert_eq!(
            s.plan(0).iter().map(|p| p.order.seq).collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn delayed_tasks_wait_for_their_time() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &[], 10);
        let mut t = task(1, 0, &[], None);
        t.run_after = Some(1_000);
        s.enqueue(t, 0);
        assert!(s.plan(999).is_empty());
        assert_eq!(s.next_due(), Some(1_000));
        assert_eq!(s.plan(1_000).len(), 1);
    }

    #[test]
    fn the_packed_key_orders_by_priority_then_age() {
        let mut keys = [
            queue_key(0, 7),
            queue_key(5, 9),
            queue_key(-3, 1),
            queue_key(5, 2),
        ];
        keys.sort();
        let order: Vec<i64> = keys.iter().map(|k| seq_of(*k)).collect();
        assert_eq!(order, [2, 9, 7, 1]);
        assert_eq!(
            seq_of(queue_key(i32::from(i16::MAX), (1 << 47) + 5)),
            (1 << 47) + 5
        );
    }

    #[test]
    fn max_concurrency_bounds_assignments() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &[], 2);
        for seq in 1..=5 {
            s.enqueue(task(seq, 0, &[], None), 0);
        }
        assert_eq!(s.plan(0).len(), 2);
        assert!(s.plan(0).is_empty());
        assert_eq!(s.queued_len(), 3);
    }

    fn seqs(plan: &[Planned]) -> Vec<i64> {
        plan.iter().map(|p| p.order.seq).collect()
    }

    #[test]
    fn one_keys_tasks_run_in_submit_order_whatever_their_priority() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &[], 10);
        s.enqueue(task(1, 0, &[], Some("deploy")), 0);
        s.enqueue(task(2, 100, &[], Some("deploy")), 0);
        assert_eq!(seqs(&s.plan(0)), [1], "priority jumped the lock queue");
    }

    #[test]
    fn a_retried_lock_holder_keeps_its_place_through_its_backoff() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &[], 10);
        s.enqueue(task(1, 0, &[], Some("deploy")), 0);
        s.enqueue(task(2, 0, &[], Some("deploy")), 0);
        assert_eq!(seqs(&s.plan(0)), [1]);
        // v1 fails retryably: back in the queue with a backoff, freeing its agent slot.
        let mut retry = task(1, 0, &[], Some("deploy"));
        retry.run_after = Some(5_000);
        s.apply(
            DispatchEvent::Requeued {
                released: Released {
                    agent_id: "a".into(),
                    lock_key: Some("deploy".into()),
                },
                queued: retry,
            },
            10,
        );
        // v2 must not take the key while v1 waits out its backoff …
        assert!(s.plan(10).is_empty());
        assert!(s.plan(4_999).is_empty());
        // … and v1 runs again before v2.
        assert_eq!(seqs(&s.plan(5_000)), [1]);
    }

    #[test]
    fn a_cancelled_queued_task_hands_its_key_on() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &[], 10);
        let mut first = task(1, 0, &[], Some("deploy"));
        first.run_after = Some(60_000);
        s.enqueue(first.clone(), 0);
        s.enqueue(task(2, 0, &[], Some("deploy")), 0);
        assert!(
            s.plan(0).is_empty(),
            "the first holds the key through its delay"
        );
        s.apply(DispatchEvent::Dropped(first), 1);
        assert_eq!(seqs(&s.plan(1)), [2]);
    }

    #[test]
    fn a_task_goes_only_to_agents_that_handle_its_kind() {
        let mut s = DispatchState::default();
        s.upsert_agent(
            "http-only",
            vec![],
            vec!["http".into()],
            10,
            AgentStatus::Online,
        );
        s.enqueue(task(1, 0, &[], None), 0);
        assert!(
            s.plan(0).is_empty(),
            "an echo task went to an http-only agent"
        );
        s.upsert_agent("any", vec![], vec![], 10, AgentStatus::Online);
        let plan = s.plan(0);
        assert_eq!(plan[0].order.agent_id, "any");
        let mut http = task(2, 0, &[], None);
        http.kind = "http".into();
        s.enqueue(http, 0);
        assert_eq!(seqs(&s.plan(0)), [2]);
    }

    #[test]
    fn many_distinct_capability_sets_nobody_can_take_cost_nothing_per_round() {
        let mut s = DispatchState::default();
        agent(&mut s, "a", &["shell"], 10);
        for seq in 1..=20_000 {
            s.enqueue(task(seq, 0, &[&format!("cap-{seq}")], None), 0);
        }
        s.enqueue(task(20_001, 0, &["shell"], None), 0);
        // The agent's view holds only the groups it serves: one head, not twenty thousand.
        assert_eq!(s.agents[s.agent_ix["a"]].servable.len(), 1);
        assert_eq!(seqs(&s.plan(0)), [20_001]);
        assert!(s.agents[s.agent_ix["a"]].servable.is_empty());
    }

    #[test]
    fn an_agent_registering_later_sees_the_groups_it_serves() {
        let mut s = DispatchState::default();
        s.enqueue(task(1, 0, &["gpu"], None), 0);
        s.enqueue(task(2, 0, &["cpu"], None), 0);
        agent(&mut s, "g", &["gpu"], 10);
        assert_eq!(seqs(&s.plan(0)), [1]);
        s.apply(
            DispatchEvent::AgentRemoved {
                agent_id: "g".into(),
            },
            0,
        );
        s.enqueue(task(3, 0, &["gpu"], None), 0);
        assert!(s.plan(0).is_empty(), "a removed agent was given work");
    }
}
