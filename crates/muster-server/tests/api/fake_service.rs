//! `FakeService`: a real HTTP server on a free loopback port standing in for an outside
//! service (Home Assistant, ntfy, Telegram, Discord, a webhook receiver). It records every
//! request and answers with the replies a test queues, so a test can check exactly what
//! muster sent and how it takes each kind of answer.
//!
//! Dropping it stops the server: the accept loop owns every connection's task, so they all
//! end with it, held (`Reply::Hang`) requests included.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long `wait_for` waits before it fails the test.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// What the fake service answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Holds the request open, never answering, until `release()` or the service is dropped.
    Hang,
}

impl Reply {
    /// A 200 with `body`.
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply::status(200, body)
    }

    pub fn status(code: u16, body: impl Into<String>) -> Reply {
        Reply::Status {
            status: code,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header to the answer (a held request has no answer, so `Hang` stays as it is).
    pub fn with_header(self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        match self {
            Reply::Status {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.into(), value.into()));
                Reply::Status {
                    status,
                    headers,
                    body,
                }
            }
            Reply::Hang => Reply::Hang,
        }
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path with its query, as sent: `/bot123:ABC/sendMessage`, `/api/webhooks/1/t?wait=true`.
    pub path: String,
    /// Header names in lowercase; a repeated header's values joined with `, `.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "the request body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value, by a name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

pub struct FakeService {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// How many requests have arrived, for `wait_for`.
    arrived: watch::Sender<usize>,
    /// Bumped by `release()`; held requests wait for it to change.
    released: watch::Sender<u64>,
}

struct State {
    default: Reply,
    queue: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

impl FakeService {
    /// Starts a service on a free loopback port, answering 200 `{}` until told otherwise.
    pub async fn start() -> FakeService {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                default: Reply::ok("{}"),
                queue: VecDeque::new(),
                requests: Vec::new(),
            }),
            arrived: watch::channel(0).0,
            released: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeService {
            url,
            shared,
            accept,
        }
    }

    /// Replaces the reply used when no queued reply is left.
    pub fn default_reply(&self, reply: Reply) {
        self.shared.state.lock().unwrap().default = reply;
    }

    /// Queues a reply for the next request; queued replies are used in order, before the
    /// default.
    pub fn reply_next(&self, reply: Reply) {
        self.shared.state.lock().unwrap().queue.push_back(reply);
    }

    /// Every request so far, in the order they arrived (held ones included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Waits until at least `n` requests have arrived and returns them all; after 30 s it
    /// panics, showing what did arrive.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let mut arrived = self.shared.arrived.subscribe();
        let waited = tokio::time::timeout(WAIT_LIMIT, arrived.wait_for(|count| *count >= n)).await;
        if !matches!(waited, Ok(Ok(_))) {
            panic!(
                "waited {WAIT_LIMIT:?} for {n} request(s) at {}; arrived: {:#?}",
                self.url,
                self.requests()
            );
        }
        self.requests()
    }

    /// Answers every request held so far with 200 `{}`.
    pub fn release(&self) {
        self.shared
            .released
            .send_modify(|generation| *generation += 1);
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection's task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(shared.clone(), request));
            // A client that goes away mid-request is not the fake's concern.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow with every request.
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Subscribed before the request is recorded, so a `release()` made as soon as a test sees
    // the request cannot be missed.
    let mut released = shared.released.subscribe();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(Body::new(body), usize::MAX)
        .await
        .map(|bytes| bytes.to_vec())
        .unwrap_or_default();
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers,
        body,
    };
    let reply = {
        let mut state = shared.state.lock().unwrap();
        state.requests.push(recorded);
        state
            .queue
            .pop_front()
            .unwrap_or_else(|| state.default.clone())
    };
    shared.arrived.send_modify(|count| *count += 1);
    let (status, headers, body) = match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => (status, headers, body),
        Reply::Hang => {
            // Ends only with release(); a dropped service aborts this task instead.
            let _ = released.changed().await;
            (200, Vec::new(), "{}".to_owned())
        }
    };
    let mut response =
        Response::builder().status(StatusCode::from_u16(status).expect("a valid status code"));
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        response = response.header("content-type", "application/json");
    }
    for (name, value) in headers {
        response = response.header(name, value);
    }
    Ok(response
        .body(Body::from(body))
        .expect("a response from valid parts"))
}
