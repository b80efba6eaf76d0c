//! Rows to types, by column name: the task and agent mappings, and [`Current`], the few
//! columns a state change reads to decide and to report.

use muster_api::{Agent, AgentStatus, Task, TaskState};
use rusqlite::{Connection, OptionalExtension, Row};
use uuid::Uuid;

use crate::clock::to_utc;
use crate::error::StoreError;
use crate::lifecycle::Facts;
use crate::store::{Change, QueuedTask, Released, StoreResult};

/// The columns [`task_from_row`] reads.
pub(super) const TASK_COLS: &str = "id, kind, state, payload, capabilities, priority, \
    max_retries, timeout_s, lock_key, idempotency_key, run_after, labels, attempt, agent_id, \
    cancel_requested, created_at, updated_at, finished_at, result, usage, error, assignment";

pub(super) fn json_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    col: &str,
) -> rusqlite::Result<T> {
    let text: String = row.get(col)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            column_index(row, col),
            rusqlite::types::Type::Text,
            Box::new(e),
        )
    })
}

pub(super) fn opt_json_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    col: &str,
) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                column_index(row, col),
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })
    })
    .transpose()
}

pub(super) fn enum_col<T>(
    row: &Row<'_>,
    col: &str,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = row.get(col)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column_index(row, col),
            rusqlite::types::Type::Text,
            format!("unknown value {text:?}").into(),
        )
    })
}

pub(super) fn uuid_col(row: &Row<'_>, col: &str) -> rusqlite::Result<Uuid> {
    let text: String = row.get(col)?;
    Uuid::parse_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            column_index(row, col),
            rusqlite::types::Type::Text,
            Box::new(e),
        )
    })
}

/// Maps a row selected with [`TASK_COLS`], by column name.
pub(super) fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: uuid_col(row, "id")?,
        kind: row.get("kind")?,
        state: enum_col(row, "state", TaskState::parse)?,
        payload: json_col(row, "payload")?,
        capabilities: json_col(row, "capabilities")?,
        priority: row.get("priority")?,
        max_retries: row.get("max_retries")?,
        timeout_s: row.get("timeout_s")?,
        lock_key: row.get("lock_key")?,
        idempotency_key: row.get("idempotency_key")?,
        run_after: row.get::<_, Option<i64>>("run_after")?.map(to_utc),
        labels: json_col(row, "labels")?,
        attempt: row.get("attempt")?,
        agent_id: row.get("agent_id")?,
        cancel_requested: row.get::<_, i64>("cancel_requested")? != 0,
        created_at: to_utc(row.get("created_at")?),
        updated_at: to_utc(row.get("updated_at")?),
        finished_at: row.get::<_, Option<i64>>("finished_at")?.map(to_utc),
        result: opt_json_col(row, "result")?,
        usage: opt_json_col(row, "usage")?,
        error: row.get("error")?,
        assignment: opt_json_col(row, "assignment")?,
        attempts: Vec::new(),
        waiting: None,
    })
}

