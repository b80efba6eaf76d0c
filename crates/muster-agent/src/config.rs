//! The agent's TOML configuration: who it is, the allow-listed actions it may run, the SSH
//! hosts it may run them on, the URLs it may call, the repositories it may deploy from, and
//! the LLM sessions it runs with their tools (actions and MCP servers' allow-listed tools).
//! Everything is checked when the file is loaded, so a bad config stops the start with the
//! field at fault, never a task later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::template::{ArgvTemplate, LeadingDash};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub server: ServerConfig,
    pub agent: AgentSection,
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub deploy: Option<DeployConfig>,
    #[serde(default)]
    pub llm: Option<LlmConfig>,
    #[serde(default)]
    pub mcp: McpConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The control plane; `--url` or `MUSTER_URL` override it.
    pub url: Option<String>,
    /// The environment variable holding the agent key (keys never live in this file).
    pub key_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub id: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "one")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Seconds between heartbeats; default 10.
    #[serde(default)]
    pub heartbeat_s: Option<u64>,
}

fn one() -> u32 {
    1
}

/// One allow-listed command: an argv template and a pattern per parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A capability this action gives the agent (e.g. `docker`).
    #[serde(default)]
    pub capability: Option<String>,
    /// Upper bound of one run, in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Runs over SSH on this host (a `[[hosts]]` name) unless the task names another.
    #[serde(default)]
    pub host: Option<String>,
    /// Marks actions an operator should approve: the repair workflow waits for one, and an
    /// LLM session never offers them (it cannot ask for an approval).
    #[serde(default)]
    pub risky: bool,
    /// What the action does, for a model that may call it as a tool.
    #[serde(default)]
    pub description: Option<String>,
    /// What each parameter means, for a model that may call the action as a tool.
    #[serde(default)]
    pub param_descriptions: BTreeMap<String, String>,
    /// Lets a parameter's value begin an argument with `-` (refused by default, since the
    /// program would read it as an option): for programs that take negative numbers, say.
    #[serde(default)]
    pub allow_leading_dash: bool,
}

/// An SSH destination actions may run on, through the system's OpenSSH client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub name: String,
    /// `user@host` or an alias from the operator's ssh config.
    pub ssh: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub identity_file: Option<String>,
    /// Extra `-o` options, e.g. `UserKnownHostsFile=/etc/muster/known_hosts`.
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// URL prefixes a task may call: scheme, host and port must match exactly, and the
    /// normalised path must continue the prefix's path at a segment boundary.
    pub allow: Vec<String>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// Deployments from infrastructure repositories: tasks of kind `ansible` and `terraform` run
/// the program on a checkout of the pushed commit (see [`crate::deploy`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Where this agent keeps its clones (`clones/`) and the per-task worktrees
    /// (`worktrees/`): an absolute path no other agent uses. Required, since the agent has no
    /// state directory of its own to put it under.
    pub workdir: PathBuf,
    /// The clone URLs tasks may name: an entry ending in `/` allows every URL it begins,
    /// any other entry exactly itself.
    pub repos: Vec<String>,
    /// The program for kind `ansible`, or `false` for none.
    #[serde(default)]
    pub ansible_playbook: ProgramSetting,
    /// The program for kind `terraform`, or `false` for none.
    #[serde(default)]
    pub terraform: ProgramSetting,
    #[serde(default = "default_git")]
    pub git: String,
    /// Upper bound of one deployment (fetch, checkout and run), in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

fn default_git() -> String {
    "git".into()
}

/// LLM sessions (task kind `llm`): a tool loop whose every model turn goes through the
/// server's `POST /api/v1/llm/chat`, where the provider's key, the workflow's budget and the
/// ledger are. The agent holds no provider key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The server's `[[llm.providers]]` entry a task uses when it names none.
    #[serde(default)]
    pub provider: Option<String>,
    /// The ledger's (and the budgets') workflow when a task names none.
    #[serde(default = "default_workflow")]
    pub workflow: String,
    /// The system prompt when a task gives none.
    #[serde(default)]
    pub system: Option<String>,
    /// Model calls a session may make when its task does not say; at most
    /// [`MAX_SESSION_TURNS`].
    #[serde(default = "default_turns")]
    pub max_turns: u32,
    /// Tokens (in and out, summed over its turns) one session may use before it is stopped.
    #[serde(default = "default_session_tokens")]
    pub max_tokens: u64,
    /// The `[[actions]]` a session may call as tools; every action not marked risky when
    /// left out.
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    /// Upper bound of one tool call, in seconds (an action's own `timeout_s` may be shorter).
    #[serde(default = "default_tool_timeout")]
    pub tool_timeout_s: u64,
}

