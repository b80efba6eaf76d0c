//! The server under abuse: made-up methods and paths, idle and half-open sockets, floods of
//! connections, oversize declarations, hostile pages in the operator's browser, and strings
//! longer or stranger than any real client sends. Raw TCP is used where an HTTP client would
//! refuse to misbehave.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestApp;

/// How long a test waits for something the server must do before it fails loudly.
const BOUND: Duration = Duration::from_secs(10);

fn host_of(t: &TestApp) -> String {
    t.base.trim_start_matches("http://").to_owned()
}

async fn connect(t: &TestApp) -> TcpStream {
    TcpStream::connect(host_of(t)).await.expect("connected")
}

/// Reads until the server closes the connection; fails loudly if it has not within [`BOUND`].
/// Returns what the server sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// Reads one response (head and a `Content-Length` body) without waiting for the connection to
/// close; fails loudly after [`BOUND`]. Returns the status and the body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let response = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("a status line");
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]);
                    return (status, body.to_string());
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => panic!(
                    "the connection closed before a whole response: {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    response.expect("a response within the bound")
}

/// One request on a connection of its own that the server closes after answering, so the
/// connection's slot is free again before this returns.
async fn one_shot(t: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let mut stream = connect(t).await;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        host_of(t),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let response = read_response(&mut stream).await;
    read_until_closed(&mut stream).await;
    response
}

