//! The `Store` trait: every durable operation of the control plane, in domain terms. Backends
//! (SQLite now, PostgreSQL later) implement it their best way; the dispatcher, the sweeper
//! and the handlers see only this trait. Each operation is durable before it returns.

pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use muster_api::{
    Agent, AgentStatus, AppendLogs, Assignment, LogLine, RegisterAgent, RunningTask, Task,
    TaskState,
};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::audit::{Actor, AuditRecord, Checkpoint, StoredEntry, Via};
use crate::error::StoreError;
use crate::notice::Notice;

pub type StoreResult<T> = Result<T, StoreError>;

/// A task to persist, already validated and normalised (capabilities sorted and unique).
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: Uuid,
    pub kind: String,
    pub payload: Value,
    pub capabilities: Vec<String>,
    pub priority: i32,
    pub max_retries: u32,
    pub timeout_s: Option<u32>,
    pub lock_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub run_after: Option<i64>,
    pub labels: muster_api::Labels,
}

/// What the dispatcher needs to know of a queued task.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask {
    /// The store's internal, monotonically growing handle of the task (age order).
    pub seq: i64,
    pub kind: String,
    pub priority: i32,
    pub capabilities: Vec<String>,
    pub lock_key: Option<String>,
    pub run_after: Option<i64>,
}

/// A task left `assigned`/`running`: its agent has a slot free and its lock key is free.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub agent_id: String,
    pub lock_key: Option<String>,
}

/// One committed state change of a task, for the dispatcher and the event stream.
#[derive(Debug, Clone)]
pub struct Change {
    pub task_id: Uuid,
    pub state: TaskState,
    pub attempt: u32,
    pub agent_id: Option<String>,
    pub released: Option<Released>,
    /// Set when the task (re-)entered the queue.
    pub requeued: Option<QueuedTask>,
    /// Set when a queued task left the queue without running (cancelled).
    pub dropped: Option<QueuedTask>,
    /// An agent that must hear about this at once (a cancel of its running task).
    pub wake_agent: Option<String>,
    /// The task was just submitted (not queued again).
    pub submitted: bool,
    /// The change ended an attempt lost through no fault of the task.
    pub lost_attempt: bool,
    /// Changes it caused in the same transaction: a deployment's real run submitted when its
    /// check completed.
    pub then: Vec<Change>,
    /// The incident whose repair this task was, moved on by its end (to where it now stands).
    pub incident: Option<(Uuid, muster_api::IncidentState)>,
}

impl Change {
    /// A change that only says where a task now stands; the constructors below add what the
    /// rest of the server must do about it.
    pub fn new(task_id: Uuid, state: TaskState, attempt: u32, agent_id: Option<String>) -> Self {
        Change {
            task_id,
            state,
            attempt,
            agent_id,
            released: None,
            requeued: None,
            dropped: None,
            wake_agent: None,
            submitted: false,
            lost_attempt: false,
            then: Vec::new(),
            incident: None,
        }
    }

    /// The dispatcher assigned the task: its agent must hear at once.
    pub fn assigned(task_id: Uuid, attempt: u32, agent_id: String) -> Self {
        Change {
            wake_agent: Some(agent_id.clone()),
            ..Change::new(task_id, TaskState::Assigned, attempt, Some(agent_id))
        }
    }
}

/// The answer of a task operation: the task as it now stands and what changed.
#[derive(Debug, Clone)]
pub struct Changed {
    pub task: Task,
    pub change: Change,
}

#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: Task,
    /// False when the idempotency key named an existing task.
    pub created: bool,
    /// The task entering the queue; none when it already existed.
    pub change: Option<Change>,
}

/// A push that a rule matched. Each matched rule carries in `task` the task it submits,
/// already validated (capabilities normalised, `max_retries` filled in): the store submits it,
/// or its check first, or holds it while its source or rule is paused.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub id: Uuid,
    pub source: String,
    pub delivery: String,
    pub repo: String,
    pub clone_url: Option<String>,
    pub git_ref: String,
    pub branch: Option<String>,
    pub before: String,
    pub sha: String,
    pub author: String,
    pub message: String,
    pub changed: Vec<String>,
    pub complete: bool,
    /// Its commit statuses go to the forge: the source has a status API (`api_url`).
    pub statuses: bool,
    pub rules: Vec<muster_api::PlannedRule>,
}

impl NewTask {
    /// A task validated before it was stored (a deployment's rule task): only a new id.
    pub fn from_validated(task: &muster_api::SubmitTask) -> NewTask {
        NewTask {
            id: Uuid::now_v7(),
            kind: task.kind.clone(),
            payload: task.payload.clone(),
            capabilities: task.capabilities.clone(),
            priority: task.priority,
            max_retries: task.max_retries.unwrap_or(0),
            timeout_s: task.timeout_s,
            lock_key: task.lock_key.clone(),
            idempotency_key: None,
            run_after: None,
            labels: task.labels.clone(),
        }
    }
}

/// One call to a language model, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCall {
    pub id: Uuid,
    pub at: i64,
    pub workflow: String,
    pub provider: String,
    pub model: String,
    /// A hash of the prompt template (not of the filled prompt), so calls of one prompt group.
    pub prompt_hash: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub latency_ms: u64,
    /// Millionths of the price table's currency.
    pub cost_micros: i64,
    pub outcome: muster_api::LlmOutcome,
    pub error: Option<String>,
}

