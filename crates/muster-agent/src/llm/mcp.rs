//! MCP servers as an LLM session's tool sources, through the official Rust SDK (`rmcp`): a
//! stdio server is a child program of the session, started by [`crate::process`] and spoken
//! to over its stdin and stdout; a streamable HTTP server is reached at its URL, with a bearer
//! token when configured. A connection lives as long as the session that made it.

use std::collections::BTreeMap;
use std::sync::Once;
use std::time::Duration;

use muster_client::TaskContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, JsonObject,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ServiceExt, model};

use crate::config::{McpServerConfig, Secret};
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

/// rmcp's HTTP client (reqwest 0.13 with rustls and no crypto provider of its own) takes the
/// process's default provider: ring, which the rest of the agent's TLS uses too.
fn install_crypto_provider() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // An error means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl McpServer {
    /// Starts or reaches the server and completes MCP's handshake with it. `secrets` holds
    /// the values of the variables its `env_from` and `token_env` name.
    pub async fn connect(
        ctx: &TaskContext,
        config: &McpServerConfig,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<McpServer, String> {
        let secret = |var: &str| secrets.get(var).map_or("", Secret::expose).to_owned();
        let (client, process) = match (&config.command, &config.url) {
            (Some(command), _) => {
                let (client, process) = Self::start(ctx, config, command, &secret).await?;
                (client, Some(process))
            }
            (None, Some(url)) => (Self::reach(config, url, &secret).await?, None),
            (None, None) => unreachable!("checked at load: command or url"),
        };
        Ok(McpServer {
            name: config.name.clone(),
            client,
            process,
        })
    }

    /// A stdio server: its program, started as a child of the session.
    async fn start(
        ctx: &TaskContext,
        config: &McpServerConfig,
        command: &str,
        secret: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<(RunningService<RoleClient, ClientConfig>, ServerProcess), String> {
        let env: Vec<(&str, String)> = config
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .chain(
                config
                    .env_from
                    .iter()
                    .map(|(name, var)| (name.as_str(), secret(var))),
            )
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut argv = vec![command.to_owned()];
        argv.extend(config.args.iter().cloned());
        let label = format!("mcp {}", config.name);
        let pipes = ServerProcess::spawn(ctx, &label, &argv, &env)?;
        let handshake = client_config().serve((pipes.stdout, pipes.stdin));
        let client = handshake_within(&config.name, handshake).await?;
        Ok((client, pipes.process))
    }

    /// A streamable HTTP server at `url`, with the bearer token of `token_env` when set.
    async fn reach(
        config: &McpServerConfig,
        url: &str,
        secret: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<RunningService<RoleClient, ClientConfig>, String> {
        install_crypto_provider();
        let mut transport = StreamableHttpClientTransportConfig::with_uri(url);
        if let Some(var) = &config.token_env {
            transport = transport.auth_header(secret(var));
        }
        let transport = StreamableHttpClientTransport::from_config(transport);
        handshake_within(&config.name, client_config().serve(transport)).await
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

/// Waits for MCP's handshake, at most [`START_TIMEOUT`].
async fn handshake_within<E: std::fmt::Display>(
    name: &str,
    handshake: impl std::future::Future<Output = Result<RunningService<RoleClient, ClientConfig>, E>>,
) -> Result<RunningService<RoleClient, ClientConfig>, String> {
    match tokio::time::timeout(START_TIMEOUT, handshake).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!(
            "the MCP server {name} did not complete the handshake: {e}"
        )),
        Err(_) => Err(format!(
            "the MCP server {name} did not answer within {}s",
            START_TIMEOUT.as_secs()
        )),
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
