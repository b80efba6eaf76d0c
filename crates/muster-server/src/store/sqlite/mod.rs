//! The SQLite backend: WAL with `synchronous=FULL`, one writer thread that group-commits every
//! operation queued while the previous commit was syncing, and a small pool of read connections.
//! This file holds the writer, the readers, migrations and backup; [`tasks`], [`agents`],
//! [`outbox`], [`audit`] and [`notifications`] hold the operations (each a plain function of a connection, which
//! the `Store` impl below runs on the writer or a reader), and [`rows`] maps rows to types by
//! column name. The
//! lifecycle rules they apply live in [`crate::lifecycle`].
//!
//! Ownership: [`SqliteStore`] owns the writer thread through its channel; [`Store::close`] sends
//! a stop message, the writer finishes what was queued before it, checkpoints and exits. Each
//! operation runs inside its own savepoint, so one failing operation never undoes the others in
//! its batch, and its caller is answered only after the batch's COMMIT returned.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use muster_api::{
    Agent, AgentStatus, AppendLogs, Deployment, LogLine, Notification, NotificationPage,
    RegisterAgent, RunningTask, Task, TaskState,
};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::{
    AgentRegistered, AssignOrder, Assigned, AttemptReport, Change, Changed, ClaimedBatch,
    DeploymentFilter, DeploymentRecorded, DispatchSnapshot, DrainBy, DueNotification, ExpiryRules,
    NewDeployment, NewNotification, NewTask, NoticeRecorded, NotificationFilter, OutboxFailure,
    OutboxItem, OutboxRow, Pruned, QueuedTask, RetryPolicy, SendEnded, Stats, Store, StoreResult,
    Submitted, TaskFilter, TaskPage,
};
use crate::audit::{Actor, AuditRecord, Checkpoint, StoredEntry, Via};
use crate::error::StoreError;

mod agents;
mod audit;
mod canaries;
mod deployments;
mod incidents;
mod llm;
mod lock;
mod notifications;
mod outbox;
mod rows;
mod schedules;
mod tasks;

pub use audit::{audit_chain, key_path as audit_key_path};

/// Embedded migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_agent_identity.sql"),
    include_str!("../migrations/0003_outbox_audit.sql"),
    include_str!("../migrations/0004_lost_attempts.sql"),
    include_str!("../migrations/0005_log_bytes.sql"),
    include_str!("../migrations/0006_agent_kinds.sql"),
    include_str!("../migrations/0007_lock_index.sql"),
    include_str!("../migrations/0008_notifications.sql"),
    include_str!("../migrations/0009_agent_index_active.sql"),
    include_str!("../migrations/0010_deployments.sql"),
    include_str!("../migrations/0011_deployment_steps.sql"),
    include_str!("../migrations/0012_llm_ledger.sql"),
    include_str!("../migrations/0013_incidents.sql"),
    include_str!("../migrations/0014_schedules.sql"),
    include_str!("../migrations/0015_canaries.sql"),
];

/// Upper bound of operations in one transaction, so one commit never holds callers too long.
const MAX_BATCH: usize = 1024;

/// A queued write: run inside the batch's transaction, then told how the commit went.
trait WriteJob: Send {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Op<R, F> {
    op: Option<F>,
    result: Option<StoreResult<R>>,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<R, F> WriteJob for Op<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> StoreResult<R> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(op) = self.op.take() {
            self.result = Some(in_savepoint(conn, op));
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match committed {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Unavailable("operation did not run".into()))),
            Err(err) => Err(err),
        };
        let _ = self.reply.send(answer);
    }
}

enum Msg {
    Job(Box<dyn WriteJob>),
    Stop(oneshot::Sender<()>),
}

fn in_savepoint<R>(
    conn: &Connection,
    op: impl FnOnce(&Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    match op(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(value)
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            Err(err)
        }
    }
}

