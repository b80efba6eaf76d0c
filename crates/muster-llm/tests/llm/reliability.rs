//! What every format shares, checked against each: retries on 429 (honouring `Retry-After`),
//! on 5xx and on refused connections; no retry otherwise; timeouts; a 2xx that is not the
//! format; and that the key shows in no error and no debug output.
//!
//! Each check is one async function of the format; `for_each_api!` makes a test of it per
//! format (`retry_after_is_honoured::ollama`, …), so the three run side by side.

use std::time::Duration;

use muster_llm::{Api, ChatRequest, LlmError, Provider};
use tokio::net::TcpListener;

use crate::fake::{FakeProvider, Reply, StreamEnd};
use crate::{
    KEY, chat, greeting, path, plain_answer, plain_stream, plain_stream_pieces, provider,
    stream_of, streamed,
};

macro_rules! for_each_api {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                use muster_llm::Api;

                #[tokio::test]
                async fn ollama() {
                    super::$check(Api::Ollama).await;
                }

                #[tokio::test]
                async fn openai() {
                    super::$check(Api::OpenAi).await;
                }

                #[tokio::test]
                async fn anthropic() {
                    super::$check(Api::Anthropic).await;
                }
            }
        )*
    };
}

for_each_api!(
    retry_after_is_honoured,
    rate_limited_once_the_retries_are_spent,
    a_wait_longer_than_a_call_makes_returns_at_once,
    a_server_error_is_retried,
    a_client_error_is_not_retried_and_shows_no_key,
    a_redirect_is_not_followed,
    a_slow_answer_times_out,
    a_stalled_stream_times_out,
    the_final_event_ends_a_stream_though_the_connection_stays_open,
    a_refused_connection_is_retried_then_unreachable,
    a_success_that_is_not_the_format_is_malformed,
);

/// How long a test waits for a call that its own timeout should end: a timeout that does not
/// fire fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(30);

