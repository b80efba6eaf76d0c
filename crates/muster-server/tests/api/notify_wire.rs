//! What each notifier puts on the wire, checked against a fake service on loopback: the
//! method, path, headers and body of the request (with text that each service's markup would
//! mangle unless escaped), and how each kind of answer is taken (delivered, retry and when,
//! refused), with no secret in any error.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use muster_server::notify::channels::{self, Channel, ChannelSpec};
use muster_server::notify::{Message, Outcome};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use crate::fake_service::{FakeService, Reply};

const HA_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.ha-long-lived-token";
const NTFY_TOKEN: &str = "tk_ntfyaccesstoken0123";
const BOT_TOKEN: &str = "123456789:AAHbotTokenSecret_-xyz";
const DISCORD_TOKEN: &str = "discordWebhookTokenSecret-42";
const HOOK_SECRET: &str = "whsec-0123456789abcdef0123456789";

/// `Überwachung` and `⚠️` are not Latin-1 (a header-based ntfy publish would break);
/// `<`, `&`, `_` and `*` are markup in Telegram's HTML or Discord's markdown; `🚀` is two
/// UTF-16 units.
const TITLE: &str = "Überwachung ⚠️ <build> & co_*x*";
const BODY: &str = "exit_code=*1* <stderr> & more 🚀\n- not a list";
const LINK: &str = "https://muster.example/tasks/42?tab=log&attempt=2";

fn message() -> Message {
    Message {
        id: Uuid::from_u128(0x0193_5a2e_7c00_7000_8000_0000_0000_0042),
        event: "task.failed".to_owned(),
        title: TITLE.to_owned(),
        body: BODY.to_owned(),
        link: Some(LINK.to_owned()),
        at: Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap(),
        count: 1,
        subject: "task:42".to_owned(),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 3).unwrap()
}

/// A channel from its TOML, with the environment holding only `env`.
fn channel(toml_text: &str, env: &[(&str, String)]) -> Channel {
    let spec: ChannelSpec = toml::from_str(toml_text).expect("the channel spec parses");
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    };
    Channel::resolve(spec, &lookup).expect("the channel resolves")
}

fn home_assistant(fake: &FakeService) -> Channel {
    channel(
        &format!(
            r#"name = "phone"
               kind = "home-assistant"
               url = "{}"
               target = "mobile_app_pixel_7"
               token_env = "HA_TOKEN""#,
            fake.url
        ),
        &[("HA_TOKEN", HA_TOKEN.to_owned())],
    )
}

fn telegram(fake: &FakeService, timeout: &str) -> Channel {
    channel(
        &format!(
            r#"name = "tg"
               kind = "telegram"
               api_url = "{}"
               token_env = "BOT_TOKEN"
               chat_id = "-1001234567890"
               timeout = "{timeout}""#,
            fake.url
        ),
        &[("BOT_TOKEN", BOT_TOKEN.to_owned())],
    )
}

fn discord(fake: &FakeService, timeout: &str) -> Channel {
    channel(
        &format!(
            r#"name = "dc"
               kind = "discord"
               url_env = "DISCORD_URL"
               api_url = "{}"
               username = "muster"
               timeout = "{timeout}""#,
            fake.url
        ),
        &[(
            "DISCORD_URL",
            format!("https://discord.com/api/webhooks/1234/{DISCORD_TOKEN}?thread_id=99"),
        )],
    )
}

fn user_agent() -> String {
    format!("muster/{}", env!("CARGO_PKG_VERSION"))
}

#[tokio::test]
async fn home_assistant_gets_a_notify_service_call_with_the_token() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::ok("[]"));
    let outcome = channels::send(
        &channels::client(),
        &home_assistant(&fake),
        &message(),
        now(),
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::Delivered {
            status: 200,
            answer: "[]".to_owned()
        }
    );
    let requests = fake.wait_for(1).await;
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/services/notify/mobile_app_pixel_7");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {HA_TOKEN}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("user-agent"), Some(user_agent().as_str()));
    assert_eq!(
        request.json(),
        json!({
            "message": format!("{BODY}\n{LINK}"),
            "title": TITLE,
            "data": { "url": LINK, "clickAction": LINK },
        })
    );
}

