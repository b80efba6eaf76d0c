//! GitOps deployments on SQLite: recording a push with its tasks, what a deployment task's end
//! sets off, pauses, redeploys and the reads. A deployment's state is not stored: it is read
//! from its tasks, so it can never disagree with them.
//!
//! A matched rule has one or two steps: with `check_first` its check-mode task, then its real
//! run; otherwise the real run alone. Only the first step is submitted with the deployment;
//! [`task_moved`], called in the transaction that ends a task, submits the real run when the
//! check completed. A rule whose source or rule is paused is held: nothing of it is submitted
//! until [`resume`]. Every task a deployment submitted is named in `deployment_tasks`.

use muster_api::{
    Deployment, DeploymentState, GitPause, PauseScope, PlannedRule, RuleOutcome, TaskState,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};
use uuid::Uuid;

use super::outbox::insert_outbox;
use super::rows::{json_col, uuid_col};
use super::tasks::insert_task;
use crate::audit::{Actor, AuditRecord};
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::notice::Notice;
use crate::store::{
    Change, DeploymentFilter, DeploymentRecorded, NewDeployment, NewTask, OutboxItem, PauseOrder,
    Resumed, StoreResult,
};

const COLS: &str = "seq, id, source, delivery, repo, clone_url, git_ref, branch, before_sha, \
                    sha, author, message, changed, complete, plan, created_at, redeploy_of, \
                    forge_status, forge_status_error";

const CHECK: &str = "check";
const RUN: &str = "run";

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
    insert(conn, new, None, now)
}

/// Inserts the deployment and submits the first step of each matched rule that no pause
/// holds; queues the forge's first commit status when the deployment sends them. The tasks'
/// ids are chosen first, so the row is written once, with its whole plan.
fn insert(
    conn: &Connection,
    new: NewDeployment,
    redeploy_of: Option<Uuid>,
    now: i64,
) -> StoreResult<DeploymentRecorded> {
    let mut plan = new.rules;
    let mut first_steps = Vec::new();
    for (index, rule) in plan.iter_mut().enumerate() {
        rule.task_id = None;
        rule.task_state = None;
        rule.check_task_id = None;
        rule.check_task_state = None;
        rule.held = false;
        if rule.outcome != RuleOutcome::Matched || rule.task.is_none() {
            continue;
        }
        if is_paused(conn, &new.source, &rule.rule)? {
            rule.held = true;
            continue;
        }
        first_steps.push((index, first_step(rule)));
    }
    let held = plan.iter().filter(|r| r.held).count() as i64;
    conn.prepare_cached(
        "INSERT INTO deployments (id, source, delivery, repo, clone_url, git_ref, branch, \
         before_sha, sha, author, message, changed, complete, plan, created_at, redeploy_of, \
         held, statuses) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        new.id.to_string(),
        new.source,
        new.delivery,
        new.repo,
        new.clone_url,
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
        redeploy_of.map(|id| id.to_string()),
        held,
        new.statuses,
    ])?;
    let seq = conn.last_insert_rowid();
    let mut changes = Vec::with_capacity(first_steps.len());
    for (index, (step, task)) in first_steps {
        changes.push(submit_step(conn, seq, index, step, task, now)?);
    }
    if new.statuses {
        insert_outbox(conn, &OutboxItem::commit_status(new.id), now)?;
    }
    Ok(DeploymentRecorded {
        deployment: deployment(conn, new.id)?,
        created: true,
        changes,
    })
}

/// A rule's first task (its check when it has one, else its real run), its id set on the rule.
fn first_step(rule: &mut PlannedRule) -> (&'static str, NewTask) {
    if let Some(check) = &rule.check_task {
        let task = NewTask::from_validated(check);
        rule.check_task_id = Some(task.id);
        return (CHECK, task);
    }
    let task = NewTask::from_validated(rule.task.as_ref().expect("a matched rule's task"));
    rule.task_id = Some(task.id);
    (RUN, task)
}

