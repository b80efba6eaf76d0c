//! The SQLite backend: WAL with `synchronous=FULL`, one writer thread that group-commits every
//! operation queued while the previous commit was syncing, and a small pool of read connections.
//!
//! Ownership: [`SqliteStore`] owns the writer thread through its channel; [`Store::close`] sends
//! a stop message, the writer finishes what was queued before it, checkpoints and exits. Each
//! operation runs inside its own savepoint, so one failing operation never undoes the others in
//! its batch, and its caller is answered only after the batch's COMMIT returned.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use muster_api::{
    Agent, AgentStatus, AppendLogs, Assignment, Attempt, AttemptOutcome, LogLine, LogStream,
    RegisterAgent, RunningTask, Task, TaskState,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    AssignOrder, Change, Changed, Claimed, DispatchSnapshot, ExpiryRules, NewTask, Pruned,
    QueuedTask, Released, RetryPolicy, Stats, Store, StoreResult, Submitted, TaskFilter, TaskPage,
};
use crate::clock::to_utc;
use crate::error::StoreError;

/// Embedded migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_init.sql")];

/// Upper bound of operations in one transaction, so one commit never holds callers too long.
const MAX_BATCH: usize = 1024;

/// Finished tasks deleted per retention transaction.
const PRUNE_BATCH: usize = 500;

const TASK_COLS: &str = "id, kind, state, payload, capabilities, priority, max_retries, \
    timeout_s, lock_key, idempotency_key, run_after, labels, attempt, agent_id, \
    cancel_requested, created_at, updated_at, finished_at, result, usage, error, assignment";

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

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Msg>) {
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
        run_batch(&conn, jobs);
    }
    // Operations queued before the stop still run; nothing acknowledged is dropped.
    rx.close();
    let mut rest: Vec<Box<dyn WriteJob>> = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Job(job) = msg {
            rest.push(job);
        }
    }
    run_batch(&conn, rest);
    if let Err(err) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %err, "checkpoint at shutdown failed");
    }
    drop(conn);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

fn run_batch(conn: &Connection, mut jobs: Vec<Box<dyn WriteJob>>) {
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
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations and starts the
    /// writer thread.
    pub fn open(path: &Path, retry: RetryPolicy) -> StoreResult<Self> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL lets readers run beside the writer; FULL syncs the WAL at every commit, so an
        // acknowledged task survives power loss, not only a crash.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{} cannot use WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel(8192);
        std::thread::Builder::new()
            .name("muster-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            retry,
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

// ---------------------------------------------------------------------------------------------
// Row mapping

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn opt_json_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn enum_col<T>(row: &Row<'_>, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("unknown value {text:?}").into(),
        )
    })
}

fn uuid_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(idx)?;
    Uuid::parse_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Maps a row selected with [`TASK_COLS`] (starting at column 0).
fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: uuid_col(row, 0)?,
        kind: row.get(1)?,
        state: enum_col(row, 2, TaskState::parse)?,
        payload: json_col(row, 3)?,
        capabilities: json_col(row, 4)?,
        priority: row.get(5)?,
        max_retries: row.get(6)?,
        timeout_s: row.get(7)?,
        lock_key: row.get(8)?,
        idempotency_key: row.get(9)?,
        run_after: row.get::<_, Option<i64>>(10)?.map(to_utc),
        labels: json_col(row, 11)?,
        attempt: row.get(12)?,
        agent_id: row.get(13)?,
        cancel_requested: row.get::<_, i64>(14)? != 0,
        created_at: to_utc(row.get(15)?),
        updated_at: to_utc(row.get(16)?),
        finished_at: row.get::<_, Option<i64>>(17)?.map(to_utc),
        result: opt_json_col(row, 18)?,
        usage: opt_json_col(row, 19)?,
        error: row.get(20)?,
        assignment: opt_json_col(row, 21)?,
        attempts: Vec::new(),
    })
}

