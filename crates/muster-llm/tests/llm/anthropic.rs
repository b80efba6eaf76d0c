//! Anthropic's `/v1/messages`: what it answers (whole and as server-sent events), and the
//! shape of what it is sent (system at the top, tool results in a user message).

use muster_llm::{Api, ChatRequest, LlmError, Message, StopReason, Usage};
use serde_json::{Value, json};

use crate::fake::{FakeProvider, Reply};
use crate::{KEY, chat, greeting, provider, question_with_tools, streamed, tool_call};

fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-20260101",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": 6,
        },
    })
}

pub(crate) fn plain_answer() -> Reply {
    Reply::json(&message(
        json!([{"type": "text", "text": "Hello!"}]),
        "end_turn",
    ))
}

fn tool_use(id: &str, name: &str, input: Value) -> Value {
    json!({"type": "tool_use", "id": id, "name": name, "input": input})
}

/// One server-sent event, named as its data's `type`.
fn event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

fn message_start() -> String {
    event(json!({
        "type": "message_start",
        "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "content": [],
            "model": "claude-test-20260101", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 1000, "output_tokens": 1},
        },
    }))
}

fn text_block(index: usize, pieces: &[&str]) -> Vec<String> {
    let mut events = vec![event(json!({
        "type": "content_block_start", "index": index,
        "content_block": {"type": "text", "text": ""},
    }))];
    for piece in pieces {
        events.push(event(json!({
            "type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": piece},
        })));
    }
    events.push(event(json!({"type": "content_block_stop", "index": index})));
    events
}

fn tool_use_block(index: usize, id: &str, name: &str, pieces: &[&str]) -> Vec<String> {
    let mut events = vec![event(json!({
        "type": "content_block_start", "index": index,
        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}},
    }))];
    for piece in pieces {
        events.push(event(json!({
            "type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": piece},
        })));
    }
    events.push(event(json!({"type": "content_block_stop", "index": index})));
    events
}

fn message_end(stop_reason: &str) -> Vec<String> {
    vec![
        event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": 42},
        })),
        event(json!({"type": "message_stop"})),
    ]
}

pub(crate) fn plain_stream() -> Vec<String> {
    let mut events = vec![message_start()];
    events.extend(text_block(0, &["Hel", "lo!"]));
    events.extend(message_end("end_turn"));
    events
}

#[tokio::test]
async fn a_plain_answer_is_read_with_cached_usage_and_sent_in_anthropics_shape() {
    let fake = FakeProvider::start(plain_answer()).await;
    let answer = chat(&provider(Api::Anthropic, &fake), &greeting())
        .await
        .unwrap();
    assert_eq!(answer.text, "Hello!");
    assert_eq!(answer.stop, StopReason::Done);
    // The whole prompt: 12 uncached, 100 written to the cache, 2000 read from it.
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 2112,
            output_tokens: 6,
            cached_input_tokens: 2000
        }
    );
    assert_eq!(answer.model, "claude-test-20260101");

    let request = fake.only_request();
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.header("x-api-key"), Some(KEY));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        request.body,
        json!({
            "model": "test-model",
            "max_tokens": 64,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
            "temperature": 0.7,
        })
    );
}

#[tokio::test]
async fn max_tokens_is_always_sent() {
    let fake = FakeProvider::start(plain_answer()).await;
    chat(&provider(Api::Anthropic, &fake), &ChatRequest::default())
        .await
        .unwrap();
    let body = fake.only_request().body;
    assert_eq!(body["max_tokens"], 1024);
    assert!(body.get("system").is_none(), "{body}");
}

#[tokio::test]
async fn one_tool_call_is_read_and_tools_go_out_with_input_schemas() {
    let fake = FakeProvider::start(Reply::json(&message(
        json!([
            {"type": "text", "text": "Let me check."},
            tool_use("toolu_01", "get_weather", json!({"city": "Tokyo"})),
        ]),
        "tool_use",
    )))
    .await;
    let answer = chat(&provider(Api::Anthropic, &fake), &question_with_tools())
        .await
        .unwrap();
    assert_eq!(answer.text, "Let me check.");
    assert_eq!(answer.stop, StopReason::ToolCalls);
    assert_eq!(
        answer.tool_calls,
        vec![tool_call(
            "toolu_01",
            "get_weather",
            json!({"city": "Tokyo"})
        )]
    );
    assert_eq!(
        fake.only_request().body["tools"],
        json!([
            {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
            {
                "name": "get_time",
                "description": "The local time in a city.",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        ])
    );
}

#[tokio::test]
async fn two_tool_calls_in_a_whole_answer() {
    let fake = FakeProvider::start(Reply::json(&message(
        json!([
            tool_use("toolu_01", "get_weather", json!({"city": "Oslo"})),
            tool_use("toolu_02", "get_time", json!({"city": "Oslo"})),
        ]),
        "tool_use",
    )))
    .await;
    let answer = chat(&provider(Api::Anthropic, &fake), &question_with_tools())
        .await
        .unwrap();
    let ids: Vec<&str> = answer.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["toolu_01", "toolu_02"]);
    assert_eq!(answer.text, "");
}

#[tokio::test]
async fn a_stream_puts_together_text_and_two_tool_calls_from_their_pieces() {
    let mut events = vec![message_start()];
    events.extend(text_block(0, &["Let me ", "check."]));
    events.push(event(json!({"type": "ping"})));
    events.extend(tool_use_block(
        1,
        "toolu_01",
        "get_weather",
        &["", r#"{"ci"#, r#"ty": "Tokyo"}"#],
    ));
    // A tool without arguments sends no pieces.
    events.extend(tool_use_block(2, "toolu_02", "get_time", &[]));
    events.extend(message_end("tool_use"));
    let fake = FakeProvider::start(Reply::events(events)).await;
    let (answer, pieces) = streamed(&provider(Api::Anthropic, &fake), &question_with_tools()).await;
    let answer = answer.unwrap();
    assert_eq!(pieces, ["Let me ", "check."]);
    assert_eq!(answer.text, "Let me check.");
    assert_eq!(answer.stop, StopReason::ToolCalls);
    assert_eq!(
        answer.tool_calls,
        vec![
            tool_call("toolu_01", "get_weather", json!({"city": "Tokyo"})),
            tool_call("toolu_02", "get_time", json!({})),
        ]
    );
    // message_start's input and cache counts, message_delta's output count.
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 1025,
            output_tokens: 42,
            cached_input_tokens: 1000
        }
    );
    assert_eq!(answer.model, "claude-test-20260101");
    assert_eq!(fake.only_request().body["stream"], json!(true));
}

