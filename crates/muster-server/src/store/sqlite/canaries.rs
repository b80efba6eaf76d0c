//! Canary runs on SQLite: a run started (one in flight per canary, by a partial unique index),
//! its hook taken once with its task submitted in the same transaction, its notification
//! queued, its verdict with the notice it sends, interruptions, reads and pruning.

use muster_api::{CanaryLeg, CanaryOutcome, CanaryRun, CanaryTrigger};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::isolated;
use super::notifications;
use super::outbox::insert_outbox;
use super::rows::{enum_col, uuid_col};
use super::tasks::{self, insert_task};
use crate::audit::Actor;
use crate::canaries::judge::notice_for;
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::notice::Notice;
use crate::store::{
    CanariesInterrupted, CanaryFinish, CanaryFinished, CanaryHistory, Change, NewCanaryRun,
    NewNotification, NewTask, OutboxItem, RunningCanary, StoreResult, Submitted,
};

/// Runs deleted per retention transaction.
const PRUNE_BATCH: usize = 1000;

const COLS: &str = "id, canary, trigger, outcome, fired_at, deadline, hooked_at, task_id, \
    answered_at, agent_id, notification_id, delivered_at, finished_at, latency_ms, leg, reason, \
    nonce";

fn opt_uuid(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Uuid>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| {
        Uuid::parse_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<RunningCanary> {
    let time = |col: usize| -> rusqlite::Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(row.get::<_, Option<i64>>(col)?.map(to_utc))
    };
    let leg: Option<String> = row.get(14)?;
    Ok(RunningCanary {
        run: CanaryRun {
            id: uuid_col(row, 0)?,
            canary: row.get(1)?,
            trigger: enum_col(row, 2, CanaryTrigger::parse)?,
            outcome: enum_col(row, 3, CanaryOutcome::parse)?,
            fired_at: to_utc(row.get(4)?),
            deadline: to_utc(row.get(5)?),
            hooked_at: time(6)?,
            task_id: opt_uuid(row, 7)?,
            answered_at: time(8)?,
            agent_id: row.get(9)?,
            notification_id: opt_uuid(row, 10)?,
            delivered_at: time(11)?,
            finished_at: time(12)?,
            latency_ms: row.get::<_, Option<i64>>(13)?.map(|ms| ms.max(0) as u64),
            leg: leg.as_deref().and_then(CanaryLeg::parse),
            reason: row.get(15)?,
        },
        nonce: row.get(16)?,
    })
}

pub(super) fn by_id(conn: &Connection, id: Uuid) -> StoreResult<RunningCanary> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM canary_runs WHERE id = ?1"))?
        .query_row([id.to_string()], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("canary run {id}")))
}

pub(super) fn start(conn: &Connection, run: NewCanaryRun) -> StoreResult<RunningCanary> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO canary_runs (id, canary, trigger, nonce, outcome, fired_at, deadline) \
             VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            run.id.to_string(),
            run.canary,
            run.trigger.as_str(),
            run.nonce,
            run.fired_at,
            run.deadline
        ])?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!(
            "canary {} has a run in flight; one at a time",
            run.canary
        )));
    }
    if let Some(record) = &run.audit {
        insert_outbox(conn, &OutboxItem::audit(record), run.fired_at)?;
    }
    by_id(conn, run.id)
}

pub(super) fn hooked(
    conn: &Connection,
    id: Uuid,
    canary: &str,
    nonce: &str,
    task: NewTask,
    now: i64,
) -> StoreResult<Submitted> {
    let taken = conn
        .prepare_cached(
            "UPDATE canary_runs SET hooked_at = ?4, task_id = ?5 \
             WHERE id = ?1 AND canary = ?2 AND nonce = ?3 AND outcome = 'running' \
               AND hooked_at IS NULL",
        )?
        .execute(params![
            id.to_string(),
            canary,
            nonce,
            now,
            task.id.to_string()
        ])?;
    if taken == 0 {
        return Err(StoreError::Conflict(format!(
            "canary {canary} has no run {id} waiting for its hook (a replay, or a run that \
             already ended)"
        )));
    }
    let submitted = insert_task(conn, &task, now)?;
    if submitted.task.id != task.id {
        // The run's key named an older task: keep the run pointing at the one it has.
        conn.prepare_cached("UPDATE canary_runs SET task_id = ?2 WHERE id = ?1")?
            .execute(params![id.to_string(), submitted.task.id.to_string()])?;
    }
    Ok(submitted)
}

pub(super) fn queue_notification(
    conn: &Connection,
    id: Uuid,
    notification: NewNotification,
    now: i64,
) -> StoreResult<()> {
    let named = conn
        .prepare_cached(
            "UPDATE canary_runs SET notification_id = ?2 \
             WHERE id = ?1 AND outcome = 'running' AND notification_id IS NULL",
        )?
        .execute(params![id.to_string(), notification.id.to_string()])?;
    if named == 0 {
        return Err(StoreError::Conflict(format!(
            "canary run {id} is not in flight, or has its notification"
        )));
    }
    notifications::insert(conn, &id, &notification, now, false, now)?;
    Ok(())
}

