//! Incidents on SQLite: alerts opening, folding into and resolving incidents; an incident's
//! conditional steps, each with its event (its story, and the audit log) and, for a repair,
//! its task submitted in the same transaction unless a pause, the target's hourly cap or its
//! cooldown holds it; a repair task's end moving its incident on ([`task_moved`], called in the
//! transaction that ends the task); pauses; the reads.

use muster_api::{Incident, IncidentEvent, IncidentState, RepairChoice, RepairPause, TaskState};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};
use uuid::Uuid;

use super::outbox::insert_outbox;
use super::rows::{json_col, uuid_col};
use super::tasks::insert_task;
use crate::audit::{Actor, AuditRecord};
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::notice::{self, Notice};
use crate::store::{
    AlertEffect, AlertIn, AlertRecorded, IncidentFilter, IncidentStep, OutboxItem,
    REPAIR_TASK_KIND, RepairHeld, Stepped, StoreResult,
};

const COLS: &str = "seq, id, source, alert_key, monitor, target, state, reason, message, labels, \
                    url, alerts, steps, max_steps, choice, task_id, approval_expires_at, due_at, \
                    opened_at, updated_at, closed_at";

const HOUR_MS: i64 = 3_600_000;
/// The pause of all of self-repair, in `repair_pauses`.
const ALL: &str = "*";

fn from_row(row: &Row<'_>) -> rusqlite::Result<(i64, Incident)> {
    let state: String = row.get(6)?;
    let choice: Option<String> = row.get(14)?;
    let task: Option<String> = row.get(15)?;
    let at = |col: usize| -> rusqlite::Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(row.get::<_, Option<i64>>(col)?.map(to_utc))
    };
    Ok((
        row.get(0)?,
        Incident {
            id: uuid_col(row, 1)?,
            source: row.get(2)?,
            key: row.get(3)?,
            monitor: row.get(4)?,
            target: row.get(5)?,
            state: IncidentState::parse(&state).unwrap_or(IncidentState::Escalated),
            reason: row.get(7)?,
            message: row.get(8)?,
            labels: json_col(row, 9)?,
            url: row.get(10)?,
            alerts: row.get(11)?,
            steps: row.get(12)?,
            max_steps: row.get(13)?,
            choice: choice.and_then(|c| serde_json::from_str::<RepairChoice>(&c).ok()),
            task_id: task.and_then(|t| Uuid::parse_str(&t).ok()),
            approval_expires_at: at(16)?,
            due_at: at(17)?,
            repairs_last_hour: 0,
            max_repairs_per_hour: 0,
            opened_at: to_utc(row.get(18)?),
            updated_at: to_utc(row.get(19)?),
            closed_at: at(20)?,
            events: Vec::new(),
            notifications: Vec::new(),
        },
    ))
}

fn by_id(conn: &Connection, id: Uuid) -> StoreResult<(i64, Incident)> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM incidents WHERE id = ?1"))?
        .query_row([id.to_string()], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("incident {id}")))
}

fn by_seq(conn: &Connection, seq: i64) -> StoreResult<Incident> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLS} FROM incidents WHERE seq = ?1"))?
        .query_row([seq], from_row)?
        .1)
}

/// Repairs `target` started since `since`.
fn repairs_of(conn: &Connection, target: &str, since: i64) -> StoreResult<u32> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM repairs WHERE target = ?1 AND started_at > ?2")?
        .query_row(params![target, since], |r| r.get(0))?)
}

fn with_counts(conn: &Connection, mut incident: Incident, now: i64) -> StoreResult<Incident> {
    if let Some(target) = &incident.target {
        incident.repairs_last_hour = repairs_of(conn, target, now - HOUR_MS)?;
    }
    Ok(incident)
}

/// Appends an event to the incident's story and the same record to the audit log.
#[allow(clippy::too_many_arguments)]
fn event(
    conn: &Connection,
    seq: i64,
    id: Uuid,
    actor: &Actor,
    kind: &str,
    message: &str,
    data: &Value,
    now: i64,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO incident_events (incident_seq, at, kind, actor, message, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        seq,
        now,
        kind,
        actor.as_text(),
        message,
        serde_json::to_string(data)?
    ])?;
    let mut detail = json!({ "message": message });
    if !data.is_null() {
        detail["data"] = data.clone();
    }
    let record = AuditRecord::incident(now, actor.clone(), kind, id, detail);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    Ok(())
}

fn notify(conn: &Connection, event: &str, seq: i64, now: i64) -> StoreResult<()> {
    let incident = by_seq(conn, seq)?;
    let notice = Notice::incident(event, &incident, now);
    insert_outbox(conn, &OutboxItem::notice(&notice), now)?;
    Ok(())
}

