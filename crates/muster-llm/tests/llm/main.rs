//! The client against fake providers speaking each real wire format over real sockets: one
//! module per format for what it says and what is sent to it, and `reliability` for what
//! every format shares (retries, timeouts, errors, the key).

mod anthropic;
mod fake;
mod ollama;
mod openai;
mod reliability;

use std::time::Duration;

use muster_llm::{
    Api, ChatRequest, ChatResponse, Client, Delta, LlmError, Message, Provider, Tool, ToolCall,
};
use serde_json::{Value, json};

use fake::{FakeProvider, Reply};

/// The key every fake provider is called with; no error text or debug output may show it.
pub const KEY: &str = "sk-test-0123456789-do-not-print";

/// A provider of `api` served by `fake`, with a key, two retries and a timeout no passing
/// test comes near.
pub fn provider(api: Api, fake: &FakeProvider) -> Provider {
    let url = match api {
        Api::OpenAi => format!("{}/v1", fake.url),
        Api::Ollama | Api::Anthropic => fake.url.clone(),
    };
    Provider {
        name: "fake".to_owned(),
        api,
        url,
        model: "test-model".to_owned(),
        key: Some(KEY.to_owned()),
        timeout: Duration::from_secs(20),
        max_retries: 2,
    }
}

/// The path each format is called at, given [`provider`]'s URLs.
pub fn path(api: Api) -> &'static str {
    match api {
        Api::Ollama => "/api/chat",
        Api::OpenAi => "/v1/chat/completions",
        Api::Anthropic => "/v1/messages",
    }
}

/// A whole plain answer in `api`'s format, as the shared reliability tests need one.
pub fn plain_answer(api: Api) -> Reply {
    match api {
        Api::Ollama => ollama::plain_answer(),
        Api::OpenAi => openai::plain_answer(),
        Api::Anthropic => anthropic::plain_answer(),
    }
}

/// A complete streamed plain answer in `api`'s format, as the shared tests need one.
pub fn plain_stream(api: Api) -> Reply {
    stream_of(api, plain_stream_pieces(api))
}

/// The pieces of [`plain_stream`], each one NDJSON line or one server-sent event.
pub fn plain_stream_pieces(api: Api) -> Vec<String> {
    match api {
        Api::Ollama => ollama::plain_stream(),
        Api::OpenAi => openai::plain_stream(),
        Api::Anthropic => anthropic::plain_stream(),
    }
}

/// A stream of `pieces` in `api`'s framing.
pub fn stream_of(api: Api, pieces: Vec<String>) -> Reply {
    match api {
        Api::Ollama => Reply::stream("application/x-ndjson", pieces),
        Api::OpenAi | Api::Anthropic => Reply::stream("text/event-stream", pieces),
    }
}

pub fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".to_owned(),
        description: "The current weather in a city.".to_owned(),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        }),
    }
}

pub fn time_tool() -> Tool {
    Tool {
        name: "get_time".to_owned(),
        description: "The local time in a city.".to_owned(),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        }),
    }
}

/// A first turn: a system prompt, one question, two tools.
pub fn question_with_tools() -> ChatRequest {
    ChatRequest {
        system: Some("You are terse.".to_owned()),
        messages: vec![Message::User("Weather and time in Tokyo?".to_owned())],
        tools: vec![weather_tool(), time_tool()],
        max_tokens: None,
        temperature: None,
    }
}

/// A plain first turn without tools.
pub fn greeting() -> ChatRequest {
    ChatRequest {
        system: Some("You are terse.".to_owned()),
        messages: vec![Message::User("Hello".to_owned())],
        max_tokens: Some(64),
        temperature: Some(0.7),
        ..ChatRequest::default()
    }
}

/// A tool call with arguments that are a JSON object.
pub fn tool_call(id: &str, name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments: Ok(arguments),
    }
}

/// `chat` through a new client.
pub async fn chat(provider: &Provider, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
    Client::new().chat(provider, request).await
}

/// `chat_stream`, with the text pieces it handed on.
pub async fn streamed(
    provider: &Provider,
    request: &ChatRequest,
) -> (Result<ChatResponse, LlmError>, Vec<String>) {
    let mut pieces = Vec::new();
    let result = Client::new()
        .chat_stream(provider, request, |delta| match delta {
            Delta::Text(text) => pieces.push(text),
        })
        .await;
    (result, pieces)
}
