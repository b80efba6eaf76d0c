//! Server-sent events: following a task's logs and the event feed.
//!
//! The `text/event-stream` bodies are parsed here from the raw bytes (events separated by a
//! blank line; `id:`, `event:` and `data:` fields; `:` comments skipped), so the tests check the
//! wire format a browser's `EventSource` reads, not a client library's idea of it.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// How long a test waits for the next piece of a stream before it fails instead of hanging.
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// The `event:` field; `message` when absent, as the SSE specification says.
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// An open `text/event-stream` response, read event by event.
pub struct SseStream {
    body: Body,
    buf: Vec<u8>,
    ended: bool,
}

impl SseStream {
    /// Sends `req` with `Accept: text/event-stream` and checks that a stream came back.
    pub async fn open(req: reqwest::RequestBuilder) -> SseStream {
        let resp = req
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .expect("stream request sent");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status != StatusCode::OK {
            let text = resp.text().await.unwrap_or_default();
            panic!("stream refused: {status} {text}");
        }
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type:?}"
        );
        let body = resp.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec()));
        SseStream {
            body: Box::pin(body),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next event, or `None` once the response body has finished. Panics when nothing
    /// arrives within [`STREAM_WAIT`].
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let block = String::from_utf8(block).expect("event stream is UTF-8");
                if let Some(event) = parse_block(&block) {
                    return Some(event);
                }
                continue;
            }
            if self.ended {
                let rest = String::from_utf8_lossy(&self.buf);
                assert!(
                    rest.trim().is_empty(),
                    "stream ended inside an event: {rest:?}"
                );
                return None;
            }
            match tokio::time::timeout(STREAM_WAIT, self.body.next()).await {
                Err(_) => panic!(
                    "nothing arrived on the stream within {STREAM_WAIT:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(err))) => panic!("stream broke: {err}"),
                Ok(None) => self.ended = true,
            }
        }
    }

    /// The next event; panics if the stream ended instead.
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next_event()
            .await
            .expect("the stream ended, but an event was expected")
    }

    /// Asserts that the response body finishes without another event.
    pub async fn expect_finished(&mut self) {
        if let Some(event) = self.next_event().await {
            panic!("expected the stream to end, got {event:?}");
        }
    }
}

/// Parses one event block; `None` for a block of comments only (keep-alives).
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    if id.is_none() && event.is_none() && data.is_none() {
        return None;
    }
    Some(SseEvent {
        id,
        event: event.unwrap_or_else(|| "message".to_owned()),
        data: data.unwrap_or_default(),
    })
}

/// Follows a task's logs, optionally resuming after `last_event_id`.
pub async fn follow_logs(t: &TestApp, task_id: &str, last_event_id: Option<&str>) -> SseStream {
    let mut req = t.request(Method::GET, &format!("/api/v1/tasks/{task_id}/logs"));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    SseStream::open(req).await
}

/// Opens the event feed, optionally resuming after `last_event_id`.
pub async fn follow_events(t: &TestApp, last_event_id: Option<&str>) -> SseStream {
    let mut req = t.request(Method::GET, "/api/v1/events");
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    SseStream::open(req).await
}

/// Registers an agent, submits a task for it and claims it: the task, now running.
async fn running_task(t: &TestApp, agent_id: &str) -> Value {
    t.register(agent_id, &["shell"], 4).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let claimed = t.claim(agent_id, 5).await.expect("the task is claimed");
    assert_eq!(claimed["id"], task["id"]);
    assert_eq!(claimed["state"], "running");
    claimed
}

fn id_of(task: &Value) -> &str {
    task["id"].as_str().expect("task id")
}

/// Posts lines (texts on stdout) for the task's current attempt.
async fn post_lines(t: &TestApp, task: &Value, texts: &[&str]) {
    let lines: Vec<Value> = texts.iter().map(|text| json!({"text": text})).collect();
    let (status, body) = t
        .post(
            &format!("/api/v1/tasks/{}/logs", id_of(task)),
            json!({"attempt": task["attempt"], "lines": lines}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], texts.len(), "{body}");
}

