//! Schedules served: the verbs (list, create, delete, run now, pause, resume) the API, the UI,
//! the CLI and chat share, and the loop that fires them. The loop looks once a second; each
//! look takes every schedule's due firings ([`schedules::due`], from the instant it was last
//! looked at up to now) and records them with their tasks in one store operation, under keys
//! that make a second firing of one instant impossible: after a restart the store says what
//! was missed, and the schedule's `missed` policy says what becomes of it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_api::{
    CreateSchedule, ErrorCode, FiringTrigger, ScheduleDetail, ScheduleFiring, ScheduleOrigin,
    SchedulePauseAnswer, ScheduleRun,
};
use tokio::time::MissedTickBehavior;

use crate::app::App;
use crate::audit::Actor;
use crate::clock::to_utc;
use crate::error::ApiError;
use crate::operator::validate_submit;
use crate::schedules::config::Schedule;
use crate::schedules::{self, ON_TIME};
use crate::store::{ScheduleFire, ScheduleRow};

/// How often the loop looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Firings shown on a schedule's page.
pub const RECENT_FIRINGS: usize = 50;

/// A schedule in force, where it is defined, and its row (none until the loop first saw it).
struct Known {
    schedule: Schedule,
    origin: ScheduleOrigin,
    row: Option<ScheduleRow>,
}

/// Every schedule in force: the config file's, then those created through the API. A config
/// schedule shadows a stored one of the same name.
async fn known(app: &App) -> Result<Vec<Known>, ApiError> {
    let mut rows = app.store.schedule_rows().await?;
    let settings = app.settings();
    let mut out = Vec::new();
    for schedule in &settings.schedules {
        let at = rows.iter().position(|r| r.name == schedule.name);
        out.push(Known {
            schedule: schedule.clone(),
            origin: ScheduleOrigin::Config,
            row: at.map(|i| rows.swap_remove(i)),
        });
    }
    for row in rows {
        let Some(spec) = &row.spec else { continue };
        let parsed = serde_json::from_str::<CreateSchedule>(spec)
            .map_err(|e| e.to_string())
            .and_then(Schedule::resolve);
        match parsed {
            Ok(schedule) => out.push(Known {
                schedule,
                origin: ScheduleOrigin::Api,
                row: Some(row),
            }),
            // Checked when created; a later version reading it differently must not stop
            // every other schedule.
            Err(why) => {
                tracing::error!(schedule = %row.name, %why, "stored schedule unreadable; skipped")
            }
        }
    }
    Ok(out)
}

fn info(known: &Known, last: Option<ScheduleFiring>, now: DateTime<Utc>) -> muster_api::Schedule {
    let s = &known.schedule;
    let paused_at = known.row.as_ref().and_then(|r| r.paused_at);
    let spec = s.spec();
    muster_api::Schedule {
        name: s.name.clone(),
        origin: known.origin,
        cron: spec.cron,
        timezone: spec.timezone.unwrap_or_default(),
        missed: s.missed.as_str().to_owned(),
        task: s.task.clone(),
        lock_key: s.lock_key.clone(),
        paused: paused_at.is_some(),
        paused_at: paused_at.map(to_utc),
        paused_by: known.row.as_ref().and_then(|r| r.paused_by.clone()),
        next_fire_at: match paused_at {
            Some(_) => None,
            None => s.cron.next_after(now),
        },
        last,
    }
}

pub async fn list(app: &App) -> Result<Vec<muster_api::Schedule>, ApiError> {
    let all = known(app).await?;
    let mut last = app.store.schedule_firings(None, usize::MAX >> 1).await?;
    let now = to_utc(app.now_ms());
    Ok(all
        .iter()
        .map(|k| {
            let firing = last
                .iter()
                .position(|(name, _)| *name == k.schedule.name)
                .map(|i| last.swap_remove(i).1);
            info(k, firing, now)
        })
        .collect())
}

async fn find(app: &App, name: &str) -> Result<Known, ApiError> {
    known(app)
        .await?
        .into_iter()
        .find(|k| k.schedule.name == name)
        .ok_or_else(|| ApiError::not_found(format!("schedule {name:?}")))
}

pub async fn get(app: &App, name: &str) -> Result<ScheduleDetail, ApiError> {
    let known = find(app, name).await?;
    let firings: Vec<ScheduleFiring> = app
        .store
        .schedule_firings(Some(name.to_owned()), RECENT_FIRINGS)
        .await?
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let schedule = info(&known, firings.first().cloned(), to_utc(app.now_ms()));
    Ok(ScheduleDetail { schedule, firings })
}

/// Checks and stores a schedule; it first fires at its first instant after now.
pub async fn create(
    app: &App,
    spec: CreateSchedule,
    actor: Actor,
) -> Result<muster_api::Schedule, ApiError> {
    let schedule =
        Schedule::resolve(spec).map_err(|why| ApiError::new(ErrorCode::InvalidField, why))?;
    if app
        .settings()
        .schedules
        .iter()
        .any(|s| s.name == schedule.name)
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "schedule {:?} is defined in the config file; choose another name",
                schedule.name
            ),
        ));
    }
    let spec = serde_json::to_value(schedule.spec())
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    app.store
        .create_schedule(schedule.name.clone(), spec, actor, app.now_ms())
        .await?;
    Ok(get(app, &schedule.name).await?.schedule)
}

