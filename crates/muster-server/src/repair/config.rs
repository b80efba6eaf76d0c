//! The self-repair sections of the config file, checked: `[[alerts.sources]]` (who may send
//! alerts, and how they authenticate), `[[actions]]` (the server's allow-list: what a repair
//! may run, each parameter's pattern, the capability that runs it, whether it is risky),
//! `[repair]` (the limits) and `[[repair.targets]]` (what a monitor's outage may repair, with
//! which model, runbook and verification). Pure: no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use serde::Deserialize;

use crate::alerts::Alert;
use crate::bounds::{entry_name, http_url};
use crate::secret::{Secret, read_variable};

/// Repairs one target may start in an hour unless its `max_per_hour` says otherwise.
pub const DEFAULT_MAX_PER_HOUR: u32 = 3;
/// The least time between two repairs of one target.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5 * 60);
/// Repair steps one incident may take before it escalates.
pub const DEFAULT_MAX_STEPS: u32 = 2;
/// How long a risky action's approval may wait.
pub const DEFAULT_APPROVAL_EXPIRES: Duration = Duration::from_secs(30 * 60);
/// How long a repair has to heal the target, unless its `verify.within` says otherwise.
pub const DEFAULT_VERIFY_WITHIN: Duration = Duration::from_secs(2 * 60);
/// The ledger's and the budgets' name for the repair model's calls.
pub const WORKFLOW: &str = "repair";

/// One `[[alerts.sources]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSourceSpec {
    pub name: String,
    /// `uptime-kuma`, `alertmanager` or `generic`.
    pub kind: String,
    /// The variable holding the bearer token the monitor sends.
    pub token_env: String,
}

/// What a source's bodies are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    UptimeKuma,
    Alertmanager,
    Generic,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::UptimeKuma => "uptime-kuma",
            AlertKind::Alertmanager => "alertmanager",
            AlertKind::Generic => "generic",
        }
    }
}

impl std::str::FromStr for AlertKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uptime-kuma" => Ok(AlertKind::UptimeKuma),
            "alertmanager" => Ok(AlertKind::Alertmanager),
            "generic" => Ok(AlertKind::Generic),
            other => Err(format!(
                "kind: unknown kind {other:?} (expected uptime-kuma, alertmanager or generic)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertSource {
    pub name: String,
    pub kind: AlertKind,
    pub token: Secret,
}

/// One `[[actions]]` entry as written. The agent's file uses the same table, so `argv`,
/// `host` and `timeout_s` are accepted here too; the server never runs `argv` (the agent
/// renders it from its own allow-list), and keeps `host` and `timeout_s` for the task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub name: String,
    /// What the action does, for the model (the name stands in when absent).
    pub description: Option<String>,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Descriptions of the parameters, for the model.
    #[serde(default)]
    pub param_descriptions: BTreeMap<String, String>,
    /// The capability an agent needs to run it (the agent's action gives it that capability).
    pub capability: String,
    #[serde(default)]
    pub risky: bool,
    pub timeout_s: Option<u32>,
    pub host: Option<String>,
    #[serde(default)]
    pub allow_leading_dash: bool,
}

/// An action the server allows, checked.
#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub description: String,
    /// Each parameter's pattern as written, and compiled anchored at both ends.
    pub params: BTreeMap<String, (String, Regex)>,
    pub param_descriptions: BTreeMap<String, String>,
    pub capability: String,
    pub risky: bool,
    pub timeout_s: Option<u32>,
    pub host: Option<String>,
    pub allow_leading_dash: bool,
}

impl PartialEq for Action {
    fn eq(&self, other: &Self) -> bool {
        let patterns = |a: &Action| -> Vec<(String, String)> {
            a.params
                .iter()
                .map(|(k, (p, _))| (k.clone(), p.clone()))
                .collect()
        };
        self.name == other.name
            && self.description == other.description
            && patterns(self) == patterns(other)
            && self.param_descriptions == other.param_descriptions
            && self.capability == other.capability
            && self.risky == other.risky
            && self.timeout_s == other.timeout_s
            && self.host == other.host
            && self.allow_leading_dash == other.allow_leading_dash
    }
}

