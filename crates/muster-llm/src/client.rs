//! [`Client`]: sends a chat in a provider's format, tries again when that can help, reads the
//! answer whole or as a stream, and words every failure without the key.
//!
//! Retries happen only before an answer's body is read: once a 2xx has begun, a broken or
//! short answer is returned as it is ([`LlmError::Cut`]), because a stream's text has already
//! been handed on and a repeated request would be paid for again.

use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::Utc;
use eventsource_stream::{EventStream, EventStreamError};
use futures::{Stream, StreamExt, stream};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use url::Url;

use crate::chat::{ChatRequest, ChatResponse, Delta};
use crate::error::{LlmError, cut};
use crate::provider::{Api, Provider};
use crate::retry;
use crate::wire::{self, Answer, Assembly, Delivery, anthropic, ollama, openai};

/// The limit on connecting, within the provider's timeout for the whole attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer is read: far more than any model writes in one turn, bounded so a
/// broken or hostile server cannot make the caller buffer without limit.
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;
/// How much of an error answer is read, and how many characters of it an error keeps.
const ERROR_READ_LIMIT: usize = 64 * 1024;
const ERROR_KEPT_CHARS: usize = 500;
/// Keys shorter than this are not blanked out of answers: blanking every occurrence of a
/// short word would garble the text, and such a key guards little.
const REDACTED_KEY_MIN_CHARS: usize = 8;

/// Sends chats to any [`Provider`]. Cheap to clone; one serves every provider and call.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client over rustls with a `muster/<version>` user agent, following no redirects:
    /// a redirect could carry the key to another server, so a 3xx is an error instead.
    pub fn new() -> Client {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("muster/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("the HTTP client builds: rustls and fixed settings");
        Client { http }
    }

    /// Sends `request` to `provider` and returns the whole answer.
    pub async fn chat(
        &self,
        provider: &Provider,
        request: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let call = Call::new(provider)?;
        let body = wire::request_body(provider, request, Delivery::Whole);
        let (response, attempts) = self.send(&call, &body).await?;
        let bytes = call.read_whole(response).await?;
        let answer = wire::parse_whole(provider.api, &bytes).map_err(|why| call.malformed(&why))?;
        Ok(answer.into_response(provider, started.elapsed(), attempts))
    }

    /// Sends `request` to `provider` asking for a stream, hands each piece of text to
    /// `on_delta` as it arrives, and returns the answer put together from the stream (tool
    /// calls and usage included). A stream that ends before its final event is
    /// [`LlmError::Cut`], whatever was handed on before.
    pub async fn chat_stream(
        &self,
        provider: &Provider,
        request: &ChatRequest,
        mut on_delta: impl FnMut(Delta) + Send,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let call = Call::new(provider)?;
        let body = wire::request_body(provider, request, Delivery::Stream);
        let (response, attempts) = self.send(&call, &body).await?;
        let mut on_text = |text: String| on_delta(Delta::Text(text));
        let answer = match provider.api {
            Api::Ollama => {
                call.read_stream::<ollama::Assembly>(lines(response), &mut on_text)
                    .await?
            }
            Api::OpenAi => {
                call.read_stream::<openai::Assembly>(events(response), &mut on_text)
                    .await?
            }
            Api::Anthropic => {
                call.read_stream::<anthropic::Assembly>(events(response), &mut on_text)
                    .await?
            }
        };
        Ok(answer.into_response(provider, started.elapsed(), attempts))
    }

    /// Sends the request until a 2xx answer starts, retrying 429s, 5xx answers and failed
    /// connections; returns the answer and the number of attempts it took.
    async fn send(
        &self,
        call: &Call<'_>,
        body: &Value,
    ) -> Result<(reqwest::Response, u32), LlmError> {
        let provider = call.provider;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, asked_wait) = match self.request(call, body).send().await {
                Ok(response) if response.status().is_success() => {
                    return Ok((response, attempt));
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let asked_wait = retry::asked_wait(response.headers(), Utc::now());
                    let answer = call.read_error_answer(response).await;
                    match status {
                        429 => (call.rate_limited(asked_wait, answer), asked_wait),
                        500..=599 => (call.http(status, answer), asked_wait),
                        _ => return Err(call.http(status, answer)),
                    }
                }
                // Nothing was sent, so trying again costs nothing.
                Err(err) if err.is_connect() => (call.unreachable(err), None),
                Err(err) if err.is_timeout() => return Err(call.timeout()),
                Err(err) => return Err(call.unreachable(err)),
            };
            let wait = asked_wait.unwrap_or_else(|| retry::backoff(attempt));
            if attempt > provider.max_retries || wait > retry::LONGEST_WAIT {
                return Err(error);
            }
            tracing::warn!(
                provider = %provider.name,
                api = %provider.api,
                attempt,
                ?wait,
                %error,
                "an LLM request failed; trying again"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn request(&self, call: &Call<'_>, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(call.url.clone())
            .timeout(call.provider.timeout)
            .json(body);
        if call.provider.api == Api::Anthropic {
            request = request.header("anthropic-version", "2023-06-01");
        }
        if let Some((name, value)) = &call.auth {
            request = request.header(name, value);
        }
        request
    }
}

/// One call to one provider: where it goes, its auth header, and how its errors are worded.
struct Call<'a> {
    provider: &'a Provider,
    url: Url,
    /// The provider's name, format and path, as every error names them.
    endpoint: String,
    /// The format's auth header, marked sensitive so no debug output shows it.
    auth: Option<(HeaderName, HeaderValue)>,
}

