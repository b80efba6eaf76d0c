//! Bad input, authentication and the operational routes.

use std::time::Duration;

use muster_server::{Server, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, metrics_text, sample, secret};
use crate::streams::{follow_events, follow_logs};

#[tokio::test]
async fn health_answers() {
    let t = TestApp::spawn().await;
    let (status, body) = t.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["db"], "ok");
}

/// Asserts the error envelope with `code` and returns its message.
fn error_message(status: StatusCode, body: &Value, expected: StatusCode, code: &str) -> String {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error message missing: {body}"));
    assert!(!message.trim().is_empty(), "{body}");
    message.to_owned()
}

/// Asserts a 422 `invalid_field` whose message starts with `field`.
fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    let message = error_message(
        status,
        body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert!(
        message.starts_with(field),
        "the message should start with {field:?}: {message:?}"
    );
}

/// The number of tasks the server holds, whatever their state.
async fn task_count(t: &TestApp) -> usize {
    let (status, body) = t.get("/api/v1/tasks?limit=500").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["tasks"].as_array().expect("tasks").len()
}

async fn agent_ids(t: &TestApp) -> Vec<String> {
    let (status, body) = t.get("/api/v1/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_owned())
        .collect()
}

/// POSTs a raw body as JSON.
async fn post_raw(t: &TestApp, path: &str, body: impl Into<String>) -> (StatusCode, Value) {
    TestApp::send(
        t.request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into()),
    )
    .await
}

