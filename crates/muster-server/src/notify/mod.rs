//! Notifications as configured: the channels (`[[notify.channels]]`: where a message goes and
//! how it is sent), the rules (`[[notify.rules]]`: which events reach which channels, with
//! what words) and the sending of one message over one channel. No loops and no store here:
//! [`crate::outbox`] turns a committed [`crate::notice::Notice`] into notification rows with
//! [`rules`], and [`crate::messenger`] sends the rows with [`channels::send`]. [`telegram`]
//! is the Telegram Bot API both the channel and the chat commands ([`crate::chatter`]) speak;
//! [`text`] cuts and splits escaped text to a service's limit.

pub mod channels;
pub mod rules;
pub mod telegram;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use channels::{Channel, ChannelKind, ChannelSpec};
pub use rules::{Rule, RuleSpec};

/// `text` cut to at most `max` characters, ending with `…` when cut: bounded messages and
/// kept answers.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if text.chars().count() > max => format!("{}…", &text[..end]),
        _ => text.to_owned(),
    }
}

/// The `[notify]` section, checked and with its secrets read from the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NotifyConfig {
    pub channels: Vec<Arc<Channel>>,
    pub rules: Vec<Rule>,
}

impl NotifyConfig {
    pub fn channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// One message on its way to one channel, as every channel kind renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The notification's id: the same on every attempt, so a receiver can de-duplicate
    /// (the webhook sends it as `X-Muster-Delivery`).
    pub id: Uuid,
    /// `task.failed`, `agent.offline`, … (`notify.test` for `muster notify test`).
    pub event: String,
    /// One line, plain text (each channel escapes it for its own markup).
    pub title: String,
    /// Plain text, may hold several lines.
    pub body: String,
    /// An absolute URL of the UI page of the thing, when `PUBLIC_URL` is set.
    pub link: Option<String>,
    /// When the (last) event it reports happened.
    pub at: DateTime<Utc>,
    /// How many events this message stands for: 1, or more for a digest of a quiet period.
    pub count: u32,
    /// What the event is about: `task:<id>`, `agent:<id>`.
    pub subject: String,
}

/// What one attempt to send came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The service answered 2xx: delivered. `answer` is the start of its body, for the record.
    Delivered { status: u16, answer: String },
    /// Worth trying again: a timeout, a refused or reset connection, a 429, a 5xx, 408.
    /// `after` is the service's own word on when (`Retry-After`, Telegram's
    /// `parameters.retry_after`, Discord's `retry_after`), if it gave one.
    Retry {
        status: Option<u16>,
        after: Option<Duration>,
        error: String,
    },
    /// The service refused the message itself (another 4xx: a bad token, an unknown chat):
    /// sending the same bytes again cannot help.
    Refused { status: u16, error: String },
}

impl Outcome {
    /// How the attempt is recorded, and the service's answer or the error.
    pub fn recorded(&self) -> (muster_api::SendOutcome, &str) {
        match self {
            Outcome::Delivered { answer, .. } => (muster_api::SendOutcome::Delivered, answer),
            Outcome::Retry { error, .. } => (muster_api::SendOutcome::Retry, error),
            Outcome::Refused { error, .. } => (muster_api::SendOutcome::Refused, error),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status, .. } | Outcome::Refused { status, .. } => Some(*status),
            Outcome::Retry { status, .. } => *status,
        }
    }
}