impl<'a> Call<'a> {
    fn new(provider: &'a Provider) -> Result<Call<'a>, LlmError> {
        let endpoint = provider.describe();
        let url = provider
            .endpoint_url()
            .map_err(|why| LlmError::Unreachable(format!("{endpoint} cannot be called: {why}")))?;
        let auth = match &provider.key {
            None => None,
            Some(key) => {
                let (name, value) = match provider.api {
                    Api::Anthropic => (HeaderName::from_static("x-api-key"), key.clone()),
                    Api::Ollama | Api::OpenAi => {
                        (reqwest::header::AUTHORIZATION, format!("Bearer {key}"))
                    }
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    LlmError::Unreachable(format!(
                        "{endpoint} cannot be called: its key holds characters a header cannot \
                         carry"
                    ))
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(Call {
            provider,
            url,
            endpoint,
            auth,
        })
    }

    /// `text` with the key blanked out, should the provider have echoed it.
    fn redact(&self, text: &str) -> String {
        match &self.provider.key {
            Some(key) if key.chars().count() >= REDACTED_KEY_MIN_CHARS => {
                text.replace(key.as_str(), "[redacted]")
            }
            _ => text.to_owned(),
        }
    }

    fn unreachable(&self, err: reqwest::Error) -> LlmError {
        // reqwest's own text names the URL, which may hold a secret in its query.
        let err = err.without_url();
        let text = if err.is_connect() && err.is_timeout() {
            format!(
                "could not connect to {} within {CONNECT_TIMEOUT:?}",
                self.endpoint
            )
        } else if err.is_connect() {
            format!(
                "could not connect to {}: {}",
                self.endpoint,
                innermost_cause(&err)
            )
        } else {
            format!(
                "the request to {} failed: {}",
                self.endpoint,
                innermost_cause(&err)
            )
        };
        LlmError::Unreachable(self.redact(&text))
    }

    fn timeout(&self) -> LlmError {
        LlmError::Timeout {
            endpoint: self.endpoint.clone(),
            after: self.provider.timeout,
        }
    }

    fn rate_limited(&self, retry_after: Option<Duration>, body: String) -> LlmError {
        LlmError::RateLimited {
            retry_after,
            body,
            endpoint: self.endpoint.clone(),
        }
    }

    fn http(&self, status: u16, body: String) -> LlmError {
        LlmError::Http {
            status,
            body,
            endpoint: self.endpoint.clone(),
        }
    }

    fn malformed(&self, why: &str) -> LlmError {
        LlmError::Malformed(self.redact(&format!(
            "{} answered in a shape that is not its format's: {why}",
            self.endpoint
        )))
    }

    fn cut(&self, why: &str) -> LlmError {
        LlmError::Cut(self.redact(&format!("{}: {why}", self.endpoint)))
    }

    /// The start of an error answer, with the key blanked out before it is cut so that no
    /// part of it is left at the cut. The status decides; the body only adds detail, so a
    /// body that breaks off is kept as far as it came.
    async fn read_error_answer(&self, mut response: reqwest::Response) -> String {
        let mut body = Vec::new();
        while body.len() < ERROR_READ_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(ERROR_READ_LIMIT);
        let text = String::from_utf8_lossy(&body);
        cut(&self.redact(text.trim()), ERROR_KEPT_CHARS)
    }

    async fn read_whole(&self, mut response: reqwest::Response) -> Result<Vec<u8>, LlmError> {
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > ANSWER_LIMIT {
                        return Err(self.read_failed(ReadError::TooLarge));
                    }
                }
                Ok(None) => return Ok(body),
                Err(err) => return Err(self.read_failed(ReadError::Transport(err))),
            }
        }
    }

    async fn read_stream<A: Assembly>(
        &self,
        mut frames: Frames,
        on_text: &mut (dyn FnMut(String) + Send),
    ) -> Result<Answer, LlmError> {
        let mut assembly = A::default();
        // Reading stops at the final frame: a server that keeps the connection open after it
        // does not hold the call until the timeout.
        while !assembly.finished() {
            let frame = match frames.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Err(self.read_failed(err)),
                None => {
                    return Err(self.cut(&format!(
                        "the stream ended before its final event ({})",
                        A::FINAL_FRAME
                    )));
                }
            };
            assembly
                .take(&frame, on_text)
                .map_err(|broken| match broken {
                    wire::Broken::Malformed(why) => self.malformed(&why),
                    wire::Broken::Failed(why) => self.cut(&format!(
                        "the stream ended with an error in place of its final event: {why}"
                    )),
                })?;
        }
        Ok(assembly.into_answer())
    }