pub(super) fn record_alerts(
    conn: &Connection,
    alerts: Vec<AlertIn>,
    now: i64,
) -> StoreResult<Vec<AlertRecorded>> {
    alerts
        .into_iter()
        .map(|a| record_alert(conn, a, now))
        .collect()
}

fn record_alert(conn: &Connection, a: AlertIn, now: i64) -> StoreResult<AlertRecorded> {
    use crate::alerts::AlertState;
    let open: Option<(i64, Incident)> = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM incidents WHERE source = ?1 AND alert_key = ?2 \
             AND state <> 'resolved'"
        ))?
        .query_row(params![a.source, a.alert.key], from_row)
        .optional()?;
    let alert_data = json!({
        "monitor": a.alert.monitor,
        "message": a.alert.message,
        "labels": a.alert.labels,
        "url": a.alert.url,
        "at": a.alert.at,
    });
    match (a.alert.state, open) {
        (AlertState::Firing, Some((seq, incident))) => {
            conn.prepare_cached(
                "UPDATE incidents SET alerts = alerts + 1, updated_at = ?2 WHERE seq = ?1",
            )?
            .execute(params![seq, now])?;
            Ok(AlertRecorded {
                incident: Some((incident.id, incident.state)),
                effect: AlertEffect::Folded,
            })
        }
        (AlertState::Firing, None) => {
            let id = Uuid::now_v7();
            let (state, reason) = match &a.target {
                Some(_) => (IncidentState::Open, None),
                None => (
                    IncidentState::Escalated,
                    Some(format!(
                        "no [[repair.targets]] entry matches monitor {:?}: nothing may repair it",
                        a.alert.monitor
                    )),
                ),
            };
            conn.prepare_cached(
                "INSERT INTO incidents (id, source, alert_key, monitor, target, state, reason, \
                 message, labels, url, alerts, max_steps, opened_at, updated_at, closed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?12, ?12, ?13)",
            )?
            .execute(params![
                id.to_string(),
                a.source,
                a.alert.key,
                a.alert.monitor,
                a.target,
                state.as_str(),
                reason,
                a.alert.message,
                serde_json::to_string(&a.alert.labels)?,
                a.alert.url,
                a.max_steps,
                now,
                state.is_closed().then_some(now),
            ])?;
            let seq = conn.last_insert_rowid();
            let message = format!("{} is down: {}", a.alert.monitor, a.alert.message);
            event(
                conn,
                seq,
                id,
                &Actor::System,
                "opened",
                &message,
                &alert_data,
                now,
            )?;
            notify(conn, notice::INCIDENT_OPENED, seq, now)?;
            if let Some(reason) = reason {
                event(
                    conn,
                    seq,
                    id,
                    &Actor::System,
                    "escalated",
                    &reason,
                    &Value::Null,
                    now,
                )?;
                notify(conn, notice::INCIDENT_ESCALATED, seq, now)?;
            }
            Ok(AlertRecorded {
                incident: Some((id, state)),
                effect: AlertEffect::Opened,
            })
        }
        (AlertState::Resolved, Some((seq, incident))) => {
            let reason = match incident.state {
                IncidentState::Verifying => "the monitor reports it up after the repair",
                IncidentState::Escalated => "the monitor reports it up after the escalation",
                _ => "the monitor reports it up",
            };
            conn.prepare_cached(
                "UPDATE incidents SET state = 'resolved', reason = ?2, approval_expires_at = \
                 NULL, due_at = NULL, updated_at = ?3, closed_at = ?3 WHERE seq = ?1",
            )?
            .execute(params![seq, reason, now])?;
            let message = format!("{} is up: {}", a.alert.monitor, a.alert.message);
            event(
                conn,
                seq,
                incident.id,
                &Actor::System,
                "alert",
                &message,
                &alert_data,
                now,
            )?;
            event(
                conn,
                seq,
                incident.id,
                &Actor::System,
                "resolved",
                reason,
                &Value::Null,
                now,
            )?;
            notify(conn, notice::INCIDENT_RESOLVED, seq, now)?;
            Ok(AlertRecorded {
                incident: Some((incident.id, IncidentState::Resolved)),
                effect: AlertEffect::Resolved,
            })
        }
        (AlertState::Resolved, None) => Ok(AlertRecorded {
            incident: None,
            effect: AlertEffect::Unmatched,
        }),
    }
}