pub(super) fn task_by_id(conn: &Connection, id: Uuid) -> StoreResult<Task> {
    conn.prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1"))?
        .query_row([id.to_string()], task_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
}

/// The columns a state change needs to decide and to report.
#[derive(Debug)]
pub(super) struct Current {
    pub(super) seq: i64,
    pub(super) id: Uuid,
    pub(super) state: TaskState,
    pub(super) attempt: u32,
    pub(super) retry_floor: u32,
    pub(super) lost_count: u32,
    pub(super) max_retries: u32,
    pub(super) agent_id: Option<String>,
    pub(super) lock_key: Option<String>,
    pub(super) cancel_requested: bool,
    pub(super) priority: i32,
    pub(super) capabilities: Vec<String>,
    pub(super) run_after: Option<i64>,
    pub(super) kind: String,
}

pub(super) const CURRENT_COLS: &str = "seq, id, state, attempt, retry_floor, lost_count, max_retries, agent_id, \
    lock_key, cancel_requested, priority, capabilities, run_after, kind";

pub(super) fn current_from_row(row: &Row<'_>) -> rusqlite::Result<Current> {
    Ok(Current {
        seq: row.get("seq")?,
        id: uuid_col(row, "id")?,
        state: enum_col(row, "state", TaskState::parse)?,
        attempt: row.get("attempt")?,
        retry_floor: row.get("retry_floor")?,
        lost_count: row.get("lost_count")?,
        max_retries: row.get("max_retries")?,
        agent_id: row.get("agent_id")?,
        lock_key: row.get("lock_key")?,
        cancel_requested: row.get::<_, i64>("cancel_requested")? != 0,
        priority: row.get("priority")?,
        capabilities: json_col(row, "capabilities")?,
        run_after: row.get("run_after")?,
        kind: row.get("kind")?,
    })
}

pub(super) fn current_by_id(conn: &Connection, id: Uuid) -> StoreResult<Current> {
    conn.prepare_cached(&format!("SELECT {CURRENT_COLS} FROM tasks WHERE id = ?1"))?
        .query_row([id.to_string()], current_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
}

pub(super) fn currents_where(
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
    pub(super) fn queued(&self, run_after: Option<i64>) -> QueuedTask {
        QueuedTask {
            seq: self.seq,
            kind: self.kind.clone(),
            priority: self.priority,
            capabilities: self.capabilities.clone(),
            lock_key: self.lock_key.clone(),
            run_after,
        }
    }

    pub(super) fn released(&self) -> Option<Released> {
        self.agent_id.clone().map(|agent_id| Released {
            agent_id,
            lock_key: self.lock_key.clone(),
        })
    }

    /// What the lifecycle rules need to know.
    pub(super) fn facts(&self) -> Facts {
        Facts {
            state: self.state,
            attempt: self.attempt,
            retry_floor: self.retry_floor,
            max_retries: self.max_retries,
            cancel_requested: self.cancel_requested,
            lost: self.lost_count,
        }
    }

    pub(super) fn change(&self, state: TaskState) -> Change {
        Change::new(self.id, state, self.attempt, self.agent_id.clone())
    }
}

pub(super) fn agent_from_row(row: &Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        agent_id: row.get("agent_id")?,
        host: row.get("host")?,
        port: row.get("port")?,
        capabilities: json_col(row, "capabilities")?,
        mcp_servers: json_col(row, "mcp_servers")?,
        max_concurrency: row.get("max_concurrency")?,
        labels: json_col(row, "labels")?,
        version: row.get("version")?,
        status: enum_col(row, "status", AgentStatus::parse)?,
        instance_id: row.get("instance_id")?,
        kinds: json_col(row, "kinds")?,
        drained_by: row.get("drained_by")?,
        registered_at: to_utc(row.get("registered_at")?),
        last_heartbeat_at: None,
        cpu_percent: None,
        memory_percent: None,
        active_tasks: row.get("active_tasks")?,
    })
}

pub(super) const AGENT_SELECT: &str = "SELECT a.agent_id, a.host, a.port, a.capabilities, a.mcp_servers, \
    a.max_concurrency, a.labels, a.version, a.status, a.instance_id, a.drained_by, a.kinds, \
    a.registered_at, \
    (SELECT count(*) FROM tasks t WHERE t.agent_id = a.agent_id \
       AND t.state IN ('assigned', 'running')) AS active_tasks FROM agents a";

pub(super) fn agent_by_id(conn: &Connection, agent_id: &str) -> StoreResult<Agent> {
    conn.prepare_cached(&format!("{AGENT_SELECT} WHERE a.agent_id = ?1"))?
        .query_row([agent_id], agent_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("agent {agent_id}")))
}

pub(super) fn task_ids(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<Uuid>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |row| uuid_col(row, "id"))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The position of a named column, for conversion errors (which rusqlite reports by index).
pub(super) fn column_index(row: &Row<'_>, col: &str) -> usize {
    row.as_ref().column_index(col).unwrap_or(usize::MAX)
}