/// Deletes a schedule created through the API; the config file's are changed there.
pub async fn delete(app: &App, name: &str, actor: Actor) -> Result<(), ApiError> {
    if app.settings().schedules.iter().any(|s| s.name == name) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "schedule {name:?} is defined in the config file; remove it there and reload \
                 (SIGHUP), or pause it"
            ),
        ));
    }
    app.store
        .delete_schedule(name.to_owned(), actor, app.now_ms())
        .await?;
    Ok(())
}

/// Fires a schedule now, whatever its cron says and even while it is paused (a person asked).
pub async fn run_now(app: &App, name: &str, actor: Actor) -> Result<ScheduleRun, ApiError> {
    let known = find(app, name).await?;
    let now = app.now_ms();
    let task = validate_submit(
        known.schedule.task_run_at(to_utc(now)),
        app.settings().default_max_retries,
    )?;
    let fired = app
        .store
        .fire_schedule(
            ScheduleFire {
                schedule: name.to_owned(),
                manual: true,
                actor,
                firings: vec![(now, FiringTrigger::Run, task)],
                looked_from: now,
                looked_at: now,
            },
            now,
        )
        .await?;
    let Some(fired) = fired.into_iter().flatten().next() else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("schedule {name:?} was run at this very millisecond already; try again"),
        ));
    };
    if let Some(change) = fired.change {
        app.changes.task(change);
    }
    app.changes.metrics.schedule_fired(name, "run", 1);
    Ok(ScheduleRun {
        firing: fired.firing,
        task: fired.task,
    })
}

/// Pauses or resumes a schedule. Firings that come due while it is paused are skipped.
pub async fn set_paused(
    app: &App,
    name: &str,
    paused: bool,
    actor: Actor,
) -> Result<SchedulePauseAnswer, ApiError> {
    find(app, name).await?;
    let changed = app
        .store
        .pause_schedule(name.to_owned(), paused, actor, app.now_ms())
        .await?;
    Ok(SchedulePauseAnswer {
        schedule: get(app, name).await?.schedule,
        changed,
    })
}

/// One look: every schedule's due firings recorded with their tasks. Answers how many fired.
pub async fn look_once(app: &App) -> Result<usize, ApiError> {
    let all = known(app).await?;
    let now_ms = app.now_ms();
    let now = to_utc(now_ms);
    let unseen: Vec<String> = all
        .iter()
        .filter(|k| k.row.is_none())
        .map(|k| k.schedule.name.clone())
        .collect();
    if !unseen.is_empty() {
        // Looked at from now on: a schedule's first firing is its first instant after it
        // appeared, never one from before.
        app.store.note_schedules(unseen, now_ms).await?;
    }
    let default_max_retries = app.settings().default_max_retries;
    let metrics = &app.changes.metrics;
    let mut fired_count = 0;
    for known in all {
        let Some(row) = known.row else { continue };
        if row.paused_at.is_some() {
            continue;
        }
        let s = &known.schedule;
        let due = schedules::due(&s.cron, to_utc(row.looked_at), now, s.missed);
        if due.fire.is_empty() && due.skipped == 0 {
            continue;
        }
        let mut firings = Vec::with_capacity(due.fire.len());
        for at in &due.fire {
            let trigger = if *at < now - ON_TIME {
                FiringTrigger::Missed
            } else {
                FiringTrigger::Cron
            };
            match validate_submit(s.task_for(*at), default_max_retries) {
                Ok(task) => firings.push((at.timestamp_millis(), trigger, task)),
                Err(err) => {
                    tracing::error!(schedule = %s.name, error = %err.message, "firing's task refused")
                }
            }
        }
        let fired = app
            .store
            .fire_schedule(
                ScheduleFire {
                    schedule: s.name.clone(),
                    manual: false,
                    actor: Actor::System,
                    firings,
                    looked_from: row.looked_at,
                    looked_at: now_ms,
                },
                now_ms,
            )
            .await?;
        // Another look came first, or the schedule was paused meanwhile.
        let Some(fired) = fired else { continue };
        if due.skipped > 0 {
            metrics.schedule_fired(&s.name, "skipped", u64::from(due.skipped));
            tracing::warn!(
                schedule = %s.name,
                skipped = due.skipped,
                missed = s.missed.as_str(),
                "firings missed while the server was down (or the loop stalled) were skipped"
            );
        }
        for f in fired {
            tracing::info!(schedule = %s.name, fire_at = %f.firing.fire_at, task = %f.task.id, "schedule fired");
            fired_count += 1;
            metrics.schedule_fired(&s.name, f.firing.trigger.as_str(), 1);
            if let Some(change) = f.change {
                app.changes.task(change);
            }
        }
    }
    Ok(fired_count)
}

/// The loop: a look every second until shutdown.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = look_once(&app).await {
            tracing::warn!(error = %err.message, "schedules: the look failed; trying again");
        }
    }
}
