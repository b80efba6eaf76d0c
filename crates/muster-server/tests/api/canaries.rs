//! Canaries through the server: a run sends its signed request to the server's own hook
//! over loopback, the hook submits the task, a real agent (a `muster-client` runtime with a
//! `canary` handler) answers, and the `canary.passed` message reaches a webhook channel (a
//! `FakeService`); then, with the agent stopped, the run fails at the agent leg and
//! `canary.failed` goes out through a notify rule, and `canary.recovered` when it passes
//! again. Runs are started with the run-now route or by moving the server's clock to the
//! cron's next firing, never by waiting for a real minute; a deadline passes by moving the
//! clock too. The hook refuses what its own runs did not send, and submits nothing for it.

use std::time::Duration;

use async_trait::async_trait;
use muster_client::{AgentOptions, AgentRuntime, Client, Handler, HandlerError, TaskContext};
use muster_server::Settings;
use muster_server::clock::Clock;
use muster_server::config::{Overrides, Sources};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fake_service::{FakeService, Recorded, Reply};
use crate::helpers::{TestApp, eventually, metrics_text, sample};

const HOOK_SECRET: &str = "whsec-canary-test-0123456789";

/// The config of these tests: two webhook channels on `hook` (the canary's own, and the one
/// the rule sends `canary.*` to) and the canaries `extra` adds.
fn config(hook: &str, extra: &str) -> String {
    format!(
        r#"
[[notify.channels]]
name = "canary-hook"
kind = "webhook"
url = "{hook}/canary"
secret_env = "HOOK_SECRET"
backoff = "20ms"

[[notify.channels]]
name = "alerts"
kind = "webhook"
url = "{hook}/alerts"
secret_env = "HOOK_SECRET"
backoff = "20ms"

[[notify.rules]]
on = ["canary.*"]
to = ["alerts"]
quiet = "0s"
{extra}
"#
    )
}

/// A canary that fires only on New Year's Day (these tests start its runs themselves) and must
/// reach the canary's channel.
const PATH: &str = r#"
[[canaries]]
name = "path"
cron = "0 3 1 1 *"
within = "1m"
channel = "canary-hook"
"#;

/// The settings `text` loads to, as `muster serve` reads its file.
fn load(text: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("muster.toml");
    std::fs::write(&path, text).unwrap();
    Settings::load(&Sources {
        file: Some(path),
        env: |name: &str| (name == "HOOK_SECRET").then(|| HOOK_SECRET.to_owned()),
        flags: Overrides::default(),
    })
    .unwrap_or_else(|e| panic!("the test config loads: {e}\n{text}"))
}

async fn spawn(text: &str) -> TestApp {
    let loaded = load(text);
    TestApp::spawn_with(|s| {
        s.notify = loaded.notify;
        s.canaries = loaded.canaries;
    })
    .await
}

/// What a canary's task is answered with: the nonce echoed and the agent's id.
struct Echo(String);

#[async_trait]
impl Handler for Echo {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        Ok(json!({"nonce": ctx.task().payload["nonce"], "agent": self.0}))
    }
}

/// A real agent: the client crate's runtime, taking `canary` tasks.
struct Agent {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(t: &TestApp, id: &str) -> Agent {
        let client = Client::new(&t.base, None).unwrap();
        let mut options = AgentOptions::new(id);
        options.heartbeat_interval = Duration::from_millis(200);
        options.claim_wait = Duration::from_secs(1);
        let runtime = AgentRuntime::new(client, options).handle("canary", Echo(id.to_owned()));
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let handle = tokio::spawn(async move {
            runtime
                .run(async move { signal.cancelled().await })
                .await
                .expect("the agent runs");
        });
        eventually(&format!("agent {id} online"), || async {
            let (status, agent) = t.get(&format!("/api/v1/agents/{id}")).await;
            (status == StatusCode::OK && agent["status"] == "online").then_some(())
        })
        .await;
        Agent { stop, handle }
    }

    /// Stops it as SIGTERM would (it drains itself and leaves), and waits until it has.
    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("the agent stops cleanly");
    }
}

async fn canaries(t: &TestApp) -> Vec<Value> {
    let (status, list) = t.get("/api/v1/canaries").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["canaries"].as_array().unwrap().clone()
}