impl Action {
    /// Checks one value for parameter `name`: it must match the whole pattern, and may not
    /// begin with `-` unless the action allows it (a program would read it as an option).
    pub fn check_param(&self, name: &str, value: &str) -> Result<(), String> {
        let Some((pattern, regex)) = self.params.get(name) else {
            return Err(format!(
                "{name:?} is not a parameter of {} (its parameters: {})",
                self.name,
                self.param_names().join(", ")
            ));
        };
        if !self.allow_leading_dash && value.starts_with('-') {
            return Err(format!(
                "parameter {name:?}: {value:?} begins with '-', which the program would read \
                 as an option"
            ));
        }
        if !regex.is_match(value) {
            return Err(format!(
                "parameter {name:?}: {value:?} does not match its pattern {pattern:?}"
            ));
        }
        Ok(())
    }

    pub fn param_names(&self) -> Vec<&str> {
        self.params.keys().map(String::as_str).collect()
    }
}

/// `verify = { http = "…", status = 200, within = "2m" }` or `{ tcp = "host:port" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    pub http: Option<String>,
    /// The status the HTTP probe wants (default: any 2xx).
    pub status: Option<u16>,
    pub tcp: Option<String>,
    pub within: Option<String>,
}

/// How muster checks that a repair healed its target.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// None: the monitor's recovery alert alone resolves the incident.
    Recovery,
    Http {
        url: String,
        status: Option<u16>,
    },
    Tcp {
        address: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verify {
    pub probe: Probe,
    pub within: Duration,
}

/// One `[[repair.targets]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The target's name, for pauses and pages; the monitor glob stands in when absent.
    pub name: Option<String>,
    /// The monitor's name as the alert gives it, a glob (`jellyfin*`).
    pub monitor: Option<String>,
    /// Labels the alert must carry, each equal (Alertmanager's, or Uptime Kuma's `type`,
    /// `hostname`, `url`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The `[[llm.providers]]` entry that decides; none: the runbook alone.
    pub provider: Option<String>,
    pub actions: Vec<String>,
    /// Parameters fixed by the operator: the model cannot choose or change them.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Actions tried in order when the model cannot decide.
    #[serde(default)]
    pub runbook: Vec<String>,
    pub verify: Option<VerifySpec>,
    /// Runs the actions on this `[[hosts]]` entry of the agent.
    pub host: Option<String>,
    pub max_per_hour: Option<u32>,
    pub cooldown: Option<String>,
    pub max_steps: Option<u32>,
    /// What the model is told about the target (its stack, what usually fails).
    pub context: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub monitor: Option<(String, GlobMatcher)>,
    pub labels: BTreeMap<String, String>,
    pub provider: Option<String>,
    pub actions: Vec<Arc<Action>>,
    pub params: BTreeMap<String, String>,
    pub runbook: Vec<String>,
    pub verify: Verify,
    pub host: Option<String>,
    pub max_per_hour: u32,
    pub cooldown: Duration,
    pub max_steps: u32,
    pub context: Option<String>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.monitor.as_ref().map(|m| &m.0) == other.monitor.as_ref().map(|m| &m.0)
            && self.labels == other.labels
            && self.provider == other.provider
            && self.actions == other.actions
            && self.params == other.params
            && self.runbook == other.runbook
            && self.verify == other.verify
            && self.host == other.host
            && self.max_per_hour == other.max_per_hour
            && self.cooldown == other.cooldown
            && self.max_steps == other.max_steps
            && self.context == other.context
    }
}

impl Target {
    /// Whether an alert is about this target: its monitor matches the glob (when given) and it
    /// carries every label.
    pub fn matches(&self, alert: &Alert) -> bool {
        self.monitor
            .as_ref()
            .is_none_or(|(_, glob)| glob.is_match(&alert.monitor))
            && self
                .labels
                .iter()
                .all(|(k, v)| alert.labels.get(k) == Some(v))
    }

    pub fn action(&self, name: &str) -> Option<&Arc<Action>> {
        self.actions.iter().find(|a| a.name == name)
    }

    pub fn action_names(&self) -> Vec<&str> {
        self.actions.iter().map(|a| a.name.as_str()).collect()
    }
}

