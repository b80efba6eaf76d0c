//! muster-llm: one client for three LLM chat wire formats, so that whoever needs a model
//! (the agent, and later the server) describes a conversation once and names a [`Provider`].
//!
//! The formats, each as its provider documents it:
//! - **Ollama** `POST {url}/api/chat`: tools declared as `{type:"function", function:{…}}`,
//!   tool calls come back with their arguments as a JSON *object* and without ids, the stop
//!   signal is `done`/`done_reason`, usage is `prompt_eval_count`/`eval_count`; streaming is
//!   NDJSON with the usage on the final `done:true` line.
//! - **OpenAI-compatible** `POST {url}/chat/completions` (OpenAI, Groq, vLLM, llama.cpp,
//!   Ollama's own `/v1`): tool calls carry ids and their arguments as a JSON *string*, which
//!   may not parse ([`BadArguments`] keeps it); results go back as `role:"tool"` messages;
//!   `finish_reason` stops; streaming is SSE ending in `data: [DONE]`, with the usage only
//!   when asked for (`stream_options.include_usage`).
//! - **Anthropic** `POST {url}/v1/messages`: the system prompt at the top level, tool calls as
//!   `tool_use` content blocks, results as `tool_result` blocks in the next user message,
//!   `stop_reason`, a required `max_tokens`; streaming is SSE events from `message_start` to
//!   `message_stop`, tool input arriving as `input_json_delta` pieces.
//!
//! [`Client::chat`] sends one [`ChatRequest`] and returns one [`ChatResponse`];
//! [`Client::chat_stream`] does the same while handing each piece of text to a callback. Both
//! retry 429s, 5xx answers and failed connections up to [`Provider::max_retries`] times,
//! honouring `Retry-After`; everything else comes back as an [`LlmError`] that names the
//! provider, its format and the endpoint path, never the key.
//!
//! Modules: `provider` (where to send and how), `chat` (the conversation and the answer),
//! `client` (attempts, retries, reading answers and streams), `error`, `wire` (each format's
//! request and answer shapes), `retry` (`Retry-After` and backoff), `price` (what a call
//! cost). Everything public is re-exported here.
//!
//! Architecture Invariant: no server dependency. This crate speaks HTTP to LLM providers and
//! nothing else; it knows nothing of tasks, stores or the muster API.

mod chat;
mod client;
mod error;
mod price;
mod provider;
mod retry;
mod wire;

pub use chat::{
    BadArguments, ChatRequest, ChatResponse, Delta, Message, StopReason, Tool, ToolCall, Usage,
};
pub use client::Client;
pub use error::LlmError;
pub use price::Price;
pub use provider::{Api, Provider};
pub use retry::retry_after;
