//! Dispatch: which agent runs which queued task. [`DispatchState`] is the pure, in-memory
//! index and its planning; [`crate::dispatcher`] is the actor that owns it and persists plans.
//!
//! The actor owns an in-memory index of the queue and of agent capacity, fed by
//! events from the handlers and the health loop (a submit, a finished task, a registration, a
//! heartbeat). Queued tasks are indexed by their capability set ("group"; homelabs have few),
//! parked by lock key while that key is held, and held in a timer heap while `run_after` is in
//! the future, so one dispatch round never rescans the queue: a million queued tasks that no
//! agent can take cost nothing per event.
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
    /// An agent registered, changed status or concurrency.
    AgentChanged {
        agent_id: String,
        capabilities: Vec<String>,
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

/// Where a queued task belongs: its capability group and its lock key (interned).
#[derive(Debug, Clone, Copy)]
struct Entry {
    group: u32,
    lock: Option<u32>,
}

#[derive(Debug)]
struct Group {
    capabilities: Vec<String>,
    ready: BTreeSet<QueueKey>,
}

#[derive(Debug)]
struct Slot {
    capabilities: Vec<String>,
    max_concurrency: u32,
    active: i64,
    cpu_percent: f64,
    memory_percent: f64,
    status: AgentStatus,
    /// Dispatch round counter at its last assignment; ties go to the least recent.
    last_assigned: u64,
}

impl Slot {
    fn can_take(&self, capabilities: &[String]) -> bool {
        self.status == AgentStatus::Online
            && self.active < i64::from(self.max_concurrency)
            && capabilities
                .iter()
                .all(|c| self.capabilities.binary_search(c).is_ok())
    }

    /// The design's weighted score: free slots weigh 0.4, spare CPU and memory 0.2.
    fn score(&self) -> f64 {
        let busy = (self.active as f64 / 10.0).clamp(0.0, 1.0);
        let load = ((self.cpu_percent + self.memory_percent) / 200.0).clamp(0.0, 1.0);
        0.4 * (1.0 - busy) + 0.2 * (1.0 - load)
    }
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
    group_ids: HashMap<Vec<String>, u32>,
    delayed: BinaryHeap<Delayed>,
    /// Lock keys of the ready tasks that have one (most have none, so this stays small).
    lock_of: HashMap<i64, u32>,
    waiting_on_lock: HashMap<u32, BTreeMap<QueueKey, u32>>,
    locks_held: HashMap<u32, u32>,
    lock_ids: HashMap<String, u32>,
    agents: HashMap<String, Slot>,
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
                agent.max_concurrency,
                agent.status,
            );
        }
        for active in snapshot.active {
            if let Some(slot) = state.agents.get_mut(&active.agent_id) {
                slot.active += 1;
            }
            if let Some(lock) = active.lock_key {
                let lock = state.intern(&lock);
                *state.locks_held.entry(lock).or_default() += 1;
            }
        }
        state
    }

    /// Loads the store's queue, a page at a time.
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

    fn group_of(&mut self, capabilities: Vec<String>) -> u32 {
        if let Some(id) = self.group_ids.get(&capabilities) {
            return *id;
        }
        let id = self.groups.len() as u32;
        self.groups.push(Group {
            capabilities: capabilities.clone(),
            ready: BTreeSet::new(),
        });
        self.group_ids.insert(capabilities, id);
        id
    }

    pub fn upsert_agent(
        &mut self,
        agent_id: &str,
        mut capabilities: Vec<String>,
        max_concurrency: u32,
        status: AgentStatus,
    ) {
        capabilities.sort();
        capabilities.dedup();
        let slot = self.agents.entry(agent_id.to_owned()).or_insert(Slot {
            capabilities: Vec::new(),
            max_concurrency,
            active: 0,
            cpu_percent: 0.0,
            memory_percent: 0.0,
            status,
            last_assigned: 0,
        });
        slot.capabilities = capabilities;
        slot.max_concurrency = max_concurrency;
        slot.status = status;
    }

    pub fn apply(&mut self, event: DispatchEvent, now: i64) {
        match event {
            DispatchEvent::Queued(task) => self.enqueue(task, now),
            DispatchEvent::Released(released) => self.release(released),
            DispatchEvent::AgentChanged {
                agent_id,
                capabilities,
                max_concurrency,
                status,
            } => self.upsert_agent(&agent_id, capabilities, max_concurrency, status),
            DispatchEvent::AgentStatus { agent_id, status } => {
                if let Some(slot) = self.agents.get_mut(&agent_id) {
                    slot.status = status;
                }
            }
            DispatchEvent::AgentLoad {
                agent_id,
                cpu_percent,
                memory_percent,
            } => {
                if let Some(slot) = self.agents.get_mut(&agent_id) {
                    slot.cpu_percent = cpu_percent;
                    slot.memory_percent = memory_percent;
                }
            }
            DispatchEvent::AgentRemoved { agent_id } => {
                self.agents.remove(&agent_id);
            }
            DispatchEvent::Settle(_) => {}
        }
    }

    fn enqueue(&mut self, task: QueuedTask, now: i64) {
        let group = self.group_of(task.capabilities);
        let lock = task.lock_key.as_deref().map(|l| self.intern(l));
        let key = queue_key(task.priority, task.seq);
        let entry = Entry { group, lock };
        match task.run_after {
            Some(due) if due > now => self.delayed.push(Delayed { due, key, entry }),
            _ => self.make_ready(key, entry),
        }
    }

    fn make_ready(&mut self, key: QueueKey, entry: Entry) {
        if let Some(lock) = entry.lock {
            if self.locks_held.contains_key(&lock) {
                self.waiting_on_lock
                    .entry(lock)
                    .or_default()
                    .insert(key, entry.group);
                return;
            }
            self.lock_of.insert(seq_of(key), lock);
        }
        self.groups[entry.group as usize].ready.insert(key);
    }

    /// Takes a ready task out of its group.
    fn take_ready(&mut self, group: usize, key: QueueKey) -> Entry {
        self.groups[group].ready.remove(&key);
        Entry {
            group: group as u32,
            lock: self.lock_of.remove(&seq_of(key)),
        }
    }

    fn release(&mut self, released: Released) {
        if let Some(slot) = self.agents.get_mut(&released.agent_id) {
            slot.active = (slot.active - 1).max(0);
        }
        if let Some(lock) = released.lock_key {
            let lock = self.intern(&lock);
            self.release_lock(lock);
        }
    }

    fn release_lock(&mut self, lock: u32) {
        match self.locks_held.get_mut(&lock) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                self.locks_held.remove(&lock);
            }
            None => return,
        }
        // The next task waiting on this key, in queue order, becomes ready again.
        if let Some(waiting) = self.waiting_on_lock.get_mut(&lock) {
            let next = waiting.pop_first();
            if waiting.is_empty() {
                self.waiting_on_lock.remove(&lock);
            }
            if let Some((key, group)) = next {
                self.make_ready(
                    key,
                    Entry {
                        group,
                        lock: Some(lock),
                    },
                );
            }
        }
    }

    /// When the next delayed task falls due.
    pub fn next_due(&self) -> Option<i64> {
        self.delayed.peek().map(|d| d.due)
    }

    /// How many tasks wait in memory (ready, delayed, or parked on a lock).
    pub fn queued_len(&self) -> usize {
        self.groups.iter().map(|g| g.ready.len()).sum::<usize>()
            + self.delayed.len()
            + self
                .waiting_on_lock
                .values()
                .map(BTreeMap::len)
                .sum::<usize>()
    }

    /// Decides assignments for everything that can run now and books them in memory.
    pub fn plan(&mut self, now: i64) -> Vec<Planned> {
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            let d = self.delayed.pop().expect("peeked");
            self.make_ready(d.key, d.entry);
        }
        self.round += 1;
        let mut planned = Vec::new();
        // Groups that found no agent with a free slot this round: capacity only shrinks while
        // planning, so they stay blocked until the next round.
        let mut blocked = vec![false; self.groups.len()];
        loop {
            // The best head among the groups that can still make progress keeps the global
            // order (priority, then age) across capability sets.
            let mut best: Option<(QueueKey, usize)> = None;
            for (g, group) in self.groups.iter().enumerate() {
                if blocked[g] {
                    continue;
                }
                if let Some(key) = group.ready.first()
                    && best.is_none_or(|(k, _)| *key < k)
                {
                    best = Some((*key, g));
                }
            }
            let Some((key, g)) = best else { break };
            if let Some(lock) = self.lock_of.get(&seq_of(key)).copied()
                && self.locks_held.contains_key(&lock)
            {
                let entry = self.take_ready(g, key);
                self.make_ready(key, entry);
                continue;
            }
            let Some(candidates) = self.candidates(g) else {
                blocked[g] = true;
                continue;
            };
            let entry = self.take_ready(g, key);
            let chosen = candidates[0].agent_id.clone();
            let slot = self.agents.get_mut(&chosen).expect("candidate exists");
            slot.active += 1;
            slot.last_assigned = self.round * 1_000_000 + planned.len() as u64;
            if let Some(lock) = entry.lock {
                *self.locks_held.entry(lock).or_default() += 1;
            }
            planned.push(Planned {
                order: AssignOrder {
                    seq: seq_of(key),
                    agent_id: chosen.clone(),
                    assignment: Assignment {
                        agent_id: chosen,
                        assigned_at: to_utc(now),
                        candidates,
                    },
                },
                key,
                entry,
            });
        }
        planned
    }

    /// Eligible agents for group `g`, best first; `None` if there is none.
    fn candidates(&self, g: usize) -> Option<Vec<Candidate>> {
        let needed = &self.groups[g].capabilities;
        let mut eligible: Vec<(&String, &Slot)> = self
            .agents
            .iter()
            .filter(|(_, s)| s.can_take(needed))
            .collect();
        if eligible.is_empty() {
            return None;
        }
        eligible.sort_by(|(a_id, a), (b_id, b)| {
            b.score()
                .total_cmp(&a.score())
                .then(a.last_assigned.cmp(&b.last_assigned))
                .then(a_id.cmp(b_id))
        });
        Some(
            eligible
                .into_iter()
                .take(CANDIDATES_KEPT)
                .map(|(id, s)| Candidate {
                    agent_id: id.clone(),
                    score: (s.score() * 1000.0).round() / 1000.0,
                    active: s.active.max(0) as u32,
                    cpu_percent: s.cpu_percent,
                    memory_percent: s.memory_percent,
                })
                .collect(),
        )
    }

    /// Takes back a planned assignment the store refused (or could not write).
    pub fn undo(&mut self, planned: Planned, requeue: bool) {
        if let Some(slot) = self.agents.get_mut(&planned.order.agent_id) {
            slot.active = (slot.active - 1).max(0);
        }
        if let Some(lock) = planned.entry.lock {
            self.release_lock(lock);
        }
        if requeue {
            self.make_ready(planned.key, planned.entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seq: i64, priority: i32, caps: &[&str], lock: Option<&str>) -> QueuedTask {
        QueuedTask {
            seq,
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
        s.agents.get_mut("busy").unwrap().active = 3;
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
        s.release(Released {
            agent_id: "a".into(),
            lock_key: Some("deploy".into()),
        });
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
}