/// The most model calls any session may make: a bound a task cannot lift.
pub const MAX_SESSION_TURNS: u32 = 50;

fn default_workflow() -> String {
    "llm".into()
}

fn default_turns() -> u32 {
    10
}

fn default_session_tokens() -> u64 {
    200_000
}

fn default_tool_timeout() -> u64 {
    120
}

/// The MCP servers whose tools LLM sessions may call.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    #[serde(default)]
    pub servers: Vec<McpServerConfig>,
}

/// One MCP server: a program spoken to over its stdin and stdout (`command`), or a streamable
/// HTTP endpoint (`url`); and the allow-list of its tools by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Its tools reach the model as `<name>__<tool>`.
    pub name: String,
    /// stdio: the program (a PATH name or an absolute path), started per session.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables for the program, not secret (it gets only PATH, HOME, USER, LANG, LC_ALL,
    /// TZ and TMPDIR of the agent's own, so the agent's key never reaches it).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret variables for the program: its variable name → the agent's variable holding
    /// the value (which must be set when the agent starts).
    #[serde(default)]
    pub env_from: BTreeMap<String, String>,
    /// Streamable HTTP: the endpoint (`http://host:port/mcp`).
    #[serde(default)]
    pub url: Option<String>,
    /// The agent's variable holding a bearer token for `url`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The tools a session may call, by the server's names for them.
    pub tools: Vec<String>,
}

impl McpServerConfig {
    /// The name a tool of this server has for the model.
    pub fn tool_name(&self, tool: &str) -> String {
        format!("{}{TOOL_SEPARATOR}{tool}", self.name)
    }
}

/// A value read from a variable that `env_from` or `token_env` names: kept from the start,
/// never printed (`{:?}` shows `Secret(…)`).
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Between an MCP server's name and its tool's in the name the model sees. Server names
/// cannot hold `_`, so the first separator is always the one.
pub const TOOL_SEPARATOR: &str = "__";

/// Whether a model provider takes `name` as a tool's name (OpenAI and Anthropic allow
/// `^[a-zA-Z0-9_-]{1,64}$`).
fn tool_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl LlmConfig {
    fn check(&self) -> Result<(), String> {
        if self
            .provider
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err("llm.provider: must name a [[llm.providers]] entry of the server".into());
        }
        if self.workflow.trim().is_empty() || self.workflow.chars().count() > 100 {
            return Err("llm.workflow: must be 1 to 100 characters".into());
        }
        if !(1..=MAX_SESSION_TURNS).contains(&self.max_turns) {
            return Err(format!("llm.max_turns: must be 1 to {MAX_SESSION_TURNS}"));
        }
        if self.max_tokens == 0 {
            return Err("llm.max_tokens: must be at least 1".into());
        }
        if self.tool_timeout_s == 0 {
            return Err("llm.tool_timeout_s: must be at least 1".into());
        }
        Ok(())
    }
}

