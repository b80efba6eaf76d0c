//! Notices and notifications against every backend: which changes write a notice (in their
//! own transaction), quiet periods folding notices into one digest, a redelivered notice
//! changing nothing, and a notification's attempts from due to delivered or failed.

use muster_api::{NotificationState, SendOutcome};
use muster_server::notice::Notice;
use muster_server::store::{AfterSend, NewNotification, NotificationFilter, SendEnded, Topic};

use crate::*;

/// The notices written and not yet consumed, oldest first.
async fn notices(b: &Backend, now: i64) -> Vec<(Uuid, Notice)> {
    b.store
        .due_outbox(now, 1000, muster_server::store::Lane::Local)
        .await
        .expect("due outbox")
        .into_iter()
        .filter(|row| row.topic == Topic::Notice.as_str())
        .map(|row| {
            (
                row.id,
                serde_json::from_value(row.payload).expect("a notice"),
            )
        })
        .collect()
}

/// Consumes every notice without queuing anything.
async fn consume(b: &Backend, now: i64) {
    for (id, _) in notices(b, now).await {
        b.store
            .record_notice(id, Vec::new(), now)
            .await
            .expect("record");
    }
}

#[tokio::test]
async fn a_task_failing_for_good_writes_a_notice_with_its_kind_labels_and_error() {
    for b in backends().await {
        let mut t = new_task(1);
        t.kind = "backup".into();
        t.labels.insert("env".into(), "prod".into());
        let task = running(&b, t, "a1", T0).await;
        consume(&b, T0).await;
        // A retryable failure with a retry left queues it again: no notice.
        fail(&b, task.id, 1, "flaky".into(), true, T0 + 1).await;
        assert!(
            notices(&b, T0 + 1).await.is_empty(),
            "[{}] a retry is no failure",
            b.name
        );
        let seq = b.store.queued(0, 10).await.unwrap()[0].seq;
        assign(&b, seq, "a1", T0 + 5_000).await.expect("assigned");
        b.store
            .claim("a1", T0 + 5_000, T0 + 65_000)
            .await
            .expect("claim");
        fail(&b, task.id, 2, "disk full".into(), true, T0 + 6_000).await;
        let found = notices(&b, T0 + 6_000).await;
        assert_eq!(found.len(), 1, "[{}] one notice", b.name);
        let notice = &found[0].1;
        assert_eq!(notice.event, "task.failed", "[{}]", b.name);
        assert_eq!(notice.subject, format!("task:{}", task.id), "[{}]", b.name);
        assert_eq!(notice.task_kind(), Some("backup"), "[{}]", b.name);
        assert_eq!(notice.task_label("env"), Some("prod"), "[{}]", b.name);
        assert_eq!(notice.data["task"]["error"], "disk full", "[{}]", b.name);
        assert_eq!(notice.data["task"]["attempt"], 2, "[{}]", b.name);

        // A completed task writes none.
        let ok = running(&b, new_task(0), "a1", T0 + 7_000).await;
        consume(&b, T0 + 7_000).await;
        complete(&b, ok.id, 1, json!({}), None, T0 + 8_000).await;
        assert!(notices(&b, T0 + 8_000).await.is_empty(), "[{}]", b.name);
    }
}

