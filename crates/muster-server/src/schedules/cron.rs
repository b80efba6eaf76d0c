//! When a schedule fires: a cron expression (five fields, or six with seconds first; the
//! `@daily` kind of alias too) read by `croner`, in an IANA time zone. Pure: instants in,
//! instants out.
//!
//! The expression matches local wall-clock times; each match becomes one instant. Daylight
//! saving makes that mapping uneven, and these are the rules:
//! - a wall-clock time the clocks skip (02:30 on the spring-forward night in Europe) fires once,
//!   at the first instant after the gap (03:00 CEST); several skipped matches fire once;
//! - a wall-clock time that happens twice (02:30 on the fall-back night) fires once, the first
//!   time.
//!
//! Matches are walked in wall-clock order and mapped so ("the earliest instant of an
//! ambiguous time, the end of a gap"), which never goes backwards; the next firing after an
//! instant is the first match whose instant is later. That is why the second pass through a
//! repeated hour is skipped, and why matches inside a gap collapse into one.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// Most wall-clock matches walked for one answer: a repeated hour of a per-second schedule is
/// 3,600 of them; past this the expression is taken to match nothing reachable.
const MAX_WALK: usize = 10_000;

/// A checked cron expression and the zone its wall-clock times are in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    text: String,
    cron: Cron,
    zone: Tz,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.zone == other.zone
    }
}

impl CronSchedule {
    /// Reads `expression` in `zone` (an IANA name such as `Europe/Berlin`; `UTC` when none);
    /// the error names what is wrong.
    pub fn parse(expression: &str, zone: Option<&str>) -> Result<CronSchedule, String> {
        let text = expression.trim();
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "cron {text:?} has {fields} fields: write five (minute hour day-of-month month \
                 day-of-week), or six with seconds first"
            ));
        }
        let cron = Cron::from_str(text).map_err(|e| format!("cron {text:?} is invalid: {e}"))?;
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                format!(
                    "timezone {name:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \
                     \"America/New_York\", \"UTC\")"
                )
            })?,
        };
        let schedule = CronSchedule {
            text: text.to_owned(),
            cron,
            zone,
        };
        // An expression that can never match (30 February) is refused now, not at its first
        // firing.
        let epoch = Utc.timestamp_opt(0, 0).single().expect("the epoch");
        if schedule.next_after(epoch).is_none() {
            return Err(format!("cron {text:?} never matches a date"));
        }
        Ok(schedule)
    }

    pub fn expression(&self) -> &str {
        &self.text
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The instant a wall-clock match fires at: the earliest of an ambiguous time, the end of
    /// a gap for a skipped one.
    fn instant_of(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // In a gap: walk forward to the first wall-clock minute that exists; gaps are
                // at most a few hours long.
                let mut probe = local;
                for _ in 0..(4 * 60) {
                    probe += TimeDelta::minutes(1);
                    let start = probe.with_second(0)?;
                    if let Some(t) = self.zone.from_local_datetime(&start).earliest() {
                        return Some(t.with_timezone(&Utc));
                    }
                }
                None
            }
        }
    }

    /// The first firing strictly after `after`, or none when the expression matches nothing
    /// later.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut local = after.with_timezone(&self.zone).naive_local();
        for _ in 0..MAX_WALK {
            local = self.cron.find_next_occurrence(&local, false).ok()?;
            let at = self.instant_of(local)?;
            if at > after {
                return Some(at);
            }
        }
        None
    }

    /// The firings in `(after, until]`, oldest first, at most `limit` of them.
    pub fn firings_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = after;
        while out.len() < limit {
            match self.next_after(at) {
                Some(next) if next <= until => {
                    out.push(next);
                    at = next;
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedules::tests::utc;

    fn firings(expr: &str, zone: &str, from: &str, until: &str) -> Vec<String> {
        let s = CronSchedule::parse(expr, Some(zone)).unwrap();
        s.firings_between(utc(from), utc(until), 100)
            .iter()
            .map(|t| t.format("%m-%d %H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn a_daily_time_in_a_skipped_hour_fires_once_after_the_gap() {
        // Europe/Berlin springs forward on 2026-03-29 at 02:00 CET (01:00Z) to 03:00 CEST.
        assert_eq!(
            firings(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-27T12:00:00Z",
                "2026-03-31T00:00:00Z"
            ),
            ["03-28 01:30:00Z", "03-29 01:00:00Z", "03-30 00:30:00Z"]
        );
        // Several matches inside the gap collapse into the one firing after it.
        assert_eq!(
            firings(
                "*/20 * * * *",
                "Europe/Berlin",
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:30:00Z"
            ),
            ["03-29 00:40:00Z", "03-29 01:00:00Z", "03-29 01:20:00Z"]
        );
    }

    #[test]
    fn a_time_in_a_repeated_hour_fires_once_the_first_time() {
        // Europe/Berlin falls back on 2026-10-25 at 03:00 CEST (01:00Z) to 02:00 CET.
        assert_eq!(
            firings(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-24T12:00:00Z",
                "2026-10-27T00:00:00Z"
            ),
            ["10-25 00:30:00Z", "10-26 01:30:00Z"]
        );
        // Hourly: the repeated 02:00 fires once; the next firing is the hour after the repeat.
        assert_eq!(
            firings(
                "0 * * * *",
                "Europe/Berlin",
                "2026-10-24T23:30:00Z",
                "2026-10-25T03:00:00Z"
            ),
            ["10-25 00:00:00Z", "10-25 02:00:00Z", "10-25 03:00:00Z"]
        );
        // Asked from inside the second pass, the next firing is after the repeat too.
        let s = CronSchedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            s.next_after(utc("2026-10-25T01:15:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn new_york_and_utc_and_seconds() {
        // America/New_York springs forward on 2026-03-08 at 02:00 EST (07:00Z).
        assert_eq!(
            firings(
                "15 2 * * *",
                "America/New_York",
                "2026-03-07T00:00:00Z",
                "2026-03-09T12:00:00Z"
            ),
            ["03-07 07:15:00Z", "03-08 07:00:00Z", "03-09 06:15:00Z"]
        );
        assert_eq!(
            firings(
                "0 3 * * 1-5",
                "UTC",
                "2026-11-27T00:00:00Z",
                "2026-12-01T00:00:00Z"
            ),
            ["11-27 03:00:00Z", "11-30 03:00:00Z"]
        );
        assert_eq!(
            firings(
                "*/20 * * * * *",
                "UTC",
                "2026-11-27T00:00:00Z",
                "2026-11-27T00:01:00Z"
            ),
            ["11-27 00:00:20Z", "11-27 00:00:40Z", "11-27 00:01:00Z"]
        );
        assert_eq!(
            firings(
                "@daily",
                "UTC",
                "2026-11-27T00:00:00Z",
                "2026-11-29T00:00:00Z"
            ),
            ["11-28 00:00:00Z", "11-29 00:00:00Z"]
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (expr, zone, expect) in [
            ("0 3 * *", None, "has 4 fields"),
            ("0 0 3 * * * 2027", None, "has 7 fields"),
            ("61 * * * *", None, "is invalid"),
            ("0 3 * * *", Some("Mars/Olympus"), "not an IANA time zone"),
            ("0 0 30 2 *", None, "never matches"),
        ] {
            let err = CronSchedule::parse(expr, zone).unwrap_err();
            assert!(err.contains(expect), "{expr}: {err}");
        }
    }
}