async fn canary(t: &TestApp, name: &str) -> Value {
    canaries(t)
        .await
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no canary {name}"))
}

/// Runs `name` now; the run's id.
async fn run_now(t: &TestApp, name: &str) -> String {
    let (status, run) = t
        .post(&format!("/api/v1/canaries/{name}/run"), json!(null))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    assert_eq!(run["outcome"], "running");
    assert_eq!(run["trigger"], "manual");
    run["id"].as_str().unwrap().to_owned()
}

/// Waits until the run `id` of `name` is judged (or ends otherwise); the run.
async fn judged(t: &TestApp, name: &str, id: &str) -> Value {
    eventually(&format!("run {id} of {name} judged"), || async {
        canary(t, name)
            .await
            .get("recent")?
            .as_array()?
            .iter()
            .find(|r| r["id"] == id && r["outcome"] != "running")
            .cloned()
    })
    .await
}

/// The webhook deliveries of `event` at `path`.
fn sent(hook: &FakeService, path: &str, event: &str) -> Vec<Recorded> {
    hook.requests()
        .into_iter()
        .filter(|r| r.path == path && r.header("x-muster-event") == Some(event))
        .collect()
}

async fn delivered(hook: &FakeService, path: &str, event: &str, n: usize) -> Vec<Recorded> {
    eventually(&format!("{n} {event} at {path}"), || async {
        let sent = sent(hook, path, event);
        (sent.len() >= n).then_some(sent)
    })
    .await
}

