//! Chat commands over Telegram through the server: a `FakeTelegram` speaks `getUpdates` (a
//! long poll) and `sendMessage`, and records what muster sends. From an allowed chat,
//! `/status` reports agents, queue and open incidents, `/approve` and `/deny` answer an
//! incident's approval as the chat (in its story and the audit log), and `/ask` reaches a real
//! agent (the `muster-client` runtime) and brings its answer back; everything else is ignored
//! and counted. Replies are HTML-escaped; Telegram's failures only delay the loop.

use std::time::Duration;

use async_trait::async_trait;
use muster_client::{AgentOptions, AgentRuntime, Client, Handler, HandlerError, TaskContext};
use muster_server::chat::{ChatConfig, TelegramChat};
use muster_server::config::Secret;
use muster_server::notify::telegram;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::audit::audit;
use crate::fake_service::FakeService;
use crate::fake_telegram::{FakeTelegram, TOKEN};
use crate::helpers::{TestApp, eventually, metrics_text, sample};
use crate::repair::{Api, Setup, USAGE, down, fakes, incident, reaches, story_event, tasks};

/// A person's chat with the bot, and a group; both allowed.
const ADA: i64 = 7_001_002;
const GROUP: i64 = -1_001_234_567_890;
/// Not allowed.
const STRANGER: i64 = 9_999_999;

fn chat_config(fake: &FakeTelegram) -> ChatConfig {
    ChatConfig {
        telegram: Some(TelegramChat {
            api_url: fake.url.parse().unwrap(),
            token: Secret::new(TOKEN),
            chats: vec![ADA, GROUP],
        }),
    }
}

async fn spawn(fake: &FakeTelegram) -> TestApp {
    let chat = chat_config(fake);
    TestApp::spawn_with(|s| s.chat = chat).await
}

/// A server whose model chose the risky `reboot_host` for a down jellyfin, the incident
/// waiting for approval, and `[chat.telegram]` read from the same file, pointing at a fake
/// Bot API. The stand-ins live as long as this does.
struct Waiting {
    t: TestApp,
    fake: FakeTelegram,
    /// The incident waiting.
    id: String,
    _fakes: (FakeService, FakeService, FakeService),
}

async fn waiting_for_approval(api: Api) -> Waiting {
    let (llm, hook, probe) = fakes().await;
    llm.default_reply(api.answer("", &[("reboot_host", json!({}))], USAGE));
    let fake = FakeTelegram::start().await;
    let mut setup = Setup::new(api, &llm, &hook, &probe);
    setup.extra = format!(
        "\n[chat.telegram]\ntoken_env = \"BOT_TOKEN\"\nchats = [{ADA}, {GROUP}]\napi_url = \"{}\"\n",
        fake.url
    );
    let t = setup.spawn().await;
    let id = down(&t, "timeout").await;
    reaches(&t, &id, "awaiting_approval").await;
    Waiting {
        t,
        fake,
        id,
        _fakes: (llm, hook, probe),
    }
}

