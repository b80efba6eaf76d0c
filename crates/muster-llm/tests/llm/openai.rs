//! The OpenAI-compatible `/chat/completions`: what it answers (whole and as server-sent
//! events), arguments that are not JSON, and the shape of what it is sent.

use muster_llm::{Api, BadArguments, LlmError, Message, StopReason, ToolCall, Usage};
use serde_json::{Value, json};

use crate::fake::{FakeProvider, Reply, StreamEnd};
use crate::{KEY, chat, greeting, provider, question_with_tools, streamed, tool_call};

fn completion(message: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 9,
            "total_tokens": 1209,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    })
}

pub(crate) fn plain_answer() -> Reply {
    Reply::json(&completion(
        json!({"role": "assistant", "content": "Hello!", "refusal": null}),
        "stop",
    ))
}

fn call(id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
}

fn tool_calls(calls: Vec<Value>) -> Reply {
    Reply::json(&completion(
        json!({"role": "assistant", "content": null, "tool_calls": calls}),
        "tool_calls",
    ))
}

/// One `chat.completion.chunk` event.
fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": null,
    });
    format!("data: {chunk}\n\n")
}

/// The last chunk, asked for with `include_usage`: no choices, only the usage.
fn usage_chunk() -> String {
    let chunk = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {
            "prompt_tokens": 300,
            "completion_tokens": 40,
            "total_tokens": 340,
            "prompt_tokens_details": {"cached_tokens": 256},
        },
    });
    format!("data: {chunk}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

pub(crate) fn plain_stream() -> Vec<String> {
    vec![
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Hel"}), None),
        chunk(json!({"content": "lo!"}), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(),
        DONE.to_owned(),
    ]
}

#[tokio::test]
async fn a_plain_answer_is_read_with_cached_usage_and_sent_in_openais_shape() {
    let fake = FakeProvider::start(plain_answer()).await;
    let answer = chat(&provider(Api::OpenAi, &fake), &greeting())
        .await
        .unwrap();
    assert_eq!(answer.text, "Hello!");
    assert_eq!(answer.stop, StopReason::Done);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 1200,
            output_tokens: 9,
            cached_input_tokens: 1024
        }
    );
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(answer.attempts, 1);

    let request = fake.only_request();
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(request.header("x-api-key"), None);
    assert_eq!(
        request.body,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"},
            ],
            "max_tokens": 64,
            "temperature": 0.7,
        })
    );
}

#[tokio::test]
async fn one_tool_call_is_read_and_tools_go_out_as_functions() {
    let fake = FakeProvider::start(tool_calls(vec![call(
        "call_abc",
        "get_weather",
        r#"{"city":"Tokyo"}"#,
    )]))
    .await;
    let answer = chat(&provider(Api::OpenAi, &fake), &question_with_tools())
        .await
        .unwrap();
    assert_eq!(answer.stop, StopReason::ToolCalls);
    assert_eq!(answer.text, "");
    assert_eq!(
        answer.tool_calls,
        vec![tool_call(
            "call_abc",
            "get_weather",
            json!({"city": "Tokyo"})
        )]
    );
    let body = fake.only_request().body;
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        body["tools"][1]["function"]["parameters"]["properties"]["city"],
        json!({"type": "string"})
    );
    assert!(body.get("stream").is_none(), "{body}");
}