fn submit_step(
    conn: &Connection,
    seq: i64,
    index: usize,
    step: &str,
    task: NewTask,
    now: i64,
) -> StoreResult<Change> {
    let submitted = insert_task(conn, &task, now)?;
    let id = submitted.task.id;
    conn.prepare_cached(
        "INSERT INTO deployment_tasks (task_id, deployment_seq, rule_index, step) \
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id.to_string(), seq, index as i64, step])?;
    submitted
        .change
        .ok_or_else(|| StoreError::Conflict(format!("task {id} existed already")))
}

fn save_plan(conn: &Connection, seq: i64, plan: &[PlannedRule]) -> StoreResult<()> {
    let held = plan.iter().filter(|r| r.held).count() as i64;
    conn.prepare_cached("UPDATE deployments SET plan = ?2, held = ?3 WHERE seq = ?1")?
        .execute(params![seq, serde_json::to_string(plan)?, held])?;
    Ok(())
}

/// A task changed state in this transaction (it ended, or an operator queued it again). When
/// it belongs to a deployment: a completed check submits its rule's real run; the forge's
/// commit status is queued; a deployment that has now ended with failures queues a
/// `deployment.failed` notice. Answers the changes it made (the real run entering the queue).
pub(super) fn task_moved(
    conn: &Connection,
    task_id: Uuid,
    state: TaskState,
    now: i64,
) -> StoreResult<Vec<Change>> {
    let step: Option<(i64, i64, String)> = conn
        .prepare_cached(
            "SELECT deployment_seq, rule_index, step FROM deployment_tasks WHERE task_id = ?1",
        )?
        .query_row([task_id.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((seq, index, step)) = step else {
        return Ok(Vec::new());
    };
    let Some(mut stored) = by_seq(conn, seq)? else {
        return Ok(Vec::new());
    };
    let statuses = sends_statuses(conn, seq)?;
    let mut plan = std::mem::take(&mut stored.rules);
    let mut changes = Vec::new();
    if state == TaskState::Completed
        && step == CHECK
        && let Some(rule) = plan.get_mut(index as usize)
        && rule.task_id.is_none()
        && let Some(task) = &rule.task
    {
        let task = NewTask::from_validated(task);
        rule.task_id = Some(task.id);
        changes.push(submit_step(conn, seq, index as usize, RUN, task, now)?);
        save_plan(conn, seq, &plan)?;
    }
    let d = with_task_states(
        conn,
        Deployment {
            rules: plan,
            ..stored
        },
    )?;
    if statuses {
        insert_outbox(conn, &OutboxItem::commit_status(d.id), now)?;
    }
    if state.is_final() && ended(&d) && d.state == DeploymentState::Failed {
        let notice = Notice::deployment_failed(&d, failures(conn, &d)?, now);
        insert_outbox(conn, &OutboxItem::notice(&notice), now)?;
    }
    Ok(changes)
}

/// Each failed rule and its task's error.
fn failures(conn: &Connection, d: &Deployment) -> StoreResult<Vec<Value>> {
    let mut error_of = conn.prepare_cached("SELECT error FROM tasks WHERE id = ?1")?;
    let mut out = Vec::new();
    for rule in &d.rules {
        let failed = [
            (rule.check_task_id, rule.check_task_state, "check"),
            (rule.task_id, rule.task_state, "run"),
        ]
        .into_iter()
        .find(|(_, state, _)| matches!(state, Some(TaskState::Failed | TaskState::Cancelled)));
        if let Some((Some(id), state, step)) = failed {
            let error: Option<String> = error_of
                .query_row([id.to_string()], |r| r.get(0))
                .optional()?
                .flatten();
            let error = match state {
                Some(TaskState::Cancelled) => "cancelled".to_owned(),
                _ => error.unwrap_or_else(|| "failed".to_owned()),
            };
            out.push(json!({"rule": rule.rule, "step": step, "task": id, "error": error}));
        }
    }
    Ok(out)
}

/// How far one rule of a deployment got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// It submits nothing (skipped, refused).
    Nothing,
    /// Its tasks wait for a pause to end.
    Held,
    /// Its first task waits in the queue.
    Waiting,
    Working,
    Succeeded,
    Failed,
}

/// A task pruned by retention counts as completed: failures are kept as long as successes.
fn progress(rule: &PlannedRule) -> Progress {
    use TaskState::*;
    if rule.outcome != RuleOutcome::Matched || (rule.task.is_none() && rule.task_id.is_none()) {
        return Progress::Nothing;
    }
    if rule.held {
        return Progress::Held;
    }
    let state = |id: Option<Uuid>, s: Option<TaskState>| id.map(|_| s.unwrap_or(Completed));
    let check = state(rule.check_task_id, rule.check_task_state);
    let run = state(rule.task_id, rule.task_state);
    match (rule.check_task.is_some(), check, run) {
        (true, Some(Failed | Cancelled), _) => Progress::Failed,
        (true, Some(Queued | Assigned), None) => Progress::Waiting,
        (true, _, None) => Progress::Working,
        (_, _, Some(Failed | Cancelled)) => Progress::Failed,
        (_, _, Some(Completed)) => Progress::Succeeded,
        (false, _, Some(Queued | Assigned)) => Progress::Waiting,
        (_, _, Some(_)) => Progress::Working,
        (false, _, None) => Progress::Nothing,
    }
}

/// Whether every rule of `d` has come to an end.
fn ended(d: &Deployment) -> bool {
    d.rules.iter().all(|r| {
        matches!(
            progress(r),
            Progress::Nothing | Progress::Succeeded | Progress::Failed
        )
    })
}

fn state_of(rules: &[PlannedRule]) -> DeploymentState {
    let all: Vec<Progress> = rules
        .iter()
        .map(progress)
        .filter(|p| *p != Progress::Nothing)
        .collect();
    if all.is_empty() {
        DeploymentState::Skipped
    } else if all.contains(&Progress::Failed) {
        DeploymentState::Failed
    } else if all.contains(&Progress::Held) {
        DeploymentState::Paused
    } else if all.iter().all(|p| *p == Progress::Succeeded) {
        DeploymentState::Succeeded
    } else if all.iter().all(|p| *p == Progress::Waiting) {
        DeploymentState::Pending
    } else {
        DeploymentState::Running
    }
}

pub(super) fn redeploy(
    conn: &Connection,
    of: Uuid,
    id: Uuid,
    statuses: bool,
    actor: &Actor,
    now: i64,
) -> StoreResult<DeploymentRecorded> {
    let d = conn
        .prepare_cached(&format!("SELECT {COLS} FROM deployments WHERE id = ?1"))?
        .query_row([of.to_string()], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {of}")))?;
    if !d.rules.iter().any(|r| r.task.is_some()) {
        return Err(StoreError::Conflict(format!(
            "deployment {of} submitted no task, so there is nothing to redeploy"
        )));
    }
    let record = AuditRecord::deployment_redeployed(now, actor.clone(), of, id, &d.sha);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    let new = NewDeployment {
        id,
        source: d.source,
        delivery: format!("redeploy:{id}"),
        repo: d.repo,
        clone_url: d.clone_url,
        git_ref: d.git_ref,
        branch: d.branch,
        before: d.before,
        sha: d.sha,
        author: d.author,
        message: d.message,
        changed: d.changed,
        complete: d.complete,
        statuses,
        rules: d.rules,
    };
    insert(conn, new, Some(of), now)
}

fn is_paused(conn: &Connection, source: &str, rule: &str) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM gitops_pauses WHERE (scope = 'source' AND name = ?1) \
             OR (scope = 'rule' AND name = ?2)",
        )?
        .query_row(params![source, rule], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn pause(conn: &Connection, order: &PauseOrder, now: i64) -> StoreResult<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO gitops_pauses (scope, name, paused_at, paused_by) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            order.scope.as_str(),
            order.name,
            now,
            order.actor.as_text()
        ])?;
    if inserted > 0 {
        let record =
            AuditRecord::gitops_paused(now, order.actor.clone(), order.scope, &order.name, true, 0);
        insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    }
    Ok(inserted > 0)
}

