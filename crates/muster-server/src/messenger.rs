//! The messenger: sends due notifications over their channels, one in flight per channel, so a
//! channel that hangs or fails holds up only its own messages, never a task, a heartbeat or
//! another channel. Each attempt is recorded; a failure is retried with backoff (or when the
//! service's `Retry-After` says), until delivered, refused, or given up on after the channel's
//! `give_up_after`.
//!
//! An attempt is started in the store before the request goes out and puts the next attempt
//! a little after the request's timeout. If the server dies mid-send, the next start ends the
//! open attempt as cut off and sends again at once, under the same id (sent as the delivery
//! id, so a receiver that saw the first attempt can tell).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use muster_api::{NotifyTestResult, SendOutcome};
use tokio::task::JoinSet;

use crate::app::App;
use crate::audit::{Actor, AuditRecord};
use crate::clock::to_utc;
use crate::error::StoreError;
use crate::notify::{Channel, Message, Outcome, channels};
use crate::store::{AfterSend, DueNotification, RetryPolicy, SendEnded, StoreResult};

/// How often the loop looks for due notifications when nothing woke it (retries come due).
const POLL: Duration = Duration::from_secs(1);

/// After a request's timeout, how long before an attempt that never ended (the server died
/// mid-send) is tried again.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(30);

/// Longest wait between attempts, whatever the backoff or a `Retry-After` asks.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Backoff doubles from the channel's `backoff` up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

pub async fn run(app: Arc<App>) {
    // Built at the first send: a TLS client config with its root store is a good part of a
    // megabyte, which a server without notifications should not carry.
    let mut client: Option<reqwest::Client> = None;
    match app.store.reclaim_sends(app.now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            attempts = n,
            "notifications cut off mid-send by the last stop go out again now"
        ),
        Err(err) => {
            tracing::error!(error = %err, "could not reclaim notifications cut off mid-send")
        }
    }
    // Sends in flight, by the channel each holds. Owned here, so that when the server stops
    // and aborts this loop, they are aborted too (and reclaimed at the next start).
    let mut sending = Sending::default();
    loop {
        if let Err(err) = start_due(&app, &mut client, &mut sending).await {
            tracing::error!(error = %err, "looking for due notifications failed");
        }
        tokio::select! {
            Some(done) = sending.tasks.join_next_with_id(), if !sending.tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => {
                        tracing::error!(error = %err, "a notification send ended abnormally");
                        err.id()
                    }
                };
                sending.channels.remove(&id);
            }
            _ = app.messenger_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

#[derive(Default)]
struct Sending {
    tasks: JoinSet<()>,
    channels: HashMap<tokio::task::Id, String>,
}

impl Sending {
    fn busy(&self, channel: &str) -> bool {
        self.channels.values().any(|c| c == channel)
    }
}

/// Starts an attempt for each channel that has a due notification and none in flight.
async fn start_due(
    app: &Arc<App>,
    client: &mut Option<reqwest::Client>,
    sending: &mut Sending,
) -> StoreResult<()> {
    let now = app.now_ms();
    let settings = app.settings();
    for due in app.store.due_notifications(now).await? {
        if sending.busy(&due.channel) {
            continue;
        }
        let Some(channel) = settings.notify.channel(&due.channel).cloned() else {
            let reason = format!(
                "channel {:?} is no longer configured (removed from [[notify.channels]])",
                due.channel
            );
            drop_unsendable(app, &due, reason, now).await?;
            continue;
        };
        let in_flight_until = now + (channel.timeout + IN_FLIGHT_MARGIN).as_millis() as i64;
        let attempt = match app.store.start_send(due.id, now, in_flight_until).await {
            Ok(attempt) => attempt,
            // Delivered or dropped meanwhile (another process on the same database).
            Err(StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err),
        };
        let name = channel.name.clone();
        let client = client.get_or_insert_with(channels::client).clone();
        let app = app.clone();
        let task = sending.tasks.spawn(async move {
            attempt_send(&app, &client, &channel, due, attempt).await;
        });
        sending.channels.insert(task.id(), name);
    }
    Ok(())
}

async fn drop_unsendable(
    app: &App,
    due: &DueNotification,
    reason: String,
    now: i64,
) -> StoreResult<()> {
    tracing::warn!(id = %due.id, channel = due.channel, reason, "notification dropped");
    app.changes
        .metrics
        .notification_queued(&due.channel, "failed");
    let audit = AuditRecord::notification_failed(
        now,
        due.id,
        &due.channel,
        &due.event,
        &due.subject,
        &reason,
    );
    app.store
        .end_send(SendEnded {
            id: due.id,
            attempt: None,
            outcome: SendOutcome::Refused,
            status: None,
            detail: reason.clone(),
            after: AfterSend::Failed(reason),
            at: now,
            audit: Some(audit),
        })
        .await
}