fn task_by_id(conn: &Connection, id: Uuid) -> StoreResult<Task> {
    conn.prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1"))?
        .query_row([id.to_string()], task_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
}

/// The columns a state change needs to decide and to report.
#[derive(Debug)]
struct Current {
    seq: i64,
    id: Uuid,
    state: TaskState,
    attempt: u32,
    retry_floor: u32,
    max_retries: u32,
    agent_id: Option<String>,
    lock_key: Option<String>,
    cancel_requested: bool,
    priority: i32,
    capabilities: Vec<String>,
    run_after: Option<i64>,
}

const CURRENT_COLS: &str = "seq, id, state, attempt, retry_floor, max_retries, agent_id, \
    lock_key, cancel_requested, priority, capabilities, run_after";

fn current_from_row(row: &Row<'_>) -> rusqlite::Result<Current> {
    Ok(Current {
        seq: row.get(0)?,
        id: uuid_col(row, 1)?,
        state: enum_col(row, 2, TaskState::parse)?,
        attempt: row.get(3)?,
        retry_floor: row.get(4)?,
        max_retries: row.get(5)?,
        agent_id: row.get(6)?,
        lock_key: row.get(7)?,
        cancel_requested: row.get::<_, i64>(8)? != 0,
        priority: row.get(9)?,
        capabilities: json_col(row, 10)?,
        run_after: row.get(11)?,
    })
}

fn current_by_id(conn: &Connection, id: Uuid) -> StoreResult<Current> {
    conn.prepare_cached(&format!("SELECT {CURRENT_COLS} FROM tasks WHERE id = ?1"))?
        .query_row([id.to_string()], current_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
}

fn currents_where(
    conn: &Connection,
    condition: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<Current>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CURRENT_COLS} FROM tasks WHERE {condition}"
    ))?;
    let rows = stmt.query_map(args, current_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Current {
    fn queued(&self, run_after: Option<i64>) -> QueuedTask {
        QueuedTask {
            seq: self.seq,
            priority: self.priority,
            capabilities: self.capabilities.clone(),
            lock_key: self.lock_key.clone(),
            run_after,
        }
    }

    fn released(&self) -> Option<Released> {
        self.agent_id.clone().map(|agent_id| Released {
            agent_id,
            lock_key: self.lock_key.clone(),
        })
    }

    /// Refuses a report for an attempt that is not the running one.
    fn check_current(&self, attempt: u32) -> StoreResult<()> {
        if self.state == TaskState::Running && self.attempt == attempt {
            return Ok(());
        }
        Err(StoreError::Conflict(format!(
            "attempt {attempt} of task {} is not current (the task is {} at attempt {})",
            self.id, self.state, self.attempt
        )))
    }

    fn change(&self, state: TaskState) -> Change {
        Change {
            task_id: self.id,
            state,
            attempt: self.attempt,
            agent_id: self.agent_id.clone(),
            released: None,
            requeued: None,
            wake_agent: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write operations (run on the writer thread)

fn insert_task(conn: &Connection, t: &NewTask, now: i64) -> StoreResult<Submitted> {
    if let Some(key) = &t.idempotency_key {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE idempotency_key = ?1"
            ))?
            .query_row([key], task_from_row)
            .optional()?;
        if let Some(task) = existing {
            return Ok(Submitted {
                task,
                created: false,
                change: None,
            });
        }
    }
    conn.prepare_cached(
        "INSERT INTO tasks (id, kind, state, payload, capabilities, priority, max_retries, \
         timeout_s, lock_key, idempotency_key, run_after, labels, created_at, updated_at) \
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
    )?
    .execute(params![
        t.id.to_string(),
        t.kind,
        serde_json::to_string(&t.payload)?,
        serde_json::to_string(&t.capabilities)?,
        t.priority,
        t.max_retries,
        t.timeout_s,
        t.lock_key,
        t.idempotency_key,
        t.run_after,
        serde_json::to_string(&t.labels)?,
        now,
    ])?;
    let seq = conn.last_insert_rowid();
    let task = Task {
        id: t.id,
        kind: t.kind.clone(),
        state: TaskState::Queued,
        payload: t.payload.clone(),
        capabilities: t.capabilities.clone(),
        priority: t.priority,
        max_retries: t.max_retries,
        timeout_s: t.timeout_s,
        lock_key: t.lock_key.clone(),
        idempotency_key: t.idempotency_key.clone(),
        run_after: t.run_after.map(to_utc),
        labels: t.labels.clone(),
        attempt: 0,
        agent_id: None,
        cancel_requested: false,
        created_at: to_utc(now),
        updated_at: to_utc(now),
        finished_at: None,
        result: None,
        usage: None,
        error: None,
        assignment: None,
        attempts: Vec::new(),
    };
    let mut change = Change::new(t.id, TaskState::Queued, 0, None);
    change.requeued = Some(QueuedTask {
        seq,
        priority: t.priority,
        capabilities: t.capabilities.clone(),
        lock_key: t.lock_key.clone(),
        run_after: t.run_after,
    });
    Ok(Submitted {
        task,
        created: true,
        change: Some(change),
    })
}

/// Puts an assigned (never claimed) task back in the queue; no attempt is spent.
fn unassign(conn: &Connection, cur: &Current, now: i64) -> StoreResult<Option<Change>> {
    let changed = conn
        .prepare_cached(
            "UPDATE tasks SET state = 'queued', agent_id = NULL, assigned_at = NULL, \
             updated_at = ?2 WHERE seq = ?1 AND state = 'assigned'",
        )?
        .execute(params![cur.seq, now])?;
    if changed == 0 {
        return Ok(None);
    }
    let mut change = cur.change(TaskState::Queued);
    change.released = cur.released();
    change.requeued = Some(cur.queued(cur.run_after));
    Ok(Some(change))
}

/// Ends the running attempt of `cur` with `outcome`, then queues the task again, fails it or
/// cancels it. Conditional on the attempt still being current.
fn end_attempt(
    conn: &Connection,
    policy: &RetryPolicy,
    cur: &Current,
    outcome: AttemptOutcome,
    error: &str,
    retryable: bool,
    now: i64,
) -> StoreResult<Option<Change>> {
    let used = cur.attempt.saturating_sub(cur.retry_floor);
    let (state, run_after, finished_at) = if cur.cancel_requested {
        (TaskState::Cancelled, None, Some(now))
    } else if retryable && used <= cur.max_retries {
        (TaskState::Queued, Some(now + policy.delay_ms(used)), None)
    } else {
        (TaskState::Failed, None, Some(now))
    };
    let agent_after = if state == TaskState::Queued {
        None
    } else {
        cur.agent_id.clone()
    };
    let changed = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?3, run_after = ?4, finished_at = ?5, error = ?6, \
             agent_id = ?7, lease_until = NULL, assigned_at = NULL, updated_at = ?8 \
             WHERE seq = ?1 AND state = 'running' AND attempt = ?2",
        )?
        .execute(params![
            cur.seq,
            cur.attempt,
            state.as_str(),
            run_after,
            finished_at,
            error,
            agent_after,
            now
        ])?;
    if changed == 0 {
        return Ok(None);
    }
    let outcome = if cur.cancel_requested && outcome == AttemptOutcome::Failed {
        AttemptOutcome::Cancelled
    } else {
        outcome
    };
    conn.prepare_cached(
        "UPDATE attempts SET outcome = ?3, ended_at = ?4, error = ?5 \
         WHERE task_seq = ?1 AND attempt = ?2",
    )?
    .execute(params![cur.seq, cur.attempt, outcome.as_str(), now, error])?;
    let mut change = cur.change(state);
    change.released = cur.released();
    change.agent_id = agent_after;
    if state == TaskState::Queued {
        change.requeued = Some(cur.queued(run_after));
    }
    Ok(Some(change))
}

fn changed(conn: &Connection, change: Change) -> StoreResult<Changed> {
    Ok(Changed {
        task: task_by_id(conn, change.task_id)?,
        change,
    })
}

fn agent_from_row(row: &Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        agent_id: row.get(0)?,
        host: row.get(1)?,
        port: row.get(2)?,
        capabilities: json_col(row, 3)?,
        mcp_servers: json_col(row, 4)?,
        max_concurrency: row.get(5)?,
        labels: json_col(row, 6)?,
        version: row.get(7)?,
        status: enum_col(row, 8, AgentStatus::parse)?,
        registered_at: to_utc(row.get(9)?),
        last_heartbeat_at: None,
        cpu_percent: None,
        memory_percent: None,
        active_tasks: row.get(10)?,
    })
}

