//! MCP servers as an LLM session's tool sources, through the official Rust SDK (`rmcp`): a
//! stdio server is a child program of the session, started by [`crate::process`] and spoken
//! to over its stdin and stdout. A server lives as long as the session that started it.

use std::time::Duration;

use muster_client::TaskContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, JsonObject,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::{ServiceExt, model};

use crate::config::McpServerConfig;
use crate::process::ServerProcess;

/// How long a server has to start and answer `initialize` and `tools/list`: a server started
/// through `npx` or `uvx` may first download itself.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One connected MCP server.
pub struct McpServer {
    pub name: String,
    client: RunningService<RoleClient, ClientConfig>,
    /// The program, for a stdio server; killed with its process group when dropped.
    process: Option<ServerProcess>,
}

/// What a tool call came to, in the words the model reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    pub text: String,
    pub is_error: bool,
}

impl ToolOutcome {
    pub fn ok(text: impl Into<String>) -> Self {
        ToolOutcome {
            text: text.into(),
            is_error: false,
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        ToolOutcome {
            text: text.into(),
            is_error: true,
        }
    }
}

fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("muster-agent", env!("CARGO_PKG_VERSION")),
    )
}

impl McpServer {
    /// Starts the server's program and completes MCP's handshake with it.
    pub async fn connect(ctx: &TaskContext, config: &McpServerConfig) -> Result<McpServer, String> {
        let env: Vec<(&str, String)> = config
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .chain(
                config
                    .env_from
                    .iter()
                    .map(|(name, var)| (name.as_str(), std::env::var(var).unwrap_or_default())),
            )
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut argv = vec![config.command.clone()];
        argv.extend(config.args.iter().cloned());
        let label = format!("mcp {}", config.name);
        let pipes = ServerProcess::spawn(ctx, &label, &argv, &env)?;
        let handshake = client_config().serve((pipes.stdout, pipes.stdin));
        let client = match tokio::time::timeout(START_TIMEOUT, handshake).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(format!(
                    "the MCP server {} did not complete the handshake: {e}",
                    config.name
                ));
            }
            Err(_) => {
                return Err(format!(
                    "the MCP server {} did not answer within {}s",
                    config.name,
                    START_TIMEOUT.as_secs()
                ));
            }
        };
        Ok(McpServer {
            name: config.name.clone(),
            client,
            process: Some(pipes.process),
        })
    }

    /// The program's process id, for a stdio server that runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ServerProcess::id)
    }

    /// Every tool the server offers (all pages).
    pub async fn tools(&self) -> Result<Vec<model::Tool>, String> {
        match tokio::time::timeout(START_TIMEOUT, self.client.list_all_tools()).await {
            Ok(Ok(tools)) => Ok(tools),
            Ok(Err(e)) => Err(format!("the MCP server {} listed no tools: {e}", self.name)),
            Err(_) => Err(format!(
                "the MCP server {} did not list its tools within {}s",
                self.name,
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// Calls one tool. Whatever goes wrong is the model's to read, not the session's end: a
    /// refusal of the arguments, the tool's own error, a server that went away.
    pub async fn call(&self, tool: &str, arguments: JsonObject) -> ToolOutcome {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        match self.client.call_tool(params).await {
            Ok(result) => outcome(&result),
            Err(ServiceError::McpError(e)) => ToolOutcome::error(format!(
                "the MCP server {} refused the call: {}",
                self.name, e.message
            )),
            Err(e) => ToolOutcome::error(format!(
                "the MCP server {} could not be asked: {e}",
                self.name
            )),
        }
    }

    /// Ends the session with the server: closes its stdin (a stdio server's signal to exit),
    /// then stops its process group.
    pub async fn close(mut self) {
        let _ = self.client.close().await;
        if let Some(process) = self.process.take() {
            process.stop().await;
        }
    }
}

/// A tool's result as text: its text blocks, a word for each block of another kind, or its
/// structured content when it has nothing else.
fn outcome(result: &CallToolResult) -> ToolOutcome {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(text) => text.text.clone(),
            ContentBlock::Image(_) => "[an image]".to_owned(),
            ContentBlock::Audio(_) => "[audio]".to_owned(),
            ContentBlock::Resource(_) => "[an embedded resource]".to_owned(),
            ContentBlock::ResourceLink(link) => format!("[a resource: {}]", link.uri),
            _ => "[content of a kind this agent does not read]".to_owned(),
        })
        .collect();
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    let text = parts.join("\n");
    if result.is_error == Some(true) {
        ToolOutcome::error(text)
    } else {
        ToolOutcome::ok(text)
    }
}
