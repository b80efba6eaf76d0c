//! The notification channels: one `[[notify.channels]]` entry as written ([`ChannelSpec`]),
//! the same entry checked and with its secrets read from the environment ([`Channel`]), and
//! the sending of one [`Message`] over one channel ([`send`]) in the wire format of each
//! service: Home Assistant, ntfy, Telegram, Discord and a signed generic webhook.
//!
//! Secrets (tokens, the Discord webhook URL, the webhook's signing key) only ever come from
//! environment variables named in the file (`*_env`), live in [`Secret`] or [`ServiceUrl`],
//! and never reach an error text: reqwest's errors carry the request URL, and Telegram's URL
//! holds the bot token while Discord's *is* the secret, so every error here is worded anew.
//!
//! `send` makes one attempt and says what it came to ([`Outcome`]); when to try again is the
//! caller's business.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use url::Url;

use super::text::{Piece, capped};
use super::{Message, Outcome, telegram};
use crate::secret::{Secret, hex, read_variable};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(6 * 3600);

/// How much of a service's answer is read: enough for any error JSON, bounded so a broken or
/// hostile service cannot make muster buffer without limit.
const ANSWER_READ_LIMIT: usize = 64 * 1024;
/// How much of a service's answer is kept in the record and in error texts, `…` included.
const ANSWER_KEPT_CHARS: usize = 500;
/// The limit on connecting, within the channel's own timeout for the whole request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

use super::telegram::TEXT_LIMIT as TELEGRAM_TEXT_LIMIT;
/// A title longer than this is cut, so that a runaway title still leaves room for the body.
const TELEGRAM_TITLE_LIMIT: usize = 256;
const TELEGRAM_LINK_TEXT: &str = "Open in muster";

/// Discord's limits (content, embed title, embed description). Discord counts characters;
/// counting UTF-16 units instead is never less, so a capped text always fits.
const DISCORD_CONTENT_LIMIT: usize = 2000;
const DISCORD_TITLE_LIMIT: usize = 256;
const DISCORD_DESCRIPTION_LIMIT: usize = 4096;

/// A signing key shorter than this is refused: HMAC is only as strong as its key.
const WEBHOOK_SECRET_MIN_CHARS: usize = 16;

/// One `[[notify.channels]]` entry as written in the file. Nothing is checked here:
/// [`Channel::resolve`] checks it and reads the secrets.
///
/// Secrets come only through `*_env` fields, the names of environment variables; a `token`
/// or `secret` written in the file is refused as an unknown field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    pub name: String,
    /// `home-assistant`, `ntfy`, `telegram`, `discord` or `webhook`.
    pub kind: String,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub api_url: Option<String>,
    pub token_env: Option<String>,
    /// Home Assistant: the notify service's name (`mobile_app_pixel` for `notify.mobile_app_pixel`).
    pub target: Option<String>,
    /// Telegram: a chat's number or a public channel's `@username`.
    pub chat_id: Option<NumberOrText>,
    /// ntfy: 1–5 or min, low, default, high, max (urgent).
    pub priority: Option<NumberOrText>,
    /// ntfy: tags (emoji short codes among them show as emoji).
    pub tags: Option<Vec<String>>,
    /// Webhook: the variable holding the HMAC signing key.
    pub secret_env: Option<String>,
    /// Discord: the name the message is posted under.
    pub username: Option<String>,
    pub timeout: Option<String>,
    pub backoff: Option<String>,
    pub give_up_after: Option<String>,
}

/// A TOML value that may be written as an integer or as a string (`chat_id = -100123` and
/// `chat_id = "@news"`, `priority = 4` and `priority = "high"`).
#[derive(Debug, Clone, PartialEq)]
pub enum NumberOrText {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for NumberOrText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NumberOrText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NumberOrText, E> {
                Ok(NumberOrText::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NumberOrText, E> {
                i64::try_from(v)
                    .map(NumberOrText::Number)
                    .map_err(|_| E::custom("the integer is too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NumberOrText, E> {
                Ok(NumberOrText::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A channel, checked, with its secrets read: where messages go and how long to keep trying.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// The limit on one request, from connecting to the end of the answer.
    pub timeout: Duration,
    /// The delay before the first retry (the caller grows it).
    pub backoff: Duration,
    /// How long after the first attempt the caller stops trying.
    pub give_up_after: Duration,
}

/// Each service's resolved data. URLs are parsed and tokens are [`Secret`]s, so `{:?}` of a
/// channel shows no secret.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelKind {
    /// `POST {url}/api/services/notify/{target}` with a long-lived access token.
    HomeAssistant {
        url: Url,
        target: String,
        token: Secret,
    },
    /// Published as JSON to the server root of `topic_url`; the last path segment is the topic.
    Ntfy {
        topic_url: ServiceUrl,
        token: Option<Secret>,
        /// 1 (min) to 5 (max).
        priority: Option<u8>,
        tags: Vec<String>,
    },
    /// `POST {api_url}/bot{token}/sendMessage`.
    Telegram {
        api_url: Url,
        token: Secret,
        chat_id: ChatId,
    },
    /// `POST {webhook}?wait=true`; the URL (which holds the webhook's token) is the secret.
    Discord {
        webhook: ServiceUrl,
        username: Option<String>,
    },
    /// `POST {url}` with the message as JSON, signed with HMAC-SHA256 (see [`signature`]).
    Webhook { url: ServiceUrl, secret: Secret },
}

/// A Telegram chat: a number (groups and channels are negative) or a public `@username`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatId {
    Id(i64),
    Username(String),
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Id(id) => write!(f, "{id}"),
            ChatId::Username(name) => f.write_str(name),
        }
    }
}

/// A service URL, written in the file or read from an environment variable. One read from
/// the environment is treated as a secret (it may hold a token, or be one, as Discord's
/// webhook URL is) and never prints; `{:?}` shows the variable's name instead.
#[derive(Clone, PartialEq)]
pub struct ServiceUrl {
    url: Url,
    /// The variable it was read from; `None` when it was written in the file.
    env: Option<String>,
}

impl ServiceUrl {
    pub fn expose(&self) -> &Url {
        &self.url
    }

    /// The environment variable the URL came from, if it did.
    pub fn env(&self) -> Option<&str> {
        self.env.as_deref()
    }

    /// The URL when it was written in the file, `(URL from VAR)` when it is a secret.
    pub fn shown(&self) -> String {
        match &self.env {
            None => self.url.to_string(),
            Some(var) => format!("(URL from {var})"),
        }
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// The kinds as written, with the optional fields each one takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KindName {
    HomeAssistant,
    Ntfy,
    Telegram,
    Discord,
    Webhook,
}

const KIND_NAMES: [KindName; 5] = [
    KindName::HomeAssistant,
    KindName::Ntfy,
    KindName::Telegram,
    KindName::Discord,
    KindName::Webhook,
];

impl KindName {
    fn as_str(self) -> &'static str {
        match self {
            KindName::HomeAssistant => "home-assistant",
            KindName::Ntfy => "ntfy",
            KindName::Telegram => "telegram",
            KindName::Discord => "discord",
            KindName::Webhook => "webhook",
        }
    }

    fn parse(text: &str) -> Result<KindName, String> {
        KIND_NAMES
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "kind {text:?} is invalid: expected one of home-assistant, ntfy, telegram, \
                     discord, webhook"
                )
            })
    }

    /// The kind-specific fields this kind takes (the common ones apply to every kind).
    fn fields(self) -> &'static [&'static str] {
        match self {
            KindName::HomeAssistant => &["url", "token_env", "target"],
            KindName::Ntfy => &["url", "url_env", "token_env", "priority", "tags"],
            KindName::Telegram => &["token_env", "chat_id", "api_url"],
            KindName::Discord => &["url_env", "api_url", "username"],
            KindName::Webhook => &["url", "url_env", "secret_env"],
        }
    }
}