impl McpServerConfig {
    /// Checks the entry and reads the variables it names into `secrets`.
    fn check(
        &self,
        i: usize,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &mut BTreeMap<String, Secret>,
    ) -> Result<(), String> {
        let at = format!("mcp.servers[{i}]");
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(format!(
                "{at}.name: {:?} must be 1 to 32 of a-z, 0-9 and '-'",
                self.name
            ));
        }
        let at = format!("{at} ({})", self.name);
        match (&self.command, &self.url) {
            (Some(command), None) => {
                if command.is_empty() || command.starts_with('-') {
                    return Err(format!("{at}.command: must name a program"));
                }
                if self.token_env.is_some() {
                    return Err(format!(
                        "{at}.token_env: only for a server reached by url; pass a stdio \
                         server's secrets with env_from"
                    ));
                }
            }
            (None, Some(url)) => {
                let parsed = url::Url::parse(url).map_err(|e| format!("{at}.url: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("{at}.url: must be http or https"));
                }
                if !self.args.is_empty() || !self.env.is_empty() || !self.env_from.is_empty() {
                    return Err(format!(
                        "{at}: args, env and env_from are for a server started with command"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "{at}: set either command (stdio) or url (streamable HTTP)"
                ));
            }
        }
        let needed = self
            .env_from
            .iter()
            .map(|(name, var)| (format!("env_from.{name}"), var))
            .chain(
                self.token_env
                    .iter()
                    .map(|var| ("token_env".to_owned(), var)),
            );
        for (field, var) in needed {
            let value = env(var).ok_or_else(|| {
                format!("{at}.{field}: the variable {var} is not set in the agent's environment")
            })?;
            secrets.insert(var.clone(), Secret(value));
        }
        if self.tools.is_empty() {
            return Err(format!(
                "{at}.tools: list the tools a session may call (the allow-list)"
            ));
        }
        for (j, tool) in self.tools.iter().enumerate() {
            if !tool_name_ok(&self.tool_name(tool)) {
                return Err(format!(
                    "{at}.tools[{j}]: {tool:?} gives the tool name {:?}, which model providers \
                     refuse (1 to 64 of A-Z, a-z, 0-9, '_' and '-')",
                    self.tool_name(tool)
                ));
            }
        }
        Ok(())
    }
}

/// A program the agent may run, or `false` to turn its task kind off (`true` is the default
/// program).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ProgramSetting {
    Program(String),
    Enabled(bool),
}

impl Default for ProgramSetting {
    fn default() -> Self {
        ProgramSetting::Enabled(true)
    }
}

impl ProgramSetting {
    /// The program to run, `default` unless another is named; `None` when turned off.
    pub fn program(&self, default: &str) -> Option<String> {
        match self {
            ProgramSetting::Program(program) => Some(program.clone()),
            ProgramSetting::Enabled(true) => Some(default.to_owned()),
            ProgramSetting::Enabled(false) => None,
        }
    }
}

impl DeployConfig {
    /// `ansible-playbook` unless the file names another program; `None` when turned off.
    pub fn ansible_program(&self) -> Option<String> {
        self.ansible_playbook.program("ansible-playbook")
    }

    /// `terraform` unless the file names another program; `None` when turned off.
    pub fn terraform_program(&self) -> Option<String> {
        self.terraform.program("terraform")
    }