/// `[repair]`'s defaults, which each target may override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairSpec {
    pub max_per_hour: Option<u32>,
    pub cooldown: Option<String>,
    pub max_steps: Option<u32>,
    pub approval_expires: Option<String>,
    #[serde(default)]
    pub targets: Vec<toml::Spanned<TargetSpec>>,
}

/// Self-repair's configuration, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairConfig {
    pub sources: Vec<AlertSource>,
    pub actions: Vec<Arc<Action>>,
    pub targets: Vec<Arc<Target>>,
    pub approval_expires: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            sources: Vec::new(),
            actions: Vec::new(),
            targets: Vec::new(),
            approval_expires: DEFAULT_APPROVAL_EXPIRES,
        }
    }
}

/// The entries as written, each with its line in the file.
pub struct RepairEntries<'a> {
    pub sources: &'a [(usize, AlertSourceSpec)],
    pub actions: &'a [(usize, ActionSpec)],
    pub targets: &'a [(usize, TargetSpec)],
    /// The `[repair]` table's line and its defaults.
    pub defaults: (usize, &'a RepairSpec),
}

impl RepairConfig {
    pub fn source(&self, name: &str) -> Option<&AlertSource> {
        self.sources.iter().find(|s| s.name == name)
    }

    pub fn target(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The first target an alert is about.
    pub fn target_for(&self, alert: &Alert) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.matches(alert))
    }

    /// Checks every entry, reading the sources' tokens through `env`; `providers` are the
    /// `[[llm.providers]]` names. An error names the entry, for the caller to prefix with
    /// file and line.
    pub fn resolve(
        entries: RepairEntries<'_>,
        providers: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RepairConfig, (usize, String)> {
        let mut sources: Vec<AlertSource> = Vec::new();
        for (index, (line, spec)) in entries.sources.iter().enumerate() {
            let at = |why: String| {
                (
                    *line,
                    format!("alerts.sources[{index}] ({:?}): {why}", spec.name),
                )
            };
            entry_name(&spec.name).map_err(at)?;
            if sources.iter().any(|s| s.name == spec.name) {
                return Err(at(
                    "another source has this name; names must be unique".into()
                ));
            }
            let kind = spec.kind.parse().map_err(at)?;
            let token = read_variable(
                "token_env",
                &spec.token_env,
                "the bearer token the monitor sends",
                env,
            )
            .map_err(at)?;
            sources.push(AlertSource {
                name: spec.name.clone(),
                kind,
                token: Secret::new(token),
            });
        }
        let mut actions: Vec<Arc<Action>> = Vec::new();
        for (index, (line, spec)) in entries.actions.iter().enumerate() {
            let at = |why: String| (*line, format!("actions[{index}] ({:?}): {why}", spec.name));
            if actions.iter().any(|a| a.name == spec.name) {
                return Err(at(
                    "another action has this name; names must be unique".into()
                ));
            }
            actions.push(Arc::new(resolve_action(spec).map_err(at)?));
        }
        let (defaults_line, defaults) = entries.defaults;
        let default_at = |why: String| (defaults_line, format!("repair: {why}"));
        let cooldown = duration("cooldown", defaults.cooldown.as_deref(), DEFAULT_COOLDOWN)
            .map_err(default_at)?;
        let approval_expires = duration(
            "approval_expires",
            defaults.approval_expires.as_deref(),
            DEFAULT_APPROVAL_EXPIRES,
        )
        .map_err(default_at)?;
        if approval_expires.is_zero() {
            return Err(default_at("approval_expires must be more than 0s".into()));
        }
        let max_per_hour = defaults.max_per_hour.unwrap_or(DEFAULT_MAX_PER_HOUR);
        let max_steps = defaults.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
        if max_steps == 0 {
            return Err(default_at("max_steps must be 1 or more".into()));
        }
        let mut targets: Vec<Arc<Target>> = Vec::new();
        for (index, (line, spec)) in entries.targets.iter().enumerate() {
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| default_name(spec.monitor.as_deref(), index));
            let at = |why: String| (*line, format!("repair.targets[{index}] ({name:?}): {why}"));
            if targets.iter().any(|t| t.name == name) {
                return Err(at("another target has this name; give one a `name`".into()));
            }
            let target = resolve_target(
                spec,
                name.clone(),
                &actions,
                providers,
                TargetDefaults {
                    max_per_hour,
                    cooldown,
                    max_steps,
                },
            )
            .map_err(at)?;
            targets.push(Arc::new(target));
        }
        Ok(RepairConfig {
            sources,
            actions,
            targets,
            approval_expires,
        })
    }
}

