//! Agent operations on SQLite: registration, heartbeats (lease extension and cancel
//! requests), status, release (offline or removed, with their tasks handed back), and reads.

use muster_api::{Agent, AgentStatus, RegisterAgent, RunningTask, TaskState};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::outbox::insert_outbox;
use super::rows::{AGENT_SELECT, agent_by_id, agent_from_row, currents_where, task_ids};
use super::tasks::{end_attempt, unassign};
use crate::audit::{Actor, AuditRecord, Via};
use crate::error::StoreError;
use crate::lifecycle::Ending;
use crate::notice::Notice;
use crate::store::{
    AgentRegistered, Change, DispatchSnapshot, DrainBy, OutboxItem, Released, RetryPolicy,
    StoreResult,
};

/// Inserts or updates the agent. A registration from a new process (a different
/// `instance_id`) gives the previous process's tasks back at once, and undoes a drain that
/// process made of itself; an operator's drain stays.
pub(super) fn register_agent(
    conn: &Connection,
    reg: RegisterAgent,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<AgentRegistered> {
    let before: Option<(Option<String>, Option<String>, String)> = conn
        .prepare_cached("SELECT instance_id, drained_by, status FROM agents WHERE agent_id = ?1")?
        .query_row([&reg.agent_id], |row| {
            Ok((
                row.get("instance_id")?,
                row.get("drained_by")?,
                row.get("status")?,
            ))
        })
        .optional()?;
    let created = before.is_none();
    let was_offline = before
        .as_ref()
        .is_some_and(|(_, _, status)| status == AgentStatus::Offline.as_str());
    let (old_instance, mut drained_by, _) = before.unwrap_or_default();
    let new_process =
        matches!((&old_instance, &reg.instance_id), (Some(old), Some(new)) if old != new);
    let mut changes = Vec::new();
    if new_process {
        let why = format!("agent {} started again (a new process)", reg.agent_id);
        changes = give_back_tasks(conn, &reg.agent_id, &why, now, policy)?;
        if drained_by.as_deref() == Some(DRAINED_BY_AGENT) {
            drained_by = None;
        }
    }
    let status = if drained_by.is_some() {
        AgentStatus::Draining
    } else {
        AgentStatus::Online
    };
    let mut capabilities = reg.capabilities.clone();
    capabilities.sort();
    capabilities.dedup();
    let mut kinds = reg.kinds.clone();
    kinds.sort();
    kinds.dedup();
    conn.prepare_cached(
        "INSERT INTO agents (agent_id, host, port, capabilities, mcp_servers, \
         max_concurrency, labels, version, status, instance_id, drained_by, kinds, \
         registered_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?13, \
         ?12, ?12) \
         ON CONFLICT (agent_id) DO UPDATE SET host = excluded.host, port = excluded.port, \
         capabilities = excluded.capabilities, mcp_servers = excluded.mcp_servers, \
         max_concurrency = excluded.max_concurrency, labels = excluded.labels, \
         version = excluded.version, status = excluded.status, \
         instance_id = excluded.instance_id, drained_by = excluded.drained_by, \
         kinds = excluded.kinds, \
         updated_at = excluded.updated_at",
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
        status.as_str(),
        reg.instance_id,
        drained_by,
        now,
        serde_json::to_string(&kinds)?
    ])?;
    let record =
        AuditRecord::agent_registered(now, &reg.agent_id, &reg.host, &capabilities, created);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    if created || was_offline {
        let notice = Notice::agent_online(&reg.agent_id, &reg.host, created, now);
        insert_outbox(conn, &OutboxItem::notice(&notice), now)?;
    }
    Ok(AgentRegistered {
        agent: agent_by_id(conn, &reg.agent_id)?,
        created,
        changes,
    })
}

const DRAINED_BY_AGENT: &str = "agent";
const DRAINED_BY_OPERATOR: &str = "operator";

/// Drains the agent: by an operator (until undrained), or by the agent's current process
/// itself, which must name its `instance_id`.
pub(super) fn drain_agent(
    conn: &Connection,
    agent_id: &str,
    by: DrainBy,
    now: i64,
) -> StoreResult<Agent> {
    let current: Option<String> = conn
        .prepare_cached("SELECT instance_id FROM agents WHERE agent_id = ?1")?
        .query_row([agent_id], |row| row.get("instance_id"))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("agent {agent_id}")))?;
    let (drained_by, actor) = match &by {
        DrainBy::Operator(via) => (DRAINED_BY_OPERATOR, Actor::operator(*via)),
        DrainBy::Instance(instance) => {
            if current.as_deref() != Some(instance.as_str()) {
                return Err(StoreError::Conflict(format!(
                    "instance_id {instance:?} is not the current process of agent {agent_id}"
                )));
            }
            (DRAINED_BY_AGENT, Actor::agent(agent_id))
        }
    };
    // An operator's drain is never weakened into an agent's own.
    conn.prepare_cached(
        "UPDATE agents SET drained_by = CASE WHEN drained_by = 'operator' THEN 'operator' \
         ELSE ?2 END, status = CASE WHEN status = 'offline' THEN 'offline' ELSE 'draining' END, \
         updated_at = ?3 WHERE agent_id = ?1",
    )?
    .execute(params![agent_id, drained_by, now])?;
    let record = AuditRecord::agent_drained(now, actor, agent_id);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    agent_by_id(conn, agent_id)
}