/// Ends a pause and submits the first step of every rule it no longer holds (another pause,
/// of the rule's source or of the rule, may still hold it), oldest deployment first so that
/// deployments of one lock key keep their push order.
pub(super) fn resume(conn: &Connection, order: &PauseOrder, now: i64) -> StoreResult<Resumed> {
    let deleted = conn
        .prepare_cached("DELETE FROM gitops_pauses WHERE scope = ?1 AND name = ?2")?
        .execute(params![order.scope.as_str(), order.name])?;
    if deleted == 0 {
        return Ok(Resumed::default());
    }
    let mut changes = Vec::new();
    let held: Vec<i64> = conn
        .prepare_cached("SELECT seq FROM deployments WHERE held > 0 ORDER BY seq")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for seq in held {
        let Some(stored) = by_seq(conn, seq)? else {
            continue;
        };
        let source = stored.source;
        let mut plan = stored.rules;
        let mut released = false;
        for (index, rule) in plan.iter_mut().enumerate() {
            if !rule.held || is_paused(conn, &source, &rule.rule)? {
                continue;
            }
            rule.held = false;
            let (step, task) = first_step(rule);
            changes.push(submit_step(conn, seq, index, step, task, now)?);
            released = true;
        }
        if released {
            save_plan(conn, seq, &plan)?;
            if sends_statuses(conn, seq)? {
                insert_outbox(conn, &OutboxItem::commit_status(stored.id), now)?;
            }
        }
    }
    let record = AuditRecord::gitops_paused(
        now,
        order.actor.clone(),
        order.scope,
        &order.name,
        false,
        changes.len(),
    );
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    Ok(Resumed {
        changed: true,
        changes,
    })
}