#[tokio::test]
async fn made_up_methods_and_paths_never_become_metric_labels() {
    let t = TestApp::spawn().await;
    let mut made_up = Vec::new();
    for n in 0..50 {
        let token = uuid::Uuid::now_v7().simple().to_string()[20..].to_uppercase();
        let method = format!("X{token}{n}");
        let path = format!("/made-up-{token}-{n}");
        let m = Method::from_bytes(method.as_bytes()).expect("a method token");
        // A made-up method on a route that exists, on a path that does not, and a plain GET
        // of a path that does not.
        for (m, p) in [
            (m.clone(), "/api/v1/tasks".to_owned()),
            (m, path.clone()),
            (Method::GET, path.clone()),
        ] {
            let resp = t.client.request(m, t.url(&p)).send().await.expect("sent");
            assert!(resp.status().is_client_error(), "{p}: {}", resp.status());
        }
        made_up.push(method);
        made_up.push(path);
    }
    let text = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    for name in &made_up {
        assert!(!text.contains(name.as_str()), "{name} became a label");
    }
    // Every label of the request histogram comes from a closed set.
    const METHODS: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
    ];
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("muster_http_request_seconds_count{"))
        .collect();
    assert!(!series.is_empty(), "{text}");
    for line in series {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a method label");
        assert!(METHODS.contains(&method), "{line}");
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a route label");
        assert!(
            route == "unmatched" || route.starts_with('/') && !route.contains("made-up"),
            "{line}"
        );
    }
    assert!(
        text.contains(r#"method="other",route="/api/v1/tasks",status="405""#),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_stops_halfway_through_its_headers_is_disconnected() {
    let t = TestApp::spawn_with(|s| s.idle_timeout = Duration::from_millis(300)).await;
    let mut slow = connect(&t).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("sent");
    read_until_closed(&mut slow).await;

    // A connection that never sends anything is closed too …
    let mut silent = connect(&t).await;
    read_until_closed(&mut silent).await;

    // … and so is a kept-alive one that has gone idle after its answer.
    let mut kept = connect(&t).await;
    let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", host_of(&t));
    kept.write_all(request.as_bytes()).await.expect("sent");
    let (status, body) = read_response(&mut kept).await;
    assert_eq!(status, 200, "{body}");
    read_until_closed(&mut kept).await;
}

#[tokio::test]
async fn the_idle_timeout_never_cuts_a_long_poll_or_a_stream() {
    let t = TestApp::spawn_with(|s| s.idle_timeout = Duration::from_millis(200)).await;
    t.register("a1", &["shell"], 1).await;
    // The long-poll waits a second, five idle timeouts, and still answers.
    let (status, _) = t.get("/api/v1/agents/a1/tasks/next?wait=1").await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A log stream opened before the task ends gets every line and its end, however long the
    // quiet in between.
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("claimed");
    let mut logs = crate::streams::follow_logs(&t, task["id"].as_str().unwrap(), None).await;
    let (status, _) = t.get("/api/v1/agents/a1/tasks/next?wait=1").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "a second of quiet passed");
    let (status, reply) = t
        .post(
            &format!("/api/v1/tasks/{}/logs", task["id"].as_str().unwrap()),
            json!({"attempt": claimed["attempt"], "lines": [{"text": "still here"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let line = logs.expect_event().await;
    assert!(format!("{line:?}").contains("still here"), "{line:?}");
}

#[tokio::test]
async fn a_flood_of_idle_connections_is_refused_at_accept_and_agents_get_back_in() {
    const CAP: usize = 4;
    let t = TestApp::spawn_with(|s| {
        s.max_connections = CAP;
        s.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let (status, body) = one_shot(
        &t,
        "POST",
        "/api/v1/agents/register",
        Some(json!({"agent_id": "a1", "capabilities": ["shell"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The cap's worth of idle sockets, then one more: that one is refused at once.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(connect(&t).await);
    }
    let mut extra = connect(&t).await;
    let refused = read_until_closed(&mut extra).await;
    assert!(
        refused.starts_with(b"HTTP/1.1 503"),
        "the connection over the cap was served: {:?}",
        String::from_utf8_lossy(&refused)
    );

    // The idle ones time out, and an agent's heartbeat is served again.
    for stream in &mut idle {
        read_until_closed(stream).await;
    }
    let (status, body) = one_shot(
        &t,
        "POST",
        "/api/v1/agents/a1/heartbeat",
        Some(json!({"cpu_percent": 1.0, "memory_percent": 1.0})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_it_is_sent() {
    let t = TestApp::spawn().await;
    assert_eq!(t.app.settings().body_limit, 1024 * 1024);
    let mut stream = connect(&t).await;
    let head = format!(
        "POST /api/v1/tasks HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 10000000\r\n\r\n",
        host_of(&t)
    );
    stream.write_all(head.as_bytes()).await.expect("sent");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).expect("the error envelope");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
}

#[tokio::test]
async fn a_host_header_naming_another_site_is_refused() {
    // DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 talks to this
    // server with its own name in Host. Only the name can give it away; the port is the one
    // the browser dialled either way.
    let t = TestApp::spawn().await;
    let port = host_of(&t).rsplit(':').next().unwrap().to_owned();
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        for path in ["/api/v1/agents", "/", "/metrics"] {
            let resp = t
                .client
                .get(t.url(path))
                .header("host", &host)
                .send()
                .await
                .expect("sent");
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{host} {path}");
            let body: Value = resp.json().await.expect("the error envelope");
            assert_eq!(body["error"]["code"], "forbidden", "{host} {path}: {body}");
        }
        let resp = t
            .client
            .post(t.url("/api/v1/agents/register"))
            .header("host", &host)
            .json(&json!({"agent_id": "rebound"}))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{host}");
        // Probes may use any name: /health tells nothing and changes nothing.
        let resp = t
            .client
            .get(t.url("/health"))
            .header("host", &host)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::OK, "{host} /health");
    }
    let (status, _) = t.get("/api/v1/agents/rebound").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was registered");

    // Loopback names and address literals name this server, whatever the port (an SSH tunnel
    // or a container's port map changes it).
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LocalHost:9000".to_owned(),
        format!("[::1]:{port}"),
        "127.0.0.1".to_owned(),
        "192.168.1.10:8000".to_owned(),
    ] {
        let resp = t
            .client
            .get(t.url("/api/v1/agents"))
            .header("host", &host)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn the_public_url_names_this_server_too() {
    let t = TestApp::spawn_with(|s| {
        s.public_url =
            Some(muster_server::config::PublicUrl::parse("https://muster.example.com").unwrap())
    })
    .await;
    for (host, expected) in [
        ("muster.example.com", StatusCode::OK),
        ("Muster.Example.com:443", StatusCode::OK),
        ("other.example.com", StatusCode::FORBIDDEN),
        ("muster.example.com.evil.example", StatusCode::FORBIDDEN),
    ] {
        let resp = t
            .client
            .get(t.url("/api/v1/agents"))
            .header("host", host)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), expected, "{host}");
    }
}

#[tokio::test]
async fn a_page_on_another_site_cannot_claim_an_agents_task() {
    let t = TestApp::spawn().await;
    t.register("nas", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.settle().await;
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
        ("origin", "null"),
    ] {
        let (status, reply) = TestApp::send(
            t.request(Method::GET, "/api/v1/agents/nas/tasks/next?wait=0")
                .header(name, value),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {value}: {reply}");
        assert_eq!(reply["error"]["code"], "forbidden");
    }
    let stored = t.task(task["id"].as_str().unwrap()).await;
    assert_ne!(stored["state"], "running", "a refused claim started it");
    // The agent itself (no browser headers) claims it.
    let claimed = t.claim("nas", 5).await.expect("claimed");
    assert_eq!(claimed["id"], task["id"]);
}

/// Asserts a 422 whose message is exactly `message`.
fn assert_refused(status: StatusCode, body: &Value, message: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    assert_eq!(body["error"]["message"], message, "{body}");
}

#[tokio::test]
async fn every_string_of_a_registration_or_submission_is_bounded() {
    let t = TestApp::spawn().await;
    let long = |n: usize| "x".repeat(n);
    let many = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
    let labels = |n: usize| {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
    };
    let register = |extra: Value| {
        let mut body = json!({"agent_id": "a1"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, message) in [
        (
            json!({"capabilities": ["a", "b", "c", long(201)]}),
            "capabilities[3]: must be at most 200 characters",
        ),
        (
            json!({"capabilities": many(101)}),
            "capabilities: at most 100 entries",
        ),
        (
            json!({"capabilities": ["ok", "new\nline"]}),
            "capabilities[1]: must not contain control characters",
        ),
        (
            json!({"host": long(256)}),
            "host: must be at most 255 characters",
        ),
        (
            json!({"host": "a\u{0}b"}),
            "host: must not contain control characters",
        ),
        (
            json!({"version": long(101)}),
            "version: must be at most 100 characters",
        ),
        (json!({"labels": labels(51)}), "labels: at most 50 entries"),
        (
            json!({"labels": {long(101): "v"}}),
            "labels: a key must be at most 100 characters",
        ),
        (
            json!({"labels": {"team": long(501)}}),
            "labels.team: must be at most 500 characters",
        ),
        (
            json!({"mcp_servers": (0..51).map(|i| json!({"name": i})).collect::<Vec<_>>()}),
            "mcp_servers: at most 50 entries",
        ),
        (
            json!({"mcp_servers": [{"name": "fs"}, {"blob": long(17 * 1024)}]}),
            "mcp_servers[1]: must be at most 16384 bytes as JSON",
        ),
    ] {
        let (status, body) = t
            .post("/api/v1/agents/register", register(extra.clone()))
            .await;
        assert_refused(status, &body, message);
    }
    let (status, body) = t.get("/api/v1/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["agents"], json!([]), "nothing was registered");

    // Heartbeats name every running attempt; a list longer than any agent could run is refused.
    t.register("a1", &[], 1).await;
    let running: Vec<Value> = (0..10_001)
        .map(|_| json!({"task_id": uuid::Uuid::now_v7(), "attempt": 1}))
        .collect();
    let (status, body) = t
        .heartbeat(
            "a1",
            json!({"cpu_percent": 1.0, "memory_percent": 1.0, "running": running}),
        )
        .await;
    assert_refused(status, &body, "running: at most 10000 entries");

    for (extra, message) in [
        (
            json!({"capabilities": ["a", "b", "c", long(201)]}),
            "capabilities[3]: must be at most 200 characters",
        ),
        (
            json!({"capabilities": many(101)}),
            "capabilities: at most 100 entries",
        ),
        (
            json!({"kind": "deploy\u{1b}[2J"}),
            "kind: must not contain control characters",
        ),
        (
            json!({"lock_key": "deploy:\nx"}),
            "lock_key: must not contain control characters",
        ),
        (
            json!({"idempotency_key": "a\tb"}),
            "idempotency_key: must not contain control characters",
        ),
        (json!({"labels": labels(51)}), "labels: at most 50 entries"),
        (
            json!({"labels": {"team": long(501)}}),
            "labels.team: must be at most 500 characters",
        ),
        (
            json!({"labels": {"": "v"}}),
            "labels: a key must not be empty",
        ),
    ] {
        let mut body = json!({"kind": "echo"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, reply) = t.post("/api/v1/tasks", body).await;
        assert_refused(status, &reply, message);
    }
    let (_, list) = t.get("/api/v1/tasks").await;
    assert_eq!(list["tasks"], json!([]), "nothing was submitted");
}

#[tokio::test]
async fn a_tasks_stored_logs_stop_at_the_limit_and_one_line_counts_the_rest() {
    let t = TestApp::spawn_with(|s| s.log_limit = 1000).await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "chatty", "capabilities": ["shell"]}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("claimed");
    let id = task["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tasks/{id}/logs");
    let post = |from: usize, n: usize| {
        let lines: Vec<Value> = (from..from + n)
            .map(|i| json!({"text": format!("{i:03} {}", "x".repeat(96))}))
            .collect();
        t.post(
            &path,
            json!({"attempt": claimed["attempt"], "lines": lines}),
        )
    };
    // 15 lines of 100 bytes against a limit of 1000: ten are kept.
    for from in [0, 5, 10] {
        let (status, reply) = post(from, 5).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let texts = |body: &Value| -> Vec<String> {
        body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, logs) = t.get(&path).await;
    let lines = texts(&logs);
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(lines[9].starts_with("009 "), "{lines:?}");
    assert!(
        lines[10].contains("5 lines dropped") && lines[10].contains("LOG_LIMIT"),
        "{lines:?}"
    );

    // More lines only change the count; there is still one marker, and it stays last. A
    // restart keeps the tally.
    let dir = t.stop().await;
    let t = TestApp::spawn_in(dir, |s| s.log_limit = 1000).await;
    let (status, reply) = t
        .post(
            &path,
            json!({"attempt": claimed["attempt"], "lines": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (_, logs) = t.get(&path).await;
    let lines = texts(&logs);
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(lines[10].contains("8 lines dropped"), "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("dropped")).count(),
        1,
        "{lines:?}"
    );
}
