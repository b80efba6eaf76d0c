//! The Telegram Bot API as muster speaks it, for the notification channel and for the chat
//! commands alike: the bot token (read from the variable a config names, checked, never
//! shown), the Bot API server's URL, a method's URL, text in Telegram's HTML mode within its
//! 4096-unit limit, `sendMessage`, and what an answer of any method comes to.
//!
//! The token sits in every request's path, so no error text here is reqwest's own (which
//! names the URL) and every text a service answers with is scrubbed of it.

use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use super::Outcome;
use super::channels::{UrlSource, answered, describe_transport_error, http_url, no_query};
use super::channels::{read_answer, redact, start_of};
use super::text::Piece;
use crate::secret::{Secret, read_variable};

/// Telegram's limit on a message's text, counted in UTF-16 code units after the HTML
/// entities are parsed (so `&lt;` counts one and tags count nothing).
pub const TEXT_LIMIT: usize = 4096;

/// Where the Bot API is unless a config says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// How much of an answer is read: enough for a page of updates, bounded so a broken or
/// hostile server cannot make muster buffer without limit.
pub const ANSWER_READ_LIMIT: usize = 4 * 1024 * 1024;

/// Text for Telegram's HTML mode: `&`, `<` and `>` as entities. Telegram counts the text
/// after the entities are parsed, so each piece costs its character's UTF-16 length.
pub fn pieces(text: &str) -> Vec<Piece> {
    text.chars()
        .map(|c| {
            let escaped = match c {
                '&' => "&amp;".to_owned(),
                '<' => "&lt;".to_owned(),
                '>' => "&gt;".to_owned(),
                c => c.to_string(),
            };
            Piece::new(escaped, c.len_utf16())
        })
        .collect()
}

/// `text` escaped for Telegram's HTML mode, whole.
pub fn escape(text: &str) -> String {
    pieces(text).into_iter().map(|p| p.text).collect()
}

/// What `text` counts towards [`TEXT_LIMIT`] once Telegram has read its entities.
pub fn cost(text: &str) -> usize {
    text.encode_utf16().count()
}