#[tokio::test]
async fn ntfy_gets_json_at_the_server_root_with_the_topic_inside() {
    let fake = FakeService::start().await;
    let ntfy = channel(
        &format!(
            r#"name = "ntfy"
               kind = "ntfy"
               url = "{}/homelab"
               token_env = "NTFY_TOKEN"
               priority = "high"
               tags = ["warning", "muster"]"#,
            fake.url
        ),
        &[("NTFY_TOKEN", NTFY_TOKEN.to_owned())],
    );
    let outcome = channels::send(&channels::client(), &ntfy, &message(), now()).await;
    assert!(
        matches!(outcome, Outcome::Delivered { status: 200, .. }),
        "{outcome:?}"
    );
    let request = &fake.wait_for(1).await[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {NTFY_TOKEN}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    // No header carries the title: header values are Latin-1.
    assert_eq!(request.header("title"), None);
    assert_eq!(
        request.json(),
        json!({
            "topic": "homelab",
            "message": BODY,
            "title": TITLE,
            "priority": 4,
            "tags": ["warning", "muster"],
            "click": LINK,
        })
    );
}

#[tokio::test]
async fn telegram_gets_escaped_html_at_the_bot_path() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::ok(r#"{"ok":true,"result":{"message_id":7}}"#));
    let outcome = channels::send(
        &channels::client(),
        &telegram(&fake, "10s"),
        &message(),
        now(),
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::Delivered {
            status: 200,
            answer: r#"{"ok":true,"result":{"message_id":7}}"#.to_owned()
        }
    );
    let request = &fake.wait_for(1).await[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, format!("/bot{BOT_TOKEN}/sendMessage"));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({
            "chat_id": -1001234567890_i64,
            "text": "<b>Überwachung ⚠️ &lt;build&gt; &amp; co_*x*</b>\n\n\
                     exit_code=*1* &lt;stderr&gt; &amp; more 🚀\n- not a list\n\n\
                     <a href=\"https://muster.example/tasks/42?tab=log&amp;attempt=2\">Open in muster</a>",
            "parse_mode": "HTML",
            "link_preview_options": { "is_disabled": true },
        })
    );
}

#[tokio::test]
async fn discord_gets_escaped_markdown_and_waits_for_the_saved_message() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::ok(r#"{"id":"1","type":0}"#));
    let outcome = channels::send(
        &channels::client(),
        &discord(&fake, "10s"),
        &message(),
        now(),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Delivered { status: 200, .. }),
        "{outcome:?}"
    );
    let request = &fake.wait_for(1).await[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path,
        format!("/api/webhooks/1234/{DISCORD_TOKEN}?thread_id=99&wait=true")
    );
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({
            "content": r"Überwachung ⚠️ \<build\> & co\_\*x\*",
            "embeds": [{
                "title": r"Überwachung ⚠️ \<build\> & co\_\*x\*",
                "description": "exit\\_code=\\*1\\* \\<stderr\\> & more 🚀\n\\- not a list",
                "url": LINK,
                "timestamp": "2026-11-22T10:00:00Z",
            }],
            "allowed_mentions": { "parse": [] },
            "username": "muster",
        })
    );
}

#[tokio::test]
async fn the_webhook_gets_plain_json_signed_over_timestamp_and_body() {
    let fake = FakeService::start().await;
    let hook = channel(
        &format!(
            r#"name = "hook"
               kind = "webhook"
               url = "{}/hooks/muster"
               secret_env = "HOOK_SECRET""#,
            fake.url
        ),
        &[("HOOK_SECRET", HOOK_SECRET.to_owned())],
    );
    let outcome = channels::send(&channels::client(), &hook, &message(), now()).await;
    assert!(
        matches!(outcome, Outcome::Delivered { status: 200, .. }),
        "{outcome:?}"
    );
    let request = &fake.wait_for(1).await[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/muster");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-muster-event"), Some("task.failed"));
    assert_eq!(
        request.header("x-muster-delivery"),
        Some(message().id.to_string().as_str())
    );
    let timestamp = request.header("x-muster-timestamp").expect("a timestamp");
    assert_eq!(timestamp, now().timestamp().to_string());

    // What a receiver does: HMAC-SHA256 over "<timestamp>.<raw body>" with the shared secret.
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        request.header("x-muster-signature"),
        Some(format!("sha256={expected}").as_str())
    );
    assert_eq!(
        request.json(),
        json!({
            "id": message().id.to_string(),
            "event": "task.failed",
            "title": TITLE,
            "message": BODY,
            "link": LINK,
            "subject": "task:42",
            "count": 1,
            "at": "2026-11-22T10:00:00Z",
        })
    );
}

