//! Notifications on SQLite: recording a notice (with the quiet-period folding), the
//! messenger's due rows and attempts, the API's reads, and pruning.

use muster_api::SendOutcome;
use muster_api::{Notification, NotificationAttempt, NotificationPage, NotificationState};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::outbox::insert_outbox;
use super::rows::{enum_col, uuid_col};
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::store::{
    AfterSend, DueNotification, NewNotification, NoticeRecorded, NotificationFilter, OutboxItem,
    SendEnded, StoreResult,
};

/// Notifications deleted per retention transaction.
const PRUNE_BATCH: usize = 500;

/// Queues `items` and marks the notice's outbox row delivered, unless an earlier delivery of
/// the same row did so already.
///
/// Quiet periods, per channel and group: a notice after the period (or the first) makes a
/// message now and opens a period; one during it opens a digest due at the period's end, and
/// moves the period's end one period on, so that while the group keeps changing there is one
/// message per period; notices arriving while a digest waits (not yet tried) fold into it,
/// which then reports the last of them and how many there were.
pub(super) fn record_notice(
    conn: &Connection,
    notice_id: Uuid,
    items: Vec<NewNotification>,
    now: i64,
) -> StoreResult<NoticeRecorded> {
    let fresh = conn
        .prepare_cached(
            "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL \
             WHERE id = ?1 AND delivered_at IS NULL",
        )?
        .execute(params![notice_id.to_string(), now])?;
    let mut recorded = NoticeRecorded {
        repeated: fresh == 0,
        ..NoticeRecorded::default()
    };
    if recorded.repeated {
        return Ok(recorded);
    }
    for item in items {
        let window: Option<(i64, Option<i64>)> = conn
            .prepare_cached(
                "SELECT free_at, digest_seq FROM notify_windows WHERE channel = ?1 AND grp = ?2",
            )?
            .query_row(params![item.channel, item.group], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        if let Some(digest) = window.and_then(|(_, d)| d) {
            let folded = conn
                .prepare_cached(
                    "UPDATE notifications SET count = count + 1, event = ?2, subject = ?3, \
                     title = ?4, message = ?5, link = ?6, event_at = ?7 \
                     WHERE seq = ?1 AND state = 'pending' AND attempts = 0",
                )?
                .execute(params![
                    digest,
                    item.event,
                    item.subject,
                    item.title,
                    item.message,
                    item.link,
                    item.event_at
                ])?;
            if folded == 1 {
                recorded.folded.push(item.channel);
                continue;
            }
        }
        let quiet = item.quiet_ms.max(0);
        let (due, digest, free_at) = match window {
            Some((free_at, _)) if quiet > 0 && now < free_at => (free_at, true, free_at + quiet),
            _ => (now, false, now + quiet),
        };
        let seq = insert(conn, &notice_id, &item, due, digest, now)?;
        conn.prepare_cached(
            "INSERT INTO notify_windows (channel, grp, free_at, digest_seq) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (channel, grp) DO UPDATE \
             SET free_at = excluded.free_at, digest_seq = excluded.digest_seq",
        )?
        .execute(params![
            item.channel,
            item.group,
            free_at,
            digest.then_some(seq)
        ])?;
        recorded.queued.push(item.channel);
    }
    Ok(recorded)
}

/// Inserts one notification due at `due` (for a canary run, `notice_id` is the run's id).
pub(super) fn insert(
    conn: &Connection,
    notice_id: &Uuid,
    item: &NewNotification,
    due: i64,
    digest: bool,
    now: i64,
) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO notifications (id, notice_id, channel, event, subject, grp, title, \
             message, link, digest, event_at, state, created_at, due_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', ?12, ?13, ?13) \
             RETURNING seq",
        )?
        .query_row(
            params![
                item.id.to_string(),
                notice_id.to_string(),
                item.channel,
                item.event,
                item.subject,
                item.group,
                item.title,
                item.message,
                item.link,
                digest,
                item.event_at,
                now,
                due
            ],
            |row| row.get(0),
        )?)
}