async fn task_count(t: &TestApp) -> usize {
    let (status, page) = t.get("/api/v1/tasks?limit=500").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["tasks"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_canary_passes_through_a_real_agent_and_its_channel_then_fails_without_the_agent() {
    let hook = FakeService::start().await;
    let t = spawn(&config(&hook.url, PATH)).await;
    let agent = Agent::start(&t, "nas").await;

    // It passes: hook → task → the agent → canary.passed delivered to its channel.
    let (mut feed, _) = t.app.changes.events.subscribe(None);
    let id = run_now(&t, "path").await;
    let run = judged(&t, "path", &id).await;
    // The event feed (and so the overview) heard of its start and its verdict.
    let mut outcomes = Vec::new();
    while outcomes.len() < 2 {
        let numbered = tokio::time::timeout(Duration::from_secs(30), feed.recv())
            .await
            .expect("the run's events come")
            .expect("the feed is open");
        if let muster_api::Event::Canary {
            canary, outcome, ..
        } = numbered.event
        {
            assert_eq!(canary, "path");
            outcomes.push(outcome.as_str());
        }
    }
    assert_eq!(outcomes, ["running", "passed"]);
    assert_eq!(run["outcome"], "passed", "{run:#}");
    assert_eq!(run["leg"], Value::Null);
    assert_eq!(run["agent_id"], "nas");
    for leg in ["hooked_at", "answered_at", "delivered_at", "finished_at"] {
        assert!(run[leg].is_string(), "{leg}: {run:#}");
    }
    assert!(run["latency_ms"].is_u64(), "{run:#}");
    let task_id = run["task_id"].as_str().unwrap();
    let task = t.task(task_id).await;
    assert_eq!(task["state"], "completed", "{task:#}");
    assert_eq!(task["kind"], "canary");
    assert_eq!(task["agent_id"], "nas");
    assert_eq!(task["labels"]["canary"], "path");
    assert_eq!(task["idempotency_key"], format!("canary:{id}"));
    assert_eq!(task["result"]["nonce"], task["payload"]["nonce"]);
    let passed = sent(&hook, "/canary", "canary.passed");
    assert_eq!(passed.len(), 1, "one message for one run");
    assert_eq!(passed[0].json()["subject"], "canary:path");
    assert_eq!(
        passed[0].header("x-muster-delivery"),
        run["notification_id"].as_str()
    );
    let shown = canary(&t, "path").await;
    assert_eq!(shown["last"]["id"], id.as_str());
    assert_eq!(shown["running"], Value::Null);
    assert!(
        shown["hook_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/hooks/canary/path", t.base)),
        "{shown:#}"
    );
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, r#"muster_canary_success{canary="path"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, r#"muster_canary_latency_seconds{canary="path"}"#).is_some(),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"muster_canary_passed_latency_seconds_count{canary="path"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"muster_canary_hooks_total{canary="path",outcome="accepted"}"#
        ),
        Some(1.0)
    );
    // The first run passing is no news: nothing went to the rule's channel.
    assert!(sent(&hook, "/alerts", "canary.failed").is_empty());

    // Without its agent the next run fails at the agent leg, once the deadline has passed.
    agent.stop().await;
    let id = run_now(&t, "path").await;
    let queued = eventually("the run's task is submitted", || async {
        let c = canary(&t, "path").await;
        c["running"]["task_id"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(t.task(&queued).await["state"], "queued");
    t.advance(Duration::from_secs(61));
    let run = judged(&t, "path", &id).await;
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert_eq!(run["leg"], "agent", "{run:#}");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("no agent took the task within 1m: no online agent"),
        "{reason}"
    );
    assert!(reason.contains("nas (draining)"), "{reason}");
    assert_eq!(
        t.task(&queued).await["state"],
        "cancelled",
        "a failed run's task does not wait for the agent to come back"
    );
    let failed = delivered(&hook, "/alerts", "canary.failed", 1).await;
    let body = failed[0].json();
    assert_eq!(body["subject"], "canary:path");
    assert!(
        body["message"].as_str().unwrap().contains("agent leg"),
        "{body}"
    );
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, r#"muster_canary_success{canary="path"}"#),
        Some(0.0),
        "{text}"
    );
    // The operator's runs are in the audit log.
    let audit = t.audit_entries().await;
    let runs = audit
        .iter()
        .filter(|e| e["action"] == "canary.run" && e["subject"] == "canary:path")
        .count();
    assert_eq!(runs, 2, "{audit:?}");

    // The agent back: it passes again, and says so.
    let agent = Agent::start(&t, "nas").await;
    let id = run_now(&t, "path").await;
    assert_eq!(judged(&t, "path", &id).await["outcome"], "passed");
    let recovered = delivered(&hook, "/alerts", "canary.recovered", 1).await;
    assert_eq!(recovered[0].json()["subject"], "canary:path");
    assert_eq!(sent(&hook, "/canary", "canary.passed").len(), 2);
    agent.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_canary_fires_on_its_cron_and_a_slow_one_never_piles_up_runs() {
    let hook = FakeService::start().await;
    let t = spawn(&config(
        &hook.url,
        "[[canaries]]\nname = \"minutely\"\ncron = \"* * * * *\"\nwithin = \"5m\"\n",
    ))
    .await;
    // No agent: the first firing's run waits for one.
    let next = canary(&t, "minutely").await["next_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let next = chrono::DateTime::parse_from_rfc3339(&next).unwrap();
    let ahead = next.timestamp_millis() - t.clock.now_ms() + 1_000;
    t.advance(Duration::from_millis(ahead.max(0) as u64));
    let first = eventually("the cron fires a run", || async {
        let c = canary(&t, "minutely").await;
        c["running"]
            .as_object()
            .filter(|r| r["trigger"] == "cron")
            .map(|r| r["id"].as_str().unwrap().to_owned())
    })
    .await;
    // The next firing comes while that run still waits: it is skipped, not queued behind it.
    t.advance(Duration::from_secs(60));
    eventually("the second firing is skipped", || async {
        let text = metrics_text(&t).await;
        sample(
            &text,
            r#"muster_canary_runs_total{canary="minutely",outcome="skipped"}"#,
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    let c = canary(&t, "minutely").await;
    assert_eq!(c["recent"].as_array().unwrap().len(), 1, "{c:#}");
    assert_eq!(c["running"]["id"], first.as_str());
    let (status, body) = t.post("/api/v1/canaries/minutely/run", json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = t.post("/api/v1/canaries/nope/run", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(task_count(&t).await, 1);

    // An agent comes: the run in flight passes (no channel: the answer is its last leg).
    let agent = Agent::start(&t, "pi").await;
    let run = judged(&t, "minutely", &first).await;
    assert_eq!(run["outcome"], "passed", "{run:#}");
    assert_eq!(run["delivered_at"], Value::Null);
    agent.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_restart_with_a_run_in_flight_interrupts_it_and_cancels_its_task() {
    let hook = FakeService::start().await;
    let text = config(&hook.url, PATH);
    let t = spawn(&text).await;
    let id = run_now(&t, "path").await;
    let task = eventually("the run's task is submitted", || async {
        let c = canary(&t, "path").await;
        c["running"]["task_id"].as_str().map(str::to_owned)
    })
    .await;
    let loaded = load(&text);
    let t = t
        .restart_with(|s| {
            s.notify = loaded.notify;
            s.canaries = loaded.canaries;
        })
        .await;
    let run = judged(&t, "path", &id).await;
    assert_eq!(run["outcome"], "interrupted", "{run:#}");
    assert!(
        run["reason"].as_str().unwrap().contains("stopped"),
        "{run:#}"
    );
    assert_eq!(run["leg"], Value::Null);
    let c = canary(&t, "path").await;
    assert_eq!(c["last"], Value::Null, "an interruption is not a verdict");
    assert_eq!(t.task(&task).await["state"], "cancelled");
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(
            &text,
            r#"muster_canary_runs_total{canary="path",outcome="interrupted"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"muster_canary_success{canary="path"}"#),
        None
    );
    // The next run is free to start.
    run_now(&t, "path").await;
    t.stop().await;
}

#[tokio::test]
async fn a_hung_refusing_or_unreachable_hook_fails_the_hook_leg_by_the_deadline() {
    let hung = FakeService::start().await;
    hung.default_reply(Reply::Hang);
    let refusing = FakeService::start().await;
    refusing.default_reply(Reply::status(
        403,
        r#"{"error":{"code":"forbidden","message":"the proxy says no"}}"#,
    ));
    // A port nothing listens on: bound, then let go.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let extra = format!(
        r#"
[[canaries]]
name = "hung"
cron = "0 3 1 1 *"
within = "3s"
url = "{hung}"

[[canaries]]
name = "refusing"
cron = "0 3 1 1 *"
within = "1m"
url = "{refusing}/muster"

[[canaries]]
name = "gone"
cron = "0 3 1 1 *"
within = "3s"
url = "{gone}"
"#,
        hung = hung.url,
        refusing = refusing.url,
    );
    let hook = FakeService::start().await;
    let t = spawn(&config(&hook.url, &extra)).await;
    let hung_run = run_now(&t, "hung").await;
    let refused_run = run_now(&t, "refusing").await;
    let gone_run = run_now(&t, "gone").await;

    let run = judged(&t, "hung", &hung_run).await;
    assert_eq!(
        (run["outcome"].as_str(), run["leg"].as_str()),
        (Some("failed"), Some("hook"))
    );
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .ends_with("did not answer within 3s"),
        "{run:#}"
    );
    let run = judged(&t, "refusing", &refused_run).await;
    assert_eq!(run["leg"], "hook", "{run:#}");
    assert_eq!(
        run["reason"],
        format!(
            "the hook at {}/muster/hooks/canary/refusing refused the request: HTTP 403: the proxy says no",
            refusing.url
        )
    );
    let asked = refusing.requests();
    assert_eq!(asked[0].path, "/muster/hooks/canary/refusing");
    assert!(
        asked[0]
            .header("x-muster-signature")
            .is_some_and(|s| s.starts_with("sha256=")),
        "the request is signed"
    );
    let run = judged(&t, "gone", &gone_run).await;
    assert_eq!(run["leg"], "hook", "{run:#}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .starts_with("the hook could not be reached: could not connect to the hook at"),
        "{run:#}"
    );
    assert_eq!(task_count(&t).await, 0, "no hook took a request: no task");
    hung.release();
    t.stop().await;
}

/// A hook request as someone other than the server's runs might send it: `body`, signed with
/// `key` (the server's own key for the replays) at `at_s`.
async fn send_hook(
    t: &TestApp,
    name: &str,
    body: &[u8],
    signature: Option<(i64, String)>,
) -> (StatusCode, Value) {
    let mut req = t
        .client
        .post(t.url(&format!("/hooks/canary/{name}")))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some((at, signature)) = signature {
        req = req
            .header("x-muster-timestamp", at.to_string())
            .header("x-muster-signature", signature);
    }
    TestApp::send(req).await
}

#[tokio::test]
async fn forged_replayed_oversized_and_misnamed_hook_requests_are_refused_and_create_nothing() {
    let hook = FakeService::start().await;
    let t = spawn(&config(&hook.url, PATH)).await;
    let now_s = || t.clock.now_ms() / 1000;
    let run = uuid::Uuid::now_v7();
    let body =
        serde_json::to_vec(&json!({"canary": "path", "run": run, "nonce": "guess"})).unwrap();
    let forged =
        |at: i64| muster_server::notify::channels::signature(b"not the server's key", at, &body);
    let own = |at: i64, body: &[u8]| t.app.canary_key.sign(body, at)[1].1.clone();

    // Unsigned, or signed with another key: 401, for any name (names cannot be probed).
    for name in ["path", "nope"] {
        let (status, answer) = send_hook(&t, name, &body, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        let (status, answer) = send_hook(&t, name, &body, Some((now_s(), forged(now_s())))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }
    // The server's own signature, over another body or too old: 401.
    let (status, _) = send_hook(&t, "path", b"{}", Some((now_s(), own(now_s(), &body)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let old = now_s() - 600;
    let (status, answer) = send_hook(&t, "path", &body, Some((old, own(old, &body)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("5 minutes"),
        "{answer}"
    );
    // Huge: refused before any signature is computed.
    let huge = vec![b' '; 64 * 1024];
    let (status, answer) = send_hook(&t, "path", &huge, Some((now_s(), own(now_s(), &huge)))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    // Signed, but no run waits for it: 409.
    let (status, answer) = send_hook(&t, "path", &body, Some((now_s(), own(now_s(), &body)))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // Signed for a canary that is not configured: 404.
    let (status, _) = send_hook(&t, "nope", &body, Some((now_s(), own(now_s(), &body)))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(task_count(&t).await, 0, "nothing submitted");

    // A real run's request, replayed word for word after the hook took it: 409, no second task.
    let id = run_now(&t, "path").await;
    eventually("the run's hook is taken", || async {
        canary(&t, "path").await["running"]["task_id"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let nonce = t
        .app
        .store
        .canary_run(id.parse().unwrap())
        .await
        .unwrap()
        .nonce;
    let replay = serde_json::to_vec(&json!({"canary": "path", "run": id, "nonce": nonce})).unwrap();
    let (status, answer) =
        send_hook(&t, "path", &replay, Some((now_s(), own(now_s(), &replay)))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // With another nonce it is no run's either.
    let wrong = serde_json::to_vec(&json!({"canary": "path", "run": id, "nonce": "n"})).unwrap();
    let (status, _) = send_hook(&t, "path", &wrong, Some((now_s(), own(now_s(), &wrong)))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(task_count(&t).await, 1, "the run's one task");

    let text = metrics_text(&t).await;
    assert_eq!(
        sample(
            &text,
            r#"muster_canary_hooks_total{canary="path",outcome="refused"}"#
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"muster_canary_hooks_total{canary="path",outcome="replayed"}"#
        ),
        Some(3.0),
        "{text}"
    );
    // The refusals reach the audit log as one record per canary and minute.
    let refused = t.refused_hooks_audited().await;
    let path = refused
        .iter()
        .find(|e| e["subject"] == "source:canary:path")
        .unwrap_or_else(|| panic!("{refused:?}"));
    assert_eq!(path["detail"]["count"], 8, "{path}");
    assert!(
        refused
            .iter()
            .any(|e| e["subject"] == "source:canary:unknown"),
        "{refused:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_run_that_cannot_be_followed_is_judged_after_its_deadline_not_followed_for_ever() {
    let hook = FakeService::start().await;
    let t = spawn(&config(&hook.url, PATH)).await;
    let id = run_now(&t, "path").await;
    let task = eventually("the run's task is submitted", || async {
        let c = canary(&t, "path").await;
        c["running"]["task_id"].as_str().map(str::to_owned)
    })
    .await;
    // The task vanishes under the run (as a retention far shorter than a run would do).
    let db = rusqlite::Connection::open(t.dir.path().join("muster.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        db.execute("DELETE FROM tasks WHERE id = ?1", [&task])
            .unwrap(),
        1
    );
    t.advance(Duration::from_secs(60 + 61));
    let run = judged(&t, "path", &id).await;
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert_eq!(run["leg"], "task");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .starts_with("the run could not be followed to its end: "),
        "{run:#}"
    );
    t.stop().await;
}