/// What a workflow spent since a time: calls kept and daily sums together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub calls: u64,
    pub tokens: u64,
    pub cost_micros: i64,
}

/// Who paused a GitOps source or rule, or resumed it.
#[derive(Debug, Clone)]
pub struct PauseOrder {
    pub scope: muster_api::PauseScope,
    pub name: String,
    pub actor: Actor,
}

/// What a resume did.
#[derive(Debug, Clone, Default)]
pub struct Resumed {
    /// False when it was not paused.
    pub changed: bool,
    /// The held tasks it submitted, in push order.
    pub changes: Vec<Change>,
}

/// A deployment as stored, and what recording it changed.
#[derive(Debug, Clone)]
pub struct DeploymentRecorded {
    pub deployment: muster_api::Deployment,
    /// False when the delivery had been recorded before: the first deployment is answered.
    pub created: bool,
    /// Its tasks entering the queue.
    pub changes: Vec<Change>,
}

/// Which deployments to list: newest first, before a cursor.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFilter {
    pub repo: Option<String>,
    pub source: Option<String>,
    /// Only deployments this rule matched.
    pub rule: Option<String>,
    /// Only deployments in this state (read from their tasks, so the store filters as it reads).
    pub state: Option<muster_api::DeploymentState>,
    pub limit: usize,
    /// Only deployments older than this one.
    pub before: Option<Uuid>,
}

/// A registration as stored, and what it changed.
#[derive(Debug, Clone)]
pub struct AgentRegistered {
    pub agent: Agent,
    /// False when the agent was known.
    pub created: bool,
    /// Tasks of the agent's previous process, given back because a new one registered.
    pub changes: Vec<Change>,
}

/// Who drains an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainBy {
    /// An operator: lasts until undrained.
    Operator(Via),
    /// The agent's process with this instance id, on its way out.
    Instance(String),
}

/// The dispatcher's decision for one task.
#[derive(Debug, Clone)]
pub struct AssignOrder {
    pub seq: i64,
    pub agent_id: String,
    pub assignment: Assignment,
    /// Set when the agent is already waiting in a long-poll: the same update starts the
    /// task's next attempt with this lease (ms), so the agent is answered from the assignment's
    /// own commit instead of a claim of its own.
    pub start: Option<i64>,
}

/// An applied [`AssignOrder`].
#[derive(Debug, Clone)]
pub struct Assigned {
    pub task_id: Uuid,
    /// The task's attempt number as it now stands: the new attempt's when it was started.
    pub attempt: u32,
    /// The task, running, when the order started it.
    pub started: Option<Task>,
}

#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub task: Option<Task>,
    /// The claimed task becoming `running`.
    pub change: Option<Change>,
    /// Running tasks of this agent that it must stop.
    pub cancel: Vec<Uuid>,
}

/// What one batch claim took: up to `max` tasks, highest priority first (then oldest), each
/// now `running` with its new attempt and a lease, with one change per task.
#[derive(Debug, Clone, Default)]
pub struct ClaimedBatch {
    pub tasks: Vec<Task>,
    /// One per claimed task, in the same order.
    pub changes: Vec<Change>,
    /// Running tasks of this agent that it must stop.
    pub cancel: Vec<Uuid>,
}

/// How an agent says an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    Completed {
        result: Value,
        usage: Option<Value>,
    },
    /// The lifecycle rules decide between a retry and the end.
    Failed {
        error: String,
        retryable: bool,
    },
}

/// One report of a batch: the end of one attempt of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    pub task_id: Uuid,
    pub attempt: u32,
    pub end: AttemptEnd,
}

/// Filters of `GET /api/v1/tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub kind: Option<String>,
    pub agent_id: Option<String>,
    pub limit: usize,
    /// Only tasks older than this `seq` (newest first paging).
    pub before_seq: Option<i64>,
}

/// One page of tasks and the `seq` to continue before.
#[derive(Debug, Clone)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub next_before: Option<i64>,
}

/// Figures for metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub by_state: Vec<(TaskState, u64)>,
    /// Running tasks whose lease lapsed and that the sweeper has not rescued yet.
    pub past_lease: u64,
    /// When the oldest queued task was submitted.
    pub oldest_queued_at: Option<i64>,
}

/// What the dispatcher rebuilds its memory from at start, besides the queue itself (read in
/// pages through [`Store::queued`] so a long queue never sits in memory twice).
#[derive(Debug, Clone, Default)]
pub struct DispatchSnapshot {
    pub agents: Vec<Agent>,
    /// Assigned or running tasks: (agent, lock key).
    pub active: Vec<Released>,
}

pub use crate::lifecycle::RetryPolicy;

/// Copies the database at `db` into `to` while a server may be writing to it, through the
/// backend's own online backup. Callers (the CLI) never reach into a backend module.
pub fn backup(db: &std::path::Path, to: &std::path::Path) -> StoreResult<()> {
    sqlite::backup(db, to)
}

/// Timings the sweeper applies.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryRules {
    pub assign_timeout_ms: i64,
}

