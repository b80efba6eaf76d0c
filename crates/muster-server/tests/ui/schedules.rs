//! The schedules pages over plain HTTP: the list with a config file's schedule and one created
//! through the API (next and last firing, pause, buttons), a schedule's page (facts, task
//! template, firings), the Run now, Pause, Resume and Delete forms with their one-time messages
//! and CSRF, the audit log naming the UI operator, escaping, and the not-found page.

use std::time::Duration;

use muster_server::clock::Clock;
use muster_server::scheduler;
use muster_server::schedules::config::Schedule;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, secret};
use crate::incidents::{audited, part};
use crate::web::{KEY, Web};

/// What an API caller may write into a task template: markup everywhere text is free.
const HOSTILE: &str = "<script>alert(1)</script>";

/// The config file's schedule: every five minutes, UTC.
fn from_file() -> Schedule {
    let spec = serde_json::from_value(json!({
        "name": "from-file", "cron": "*/5 * * * *", "task": {"kind": "tick"}, "lock_key": "ticks"
    }))
    .unwrap();
    Schedule::resolve(spec).unwrap()
}

/// A nightly backup in Berlin whose template carries markup in its kind, capabilities,
/// payload, labels and lock key.
fn nightly() -> Value {
    json!({
        "name": "nightly",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "lock_key": format!("backups {HOSTILE}"),
        "task": {
            "kind": "backup<img src=x>",
            "capabilities": ["<i>disk</i>"],
            "payload": {"what": "photos", "note": HOSTILE},
            "labels": {"owner": "<b>ops</b>"},
            "priority": 3
        }
    })
}

/// A server with the key and [`from_file`], [`nightly`] created through the API, and the
/// client logged in.
async fn spawn() -> (TestApp, Web) {
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.schedules = vec![from_file()];
    })
    .await;
    let (status, created) = t.post("/api/v1/schedules", nightly()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let mut web = Web::new(&t);
    let login = web.login(KEY).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    (t, web)
}

