//! Agent operations on SQLite: registration, heartbeats (lease extension and cancel
//! requests), status, release (offline or removed, with their tasks handed back), and reads.

use muster_api::{Agent, AgentStatus, RegisterAgent, RunningTask, TaskState};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::rows::{AGENT_SELECT, agent_by_id, agent_from_row, currents_where, task_ids};
use super::tasks::{end_attempt, unassign};
use crate::error::StoreError;
use crate::lifecycle::Ending;
use crate::store::{Change, DispatchSnapshot, Released, RetryPolicy, StoreResult};

pub(super) fn register_agent(
    conn: &Connection,
    reg: RegisterAgent,
    now: i64,
) -> StoreResult<(Agent, bool)> {
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
}

pub(super) fn heartbeat(
    conn: &Connection,
    agent_id: &str,
    running: Option<Vec<RunningTask>>,
    lease_until: i64,
) -> StoreResult<Vec<Uuid>> {
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
}

pub(super) fn set_agent_status(
    conn: &Connection,
    agent_id: &str,
    status: AgentStatus,
    now: i64,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached("UPDATE agents SET status = ?2, updated_at = ?3 WHERE agent_id = ?1")?
        .execute(params![agent_id, status.as_str(), now])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("agent {agent_id}")));
    }
    Ok(())
}

pub(super) fn release_agent(
    conn: &Connection,
    agent_id: &str,
    delete: bool,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Vec<Change>> {
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
            changes.extend(end_attempt(conn, policy, &cur, Ending::Lost, &why, now)?);
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
}

pub(super) fn agents(conn: &Connection) -> StoreResult<Vec<Agent>> {
    let mut stmt = conn.prepare_cached(&format!("{AGENT_SELECT} ORDER BY a.agent_id"))?;
    let agents = stmt
        .query_map([], agent_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(agents)
}

pub(super) fn agent(conn: &Connection, agent_id: &str) -> StoreResult<Agent> {
    agent_by_id(conn, agent_id)
}

pub(super) fn snapshot(conn: &Connection) -> StoreResult<DispatchSnapshot> {
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
                agent_id: row.get("agent_id")?,
                lock_key: row.get("lock_key")?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(DispatchSnapshot { agents, active })
}