impl Channel {
    /// Checks `spec` and reads the variables its `*_env` fields name through `env`. The error
    /// is one sentence naming the field and the form expected; the caller prefixes the file,
    /// line and channel.
    pub fn resolve(
        spec: ChannelSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Channel, String> {
        check_name(&spec.name)?;
        let kind = KindName::parse(&spec.kind)?;
        refuse_fields_of_other_kinds(kind, &spec)?;
        let timeout = duration("timeout", spec.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        let backoff = duration("backoff", spec.backoff.as_deref(), DEFAULT_BACKOFF)?;
        let give_up_after = duration(
            "give_up_after",
            spec.give_up_after.as_deref(),
            DEFAULT_GIVE_UP_AFTER,
        )?;
        if give_up_after < backoff {
            return Err(format!(
                "give_up_after ({}) is shorter than backoff ({}): expected give_up_after to \
                 leave room for at least one retry",
                humantime::format_duration(give_up_after),
                humantime::format_duration(backoff)
            ));
        }
        let name = spec.name.clone();
        let kind = match kind {
            KindName::HomeAssistant => home_assistant(spec, env)?,
            KindName::Ntfy => ntfy(spec, env)?,
            KindName::Telegram => telegram(spec, env)?,
            KindName::Discord => discord(spec, env)?,
            KindName::Webhook => webhook(spec, env)?,
        };
        Ok(Channel {
            name,
            kind,
            timeout,
            backoff,
            give_up_after,
        })
    }

    /// Checks everything in `spec` but the values of the variables it names, which may be set
    /// only where the server runs: `muster config check`, and a file checked before it is
    /// loaded. Each variable stands for a well-formed value of its role.
    pub fn check(spec: ChannelSpec) -> Result<(), String> {
        let kind = spec.kind.clone();
        let (token, url, secret) = (
            spec.token_env.clone(),
            spec.url_env.clone(),
            spec.secret_env.clone(),
        );
        let stand_in = move |name: &str| -> Option<String> {
            let name = Some(name.to_owned());
            if name == token {
                Some(match kind.as_str() {
                    "telegram" => telegram::STAND_IN_TOKEN.to_owned(),
                    _ => "stand-in-token".to_owned(),
                })
            } else if name == url {
                Some(match kind.as_str() {
                    "discord" => "https://discord.com/api/webhooks/1/stand-in".to_owned(),
                    _ => "https://stand-in.invalid/stand-in".to_owned(),
                })
            } else if name == secret {
                Some("stand-in-secret-0123456789".to_owned())
            } else {
                None
            }
        };
        Channel::resolve(spec, &stand_in).map(drop)
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ChannelKind::HomeAssistant { .. } => "home-assistant",
            ChannelKind::Ntfy { .. } => "ntfy",
            ChannelKind::Telegram { .. } => "telegram",
            ChannelKind::Discord { .. } => "discord",
            ChannelKind::Webhook { .. } => "webhook",
        }
    }

    /// Where messages go, with no secret in it: `ntfy https://ntfy.sh/homelab`,
    /// `telegram chat 12345`, `discord webhook (URL from DISCORD_URL)`.
    pub fn describe(&self) -> String {
        match &self.kind {
            ChannelKind::HomeAssistant { url, target, .. } => {
                format!("home-assistant notify.{target} at {url}")
            }
            ChannelKind::Ntfy { topic_url, .. } => format!("ntfy {}", topic_url.shown()),
            ChannelKind::Telegram { chat_id, .. } => format!("telegram chat {chat_id}"),
            ChannelKind::Discord { webhook, .. } => format!("discord webhook {}", webhook.shown()),
            ChannelKind::Webhook { url, .. } => format!("webhook {}", url.shown()),
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    crate::bounds::entry_name(name).map_err(|why| format!("{why} such as phone or ops-telegram"))
}

/// Refuses a field the kind does not take, naming the kinds that do: a `chat_id` on an ntfy
/// channel is a mistake (a wrong kind, or a field copied from another entry), never a no-op.
fn refuse_fields_of_other_kinds(kind: KindName, spec: &ChannelSpec) -> Result<(), String> {
    if kind == KindName::Discord && spec.url.is_some() {
        return Err(
            "url is not accepted on a discord channel: the webhook URL holds its token \
                    and lets whoever has it post, so keep it out of the file and set url_env \
                    to the name of an environment variable that holds it"
                .to_owned(),
        );
    }
    let set = [
        ("url", spec.url.is_some()),
        ("url_env", spec.url_env.is_some()),
        ("api_url", spec.api_url.is_some()),
        ("token_env", spec.token_env.is_some()),
        ("target", spec.target.is_some()),
        ("chat_id", spec.chat_id.is_some()),
        ("priority", spec.priority.is_some()),
        ("tags", spec.tags.is_some()),
        ("secret_env", spec.secret_env.is_some()),
        ("username", spec.username.is_some()),
    ];
    for (field, is_set) in set {
        if is_set && !kind.fields().contains(&field) {
            let takers: Vec<&str> = KIND_NAMES
                .into_iter()
                .filter(|k| k.fields().contains(&field))
                .map(KindName::as_str)
                .collect();
            return Err(format!(
                "{field} does not apply to a {} channel (it is for {})",
                kind.as_str(),
                or_list(&takers)
            ));
        }
    }
    Ok(())
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[&str]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A duration from the config file, more than zero; the error names `field`.
pub(crate) fn duration(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(default);
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{field} {text:?} is invalid: expected a duration of more than zero such as 10s, \
             5m or 6h"
        )),
    }
}

/// The value of a field the kind requires; `what` says what it should hold.
fn required<'a>(
    field: &str,
    value: Option<&'a String>,
    kind: KindName,
    what: &str,
) -> Result<&'a str, String> {
    value
        .map(String::as_str)
        .ok_or_else(|| format!("{field} is required on a {} channel: {what}", kind.as_str()))
}

/// A token sent as `Authorization: Bearer …`: it must fit in a header.
fn bearer_token(
    field: &str,
    var: &str,
    holds: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, String> {
    let token = read_variable(field, var, holds, env)?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{var} (named by {field}) is invalid: expected {holds} without spaces or control \
             characters (its value is not shown)"
        ));
    }
    Ok(Secret::new(token))
}

/// Where a URL being checked came from, for its error: a field's text is shown, a
/// variable's value is not.
pub(super) struct UrlSource<'a> {
    pub(super) field: &'static str,
    pub(super) var: Option<&'a str>,
    pub(super) text: &'a str,
}

impl UrlSource<'_> {
    fn invalid(&self, form: &str, why: &str) -> String {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        match self.var {
            None => format!(
                "{} {:?} is invalid: expected {form}{why}",
                self.field, self.text
            ),
            Some(var) => format!(
                "{var} (named by {}) is invalid: expected {form}{why}; its value is not shown",
                self.field
            ),
        }
    }
}

/// Parses an http(s) URL; `check` returns why a parsed URL is still unfit for the field.
pub(super) fn http_url(
    source: &UrlSource<'_>,
    form: &str,
    check: &dyn Fn(&Url) -> Option<&'static str>,
) -> Result<Url, String> {
    let url = Url::parse(source.text.trim()).map_err(|_| source.invalid(form, ""))?;
    let why = if !matches!(url.scheme(), "http" | "https") {
        Some("the scheme must be http or https")
    } else if url.host_str().is_none_or(str::is_empty) {
        Some("the host is missing")
    } else if url.fragment().is_some() {
        Some("without a #fragment")
    } else if source.var.is_none() && (!url.username().is_empty() || url.password().is_some()) {
        Some("without a user or password: a password does not belong in the file")
    } else {
        check(&url)
    };
    match why {
        Some(why) => Err(source.invalid(form, why)),
        None => Ok(url),
    }
}

pub(super) fn no_query(url: &Url) -> Option<&'static str> {
    url.query().map(|_| "without a query (?…)")
}

/// The URL of a kind that takes it from the file (`url`) or from a variable (`url_env`).
fn url_or_url_env(
    spec: &ChannelSpec,
    kind: KindName,
    form: &str,
    env: &dyn Fn(&str) -> Option<String>,
    check: &dyn Fn(&Url) -> Option<&'static str>,
) -> Result<ServiceUrl, String> {
    match (&spec.url, &spec.url_env) {
        (Some(_), Some(_)) => Err(format!(
            "url and url_env are both set on a {} channel: expected one of them (url_env when \
             the URL is a secret)",
            kind.as_str()
        )),
        (None, None) => Err(format!(
            "url or url_env is required on a {} channel: {form}",
            kind.as_str()
        )),
        (Some(text), None) => {
            let source = UrlSource {
                field: "url",
                var: None,
                text,
            };
            Ok(ServiceUrl {
                url: http_url(&source, form, check)?,
                env: None,
            })
        }
        (None, Some(var)) => {
            let text = read_variable("url_env", var, form, env)?;
            let source = UrlSource {
                field: "url_env",
                var: Some(var),
                text: &text,
            };
            Ok(ServiceUrl {
                url: http_url(&source, form, check)?,
                env: Some(var.clone()),
            })
        }
    }
}