pub(super) fn pauses(conn: &Connection) -> StoreResult<Vec<GitPause>> {
    conn.prepare_cached(
        "SELECT scope, name, paused_at, paused_by FROM gitops_pauses ORDER BY scope, name",
    )?
    .query_map([], |r| {
        let scope: String = r.get(0)?;
        Ok(GitPause {
            scope: if scope == "rule" {
                PauseScope::Rule
            } else {
                PauseScope::Source
            },
            name: r.get(1)?,
            paused_at: to_utc(r.get(2)?),
            paused_by: r.get(3)?,
        })
    })?
    .collect::<Result<_, _>>()
    .map_err(Into::into)
}

pub(super) fn set_forge_status(
    conn: &Connection,
    id: Uuid,
    state: Option<String>,
    error: Option<String>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE deployments SET forge_status = coalesce(?2, forge_status), \
         forge_status_error = ?3 WHERE id = ?1",
    )?
    .execute(params![id.to_string(), state, error])?;
    Ok(())
}

pub(super) fn deployment(conn: &Connection, id: Uuid) -> StoreResult<Deployment> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLS} FROM deployments WHERE id = ?1"))?
        .query_row([id.to_string()], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
    with_task_states(conn, row)
}

pub(super) fn by_delivery(
    conn: &Connection,
    source: &str,
    delivery: &str,
) -> StoreResult<Deployment> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM deployments WHERE source = ?1 AND delivery = ?2"
        ))?
        .query_row(params![source, delivery], from_row)
        .optional()?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "delivery {delivery:?} of source {source:?} (only pushes that deployed \
                 something are recorded, for as long as RETENTION keeps them)"
            ))
        })?;
    with_task_states(conn, row)
}

/// Whether deployment `seq` sends commit statuses (its source had a status API when the push
/// came).
fn sends_statuses(conn: &Connection, seq: i64) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached("SELECT statuses FROM deployments WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))?)
}

fn by_seq(conn: &Connection, seq: i64) -> StoreResult<Option<Deployment>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLS} FROM deployments WHERE seq = ?1"))?
        .query_row([seq], from_row)
        .optional()?)
}

/// Rows read per step of a list filtered by state.
const LIST_STEP: usize = 200;
/// Most rows one list reads when filtering by state, so a state no deployment is in costs a
/// bounded scan; the page is then short, and its cursor goes on from where the scan stopped.
const LIST_SCAN: usize = 10_000;

