//! Ollama's `/api/chat`: what it answers (whole and as NDJSON), and the shape of what it is
//! sent.

use muster_llm::{Api, ChatRequest, LlmError, Message, StopReason, Usage};
use serde_json::{Value, json};

use crate::fake::{FakeProvider, Reply, StreamEnd};
use crate::{KEY, chat, greeting, provider, question_with_tools, streamed, tool_call};

fn done(message: Value, done_reason: &str) -> Value {
    json!({
        "model": "llama3.2",
        "created_at": "2026-11-22T10:00:00Z",
        "message": message,
        "done_reason": done_reason,
        "done": true,
        "total_duration": 5_191_566_416u64,
        "load_duration": 2_154_458,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 383_809_000,
        "eval_count": 298,
        "eval_duration": 4_799_921_000u64,
    })
}

fn piece(content: &str) -> Value {
    json!({
        "model": "llama3.2",
        "created_at": "2026-11-22T10:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": false,
    })
}

pub(crate) fn plain_answer() -> Reply {
    Reply::json(&done(
        json!({"role": "assistant", "content": "Hello! How can I help?"}),
        "stop",
    ))
}

pub(crate) fn plain_stream() -> Vec<String> {
    [
        piece("Hel"),
        piece("lo!"),
        done(json!({"role": "assistant", "content": ""}), "stop"),
    ]
    .iter()
    .map(|line| format!("{line}\n"))
    .collect()
}

fn weather_call(city: &str) -> Value {
    json!({"function": {"name": "get_weather", "arguments": {"city": city}}})
}

#[tokio::test]
async fn a_plain_answer_is_read_with_its_usage_and_sent_in_ollamas_shape() {
    let fake = FakeProvider::start(plain_answer()).await;
    let answer = chat(&provider(Api::Ollama, &fake), &greeting())
        .await
        .unwrap();
    assert_eq!(answer.text, "Hello! How can I help?");
    assert_eq!(answer.stop, StopReason::Done);
    assert!(answer.tool_calls.is_empty());
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 26,
            output_tokens: 298,
            cached_input_tokens: 0
        }
    );
    assert_eq!(answer.model, "llama3.2");
    assert_eq!(answer.attempts, 1);

    let request = fake.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/chat");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        request.body,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"},
            ],
            "stream": false,
            "options": {"num_predict": 64, "temperature": 0.7},
        })
    );
}

#[tokio::test]
async fn without_a_key_no_auth_header_is_sent() {
    let fake = FakeProvider::start(plain_answer()).await;
    let provider = muster_llm::Provider {
        key: None,
        ..provider(Api::Ollama, &fake)
    };
    chat(&provider, &ChatRequest::default()).await.unwrap();
    assert_eq!(fake.only_request().header("authorization"), None);
}

#[tokio::test]
async fn one_tool_call_comes_back_with_a_made_up_id_and_tools_go_out_as_functions() {
    let fake = FakeProvider::start(Reply::json(&done(
        json!({"role": "assistant", "content": "", "tool_calls": [weather_call("Tokyo")]}),
        "stop",
    )))
    .await;
    let answer = chat(&provider(Api::Ollama, &fake), &question_with_tools())
        .await
        .unwrap();
    // Ollama says `stop`; what the caller must do is run the call.
    assert_eq!(answer.stop, StopReason::ToolCalls);
    assert_eq!(
        answer.tool_calls,
        vec![tool_call("call_0", "get_weather", json!({"city": "Tokyo"}))]
    );
    let body = fake.only_request().body;
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }},
            {"type": "function", "function": {
                "name": "get_time",
                "description": "The local time in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }},
        ])
    );
    // No limits asked for, none sent.
    assert!(body.get("options").is_none(), "{body}");
}

#[tokio::test]
async fn two_tool_calls_in_one_answer_whole_and_streamed() {
    // Newer builds number the calls (`function.index`) and may give ids.
    let calls = json!([
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}},
        {"id": "call_x7", "function": {"index": 1, "name": "get_time", "arguments": {"city": "Tokyo"}}},
    ]);
    let expected = vec![
        tool_call("call_0", "get_weather", json!({"city": "Tokyo"})),
        tool_call("call_x7", "get_time", json!({"city": "Tokyo"})),
    ];
    let fake = FakeProvider::start(Reply::json(&done(
        json!({"role": "assistant", "content": "", "tool_calls": calls}),
        "stop",
    )))
    .await;
    let provider = provider(Api::Ollama, &fake);
    let answer = chat(&provider, &question_with_tools()).await.unwrap();
    assert_eq!(answer.tool_calls, expected);

    fake.then(Reply::lines(&[
        piece("Checking."),
        json!({
            "model": "llama3.2",
            "message": {"role": "assistant", "content": "", "tool_calls": calls},
            "done": false,
        }),
        done(json!({"role": "assistant", "content": ""}), "stop"),
    ]));
    let (answer, pieces) = streamed(&provider, &question_with_tools()).await;
    let answer = answer.unwrap();
    assert_eq!(pieces, ["Checking."]);
    assert_eq!(answer.text, "Checking.");
    assert_eq!(answer.tool_calls, expected);
    assert_eq!(answer.stop, StopReason::ToolCalls);
}