/// Ends a drain, whoever made it.
pub(super) fn undrain_agent(
    conn: &Connection,
    agent_id: &str,
    via: Via,
    now: i64,
) -> StoreResult<Agent> {
    let n = conn
        .prepare_cached(
            "UPDATE agents SET drained_by = NULL, status = CASE WHEN status = 'offline' \
             THEN 'offline' ELSE 'online' END, updated_at = ?2 WHERE agent_id = ?1",
        )?
        .execute(params![agent_id, now])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("agent {agent_id}")));
    }
    let record = AuditRecord::agent_undrained(now, Actor::operator(via), agent_id);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    agent_by_id(conn, agent_id)
}

pub(super) fn heartbeat(
    conn: &Connection,
    agent_id: &str,
    running: Option<Vec<RunningTask>>,
    lease_until: i64,
    unlisted_cap_ms: i64,
) -> StoreResult<Vec<Uuid>> {
    if !conn
        .prepare_cached("SELECT 1 FROM agents WHERE agent_id = ?1")?
        .exists([&agent_id])?
    {
        return Err(StoreError::NotFound(format!("agent {agent_id}")));
    }
    if running.is_none() {
        // It does not say what it runs, so it cannot tell us it forgot a task (a restart):
        // leases grow only to the task's own timeout, or the cap, after its start.
        conn.prepare_cached(
            "UPDATE tasks SET lease_until = max(coalesce(lease_until, 0), \
             min(?2, started_at + coalesce(timeout_s * 1000, ?3))) \
             WHERE agent_id = ?1 AND state IN ('assigned', 'running') AND state = 'running'",
        )?
        .execute(params![agent_id, lease_until, unlisted_cap_ms])?;
    }
    let mut cancel = task_ids(
        conn,
        "SELECT id FROM tasks WHERE agent_id = ?1 AND state IN ('assigned', 'running') \
         AND state = 'running' \
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

/// An agent that was offline is heard from again: online, or draining if it is drained.
pub(super) fn agent_back(conn: &Connection, agent_id: &str, now: i64) -> StoreResult<AgentStatus> {
    let host: Option<String> = conn
        .prepare_cached(
            "UPDATE agents SET status = CASE WHEN drained_by IS NULL THEN 'online' \
             ELSE 'draining' END, updated_at = ?2 WHERE agent_id = ?1 AND status = 'offline' \
             RETURNING host",
        )?
        .query_row(params![agent_id, now], |row| row.get(0))
        .optional()?;
    if let Some(host) = host {
        let notice = Notice::agent_online(agent_id, &host, false, now);
        insert_outbox(conn, &OutboxItem::notice(&notice), now)?;
    } else {
        require_agent(conn, agent_id)?;
    }
    Ok(agent_by_id(conn, agent_id)?.status)
}

/// Hands the agent's assigned tasks back to the queue and ends its running attempts as lost.
fn give_back_tasks(
    conn: &Connection,
    agent_id: &str,
    why: &str,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Vec<Change>> {
    let mut changes = Vec::new();
    for cur in currents_where(
        conn,
        "agent_id = ?1 AND state IN ('assigned', 'running')",
        &[&agent_id],
    )? {
        if cur.state == TaskState::Assigned {
            changes.extend(unassign(conn, &cur, now)?);
        } else {
            changes.extend(end_attempt(conn, policy, &cur, Ending::Lost, why, now)?);
        }
    }
    Ok(changes)
}

fn require_agent(conn: &Connection, agent_id: &str) -> StoreResult<()> {
    if conn
        .prepare_cached("SELECT 1 FROM agents WHERE agent_id = ?1")?
        .exists([agent_id])?
    {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!("agent {agent_id}")))
    }
}

/// The agent stopped heartbeating: offline (a drain is kept), its tasks handed back.
pub(super) fn agent_offline(
    conn: &Connection,
    agent_id: &str,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Vec<Change>> {
    require_agent(conn, agent_id)?;
    let why = format!("agent {agent_id} went offline");
    let changes = give_back_tasks(conn, agent_id, &why, now, policy)?;
    let host: Option<String> = conn
        .prepare_cached(
            "UPDATE agents SET status = 'offline', updated_at = ?2 \
             WHERE agent_id = ?1 AND status != 'offline' RETURNING host",
        )?
        .query_row(params![agent_id, now], |row| row.get(0))
        .optional()?;
    if let Some(host) = host {
        let notice = Notice::agent_offline(agent_id, &host, now);
        insert_outbox(conn, &OutboxItem::notice(&notice), now)?;
    }
    Ok(changes)
}

/// An operator removed the agent: forgotten, its tasks handed back.
pub(super) fn remove_agent(
    conn: &Connection,
    agent_id: &str,
    via: Via,
    now: i64,
    policy: &RetryPolicy,
) -> StoreResult<Vec<Change>> {
    require_agent(conn, agent_id)?;
    let why = format!("agent {agent_id} was removed");
    let changes = give_back_tasks(conn, agent_id, &why, now, policy)?;
    conn.prepare_cached("DELETE FROM agents WHERE agent_id = ?1")?
        .execute([agent_id])?;
    let record = AuditRecord::agent_removed(now, Actor::operator(via), agent_id, changes.len());
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
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
