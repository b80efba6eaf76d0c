//! `FakeProvider`: a real HTTP server on a free loopback port standing in for an LLM provider.
//! It records every request and answers with the replies a test queues: a whole answer with
//! any status and headers, a stream sent piece by piece that ends, breaks or stalls, or no
//! answer at all. What it says is up to each test, in the format it plays.
//!
//! Dropping it stops accepting; requests still held (`Reply::Hang`) end with the test's
//! runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Whole {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A 200 whose body is sent piece by piece, each piece as it is (framing included).
    Stream {
        content_type: &'static str,
        pieces: Vec<String>,
        end: StreamEnd,
    },
    /// Never answers.
    Hang,
}

/// How a streamed body ends after its pieces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamEnd {
    /// The body ends properly: whether the stream was complete is in its pieces.
    Close,
    /// The connection breaks mid-body.
    Break,
    /// Nothing more is sent, and the connection stays open.
    Stall,
}

impl Reply {
    /// A 200 with `body` as JSON.
    pub fn json(body: &Value) -> Reply {
        Reply::status(200, &body.to_string())
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Whole {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Whole {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_owned(), value.to_owned()));
                Reply::Whole {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }

    /// A stream of `pieces` as they are, ending properly.
    pub fn stream(content_type: &'static str, pieces: Vec<String>) -> Reply {
        Reply::Stream {
            content_type,
            pieces,
            end: StreamEnd::Close,
        }
    }

    /// Server-sent events, each piece one event as the test wrote it.
    pub fn events(pieces: Vec<String>) -> Reply {
        Reply::stream("text/event-stream", pieces)
    }

    /// NDJSON: one JSON value a line.
    pub fn lines(values: &[Value]) -> Reply {
        Reply::stream(
            "application/x-ndjson",
            values.iter().map(|v| format!("{v}\n")).collect(),
        )
    }

    /// The same stream, ending in `end` instead.
    pub fn ending(self, end: StreamEnd) -> Reply {
        match self {
            Reply::Stream {
                content_type,
                pieces,
                ..
            } => Reply::Stream {
                content_type,
                pieces,
                end,
            },
            other => other,
        }
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names in lowercase.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    state: Arc<Mutex<FakeState>>,
    server: tokio::task::JoinHandle<()>,
}

struct FakeState {
    queue: VecDeque<Reply>,
    /// Used once the queue is empty.
    default: Reply,
    requests: Vec<Recorded>,
}

impl FakeProvider {
    /// Starts on a free loopback port, answering `default` to every request no queued reply
    /// is left for.
    pub async fn start(default: Reply) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(FakeState {
            queue: VecDeque::new(),
            default,
            requests: Vec::new(),
        }));
        let app = Router::new().fallback(answer).with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the fake serves");
        });
        FakeProvider { url, state, server }
    }

    /// Queues `reply` for the next request; queued replies go before the default, in order.
    pub fn then(&self, reply: Reply) -> &FakeProvider {
        self.state.lock().unwrap().queue.push_back(reply);
        self
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The only request; fails the test when there were more or none.
    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "expected one request: {requests:#?}");
        requests.into_iter().next().unwrap()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(state): State<Arc<Mutex<FakeState>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the request body arrives");
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or_else(|err| {
            panic!(
                "the client sent a body that is not JSON ({err}): {}",
                String::from_utf8_lossy(&body)
            )
        }),
    };
    let reply = {
        let mut state = state.lock().unwrap();
        state.requests.push(recorded);
        state
            .queue
            .pop_front()
            .unwrap_or_else(|| state.default.clone())
    };
    match reply {
        Reply::Whole {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            for (name, value) in headers {
                response.headers_mut().insert(
                    HeaderName::try_from(name).expect("a valid header name"),
                    HeaderValue::try_from(value).expect("a valid header value"),
                );
            }
            response
        }
        Reply::Stream {
            content_type,
            pieces,
            end,
        } => {
            let pieces = stream::iter(pieces.into_iter().map(|p| Ok(Bytes::from(p))));
            let end: BoxStream<'static, Result<Bytes, std::io::Error>> = match end {
                StreamEnd::Close => stream::empty().boxed(),
                StreamEnd::Break => stream::once(async {
                    // Pending once first, so that hyper flushes the head and the pieces
                    // before the error makes it drop the connection: the client sees the
                    // answer begin and then break, not a request that failed.
                    tokio::task::yield_now().await;
                    Err(std::io::Error::other("the fake breaks off"))
                })
                .boxed(),
                StreamEnd::Stall => stream::pending().boxed(),
            };
            let mut response = Response::new(Body::from_stream(pieces.chain(end)));
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static(content_type));
            response
        }
        Reply::Hang => std::future::pending().await,
    }
}
