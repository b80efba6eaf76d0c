//! `[[schedules]]` entries and `POST /api/v1/schedules` bodies (one type, [`ScheduleSpec`]),
//! checked: a name, a cron expression in a time zone, the task each firing submits (checked
//! as a submit is, at load), and what becomes of firings missed while the server was down.

use chrono::{DateTime, SecondsFormat, Utc};
use muster_api::{SubmitTask, TaskTemplate};
use serde_json::Value;

use super::{CronSchedule, Missed};
use crate::bounds::{self, entry_name};

/// One schedule as written in the config file or sent to the API.
pub type ScheduleSpec = muster_api::CreateSchedule;

/// A schedule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub cron: CronSchedule,
    pub task: TaskTemplate,
    pub lock_key: Option<String>,
    pub missed: Missed,
}

impl Schedule {
    /// Checks `spec`; the error names the field at fault.
    pub fn resolve(spec: ScheduleSpec) -> Result<Schedule, String> {
        entry_name(&spec.name)?;
        let cron = CronSchedule::parse(&spec.cron, spec.timezone.as_deref())?;
        let missed = match &spec.missed {
            Some(text) => text.parse()?,
            None => Missed::default(),
        };
        let schedule = Schedule {
            name: spec.name,
            cron,
            task: spec.task,
            lock_key: spec.lock_key,
            missed,
        };
        // Every firing's task differs only in its payload's firing fields and its key, so one
        // checked now stands for all of them: a bad template is refused at load, not at 03:00.
        let sample = schedule.task_for(DateTime::UNIX_EPOCH);
        bounds::submit(&sample).map_err(|e| format!("task.{}", e.message))?;
        Ok(schedule)
    }

    /// The spec this schedule was read from, for the API and for storing one it created.
    pub fn spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            name: self.name.clone(),
            cron: self.cron.expression().to_owned(),
            timezone: Some(self.cron.zone().name().to_owned()),
            task: self.task.clone(),
            lock_key: self.lock_key.clone(),
            missed: Some(self.missed.as_str().to_owned()),
        }
    }

    /// The task the cron firing at `at` submits: the template, its payload told which firing
    /// it is (`schedule`, `fire_at`), labelled with the schedule, and keyed by the firing so
    /// the same firing can never submit twice.
    pub fn task_for(&self, at: DateTime<Utc>) -> SubmitTask {
        let fire_at = at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let key = format!("schedule:{}:{fire_at}", self.name);
        self.task_keyed(fire_at, key)
    }

    /// The task an operator's "run now" at `at` submits: like a firing's, keyed apart from
    /// the cron instants.
    pub fn task_run_at(&self, at: DateTime<Utc>) -> SubmitTask {
        let fire_at = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let key = format!("schedule:{}:run:{fire_at}", self.name);
        self.task_keyed(fire_at, key)
    }

    fn task_keyed(&self, fire_at: String, key: String) -> SubmitTask {
        let mut payload = self.task.payload.clone();
        payload.insert("schedule".into(), Value::String(self.name.clone()));
        payload.insert("fire_at".into(), Value::String(fire_at));
        let mut task = self.task.submit(payload, self.lock_key.clone(), Some(key));
        task.labels.insert("schedule".into(), self.name.clone());
        task
    }
}

/// Checks every entry; names must be unique. An error names the entry, for the caller to
/// prefix with file and line.
pub fn resolve_all(specs: &[(usize, ScheduleSpec)]) -> Result<Vec<Schedule>, (usize, String)> {
    let mut out: Vec<Schedule> = Vec::new();
    for (index, (line, spec)) in specs.iter().enumerate() {
        let at = |why: String| {
            (
                *line,
                format!("schedules[{index}] ({:?}): {why}", spec.name),
            )
        };
        if out.iter().any(|s| s.name == spec.name) {
            return Err(at(
                "another schedule has this name; names must be unique".into()
            ));
        }
        out.push(Schedule::resolve(spec.clone()).map_err(at)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedules::tests::utc;

    #[derive(serde::Deserialize)]
    struct File {
        schedules: Vec<ScheduleSpec>,
    }

    const NIGHTLY: &str = r#"
[[schedules]]
name = "nightly-backup"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
task = { kind = "action", capabilities = ["docker"], payload = { action = "backup" } }
missed = "run_once"
"#;

    fn resolve(text: &str) -> Result<Vec<Schedule>, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let specs: Vec<_> = file.schedules.into_iter().map(|s| (7, s)).collect();
        resolve_all(&specs).map_err(|(line, why)| format!("{line}: {why}"))
    }

    #[test]
    fn the_designs_example_loads_and_its_firing_is_keyed_by_its_instant() {
        let all = resolve(NIGHTLY).unwrap();
        let s = &all[0];
        assert_eq!(s.missed, Missed::RunOnce);
        let at = s.cron.next_after(utc("2026-11-28T00:00:00Z")).unwrap();
        assert_eq!(at, utc("2026-11-28T02:00:00Z"), "03:00 in Berlin in winter");
        let task = s.task_for(at);
        assert_eq!(task.kind, "action");
        assert_eq!(task.capabilities, ["docker"]);
        assert_eq!(
            task.idempotency_key.as_deref(),
            Some("schedule:nightly-backup:2026-11-28T02:00:00Z")
        );
        assert_eq!(task.payload["action"], "backup");
        assert_eq!(task.payload["fire_at"], "2026-11-28T02:00:00Z");
        assert_eq!(task.labels["schedule"], "nightly-backup");
    }

    #[test]
    fn mistakes_name_the_entry_and_field() {
        for (from, to, expect) in [
            (
                "0 3 * * *",
                "0 3 * *",
                "schedules[0] (\"nightly-backup\"): cron \"0 3 * *\" has 4 fields",
            ),
            (
                "Europe/Berlin",
                "Berlin",
                "timezone \"Berlin\" is not an IANA time zone",
            ),
            (
                "run_once",
                "twice",
                "missed: \"twice\" is not skip or run_once",
            ),
            (
                "nightly-backup",
                "nightly backup",
                "name \"nightly backup\" is invalid",
            ),
        ] {
            let err = resolve(&NIGHTLY.replace(from, to)).unwrap_err();
            assert!(err.contains(expect), "{to}: {err}");
        }
        let twice = format!("{NIGHTLY}{NIGHTLY}");
        assert!(
            resolve(&twice)
                .unwrap_err()
                .contains("names must be unique")
        );
        assert!(
            resolve(&NIGHTLY.replace("missed", "mised"))
                .unwrap_err()
                .contains("unknown field `mised`")
        );
    }
}