/// One attempt: send, decide what follows, record both.
async fn attempt_send(
    app: &App,
    client: &reqwest::Client,
    channel: &Channel,
    due: DueNotification,
    attempt: u32,
) {
    let message = message_of(&due);
    let outcome = channels::send(client, channel, &message, to_utc(app.now_ms())).await;
    let now = app.now_ms();
    let next = decide(channel, &due, attempt, &outcome, now, jitter());
    let metrics = &app.changes.metrics;
    let (send_outcome, detail) = outcome.recorded();
    let detail = detail.to_owned();
    metrics
        .notification_attempts
        .with_label_values(&[channel.name.as_str(), send_outcome.as_str()])
        .inc();
    let audit = match &next {
        AfterSend::Delivered => {
            metrics.notification_queued(&channel.name, "delivered");
            tracing::info!(id = %due.id, channel = channel.name, event = due.event, attempt,
                "notification delivered");
            Some(AuditRecord::notification_delivered(
                now,
                due.id,
                &channel.name,
                &due.event,
                &due.subject,
                attempt,
            ))
        }
        AfterSend::RetryAt(at) => {
            tracing::warn!(id = %due.id, channel = channel.name, attempt, error = detail,
                retry_in_ms = at - now, "notification not delivered; will retry");
            None
        }
        AfterSend::Failed(reason) => {
            metrics.notification_queued(&channel.name, "failed");
            tracing::error!(id = %due.id, channel = channel.name, attempt, reason,
                "notification failed");
            Some(AuditRecord::notification_failed(
                now,
                due.id,
                &channel.name,
                &due.event,
                &due.subject,
                reason,
            ))
        }
    };
    let ended = SendEnded {
        id: due.id,
        attempt: Some(attempt),
        outcome: send_outcome,
        status: outcome.status(),
        detail,
        after: next,
        at: now,
        audit,
    };
    if let Err(err) = app.store.end_send(ended).await {
        // The attempt stays open; the notification comes due again after IN_FLIGHT_MARGIN.
        tracing::error!(id = %due.id, error = %err, "recording a notification attempt failed");
    }
}

fn jitter() -> f64 {
    0.5 + rand::random::<f64>()
}

/// What follows an attempt: delivered; refused (failed at once); or a retry after the
/// service's `Retry-After` or the channel's backoff, unless that would pass the channel's
/// `give_up_after`, counted from when the notification was first due.
fn decide(
    channel: &Channel,
    due: &DueNotification,
    attempt: u32,
    outcome: &Outcome,
    now: i64,
    jitter: f64,
) -> AfterSend {
    match outcome {
        Outcome::Delivered { .. } => AfterSend::Delivered,
        Outcome::Refused { status, error } => {
            AfterSend::Failed(format!("refused by the service ({status}): {error}"))
        }
        Outcome::Retry { after, error, .. } => {
            let backoff = RetryPolicy {
                backoff_base_ms: channel.backoff.as_millis() as i64,
                backoff_max_ms: MAX_BACKOFF.as_millis() as i64,
            };
            let delay = match after {
                Some(after) => after.min(&MAX_DELAY).as_millis() as i64,
                None => backoff.delay_ms_with(attempt, jitter),
            };
            let give_up_at = due.due_at + channel.give_up_after.as_millis() as i64;
            if now + delay > give_up_at {
                let spent = humantime::format_duration(Duration::from_secs(
                    ((now - due.due_at).max(0) / 1000) as u64,
                ));
                AfterSend::Failed(format!(
                    "gave up after {attempt} attempt{} over {spent} (give_up_after is {}): {error}",
                    if attempt == 1 { "" } else { "s" },
                    humantime::format_duration(channel.give_up_after)
                ))
            } else {
                AfterSend::RetryAt(now + delay.max(1))
            }
        }
    }
}

/// The message a notification row sends; a digest says how many events it stands for.
fn message_of(due: &DueNotification) -> Message {
    let body = if due.digest {
        let events = if due.count == 1 { "event" } else { "events" };
        format!(
            "{}\n\n({} {events} like this since the last message; the latest is shown.)",
            due.message, due.count
        )
    } else {
        due.message.clone()
    };
    Message {
        id: due.id,
        event: due.event.clone(),
        title: due.title.clone(),
        body,
        link: due.link.clone(),
        at: to_utc(due.event_at),
        count: due.count,
        subject: due.subject.clone(),
    }
}