/// Whether a pause holds repairs of `target`: `Some(None)` for all of self-repair,
/// `Some(Some(target))` for the target alone.
fn pause_of(conn: &Connection, target: &str) -> StoreResult<Option<Option<String>>> {
    let found: Option<String> = conn
        .prepare_cached(
            "SELECT target FROM repair_pauses WHERE target IN (?1, ?2) \
             ORDER BY target = ?1 DESC LIMIT 1",
        )?
        .query_row(params![ALL, target], |r| r.get(0))
        .optional()?;
    Ok(found.map(|t| (t != ALL).then_some(t)))
}

/// What holds a repair of the target now, if anything.
fn held(
    conn: &Connection,
    run: &crate::store::RepairRun,
    now: i64,
) -> StoreResult<Option<RepairHeld>> {
    if let Some(target) = pause_of(conn, &run.target)? {
        return Ok(Some(RepairHeld::Paused { target }));
    }
    let repairs = repairs_of(conn, &run.target, now - HOUR_MS)?;
    if repairs >= run.max_per_hour {
        return Ok(Some(RepairHeld::Capped { repairs }));
    }
    let last: Option<i64> = conn
        .prepare_cached("SELECT max(started_at) FROM repairs WHERE target = ?1")?
        .query_row([&run.target], |r| r.get(0))?;
    if let Some(last) = last
        && last + run.cooldown_ms > now
    {
        return Ok(Some(RepairHeld::Cooling {
            until: last + run.cooldown_ms,
        }));
    }
    Ok(None)
}