#[tokio::test]
async fn two_tool_calls_streamed_in_pieces_by_index_are_put_together() {
    let piece = |index: u32, head: Option<(&str, &str)>, arguments: &str| {
        let mut function = json!({"arguments": arguments});
        let mut call = json!({"index": index});
        if let Some((id, name)) = head {
            call["id"] = id.into();
            call["type"] = "function".into();
            function["name"] = name.into();
        }
        call["function"] = function;
        chunk(json!({"tool_calls": [call]}), None)
    };
    let fake = FakeProvider::start(Reply::events(vec![
        chunk(json!({"role": "assistant", "content": null}), None),
        piece(0, Some(("call_w", "get_weather")), ""),
        piece(0, None, r#"{"ci"#),
        piece(1, Some(("call_t", "get_time")), r#"{"city""#),
        piece(0, None, r#"ty":"Tokyo"}"#),
        piece(1, None, r#":"Tokyo"}"#),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(),
        DONE.to_owned(),
    ]))
    .await;
    let (answer, pieces) = streamed(&provider(Api::OpenAi, &fake), &question_with_tools()).await;
    let answer = answer.unwrap();
    assert!(pieces.is_empty(), "{pieces:?}");
    assert_eq!(answer.stop, StopReason::ToolCalls);
    assert_eq!(
        answer.tool_calls,
        vec![
            tool_call("call_w", "get_weather", json!({"city": "Tokyo"})),
            tool_call("call_t", "get_time", json!({"city": "Tokyo"})),
        ]
    );
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 300,
            output_tokens: 40,
            cached_input_tokens: 256
        }
    );
    let body = fake.only_request().body;
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn two_tool_calls_in_a_whole_answer() {
    let fake = FakeProvider::start(tool_calls(vec![
        call("call_1", "get_weather", r#"{"city":"Oslo"}"#),
        call("call_2", "get_time", r#"{"city":"Oslo"}"#),
    ]))
    .await;
    let answer = chat(&provider(Api::OpenAi, &fake), &question_with_tools())
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = answer
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(names, [("call_1", "get_weather"), ("call_2", "get_time")]);
}

#[tokio::test]
async fn arguments_that_are_not_a_json_object_come_back_as_bad_arguments() {
    let fake = FakeProvider::start(tool_calls(vec![
        call("call_1", "get_weather", r#"{"city": "Tok"#),
        call("call_2", "get_time", r#"["Tokyo"]"#),
        call("call_3", "get_time", r#"{"city":"Tokyo"}"#),
    ]))
    .await;
    let provider = provider(Api::OpenAi, &fake);
    let answer = chat(&provider, &question_with_tools()).await.unwrap();
    let arguments: Vec<_> = answer.tool_calls.iter().map(|c| &c.arguments).collect();
    let Err(BadArguments { raw, error }) = arguments[0] else {
        panic!("expected bad arguments: {arguments:?}");
    };
    assert_eq!(raw, r#"{"city": "Tok"#);
    assert!(error.starts_with("not JSON"), "{error}");
    let Err(BadArguments { raw, error }) = arguments[1] else {
        panic!("expected bad arguments: {arguments:?}");
    };
    assert_eq!(raw, r#"["Tokyo"]"#);
    assert_eq!(error, "expected an object, got an array");
    assert_eq!(arguments[2], &Ok(json!({"city": "Tokyo"})));

    // The same in a stream.
    fake.then(Reply::events(vec![
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": "}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        DONE.to_owned(),
    ]));
    let (answer, _) = streamed(&provider, &question_with_tools()).await;
    let call = &answer.unwrap().tool_calls[0];
    assert_eq!(call.arguments.as_ref().unwrap_err().raw, r#"{"city": "#);
}

#[tokio::test]
async fn a_stream_hands_on_each_piece_of_text() {
    let fake = FakeProvider::start(Reply::events(plain_stream())).await;
    let (answer, pieces) = streamed(&provider(Api::OpenAi, &fake), &greeting()).await;
    let answer = answer.unwrap();
    assert_eq!(pieces, ["Hel", "lo!"]);
    assert_eq!(answer.text, "Hello!");
    assert_eq!(answer.stop, StopReason::Done);
    assert_eq!(answer.usage.input_tokens, 300);
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
}

#[tokio::test]
async fn a_stream_without_done_is_cut() {
    let mut events = plain_stream();
    events.pop();
    let fake = FakeProvider::start(Reply::events(events)).await;
    let (answer, pieces) = streamed(&provider(Api::OpenAi, &fake), &greeting()).await;
    assert_eq!(pieces, ["Hel", "lo!"]);
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert_eq!(
        why,
        "fake (openai, POST /v1/chat/completions): the stream ended before its final event \
         (data: [DONE])"
    );

    fake.then(Reply::events(plain_stream()[..2].to_vec()).ending(StreamEnd::Break));
    let (answer, _) = streamed(&provider(Api::OpenAi, &fake), &greeting()).await;
    assert!(matches!(answer, Err(LlmError::Cut(_))), "{answer:?}");

    // An error object in place of the rest of the stream.
    let mut events = plain_stream()[..2].to_vec();
    events.push(format!(
        "data: {}\n\n",
        json!({"error": {"message": "The server had an error", "type": "server_error"}})
    ));
    fake.then(Reply::events(events));
    let (answer, _) = streamed(&provider(Api::OpenAi, &fake), &greeting()).await;
    let Err(LlmError::Cut(why)) = answer else {
        panic!("expected a cut stream: {answer:?}");
    };
    assert!(
        why.ends_with("server_error: The server had an error"),
        "{why}"
    );
}

#[tokio::test]
async fn a_follow_up_turn_echoes_the_calls_and_sends_results_by_call_id() {
    let fake = FakeProvider::start(plain_answer()).await;
    let mut request = question_with_tools();
    request.messages.extend([
        Message::Assistant {
            text: String::new(),
            tool_calls: vec![
                tool_call("call_w", "get_weather", json!({"city": "Tokyo"})),
                ToolCall {
                    id: "call_t".to_owned(),
                    name: "get_time".to_owned(),
                    arguments: Err(BadArguments {
                        raw: r#"{"city": "#.to_owned(),
                        error: "not JSON".to_owned(),
                    }),
                },
            ],
        },
        Message::ToolResult {
            call_id: "call_w".to_owned(),
            name: "get_weather".to_owned(),
            content: "Sunny".to_owned(),
            is_error: false,
        },
        Message::ToolResult {
            call_id: "call_t".to_owned(),
            name: "get_time".to_owned(),
            content: "the arguments are not JSON".to_owned(),
            is_error: true,
        },
        Message::Assistant {
            text: "Sunny; the time I could not get.".to_owned(),
            tool_calls: vec![],
        },
        Message::User("Thanks".to_owned()),
    ]);
    chat(&provider(Api::OpenAi, &fake), &request).await.unwrap();
    assert_eq!(
        fake.only_request().body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather and time in Tokyo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_w", "type": "function",
                 "function": {"name": "get_weather", "arguments": r#"{"city":"Tokyo"}"#}},
                {"id": "call_t", "type": "function",
                 "function": {"name": "get_time", "arguments": r#"{"city": "#}},
            ]},
            {"role": "tool", "tool_call_id": "call_w", "content": "Sunny"},
            {"role": "tool", "tool_call_id": "call_t", "content": "the arguments are not JSON"},
            {"role": "assistant", "content": "Sunny; the time I could not get."},
            {"role": "user", "content": "Thanks"},
        ])
    );
}

#[tokio::test]
async fn stop_reasons_map_to_their_meaning() {
    let fake = FakeProvider::start(plain_answer()).await;
    let provider = provider(Api::OpenAi, &fake);
    for (finish_reason, expected) in [
        ("length", StopReason::Length),
        ("content_filter", StopReason::Refused),
        (
            "something_new",
            StopReason::Other("something_new".to_owned()),
        ),
    ] {
        fake.then(Reply::json(&completion(
            json!({"role": "assistant", "content": "Hel"}),
            finish_reason,
        )));
        let answer = chat(&provider, &greeting()).await.unwrap();
        assert_eq!(answer.stop, expected, "{finish_reason}");
    }
    // A refusal is the text when there is no other.
    fake.then(Reply::json(&completion(
        json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
        "stop",
    )));
    let answer = chat(&provider, &greeting()).await.unwrap();
    assert_eq!(answer.stop, StopReason::Refused);
    assert_eq!(answer.text, "I can't help with that.");
}