struct TargetDefaults {
    max_per_hour: u32,
    cooldown: Duration,
    max_steps: u32,
}

/// A target's name when none is given: its monitor glob without the glob's characters
/// (`jellyfin*` is `jellyfin`), or its place in the file.
fn default_name(monitor: Option<&str>, index: usize) -> String {
    let kept: String = monitor
        .unwrap_or_default()
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    let kept = kept.trim_matches(['-', '.']);
    if kept.is_empty() {
        format!("target-{index}")
    } else {
        kept.chars().take(64).collect()
    }
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| format!("{field} {text:?} is invalid: {e} (e.g. 90s or 5m)")),
        None => Ok(default),
    }
}

fn resolve_action(spec: &ActionSpec) -> Result<Action, String> {
    entry_name(&spec.name)?;
    if spec.capability.trim().is_empty() {
        return Err("capability is empty: name the capability of the agents that run it".into());
    }
    // The repair's task carries it: refused here, not when an outage needs the task.
    crate::bounds::capabilities(&[spec.capability.trim().to_owned()])
        .map_err(|e| e.message.replace("capabilities[0]", "capability"))?;
    let mut params = BTreeMap::new();
    for (name, pattern) in &spec.params {
        // Anchored at both ends whatever the author wrote, as the agent anchors it: a pattern
        // checks the whole value.
        let regex = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("params.{name}: invalid pattern {pattern:?}: {e}"))?;
        params.insert(name.clone(), (pattern.clone(), regex));
    }
    for name in spec.param_descriptions.keys() {
        if !params.contains_key(name) {
            return Err(format!(
                "param_descriptions.{name}: the action has no parameter {name:?}"
            ));
        }
    }
    Ok(Action {
        name: spec.name.clone(),
        description: spec
            .description
            .clone()
            .unwrap_or_else(|| spec.name.replace('_', " ")),
        params,
        param_descriptions: spec.param_descriptions.clone(),
        capability: spec.capability.trim().to_owned(),
        risky: spec.risky,
        timeout_s: spec.timeout_s,
        host: spec.host.clone(),
        allow_leading_dash: spec.allow_leading_dash,
    })
}

