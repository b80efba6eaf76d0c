//! When to try again: the provider's own word (`Retry-After`, in seconds or as an HTTP date,
//! or `retry-after-ms`), or else a backoff that doubles up to a cap. Pure, so it is tested
//! without a clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

/// The wait before the first retry when the provider gives none; it doubles with each retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait the backoff grows to.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait a call makes before trying again. A provider asking for more (a daily
/// quota, an hour's cool-down) gets no retry: the call returns at once with the wait it asked
/// for, and the caller decides, rather than a task hanging in a sleep nobody sees.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// The wait before retry number `retry` (1 for the first) when the provider gave none.
pub(crate) fn backoff(retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// The wait an answer asks for: `retry-after-ms` (OpenAI's finer-grained header), else
/// `Retry-After`, measured from `now` when it is a date.
pub(crate) fn asked_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("retry-after-ms")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| header("retry-after").and_then(|value| retry_after(value, now)))
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date already past means now).
/// Public because every HTTP caller of muster reads it the same way (the server's notifiers
/// and forge calls too).
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // The HTTP date's preferred form (`Sun, 06 Nov 1994 08:49:37 GMT`) is an RFC 2822 date.
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let waits: Vec<Duration> = (1..=8).map(backoff).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000].map(Duration::from_millis)
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 0).unwrap();
        let asked = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            asked_wait(&headers, now)
        };
        assert_eq!(asked(&[]), None);
        assert_eq!(asked(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(
            asked(&[("retry-after", " 120 ")]),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            asked(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            asked(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(asked(&[("retry-after", "soon")]), None);
        assert_eq!(asked(&[("retry-after", "-5")]), None);
        assert_eq!(
            asked(&[("retry-after", "2"), ("retry-after-ms", "1500")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            asked(&[("retry-after", "2"), ("retry-after-ms", "x")]),
            Some(Duration::from_secs(2))
        );
    }
}