/// Runs `item` in a savepoint nested in the operation's own: a batch operation (many reports,
/// many submissions) isolates each of its items this way, so one refused item is rolled back
/// alone while the operation, and the items before and after it, stand.
fn isolated<R>(
    conn: &Connection,
    item: impl FnOnce(&Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    conn.prepare_cached("SAVEPOINT item")?.execute([])?;
    match item(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE item")?.execute([])?;
            Ok(value)
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK TO item; RELEASE item");
            Err(err)
        }
    }
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    outbox_written: Arc<Notify>,
    lock: lock::DbLock,
) {
    let mut stop = None;
    while stop.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs: Vec<Box<dyn WriteJob>> = Vec::new();
        match first {
            Msg::Job(job) => jobs.push(job),
            Msg::Stop(done) => stop = Some(done),
        }
        // Group commit: everything that queued up while the last commit synced goes together.
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => jobs.push(job),
                Ok(Msg::Stop(done)) => {
                    stop = Some(done);
                    rx.close();
                }
                Err(_) => break,
            }
        }
        run_batch(&conn, jobs, &outbox_written);
    }
    // Operations queued before the stop still run; nothing acknowledged is dropped.
    rx.close();
    let mut rest: Vec<Box<dyn WriteJob>> = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Job(job) = msg {
            rest.push(job);
        }
    }
    run_batch(&conn, rest, &outbox_written);
    if let Err(err) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %err, "checkpoint at shutdown failed");
    }
    drop(conn);
    // Released before `close` returns, so a new store may open the file at once.
    drop(lock);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

fn run_batch(conn: &Connection, mut jobs: Vec<Box<dyn WriteJob>>, outbox_written: &Notify) {
    if jobs.is_empty() {
        return;
    }
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = StoreError::from(err);
        for job in jobs {
            job.finish(Err(err.clone()));
        }
        return;
    }
    for job in jobs.iter_mut() {
        job.run(conn);
    }
    let committed = conn.execute_batch("COMMIT").map_err(StoreError::from);
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    // Taken whatever the outcome, so a failed batch's flag does not linger into the next.
    if outbox::take_written() && committed.is_ok() {
        outbox_written.notify_one();
    }
    for job in jobs {
        job.finish(committed.clone());
    }
}