fn home_assistant(
    spec: ChannelSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChannelKind, String> {
    const FORM: &str = "Home Assistant's base URL such as http://ha.local:8123";
    let kind = KindName::HomeAssistant;
    let text = required("url", spec.url.as_ref(), kind, FORM)?;
    let source = UrlSource {
        field: "url",
        var: None,
        text,
    };
    let url = http_url(&source, FORM, &no_query)?;
    let target = required(
        "target",
        spec.target.as_ref(),
        kind,
        "the notify service's name such as mobile_app_pixel_7 (notify.mobile_app_pixel_7 in \
         Home Assistant)",
    )?;
    let fits = !target.is_empty()
        && target
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !fits {
        return Err(format!(
            "target {target:?} is invalid: expected a notify service's name of lowercase \
             letters, digits and _ such as mobile_app_pixel_7 (without the notify. prefix)"
        ));
    }
    let holds = "a Home Assistant long-lived access token (your profile, Security, Long-lived \
                 access tokens)";
    let var = required(
        "token_env",
        spec.token_env.as_ref(),
        kind,
        "the name of an environment variable holding a long-lived access token",
    )?;
    Ok(ChannelKind::HomeAssistant {
        url,
        target: target.to_owned(),
        token: bearer_token("token_env", var, holds, env)?,
    })
}

/// The topic: the last segment of the topic URL's path (a trailing `/` is ignored).
fn ntfy_topic(url: &Url) -> &str {
    let path = url.path().trim_end_matches('/');
    path.rsplit('/').next().unwrap_or_default()
}

fn ntfy(spec: ChannelSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<ChannelKind, String> {
    const FORM: &str = "an ntfy topic URL such as https://ntfy.sh/homelab";
    let check = |url: &Url| {
        let topic = ntfy_topic(url);
        // ntfy's own rule for topic names.
        let fits = (1..=64).contains(&topic.len())
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !fits {
            Some(
                "the last part of the path is the topic: 1 to 64 letters, digits, _ or -, \
                 without a query",
            )
        } else {
            no_query(url)
        }
    };
    let mut topic_url = url_or_url_env(&spec, KindName::Ntfy, FORM, env, &check)?;
    let trimmed = topic_url.url.path().trim_end_matches('/').to_owned();
    topic_url.url.set_path(&trimmed);
    let token = match &spec.token_env {
        None => None,
        Some(var) => Some(bearer_token(
            "token_env",
            var,
            "an ntfy access token such as tk_… (ntfy token add)",
            env,
        )?),
    };
    let priority = spec.priority.as_ref().map(ntfy_priority).transpose()?;
    let tags = spec.tags.unwrap_or_default();
    if let Some(bad) = tags
        .iter()
        .find(|t| t.trim().is_empty() || t.trim() != t.as_str())
    {
        return Err(format!(
            "tags holds {bad:?}, which is invalid: expected words without surrounding spaces \
             such as [\"warning\", \"muster\"]"
        ));
    }
    Ok(ChannelKind::Ntfy {
        topic_url,
        token,
        priority,
        tags,
    })
}

fn ntfy_priority(value: &NumberOrText) -> Result<u8, String> {
    let priority = match value {
        NumberOrText::Number(n) => u8::try_from(*n).ok(),
        NumberOrText::Text(text) => match text.trim() {
            "min" => Some(1),
            "low" => Some(2),
            "default" => Some(3),
            "high" => Some(4),
            "max" | "urgent" => Some(5),
            other => other.parse().ok(),
        },
    };
    match priority {
        Some(p @ 1..=5) => Ok(p),
        _ => {
            let shown = match value {
                NumberOrText::Number(n) => n.to_string(),
                NumberOrText::Text(text) => format!("{text:?}"),
            };
            Err(format!(
                "priority {shown} is invalid: expected 1 to 5 or min, low, default, high, max \
                 (urgent)"
            ))
        }
    }
}

fn telegram(
    spec: ChannelSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChannelKind, String> {
    const CHAT_FORM: &str =
        "a chat's number such as -1001234567890 or a public channel's @username";
    let kind = KindName::Telegram;
    let var = required(
        "token_env",
        spec.token_env.as_ref(),
        kind,
        "the name of an environment variable holding the bot's token from @BotFather",
    )?;
    let token = telegram::bot_token(var, env)?;
    let chat_id = match required_chat_id(spec.chat_id.as_ref(), CHAT_FORM)? {
        NumberOrText::Number(id) if *id != 0 => ChatId::Id(*id),
        NumberOrText::Text(text) => chat_id_text(text)
            .ok_or_else(|| format!("chat_id {text:?} is invalid: expected {CHAT_FORM}"))?,
        NumberOrText::Number(id) => {
            return Err(format!("chat_id {id} is invalid: expected {CHAT_FORM}"));
        }
    };
    let api_url = telegram::api_url(spec.api_url.as_deref())?;
    Ok(ChannelKind::Telegram {
        api_url,
        token,
        chat_id,
    })
}

fn required_chat_id<'a>(
    value: Option<&'a NumberOrText>,
    form: &str,
) -> Result<&'a NumberOrText, String> {
    value.ok_or_else(|| format!("chat_id is required on a telegram channel: {form}"))
}

fn chat_id_text(text: &str) -> Option<ChatId> {
    let text = text.trim();
    if let Ok(id) = text.parse::<i64>() {
        return (id != 0).then_some(ChatId::Id(id));
    }
    let name = text.strip_prefix('@')?;
    let fits = (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    fits.then(|| ChatId::Username(text.to_owned()))
}

fn discord(spec: ChannelSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<ChannelKind, String> {
    const FORM: &str =
        "a Discord webhook URL such as https://discord.com/api/webhooks/<id>/<token>";
    const API_FORM: &str = "a server's scheme, host and port such as http://127.0.0.1:8080";
    let var = required(
        "url_env",
        spec.url_env.as_ref(),
        KindName::Discord,
        "the name of an environment variable holding the webhook URL (channel settings, \
         Integrations, Webhooks, Copy Webhook URL)",
    )?;
    let text = read_variable("url_env", var, FORM, env)?;
    let source = UrlSource {
        field: "url_env",
        var: Some(var),
        text: &text,
    };
    let looks_like_webhook = |url: &Url| {
        (!url.path().contains("/webhooks/"))
            .then_some("the path should hold /webhooks/<id>/<token>")
    };
    let mut url = http_url(&source, FORM, &looks_like_webhook)?;
    if let Some(api_text) = &spec.api_url {
        let api_source = UrlSource {
            field: "api_url",
            var: None,
            text: api_text,
        };
        let origin_only = |url: &Url| {
            (url.path() != "/" || url.query().is_some())
                .then_some("only the scheme, host and port are used, so without a path or query")
        };
        let api = http_url(&api_source, API_FORM, &origin_only)?;
        // The webhook's own scheme, host and port give way to the server's, keeping its path
        // (id and token) and query (thread_id).
        let replaced = url
            .set_scheme(api.scheme())
            .and_then(|()| url.set_host(api.host_str()).map_err(|_| ()))
            .and_then(|()| url.set_port(api.port()));
        if replaced.is_err() {
            return Err(api_source.invalid(API_FORM, "it cannot replace the webhook URL's server"));
        }
    }
    if let Some(name) = &spec.username {
        // Discord refuses a webhook name that is empty, longer than 80 characters, or holds
        // "discord" or "clyde".
        let lower = name.to_lowercase();
        let fits = (1..=80).contains(&name.trim().chars().count())
            && !lower.contains("discord")
            && !lower.contains("clyde");
        if !fits {
            return Err(format!(
                "username {name:?} is invalid: expected 1 to 80 characters without \"discord\" \
                 or \"clyde\" such as muster"
            ));
        }
    }
    Ok(ChannelKind::Discord {
        webhook: ServiceUrl {
            url,
            env: Some(var.to_owned()),
        },
        username: spec.username,
    })
}

fn webhook(spec: ChannelSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<ChannelKind, String> {
    const FORM: &str = "the receiver's URL such as https://example.com/hooks/muster";
    let url = url_or_url_env(&spec, KindName::Webhook, FORM, env, &|_| None)?;
    let var = required(
        "secret_env",
        spec.secret_env.as_ref(),
        KindName::Webhook,
        "the name of an environment variable holding the key the requests are signed with",
    )?;
    let holds = "a signing key of at least 16 characters such as the output of openssl rand \
                 -hex 32";
    let secret = read_variable("secret_env", var, holds, env)?;
    if secret.chars().count() < WEBHOOK_SECRET_MIN_CHARS {
        return Err(format!(
            "{var} (named by secret_env) is too short: expected {holds}"
        ));
    }
    Ok(ChannelKind::Webhook {
        url,
        secret: Secret::new(secret),
    })
}

impl ChannelKind {
    /// The secret strings of this channel, to blank out of any text a service answers with
    /// (a service may echo the URL or the token it was called with).
    fn secrets(&self) -> Vec<&str> {
        fn secret_url<'a>(url: &'a ServiceUrl, secrets: &mut Vec<&'a str>) {
            if url.env.is_some() {
                secrets.push(url.url.as_str());
                secrets.push(url.url.path());
            }
        }
        let mut secrets = Vec::new();
        match self {
            ChannelKind::HomeAssistant { token, .. } => secrets.push(token.expose()),
            ChannelKind::Ntfy {
                topic_url, token, ..
            } => {
                secret_url(topic_url, &mut secrets);
                secrets.push(ntfy_topic(&topic_url.url));
                if let Some(token) = token {
                    secrets.push(token.expose());
                }
            }
            ChannelKind::Telegram { token, .. } => secrets.push(token.expose()),
            ChannelKind::Discord { webhook, .. } => {
                secret_url(webhook, &mut secrets);
                // The last path segment is the webhook's token.
                if let Some(token) = webhook.url.path_segments().and_then(|mut s| s.next_back()) {
                    secrets.push(token);
                }
            }
            ChannelKind::Webhook { url, secret } => {
                secret_url(url, &mut secrets);
                secrets.push(secret.expose());
            }
        }
        secrets
    }

    /// The service's name in error texts.
    fn service(&self) -> &'static str {
        match self {
            ChannelKind::HomeAssistant { .. } => "Home Assistant",
            ChannelKind::Ntfy { .. } => "ntfy",
            ChannelKind::Telegram { .. } => "Telegram",
            ChannelKind::Discord { .. } => "Discord",
            ChannelKind::Webhook { .. } => "the webhook receiver",
        }
    }
}

/// Replaces every secret of `kind` in `text` with `[redacted]`. Secrets shorter than 8
/// characters (an ntfy topic such as `alerts`) are left alone: blanking every occurrence of
/// a common word would garble the text and such a name guards little.
fn scrub(text: &str, kind: &ChannelKind) -> String {
    redact(text, &kind.secrets())
}

/// Replaces every one of `secrets` in `text` with `[redacted]`, leaving alone those shorter
/// than 8 characters (see [`scrub`]): what any outbound call does with a service's answer.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if secret.len() >= 8 {
            text = text.replace(secret, "[redacted]");
        }
    }
    text
}

