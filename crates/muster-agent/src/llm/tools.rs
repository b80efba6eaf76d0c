//! The tools of one LLM session: which of the agent's allow-listed tools it offers (the
//! actions `[llm]` allows and the allow-listed tools of `[[mcp.servers]]`, narrowed by the
//! task's `tools`), how each is described to the model, and how a call is judged and run.
//!
//! The model's choice is untrusted input. A tool the session does not offer, arguments that
//! are not a JSON object, or an action's parameters that fail their patterns are answered to
//! the model as a tool error and nothing runs; a tool that fails answers its error. Only a
//! cancel ends the session from here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use muster_api::{LlmTool, LlmToolCall, LogStream};
use muster_client::{HandlerError, TaskContext};
use serde_json::{Map, Value, json};

use crate::action::ActionHandler;
use crate::config::{Checked, McpServerConfig, Secret, TOOL_SEPARATOR};
use crate::llm::mcp::{McpServer, ToolOutcome};
use crate::process::{self, Exit, Launcher, Program};

/// Most characters of a tool's result the model reads; the rest is cut, saying how much.
pub const MAX_RESULT_CHARS: usize = 16_000;

/// Most characters of a tool's or a server's description sent to the model.
const MAX_DESCRIPTION_CHARS: usize = 1_000;

/// What a session's `tools` may name, and what each name the model sees stands for.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// An `[[actions]]` entry, by name.
    Action(String),
    /// A tool of an MCP server: the server's index in the session, the server's name for it.
    Mcp { server: usize, tool: String },
}

/// The tools one session offers, and the MCP servers it started for them.
pub struct Toolbox {
    specs: Vec<LlmTool>,
    sources: BTreeMap<String, Source>,
    servers: Vec<McpServer>,
    actions: ActionHandler,
    timeout: Duration,
}

/// Which allow-listed tools a session offers: the actions by name, and per MCP server (by its
/// index in the config) the tools by the server's names.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    pub actions: Vec<String>,
    pub servers: BTreeMap<usize, Vec<String>>,
}

/// Narrows the agent's allow-lists to the names a task gives (every allowed tool when it
/// gives none): an action's name, a server's tool as the model sees it (`server__tool`), or a
/// server's name for all of its allowed tools. A name that is none of these is refused.
pub fn select(config: &Checked, names: Option<&[String]>) -> Result<Selection, String> {
    let servers = &config.config.mcp.servers;
    let Some(names) = names else {
        return Ok(Selection {
            actions: config.llm_actions.clone(),
            servers: servers
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.tools.clone()))
                .collect(),
        });
    };
    let mut selection = Selection::default();
    let mut add = |server: usize, tool: &str| {
        let tools = selection.servers.entry(server).or_default();
        if !tools.iter().any(|t| t == tool) {
            tools.push(tool.to_owned());
        }
    };
    for (i, name) in names.iter().enumerate() {
        if config.llm_actions.contains(name) {
            if !selection.actions.contains(name) {
                selection.actions.push(name.clone());
            }
        } else if let Some(server) = servers.iter().position(|s| &s.name == name) {
            for tool in &servers[server].tools {
                add(server, tool);
            }
        } else if let Some((server, tool)) = mcp_tool(servers, name) {
            add(server, &tool);
        } else {
            return Err(format!(
                "payload.tools[{i}]: {name:?} is not a tool this agent allows (allowed: {})",
                allowed(config).join(", ")
            ));
        }
    }
    Ok(selection)
}

/// The server and tool a model-side name stands for, when one of the allow-lists has it.
fn mcp_tool(servers: &[McpServerConfig], name: &str) -> Option<(usize, String)> {
    let (server, tool) = name.split_once(TOOL_SEPARATOR)?;
    let index = servers.iter().position(|s| s.name == server)?;
    servers[index]
        .tools
        .iter()
        .any(|t| t == tool)
        .then(|| (index, tool.to_owned()))
}

/// Every name a task's `tools` may give, for an error that lists them.
fn allowed(config: &Checked) -> Vec<String> {
    let mut names = config.llm_actions.clone();
    for server in &config.config.mcp.servers {
        names.push(server.name.clone());
        names.extend(server.tools.iter().map(|t| server.tool_name(t)));
    }
    names
}

/// `text` cut to `max` characters, saying how many more there were.
pub fn bounded(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push_str(&format!(" …[{} more characters cut]", count - max));
    cut
}

