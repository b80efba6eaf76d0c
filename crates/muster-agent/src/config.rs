//! The agent's TOML configuration: who it is, the allow-listed actions it may run, the SSH
//! hosts it may run them on, and the URLs it may call. Everything is checked when the file is
//! loaded, so a bad config stops the start with the field at fault, never a task later.

use std::collections::BTreeMap;
use std::path::Path;

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
    /// Marks actions an operator should approve; kept for the repair workflow.
    #[serde(default)]
    pub risky: bool,
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

/// A config that passed every check, with templates compiled.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: AgentConfig,
    pub actions: BTreeMap<String, (ActionConfig, ArgvTemplate)>,
    pub hosts: BTreeMap<String, HostConfig>,
    /// What loads but is probably not what the author meant, for the log at start.
    pub warnings: Vec<String>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Checked, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the agent config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks; errors name the line or the field at fault.
    pub fn parse(text: &str) -> Result<Checked, String> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()
    }

    fn check(self) -> Result<Checked, String> {
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
        Ok(Checked {
            config: self,
            actions,
            hosts,
            warnings,
        })
    }
}

impl Checked {
    /// What the agent registers with: its own capabilities, each action's, and `http` when it
    /// may call URLs.
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

    #[test]
    fn the_example_config_loads_without_warnings() {
        let example = include_str!("../../../examples/agent.toml");
        let checked = AgentConfig::parse(example).unwrap();
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
        assert!(checked.actions["renice"].0.allow_leading_dash);
    }
}