    fn check(&self, warnings: &mut Vec<String>) -> Result<(), String> {
        if !self.workdir.is_absolute() {
            return Err(format!(
                "deploy.workdir: {:?} must be an absolute path",
                self.workdir
            ));
        }
        if self.repos.is_empty() {
            return Err(
                "deploy.repos: name at least one clone URL (exact, or a prefix \
                        ending in '/')"
                    .into(),
            );
        }
        for (i, entry) in self.repos.iter().enumerate() {
            crate::deploy::check_clone_url(entry)
                .map_err(|e| format!("deploy.repos[{i}]: {entry:?}: {e}"))?;
        }
        let programs = [
            ("ansible_playbook", self.ansible_program()),
            ("terraform", self.terraform_program()),
            ("git", Some(self.git.clone())),
        ];
        for (field, program) in programs {
            // A relative path with a `/` would be looked up from each task's worktree, where
            // the task's commit, not the operator, decides what it is.
            if let Some(program) = program
                && (program.is_empty()
                    || program.starts_with('-')
                    || (program.contains('/') && !program.starts_with('/')))
            {
                return Err(format!(
                    "deploy.{field}: {program:?} must be a program name looked up in PATH or \
                     an absolute path"
                ));
            }
        }
        if self.timeout_s == Some(0) {
            return Err("deploy.timeout_s: must be at least 1".into());
        }
        if self.ansible_program().is_none() && self.terraform_program().is_none() {
            warnings.push(
                "deploy: ansible_playbook and terraform are both false; the agent takes no \
                 deployments"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A config that passed every check, with templates compiled.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: AgentConfig,
    pub actions: BTreeMap<String, (ActionConfig, ArgvTemplate)>,
    pub hosts: BTreeMap<String, HostConfig>,
    /// The actions LLM sessions may call as tools (none without `[llm]`).
    pub llm_actions: Vec<String>,
    /// The values of the variables MCP servers' `env_from` and `token_env` name, read once
    /// at load, by variable name.
    pub secrets: BTreeMap<String, Secret>,
    /// What loads but is probably not what the author meant, for the log at start.
    pub warnings: Vec<String>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Checked, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the agent config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks; errors name the line or the field at fault. Variables the file
    /// names (`env_from`, `token_env`) are looked up in the agent's environment.
    pub fn parse(text: &str) -> Result<Checked, String> {
        Self::parse_with_env(text, &|var| std::env::var(var).ok())
    }

    /// [`AgentConfig::parse`] with the environment `env` stands for.
    pub fn parse_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Checked, String> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check(env)
    }

    fn check(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Checked, String> {
        if self.agent.id.trim().is_empty() || self.agent.id.contains('/') {
            return Err("agent.id: must be non-empty and contain no '/'".into());
        }
        if self.agent.max_concurrency == 0 {
            return Err("agent.max_concurrency: must be at least 1".into());
        }
        let mut hosts = BTreeMap::new();
        for (i, host) in self.hosts.iter().enumerate() {
            if host.ssh.trim().is_empty() || host.ssh.starts_with('-') {
                return Err(format!(
                    "hosts[{i}].ssh: must be a destination like user@host, not an option"
                ));
            }
            if let Some(bad) = host
                .options
                .iter()
                .find(|o| !o.contains('=') || o.starts_with('-'))
            {
                return Err(format!(
                    "hosts[{i}].options: {bad:?} must look like Name=value"
                ));
            }
            if hosts.insert(host.name.clone(), host.clone()).is_some() {
                return Err(format!("hosts[{i}].name: {:?} is defined twice", host.name));
            }
        }
        let mut actions = BTreeMap::new();
        let mut warnings = Vec::new();
        for (i, action) in self.actions.iter().enumerate() {
            let leading_dash = if action.allow_leading_dash {
                LeadingDash::Allowed
            } else {
                LeadingDash::Refused
            };
            let template = ArgvTemplate::compile(&action.argv, &action.params, leading_dash)
                .map_err(|e| format!("actions[{i}] ({}): {e}", action.name))?;
            for (name, pattern) in &action.params {
                let classes = crate::template::unicode_classes(pattern);
                if !classes.is_empty() {
                    warnings.push(format!(
                        "actions[{i}] ({}): params.{name}: {pattern:?} uses {}, which match \
                         Unicode, not only ASCII (\\d matches Arabic-Indic digits such as \
                         '٣'); write [0-9], [A-Za-z0-9_] or [ \\t] if ASCII is meant",
                        action.name,
                        classes.join(", ")
                    ));
                }
            }
            if let Some(host) = &action.host
                && !hosts.contains_key(host)
            {
                return Err(format!(
                    "actions[{i}].host: no [[hosts]] entry is named {host:?}"
                ));
            }
            if actions
                .insert(action.name.clone(), (action.clone(), template))
                .is_some()
            {
                return Err(format!(
                    "actions[{i}].name: {:?} is defined twice",
                    action.name
                ));
            }
        }
        if let Some(http) = &self.http {
            for (i, prefix) in http.allow.iter().enumerate() {
                crate::http_call::parse_prefix(prefix)
                    .map_err(|e| format!("http.allow[{i}]: {prefix:?}: {e}"))?;
            }
        }
        if let Some(deploy) = &self.deploy {
            deploy.check(&mut warnings)?;
        }
        let mut secrets = BTreeMap::new();
        let llm_actions = self.check_llm(&actions, env, &mut secrets, &mut warnings)?;
        Ok(Checked {
            config: self,
            actions,
            hosts,
            llm_actions,
            secrets,
            warnings,
        })
    }
}

impl AgentConfig {
    /// Checks `[llm]` and `[[mcp.servers]]` and returns the actions sessions may call.
    fn check_llm(
        &self,
        actions: &BTreeMap<String, (ActionConfig, ArgvTemplate)>,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &mut BTreeMap<String, Secret>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        if self.mcp.servers.len() > muster_api::limits::MAX_MCP_SERVERS {
            return Err(format!(
                "mcp.servers: at most {} servers (the registration's bound)",
                muster_api::limits::MAX_MCP_SERVERS
            ));
        }
        let mut servers = std::collections::BTreeSet::new();
        for (i, server) in self.mcp.servers.iter().enumerate() {
            server.check(i, env, secrets)?;
            if !servers.insert(server.name.as_str()) {
                return Err(format!(
                    "mcp.servers[{i}].name: {:?} is defined twice",
                    server.name
                ));
            }
        }
        let Some(llm) = &self.llm else {
            if !self.mcp.servers.is_empty() {
                warnings.push(
                    "mcp.servers: no [llm] section, so no session will use these servers".into(),
                );
            }
            return Ok(Vec::new());
        };
        llm.check()?;
        let tools: Vec<String> = match &llm.actions {
            Some(names) => {
                for (i, name) in names.iter().enumerate() {
                    let Some((action, _)) = actions.get(name) else {
                        return Err(format!(
                            "llm.actions[{i}]: no [[actions]] entry is named {name:?}"
                        ));
                    };
                    if action.risky {
                        return Err(format!(
                            "llm.actions[{i}]: {name:?} is risky (it waits for an operator's \
                             approval, which a session cannot ask for)"
                        ));
                    }
                    if !tool_name_ok(name) {
                        return Err(format!(
                            "llm.actions[{i}]: {name:?} is not a name model providers take for \
                             a tool (1 to 64 of A-Z, a-z, 0-9, '_' and '-')"
                        ));
                    }
                }
                names.clone()
            }
            None => actions
                .values()
                .filter(|(action, _)| !action.risky)
                .filter(|(action, _)| {
                    let ok = tool_name_ok(&action.name);
                    if !ok {
                        warnings.push(format!(
                            "llm: the action {:?} is not offered to sessions: model providers \
                             take tool names of 1 to 64 of A-Z, a-z, 0-9, '_' and '-'",
                            action.name
                        ));
                    }
                    ok
                })
                .map(|(action, _)| action.name.clone())
                .collect(),
        };
        for server in &self.mcp.servers {
            for tool in &server.tools {
                let name = server.tool_name(tool);
                if tools.contains(&name) {
                    return Err(format!(
                        "mcp.servers ({}): the tool {tool:?} would be called {name:?}, the name \
                         of an action",
                        server.name
                    ));
                }
            }
        }
        Ok(tools)
    }
}

impl Checked {
    /// The MCP servers as the agent registers them (the FastAPI command center's
    /// `mcp_servers`): each one's name, transport and allowed tools, nothing secret, and
    /// only with `[llm]`, since only sessions use them.
    pub fn mcp_servers(&self) -> Vec<serde_json::Value> {
        if self.config.llm.is_none() {
            return Vec::new();
        }
        self.config
            .mcp
            .servers
            .iter()
            .map(|server| {
                let transport = if server.url.is_some() {
                    "streamable-http"
                } else {
                    "stdio"
                };
                serde_json::json!({
                    "name": server.name,
                    "transport": transport,
                    "tools": server.tools,
                })
            })
            .collect()
    }

    /// What the agent registers with: its own capabilities, each action's, `http` when it
    /// may call URLs, `llm` when it runs LLM sessions, and `ansible` and `terraform` when it
    /// deploys with them.
    pub fn capabilities(&self) -> Vec<String> {
        let mut caps = self.config.agent.capabilities.clone();
        caps.extend(
            self.actions
                .values()
                .filter_map(|(a, _)| a.capability.clone()),
        );
        if self.config.http.is_some() {
            caps.push("http".into());
        }
        if self.config.llm.is_some() {
            caps.push("llm".into());
        }
        if let Some(deploy) = &self.config.deploy {
            caps.extend(
                crate::deploy::Tool::ALL
                    .iter()
                    .filter_map(|tool| tool.program(deploy).map(|_| tool.kind().to_owned())),
            );
        }
        caps.sort();
        caps.dedup();
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [agent]
        id = "nas"
        capabilities = ["ansible"]

        [[actions]]
        name = "restart_container"
        argv = ["docker", "restart", "{container}"]
        params = { container = "^[a-z0-9][a-z0-9_.-]{0,62}$" }
        capability = "docker"

        [http]
        allow = ["http://127.0.0.1:8123/api/"]
    "#;

    #[test]
    fn a_good_config_loads_with_its_capabilities() {
        let checked = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(checked.capabilities(), ["ansible", "docker", "http"]);
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let err = AgentConfig::parse(&GOOD.replace("{container}\"]", "{image}\"]")).unwrap_err();
        assert!(err.contains("actions[0]") && err.contains("image"), "{err}");
        let err = AgentConfig::parse(&GOOD.replace("^[a-z0-9]", "^[a-z0-9")).unwrap_err();
        assert!(err.contains("container"), "{err}");
        let err = AgentConfig::parse(&GOOD.replace("capability =", "capabilty =")).unwrap_err();
        assert!(err.contains("capabilty"), "{err}");
        let bad_host = format!("{GOOD}\n[[hosts]]\nname = \"x\"\nssh = \"-oProxyCommand=sh\"\n");
        let err = AgentConfig::parse(&bad_host).unwrap_err();
        assert!(err.contains("hosts[0].ssh"), "{err}");
    }

    #[test]
    fn unicode_shorthand_classes_load_with_a_warning_naming_the_parameter() {
        let checked = AgentConfig::parse(&GOOD.replace("{0,62}$", r"{0,62}$|^\\d+$")).unwrap();
        assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
        let warning = &checked.warnings[0];
        assert!(
            warning.contains("params.container") && warning.contains(r"\d"),
            "{warning}"
        );
        assert!(AgentConfig::parse(GOOD).unwrap().warnings.is_empty());
    }

    const DEPLOY: &str = r#"
        [agent]
        id = "infra"

        [deploy]
        workdir = "/var/lib/muster/deploy"
        repos = ["https://git.home/homelab/", "git@git.home:solo/infra.git"]
    "#;

    #[test]
    fn a_deploy_section_registers_the_kinds_it_turns_on() {
        let checked = AgentConfig::parse(DEPLOY).unwrap();
        assert_eq!(checked.capabilities(), ["ansible", "terraform"]);
        let deploy = checked.config.deploy.unwrap();
        assert_eq!(
            deploy.ansible_program().as_deref(),
            Some("ansible-playbook")
        );
        assert_eq!(deploy.terraform_program().as_deref(), Some("terraform"));
        assert_eq!(deploy.git, "git");
        let only_ansible = AgentConfig::parse(&format!(
            "{DEPLOY}\nterraform = false\nansible_playbook = \"/opt/ansible/bin/ansible-playbook\"\n"
        ))
        .unwrap();
        assert_eq!(only_ansible.capabilities(), ["ansible"]);
        let deploy = only_ansible.config.deploy.unwrap();
        assert_eq!(
            deploy.ansible_program().as_deref(),
            Some("/opt/ansible/bin/ansible-playbook")
        );
        assert_eq!(deploy.terraform_program(), None);
        let none = AgentConfig::parse(&format!(
            "{DEPLOY}\nterraform = false\nansible_playbook = false\n"
        ))
        .unwrap();
        assert!(none.capabilities().is_empty());
        assert_eq!(none.warnings.len(), 1, "{:?}", none.warnings);
        assert!(AgentConfig::parse(GOOD).unwrap().config.deploy.is_none());
    }

    #[test]
    fn deploy_errors_name_the_field_at_fault() {
        for (from, to, field) in [
            ("\"/var/lib/muster/deploy\"", "\"deploy\"", "deploy.workdir"),
            (
                "[\"https://git.home/homelab/\", \"git@git.home:solo/infra.git\"]",
                "[]",
                "deploy.repos",
            ),
            (
                "\"git@git.home:solo/infra.git\"",
                "\"ext::sh -c x\"",
                "deploy.repos[1]",
            ),
            (
                "\"https://git.home/homelab/\"",
                "\"https://git.home/homelab/../x/\"",
                "deploy.repos[0]",
            ),
        ] {
            let err = AgentConfig::parse(&DEPLOY.replace(from, to)).unwrap_err();
            assert!(err.contains(field), "{to}: {err}");
        }
        for (line, field) in [
            (
                "ansible_playbook = \"bin/ansible-playbook\"",
                "deploy.ansible_playbook",
            ),
            ("terraform = \"\"", "deploy.terraform"),
            ("git = \"--exec-path\"", "deploy.git"),
            ("timeout_s = 0", "deploy.timeout_s"),
        ] {
            let err = AgentConfig::parse(&format!("{DEPLOY}\n{line}\n")).unwrap_err();
            assert!(err.contains(field), "{line}: {err}");
        }
        let err = AgentConfig::parse(&format!("{DEPLOY}\nrepo = []\n")).unwrap_err();
        assert!(err.contains("repo"), "{err}");
    }

    #[test]
    fn the_example_deploy_section_loads_once_uncommented() {
        let example = include_str!("../../../examples/agent.toml");
        let (_, section) = example
            .split_once("# [deploy]\n")
            .expect("the example shows a [deploy] section");
        let uncommented: String = section
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| format!("{}\n", line.trim_start_matches("# ")))
            .collect();
        let config = format!("[agent]\nid = \"x\"\n[deploy]\n{uncommented}");
        let checked = AgentConfig::parse(&config).unwrap();
        assert_eq!(checked.capabilities(), ["ansible", "terraform"]);
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    }

    /// The ```toml blocks of the README's section `title`.
    fn readme_toml_blocks(title: &str) -> Vec<&'static str> {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split_once(&format!("\n## {title}\n"))
            .unwrap_or_else(|| panic!("a {title} section"))
            .1;
        let section = section.split_once("\n## ").map_or(section, |(s, _)| s);
        section
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split_once("\n```").map_or(b, |(block, _)| block))
            .collect()
    }

    #[test]
    fn the_readmes_deploy_example_loads() {
        let block = readme_toml_blocks("GitOps in five minutes")
            .into_iter()
            .find(|b| b.contains("\n[deploy]\n"))
            .expect("the agent's [deploy] example");
        let checked = AgentConfig::parse(block).unwrap();
        assert_eq!(checked.capabilities(), ["ansible", "terraform"]);
    }

    #[test]
    fn the_readmes_self_repair_agent_example_loads() {
        let block = readme_toml_blocks("Self-repair")
            .into_iter()
            .find(|b| b.starts_with("[agent]\n"))
            .expect("the agent's example");
        let checked = AgentConfig::parse(block).unwrap();
        assert_eq!(checked.capabilities(), ["docker", "power"]);
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    }

    const LLM: &str = r#"
        [agent]
        id = "llm"

        [llm]
        provider = "local"

        [[actions]]
        name = "restart_container"
        argv = ["docker", "restart", "{container}"]
        params = { container = "^[a-z0-9-]+$" }

        [[actions]]
        name = "reboot"
        argv = ["reboot"]
        risky = true

        [[mcp.servers]]
        name = "homelab"
        command = "homelab-mcp"
        env_from = { PROXMOX_TOKEN = "AGENT_PROXMOX_TOKEN" }
        tools = ["list_vms"]
    "#;

    fn env(var: &str) -> Option<String> {
        (var == "AGENT_PROXMOX_TOKEN").then(|| "secret".to_owned())
    }

    #[test]
    fn an_llm_section_registers_llm_and_offers_the_actions_that_are_not_risky() {
        let checked = AgentConfig::parse_with_env(LLM, &env).unwrap();
        assert_eq!(checked.capabilities(), ["llm"]);
        assert_eq!(checked.llm_actions, ["restart_container"]);
        assert_eq!(
            checked.mcp_servers(),
            [serde_json::json!({"name": "homelab", "transport": "stdio", "tools": ["list_vms"]})]
        );
        let llm = checked.config.llm.clone().unwrap();
        assert_eq!((llm.workflow.as_str(), llm.max_turns), ("llm", 10));
        assert_eq!(
            checked.config.mcp.servers[0].tool_name("list_vms"),
            "homelab__list_vms"
        );
        assert_eq!(checked.secrets["AGENT_PROXMOX_TOKEN"].expose(), "secret");
        assert!(
            !format!("{checked:?}").contains("\"secret\""),
            "a secret is never printed"
        );
    }

    #[test]
    fn llm_and_mcp_errors_name_the_field_at_fault() {
        for (from, to, field) in [
            ("provider = \"local\"", "max_turns = 51", "llm.max_turns"),
            (
                "provider = \"local\"",
                "actions = [\"reboot\"]",
                "llm.actions[0]",
            ),
            (
                "provider = \"local\"",
                "actions = [\"rm\"]",
                "llm.actions[0]",
            ),
            (
                "name = \"homelab\"",
                "name = \"home_lab\"",
                "mcp.servers[0].name",
            ),
            (
                "tools = [\"list_vms\"]",
                "tools = []",
                "mcp.servers[0] (homelab).tools",
            ),
            (
                "tools = [\"list_vms\"]",
                "tools = [\"list.vms\"]",
                "tools[0]",
            ),
            ("command = \"homelab-mcp\"", "command = \"-x\"", "command"),
            (
                "\"AGENT_PROXMOX_TOKEN\"",
                "\"UNSET_VAR\"",
                "env_from.PROXMOX_TOKEN",
            ),
            ("command = \"homelab-mcp\"", "cmd = \"x\"", "cmd"),
            ("command = \"homelab-mcp\"", "url = \"ftp://x\"", "url"),
            (
                "command = \"homelab-mcp\"",
                "",
                "either command (stdio) or url",
            ),
            (
                "tools =",
                "url = \"http://x/mcp\"\ntools =",
                "either command (stdio) or url",
            ),
            (
                "env_from = ",
                "token_env = \"AGENT_PROXMOX_TOKEN\"\nenv_from = ",
                "token_env",
            ),
        ] {
            let err = AgentConfig::parse_with_env(&LLM.replace(from, to), &env).unwrap_err();
            assert!(err.contains(field), "{to}: {err}");
        }
        let twice = format!(
            "{LLM}\n[[mcp.servers]]\nname = \"homelab\"\ncommand = \"x\"\ntools = [\"a\"]\n"
        );
        let err = AgentConfig::parse_with_env(&twice, &env).unwrap_err();
        assert!(err.contains("mcp.servers[1].name"), "{err}");
    }

    #[test]
    fn the_readmes_llm_session_examples_load() {
        let blocks = readme_toml_blocks("LLM tasks with MCP tools");
        let agent = blocks
            .iter()
            .find(|b| b.starts_with("[agent]\n"))
            .expect("the agent's example");
        let http = blocks
            .iter()
            .find(|b| b.starts_with("[[mcp.servers]]") && b.contains("url = "))
            .expect("the streamable HTTP server");
        let env = |var: &str| (var == "AGENT_HA_TOKEN").then(|| "ha-token".to_owned());
        let checked = AgentConfig::parse_with_env(&format!("{agent}\n{http}"), &env).unwrap();
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
        assert_eq!(checked.capabilities(), ["llm"]);
        assert_eq!(checked.llm_actions, ["restart_container"]);
        let servers = &checked.config.mcp.servers;
        assert_eq!(servers[0].command.as_deref(), Some("npx"));
        assert_eq!(servers[1].token_env.as_deref(), Some("AGENT_HA_TOKEN"));
    }

    #[test]
    fn the_example_llm_section_loads_once_uncommented() {
        let example = include_str!("../../../examples/agent.toml");
        let (_, section) = example
            .split_once("# [llm]\n")
            .expect("the example shows an [llm] section");
        let uncommented: String = section
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| format!("{}\n", line.trim_start_matches('#').trim_start()))
            .collect();
        let config = format!("{example}\n[llm]\n{uncommented}");
        let env = |var: &str| (var == "AGENT_N8N_API_KEY").then(|| "key".to_owned());
        let checked =
            AgentConfig::parse_with_env(&config, &env).unwrap_or_else(|e| panic!("{e}\n{config}"));
        assert!(checked.capabilities().contains(&"llm".to_owned()));
        assert_eq!(checked.llm_actions, ["check_disk"]);
        assert_eq!(checked.config.mcp.servers[0].tools.len(), 2);
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    }

    #[test]
    fn the_example_config_loads_without_warnings() {
        let example = include_str!("../../../examples/agent.toml");
        let checked = AgentConfig::parse(example).unwrap();
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
        assert!(checked.actions["renice"].0.allow_leading_dash);
    }
}