pub(super) fn step(conn: &Connection, mut step: IncidentStep, now: i64) -> StoreResult<Stepped> {
    let (seq, current) = by_id(conn, step.id)?;
    if !step.from.contains(&current.state) {
        return Err(StoreError::Conflict(format!(
            "incident {} is {}, not {}",
            step.id,
            current.state,
            step.from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    let mut change = None;
    let mut held_by = None;
    if let Some(run) = step.run.take() {
        match held(conn, &run, now)? {
            None => {
                let submitted = insert_task(conn, &run.task, now)?;
                let task_id = submitted.task.id;
                conn.prepare_cached(
                    "INSERT INTO repairs (task_id, incident_seq, target, action, started_at, \
                     verify_within_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    task_id.to_string(),
                    seq,
                    run.target,
                    run.action,
                    now,
                    run.verify_within_ms
                ])?;
                conn.prepare_cached("UPDATE incidents SET task_id = ?2 WHERE seq = ?1")?
                    .execute(params![seq, task_id.to_string()])?;
                if let Value::Object(map) = &mut step.data {
                    map.insert("task".into(), json!(task_id));
                } else {
                    step.data = json!({ "task": task_id });
                }
                change = submitted.change;
            }
            Some(why) => {
                // An operator's approval happened even when a hold keeps it from running: it
                // stays in the story and the audit log, before the hold.
                if step.actor != Actor::System {
                    event(
                        conn,
                        seq,
                        step.id,
                        &step.actor,
                        &step.kind,
                        &step.message,
                        &step.data,
                        now,
                    )?;
                }
                step = held_step(step, &run, &why, &current);
                held_by = Some(why);
            }
        }
    }
    let closed = step.to.is_closed();
    conn.prepare_cached(
        "UPDATE incidents SET state = ?2, updated_at = ?3, closed_at = CASE WHEN ?4 THEN ?3 \
         ELSE NULL END, steps = steps + ?5 WHERE seq = ?1",
    )?
    .execute(params![
        seq,
        step.to.as_str(),
        now,
        closed,
        step.count_step as i64
    ])?;
    if let Some(reason) = &step.reason {
        conn.prepare_cached("UPDATE incidents SET reason = ?2 WHERE seq = ?1")?
            .execute(params![seq, reason])?;
    }
    if let Some(choice) = &step.choice {
        let text = choice.as_ref().map(serde_json::to_string).transpose()?;
        conn.prepare_cached("UPDATE incidents SET choice = ?2 WHERE seq = ?1")?
            .execute(params![seq, text])?;
    }
    if let Some(expires) = step.approval_expires_at {
        conn.prepare_cached("UPDATE incidents SET approval_expires_at = ?2 WHERE seq = ?1")?
            .execute(params![seq, expires])?;
    }
    if let Some(due) = step.due_at {
        conn.prepare_cached("UPDATE incidents SET due_at = ?2 WHERE seq = ?1")?
            .execute(params![seq, due])?;
    }
    if closed {
        conn.prepare_cached(
            "UPDATE incidents SET approval_expires_at = NULL, due_at = NULL WHERE seq = ?1",
        )?
        .execute([seq])?;
    }
    event(
        conn,
        seq,
        step.id,
        &step.actor,
        &step.kind,
        &step.message,
        &step.data,
        now,
    )?;
    if let Some(name) = step.notice {
        notify(conn, name, seq, now)?;
    }
    Ok(Stepped {
        incident: with_counts(conn, by_seq(conn, seq)?, now)?,
        change,
        held: held_by,
    })
}

/// The step a held repair becomes: escalated for a pause or the cap, back to open until the
/// cooldown ends.
fn held_step(
    step: IncidentStep,
    run: &crate::store::RepairRun,
    why: &RepairHeld,
    current: &Incident,
) -> IncidentStep {
    let (to, reason, notice, due) = match why {
        RepairHeld::Paused { target } => (
            IncidentState::Escalated,
            format!(
                "self-repair is paused ({}): {} was chosen and not run",
                match target {
                    Some(t) => format!("for target {t}"),
                    None => "for every target".to_owned(),
                },
                run.action
            ),
            Some(notice::INCIDENT_ESCALATED),
            None,
        ),
        RepairHeld::Capped { repairs } => (
            IncidentState::Escalated,
            format!(
                "target {} started {repairs} repairs in the last hour, its cap \
                 (max_per_hour = {}): {} was not run",
                run.target, run.max_per_hour, run.action
            ),
            Some(notice::INCIDENT_ESCALATED),
            None,
        ),
        RepairHeld::Cooling { until } => (
            IncidentState::Open,
            format!(
                "waiting for target {}'s cooldown to end at {}",
                run.target,
                to_utc(*until).format("%H:%M:%S UTC")
            ),
            None,
            Some(*until),
        ),
    };
    let mut data = step.data;
    if let Value::Object(map) = &mut data {
        map.insert("held".into(), json!(reason));
    }
    IncidentStep {
        to,
        kind: if to == IncidentState::Escalated {
            "escalated".into()
        } else {
            "held".into()
        },
        message: reason.clone(),
        data,
        reason: Some(Some(reason)),
        due_at: Some(due),
        approval_expires_at: Some(None),
        count_step: false,
        notice,
        choice: if to == IncidentState::Open {
            Some(None)
        } else {
            step.choice.or(Some(current.choice.clone()))
        },
        ..step
    }
}

/// A task changed state in this transaction. When it is an incident's current repair and it
/// ended: completed, the incident is verified next (within the target's time limit); failed
/// or cancelled, the incident is decided again while it has steps left, else escalated.
pub(super) fn task_moved(
    conn: &Connection,
    task_id: Uuid,
    kind: &str,
    state: TaskState,
    now: i64,
) -> StoreResult<Option<(Uuid, IncidentState)>> {
    // Every task's end passes here: only an `action` task can be a repair, so the others
    // cost no statement.
    if !state.is_final() || kind != REPAIR_TASK_KIND {
        return Ok(None);
    }
    let repair: Option<(i64, String, i64)> = conn
        .prepare_cached(
            "SELECT incident_seq, action, verify_within_ms FROM repairs WHERE task_id = ?1",
        )?
        .query_row([task_id.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((seq, action, within)) = repair else {
        return Ok(None);
    };
    let incident = by_seq(conn, seq)?;
    if incident.state != IncidentState::Repairing || incident.task_id != Some(task_id) {
        return Ok(None);
    }
    let error: Option<String> = conn
        .prepare_cached("SELECT error FROM tasks WHERE id = ?1")?
        .query_row([task_id.to_string()], |r| r.get(0))?;
    let data = json!({"task": task_id, "state": state.as_str(), "error": error});
    let (to, message, reason, due, notice) = if state == TaskState::Completed {
        (
            IncidentState::Verifying,
            format!("{action} completed; verifying that the service is back"),
            None,
            Some(now + within),
            None,
        )
    } else {
        let why = match state {
            TaskState::Cancelled => format!("{action} was cancelled"),
            _ => format!(
                "{action} failed: {}",
                error.as_deref().unwrap_or("no error given")
            ),
        };
        if incident.steps < incident.max_steps {
            (IncidentState::Open, why.clone(), Some(why), None, None)
        } else {
            let reason = format!("{why}; no repair steps left ({} taken)", incident.steps);
            (
                IncidentState::Escalated,
                why,
                Some(reason),
                None,
                Some(notice::INCIDENT_ESCALATED),
            )
        }
    };
    let closed = to.is_closed();
    conn.prepare_cached(
        "UPDATE incidents SET state = ?2, reason = coalesce(?3, reason), due_at = ?4, \
         updated_at = ?5, closed_at = CASE WHEN ?6 THEN ?5 ELSE NULL END WHERE seq = ?1",
    )?
    .execute(params![seq, to.as_str(), reason, due, now, closed])?;
    event(
        conn,
        seq,
        incident.id,
        &Actor::System,
        "repair_ended",
        &message,
        &data,
        now,
    )?;
    if let Some(name) = notice {
        event(
            conn,
            seq,
            incident.id,
            &Actor::System,
            "escalated",
            reason.as_deref().unwrap_or_default(),
            &Value::Null,
            now,
        )?;
        notify(conn, name, seq, now)?;
    }
    Ok(Some((incident.id, to)))
}

pub(super) fn due(conn: &Connection, now: i64) -> StoreResult<Vec<Incident>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM incidents WHERE closed_at IS NULL AND ( \
           (state IN ('open', 'deciding') AND (due_at IS NULL OR due_at <= ?1)) \
           OR (state = 'awaiting_approval' AND approval_expires_at <= ?1) \
           OR state = 'verifying') \
         ORDER BY seq LIMIT 500"
    ))?;
    let rows = stmt.query_map([now], from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(with_counts(conn, row?.1, now)?);
    }
    Ok(out)
}

pub(super) fn list(
    conn: &Connection,
    filter: &IncidentFilter,
    now: i64,
) -> StoreResult<Vec<Incident>> {
    let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLS} FROM incidents \
         WHERE (?1 = '[]' OR state IN (SELECT value FROM json_each(?1))) \
           AND (?2 IS NULL OR target = ?2) \
         ORDER BY seq DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![
            serde_json::to_string(&states)?,
            filter.target,
            filter.limit.max(1) as i64
        ],
        from_row,
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(with_counts(conn, row?.1, now)?);
    }
    Ok(out)
}