/// Counts removed by one retention pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: u64,
    pub log_lines: u64,
    /// Delivered outbox rows.
    pub outbox_rows: u64,
    /// Audit entries folded into the checkpoint.
    pub audit_entries: u64,
    /// Notifications delivered or given up on, with their attempts.
    pub notifications: u64,
    /// Deployments none of whose tasks still runs or waits.
    pub deployments: u64,
    /// LLM calls folded into the daily sums.
    pub llm_calls: u64,
    /// Resolved or escalated incidents, with their stories.
    pub incidents: u64,
    /// Schedule firings (each schedule's latest is kept).
    pub schedule_firings: u64,
    /// Judged canary runs (each canary's last stays).
    pub canary_runs: u64,
}

/// Who consumes an outbox row. Stored by name; `nats` joins later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Appended to the hash-chained audit log.
    Audit,
    /// A [`Notice`], matched against the notification rules.
    Notice,
    /// A deployment's commit status, for its forge: the payload names the deployment, and
    /// the consumer sends the deployment's state as it is then.
    CommitStatus,
}

/// Outbox rows are delivered in two lanes, so that a slow remote service never delays what
/// stays local (audit entries, notices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Local,
    Remote,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Audit => "audit",
            Topic::Notice => "notice",
            Topic::CommitStatus => "commit_status",
        }
    }

    pub fn lane(self) -> Lane {
        match self {
            Topic::Audit | Topic::Notice => Lane::Local,
            Topic::CommitStatus => Lane::Remote,
        }
    }

    pub fn parse(text: &str) -> Option<Topic> {
        match text {
            "audit" => Some(Topic::Audit),
            "notice" => Some(Topic::Notice),
            "commit_status" => Some(Topic::CommitStatus),
            _ => None,
        }
    }
}

/// Something that must reach a consumer, written in the same transaction as the change that
/// causes it (these types live here, beside the other records the store writes, so that the
/// store does not depend on the delivery loop in [`crate::outbox`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// UUIDv7: stable across redeliveries, the consumer's de-duplication key.
    pub id: Uuid,
    pub topic: Topic,
    pub payload: Value,
}

impl OutboxItem {
    /// An audit record on its way to the log.
    pub fn audit(record: &AuditRecord) -> OutboxItem {
        OutboxItem {
            id: Uuid::now_v7(),
            topic: Topic::Audit,
            payload: serde_json::to_value(record).expect("an audit record is plain data"),
        }
    }

    /// A deployment's commit status on its way to the forge.
    pub fn commit_status(deployment: Uuid) -> OutboxItem {
        OutboxItem {
            id: Uuid::now_v7(),
            topic: Topic::CommitStatus,
            payload: serde_json::json!({ "deployment": deployment }),
        }
    }

    /// A notice on its way to the notification rules.
    pub fn notice(notice: &Notice) -> OutboxItem {
        OutboxItem {
            id: Uuid::now_v7(),
            topic: Topic::Notice,
            payload: serde_json::to_value(notice).expect("a notice is plain data"),
        }
    }
}

/// An undelivered outbox row that is due.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: Uuid,
    /// As stored: a topic this build does not know stays undelivered, retried with backoff.
    pub topic: String,
    pub payload: Value,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub created_at: i64,
}

/// A delivery that did not succeed, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxFailure {
    pub id: Uuid,
    pub error: String,
    pub next_attempt_at: i64,
}

/// A notification to queue for one channel: a notice in the words of the rule that sends it
/// there.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub id: Uuid,
    pub channel: String,
    pub event: String,
    pub subject: String,
    /// The notice's quiet-period group.
    pub group: String,
    pub title: String,
    pub message: String,
    pub link: Option<String>,
    pub event_at: i64,
    /// The rule's quiet period; 0 sends every notice.
    pub quiet_ms: i64,
}

/// What recording a notice did, per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoticeRecorded {
    /// Channels that got a message of their own (at once, or a digest at the end of the
    /// quiet period).
    pub queued: Vec<String>,
    /// Channels where the notice folded into a digest already waiting.
    pub folded: Vec<String>,
    /// The notice had been recorded already (a redelivery): nothing changed.
    pub repeated: bool,
}

/// A pending notification whose attempt is due.
#[derive(Debug, Clone, PartialEq)]
pub struct DueNotification {
    pub id: Uuid,
    pub channel: String,
    pub event: String,
    pub subject: String,
    pub title: String,
    pub message: String,
    pub link: Option<String>,
    pub count: u32,
    pub digest: bool,
    pub event_at: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// When it was first due: the give-up clock starts here.
    pub due_at: i64,
}

/// Where a notification stands after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterSend {
    Delivered,
    /// Pending again, due at this time.
    RetryAt(i64),
    /// Refused, or given up on: the reason.
    Failed(String),
}

/// How an attempt to send a notification ended (or, with no attempt, why it was dropped:
/// its channel is no longer configured).
#[derive(Debug, Clone)]
pub struct SendEnded {
    pub id: Uuid,
    /// The attempt, as [`Store::start_send`] numbered it; `None` when none was made.
    pub attempt: Option<u32>,
    pub outcome: muster_api::SendOutcome,
    pub status: Option<u16>,
    pub detail: String,
    pub after: AfterSend,
    pub at: i64,
    /// Written to the audit outbox with the result (deliveries and failures, not retries).
    pub audit: Option<AuditRecord>,
}

/// Which notifications `GET /api/v1/notifications` lists, newest first.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub channel: Option<String>,
    /// What it is about: `task:<id>`, `incident:<id>`.
    pub subject: Option<String>,
    pub state: Option<muster_api::NotificationState>,
    /// Only those older than this handle (the page's `next_before`).
    pub before: Option<i64>,
    pub limit: usize,
}