const AGENT_SELECT: &str = "SELECT a.agent_id, a.host, a.port, a.capabilities, a.mcp_servers, \
    a.max_concurrency, a.labels, a.version, a.status, a.registered_at, \
    (SELECT count(*) FROM tasks t WHERE t.agent_id = a.agent_id \
       AND t.state IN ('assigned', 'running')) FROM agents a";

fn agent_by_id(conn: &Connection, agent_id: &str) -> StoreResult<Agent> {
    conn.prepare_cached(&format!("{AGENT_SELECT} WHERE a.agent_id = ?1"))?
        .query_row([agent_id], agent_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("agent {agent_id}")))
}

fn task_ids(conn: &Connection, sql: &str, args: &[&dyn rusqlite::ToSql]) -> StoreResult<Vec<Uuid>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |row| uuid_col(row, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, task: NewTask, now: i64) -> StoreResult<Submitted> {
        self.write(move |conn| insert_task(conn, &task, now)).await
    }

    async fn assign(
        &self,
        orders: Vec<AssignOrder>,
        now: i64,
    ) -> StoreResult<Vec<Option<(Uuid, u32)>>> {
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE tasks SET state = 'assigned', agent_id = ?2, assigned_at = ?3, \
                 assignment = ?4, updated_at = ?3 \
                 WHERE seq = ?1 AND state = 'queued' AND (run_after IS NULL OR run_after <= ?3) \
                 RETURNING id, attempt",
            )?;
            let mut applied = Vec::with_capacity(orders.len());
            for order in &orders {
                let assignment = serde_json::to_string(&order.assignment)?;
                let row = stmt
                    .query_row(params![order.seq, order.agent_id, now, assignment], |row| {
                        Ok((uuid_col(row, 0)?, row.get(1)?))
                    })
                    .optional()?;
                applied.push(row);
            }
            Ok(applied)
        })
        .await
    }

    async fn claim(&self, agent_id: &str, now: i64, lease_until: i64) -> StoreResult<Claimed> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| {
            let claimed = conn
                .prepare_cached(&format!(
                    "UPDATE tasks SET state = 'running', attempt = attempt + 1, started_at = ?2, \
                     lease_until = ?3, updated_at = ?2 \
                     WHERE seq = (SELECT seq FROM tasks WHERE agent_id = ?1 AND state = 'assigned' \
                                  ORDER BY priority DESC, seq LIMIT 1) \
                     RETURNING {TASK_COLS}, seq"
                ))?
                .query_row(params![agent_id, now, lease_until], |row| {
                    Ok((task_from_row(row)?, row.get::<_, i64>(22)?))
                })
                .optional()?;
            let task =
                match claimed {
                    Some((task, seq)) => {
                        conn.prepare_cached(
                        "INSERT INTO attempts (task_seq, attempt, agent_id, started_at, outcome, \
                         assignment) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                    )?
                    .execute(params![
                        seq,
                        task.attempt,
                        agent_id,
                        now,
                        task.assignment.as_ref().map(serde_json::to_string).transpose()?
                    ])?;
                        Some(task)
                    }
                    None => None,
                };
            let cancel = task_ids(
                conn,
                "SELECT id FROM tasks WHERE agent_id = ?1 AND state = 'running' \
                 AND cancel_requested = 1",
                &[&agent_id],
            )?;
            let change = task
                .as_ref()
                .map(|t| Change::new(t.id, TaskState::Running, t.attempt, t.agent_id.clone()));
            Ok(Claimed {
                task,
                change,
                cancel,
            })
        })
        .await
    }

    async fn append_logs(&self, task_id: Uuid, logs: AppendLogs, now: i64) -> StoreResult<usize> {
        self.write(move |conn| {
            let cur = current_by_id(conn, task_id)?;
            cur.check_current(logs.attempt)?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO task_logs (task_seq, attempt, ts, stream, text) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for line in &logs.lines {
                let ts = line.ts.map(|t| t.timestamp_millis()).unwrap_or(now);
                stmt.execute(params![
                    cur.seq,
                    logs.attempt,
                    ts,
                    line.stream.as_str(),
                    line.text
                ])?;
            }
            Ok(logs.lines.len())
        })
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
        self.write(move |conn| {
            let cur = current_by_id(conn, task_id)?;
            cur.check_current(attempt)?;
            conn.prepare_cached(
                "UPDATE tasks SET state = 'completed', result = ?3, usage = ?4, finished_at = ?5, \
                 updated_at = ?5, lease_until = NULL WHERE seq = ?1 AND attempt = ?2 \
                 AND state = 'running'",
            )?
            .execute(params![
                cur.seq,
                attempt,
                serde_json::to_string(&result)?,
                usage.as_ref().map(serde_json::to_string).transpose()?,
                now
            ])?;
            conn.prepare_cached(
                "UPDATE attempts SET outcome = 'completed', ended_at = ?3 \
                 WHERE task_seq = ?1 AND attempt = ?2",
            )?
            .execute(params![cur.seq, attempt, now])?;
            let mut change = cur.change(TaskState::Completed);
            change.released = cur.released();
            changed(conn, change)
        })
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
        self.write(move |conn| {
            let cur = current_by_id(conn, task_id)?;
            cur.check_current(attempt)?;
            let change = end_attempt(
                conn,
                &policy,
                &cur,
                AttemptOutcome::Failed,
                &error,
                retryable,
                now,
            )?
            .ok_or_else(|| StoreError::Conflict(format!("task {task_id} changed meanwhile")))?;
            changed(conn, change)
        })
        .await
    }

    async fn cancel(&self, task_id: Uuid, now: i64) -> StoreResult<Changed> {
        self.write(move |conn| {
            let cur = current_by_id(conn, task_id)?;
            let mut change = match cur.state {
                TaskState::Queued | TaskState::Assigned => {
                    conn.prepare_cached(
                        "UPDATE tasks SET state = 'cancelled', finished_at = ?2, updated_at = ?2, \
                         assigned_at = NULL WHERE seq = ?1",
                    )?
                    .execute(params![cur.seq, now])?;
                    let mut change = cur.change(TaskState::Cancelled);
                    change.released = cur.released();
                    change
                }
                TaskState::Running => {
                    conn.prepare_cached(
                        "UPDATE tasks SET cancel_requested = 1, updated_at = ?2 WHERE seq = ?1",
                    )?
                    .execute(params![cur.seq, now])?;
                    let mut change = cur.change(TaskState::Running);
                    change.wake_agent = cur.agent_id.clone();
                    change
                }
                state => {
                    return Err(StoreError::Conflict(format!(
                        "task {task_id} is already {state}"
                    )));
                }
            };
            change.attempt = cur.attempt;
            changed(conn, change)
        })
        .await
    }

    async fn retry(&self, task_id: Uuid, now: i64) -> StoreResult<Changed> {
        self.write(move |conn| {
            let cur = current_by_id(conn, task_id)?;
            if !matches!(cur.state, TaskState::Failed | TaskState::Cancelled) {
                return Err(StoreError::Conflict(format!(
                    "task {task_id} is {}; only failed or cancelled tasks can be retried",
                    cur.state
                )));
            }
            conn.prepare_cached(
                "UPDATE tasks SET state = 'queued', retry_floor = attempt, run_after = NULL, \
                 finished_at = NULL, error = NULL, result = NULL, usage = NULL, \
                 cancel_requested = 0, agent_id = NULL, updated_at = ?2 WHERE seq = ?1",
            )?
            .execute(params![cur.seq, now])?;
            let mut change = cur.change(TaskState::Queued);
            change.agent_id = None;
            change.requeued = Some(cur.queued(None));
            changed(conn, change)
        })
        .await
    }

    async fn expire(&self, now: i64, rules: ExpiryRules) -> StoreResult<Vec<Change>> {
        let policy = self.retry.clone();
        self.write(move |conn| {
            let mut changes = Vec::new();
            for cur in currents_where(
                conn,
                "state = 'assigned' AND assigned_at <= ?1",
                &[&(now - rules.assign_timeout_ms)],
            )? {
                changes.extend(unassign(conn, &cur, now)?);
            }
            for cur in currents_where(conn, "state = 'running' AND lease_until < ?1", &[&now])? {
                let why = format!(
                    "lease expired: no heartbeat from agent {}",
                    cur.agent_id.as_deref().unwrap_or("?")
                );
                changes.extend(end_attempt(
                    conn,
                    &policy,
                    &cur,
                    AttemptOutcome::Lost,
                    &why,
                    true,
                    now,
                )?);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT id, timeout_s FROM tasks WHERE state = 'running' \
                 AND timeout_s IS NOT NULL AND started_at + timeout_s * 1000 <= ?1",
            )?;
            let timed_out: Vec<(Uuid, u32)> = stmt
                .query_map([now], |row| Ok((uuid_col(row, 0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, timeout_s) in timed_out {
                let cur = current_by_id(conn, id)?;
                let why = format!("timed out after {timeout_s}s");
                changes.extend(end_attempt(
                    conn,
                    &policy,
                    &cur,
                    AttemptOutcome::TimedOut,
                    &why,
                    true,
                    now,
                )?);
            }
            Ok(changes)
        })
        .await
    }

    async fn prune(&self, finished_before: i64) -> StoreResult<Pruned> {
        self.write(move |conn| {
            let seqs: Vec<i64> = conn
                .prepare_cached(
                    "SELECT seq FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                     LIMIT ?2",
                )?
                .query_map(params![finished_before, PRUNE_BATCH], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut pruned = Pruned::default();
            for seq in seqs {
                pruned.log_lines += conn
                    .prepare_cached("DELETE FROM task_logs WHERE task_seq = ?1")?
                    .execute([seq])? as u64;
                conn.prepare_cached("DELETE FROM attempts WHERE task_seq = ?1")?
                    .execute([seq])?;
                pruned.tasks += conn
                    .prepare_cached("DELETE FROM tasks WHERE seq = ?1")?
                    .execute([seq])? as u64;
            }
            Ok(pruned)
        })
        .await
    }

    async fn register_agent(&self, reg: RegisterAgent, now: i64) -> StoreResult<(Agent, bool)> {
        self.write(move |conn| {
            let existed = conn
                .prepare_cached("SELECT 1 FROM agents WHERE agent_id = ?1")?
                .exists([&reg.agent_id])?;
            let mut capabilities = reg.capabilities.clone();
            capabilities.sort();
            capabilities.dedup();
            conn.prepare_cached(
                "INSERT INTO agents (agent_id, host, port, capabilities, mcp_servers, \
                 max_concurrency, labels, version, status, registered_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'online', ?9, ?9) \
                 ON CONFLICT (agent_id) DO UPDATE SET host = excluded.host, port = excluded.port, \
                 capabilities = excluded.capabilities, mcp_servers = excluded.mcp_servers, \
                 max_concurrency = excluded.max_concurrency, labels = excluded.labels, \
                 version = excluded.version, status = 'online', updated_at = excluded.updated_at",
            )?
            .execute(params![
                reg.agent_id,
                reg.host,
                reg.port,
                serde_json::to_string(&capabilities)?,
                serde_json::to_string(&reg.mcp_servers)?,
                reg.max_concurrency.unwrap_or(1),
                serde_json::to_string(&reg.labels)?,
                reg.version,
                now
            ])?;
            Ok((agent_by_id(conn, &reg.agent_id)?, !existed))
        })
        .await
    }

    async fn heartbeat(
        &self,
        agent_id: &str,
        running: Option<Vec<RunningTask>>,
        lease_until: i64,
    ) -> StoreResult<Vec<Uuid>> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| {
            if !conn
                .prepare_cached("SELECT 1 FROM agents WHERE agent_id = ?1")?
                .exists([&agent_id])?
            {
                return Err(StoreError::NotFound(format!("agent {agent_id}")));
            }
            if running.is_none() {
                conn.prepare_cached(
                    "UPDATE tasks SET lease_until = ?2 WHERE agent_id = ?1 AND state = 'running'",
                )?
                .execute(params![agent_id, lease_until])?;
            }
            let mut cancel = task_ids(
                conn,
                "SELECT id FROM tasks WHERE agent_id = ?1 AND state = 'running' \
                 AND cancel_requested = 1",
                &[&agent_id],
            )?;
            let mut extend = conn.prepare_cached(
                "UPDATE tasks SET lease_until = ?4 WHERE id = ?1 AND attempt = ?2 \
                 AND agent_id = ?3 AND state = 'running'",
            )?;
            for r in running.unwrap_or_default() {
                let current = extend.execute(params![
                    r.task_id.to_string(),
                    r.attempt,
                    agent_id,
                    lease_until
                ])? == 1;
                if !current && !cancel.contains(&r.task_id) {
                    cancel.push(r.task_id);
                }
            }
            Ok(cancel)
        })
        .await
    }

    async fn set_agent_status(
        &self,
        agent_id: &str,
        status: AgentStatus,
        now: i64,
    ) -> StoreResult<()> {
        let agent_id = agent_id.to_owned();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE agents SET status = ?2, updated_at = ?3 WHERE agent_id = ?1",
                )?
                .execute(params![agent_id, status.as_str(), now])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("agent {agent_id}")));
            }
            Ok(())
        })
        .await
    }

    async fn release_agent(
        &self,
        agent_id: &str,
        delete: bool,
        now: i64,
    ) -> StoreResult<Vec<Change>> {
        let agent_id = agent_id.to_owned();
        let policy = self.retry.clone();
        self.write(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM agents WHERE agent_id = ?1")?
                .exists([&agent_id])?;
            if !exists {
                return Err(StoreError::NotFound(format!("agent {agent_id}")));
            }
            let mut changes = Vec::new();
            for cur in currents_where(
                conn,
                "agent_id = ?1 AND state IN ('assigned', 'running')",
                &[&agent_id],
            )? {
                if cur.state == TaskState::Assigned {
                    changes.extend(unassign(conn, &cur, now)?);
                } else {
                    let why = if delete {
                        format!("agent {agent_id} was removed")
                    } else {
                        format!("agent {agent_id} went offline")
                    };
                    changes.extend(end_attempt(
                        conn,
                        &policy,
                        &cur,
                        AttemptOutcome::Lost,
                        &why,
                        true,
                        now,
                    )?);
                }
            }
            if delete {
                conn.prepare_cached("DELETE FROM agents WHERE agent_id = ?1")?
                    .execute([&agent_id])?;
            } else {
                conn.prepare_cached(
                    "UPDATE agents SET status = 'offline', updated_at = ?2 WHERE agent_id = ?1",
                )?
                .execute(params![agent_id, now])?;
            }
            Ok(changes)
        })
        .await
    }

    async fn task(&self, task_id: Uuid) -> StoreResult<Task> {
        self.read(move |conn| {
            let mut task = task_by_id(conn, task_id)?;
            let mut stmt = conn.prepare_cached(
                "SELECT a.attempt, a.agent_id, a.started_at, a.ended_at, a.outcome, a.error, \
                 a.assignment FROM attempts a JOIN tasks t ON t.seq = a.task_seq \
                 WHERE t.id = ?1 ORDER BY a.attempt",
            )?;
            task.attempts = stmt
                .query_map([task_id.to_string()], |row| {
                    Ok(Attempt {
                        attempt: row.get(0)?,
                        agent_id: row.get(1)?,
                        started_at: to_utc(row.get(2)?),
                        ended_at: row.get::<_, Option<i64>>(3)?.map(to_utc),
                        outcome: enum_col(row, 4, AttemptOutcome::parse)?,
                        error: row.get(5)?,
                        assignment: opt_json_col::<Assignment>(row, 6)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(task)
        })
        .await
    }

    async fn task_state(&self, task_id: Uuid) -> StoreResult<TaskState> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT state FROM tasks WHERE id = ?1")?
                .query_row([task_id.to_string()], |row| {
                    enum_col(row, 0, TaskState::parse)
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))
        })
        .await
    }

    async fn tasks(&self, filter: TaskFilter) -> StoreResult<TaskPage> {
        self.read(move |conn| {
            let mut conditions = Vec::new();
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            if let Some(state) = filter.state {
                args.push(Box::new(state.as_str()));
                conditions.push(format!("state = ?{}", args.len()));
            }
            if let Some(kind) = filter.kind {
                args.push(Box::new(kind));
                conditions.push(format!("kind = ?{}", args.len()));
            }
            if let Some(agent) = filter.agent_id {
                args.push(Box::new(agent));
                conditions.push(format!("agent_id = ?{}", args.len()));
            }
            if let Some(before) = filter.before_seq {
                args.push(Box::new(before));
                conditions.push(format!("seq < ?{}", args.len()));
            }
            let where_clause = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            args.push(Box::new(filter.limit as i64 + 1));
            let sql = format!(
                "SELECT {TASK_COLS}, seq FROM tasks {where_clause} ORDER BY seq DESC LIMIT ?{}",
                args.len()
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let mut rows: Vec<(Task, i64)> = stmt
                .query_map(refs.as_slice(), |row| {
                    Ok((task_from_row(row)?, row.get(22)?))
                })?
                .collect::<Result<_, _>>()?;
            let next_before = if rows.len() > filter.limit {
                rows.truncate(filter.limit);
                rows.last().map(|(_, seq)| *seq)
            } else {
                None
            };
            Ok(TaskPage {
                tasks: rows.into_iter().map(|(t, _)| t).collect(),
                next_before,
            })
        })
        .await
    }

    async fn logs(&self, task_id: Uuid, after: i64, limit: usize) -> StoreResult<Vec<LogLine>> {
        self.read(move |conn| {
            let seq: i64 = conn
                .prepare_cached("SELECT seq FROM tasks WHERE id = ?1")?
                .query_row([task_id.to_string()], |row| row.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))?;
            let mut stmt = conn.prepare_cached(
                "SELECT id, attempt, ts, stream, text FROM task_logs \
                 WHERE task_seq = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let lines = stmt
                .query_map(params![seq, after, limit as i64], |row| {
                    Ok(LogLine {
                        id: row.get(0)?,
                        attempt: row.get(1)?,
                        ts: to_utc(row.get(2)?),
                        stream: enum_col(row, 3, LogStream::parse)?,
                        text: row.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(lines)
        })
        .await
    }

    async fn agents(&self) -> StoreResult<Vec<Agent>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{AGENT_SELECT} ORDER BY a.agent_id"))?;
            let agents = stmt
                .query_map([], agent_from_row)?
                .collect::<Result<_, _>>()?;
            Ok(agents)
        })
        .await
    }

    async fn agent(&self, agent_id: &str) -> StoreResult<Agent> {
        let agent_id = agent_id.to_owned();
        self.read(move |conn| agent_by_id(conn, &agent_id)).await
    }

    async fn stats(&self, now: i64) -> StoreResult<Stats> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT state, count(*) FROM tasks GROUP BY state")?;
            let by_state = stmt
                .query_map([], |row| {
                    Ok((enum_col(row, 0, TaskState::parse)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let past_lease = conn
                .prepare_cached(
                    "SELECT count(*) FROM tasks WHERE state = 'running' AND lease_until < ?1",
                )?
                .query_row([now], |row| row.get(0))?;
            Ok(Stats {
                by_state,
                past_lease,
            })
        })
        .await
    }

    async fn finished_since(&self, since: i64) -> StoreResult<Vec<(TaskState, u64)>> {
        self.read(move |conn| {
            // The range on finished_at uses the partial index tasks_by_finished.
            let mut stmt = conn.prepare_cached(
                "SELECT state, count(*) FROM tasks WHERE finished_at >= ?1 GROUP BY state",
            )?;
            let counts = stmt
                .query_map([since], |row| {
                    Ok((enum_col(row, 0, TaskState::parse)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(counts)
        })
        .await
    }

    async fn snapshot(&self) -> StoreResult<DispatchSnapshot> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("{AGENT_SELECT} ORDER BY a.agent_id"))?;
            let agents = stmt
                .query_map([], agent_from_row)?
                .collect::<Result<_, _>>()?;
            let mut stmt = conn.prepare(
                "SELECT agent_id, lock_key FROM tasks \
                 WHERE state IN ('assigned', 'running') AND agent_id IS NOT NULL",
            )?;
            let active = stmt
                .query_map([], |row| {
                    Ok(Released {
                        agent_id: row.get(0)?,
                        lock_key: row.get(1)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(DispatchSnapshot { agents, active })
        })
        .await
    }

    async fn queued(&self, after: i64, limit: usize) -> StoreResult<Vec<QueuedTask>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, priority, capabilities, lock_key, run_after FROM tasks \
                 WHERE state = 'queued' AND seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let queued = stmt
                .query_map(params![after, limit as i64], |row| {
                    Ok(QueuedTask {
                        seq: row.get(0)?,
                        priority: row.get(1)?,
                        capabilities: json_col(row, 2)?,
                        lock_key: row.get(3)?,
                        run_after: row.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(queued)
        })
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
}
