//! Anthropic's `POST /v1/messages`: the system prompt at the top level, a required
//! `max_tokens`, content as blocks: the assistant's tool calls as `tool_use` blocks, their
//! results as `tool_result` blocks in the next user message. `stop_reason` stops; usage is
//! `input_tokens` (the uncached part) plus `cache_read_input_tokens` and
//! `cache_creation_input_tokens`, and `output_tokens`. A stream is server-sent events from
//! `message_start` (the model and the input usage) through each content block's start, deltas
//! (`text_delta`, `input_json_delta`) and stop, then `message_delta` (the stop reason and the
//! output usage) to `message_stop`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Broken, Delivery, arguments_object, error_text, parse_frame, start_of};
use crate::chat::{
    ChatRequest, Message, StopReason, ToolCall, Usage, arguments_from_text, arguments_from_value,
};

/// The limit sent when the request sets none: the format requires one.
const DEFAULT_MAX_TOKENS: u32 = 1024;

pub(crate) fn request_body(model: &str, request: &ChatRequest, delivery: Delivery) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages(&request.messages),
    });
    if let Some(system) = &request.system {
        body["system"] = system.as_str().into();
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = super::temperature(temperature);
    }
    if delivery == Delivery::Stream {
        body["stream"] = true.into();
    }
    body
}

/// The conversation as `user` and `assistant` messages of content blocks. Turns of the same
/// role in a row become one message: the results of one answer's tool calls must all come in
/// the one user message that follows it, and text after them joins that message too.
fn messages(conversation: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for message in conversation {
        let (role, blocks) = match message {
            Message::User(text) => ("user", vec![json!({"type": "text", "text": text})]),
            Message::Assistant { text, tool_calls } => {
                // The format refuses an empty text block, as an answer of only tool calls has.
                let text = (!text.is_empty()).then(|| json!({"type": "text", "text": text}));
                let calls = tool_calls.iter().map(|call| {
                    json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": arguments_object(&call.arguments),
                    })
                });
                ("assistant", text.into_iter().chain(calls).collect())
            }
            Message::ToolResult {
                call_id,
                content,
                is_error,
                ..
            } => {
                let mut block =
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content});
                if *is_error {
                    block["is_error"] = true.into();
                }
                ("user", vec![block])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

/// The format's usage; in a stream, `message_start` gives it all and `message_delta` the
/// counts that changed, so a later count replaces an earlier one field by field.
#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }
}

impl From<WireUsage> for Usage {
    /// `input_tokens` is the uncached part only; [`Usage`] counts the whole prompt. Writing
    /// to the cache is counted as input (Anthropic charges it somewhat more).
    fn from(usage: WireUsage) -> Usage {
        let cached = usage.cache_read_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: usage.input_tokens.unwrap_or(0)
                + cached
                + usage.cache_creation_input_tokens.unwrap_or(0),
            output_tokens: usage.output_tokens.unwrap_or(0),
            cached_input_tokens: cached,
        }
    }
}

fn stop_reason(stop_reason: &str) -> StopReason {
    match stop_reason {
        "end_turn" | "stop_sequence" => StopReason::Done,
        "tool_use" => StopReason::ToolCalls,
        "max_tokens" => StopReason::Length,
        "refusal" => StopReason::Refused,
        other => StopReason::Other(other.to_owned()),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking and the server's own tools' blocks: not part of the answer's text or calls.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WholeMessage {
    model: Option<String>,
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

pub(crate) fn parse_whole(body: &[u8]) -> Result<Answer, String> {
    let message: WholeMessage = serde_json::from_slice(body).map_err(|err| {
        format!(
            "not a message ({err}): {}",
            start_of(&String::from_utf8_lossy(body))
        )
    })?;
    let mut answer = Answer {
        stop: message.stop_reason.as_deref().map(stop_reason),
        usage: message.usage.into(),
        model: message.model,
        ..Answer::default()
    };
    for block in message.content {
        match block {
            Block::Text { text } => answer.text.push_str(&text),
            Block::ToolUse { id, name, input } => answer.tool_calls.push(ToolCall {
                id,
                name,
                arguments: arguments_from_value(input),
            }),
            Block::Other => {}
        }
    }
    Ok(answer)
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: Value,
    },
    /// `ping`, `content_block_stop`, and events added later.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartedMessage {
    model: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking, signatures, citations.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

/// A content block as its pieces have arrived so far.
enum PartialBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        /// The input the block started with (`{}`), used when no pieces follow.
        start: Value,
        pieces: String,
    },
    Other,
}

#[derive(Default)]
pub(crate) struct Assembly {
    answer: Answer,
    usage: WireUsage,
    /// By the block's `index`.
    blocks: BTreeMap<usize, PartialBlock>,
    done: bool,
}

impl super::Assembly for Assembly {
    const FINAL_FRAME: &'static str = "event: message_stop";

    fn take(
        &mut self,
        frame: &str,
        on_text: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), Broken> {
        // Each event's data repeats its name as `type`, which is what is read.
        let event: Event = parse_frame(frame, "a messages stream event")?;
        match event {
            Event::MessageStart { message } => {
                self.answer.model = message.model;
                self.usage.update(message.usage);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    Block::Text { text } => {
                        if !text.is_empty() {
                            on_text(text.clone());
                        }
                        PartialBlock::Text(text)
                    }
                    Block::ToolUse { id, name, input } => PartialBlock::ToolUse {
                        id,
                        name,
                        start: input,
                        pieces: String::new(),
                    },
                    Block::Other => PartialBlock::Other,
                };
                self.blocks.insert(index, block);
            }
            Event::ContentBlockDelta { index, delta } => {
                match (self.blocks.get_mut(&index), delta) {
                    (Some(PartialBlock::Text(text)), BlockDelta::TextDelta { text: more }) => {
                        text.push_str(&more);
                        if !more.is_empty() {
                            on_text(more);
                        }
                    }
                    (
                        Some(PartialBlock::ToolUse { pieces, .. }),
                        BlockDelta::InputJsonDelta { partial_json },
                    ) => pieces.push_str(&partial_json),
                    (None, _) => {
                        return Err(Broken::Malformed(format!(
                            "a delta for content block {index}, which never started"
                        )));
                    }
                    _ => {}
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(stop) = delta.stop_reason {
                    self.answer.stop = Some(stop_reason(&stop));
                }
                if let Some(usage) = usage {
                    self.usage.update(usage);
                }
            }
            Event::MessageStop => self.done = true,
            Event::Error { error } => return Err(Broken::Failed(error_text(&error))),
            Event::Other => {}
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn into_answer(self) -> Answer {
        let mut answer = self.answer;
        answer.usage = self.usage.into();
        for block in self.blocks.into_values() {
            match block {
                PartialBlock::Text(text) => answer.text.push_str(&text),
                PartialBlock::ToolUse {
                    id,
                    name,
                    start,
                    pieces,
                } => {
                    let arguments = if pieces.is_empty() {
                        arguments_from_value(start)
                    } else {
                        arguments_from_text(&pieces)
                    };
                    answer.tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                PartialBlock::Other => {}
            }
        }
        answer
    }
}