#[tokio::test]
async fn agents_going_offline_and_coming_back_write_notices_once_per_change() {
    for b in backends().await {
        b.store
            .register_agent(registration("pi", Some("i1")), T0)
            .await
            .expect("register");
        let first = notices(&b, T0).await;
        assert_eq!(first.len(), 1, "[{}] a new agent is announced", b.name);
        assert_eq!(first[0].1.event, "agent.online", "[{}]", b.name);
        assert_eq!(first[0].1.data["agent"]["first"], true, "[{}]", b.name);
        consume(&b, T0).await;

        // Registering again while online announces nothing.
        b.store
            .register_agent(registration("pi", Some("i1")), T0 + 1)
            .await
            .expect("register again");
        assert!(notices(&b, T0 + 1).await.is_empty(), "[{}]", b.name);

        b.store.agent_offline("pi", T0 + 2).await.expect("offline");
        // A second sweep finding it offline announces nothing more.
        b.store.agent_offline("pi", T0 + 3).await.expect("offline");
        let off = notices(&b, T0 + 3).await;
        assert_eq!(
            off.iter()
                .map(|(_, n)| n.event.as_str())
                .collect::<Vec<_>>(),
            ["agent.offline"],
            "[{}]",
            b.name
        );
        consume(&b, T0 + 3).await;

        b.store.agent_back("pi", T0 + 4).await.expect("back");
        b.store.agent_back("pi", T0 + 5).await.expect("back again");
        let back = notices(&b, T0 + 5).await;
        assert_eq!(back.len(), 1, "[{}]", b.name);
        assert_eq!(back[0].1.event, "agent.online", "[{}]", b.name);
        assert_eq!(back[0].1.data["agent"]["first"], false, "[{}]", b.name);
        consume(&b, T0 + 5).await;

        // Offline, then a new process registers: back online.
        b.store.agent_offline("pi", T0 + 6).await.expect("offline");
        b.store
            .register_agent(registration("pi", Some("i2")), T0 + 7)
            .await
            .expect("register");
        let events: Vec<String> = notices(&b, T0 + 7)
            .await
            .into_iter()
            .map(|(_, n)| n.event)
            .collect();
        assert_eq!(events, ["agent.offline", "agent.online"], "[{}]", b.name);
    }
}

fn item(channel: &str, group: &str, title: &str, quiet_ms: i64, at: i64) -> NewNotification {
    NewNotification {
        id: Uuid::now_v7(),
        channel: channel.into(),
        event: "agent.offline".into(),
        subject: format!("agent:{group}"),
        group: format!("agent:{group}"),
        title: title.into(),
        message: format!("{title}!"),
        link: None,
        event_at: at,
        quiet_ms,
    }
}

/// Writes a notice row and records it with `items`.
async fn record(b: &Backend, items: Vec<NewNotification>, now: i64) -> Uuid {
    let notice = Notice::agent_offline("x", "x.lan", now);
    let row = muster_server::store::OutboxItem::notice(&notice);
    let id = row.id;
    b.store.enqueue(vec![row], now).await.expect("enqueue");
    let recorded = b.store.record_notice(id, items, now).await.expect("record");
    assert!(!recorded.repeated, "[{}] a fresh notice", b.name);
    id
}

/// One attempt that delivers the notification.
async fn deliver(b: &Backend, id: Uuid, now: i64) {
    let attempt = b
        .store
        .start_send(id, now, now + 40_000)
        .await
        .expect("start");
    b.store
        .end_send(SendEnded {
            id,
            attempt: Some(attempt),
            outcome: SendOutcome::Delivered,
            status: Some(200),
            detail: String::new(),
            after: AfterSend::Delivered,
            at: now,
            audit: None,
        })
        .await
        .expect("end");
}

