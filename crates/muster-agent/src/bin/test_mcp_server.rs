//! `muster-test-mcp`: a small real MCP server (rmcp's server side) for the agent's tests, built
//! only with the `test-mcp-server` feature, which only the tests turn on.
//!
//! `muster-test-mcp stdio` serves on its stdin and stdout, as a session starts it;
//! `muster-test-mcp http` serves streamable HTTP on a free loopback port at `/mcp` and prints
//! `listening on http://ADDR/mcp` first, then serves until killed. With `MCP_TEST_PID_FILE`
//! set it writes its process id there; with `MCP_TEST_TOKEN` set (HTTP) it refuses requests
//! without `Authorization: Bearer <token>`; `MCP_TEST_GREETING` is what `greet` says.
//!
//! Tools: `add` (two integers), `note` (stores a line and answers how many are stored),
//! `fail` (always a tool error), `sleep` (never answers within a test's patience: for cancel
//! tests, after logging `sleeping` to stderr), `greet`, and `secret`, which no test allows.

use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddRequest {
    a: i64,
    b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct NoteRequest {
    text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SleepRequest {
    seconds: u64,
}

#[derive(Clone)]
struct TestServer {
    notes: Arc<Mutex<Vec<String>>>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl TestServer {
    fn new() -> Self {
        TestServer {
            notes: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Adds two integers")]
    fn add(&self, Parameters(AddRequest { a, b }): Parameters<AddRequest>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Stores a note and answers how many notes are stored")]
    fn note(&self, Parameters(NoteRequest { text }): Parameters<NoteRequest>) -> String {
        let mut notes = self.notes.lock().unwrap();
        notes.push(text);
        format!("{} notes stored", notes.len())
    }

    #[tool(description = "Always fails")]
    fn fail(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text("the disk is on fire")])
    }

    #[tool(description = "Sleeps for the given number of seconds")]
    async fn sleep(
        &self,
        Parameters(SleepRequest { seconds }): Parameters<SleepRequest>,
    ) -> String {
        eprintln!("sleeping {seconds}s");
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        "awake".to_owned()
    }

    #[tool(description = "Greets")]
    fn greet(&self) -> String {
        std::env::var("MCP_TEST_GREETING").unwrap_or_else(|_| "hello".to_owned())
    }

    #[tool(description = "Tells a secret; no test allows it")]
    fn secret(&self) -> Result<String, ErrorData> {
        Ok("the secret".to_owned())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Ok(path) = std::env::var("MCP_TEST_PID_FILE") {
        std::fs::write(path, std::process::id().to_string()).expect("pid file");
    }
    match std::env::args().nth(1).as_deref() {
        Some("stdio") => {
            let running = TestServer::new()
                .serve(rmcp::transport::stdio())
                .await
                .expect("stdio handshake");
            let _ = running.waiting().await;
        }
        Some("http") => http().await,
        _ => {
            eprintln!("usage: muster-test-mcp stdio|http");
            std::process::exit(2);
        }
    }
}

async fn http() {
    use axum::response::IntoResponse;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let service: StreamableHttpService<TestServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(TestServer::new()),
            Default::default(),
            StreamableHttpServerConfig::default(),
        );
    let mut router = axum::Router::new().nest_service("/mcp", service);
    if let Ok(token) = std::env::var("MCP_TEST_TOKEN") {
        let expected = format!("Bearer {token}");
        router = router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let allowed = request
                    .headers()
                    .get("authorization")
                    .is_some_and(|value| value.as_bytes() == expected.as_bytes());
                async move {
                    if allowed {
                        next.run(request).await
                    } else {
                        axum::http::StatusCode::UNAUTHORIZED.into_response()
                    }
                }
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("listening on http://{}/mcp", listener.local_addr().unwrap());
    axum::serve(listener, router).await.expect("serve");
}