/// The HTTP client for the outside services muster calls (notifiers, forges, Telegram, its
/// own canary hook, repair probes): rustls, a `muster/<version>` user agent, a connect
/// timeout, and no redirects followed: a redirect could carry the `Authorization` header,
/// or a token in the path, to another server. A 3xx answer is refused instead.
///
/// One for the process, cloned: each client built holds its own TLS root store and
/// connection pool, which cost a few hundred KiB of an idle server's memory apiece.
pub fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .use_rustls_tls()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("muster/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .expect("the HTTP client builds: rustls and fixed settings")
        })
        .clone()
}

/// One request as it goes on the wire: always a `POST` of JSON.
struct WireRequest<'a> {
    url: Url,
    bearer: Option<&'a Secret>,
    /// Headers besides `Content-Type` and `Authorization`.
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The request that carries `message` over `channel`, made without I/O.
fn wire_request<'a>(
    channel: &'a Channel,
    message: &Message,
    now: DateTime<Utc>,
) -> WireRequest<'a> {
    let json_body = |value: Value| value.to_string().into_bytes();
    match &channel.kind {
        ChannelKind::HomeAssistant { url, target, token } => {
            let mut url = url.clone();
            // resolve() only accepts http(s) URLs, which always have a path to extend.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty()
                    .extend(["api", "services", "notify", target]);
            }
            let mut text = message.body.clone();
            if let Some(link) = &message.link {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(link);
            }
            let mut body = json!({ "message": text, "title": message.title });
            if let Some(link) = &message.link {
                // `url` opens the link on iOS, `clickAction` on Android (the companion app).
                body["data"] = json!({ "url": link, "clickAction": link });
            }
            WireRequest {
                url,
                bearer: Some(token),
                headers: Vec::new(),
                body: json_body(body),
            }
        }
        ChannelKind::Ntfy {
            topic_url,
            token,
            priority,
            tags,
        } => {
            // JSON is published to the server's root, not the topic's URL; JSON rather than
            // the headers form because header values are Latin-1 and a UTF-8 title breaks.
            let mut root = topic_url.url.clone();
            let path = root.path().to_owned();
            let cut = path.rfind('/').map_or(0, |i| i + 1);
            root.set_path(&path[..cut]);
            let mut body = json!({
                "topic": ntfy_topic(&topic_url.url),
                "message": message.body,
                "title": message.title,
            });
            if let Some(priority) = priority {
                body["priority"] = json!(priority);
            }
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            if let Some(link) = &message.link {
                body["click"] = json!(link);
            }
            WireRequest {
                url: root,
                bearer: token.as_ref(),
                headers: Vec::new(),
                body: json_body(body),
            }
        }
        ChannelKind::Telegram {
            api_url,
            token,
            chat_id,
        } => {
            let chat_id = match chat_id {
                ChatId::Id(id) => json!(id),
                ChatId::Username(name) => json!(name),
            };
            let body = telegram::send_message_body(chat_id, &telegram_text(message));
            WireRequest {
                url: telegram::method_url(api_url, token, "sendMessage"),
                bearer: None,
                headers: Vec::new(),
                body: json_body(body),
            }
        }
        ChannelKind::Discord { webhook, username } => {
            // wait=true makes Discord answer with the saved message, or an error when it was
            // not saved; without it a dropped message still answers 204.
            let mut url = webhook.url.clone();
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| name != "wait")
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("wait", "true");
            WireRequest {
                url,
                bearer: None,
                headers: Vec::new(),
                body: json_body(discord_payload(message, username.as_deref())),
            }
        }
        ChannelKind::Webhook { url, secret } => {
            let body = json_body(json!({
                "id": message.id,
                "event": message.event,
                "title": message.title,
                "message": message.body,
                "link": message.link,
                "subject": message.subject,
                "count": message.count,
                "at": rfc3339(message.at),
            }));
            let timestamp = now.timestamp();
            WireRequest {
                url: url.url.clone(),
                bearer: None,
                headers: vec![
                    ("X-Muster-Event", message.event.clone()),
                    ("X-Muster-Delivery", message.id.to_string()),
                    ("X-Muster-Timestamp", timestamp.to_string()),
                    (
                        "X-Muster-Signature",
                        signature(secret.expose().as_bytes(), timestamp, &body),
                    ),
                ],
                body,
            }
        }
    }
}

/// `<b>title</b>`, a blank line, the body, a blank line and the link, within Telegram's 4096
/// UTF-16 units. The body is what gets cut; the title is cut only when it is itself long.
fn telegram_text(message: &Message) -> String {
    let mut text = String::new();
    let mut used = 0;
    if !message.title.is_empty() {
        let title = capped(telegram::pieces(&message.title), TELEGRAM_TITLE_LIMIT);
        used += message
            .title
            .encode_utf16()
            .count()
            .min(TELEGRAM_TITLE_LIMIT);
        text.push_str("<b>");
        text.push_str(&title);
        text.push_str("</b>");
    }
    let link = message.link.as_deref().map(|link| {
        format!(
            "<a href=\"{}\">{TELEGRAM_LINK_TEXT}</a>",
            telegram::escape_attribute(link)
        )
    });
    // Only the link's text counts, plus the blank line before it.
    let link_cost = if link.is_some() {
        2 + TELEGRAM_LINK_TEXT.len()
    } else {
        0
    };
    if !message.body.is_empty() {
        let separator = if text.is_empty() { 0 } else { 2 };
        let room = TELEGRAM_TEXT_LIMIT.saturating_sub(used + separator + link_cost);
        if separator > 0 {
            text.push_str("\n\n");
        }
        text.push_str(&capped(telegram::pieces(&message.body), room));
    }
    if let Some(link) = link {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&link);
    }
    text
}

/// Where in a line the escaping of Discord markdown is: line-start markers (`- ` lists,
/// `1. ` lists) only mean something before any other character of the line.
#[derive(Clone, Copy, PartialEq)]
enum LinePosition {
    /// Nothing but spaces since the line began.
    Start,
    /// Digits only since the line began (a `.` now would start a numbered list).
    Digits,
    Within,
}

/// Text for Discord markdown: a backslash before every character that could start
/// formatting (`\ * _ ~ ` | > # [ ] <`; `<` also starts mentions and timestamps), and before a
/// line's leading `-`, `+` or numbered-list dot. Discord limits the text as sent, so each
/// piece costs its escaped length.
fn discord_pieces(text: &str) -> Vec<Piece> {
    let mut position = LinePosition::Start;
    text.chars()
        .map(|c| {
            let escape = match c {
                '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']' | '<' => true,
                '-' | '+' => position == LinePosition::Start,
                '.' => position == LinePosition::Digits,
                _ => false,
            };
            position = match (position, c) {
                (_, '\n') => LinePosition::Start,
                (LinePosition::Start, ' ' | '\t') => LinePosition::Start,
                (LinePosition::Start | LinePosition::Digits, '0'..='9') => LinePosition::Digits,
                _ => LinePosition::Within,
            };
            let text = if escape {
                format!("\\{c}")
            } else {
                c.to_string()
            };
            let cost = text.encode_utf16().count();
            Piece::new(text, cost)
        })
        .collect()
}