/// The description of an action as a tool: its parameters, each a string with its pattern.
fn action_spec(config: &Checked, name: &str) -> LlmTool {
    let (action, _) = &config.actions[name];
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (param, pattern) in &action.params {
        let mut schema = json!({"type": "string", "pattern": format!("^(?:{pattern})$")});
        if let Some(text) = action.param_descriptions.get(param) {
            schema["description"] = Value::String(bounded(text, MAX_DESCRIPTION_CHARS));
        }
        properties.insert(param.clone(), schema);
        required.push(Value::String(param.clone()));
    }
    LlmTool {
        name: name.to_owned(),
        description: bounded(
            action
                .description
                .as_deref()
                .unwrap_or("An allow-listed command of this agent"),
            MAX_DESCRIPTION_CHARS,
        ),
        parameters: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }),
    }
}

impl Toolbox {
    /// Describes the selected actions and starts the MCP servers that have selected tools,
    /// keeping the tools each one really offers. A server that cannot start fails the
    /// session (retryable: it may be back for the next attempt); the servers already started
    /// are stopped.
    pub async fn open(
        ctx: &TaskContext,
        config: &std::sync::Arc<Checked>,
        launcher: &Launcher,
        selection: &Selection,
        timeout: Duration,
    ) -> Result<Toolbox, HandlerError> {
        let mut toolbox = Toolbox {
            specs: Vec::new(),
            sources: BTreeMap::new(),
            servers: Vec::new(),
            actions: ActionHandler::new(config.clone(), launcher.clone()),
            timeout,
        };
        for name in &selection.actions {
            toolbox.specs.push(action_spec(config, name));
            toolbox
                .sources
                .insert(name.clone(), Source::Action(name.clone()));
        }
        for (&index, wanted) in &selection.servers {
            let server_config = &config.config.mcp.servers[index];
            let added = toolbox
                .add_server(ctx, server_config, &config.secrets, wanted)
                .await;
            if let Err(err) = added {
                toolbox.close().await;
                return Err(HandlerError::Retryable(err));
            }
        }
        Ok(toolbox)
    }

    async fn add_server(
        &mut self,
        ctx: &TaskContext,
        config: &McpServerConfig,
        secrets: &BTreeMap<String, Secret>,
        wanted: &[String],
    ) -> Result<(), String> {
        let server = McpServer::connect(ctx, config, secrets).await?;
        let offered = match server.tools().await {
            Ok(offered) => offered,
            Err(err) => {
                server.close().await;
                return Err(err);
            }
        };
        let index = self.servers.len();
        for tool in wanted {
            let Some(found) = offered.iter().find(|t| t.name == tool.as_str()) else {
                ctx.log(
                    LogStream::System,
                    format!(
                        "mcp {}: has no tool {tool:?}; it is not offered to the model",
                        config.name
                    ),
                );
                continue;
            };
            let name = config.tool_name(tool);
            self.specs.push(LlmTool {
                name: name.clone(),
                description: bounded(
                    found.description.as_deref().unwrap_or_default(),
                    MAX_DESCRIPTION_CHARS,
                ),
                parameters: Value::Object((*found.input_schema).clone()),
            });
            self.sources.insert(
                name,
                Source::Mcp {
                    server: index,
                    tool: tool.clone(),
                },
            );
        }
        self.servers.push(server);
        Ok(())
    }

    /// What the model is told it may call.
    pub fn specs(&self) -> &[LlmTool] {
        &self.specs
    }

    /// Judges and runs one call. Only a cancel is an error; everything else is the model's
    /// to read.
    pub async fn call(
        &self,
        ctx: &TaskContext,
        call: &LlmToolCall,
    ) -> Result<ToolOutcome, HandlerError> {
        let Some(source) = self.sources.get(&call.name) else {
            let offered: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
            return Ok(ToolOutcome::error(format!(
                "refused: {:?} is not a tool of this session (its tools: {}); nothing ran",
                call.name,
                offered.join(", ")
            )));
        };
        if let Some(raw) = &call.bad_arguments {
            return Ok(ToolOutcome::error(format!(
                "refused: the arguments are not a JSON object ({}); nothing ran",
                bounded(raw, 200)
            )));
        }
        let arguments = match &call.arguments {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => {
                return Ok(ToolOutcome::error(format!(
                    "refused: the arguments must be a JSON object, not {other}; nothing ran"
                )));
            }
        };
        match source {
            Source::Action(name) => self.run_action(ctx, name, arguments).await,
            Source::Mcp { server, tool } => {
                let server = &self.servers[*server];
                match tokio::time::timeout(self.timeout, server.call(tool, arguments)).await {
                    Ok(outcome) => Ok(outcome),
                    Err(_) => Ok(ToolOutcome::error(format!(
                        "the tool did not answer within {}s",
                        self.timeout.as_secs()
                    ))),
                }
            }
        }
    }

