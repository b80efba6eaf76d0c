//! The three wire formats, without I/O: how a [`ChatRequest`] becomes each format's request
//! body, and how each format's answer, whole or streamed, becomes an [`Answer`]. The client
//! sends, reads and frames (NDJSON lines for Ollama, server-sent events for the others); each
//! format's `Assembly` takes the frames' data in order.

pub(crate) mod anthropic;
pub(crate) mod ollama;
pub(crate) mod openai;

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::chat::{
    BadArguments, ChatRequest, ChatResponse, StopReason, Tool, ToolCall, Usage,
    arguments_from_value,
};
use crate::provider::{Api, Provider};

/// Whether the answer is asked for whole or as a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Whole,
    Stream,
}

/// What a format's answer says; the client adds how long it took and how many attempts.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) text: String,
    pub(crate) tool_calls: Vec<ToolCall>,
    pub(crate) stop: Option<StopReason>,
    pub(crate) usage: Usage,
    pub(crate) model: Option<String>,
}

impl Answer {
    pub(crate) fn into_response(
        self,
        provider: &Provider,
        latency: Duration,
        attempts: u32,
    ) -> ChatResponse {
        let stop = match self.stop {
            // Ollama says `stop`, and some OpenAI-compatible servers `stop`, when the answer is
            // tool calls: what the caller must do next is run them.
            None | Some(StopReason::Done) if !self.tool_calls.is_empty() => StopReason::ToolCalls,
            None => StopReason::Done,
            Some(stop) => stop,
        };
        ChatResponse {
            text: self.text,
            tool_calls: self.tool_calls,
            stop,
            usage: self.usage,
            model: self
                .model
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| provider.model.clone()),
            latency,
            attempts,
        }
    }
}

/// Why a frame ends the stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Broken {
    /// The frame is not the format's.
    Malformed(String),
    /// The provider reported an error in place of the rest of the answer.
    Failed(String),
}

/// A streamed answer put together frame by frame.
pub(crate) trait Assembly: Default + Send {
    /// The frame that ends a complete stream, as error texts name it.
    const FINAL_FRAME: &'static str;

    /// Takes the next frame's data (a server-sent event's, or one NDJSON line), handing each
    /// piece of text it holds to `on_text` in order. Event names are not needed: each
    /// format's data says what it is.
    fn take(&mut self, frame: &str, on_text: &mut (dyn FnMut(String) + Send))
    -> Result<(), Broken>;

    /// Whether the final frame has arrived; nothing after it is read.
    fn finished(&self) -> bool;

    fn into_answer(self) -> Answer;
}

/// The request body for `request` in `provider`'s format.
pub(crate) fn request_body(
    provider: &Provider,
    request: &ChatRequest,
    delivery: Delivery,
) -> Value {
    match provider.api {
        Api::Ollama => ollama::request_body(&provider.model, request, delivery),
        Api::OpenAi => openai::request_body(&provider.model, request, delivery),
        Api::Anthropic => anthropic::request_body(&provider.model, request, delivery),
    }
}

/// A whole (not streamed) answer in `api`'s format; the error says what is wrong with it.
pub(crate) fn parse_whole(api: Api, body: &[u8]) -> Result<Answer, String> {
    match api {
        Api::Ollama => ollama::parse_whole(body),
        Api::OpenAi => openai::parse_whole(body),
        Api::Anthropic => anthropic::parse_whole(body),
    }
}

/// Tools as Ollama and OpenAI declare them: `{type:"function", function:{…}}`.
fn function_tools(tools: &[Tool]) -> Value {
    tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            })
        })
        .collect()
}

/// A whole tool call as Ollama and OpenAI write it: `{id?, function: {name, arguments}}`,
/// the arguments an object (Ollama) or a JSON string (OpenAI).
#[derive(Deserialize)]
struct FunctionCall {
    /// OpenAI's id; Ollama's newer builds give one too, older ones none.
    id: Option<String>,
    function: FunctionCallBody,
}

#[derive(Deserialize)]
struct FunctionCallBody {
    name: String,
    #[serde(default)]
    arguments: Value,
}