/// Idle read connections, opened on demand.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> StoreResult<Connection> {
        if let Some(conn) = self.idle.lock().expect("read pool poisoned").pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Readers serve lists and logs; the OS page cache backs them, so a small private cache
        // keeps memory flat however many readers exist.
        conn.execute_batch("PRAGMA cache_size = -512")?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("read pool poisoned");
        if idle.len() < 4 {
            idle.push(conn);
        }
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: mpsc::Sender<Msg>,
    readers: Arc<ReadPool>,
    retry: RetryPolicy,
    outbox_written: Arc<Notify>,
    /// The file beside the database that holds the key signing audit checkpoints.
    audit_key: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations and starts the
    /// writer thread.
    pub fn open(path: &Path, retry: RetryPolicy) -> StoreResult<Self> {
        let lock = lock::DbLock::acquire(path)?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement the writer runs stays prepared: rusqlite's default cache of 16 is
        // smaller than the set one task's lifecycle uses, and a statement evicted is parsed
        // and planned again at its next use.
        conn.set_prepared_statement_cache_capacity(256);
        // WAL lets readers run beside the writer; FULL syncs the WAL at every commit, so an
        // acknowledged task survives power loss, not only a crash.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{} cannot use WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        // Statement journals in memory: every operation runs in its own savepoint, and
        // SQLite's default spills each savepoint's journal to a temporary file, which made
        // two thirds of the writer's write() calls and a file open and unlink per batch
        // (docs/PERFORMANCE.md). They hold one batch's first-touched pages at most.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;",
        )?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel(8192);
        let outbox_written = Arc::new(Notify::new());
        let signal = outbox_written.clone();
        std::thread::Builder::new()
            .name("muster-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, signal, lock))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            retry,
            outbox_written,
            audit_key: audit::key_path(path),
        })
    }

    async fn write<R, F>(&self, op: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Op {
            op: Some(op),
            result: None,
            reply,
        });
        self.writer
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    async fn read<R, F>(&self, op: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = op(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

/// Copies the live database at `from` into `to` through SQLite's online backup, which is safe
/// while a server writes to it.
pub fn backup(from: &Path, to: &Path) -> StoreResult<()> {
    if !from.exists() {
        return Err(StoreError::NotFound(format!("database {}", from.display())));
    }
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut dst = Connection::open(to)?;
    let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
    backup.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
    Ok(())
}

fn migrate(conn: &Connection) -> StoreResult<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {current}, newer than this build knows ({}); \
             upgrade muster",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))
        .map_err(|e| StoreError::Unavailable(format!("migration {version} failed: {e}")))?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, task: NewTask, now: i64) -> StoreResult<Submitted> {
        self.write(move |conn| tasks::submit(conn, task, now)).await
    }

    async fn assign(
        &self,
        orders: Vec<AssignOrder>,
        now: i64,
    ) -> StoreResult<Vec<Option<Assigned>>> {
        self.write(move |conn| tasks::assign(conn, orders, now))
            .await
    }

    async fn unclaim(&self, tasks: Vec<(Uuid, u32)>, now: i64) -> StoreResult<Vec<Change>> {
        self.write(move |conn| tasks::unclaim(conn, &tasks, now))
            .await
    }

    async fn submit_many(
        &self,
        tasks: Vec<NewTask>,
        now: i64,
    ) -> StoreResult<Vec<StoreResult<Submitted>>> {
        self.write(move |conn| tasks::submit_many(conn, tasks, now))
            .await
    }

    async fn claim_many(
        &self,
        agent_id: &str,
        max: usize,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<ClaimedBatch> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| tasks::claim_many(conn, &agent_id, max, now, lease_until))
            .await
    }

    async fn append_logs(
        &self,
        task_id: Uuid,
        logs: AppendLogs,
        max_bytes: u64,
        now: i64,
    ) -> StoreResult<usize> {
        self.write(move |conn| tasks::append_logs(conn, task_id, logs, max_bytes, now))
            .await
    }

    async fn complete(
        &self,
        task_id: Uuid,
        attempt: u32,
        result: Value,
        usage: Option<Value>,
        now: i64,
    ) -> StoreResult<Changed> {
        self.write(move |conn| tasks::complete(conn, task_id, attempt, result, usage, now))
            .await
    }

    async fn fail(
        &self,
        task_id: Uuid,
        attempt: u32,
        error: String,
        retryable: bool,
        now: i64,
    ) -> StoreResult<Changed> {
        let policy = self.retry.clone();
        self.write(move |conn| tasks::fail(conn, task_id, attempt, error, retryable, now, &policy))
            .await
    }

    async fn report_many(
        &self,
        reports: Vec<AttemptReport>,
        now: i64,
    ) -> StoreResult<Vec<StoreResult<Change>>> {
        let policy = self.retry.clone();
        self.write(move |conn| tasks::report_many(conn, reports, now, &policy))
            .await
    }

    async fn cancel(&self, task_id: Uuid, actor: Actor, now: i64) -> StoreResult<Changed> {
        self.write(move |conn| tasks::cancel(conn, task_id, &actor, now))
            .await
    }

    async fn retry(&self, task_id: Uuid, actor: Actor, now: i64) -> StoreResult<Changed> {
        self.write(move |conn| tasks::retry(conn, task_id, &actor, now))
            .await
    }

    async fn grant_leases(&self, until: i64) -> StoreResult<u64> {
        self.write(move |conn| tasks::grant_leases(conn, until))
            .await
    }

    async fn expire(&self, now: i64, rules: ExpiryRules) -> StoreResult<Vec<Change>> {
        let policy = self.retry.clone();
        self.write(move |conn| tasks::expire(conn, now, rules, &policy))
            .await
    }

    async fn prune(&self, finished_before: i64) -> StoreResult<Pruned> {
        self.write(move |conn| tasks::prune(conn, finished_before))
            .await
    }

    async fn register_agent(&self, reg: RegisterAgent, now: i64) -> StoreResult<AgentRegistered> {
        let policy = self.retry.clone();
        self.write(move |conn| agents::register_agent(conn, reg, now, &policy))
            .await
    }

    async fn heartbeat(
        &self,
        agent_id: &str,
        running: Option<Vec<RunningTask>>,
        lease_until: i64,
        unlisted_cap_ms: i64,
    ) -> StoreResult<Vec<Uuid>> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| {
            agents::heartbeat(conn, &agent_id, running, lease_until, unlisted_cap_ms)
        })
        .await
    }

    async fn drain_agent(&self, agent_id: &str, by: DrainBy, now: i64) -> StoreResult<Agent> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| agents::drain_agent(conn, &agent_id, by, now))
            .await
    }

    async fn undrain_agent(&self, agent_id: &str, via: Via, now: i64) -> StoreResult<Agent> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| agents::undrain_agent(conn, &agent_id, via, now))
            .await
    }

    async fn agent_back(&self, agent_id: &str, now: i64) -> StoreResult<AgentStatus> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| agents::agent_back(conn, &agent_id, now))
            .await
    }

    async fn agent_offline(&self, agent_id: &str, now: i64) -> StoreResult<Vec<Change>> {
        let agent_id = agent_id.to_owned();
        let policy = self.retry.clone();
        self.write(move |conn| agents::agent_offline(conn, &agent_id, now, &policy))
            .await
    }

    async fn remove_agent(&self, agent_id: &str, via: Via, now: i64) -> StoreResult<Vec<Change>> {
        let agent_id = agent_id.to_owned();
        let policy = self.retry.clone();
        self.write(move |conn| agents::remove_agent(conn, &agent_id, via, now, &policy))
            .await
    }

    async fn task(&self, task_id: Uuid) -> StoreResult<Task> {
        self.read(move |conn| tasks::task(conn, task_id)).await
    }

    async fn lock_blocker(&self, task_id: Uuid) -> StoreResult<Option<(Uuid, TaskState)>> {
        self.read(move |conn| tasks::lock_blocker(conn, task_id))
            .await
    }

    async fn task_state(&self, task_id: Uuid) -> StoreResult<TaskState> {
        self.read(move |conn| tasks::task_state(conn, task_id))
            .await
    }

    async fn tasks(&self, filter: TaskFilter) -> StoreResult<TaskPage> {
        self.read(move |conn| tasks::tasks(conn, filter)).await
    }

    async fn logs(&self, task_id: Uuid, after: i64, limit: usize) -> StoreResult<Vec<LogLine>> {
        self.read(move |conn| tasks::logs(conn, task_id, after, limit))
            .await
    }

    async fn agents(&self) -> StoreResult<Vec<Agent>> {
        self.read(agents::agents).await
    }

    async fn agent(&self, agent_id: &str) -> StoreResult<Agent> {
        let agent_id = agent_id.to_owned();
        self.read(move |conn| agents::agent(conn, &agent_id)).await
    }

    async fn stats(&self, now: i64) -> StoreResult<Stats> {
        self.read(move |conn| tasks::stats(conn, now)).await
    }

    async fn finished_since(&self, since: i64) -> StoreResult<Vec<(TaskState, u64)>> {
        self.read(move |conn| tasks::finished_since(conn, since))
            .await
    }

    async fn snapshot(&self) -> StoreResult<DispatchSnapshot> {
        self.read(agents::snapshot).await
    }

    async fn queued(&self, after: i64, limit: usize) -> StoreResult<Vec<QueuedTask>> {
        self.read(move |conn| tasks::queued(conn, after, limit))
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.writer.send(Msg::Stop(done)).await.is_ok() {
            let _ = finished.await;
        }
    }

    fn outbox_written(&self) -> Arc<Notify> {
        self.outbox_written.clone()
    }

    async fn enqueue(&self, items: Vec<OutboxItem>, now: i64) -> StoreResult<()> {
        self.write(move |conn| outbox::enqueue(conn, items, now))
            .await
    }

    async fn due_outbox(
        &self,
        now: i64,
        limit: usize,
        lane: super::Lane,
    ) -> StoreResult<Vec<OutboxRow>> {
        self.read(move |conn| outbox::due(conn, now, limit, lane))
            .await
    }

    async fn mark_delivered(&self, ids: Vec<Uuid>, now: i64) -> StoreResult<()> {
        self.write(move |conn| outbox::mark_delivered(conn, ids, now))
            .await
    }

    async fn mark_failed(&self, failures: Vec<OutboxFailure>) -> StoreResult<()> {
        self.write(move |conn| outbox::mark_failed(conn, failures))
            .await
    }

    async fn prune_outbox(&self, delivered_before: i64) -> StoreResult<u64> {
        self.write(move |conn| outbox::prune(conn, delivered_before))
            .await
    }

    async fn append_audit(&self, records: Vec<(Uuid, AuditRecord)>) -> StoreResult<usize> {
        self.write(move |conn| audit::append(conn, records)).await
    }

    async fn audit_after(&self, after: i64, limit: usize) -> StoreResult<Vec<StoredEntry>> {
        self.read(move |conn| audit::after(conn, after, limit))
            .await
    }

    async fn audit_before(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEntry>> {
        self.read(move |conn| audit::before(conn, before, limit))
            .await
    }

    async fn audit_checkpoint(&self) -> StoreResult<Option<Checkpoint>> {
        self.read(audit::read_checkpoint).await
    }

    async fn prune_audit(&self, before: i64, now: i64) -> StoreResult<u64> {
        let key_path = self.audit_key.clone();
        self.write(move |conn| audit::prune(conn, before, now, &key_path))
            .await
    }

    async fn record_notice(
        &self,
        notice_id: Uuid,
        items: Vec<NewNotification>,
        now: i64,
    ) -> StoreResult<NoticeRecorded> {
        self.write(move |conn| notifications::record_notice(conn, notice_id, items, now))
            .await
    }

    async fn due_notifications(&self, now: i64) -> StoreResult<Vec<DueNotification>> {
        self.read(move |conn| notifications::due(conn, now)).await
    }

    async fn start_send(&self, id: Uuid, now: i64, retry_at: i64) -> StoreResult<u32> {
        self.write(move |conn| notifications::start_send(conn, id, now, retry_at))
            .await
    }

    async fn end_send(&self, ended: SendEnded) -> StoreResult<()> {
        self.write(move |conn| notifications::end_send(conn, ended))
            .await
    }

    async fn reclaim_sends(&self, now: i64) -> StoreResult<u64> {
        self.write(move |conn| notifications::reclaim_sends(conn, now))
            .await
    }

    async fn notifications(&self, filter: NotificationFilter) -> StoreResult<NotificationPage> {
        self.read(move |conn| notifications::list(conn, filter))
            .await
    }

    async fn notification(&self, id: Uuid) -> StoreResult<Notification> {
        self.read(move |conn| notifications::one(conn, id)).await
    }

    async fn prune_notifications(&self, finished_before: i64) -> StoreResult<u64> {
        self.write(move |conn| notifications::prune(conn, finished_before))
            .await
    }

    async fn record_deployment(
        &self,
        deployment: NewDeployment,
        now: i64,
    ) -> StoreResult<DeploymentRecorded> {
        self.write(move |conn| deployments::record(conn, deployment, now))
            .await
    }

    async fn deployments(&self, filter: DeploymentFilter) -> StoreResult<Vec<Deployment>> {
        self.read(move |conn| deployments::list(conn, &filter))
            .await
    }

    async fn record_alerts(
        &self,
        alerts: Vec<super::AlertIn>,
        now: i64,
    ) -> StoreResult<Vec<super::AlertRecorded>> {
        self.write(move |conn| incidents::record_alerts(conn, alerts, now))
            .await
    }

    async fn step_incident(
        &self,
        step: super::IncidentStep,
        now: i64,
    ) -> StoreResult<super::Stepped> {
        self.write(move |conn| incidents::step(conn, step, now))
            .await
    }

    async fn due_incidents(&self, now: i64) -> StoreResult<Vec<muster_api::Incident>> {
        self.read(move |conn| incidents::due(conn, now)).await
    }

    async fn incidents(
        &self,
        filter: super::IncidentFilter,
        now: i64,
    ) -> StoreResult<Vec<muster_api::Incident>> {
        self.read(move |conn| incidents::list(conn, &filter, now))
            .await
    }

    async fn incident(&self, id: Uuid, now: i64) -> StoreResult<muster_api::Incident> {
        self.read(move |conn| incidents::incident(conn, id, now))
            .await
    }

    async fn pause_repair(
        &self,
        target: Option<String>,
        actor: Actor,
        now: i64,
    ) -> StoreResult<bool> {
        self.write(move |conn| incidents::pause(conn, target.as_deref(), &actor, now))
            .await
    }

    async fn resume_repair(
        &self,
        target: Option<String>,
        actor: Actor,
        now: i64,
    ) -> StoreResult<bool> {
        self.write(move |conn| incidents::resume(conn, target.as_deref(), &actor, now))
            .await
    }

    async fn repair_pauses(&self) -> StoreResult<Vec<muster_api::RepairPause>> {
        self.read(incidents::pauses).await
    }

    async fn repairs_since(&self, since: i64) -> StoreResult<Vec<(String, u32)>> {
        self.read(move |conn| incidents::repairs_since(conn, since))
            .await
    }

    async fn prune_incidents(&self, before: i64) -> StoreResult<u64> {
        self.write(move |conn| incidents::prune(conn, before)).await
    }

    async fn schedule_rows(&self) -> StoreResult<Vec<super::ScheduleRow>> {
        self.read(schedules::rows).await
    }

    async fn note_schedules(&self, names: Vec<String>, now: i64) -> StoreResult<()> {
        self.write(move |conn| schedules::note(conn, &names, now))
            .await
    }

    async fn create_schedule(
        &self,
        name: String,
        spec: Value,
        actor: Actor,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |conn| schedules::create(conn, &name, &spec, &actor, now))
            .await
    }

    async fn delete_schedule(&self, name: String, actor: Actor, now: i64) -> StoreResult<()> {
        self.write(move |conn| schedules::delete(conn, &name, &actor, now))
            .await
    }

    async fn fire_schedule(
        &self,
        fire: super::ScheduleFire,
        now: i64,
    ) -> StoreResult<Option<Vec<super::Fired>>> {
        self.write(move |conn| schedules::fire(conn, fire, now))
            .await
    }

    async fn pause_schedule(
        &self,
        name: String,
        paused: bool,
        actor: Actor,
        now: i64,
    ) -> StoreResult<bool> {
        self.write(move |conn| schedules::pause(conn, &name, paused, &actor, now))
            .await
    }

    async fn schedule_firings(
        &self,
        schedule: Option<String>,
        limit: usize,
    ) -> StoreResult<Vec<(String, muster_api::ScheduleFiring)>> {
        self.read(move |conn| schedules::firings(conn, schedule.as_deref(), limit))
            .await
    }

    async fn prune_schedule_firings(&self, before: i64) -> StoreResult<u64> {
        self.write(move |conn| schedules::prune(conn, before)).await
    }

    async fn start_canary_run(
        &self,
        run: super::NewCanaryRun,
    ) -> StoreResult<super::RunningCanary> {
        self.write(move |conn| canaries::start(conn, run)).await
    }

    async fn canary_hooked(
        &self,
        id: Uuid,
        canary: String,
        nonce: String,
        task: NewTask,
        now: i64,
    ) -> StoreResult<Submitted> {
        self.write(move |conn| canaries::hooked(conn, id, &canary, &nonce, task, now))
            .await
    }

    async fn queue_canary_notification(
        &self,
        id: Uuid,
        notification: NewNotification,
        now: i64,
    ) -> StoreResult<()> {
        self.write(move |conn| canaries::queue_notification(conn, id, notification, now))
            .await
    }

    async fn finish_canary_run(
        &self,
        finish: super::CanaryFinish,
        now: i64,
    ) -> StoreResult<super::CanaryFinished> {
        self.write(move |conn| canaries::finish(conn, finish, now))
            .await
    }

    async fn interrupt_canary_runs(
        &self,
        reason: String,
        now: i64,
    ) -> StoreResult<super::CanariesInterrupted> {
        self.write(move |conn| canaries::interrupt(conn, &reason, now))
            .await
    }

    async fn running_canary_runs(&self) -> StoreResult<Vec<super::RunningCanary>> {
        self.read(canaries::running).await
    }

    async fn canary_run(&self, id: Uuid) -> StoreResult<super::RunningCanary> {
        self.read(move |conn| canaries::by_id(conn, id)).await
    }

    async fn canary_history(
        &self,
        canary: String,
        limit: usize,
    ) -> StoreResult<super::CanaryHistory> {
        self.read(move |conn| canaries::history(conn, &canary, limit))
            .await
    }

    async fn prune_canary_runs(&self, before: i64) -> StoreResult<u64> {
        self.write(move |conn| canaries::prune(conn, before)).await
    }

    async fn prune_deployments(&self, before: i64) -> StoreResult<u64> {
        self.write(move |conn| deployments::prune(conn, before))
            .await
    }

    async fn deployment(&self, id: Uuid) -> StoreResult<Deployment> {
        self.read(move |conn| deployments::deployment(conn, id))
            .await
    }

    async fn deployment_by_delivery(
        &self,
        source: String,
        delivery: String,
    ) -> StoreResult<Deployment> {
        self.read(move |conn| deployments::by_delivery(conn, &source, &delivery))
            .await
    }

    async fn redeploy(
        &self,
        of: Uuid,
        id: Uuid,
        statuses: bool,
        actor: Actor,
        now: i64,
    ) -> StoreResult<DeploymentRecorded> {
        self.write(move |conn| deployments::redeploy(conn, of, id, statuses, &actor, now))
            .await
    }

    async fn pause_gitops(&self, order: super::PauseOrder, now: i64) -> StoreResult<bool> {
        self.write(move |conn| deployments::pause(conn, &order, now))
            .await
    }

    async fn resume_gitops(
        &self,
        order: super::PauseOrder,
        now: i64,
    ) -> StoreResult<super::Resumed> {
        self.write(move |conn| deployments::resume(conn, &order, now))
            .await
    }

    async fn gitops_pauses(&self) -> StoreResult<Vec<muster_api::GitPause>> {
        self.read(deployments::pauses).await
    }

    async fn record_llm_call(
        &self,
        call: super::LlmCall,
        notices: Vec<crate::notice::Notice>,
    ) -> StoreResult<()> {
        self.write(move |conn| llm::record(conn, &call, &notices))
            .await
    }

    async fn llm_spent(&self, workflow: String, since: i64) -> StoreResult<super::Spent> {
        self.read(move |conn| llm::spent(conn, &workflow, since))
            .await
    }

    async fn llm_daily_spend(
        &self,
        workflow: String,
        since: i64,
    ) -> StoreResult<Vec<(String, super::Spent)>> {
        self.read(move |conn| llm::daily_spend(conn, &workflow, since))
            .await
    }

    async fn llm_usage(
        &self,
        group: muster_api::UsageGroup,
        since: i64,
    ) -> StoreResult<Vec<muster_api::UsageRow>> {
        self.read(move |conn| llm::usage(conn, group, since)).await
    }

    async fn llm_latency(&self, since: i64) -> StoreResult<Vec<muster_api::LatencyRow>> {
        self.read(move |conn| llm::latency(conn, since)).await
    }

    async fn prune_llm_calls(&self, before: i64) -> StoreResult<u64> {
        self.write(move |conn| llm::prune(conn, before)).await
    }

    async fn set_forge_status(
        &self,
        id: Uuid,
        state: Option<String>,
        error: Option<String>,
    ) -> StoreResult<()> {
        self.write(move |conn| deployments::set_forge_status(conn, id, state, error))
            .await
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Unavailable(err.to_string())
    }
}
