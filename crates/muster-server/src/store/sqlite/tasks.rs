//! Task operations on SQLite: submit, assign, claim, reports, cancel, retry, expiry, pruning,
//! and the reads of tasks and logs. Each decides through [`crate::lifecycle`] and applies the
//! decision as one update conditional on the task's state (and attempt).

use muster_api::{
    AppendLogs, Assignment, Attempt, AttemptOutcome, LogLine, LogStream, Task, TaskState,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use uuid::Uuid;

use super::deployments;
use super::incidents;
use super::isolated;
use super::outbox::insert_outbox;
use super::rows::{
    Current, TASK_COLS, current_by_id, currents_where, enum_col, json_col, opt_json_col,
    task_by_id, task_col, task_from_row, task_ids, uuid_col,
};
use crate::audit::{Actor, AuditRecord};
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::lifecycle::{self, CancelPlan, Ending};
use crate::notice::{FailedTask, Notice};
use crate::store::{
    AssignOrder, Assigned, AttemptEnd, AttemptReport, Change, Changed, ClaimedBatch, ExpiryRules,
    NewTask, OutboxItem, Pruned, QueuedTask, RetryPolicy, Stats, StoreResult, Submitted,
    TaskFilter, TaskPage,
};

/// Finished tasks deleted per retention transaction.
const PRUNE_BATCH: usize = 500;

pub(super) fn insert_task(conn: &Connection, t: &NewTask, now: i64) -> StoreResult<Submitted> {
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
        waiting: None,
    };
    let mut change = Change::new(t.id, TaskState::Queued, 0, None);
    change.submitted = true;
    change.requeued = Some(QueuedTask {
        seq,
        kind: t.kind.clone(),
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
pub(super) fn unassign(conn: &Connection, cur: &Current, now: i64) -> StoreResult<Option<Change>> {
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

/// Ends the running attempt of `cur` as the lifecycle rules say `ending` must end it: queued
/// again after a backoff, failed, or cancelled. Conditional on the attempt still being current;
/// `None` when it no longer was.
pub(super) fn end_attempt(
    conn: &Connection,
    policy: &RetryPolicy,
    cur: &Current,
    ending: Ending,
    error: &str,
    now: i64,
) -> StoreResult<Option<Change>> {
    let after = lifecycle::after_attempt(&cur.facts(), ending);
    let state = after.state;
    let run_after = after.retry_number.map(|n| now + policy.delay_ms(n));
    let finished_at = (state != TaskState::Queued).then_some(now);
    let agent_after = if state == TaskState::Queued {
        None
    } else {
        cur.agent_id.clone()
    };
    let changed = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?3, run_after = ?4, finished_at = ?5, error = ?6, \
             agent_id = ?7, lease_until = NULL, assigned_at = NULL, updated_at = ?8, \
             lost_count = lost_count + ?9 \
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
            now,
            i64::from(after.lost)
        ])?;
    if changed == 0 {
        return Ok(None);
    }
    let outcome = after.outcome;
    conn.prepare_cached(
        "UPDATE attempts SET outcome = ?3, ended_at = ?4, error = ?5 \
         WHERE task_seq = ?1 AND attempt = ?2",
    )?
    .execute(params![cur.seq, cur.attempt, outcome.as_str(), now, error])?;
    if state == TaskState::Failed {
        notify_failed(conn, cur, error, now)?;
    }
    let mut change = cur.change(state);
    if state.is_final() {
        change.then = deployments::task_moved(conn, cur.id, state, now)?;
        change.incident = incidents::task_moved(conn, cur.id, &cur.kind, state, now)?;
    }
    change.released = cur.released();
    change.agent_id = agent_after;
    change.lost_attempt = after.lost;
    if state == TaskState::Queued {
        change.requeued = Some(cur.queued(run_after));
    }
    Ok(Some(change))
}

/// Writes the task.failed notice with the failure, so the notification cannot be lost.
fn notify_failed(conn: &Connection, cur: &Current, error: &str, now: i64) -> StoreResult<()> {
    let labels: muster_api::Labels = conn
        .prepare_cached("SELECT labels FROM tasks WHERE seq = ?1")?
        .query_row([cur.seq], |row| json_col(row, 0))?;
    let notice = Notice::task_failed(
        FailedTask {
            id: cur.id,
            kind: &cur.kind,
            labels: &labels,
            attempt: cur.attempt,
            error,
            agent_id: cur.agent_id.as_deref(),
        },
        now,
    );
    insert_outbox(conn, &OutboxItem::notice(&notice), now)
}

fn changed(conn: &Connection, change: Change) -> StoreResult<Changed> {
    Ok(Changed {
        task: task_by_id(conn, change.task_id)?,
        change,
    })
}

pub(super) fn submit(conn: &Connection, task: NewTask, now: i64) -> StoreResult<Submitted> {
    insert_task(conn, &task, now)
}

/// Each task in its own savepoint inside the batch's one operation, so one that cannot be
/// stored leaves the others (and the batch) standing. A key repeated within the batch finds
/// the earlier insert: the transaction sees its own writes.
pub(super) fn submit_many(
    conn: &Connection,
    tasks: Vec<NewTask>,
    now: i64,
) -> StoreResult<Vec<StoreResult<Submitted>>> {
    Ok(tasks
        .iter()
        .map(|task| isolated(conn, |conn| insert_task(conn, task, now)))
        .collect())
}

pub(super) fn assign(
    conn: &Connection,
    orders: Vec<AssignOrder>,
    now: i64,
) -> StoreResult<Vec<Option<Assigned>>> {
    let mut assign = conn.prepare_cached(
        "UPDATE tasks SET state = 'assigned', agent_id = ?2, assigned_at = ?3, \
         assignment = ?4, updated_at = ?3 \
         WHERE seq = ?1 AND state = 'queued' AND (run_after IS NULL OR run_after <= ?3) \
         RETURNING id, attempt",
    )?;
    let mut applied = Vec::with_capacity(orders.len());
    for order in &orders {
        let assignment = serde_json::to_string(&order.assignment)?;
        let row = match order.start {
            None => assign
                .query_row(params![order.seq, order.agent_id, now, assignment], |row| {
                    Ok(Assigned {
                        task_id: uuid_col(row, "id")?,
                        attempt: row.get("attempt")?,
                        started: None,
                    })
                })
                .optional()?,
            Some(lease_until) => start_assigned(conn, order, &assignment, now, lease_until)?,
        };
        applied.push(row);
    }
    Ok(applied)
}

/// Assigns a task to an agent waiting in a long-poll and starts its next attempt in the same
/// update: what [`assign`] and then [`claim_many`] would do, in one statement.
fn start_assigned(
    conn: &Connection,
    order: &AssignOrder,
    assignment: &str,
    now: i64,
    lease_until: i64,
) -> StoreResult<Option<Assigned>> {
    let started = conn
        .prepare_cached(&format!(
            "UPDATE tasks SET state = 'running', agent_id = ?2, assigned_at = ?3, \
             assignment = ?4, attempt = attempt + 1, started_at = ?3, lease_until = ?5, \
             updated_at = ?3 \
             WHERE seq = ?1 AND state = 'queued' AND (run_after IS NULL OR run_after <= ?3) \
             RETURNING {TASK_COLS}"
        ))?
        .query_row(
            params![order.seq, order.agent_id, now, assignment, lease_until],
            task_from_row,
        )
        .optional()?;
    let Some(task) = started else {
        return Ok(None);
    };
    record_attempt(conn, order.seq, task.attempt, &order.agent_id, now)?;
    Ok(Some(Assigned {
        task_id: task.id,
        attempt: task.attempt,
        started: Some(task),
    }))
}

/// The record of an attempt just started. The current attempt's assignment is the task's own
/// (`tasks.assignment`); it is copied to the attempt only when the task is assigned again (a
/// trigger, migration 0009). Storing it twice made the attempt row as large as the task's,
/// written again at every report.
fn record_attempt(
    conn: &Connection,
    seq: i64,
    attempt: u32,
    agent_id: &str,
    now: i64,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO attempts (task_seq, attempt, agent_id, started_at, outcome) \
         VALUES (?1, ?2, ?3, ?4, 'running')",
    )?
    .execute(params![seq, attempt, agent_id, now])?;
    Ok(())
}

/// Undoes claims whose answer reached no one: a task still running the named attempt goes
/// back to assigned with the attempt before it (its start time restored from that attempt's
/// record), and the attempt's record goes. A task that has moved on is left alone.
pub(super) fn unclaim(
    conn: &Connection,
    tasks: &[(Uuid, u32)],
    now: i64,
) -> StoreResult<Vec<Change>> {
    let mut put_back = conn.prepare_cached(
        "UPDATE tasks SET state = 'assigned', attempt = attempt - 1, lease_until = NULL, \
         started_at = (SELECT a.started_at FROM attempts a \
                       WHERE a.task_seq = tasks.seq AND a.attempt = tasks.attempt - 1), \
         updated_at = ?3 \
         WHERE id = ?1 AND state = 'running' AND attempt = ?2 \
         RETURNING seq, agent_id",
    )?;
    let mut forget =
        conn.prepare_cached("DELETE FROM attempts WHERE task_seq = ?1 AND attempt = ?2")?;
    let mut changes = Vec::new();
    for &(task_id, attempt) in tasks {
        let row = put_back
            .query_row(params![task_id.to_string(), attempt, now], |row| {
                Ok((row.get::<_, i64>("seq")?, row.get::<_, String>("agent_id")?))
            })
            .optional()?;
        if let Some((seq, agent_id)) = row {
            forget.execute(params![seq, attempt])?;
            changes.push(Change::assigned(task_id, attempt - 1, agent_id));
        }
    }
    Ok(changes)
}

/// The claim: up to `{max}` of the agent's assigned tasks become running, highest priority
/// first, then oldest. The subquery repeats the agent index's predicate so SQLite can use that
/// partial index (a test checks the plan). The limit is written into the text, not bound: a
/// bound LIMIT made SQLite prepare the statement again at every execution (measured: 45 % of
/// the server's instructions), and a claim asks for at most `MAX_CLAIM_BATCH`, so the
/// statement cache holds the few texts agents use.
fn claim_sql(max: usize) -> String {
    format!(
        "UPDATE tasks SET state = 'running', attempt = attempt + 1, \
         started_at = ?2, lease_until = ?3, updated_at = ?2 \
         WHERE seq IN (SELECT seq FROM tasks WHERE agent_id = ?1 \
         AND state IN ('assigned', 'running') AND state = 'assigned' \
         ORDER BY priority DESC, seq LIMIT {max})"
    )
}

/// Claims up to `max` of the agent's assigned tasks, highest priority first, then oldest: one
/// conditional update starts them all, and each gets its attempt record.
pub(super) fn claim_many(
    conn: &Connection,
    agent_id: &str,
    max: usize,
    now: i64,
    lease_until: i64,
) -> StoreResult<ClaimedBatch> {
    let mut claimed: Vec<(Task, i64)> = conn
        .prepare_cached(&format!(
            "{} RETURNING {TASK_COLS}",
            claim_sql(max.clamp(1, muster_api::limits::MAX_CLAIM_BATCH as usize))
        ))?
        .query_map(params![agent_id, now, lease_until], |row| {
            Ok((task_from_row(row)?, row.get::<_, i64>(task_col::seq)?))
        })?
        .collect::<Result<_, _>>()?;
    // RETURNING promises no order; the agent gets them in the order it should start them.
    claimed.sort_by_key(|(task, seq)| (std::cmp::Reverse(task.priority), *seq));
    let mut tasks = Vec::with_capacity(claimed.len());
    let mut changes = Vec::with_capacity(claimed.len());
    for (task, seq) in claimed {
        record_attempt(conn, seq, task.attempt, agent_id, now)?;
        changes.push(Change::new(
            task.id,
            TaskState::Running,
            task.attempt,
            task.agent_id.clone(),
        ));
        tasks.push(task);
    }
    let cancel = task_ids(
        conn,
        "SELECT id FROM tasks WHERE agent_id = ?1 AND state IN ('assigned', 'running') \
         AND state = 'running' \
         AND cancel_requested = 1",
        &[&agent_id],
    )?;
    Ok(ClaimedBatch {
        tasks,
        changes,
        cancel,
    })
}

/// Stores log lines of the current attempt while the task's log text stays within
/// `max_bytes`. The first line that would pass it, and every line after it, is dropped:
/// dropping only what does not fit would leave holes a reader could not see. One marker line,
/// always the task's last, says how many were dropped; each later drop replaces it (a new id,
/// so live followers see the new count) rather than adding another. The tally sits in the
/// task's row, so the limit holds across posts and restarts without summing the logs.
pub(super) fn append_logs(
    conn: &Connection,
    task_id: Uuid,
    logs: AppendLogs,
    max_bytes: u64,
    now: i64,
) -> StoreResult<usize> {
    let cur = current_by_id(conn, task_id)?;
    lifecycle::check_report(&cur.id, &cur.facts(), logs.attempt)?;
    let (mut stored, dropped_before): (i64, i64) = conn
        .prepare_cached("SELECT log_bytes, log_dropped FROM tasks WHERE seq = ?1")?
        .query_row(params![cur.seq], |row| {
            Ok((row.get("log_bytes")?, row.get("log_dropped")?))
        })?;
    let limit = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let mut insert = conn.prepare_cached(
        "INSERT INTO task_logs (task_seq, attempt, ts, stream, text) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut kept = 0;
    let mut dropped: i64 = 0;
    for line in &logs.lines {
        let size = line.text.len() as i64;
        if dropped_before + dropped > 0 || stored.saturating_add(size) > limit {
            dropped += 1;
            continue;
        }
        let ts = line.ts.map(|t| t.timestamp_millis()).unwrap_or(now);
        insert.execute(params![
            cur.seq,
            logs.attempt,
            ts,
            line.stream.as_str(),
            line.text
        ])?;
        stored += size;
        kept += 1;
    }
    if dropped > 0 {
        if dropped_before > 0 {
            conn.prepare_cached(
                "DELETE FROM task_logs WHERE id = \
                 (SELECT MAX(id) FROM task_logs WHERE task_seq = ?1)",
            )?
            .execute(params![cur.seq])?;
        }
        let total = dropped_before + dropped;
        let text = format!(
            "{total} {} dropped: this task's log reached LOG_LIMIT ({max_bytes} bytes)",
            if total == 1 { "line" } else { "lines" }
        );
        insert.execute(params![
            cur.seq,
            logs.attempt,
            now,
            LogStream::System.as_str(),
            text
        ])?;
    }
    conn.prepare_cached("UPDATE tasks SET log_bytes = ?2, log_dropped = ?3 WHERE seq = ?1")?
        .execute(params![cur.seq, stored, dropped_before + dropped])?;
    Ok(kept)
}

pub(super) fn complete(
    conn: &Connection,
    task_id: Uuid,
    attempt: u32,
    result: Value,
    usage: Option<Value>,
    now: i64,
) -> StoreResult<Changed> {
    let change = complete_attempt(conn, task_id, attempt, &result, usage.as_ref(), now)?;
    changed(conn, change)
}

fn complete_attempt(
    conn: &Connection,
    task_id: Uuid,
    attempt: u32,
    result: &Value,
    usage: Option<&Value>,
    now: i64,
) -> StoreResult<Change> {
    let cur = current_by_id(conn, task_id)?;
    lifecycle::check_report(&cur.id, &cur.facts(), attempt)?;
    conn.prepare_cached(
        "UPDATE tasks SET state = 'completed', result = ?3, usage = ?4, finished_at = ?5, \
         updated_at = ?5, lease_until = NULL WHERE seq = ?1 AND attempt = ?2 \
         AND state = 'running'",
    )?
    .execute(params![
        cur.seq,
        attempt,
        serde_json::to_string(result)?,
        usage.map(serde_json::to_string).transpose()?,
        now
    ])?;
    conn.prepare_cached(
        "UPDATE attempts SET outcome = 'completed', ended_at = ?3 \
         WHERE task_seq = ?1 AND attempt = ?2",
    )?
    .execute(params![cur.seq, attempt, now])?;
    let mut change = cur.change(TaskState::Completed);
    change.released = cur.released();
    change.then = deployments::task_moved(conn, cur.id, TaskState::Completed, now)?;
    change.incident = incidents::task_moved(conn, cur.id, &cur.kind, TaskState::Completed, now)?;
    Ok(change)
}

pub(super) fn fail(
    conn: &Connection,
    task_id: Uuid,
    attempt: u32,
    error: String,
    retryable: bool,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Changed> {
    let change = fail_attempt(conn, task_id, attempt, &error, retryable, now, policy)?;
    changed(conn, change)
}

fn fail_attempt(
    conn: &Connection,
    task_id: Uuid,
    attempt: u32,
    error: &str,
    retryable: bool,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Change> {
    let cur = current_by_id(conn, task_id)?;
    lifecycle::check_report(&cur.id, &cur.facts(), attempt)?;
    end_attempt(conn, policy, &cur, Ending::Failed { retryable }, error, now)?
        .ok_or_else(|| StoreError::Conflict(format!("task {task_id} changed meanwhile")))
}

/// Each report in its own savepoint inside the batch's one operation, judged as `complete`
/// and `fail` judge it: a refused one changes nothing and the rest go on. Only the change is
/// answered, not the task, which a batch does not send back.
pub(super) fn report_many(
    conn: &Connection,
    reports: Vec<AttemptReport>,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Vec<StoreResult<Change>>> {
    Ok(reports
        .iter()
        .map(|report| {
            isolated(conn, |conn| match &report.end {
                AttemptEnd::Completed { result, usage } => complete_attempt(
                    conn,
                    report.task_id,
                    report.attempt,
                    result,
                    usage.as_ref(),
                    now,
                ),
                AttemptEnd::Failed { error, retryable } => fail_attempt(
                    conn,
                    report.task_id,
                    report.attempt,
                    error,
                    *retryable,
                    now,
                    policy,
                ),
            })
        })
        .collect())
}

/// Cancels the task and, in the same transaction, writes the audit record of who did it.
pub(super) fn cancel(
    conn: &Connection,
    task_id: Uuid,
    actor: &Actor,
    now: i64,
) -> StoreResult<Changed> {
    let cur = current_by_id(conn, task_id)?;
    let plan = lifecycle::on_cancel(&task_id, &cur.facts())?;
    let record = AuditRecord::task_cancelled(
        now,
        actor.clone(),
        task_id,
        cur.state,
        plan == CancelPlan::AskAgent,
    );
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    let change = match plan {
        CancelPlan::Now => {
            conn.prepare_cached(
                "UPDATE tasks SET state = 'cancelled', finished_at = ?2, updated_at = ?2, \
                 assigned_at = NULL WHERE seq = ?1 AND state IN ('queued', 'assigned')",
            )?
            .execute(params![cur.seq, now])?;
            let mut change = cur.change(TaskState::Cancelled);
            change.released = cur.released();
            if cur.state == TaskState::Queued {
                change.dropped = Some(cur.queued(cur.run_after));
            }
            change.then = deployments::task_moved(conn, cur.id, TaskState::Cancelled, now)?;
            change.incident =
                incidents::task_moved(conn, cur.id, &cur.kind, TaskState::Cancelled, now)?;
            change
        }
        CancelPlan::AskAgent => {
            conn.prepare_cached(
                "UPDATE tasks SET cancel_requested = 1, updated_at = ?2 \
                 WHERE seq = ?1 AND state = 'running'",
            )?
            .execute(params![cur.seq, now])?;
            let mut change = cur.change(TaskState::Running);
            change.wake_agent = cur.agent_id.clone();
            change
        }
    };
    changed(conn, change)
}

/// Queues the task again and, in the same transaction, writes the audit record of who did it.
pub(super) fn retry(
    conn: &Connection,
    task_id: Uuid,
    actor: &Actor,
    now: i64,
) -> StoreResult<Changed> {
    let cur = current_by_id(conn, task_id)?;
    lifecycle::on_retry(&task_id, &cur.facts())?;
    let record = AuditRecord::task_retried(now, actor.clone(), task_id, cur.state, cur.attempt);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    conn.prepare_cached(
        "UPDATE tasks SET state = 'queued', retry_floor = attempt, lost_count = 0, run_after = NULL, \
         finished_at = NULL, error = NULL, result = NULL, usage = NULL, \
         cancel_requested = 0, agent_id = NULL, updated_at = ?2 \
         WHERE seq = ?1 AND state IN ('failed', 'cancelled')",
    )?
    .execute(params![cur.seq, now])?;
    let mut change = cur.change(TaskState::Queued);
    change.agent_id = None;
    change.requeued = Some(cur.queued(None));
    change.then = deployments::task_moved(conn, cur.id, TaskState::Queued, now)?;
    change.incident = incidents::task_moved(conn, cur.id, &cur.kind, TaskState::Queued, now)?;
    changed(conn, change)
}

pub(super) fn grant_leases(conn: &Connection, until: i64) -> StoreResult<u64> {
    Ok(conn
        .prepare_cached(
            "UPDATE tasks SET lease_until = ?1 WHERE state = 'running' AND lease_until < ?1",
        )?
        .execute([until])? as u64)
}

pub(super) fn expire(
    conn: &Connection,
    now: i64,
    rules: ExpiryRules,
    policy: &RetryPolicy,
) -> StoreResult<Vec<Change>> {
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
        changes.extend(end_attempt(conn, policy, &cur, Ending::Lost, &why, now)?);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, timeout_s FROM tasks WHERE state = 'running' \
         AND timeout_s IS NOT NULL AND started_at + timeout_s * 1000 <= ?1",
    )?;
    let timed_out: Vec<(Uuid, u32)> = stmt
        .query_map([now], |row| {
            Ok((uuid_col(row, "id")?, row.get("timeout_s")?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, timeout_s) in timed_out {
        let cur = current_by_id(conn, id)?;
        let why = format!("timed out after {timeout_s}s");
        changes.extend(end_attempt(
            conn,
            policy,
            &cur,
            Ending::TimedOut,
            &why,
            now,
        )?);
    }
    Ok(changes)
}

pub(super) fn prune(conn: &Connection, finished_before: i64) -> StoreResult<Pruned> {
    let seqs: Vec<i64> = conn
        .prepare_cached(
            "SELECT seq FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?1 \
             LIMIT ?2",
        )?
        .query_map(params![finished_before, PRUNE_BATCH], |row| row.get("seq"))?
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
}

pub(super) fn task(conn: &Connection, task_id: Uuid) -> StoreResult<Task> {
    let mut task = task_by_id(conn, task_id)?;
    let mut stmt = conn.prepare_cached(
        "SELECT a.attempt, a.agent_id, a.started_at, a.ended_at, a.outcome, a.error, \
         coalesce(a.assignment, CASE WHEN a.attempt = t.attempt THEN t.assignment END) \
         AS assignment FROM attempts a JOIN tasks t ON t.seq = a.task_seq \
         WHERE t.id = ?1 ORDER BY a.attempt",
    )?;
    task.attempts = stmt
        .query_map([task_id.to_string()], |row| {
            Ok(Attempt {
                attempt: row.get("attempt")?,
                agent_id: row.get("agent_id")?,
                started_at: to_utc(row.get("started_at")?),
                ended_at: row.get::<_, Option<i64>>("ended_at")?.map(to_utc),
                outcome: enum_col(row, "outcome", AttemptOutcome::parse)?,
                error: row.get("error")?,
                assignment: opt_json_col::<Assignment, _>(row, "assignment")?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(task)
}

pub(super) fn lock_blocker(
    conn: &Connection,
    task_id: Uuid,
) -> StoreResult<Option<(Uuid, TaskState)>> {
    Ok(conn
        .prepare_cached(
            "SELECT b.id, b.state FROM tasks t JOIN tasks b ON b.lock_key = t.lock_key \
             WHERE t.id = ?1 AND b.seq != t.seq AND (b.state IN ('assigned', 'running') \
             OR (b.state = 'queued' AND b.seq < t.seq)) \
             ORDER BY b.state = 'queued', b.seq LIMIT 1",
        )?
        .query_row([task_id.to_string()], |row| {
            Ok((
                uuid_col(row, "id")?,
                enum_col(row, "state", TaskState::parse)?,
            ))
        })
        .optional()?)
}

pub(super) fn task_state(conn: &Connection, task_id: Uuid) -> StoreResult<TaskState> {
    conn.prepare_cached("SELECT state FROM tasks WHERE id = ?1")?
        .query_row([task_id.to_string()], |row| {
            enum_col(row, "state", TaskState::parse)
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))
}

pub(super) fn tasks(conn: &Connection, filter: TaskFilter) -> StoreResult<TaskPage> {
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
        // The agent index holds only what agents have now; naming its predicate lets SQLite
        // use it. An agent's finished tasks are found walking back from the newest.
        if matches!(filter.state, Some(TaskState::Assigned | TaskState::Running)) {
            conditions.push("state IN ('assigned', 'running')".to_owned());
        }
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
        "SELECT {TASK_COLS} FROM tasks {where_clause} ORDER BY seq DESC LIMIT ?{}",
        args.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut rows: Vec<(Task, i64)> = stmt
        .query_map(refs.as_slice(), |row| {
            Ok((task_from_row(row)?, row.get(task_col::seq)?))
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
}

pub(super) fn logs(
    conn: &Connection,
    task_id: Uuid,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<LogLine>> {
    let seq: i64 = conn
        .prepare_cached("SELECT seq FROM tasks WHERE id = ?1")?
        .query_row([task_id.to_string()], |row| row.get("seq"))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, attempt, ts, stream, text FROM task_logs \
         WHERE task_seq = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let lines = stmt
        .query_map(params![seq, after, limit as i64], |row| {
            Ok(LogLine {
                id: row.get("id")?,
                attempt: row.get("attempt")?,
                ts: to_utc(row.get("ts")?),
                stream: enum_col(row, "stream", LogStream::parse)?,
                text: row.get("text")?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(lines)
}

pub(super) fn stats(conn: &Connection, now: i64) -> StoreResult<Stats> {
    let mut stmt = conn.prepare_cached("SELECT state, count(*) AS n FROM tasks GROUP BY state")?;
    let by_state = stmt
        .query_map([], |row| {
            Ok((enum_col(row, "state", TaskState::parse)?, row.get("n")?))
        })?
        .collect::<Result<_, _>>()?;
    let past_lease = conn
        .prepare_cached(
            "SELECT count(*) AS n FROM tasks WHERE state = 'running' AND lease_until < ?1",
        )?
        .query_row([now], |row| row.get("n"))?;
    // Queued tasks in submit order through the state index: the first is the oldest.
    let oldest_queued_at = conn
        .prepare_cached("SELECT created_at FROM tasks WHERE state = 'queued' ORDER BY seq LIMIT 1")?
        .query_row([], |row| row.get("created_at"))
        .optional()?;
    Ok(Stats {
        by_state,
        past_lease,
        oldest_queued_at,
    })
}

pub(super) fn finished_since(conn: &Connection, since: i64) -> StoreResult<Vec<(TaskState, u64)>> {
    // The range on finished_at uses the partial index tasks_by_finished.
    let mut stmt = conn.prepare_cached(
        "SELECT state, count(*) AS n FROM tasks WHERE finished_at >= ?1 GROUP BY state",
    )?;
    let counts = stmt
        .query_map([since], |row| {
            Ok((enum_col(row, "state", TaskState::parse)?, row.get("n")?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(counts)
}

pub(super) fn queued(conn: &Connection, after: i64, limit: usize) -> StoreResult<Vec<QueuedTask>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, priority, capabilities, lock_key, run_after FROM tasks \
         WHERE state = 'queued' AND seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let queued = stmt
        .query_map(params![after, limit as i64], |row| {
            Ok(QueuedTask {
                seq: row.get("seq")?,
                kind: row.get("kind")?,
                priority: row.get("priority")?,
                capabilities: json_col(row, "capabilities")?,
                lock_key: row.get("lock_key")?,
                run_after: row.get("run_after")?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::claim_sql;

    /// The query plan of `sql` (three parameters) on a migrated, empty database.
    fn plan(sql: &str) -> String {
        let conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&conn).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(["agent", "0", "0"], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("\n")
    }

    #[test]
    fn the_claim_statement_is_prepared_once_whatever_it_is_run_with() {
        let conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&conn).unwrap();
        let mut stmt = conn.prepare(&claim_sql(4)).unwrap();
        for (agent, now) in [("a", 1), ("b", 2), ("c", 3)] {
            stmt.execute(rusqlite::params![agent, now, now + 1])
                .unwrap();
        }
        let again = stmt.get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(again, 0, "SQLite planned the claim again at an execution");
    }

    #[test]
    fn the_claim_finds_the_agents_task_through_the_agent_index() {
        let plan = plan(&claim_sql(4));
        assert!(
            plan.contains("USING INDEX tasks_by_agent (agent_id=? AND state=?)"),
            "the claim must not scan every assigned task:\n{plan}"
        );
    }
}
