//! Notifications end to end: a real server, real notices from task failures and agents going
//! offline, and fake services on loopback answering as the real ones do. Each test proves its
//! point by the order of events (what a fake has received, what the server says), never by
//! timing.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use muster_server::config::PublicUrl;
use muster_server::notify::{Channel, ChannelSpec, NotifyConfig, Rule, RuleSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::fake_service::{FakeService, Reply};
use crate::helpers::{TestApp, eventually};

const SECRET: &str = "whsec-notifications-test-0123456789";

/// Channels and rules from their TOML, as the config file would give them.
fn config(channels: &[String], rules: &[&str]) -> NotifyConfig {
    let env = |name: &str| (name == "HOOK_SECRET").then(|| SECRET.to_owned());
    let channels: Vec<Channel> = channels
        .iter()
        .map(|text| {
            let spec: ChannelSpec = toml::from_str(text).expect("channel TOML");
            Channel::resolve(spec, &env).expect("a valid channel")
        })
        .collect();
    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    let rules = rules
        .iter()
        .map(|text| {
            let spec: RuleSpec = toml::from_str(text).expect("rule TOML");
            Rule::resolve(spec, &names).expect("a valid rule")
        })
        .collect();
    NotifyConfig {
        channels: channels.into_iter().map(std::sync::Arc::new).collect(),
        rules,
    }
}

/// A webhook channel to `fake` with a short backoff, so retries come within a test.
fn webhook(name: &str, fake: &FakeService, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_env = \"HOOK_SECRET\"\n\
         backoff = \"20ms\"\n{extra}",
        fake.url
    )
}

async fn notifications(t: &TestApp) -> Vec<Value> {
    let (status, page) = t.get("/api/v1/notifications?limit=200").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut list = page["notifications"].as_array().unwrap().clone();
    list.reverse();
    list
}

/// Waits until the notification for `channel` is in `state`.
async fn settled(t: &TestApp, channel: &str, state: &str) -> Value {
    eventually(&format!("a {state} notification for {channel}"), || async {
        notifications(t)
            .await
            .into_iter()
            .find(|n| n["channel"] == channel && n["state"] == state)
    })
    .await
}

/// Registers `agent`, submits a task that may not retry, and fails it for good.
async fn failed_task(t: &TestApp, agent: &str, kind: &str, error: &str) -> Value {
    t.register(agent, &[], 4).await;
    let task = t
        .submit(json!({"kind": kind, "max_retries": 0, "labels": {"env": "prod"}}))
        .await;
    t.settle().await;
    let claimed = t.claim(agent, 5).await.expect("the task is claimed");
    assert_eq!(claimed["id"], task["id"]);
    let (status, failed) = t.fail(&claimed, error, false).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "failed");
    failed
}

fn verify_signature(request: &crate::fake_service::Recorded) {
    let timestamp = request.header("x-muster-timestamp").expect("a timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        request.header("x-muster-signature"),
        Some(format!("sha256={expected}").as_str()),
        "the signature is HMAC-SHA256 of \"timestamp.body\""
    );
}

#[tokio::test]
async fn a_failed_task_reaches_the_webhook_once_after_three_500s_signed_and_on_record() {
    let fake = FakeService::start().await;
    for _ in 0..3 {
        fake.reply_next(Reply::status(500, "{\"error\":\"down\"}"));
    }
    let notify = config(
        &[webhook("hook", &fake, "")],
        &["on = [\"task.failed\"]\nto = [\"hook\"]\nkinds = [\"backup\"]"],
    );
    let t = TestApp::spawn_with(|s| {
        s.notify = notify;
        s.public_url = Some(PublicUrl::parse("https://muster.example").unwrap());
    })
    .await;
    // A failure of another kind does not match the rule.
    failed_task(&t, "nas", "thumbnail", "ignored").await;
    let task = failed_task(&t, "nas", "backup", "disk <full> & *stuck*").await;
    let id = task["id"].as_str().unwrap();

    let delivered = settled(&t, "hook", "delivered").await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 4, "three 500s, then the one delivery");
    let delivery = delivered["id"].as_str().unwrap();
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(
            request.header("x-muster-delivery"),
            Some(delivery),
            "one delivery id"
        );
        assert_eq!(request.header("x-muster-event"), Some("task.failed"));
        verify_signature(request);
    }
    let body = requests[3].json();
    assert_eq!(body["event"], "task.failed");
    assert_eq!(body["title"], "Task backup failed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with(": disk <full> & *stuck*"),
        "{body}"
    );
    assert_eq!(body["link"], format!("https://muster.example/tasks/{id}"));
    assert_eq!(body["subject"], format!("task:{id}"));

    let outcomes: Vec<&str> = delivered["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "delivered"]);
    assert_eq!(delivered["attempts"][0]["status"], 500);
    assert_eq!(
        notifications(&t).await.len(),
        1,
        "the thumbnail failure sent nothing"
    );

    let metrics = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "muster_notifications_total{channel=\"hook\",outcome=\"delivered\"} 1",
        "muster_notification_attempts_total{channel=\"hook\",outcome=\"retry\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let entry = eventually("the delivery in the audit log", || async {
        let (_, page) = t.get("/api/v1/audit?limit=1000").await;
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "notification.delivered")
            .cloned()
    })
    .await;
    assert_eq!(entry["subject"], format!("notification:{delivery}"));
    assert_eq!(entry["detail"]["attempts"], 4);
}

