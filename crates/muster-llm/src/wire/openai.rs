//! The OpenAI chat completions format, `POST {base}/chat/completions`, as OpenAI and the
//! servers that copy it speak it: the assistant's tool calls echoed with their ids and their
//! arguments as a JSON string, each result a `role:"tool"` message with `tool_call_id`;
//! `finish_reason` to stop; `usage.prompt_tokens` (cached ones included, counted again in
//! `prompt_tokens_details.cached_tokens`) and `completion_tokens`. A stream is server-sent
//! events of `chat.completion.chunk` objects, tool calls in pieces keyed by `index`, the usage
//! in a last chunk of its own (asked for with `stream_options.include_usage`), and then
//! `data: [DONE]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Answer, Broken, Delivery, FunctionCall, error_text, function_tools, parse_frame, start_of,
};
use crate::chat::{ChatRequest, Message, StopReason, ToolCall, Usage, arguments_from_text};

pub(crate) fn request_body(model: &str, request: &ChatRequest, delivery: Delivery) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        messages.push(match message {
            Message::User(text) => json!({"role": "user", "content": text}),
            Message::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                json!({"role": "assistant", "content": text})
            }
            Message::Assistant { text, tool_calls } => {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|call| {
                        // Arguments that did not parse go back exactly as the model wrote them.
                        let arguments = match &call.arguments {
                            Ok(value) => value.to_string(),
                            Err(bad) => bad.raw.clone(),
                        };
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": arguments},
                        })
                    })
                    .collect();
                // An assistant turn that only calls tools has no content, which the format
                // writes as null.
                let content = if text.is_empty() {
                    Value::Null
                } else {
                    text.as_str().into()
                };
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
            Message::ToolResult {
                call_id, content, ..
            } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
        });
    }
    let mut body = json!({"model": model, "messages": messages});
    if !request.tools.is_empty() {
        body["tools"] = function_tools(&request.tools);
    }
    // `max_tokens`, which every compatible server takes, rather than the newer
    // `max_completion_tokens`, which OpenAI's own reasoning models require instead.
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = max_tokens.into();
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = super::temperature(temperature);
    }
    if delivery == Delivery::Stream {
        body["stream"] = true.into();
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Usage {
        Usage {
            input_tokens: usage.prompt_tokens.unwrap_or(0),
            output_tokens: usage.completion_tokens.unwrap_or(0),
            cached_input_tokens: usage
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

fn stop_reason(finish_reason: Option<&str>) -> Option<StopReason> {
    Some(match finish_reason? {
        "stop" => StopReason::Done,
        // `function_call` is the reason of the format's older, single-function calls.
        "tool_calls" | "function_call" => StopReason::ToolCalls,
        "length" => StopReason::Length,
        "content_filter" => StopReason::Refused,
        other => StopReason::Other(other.to_owned()),
    })
}

#[derive(Deserialize)]
struct Completion {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    /// Set, instead of the content, when the model declines.
    refusal: Option<String>,
    tool_calls: Option<Vec<FunctionCall>>,
}

pub(crate) fn parse_whole(body: &[u8]) -> Result<Answer, String> {
    let completion: Completion = serde_json::from_slice(body).map_err(|err| {
        format!(
            "not a chat completion ({err}): {}",
            start_of(&String::from_utf8_lossy(body))
        )
    })?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err("a chat completion without choices".to_owned());
    };
    let message = choice.message;
    let mut stop = stop_reason(choice.finish_reason.as_deref());
    let mut text = message.content.unwrap_or_default();
    if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
        stop = Some(StopReason::Refused);
        if text.is_empty() {
            text = refusal;
        }
    }
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(position, call)| call.into_tool_call(position))
        .collect();
    Ok(Answer {
        text,
        tool_calls,
        stop,
        usage: completion.usage.map(Usage::from).unwrap_or_default(),
        model: completion.model,
    })
}

#[derive(Deserialize)]
struct Chunk {
    model: Option<String>,
    choices: Option<Vec<ChunkChoice>>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    index: Option<u32>,
    delta: Option<ChunkDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<ToolCallPiece>>,
}

#[derive(Deserialize)]
struct ToolCallPiece {
    index: Option<usize>,
    id: Option<String>,
    function: Option<FunctionPiece>,
}

#[derive(Deserialize)]
struct FunctionPiece {
    name: Option<String>,
    arguments: Option<Value>,
}

/// A tool call as its pieces have arrived so far.
#[derive(Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Default)]
pub(crate) struct Assembly {
    answer: Answer,
    refusal: String,
    /// By the `index` the format keys pieces with.
    calls: BTreeMap<usize, PartialCall>,
    done: bool,
}

impl super::Assembly for Assembly {
    const FINAL_FRAME: &'static str = "data: [DONE]";

    fn take(
        &mut self,
        frame: &str,
        on_text: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), Broken> {
        if frame.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = parse_frame(frame, "a chat completion chunk")?;
        if let Some(error) = chunk.error {
            return Err(Broken::Failed(error_text(&error)));
        }
        if chunk.model.is_some() {
            self.answer.model = chunk.model;
        }
        if let Some(usage) = chunk.usage {
            self.answer.usage = usage.into();
        }
        // One choice is asked for; a server that sends more is read for the first.
        let choices = chunk.choices.unwrap_or_default();
        for choice in choices.into_iter().filter(|c| c.index.unwrap_or(0) == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.answer.text.push_str(&text);
                    on_text(text);
                }
                if let Some(refusal) = delta.refusal {
                    self.refusal.push_str(&refusal);
                }
                for (position, piece) in
                    delta.tool_calls.unwrap_or_default().into_iter().enumerate()
                {
                    let call = self
                        .calls
                        .entry(piece.index.unwrap_or(position))
                        .or_default();
                    if piece.id.is_some() {
                        call.id = piece.id;
                    }
                    let Some(function) = piece.function else {
                        continue;
                    };
                    if let Some(name) = function.name.filter(|_| call.name.is_empty()) {
                        call.name = name;
                    }
                    match function.arguments {
                        Some(Value::String(more)) => call.arguments.push_str(&more),
                        // A server that sends the arguments whole, as an object.
                        Some(Value::Object(whole)) => {
                            call.arguments = Value::Object(whole).to_string();
                        }
                        _ => {}
                    }
                }
            }
            if let Some(stop) = stop_reason(choice.finish_reason.as_deref()) {
                self.answer.stop = Some(stop);
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn into_answer(self) -> Answer {
        let mut answer = self.answer;
        if !self.refusal.is_empty() {
            answer.stop = Some(StopReason::Refused);
            if answer.text.is_empty() {
                answer.text = self.refusal;
            }
        }
        answer.tool_calls = self
            .calls
            .into_values()
            .enumerate()
            .map(|(n, call)| ToolCall {
                id: call.id.unwrap_or_else(|| format!("call_{n}")),
                name: call.name,
                arguments: arguments_from_text(&call.arguments),
            })
            .collect();
        answer
    }
}