    /// Runs an action as a tool: its parameters are checked as every action's are (a value
    /// that fails its pattern runs nothing), its output goes to the task's log as it comes,
    /// and the model reads it with the exit code.
    async fn run_action(
        &self,
        ctx: &TaskContext,
        name: &str,
        arguments: Map<String, Value>,
    ) -> Result<ToolOutcome, HandlerError> {
        let payload = json!({"action": name, "params": arguments});
        let (argv, action_timeout) = match self.actions.plan(&payload, None) {
            Ok(plan) => plan,
            Err(err) => {
                return Ok(ToolOutcome::error(format!(
                    "refused: {}; nothing ran",
                    err.trim_start_matches("payload.")
                )));
            }
        };
        let timeout = action_timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let output = Mutex::new(String::new());
        let observe = |_: LogStream, line: &str| {
            let mut output = output.lock().expect("output lock poisoned");
            // Keep a little past the bound, so the cut can say that there was more.
            if output.len() <= MAX_RESULT_CHARS * 4 {
                output.push_str(line);
                output.push('\n');
            }
        };
        let ended = process::run_program(
            ctx,
            self.actions.launcher(),
            Program::new(&argv),
            Some(timeout),
            &observe,
        )
        .await;
        let output = output.into_inner().expect("output lock poisoned");
        Ok(match ended {
            Ok(Exit::Code(0)) => ToolOutcome::ok(output),
            Ok(Exit::Code(code)) => ToolOutcome::error(format!("exit code {code}\n{output}")),
            Ok(Exit::Signal) => ToolOutcome::error(format!("killed by a signal\n{output}")),
            Err(HandlerError::Cancelled(why)) => return Err(HandlerError::Cancelled(why)),
            Err(err) => ToolOutcome::error(err.to_string()),
        })
    }

    /// Stops every MCP server this session started.
    pub async fn close(self) {
        for server in self.servers {
            server.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn config() -> Checked {
        AgentConfig::parse(
            r#"
            [agent]
            id = "a"
            [llm]
            provider = "local"
            [[actions]]
            name = "echo"
            argv = ["echo", "{word}"]
            params = { word = "[a-z]+" }
            description = "Says a word"
            [[actions]]
            name = "reboot"
            argv = ["reboot"]
            risky = true
            [[mcp.servers]]
            name = "notes"
            command = "notes-server"
            tools = ["read", "write"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn without_names_every_allowed_tool_is_selected_and_risky_actions_never() {
        let selection = select(&config(), None).unwrap();
        assert_eq!(selection.actions, ["echo"]);
        assert_eq!(selection.servers[&0], ["read", "write"]);
    }

    #[test]
    fn names_narrow_by_action_server_or_server_tool_and_anything_else_is_refused() {
        let c = config();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let only_echo = select(&c, Some(&names(&["echo"]))).unwrap();
        assert_eq!(only_echo.actions, ["echo"]);
        assert!(only_echo.servers.is_empty(), "no server starts for no tool");
        let one_tool = select(&c, Some(&names(&["notes__write"]))).unwrap();
        assert_eq!(one_tool.servers[&0], ["write"]);
        let server = select(&c, Some(&names(&["notes", "notes__read"]))).unwrap();
        assert_eq!(server.servers[&0], ["read", "write"]);
        for bad in ["reboot", "notes__delete", "rm", "notes__"] {
            let err = select(&c, Some(&names(&[bad]))).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?} is not a tool")) && err.contains("notes__read"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_action_is_described_with_its_patterns() {
        let spec = action_spec(&config(), "echo");
        assert_eq!(spec.description, "Says a word");
        assert_eq!(
            spec.parameters["properties"]["word"]["pattern"],
            "^(?:[a-z]+)$"
        );
        assert_eq!(spec.parameters["required"], json!(["word"]));
        assert_eq!(spec.parameters["additionalProperties"], false);
    }

    #[test]
    fn long_text_is_cut_saying_how_much() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcdé", 3), "abc …[2 more characters cut]");
    }
}