/// The audit entries with `action`.
async fn audited(t: &TestApp, action: &str) -> Vec<Value> {
    audit(t)
        .await
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

#[tokio::test]
async fn status_from_an_allowed_chat_reports_agents_queue_and_open_incidents() {
    let Waiting { t, fake, id, .. } = waiting_for_approval(Api::OpenAi).await;
    t.register("nas", &["docker"], 2).await;
    t.register("pi", &["gpio"], 1).await;
    let (status, _) = t.post("/api/v1/agents/pi/drain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for n in 0..3 {
        t.submit(json!({"kind": "transcode", "capabilities": ["gpu"], "idempotency_key": format!("q{n}")}))
            .await;
    }

    fake.message(ADA, "/status");
    let reply = fake.reply(ADA, 1).await;
    let shown = telegram::visible(&reply);
    assert!(
        shown.contains("Agents: 1 online, 1 draining, 0 offline"),
        "{shown}"
    );
    assert!(
        shown.contains("Queue: 3 queued, 0 assigned, 0 running"),
        "{shown}"
    );
    assert!(
        shown.contains("Incidents: 1 open, 1 awaiting approval"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("• {id} jellyfin: reboot_host")),
        "{shown}"
    );
    assert!(reply.contains(&format!("<code>{id}</code>")), "{reply}");
    let sent = &fake.sent()[0];
    assert_eq!(sent["chat_id"], ADA);
    assert_eq!(sent["parse_mode"], "HTML");

    // Audited as the chat, and counted.
    let entries = audited(&t, "chat.command").await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["actor"], format!("chat:telegram:{ADA}"));
    assert_eq!(entries[0]["detail"]["command"], "status");
    assert_eq!(entries[0]["detail"]["outcome"], "ok");
    let metrics = metrics_text(&t).await;
    assert_eq!(
        sample(
            &metrics,
            "muster_chat_commands_total{command=\"status\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn approve_from_an_allowed_chat_runs_the_action_as_the_chat() {
    let Waiting { t, fake, id, .. } = waiting_for_approval(Api::Ollama).await;

    // A prefix that names nothing, and one too short, are refused with why.
    fake.message(GROUP, "/approve deadbeef");
    let reply = fake.reply(GROUP, 1).await;
    assert!(
        reply.starts_with("No incident starts with deadbeef"),
        "{reply}"
    );
    fake.message(GROUP, "/approve 0193");
    assert!(fake.reply(GROUP, 2).await.contains("too short"));
    assert_eq!(incident(&t, &id).await["state"], "awaiting_approval");

    // The short id the pages show is enough.
    fake.message(GROUP, &format!("/approve@muster_bot {}", &id[..8]));
    let reply = telegram::visible(&fake.reply(GROUP, 3).await);
    assert!(
        reply.starts_with(&format!(
            "Approved: incident {} (jellyfin) is repairing",
            &id[..8]
        )),
        "{reply}"
    );
    let after = incident(&t, &id).await;
    assert_eq!(after["state"], "repairing");
    let actor = format!("chat:telegram:{GROUP}");
    let approval = story_event(&after, "approved");
    assert_eq!(approval["actor"], actor);
    assert!(
        approval["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("approved by {actor}: running reboot_host")),
        "{approval}"
    );
    let approved = audited(&t, "incident.approved").await;
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["actor"], actor);
    assert_eq!(approved[0]["subject"], format!("incident:{id}"));
    let commands = audited(&t, "chat.command").await;
    let outcomes: Vec<(&str, &str)> = commands
        .iter()
        .map(|e| {
            (
                e["detail"]["command"].as_str().unwrap(),
                e["detail"]["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("approve", "refused"),
            ("approve", "refused"),
            ("approve", "ok")
        ]
    );
    // The repair task is submitted, exactly once.
    assert_eq!(tasks(&t).await.len(), 1);

    // Answered once: the same command again finds nothing waiting.
    fake.message(GROUP, &format!("/approve {id}"));
    let again = fake.reply(GROUP, 4).await;
    assert!(again.contains("nothing waits for approval"), "{again}");
    assert_eq!(tasks(&t).await.len(), 1);
}

#[tokio::test]
async fn deny_from_an_allowed_chat_escalates_with_the_reason_and_the_chat() {
    let Waiting { t, fake, id, .. } = waiting_for_approval(Api::Anthropic).await;

    fake.message(ADA, &format!("/deny {id} not during the film night <3"));
    let reply = telegram::visible(&fake.reply(ADA, 1).await);
    let actor = format!("chat:telegram:{ADA}");
    assert!(
        reply.starts_with(&format!(
            "Denied: incident {} (jellyfin) is escalated",
            &id[..8]
        )),
        "{reply}"
    );
    assert!(
        reply.contains(&format!(
            "{actor} denied reboot_host: not during the film night <3"
        )),
        "{reply}"
    );
    let after = incident(&t, &id).await;
    assert_eq!(after["state"], "escalated");
    assert_eq!(story_event(&after, "denied")["actor"], actor);
    let denied = audited(&t, "incident.denied").await;
    assert_eq!(denied[0]["actor"], actor);
    assert!(tasks(&t).await.is_empty(), "nothing ran");
}

#[tokio::test]
async fn a_message_from_another_chat_is_ignored_and_tallied() {
    let fake = FakeTelegram::start().await;
    let t = spawn(&fake).await;
    fake.message(STRANGER, "/status");
    fake.message(STRANGER, "/ask delete everything");
    fake.photo(ADA);
    fake.message(GROUP, "good morning, everyone");
    fake.message(ADA, "/help");
    // Updates are handled in order: once the allowed chat's help came back, the stranger's
    // messages and the photo have been read.
    let help = fake.reply(ADA, 1).await;
    assert!(help.starts_with("<b>Commands</b>"), "{help}");
    assert!(fake.sent_to(STRANGER).is_empty(), "no reply to a stranger");
    assert!(
        fake.sent_to(GROUP).is_empty(),
        "a group's talk is not a command"
    );
    assert_eq!(fake.sent().len(), 1, "one reply in all: {:#?}", fake.sent());
    assert!(tasks(&t).await.is_empty(), "nothing was asked");
    eventually("every update acknowledged", || async {
        (fake.pending() == 0).then_some(())
    })
    .await;

    // One audit entry for the stranger's minute, once it is over, with the count.
    t.advance(Duration::from_secs(61));
    t.sweep().await;
    let ignored = audited(&t, "chat.ignored").await;
    // Two entries only when the two messages fell on either side of a minute's end.
    assert!((1..=2).contains(&ignored.len()), "{ignored:#?}");
    for entry in &ignored {
        assert_eq!(entry["subject"], format!("chat:telegram:{STRANGER}"));
        assert_eq!(entry["actor"], "system");
    }
    let counted: u64 = ignored
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2);
    let commands = audited(&t, "chat.command").await;
    assert_eq!(commands.len(), 1, "only the allowed chat's help");
    let metrics = metrics_text(&t).await;
    assert_eq!(sample(&metrics, "muster_chat_ignored_total"), Some(2.0));
}

#[tokio::test]
async fn replies_escape_html_and_keep_emoji_and_non_ascii() {
    let fake = FakeTelegram::start().await;
    let t = spawn(&fake).await;
    let kind = "backup <nightly> & co 🚀 Grüße";
    t.submit(json!({"kind": kind, "capabilities": ["nas"]}))
        .await;
    fake.message(ADA, "/tasks");
    let reply = fake.reply(ADA, 1).await;
    assert!(
        reply.contains(" backup &lt;nightly&gt; &amp; co 🚀 Grüße · queued · "),
        "{reply}"
    );
    assert!(
        reply.starts_with("<b>Latest 1 tasks</b>\n<code>"),
        "{reply}"
    );
    assert!(telegram::visible(&reply).contains(kind));

    // An unknown command's name is escaped back too.
    fake.message(ADA, "/<b>ä");
    let reply = fake.reply(ADA, 2).await;
    assert!(reply.starts_with("I do not know /&lt;b&gt;ä."), "{reply}");
}

/// Answers an `llm` task as a model would, from its prompt; a long answer, to be split.
struct Model;

#[async_trait]
impl Handler for Model {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let payload = &ctx.task().payload;
        assert_eq!(payload["workflow"], "chat");
        let prompt = payload["prompt"].as_str().unwrap_or_default();
        let answer = format!(
            "You asked <{prompt}> & the answer is 42 🚀 — schöne Grüße\n{}",
            "Lorem ipsum dolor sit amet.\n".repeat(300)
        );
        Ok(json!({"answer": answer}))
    }
}

#[tokio::test]
async fn ask_reaches_a_runtime_agent_and_brings_its_answer_back() {
    let fake = FakeTelegram::start().await;
    let t = spawn(&fake).await;

    // Nobody could answer: said at once, nothing submitted.
    fake.message(ADA, "/ask Why is the NAS slow?");
    let reply = fake.reply(ADA, 1).await;
    assert!(
        reply.starts_with("No registered agent takes llm tasks"),
        "{reply}"
    );
    assert!(tasks(&t).await.is_empty());

    let mut options = AgentOptions::new("brain");
    options.capabilities = vec!["llm".into()];
    options.heartbeat_interval = Duration::from_millis(200);
    options.claim_wait = Duration::from_secs(1);
    let runtime =
        AgentRuntime::new(Client::new(&t.base, None).unwrap(), options).handle("llm", Model);
    let stop = CancellationToken::new();
    let agent = tokio::spawn(runtime.run(stop.clone().cancelled_owned()));
    eventually("the agent registered", || async {
        (t.get("/api/v1/agents/brain").await.0 == StatusCode::OK).then_some(())
    })
    .await;

    fake.message(ADA, "/ask Why is the NAS slow?");
    let asked = telegram::visible(&fake.reply(ADA, 2).await);
    assert!(asked.starts_with("Asked: task "), "{asked}");
    let answer = fake.reply(ADA, 3).await;
    assert!(
        answer.starts_with(
            "You asked &lt;Why is the NAS slow?&gt; &amp; the answer is 42 🚀 — schöne Grüße\n"
        ),
        "{answer}"
    );
    // The whole answer arrives, in messages within Telegram's limit, split at line breaks.
    let lines = |messages: &[String]| messages.iter().map(|m| m.lines().count()).sum::<usize>();
    let messages = eventually("the whole answer", || async {
        let answer = fake.sent_to(ADA).split_off(2);
        (lines(&answer) >= 301).then_some(answer)
    })
    .await;
    assert!(messages.len() > 1, "a long answer is split");
    for m in &messages {
        assert!(
            telegram::visible(m).encode_utf16().count() <= 4096,
            "{}",
            m.len()
        );
        assert!(
            m.ends_with("Lorem ipsum dolor sit amet."),
            "split at a line break"
        );
    }
    assert_eq!(lines(&messages), 301, "no line lost or cut");

    let all = tasks(&t).await;
    assert_eq!(all.len(), 1);
    let task = &all[0];
    assert_eq!(task["kind"], "llm");
    assert_eq!(task["state"], "completed");
    assert_eq!(task["capabilities"], json!(["llm"]));
    assert_eq!(task["labels"]["chat"], format!("telegram:{ADA}"));
    assert_eq!(task["payload"]["prompt"], "Why is the NAS slow?");
    assert!(asked.contains(&task["id"].as_str().unwrap()[..8]));
    stop.cancel();
    agent.await.unwrap().expect("the agent ran");
}

#[tokio::test]
async fn telegram_failures_only_delay_the_loop() {
    let fake = FakeTelegram::start().await;
    fake.fail_next(200, "<html>gateway</html>");
    fake.fail_next(
        409,
        r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}"#,
    );
    fake.fail_next(500, "Internal Server Error");
    fake.fail_next(
        429,
        r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 1","parameters":{"retry_after":1}}"#,
    );
    let t = spawn(&fake).await;
    fake.message(ADA, "/help");
    let help = fake.reply(ADA, 1).await;
    assert!(help.starts_with("<b>Commands</b>"), "{help}");
    assert!(
        fake.polls().len() >= 5,
        "four failed polls, then one that answered"
    );

    // Every update is handled once: the next poll acknowledges it.
    let start = fake.message(ADA, "/start");
    fake.reply(ADA, 2).await;
    eventually("the /start acknowledged", || async {
        (fake.pending() == 0).then_some(())
    })
    .await;
    assert_eq!(fake.polls().last().unwrap()["offset"], start + 1);
    assert_eq!(fake.sent_to(ADA).len(), 2);
    let commands = audited(&t, "chat.command").await;
    assert_eq!(commands.len(), 2);
}

#[tokio::test]
async fn run_from_an_allowed_chat_fires_the_schedule_as_the_chat() {
    let fake = FakeTelegram::start().await;
    let t = spawn(&fake).await;
    let (status, _) = t
        .post(
            "/api/v1/schedules",
            json!({"name": "nightly", "cron": "0 3 * * *", "task": {"kind": "backup"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    fake.message(ADA, "/run nightly");
    let reply = fake.reply(ADA, 1).await;
    assert!(
        telegram::visible(&reply).starts_with("Ran nightly: task "),
        "{reply}"
    );
    let (_, detail) = t.get("/api/v1/schedules/nightly").await;
    let firing = &detail["firings"][0];
    assert_eq!(firing["trigger"], "run");
    assert_eq!(firing["actor"], format!("chat:telegram:{ADA}"));
    let runs = audited(&t, "schedule.run").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["actor"], format!("chat:telegram:{ADA}"));

    fake.message(ADA, "/run nope");
    let reply = fake.reply(ADA, 2).await;
    assert!(reply.contains("schedule \"nope\" not found"), "{reply}");
}