#[tokio::test]
async fn a_server_error_or_a_retry_after_is_worth_another_try() {
    let fake = FakeService::start().await;
    let ha = home_assistant(&fake);
    let client = channels::client();

    fake.reply_next(Reply::status(500, "boom"));
    assert_eq!(
        channels::send(&client, &ha, &message(), now()).await,
        Outcome::Retry {
            status: Some(500),
            after: None,
            error: "Home Assistant answered 500: boom".to_owned()
        }
    );

    fake.reply_next(Reply::status(429, "slow down").with_header("Retry-After", "7"));
    assert_eq!(
        channels::send(&client, &ha, &message(), now()).await,
        Outcome::Retry {
            status: Some(429),
            after: Some(Duration::from_secs(7)),
            error: "Home Assistant answered 429: slow down".to_owned()
        }
    );

    fake.reply_next(Reply::status(
        401,
        r#"{"message":"Invalid authentication"}"#,
    ));
    assert_eq!(
        channels::send(&client, &ha, &message(), now()).await,
        Outcome::Refused {
            status: 401,
            error: r#"Home Assistant answered 401: {"message":"Invalid authentication"}"#
                .to_owned()
        }
    );
    assert_eq!(fake.wait_for(3).await.len(), 3);
}

#[tokio::test]
async fn telegram_is_judged_by_its_ok_field_and_retry_after() {
    let fake = FakeService::start().await;
    let tg = telegram(&fake, "10s");
    let client = channels::client();

    fake.reply_next(Reply::status(
        429,
        r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#,
    ));
    assert_eq!(
        channels::send(&client, &tg, &message(), now()).await,
        Outcome::Retry {
            status: Some(429),
            after: Some(Duration::from_secs(3)),
            error: "Telegram answered 429: Too Many Requests: retry after 3".to_owned()
        }
    );

    // A 200 that says ok:false was not delivered.
    fake.reply_next(Reply::ok(
        r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
    ));
    assert_eq!(
        channels::send(&client, &tg, &message(), now()).await,
        Outcome::Refused {
            status: 400,
            error: "Telegram answered 400: Bad Request: chat not found".to_owned()
        }
    );
}

#[tokio::test]
async fn discord_rate_limits_give_fractional_seconds() {
    let fake = FakeService::start().await;
    fake.reply_next(
        Reply::status(
            429,
            r#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
        )
        .with_header("Retry-After", "2"),
    );
    let outcome = channels::send(
        &channels::client(),
        &discord(&fake, "10s"),
        &message(),
        now(),
    )
    .await;
    let Outcome::Retry {
        status,
        after,
        error,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(status, Some(429));
    assert_eq!(after, Some(Duration::from_millis(1500)));
    assert!(error.starts_with("Discord answered 429: "), "{error}");
}

#[tokio::test]
async fn a_service_that_does_not_answer_is_retried_and_the_error_holds_no_secret() {
    let fake = FakeService::start().await;
    fake.default_reply(Reply::Hang);
    let client = channels::client();
    for channel in [telegram(&fake, "300ms"), discord(&fake, "300ms")] {
        let outcome = channels::send(&client, &channel, &message(), now()).await;
        let Outcome::Retry {
            status: None,
            after: None,
            error,
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert!(error.ends_with("did not answer within 300ms"), "{error}");
        for secret in [
            BOT_TOKEN,
            "AAHbotTokenSecret",
            DISCORD_TOKEN,
            "webhooks/1234",
        ] {
            assert!(!error.contains(secret), "{error}");
        }
    }
    // Both requests arrived and were held, not refused.
    assert_eq!(fake.wait_for(2).await.len(), 2);
    fake.release();
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_the_error_holds_no_secret() {
    // A port that was free a moment ago: nothing listens there now.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let tg = channel(
        &format!(
            r#"name = "tg"
               kind = "telegram"
               api_url = "{closed}"
               token_env = "BOT_TOKEN"
               chat_id = 5"#
        ),
        &[("BOT_TOKEN", BOT_TOKEN.to_owned())],
    );
    let outcome = channels::send(&channels::client(), &tg, &message(), now()).await;
    let Outcome::Retry {
        status: None,
        after: None,
        error,
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert!(
        error.starts_with("could not connect to Telegram: "),
        "{error}"
    );
    assert!(!error.contains("AAHbotTokenSecret"), "{error}");
    assert!(!error.contains(&closed), "{error}");
}