fn resolve_target(
    spec: &TargetSpec,
    name: String,
    actions: &[Arc<Action>],
    providers: &[&str],
    defaults: TargetDefaults,
) -> Result<Target, String> {
    entry_name(&name).map_err(|e| format!("{e} (give the target a `name`)"))?;
    if spec.monitor.is_none() && spec.labels.is_empty() {
        return Err("give a monitor glob or labels to match alerts by".into());
    }
    let monitor = match &spec.monitor {
        Some(text) => {
            let glob = GlobBuilder::new(text)
                .build()
                .map_err(|e| format!("monitor: {text:?} is not a valid glob: {}", e.kind()))?;
            Some((text.clone(), glob.compile_matcher()))
        }
        None => None,
    };
    if let Some(provider) = &spec.provider
        && !providers.contains(&provider.as_str())
    {
        return Err(format!(
            "provider {provider:?} is not an [[llm.providers]] entry (configured: {})",
            if providers.is_empty() {
                "none".to_owned()
            } else {
                providers.join(", ")
            }
        ));
    }
    if spec.actions.is_empty() {
        return Err("actions is empty: name the [[actions]] a repair may run".into());
    }
    let mut allowed = Vec::new();
    for name in &spec.actions {
        let action = actions
            .iter()
            .find(|a| &a.name == name)
            .ok_or_else(|| format!("actions: {name:?} is not an [[actions]] entry"))?;
        allowed.push(action.clone());
    }
    for (param, value) in &spec.params {
        let users: Vec<&Arc<Action>> = allowed
            .iter()
            .filter(|a| a.params.contains_key(param))
            .collect();
        if users.is_empty() {
            return Err(format!(
                "params.{param}: no allowed action has a parameter {param:?}"
            ));
        }
        for action in users {
            action
                .check_param(param, value)
                .map_err(|e| format!("params.{param}: {e} (action {})", action.name))?;
        }
    }
    for step in &spec.runbook {
        let Some(action) = allowed.iter().find(|a| &a.name == step) else {
            return Err(format!(
                "runbook: {step:?} is not one of the target's actions ({})",
                spec.actions.join(", ")
            ));
        };
        let missing: Vec<&str> = action
            .param_names()
            .into_iter()
            .filter(|p| !spec.params.contains_key(*p))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "runbook: {step} needs {} but the target fixes no value for it in params",
                missing.join(", ")
            ));
        }
    }
    if spec.provider.is_none() && spec.runbook.is_empty() {
        return Err(
            "give a provider (a model decides) or a runbook (the actions to run in order)".into(),
        );
    }
    let verify = match &spec.verify {
        None => Verify {
            probe: Probe::Recovery,
            within: DEFAULT_VERIFY_WITHIN,
        },
        Some(v) => {
            let probe = match (&v.http, &v.tcp) {
                (Some(_), Some(_)) => {
                    return Err("verify: give http or tcp, not both".into());
                }
                (Some(url), None) => {
                    http_url("verify.http", url)?;
                    Probe::Http {
                        url: url.clone(),
                        status: v.status,
                    }
                }
                (None, Some(address)) => {
                    let port = address
                        .rsplit_once(':')
                        .and_then(|(host, port)| (!host.is_empty()).then_some(port))
                        .and_then(|p| p.parse::<u16>().ok());
                    if port.is_none_or(|p| p == 0) {
                        return Err(format!(
                            "verify.tcp {address:?} is not host:port (e.g. \"nas.local:22\")"
                        ));
                    }
                    Probe::Tcp {
                        address: address.clone(),
                    }
                }
                (None, None) => {
                    if v.status.is_some() {
                        return Err("verify.status needs verify.http".into());
                    }
                    Probe::Recovery
                }
            };
            let within = duration("verify.within", v.within.as_deref(), DEFAULT_VERIFY_WITHIN)?;
            if within.is_zero() {
                return Err("verify.within must be more than 0s".into());
            }
            Verify { probe, within }
        }
    };
    let cooldown = match &spec.cooldown {
        Some(text) => duration("cooldown", Some(text), defaults.cooldown)?,
        None => defaults.cooldown,
    };
    let max_steps = spec.max_steps.unwrap_or(defaults.max_steps);
    if max_steps == 0 {
        return Err("max_steps must be 1 or more".into());
    }
    Ok(Target {
        name,
        monitor,
        labels: spec.labels.clone(),
        provider: spec.provider.clone(),
        actions: allowed,
        params: spec.params.clone(),
        runbook: spec.runbook.clone(),
        verify,
        host: spec.host.clone(),
        max_per_hour: spec.max_per_hour.unwrap_or(defaults.max_per_hour),
        cooldown,
        max_steps,
        context: spec.context.clone(),
    })
}

/// Checks everything but the variables' values, which may be set only where the server runs.
pub fn check(entries: RepairEntries<'_>, providers: &[&str]) -> Result<(), (usize, String)> {
    let stand_in = |_: &str| Some("stand-in-token".to_owned());
    RepairConfig::resolve(entries, providers, &stand_in).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        actions: Vec<ActionSpec>,
        #[serde(default)]
        repair: RepairSpec,
        #[serde(default)]
        alerts: Alerts,
    }

    #[derive(Deserialize, Default)]
    struct Alerts {
        #[serde(default)]
        sources: Vec<AlertSourceSpec>,
    }

    const BASE: &str = r#"
[[alerts.sources]]
name = "kuma"
kind = "uptime-kuma"
token_env = "KUMA_TOKEN"

[[actions]]
name = "restart_container"
argv = ["docker", "restart", "{container}"]
params = { container = "^[a-z0-9][a-z0-9_.-]{0,62}$" }
capability = "docker"

[[actions]]
name = "reboot"
params = { host = "[a-z]+" }
capability = "power"
risky = true