/// The title as `content` (what a phone's notification shows) and an embed with the title,
/// the body, the link and the time. Mentions are never parsed: a task's output must not
/// ping anyone.
fn discord_payload(message: &Message, username: Option<&str>) -> Value {
    let mut embed = json!({ "timestamp": rfc3339(message.at) });
    if !message.title.is_empty() {
        embed["title"] = json!(capped(discord_pieces(&message.title), DISCORD_TITLE_LIMIT));
    }
    if !message.body.is_empty() {
        embed["description"] = json!(capped(
            discord_pieces(&message.body),
            DISCORD_DESCRIPTION_LIMIT
        ));
    }
    if let Some(link) = &message.link {
        embed["url"] = json!(link);
    }
    let mut payload = json!({
        "content": capped(discord_pieces(&message.title), DISCORD_CONTENT_LIMIT),
        "embeds": [embed],
        "allowed_mentions": { "parse": [] },
    });
    if let Some(username) = username {
        payload["username"] = json!(username);
    }
    payload
}

/// The `X-Muster-Signature` of a webhook request: `sha256=` and the lowercase hex
/// HMAC-SHA256, keyed with the channel's secret, of the bytes `<timestamp>.<body>`, where
/// `<timestamp>` is the `X-Muster-Timestamp` header (Unix seconds, in decimal) and `<body>`
/// the raw request body.
///
/// A receiver verifies a request like this:
/// 1. Read the raw body bytes, before any JSON parsing (re-serialised JSON differs).
/// 2. Refuse the request when `X-Muster-Timestamp` is more than 5 minutes from its own clock,
///    either way: a captured request cannot be replayed later.
/// 3. Compute the HMAC-SHA256 of `<timestamp>.<body>` with the shared secret, format it as
///    `sha256=<hex>`, and compare it with `X-Muster-Signature` in constant time (a plain
///    `==` leaks, through its timing, how much of a guess was right).
/// 4. De-duplicate by `X-Muster-Delivery`, the notification's id: muster sends at least
///    once, so a retry after a lost answer carries the same id (with a fresh timestamp and
///    signature). Remembering the ids seen in the last 5 minutes also stops a replay within
///    the window.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Sends `message` over `channel` once, within `channel.timeout`, and says what came of it.
/// `now` is the time the request is signed with (the webhook) and the time a `Retry-After`
/// date is measured from. No error text holds a secret.
pub async fn send(
    client: &reqwest::Client,
    channel: &Channel,
    message: &Message,
    now: DateTime<Utc>,
) -> Outcome {
    let wire = wire_request(channel, message, now);
    let mut request = client
        .post(wire.url)
        .timeout(channel.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(token) = wire.bearer {
        // bearer_auth marks the header sensitive, so it never shows in reqwest's debug output.
        request = request.bearer_auth(token.expose());
    }
    for (name, value) in wire.headers {
        request = request.header(name, value);
    }
    let response = match request.body(wire.body).send().await {
        Ok(response) => response,
        Err(err) => {
            return Outcome::Retry {
                status: None,
                after: None,
                error: transport_error(err, channel),
            };
        }
    };
    let answer = read_answer(response, ANSWER_READ_LIMIT).await;
    judge(
        channel,
        answer.status,
        answer.retry_after.as_deref(),
        &answer.body,
        now,
    )
}

/// A service's answer as read: its status, its `Retry-After` header and at most a given
/// number of bytes of its body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Vec<u8>,
    /// Whether the whole body arrived, below the limit and without an error.
    pub(crate) whole: bool,
}

/// Reads `response` up to `limit` bytes of body. The status decides; the body only adds
/// detail, so a body cut short by the timeout or a reset is kept as far as it arrived.
pub(crate) async fn read_answer(mut response: reqwest::Response, limit: usize) -> Answer {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    let whole = loop {
        // Stopping at the limit, without waiting for more, also stops a service that sends
        // that much and then holds the connection open.
        if body.len() >= limit {
            break false;
        }
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    body.truncate(limit);
    Answer {
        status,
        retry_after,
        body,
        whole,
    }
}

/// A failed request in muster's own words: reqwest's text names the URL, which may hold
/// the secret.
fn transport_error(err: reqwest::Error, channel: &Channel) -> String {
    let text = describe_transport_error(err, channel.kind.service(), channel.timeout);
    scrub(&text, &channel.kind)
}

/// A request to `service` that got no answer, said without the URL (which may hold a
/// secret); `timeout` is the limit the whole request had. The caller scrubs the text of
/// its own secrets.
pub(crate) fn describe_transport_error(
    err: reqwest::Error,
    service: &str,
    timeout: Duration,
) -> String {
    let err = err.without_url();
    if err.is_connect() && err.is_timeout() {
        format!(
            "could not connect to {service} within {}",
            humantime::format_duration(CONNECT_TIMEOUT.min(timeout))
        )
    } else if err.is_timeout() {
        format!(
            "{service} did not answer within {}",
            humantime::format_duration(timeout)
        )
    } else {
        let mut cause: &dyn std::error::Error = &err;
        while let Some(source) = cause.source() {
            cause = source;
        }
        if err.is_connect() {
            format!("could not connect to {service}: {cause}")
        } else {
            format!("the request to {service} failed: {cause}")
        }
    }
}

/// The start of an answer: at most [`ANSWER_KEPT_CHARS`] characters, the last one `…` when
/// the answer was longer.
pub(crate) fn start_of(text: &str) -> String {
    super::cut(text, ANSWER_KEPT_CHARS)
}

/// What an answer comes to, from its status, its `Retry-After` header and its body.
fn judge(
    channel: &Channel,
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Outcome {
    let text = String::from_utf8_lossy(body);
    // Scrubbed before it is cut, so a secret at the cut is not left half shown.
    let answer = start_of(scrub(text.trim(), &channel.kind).as_str());
    let service = channel.kind.service();
    let header_after = retry_after_header.and_then(|v| muster_llm::retry_after(v, now));
    let json: Option<Value> = serde_json::from_str(&text).ok();
    match &channel.kind {
        ChannelKind::Telegram { .. } => telegram::judge(
            status,
            json.as_ref(),
            answer,
            header_after,
            &channel.kind.secrets(),
        ),
        ChannelKind::Discord { .. } => {
            // Discord's body gives the delay in fractions of a second; the header rounds up.
            let after = json
                .as_ref()
                .and_then(|j| j.get("retry_after"))
                .and_then(Value::as_f64)
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                .or(header_after);
            by_status(service, status, answer, after)
        }
        _ => by_status(service, status, answer, header_after),
    }
}

/// The judgement every service shares: 2xx delivered; 408, 429 and 5xx worth trying again
/// (after `after`, the service's own word, if any); a redirect or another 4xx refused.
pub(crate) fn by_status(
    service: &str,
    status: u16,
    answer: String,
    after: Option<Duration>,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered { status, answer },
        408 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            after,
            error: answered(service, status, &answer),
        },
        300..=399 => Outcome::Refused {
            status,
            error: format!(
                "{service} answered {status}, a redirect, which muster does not follow (it \
                 could carry a token to another server): set the URL it points to"
            ),
        },
        _ => Outcome::Refused {
            status,
            error: answered(service, status, &answer),
        },
    }
}

