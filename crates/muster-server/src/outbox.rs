//! Outbox delivery: takes due rows, hands each to its topic's consumer, and marks it delivered
//! or schedules a retry with capped exponential backoff, so whatever a committed change must
//! cause (an audit entry, a notice for the notification rules, a deployment's commit status
//! for its forge) happens at least once, after a crash too. [`deliver_once`] is one step;
//! [`run`] adds the waiting: it wakes when a commit wrote outbox rows and polls every second
//! besides, and ends when the server shuts down. Rows for remote services (commit statuses)
//! go in a lane of their own, so a forge that hangs never delays an audit entry.
//!
//! The rows and their types belong to the store ([`crate::store::OutboxItem`]): a row is
//! written inside the transaction of the change that causes it. Consumers de-duplicate by the
//! row's id, since a crash between a consumer's success and [`Store::mark_delivered`] delivers
//! the row again.
//!
//! [`Store::mark_delivered`]: crate::store::Store::mark_delivered

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::app::App;
use crate::audit::AuditRecord;
use crate::commit_status;
use crate::notice::Notice;
use crate::store::{
    Lane, NewNotification, OutboxFailure, OutboxItem, OutboxRow, RetryPolicy, StoreResult, Topic,
};

/// Rows taken per step.
const BATCH: usize = 256;

/// How often the loop looks for due rows when no commit woke it: retries come due this way,
/// and so do rows another process wrote.
const POLL: Duration = Duration::from_secs(1);

/// Backoff of a failing delivery: 1 s after the first failure, doubling, at most 5 minutes, with
/// jitter so rows that failed together spread out. Delivery never gives up: what is in the
/// outbox must not be lost, and a consumer that is down for a day is retried every 5 minutes.
pub const BACKOFF: RetryPolicy = RetryPolicy {
    backoff_base_ms: 1_000,
    backoff_max_ms: 300_000,
};

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub delivered: usize,
    pub failed: usize,
}