#[tokio::test]
async fn malformed_json_is_a_400_and_creates_nothing() {
    let t = TestApp::spawn().await;
    for body in [
        r#"{"kind": "echo","#,
        "not json",
        r#"{"kind": "echo"} trailing"#,
    ] {
        let (status, reply) = post_raw(&t, "/api/v1/tasks", body).await;
        error_message(status, &reply, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (status, reply) = post_raw(&t, "/api/v1/agents/register", "{").await;
    error_message(status, &reply, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(task_count(&t).await, 0);
    assert!(agent_ids(&t).await.is_empty());
}

#[tokio::test]
async fn an_invalid_field_is_a_422_naming_it_and_creates_nothing() {
    let t = TestApp::spawn().await;
    let cases = [
        (json!({"kind": "echo", "priority": "high"}), "priority"),
        (json!({"kind": "echo", "capabilities": "x"}), "capabilities"),
        (json!({"kind": "echo", "max_retries": -1}), "max_retries"),
        (
            json!({"kind": "echo", "max_retries": 100_000}),
            "max_retries",
        ),
        (json!({"kind": "echo", "timeout_s": 0}), "timeout_s"),
        (
            json!({"kind": "echo", "run_after": "tomorrow"}),
            "run_after",
        ),
        (json!({"kind": "echo", "labels": {"team": 7}}), "labels"),
        (json!({"kind": "  "}), "kind"),
        (json!({"kind": 5}), "kind"),
        (
            json!({"kind": "echo", "capabilities": ["shell", ""]}),
            "capabilities[1]",
        ),
        (json!({"kind": "echo", "lock_key": ""}), "lock_key"),
    ];
    for (body, field) in cases {
        let (status, reply) = t.post("/api/v1/tasks", body.clone()).await;
        assert_invalid(status, &reply, field);
    }

    // A missing required field and an unknown one are refused too, and named.
    let (status, reply) = t.post("/api/v1/tasks", json!({"payload": {}})).await;
    let message = error_message(
        status,
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert!(message.contains("kind"), "{message}");
    let (status, reply) = t
        .post("/api/v1/tasks", json!({"kind": "echo", "colour": "red"}))
        .await;
    let message = error_message(
        status,
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert!(message.contains("colour"), "{message}");

    // A time that is not RFC 3339 is answered with the form expected and an example.
    let (status, reply) = t
        .post(
            "/api/v1/tasks",
            json!({"kind": "echo", "run_after": "tomorrow"}),
        )
        .await;
    let message = error_message(
        status,
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert!(
        message.starts_with("run_after: \"tomorrow\" is not a time")
            && message.contains("RFC 3339")
            && message.contains("2026-11-27T09:00:00Z"),
        "{message}"
    );

    assert_eq!(task_count(&t).await, 0);

    // The agent routes name their fields as well, and register nothing.
    let (status, reply) = t
        .post("/api/v1/agents/register", json!({"agent_id": "a/b"}))
        .await;
    assert_invalid(status, &reply, "agent_id");
    let (status, reply) = t
        .post(
            "/api/v1/agents/register",
            json!({"agent_id": "a1", "max_concurrency": 0}),
        )
        .await;
    assert_invalid(status, &reply, "max_concurrency");
    let (status, reply) = t
        .post(
            "/api/v1/agents/register",
            json!({"agent_id": "a1", "port": 70000}),
        )
        .await;
    assert_invalid(status, &reply, "port");
    assert!(agent_ids(&t).await.is_empty());
}

#[tokio::test]
async fn unknown_enum_values_are_refused_naming_the_field() {
    let t = TestApp::spawn().await;
    let (status, reply) = t.get("/api/v1/tasks?state=bogus").await;
    assert_invalid(status, &reply, "state");
    let (status, reply) = t.get("/api/v1/tasks?limit=0").await;
    assert_invalid(status, &reply, "limit");

    t.register("a1", &["shell"], 1).await;
    t.submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let task = t.claim("a1", 5).await.expect("claimed");
    let id = task["id"].as_str().unwrap();
    let path = format!("/api/v1/tasks/{id}/logs");
    let (status, reply) = t
        .post(
            &path,
            json!({"attempt": task["attempt"], "lines": [
                {"text": "fine"}, {"text": "odd", "stream": "stdweird"}]}),
        )
        .await;
    assert_invalid(status, &reply, "lines[1].stream");
    // Nothing of the refused batch was stored.
    let (status, logs) = t.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{logs}");
    assert_eq!(logs["lines"], json!([]), "{logs}");

    let (status, reply) = t
        .heartbeat("a1", json!({"cpu_percent": 150.0, "memory_percent": 10.0}))
        .await;
    assert_invalid(status, &reply, "cpu_percent");
    let (status, reply) = t.get("/api/v1/agents/a1/tasks/next?wait=soon").await;
    assert_invalid(status, &reply, "wait");
    // The task is untouched by all of this.
    let stored = t.task(id).await;
    assert_eq!(stored["state"], "running");
    assert_eq!(stored["attempt"], 1);
}

#[tokio::test]
async fn an_oversize_body_is_a_413_and_creates_nothing() {
    let t = TestApp::spawn_with(|s| s.body_limit = 1024).await;
    let big = json!({"kind": "echo", "payload": {"blob": "x".repeat(4096)}});
    let (status, reply) = t.post("/api/v1/tasks", big).await;
    error_message(
        status,
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // Without a Content-Length up front (a chunked body), the limit still holds.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(r#"{"kind": "echo", "payload": {"blob": ""#.to_owned()),
        Ok("y".repeat(4096)),
        Ok(r#""}}"#.to_owned()),
    ];
    let (status, reply) = TestApp::send(
        t.request(Method::POST, "/api/v1/tasks")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    error_message(
        status,
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(task_count(&t).await, 0);

    // A body under the limit is accepted: the limit, not the route, refused the others.
    let small = json!({"kind": "echo", "payload": {"blob": "x".repeat(512)}});
    t.submit(small).await;
    assert_eq!(task_count(&t).await, 1);
}

#[tokio::test]
async fn keys_guard_the_routes_and_rejected_requests_change_nothing() {
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret("admin");
        s.agent_key = secret("agent");
    })
    .await;
    let task_body = json!({"kind": "echo", "capabilities": ["shell"]});
    let register_body = json!({"agent_id": "a1", "capabilities": ["shell"], "instance_id": "p1"});
    let call = |method: Method, path: &str, key: Option<&str>, body: Option<&Value>| {
        let mut req = t.client.request(method, t.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        TestApp::send(req)
    };

    // No key, a wrong key or an empty one: 401, and nothing happens.
    for key in [None, Some("wrong"), Some("")] {
        let (status, reply) = call(Method::POST, "/api/v1/tasks", key, Some(&task_body)).await;
        error_message(status, &reply, StatusCode::UNAUTHORIZED, "unauthorized");
        let (status, reply) = call(
            Method::POST,
            "/api/v1/agents/register",
            key,
            Some(&register_body),
        )
        .await;
        error_message(status, &reply, StatusCode::UNAUTHORIZED, "unauthorized");
        for path in [
            "/api/v1/tasks",
            "/api/v1/agents",
            "/api/v1/events",
            "/api/v1/audit",
        ] {
            let (status, reply) = call(Method::GET, path, key, None).await;
            error_message(status, &reply, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let (status, reply) = TestApp::send(
        t.client
            .post(t.url("/api/v1/tasks"))
            .basic_auth("admin", None::<&str>)
            .json(&task_body),
    )
    .await;
    error_message(status, &reply, StatusCode::UNAUTHORIZED, "unauthorized");

    // The agent key on admin routes: 403, and nothing happens.
    let (status, reply) = call(
        Method::POST,
        "/api/v1/tasks",
        Some("agent"),
        Some(&task_body),
    )
    .await;
    error_message(status, &reply, StatusCode::FORBIDDEN, "forbidden");
    for path in [
        "/api/v1/tasks",
        "/api/v1/agents",
        "/api/v1/events",
        "/api/v1/audit",
    ] {
        let (status, reply) = call(Method::GET, path, Some("agent"), None).await;
        error_message(status, &reply, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(task_count(&t).await, 0);
    assert!(agent_ids(&t).await.is_empty());

    // The agent key on agent routes works.
    let (status, reply) = call(
        Method::POST,
        "/api/v1/agents/register",
        Some("agent"),
        Some(&register_body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let beat = json!({"cpu_percent": 5.0, "memory_percent": 5.0});
    let (status, reply) = call(
        Method::POST,
        "/api/v1/agents/a1/heartbeat",
        Some("agent"),
        Some(&beat),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, reply) = call(
        Method::GET,
        "/api/v1/agents/a1/tasks/next?wait=0",
        Some("agent"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{reply}");
    // An agent route without a key is still refused.
    let (status, reply) = call(
        Method::POST,
        "/api/v1/agents/a1/heartbeat",
        None,
        Some(&beat),
    )
    .await;
    error_message(status, &reply, StatusCode::UNAUTHORIZED, "unauthorized");

    // The admin key works everywhere, agent routes included.
    let task = t.submit(task_body.clone()).await;
    assert_eq!(task_count(&t).await, 1);
    let claimed = t.claim("a1", 5).await.expect("claimed with the admin key");
    assert_eq!(claimed["id"], task["id"]);
    let (status, reply) = t.heartbeat("a1", beat.clone()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, reply) = t.complete(&claimed, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    // The agent key alone cannot drain an agent (any agent could drain every other) …
    let (status, reply) = call(Method::POST, "/api/v1/agents/a1/drain", Some("agent"), None).await;
    error_message(status, &reply, StatusCode::FORBIDDEN, "forbidden");
    let (status, reply) = call(
        Method::POST,
        "/api/v1/agents/a1/drain",
        Some("agent"),
        Some(&json!({"instance_id": "someone-else"})),
    )
    .await;
    error_message(status, &reply, StatusCode::CONFLICT, "conflict");
    // … but an agent that is leaving drains itself, naming its current process.
    let (status, reply) = call(
        Method::POST,
        "/api/v1/agents/a1/drain",
        Some("agent"),
        Some(&json!({"instance_id": "p1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["status"], "draining");
    assert_eq!(reply["drained_by"], "agent");
    // Undrain is the operator's.
    let (status, reply) = call(
        Method::POST,
        "/api/v1/agents/a1/undrain",
        Some("agent"),
        None,
    )
    .await;
    error_message(status, &reply, StatusCode::FORBIDDEN, "forbidden");

    // Operational routes need no key.
    for path in ["/health", "/metrics", "/api/v1/openapi.json"] {
        let (status, reply) = call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {reply}");
    }
}

#[tokio::test]
async fn an_exposed_address_without_a_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let mut settings = Settings::new(dir.path().join("muster.db"));
    settings.addr = listener.local_addr().unwrap();
    match Server::build(settings.clone(), listener).await {
        Ok(_) => panic!("a server on 0.0.0.0 without a key was built"),
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains("API_KEY"), "{message}");
        }
    }

    // With a key the same address is fine: the key, not the address, was the objection.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    settings.addr = listener.local_addr().unwrap();
    settings.api_key = secret("k");
    let server = Server::build(settings, listener).await;
    assert!(server.is_ok(), "with a key the server builds");
}

#[tokio::test]
async fn a_second_server_on_the_same_file_refuses_to_start_and_names_the_first() {
    let t = TestApp::spawn().await;
    let db = t.app.settings().db_path.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    match Server::build(Settings::new(&db), listener).await {
        Ok(_) => panic!("two servers share {}", db.display()),
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains(&db.display().to_string()), "{message}");
            assert!(
                message.contains(&format!("pid {}", std::process::id())),
                "{message}"
            );
        }
    }
    // The first is unharmed, and once it stops the file is free again.
    t.register("a1", &["shell"], 1).await;
    let dir = t.stop().await;
    let t = TestApp::spawn_in(dir, |_| {}).await;
    assert_eq!(t.get("/api/v1/agents/a1").await.0, StatusCode::OK);
}

/// The value of one sample line of a Prometheus text exposition, e.g. `muster_tasks{state="queued"}`.
#[tokio::test]
async fn metrics_are_prometheus_text_with_the_promised_series() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    for _ in 0..3 {
        t.submit(json!({"kind": "later", "capabilities": ["gpu"]}))
            .await;
    }
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    let running = t.claim("a1", 5).await.expect("claimed");
    assert_eq!(running["id"], task["id"]);
    t.get(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    t.settle().await;

    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, r#"muster_tasks{state="queued"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"muster_tasks{state="running"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"muster_tasks{state="completed"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"muster_agents{status="online"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"muster_agents{status="offline"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "muster_tasks_running_past_lease"),
        Some(0.0),
        "{text}"
    );
    for histogram in [
        "muster_dispatch_round_seconds",
        "muster_http_request_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is a histogram: {text}"
        );
    }
    let rounds = sample(&text, "muster_dispatch_round_seconds_count").expect("round count");
    assert!(rounds >= 1.0, "{text}");
    assert!(
        text.contains(r#"muster_dispatch_round_seconds_bucket{le="+Inf"}"#),
        "{text}"
    );
    // Requests are labelled by route template, never by the raw path with its ids.
    let submits = sample(
        &text,
        r#"muster_http_request_seconds_count{method="POST",route="/api/v1/tasks",status="201"}"#,
    );
    assert_eq!(submits, Some(4.0), "{text}");
    assert!(
        text.contains(r#"route="/api/v1/tasks/{id}""#),
        "the task route template is a label: {text}"
    );
    assert!(
        !text.contains(task["id"].as_str().unwrap()),
        "a task id leaked into a label: {text}"
    );

    // A running task whose lease lapsed (no heartbeat, no sweep yet) is counted.
    t.advance(Duration::from_secs(3600));
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(&text, "muster_tasks_running_past_lease"),
        Some(1.0),
        "{text}"
    );
}

/// Every route of the router in `http/mod.rs`, with its methods.
const ROUTES: &[(&str, &[&str])] = &[
    ("/health", &["get"]),
    ("/metrics", &["get"]),
    ("/api/v1/openapi.json", &["get"]),
    ("/api/v1/agents/register", &["post"]),
    ("/api/v1/agents", &["get"]),
    ("/api/v1/agents/{id}", &["get", "delete"]),
    ("/api/v1/agents/{id}/drain", &["post"]),
    ("/api/v1/agents/{id}/undrain", &["post"]),
    ("/api/v1/agents/{id}/heartbeat", &["post"]),
    ("/api/v1/agents/{id}/tasks/next", &["get"]),
    ("/api/v1/agents/{id}/tasks/claim", &["get"]),
    ("/api/v1/agents/{id}/reports", &["post"]),
    ("/api/v1/tasks", &["get", "post"]),
    ("/api/v1/tasks/batch", &["post"]),
    ("/api/v1/tasks/{id}", &["get"]),
    ("/api/v1/tasks/{id}/cancel", &["post"]),
    ("/api/v1/tasks/{id}/retry", &["post"]),
    ("/api/v1/tasks/{id}/complete", &["post"]),
    ("/api/v1/tasks/{id}/fail", &["post"]),
    ("/api/v1/tasks/{id}/logs", &["get", "post"]),
    ("/api/v1/events", &["get"]),
    ("/api/v1/audit", &["get"]),
    ("/api/v1/notifications", &["get"]),
    ("/api/v1/notifications/{id}", &["get"]),
    ("/api/v1/notify/channels", &["get"]),
    ("/api/v1/notify/channels/{name}/test", &["post"]),
    ("/hooks/git/{source}", &["post"]),
    ("/api/v1/gitops/plan", &["post"]),
    ("/api/v1/deployments", &["get"]),
    ("/api/v1/deployments/{id}", &["get"]),
    ("/api/v1/deployments/{id}/redeploy", &["post"]),
    ("/api/v1/gitops/pauses", &["get"]),
    ("/api/v1/llm/usage", &["get"]),
    ("/api/v1/llm/test", &["post"]),
    ("/api/v1/llm/chat", &["post"]),
    ("/api/v1/gitops/pause", &["post"]),
    ("/api/v1/gitops/resume", &["post"]),
    ("/hooks/alerts/{source}", &["post"]),
    ("/api/v1/incidents", &["get"]),
    ("/api/v1/incidents/{id}", &["get"]),
    ("/api/v1/incidents/{id}/approve", &["post"]),
    ("/api/v1/incidents/{id}/deny", &["post"]),
    ("/api/v1/repair", &["get"]),
    ("/api/v1/repair/pause", &["post"]),
    ("/api/v1/repair/resume", &["post"]),
    ("/api/v1/schedules", &["get", "post"]),
    ("/api/v1/schedules/{name}", &["get", "delete"]),
    ("/api/v1/schedules/{name}/run", &["post"]),
    ("/api/v1/schedules/{name}/pause", &["post"]),
    ("/api/v1/schedules/{name}/resume", &["post"]),
    ("/hooks/canary/{name}", &["post"]),
    ("/api/v1/canaries", &["get"]),
    ("/api/v1/canaries/{name}/run", &["post"]),
];

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let t = TestApp::spawn_with(|s| s.api_key = secret("admin")).await;
    let resp = t
        .client
        .get(t.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "{version}");
    assert!(doc["info"]["title"].is_string(), "{}", doc["info"]);
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is missing from the document"));
        for method in *methods {
            assert!(
                item.get(*method).is_some(),
                "{method} {path} is missing from the document"
            );
        }
    }
    // Every path the document lists is one the server routes.
    for path in paths.keys() {
        assert!(
            ROUTES.iter().any(|(p, _)| p == path),
            "the document lists {path}, which no route serves"
        );
    }

    // Client generators name methods after operation ids, and validators refuse duplicates.
    let mut ids = std::collections::BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is not unique");
    }

    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let responses = op["responses"].as_object().expect("responses");
        let status = |code: &str| responses.contains_key(code);
        // Any route can be refused for the connection cap or an unavailable store.
        assert!(status("503"), "{what} does not list 503");
        if PUBLIC.contains(&path.as_str()) {
            assert_eq!(op["security"], json!([{}]), "{what} needs no key");
        } else if SIGNED.contains(&path.as_str()) {
            assert_eq!(op["security"], json!([{}]), "{what} is signed, not keyed");
            for code in ["401", "413"] {
                assert!(status(code), "{what} is signed but does not list {code}");
            }
            continue;
        } else {
            let security = effective_security(&doc, &op);
            assert!(
                !security.is_empty()
                    && security
                        .iter()
                        .all(|r| r.get("bearer").is_some() || r.get("session").is_some()),
                "{what} needs a key: {security:?}"
            );
            for code in ["401", "403"] {
                assert!(status(code), "{what} needs a key but does not list {code}");
            }
        }
        if op["requestBody"]["content"]
            .get("application/json")
            .is_some()
        {
            for code in ["400", "413", "415", "422"] {
                assert!(
                    status(code),
                    "{what} reads a JSON body but does not list {code}"
                );
            }
        }
        if path.contains("{id}") {
            assert!(status("404"), "{what} looks an id up but does not list 404");
        }
        // Every error answer is the envelope (the health check's 503 may also be its own body).
        for (code, response) in responses {
            if code.starts_with('4') || (code.starts_with('5') && path != "/health") {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{what} {code}"
                );
            }
        }
    }
}

/// The routes that need no key.
const PUBLIC: &[&str] = &["/health", "/metrics", "/api/v1/openapi.json"];

/// Routes a forge or a monitor calls: no key, but their own credential (a forge's signature
/// over the body, see `gitops`; a monitor's bearer token, the alert source's, see `repair`;
/// the server's own signature on its canaries' requests, see `canaries`).
const SIGNED: &[&str] = &[
    "/hooks/git/{source}",
    "/hooks/alerts/{source}",
    "/hooks/canary/{name}",
];

/// Every operation of the document: method, path, operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            all.push((method.clone(), path.clone(), op.clone()));
        }
    }
    all
}

/// The security requirements in force for an operation: its own, else the document's.
fn effective_security(doc: &Value, op: &Value) -> Vec<serde_json::Map<String, Value>> {
    op.get("security")
        .unwrap_or(&doc["security"])
        .as_array()
        .expect("security requirements")
        .iter()
        .map(|r| r.as_object().expect("a requirement").clone())
        .collect()
}

/// The document's security says the truth: every operation it marks as keyed refuses a request
/// without a key (401), and the public ones answer it. A forge's hook carries a signature, not
/// a key: unsigned, it is refused (401) too, and so is a monitor's alert without its source's
/// bearer token.
#[tokio::test]
async fn every_operation_the_document_marks_keyed_refuses_a_request_without_a_key() {
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret("admin");
        let source = toml::from_str("name = \"infra\"\nforge = \"github\"\nsecret_env = \"S\"")
            .expect("a source");
        s.git = muster_server::gitops::GitConfig::resolve(&[(1, source)], &[], &|_| {
            Some("0123456789abcdef-secret".into())
        })
        .expect("valid");
        s.repair.sources = vec![muster_server::repair::AlertSource {
            name: "infra".into(),
            kind: muster_server::repair::config::AlertKind::UptimeKuma,
            token: muster_server::config::Secret::new("0123456789abcdef-token"),
        }];
    })
    .await;
    let (_, doc) = t.get("/api/v1/openapi.json").await;
    let keyless = reqwest::Client::new();
    for (method, path, op) in operations(&doc) {
        let url = t.url(
            &path
                .replace("{id}", &uuid::Uuid::now_v7().to_string())
                .replace("{source}", "infra"),
        );
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = keyless.request(method.clone(), url);
        if op.get("requestBody").is_some() {
            request = request.json(&json!({}));
        }
        let status = request.send().await.expect("sent").status();
        if PUBLIC.contains(&path.as_str()) {
            assert_eq!(status, StatusCode::OK, "{method} {path}");
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn tasks_and_agents_survive_a_graceful_restart() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 2).await;
    let done = t
        .submit(json!({"kind": "one", "capabilities": ["shell"], "payload": {"n": 1}}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("claimed");
    assert_eq!(claimed["id"], done["id"]);
    let (status, reply) = t.complete(&claimed, json!({"out": 42})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let running = t
        .submit(json!({"kind": "two", "capabilities": ["shell"]}))
        .await;
    let claimed = t.claim("a1", 5).await.expect("claimed");
    assert_eq!(claimed["id"], running["id"]);
    let queued = t
        .submit(
            json!({"kind": "three", "capabilities": ["gpu"], "priority": 7,
                       "lock_key": "deploy:x", "labels": {"team": "ops"}}),
        )
        .await;
    let cancelled = t
        .submit(json!({"kind": "four", "capabilities": ["gpu"]}))
        .await;
    let (status, reply) = t
        .post(
            &format!("/api/v1/tasks/{}/cancel", cancelled["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");

    let mut before = Vec::new();
    for task in [&done, &running, &queued, &cancelled] {
        before.push(t.task(task["id"].as_str().unwrap()).await);
    }
    assert_eq!(
        before
            .iter()
            .map(|t| t["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["completed", "running", "queued", "cancelled"]
    );

    let dir = t.stop().await;
    let t = TestApp::spawn_in(dir, |_| {}).await;
    for old in &before {
        let now = t.task(old["id"].as_str().unwrap()).await;
        for field in [
            "state",
            "kind",
            "payload",
            "capabilities",
            "priority",
            "attempt",
            "agent_id",
            "lock_key",
            "labels",
            "result",
            "created_at",
        ] {
            assert_eq!(now[field], old[field], "{field} of {}", old["id"]);
        }
        assert_eq!(
            now["attempts"], old["attempts"],
            "attempts of {}",
            old["id"]
        );
    }
    assert_eq!(task_count(&t).await, 4);
    let (status, agent) = t.get("/api/v1/agents/a1").await;
    assert_eq!(status, StatusCode::OK, "{agent}");
    assert_eq!(agent["capabilities"], json!(["shell"]));
    assert_eq!(agent["max_concurrency"], 2);
    assert_eq!(agent_ids(&t).await, ["a1"]);
}

#[tokio::test]
async fn unknown_routes_and_ids_are_404_and_malformed_ids_422() {
    let t = TestApp::spawn().await;
    // "/" is the web UI now; other paths outside the API are still the API's 404.
    for path in ["/api/v1/nothing", "/api/v2/tasks", "/no-such-page"] {
        let (status, reply) = t.get(path).await;
        error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
    }
    for path in [
        "/api/v1/tasks/not-a-uuid",
        "/api/v1/tasks/123/logs",
        "/api/v1/tasks/xyz/cancel",
    ] {
        let (status, reply) = if path.ends_with("cancel") {
            t.post(path, json!({})).await
        } else {
            t.get(path).await
        };
        assert_invalid(status, &reply, "id");
    }
    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/api/v1/tasks/{unknown}"),
        format!("/api/v1/tasks/{unknown}/logs"),
    ] {
        let (status, reply) = t.get(&path).await;
        error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
    }
    for path in [
        format!("/api/v1/tasks/{unknown}/cancel"),
        format!("/api/v1/tasks/{unknown}/retry"),
    ] {
        let (status, reply) = t.post(&path, json!({})).await;
        error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, reply) = t
        .post(
            &format!("/api/v1/tasks/{unknown}/complete"),
            json!({"attempt": 1}),
        )
        .await;
    error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
    let (status, reply) = t.get("/api/v1/agents/ghost").await;
    error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
    let (status, reply) = t.heartbeat("ghost", json!({})).await;
    error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
    let (status, reply) = t.get("/api/v1/agents/ghost/tasks/next").await;
    error_message(status, &reply, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_wrong_method_is_answered_in_the_error_envelope() {
    let t = TestApp::spawn().await;
    for (method, path) in [
        (Method::PUT, "/api/v1/tasks"),
        (
            Method::DELETE,
            "/api/v1/tasks/0190c2a4-7b5e-7c3e-9a8b-1234567890ab",
        ),
        (Method::GET, "/api/v1/agents/register"),
    ] {
        let (status, reply) = TestApp::send(t.request(method.clone(), path)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            reply["error"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
                && reply["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
            "{method} {path}: the error envelope was expected, got {reply:?}"
        );
    }
}

const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_long_poll_in_flight_ends_with_204_at_shutdown() {
    // A grace period longer than the bound: only ending the long-poll itself lets stop() finish.
    let t = TestApp::spawn_with(|s| s.shutdown_grace = Duration::from_secs(600)).await;
    t.register("a1", &["shell"], 1).await;
    let (_, before) = t.get("/api/v1/agents/a1").await;
    // Move time on so the claim's sign of life is visible as a new last_heartbeat_at.
    t.advance(Duration::from_secs(60));
    let poll = t
        .request(Method::GET, "/api/v1/agents/a1/tasks/next?wait=60")
        .send();
    let poll = tokio::spawn(poll);
    // Wait (bounded) until the server is inside the long-poll.
    tokio::time::timeout(SHUTDOWN_BOUND, async {
        loop {
            let (_, now) = t.get("/api/v1/agents/a1").await;
            if now["last_heartbeat_at"] != before["last_heartbeat_at"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the long-poll reached the server");
    assert!(
        !poll.is_finished(),
        "the long-poll answered before shutdown"
    );

    tokio::time::timeout(SHUTDOWN_BOUND, t.stop())
        .await
        .expect("stop() completes while a long-poll was open");
    let resp = tokio::time::timeout(SHUTDOWN_BOUND, poll)
        .await
        .expect("the long-poll returns")
        .expect("poll task")
        .expect("the long-poll got an answer, not a dropped connection");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn open_streams_end_at_shutdown() {
    let t = TestApp::spawn_with(|s| s.shutdown_grace = Duration::from_secs(600)).await;
    t.register("a1", &["shell"], 1).await;
    let task = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.claim("a1", 5).await.expect("claimed");
    let mut logs = follow_logs(&t, task["id"].as_str().unwrap(), None).await;
    let mut feed = follow_events(&t, None).await;

    tokio::time::timeout(SHUTDOWN_BOUND, t.stop())
        .await
        .expect("stop() completes while streams were open");
    logs.expect_finished().await;
    feed.expect_finished().await;
}

#[tokio::test]
async fn a_page_on_another_site_cannot_change_anything() {
    // No key (loopback): only the origin check stands between a hostile page and the API.
    let t = TestApp::spawn().await;
    t.register("nas", &[], 1).await;
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
        ("origin", "null"),
    ] {
        let (status, reply) = TestApp::send(
            t.request(reqwest::Method::POST, "/api/v1/agents/nas/drain")
                .header(name, value),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {value}: {reply}");
        assert_eq!(reply["error"]["code"], "forbidden");
    }
    let (_, agent) = t.get("/api/v1/agents/nas").await;
    assert_eq!(
        agent["status"], "online",
        "a refused request changed the agent"
    );
    // The server's own pages (same origin) and clients that send no origin still work.
    let host = t.base.trim_start_matches("http://").to_owned();
    let (status, reply) = TestApp::send(
        t.request(reqwest::Method::POST, "/api/v1/agents/nas/drain")
            .header("origin", format!("http://{host}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    // Reading is not refused: a cross-site GET cannot change anything.
    let (status, _) = TestApp::send(
        t.request(reqwest::Method::GET, "/api/v1/agents")
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_path_is_an_html_page_for_a_browser_and_json_for_a_client() {
    let t = TestApp::spawn().await;
    let page = t
        .request(Method::GET, "/no/such/page")
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let kind = page.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/html"), "{kind}");
    let (status, body) = t.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test]
async fn metrics_count_what_an_operator_graphs() {
    let t = TestApp::spawn().await;
    let metric = |text: &str, series: &str| {
        sample(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(
        metric(
            &metrics_text(&t).await,
            "muster_oldest_queued_task_age_seconds"
        ),
        0.0
    );
    t.register("a1", &["shell"], 2).await;
    let done = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    // An idempotent repeat is no new submission.
    let key = json!({"kind": "echo", "capabilities": ["gpu"], "idempotency_key": "k"});
    t.submit(key.clone()).await;
    let (status, _) = t.post("/api/v1/tasks", key).await;
    assert_eq!(status, StatusCode::OK);
    let claimed = t.claim("a1", 5).await.expect("claimed");
    assert_eq!(claimed["id"], done["id"]);
    t.complete(&claimed, json!({})).await;
    let lost = t
        .submit(json!({"kind": "echo", "capabilities": ["shell"]}))
        .await;
    t.claim("a1", 5).await.expect("claimed");
    t.advance(t.app.settings().heartbeat_timeout + Duration::from_secs(5));
    t.sweep().await;
    assert_eq!(
        t.task(lost["id"].as_str().unwrap()).await["state"],
        "queued"
    );

    let text = metrics_text(&t).await;
    assert_eq!(metric(&text, "muster_tasks_submitted_total"), 3.0, "{text}");
    assert_eq!(
        metric(&text, r#"muster_tasks_finished_total{outcome="completed"}"#),
        1.0
    );
    assert_eq!(metric(&text, "muster_task_attempts_lost_total"), 1.0);
    assert!(
        metric(&text, "muster_oldest_queued_task_age_seconds") >= 5.0,
        "{text}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds") > 0.0, "{text}");
}