/// Sends a test message over `channel` at once (not through the store) and reports what the
/// service answered; audited.
pub async fn send_test(app: &App, channel: &Channel, actor: Actor) -> NotifyTestResult {
    let settings = app.settings();
    let now = app.now_ms();
    let message = Message {
        id: uuid::Uuid::now_v7(),
        event: "notify.test".to_owned(),
        title: "muster: test notification".to_owned(),
        body: format!(
            "If you can read this, the channel {:?} works. Sent by `muster notify test`.",
            channel.name
        ),
        link: settings
            .public_url
            .as_ref()
            .map(|u| format!("{u}/notifications")),
        at: Utc::now(),
        count: 1,
        subject: format!("channel:{}", channel.name),
    };
    let started = Instant::now();
    let client = channels::client();
    let outcome = channels::send(&client, channel, &message, to_utc(now)).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let (send_outcome, detail) = outcome.recorded();
    let detail = detail.to_owned();
    let record = AuditRecord::notify_tested(
        app.now_ms(),
        actor,
        &channel.name,
        send_outcome.as_str(),
        outcome.status(),
    );
    if let Err(err) = crate::outbox::record_audit(app, vec![record]).await {
        tracing::error!(error = %err, "auditing a test notification failed");
    }
    NotifyTestResult {
        channel: channel.name.clone(),
        delivered: send_outcome == SendOutcome::Delivered,
        outcome: send_outcome,
        status: outcome.status(),
        detail,
        duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::ChannelSpec;

    fn channel() -> Channel {
        let spec = ChannelSpec {
            name: "phone".into(),
            kind: "ntfy".into(),
            url: Some("https://ntfy.example/homelab".into()),
            give_up_after: Some("1h".into()),
            ..ChannelSpec::default()
        };
        let channel = Channel::resolve(spec, &|_| None).expect("a valid channel");
        assert_eq!(
            channel.backoff,
            Duration::from_secs(5),
            "the default backoff"
        );
        channel
    }

    fn due(digest: bool, count: u32) -> DueNotification {
        DueNotification {
            id: uuid::Uuid::nil(),
            channel: "phone".into(),
            event: "agent.offline".into(),
            subject: "agent:pi".into(),
            title: "Agent pi is offline".into(),
            message: "No heartbeat".into(),
            link: None,
            count,
            digest,
            event_at: 0,
            attempts: 0,
            due_at: 1_000_000,
        }
    }

    fn retry(after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            status: Some(503),
            after,
            error: "503 Service Unavailable".into(),
        }
    }

    #[test]
    fn failures_back_off_doubling_or_as_the_service_asks() {
        let (c, d) = (channel(), due(false, 1));
        let now = 1_000_000;
        assert_eq!(
            decide(&c, &d, 1, &retry(None), now, 1.0),
            AfterSend::RetryAt(now + 5_000)
        );
        assert_eq!(
            decide(&c, &d, 3, &retry(None), now, 1.0),
            AfterSend::RetryAt(now + 20_000)
        );
        assert_eq!(
            decide(&c, &d, 20, &retry(None), now, 1.0),
            AfterSend::RetryAt(now + 600_000)
        );
        let asked = retry(Some(Duration::from_secs(7)));
        assert_eq!(
            decide(&c, &d, 1, &asked, now, 1.0),
            AfterSend::RetryAt(now + 7_000)
        );
        // A Retry-After of a day is capped at an hour.
        let long = retry(Some(Duration::from_secs(86_400)));
        assert_eq!(
            decide(&c, &d, 1, &long, now, 1.0),
            AfterSend::RetryAt(now + 3_600_000)
        );
        let delivered = Outcome::Delivered {
            status: 200,
            answer: String::new(),
        };
        assert_eq!(
            decide(&c, &d, 1, &delivered, now, 1.0),
            AfterSend::Delivered
        );
        let refused = Outcome::Refused {
            status: 401,
            error: "Unauthorized".into(),
        };
        let AfterSend::Failed(why) = decide(&c, &d, 1, &refused, now, 1.0) else {
            panic!("a refusal is final")
        };
        assert_eq!(why, "refused by the service (401): Unauthorized");
    }

    #[test]
    fn a_notification_is_given_up_once_the_next_try_would_pass_give_up_after() {
        let (c, d) = (channel(), due(false, 1));
        let late = d.due_at + 3_590_000;
        let AfterSend::Failed(why) = decide(&c, &d, 12, &retry(None), late, 1.0) else {
            panic!("past give_up_after")
        };
        assert_eq!(
            why,
            "gave up after 12 attempts over 59m 50s (give_up_after is 1h): 503 Service Unavailable"
        );
        assert!(matches!(
            decide(&c, &d, 2, &retry(None), d.due_at + 60_000, 1.0),
            AfterSend::RetryAt(_)
        ));
    }

    #[test]
    fn a_digest_says_how_many_events_it_stands_for() {
        assert_eq!(message_of(&due(false, 1)).body, "No heartbeat");
        assert_eq!(
            message_of(&due(true, 4)).body,
            "No heartbeat\n\n(4 events like this since the last message; the latest is shown.)"
        );
        assert!(message_of(&due(true, 1)).body.contains("(1 event like"));
    }
}
