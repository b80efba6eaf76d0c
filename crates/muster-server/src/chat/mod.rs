//! Chat commands, the pure parts: `[chat.telegram]` checked ([`config`]), Telegram's
//! `getUpdates` read into updates ([`wire`]), a message's text read as a command
//! ([`command`]) and the replies written in Telegram's HTML mode within its limits
//! ([`reply`]). No I/O and no store here: [`crate::chatter`] is the loop that polls, carries
//! commands out through the same verbs as the API and the UI, and sends the replies.

pub mod command;
pub mod config;
pub mod reply;
pub mod wire;

pub use config::{ChatConfig, TelegramChat, TelegramSpec};
