//! Schedules through the real server: the clock is moved (never waited on) across daylight
//! saving changes, restarts and outages, and every firing is read back over HTTP.

use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_server::clock::Clock;
use muster_server::scheduler;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, metrics_text, sample};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Moves the server's clock to `at` (it only moves forward).
fn clock_to(app: &TestApp, at: DateTime<Utc>) {
    let ahead = at.timestamp_millis() - app.clock.now_ms();
    assert!(ahead >= 0, "the clock only moves forward");
    app.clock.advance(Duration::from_millis(ahead as u64));
}

/// Walks the clock to `until` in 30-second steps, looking at the schedules after each: as a
/// running server would, minus the waiting.
async fn walk(app: &TestApp, until: DateTime<Utc>) {
    loop {
        let now = app.clock.now_ms();
        let step = (now + 30_000).min(until.timestamp_millis());
        clock_to(app, DateTime::from_timestamp_millis(step).unwrap());
        scheduler::look_once(&app.app).await.expect("a look");
        if step >= until.timestamp_millis() {
            return;
        }
    }
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, schedule) = app.post("/api/v1/schedules", body).await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    schedule
}

fn nightly(name: &str, missed: &str) -> Value {
    json!({
        "name": name,
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "missed": missed,
        "task": {"kind": "backup", "payload": {"what": "photos"}}
    })
}