/// Reads `n` `line` events; checks that each event's id is its line's id.
async fn read_lines(stream: &mut SseStream, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let event = stream.expect_event().await;
        assert_eq!(event.event, "line", "{event:?}");
        let line = event.json();
        let id = event.id.clone().expect("a line event carries an id");
        assert_eq!(
            line["id"].to_string(),
            id,
            "event id is the line id: {event:?}"
        );
        out.push((id, line["text"].as_str().expect("text").to_owned()));
    }
    out
}

fn texts(lines: &[(String, String)]) -> Vec<&str> {
    lines.iter().map(|(_, text)| text.as_str()).collect()
}

#[tokio::test]
async fn a_log_follower_sees_lines_as_they_come_and_the_end_of_the_task() {
    let t = TestApp::spawn().await;
    let task = running_task(&t, "a1").await;
    let mut logs = follow_logs(&t, id_of(&task), None).await;

    post_lines(&t, &task, &["one", "two"]).await;
    let first = read_lines(&mut logs, 2).await;
    assert_eq!(texts(&first), ["one", "two"]);

    post_lines(&t, &task, &["three"]).await;
    let second = read_lines(&mut logs, 1).await;
    assert_eq!(texts(&second), ["three"]);
    let ids: Vec<i64> = first
        .iter()
        .chain(&second)
        .map(|(id, _)| id.parse().expect("numeric line id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let (status, body) = t.complete(&task, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let end = logs.expect_event().await;
    assert_eq!(end.event, "end", "{end:?}");
    assert_eq!(end.json()["state"], "completed");
    logs.expect_finished().await;
}

#[tokio::test]
async fn a_log_follower_resumes_after_its_last_event_id() {
    let t = TestApp::spawn().await;
    let task = running_task(&t, "a1").await;
    post_lines(&t, &task, &["l1", "l2", "l3"]).await;

    // The first follower reads two lines and goes away.
    let mut first = follow_logs(&t, id_of(&task), None).await;
    let seen = read_lines(&mut first, 2).await;
    assert_eq!(texts(&seen), ["l1", "l2"]);
    drop(first);
    post_lines(&t, &task, &["l4", "l5"]).await;

    let last_seen = &seen[1].0;
    let mut resumed = follow_logs(&t, id_of(&task), Some(last_seen)).await;
    let rest = read_lines(&mut resumed, 3).await;
    assert_eq!(texts(&rest), ["l3", "l4", "l5"]);

    // Live lines still follow a resumed stream, and nothing is sent twice.
    post_lines(&t, &task, &["l6"]).await;
    assert_eq!(texts(&read_lines(&mut resumed, 1).await), ["l6"]);
    let (status, body) = t.complete(&task, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let end = resumed.expect_event().await;
    assert_eq!(end.event, "end", "{end:?}");
    resumed.expect_finished().await;
}

#[tokio::test]
async fn logs_as_json_page_with_after_and_limit() {
    let t = TestApp::spawn().await;
    let task = running_task(&t, "a1").await;
    post_lines(&t, &task, &["l1", "l2", "l3", "l4"]).await;
    let (status, body) = t
        .post(
            &format!("/api/v1/tasks/{}/logs", id_of(&task)),
            json!({"attempt": task["attempt"], "lines": [
                {"text": "l5", "stream": "stderr", "ts": "2024-05-01T12:00:00Z"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("/api/v1/tasks/{}/logs", id_of(&task));

    let (status, all) = t.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let lines = all["lines"].as_array().expect("lines");
    let got: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(got, ["l1", "l2", "l3", "l4", "l5"]);
    assert!(all["next_after"].is_null(), "{all}");
    assert_eq!(lines[0]["stream"], "stdout");
    assert_eq!(lines[0]["attempt"], task["attempt"]);
    assert_eq!(lines[4]["stream"], "stderr");
    assert_eq!(lines[4]["ts"], "2024-05-01T12:00:00Z");

    // Pages of two: each names where the next starts, the last names nothing.
    let mut after: Option<i64> = None;
    let mut pages: Vec<Vec<String>> = Vec::new();
    loop {
        let query = match after {
            Some(a) => format!("{path}?limit=2&after={a}"),
            None => format!("{path}?limit=2"),
        };
        let (status, page) = t.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages.push(
            page["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["text"].as_str().unwrap().to_owned())
                .collect(),
        );
        match page["next_after"].as_i64() {
            Some(next) => {
                let last = page["lines"].as_array().unwrap().last().unwrap()["id"].clone();
                assert_eq!(next, last.as_i64().unwrap(), "next_after is the last id");
                after = Some(next);
            }
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [vec!["l1", "l2"], vec!["l3", "l4"], vec!["l5"]]);

    // `after` alone skips what was read.
    let third_id = lines[2]["id"].as_i64().unwrap();
    let (_, page) = t.get(&format!("{path}?after={third_id}")).await;
    let got: Vec<&str> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["l4", "l5"]);

    for bad in ["limit=0", "limit=5001", "limit=many", "after=soon"] {
        let (status, body) = t.get(&format!("{path}?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{bad}: {body}");
        let field = bad.split('=').next().unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{bad}: {message}");
    }
}

/// Reads events until one satisfies `last`; returns all of them, that one included.
async fn read_until(stream: &mut SseStream, last: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
    let mut events = Vec::new();
    loop {
        let event = stream.expect_event().await;
        let done = last(&event);
        events.push(event);
        if done {
            return events;
        }
        assert!(events.len() < 1000, "the awaited event never came");
    }
}

fn is_agent(event: &SseEvent, agent_id: &str) -> bool {
    event.event == "agent" && event.json()["agent_id"] == agent_id
}

fn is_task_state(event: &SseEvent, task_id: &str, state: &str) -> bool {
    let data = event.json();
    event.event == "task" && data["task_id"] == task_id && data["state"] == state
}

/// `"{boot}-{n}"` split into its parts.
fn event_number(id: &str) -> (String, u64) {
    let (boot, n) = id.split_once('-').expect("event id is boot-n");
    (boot.to_owned(), n.parse().expect("event number"))
}

#[tokio::test]
async fn the_event_feed_streams_task_and_agent_events_and_resumes() {
    let t = TestApp::spawn().await;
    let mut feed = follow_events(&t, None).await;

    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let task_id = id_of(&task).to_owned();
    let claimed = t.claim("a1", 5).await.expect("claimed");
    let (status, body) = t.complete(&claimed, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let seen = read_until(&mut feed, |e| is_task_state(e, &task_id, "completed")).await;
    let agent = seen
        .iter()
        .find(|e| is_agent(e, "a1"))
        .expect("an agent event for the registration");
    assert_eq!(agent.json()["kind"], "agent");
    assert_eq!(agent.json()["status"], "online");
    let states: Vec<String> = seen
        .iter()
        .filter(|e| e.event == "task" && e.json()["task_id"] == task_id.as_str())
        .map(|e| e.json()["state"].as_str().unwrap().to_owned())
        .filter(|s| s != "assigned")
        .collect();
    assert_eq!(states, ["queued", "running", "completed"], "{seen:?}");
    let running = seen
        .iter()
        .find(|e| is_task_state(e, &task_id, "running"))
        .unwrap()
        .json();
    assert_eq!(running["agent_id"], "a1");
    assert_eq!(running["attempt"], 1);

    // Every event has an id of this boot, in increasing order.
    let numbers: Vec<(String, u64)> = seen
        .iter()
        .map(|e| event_number(e.id.as_deref().expect("events carry ids")))
        .collect();
    let boot = numbers[0].0.clone();
    assert!(numbers.iter().all(|(b, _)| *b == boot), "{numbers:?}");
    assert!(numbers.windows(2).all(|w| w[0].1 < w[1].1), "{numbers:?}");

    // Reconnecting after the `queued` event replays exactly what came after it, then goes on live.
    let queued_at = seen
        .iter()
        .position(|e| is_task_state(e, &task_id, "queued"))
        .unwrap();
    let last_id = seen[queued_at].id.clone().unwrap();
    let mut resumed = follow_events(&t, Some(&last_id)).await;
    t.register("a2", &[], 1).await;
    let replayed = read_until(&mut resumed, |e| is_agent(e, "a2")).await;
    let (marker, replayed) = replayed.split_last().unwrap();
    assert_eq!(replayed, &seen[queued_at + 1..], "replay after {last_id}");
    assert!(marker.id.is_some());
    // The first feed, still open, saw the same live event with the same id.
    let live = read_until(&mut feed, |e| is_agent(e, "a2")).await;
    assert_eq!(live.last().unwrap(), marker);
}

#[tokio::test]
async fn an_event_id_that_cannot_be_resumed_yields_resync_first() {
    let t = TestApp::spawn().await;
    t.register("a1", &[], 1).await;
    for _ in 0..6 {
        t.submit(json!({"kind": "echo"})).await;
    }
    let mut feed = follow_events(&t, None).await;
    t.register("probe", &[], 1).await;
    let probe = feed.expect_event().await;
    let (boot, n) = event_number(probe.id.as_deref().unwrap());
    drop(feed);

    for stale in [
        "1-5".to_owned(),
        format!("{}-5", boot.parse::<i64>().unwrap() - 1),
        format!("{boot}-{}", n + 1000),
        "garbage".to_owned(),
    ] {
        let mut feed = follow_events(&t, Some(&stale)).await;
        let first = feed.expect_event().await;
        assert_eq!(first.event, "resync", "after {stale}: {first:?}");
        assert_eq!(first.json()["kind"], "resync");
        // Then it follows live as usual (the dispatcher may still be publishing the previous
        // round's assignment, so look past task events).
        let agent = format!("after-{stale}");
        t.register(&agent, &[], 1).await;
        let seen = read_until(&mut feed, |e| is_agent(e, &agent)).await;
        let (_, before) = seen.split_last().unwrap();
        assert!(before.iter().all(|e| e.event == "task"), "{seen:?}");
    }
}

#[tokio::test]
async fn a_follower_of_a_finished_task_gets_every_line_then_the_end() {
    let t = TestApp::spawn().await;
    let task = running_task(&t, "a1").await;
    post_lines(&t, &task, &["x", "y", "z"]).await;
    let (status, body) = t.fail(&task, "boom", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "failed");

    let mut logs = follow_logs(&t, id_of(&task), None).await;
    let lines = read_lines(&mut logs, 3).await;
    assert_eq!(texts(&lines), ["x", "y", "z"]);
    let end = logs.expect_event().await;
    assert_eq!(end.event, "end", "{end:?}");
    assert_eq!(end.json()["state"], "failed");
    logs.expect_finished().await;

    // Resuming a finished task after its last line gives just the end.
    let mut logs = follow_logs(&t, id_of(&task), Some(&lines[2].0)).await;
    let end = logs.expect_event().await;
    assert_eq!(end.event, "end", "{end:?}");
    logs.expect_finished().await;

    // A task cancelled before it ran has no lines: the end comes at once.
    let queued = t
        .submit(json!({"kind": "never", "capabilities": ["gpu"]}))
        .await;
    let (status, body) = t
        .post(
            &format!("/api/v1/tasks/{}/cancel", id_of(&queued)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut logs = follow_logs(&t, id_of(&queued), None).await;
    let end = logs.expect_event().await;
    assert_eq!(end.event, "end", "{end:?}");
    assert_eq!(end.json()["state"], "cancelled");
    logs.expect_finished().await;
}

#[tokio::test]
async fn following_the_logs_of_an_unknown_task_is_a_404() {
    let t = TestApp::spawn().await;
    let id = uuid::Uuid::now_v7();
    let (status, body) = TestApp::send(
        t.request(Method::GET, &format!("/api/v1/tasks/{id}/logs"))
            .header(reqwest::header::ACCEPT, "text/event-stream"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}
