//! What an operator does in a real browser: log in, watch agents and logs arrive live, submit
//! and cancel tasks. Each test leaves a screenshot in `target/ui-screenshots/`.

use reqwest::StatusCode;
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::{TestApp, secret};
use crate::web::{KEY, Web};

async fn with_key() -> TestApp {
    TestApp::spawn_with(|s| s.api_key = secret(KEY)).await
}

/// Logs in through the form, as a person would.
async fn log_in(b: &Browser, t: &TestApp) {
    b.goto(&t.url("/")).await;
    b.wait_path("/login").await;
    b.fill("#key", KEY).await;
    b.click("form[action='/login'] button[type=submit]").await;
    b.wait_text("main h1", "Overview").await;
}

/// A running task on agent `runner`; returns the task as claimed (with its attempt).
async fn running_task(t: &TestApp, kind: &str) -> serde_json::Value {
    t.register("runner", &["shell"], 2).await;
    t.submit(json!({"kind": kind, "capabilities": ["shell"], "payload": {"n": 1}}))
        .await;
    t.settle().await;
    t.claim("runner", 5).await.expect("the task is claimed")
}

#[tokio::test]
async fn logging_in_with_the_key_opens_the_overview() {
    let t = with_key().await;
    let Some(b) = Browser::start("login").await else {
        return;
    };
    log_in(&b, &t).await;
    assert_eq!(b.path().await, "/");
    let source = b.client.source().await.unwrap();
    assert!(!source.contains(KEY), "the key is not in the page");
    let cookie = b.client.get_named_cookie("muster_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    b.wait_live().await;
    b.screenshot("login").await;
    b.close().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_at_login() {
    let t = with_key().await;
    let Some(b) = Browser::start("wrong-key").await else {
        return;
    };
    b.goto(&t.url("/agents")).await;
    b.wait_path("/login").await;
    b.fill("#key", "not-the-key").await;
    b.click("form[action='/login'] button[type=submit]").await;
    b.wait_text(".form-error", "not valid").await;
    assert_eq!(b.path().await, "/login");
    assert!(
        b.client.get_named_cookie("muster_session").await.is_err(),
        "no session for a wrong key"
    );
    b.screenshot("wrong-key").await;
    // Still nothing to see without logging in.
    b.goto(&t.url("/agents")).await;
    b.wait_path("/login").await;
    b.close().await;
}

#[tokio::test]
async fn a_registered_agent_shows_online_and_new_ones_appear_live() {
    let t = with_key().await;
    t.register("nas", &["docker", "ansible"], 4).await;
    t.heartbeat("nas", json!({"cpu_percent": 12.0, "memory_percent": 40.0}))
        .await;
    let Some(b) = Browser::start("agents").await else {
        return;
    };
    log_in(&b, &t).await;
    b.goto(&t.url("/agents")).await;
    b.wait_text("#agent-nas .badge", "online").await;
    b.wait_text("#agent-nas", "docker").await;
    b.wait_live().await;
    b.mark_document().await;

    // An agent that registers now shows up without a reload.
    t.register("pi-kitchen", &["docker"], 1).await;
    b.wait_text("#agent-pi-kitchen .badge", "online").await;
    assert!(b.still_marked().await, "the page was not reloaded");
    b.screenshot("agents").await;
    b.close().await;
}

#[tokio::test]
async fn submitting_a_task_from_the_form() {
    let t = with_key().await;
    let Some(b) = Browser::start("submit").await else {
        return;
    };
    log_in(&b, &t).await;
    b.click("nav a[href='/tasks/new']").await;
    b.wait_text("main h1", "Submit a task").await;
    b.fill("#kind", "restart").await;
    b.fill("#capabilities", "docker").await;
    b.fill("#payload", "{\"container\": ").await;
    b.click("form.submit-form button[type=submit]").await;
    // A mistake comes back on the form, by the field, with what was typed kept.
    let error = b.wait_text("#payload-error", "payload").await;
    assert!(error.contains("not valid JSON"), "{error}");
    let kind = b
        .client
        .find(fantoccini::Locator::Id("kind"))
        .await
        .unwrap();
    assert_eq!(
        kind.prop("value").await.unwrap().as_deref(),
        Some("restart")
    );
    b.screenshot("submit-error").await;

    b.fill("#payload", "{\"container\": \"jellyfin\"}").await;
    b.fill("#priority", "5").await;
    b.click("form.submit-form button[type=submit]").await;
    b.wait_text("main h1", "queued").await;
    let path = b.path().await;
    let id = path.strip_prefix("/tasks/").expect("the task's page");
    let task = t.task(id).await;
    assert_eq!(task["kind"], "restart");
    assert_eq!(task["payload"], json!({"container": "jellyfin"}));
    assert_eq!(task["capabilities"], json!(["docker"]));
    assert_eq!(task["priority"], 5);
    b.screenshot("submit").await;
    b.close().await;
}

#[tokio::test]
async fn log_lines_appear_without_reloading() {
    let t = with_key().await;
    let claimed = running_task(&t, "backup").await;
    let id = claimed["id"].as_str().unwrap().to_owned();
    let Some(b) = Browser::start("logs").await else {
        return;
    };
    log_in(&b, &t).await;
    b.goto(&t.url(&format!("/tasks/{id}"))).await;
    b.wait_text("main h1", "running").await;
    b.wait_live().await;
    b.mark_document().await;

    for (n, text) in ["dumping the database", "uploading 3 files"]
        .iter()
        .enumerate()
    {
        // Posted as the agent would, over HTTP.
        let (status, body) = t
            .post(
                &format!("/api/v1/tasks/{id}/logs"),
                json!({"attempt": claimed["attempt"],
                       "lines": [{"text": text, "stream": if n == 0 { "stdout" } else { "stderr" }}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        b.wait_text("#log", text).await;
    }
    assert!(b.still_marked().await, "the lines came without a reload");

    // The end of the task shows too: the log stream ends and the state changes in place.
    let (status, _) = t.complete(&claimed, json!({"files": 3})).await;
    assert_eq!(status, StatusCode::OK);
    b.wait_text("#log-status", "completed").await;
    b.wait_text("main h1", "completed").await;
    assert!(b.still_marked().await);
    b.screenshot("logs").await;
    b.close().await;
}

#[tokio::test]
async fn cancelling_a_running_task_from_its_page() {
    let t = with_key().await;
    let claimed = running_task(&t, "deploy").await;
    let id = claimed["id"].as_str().unwrap().to_owned();
    let Some(b) = Browser::start("cancel").await else {
        return;
    };
    log_in(&b, &t).await;
    b.goto(&t.url(&format!("/tasks/{id}"))).await;
    b.wait_text("main h1", "running").await;
    b.click(&format!("form[action='/tasks/{id}/cancel'] button"))
        .await;
    b.wait_text("#task-head", "Cancel requested").await;
    assert_eq!(t.task(&id).await["cancel_requested"], true);
    // The agent hears it in its next heartbeat, stops, and reports; the page follows live.
    let (_, ack) = t
        .heartbeat("runner", json!({"cpu_percent": 1.0, "memory_percent": 1.0}))
        .await;
    assert_eq!(ack["cancel"], json!([id]));
    b.wait_live().await;
    t.fail(&claimed, "stopped on request", false).await;
    b.wait_text("main h1", "cancelled").await;
    assert_eq!(t.task(&id).await["state"], "cancelled");
    b.screenshot("cancel").await;

    // Retry from the same page: the task runs again, and its new attempt's lines show live.
    b.click(&format!("form[action='/tasks/{id}/retry'] button"))
        .await;
    b.wait_text("#task-head", "Cancel").await;
    b.wait_live().await;
    b.mark_document().await;
    t.settle().await;
    let again = t.claim("runner", 5).await.expect("claimed again");
    assert_eq!(again["attempt"], 2);
    let (status, _) = t
        .post(
            &format!("/api/v1/tasks/{id}/logs"),
            json!({"attempt": 2, "lines": [{"text": "second attempt"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    b.wait_text("#log", "second attempt").await;
    b.wait_text("main h1", "running").await;
    assert!(b.still_marked().await);
    b.close().await;
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused_with_the_browsers_session() {
    let t = with_key().await;
    let task = t
        .submit(json!({"kind": "waits", "capabilities": ["nobody"]}))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let Some(b) = Browser::start("csrf").await else {
        return;
    };
    log_in(&b, &t).await;
    let cookie = b.client.get_named_cookie("muster_session").await.unwrap();

    // The browser's own session, but a request that did not come from one of its forms.
    let mut web = Web::new(&t);
    web.cookie = Some(format!("muster_session={}", cookie.value()));
    assert_eq!(
        web.get("/").await.status,
        StatusCode::OK,
        "the cookie is live"
    );
    let refused = web.post_form(&format!("/tasks/{id}/cancel"), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(t.task(&id).await["state"], "queued", "nothing changed");

    b.goto(&t.url(&format!("/tasks/{id}"))).await;
    b.wait_text("main h1", "queued").await;
    b.screenshot("csrf").await;
    b.close().await;
}

#[tokio::test]
async fn the_overview_shows_agents_queue_throughput_and_failures() {
    let t = with_key().await;
    for (agent, caps, cpu, mem) in [
        ("nas", vec!["docker", "ansible"], 23.0, 41.0),
        ("pi-kitchen", vec!["docker"], 61.0, 72.0),
        ("llm-box", vec!["llm"], 88.0, 64.0),
    ] {
        t.register(agent, &caps, 2).await;
        t.heartbeat(agent, json!({"cpu_percent": cpu, "memory_percent": mem}))
            .await;
    }
    for (kind, cap) in [
        ("restart", "docker"),
        ("ansible", "ansible"),
        ("prompt", "llm"),
        ("backup", "docker"),
        ("restart", "docker"),
    ] {
        t.submit(json!({"kind": kind, "capabilities": [cap], "payload": {}}))
            .await;
    }
    t.submit(json!({"kind": "deploy", "capabilities": ["k8s"]}))
        .await;
    t.settle().await;
    let done = t.claim("nas", 1).await.expect("work for nas");
    t.complete(&done, json!({"ok": true})).await;
    let failed = t.claim("llm-box", 1).await.expect("work for llm-box");
    t.fail(&failed, "model not loaded: qwen2.5:7b", false).await;
    t.claim("pi-kitchen", 1).await.expect("work for pi-kitchen");
    let Some(b) = Browser::start("overview").await else {
        return;
    };
    log_in(&b, &t).await;
    b.wait_text("#overview-agents", "pi-kitchen").await;
    b.wait_text("#overview-failures", "model not loaded").await;
    let figures = b.wait_text("#overview-figures", "online").await;
    assert!(figures.contains('3'), "{figures}");
    b.wait_live().await;
    b.screenshot("overview").await;

    // A phone's width: the same page, one column.
    b.client.set_window_size(390, 844).await.unwrap();
    b.wait_text("main h1", "Overview").await;
    b.screenshot("overview-phone").await;
    b.close().await;
}

#[tokio::test]
async fn a_task_page_with_several_attempts_fits_a_laptop_screen() {
    let t = with_key().await;
    let task = t
        .submit(
            json!({"kind": "restart_container", "capabilities": ["docker"],
                       "payload": {"container": "home-assistant"}, "max_retries": 0}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    for (agent, error) in [
        (
            "homelab-nas-01.lan",
            Some(
                "docker: Error response from daemon: pull access denied for ghcr.io/home-assistant/home-assistant:2025.5.1, repository does not exist or may require 'docker login'",
            ),
        ),
        (
            "raspberry-pi-kitchen",
            Some("exit status 137 (killed: out of memory)"),
        ),
        ("media-server-basement", None),
    ] {
        t.register(agent, &["docker"], 1).await;
        t.settle().await;
        let claimed = t.claim(agent, 5).await.expect("the task is claimed");
        // Each agent takes the task once: the next one finds it queued with no other taker.
        let (status, _) = t
            .post(&format!("/api/v1/agents/{agent}/drain"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
        if let Some(error) = error {
            t.fail(&claimed, error, false).await;
            let (status, body) = t
                .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let Some(b) = Browser::start("task-attempts").await else {
        return;
    };
    log_in(&b, &t).await;
    b.goto(&t.url(&format!("/tasks/{id}"))).await;
    b.wait_text("#task-outcome", "media-server-basement").await;
    b.screenshot("task-attempts").await;
    let widths = b
        .client
        .execute(
            "const scroll = document.querySelector('#task-outcome .table-scroll'); \
             return [window.innerWidth, scroll.scrollWidth, scroll.clientWidth, \
                     document.documentElement.scrollWidth];",
            vec![],
        )
        .await
        .expect("measure");
    let widths: Vec<u64> = widths
        .as_array()
        .expect("numbers")
        .iter()
        .map(|w| w.as_u64().expect("a width"))
        .collect();
    let [inner, table, visible, page] = widths[..] else {
        panic!("{widths:?}")
    };
    assert_eq!(inner, 1280, "the window's width");
    assert!(
        table <= visible,
        "the attempts table scrolls sideways at 1280 px: {table} px in {visible} px"
    );
    assert!(page <= inner, "the page scrolls sideways: {page} px");
    b.close().await;
}

#[tokio::test]
async fn the_notifications_page_shows_a_failure_sent_and_tests_a_channel() {
    use muster_server::notify::{Channel, ChannelSpec, NotifyConfig, Rule, RuleSpec};

    let fake = crate::fake_service::FakeService::start().await;
    let spec = ChannelSpec {
        name: "hook".into(),
        kind: "webhook".into(),
        url: Some(format!("{}/hook", fake.url)),
        secret_env: Some("HOOK_SECRET".into()),
        ..ChannelSpec::default()
    };
    let channel = Channel::resolve(spec, &|_| Some("a-webhook-secret-0123456789".into())).unwrap();
    let rule: RuleSpec = toml::from_str("on = [\"task.failed\"]\nto = [\"hook\"]").unwrap();
    let notify = NotifyConfig {
        rules: vec![Rule::resolve(rule, &["hook"]).unwrap()],
        channels: vec![std::sync::Arc::new(channel)],
    };
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.notify = notify;
    })
    .await;
    let claimed = running_task(&t, "backup").await;
    t.fail(&claimed, "disk <full>", false).await;
    fake.wait_for(1).await;

    let Some(b) = Browser::start("notifications").await else {
        return;
    };
    log_in(&b, &t).await;
    b.click("nav a[href='/notifications']").await;
    b.wait_text("main h1", "Notifications").await;
    b.wait_text("table.notifications", "Task backup failed")
        .await;
    b.wait_text("table.notifications", "delivered").await;
    b.click("form[action='/notifications/channels/hook/test'] button[type=submit]")
        .await;
    let answer = b.wait_text("[role=status]", "Test message to hook").await;
    assert!(
        answer.contains("delivered") && answer.contains("HTTP 200"),
        "{answer}"
    );
    assert_eq!(fake.requests().len(), 2, "the failure, then the test");
    assert_eq!(fake.requests()[1].json()["event"], "notify.test");
    b.screenshot("notifications").await;
    b.close().await;
}

#[tokio::test]
async fn the_deployments_pages_follow_tasks_live_pause_a_rule_and_redeploy() {
    use crate::deployments::{DB, WEB, git_config, push};

    let git = git_config(&[WEB, DB]);
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.git = git;
    })
    .await;
    t.register("ansible-1", &["ansible"], 2).await;
    let d = push(&t, "b-1").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let Some(b) = Browser::start("deployments").await else {
        return;
    };
    log_in(&b, &t).await;
    b.click("nav a[href='/deployments']").await;
    b.wait_text("main h1", "Deployments").await;
    b.wait_text("#deployment-list", "Grace Hopper").await;
    b.wait_live().await;
    b.mark_document().await;

    // The agent takes both first steps; the list follows without a reload.
    t.settle().await;
    t.claim("ansible-1", 1).await.expect("a task");
    t.claim("ansible-1", 1).await.expect("another");
    b.wait_text("#deployment-list", "web: running").await;
    b.wait_text("#deployment-list", "db: check running").await;
    assert!(b.still_marked().await, "the states came without a reload");
    b.screenshot("deployments").await;

    b.click("tr[data-pause='rule:db'] button[type=submit]")
        .await;
    b.wait_text("[role=status]", "Paused rule db").await;
    b.wait_text("tr[data-pause='rule:db']", "by operator:ui")
        .await;

    // The deployment's page, then a redeploy of it: the new deployment's page, its db rule
    // held by the pause.
    b.click(&format!("#deployment-list a[href='/deployments/{id}']"))
        .await;
    b.wait_text("#deployment-rules", "roles/web/**").await;
    b.screenshot("deployment").await;
    b.click(&format!(
        "form[action='/deployments/{id}/redeploy'] button[type=submit]"
    ))
    .await;
    b.wait_text("[role=status]", "Redeployed c3d4e5f6").await;
    assert_ne!(b.path().await, format!("/deployments/{id}"));
    b.wait_text("#deployment-commit", "Redeploy of").await;
    b.wait_text("#deployment-rules", "Held by a pause").await;
    b.screenshot("deployment-redeployed").await;
    b.close().await;
}

#[tokio::test]
async fn the_llm_page_draws_its_chart_in_the_stylesheets_colours_and_fits_a_phone() {
    use crate::llm::{BUDGET, CLOUD, DAY_MS, LOCAL, llm_config, ok, record};

    let llm = llm_config(&[CLOUD, LOCAL], &[BUDGET]);
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.llm = llm;
    })
    .await;
    record(
        &t,
        &[
            ok("repair", 0, (2_000, 800), 3_600, 900),
            ok("canary", 0, (400, 100), 600, 300),
            ok("repair", DAY_MS, (1_000, 300), 1_600, 700),
            ok("repair", 3 * DAY_MS, (3_000, 1_000), 5_000, 1_200),
        ],
    )
    .await;
    let Some(b) = Browser::start("llm").await else {
        return;
    };
    log_in(&b, &t).await;
    b.click("nav a[href='/llm']").await;
    b.wait_text("main h1", "LLM usage").await;
    b.wait_text("figure.chart", "canary").await;
    b.screenshot("llm").await;
    let measure = "const segs = [...document.querySelectorAll('figure.chart rect.seg')]; \
                   const box = document.querySelector('figure.chart svg').getBoundingClientRect(); \
                   return [segs.map(s => s.getAttribute('class') + '=' + getComputedStyle(s).fill), \
                           box.width, box.height, \
                           document.documentElement.scrollWidth, window.innerWidth];";
    let check = |seen: serde_json::Value| {
        let fills: Vec<String> = seen[0]
            .as_array()
            .expect("segments")
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(fills.len(), 4, "{fills:?}");
        // The SVG's default black means the stylesheet's palette did not apply.
        assert!(
            fills.iter().all(|f| !f.ends_with("rgb(0, 0, 0)")),
            "{fills:?}"
        );
        // Sorted, canary is the first series and repair the second.
        let of = |class: &str| -> Vec<&str> {
            fills.iter().filter_map(|f| f.strip_prefix(class)).collect()
        };
        let (canary, repair) = (of("seg s0="), of("seg s1="));
        assert_eq!((canary.len(), repair.len()), (1, 3), "{fills:?}");
        assert!(
            repair.iter().all(|f| *f == repair[0]),
            "one colour a workflow: {fills:?}"
        );
        assert_ne!(canary[0], repair[0], "{fills:?}");
        let width = seen[1].as_f64().unwrap();
        assert!(width > 200.0 && seen[2].as_f64().unwrap() > 60.0, "{seen}");
        assert!(
            seen[3].as_u64().unwrap() <= seen[4].as_u64().unwrap(),
            "the page scrolls sideways: {seen}"
        );
    };
    check(b.client.execute(measure, vec![]).await.expect("measure"));

    b.client.set_window_size(390, 844).await.unwrap();
    b.wait_text("main h1", "LLM usage").await;
    check(b.client.execute(measure, vec![]).await.expect("measure"));
    b.screenshot("llm-phone").await;
    b.close().await;
}

#[tokio::test]
async fn an_incident_appears_live_and_its_risky_repair_is_approved_from_its_page() {
    use crate::incidents::{TOKEN, repair_config};

    let repair = repair_config();
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.repair = repair;
    })
    .await;
    let Some(b) = Browser::start("incidents").await else {
        return;
    };
    log_in(&b, &t).await;
    b.click("nav a[href='/incidents']").await;
    b.wait_text("main h1", "Incidents").await;
    b.wait_live().await;
    b.mark_document().await;

    // A monitor reports an outage: the list shows it without a reload, waiting for approval.
    let req = t
        .client
        .post(t.url("/hooks/alerts/mon"))
        .bearer_auth(TOKEN)
        .json(&json!({"monitor": "nas-ping", "status": "firing", "message": "no answer"}));
    let (status, answer) = TestApp::send(req).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["incidents"][0].as_str().unwrap().to_owned();
    b.wait_text("#incident-list", "nas-ping").await;
    b.wait_text("#incident-list", "awaiting_approval").await;
    assert!(b.still_marked().await, "the incident came without a reload");
    b.screenshot("incidents").await;

    b.click(&format!("#incident-list a[href='/incidents/{id}']"))
        .await;
    b.wait_text("#incident-story", "approval_requested").await;
    b.click(&format!("form[action='/incidents/{id}/approve'] button"))
        .await;
    b.wait_text("[role=status]", "submitted").await;
    b.wait_text("#incident-head", "repairing").await;
    let (_, incident) = t.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(incident["state"], "repairing", "{incident}");
    b.screenshot("incident").await;
    b.close().await;
}

#[tokio::test]
async fn a_schedule_run_from_the_list_links_its_task_which_moves_live_and_a_pause_shows() {
    let t = with_key().await;
    let (status, created) = t
        .post(
            "/api/v1/schedules",
            json!({"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                   "task": {"kind": "backup", "capabilities": ["shell"],
                            "payload": {"what": "photos"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let Some(b) = Browser::start("schedules").await else {
        return;
    };
    log_in(&b, &t).await;
    b.click("nav a[href='/schedules']").await;
    b.wait_text("main h1", "Schedules").await;
    b.wait_text("tr[data-schedule='nightly']", "not yet").await;

    b.click("form[action='/schedules/nightly/run?back=list'] button[type=submit]")
        .await;
    b.wait_text("[role=status]", "Ran nightly now").await;
    assert_eq!(b.path().await, "/schedules");
    let (_, detail) = t.get("/api/v1/schedules/nightly").await;
    let task = detail["firings"][0]["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no firing in {detail}"))
        .to_owned();
    let row = b.wait_text("tr[data-schedule='nightly']", "queued").await;
    assert!(row.contains(&task[task.len() - 8..]), "{row}");
    b.screenshot("schedules").await;

    // An agent takes the firing's task: the row follows without a reload.
    b.wait_live().await;
    b.mark_document().await;
    t.register("runner", &["shell"], 1).await;
    t.settle().await;
    t.claim("runner", 5)
        .await
        .expect("the firing's task is claimed");
    b.wait_text("tr[data-schedule='nightly']", "running").await;
    assert!(b.still_marked().await, "the state came without a reload");

    b.click(&format!(
        "tr[data-schedule='nightly'] a[href='/tasks/{task}']"
    ))
    .await;
    b.wait_path(&format!("/tasks/{task}")).await;
    b.wait_text("main h1", "running").await;

    // Its page: the firing by the UI operator, then paused from there.
    b.goto(&t.url("/schedules/nightly")).await;
    b.wait_text("#schedule-firings", "operator:ui").await;
    b.click("form[action='/schedules/nightly/pause'] button[type=submit]")
        .await;
    b.wait_text("[role=status]", "Paused nightly").await;
    b.wait_text("#schedule-head .badge", "paused").await;
    b.wait_text("#schedule-facts", "by operator:ui").await;
    let (_, detail) = t.get("/api/v1/schedules/nightly").await;
    assert_eq!(detail["schedule"]["paused"], true, "{detail}");
    b.screenshot("schedule").await;
    b.close().await;
}