pub async fn run(app: Arc<App>) {
    // The store wakes one waiter per commit; each lane keeps its own wake-up, so neither
    // misses one while the other waits.
    let written = app.store.outbox_written();
    let lanes = [Arc::new(Notify::new()), Arc::new(Notify::new())];
    let forward = {
        let lanes = lanes.clone();
        let shutdown = app.shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = written.notified() => lanes.iter().for_each(|l| l.notify_one()),
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    let [local, remote] = lanes;
    tokio::join!(
        forward,
        run_lane(app.clone(), Lane::Local, local),
        run_lane(app, Lane::Remote, remote)
    );
}

async fn run_lane(app: Arc<App>, lane: Lane, wake: Arc<Notify>) {
    loop {
        let full = match deliver_lane(&app, lane).await {
            Ok(step) => step.delivered + step.failed == BATCH,
            Err(err) => {
                tracing::error!(error = %err, ?lane, "outbox delivery failed");
                false
            }
        };
        if full && !app.shutdown.is_cancelled() {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

/// Delivers the rows of both lanes due at the clock's current time, up to one batch each.
pub async fn deliver_once(app: &App) -> StoreResult<Delivered> {
    let local = deliver_lane(app, Lane::Local).await?;
    let remote = deliver_lane(app, Lane::Remote).await?;
    Ok(Delivered {
        delivered: local.delivered + remote.delivered,
        failed: local.failed + remote.failed,
    })
}

/// Delivers the rows of `lane` due at the clock's current time, up to one batch.
async fn deliver_lane(app: &App, lane: Lane) -> StoreResult<Delivered> {
    let now = app.now_ms();
    let due = app.store.due_outbox(now, BATCH, lane).await?;
    if due.is_empty() {
        return Ok(Delivered::default());
    }
    let mut delivered: Vec<Uuid> = Vec::new();
    let mut failed: Vec<(OutboxRow, String)> = Vec::new();
    let mut audit: Vec<(OutboxRow, AuditRecord)> = Vec::new();
    let mut notices = 0;
    let mut status_sent: HashMap<String, Result<(), String>> = HashMap::new();
    for row in due {
        match Topic::parse(&row.topic) {
            Some(Topic::Audit) => match serde_json::from_value(row.payload.clone()) {
                Ok(record) => audit.push((row, record)),
                Err(err) => failed.push((row, format!("not an audit record: {err}"))),
            },
            // Recording a notice marks its row delivered in the same transaction.
            Some(Topic::Notice) => match record_notice(app, &row, now).await {
                Ok(()) => notices += 1,
                Err(why) => failed.push((row, why)),
            },
            // One deployment's rows in a batch make one call: the state as it is now.
            Some(Topic::CommitStatus) => match row.payload["deployment"].as_str() {
                Some(id) => {
                    let id = id.to_owned();
                    let sent = match status_sent.get(&id) {
                        Some(sent) => sent.clone(),
                        None => {
                            let sent = commit_status::send_commit_status(app, &id).await;
                            status_sent.insert(id, sent.clone());
                            sent
                        }
                    };
                    match sent {
                        Ok(()) => delivered.push(row.id),
                        Err(why) => failed.push((row, why)),
                    }
                }
                None => failed.push((row, "not a commit status: no deployment".into())),
            },
            None => {
                let why = format!("no consumer for topic {:?} in this build", row.topic);
                failed.push((row, why));
            }
        }
    }
    if !audit.is_empty() {
        let records = audit.iter().map(|(row, r)| (row.id, r.clone())).collect();
        match app.store.append_audit(records).await {
            Ok(_) => delivered.extend(audit.iter().map(|(row, _)| row.id)),
            Err(err) => {
                let why = format!("appending to the audit log: {err}");
                failed.extend(audit.into_iter().map(|(row, _)| (row, why.clone())));
            }
        }
    }
    let step = Delivered {
        delivered: delivered.len() + notices,
        failed: failed.len(),
    };
    if !delivered.is_empty() {
        app.store.mark_delivered(delivered, now).await?;
    }
    if !failed.is_empty() {
        for (row, why) in &failed {
            tracing::warn!(id = %row.id, topic = row.topic, attempts = row.attempts + 1,
                error = why, "outbox delivery failed; will retry");
        }
        let failures = failed
            .into_iter()
            .map(|(row, error)| OutboxFailure {
                id: row.id,
                next_attempt_at: now + BACKOFF.delay_ms(row.attempts + 1),
                error,
            })
            .collect();
        app.store.mark_failed(failures).await?;
    }
    Ok(step)
}

/// Queues a notice's notifications: one per channel that a matching rule sends it to (the
/// first such rule's words and quiet period), in the store's one transaction with marking the
/// row delivered.
async fn record_notice(app: &App, row: &OutboxRow, now: i64) -> Result<(), String> {
    let notice: Notice =
        serde_json::from_value(row.payload.clone()).map_err(|e| format!("not a notice: {e}"))?;
    let settings = app.settings();
    let public_url = settings.public_url.as_ref().map(|u| u.as_str());
    let mut items: Vec<NewNotification> = Vec::new();
    for rule in settings.notify.rules.iter().filter(|r| r.matches(&notice)) {
        for channel in &rule.to {
            if items.iter().any(|i| &i.channel == channel) {
                continue;
            }
            let words = rule.render(&notice, public_url);
            items.push(NewNotification {
                id: Uuid::now_v7(),
                channel: channel.clone(),
                event: notice.event.clone(),
                subject: notice.subject.clone(),
                group: notice.group.clone(),
                title: words.title,
                message: words.message,
                link: words.link,
                event_at: notice.at,
                quiet_ms: rule.quiet.as_millis() as i64,
            });
        }
    }
    let recorded = app
        .store
        .record_notice(row.id, items, now)
        .await
        .map_err(|e| format!("recording the notice: {e}"))?;
    let metrics = &app.changes.metrics;
    for channel in &recorded.queued {
        metrics.notification_queued(channel, "queued");
    }
    for channel in &recorded.folded {
        metrics.notification_queued(channel, "folded");
    }
    if !recorded.queued.is_empty() {
        app.messenger_wake.notify_one();
    }
    Ok(())
}

/// Writes audit records that no other change carries (logins, config reloads) to the outbox;
/// the commit wakes the delivery loop.
pub async fn record_audit(app: &App, records: Vec<AuditRecord>) -> StoreResult<()> {
    let items = records.iter().map(OutboxItem::audit).collect();
    app.store.enqueue(items, app.now_ms()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_backoff_doubles_and_is_capped() {
        let at = |n| BACKOFF.delay_ms_with(n, 1.0);
        assert_eq!(at(1), 1_000);
        assert_eq!(at(2), 2_000);
        assert_eq!(at(5), 16_000);
        assert_eq!(at(9), 256_000);
        assert_eq!(at(10), 300_000);
        assert_eq!(at(1_000), 300_000);
    }
}