/// An alert as the store records it: the incident it opens, folds into or closes is found by
/// (source, key); the target it matched was decided from the config by the caller.
#[derive(Debug, Clone)]
pub struct AlertIn {
    pub source: String,
    pub alert: crate::alerts::Alert,
    pub target: Option<String>,
    /// The target's `max_steps`, kept on the incident it opens.
    pub max_steps: u32,
}

/// What an alert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEffect {
    /// A new incident.
    Opened,
    /// A repeat of a firing alert: counted on the open incident.
    Folded,
    /// The monitor reports it up: the open incident is resolved.
    Resolved,
    /// A recovery with no open incident: nothing to close.
    Unmatched,
}

#[derive(Debug, Clone)]
pub struct AlertRecorded {
    /// The incident and where it now stands.
    pub incident: Option<(Uuid, muster_api::IncidentState)>,
    pub effect: AlertEffect,
}

/// Which incidents `GET /api/v1/incidents` lists, newest first.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub states: Vec<muster_api::IncidentState>,
    pub target: Option<String>,
    pub limit: usize,
}

/// One conditional move of an incident: from one of `from` to `to`, with the event for its
/// story (and the audit log), in one transaction. A field left `None` keeps its value.
#[derive(Debug, Clone)]
pub struct IncidentStep {
    pub id: Uuid,
    pub from: Vec<muster_api::IncidentState>,
    pub to: muster_api::IncidentState,
    pub actor: Actor,
    /// The event's kind (`decided`, `approved`, …) and its line.
    pub kind: String,
    pub message: String,
    pub data: serde_json::Value,
    pub reason: Option<Option<String>>,
    pub choice: Option<Option<muster_api::RepairChoice>>,
    pub approval_expires_at: Option<Option<i64>>,
    pub due_at: Option<Option<i64>>,
    /// Counts one more repair step.
    pub count_step: bool,
    /// Submits the repair's task, unless a pause, the target's cap or its cooldown holds it.
    pub run: Option<RepairRun>,
    /// A notice of the incident (`incident.escalated`, …) in the same transaction.
    pub notice: Option<&'static str>,
}

impl IncidentStep {
    pub fn new(
        id: Uuid,
        from: &[muster_api::IncidentState],
        to: muster_api::IncidentState,
        actor: Actor,
        kind: &str,
        message: impl Into<String>,
    ) -> Self {
        IncidentStep {
            id,
            from: from.to_vec(),
            to,
            actor,
            kind: kind.to_owned(),
            message: message.into(),
            data: serde_json::Value::Null,
            reason: None,
            choice: None,
            approval_expires_at: None,
            due_at: None,
            count_step: false,
            run: None,
            notice: None,
        }
    }
}

/// The kind of every repair's task: `muster agent`'s action executor runs it.
pub const REPAIR_TASK_KIND: &str = "action";

/// A repair's task and the limits it is held to.
#[derive(Debug, Clone)]
pub struct RepairRun {
    pub task: NewTask,
    pub target: String,
    pub action: String,
    pub max_per_hour: u32,
    pub cooldown_ms: i64,
    pub verify_within_ms: i64,
}

/// Why a repair's task was not submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairHeld {
    /// Self-repair is paused: for everything (`target` none) or the target.
    Paused { target: Option<String> },
    /// The target started its cap of repairs in the last hour.
    Capped { repairs: u32 },
    /// The target's last repair started less than its cooldown ago: wait until then.
    Cooling { until: i64 },
}

/// What a step did.
#[derive(Debug, Clone)]
pub struct Stepped {
    pub incident: muster_api::Incident,
    /// The repair task entering the queue.
    pub change: Option<Change>,
    /// The step asked to run a repair and this held it (the incident moved accordingly).
    pub held: Option<RepairHeld>,
}

/// A schedule the store knows: one of the config file's (no `spec`) or one created through
/// the API (`spec`, the JSON of its [`muster_api::CreateSchedule`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub name: String,
    pub spec: Option<String>,
    pub paused_at: Option<i64>,
    pub paused_by: Option<String>,
    /// Firings up to this instant have been considered.
    pub looked_at: i64,
}

/// Firings of one schedule to record, each with the task it submits, in one transaction.
#[derive(Debug, Clone)]
pub struct ScheduleFire {
    pub schedule: String,
    /// An operator's "run now" (keyed apart from cron instants, audited) rather than the
    /// cron's own firings (refused while the schedule is paused).
    pub manual: bool,
    pub actor: Actor,
    pub firings: Vec<(i64, muster_api::FiringTrigger, NewTask)>,
    /// For cron firings: the instant the look started from (the row's `looked_at` it read),
    /// and what the schedule has now been looked at up to.
    pub looked_from: i64,
    pub looked_at: i64,
}

/// A firing recorded, and its task.
#[derive(Debug, Clone)]
pub struct Fired {
    pub firing: muster_api::ScheduleFiring,
    pub task: Task,
    pub change: Option<Change>,
}

/// An incident the repairer must look at now.
#[derive(Debug, Clone)]
pub struct DueIncident {
    pub incident: muster_api::Incident,
}

/// A canary run to start. One run per canary may be in flight: another is a `Conflict`.
#[derive(Debug, Clone)]
pub struct NewCanaryRun {
    pub id: Uuid,
    pub canary: String,
    pub trigger: muster_api::CanaryTrigger,
    /// What the task's answer must echo.
    pub nonce: String,
    pub fired_at: i64,
    pub deadline: i64,
    /// An operator's "run now" is audited with the run.
    pub audit: Option<AuditRecord>,
}

