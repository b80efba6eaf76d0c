//! Schedules, as pure logic: `[[schedules]]` entries checked ([`config`]), when a cron
//! expression fires in its time zone ([`cron`]), and what is due when the loop looks (on
//! time, or missed while the server was down, by the schedule's `missed` policy). Not yet
//! served: the config file does not read the section, and the firings' store and the loop
//! come next.

pub mod config;
pub mod cron;

use chrono::{DateTime, TimeDelta, Utc};

pub use cron::CronSchedule;

/// How late a firing may be and still count as on time: a loop that looks every second, or
/// a busy writer, is late by that much without anything having been missed.
pub const ON_TIME: TimeDelta = TimeDelta::seconds(60);

/// Most firings one look fires at once (a per-second schedule after a stall).
pub const MAX_AT_ONCE: usize = 100;

/// Most firings one look walks: a day of a per-second schedule. After a longer outage only
/// the oldest are counted, and the loop, which records `now` as looked at, starts afresh.
const MAX_WALKED: usize = 86_400;

/// What to do with the firings that came while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// Forget them; fire again at the next instant.
    #[default]
    Skip,
    /// Fire once for all of them, now, under the latest missed instant.
    RunOnce,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run_once",
        }
    }
}

impl std::str::FromStr for Missed {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "skip" => Ok(Missed::Skip),
            "run_once" => Ok(Missed::RunOnce),
            other => Err(format!(
                "missed: {other:?} is not skip or run_once (what to do with firings missed \
                 while the server was down)"
            )),
        }
    }
}

/// What one look at a schedule finds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// Instants to fire now, oldest first; each is the firing's key, so firing one twice is
    /// impossible in the store.
    pub fire: Vec<DateTime<Utc>>,
    /// Instants missed and not fired (by the `skip` policy, or folded into `run_once`'s one).
    pub skipped: u32,
}

/// The firings due after `last` (the last instant fired or considered) up to `now`: those
/// within [`ON_TIME`] are fired; older ones were missed, and `missed` says what becomes of
/// them.
pub fn due(
    schedule: &CronSchedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    missed: Missed,
) -> Due {
    let all = schedule.firings_between(last, now, MAX_WALKED);
    let (late, on_time): (Vec<_>, Vec<_>) = all.into_iter().partition(|at| *at < now - ON_TIME);
    let mut fire: Vec<DateTime<Utc>> = Vec::new();
    let mut skipped = late.len() as u32;
    if missed == Missed::RunOnce
        && let Some(latest) = late.last()
        && on_time.is_empty()
    {
        fire.push(*latest);
        skipped -= 1;
    }
    let room = MAX_AT_ONCE.saturating_sub(fire.len());
    skipped += on_time.len().saturating_sub(room) as u32;
    let start = on_time.len().saturating_sub(room);
    fire.extend_from_slice(&on_time[start..]);
    Due { fire, skipped }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An RFC 3339 instant, for the schedules' tests.
    pub(crate) fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn hourly() -> CronSchedule {
        CronSchedule::parse("0 * * * *", None).unwrap()
    }

    #[test]
    fn a_firing_a_little_late_is_on_time_and_fires_once() {
        let d = due(
            &hourly(),
            utc("2026-11-28T08:59:59Z"),
            utc("2026-11-28T09:00:02Z"),
            Missed::Skip,
        );
        assert_eq!(d.fire, [utc("2026-11-28T09:00:00Z")]);
        assert_eq!(d.skipped, 0);
        // Looked at again: nothing new.
        let again = due(
            &hourly(),
            utc("2026-11-28T09:00:00Z"),
            utc("2026-11-28T09:00:03Z"),
            Missed::Skip,
        );
        assert_eq!(again, Due::default());
    }

    #[test]
    fn after_downtime_skip_forgets_and_run_once_fires_the_latest_once() {
        let (last, now) = (utc("2026-11-28T02:30:00Z"), utc("2026-11-28T08:20:00Z"));
        let skip = due(&hourly(), last, now, Missed::Skip);
        assert_eq!(skip.fire, Vec::<DateTime<Utc>>::new());
        assert_eq!(skip.skipped, 6, "03:00 … 08:00");
        let once = due(&hourly(), last, now, Missed::RunOnce);
        assert_eq!(once.fire, [utc("2026-11-28T08:00:00Z")]);
        assert_eq!(once.skipped, 5);
        // Back just at a firing: that one is on time, and run_once adds nothing for the rest.
        let at_nine = due(
            &hourly(),
            last,
            utc("2026-11-28T09:00:01Z"),
            Missed::RunOnce,
        );
        assert_eq!(at_nine.fire, [utc("2026-11-28T09:00:00Z")]);
        assert_eq!(at_nine.skipped, 6);
    }

    #[test]
    fn a_stalled_per_second_schedule_fires_at_most_a_bounded_batch() {
        let every_second = CronSchedule::parse("* * * * * *", None).unwrap();
        let d = due(
            &every_second,
            utc("2026-11-28T09:00:00Z"),
            utc("2026-11-28T09:00:59Z"),
            Missed::Skip,
        );
        assert_eq!(d.fire.len(), 59);
        let d = due(
            &every_second,
            utc("2026-11-28T08:00:00Z"),
            utc("2026-11-28T09:00:00Z"),
            Missed::Skip,
        );
        assert_eq!(d.fire.len() + d.skipped as usize, 3600);
        assert!(d.fire.len() <= MAX_AT_ONCE);
        assert_eq!(
            d.fire.last(),
            Some(&utc("2026-11-28T09:00:00Z")),
            "the newest are kept"
        );
    }

    #[test]
    fn the_policy_reads_its_two_words() {
        assert_eq!("skip".parse::<Missed>(), Ok(Missed::Skip));
        assert_eq!("run_once".parse::<Missed>(), Ok(Missed::RunOnce));
        assert!(
            "always"
                .parse::<Missed>()
                .unwrap_err()
                .contains("skip or run_once")
        );
    }
}
