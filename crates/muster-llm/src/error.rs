//! [`LlmError`]: how a chat failed, each variant saying what a caller can do about it. Every
//! message names the provider, its format and the endpoint path (`endpoint`, or the start of
//! the text); none holds the key, and a provider's answer is kept only in part, with the key
//! blanked out should the provider echo it.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// No answer: the connection failed (after the retries), or the URL cannot be called.
    #[error("{0}")]
    Unreachable(String),
    /// An attempt took longer than [`crate::Provider::timeout`]. Not retried: a model that
    /// ran out of time once is likely to again, and each try may cost money.
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// The provider answered 429 on every attempt, or asked for a longer wait than a call
    /// makes (then `retry_after` says how long, and the caller may come back later).
    #[error("{endpoint} answered 429 (rate limited){}: {}", wait_text(.retry_after), body_text(.body))]
    RateLimited {
        retry_after: Option<Duration>,
        body: String,
        endpoint: String,
    },
    /// Any other status that is not 2xx (5xx after the retries). `body` is the start of the
    /// answer, at most about 500 characters.
    #[error("{endpoint} answered {status}{}", status_text(*.status, .body))]
    Http {
        status: u16,
        body: String,
        endpoint: String,
    },
    /// A 2xx answer that is not the format's: not JSON, or without the fields the format
    /// always has.
    #[error("{0}")]
    Malformed(String),
    /// The answer ended before it was complete: a stream before its final event (or with an
    /// error event in its place), or a connection that broke while the answer was read.
    #[error("{0}")]
    Cut(String),
}

fn wait_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(after) => format!(", try again in {after:?}"),
        None => String::new(),
    }
}

fn body_text(body: &str) -> &str {
    if body.is_empty() { "no body" } else { body }
}

fn status_text(status: u16, body: &str) -> String {
    if (300..=399).contains(&status) {
        ", a redirect, which is not followed (it could carry the key to another server): set \
         the URL it points to"
            .to_owned()
    } else {
        format!(": {}", body_text(body))
    }
}

/// `text` cut to at most `max` characters, ending with `…` when cut: a provider's answer is
/// kept in an error only in part.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if text.chars().count() > max => format!("{}…", &text[..end]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_at_most_max_characters() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("ééééé", 4), "ééé…");
        assert_eq!(cut("", 3), "");
    }

    #[test]
    fn messages_say_what_happened() {
        let endpoint = "groq (openai, POST /openai/v1/chat/completions)".to_owned();
        let http = |status: u16, body: &str| {
            LlmError::Http {
                status,
                body: body.to_owned(),
                endpoint: endpoint.clone(),
            }
            .to_string()
        };
        assert_eq!(
            http(500, "boom"),
            "groq (openai, POST /openai/v1/chat/completions) answered 500: boom"
        );
        assert_eq!(
            http(502, ""),
            "groq (openai, POST /openai/v1/chat/completions) answered 502: no body"
        );
        assert!(http(301, "").contains("a redirect, which is not followed"));
        let limited = LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(90)),
            body: String::new(),
            endpoint: endpoint.clone(),
        };
        assert_eq!(
            limited.to_string(),
            "groq (openai, POST /openai/v1/chat/completions) answered 429 (rate limited), try \
             again in 90s: no body"
        );
        let timeout = LlmError::Timeout {
            endpoint,
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            timeout.to_string(),
            "groq (openai, POST /openai/v1/chat/completions) did not answer within 1.5s"
        );
    }
}
