//! Telegram's `getUpdates`, read without I/O: the body of one long poll (the offset that
//! acknowledges every update before it, how long to hold, which kinds of update), and a
//! successful answer read into updates. An update muster cannot use (a photo, an edit, a
//! shape it does not know) is still an update: it is acknowledged and passed over.

use serde_json::{Value, json};

/// How long one `getUpdates` waits for a message before answering empty, in seconds.
/// Telegram holds a long poll up to 50 s; 25 s keeps well within proxies' idle limits.
pub const POLL_TIMEOUT_S: u64 = 25;

/// The body of one `getUpdates`: `offset` acknowledges every update before it (none before
/// the first poll), `timeout_s` is how long to hold the poll, and only messages are asked for.
pub fn get_updates_body(offset: Option<i64>, timeout_s: u64) -> Value {
    let mut body = json!({"timeout": timeout_s, "allowed_updates": ["message"]});
    if let Some(offset) = offset {
        body["offset"] = json!(offset);
    }
    body
}

/// One update: its id (what the offset acknowledges) and the text message it carries, if it
/// carries one muster can read.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub update_id: i64,
    pub message: Option<TextMessage>,
}

/// A message with text: who wrote it, where, when, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMessage {
    pub chat_id: i64,
    /// The sender's user id; absent for some messages in groups (sent on behalf of the chat).
    pub from_id: Option<i64>,
    /// Unix seconds, as Telegram dates it.
    pub date: i64,
    pub text: String,
}

/// The updates of a successful answer (`{"ok":true,"result":[…]}`), in order. An entry
/// without an `update_id` cannot be acknowledged on its own and is left out (a later one's
/// acknowledges it); one that is not a text message comes with no message. `Err` when the
/// answer is not that shape at all.
pub fn updates(answer: &Value) -> Result<Vec<Update>, String> {
    let Some(result) = answer.get("result").and_then(Value::as_array) else {
        return Err("the answer has no list of updates (\"result\")".to_owned());
    };
    Ok(result
        .iter()
        .filter_map(|entry| {
            Some(Update {
                update_id: entry.get("update_id")?.as_i64()?,
                message: entry.get("message").and_then(text_message),
            })
        })
        .collect())
}

fn text_message(message: &Value) -> Option<TextMessage> {
    Some(TextMessage {
        chat_id: message.pointer("/chat/id")?.as_i64()?,
        from_id: message.pointer("/from/id").and_then(Value::as_i64),
        date: message.get("date").and_then(Value::as_i64).unwrap_or(0),
        text: message.get("text")?.as_str()?.to_owned(),
    })
}

/// The offset that acknowledges `updates` and everything before them: one past the highest
/// id, never less than `offset`.
pub fn next_offset(offset: Option<i64>, updates: &[Update]) -> Option<i64> {
    updates
        .iter()
        .map(|u| u.update_id.saturating_add(1))
        .chain(offset)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_body_acknowledges_with_its_offset() {
        assert_eq!(
            get_updates_body(None, 25),
            json!({"timeout": 25, "allowed_updates": ["message"]})
        );
        assert_eq!(get_updates_body(Some(8), 0)["offset"], 8);
    }

    #[test]
    fn text_messages_are_read_and_everything_else_is_passed_over() {
        let answer = json!({"ok": true, "result": [
            {"update_id": 10, "message": {"message_id": 1, "date": 1_795_000_000,
                "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
                "chat": {"id": 42, "type": "private"}, "text": "/status"}},
            {"update_id": 11, "message": {"message_id": 2, "date": 1_795_000_001,
                "chat": {"id": -100456, "type": "supergroup"},
                "photo": [{"file_id": "x", "width": 90, "height": 90}]}},
            {"update_id": 12, "edited_message": {"message_id": 1, "chat": {"id": 42},
                "text": "/tasks"}},
            {"no_update_id": true},
            {"update_id": 14, "message": "not an object"},
        ]});
        let read = updates(&answer).unwrap();
        assert_eq!(
            read,
            [
                Update {
                    update_id: 10,
                    message: Some(TextMessage {
                        chat_id: 42,
                        from_id: Some(42),
                        date: 1_795_000_000,
                        text: "/status".into()
                    })
                },
                Update {
                    update_id: 11,
                    message: None
                },
                Update {
                    update_id: 12,
                    message: None
                },
                Update {
                    update_id: 14,
                    message: None
                },
            ]
        );
        assert_eq!(next_offset(Some(3), &read), Some(15));
        assert_eq!(next_offset(Some(3), &[]), Some(3));
        assert_eq!(next_offset(None, &[]), None);
        assert!(updates(&json!({"ok": true})).is_err());
        assert!(updates(&json!({"ok": true, "result": {}})).is_err());
    }
}
