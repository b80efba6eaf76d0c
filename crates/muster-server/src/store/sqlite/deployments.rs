//! GitOps deployments on SQLite: recording a push with its tasks, and the reads. A
//! deployment's state is not stored: it is read from its tasks, so it can never disagree with
//! them.

use muster_api::{Deployment, DeploymentState, TaskState};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::rows::{json_col, uuid_col};
use super::tasks::insert_task;
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::store::{DeploymentFilter, DeploymentRecorded, NewDeployment, StoreResult};

const COLS: &str = "seq, id, source, delivery, repo, git_ref, branch, before_sha, sha, author, \
                    message, changed, complete, plan, created_at";

pub(super) fn record(
    conn: &Connection,
    new: NewDeployment,
    now: i64,
) -> StoreResult<DeploymentRecorded> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM deployments WHERE source = ?1 AND delivery = ?2"
        ))?
        .query_row(params![new.source, new.delivery], from_row)
        .optional()?;
    if let Some(first) = existing {
        return Ok(DeploymentRecorded {
            deployment: with_task_states(conn, first)?,
            created: false,
            changes: Vec::new(),
        });
    }
    let mut plan = Vec::with_capacity(new.rules.len());
    let mut changes = Vec::new();
    for (mut rule, task) in new.rules {
        if let Some(task) = task {
            let submitted = insert_task(conn, &task, now)?;
            rule.task_id = Some(submitted.task.id);
            changes.extend(submitted.change);
        }
        rule.task_state = None;
        plan.push(rule);
    }
    conn.prepare_cached(
        "INSERT INTO deployments (id, source, delivery, repo, git_ref, branch, before_sha, sha, \
         author, message, changed, complete, plan, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        new.id.to_string(),
        new.source,
        new.delivery,
        new.repo,
        new.git_ref,
        new.branch,
        new.before,
        new.sha,
        new.author,
        new.message,
        serde_json::to_string(&new.changed)?,
        new.complete,
        serde_json::to_string(&plan)?,
        now,
    ])?;
    let deployment = deployment(conn, new.id)?;
    Ok(DeploymentRecorded {
        deployment,
        created: true,
        changes,
    })
}

pub(super) fn deployment(conn: &Connection, id: Uuid) -> StoreResult<Deployment> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLS} FROM deployments WHERE id = ?1"))?
        .query_row([id.to_string()], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
    with_task_states(conn, row)
}

pub(super) fn list(conn: &Connection, filter: &DeploymentFilter) -> StoreResult<Vec<Deployment>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM deployments \
             WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR source = ?2) \
             AND (?3 IS NULL OR seq < (SELECT seq FROM deployments WHERE id = ?3)) \
             ORDER BY seq DESC LIMIT ?4"
        ))?
        .query_map(
            params![
                filter.repo,
                filter.source,
                filter.before.map(|id| id.to_string()),
                filter.limit as i64
            ],
            from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|row| with_task_states(conn, row))
        .collect()
}

/// Deployments deleted per retention transaction.
const PRUNE_BATCH: i64 = 500;

/// Deletes a batch of deployments recorded before `before` whose tasks have all ended (or
/// were pruned already): a deployment still at work stays, whatever its age.
pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<u64> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM deployments WHERE seq IN (SELECT d.seq FROM deployments d \
             WHERE d.created_at < ?1 AND NOT EXISTS ( \
                 SELECT 1 FROM json_each(d.plan) r JOIN tasks t \
                 ON t.id = json_extract(r.value, '$.task_id') \
                 WHERE t.state IN ('queued', 'assigned', 'running')) \
             ORDER BY d.seq LIMIT ?2)",
        )?
        .execute(params![before, PRUNE_BATCH])?;
    Ok(deleted as u64)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: uuid_col(row, "id")?,
        source: row.get("source")?,
        delivery: row.get("delivery")?,
        repo: row.get("repo")?,
        git_ref: row.get("git_ref")?,
        branch: row.get("branch")?,
        before: row.get("before_sha")?,
        sha: row.get("sha")?,
        author: row.get("author")?,
        message: row.get("message")?,
        changed: json_col(row, "changed")?,
        complete: row.get("complete")?,
        state: DeploymentState::Skipped,
        created_at: to_utc(row.get("created_at")?),
        rules: json_col(row, "plan")?,
    })
}

/// Fills each rule's task state and the deployment's state from its tasks (a task pruned by
/// retention counts as it ended: completed, since failures are kept as long as successes).
fn with_task_states(conn: &Connection, mut d: Deployment) -> StoreResult<Deployment> {
    let mut state_of = conn.prepare_cached("SELECT state FROM tasks WHERE id = ?1")?;
    let mut states = Vec::new();
    for rule in &mut d.rules {
        let Some(id) = rule.task_id else { continue };
        let state: Option<String> = state_of
            .query_row([id.to_string()], |r| r.get(0))
            .optional()?;
        rule.task_state = state.as_deref().and_then(TaskState::parse);
        states.push(rule.task_state);
    }
    d.state = state_from(&states);
    Ok(d)
}

fn state_from(tasks: &[Option<TaskState>]) -> DeploymentState {
    use TaskState::*;
    if tasks.is_empty() {
        return DeploymentState::Skipped;
    }
    let states: Vec<TaskState> = tasks.iter().map(|s| s.unwrap_or(Completed)).collect();
    if states.iter().any(|s| matches!(s, Failed | Cancelled)) {
        DeploymentState::Failed
    } else if states.iter().all(|s| *s == Completed) {
        DeploymentState::Succeeded
    } else if states.iter().all(|s| *s == Queued) {
        DeploymentState::Pending
    } else {
        DeploymentState::Running
    }
}