pub(super) fn incident(conn: &Connection, id: Uuid, now: i64) -> StoreResult<Incident> {
    let (seq, incident) = by_id(conn, id)?;
    let mut incident = with_counts(conn, incident, now)?;
    let mut stmt = conn.prepare_cached(
        "SELECT at, kind, actor, message, data FROM incident_events \
         WHERE incident_seq = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([seq], |r| {
        Ok(IncidentEvent {
            at: to_utc(r.get(0)?),
            kind: r.get(1)?,
            actor: r.get(2)?,
            message: r.get(3)?,
            data: json_col(r, 4)?,
        })
    })?;
    for row in rows {
        incident.events.push(row?);
    }
    Ok(incident)
}

pub(super) fn pause(
    conn: &Connection,
    target: Option<&str>,
    actor: &Actor,
    now: i64,
) -> StoreResult<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO repair_pauses (target, paused_at, paused_by) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![target.unwrap_or(ALL), now, actor.as_text()])?;
    if inserted > 0 {
        let record = AuditRecord::repair_paused(now, actor.clone(), target, true);
        insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    }
    Ok(inserted > 0)
}

pub(super) fn resume(
    conn: &Connection,
    target: Option<&str>,
    actor: &Actor,
    now: i64,
) -> StoreResult<bool> {
    let deleted = conn
        .prepare_cached("DELETE FROM repair_pauses WHERE target = ?1")?
        .execute([target.unwrap_or(ALL)])?;
    if deleted > 0 {
        let record = AuditRecord::repair_paused(now, actor.clone(), target, false);
        insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    }
    Ok(deleted > 0)
}

pub(super) fn pauses(conn: &Connection) -> StoreResult<Vec<RepairPause>> {
    let mut stmt = conn.prepare_cached(
        "SELECT target, paused_at, paused_by FROM repair_pauses ORDER BY target = '*' DESC, target",
    )?;
    let rows = stmt.query_map([], |r| {
        let target: String = r.get(0)?;
        Ok(RepairPause {
            target: (target != ALL).then_some(target),
            paused_at: to_utc(r.get(1)?),
            paused_by: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn repairs_since(conn: &Connection, since: i64) -> StoreResult<Vec<(String, u32)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT target, count(*) FROM repairs WHERE started_at > ?1 GROUP BY target ORDER BY target",
    )?;
    let rows = stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Forgets closed incidents that closed before `before`, with their stories and repairs
/// (retention keeps far more than the hour a cap counts).
pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<u64> {
    let seqs: Vec<i64> = conn
        .prepare_cached(
            "SELECT seq FROM incidents WHERE closed_at IS NOT NULL AND closed_at < ?1 \
             ORDER BY seq LIMIT 1000",
        )?
        .query_map([before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for seq in &seqs {
        conn.prepare_cached("DELETE FROM incident_events WHERE incident_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM repairs WHERE incident_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM incidents WHERE seq = ?1")?
            .execute([seq])?;
    }
    Ok(seqs.len() as u64)
}
