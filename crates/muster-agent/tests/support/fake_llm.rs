//! `FakeLlm`: a real HTTP server on a free loopback port standing in for an OpenAI-compatible
//! provider behind a real control plane. It records every request and answers with the
//! replies a test queues (then its default reply), in the format's own words, usage included.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    replies: VecDeque<(StatusCode, Value)>,
    default: Option<Value>,
    requests: Vec<Value>,
}

pub struct FakeLlm {
    /// The base before `/chat/completions`, as `[[llm.providers]]` takes it.
    pub url: String,
    script: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(answer))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm {
            url,
            script,
            server,
        }
    }

    /// Queues one answer.
    pub fn reply(&self, body: Value) {
        self.reply_status(StatusCode::OK, body);
    }

    /// Queues one answer with another status (a provider's failure).
    pub fn reply_status(&self, status: StatusCode, body: Value) {
        self.script
            .lock()
            .unwrap()
            .replies
            .push_back((status, body));
    }

    /// The answer once the queue is empty.
    pub fn default_reply(&self, body: Value) {
        self.script.lock().unwrap().default = Some(body);
    }

    /// Every request body so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.script.lock().unwrap().requests.clone()
    }

    /// The `[[llm.providers]]` entry `cloud` for this fake: priced at 1 per million input
    /// tokens and 2 per million output tokens, no retries.
    pub fn provider_toml(&self) -> String {
        format!(
            "name = \"cloud\"\napi = \"openai\"\nurl = \"{}\"\nmodel = \"fake-model\"\n\
             max_retries = 0\nprice = {{ input = 1.0, output = 2.0 }}",
            self.url
        )
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut script = script.lock().unwrap();
    script.requests.push(request);
    let default = script.default.clone().map(|body| (StatusCode::OK, body));
    match script.replies.pop_front().or(default) {
        Some((status, body)) => (status, Json(body)),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "the test queued no answer"}})),
        ),
    }
}

fn completion(message: Value, finish: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "model": "fake-model-2026",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
    })
}

/// A turn in which the model says `text` and calls tools: each `(name, arguments)`, the
/// arguments sent as their JSON text, or as they are when given as a string (not JSON).
pub fn tool_calls(
    text: &str,
    calls: &[(&str, Value)],
    prompt: u64,
    completion_tokens: u64,
) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            let arguments = match arguments {
                Value::String(raw) => raw.clone(),
                other => other.to_string(),
            };
            json!({"id": format!("call_{i}"), "type": "function",
                   "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    completion(
        json!({"role": "assistant", "content": text, "tool_calls": calls}),
        "tool_calls",
        prompt,
        completion_tokens,
    )
}

/// A turn in which the model answers `text` and calls nothing.
pub fn final_answer(text: &str, prompt: u64, completion_tokens: u64) -> Value {
    completion(
        json!({"role": "assistant", "content": text}),
        "stop",
        prompt,
        completion_tokens,
    )
}
