//! Rows to types, by column names (positions derived from them at compile time on the hot
//! paths): the task and agent mappings, and [`Current`], the few
//! columns a state change reads to decide and to report.

use muster_api::{Agent, AgentStatus, Task, TaskState};
use rusqlite::{Connection, OptionalExtension, Row, RowIndex};
use uuid::Uuid;

use crate::clock::to_utc;
use crate::error::StoreError;
use crate::lifecycle::Facts;
use crate::store::{Change, QueuedTask, Released, StoreResult};

/// A set of columns read together: `LIST` for the SELECT, and one constant per column holding
/// its position in `LIST`, so code names every column while reading it costs no lookup by
/// name (which rusqlite does by comparing every column's name, for every value of every row).
macro_rules! columns {
    ($(#[$doc:meta])* $vis:vis mod $name:ident { $($col:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[allow(non_upper_case_globals, dead_code)]
        $vis mod $name {
            /// The columns, in the order of the constants below.
            pub(crate) const LIST: &str = columns!(@list $($col),+);
            columns!(@index 0usize; $($col),+);
        }
    };
    (@list $first:ident $(, $rest:ident)*) => {
        concat!(stringify!($first) $(, ", ", stringify!($rest))*)
    };
    (@index $n:expr; $col:ident $(, $rest:ident)*) => {
        pub(crate) const $col: usize = $n;
        columns!(@index $n + 1usize; $($rest),*);
    };
    (@index $n:expr;) => {};
}

columns! {
    /// What [`task_from_row`] reads (and `seq`, the task's handle in the store).
    pub(super) mod task_col {
        id, kind, state, payload, capabilities, priority, max_retries, timeout_s, lock_key,
        idempotency_key, run_after, labels, attempt, agent_id, cancel_requested, created_at,
        updated_at, finished_at, result, usage, error, assignment, seq,
    }
}

/// The columns [`task_from_row`] reads.
pub(super) const TASK_COLS: &str = task_col::LIST;

pub(super) fn json_col<T: serde::de::DeserializeOwned, I: RowIndex + Copy>(
    row: &Row<'_>,
    col: I,
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

pub(super) fn opt_json_col<T: serde::de::DeserializeOwned, I: RowIndex + Copy>(
    row: &Row<'_>,
    col: I,
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

pub(super) fn enum_col<T, I: RowIndex + Copy>(
    row: &Row<'_>,
    col: I,
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

pub(super) fn uuid_col<I: RowIndex + Copy>(row: &Row<'_>, col: I) -> rusqlite::Result<Uuid> {
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
        id: uuid_col(row, task_col::id)?,
        kind: row.get(task_col::kind)?,
        state: enum_col(row, task_col::state, TaskState::parse)?,
        payload: json_col(row, task_col::payload)?,
        capabilities: json_col(row, task_col::capabilities)?,
        priority: row.get(task_col::priority)?,
        max_retries: row.get(task_col::max_retries)?,
        timeout_s: row.get(task_col::timeout_s)?,
        lock_key: row.get(task_col::lock_key)?,
        idempotency_key: row.get(task_col::idempotency_key)?,
        run_after: row.get::<_, Option<i64>>(task_col::run_after)?.map(to_utc),
        labels: json_col(row, task_col::labels)?,
        attempt: row.get(task_col::attempt)?,
        agent_id: row.get(task_col::agent_id)?,
        cancel_requested: row.get::<_, i64>(task_col::cancel_requested)? != 0,
        created_at: to_utc(row.get(task_col::created_at)?),
        updated_at: to_utc(row.get(task_col::updated_at)?),
        finished_at: row
            .get::<_, Option<i64>>(task_col::finished_at)?
            .map(to_utc),
        result: opt_json_col(row, task_col::result)?,
        usage: opt_json_col(row, task_col::usage)?,
        error: row.get(task_col::error)?,
        assignment: opt_json_col(row, task_col::assignment)?,
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

columns! {
    /// What [`current_from_row`] reads.
    pub(super) mod current_col {
        seq, id, state, attempt, retry_floor, lost_count, max_retries, agent_id, lock_key,
        cancel_requested, priority, capabilities, run_after, kind,
    }
}

pub(super) const CURRENT_COLS: &str = current_col::LIST;

pub(super) fn current_from_row(row: &Row<'_>) -> rusqlite::Result<Current> {
    Ok(Current {
        seq: row.get(current_col::seq)?,
        id: uuid_col(row, current_col::id)?,
        state: enum_col(row, current_col::state, TaskState::parse)?,
        attempt: row.get(current_col::attempt)?,
        retry_floor: row.get(current_col::retry_floor)?,
        lost_count: row.get(current_col::lost_count)?,
        max_retries: row.get(current_col::max_retries)?,
        agent_id: row.get(current_col::agent_id)?,
        lock_key: row.get(current_col::lock_key)?,
        cancel_requested: row.get::<_, i64>(current_col::cancel_requested)? != 0,
        priority: row.get(current_col::priority)?,
        capabilities: json_col(row, current_col::capabilities)?,
        run_after: row.get(current_col::run_after)?,
        kind: row.get(current_col::kind)?,
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

/// The position of a column, for conversion errors (which rusqlite reports by index).
pub(super) fn column_index<I: RowIndex>(row: &Row<'_>, col: I) -> usize {
    col.idx(row.as_ref()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_column_constant_is_its_position_in_the_list() {
        let task: Vec<&str> = task_col::LIST.split(", ").collect();
        assert_eq!(task[task_col::id], "id");
        assert_eq!(task[task_col::assignment], "assignment");
        assert_eq!(task[task_col::seq], "seq");
        assert_eq!(task.len(), task_col::seq + 1);
        let current: Vec<&str> = current_col::LIST.split(", ").collect();
        assert_eq!(current[current_col::lost_count], "lost_count");
        assert_eq!(current[current_col::kind], "kind");
    }
}