/// A run in flight, with the nonce only the server sees.
#[derive(Debug, Clone)]
pub struct RunningCanary {
    pub run: muster_api::CanaryRun,
    pub nonce: String,
}

/// A run's verdict, with what its legs recorded.
#[derive(Debug, Clone)]
pub struct CanaryFinish {
    pub id: Uuid,
    /// Passed or failed.
    pub outcome: muster_api::CanaryOutcome,
    pub leg: Option<muster_api::CanaryLeg>,
    pub reason: Option<String>,
    /// None for an interrupted run.
    pub latency_ms: Option<u64>,
    /// When the task ended, and the agent that answered.
    pub answered_at: Option<i64>,
    pub agent_id: Option<String>,
    pub delivered_at: Option<i64>,
    /// The run's task when it has not ended: cancelled in the same transaction, so an outage
    /// does not leave a canary task per firing for the agent that comes back.
    pub cancel_task: Option<Uuid>,
}

/// A run judged, the notice it sent (`canary.failed`, `canary.recovered`), if any, and the
/// cancel of its task.
#[derive(Debug, Clone)]
pub struct CanaryFinished {
    pub run: muster_api::CanaryRun,
    pub notice: Option<&'static str>,
    pub cancelled: Option<Change>,
}

/// Runs in flight that were interrupted, and the cancels of their tasks.
#[derive(Debug, Clone, Default)]
pub struct CanariesInterrupted {
    pub runs: Vec<muster_api::CanaryRun>,
    pub cancelled: Vec<Change>,
}