/// What a Telegram client shows of a text in HTML mode: tags dropped, entities read. How a
/// check sees what muster sent, and what the limit counts.
pub fn visible(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// `text` escaped for an attribute's value in double quotes (a link's `href`).
pub fn escape_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bot token as @BotFather gives it: the bot's number, `:`, then letters, digits, `_`
/// and `-`. Checked because it goes into the request path.
pub fn is_bot_token(token: &str) -> bool {
    token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// The bot token from the variable `var` that the field `token_env` names, checked. The
/// error names the variable and never shows its value.
pub fn bot_token(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
    let token = read_variable("token_env", var, "the bot's token from @BotFather", env)?;
    if !is_bot_token(&token) {
        return Err(format!(
            "{var} (named by token_env) is invalid: expected a bot token of the form \
             123456789:AAH… as @BotFather gives it; its value is not shown"
        ));
    }
    Ok(Secret::new(token))
}

/// A token that passes [`bot_token`], for checking a file where the variable is not set.
pub const STAND_IN_TOKEN: &str = "123456789:stand-in";

/// The Bot API server from the field `api_url`, or Telegram's own when it is not set.
pub fn api_url(text: Option<&str>) -> Result<Url, String> {
    const FORM: &str = "the Bot API server's URL such as https://api.telegram.org";
    match text {
        None => Ok(Url::parse(DEFAULT_API_URL).expect("a fixed URL parses")),
        Some(text) => {
            let source = UrlSource {
                field: "api_url",
                var: None,
                text,
            };
            http_url(&source, FORM, &no_query)
        }
    }
}

/// `{api_url}/bot{token}/{method}`, under the server's own path if it has one.
pub fn method_url(api_url: &Url, token: &Secret, method: &str) -> Url {
    let mut url = api_url.clone();
    // api_url() only accepts http(s) URLs, which always have a path to extend.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty()
            .push(&format!("bot{}", token.expose()))
            .push(method);
    }
    url
}

/// The body of a `sendMessage` of `text` (already in HTML mode) to `chat_id` (a number, or a
/// public channel's `@username`), without a link preview.
pub fn send_message_body(chat_id: Value, text: &str) -> Value {
    json!({
        "chat_id": chat_id,
        "text": text,
        "parse_mode": "HTML",
        "link_preview_options": { "is_disabled": true },
    })
}

/// Telegram answers `{"ok":true,…}`, or `{"ok":false,"error_code":N,"description":…,
/// "parameters":{"retry_after":S}}`, possibly with a 200: `ok` decides, and `error_code`
/// (which mirrors the HTTP status) is the status reported. `answer` is the start of the body,
/// already scrubbed of `secrets`, which the description is scrubbed of too.
pub fn judge(
    status: u16,
    json: Option<&Value>,
    answer: String,
    header_after: Option<Duration>,
    secrets: &[&str],
) -> Outcome {
    let ok = json.and_then(|j| j.get("ok")).and_then(Value::as_bool);
    let success = (200..=299).contains(&status);
    if success && ok != Some(false) {
        return Outcome::Delivered { status, answer };
    }
    let code = json
        .and_then(|j| j.get("error_code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c))
        .unwrap_or(status);
    let after = json
        .and_then(|j| j.pointer("/parameters/retry_after"))
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .or(header_after);
    let detail = json
        .and_then(|j| j.get("description"))
        .and_then(Value::as_str)
        .map(|d| start_of(&redact(d, secrets)))
        .unwrap_or(answer);
    let error = answered("Telegram", code, &detail);
    match code {
        408 | 429 | 500..=599 => Outcome::Retry {
            status: Some(code),
            after,
            error,
        },
        // ok:false with a 2xx and no error code: not delivered, and nothing says retrying helps.
        _ => Outcome::Refused {
            status: code,
            error,
        },
    }
}

/// What one call of a Bot API method came to: the outcome, and the parsed body of a
/// successful answer (`None` when it was not JSON, or was cut at the read limit).
#[derive(Debug)]
pub struct Called {
    pub outcome: Outcome,
    pub body: Option<Value>,
}

/// Calls `method` with `body` as JSON, within `timeout`, and judges the answer. No text in
/// the outcome holds the token.
pub async fn call(
    client: &reqwest::Client,
    api_url: &Url,
    token: &Secret,
    method: &str,
    body: &Value,
    timeout: Duration,
) -> Called {
    let secrets = [token.expose()];
    let response = client
        .post(method_url(api_url, token, method))
        .timeout(timeout)
        .json(body)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            let error = describe_transport_error(err, "Telegram", timeout);
            return Called {
                outcome: Outcome::Retry {
                    status: None,
                    after: None,
                    error: redact(&error, &secrets),
                },
                body: None,
            };
        }
    };
    let read = read_answer(response, ANSWER_READ_LIMIT).await;
    let text = String::from_utf8_lossy(&read.body);
    let json: Option<Value> = if read.whole {
        serde_json::from_str(&text).ok()
    } else {
        None
    };
    let header_after = read
        .retry_after
        .as_deref()
        .and_then(|v| muster_llm::retry_after(v, chrono::Utc::now()));
    let answer = start_of(&redact(text.trim(), &secrets));
    Called {
        outcome: judge(read.status, json.as_ref(), answer, header_after, &secrets),
        body: json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_emoji_and_other_scripts_alone() {
        assert_eq!(
            escape("a<b> & c 🚀 Überwachung ⚠️"),
            "a&lt;b&gt; &amp; c 🚀 Überwachung ⚠️"
        );
        let costs: Vec<usize> = pieces("&🚀é").iter().map(|p| p.cost).collect();
        assert_eq!(
            costs,
            [1, 2, 1],
            "entities count one, emoji two UTF-16 units"
        );
        assert_eq!(cost("🚀é"), 3);
    }

    #[test]
    fn a_method_url_keeps_the_servers_path() {
        let token = Secret::new("123:abc");
        let url = api_url(Some("http://127.0.0.1:9/tg/")).unwrap();
        assert_eq!(
            method_url(&url, &token, "getUpdates").as_str(),
            "http://127.0.0.1:9/tg/bot123:abc/getUpdates"
        );
        assert_eq!(
            method_url(&api_url(None).unwrap(), &token, "sendMessage").as_str(),
            "https://api.telegram.org/bot123:abc/sendMessage"
        );
        assert!(api_url(Some("ftp://x")).is_err());
    }

    #[test]
    fn a_bad_token_is_refused_without_showing_it() {
        let env = |name: &str| (name == "BOT").then(|| "not a token".to_owned());
        let err = bot_token("BOT", &env).unwrap_err();
        assert!(err.contains("its value is not shown"), "{err}");
        assert!(!err.contains("not a token"), "{err}");
        assert!(bot_token("UNSET", &env).unwrap_err().contains("UNSET"));
        let env = |_: &str| Some(STAND_IN_TOKEN.to_owned());
        assert_eq!(bot_token("BOT", &env).unwrap().expose(), STAND_IN_TOKEN);
    }
}