    fn read_failed(&self, err: ReadError) -> LlmError {
        match err {
            ReadError::Transport(err) if err.is_timeout() => self.timeout(),
            ReadError::Transport(err) => self.cut(&format!(
                "the connection broke while the answer was read: {}",
                innermost_cause(&err.without_url())
            )),
            ReadError::TooLarge => self.malformed(&format!(
                "the answer is longer than {} MiB",
                ANSWER_LIMIT / (1024 * 1024)
            )),
            ReadError::Framing(why) => self.malformed(&why),
        }
    }
}

/// The last of an error's causes: the one that says what happened (`Connection refused`),
/// without the wrappers' words.
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Why reading an answer stopped short.
enum ReadError {
    Transport(reqwest::Error),
    TooLarge,
    /// The bytes are not the stream's framing (not UTF-8, not server-sent events).
    Framing(String),
}

/// A stream's frames: each server-sent event's data, or each NDJSON line.
type Frames = Pin<Box<dyn Stream<Item = Result<String, ReadError>> + Send>>;

/// The body's bytes, failing once more than [`ANSWER_LIMIT`] have come.
fn bounded_bytes(
    response: reqwest::Response,
) -> impl Stream<Item = Result<impl AsRef<[u8]> + Send, ReadError>> + Send {
    let mut total = 0usize;
    response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(ReadError::Transport)?;
        total += chunk.len();
        if total > ANSWER_LIMIT {
            Err(ReadError::TooLarge)
        } else {
            Ok(chunk)
        }
    })
}

/// Server-sent events, as OpenAI and Anthropic stream.
fn events(response: reqwest::Response) -> Frames {
    Box::pin(
        EventStream::new(bounded_bytes(response)).map(|event| match event {
            Ok(event) => Ok(event.data),
            Err(EventStreamError::Transport(err)) => Err(err),
            Err(EventStreamError::Utf8(err)) => Err(ReadError::Framing(format!(
                "a stream that is not UTF-8: {err}"
            ))),
            Err(EventStreamError::Parser(err)) => Err(ReadError::Framing(format!(
                "a stream that is not server-sent events: {err}"
            ))),
        }),
    )
}

/// NDJSON lines, as Ollama streams; blank lines are skipped, and a last line needs no
/// newline.
fn lines(response: reqwest::Response) -> Frames {
    let bytes = Box::pin(bounded_bytes(response));
    Box::pin(stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buffer, mut ended)| async move {
            loop {
                let line = match buffer.iter().position(|&b| b == b'\n') {
                    Some(end) => Some(buffer.drain(..=end).collect::<Vec<u8>>()),
                    None if ended && !buffer.is_empty() => Some(std::mem::take(&mut buffer)),
                    None if ended => return None,
                    None => None,
                };
                if let Some(line) = line {
                    let frame = match String::from_utf8(line) {
                        Ok(text) if text.trim().is_empty() => continue,
                        Ok(text) => Ok(text),
                        Err(err) => Err(ReadError::Framing(format!(
                            "a line that is not UTF-8: {}",
                            err.utf8_error()
                        ))),
                    };
                    return Some((frame, (bytes, buffer, ended)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(chunk.as_ref()),
                    Some(Err(err)) => return Some((Err(err), (bytes, Vec::new(), true))),
                    None => ended = true,
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatRequest;

    #[test]
    fn calls_can_be_spawned_onto_any_thread() {
        fn spawnable<T: Send + 'static>(_: T) {}
        let client = Client::new();
        let provider = Provider::new("p", Api::Ollama, "http://127.0.0.1:9", "m");
        // Owned, as a spawned task would hold them.
        spawnable(async move {
            let request = ChatRequest::default();
            let _ = client.chat(&provider, &request).await;
            let _ = client.chat_stream(&provider, &request, |_| {}).await;
        });
    }
}