/// A canary's runs: the newest (the one in flight first, if any) and the last judged.
#[derive(Debug, Clone, Default)]
pub struct CanaryHistory {
    pub recent: Vec<muster_api::CanaryRun>,
    pub last_judged: Option<muster_api::CanaryRun>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- tasks
    async fn submit(&self, task: NewTask, now: i64) -> StoreResult<Submitted>;
    /// Submits every task in one transaction, each alone: one that cannot be stored is
    /// answered with its error and the others go on. Idempotency keys hold within the batch
    /// (a later task naming an earlier one's key answers that task) and across batches.
    async fn submit_many(
        &self,
        tasks: Vec<NewTask>,
        now: i64,
    ) -> StoreResult<Vec<StoreResult<Submitted>>>;
    /// Applies each order only if its task is still queued and due, answering per order what
    /// was applied; an order with `start` also starts the attempt, as a claim would.
    async fn assign(
        &self,
        orders: Vec<AssignOrder>,
        now: i64,
    ) -> StoreResult<Vec<Option<Assigned>>>;
    /// Puts tasks whose claim reached no one (the long-poll hung up) back to assigned: each
    /// `(task, attempt)` still running that attempt has it undone, as if never claimed, so it
    /// costs no attempt and waits for no lease. One change per task put back.
    async fn unclaim(&self, tasks: Vec<(Uuid, u32)>, now: i64) -> StoreResult<Vec<Change>>;
    /// Up to `max` of the agent's assigned tasks, highest priority first (then oldest), become
    /// running, each with a new attempt and a lease, in one transaction.
    async fn claim_many(
        &self,
        agent_id: &str,
        max: usize,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<ClaimedBatch>;
    /// The agent's next assigned task becomes running with a new attempt and a lease: a batch
    /// claim of one.
    async fn claim(&self, agent_id: &str, now: i64, lease_until: i64) -> StoreResult<Claimed> {
        let batch = self.claim_many(agent_id, 1, now, lease_until).await?;
        Ok(Claimed {
            task: batch.tasks.into_iter().next(),
            change: batch.changes.into_iter().next(),
            cancel: batch.cancel,
        })
    }
    /// Stores the lines of the current attempt, up to `max_bytes` of text per task; lines
    /// beyond it are dropped, and one marker line (the task's last) counts them. Returns the
    /// lines stored.
    async fn append_logs(
        &self,
        task_id: Uuid,
        logs: AppendLogs,
        max_bytes: u64,
        now: i64,
    ) -> StoreResult<usize>;
    async fn complete(
        &self,
        task_id: Uuid,
        attempt: u32,
        result: Value,
        usage: Option<Value>,
        now: i64,
    ) -> StoreResult<Changed>;
    async fn fail(
        &self,
        task_id: Uuid,
        attempt: u32,
        error: String,
        retryable: bool,
        now: i64,
    ) -> StoreResult<Changed>;
    /// Applies every report in one transaction, each alone, in order, as [`Store::complete`]
    /// or [`Store::fail`] would: a report refused (a stale attempt, an unknown task) changes
    /// nothing and the others go on. Per report, the change it made or why it was refused.
    async fn report_many(
        &self,
        reports: Vec<AttemptReport>,
        now: i64,
    ) -> StoreResult<Vec<StoreResult<Change>>>;
    /// Cancels the task and records who did it in the audit outbox, in one transaction.
    async fn cancel(&self, task_id: Uuid, actor: Actor, now: i64) -> StoreResult<Changed>;
    /// Queues a failed or cancelled task again, recording who did it like [`Store::cancel`].
    async fn retry(&self, task_id: Uuid, actor: Actor, now: i64) -> StoreResult<Changed>;
    /// Extends every running task's lease to at least `until`. At start: agents get a full
    /// lease to speak up, however long the server was away, before any lease is judged.
    async fn grant_leases(&self, until: i64) -> StoreResult<u64>;
    /// Assign timeouts, lapsed leases and attempts past `timeout_s`.
    async fn expire(&self, now: i64, rules: ExpiryRules) -> StoreResult<Vec<Change>>;
    async fn prune(&self, finished_before: i64) -> StoreResult<Pruned>;

    // --- agents
    /// Inserts or updates; a new process's registration gives its predecessor's tasks back.
    async fn register_agent(&self, reg: RegisterAgent, now: i64) -> StoreResult<AgentRegistered>;
    /// Extends the leases of the agent's running tasks (only those in `running` when the agent
    /// lists them; without a list, each only up to its `timeout_s`, or `unlisted_cap_ms`, after
    /// its start); answers which tasks it must stop.
    async fn heartbeat(
        &self,
        agent_id: &str,
        running: Option<Vec<RunningTask>>,
        lease_until: i64,
        unlisted_cap_ms: i64,
    ) -> StoreResult<Vec<Uuid>>;
    /// The agent takes no new tasks: until undrained (operator), or until its next process
    /// registers (the agent's own, which must name its current instance).
    async fn drain_agent(&self, agent_id: &str, by: DrainBy, now: i64) -> StoreResult<Agent>;
    async fn undrain_agent(&self, agent_id: &str, via: Via, now: i64) -> StoreResult<Agent>;
    /// An offline agent was heard from: online again, or draining if it is drained.
    async fn agent_back(&self, agent_id: &str, now: i64) -> StoreResult<AgentStatus>;
    /// Marks a silent agent offline and hands its tasks back to the queue.
    async fn agent_offline(&self, agent_id: &str, now: i64) -> StoreResult<Vec<Change>>;
    /// Forgets the agent and hands its tasks back to the queue.
    async fn remove_agent(&self, agent_id: &str, via: Via, now: i64) -> StoreResult<Vec<Change>>;

    // --- reads
    async fn task(&self, task_id: Uuid) -> StoreResult<Task>;
    async fn task_state(&self, task_id: Uuid) -> StoreResult<TaskState>;
    /// The task that keeps this one from its lock key: one of the key assigned or running, or
    /// an older one still queued.
    async fn lock_blocker(&self, task_id: Uuid) -> StoreResult<Option<(Uuid, TaskState)>>;
    async fn tasks(&self, filter: TaskFilter) -> StoreResult<TaskPage>;
    async fn logs(&self, task_id: Uuid, after: i64, limit: usize) -> StoreResult<Vec<LogLine>>;
    async fn agents(&self) -> StoreResult<Vec<Agent>>;
    async fn agent(&self, agent_id: &str) -> StoreResult<Agent>;
    async fn stats(&self, now: i64) -> StoreResult<Stats>;
    /// How many tasks reached each final state at or after `since` (throughput figures).
    async fn finished_since(&self, since: i64) -> StoreResult<Vec<(TaskState, u64)>>;
    async fn snapshot(&self) -> StoreResult<DispatchSnapshot>;
    /// Queued tasks with `seq > after`, in `seq` order, at most `limit`.
    async fn queued(&self, after: i64, limit: usize) -> StoreResult<Vec<QueuedTask>>;
    /// A cheap round trip proving the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Finishes queued writes and stops; later calls fail with `Unavailable`.
    async fn close(&self);

    // --- outbox and audit
    /// Notified after a commit that wrote outbox rows, so the delivery loop wakes at once.
    fn outbox_written(&self) -> Arc<Notify>;
    /// Writes outbox rows that no other change carries (logins, reloads), due at once.
    async fn enqueue(&self, items: Vec<OutboxItem>, now: i64) -> StoreResult<()>;
    /// Undelivered rows due at `now`, oldest first, at most `limit`.
    async fn due_outbox(&self, now: i64, limit: usize, lane: Lane) -> StoreResult<Vec<OutboxRow>>;
    async fn mark_delivered(&self, ids: Vec<Uuid>, now: i64) -> StoreResult<()>;
    /// Counts the attempt, keeps the error and schedules the next try.
    async fn mark_failed(&self, failures: Vec<OutboxFailure>) -> StoreResult<()>;
    /// Deletes one batch of delivered rows older than `delivered_before`; how many went (0:
    /// none are left).
    async fn prune_outbox(&self, delivered_before: i64) -> StoreResult<u64>;
    /// Appends each record, carried by the outbox row of that id, to the chain; a row whose
    /// entry exists already (a redelivery) appends nothing. Answers how many were appended.
    async fn append_audit(&self, records: Vec<(Uuid, AuditRecord)>) -> StoreResult<usize>;
    /// Entries with `seq > after`, oldest first, at most `limit`.
    async fn audit_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEntry>>;
    /// Entries with `seq < before` (all when `None`), newest first, at most `limit`.
    async fn audit_before(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEntry>>;
    /// What pruning left of the entries it deleted, if it deleted any.
    async fn audit_checkpoint(&self) -> StoreResult<Option<Checkpoint>>;
    /// Deletes, oldest first and in one batch, entries from before `before`, after checking
    /// that they still chain from the checkpoint; moves the signed checkpoint to the last one
    /// deleted. Answers how many went (0: nothing left to prune).
    async fn prune_audit(&self, before: i64, now: i64) -> StoreResult<u64>;

    // --- notifications
    /// Queues the notice's notifications and marks its outbox row delivered, in one
    /// transaction; a notice recorded before (its row delivered) changes nothing. Within a
    /// channel's quiet period for the notice's group, the notice folds into the digest due at
    /// the period's end instead of making a message of its own.
    async fn record_notice(
        &self,
        notice_id: Uuid,
        items: Vec<NewNotification>,
        now: i64,
    ) -> StoreResult<NoticeRecorded>;
    /// Per channel, the pending notification due first, if it is due at `now`.
    async fn due_notifications(&self, now: i64) -> StoreResult<Vec<DueNotification>>;
    /// Starts an attempt: counts it, and puts the next one at `retry_at` in case this one
    /// never ends (a crash mid-send). Answers the attempt's number; a conflict when the
    /// notification is no longer pending.
    async fn start_send(&self, id: Uuid, now: i64, retry_at: i64) -> StoreResult<u32>;
    async fn end_send(&self, ended: SendEnded) -> StoreResult<()>;
    /// At start: attempts a previous process left unfinished (it stopped or crashed mid-send)
    /// end as cut off, and their notifications come due at `now`. Answers how many.
    async fn reclaim_sends(&self, now: i64) -> StoreResult<u64>;
    async fn notifications(
        &self,
        filter: NotificationFilter,
    ) -> StoreResult<muster_api::NotificationPage>;
    async fn notification(&self, id: Uuid) -> StoreResult<muster_api::Notification>;
    /// Deletes one batch of notifications delivered or given up on before `finished_before`,
    /// with their attempts; how many went (0: none are left).
    async fn prune_notifications(&self, finished_before: i64) -> StoreResult<u64>;

    // GitOps.
    /// Records a deployment and submits its tasks in one transaction; a delivery the source
    /// recorded before answers the first deployment and submits nothing.
    async fn record_deployment(
        &self,
        deployment: NewDeployment,
        now: i64,
    ) -> StoreResult<DeploymentRecorded>;
    async fn deployments(
        &self,
        filter: DeploymentFilter,
    ) -> StoreResult<Vec<muster_api::Deployment>>;
    async fn deployment(&self, id: Uuid) -> StoreResult<muster_api::Deployment>;
    /// The deployment a source recorded for a delivery id.
    async fn deployment_by_delivery(
        &self,
        source: String,
        delivery: String,
    ) -> StoreResult<muster_api::Deployment>;
    /// Records a new deployment re-submitting the tasks of deployment `of` (pauses apply),
    /// with the audit entry of who asked.
    async fn redeploy(
        &self,
        of: Uuid,
        id: Uuid,
        statuses: bool,
        actor: Actor,
        now: i64,
    ) -> StoreResult<DeploymentRecorded>;
    /// Pauses a source or rule; false when it was paused already (nothing is audited then).
    async fn pause_gitops(&self, order: PauseOrder, now: i64) -> StoreResult<bool>;
    /// Resumes a source or rule and submits what its pause held, oldest push first.
    async fn resume_gitops(&self, order: PauseOrder, now: i64) -> StoreResult<Resumed>;
    async fn gitops_pauses(&self) -> StoreResult<Vec<muster_api::GitPause>>;
    /// Records what the forge was last told of a deployment, or why it could not be told.
    async fn set_forge_status(
        &self,
        id: Uuid,
        state: Option<String>,
        error: Option<String>,
    ) -> StoreResult<()>;
    // The LLM ledger.
    /// Records a call with the notices it raised (a budget exceeded, a spike), in one
    /// transaction.
    async fn record_llm_call(&self, call: LlmCall, notices: Vec<Notice>) -> StoreResult<()>;
    /// What `workflow` spent from `since` (ms, a UTC midnight) on.
    async fn llm_spent(&self, workflow: String, since: i64) -> StoreResult<Spent>;
    /// Per day (`YYYY-MM-DD`, UTC) from `since`, what `workflow` spent, oldest first; days
    /// without calls are left out.
    async fn llm_daily_spend(
        &self,
        workflow: String,
        since: i64,
    ) -> StoreResult<Vec<(String, Spent)>>;
    /// The ledger summed from `since` (a UTC midnight) on, as `group` asks.
    async fn llm_usage(
        &self,
        group: muster_api::UsageGroup,
        since: i64,
    ) -> StoreResult<Vec<muster_api::UsageRow>>;
    /// p95 latency per provider and model over the calls kept from `since` on.
    async fn llm_latency(&self, since: i64) -> StoreResult<Vec<muster_api::LatencyRow>>;
    /// Folds a batch of calls made before `before` into the daily sums; answers how many.
    async fn prune_llm_calls(&self, before: i64) -> StoreResult<u64>;
    /// Deletes deployments recorded before `before` none of whose tasks is still queued,
    /// assigned or running, and none held by a pause, in a batch; answers how many.
    async fn prune_deployments(&self, before: i64) -> StoreResult<u64>;

    // Self-repair.
    /// Records alerts in order: each opens, folds into or resolves its (source, key)'s open
    /// incident.
    async fn record_alerts(
        &self,
        alerts: Vec<AlertIn>,
        now: i64,
    ) -> StoreResult<Vec<AlertRecorded>>;
    /// Moves an incident if it stands in one of the step's `from` states (else `Conflict`).
    async fn step_incident(&self, step: IncidentStep, now: i64) -> StoreResult<Stepped>;
    /// Open incidents the repairer must look at: undecided ones whose wait is over, approvals
    /// past their expiry, and every one being verified.
    async fn due_incidents(&self, now: i64) -> StoreResult<Vec<muster_api::Incident>>;
    async fn incidents(
        &self,
        filter: IncidentFilter,
        now: i64,
    ) -> StoreResult<Vec<muster_api::Incident>>;
    /// One incident with its story.
    async fn incident(&self, id: Uuid, now: i64) -> StoreResult<muster_api::Incident>;
    /// Pauses self-repair for everything (`target` none) or one target; false when it was.
    async fn pause_repair(
        &self,
        target: Option<String>,
        actor: Actor,
        now: i64,
    ) -> StoreResult<bool>;
    async fn resume_repair(
        &self,
        target: Option<String>,
        actor: Actor,
        now: i64,
    ) -> StoreResult<bool>;
    async fn repair_pauses(&self) -> StoreResult<Vec<muster_api::RepairPause>>;
    /// Repairs started since `since`, per target.
    async fn repairs_since(&self, since: i64) -> StoreResult<Vec<(String, u32)>>;
    /// Forgets closed incidents that closed before `before`, with their stories.
    async fn prune_incidents(&self, before: i64) -> StoreResult<u64>;

    // Schedules.
    /// Every schedule the store knows.
    async fn schedule_rows(&self) -> StoreResult<Vec<ScheduleRow>>;
    /// Adds the config file's schedules it does not know yet, looked at from `now`: their
    /// first firing is the first instant after they appeared.
    async fn note_schedules(&self, names: Vec<String>, now: i64) -> StoreResult<()>;
    /// Stores a schedule created through the API (audited); a conflict if the name is taken.
    async fn create_schedule(
        &self,
        name: String,
        spec: serde_json::Value,
        actor: Actor,
        now: i64,
    ) -> StoreResult<()>;
    /// Deletes a schedule created through the API, with its firings (audited).
    async fn delete_schedule(&self, name: String, actor: Actor, now: i64) -> StoreResult<()>;
    /// Records firings and submits their tasks, one transaction; a firing whose key exists is
    /// left out (it fired before). Cron firings are recorded only if the schedule is not
    /// paused and was still looked at up to `looked_from` (no other look came first): none
    /// when not.
    async fn fire_schedule(&self, fire: ScheduleFire, now: i64) -> StoreResult<Option<Vec<Fired>>>;
    /// Pauses or resumes a schedule (audited); false when it already stood so. A resumed
    /// schedule is looked at from `now`: what came due while paused stays skipped.
    async fn pause_schedule(
        &self,
        name: String,
        paused: bool,
        actor: Actor,
        now: i64,
    ) -> StoreResult<bool>;
    /// The latest firings of `schedule` (or of every schedule, the latest of each), newest
    /// first.
    async fn schedule_firings(
        &self,
        schedule: Option<String>,
        limit: usize,
    ) -> StoreResult<Vec<(String, muster_api::ScheduleFiring)>>;
    /// Firings fired before `before`, except each schedule's latest.
    async fn prune_schedule_firings(&self, before: i64) -> StoreResult<u64>;

    // Canaries.
    /// Records a run as in flight (and its audit record); a `Conflict` when the canary has
    /// one in flight already.
    async fn start_canary_run(&self, run: NewCanaryRun) -> StoreResult<RunningCanary>;
    /// The run's hook came: records it and submits the run's task, in one transaction. A
    /// `Conflict` unless the run is in flight, is `canary`'s, carries `nonce` and has not
    /// taken its hook before (a replay).
    async fn canary_hooked(
        &self,
        id: Uuid,
        canary: String,
        nonce: String,
        task: NewTask,
        now: i64,
    ) -> StoreResult<Submitted>;
    /// Queues a passing answer's notification for the canary's channel and names it on the
    /// run, in one transaction (`Conflict` unless the run is in flight).
    async fn queue_canary_notification(
        &self,
        id: Uuid,
        notification: NewNotification,
        now: i64,
    ) -> StoreResult<()>;
    /// Judges a run in flight (`Conflict` otherwise) and, in the same transaction, writes the
    /// notice the verdict sends after the canary's previous verdict
    /// ([`crate::canaries::judge::notice_for`]).
    async fn finish_canary_run(
        &self,
        finish: CanaryFinish,
        now: i64,
    ) -> StoreResult<CanaryFinished>;
    /// Every run in flight becomes `interrupted` with `reason`, and the tasks of those whose
    /// task has not ended are cancelled, in one transaction.
    async fn interrupt_canary_runs(
        &self,
        reason: String,
        now: i64,
    ) -> StoreResult<CanariesInterrupted>;
    async fn running_canary_runs(&self) -> StoreResult<Vec<RunningCanary>>;
    async fn canary_run(&self, id: Uuid) -> StoreResult<RunningCanary>;
    /// The canary's newest `limit` runs and its last judged one.
    async fn canary_history(&self, canary: String, limit: usize) -> StoreResult<CanaryHistory>;
    /// Deletes a batch of runs judged before `before`, keeping each canary's last judged run
    /// (what the overview shows, and what the next verdict's notice is decided against).
    async fn prune_canary_runs(&self, before: i64) -> StoreResult<u64>;
}