#[tokio::test]
async fn streamed_tool_input_that_does_not_parse_comes_back_as_bad_arguments() {
    let mut events = vec![message_start()];
    events.extend(tool_use_block(
        0,
        "toolu_01",
        "get_weather",
        &[r#"{"city": "#],
    ));
    events.extend(message_end("tool_use"));
    let fake = FakeProvider::start(Reply::events(events)).await;
    let (answer, _) = streamed(&provider(Api::Anthropic, &fake), &question_with_tools()).await;
    let answer = answer.unwrap();
    let bad = answer.tool_calls[0].arguments.as_ref().unwrap_err();
    assert_eq!(bad.raw, r#"{"city": "#);
}

#[tokio::test]
async fn a_stream_without_message_stop_is_cut() {
    let mut events = vec![message_start()];
    events.extend(text_block(0, &["Hel", "lo"]));
    let fake = FakeProvider::start(Reply::events(events.clone())).await;
    let (answer, pieces) = streamed(&provider(Api::Anthropic, &fake), &greeting()).await;
    assert_eq!(pieces, ["Hel", "lo"]);
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert_eq!(
        why,
        "fake (anthropic, POST /v1/messages): the stream ended before its final event \
         (event: message_stop)"
    );

    // An error event in place of the rest, as when the API is overloaded mid-answer.
    events.push(event(json!({
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    })));
    fake.then(Reply::events(events));
    let (answer, _) = streamed(&provider(Api::Anthropic, &fake), &greeting()).await;
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert!(why.ends_with("overloaded_error: Overloaded"), "{why}");
}

#[tokio::test]
async fn a_follow_up_turn_sends_tool_uses_and_their_results_in_one_user_message() {
    let fake = FakeProvider::start(plain_answer()).await;
    let mut request = question_with_tools();
    request.messages.extend([
        Message::Assistant {
            text: "Let me check.".to_owned(),
            tool_calls: vec![
                tool_call("toolu_01", "get_weather", json!({"city": "Tokyo"})),
                tool_call("toolu_02", "get_time", json!({"city": "Tokyo"})),
            ],
        },
        Message::ToolResult {
            call_id: "toolu_01".to_owned(),
            name: "get_weather".to_owned(),
            content: "Sunny".to_owned(),
            is_error: false,
        },
        Message::ToolResult {
            call_id: "toolu_02".to_owned(),
            name: "get_time".to_owned(),
            content: "no clock here".to_owned(),
            is_error: true,
        },
        Message::User("And tomorrow?".to_owned()),
    ]);
    chat(&provider(Api::Anthropic, &fake), &request)
        .await
        .unwrap();
    let body = fake.only_request().body;
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "Weather and time in Tokyo?"},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                tool_use("toolu_01", "get_weather", json!({"city": "Tokyo"})),
                tool_use("toolu_02", "get_time", json!({"city": "Tokyo"})),
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "no clock here",
                 "is_error": true},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ])
    );
}

#[tokio::test]
async fn stop_reasons_map_to_their_meaning() {
    let fake = FakeProvider::start(plain_answer()).await;
    let provider = provider(Api::Anthropic, &fake);
    for (stop_reason, expected) in [
        ("stop_sequence", StopReason::Done),
        ("max_tokens", StopReason::Length),
        ("refusal", StopReason::Refused),
        ("pause_turn", StopReason::Other("pause_turn".to_owned())),
    ] {
        fake.then(Reply::json(&message(
            json!([{"type": "text", "text": "Hel"}]),
            stop_reason,
        )));
        let answer = chat(&provider, &greeting()).await.unwrap();
        assert_eq!(answer.stop, expected, "{stop_reason}");
    }
}
