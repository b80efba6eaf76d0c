//! Refusals counted per key and minute, so that what a flood of bad requests (or of messages
//! from chats nobody allowed) costs is a counter, and the audit log gets one record per key
//! and minute. A leaf module.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Keys counted at most per minute; the rest share the key `other`, so a flood from many
/// addresses cannot grow memory (or the audit log) without bound either.
const MAX_KEYS: usize = 1024;

const MINUTE_MS: i64 = 60_000;

/// What one key (a client, a hook source) counted in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub key: String,
    /// The start of the minute (ms since the epoch).
    pub minute_ms: i64,
    pub count: u64,
}

/// Refusals (wrong login keys per client, hooks with a bad signature per source) counted per
/// key and minute, in memory. The sweeper takes the minutes that are over and writes one audit
/// record for each, so a flood of guesses costs a counter increment each, not a write.
#[derive(Debug, Default)]
pub struct MinuteTally {
    counts: Mutex<BTreeMap<(i64, String), u64>>,
}

impl MinuteTally {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(i64, String), u64>> {
        self.counts.lock().expect("tally lock poisoned")
    }

    /// Counts one refusal of `client` at `now_ms`; answers its count in that minute so far, so
    /// a caller can log the first of a minute and stay quiet through a flood.
    pub fn record(&self, client: &str, now_ms: i64) -> u64 {
        let minute = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let mut counts = self.lock();
        let mut key = (minute, client.to_owned());
        if !counts.contains_key(&key) && counts.len() >= MAX_KEYS {
            key.1 = "other".to_owned();
        }
        let count = counts.entry(key).or_default();
        *count += 1;
        *count
    }

    /// Seconds until `client` may try again, when it has been refused `limit` times in the
    /// minute of `now_ms`; `None` while it may try.
    pub fn retry_after_s(&self, client: &str, now_ms: i64, limit: u64) -> Option<u64> {
        let minute = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let count = self
            .lock()
            .get(&(minute, client.to_owned()))
            .copied()
            .unwrap_or(0);
        (count >= limit).then(|| ((minute + MINUTE_MS - now_ms) as u64).div_ceil(1000))
    }

    /// Takes the tallies of the minutes that ended by `now_ms` (all of them for `i64::MAX`),
    /// oldest first.
    pub fn take_closed(&self, now_ms: i64) -> Vec<Tally> {
        let mut counts = self.lock();
        let open = counts.split_off(&(now_ms.div_euclid(MINUTE_MS) * MINUTE_MS, String::new()));
        let closed = std::mem::replace(&mut *counts, open);
        closed
            .into_iter()
            .map(|((minute_ms, key), count)| Tally {
                key,
                minute_ms,
                count,
            })
            .collect()
    }

    /// Puts tallies back that could not be recorded, to be taken again later.
    pub fn restore(&self, tallies: Vec<Tally>) {
        let mut counts = self.lock();
        for t in tallies {
            *counts.entry((t.minute_ms, t.key)).or_default() += t.count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_key_and_minute() {
        let failed = MinuteTally::default();
        for n in 0..50 {
            assert_eq!(failed.record("10.0.0.1", 60_000 + n * 100), n as u64 + 1);
        }
        failed.record("10.0.0.2", 61_000);
        failed.record("10.0.0.1", 120_500);
        assert_eq!(
            failed.take_closed(119_999),
            vec![],
            "the minute is not over"
        );
        let closed = failed.take_closed(120_000);
        assert_eq!(
            closed,
            vec![
                Tally {
                    key: "10.0.0.1".into(),
                    minute_ms: 60_000,
                    count: 50
                },
                Tally {
                    key: "10.0.0.2".into(),
                    minute_ms: 60_000,
                    count: 1
                },
            ]
        );
        failed.restore(closed);
        assert_eq!(
            failed.take_closed(180_000).len(),
            3,
            "restored and the next minute"
        );
        assert_eq!(failed.take_closed(180_000), vec![]);
    }

    #[test]
    fn a_client_with_too_many_wrong_keys_waits_for_the_next_minute() {
        let failed = MinuteTally::default();
        for n in 0..10 {
            assert_eq!(failed.retry_after_s("10.0.0.1", 60_000 + n, 10), None);
            failed.record("10.0.0.1", 60_000 + n);
        }
        assert_eq!(failed.retry_after_s("10.0.0.1", 60_500, 10), Some(60));
        assert_eq!(failed.retry_after_s("10.0.0.1", 119_001, 10), Some(1));
        assert_eq!(failed.retry_after_s("10.0.0.2", 60_500, 10), None);
        assert_eq!(failed.retry_after_s("10.0.0.1", 120_000, 10), None);
    }

    #[test]
    fn refusals_from_too_many_keys_share_one_tally() {
        let failed = MinuteTally::default();
        for n in 0..MAX_KEYS + 10 {
            failed.record(&format!("client-{n}"), 0);
        }
        let closed = failed.take_closed(MINUTE_MS);
        assert_eq!(closed.len(), MAX_KEYS + 1);
        let other = closed.iter().find(|t| t.key == "other").unwrap();
        assert_eq!(other.count, 10);
    }
}
