//! `[chat.telegram]` as written and checked: the bot's token (from the variable `token_env`
//! names), the chats allowed to send commands, and the Bot API server. One table per
//! service rather than a list of chat channels: a bot token has one reader of its updates
//! at a time, so two entries for one service could only fight. Pure.

use serde::Deserialize;
use url::Url;

use crate::notify::telegram;
use crate::secret::Secret;

/// `[chat.telegram]` as written. Nothing is checked here: [`TelegramChat::resolve`] checks it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramSpec {
    /// The variable holding the bot's token; a token written in the file is refused as an
    /// unknown field.
    pub token_env: Option<String>,
    /// The chats whose commands are taken: a person's chat with the bot (their user id) or a
    /// group's (negative). Anyone else is ignored.
    pub chats: Option<Vec<i64>>,
    /// The Bot API server, `https://api.telegram.org` unless set (tests, a local Bot API
    /// server).
    pub api_url: Option<String>,
}

/// The chat commands as configured: `[chat.telegram]`, or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatConfig {
    pub telegram: Option<TelegramChat>,
}

/// `[chat.telegram]`, checked, with the token read. `{:?}` shows no token.
#[derive(Debug, Clone, PartialEq)]
pub struct TelegramChat {
    pub api_url: Url,
    pub token: Secret,
    /// Never empty.
    pub chats: Vec<i64>,
}

impl TelegramChat {
    /// Checks `spec` and reads the token through `env`. The error is one sentence naming the
    /// field and the form expected; the caller prefixes the file, line and table.
    pub fn resolve(
        spec: &TelegramSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TelegramChat, String> {
        let var = spec.token_env.as_deref().ok_or(
            "token_env is required: the name of an environment variable holding the bot's \
             token from @BotFather, such as token_env = \"TELEGRAM_BOT_TOKEN\"",
        )?;
        let token = telegram::bot_token(var, env)?;
        let chats = spec.chats.clone().ok_or(
            "chats is required: the ids of the chats whose commands are taken, such as \
             chats = [123456789] (see the README's Chat section for finding them)",
        )?;
        if chats.is_empty() {
            return Err(
                "chats is empty: expected at least one chat id whose commands are taken, such \
                 as chats = [123456789]; without one every message would be ignored"
                    .to_owned(),
            );
        }
        if chats.contains(&0) {
            return Err(
                "chats holds 0, which is no chat: expected ids such as 123456789 (a person) \
                 or -1001234567890 (a group)"
                    .to_owned(),
            );
        }
        Ok(TelegramChat {
            api_url: telegram::api_url(spec.api_url.as_deref())?,
            token,
            chats,
        })
    }

    /// Checks everything but the token's variable, which may be set only where the server
    /// runs (`muster config check`).
    pub fn check(spec: &TelegramSpec) -> Result<(), String> {
        let stand_in = |_: &str| Some(telegram::STAND_IN_TOKEN.to_owned());
        Self::resolve(spec, &stand_in).map(drop)
    }

    pub fn allows(&self, chat_id: i64) -> bool {
        self.chats.contains(&chat_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456789:AAHsecretBotToken_-x";

    fn resolve(text: &str) -> Result<TelegramChat, String> {
        let spec: TelegramSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        TelegramChat::resolve(&spec, &|name| (name == "BOT").then(|| TOKEN.to_owned()))
    }

    #[test]
    fn a_table_with_a_token_and_chats_resolves() {
        let chat = resolve("token_env = \"BOT\"\nchats = [123, -100456]\n").unwrap();
        assert_eq!(chat.chats, [123, -100456]);
        assert_eq!(chat.api_url.as_str(), "https://api.telegram.org/");
        assert!(chat.allows(-100456) && !chat.allows(7));
        assert!(
            !format!("{chat:?}").contains(TOKEN),
            "the token never prints"
        );
        let chat =
            resolve("token_env = \"BOT\"\nchats = [1]\napi_url = \"http://127.0.0.1:9\"").unwrap();
        assert_eq!(chat.api_url.as_str(), "http://127.0.0.1:9/");
    }

    #[test]
    fn each_mistake_is_named() {
        for (text, starts) in [
            ("token_env = \"BOT\"\nchats = []", "chats is empty"),
            ("token_env = \"BOT\"", "chats is required"),
            ("chats = [1]", "token_env is required"),
            ("token_env = \"BOT\"\nchats = [0]", "chats holds 0"),
            (
                "token_env = \"UNSET\"\nchats = [1]",
                "UNSET (named by token_env) is unset",
            ),
            (
                "token_env = \"BOT\"\nchats = [1]\napi_url = \"telegram\"",
                "api_url \"telegram\" is invalid",
            ),
        ] {
            let err = resolve(text).unwrap_err();
            assert!(err.starts_with(starts), "{text}: {err}");
            assert!(!err.contains(TOKEN));
        }
        let err = resolve("token = \"123:abc\"\nchats = [1]").unwrap_err();
        assert!(err.contains("unknown field `token`"), "{err}");
    }
}