#[tokio::test]
async fn a_429_with_retry_after_waits_as_long_as_the_service_asks() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::status(429, "slow down").with_header("Retry-After", "120"));
    let notify = config(
        &[webhook("hook", &fake, "")],
        &["on = [\"task.failed\"]\nto = [\"hook\"]"],
    );
    let t = TestApp::spawn_with(|s| s.notify = notify).await;
    failed_task(&t, "nas", "backup", "boom").await;
    let pending = eventually("the first attempt on record", || async {
        notifications(&t).await.into_iter().find(|n| {
            n["attempts"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["outcome"] == "retry")
        })
    })
    .await;
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["attempts"][0]["status"], 429);
    let ended =
        chrono::DateTime::parse_from_rfc3339(pending["attempts"][0]["ended_at"].as_str().unwrap())
            .unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(pending["next_attempt_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        (next - ended).num_seconds(),
        120,
        "Retry-After: 120 is honoured"
    );
    assert_eq!(fake.requests().len(), 1);

    t.advance(Duration::from_secs(121));
    let delivered = settled(&t, "hook", "delivered").await;
    assert_eq!(delivered["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_hanging_channel_holds_up_neither_tasks_nor_another_channel() {
    let stuck = FakeService::start().await;
    stuck.default_reply(Reply::Hang);
    let fine = FakeService::start().await;
    let notify = config(
        &[
            webhook("stuck", &stuck, "timeout = \"60s\""),
            webhook("fine", &fine, ""),
        ],
        &["on = [\"task.failed\"]\nto = [\"stuck\", \"fine\"]"],
    );
    let t = TestApp::spawn_with(|s| s.notify = notify).await;
    failed_task(&t, "nas", "backup", "first").await;
    fine.wait_for(1).await;
    stuck.wait_for(1).await;

    // The stuck channel still holds its request: tasks go on, and the other channel gets
    // the next failure while the stuck one has not answered the first.
    let task = t.submit(json!({"kind": "work"})).await;
    t.settle().await;
    let claimed = t
        .claim("nas", 5)
        .await
        .expect("claimed while a channel hangs");
    let (status, done) = t.complete(&claimed, json!({"ok": true})).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    assert_eq!(done["id"], task["id"]);
    // Another kind: failures of one kind within the quiet period would fold into a digest.
    failed_task(&t, "nas", "restore", "second").await;
    let second = fine.wait_for(2).await;
    assert!(
        second[1].json()["message"]
            .as_str()
            .unwrap()
            .ends_with(": second")
    );
    assert_eq!(
        stuck.requests().len(),
        1,
        "one request in flight per channel: the stuck channel's second message waits"
    );
    let held = notifications(&t)
        .await
        .into_iter()
        .filter(|n| n["channel"] == "stuck")
        .collect::<Vec<_>>();
    assert_eq!(held.len(), 2);
    assert_eq!(held[0]["attempts"][0]["outcome"], "in_flight");
    assert!(held.iter().all(|n| n["state"] == "pending"));
}

#[tokio::test]
async fn a_flapping_agent_makes_one_message_per_quiet_period_with_a_count() {
    let fake = FakeService::start().await;
    let notify = config(
        &[webhook("hook", &fake, "")],
        &["on = [\"agent.*\"]\nto = [\"hook\"]\nquiet = \"10m\""],
    );
    let t = TestApp::spawn_with(|s| s.notify = notify).await;
    t.register("pi", &[], 1).await;
    let first = fake.wait_for(1).await;
    assert_eq!(first[0].json()["event"], "agent.online");

    // Three times: silent past the heartbeat timeout (offline), then heard from (online).
    for _ in 0..3 {
        t.advance(Duration::from_secs(91));
        t.sweep().await;
        let (status, _) = t.heartbeat("pi", json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let digest = eventually("six notices folded into one digest", || async {
        notifications(&t)
            .await
            .into_iter()
            .find(|n| n["digest"] == true && n["count"] == 6)
    })
    .await;
    assert_eq!(digest["state"], "pending");
    assert_eq!(
        digest["event"], "agent.online",
        "the digest reports the latest"
    );
    assert_eq!(notifications(&t).await.len(), 2, "one message, one digest");
    assert_eq!(
        fake.requests().len(),
        1,
        "nothing more within the quiet period"
    );

    t.advance(Duration::from_secs(600));
    let sent = fake.wait_for(2).await;
    let body = sent[1].json();
    assert_eq!(body["count"], 6);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("(6 events like this since the last message"),
        "{body}"
    );
    settled(&t, "hook", "delivered").await;
}

#[tokio::test]
async fn a_refusal_fails_at_once_and_a_test_message_reports_the_answer() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::status(401, "{\"error\":\"bad token\"}"));
    let notify = config(
        &[webhook("hook", &fake, "")],
        &["on = [\"task.failed\"]\nto = [\"hook\"]"],
    );
    let t = TestApp::spawn_with(|s| s.notify = notify).await;
    failed_task(&t, "nas", "backup", "boom").await;
    let failed = settled(&t, "hook", "failed").await;
    assert_eq!(
        failed["attempts"].as_array().unwrap().len(),
        1,
        "a 401 is not retried"
    );
    assert!(
        failed["error"].as_str().unwrap().contains("401"),
        "{failed}"
    );

    let (status, channels) = t.get("/api/v1/notify/channels").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(channels[0]["name"], "hook");
    assert_eq!(channels[0]["kind"], "webhook");
    assert_eq!(channels[0]["events"], json!(["task.failed"]));
    assert!(!channels.to_string().contains(SECRET));

    let (status, result) = t.post("/api/v1/notify/channels/hook/test", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["delivered"], true);
    assert_eq!(result["status"], 200);
    let requests = fake.requests();
    assert_eq!(requests.last().unwrap().json()["event"], "notify.test");
    verify_signature(requests.last().unwrap());

    fake.reply_next(Reply::status(503, "maintenance"));
    let (_, result) = t.post("/api/v1/notify/channels/hook/test", json!({})).await;
    assert_eq!(
        (result["delivered"].as_bool(), result["outcome"].as_str()),
        (Some(false), Some("retry"))
    );
    assert!(
        result["detail"].as_str().unwrap().contains("maintenance"),
        "{result}"
    );

    let (status, missing) = t.post("/api/v1/notify/channels/nope/test", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hook"),
        "{missing}"
    );

    let (status, bad) = t.get("/api/v1/notifications?state=lost").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pending, delivered, failed")
    );
}

#[tokio::test]
async fn a_send_cut_off_by_a_stop_goes_out_after_the_restart_under_its_delivery_id() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::Hang);
    let channels = [webhook("hook", &fake, "timeout = \"1h\"")];
    let rules = ["on = [\"task.failed\"]\nto = [\"hook\"]"];
    let notify = config(&channels, &rules);
    let t = TestApp::spawn_with(|s| s.notify = notify).await;
    failed_task(&t, "nas", "backup", "boom").await;
    let first = fake.wait_for(1).await;

    let notify = config(&channels, &rules);
    let t = t.restart_with(|s| s.notify = notify).await;
    let again = fake.wait_for(2).await;
    assert_eq!(
        again[1].header("x-muster-delivery"),
        first[0].header("x-muster-delivery"),
        "the same delivery id"
    );
    let delivered = settled(&t, "hook", "delivered").await;
    let attempts = delivered["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{delivered}");
    assert!(
        attempts[0]["detail"].as_str().unwrap().contains("cut off"),
        "{delivered}"
    );
}
