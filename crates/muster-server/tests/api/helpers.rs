//! `TestApp`: a real server on a free loopback port, a temporary database, and typed calls.

use std::sync::Arc;
use std::time::Duration;

use muster_server::clock::{AdjustableClock, Clock, SystemClock};
use muster_server::config::Secret;
use muster_server::{App, Server, Settings};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub app: Arc<App>,
    pub clock: Arc<AdjustableClock>,
    pub dir: tempfile::TempDir,
    /// The key sent with every request made through [`TestApp::request`].
    pub key: Option<String>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server with test-friendly settings adjusted by `configure`.
    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in(dir, configure).await
    }

    /// Starts a server on the database in `dir` (to restart on the same file).
    pub async fn spawn_in(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Settings),
    ) -> TestApp {
        Self::spawn_at(dir, configure, Duration::ZERO).await
    }

    /// Stops this server and starts another on the same file as if it had been away for
    /// `outage` (its clock starts that far ahead).
    pub async fn restart_after(self, outage: Duration) -> TestApp {
        let ahead =
            Duration::from_millis(self.clock.now_ms().saturating_sub(SystemClock.now_ms()) as u64);
        let dir = self.stop().await;
        Self::spawn_at(dir, |_| {}, ahead + outage).await
    }

    /// Stops this server and starts another on the same file with settings `configure` sets
    /// (settings are not kept across a restart, as a process's would not be).
    pub async fn restart_with(self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let dir = self.stop().await;
        Self::spawn_at(dir, configure, Duration::ZERO).await
    }

    async fn spawn_at(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Settings),
        ahead: Duration,
    ) -> TestApp {
        let mut settings = Settings::new(dir.path().join("muster.db"));
        // Sweeps run when a test asks for them, at the time it set.
        settings.sweep_interval = Duration::from_secs(3600);
        settings.shutdown_grace = Duration::from_secs(5);
        configure(&mut settings);
        let key = settings.api_key.as_ref().map(|k| k.expose().to_owned());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let clock = Arc::new(AdjustableClock::default());
        clock.advance(ahead);
        let server = Server::build_with_clock(settings, listener, clock.clone())
            .await
            .expect("server builds");
        let base = format!("http://{}", server.local_addr());
        let app = server.app();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let handle = tokio::spawn(server.run(async move { signal.cancelled().await }));
        TestApp {
            base,
            client: reqwest::Client::new(),
            app,
            clock,
            dir,
            key,
            stop,
            handle,
        }
    }

    /// Shuts the server down gracefully and waits for it; returns the database folder.
    pub async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        self.handle.await.expect("server task ends cleanly");
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request carrying the admin key, if the server has one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.client.request(method, self.url(path));
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        Self::send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::send(self.request(Method::POST, path).json(&body)).await
    }

    pub async fn register(
        &self,
        agent_id: &str,
        capabilities: &[&str],
        max_concurrency: u32,
    ) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/agents/register",
                json!({"agent_id": agent_id, "host": "127.0.0.1", "port": 9000,
                       "capabilities": capabilities, "mcp_servers": [],
                       "max_concurrency": max_concurrency}),
            )
            .await;
        assert!(status.is_success(), "register {agent_id}: {status} {body}");
        body
    }

    /// Submits and asserts 201; returns the task.
    pub async fn submit(&self, body: Value) -> Value {
        let (status, task) = self.post("/api/v1/tasks", body).await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        task
    }

    /// One claim, waiting up to `wait_s`; the task if one came.
    pub async fn claim(&self, agent_id: &str, wait_s: u64) -> Option<Value> {
        let (status, body) = self
            .get(&format!(
                "/api/v1/agents/{agent_id}/tasks/next?wait={wait_s}"
            ))
            .await;
        match status {
            StatusCode::OK => Some(body),
            StatusCode::NO_CONTENT => None,
            other => panic!("claim by {agent_id}: {other} {body}"),
        }
    }

    pub async fn complete(&self, task: &Value, result: Value) -> (StatusCode, Value) {
        self.post(
            &format!("/api/v1/tasks/{}/complete", task["id"].as_str().unwrap()),
            json!({"attempt": task["attempt"], "result": result}),
        )
        .await
    }

    pub async fn fail(&self, task: &Value, error: &str, retryable: bool) -> (StatusCode, Value) {
        self.post(
            &format!("/api/v1/tasks/{}/fail", task["id"].as_str().unwrap()),
            json!({"attempt": task["attempt"], "error": error, "retryable": retryable}),
        )
        .await
    }

    pub async fn heartbeat(&self, agent_id: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/agents/{agent_id}/heartbeat"), body)
            .await
    }

    /// The task as the server has it now, with attempts.
    pub async fn task(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the dispatcher has processed everything sent so far.
    pub async fn settle(&self) {
        self.app.changes.dispatcher().settle().await;
    }

    /// Moves the server's clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Delivers what the outbox holds (the background loop may have been first; either way
    /// every row committed so far is in the log when this returns), then reads the audit log.
    pub async fn audit_entries(&self) -> Vec<Value> {
        muster_server::outbox::deliver_once(&self.app)
            .await
            .expect("delivery");
        let (status, page) = self.get("/api/v1/audit?limit=1000").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["entries"].as_array().expect("entries").clone()
    }

    /// The `hook.refused` records of the refusals so far: once their minutes are over, the
    /// sweep writes one per hook and minute.
    pub async fn refused_hooks_audited(&self) -> Vec<Value> {
        self.advance(Duration::from_secs(120));
        self.sweep().await;
        self.audit_entries()
            .await
            .into_iter()
            .filter(|e| e["action"] == "hook.refused")
            .collect()
    }

    /// One health sweep at the server's current time, then lets the dispatcher catch up.
    pub async fn sweep(&self) -> muster_server::sweeper::Swept {
        let swept = muster_server::sweeper::sweep_once(&self.app)
            .await
            .expect("sweep");
        self.settle().await;
        swept
    }
}

/// A secret for settings in tests.
pub fn secret(value: &str) -> Option<Secret> {
    Some(Secret::new(value))
}

/// The value of one series (name and labels, as exposed) in a metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// `/metrics` as text, checked to be served as Prometheus text.
pub async fn metrics_text(t: &TestApp) -> String {
    let resp = t.client.get(t.url("/metrics")).send().await.expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.expect("body")
}

/// Polls `check` until it answers `Some`; fails the test with `what` after 30 s. A deadline for
/// a hang, not a timing assertion.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