pub(super) fn answered(service: &str, status: u16, answer: &str) -> String {
    if answer.is_empty() {
        format!("{service} answered {status} with no body")
    } else {
        format!("{service} answered {status}: {answer}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use uuid::Uuid;

    const HA_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.long-lived-token";
    const BOT_TOKEN: &str = "123456789:AAHsecretBotToken_-x";
    const DISCORD_URL: &str = "https://discord.com/api/webhooks/1234/DiscordWebhookToken-abc";
    const HOOK_SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(name: &str) -> Option<String> {
        match name {
            "HA_TOKEN" => Some(HA_TOKEN.to_owned()),
            "NTFY_TOKEN" => Some("tk_ntfytoken123".to_owned()),
            "NTFY_URL" => Some("https://ntfy.example.com/secret_topic_name_42".to_owned()),
            "BOT_TOKEN" => Some(format!("{BOT_TOKEN}\n")),
            "DISCORD_URL" => Some(DISCORD_URL.to_owned()),
            "HOOK_SECRET" => Some(HOOK_SECRET.to_owned()),
            "EMPTY" => Some("  ".to_owned()),
            "SHORT" => Some("short".to_owned()),
            "SPACED_TOKEN" => Some("two words".to_owned()),
            _ => None,
        }
    }

    fn spec(toml_text: &str) -> ChannelSpec {
        toml::from_str(toml_text).expect("the spec parses")
    }

    fn resolve(toml_text: &str) -> Result<Channel, String> {
        Channel::resolve(spec(toml_text), &env)
    }

    fn error(toml_text: &str) -> String {
        resolve(toml_text).expect_err("the spec is refused")
    }

    const HA: &str = r#"
        name = "phone"
        kind = "home-assistant"
        url = "http://ha.local:8123"
        target = "mobile_app_pixel_7"
        token_env = "HA_TOKEN"
    "#;
    const NTFY: &str = r#"
        name = "ntfy"
        kind = "ntfy"
        url = "https://ntfy.sh/homelab"
        token_env = "NTFY_TOKEN"
        priority = "high"
        tags = ["warning", "muster"]
    "#;
    const TELEGRAM: &str = r#"
        name = "tg"
        kind = "telegram"
        token_env = "BOT_TOKEN"
        chat_id = -1001234567890
    "#;
    const DISCORD: &str = r#"
        name = "dc"
        kind = "discord"
        url_env = "DISCORD_URL"
        username = "muster"
    "#;
    const WEBHOOK: &str = r#"
        name = "hook"
        kind = "webhook"
        url = "https://example.com/hooks/muster"
        secret_env = "HOOK_SECRET"
    "#;

    fn message() -> Message {
        Message {
            id: Uuid::nil(),
            event: "task.failed".to_owned(),
            title: "Überwachung ⚠️ <build> & co_*x*".to_owned(),
            body: "exit_code=*1* <stderr> & more 🚀".to_owned(),
            link: Some("https://muster.example/tasks/42?a=1&b=2".to_owned()),
            at: Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap(),
            count: 1,
            subject: "task:42".to_owned(),
        }
    }

    fn body_json(wire: &WireRequest<'_>) -> Value {
        serde_json::from_slice(&wire.body).expect("the body is JSON")
    }

    #[test]
    fn each_kind_resolves_with_its_data_and_defaults() {
        let ha = resolve(HA).unwrap();
        assert_eq!(ha.name, "phone");
        assert_eq!(ha.timeout, Duration::from_secs(10));
        assert_eq!(ha.backoff, Duration::from_secs(5));
        assert_eq!(ha.give_up_after, Duration::from_secs(6 * 3600));
        assert_eq!(
            ha.kind,
            ChannelKind::HomeAssistant {
                url: Url::parse("http://ha.local:8123").unwrap(),
                target: "mobile_app_pixel_7".to_owned(),
                token: Secret::new(HA_TOKEN),
            }
        );
        match resolve(NTFY).unwrap().kind {
            ChannelKind::Ntfy {
                topic_url,
                token,
                priority,
                tags,
            } => {
                assert_eq!(topic_url.expose().as_str(), "https://ntfy.sh/homelab");
                assert_eq!(topic_url.env(), None);
                assert_eq!(token, Some(Secret::new("tk_ntfytoken123")));
                assert_eq!(priority, Some(4));
                assert_eq!(tags, ["warning", "muster"]);
            }
            other => panic!("{other:?}"),
        }
        // The trailing newline of a token read from a file is dropped.
        assert_eq!(
            resolve(TELEGRAM).unwrap().kind,
            ChannelKind::Telegram {
                api_url: Url::parse("https://api.telegram.org").unwrap(),
                token: Secret::new(BOT_TOKEN),
                chat_id: ChatId::Id(-1001234567890),
            }
        );
        match resolve(DISCORD).unwrap().kind {
            ChannelKind::Discord { webhook, username } => {
                assert_eq!(webhook.expose().as_str(), DISCORD_URL);
                assert_eq!(webhook.env(), Some("DISCORD_URL"));
                assert_eq!(username.as_deref(), Some("muster"));
            }
            other => panic!("{other:?}"),
        }
        match resolve(WEBHOOK).unwrap().kind {
            ChannelKind::Webhook { url, secret } => {
                assert_eq!(url.expose().as_str(), "https://example.com/hooks/muster");
                assert_eq!(secret.expose(), HOOK_SECRET);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_names_the_field_it_requires() {
        for (toml_text, expected) in [
            (
                r#"name = "a"
                   kind = "home-assistant"
                   target = "x"
                   token_env = "HA_TOKEN""#,
                "url is required on a home-assistant channel: Home Assistant's base URL such as \
                 http://ha.local:8123",
            ),
            (
                r#"name = "a"
                   kind = "home-assistant"
                   url = "http://ha.local:8123"
                   token_env = "HA_TOKEN""#,
                "target is required on a home-assistant channel: the notify service's name",
            ),
            (
                r#"name = "a"
                   kind = "home-assistant"
                   url = "http://ha.local:8123"
                   target = "x""#,
                "token_env is required on a home-assistant channel: the name of an environment \
                 variable holding a long-lived access token",
            ),
            (
                r#"name = "a"
                   kind = "ntfy""#,
                "url or url_env is required on a ntfy channel: an ntfy topic URL such as \
                 https://ntfy.sh/homelab",
            ),
            (
                r#"name = "a"
                   kind = "telegram"
                   chat_id = 1"#,
                "token_env is required on a telegram channel",
            ),
            (
                r#"name = "a"
                   kind = "telegram"
                   token_env = "BOT_TOKEN""#,
                "chat_id is required on a telegram channel: a chat's number such as \
                 -1001234567890 or a public channel's @username",
            ),
            (
                r#"name = "a"
                   kind = "discord""#,
                "url_env is required on a discord channel",
            ),
            (
                r#"name = "a"
                   kind = "webhook"
                   secret_env = "HOOK_SECRET""#,
                "url or url_env is required on a webhook channel",
            ),
            (
                r#"name = "a"
                   kind = "webhook"
                   url = "https://example.com/hook""#,
                "secret_env is required on a webhook channel",
            ),
        ] {
            let err = error(toml_text);
            assert!(err.starts_with(expected), "{err}\nexpected: {expected}");
        }
    }

    #[test]
    fn an_unset_or_empty_variable_is_named_with_what_it_should_hold() {
        let err = error(&HA.replace("HA_TOKEN", "MISSING_TOKEN"));
        assert_eq!(
            err,
            "MISSING_TOKEN (named by token_env) is unset or empty: set it to a Home Assistant \
             long-lived access token (your profile, Security, Long-lived access tokens)"
        );
        let err = error(&DISCORD.replace("DISCORD_URL", "EMPTY"));
        assert_eq!(
            err,
            "EMPTY (named by url_env) is unset or empty: set it to a Discord webhook URL such \
             as https://discord.com/api/webhooks/<id>/<token>"
        );
        let err = error(&WEBHOOK.replace("HOOK_SECRET", "SHORT"));
        assert!(
            err.starts_with(
                "SHORT (named by secret_env) is too short: expected a signing key of at least 16"
            ),
            "{err}"
        );
        let err = error(&TELEGRAM.replace("BOT_TOKEN", "not a name"));
        assert!(
            err.starts_with(
                "token_env \"not a name\" is invalid: expected the name of an environment variable"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_discord_url_in_the_file_is_refused_with_the_reason() {
        let err = error(&format!("{DISCORD}\nurl = \"{DISCORD_URL}\""));
        assert!(
            err.starts_with(
                "url is not accepted on a discord channel: the webhook URL holds its token"
            ),
            "{err}"
        );
        assert!(err.contains("set url_env"), "{err}");
        assert!(!err.contains("DiscordWebhookToken"), "{err}");
    }

    #[test]
    fn a_field_of_another_kind_is_refused_naming_the_kinds_that_take_it() {
        assert_eq!(
            error(&format!("{NTFY}\nchat_id = 5")),
            "chat_id does not apply to a ntfy channel (it is for telegram)"
        );
        assert_eq!(
            error(&format!("{WEBHOOK}\ntoken_env = \"HA_TOKEN\"")),
            "token_env does not apply to a webhook channel (it is for home-assistant, ntfy or \
             telegram)"
        );
        assert_eq!(
            error(&format!("{HA}\nurl_env = \"X\"")),
            "url_env does not apply to a home-assistant channel (it is for ntfy, discord or \
             webhook)"
        );
    }

    #[test]
    fn a_secret_written_in_the_file_is_an_unknown_field() {
        let err = toml::from_str::<ChannelSpec>(&format!("{TELEGRAM}\ntoken = \"{BOT_TOKEN}\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `token`"), "{err}");
        let err = toml::from_str::<ChannelSpec>(&format!("{WEBHOOK}\nsecret = \"abc\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `secret`"), "{err}");
    }

    #[test]
    fn durations_are_read_as_text_and_checked() {
        let channel = resolve(&format!(
            "{NTFY}\ntimeout = \"30s\"\nbackoff = \"1m\"\ngive_up_after = \"2h\""
        ))
        .unwrap();
        assert_eq!(channel.timeout, Duration::from_secs(30));
        assert_eq!(channel.backoff, Duration::from_secs(60));
        assert_eq!(channel.give_up_after, Duration::from_secs(7200));
        assert_eq!(
            error(&format!("{NTFY}\ntimeout = \"soon\"")),
            "timeout \"soon\" is invalid: expected a duration of more than zero such as 10s, 5m \
             or 6h"
        );
        assert!(
            error(&format!("{NTFY}\nbackoff = \"0s\"")).starts_with("backoff \"0s\" is invalid")
        );
        assert_eq!(
            error(&format!(
                "{NTFY}\nbackoff = \"10m\"\ngive_up_after = \"5m\""
            )),
            "give_up_after (5m) is shorter than backoff (10m): expected give_up_after to leave \
             room for at least one retry"
        );
        // A number is not a duration: the unit is part of it.
        assert!(toml::from_str::<ChannelSpec>(&format!("{NTFY}\ntimeout = 10")).is_err());
    }

    #[test]
    fn names_kinds_and_urls_are_checked() {
        assert!(error(&HA.replace("\"phone\"", "\"my phone\"")).starts_with(
            "name \"my phone\" is invalid: expected 1 to 64 letters, digits, _, . or -"
        ));
        assert!(resolve(&HA.replace("\"phone\"", &format!("\"{}\"", "a".repeat(64)))).is_ok());
        assert!(
            error(&HA.replace("\"phone\"", &format!("\"{}\"", "a".repeat(65))))
                .starts_with("name ")
        );
        assert_eq!(
            error(&HA.replace("home-assistant", "telegramm")),
            "kind \"telegramm\" is invalid: expected one of home-assistant, ntfy, telegram, \
             discord, webhook"
        );
        assert_eq!(
            error(&HA.replace("http://ha.local:8123", "ftp://ha.local")),
            "url \"ftp://ha.local\" is invalid: expected Home Assistant's base URL such as \
             http://ha.local:8123 (the scheme must be http or https)"
        );
        assert!(
            error(&HA.replace("mobile_app_pixel_7", "notify.mobile_app"))
                .ends_with("(without the notify. prefix)")
        );
        assert!(
            error(&NTFY.replace("https://ntfy.sh/homelab", "https://ntfy.sh/"))
                .contains("(the last part of the path is the topic")
        );
        assert!(
            error(&NTFY.replace("https://ntfy.sh/homelab", "https://ntfy.sh/a?b=c"))
                .contains("(without a query (?…))")
        );
        assert!(
            error(&WEBHOOK.replace("https://", "https://user:pw@"))
                .contains("without a user or password")
        );
        assert!(
            error(&format!("{WEBHOOK}\nurl_env = \"NTFY_URL\""))
                .starts_with("url and url_env are both set on a webhook channel")
        );
    }

    #[test]
    fn a_bad_url_from_the_environment_is_not_shown() {
        let lookup =
            |name: &str| (name == "HOOK_URL").then(|| "gopher://secret-host/path-token".to_owned());
        let spec = spec(
            r#"name = "h"
               kind = "webhook"
               url_env = "HOOK_URL"
               secret_env = "HOOK_URL""#,
        );
        let err = Channel::resolve(spec, &lookup).unwrap_err();
        assert_eq!(
            err,
            "HOOK_URL (named by url_env) is invalid: expected the receiver's URL such as \
             https://example.com/hooks/muster (the scheme must be http or https); its value is \
             not shown"
        );
    }

    #[test]
    fn telegram_tokens_chat_ids_and_ntfy_priorities_take_their_forms() {
        let lookup = |name: &str| (name == "T").then(|| "123:abc/../x".to_owned());
        let bad_token = spec(&TELEGRAM.replace("BOT_TOKEN", "T"));
        let err = Channel::resolve(bad_token, &lookup).unwrap_err();
        assert!(
            err.starts_with("T (named by token_env) is invalid: expected a bot token"),
            "{err}"
        );
        assert!(!err.contains("abc"), "{err}");

        let chat = |value: &str| -> Result<ChatId, String> {
            let text = TELEGRAM.replace("-1001234567890", value);
            resolve(&text).map(|c| match c.kind {
                ChannelKind::Telegram { chat_id, .. } => chat_id,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(chat("\"-42\""), Ok(ChatId::Id(-42)));
        assert_eq!(chat("12345"), Ok(ChatId::Id(12345)));
        assert_eq!(
            chat("\"@news_feed\""),
            Ok(ChatId::Username("@news_feed".to_owned()))
        );
        assert!(
            chat("\"news\"")
                .unwrap_err()
                .starts_with("chat_id \"news\" is invalid")
        );
        assert!(chat("0").unwrap_err().starts_with("chat_id 0 is invalid"));

        let priority = |value: &str| -> Result<Option<u8>, String> {
            resolve(&NTFY.replace("\"high\"", value)).map(|c| match c.kind {
                ChannelKind::Ntfy { priority, .. } => priority,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(priority("1"), Ok(Some(1)));
        assert_eq!(priority("\"min\""), Ok(Some(1)));
        assert_eq!(priority("\"urgent\""), Ok(Some(5)));
        assert_eq!(priority("\"3\""), Ok(Some(3)));
        assert_eq!(
            priority("6"),
            Err(
                "priority 6 is invalid: expected 1 to 5 or min, low, default, high, max (urgent)"
                    .to_owned()
            )
        );
        assert!(
            priority("\"loud\"")
                .unwrap_err()
                .starts_with("priority \"loud\" is invalid")
        );
    }

    #[test]
    fn discord_api_url_replaces_only_the_server() {
        let channel = resolve(&format!("{DISCORD}\napi_url = \"http://127.0.0.1:9000\"")).unwrap();
        let ChannelKind::Discord { webhook, .. } = &channel.kind else {
            panic!("{channel:?}");
        };
        assert_eq!(
            webhook.expose().as_str(),
            "http://127.0.0.1:9000/api/webhooks/1234/DiscordWebhookToken-abc"
        );
        assert!(
            error(&format!("{DISCORD}\napi_url = \"http://127.0.0.1:9000/x\""))
                .contains("only the scheme, host and port are used")
        );
        assert!(
            error(&DISCORD.replace("\"muster\"", "\"Discord bot\""))
                .starts_with("username \"Discord bot\" is invalid")
        );
    }

    #[test]
    fn describe_and_debug_show_no_secret() {
        let describe = |text: &str| resolve(text).unwrap().describe();
        assert_eq!(
            describe(HA),
            "home-assistant notify.mobile_app_pixel_7 at http://ha.local:8123/"
        );
        assert_eq!(describe(NTFY), "ntfy https://ntfy.sh/homelab");
        assert_eq!(
            describe(&NTFY.replace(
                "url = \"https://ntfy.sh/homelab\"",
                "url_env = \"NTFY_URL\""
            )),
            "ntfy (URL from NTFY_URL)"
        );
        assert_eq!(describe(TELEGRAM), "telegram chat -1001234567890");
        assert_eq!(describe(DISCORD), "discord webhook (URL from DISCORD_URL)");
        assert_eq!(
            describe(WEBHOOK),
            "webhook https://example.com/hooks/muster"
        );
        for (text, kind) in [
            (HA, "home-assistant"),
            (NTFY, "ntfy"),
            (TELEGRAM, "telegram"),
            (DISCORD, "discord"),
            (WEBHOOK, "webhook"),
        ] {
            let channel = resolve(text).unwrap();
            assert_eq!(channel.kind_name(), kind);
            let debug = format!("{channel:?}");
            for secret in [
                HA_TOKEN,
                "tk_ntfytoken123",
                BOT_TOKEN,
                "DiscordWebhookToken",
                HOOK_SECRET,
            ] {
                assert!(!debug.contains(secret), "{debug}");
                assert!(!channel.describe().contains(secret));
            }
        }
    }

    use super::telegram::visible as telegram_visible;

    #[test]
    fn telegram_text_escapes_html_and_keeps_the_rest_verbatim() {
        let text = telegram_text(&message());
        assert_eq!(
            text,
            "<b>Überwachung ⚠️ &lt;build&gt; &amp; co_*x*</b>\n\nexit_code=*1* &lt;stderr&gt; \
             &amp; more 🚀\n\n<a href=\"https://muster.example/tasks/42?a=1&amp;b=2\">Open in \
             muster</a>"
        );
        let bare = Message {
            link: None,
            body: String::new(),
            ..message()
        };
        assert_eq!(
            telegram_text(&bare),
            "<b>Überwachung ⚠️ &lt;build&gt; &amp; co_*x*</b>"
        );
    }

    #[test]
    fn telegram_text_is_cut_to_4096_utf16_units_between_characters_and_entities() {
        let title = "T";
        let fixed = 1 + 2 + 2 + TELEGRAM_LINK_TEXT.len(); // title, two blank lines, link text
        // Shifting where the limit falls across an emoji (two UTF-16 units) and an entity.
        for pad in 0..6 {
            let body = format!(
                "{}{}",
                "a".repeat(TELEGRAM_TEXT_LIMIT - fixed - 6 + pad),
                "🚀&<🚀".repeat(10)
            );
            let message = Message {
                title: title.to_owned(),
                body,
                ..message()
            };
            let text = telegram_text(&message);
            let visible = telegram_visible(&text);
            let units = visible.encode_utf16().count();
            assert!(units <= TELEGRAM_TEXT_LIMIT, "pad {pad}: {units} units");
            assert!(
                units >= TELEGRAM_TEXT_LIMIT - 2,
                "pad {pad}: cut too early, {units}"
            );
            assert!(visible.contains("…\n\nOpen in muster"), "pad {pad}");
            // Every `&` in the HTML starts a whole entity.
            for (i, _) in text.match_indices('&') {
                let rest = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| rest.starts_with(e)),
                    "pad {pad}: a cut entity at {i}"
                );
            }
        }
        // A text that fits is not cut.
        let exact = Message {
            title: title.to_owned(),
            body: "🚀".repeat((TELEGRAM_TEXT_LIMIT - fixed) / 2),
            ..message()
        };
        let visible = telegram_visible(&telegram_text(&exact));
        assert!(!visible.contains('…'));
        assert_eq!(
            visible.encode_utf16().count(),
            TELEGRAM_TEXT_LIMIT - (TELEGRAM_TEXT_LIMIT - fixed) % 2
        );
    }

    #[test]
    fn discord_markdown_is_escaped_so_text_shows_verbatim() {
        let pieces = |text: &str| capped(discord_pieces(text), usize::MAX);
        assert_eq!(
            pieces("a*b_c~d`e|f>g#h\\i [x](y) <@123>"),
            r"a\*b\_c\~d\`e\|f\>g\#h\\i \[x\](y) \<@123\>"
        );
        assert_eq!(
            pieces("- item\n  + more\n12. numbered\na - b 1. c"),
            "\\- item\n  \\+ more\n12\\. numbered\na - b 1. c"
        );
        assert_eq!(pieces("Überwachung ⚠️ 🚀"), "Überwachung ⚠️ 🚀");
        // The cap counts the escapes and never splits one.
        assert_eq!(capped(discord_pieces("ab*cd"), 4), "ab…");
        assert_eq!(capped(discord_pieces("ab*cd"), 5), "ab\\*…");
    }

    #[test]
    fn discord_payload_has_every_part_within_its_limit() {
        let payload = discord_payload(&message(), Some("muster"));
        assert_eq!(
            payload,
            json!({
                "content": r"Überwachung ⚠️ \<build\> & co\_\*x\*",
                "embeds": [{
                    "title": r"Überwachung ⚠️ \<build\> & co\_\*x\*",
                    "description": r"exit\_code=\*1\* \<stderr\> & more 🚀",
                    "url": "https://muster.example/tasks/42?a=1&b=2",
                    "timestamp": "2026-11-22T10:00:00Z",
                }],
                "allowed_mentions": { "parse": [] },
                "username": "muster",
            })
        );
        let long = Message {
            title: "*".repeat(3000),
            body: "x".repeat(5000),
            ..message()
        };
        let payload = discord_payload(&long, None);
        let count = |v: &Value| v.as_str().unwrap().encode_utf16().count();
        assert_eq!(count(&payload["content"]), 1999); // 999 escaped pairs and `…`
        assert!(count(&payload["embeds"][0]["title"]) <= DISCORD_TITLE_LIMIT);
        assert_eq!(
            count(&payload["embeds"][0]["description"]),
            DISCORD_DESCRIPTION_LIMIT
        );
        assert!(payload.get("username").is_none());
    }

    #[test]
    fn requests_go_to_each_services_path() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 5).unwrap();
        let channel = resolve(&HA.replace("8123", "8123/ha/")).unwrap();
        let wire = wire_request(&channel, &message(), now);
        assert_eq!(
            wire.url.as_str(),
            "http://ha.local:8123/ha/api/services/notify/mobile_app_pixel_7"
        );

        let channel =
            resolve(&NTFY.replace("ntfy.sh/homelab", "example.com/ntfy/homelab/")).unwrap();
        let wire = wire_request(&channel, &message(), now);
        assert_eq!(wire.url.as_str(), "https://example.com/ntfy/");
        assert_eq!(body_json(&wire)["topic"], "homelab");

        let channel = resolve(TELEGRAM).unwrap();
        let wire = wire_request(&channel, &message(), now);
        assert_eq!(
            wire.url.as_str(),
            format!("https://api.telegram.org/bot{BOT_TOKEN}/sendMessage")
        );

        let lookup = |name: &str| {
            (name == "DISCORD_URL").then(|| format!("{DISCORD_URL}?thread_id=77&wait=false"))
        };
        let channel = Channel::resolve(spec(DISCORD), &lookup).unwrap();
        let wire = wire_request(&channel, &message(), now);
        assert_eq!(
            wire.url.as_str(),
            format!("{DISCORD_URL}?thread_id=77&wait=true")
        );
    }

    #[test]
    fn webhook_requests_are_signed_over_timestamp_and_body() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 5).unwrap();
        let channel = resolve(WEBHOOK).unwrap();
        let wire = wire_request(&channel, &message(), now);
        let header = |name: &str| {
            wire.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("X-Muster-Timestamp"), now.timestamp().to_string());
        assert_eq!(header("X-Muster-Delivery"), Uuid::nil().to_string());
        assert_eq!(header("X-Muster-Event"), "task.failed");
        let mut signed = format!("{}.", now.timestamp()).into_bytes();
        signed.extend_from_slice(&wire.body);
        let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
        mac.update(&signed);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header("X-Muster-Signature"), format!("sha256={expected}"));
        assert_eq!(
            body_json(&wire),
            json!({
                "id": Uuid::nil(),
                "event": "task.failed",
                "title": "Überwachung ⚠️ <build> & co_*x*",
                "message": "exit_code=*1* <stderr> & more 🚀",
                "link": "https://muster.example/tasks/42?a=1&b=2",
                "subject": "task:42",
                "count": 1,
                "at": "2026-11-22T10:00:00Z",
            })
        );
    }

    #[test]
    fn signature_matches_a_vector_computed_elsewhere() {
        // Computed with Python's hmac module and with `openssl dgst -sha256 -hmac`.
        assert_eq!(
            signature(
                b"muster-test-secret-0123456789",
                1_700_000_000,
                br#"{"event":"task.failed"}"#
            ),
            "sha256=d3d3b087c0d31e47dd8d55734753ed791438aafa9335b0e490053bdaee401f65"
        );
    }

    #[test]
    fn answers_are_judged_by_status_and_by_the_services_own_word() {
        let now = Utc::now();
        let telegram = resolve(TELEGRAM).unwrap();
        let discord = resolve(DISCORD).unwrap();
        let ntfy = resolve(NTFY).unwrap();

        assert_eq!(
            judge(&ntfy, 200, None, br#"{"id":"x"}"#, now),
            Outcome::Delivered {
                status: 200,
                answer: r#"{"id":"x"}"#.to_owned()
            }
        );
        assert_eq!(
            judge(&ntfy, 503, Some("30"), b"", now),
            Outcome::Retry {
                status: Some(503),
                after: Some(Duration::from_secs(30)),
                error: "ntfy answered 503 with no body".to_owned()
            }
        );
        assert!(matches!(
            judge(&ntfy, 408, None, b"", now),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            judge(&ntfy, 404, None, b"", now),
            Outcome::Refused { status: 404, .. }
        ));
        let Outcome::Refused { error, .. } = judge(&ntfy, 302, None, b"", now) else {
            panic!();
        };
        assert!(
            error.contains("a redirect, which muster does not follow"),
            "{error}"
        );

        assert_eq!(
            judge(
                &telegram,
                200,
                None,
                br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
                now
            ),
            Outcome::Refused {
                status: 400,
                error: "Telegram answered 400: Bad Request: chat not found".to_owned()
            }
        );
        assert_eq!(
            judge(
                &telegram,
                429,
                Some("9"),
                br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#,
                now
            )
            ,
            Outcome::Retry {
                status: Some(429),
                after: Some(Duration::from_secs(3)),
                error: "Telegram answered 429: Too Many Requests: retry after 3".to_owned()
            }
        );
        assert!(matches!(
            judge(&telegram, 200, None, br#"{"ok":true,"result":{}}"#, now),
            Outcome::Delivered { status: 200, .. }
        ));

        assert!(matches!(
            judge(&discord, 429, Some("2"), br#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#, now),
            Outcome::Retry { status: Some(429), after: Some(d), .. } if d == Duration::from_millis(1500)
        ));
    }

    #[test]
    fn answers_are_kept_short_and_without_secrets() {
        let telegram = resolve(TELEGRAM).unwrap();
        let echo =
            format!(r#"{{"ok":false,"error_code":404,"description":"no bot {BOT_TOKEN} here"}}"#);
        let Outcome::Refused { error, .. } =
            judge(&telegram, 404, None, echo.as_bytes(), Utc::now())
        else {
            panic!();
        };
        assert_eq!(error, "Telegram answered 404: no bot [redacted] here");

        // The secret is blanked before the answer is cut, so no part of it is left at the cut.
        let discord = resolve(DISCORD).unwrap();
        let long = format!("{}{DISCORD_URL}{}", "é".repeat(480), "z".repeat(100));
        let Outcome::Refused { error, .. } =
            judge(&discord, 400, None, long.as_bytes(), Utc::now())
        else {
            panic!();
        };
        let answer = error.trim_start_matches("Discord answered 400: ");
        assert_eq!(
            answer,
            format!("{}[redacted]{}…", "é".repeat(480), "z".repeat(9))
        );
        assert!(answer.ends_with('…'));
    }
}