pub(super) fn due(conn: &Connection, now: i64) -> StoreResult<Vec<DueNotification>> {
    // One row per channel, so a channel with a long backlog never hides another's.
    let mut stmt = conn.prepare_cached(
        "SELECT id, channel, event, subject, title, message, link, count, digest, event_at, \
         attempts, due_at FROM (SELECT *, ROW_NUMBER() OVER \
         (PARTITION BY channel ORDER BY next_attempt_at, seq) AS rank FROM notifications \
         WHERE state = 'pending' AND next_attempt_at <= ?1) WHERE rank = 1",
    )?;
    let rows = stmt
        .query_map([now], |row| {
            Ok(DueNotification {
                id: uuid_col(row, 0)?,
                channel: row.get(1)?,
                event: row.get(2)?,
                subject: row.get(3)?,
                title: row.get(4)?,
                message: row.get(5)?,
                link: row.get(6)?,
                count: row.get(7)?,
                digest: row.get(8)?,
                event_at: row.get(9)?,
                attempts: row.get(10)?,
                due_at: row.get(11)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn start_send(conn: &Connection, id: Uuid, now: i64, retry_at: i64) -> StoreResult<u32> {
    let started: Option<(i64, u32)> = conn
        .prepare_cached(
            "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = ?3 \
             WHERE id = ?1 AND state = 'pending' AND next_attempt_at <= ?2 \
             RETURNING seq, attempts",
        )?
        .query_row(params![id.to_string(), now, retry_at], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((seq, attempt)) = started else {
        return Err(StoreError::Conflict(format!(
            "notification {id} is not pending and due"
        )));
    };
    conn.prepare_cached(
        "INSERT INTO notification_attempts (notification_seq, attempt, started_at) \
         VALUES (?1, ?2, ?3)",
    )?
    .execute(params![seq, attempt, now])?;
    Ok(attempt)
}

pub(super) fn end_send(conn: &Connection, ended: SendEnded) -> StoreResult<()> {
    let seq: i64 = conn
        .prepare_cached("SELECT seq FROM notifications WHERE id = ?1 AND state = 'pending'")?
        .query_row([ended.id.to_string()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Conflict(format!("notification {} is not pending", ended.id)))?;
    if let Some(attempt) = ended.attempt {
        conn.prepare_cached(
            "UPDATE notification_attempts SET ended_at = ?3, status = ?4, outcome = ?5, \
             detail = ?6 WHERE notification_seq = ?1 AND attempt = ?2",
        )?
        .execute(params![
            seq,
            attempt,
            ended.at,
            ended.status,
            ended.outcome.as_str(),
            ended.detail
        ])?;
    }
    let error = (ended.outcome != SendOutcome::Delivered).then_some(ended.detail.as_str());
    match &ended.after {
        AfterSend::Delivered => conn
            .prepare_cached(
                "UPDATE notifications SET state = 'delivered', finished_at = ?2, \
                 last_error = NULL WHERE seq = ?1",
            )?
            .execute(params![seq, ended.at])?,
        AfterSend::RetryAt(at) => conn
            .prepare_cached(
                "UPDATE notifications SET next_attempt_at = ?2, last_error = ?3 WHERE seq = ?1",
            )?
            .execute(params![seq, at, error])?,
        AfterSend::Failed(reason) => conn
            .prepare_cached(
                "UPDATE notifications SET state = 'failed', finished_at = ?2, last_error = ?3 \
                 WHERE seq = ?1",
            )?
            .execute(params![seq, ended.at, reason])?,
    };
    if let Some(record) = &ended.audit {
        insert_outbox(conn, &OutboxItem::audit(record), ended.at)?;
    }
    Ok(())
}

/// Ends every attempt still open as cut off, and makes its notification due at once. Only one
/// server holds the database, so at its start no attempt can really be in flight.
pub(super) fn reclaim_sends(conn: &Connection, now: i64) -> StoreResult<u64> {
    let cut = conn
        .prepare_cached(
            "UPDATE notification_attempts SET ended_at = ?1, outcome = 'retry', \
             detail = 'cut off: the server stopped while sending' WHERE outcome IS NULL \
             RETURNING notification_seq",
        )?
        .query_map([now], |row| row.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    for seq in &cut {
        conn.prepare_cached(
            "UPDATE notifications SET next_attempt_at = ?2, \
             last_error = 'cut off: the server stopped while sending' \
             WHERE seq = ?1 AND state = 'pending'",
        )?
        .execute(params![seq, now])?;
    }
    Ok(cut.len() as u64)
}

const NOTIFICATION_COLS: &str = "seq, id, channel, event, subject, title, message, link, \
    count, digest, state, created_at, next_attempt_at, finished_at, last_error";

fn notification_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Notification)> {
    let state: NotificationState = enum_col(row, 10, NotificationState::parse)?;
    Ok((
        row.get(0)?,
        Notification {
            id: uuid_col(row, 1)?,
            channel: row.get(2)?,
            event: row.get(3)?,
            subject: row.get(4)?,
            title: row.get(5)?,
            message: row.get(6)?,
            link: row.get(7)?,
            count: row.get(8)?,
            digest: row.get(9)?,
            state,
            created_at: to_utc(row.get(11)?),
            next_attempt_at: (state == NotificationState::Pending)
                .then(|| row.get(12).map(to_utc))
                .transpose()?,
            finished_at: row.get::<_, Option<i64>>(13)?.map(to_utc),
            error: row.get(14)?,
            attempts: Vec::new(),
        },
    ))
}

fn attempts_of(conn: &Connection, seq: i64) -> StoreResult<Vec<NotificationAttempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, started_at, ended_at, outcome, status, detail \
         FROM notification_attempts WHERE notification_seq = ?1 ORDER BY attempt",
    )?;
    let attempts = stmt
        .query_map([seq], |row| {
            let outcome: Option<String> = row.get(3)?;
            Ok(NotificationAttempt {
                attempt: row.get(0)?,
                started_at: to_utc(row.get(1)?),
                ended_at: row.get::<_, Option<i64>>(2)?.map(to_utc),
                outcome: outcome
                    .as_deref()
                    .and_then(SendOutcome::parse)
                    .unwrap_or(SendOutcome::InFlight),
                status: row.get(4)?,
                detail: row.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(attempts)
}

pub(super) fn list(conn: &Connection, filter: NotificationFilter) -> StoreResult<NotificationPage> {
    let limit = filter.limit.max(1);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {NOTIFICATION_COLS} FROM notifications WHERE seq < ?1 \
         AND (?2 IS NULL OR channel = ?2) AND (?3 IS NULL OR state = ?3) \
         AND (?5 IS NULL OR subject = ?5) ORDER BY seq DESC LIMIT ?4"
    ))?;
    let rows: Vec<(i64, Notification)> = stmt
        .query_map(
            params![
                filter.before.unwrap_or(i64::MAX),
                filter.channel,
                filter.state.map(NotificationState::as_str),
                limit as i64 + 1,
                filter.subject,
            ],
            notification_from_row,
        )?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit;
    let mut notifications = Vec::with_capacity(limit);
    let mut last = None;
    for (seq, mut n) in rows.into_iter().take(limit) {
        n.attempts = attempts_of(conn, seq)?;
        notifications.push(n);
        last = Some(seq);
    }
    Ok(NotificationPage {
        notifications,
        next_before: if more { last } else { None },
    })
}

pub(super) fn one(conn: &Connection, id: Uuid) -> StoreResult<Notification> {
    let (seq, mut n) = conn
        .prepare_cached(&format!(
            "SELECT {NOTIFICATION_COLS} FROM notifications WHERE id = ?1"
        ))?
        .query_row([id.to_string()], notification_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("notification {id}")))?;
    n.attempts = attempts_of(conn, seq)?;
    Ok(n)
}

pub(super) fn prune(conn: &Connection, finished_before: i64) -> StoreResult<u64> {
    let seqs: Vec<i64> = conn
        .prepare_cached(
            "SELECT seq FROM notifications WHERE finished_at IS NOT NULL AND finished_at < ?1 \
             LIMIT ?2",
        )?
        .query_map(params![finished_before, PRUNE_BATCH as i64], |row| {
            row.get(0)
        })?
        .collect::<Result<_, _>>()?;
    for seq in &seqs {
        conn.prepare_cached("DELETE FROM notification_attempts WHERE notification_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM notifications WHERE seq = ?1")?
            .execute([seq])?;
    }
    // Quiet periods long over hold nothing back.
    conn.prepare_cached(
        "DELETE FROM notify_windows WHERE free_at < ?1 AND (digest_seq IS NULL OR digest_seq \
         NOT IN (SELECT seq FROM notifications WHERE state = 'pending'))",
    )?
    .execute([finished_before])?;
    Ok(seqs.len() as u64)
}