/// The firings' instants, oldest first, and their triggers.
async fn firings(app: &TestApp, name: &str) -> Vec<(DateTime<Utc>, String)> {
    let (status, detail) = app.get(&format!("/api/v1/schedules/{name}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    let mut out: Vec<(DateTime<Utc>, String)> = detail["firings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                utc(f["fire_at"].as_str().unwrap()),
                f["trigger"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_schedule_fires_at_the_right_instants_across_daylight_saving_in_both_directions() {
    let app = TestApp::spawn().await;
    clock_to(&app, utc("2027-03-27T12:00:00Z"));
    create(&app, nightly("nightly", "skip")).await;
    let hourly = json!({"name": "hourly", "cron": "15 * * * *", "timezone": "Europe/Berlin",
                        "task": {"kind": "tick"}});
    create(&app, hourly).await;

    // Spring forward, Sunday 28 March 2027: 02:00 CET becomes 03:00 CEST, so 02:30 never
    // happens and fires once, at the end of the gap.
    walk(&app, utc("2027-03-29T02:00:00Z")).await;
    let spring = firings(&app, "nightly").await;
    assert_eq!(
        spring,
        [
            (utc("2027-03-28T01:00:00Z"), "cron".to_owned()), // 03:00 CEST, after the gap
            (utc("2027-03-29T00:30:00Z"), "cron".to_owned()), // 02:30 CEST
        ]
    );
    let hours = firings(&app, "hourly").await;
    let on_the_28th = hours
        .iter()
        .filter(|(at, _)| *at >= utc("2027-03-27T23:00:00Z") && *at < utc("2027-03-28T22:00:00Z"))
        .count();
    assert_eq!(
        on_the_28th, 24,
        "a 23-hour day: the skipped 02:15 fires once, at 03:00 after the gap, then 03:15 as usual"
    );
    assert!(hours.contains(&(utc("2027-03-28T01:00:00Z"), "cron".to_owned())));

    // Fall back, Sunday 31 October 2027: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice
    // and fires once, the first time.
    clock_to(&app, utc("2027-10-30T12:00:00Z"));
    scheduler::look_once(&app.app).await.unwrap();
    walk(&app, utc("2027-11-01T02:00:00Z")).await;
    let autumn: Vec<_> = firings(&app, "nightly")
        .await
        .into_iter()
        .filter(|(at, _)| *at > utc("2027-10-01T00:00:00Z"))
        .collect();
    assert_eq!(
        autumn,
        [
            (utc("2027-10-31T00:30:00Z"), "cron".to_owned()), // 02:30 CEST, the first one
            (utc("2027-11-01T01:30:00Z"), "cron".to_owned()), // 02:30 CET
        ]
    );
    let on_the_31st = firings(&app, "hourly")
        .await
        .iter()
        .filter(|(at, _)| *at >= utc("2027-10-30T22:00:00Z") && *at < utc("2027-10-31T23:00:00Z"))
        .count();
    assert_eq!(
        on_the_31st, 24,
        "a 25-hour day: the repeated 02:15 fires once"
    );

    // Each firing is one task, labelled and keyed by its instant.
    let (_, tasks) = app.get("/api/v1/tasks?kind=backup&limit=100").await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4);
    let keys: Vec<&str> = tasks
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"schedule:nightly:2027-03-28T01:00:00Z"),
        "{keys:?}"
    );
    for t in tasks {
        assert_eq!(t["labels"]["schedule"], "nightly");
        assert_eq!(t["payload"]["what"], "photos");
        assert_eq!(t["payload"]["schedule"], "nightly");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_firing_happens_once_across_a_restart_and_concurrent_looks() {
    let app = TestApp::spawn().await;
    clock_to(&app, utc("2027-01-10T01:00:00Z"));
    create(&app, nightly("nightly", "run_once")).await;
    clock_to(&app, utc("2027-01-10T01:30:10Z")); // 02:30:10 in Berlin
    let (a, b) = tokio::join!(
        scheduler::look_once(&app.app),
        scheduler::look_once(&app.app)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(firings(&app, "nightly").await.len(), 1);

    // The server comes back a few seconds later: the instant fired already.
    let app = app.restart_after(Duration::from_secs(5)).await;
    scheduler::look_once(&app.app).await.unwrap();
    scheduler::look_once(&app.app).await.unwrap();
    assert_eq!(
        firings(&app, "nightly").await,
        [(utc("2027-01-10T01:30:00Z"), "cron".to_owned())]
    );
    let (_, tasks) = app.get("/api/v1/tasks?kind=backup").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn missed_firings_after_downtime_follow_each_schedules_policy() {
    let app = TestApp::spawn().await;
    clock_to(&app, utc("2027-01-10T00:00:00Z"));
    create(&app, nightly("skips", "skip")).await;
    create(&app, nightly("catches-up", "run_once")).await;
    // Down from 01:00 UTC on the 10th for three days: the 02:30 firings of the 10th, 11th and
    // 12th are missed.
    clock_to(&app, utc("2027-01-10T01:00:00Z"));
    let app = app.restart_after(Duration::from_secs(3 * 86_400)).await;
    scheduler::look_once(&app.app).await.unwrap();
    assert_eq!(firings(&app, "skips").await, []);
    assert_eq!(
        firings(&app, "catches-up").await,
        [(utc("2027-01-12T01:30:00Z"), "missed".to_owned())],
        "run_once: one firing for all three, under the latest missed instant"
    );
    // Both go on as usual from then.
    walk(&app, utc("2027-01-13T01:31:00Z")).await;
    assert_eq!(
        firings(&app, "skips").await,
        [(utc("2027-01-13T01:30:00Z"), "cron".to_owned())]
    );
    assert_eq!(firings(&app, "catches-up").await.len(), 2);
    let metrics = metrics_text(&app).await;
    let count = |series: &str| sample(&metrics, series);
    assert_eq!(
        count("muster_schedule_firings_total{schedule=\"skips\",trigger=\"skipped\"}"),
        Some(3.0)
    );
    assert_eq!(
        count("muster_schedule_firings_total{schedule=\"catches-up\",trigger=\"missed\"}"),
        Some(1.0)
    );
    assert_eq!(
        count("muster_schedule_firings_total{schedule=\"catches-up\",trigger=\"skipped\"}"),
        Some(2.0)
    );
    assert_eq!(
        count("muster_schedule_firings_total{schedule=\"skips\",trigger=\"cron\"}"),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn pause_resume_and_run_now_are_audited_and_a_paused_schedule_skips() {
    let app = TestApp::spawn().await;
    clock_to(&app, utc("2027-01-10T00:00:00Z"));
    create(&app, nightly("nightly", "run_once")).await;
    let (status, paused) = app
        .post("/api/v1/schedules/nightly/pause", json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["changed"], true);
    assert_eq!(paused["schedule"]["paused"], true);
    assert_eq!(paused["schedule"]["paused_by"], "operator:api");
    assert!(paused["schedule"]["next_fire_at"].is_null());
    let (_, again) = app
        .post("/api/v1/schedules/nightly/pause", json!(null))
        .await;
    assert_eq!(again["changed"], false);

    // Paused across its instant: nothing fires, and resuming does not catch up.
    walk(&app, utc("2027-01-10T02:00:00Z")).await;
    assert_eq!(firings(&app, "nightly").await, []);
    let (status, resumed) = app
        .post("/api/v1/schedules/nightly/resume", json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["schedule"]["paused"], false);
    assert_eq!(
        resumed["schedule"]["next_fire_at"], "2027-01-11T01:30:00Z",
        "{resumed}"
    );
    scheduler::look_once(&app.app).await.unwrap();
    assert_eq!(firings(&app, "nightly").await, []);

    // Run now: a task at once, recorded as a run by the operator.
    let (status, run) = app.post("/api/v1/schedules/nightly/run", json!(null)).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["firing"]["trigger"], "run");
    assert_eq!(run["firing"]["actor"], "operator:api");
    assert_eq!(run["task"]["kind"], "backup");
    assert_eq!(run["task"]["state"], "queued");
    let (_, list) = app.get("/api/v1/schedules").await;
    let listed = &list["schedules"][0];
    assert_eq!(listed["name"], "nightly");
    assert_eq!(listed["origin"], "api");
    assert_eq!(listed["last"]["task_id"], run["task"]["id"]);

    let audit: Vec<String> = crate::audit::audit(&app)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in [
        "schedule.create",
        "schedule.pause",
        "schedule.resume",
        "schedule.run",
    ] {
        assert!(audit.iter().any(|a| a == action), "{action} in {audit:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_schedules_are_refused_with_what_is_wrong_and_change_nothing() {
    let app = TestApp::spawn().await;
    for (body, expect) in [
        (
            json!({"name": "x", "cron": "61 * * * *", "task": {"kind": "k"}}),
            "cron \"61 * * * *\" is invalid",
        ),
        (
            json!({"name": "x", "cron": "0 3 * *", "task": {"kind": "k"}}),
            "has 4 fields",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "timezone": "Mars/Olympus", "task": {"kind": "k"}}),
            "not an IANA time zone",
        ),
        (
            json!({"name": "x y", "cron": "0 3 * * *", "task": {"kind": "k"}}),
            "name \"x y\" is invalid",
        ),
        (
            json!({"name": "..", "cron": "0 3 * * *", "task": {"kind": "k"}}),
            "not dots alone",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "missed": "twice", "task": {"kind": "k"}}),
            "skip or run_once",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "task": {"kind": " "}}),
            "task.kind",
        ),
        (
            json!({"name": "x", "cron": "0 3 30 2 *", "task": {"kind": "k"}}),
            "never matches",
        ),
    ] {
        let (status, err) = app.post("/api/v1/schedules", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{body}: {message}");
    }
    let (status, _) = app
        .post(
            "/api/v1/schedules",
            json!({"name": "x", "cron": "0 3 * * *", "task": {"kind": "k"}, "extra": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, list) = app.get("/api/v1/schedules").await;
    assert_eq!(list["schedules"], json!([]));

    create(&app, nightly("nightly", "skip")).await;
    let (status, err) = app
        .post("/api/v1/schedules", nightly("nightly", "skip"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    for path in ["/api/v1/schedules/nope/run", "/api/v1/schedules/nope/pause"] {
        let (status, _) = app.post(path, json!(null)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = TestApp::send(app.request(Method::DELETE, "/api/v1/schedules/nightly")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get("/api/v1/schedules/nightly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn the_config_files_schedules_are_listed_fire_and_cannot_be_deleted_through_the_api() {
    let app = TestApp::spawn_with(|s| {
        let spec: muster_api::CreateSchedule = serde_json::from_value(json!({
            "name": "from-file", "cron": "*/5 * * * *", "task": {"kind": "tick"},
            "lock_key": "ticks"
        }))
        .unwrap();
        s.schedules = vec![muster_server::schedules::config::Schedule::resolve(spec).unwrap()];
    })
    .await;
    let (_, list) = app.get("/api/v1/schedules").await;
    assert_eq!(list["schedules"][0]["origin"], "config");
    assert_eq!(list["schedules"][0]["timezone"], "UTC");
    let (status, _) = app
        .post(
            "/api/v1/schedules",
            json!({"name": "from-file",
        "cron": "0 3 * * *", "task": {"kind": "k"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, err) =
        TestApp::send(app.request(Method::DELETE, "/api/v1/schedules/from-file")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config file")
    );

    scheduler::look_once(&app.app).await.unwrap();
    let next = utc(list["schedules"][0]["next_fire_at"].as_str().unwrap());
    walk(&app, next + chrono::TimeDelta::seconds(1)).await;
    let fired = firings(&app, "from-file").await;
    assert_eq!(fired, [(next, "cron".to_owned())]);
    let (_, tasks) = app.get("/api/v1/tasks?kind=tick").await;
    assert_eq!(tasks["tasks"][0]["lock_key"], "ticks");
    app.stop().await;
}