impl FunctionCall {
    /// The call as the `position`-th of its answer, which names it when it has no id.
    fn into_tool_call(self, position: usize) -> ToolCall {
        ToolCall {
            id: self.id.unwrap_or_else(|| format!("call_{position}")),
            name: self.function.name,
            arguments: arguments_from_value(self.function.arguments),
        }
    }
}

/// A temperature as JSON, written as it reads: `0.7f32` widened to f64 would go out as
/// `0.699999988079071`.
fn temperature(value: f32) -> Value {
    value
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Arguments echoed to a format that takes them as an object (Ollama, Anthropic). Arguments
/// that were not an object cannot be sent back as they came, and the call is still part of
/// the conversation, so it goes back without arguments; its result says what was wrong.
fn arguments_object(arguments: &Result<Value, BadArguments>) -> Value {
    match arguments {
        Ok(value) => value.clone(),
        Err(_) => json!({}),
    }
}

/// A frame read as `T`, or why it is not `what` the format sends.
fn parse_frame<T: DeserializeOwned>(frame: &str, what: &str) -> Result<T, Broken> {
    serde_json::from_str(frame)
        .map_err(|err| Broken::Malformed(format!("not {what} ({err}): {}", start_of(frame))))
}

/// The start of a text that is not what was expected, for an error message.
fn start_of(text: &str) -> String {
    crate::error::cut(text.trim(), 200)
}

/// A JSON value a format uses for its error text: a string, or an object with a `message`
/// (and perhaps a `type`), or anything else as JSON.
fn error_text(error: &Value) -> String {
    let message = error.get("message").and_then(Value::as_str);
    let kind = error.get("type").and_then(Value::as_str);
    match (error, kind, message) {
        (Value::String(text), _, _) => text.clone(),
        (_, Some(kind), Some(message)) => format!("{kind}: {message}"),
        (_, None, Some(message)) => message.to_owned(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_with_a_plain_stop_are_tool_calls() {
        let provider = Provider::new("p", Api::Ollama, "http://x", "asked");
        let call = ToolCall {
            id: "call_0".to_owned(),
            name: "f".to_owned(),
            arguments: Ok(json!({})),
        };
        let respond = |stop: Option<StopReason>, calls: Vec<ToolCall>| {
            Answer {
                stop,
                tool_calls: calls,
                ..Answer::default()
            }
            .into_response(&provider, Duration::ZERO, 1)
            .stop
        };
        assert_eq!(respond(None, vec![]), StopReason::Done);
        assert_eq!(respond(None, vec![call.clone()]), StopReason::ToolCalls);
        assert_eq!(
            respond(Some(StopReason::Done), vec![call.clone()]),
            StopReason::ToolCalls
        );
        assert_eq!(
            respond(Some(StopReason::Length), vec![call]),
            StopReason::Length
        );
    }

    #[test]
    fn the_model_falls_back_to_the_one_asked_for() {
        let provider = Provider::new("p", Api::Ollama, "http://x", "asked");
        let model = |model: Option<&str>| {
            Answer {
                model: model.map(str::to_owned),
                ..Answer::default()
            }
            .into_response(&provider, Duration::ZERO, 1)
            .model
        };
        assert_eq!(model(Some("reported")), "reported");
        assert_eq!(model(Some("")), "asked");
        assert_eq!(model(None), "asked");
    }

    #[test]
    fn temperatures_go_out_as_written() {
        assert_eq!(temperature(0.7).to_string(), "0.7");
        assert_eq!(temperature(1.0).to_string(), "1.0");
        assert_eq!(temperature(f32::NAN), Value::Null);
    }

    #[test]
    fn error_texts_are_read_from_each_shape() {
        assert_eq!(error_text(&json!("model not found")), "model not found");
        assert_eq!(
            error_text(&json!({"type": "overloaded_error", "message": "Overloaded"})),
            "overloaded_error: Overloaded"
        );
        assert_eq!(error_text(&json!({"message": "bad"})), "bad");
        assert_eq!(error_text(&json!({"code": 5})), r#"{"code":5}"#);
    }
}