async fn all(b: &Backend) -> Vec<muster_api::Notification> {
    let mut page = b
        .store
        .notifications(NotificationFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list");
    page.notifications.reverse();
    page.notifications
}

#[tokio::test]
async fn notices_of_one_group_within_the_quiet_period_fold_into_one_digest_with_a_count() {
    const Q: i64 = 60_000;
    for b in backends().await {
        record(&b, vec![item("phone", "pi", "down 1", Q, T0)], T0).await;
        record(
            &b,
            vec![item("phone", "pi", "up 2", Q, T0 + 1_000)],
            T0 + 1_000,
        )
        .await;
        record(
            &b,
            vec![item("phone", "pi", "down 3", Q, T0 + 2_000)],
            T0 + 2_000,
        )
        .await;
        // Another group, and the same group on another channel, are not held back.
        record(
            &b,
            vec![item("phone", "nas", "nas down", Q, T0 + 3_000)],
            T0 + 3_000,
        )
        .await;
        record(
            &b,
            vec![item("pager", "pi", "pager", Q, T0 + 3_000)],
            T0 + 3_000,
        )
        .await;
        let rows = all(&b).await;
        let summary: Vec<(&str, &str, u32, bool)> = rows
            .iter()
            .map(|n| (n.channel.as_str(), n.title.as_str(), n.count, n.digest))
            .collect();
        assert_eq!(
            summary,
            [
                ("phone", "down 1", 1, false),
                ("phone", "down 3", 2, true),
                ("phone", "nas down", 1, false),
                ("pager", "pager", 1, false),
            ],
            "[{}] the digest reports the last notice and counts two",
            b.name
        );
        // The phone's messages go out oldest first; the digest is due at the end of the quiet
        // period, not before.
        deliver(&b, rows[0].id, T0 + 10).await;
        deliver(&b, rows[2].id, T0 + 3_010).await;
        let due = b.store.due_notifications(T0 + Q - 1).await.unwrap();
        assert!(
            due.iter().all(|d| d.channel != "phone"),
            "[{}] the digest waits for the period's end",
            b.name
        );
        let due = b.store.due_notifications(T0 + Q).await.unwrap();
        let digest = due
            .iter()
            .find(|d| d.channel == "phone")
            .expect("digest due");
        assert!(digest.digest, "[{}]", b.name);
        assert_eq!(digest.count, 2, "[{}]", b.name);

        // Once its attempt started, it takes no more folding: a notice now opens the next
        // digest, due one period later.
        b.store
            .start_send(digest.id, T0 + Q + 1, T0 + Q + 40_000)
            .await
            .expect("the digest's attempt starts");
        record(
            &b,
            vec![item("phone", "pi", "down 4", Q, T0 + Q + 2)],
            T0 + Q + 2,
        )
        .await;
        let next = all(&b).await.into_iter().last().unwrap();
        assert_eq!(
            (next.title.as_str(), next.digest),
            ("down 4", true),
            "[{}]",
            b.name
        );
        let at = next.next_attempt_at.unwrap().timestamp_millis();
        assert_eq!(at, T0 + 2 * Q, "[{}] due one period later", b.name);

        // Long after (the waiting digest sent), a notice makes a message at once again.
        deliver(&b, next.id, T0 + 2 * Q).await;
        record(
            &b,
            vec![item("phone", "pi", "down 5", Q, T0 + 10 * Q)],
            T0 + 10 * Q,
        )
        .await;
        let last = all(&b).await.into_iter().last().unwrap();
        assert_eq!(
            (last.title.as_str(), last.digest),
            ("down 5", false),
            "[{}]",
            b.name
        );
        let at = last.next_attempt_at.unwrap().timestamp_millis();
        assert_eq!(at, T0 + 10 * Q, "[{}]", b.name);
    }
}

#[tokio::test]
async fn a_redelivered_notice_changes_nothing_and_a_zero_quiet_period_sends_each() {
    for b in backends().await {
        let id = record(&b, vec![item("phone", "pi", "one", 0, T0)], T0).await;
        let again = b
            .store
            .record_notice(id, vec![item("phone", "pi", "one", 0, T0)], T0 + 1)
            .await
            .expect("record again");
        assert!(again.repeated, "[{}]", b.name);
        assert!(
            again.queued.is_empty() && again.folded.is_empty(),
            "[{}]",
            b.name
        );
        record(&b, vec![item("phone", "pi", "two", 0, T0 + 2)], T0 + 2).await;
        let titles: Vec<String> = all(&b).await.into_iter().map(|n| n.title).collect();
        assert_eq!(titles, ["one", "two"], "[{}]", b.name);
        assert!(
            notices(&b, T0 + 5).await.is_empty(),
            "[{}] recording marked the rows delivered",
            b.name
        );
    }
}

#[tokio::test]
async fn a_notification_is_due_one_per_channel_and_its_attempts_are_kept() {
    for b in backends().await {
        record(
            &b,
            vec![
                item("phone", "a", "a", 0, T0),
                item("hook", "a", "h", 0, T0),
            ],
            T0,
        )
        .await;
        record(&b, vec![item("phone", "b", "b", 0, T0)], T0).await;
        let due = b.store.due_notifications(T0).await.unwrap();
        let mut channels: Vec<&str> = due.iter().map(|d| d.channel.as_str()).collect();
        channels.sort();
        assert_eq!(channels, ["hook", "phone"], "[{}] one per channel", b.name);
        let a = due.iter().find(|d| d.channel == "phone").unwrap().clone();
        assert_eq!(a.title, "a", "[{}] the oldest first", b.name);

        let attempt = b.store.start_send(a.id, T0, T0 + 40_000).await.unwrap();
        assert_eq!(attempt, 1, "[{}]", b.name);
        let due = b.store.due_notifications(T0 + 1).await.unwrap();
        let phone = due.iter().find(|d| d.channel == "phone").unwrap();
        assert_eq!(phone.title, "b", "[{}] in flight is not due", b.name);
        b.store
            .end_send(SendEnded {
                id: a.id,
                attempt: Some(1),
                outcome: SendOutcome::Retry,
                status: Some(500),
                detail: "500 Internal Server Error".into(),
                after: AfterSend::RetryAt(T0 + 5_000),
                at: T0 + 10,
                audit: None,
            })
            .await
            .unwrap();
        assert_conflict(
            &b,
            "an attempt before it is due",
            b.store.start_send(a.id, T0 + 4_999, T0 + 50_000).await,
        );
        let attempt = b
            .store
            .start_send(a.id, T0 + 5_000, T0 + 50_000)
            .await
            .unwrap();
        assert_eq!(attempt, 2, "[{}]", b.name);
        b.store
            .end_send(SendEnded {
                id: a.id,
                attempt: Some(2),
                outcome: SendOutcome::Delivered,
                status: Some(200),
                detail: "{\"ok\":true}".into(),
                after: AfterSend::Delivered,
                at: T0 + 5_100,
                audit: None,
            })
            .await
            .unwrap();
        let shown = b.store.notification(a.id).await.unwrap();
        assert_eq!(shown.state, NotificationState::Delivered, "[{}]", b.name);
        assert_eq!(shown.error, None, "[{}]", b.name);
        let outcomes: Vec<(SendOutcome, Option<u16>)> = shown
            .attempts
            .iter()
            .map(|a| (a.outcome, a.status))
            .collect();
        assert_eq!(
            outcomes,
            [
                (SendOutcome::Retry, Some(500)),
                (SendOutcome::Delivered, Some(200))
            ],
            "[{}]",
            b.name
        );
        assert_conflict(
            &b,
            "a delivered notification",
            b.store.start_send(a.id, T0 + 9_000, T0 + 50_000).await,
        );

        // Filters and pruning.
        let delivered = b
            .store
            .notifications(NotificationFilter {
                state: Some(NotificationState::Delivered),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(delivered.notifications.len(), 1, "[{}]", b.name);
        let hook = b
            .store
            .notifications(NotificationFilter {
                channel: Some("hook".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(hook.notifications[0].title, "h", "[{}]", b.name);
        let page = b
            .store
            .notifications(NotificationFilter {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.next_before.is_some(), "[{}] a second page", b.name);
        assert_eq!(
            b.store.prune_notifications(T0 + 5_100).await.unwrap(),
            0,
            "[{}]",
            b.name
        );
        assert_eq!(
            b.store.prune_notifications(T0 + 5_101).await.unwrap(),
            1,
            "[{}]",
            b.name
        );
        assert_not_found(
            &b,
            "a pruned notification",
            b.store.notification(a.id).await,
        );
        assert_eq!(all(&b).await.len(), 2, "[{}] pending ones stay", b.name);
    }
}

#[tokio::test]
async fn attempts_a_stopped_server_left_open_end_as_cut_off_and_come_due_at_once() {
    for b in backends().await {
        record(&b, vec![item("hook", "a", "a", 0, T0)], T0).await;
        let due = b.store.due_notifications(T0).await.unwrap();
        b.store
            .start_send(due[0].id, T0, T0 + 40_000)
            .await
            .unwrap();
        b.store.close().await;
        let store = (b.reopen)().await;
        assert!(
            store.due_notifications(T0 + 1).await.unwrap().is_empty(),
            "[{}] in flight",
            b.name
        );
        assert_eq!(
            store.reclaim_sends(T0 + 2).await.unwrap(),
            1,
            "[{}]",
            b.name
        );
        assert_eq!(
            store.reclaim_sends(T0 + 3).await.unwrap(),
            0,
            "[{}] once",
            b.name
        );
        let again = store.due_notifications(T0 + 2).await.unwrap();
        assert_eq!(again.len(), 1, "[{}] due at once", b.name);
        assert_eq!(
            (again[0].id, again[0].attempts),
            (due[0].id, 1),
            "[{}] the same id",
            b.name
        );
        let shown = store.notification(due[0].id).await.unwrap();
        assert_eq!(
            shown.attempts[0].outcome,
            SendOutcome::Retry,
            "[{}]",
            b.name
        );
        assert!(
            shown.attempts[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("cut off"),
            "[{}]",
            b.name
        );
        store.close().await;
    }
}