async fn schedule(t: &TestApp, name: &str) -> Value {
    let (status, detail) = t.get(&format!("/api/v1/schedules/{name}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    detail
}

/// How a page shows an instant the API wrote (`2027-01-11T01:30:00Z`): as a `<time>` the
/// script localises, its attribute in milliseconds.
fn time_attr(api_time: &Value) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(api_time.as_str().expect("a time")).unwrap();
    format!(
        r#"datetime="{}""#,
        at.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

#[tokio::test]
async fn the_list_shows_config_and_api_schedules_with_their_next_and_last_firings() {
    let (t, web) = spawn().await;
    // The loop's first look notes the config file's schedule; then its next instant comes.
    scheduler::look_once(&t.app).await.expect("a look");
    let next = schedule(&t, "from-file").await["schedule"]["next_fire_at"].clone();
    let at = chrono::DateTime::parse_from_rfc3339(next.as_str().unwrap()).unwrap();
    let ahead = at.timestamp_millis() + 1_000 - t.clock.now_ms();
    t.clock.advance(Duration::from_millis(ahead as u64));
    assert_eq!(scheduler::look_once(&t.app).await.expect("a look"), 1);
    let (status, ran) = t.post("/api/v1/schedules/nightly/run", json!(null)).await;
    assert_eq!(status, StatusCode::CREATED, "{ran}");

    let list = web.get("/schedules").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert!(
        list.body
            .contains(r#"href="/schedules" aria-current="page""#),
        "the section is in the navigation: {}",
        list.body
    );
    let file = schedule(&t, "from-file").await;
    let row = part(&list.body, r#"data-schedule="from-file""#, "</tr>");
    for shown in [
        r#"href="/schedules/from-file">from-file</a>"#.to_owned(),
        "origin-config".to_owned(),
        "<code>*/5 * * * *</code>".to_owned(),
        "UTC".to_owned(),
        "<code>tick</code>".to_owned(),
        time_attr(&file["schedule"]["next_fire_at"]),
        time_attr(&next),
        "trigger-cron".to_owned(),
        format!(
            r#"href="/tasks/{}""#,
            file["firings"][0]["task_id"].as_str().unwrap()
        ),
        "state-queued".to_owned(),
        r#"class="badge active""#.to_owned(),
        r#"action="/schedules/from-file/run?back=list""#.to_owned(),
        r#"action="/schedules/from-file/pause?back=list""#.to_owned(),
    ] {
        assert!(row.contains(&shown), "{shown:?} not in {row}");
    }
    let api = schedule(&t, "nightly").await;
    let row = part(&list.body, r#"data-schedule="nightly""#, "</tr>");
    for shown in [
        "origin-api".to_owned(),
        "<code>30 2 * * *</code>".to_owned(),
        "Europe/Berlin".to_owned(),
        time_attr(&api["schedule"]["next_fire_at"]),
        "trigger-run".to_owned(),
        format!(r#"href="/tasks/{}""#, ran["task"]["id"].as_str().unwrap()),
    ] {
        assert!(row.contains(&shown), "{shown:?} not in {row}");
    }
    // The config file's schedule comes first, as the API lists them.
    assert!(
        list.body.find(r#"data-schedule="from-file""#)
            < list.body.find(r#"data-schedule="nightly""#)
    );
    // The list follows task events: a firing is a task.
    assert!(list.body.contains(r#"data-events="task""#), "{}", list.body);

    // The page of the config file's schedule: its facts, its template and the firing.
    let page = web.get("/schedules/from-file").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let facts = part(&page.body, r#"id="schedule-facts""#, "</section>");
    for shown in [
        "config file",
        "<code>*/5 * * * *</code>",
        "<code>ticks</code>",
        "skip",
    ] {
        assert!(facts.contains(shown), "{shown:?} not in {facts}");
    }
    let firings = part(&page.body, r#"id="schedule-firings""#, "</section>");
    assert!(
        firings.contains(r#"data-trigger="cron""#) && firings.contains("system"),
        "{firings}"
    );
    assert!(firings.contains(&time_attr(&next)), "{firings}");
    assert!(
        !page.body.contains("/schedules/from-file/delete"),
        "a config file's schedule is changed there, not deleted here"
    );
}

#[tokio::test]
async fn run_pause_and_resume_buttons_work_and_are_audited_as_the_ui_operator() {
    let (t, web) = spawn().await;
    let list = web.get("/schedules").await;
    let csrf = list.csrf();

    // Without the token nothing runs.
    let refused = web.post_form("/schedules/nightly/run?back=list", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(schedule(&t, "nightly").await["firings"], json!([]));

    let ran = web
        .post_form("/schedules/nightly/run?back=list", &[("csrf", &csrf)])
        .await;
    assert_eq!(ran.location(), "/schedules");
    let shown = web.follow(&ran).await;
    let detail = schedule(&t, "nightly").await;
    let firing = &detail["firings"][0];
    assert_eq!(firing["trigger"], "run", "{detail}");
    assert_eq!(firing["actor"], "operator:ui", "{detail}");
    let task = firing["task_id"].as_str().unwrap();
    assert!(
        shown.body.contains(&format!(
            "Ran nightly now: task {} (backup&lt;img src=x&gt;) is queued.",
            &task[task.len() - 8..]
        )),
        "{}",
        shown.body
    );
    let row = part(&shown.body, r#"data-schedule="nightly""#, "</tr>");
    assert!(
        row.contains(&format!(r#"href="/tasks/{task}""#)) && row.contains("trigger-run"),
        "{row}"
    );
    assert_eq!(t.task(task).await["labels"]["schedule"], "nightly");

    // Paused from its page: back to its page, the badge and who paused it.
    let paused = web
        .post_form("/schedules/nightly/pause", &[("csrf", &csrf)])
        .await;
    assert_eq!(paused.location(), "/schedules/nightly");
    let shown = web.follow(&paused).await;
    assert!(shown.body.contains("Paused nightly:"), "{}", shown.body);
    let head = part(&shown.body, r#"id="schedule-head""#, "</h1>");
    assert!(head.contains(r#"class="badge paused""#), "{head}");
    let facts = part(&shown.body, r#"id="schedule-facts""#, "</section>");
    assert!(
        facts.contains("by operator:ui") && facts.contains("none while paused"),
        "{facts}"
    );
    assert!(
        shown.body.contains(r#"action="/schedules/nightly/resume""#),
        "{}",
        shown.body
    );
    let api = schedule(&t, "nightly").await;
    assert_eq!(api["schedule"]["paused"], true);
    assert_eq!(api["schedule"]["paused_by"], "operator:ui");
    let again = web
        .post_form("/schedules/nightly/pause?back=list", &[("csrf", &csrf)])
        .await;
    assert_eq!(again.location(), "/schedules");
    let shown = web.follow(&again).await;
    assert!(
        shown.body.contains("nightly was paused already."),
        "{}",
        shown.body
    );
    let row = part(&shown.body, r#"data-schedule="nightly""#, "</tr>");
    assert!(
        row.contains(r#"class="badge paused""#)
            && row.contains("by operator:ui")
            && row.contains(r#"action="/schedules/nightly/resume?back=list""#),
        "{row}"
    );

    // Run now fires a paused schedule too.
    let ran = web
        .post_form("/schedules/nightly/run", &[("csrf", &csrf)])
        .await;
    assert_eq!(ran.location(), "/schedules/nightly");
    let shown = web.follow(&ran).await;
    let firings = part(&shown.body, r#"id="schedule-firings""#, "</section>");
    assert_eq!(
        firings.matches(r#"data-trigger="run""#).count(),
        2,
        "{firings}"
    );
    assert!(firings.contains("operator:ui"), "{firings}");

    let resumed = web
        .post_form("/schedules/nightly/resume", &[("csrf", &csrf)])
        .await;
    let shown = web.follow(&resumed).await;
    assert!(
        shown.body.contains("Resumed nightly: it fires next at"),
        "{}",
        shown.body
    );
    let api = schedule(&t, "nightly").await;
    assert_eq!(api["schedule"]["paused"], false);
    assert!(
        shown
            .body
            .contains(&time_attr(&api["schedule"]["next_fire_at"])),
        "{}",
        shown.body
    );
    let again = web
        .post_form("/schedules/nightly/resume", &[("csrf", &csrf)])
        .await;
    let shown = web.follow(&again).await;
    assert!(
        shown.body.contains("nightly was not paused."),
        "{}",
        shown.body
    );

    let actions = audited(&t, "schedule:nightly").await;
    let by_ui: Vec<&str> = actions
        .iter()
        .filter(|(actor, _)| actor == "operator:ui")
        .map(|(_, action)| action.as_str())
        .collect();
    assert_eq!(
        by_ui,
        [
            "schedule.run",
            "schedule.pause",
            "schedule.run",
            "schedule.resume"
        ],
        "{actions:?}"
    );
    let audit = web.get("/audit").await;
    assert!(
        audit.body.contains(r#"href="/schedules/nightly""#),
        "the audit page links the schedule: {}",
        audit.body
    );
}

#[tokio::test]
async fn what_a_template_carries_shows_as_text() {
    let (t, web) = spawn().await;
    t.post("/api/v1/schedules/nightly/run", json!(null)).await;
    for path in ["/schedules", "/schedules/nightly"] {
        let page = web.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let body = &page.body;
        for raw in ["<script>alert", "<img src=x>", "<i>disk", "<b>ops"] {
            assert!(!body.contains(raw), "{raw} unescaped in {path}: {body}");
        }
        assert!(body.contains("backup&lt;img src=x&gt;"), "{path}: {body}");
    }
    let page = web.get("/schedules/nightly").await;
    let task = part(&page.body, r#"id="schedule-task""#, "</section>");
    for shown in [
        "&lt;i&gt;disk&lt;/i&gt;",
        "owner=&lt;b&gt;ops&lt;/b&gt;",
        "&quot;note&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;",
        "&quot;what&quot;: &quot;photos&quot;",
    ] {
        assert!(task.contains(shown), "{shown:?} not in {task}");
    }
    let facts = part(&page.body, r#"id="schedule-facts""#, "</section>");
    assert!(
        facts.contains("backups &lt;script&gt;alert(1)&lt;/script&gt;"),
        "the lock key: {facts}"
    );
}

#[tokio::test]
async fn an_unknown_schedule_is_the_not_found_page() {
    let (t, web) = spawn().await;
    let unknown = web.get("/schedules/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert!(
        unknown.body.contains("<h1>Not found</h1>"),
        "{}",
        unknown.body
    );
    let csrf = web.get("/schedules").await.csrf();
    for action in ["run", "pause", "resume", "delete"] {
        let answer = web
            .post_form(&format!("/schedules/nope/{action}"), &[("csrf", &csrf)])
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{action}: {}",
            answer.body
        );
        assert!(
            answer.body.contains("<h1>Not found</h1>"),
            "{}",
            answer.body
        );
    }
    let (_, tasks) = t.get("/api/v1/tasks").await;
    assert_eq!(tasks["tasks"], json!([]), "nothing ran");
}

#[tokio::test]
async fn an_api_schedule_is_deleted_from_its_page_and_a_config_files_is_not() {
    let (t, web) = spawn().await;
    let page = web.get("/schedules/nightly").await;
    assert!(
        page.body.contains(r#"action="/schedules/nightly/delete""#),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let refused = web.post_form("/schedules/nightly/delete", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);

    let deleted = web
        .post_form("/schedules/nightly/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(deleted.location(), "/schedules");
    let shown = web.follow(&deleted).await;
    assert!(
        shown
            .body
            .contains("Deleted schedule nightly; the tasks it submitted stay."),
        "{}",
        shown.body
    );
    assert!(!shown.body.contains(r#"data-schedule="nightly""#));
    let (status, _) = t.get("/api/v1/schedules/nightly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        audited(&t, "schedule:nightly")
            .await
            .contains(&("operator:ui".to_owned(), "schedule.delete".to_owned()))
    );

    let config = web
        .post_form("/schedules/from-file/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(config.status, StatusCode::CONFLICT, "{}", config.body);
    assert!(config.body.contains("config file"), "{}", config.body);
}

#[tokio::test]
async fn without_schedules_the_page_says_where_they_come_from() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    let page = web.visit("/schedules").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("No schedule yet."), "{}", page.body);
    assert!(page.body.contains("[[schedules]]"), "{}", page.body);
}

#[tokio::test]
async fn a_long_history_shows_the_newest_firings_and_says_where_the_rest_are() {
    let (t, web) = spawn().await;
    for _ in 0..=scheduler::RECENT_FIRINGS {
        let (status, ran) = t.post("/api/v1/schedules/from-file/run", json!(null)).await;
        assert_eq!(status, StatusCode::CREATED, "{ran}");
        // A run is keyed by its millisecond.
        t.clock.advance(Duration::from_millis(1));
    }
    let page = web.get("/schedules/from-file").await;
    let firings = part(&page.body, r#"id="schedule-firings""#, "</section>");
    assert_eq!(
        firings.matches(r#"data-trigger="run""#).count(),
        scheduler::RECENT_FIRINGS,
        "{firings}"
    );
    assert!(
        firings.contains(r#"href="/tasks?kind=tick""#) && firings.contains("schedule=from-file"),
        "{firings}"
    );
}