[[repair.targets]]
monitor = "jellyfin*"
provider = "local"
actions = ["restart_container", "reboot"]
params = { container = "jellyfin" }
runbook = ["restart_container"]
verify = { http = "http://127.0.0.1:8096/health", within = "1m" }
"#;

    fn resolve(text: &str) -> Result<RepairConfig, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let sources: Vec<_> = file.alerts.sources.into_iter().map(|s| (1, s)).collect();
        let actions: Vec<_> = file.actions.into_iter().map(|a| (2, a)).collect();
        let targets: Vec<_> = file
            .repair
            .targets
            .iter()
            .map(|t| (3, t.get_ref().clone()))
            .collect();
        let env = |v: &str| (v == "KUMA_TOKEN").then(|| "t0ken".to_owned());
        RepairConfig::resolve(
            RepairEntries {
                sources: &sources,
                actions: &actions,
                targets: &targets,
                defaults: (4, &file.repair),
            },
            &["local"],
            &env,
        )
        .map_err(|(line, why)| format!("{line}: {why}"))
    }

    fn alert(monitor: &str) -> Alert {
        Alert {
            key: "1".into(),
            monitor: monitor.into(),
            state: crate::alerts::AlertState::Firing,
            labels: BTreeMap::new(),
            message: String::new(),
            at: None,
            url: None,
        }
    }

    #[test]
    fn the_example_loads_and_matches_its_monitor() {
        let c = resolve(BASE).unwrap();
        assert_eq!(c.sources[0].token.expose(), "t0ken");
        let t = c.target_for(&alert("jellyfin (LAN)")).unwrap();
        assert_eq!(t.name, "jellyfin");
        assert_eq!(t.max_per_hour, DEFAULT_MAX_PER_HOUR);
        assert_eq!(t.verify.within, Duration::from_secs(60));
        assert!(c.target_for(&alert("plex")).is_none());
        let restart = t.action("restart_container").unwrap();
        assert!(restart.check_param("container", "jellyfin").is_ok());
        assert!(restart.check_param("container", "x; rm -rf /").is_err());
        assert!(restart.check_param("container", "--privileged").is_err());
    }

    #[test]
    fn mistakes_name_the_entry_and_field() {
        for (from, to, expect) in [
            (
                "uptime-kuma",
                "kuma2",
                "alerts.sources[0] (\"kuma\"): kind: unknown kind",
            ),
            (
                "KUMA_TOKEN",
                "NOT_SET",
                "NOT_SET (named by token_env) is unset",
            ),
            (
                "provider = \"local\"",
                "provider = \"cloud\"",
                "provider \"cloud\" is not an [[llm.providers]]",
            ),
            (
                "\"restart_container\", \"reboot\"]",
                "\"restart_container\", \"rm\"]",
                "actions: \"rm\" is not an [[actions]] entry",
            ),
            (
                "container = \"jellyfin\"",
                "container = \"Jelly Fin\"",
                "params.container",
            ),
            (
                "runbook = [\"restart_container\"]",
                "runbook = [\"reboot\"]",
                "runbook: reboot needs host",
            ),
            (
                "within = \"1m\"",
                "within = \"soon\"",
                "verify.within \"soon\" is invalid",
            ),
            (
                "capability = \"docker\"",
                "capability = \"dock\\u0007er\"",
                "capability: must not contain control characters",
            ),
            (
                "{0,62}$\" }",
                "{0,62}$\", extra = \"(\" }",
                "params.extra: invalid pattern",
            ),
        ] {
            let text = BASE.replace(from, to);
            let err = resolve(&text).unwrap_err();
            assert!(err.contains(expect), "{from} → {to}: {err}");
        }
        let err = resolve(&BASE.replace(
            "http = \"http://127.0.0.1:8096/health\"",
            "tcp = \"nohost\"",
        ))
        .unwrap_err();
        assert!(
            err.contains("verify.tcp \"nohost\" is not host:port"),
            "{err}"
        );
    }

    #[test]
    fn a_leading_dash_is_refused_unless_allowed() {
        let c = resolve(&BASE.replace("[a-z]+", "[a-z-]+")).unwrap();
        let reboot = c.actions.iter().find(|a| a.name == "reboot").unwrap();
        assert!(
            reboot
                .check_param("host", "--now")
                .unwrap_err()
                .contains("option")
        );
        assert!(reboot.check_param("host", "a-b").is_ok());
    }
}
