//! Where a chat goes and how: the wire format ([`Api`]) and one configured endpoint
//! ([`Provider`]), whose key never prints.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

/// A wire format, named as in configuration: `ollama`, `openai` or `anthropic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Ollama's native `POST /api/chat`.
    Ollama,
    /// The OpenAI chat completions format, as OpenAI and the many servers that copy it speak it.
    OpenAi,
    /// Anthropic's `POST /v1/messages`.
    Anthropic,
}

impl Api {
    pub const ALL: [Api; 3] = [Api::Ollama, Api::OpenAi, Api::Anthropic];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Ollama => "ollama",
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        }
    }

    /// The path segments the format adds to a provider's URL.
    fn path(self) -> &'static [&'static str] {
        match self {
            Api::Ollama => &["api", "chat"],
            Api::OpenAi => &["chat", "completions"],
            Api::Anthropic => &["v1", "messages"],
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Api {
    type Err = String;

    fn from_str(text: &str) -> Result<Api, String> {
        Api::ALL
            .into_iter()
            .find(|api| api.as_str() == text)
            .ok_or_else(|| format!("api {text:?} is invalid: expected ollama, openai or anthropic"))
    }
}

/// One configured endpoint: a format, where it is served, the model asked for, and how hard
/// to try.
#[derive(Clone, PartialEq)]
pub struct Provider {
    /// The name errors and logs call it by (`groq`, `local-ollama`).
    pub name: String,
    pub api: Api,
    /// Ollama: `http://host:11434`; OpenAI-compatible: the base before `/chat/completions`
    /// (`https://api.groq.com/openai/v1`); Anthropic: `https://api.anthropic.com`. The
    /// format's path is appended to it; a query it carries is kept.
    pub url: String,
    pub model: String,
    /// Sent only as the format's auth header (`Authorization: Bearer` for Ollama and OpenAI,
    /// `x-api-key` for Anthropic); never logged, never in an error, and `{:?}` hides it.
    pub key: Option<String>,
    /// The limit on one attempt, from connecting to the end of the answer (for a stream, its
    /// last event): set it to the longest answer worth waiting for.
    pub timeout: Duration,
    /// How many times a 429, a 5xx or a failed connection is tried again, after the
    /// provider's `Retry-After` (seconds or an HTTP date) or else a capped, growing backoff.
    pub max_retries: u32,
}

impl Provider {
    /// The limit on one attempt [`Provider::new`] sets: long enough for a local model to load
    /// and answer at length.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
    /// The number of retries [`Provider::new`] sets.
    pub const DEFAULT_MAX_RETRIES: u32 = 2;

    /// A provider without a key, with [`Provider::DEFAULT_TIMEOUT`] and
    /// [`Provider::DEFAULT_MAX_RETRIES`].
    pub fn new(
        name: impl Into<String>,
        api: Api,
        url: impl Into<String>,
        model: impl Into<String>,
    ) -> Provider {
        Provider {
            name: name.into(),
            api,
            url: url.into(),
            model: model.into(),
            key: None,
            timeout: Provider::DEFAULT_TIMEOUT,
            max_retries: Provider::DEFAULT_MAX_RETRIES,
        }
    }

    /// The URL requests go to: `url` with the format's path appended.
    pub fn endpoint_url(&self) -> Result<Url, String> {
        let mut url = Url::parse(&self.url).map_err(|err| format!("url is invalid: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "url has scheme {:?}: expected http or https",
                url.scheme()
            ));
        }
        url.path_segments_mut()
            .map_err(|()| "url cannot take a path".to_owned())?
            .pop_if_empty()
            .extend(self.api.path());
        Ok(url)
    }

    /// How errors name this provider: its name, format and endpoint path, e.g.
    /// `groq (openai, POST /openai/v1/chat/completions)`. Never the host's credentials or a
    /// query, which could hold a secret.
    pub fn describe(&self) -> String {
        let path = match self.endpoint_url() {
            Ok(url) => url.path().to_owned(),
            Err(_) => format!("/{}", self.api.path().join("/")),
        };
        format!("{} ({}, POST {path})", self.name, self.api)
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("api", &self.api)
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_round_trip() {
        for api in Api::ALL {
            assert_eq!(api.to_string().parse::<Api>(), Ok(api));
        }
        assert_eq!(
            "OpenAI".parse::<Api>(),
            Err("api \"OpenAI\" is invalid: expected ollama, openai or anthropic".to_owned())
        );
    }

    #[test]
    fn the_formats_path_is_appended_to_the_url_keeping_its_own() {
        let url = |api, base: &str| {
            Provider::new("p", api, base, "m")
                .endpoint_url()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url(Api::Ollama, "http://gpu:11434"),
            "http://gpu:11434/api/chat"
        );
        assert_eq!(
            url(Api::OpenAi, "https://api.groq.com/openai/v1/"),
            "https://api.groq.com/openai/v1/chat/completions"
        );
        assert_eq!(
            url(Api::OpenAi, "https://example.com/v1?api-version=2024"),
            "https://example.com/v1/chat/completions?api-version=2024"
        );
        assert_eq!(
            url(Api::Anthropic, "https://api.anthropic.com"),
            "https://api.anthropic.com/v1/messages"
        );
        let bad = |base: &str| {
            Provider::new("p", Api::Ollama, base, "m")
                .endpoint_url()
                .unwrap_err()
        };
        assert!(
            bad("gpu:11434").contains("scheme \"gpu\""),
            "{}",
            bad("gpu:11434")
        );
        assert!(bad("not a url").starts_with("url is invalid"));
    }

    #[test]
    fn describe_names_the_path_and_debug_hides_the_key() {
        let mut provider = Provider::new(
            "groq",
            Api::OpenAi,
            "https://user:pass@api.groq.com/openai/v1?token=abc",
            "llama",
        );
        provider.key = Some("gsk_secret_key_123456".to_owned());
        assert_eq!(
            provider.describe(),
            "groq (openai, POST /openai/v1/chat/completions)"
        );
        let debug = format!("{provider:?}");
        assert!(!debug.contains("gsk_secret_key_123456"), "{debug}");
        assert!(debug.contains("key: Some(\"[redacted]\")"), "{debug}");
    }
}
