//! `FakeTelegram`: a real HTTP server (axum, on a free loopback port) speaking the two Bot API
//! methods the chat commands use. `getUpdates` is a long poll: it answers at once with the
//! updates not yet acknowledged (an offset acknowledges every update before it, as Telegram
//! does), or holds until a test adds one or the poll's `timeout` is over. A test may queue
//! failed answers for the next polls. `sendMessage` records what muster sent and answers ok.
//! Only the bot's own token is served; any other path gets Telegram's 404.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The bot token the fake serves.
pub const TOKEN: &str = "123456789:AAHfakeChatToken_-0";

#[derive(Default)]
struct Book {
    /// Updates not yet acknowledged, oldest first.
    pending: Vec<Value>,
    last_id: i64,
    /// Answers for the next polls, instead of updates: status, body and headers.
    failures: VecDeque<(u16, String)>,
    /// Every `getUpdates` body, in order.
    polls: Vec<Value>,
    /// Every `sendMessage` body, in order.
    sent: Vec<Value>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<Book>>,
    /// Bumped when an update or a failure is queued; held polls wait for it.
    changed: watch::Sender<u64>,
}

pub struct FakeTelegram {
    /// `http://127.0.0.1:PORT`: the Bot API server's URL.
    pub url: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let shared = Shared {
            state: Arc::default(),
            changed: watch::channel(0).0,
        };
        let router = Router::new()
            .route("/{bot}/{method}", post(method))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeTelegram {
            url,
            shared,
            server,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Book> {
        self.shared.state.lock().unwrap()
    }

    /// Queues an update; answers its id.
    pub fn update(&self, body: impl FnOnce(i64) -> Value) -> i64 {
        let id = {
            let mut state = self.state();
            state.last_id += 1;
            let id = state.last_id;
            let mut update = body(id);
            update["update_id"] = json!(id);
            state.pending.push(update);
            id
        };
        self.shared.changed.send_modify(|n| *n += 1);
        id
    }

    /// `text` written in the chat `chat_id` by the user of the same id, now.
    pub fn message(&self, chat_id: i64, text: &str) -> i64 {
        self.update(|id| {
            json!({"message": {
                "message_id": id,
                "date": chrono::Utc::now().timestamp(),
                "from": {"id": chat_id, "is_bot": false, "first_name": "Ada", "language_code": "de"},
                "chat": {"id": chat_id, "type": if chat_id < 0 { "supergroup" } else { "private" }},
                "text": text,
            }})
        })
    }

    /// A photo without a caption: a message with no text.
    pub fn photo(&self, chat_id: i64) -> i64 {
        self.update(|id| {
            json!({"message": {
                "message_id": id,
                "date": chrono::Utc::now().timestamp(),
                "from": {"id": chat_id, "is_bot": false, "first_name": "Ada"},
                "chat": {"id": chat_id, "type": "private"},
                "photo": [{"file_id": "AgAD", "file_unique_id": "AQAD", "width": 90, "height": 60}],
            }})
        })
    }

    /// The next poll is answered with `status` and `body` instead of updates.
    pub fn fail_next(&self, status: u16, body: &str) {
        self.state().failures.push_back((status, body.to_owned()));
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// The texts sent to `chat_id`, in order.
    pub fn sent_to(&self, chat_id: i64) -> Vec<String> {
        self.state()
            .sent
            .iter()
            .filter(|m| m["chat_id"] == chat_id)
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Every `sendMessage` body.
    pub fn sent(&self) -> Vec<Value> {
        self.state().sent.clone()
    }

    /// Every `getUpdates` body.
    pub fn polls(&self) -> Vec<Value> {
        self.state().polls.clone()
    }

    /// Updates not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Waits until `chat_id` has been sent `n` messages; the `n`th.
    pub async fn reply(&self, chat_id: i64, n: usize) -> String {
        crate::helpers::eventually(&format!("message {n} to chat {chat_id}"), || async {
            self.sent_to(chat_id).get(n - 1).cloned()
        })
        .await
    }
}

/// Telegram's error body.
fn error(status: u16, description: &str) -> Response {
    let body = json!({"ok": false, "error_code": status, "description": description});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn method(
    State(shared): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if bot != format!("bot{TOKEN}") {
        return error(404, "Not Found");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "Bad Request: the body is not JSON");
    };
    match method.as_str() {
        "getUpdates" => get_updates(shared, body).await,
        "sendMessage" => {
            let mut state = shared.state.lock().unwrap();
            state.sent.push(body.clone());
            let id = state.sent.len();
            axum::Json(json!({"ok": true, "result": {
                "message_id": id, "date": chrono::Utc::now().timestamp(),
                "chat": {"id": body["chat_id"]}, "text": body["text"],
            }}))
            .into_response()
        }
        _ => error(404, "Not Found: method not found"),
    }
}

async fn get_updates(shared: Shared, body: Value) -> Response {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribed before the first look, so an update queued in between wakes the poll.
    let mut changed = shared.changed.subscribe();
    shared.state.lock().unwrap().polls.push(body);
    loop {
        {
            let mut state = shared.state.lock().unwrap();
            if let Some((status, text)) = state.failures.pop_front() {
                let mut response = (StatusCode::from_u16(status).unwrap(), text).into_response();
                if status == 429 {
                    response
                        .headers_mut()
                        .insert("retry-after", "1".parse().unwrap());
                }
                return response;
            }
            // The offset acknowledges every update before it: Telegram forgets them.
            state
                .pending
                .retain(|u| u["update_id"].as_i64().unwrap() >= offset);
            if !state.pending.is_empty() {
                let result = state.pending.clone();
                return axum::Json(json!({"ok": true, "result": result})).into_response();
            }
        }
        let waited = tokio::time::timeout_at(deadline, changed.changed()).await;
        if !matches!(waited, Ok(Ok(()))) {
            return axum::Json(json!({"ok": true, "result": []})).into_response();
        }
    }
}
