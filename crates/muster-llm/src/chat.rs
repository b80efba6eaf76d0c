//! The conversation as muster describes it, whatever the format: the request ([`ChatRequest`]
//! with its [`Message`]s and [`Tool`]s) and the answer ([`ChatResponse`] with its
//! [`ToolCall`]s, [`StopReason`] and [`Usage`]).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON Schema object describing the arguments.
    pub parameters: Value,
}

/// One turn of the conversation so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    User(String),
    /// What the model said, echoed back as it was answered (its tool calls with their ids).
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call. `is_error` reaches the model only through Anthropic, the
    /// one format with a field for it; for the others, `content` should say so itself.
    ToolResult {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

/// One request to a model. `ChatRequest { messages, ..Default::default() }` leaves the rest
/// to the provider (Anthropic, which requires a limit, gets `max_tokens: 1024`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The provider's id; Ollama gives none, so one is made up: `call_0`, `call_1`, … in the
    /// order of the answer.
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object, or the text that was not one.
    pub arguments: Result<Value, BadArguments>,
}

/// Tool arguments that are not a JSON object: OpenAI-compatible servers send the arguments as
/// a string the model wrote, which need not parse. The caller tells the model (a tool result
/// with `is_error`) rather than failing the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadArguments {
    /// The arguments exactly as the provider sent them.
    pub raw: String,
    /// Why they are not a JSON object.
    pub error: String,
}

impl fmt::Display for BadArguments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the tool arguments are not a JSON object ({}): {}",
            self.error, self.raw
        )
    }
}

impl std::error::Error for BadArguments {}

/// Why the model stopped, mapped from each format's own field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// It finished its answer (or reached a stop sequence).
    Done,
    /// It wants the tool calls of the answer run.
    ToolCalls,
    /// It reached the token limit: the answer is cut.
    Length,
    /// It declined, or the provider's filter stopped it.
    Refused,
    /// Another reason, as the provider named it (`pause_turn`, Ollama's `load`, …).
    Other(String),
}

/// Tokens one call used. `input_tokens` counts the whole prompt, the cached part included;
/// `cached_input_tokens` is the part read from the provider's prompt cache (OpenAI's
/// `cached_tokens`, Anthropic's `cache_read_input_tokens`; Ollama reports none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub stop: StopReason,
    pub usage: Usage,
    /// The model as the provider reported it, else the one asked for.
    pub model: String,
    /// From the call to the complete answer, waits between attempts included.
    pub latency: Duration,
    /// How many requests it took: 1, or more after retries.
    pub attempts: u32,
}

/// A piece of a streamed answer, handed on as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Text(String),
}

/// Tool arguments sent as text (OpenAI's string, Anthropic's streamed JSON pieces). Nothing at
/// all stands for no arguments, as servers send for a tool without parameters.
pub(crate) fn arguments_from_text(raw: &str) -> Result<Value, BadArguments> {
    if raw.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let bad = |error: String| BadArguments {
        raw: raw.to_owned(),
        error,
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(bad(format!("expected an object, got {}", kind_of(&other)))),
        Err(err) => Err(bad(format!("not JSON: {err}"))),
    }
}

/// Tool arguments sent as JSON (Ollama's object); a string among them is read as text, since
/// servers that copy one format sometimes answer in the other's shape, and none (`null` or
/// absent) stands for no arguments.
pub(crate) fn arguments_from_value(value: Value) -> Result<Value, BadArguments> {
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        Value::String(text) => arguments_from_text(&text),
        other => Err(BadArguments {
            raw: other.to_string(),
            error: format!("expected an object, got {}", kind_of(&other)),
        }),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_must_be_a_json_object() {
        assert_eq!(arguments_from_text(r#"{"a":1}"#), Ok(json!({"a": 1})));
        assert_eq!(arguments_from_text("  "), Ok(json!({})));
        let bad = arguments_from_text(r#"{"a":"#).unwrap_err();
        assert_eq!(bad.raw, r#"{"a":"#);
        assert!(bad.error.starts_with("not JSON: "), "{}", bad.error);
        assert_eq!(
            arguments_from_text("[1, 2]").unwrap_err().error,
            "expected an object, got an array"
        );
        assert_eq!(
            arguments_from_value(json!({"city": "Oslo"})),
            Ok(json!({"city": "Oslo"}))
        );
        assert_eq!(
            arguments_from_value(json!(r#"{"city":"Oslo"}"#)),
            Ok(json!({"city": "Oslo"}))
        );
        assert_eq!(arguments_from_value(Value::Null), Ok(json!({})));
        assert_eq!(
            arguments_from_value(json!(7)),
            Err(BadArguments {
                raw: "7".to_owned(),
                error: "expected an object, got a number".to_owned()
            })
        );
    }
}