pub(super) fn finish(conn: &Connection, f: CanaryFinish, now: i64) -> StoreResult<CanaryFinished> {
    let judged = conn
        .prepare_cached(
            "UPDATE canary_runs SET outcome = ?2, leg = ?3, reason = ?4, latency_ms = ?5, \
             answered_at = ?6, agent_id = ?7, delivered_at = ?8, finished_at = ?9 \
             WHERE id = ?1 AND outcome = 'running'",
        )?
        .execute(params![
            f.id.to_string(),
            f.outcome.as_str(),
            f.leg.map(|l| l.as_str()),
            f.reason,
            f.latency_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)),
            f.answered_at,
            f.agent_id,
            f.delivered_at,
            now
        ])?;
    if judged == 0 {
        return Err(StoreError::Conflict(format!(
            "canary run {} is not in flight",
            f.id
        )));
    }
    let run = by_id(conn, f.id)?.run;
    let previous: Option<String> = conn
        .prepare_cached(
            "SELECT outcome FROM canary_runs WHERE canary = ?1 AND id <> ?2 \
               AND outcome IN ('passed', 'failed') ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![run.canary, run.id.to_string()], |r| r.get(0))
        .optional()?;
    let notice = notice_for(
        previous.as_deref().and_then(CanaryOutcome::parse),
        run.outcome,
    );
    if let Some(event) = notice {
        insert_outbox(
            conn,
            &OutboxItem::notice(&Notice::canary(event, &run, now)),
            now,
        )?;
    }
    let cancelled = match f.cancel_task {
        Some(task) => cancel_task(conn, task, now)?,
        None => None,
    };
    Ok(CanaryFinished {
        run,
        notice,
        cancelled,
    })
}

/// Cancels a run's task as the system; none when it has ended (or is gone) meanwhile.
fn cancel_task(conn: &Connection, task: Uuid, now: i64) -> StoreResult<Option<Change>> {
    match isolated(conn, |conn| tasks::cancel(conn, task, &Actor::System, now)) {
        Ok(changed) => Ok(Some(changed.change)),
        Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => Ok(None),
        Err(err) => Err(err),
    }
}

pub(super) fn interrupt(
    conn: &Connection,
    reason: &str,
    now: i64,
) -> StoreResult<CanariesInterrupted> {
    let runs: Vec<CanaryRun> = conn
        .prepare_cached(&format!(
            "UPDATE canary_runs SET outcome = 'interrupted', reason = ?1, finished_at = ?2 \
             WHERE outcome = 'running' RETURNING {COLS}"
        ))?
        .query_map(params![reason, now], from_row)?
        .map(|r| r.map(|c| c.run))
        .collect::<Result<_, _>>()?;
    let mut cancelled = Vec::new();
    for task in runs.iter().filter_map(|r| r.task_id) {
        cancelled.extend(cancel_task(conn, task, now)?);
    }
    Ok(CanariesInterrupted { runs, cancelled })
}

pub(super) fn running(conn: &Connection) -> StoreResult<Vec<RunningCanary>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM canary_runs WHERE outcome = 'running' ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn history(conn: &Connection, canary: &str, limit: usize) -> StoreResult<CanaryHistory> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM canary_runs WHERE canary = ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let recent: Vec<CanaryRun> = stmt
        .query_map(params![canary, limit as i64], from_row)?
        .map(|r| r.map(|c| c.run))
        .collect::<Result<_, _>>()?;
    let last_judged = match recent.iter().find(|r| judged(r.outcome)) {
        Some(run) => Some(run.clone()),
        None => conn
            .prepare_cached(&format!(
                "SELECT {COLS} FROM canary_runs WHERE canary = ?1 \
                   AND outcome IN ('passed', 'failed') ORDER BY seq DESC LIMIT 1"
            ))?
            .query_row([canary], from_row)
            .optional()?
            .map(|c| c.run),
    };
    Ok(CanaryHistory {
        recent,
        last_judged,
    })
}

fn judged(outcome: CanaryOutcome) -> bool {
    matches!(outcome, CanaryOutcome::Passed | CanaryOutcome::Failed)
}

pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<u64> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM canary_runs WHERE seq IN ( \
               SELECT seq FROM canary_runs WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                 AND seq NOT IN (SELECT MAX(seq) FROM canary_runs \
                                 WHERE outcome IN ('passed', 'failed') GROUP BY canary) \
               ORDER BY seq LIMIT ?2)",
        )?
        .execute(params![before, PRUNE_BATCH as i64])?;
    Ok(deleted as u64)
}
