//! Schedules on SQLite: the rows of the schedules the server has looked at (the config file's
//! and those created through the API), their pauses, and their firings. A firing's row and its
//! task commit together, under the firing's unique key, so no instant fires twice.

use muster_api::{FiringTrigger, ScheduleFiring, TaskState};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use super::outbox::insert_outbox;
use super::rows::{enum_col, uuid_col};
use super::tasks::insert_task;
use crate::audit::{Actor, AuditRecord};
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::store::{Fired, OutboxItem, ScheduleFire, ScheduleRow, StoreResult};

pub(super) fn rows(conn: &Connection) -> StoreResult<Vec<ScheduleRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, spec, paused_at, paused_by, looked_at FROM schedules ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ScheduleRow {
            name: r.get(0)?,
            spec: r.get(1)?,
            paused_at: r.get(2)?,
            paused_by: r.get(3)?,
            looked_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn note(conn: &Connection, names: &[String], now: i64) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO schedules (name, spec, looked_at, created_at) VALUES (?1, NULL, ?2, ?2) \
         ON CONFLICT DO NOTHING",
    )?;
    for name in names {
        stmt.execute(params![name, now])?;
    }
    Ok(())
}

pub(super) fn create(
    conn: &Connection,
    name: &str,
    spec: &Value,
    actor: &Actor,
    now: i64,
) -> StoreResult<()> {
    let existing: Option<Option<String>> = conn
        .prepare_cached("SELECT spec FROM schedules WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    match existing {
        Some(Some(_)) => {
            return Err(StoreError::Conflict(format!(
                "a schedule named {name:?} exists; delete it first or choose another name"
            )));
        }
        // A config schedule's row left behind after it was removed from the file: its
        // firings belong to the old schedule.
        Some(None) => {
            conn.prepare_cached("DELETE FROM schedule_firings WHERE schedule = ?1")?
                .execute([name])?;
            conn.prepare_cached("DELETE FROM schedules WHERE name = ?1")?
                .execute([name])?;
        }
        None => {}
    }
    conn.prepare_cached(
        "INSERT INTO schedules (name, spec, looked_at, created_at) VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![name, spec.to_string(), now])?;
    let record = AuditRecord::schedule_changed(now, actor.clone(), name, Some(spec.clone()));
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    Ok(())
}

pub(super) fn delete(conn: &Connection, name: &str, actor: &Actor, now: i64) -> StoreResult<()> {
    let deleted = conn
        .prepare_cached("DELETE FROM schedules WHERE name = ?1 AND spec IS NOT NULL")?
        .execute([name])?;
    if deleted == 0 {
        return Err(StoreError::NotFound(format!(
            "schedule {name:?} created through the API"
        )));
    }
    conn.prepare_cached("DELETE FROM schedule_firings WHERE schedule = ?1")?
        .execute([name])?;
    let record = AuditRecord::schedule_changed(now, actor.clone(), name, None);
    insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    Ok(())
}

pub(super) fn fire(
    conn: &Connection,
    fire: ScheduleFire,
    now: i64,
) -> StoreResult<Option<Vec<Fired>>> {
    // A config schedule fired before the loop noted it (a "run now" right after a reload).
    conn.prepare_cached(
        "INSERT INTO schedules (name, spec, looked_at, created_at) VALUES (?1, NULL, ?2, ?2) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![fire.schedule, now])?;
    if !fire.manual {
        // Conditional on the instant the look started from: a second look that raced this
        // one (or a paused schedule) moves nothing and fires nothing.
        let moved = conn
            .prepare_cached(
                "UPDATE schedules SET looked_at = ?2 \
                 WHERE name = ?1 AND looked_at = ?3 AND paused_at IS NULL",
            )?
            .execute(params![fire.schedule, fire.looked_at, fire.looked_from])?;
        if moved == 0 {
            return Ok(None);
        }
    }
    let actor = fire.actor.as_text();
    let mut out = Vec::with_capacity(fire.firings.len());
    for (fire_at, trigger, task) in fire.firings {
        let inserted = conn
            .prepare_cached(
                "INSERT INTO schedule_firings (schedule, manual, fire_at, trigger, task_id, \
                 fired_at, actor) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                fire.schedule,
                fire.manual,
                fire_at,
                trigger.as_str(),
                task.id.to_string(),
                now,
                actor
            ])?;
        if inserted == 0 {
            continue;
        }
        let submitted = insert_task(conn, &task, now)?;
        if submitted.task.id != task.id {
            // The idempotency key named an older task (the firing's rows were pruned, its
            // task was not): the firing stands for that task.
            conn.prepare_cached(
                "UPDATE schedule_firings SET task_id = ?4 \
                 WHERE schedule = ?1 AND manual = ?2 AND fire_at = ?3",
            )?
            .execute(params![
                fire.schedule,
                fire.manual,
                fire_at,
                submitted.task.id.to_string()
            ])?;
        }
        if fire.manual {
            let record = AuditRecord::schedule_run(
                now,
                fire.actor.clone(),
                &fire.schedule,
                submitted.task.id,
            );
            insert_outbox(conn, &OutboxItem::audit(&record), now)?;
        }
        out.push(Fired {
            firing: ScheduleFiring {
                fire_at: to_utc(fire_at),
                trigger,
                task_id: submitted.task.id,
                task_state: Some(submitted.task.state),
                fired_at: to_utc(now),
                actor: actor.clone(),
            },
            task: submitted.task,
            change: submitted.change,
        });
    }
    Ok(Some(out))
}

pub(super) fn pause(
    conn: &Connection,
    name: &str,
    paused: bool,
    actor: &Actor,
    now: i64,
) -> StoreResult<bool> {
    conn.prepare_cached(
        "INSERT INTO schedules (name, spec, looked_at, created_at) VALUES (?1, NULL, ?2, ?2) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![name, now])?;
    let changed = if paused {
        conn.prepare_cached(
            "UPDATE schedules SET paused_at = ?2, paused_by = ?3 \
             WHERE name = ?1 AND paused_at IS NULL",
        )?
        .execute(params![name, now, actor.as_text()])?
    } else {
        conn.prepare_cached(
            "UPDATE schedules SET paused_at = NULL, paused_by = NULL, looked_at = max(looked_at, ?2) \
             WHERE name = ?1 AND paused_at IS NOT NULL",
        )?
        .execute(params![name, now])?
    };
    if changed > 0 {
        let record = AuditRecord::schedule_paused(now, actor.clone(), name, paused);
        insert_outbox(conn, &OutboxItem::audit(&record), now)?;
    }
    Ok(changed > 0)
}

const FIRING_COLS: &str =
    "f.schedule, f.fire_at, f.trigger, f.task_id, t.state, f.fired_at, f.actor";

fn firing_from_row(r: &Row<'_>) -> rusqlite::Result<(String, ScheduleFiring)> {
    let state: Option<String> = r.get(4)?;
    Ok((
        r.get(0)?,
        ScheduleFiring {
            fire_at: to_utc(r.get(1)?),
            trigger: enum_col(r, 2, FiringTrigger::parse)?,
            task_id: uuid_col(r, 3)?,
            task_state: state.as_deref().and_then(TaskState::parse),
            fired_at: to_utc(r.get(5)?),
            actor: r.get(6)?,
        },
    ))
}

pub(super) fn firings(
    conn: &Connection,
    schedule: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<(String, ScheduleFiring)>> {
    let limit = limit as i64;
    let out = match schedule {
        Some(name) => conn
            .prepare_cached(&format!(
                "SELECT {FIRING_COLS} FROM schedule_firings f LEFT JOIN tasks t ON t.id = f.task_id \
                 WHERE f.schedule = ?1 ORDER BY f.fired_at DESC, f.fire_at DESC LIMIT ?2"
            ))?
            .query_map(params![name, limit], firing_from_row)?
            .collect::<Result<_, _>>()?,
        // The latest firing of each schedule.
        None => conn
            .prepare_cached(&format!(
                "SELECT {FIRING_COLS} FROM (SELECT *, row_number() OVER ( \
                   PARTITION BY schedule ORDER BY fired_at DESC, fire_at DESC) AS n \
                   FROM schedule_firings) f LEFT JOIN tasks t ON t.id = f.task_id \
                 WHERE f.n = 1 ORDER BY f.schedule LIMIT ?1"
            ))?
            .query_map(params![limit], firing_from_row)?
            .collect::<Result<_, _>>()?,
    };
    Ok(out)
}

pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<u64> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM schedule_firings WHERE (schedule, manual, fire_at) IN ( \
               SELECT f.schedule, f.manual, f.fire_at FROM schedule_firings f \
               WHERE f.fired_at < ?1 AND f.fired_at < (SELECT max(g.fired_at) \
                 FROM schedule_firings g WHERE g.schedule = f.schedule) \
               LIMIT 1000)",
        )?
        .execute([before])?;
    Ok(deleted as u64)
}