fn rate_limited(retry_after: &str) -> Reply {
    Reply::status(429, r#"{"error":{"message":"Rate limit reached"}}"#)
        .with_header("retry-after", retry_after)
}

/// Every error text and debug output of `result` and the provider, checked for the key.
fn assert_no_key<T: std::fmt::Debug>(result: &Result<T, LlmError>, provider: &Provider) {
    let shown = match result {
        Ok(answer) => format!("{answer:?}"),
        Err(err) => format!("{err} {err:?}"),
    };
    assert!(!shown.contains(KEY), "the key shows: {shown}");
    let debug = format!("{provider:?}");
    assert!(!debug.contains(KEY), "the key shows: {debug}");
}

/// Asks `api`'s fake, which answers `first` and then a plain answer, and checks that the
/// answer came on the second attempt; returns the fake for more.
async fn answered_on_the_second_attempt(api: Api, first: Reply) -> FakeProvider {
    let fake = FakeProvider::start(plain_answer(api)).await;
    fake.then(first);
    let answer = chat(&provider(api, &fake), &greeting()).await.unwrap();
    assert_eq!(answer.attempts, 2);
    assert_eq!(fake.requests().len(), 2);
    fake
}

async fn retry_after_is_honoured(api: Api) {
    answered_on_the_second_attempt(api, rate_limited("1")).await;
}

async fn rate_limited_once_the_retries_are_spent(api: Api) {
    let fake = FakeProvider::start(rate_limited("0")).await;
    let provider = provider(api, &fake);
    let result = chat(&provider, &greeting()).await;
    let Err(LlmError::RateLimited {
        retry_after,
        body,
        endpoint,
    }) = &result
    else {
        panic!("expected rate limited: {result:?}");
    };
    assert_eq!(*retry_after, Some(Duration::ZERO));
    assert_eq!(body, r#"{"error":{"message":"Rate limit reached"}}"#);
    assert_eq!(endpoint, &format!("fake ({api}, POST {})", path(api)));
    assert_eq!(fake.requests().len(), 1 + provider.max_retries as usize);
    assert_no_key(&result, &provider);
}

async fn a_wait_longer_than_a_call_makes_returns_at_once(api: Api) {
    let fake = FakeProvider::start(rate_limited("3600")).await;
    let result = chat(&provider(api, &fake), &greeting()).await;
    let Err(LlmError::RateLimited { retry_after, .. }) = result else {
        panic!("expected rate limited: {result:?}");
    };
    assert_eq!(retry_after, Some(Duration::from_secs(3600)));
    assert_eq!(fake.requests().len(), 1);
}

async fn a_server_error_is_retried(api: Api) {
    let fake = answered_on_the_second_attempt(api, Reply::status(500, "internal error")).await;

    // Retried the same way before a stream starts.
    fake.then(Reply::status(503, "").with_header("retry-after", "0"))
        .then(plain_stream(api));
    let (answer, pieces) = streamed(&provider(api, &fake), &greeting()).await;
    let answer = answer.unwrap();
    assert_eq!(answer.attempts, 2);
    assert_eq!(answer.text, "Hello!");
    assert_eq!(pieces.concat(), "Hello!");
    assert_eq!(fake.requests().len(), 4);
}

async fn a_client_error_is_not_retried_and_shows_no_key(api: Api) {
    // A provider that echoes the key it was sent, as some do in their error text.
    let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#);
    let fake = FakeProvider::start(Reply::status(401, &echo)).await;
    let provider = provider(api, &fake);
    let result = chat(&provider, &greeting()).await;
    let Err(LlmError::Http { status, body, .. }) = &result else {
        panic!("expected an HTTP error: {result:?}");
    };
    assert_eq!(*status, 401);
    assert_eq!(
        body,
        r#"{"error":{"message":"Incorrect API key provided: [redacted]"}}"#
    );
    assert_eq!(
        result.as_ref().unwrap_err().to_string(),
        format!(
            "fake ({api}, POST {}) answered 401: {{\"error\":{{\"message\":\"Incorrect API key \
             provided: [redacted]\"}}}}",
            path(api)
        )
    );
    assert_eq!(fake.requests().len(), 1);
    assert_no_key(&result, &provider);
}

async fn a_redirect_is_not_followed(api: Api) {
    let fake = FakeProvider::start(plain_answer(api)).await;
    fake.then(Reply::status(307, "").with_header("location", &format!("{}/elsewhere", fake.url)));
    let result = chat(&provider(api, &fake), &greeting()).await;
    let Err(LlmError::Http { status: 307, .. }) = &result else {
        panic!("expected the redirect as an error: {result:?}");
    };
    assert_eq!(fake.requests().len(), 1);
}

async fn a_slow_answer_times_out(api: Api) {
    let fake = FakeProvider::start(Reply::Hang).await;
    let provider = Provider {
        timeout: Duration::from_millis(300),
        ..provider(api, &fake)
    };
    let result = tokio::time::timeout(DEADLINE, chat(&provider, &greeting()))
        .await
        .expect("the client's own timeout ends the call");
    let Err(LlmError::Timeout { endpoint, after }) = &result else {
        panic!("expected a timeout: {result:?}");
    };
    assert_eq!(*after, Duration::from_millis(300));
    assert!(endpoint.starts_with("fake ("), "{endpoint}");
    // A timeout is not retried.
    assert_eq!(fake.requests().len(), 1);
    assert_no_key(&result, &provider);
}

async fn a_stalled_stream_times_out(api: Api) {
    let mut pieces = plain_stream_pieces(api);
    pieces.truncate(2);
    let fake = FakeProvider::start(stream_of(api, pieces).ending(StreamEnd::Stall)).await;
    let provider = Provider {
        timeout: Duration::from_millis(500),
        ..provider(api, &fake)
    };
    let (answer, _) = tokio::time::timeout(DEADLINE, streamed(&provider, &greeting()))
        .await
        .expect("the client's own timeout ends the stream");
    assert!(
        matches!(answer, Err(LlmError::Timeout { .. })),
        "expected a timeout: {answer:?}"
    );
}

async fn the_final_event_ends_a_stream_though_the_connection_stays_open(api: Api) {
    let fake = FakeProvider::start(plain_stream(api).ending(StreamEnd::Stall)).await;
    let provider = Provider {
        timeout: Duration::from_secs(5),
        ..provider(api, &fake)
    };
    let (answer, _) = tokio::time::timeout(DEADLINE, streamed(&provider, &greeting()))
        .await
        .expect("the client's own timeout ends the stream");
    assert_eq!(answer.unwrap().text, "Hello!");
}

async fn a_refused_connection_is_retried_then_unreachable(api: Api) {
    // A port that was free a moment ago and has nobody listening.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let mut provider = Provider::new("gone", api, format!("http://{address}"), "test-model");
    provider.key = Some(KEY.to_owned());
    provider.max_retries = 1;
    let result = chat(&provider, &ChatRequest::default()).await;
    let Err(LlmError::Unreachable(why)) = &result else {
        panic!("expected unreachable: {result:?}");
    };
    assert!(why.starts_with("could not connect to gone ("), "{why}");
    assert!(!why.contains("127.0.0.1"), "no URL in the text: {why}");
    assert_no_key(&result, &provider);
}

async fn a_success_that_is_not_the_format_is_malformed(api: Api) {
    let fake = FakeProvider::start(Reply::status(200, "<html>Welcome to nginx</html>")).await;
    let result = chat(&provider(api, &fake), &greeting()).await;
    let Err(LlmError::Malformed(why)) = &result else {
        panic!("expected malformed: {result:?}");
    };
    assert!(
        why.starts_with(&format!(
            "fake ({api}, POST {}) answered in a shape",
            path(api)
        )),
        "{why}"
    );
    assert!(why.contains("<html>Welcome to nginx</html>"), "{why}");
    assert_eq!(fake.requests().len(), 1);
}
