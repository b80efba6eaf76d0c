//! The UI over plain HTTP: every page answers, login and sessions behave, CSRF tokens are
//! required, assets are cacheable, and the key never shows.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, secret};
use crate::web::{KEY, Web};

async fn with_key() -> TestApp {
    TestApp::spawn_with(|s| s.api_key = secret(KEY)).await
}

/// A registered agent and a task that ran on it with a payload, logs and an error, so that
/// every part of every page has something to show.
async fn some_work(t: &TestApp) -> String {
    t.register("nas", &["docker"], 2).await;
    let task = t
        .submit(json!({"kind": "restart", "capabilities": ["docker"],
                       "payload": {"container": "jellyfin"}, "labels": {"env": "prod"}}))
        .await;
    t.settle().await;
    let claimed = t.claim("nas", 5).await.expect("claimed");
    let id = task["id"].as_str().unwrap().to_owned();
    let (status, _) = t
        .post(
            &format!("/api/v1/tasks/{id}/logs"),
            json!({"attempt": claimed["attempt"], "lines": [{"text": "restarting <jellyfin>"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    t.fail(&claimed, "exit code 1", false).await;
    id
}

fn pages(task_id: &str) -> Vec<String> {
    vec![
        "/".into(),
        "/agents".into(),
        "/tasks".into(),
        "/tasks?state=failed&kind=restart&agent_id=nas".into(),
        "/tasks/new".into(),
        format!("/tasks/{task_id}"),
        "/deployments".into(),
        "/deployments?repo=homelab%2Finfra".into(),
        "/schedules".into(),
        "/llm".into(),
        "/llm?days=7".into(),
        "/audit".into(),
        "/audit?before=2".into(),
        "/notifications".into(),
        "/notifications?state=failed&channel=phone".into(),
    ]
}

#[tokio::test]
async fn without_a_key_every_page_answers_and_hands_out_a_csrf_cookie() {
    let t = TestApp::spawn().await;
    let id = some_work(&t).await;
    let mut web = Web::new(&t);
    let first = web.visit("/").await;
    assert_eq!(first.status, StatusCode::OK);
    // No login, so no session: the cookie only carries what the CSRF token derives from.
    assert!(
        first.session_cookie().is_none(),
        "no session without a login"
    );
    let cookie = first.set_cookie().expect("a CSRF cookie");
    assert!(first.csrf_cookie().is_some(), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(t.app.sessions.is_empty(), "a visit stored a session");
    for path in pages(&id) {
        let page = web.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(
            page.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(page.set_cookie().is_none(), "{path}: the session is kept");
        assert!(
            !page.body.contains("/logout"),
            "{path}: nothing to log out of"
        );
    }
    // The login page has nothing to do without a key.
    let login = web.get("/login").await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    // Escaped as text, never as markup.
    let task = web.get(&format!("/tasks/{id}")).await;
    assert!(
        task.body.contains("restarting &lt;jellyfin&gt;"),
        "{}",
        task.body
    );
}

#[tokio::test]
async fn with_a_key_pages_send_the_visitor_to_the_login_page() {
    let t = with_key().await;
    let id = some_work(&t).await;
    let web = Web::new(&t);
    for path in pages(&id) {
        let page = web.get(&path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert!(page.location().starts_with("/login?next="), "{path}");
        assert!(
            page.set_cookie().is_none(),
            "{path}: no session before login"
        );
    }
    let login = web.get("/login?next=%2Ftasks").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains(r#"type="password""#));
    assert!(
        login.body.contains(r#"value="/tasks""#),
        "returns where it was"
    );
    // Nor do the live streams answer without a session.
    let events = web
        .get_with("/api/v1/events", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(events.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_a_wrong_key_gets_nothing() {
    let t = with_key().await;
    let mut web = Web::new(&t);

    let wrong = web.login("not-the-key").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.set_cookie().is_none());
    assert!(wrong.body.contains("not valid"));
    assert!(web.cookie.is_none());

    let right = web.login(KEY).await;
    assert_eq!(right.status, StatusCode::SEE_OTHER);
    assert_eq!(right.location(), "/");
    let cookie = right.set_cookie().expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(!cookie.contains(KEY));
    let overview = web.get("/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("/logout"));

    // Behind a TLS-terminating proxy the cookie is for https only.
    let proxied = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(t.url("/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("key", KEY)])
        .send()
        .await
        .unwrap();
    let cookie = proxied.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // The login page never sends anyone off-site.
    let offsite = web
        .post_form("/login", &[("key", KEY), ("next", "//evil.example/")])
        .await;
    assert_eq!(offsite.location(), "/");
}

#[tokio::test]
async fn the_key_never_appears_in_a_page() {
    let t = with_key().await;
    let id = some_work(&t).await;
    let mut web = Web::new(&t);
    let login = web.get("/login").await;
    assert!(!login.body.contains(KEY));
    let wrong = web.login(&format!("{KEY}x")).await;
    assert!(!wrong.body.contains(KEY), "a wrong key is not echoed");
    web.login(KEY).await;
    let mut checked = 0;
    for path in pages(&id) {
        let page = web.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(!page.body.contains(KEY), "{path} shows the key");
        for (name, value) in &page.headers {
            assert!(
                !value.to_str().unwrap_or("").contains(KEY),
                "{path}: header {name} carries the key"
            );
        }
        checked += 1;
    }
    // A form sent back with an error keeps what was typed, and still not the key.
    let csrf = web.get("/tasks/new").await.csrf();
    let rejected = web
        .post_form(
            "/tasks",
            &[("csrf", &csrf), ("kind", "x"), ("payload", "{oops")],
        )
        .await;
    assert!(!rejected.body.contains(KEY));
    assert_eq!(checked, pages(&id).len());
}

#[tokio::test]
async fn assets_are_served_under_content_hashes_with_long_lived_cache_headers() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    let page = web.visit("/").await;
    let urls: Vec<&str> = page
        .body
        .match_indices("/assets/")
        .map(|(at, _)| {
            let rest = &page.body[at..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    for suffix in [".css", ".js", ".svg"] {
        assert!(
            urls.iter().any(|u| u.ends_with(suffix)),
            "no {suffix} asset in {urls:?}"
        );
    }
    for url in urls {
        let asset = web.get(url).await;
        assert_eq!(asset.status, StatusCode::OK, "{url}");
        let cache = asset.headers["cache-control"].to_str().unwrap();
        assert!(
            cache.contains("max-age=31536000") && cache.contains("immutable"),
            "{url}: {cache}"
        );
        let content_type = asset.headers["content-type"].to_str().unwrap();
        let expected = match url.rsplit('.').next() {
            Some("css") => "text/css",
            Some("js") => "text/javascript",
            _ => "image/svg+xml",
        };
        assert!(content_type.starts_with(expected), "{url}: {content_type}");
        let etag = asset.headers["etag"].to_str().unwrap().to_owned();
        assert!(!asset.body.is_empty());
        let again = web.get_with(url, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{url}");
    }
    // Yesterday's name is gone rather than served today's content to be cached forever.
    let stale = web.get("/assets/muster.0000000000000000.css").await;
    assert_eq!(stale.status, StatusCode::NOT_FOUND);
    // HTML pages are never cached: they hold the session's CSRF token.
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(page.headers.contains_key("content-security-policy"));
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let t = with_key().await;
    let task = t
        .submit(json!({"kind": "waits", "capabilities": ["nobody"]}))
        .await;
    let id = task["id"].as_str().unwrap();
    let mut web = Web::new(&t);
    web.login(KEY).await;
    let csrf = web.get(&format!("/tasks/{id}")).await.csrf();

    let cancel = format!("/tasks/{id}/cancel");
    let missing = web.post_form(&cancel, &[]).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN, "{}", missing.body);
    let wrong = web.post_form(&cancel, &[("csrf", "0123abcd")]).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let submit = web
        .post_form("/tasks", &[("kind", "sneaky"), ("payload", "{}")])
        .await;
    assert_eq!(submit.status, StatusCode::FORBIDDEN);
    let logout = web.post_form("/logout", &[]).await;
    assert_eq!(logout.status, StatusCode::FORBIDDEN);
    assert_eq!(t.task(id).await["state"], "queued", "nothing changed");
    let (_, list) = t.get("/api/v1/tasks").await;
    assert_eq!(
        list["tasks"].as_array().unwrap().len(),
        1,
        "nothing submitted"
    );
    assert_eq!(web.get("/").await.status, StatusCode::OK, "still logged in");

    // Another session's token is no better than none.
    let mut other = Web::new(&t);
    other.login(KEY).await;
    let foreign = other.post_form(&cancel, &[("csrf", &csrf)]).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);

    // The same request with the token goes through.
    let done = web.post_form(&cancel, &[("csrf", &csrf)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(t.task(id).await["state"], "cancelled");
}

#[tokio::test]
async fn without_a_key_forms_still_need_the_token() {
    let t = TestApp::spawn().await;
    let task = t
        .submit(json!({"kind": "waits", "capabilities": ["nobody"]}))
        .await;
    let id = task["id"].as_str().unwrap();
    // A form another site posts to the loopback server has no session cookie (SameSite) and
    // no token.
    let stranger = Web::new(&t);
    let forged = stranger
        .post_form(&format!("/tasks/{id}/cancel"), &[])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let mut web = Web::new(&t);
    web.visit("/").await;
    let missing = web.post_form(&format!("/tasks/{id}/cancel"), &[]).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(t.task(id).await["state"], "queued");
}

#[tokio::test]
async fn a_flood_of_cookie_less_visits_cannot_end_the_operators_forms() {
    // No key: every visitor may use the UI, and each page load without a cookie used to start
    // a session, so a page looping over the UI evicted the operator's (256 at most).
    let t = TestApp::spawn().await;
    let task = t
        .submit(json!({"kind": "waits", "capabilities": ["nobody"]}))
        .await;
    let id = task["id"].as_str().unwrap();
    let mut operator = Web::new(&t);
    let csrf = operator.visit(&format!("/tasks/{id}")).await.csrf();
    let stranger = Web::new(&t);
    for _ in 0..300 {
        let page = stranger.get("/tasks/new").await;
        assert_eq!(page.status, StatusCode::OK);
    }
    let done = operator
        .post_form(&format!("/tasks/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(t.task(id).await["state"], "cancelled");
}

#[tokio::test]
async fn logins_are_limited_per_client_and_minute() {
    let t = with_key().await;
    let mut web = Web::new(&t);
    for n in 0..10 {
        let wrong = web.login(&format!("guess-{n}")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "guess {n}");
    }
    // The eleventh try in the minute is refused unread, even with the right key, so guessing
    // cannot go faster by trying the key last.
    let limited = web.login(KEY).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(limited.set_cookie().is_none(), "no session");
    assert!(web.cookie.is_none());

    // The next minute the operator gets in.
    t.advance(Duration::from_secs(60));
    let right = web.login(KEY).await;
    assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.body);
    assert!(web.cookie.is_some());
}

#[tokio::test]
async fn logout_ends_the_session_and_idle_sessions_expire() {
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.session_idle = Duration::from_secs(12 * 3600);
    })
    .await;
    let mut web = Web::new(&t);
    web.login(KEY).await;
    let csrf = web.get("/").await.csrf();
    let out = web.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/login");
    assert!(out.set_cookie().unwrap().contains("Max-Age=0"));
    let after = web.get("/").await;
    assert_eq!(
        after.status,
        StatusCode::SEE_OTHER,
        "the old cookie is dead"
    );

    web.login(KEY).await;
    t.advance(Duration::from_secs(11 * 3600));
    assert_eq!(
        web.get("/").await.status,
        StatusCode::OK,
        "used within 12 h"
    );
    t.advance(Duration::from_secs(11 * 3600));
    assert_eq!(
        web.get("/").await.status,
        StatusCode::OK,
        "use restarts the idle time"
    );
    t.advance(Duration::from_secs(13 * 3600));
    let expired = web.get("/").await;
    assert_eq!(expired.status, StatusCode::SEE_OTHER, "idle for 13 h");
    assert!(expired.location().starts_with("/login"));
}

#[tokio::test]
async fn the_session_opens_the_live_streams_but_not_the_api_that_changes_things() {
    let t = with_key().await;
    let id = some_work(&t).await;
    let mut web = Web::new(&t);
    web.login(KEY).await;
    let events = reqwest::Client::new()
        .get(t.url("/api/v1/events"))
        .header("cookie", web.cookie.clone().unwrap())
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    drop(events);
    let logs = web.get(&format!("/api/v1/tasks/{id}/logs")).await;
    assert_eq!(logs.status, StatusCode::OK);
    assert!(logs.body.contains("restarting <jellyfin>"));

    // The cookie alone never authorises the API's writes or its other reads.
    let cookie = web.cookie.clone().unwrap();
    let client = reqwest::Client::new();
    let submit = client
        .post(t.url("/api/v1/tasks"))
        .header("cookie", &cookie)
        .json(&json!({"kind": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), StatusCode::UNAUTHORIZED);
    let cancel = client
        .post(t.url(&format!("/api/v1/tasks/{id}/retry")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::UNAUTHORIZED);
    let list = client
        .get(t.url("/api/v1/agents"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_form_names_the_field_at_fault_and_keeps_what_was_typed() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    let csrf = web.visit("/tasks/new").await.csrf();
    for (field, value, expected) in [
        ("payload", "{oops", "payload: not valid JSON"),
        ("priority", "99999", "priority: must be between"),
        ("kind", "   ", "kind: must not be empty"),
        ("labels", "novalue", "labels:"),
    ] {
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("kind", "restart"),
            ("payload", "{}"),
        ];
        fields.retain(|(k, _)| *k != field);
        fields.push((field, value));
        let page = web.post_form("/tasks", &fields).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert!(page.body.contains(expected), "{field}: {}", page.body);
        assert!(
            page.body.contains(&format!(r#"id="{field}-error""#)),
            "{field}: the message sits by the field"
        );
    }
    let (_, list) = t.get("/api/v1/tasks").await;
    assert!(
        list["tasks"].as_array().unwrap().is_empty(),
        "nothing submitted"
    );

    let ok = web
        .post_form(
            "/tasks",
            &[
                ("csrf", &csrf),
                ("kind", "restart"),
                ("capabilities", "docker, gpu"),
                ("payload", r#"{"container": "jellyfin"}"#),
                ("priority", "7"),
                ("labels", "env=prod"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let id = ok.location().strip_prefix("/tasks/").expect("to the task");
    let task = t.task(id).await;
    assert_eq!(task["payload"]["container"], "jellyfin");
    assert_eq!(task["capabilities"], json!(["docker", "gpu"]));
    assert_eq!(task["priority"], 7);
    assert_eq!(task["labels"]["env"], "prod");
}

#[tokio::test]
async fn the_api_health_and_metrics_are_untouched() {
    let t = with_key().await;
    let web = Web::new(&t);
    let health = web.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.body.contains("\"status\":\"ok\""));
    assert_eq!(web.get("/metrics").await.status, StatusCode::OK);
    let missing = web.get("/api/v1/nothing-here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("\"code\":\"not_found\""));
    let (status, _) = t.get("/api/v1/agents").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_overview_counts_what_finished_in_the_last_minute_and_hour() {
    let t = TestApp::spawn().await;
    t.register("nas", &[], 1).await;
    t.submit(json!({"kind": "quick"})).await;
    t.settle().await;
    let claimed = t.claim("nas", 5).await.expect("claimed");
    t.complete(&claimed, json!({})).await;
    let mut web = Web::new(&t);
    let figure = |n: u32, label: &str| {
        format!(r#"<span class="value">{n}</span><span class="label">{label}</span>"#)
    };
    let page = web.visit("/").await.body;
    assert!(
        page.contains(&figure(1, "completed, last minute")),
        "{page}"
    );
    assert!(page.contains(&figure(1, "completed, last hour")));
    assert!(page.contains(&figure(1, "online")));

    t.advance(Duration::from_secs(120));
    let page = web.get("/").await.body;
    assert!(
        page.contains(&figure(0, "completed, last minute")),
        "{page}"
    );
    assert!(page.contains(&figure(1, "completed, last hour")));
    t.advance(Duration::from_secs(3600));
    let page = web.get("/").await.body;
    assert!(page.contains(&figure(0, "completed, last hour")), "{page}");
}

#[tokio::test]
async fn the_overview_shows_each_canarys_last_verdict() {
    let spec: muster_server::canaries::CanarySpec =
        toml::from_str("name = \"path\"\ncron = \"0 3 1 1 *\"").unwrap();
    let canary = muster_server::canaries::Canary::resolve(spec, &[]).unwrap();
    let t = TestApp::spawn_with(|s| s.canaries = vec![canary]).await;
    let mut web = Web::new(&t);
    let page = web.visit("/").await.body;
    assert!(
        page.contains(r#"<section id="canaries" data-live"#),
        "{page}"
    );
    assert!(page.contains("not run yet"), "{page}");

    // The agent answers the run's task by hand, echoing the nonce.
    t.register("nas", &[], 1).await;
    let (status, run) = t.post("/api/v1/canaries/path/run", json!(null)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let claimed = t.claim("nas", 10).await.expect("the run's task");
    let answer = json!({"nonce": claimed["payload"]["nonce"], "agent": "nas"});
    t.complete(&claimed, answer).await;
    let page = crate::helpers::eventually("the overview shows the pass", || async {
        let page = web.get("/").await.body;
        page.contains(r#"<span class="badge outcome-passed">passed</span>"#)
            .then_some(page)
    })
    .await;
    assert!(page.contains(" ms</td>"), "the latency: {page}");

    // Nobody takes the next run's task: it fails at the agent leg once the deadline passed.
    t.post("/api/v1/agents/nas/drain", json!(null)).await;
    let (status, _) = t.post("/api/v1/canaries/path/run", json!(null)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    crate::helpers::eventually("the run's task is submitted", || async {
        let (_, list) = t.get("/api/v1/canaries").await;
        list["canaries"][0]["running"]["task_id"]
            .as_str()
            .map(|_| ())
    })
    .await;
    t.advance(Duration::from_secs(61));
    let page = crate::helpers::eventually("the overview shows the failure", || async {
        let page = web.get("/").await.body;
        page.contains(r#"<span class="badge outcome-failed">failed</span>"#)
            .then_some(page)
    })
    .await;
    assert!(
        page.contains("<strong>agent</strong>: no agent took the task within 1m"),
        "{page}"
    );
}

#[tokio::test]
async fn drain_and_remove_buttons_take_the_apis_path() {
    let t = with_key().await;
    t.register("nas", &["docker"], 1).await;
    t.register("pi kitchen", &["docker"], 1).await;
    let mut web = Web::new(&t);
    web.login(KEY).await;
    let page = web.get("/agents").await;
    assert!(
        page.body.contains(r#"action="/agents/pi%20kitchen/drain""#),
        "ids are encoded"
    );
    let csrf = page.csrf();

    let drained = web.post_form("/agents/nas/drain", &[("csrf", &csrf)]).await;
    assert_eq!(drained.status, StatusCode::SEE_OTHER, "{}", drained.body);
    assert_eq!(drained.location(), "/agents");
    let (_, agent) = t.get("/api/v1/agents/nas").await;
    assert_eq!(agent["status"], "draining");
    // The drained agent's card offers Undrain, which takes the API's path too.
    let page = web.get("/agents").await;
    assert!(page.body.contains(r#"action="/agents/nas/undrain""#));
    let undrained = web
        .post_form("/agents/nas/undrain", &[("csrf", &csrf)])
        .await;
    assert_eq!(
        undrained.status,
        StatusCode::SEE_OTHER,
        "{}",
        undrained.body
    );
    let (_, agent) = t.get("/api/v1/agents/nas").await;
    assert_eq!(agent["status"], "online");
    // A queued task's page says why it waits.
    let (_, task) = t
        .post(
            "/api/v1/tasks",
            json!({"kind": "render", "capabilities": ["gpu"]}),
        )
        .await;
    let shown = web
        .get(&format!("/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert!(
        shown
            .body
            .contains("Waiting: no registered agent has capabilities [gpu]"),
        "{}",
        shown.body
    );

    let removed = web
        .post_form("/agents/pi%20kitchen/remove", &[("csrf", &csrf)])
        .await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.body);
    let (status, _) = t.get("/api/v1/agents/pi%20kitchen").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let again = web
        .post_form("/agents/pi%20kitchen/remove", &[("csrf", &csrf)])
        .await;
    assert_eq!(
        again.status,
        StatusCode::NOT_FOUND,
        "an error page, not a crash"
    );
    assert!(again.body.contains("not found"));
}

#[tokio::test]
async fn an_offline_agent_shows_no_load() {
    let t = TestApp::spawn().await;
    t.register("gone", &[], 1).await;
    t.register("here", &[], 1).await;
    let load = json!({"cpu_percent": 87.0, "memory_percent": 64.0});
    for agent in ["gone", "here"] {
        let (status, _) = t.heartbeat(agent, load.clone()).await;
        assert_eq!(status, StatusCode::OK);
    }
    t.advance(t.app.settings().heartbeat_timeout + Duration::from_secs(1));
    let (status, _) = t.heartbeat("here", load).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t.sweep().await.agents_offline, ["gone"]);

    let mut web = Web::new(&t);
    let overview = web.visit("/").await.body;
    let row = |page: &str, start: &str, end: &str| -> String {
        let from = page
            .find(start)
            .unwrap_or_else(|| panic!("no {start:?} in {page}"));
        let to = page[from..].find(end).map_or(page.len(), |i| from + i);
        page[from..to].to_owned()
    };
    let gone = row(&overview, r#"href="/agents#agent-gone""#, "</tr>");
    assert!(!gone.contains("<meter"), "stale load bars: {gone}");
    assert!(
        gone.contains("No current load") || gone.contains("no current load"),
        "{gone}"
    );
    let here = row(&overview, r#"href="/agents#agent-here""#, "</tr>");
    assert!(here.contains("<meter") && here.contains("87%"), "{here}");

    let agents = web.get("/agents").await.body;
    let gone = row(&agents, r#"id="agent-gone""#, "</article>");
    assert!(!gone.contains("<meter"), "stale load bars: {gone}");
    let here = row(&agents, r#"id="agent-here""#, "</article>");
    assert!(here.contains("<meter"), "{here}");
}

#[tokio::test]
async fn an_unknown_path_is_a_page_for_a_browser_and_json_for_a_client() {
    // `ui::fallback` is what the top-level router answers unknown paths with; served alone
    // here, as the router in `http` mounts it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, muster_server::ui::fallback())
            .await
            .unwrap()
    });
    let client = reqwest::Client::new();
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for path in ["/nothing-here", "/tasks/x/y/z", "/api/v1/nothing-here"] {
        let page = client
            .get(format!("{base}{path}"))
            .header("accept", browser_accept)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(
            page.headers().contains_key("content-security-policy"),
            "{path}: the UI's headers"
        );
        let body = page.text().await.unwrap();
        assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
        assert!(body.contains("<h1>Not found</h1>"), "{body}");
        assert!(body.contains(r#"href="/""#), "a way back: {body}");
        assert!(
            body.contains("/assets/muster."),
            "the UI's stylesheet: {body}"
        );

        for accept in [None, Some("application/json"), Some("*/*")] {
            let mut req = client.get(format!("{base}{path}"));
            if let Some(accept) = accept {
                req = req.header("accept", accept);
            }
            let answer = req.send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path} {accept:?}");
            let body: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{path} {accept:?}");
        }
    }
    let post = client
        .post(format!("{base}/nothing-here"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::NOT_FOUND);
    server.abort();
}
