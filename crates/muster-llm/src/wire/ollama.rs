//! Ollama's `POST /api/chat`: messages with roles `system`, `user`, `assistant` and `tool`
//! (with `tool_name`), tool calls with their arguments as an object and no id, `done` and
//! `done_reason` to stop, `prompt_eval_count`/`eval_count` for usage. A stream is NDJSON: the
//! same object once per piece, the last with `done:true` and the counts; a whole answer is
//! that last object with the whole message.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Answer, Assembly as _, Broken, Delivery, FunctionCall, arguments_object, error_text,
    function_tools, parse_frame, start_of,
};
use crate::chat::{ChatRequest, Message, StopReason, Usage};

pub(crate) fn request_body(model: &str, request: &ChatRequest, delivery: Delivery) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        messages.push(match message {
            Message::User(text) => json!({"role": "user", "content": text}),
            Message::Assistant { text, tool_calls } => {
                let mut echoed = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    echoed["tool_calls"] = tool_calls
                        .iter()
                        .map(|call| {
                            json!({"function": {
                                "name": call.name,
                                "arguments": arguments_object(&call.arguments),
                            }})
                        })
                        .collect();
                }
                echoed
            }
            Message::ToolResult { name, content, .. } => {
                json!({"role": "tool", "content": content, "tool_name": name})
            }
        });
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        // Ollama streams unless told not to.
        "stream": delivery == Delivery::Stream,
    });
    if !request.tools.is_empty() {
        body["tools"] = function_tools(&request.tools);
    }
    let mut options = serde_json::Map::new();
    if let Some(max_tokens) = request.max_tokens {
        options.insert("num_predict".to_owned(), max_tokens.into());
    }
    if let Some(temperature) = request.temperature {
        options.insert("temperature".to_owned(), super::temperature(temperature));
    }
    if !options.is_empty() {
        body["options"] = options.into();
    }
    body
}

/// A whole answer is one chunk: the last one, with the whole message.
pub(crate) fn parse_whole(body: &[u8]) -> Result<Answer, String> {
    let text = std::str::from_utf8(body).map_err(|err| format!("not UTF-8: {err}"))?;
    let mut assembly = Assembly::default();
    match assembly.take(text, &mut |_| {}) {
        Ok(()) if assembly.finished() => Ok(assembly.into_answer()),
        Ok(()) => Err(format!("no done:true in {}", start_of(text))),
        Err(Broken::Malformed(why)) => Err(why),
        Err(Broken::Failed(why)) => Err(format!("an error in place of the answer: {why}")),
    }
}

#[derive(Deserialize)]
struct Chunk {
    model: Option<String>,
    message: Option<ChunkMessage>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkMessage {
    content: Option<String>,
    tool_calls: Option<Vec<FunctionCall>>,
}

#[derive(Default)]
pub(crate) struct Assembly {
    answer: Answer,
    done: bool,
}

impl super::Assembly for Assembly {
    const FINAL_FRAME: &'static str = "a line with done:true";

    fn take(
        &mut self,
        frame: &str,
        on_text: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), Broken> {
        let chunk: Chunk = parse_frame(frame, "Ollama's chat answer")?;
        if let Some(error) = chunk.error {
            return Err(Broken::Failed(error_text(&error)));
        }
        let answer = &mut self.answer;
        if chunk.model.is_some() {
            answer.model = chunk.model;
        }
        if let Some(message) = chunk.message {
            if let Some(text) = message.content.filter(|t| !t.is_empty()) {
                answer.text.push_str(&text);
                on_text(text);
            }
            for call in message.tool_calls.unwrap_or_default() {
                let position = answer.tool_calls.len();
                answer.tool_calls.push(call.into_tool_call(position));
            }
        }
        if chunk.done {
            self.done = true;
            answer.stop = Some(match chunk.done_reason.as_deref() {
                None | Some("stop") => StopReason::Done,
                Some("length") => StopReason::Length,
                Some(other) => StopReason::Other(other.to_owned()),
            });
            answer.usage = Usage {
                input_tokens: chunk.prompt_eval_count.unwrap_or(0),
                output_tokens: chunk.eval_count.unwrap_or(0),
                cached_input_tokens: 0,
            };
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn into_answer(self) -> Answer {
        self.answer
    }
}