pub(super) fn list(conn: &Connection, filter: &DeploymentFilter) -> StoreResult<Vec<Deployment>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM deployments \
         WHERE (?1 IS NULL OR repo = ?1) AND (?2 IS NULL OR source = ?2) \
         AND (?3 IS NULL OR seq < ?3) \
         AND (?4 IS NULL OR EXISTS (SELECT 1 FROM json_each(plan) r \
             WHERE json_extract(r.value, '$.rule') = ?4 \
             AND json_extract(r.value, '$.outcome') = 'matched')) \
         ORDER BY seq DESC LIMIT ?5"
    ))?;
    let mut before: Option<i64> = match filter.before {
        Some(id) => Some(
            conn.prepare_cached("SELECT seq FROM deployments WHERE id = ?1")?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()?
                .unwrap_or(i64::MIN),
        ),
        None => None,
    };
    let step = if filter.state.is_some() {
        LIST_STEP.max(filter.limit)
    } else {
        filter.limit
    };
    let mut out = Vec::new();
    let mut scanned = 0;
    loop {
        let rows = stmt
            .query_map(
                params![filter.repo, filter.source, before, filter.rule, step as i64],
                |row| Ok((row.get::<_, i64>("seq")?, from_row(row)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let exhausted = rows.len() < step;
        scanned += rows.len();
        for (seq, row) in rows {
            before = Some(seq);
            let d = with_task_states(conn, row)?;
            if filter.state.is_none_or(|state| d.state == state) {
                out.push(d);
                if out.len() == filter.limit {
                    return Ok(out);
                }
            }
        }
        if exhausted || filter.state.is_none() || scanned >= LIST_SCAN {
            return Ok(out);
        }
    }
}

/// Deployments deleted per retention transaction.
const PRUNE_BATCH: i64 = 500;

/// Deletes a batch of deployments recorded before `before` whose tasks have all ended (or
/// were pruned already) and that no pause holds: a deployment at work or waiting stays,
/// whatever its age.
pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<u64> {
    let seqs: Vec<i64> = conn
        .prepare_cached(
            "SELECT d.seq FROM deployments d WHERE d.created_at < ?1 AND d.held = 0 \
             AND NOT EXISTS (SELECT 1 FROM deployment_tasks s JOIN tasks t \
                 ON t.id = s.task_id WHERE s.deployment_seq = d.seq \
                 AND t.state IN ('queued', 'assigned', 'running')) \
             ORDER BY d.seq LIMIT ?2",
        )?
        .query_map(params![before, PRUNE_BATCH], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for seq in &seqs {
        conn.prepare_cached("DELETE FROM deployment_tasks WHERE deployment_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM deployments WHERE seq = ?1")?
            .execute([seq])?;
    }
    Ok(seqs.len() as u64)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    let redeploy_of: Option<String> = row.get("redeploy_of")?;
    Ok(Deployment {
        id: uuid_col(row, "id")?,
        source: row.get("source")?,
        delivery: row.get("delivery")?,
        repo: row.get("repo")?,
        clone_url: row.get("clone_url")?,
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
        redeploy_of: redeploy_of.and_then(|id| id.parse().ok()),
        forge_status: row.get("forge_status")?,
        forge_status_error: row.get("forge_status_error")?,
    })
}

/// Fills each rule's task states and the deployment's state from its tasks.
fn with_task_states(conn: &Connection, mut d: Deployment) -> StoreResult<Deployment> {
    let mut state_of_task = conn.prepare_cached("SELECT state FROM tasks WHERE id = ?1")?;
    let mut read = |id: Option<Uuid>| -> StoreResult<Option<TaskState>> {
        let Some(id) = id else { return Ok(None) };
        let state: Option<String> = state_of_task
            .query_row([id.to_string()], |r| r.get(0))
            .optional()?;
        Ok(state.as_deref().and_then(TaskState::parse))
    };
    for rule in &mut d.rules {
        rule.check_task_state = read(rule.check_task_id)?;
        rule.task_state = read(rule.task_id)?;
    }
    d.state = state_of(&d.rules);
    Ok(d)
}