#[tokio::test]
async fn a_stream_hands_on_each_piece_and_ends_with_the_usage() {
    let fake = FakeProvider::start(Reply::lines(&[
        piece("Hel"),
        piece("lo"),
        piece(""),
        piece("!"),
        done(json!({"role": "assistant", "content": ""}), "length"),
    ]))
    .await;
    let (answer, pieces) = streamed(&provider(Api::Ollama, &fake), &greeting()).await;
    let answer = answer.unwrap();
    assert_eq!(pieces, ["Hel", "lo", "!"]);
    assert_eq!(answer.text, "Hello!");
    assert_eq!(answer.stop, StopReason::Length);
    assert_eq!(answer.usage.input_tokens, 26);
    assert_eq!(answer.usage.output_tokens, 298);
    assert_eq!(fake.only_request().body["stream"], json!(true));
}

#[tokio::test]
async fn lines_split_across_pieces_blank_lines_and_a_last_line_without_newline_are_read() {
    let second = format!("{}\n", piece("lo!"));
    let (head, tail) = second.split_at(20);
    let fake = FakeProvider::start(Reply::stream(
        "application/x-ndjson",
        vec![
            format!("{}\n\n", piece("Hel")),
            head.to_owned(),
            tail.to_owned(),
            done(json!({"role": "assistant", "content": ""}), "stop").to_string(),
        ],
    ))
    .await;
    let (answer, pieces) = streamed(&provider(Api::Ollama, &fake), &greeting()).await;
    assert_eq!(pieces, ["Hel", "lo!"]);
    assert_eq!(answer.unwrap().text, "Hello!");
}

#[tokio::test]
async fn a_stream_without_its_done_line_is_cut() {
    let fake = FakeProvider::start(Reply::lines(&[piece("Hel"), piece("lo")])).await;
    let (answer, pieces) = streamed(&provider(Api::Ollama, &fake), &greeting()).await;
    assert_eq!(pieces, ["Hel", "lo"]);
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert_eq!(
        why,
        "fake (ollama, POST /api/chat): the stream ended before its final event (a line with \
         done:true)"
    );

    // An error line in place of the rest, as Ollama sends when a model fails mid-answer.
    fake.then(Reply::lines(&[
        piece("Hel"),
        json!({"error": "model runner crashed"}),
    ]));
    let (answer, _) = streamed(&provider(Api::Ollama, &fake), &greeting()).await;
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert!(why.ends_with(": model runner crashed"), "{why}");

    // A connection that breaks mid-stream.
    fake.then(Reply::lines(&[piece("Hel")]).ending(StreamEnd::Break));
    let (answer, pieces) = streamed(&provider(Api::Ollama, &fake), &greeting()).await;
    assert_eq!(pieces, ["Hel"]);
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert!(
        why.starts_with(
            "fake (ollama, POST /api/chat): the connection broke while the answer was read: "
        ),
        "{why}"
    );
}

#[tokio::test]
async fn a_follow_up_turn_sends_tool_results_as_tool_messages() {
    let fake = FakeProvider::start(plain_answer()).await;
    let mut request = question_with_tools();
    request.messages.extend([
        Message::Assistant {
            text: String::new(),
            tool_calls: vec![tool_call("call_0", "get_weather", json!({"city": "Tokyo"}))],
        },
        Message::ToolResult {
            call_id: "call_0".to_owned(),
            name: "get_weather".to_owned(),
            content: "Sunny, 21 °C".to_owned(),
            is_error: false,
        },
    ]);
    chat(&provider(Api::Ollama, &fake), &request).await.unwrap();
    assert_eq!(
        fake.only_request().body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather and time in Tokyo?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            ]},
            {"role": "tool", "content": "Sunny, 21 °C", "tool_name": "get_weather"},
        ])
    );
}
