//! Settings: one typed tree built in layers (defaults, then the TOML file named by
//! `MUSTER_CONFIG` or `muster serve --config`, then the environment, then flags), and the
//! reload a SIGHUP asks for. A bad value stops the start with the file, line and field (or the
//! variable, or the flag) at fault and the form expected, with an example.
//!
//! Only this module knows the server's variable names: the binary passes the environment in
//! through [`Sources`], so tests never touch the real one. One table, `FIELDS`, describes every
//! setting; loading, `muster config show`, `muster serve --help` and the README's table are all
//! drawn from it, so they cannot disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::canaries::{self, Canary, CanarySpec};
use crate::chat::{ChatConfig, TelegramChat, TelegramSpec};
use crate::gitops::{self, GitConfig, GitRuleSpec, SourceSpec};
use crate::llm::{self, BudgetSpec, LlmConfig, ProviderSpec};
use crate::notify::{Channel, ChannelSpec, NotifyConfig, Rule, RuleSpec};
use crate::repair::config::{
    self as repair_config, ActionSpec, AlertSourceSpec, RepairConfig, RepairEntries, RepairSpec,
    TargetSpec,
};
use crate::schedules::{
    self,
    config::{Schedule, ScheduleSpec},
};

pub use crate::secret::Secret;
use crate::secret::is_variable_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl std::str::FromStr for LogFormat {
    /// The form expected, worded to follow `NAME="value" is invalid: `.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            _ => Err("expected json or pretty".to_owned()),
        }
    }
}

/// The address people and forges reach the server at (`PUBLIC_URL`): `http` or `https`, a
/// host, an optional port and path; no query, fragment or credentials; no trailing slash, so
/// links are built as `format!("{url}/tasks/{id}")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    text: String,
    authority: String,
}

impl PublicUrl {
    /// Checks and normalises `value`; the error is the form expected, with an example.
    pub fn parse(value: &str) -> Result<Self, String> {
        const FORM: &str = "expected http(s)://host[:port][/path] such as \
                            https://muster.example.com or http://192.168.1.10:8000";
        let url = url::Url::parse(value.trim()).map_err(|_| FORM.to_owned())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{FORM} (the scheme must be http or https)"));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!("{FORM} (the host is missing)"));
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{FORM}, without a query (?…) or fragment (#…)"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // It ends up in notifications and pages; a password there would leak.
            return Err(format!("{FORM}, without a user or password"));
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(PublicUrl {
            text: url.as_str().trim_end_matches('/').to_owned(),
            authority,
        })
    }

    /// The URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `host[:port]` as a browser sends it in `Host` (the port only when it is not the
    /// scheme's default), for the Host check.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Everything `muster serve` is configured by.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub db_path: PathBuf,
    /// Where people and forges reach the server: links in notifications and commit statuses,
    /// the `Host` check. None until an operator sets it.
    pub public_url: Option<PublicUrl>,
    /// Admin key; with none set the server only binds loopback addresses.
    pub api_key: Option<Secret>,
    /// Key agents present; defaults to `api_key`.
    pub agent_key: Option<Secret>,
    pub log_format: LogFormat,
    /// An agent silent this long is offline and its tasks run elsewhere.
    pub heartbeat_timeout: Duration,
    /// An assigned task not claimed within this goes back to the queue.
    pub assign_timeout: Duration,
    /// How long a claim holds a task without a heartbeat.
    pub lease: Duration,
    /// Heartbeats that do not list the agent's running attempts (plain-HTTP agents) extend
    /// their leases only up to the task's `timeout_s`, or this long after it started: such an
    /// agent restarting would otherwise keep its forgotten tasks leased forever.
    pub unlisted_lease_cap: Duration,
    /// Finished tasks and their logs are deleted after this.
    pub retention: Duration,
    /// Retries of a task that does not set `max_retries`.
    pub default_max_retries: u32,
    /// First retry delay; each further retry doubles it, up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// How often the sweeper looks for lapsed heartbeats, leases and timeouts.
    pub sweep_interval: Duration,
    /// How long in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// A web UI session unused this long ends.
    pub session_idle: Duration,
    /// A connection that has not sent a complete request head this long after it opened or
    /// after its last response is closed: idle keep-alive sockets and half-sent headers alike.
    /// Never applies while a response is being sent (long-polls, SSE).
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it (or beyond the file limit less a reserve) a new
    /// connection is refused at accept.
    pub max_connections: usize,
    /// Bytes of log text stored per task; lines beyond it are dropped and counted in one
    /// marker line.
    pub log_limit: usize,
    /// `[[notify.channels]]` and `[[notify.rules]]` from the config file.
    pub notify: NotifyConfig,
    /// `[[git.sources]]` and `[[git.rules]]` from the config file.
    pub git: GitConfig,
    /// `[[llm.providers]]` and `[[llm.budgets]]` from the config file.
    pub llm: LlmConfig,
    /// `[[alerts.sources]]`, `[[actions]]`, `[repair]` and `[[repair.targets]]`.
    pub repair: RepairConfig,
    /// `[[schedules]]`, checked; those created through the API live in the store.
    pub schedules: Vec<Schedule>,
    /// `[chat.telegram]`: the chat commands.
    pub chat: ChatConfig,
    /// `[[canaries]]`.
    pub canaries: Vec<Canary>,
}

/// Where [`Settings::load`] reads from, lowest layer last: flags, the environment, the file.
pub struct Sources<E> {
    /// `--config FILE`; when `None`, `MUSTER_CONFIG` in `env` names the file, if set.
    pub file: Option<PathBuf>,
    /// The environment: the binary passes `std::env::var`, tests a map.
    pub env: E,
    /// Flags, the highest layer.
    pub flags: Overrides,
}

/// The settings `muster serve` also takes as flags; each wins over its variable and the file.
/// Kept as text so a bad flag is reported in the same words as a bad variable.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--addr`
    pub addr: Option<String>,
    /// `--db`
    pub db_path: Option<String>,
}

/// When a changed setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// A SIGHUP re-reads it and the running server uses the new value.
    OnReload,
    /// Taken once at start (the socket, the database, the log subscriber, and the loops and
    /// layers the server builds at start); a SIGHUP keeps the running value and says so.
    OnRestart,
}

/// One setting as operators meet it: its variable, its key under `[server]`, its flag, its
/// documented default and meaning, and when a change takes effect.
struct Field {
    var: &'static str,
    file_key: Option<&'static str>,
    flag: Option<Flag>,
    default: &'static str,
    meaning: &'static str,
    applies: Applies,
    kind: Kind,
}

#[derive(Clone, Copy)]
struct Flag {
    name: &'static str,
    get: fn(&Overrides) -> Option<&str>,
}

enum Kind {
    /// A value taken from the flag, else the variable, else the file key, else the default.
    Value {
        set: fn(&mut Settings, &str) -> Result<(), String>,
        show: fn(&Settings) -> Option<String>,
        keep: fn(&mut Settings, &Settings),
    },
    /// A key: from the variable, else from the variable the file's `*_env` key names. Keys are
    /// never written in the file, which is often committed or world-readable.
    Secret {
        slot: fn(&mut Settings) -> &mut Option<Secret>,
        get: fn(&Settings) -> Option<&Secret>,
    },
    /// Read by [`Settings::load`] itself before the settings (the file's name, `DATABASE_URL`);
    /// listed for the documentation only.
    Source,
}

/// A plain setting kept in `Settings::$field`, parsed by `$parse` and shown by `$show`.
macro_rules! value {
    ($field:ident, $parse:expr, $show:expr) => {
        Kind::Value {
            set: |s, text| {
                s.$field = $parse(text)?;
                Ok(())
            },
            show: |s| $show(&s.$field),
            keep: |s, from| s.$field = Clone::clone(&from.$field),
        }
    };
}

macro_rules! secret {
    ($field:ident) => {
        Kind::Secret {
            slot: |s| &mut s.$field,
            get: |s| s.$field.as_ref(),
        }
    };
}

/// Every setting, in the order the documentation lists them.
static FIELDS: &[Field] = &[
    Field {
        var: "ADDR",
        file_key: Some("addr"),
        flag: Some(Flag {
            name: "--addr",
            get: |o| o.addr.as_deref(),
        }),
        default: "127.0.0.1:8000",
        meaning: "listen address, IP:PORT; a non-loopback address requires API_KEY",
        applies: Applies::OnRestart,
        kind: value!(addr, socket_addr, shown),
    },
    Field {
        var: "DB_PATH",
        file_key: Some("db_path"),
        flag: Some(Flag {
            name: "--db",
            get: |o| o.db_path.as_deref(),
        }),
        default: "muster.db",
        meaning: "the SQLite file",
        applies: Applies::OnRestart,
        kind: value!(db_path, file_path, shown_path),
    },
    Field {
        var: "PUBLIC_URL",
        file_key: Some("public_url"),
        flag: None,
        default: "none",
        meaning: "the address people and forges use, http(s)://host[:port][/path]: links in \
                  notifications and commit statuses, the Host check",
        applies: Applies::OnReload,
        kind: value!(public_url, public_url, shown_url),
    },
    Field {
        var: "API_KEY",
        file_key: Some("api_key_env"),
        flag: None,
        default: "none",
        meaning: "admin key (Authorization: Bearer …), works on every route; in the file, \
                  api_key_env names the variable that holds it",
        applies: Applies::OnReload,
        kind: secret!(api_key),
    },
    Field {
        var: "AGENT_KEY",
        file_key: Some("agent_key_env"),
        flag: None,
        default: "API_KEY",
        meaning: "key for agent routes (register, heartbeat, claim, reports); in the file, \
                  agent_key_env names the variable that holds it",
        applies: Applies::OnReload,
        kind: secret!(agent_key),
    },
    Field {
        var: "LOG_FORMAT",
        file_key: Some("log_format"),
        flag: None,
        default: "pretty",
        meaning: "pretty or json (RUST_LOG filters, default info)",
        applies: Applies::OnRestart,
        kind: value!(log_format, log_format, shown),
    },
    Field {
        var: "HEARTBEAT_TIMEOUT",
        file_key: Some("heartbeat_timeout"),
        flag: None,
        default: "90s",
        meaning: "silence after which an agent is offline",
        applies: Applies::OnReload,
        kind: value!(heartbeat_timeout, duration, shown_duration),
    },
    Field {
        var: "ASSIGN_TIMEOUT",
        file_key: Some("assign_timeout"),
        flag: None,
        default: "30s",
        meaning: "an assigned task not claimed by then is queued again",
        applies: Applies::OnReload,
        kind: value!(assign_timeout, duration, shown_duration),
    },
    Field {
        var: "LEASE",
        file_key: Some("lease"),
        flag: None,
        default: "60s",
        meaning: "how long a claim holds without a heartbeat",
        applies: Applies::OnReload,
        kind: value!(lease, duration, shown_duration),
    },
    Field {
        var: "UNLISTED_LEASE_CAP",
        file_key: Some("unlisted_lease_cap"),
        flag: None,
        default: "6h",
        meaning: "longest a task without `timeout_s` stays leased to an agent whose heartbeats do not list what it runs",
        applies: Applies::OnReload,
        kind: value!(unlisted_lease_cap, duration, shown_duration),
    },
    Field {
        var: "RETENTION",
        file_key: Some("retention"),
        flag: None,
        default: "30d",
        meaning: "finished tasks and their logs are pruned after this",
        applies: Applies::OnReload,
        kind: value!(retention, duration, shown_duration),
    },
    Field {
        var: "MAX_RETRIES",
        file_key: Some("max_retries"),
        flag: None,
        default: "3",
        meaning: "retries of a task that sets no max_retries",
        applies: Applies::OnReload,
        kind: value!(default_max_retries, retries, shown),
    },
    // The retry policy, the body limit layer, the sweep loop's interval, the session store and
    // the shutdown grace are built or read once when the server starts, so a reload cannot
    // reach them.
    Field {
        var: "RETRY_BACKOFF",
        file_key: Some("retry_backoff"),
        flag: None,
        default: "1s",
        meaning: "first retry delay, doubling on each retry up to RETRY_BACKOFF_MAX",
        applies: Applies::OnRestart,
        kind: value!(retry_backoff, duration, shown_duration),
    },
    Field {
        var: "RETRY_BACKOFF_MAX",
        file_key: Some("retry_backoff_max"),
        flag: None,
        default: "10m",
        meaning: "the longest retry delay",
        applies: Applies::OnRestart,
        kind: value!(retry_backoff_max, duration, shown_duration),
    },
    Field {
        var: "BODY_LIMIT",
        file_key: Some("body_limit"),
        flag: None,
        default: "1048576",
        meaning: "largest request body in bytes (413 beyond)",
        applies: Applies::OnRestart,
        kind: value!(body_limit, bytes, shown),
    },
    Field {
        var: "SWEEP_INTERVAL",
        file_key: Some("sweep_interval"),
        flag: None,
        default: "1s",
        meaning: "how often heartbeats, leases and timeouts are checked",
        applies: Applies::OnRestart,
        kind: value!(sweep_interval, duration, shown_duration),
    },
    Field {
        var: "SHUTDOWN_GRACE",
        file_key: Some("shutdown_grace"),
        flag: None,
        default: "10s",
        meaning: "how long requests may finish after SIGTERM/SIGINT",
        applies: Applies::OnRestart,
        kind: value!(shutdown_grace, duration, shown_duration),
    },
    Field {
        var: "SESSION_IDLE",
        file_key: Some("session_idle"),
        flag: None,
        default: "12h",
        meaning: "a web UI session unused this long ends",
        applies: Applies::OnRestart,
        kind: value!(session_idle, duration, shown_duration),
    },
    // Read for every new connection and every log post, so a reload reaches them.
    Field {
        var: "IDLE_TIMEOUT",
        file_key: Some("idle_timeout"),
        flag: None,
        default: "30s",
        meaning: "a connection that sends no complete request head this long after opening or \
                  after its last response is closed (idle or half-sent headers); never while a \
                  response streams",
        applies: Applies::OnReload,
        kind: value!(idle_timeout, duration, shown_duration),
    },
    Field {
        var: "MAX_CONNECTIONS",
        file_key: Some("max_connections"),
        flag: None,
        default: "1024",
        meaning: "connections served at once, also held 64 below the open-file limit (raised \
                  to its hard limit at start); more are refused at accept with 503",
        applies: Applies::OnReload,
        kind: value!(max_connections, count, shown),
    },
    Field {
        var: "LOG_LIMIT",
        file_key: Some("log_limit"),
        flag: None,
        default: "16777216",
        meaning: "bytes of log text stored per task; later lines are dropped and one marker \
                  line counts them",
        applies: Applies::OnReload,
        kind: value!(log_limit, bytes, shown),
    },
    Field {
        var: "MUSTER_CONFIG",
        file_key: None,
        flag: Some(Flag {
            name: "--config",
            get: |_| None,
        }),
        default: "none",
        meaning: "the TOML config file (see examples/muster.toml); SIGHUP re-reads it",
        applies: Applies::OnRestart,
        kind: Kind::Source,
    },
    Field {
        var: "DATABASE_URL",
        file_key: None,
        flag: None,
        default: "none",
        meaning: "a postgres:// URL selects PostgreSQL (a later release; refused for now)",
        applies: Applies::OnRestart,
        kind: Kind::Source,
    },
];

impl Field {
    fn same(&self, a: &Settings, b: &Settings) -> bool {
        match &self.kind {
            Kind::Value { show, .. } => show(a) == show(b),
            Kind::Secret { get, .. } => get(a) == get(b),
            Kind::Source => true,
        }
    }

    /// The value as `config show` prints it; keys print as `[redacted]`.
    fn show(&self, settings: &Settings) -> Option<String> {
        match &self.kind {
            Kind::Value { show, .. } => show(settings),
            Kind::Secret { get, .. } => get(settings).map(|key| format!("{key:?}")),
            Kind::Source => None,
        }
    }
}

const DURATION_FORM: &str = "expected a duration such as 90s, 5m or 12h";

fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(format!("must be more than zero; {DURATION_FORM}")),
        Ok(d) => Ok(d),
        Err(_) => Err(DURATION_FORM.to_owned()),
    }
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        "expected IP:PORT such as 127.0.0.1:8000 or 0.0.0.0:8000 (a host name is not accepted)"
            .to_owned()
    })
}

fn file_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err("expected a file path such as /var/lib/muster/muster.db".to_owned());
    }
    Ok(PathBuf::from(text))
}

fn public_url(text: &str) -> Result<Option<PublicUrl>, String> {
    PublicUrl::parse(text).map(Some)
}

fn log_format(text: &str) -> Result<LogFormat, String> {
    text.parse()
}

fn retries(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected a whole number such as 3".to_owned())
}

fn bytes(text: &str) -> Result<usize, String> {
    const FORM: &str = "expected a number of bytes such as 1048576";
    match text.trim().parse::<usize>() {
        Ok(0) => Err(format!("must be more than zero; {FORM}")),
        Ok(n) => Ok(n),
        Err(_) => Err(FORM.to_owned()),
    }
}

fn count(text: &str) -> Result<usize, String> {
    const FORM: &str = "expected a whole number such as 1024";
    match text.trim().parse::<usize>() {
        Ok(0) => Err(format!("must be more than zero; {FORM}")),
        Ok(n) => Ok(n),
        Err(_) => Err(FORM.to_owned()),
    }
}

fn shown(value: &impl fmt::Display) -> Option<String> {
    Some(value.to_string())
}

fn shown_path(path: &Path) -> Option<String> {
    Some(path.display().to_string())
}

fn shown_url(url: &Option<PublicUrl>) -> Option<String> {
    url.as_ref().map(PublicUrl::to_string)
}

fn shown_duration(d: &Duration) -> Option<String> {
    Some(duration_text(*d))
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A duration in the largest unit that divides it (`90s`, `10m`, `30d`), as operators write
/// them, so `config show` prints values that can be pasted back.
fn duration_text(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return humantime::format_duration(d).to_string();
    }
    let secs = d.as_secs();
    if secs != 0 {
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs.is_multiple_of(size) {
                return format!("{}{unit}", secs / size);
            }
        }
    }
    format!("{secs}s")
}

/// Which layer a value came from, for `muster config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    /// `AGENT_KEY` unset: the admin key serves agents too.
    SameAs(&'static str),
    File {
        line: usize,
    },
    Env(&'static str),
    /// A key from the variable a file's `*_env` key names.
    EnvNamedInFile {
        var: String,
        line: usize,
    },
    Flag(&'static str),
}

impl Origin {
    fn describe(&self, file: Option<&Path>) -> String {
        let file = file.map(|p| p.display().to_string()).unwrap_or_default();
        match self {
            Origin::Default => "default".to_owned(),
            Origin::SameAs(var) => format!("default (same as {var})"),
            Origin::File { line } => format!("file {file}:{line}"),
            Origin::Env(var) => format!("env {var}"),
            Origin::EnvNamedInFile { var, line } => format!("env {var} (named at {file}:{line})"),
            Origin::Flag(flag) => format!("flag {flag}"),
        }
    }
}

/// The config file as written. Each top-level section is one field: the sections of later
/// releases (`[[git.sources]]`, `[[actions]]`, …) join here as fields with their own typed
/// structs. Until then an unknown section is refused, never ignored, so a typo cannot silently
/// drop a setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTree {
    /// `[server]`: the variables' settings in snake_case. Kept as spanned pairs and checked
    /// against `FIELDS`, so the list of keys lives in one place.
    #[serde(default)]
    server: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// `[[notify.channels]]` and `[[notify.rules]]`.
    #[serde(default)]
    notify: NotifyTree,
    /// `[[git.sources]]` and `[[git.rules]]`.
    #[serde(default)]
    git: GitTree,
    /// `[[llm.providers]]` and `[[llm.budgets]]`.
    #[serde(default)]
    llm: LlmTree,
    /// `[[alerts.sources]]`.
    #[serde(default)]
    alerts: AlertsTree,
    /// `[[actions]]`: the server's allow-list for repairs.
    #[serde(default)]
    actions: Vec<Spanned<ActionSpec>>,
    /// `[repair]` and `[[repair.targets]]`.
    #[serde(default)]
    repair: Option<Spanned<RepairSpec>>,
    /// `[[schedules]]`.
    #[serde(default)]
    schedules: Vec<Spanned<ScheduleSpec>>,
    /// `[chat.telegram]`.
    #[serde(default)]
    chat: ChatTree,
    /// `[[canaries]]`.
    #[serde(default)]
    canaries: Vec<Spanned<CanarySpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatTree {
    #[serde(default)]
    telegram: Option<Spanned<TelegramSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsTree {
    #[serde(default)]
    sources: Vec<Spanned<AlertSourceSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmTree {
    #[serde(default)]
    providers: Vec<Spanned<ProviderSpec>>,
    #[serde(default)]
    budgets: Vec<Spanned<BudgetSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GitTree {
    #[serde(default)]
    sources: Vec<Spanned<SourceSpec>>,
    #[serde(default)]
    rules: Vec<Spanned<GitRuleSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyTree {
    #[serde(default)]
    channels: Vec<Spanned<ChannelSpec>>,
    #[serde(default)]
    rules: Vec<Spanned<RuleSpec>>,
}

/// The environment as a function from a variable's name to its value.
type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A config file read and checked: where it is, and each `[server]` value with its line.
struct ConfigFile {
    path: PathBuf,
    server: Vec<FileEntry>,
    /// The `[notify]` entries as written, each with its line; checked with the environment
    /// (their `*_env` keys name variables) by [`ConfigFile::notify`].
    channels: Vec<(usize, ChannelSpec)>,
    rules: Vec<(usize, RuleSpec)>,
    /// The `[git]` entries as written, each with its line; see [`ConfigFile::git`].
    git_sources: Vec<(usize, SourceSpec)>,
    git_rules: Vec<(usize, GitRuleSpec)>,
    /// The `[llm]` entries as written, each with its line; see [`ConfigFile::llm`].
    llm_providers: Vec<(usize, ProviderSpec)>,
    llm_budgets: Vec<(usize, BudgetSpec)>,
    /// The self-repair entries as written, each with its line; see [`ConfigFile::repair`].
    alert_sources: Vec<(usize, AlertSourceSpec)>,
    actions: Vec<(usize, ActionSpec)>,
    repair_targets: Vec<(usize, TargetSpec)>,
    repair: (usize, RepairSpec),
    /// The `[[schedules]]` entries, checked whole at parse (they name no variables).
    schedules: Vec<Schedule>,
    /// `[chat.telegram]` as written, with its line; see [`ConfigFile::chat`].
    chat_telegram: Option<(usize, TelegramSpec)>,
    /// The `[[canaries]]` entries as written, each with its line; see [`ConfigFile::canaries`].
    canaries: Vec<(usize, CanarySpec)>,
}

struct FileEntry {
    var: &'static str,
    key: &'static str,
    line: usize,
    /// The value as text, as the variable would carry it.
    text: String,
    /// The value as written, for messages.
    shown: String,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            ))
        })?;
        ConfigFile::parse(path, &text)
    }

    /// Parses and checks every value, so a bad file is refused whole even where the
    /// environment would override a value.
    fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let tree: FileTree = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let mut pairs: Vec<_> = tree.server.into_iter().collect();
        pairs.sort_by_key(|(key, _)| key.span().start);
        let mut scratch = Settings::new("muster.db");
        let mut server = Vec::new();
        for (key, value) in pairs {
            let name = key.get_ref().as_str();
            let at = |span: std::ops::Range<usize>| {
                format!(
                    "{}:{}: server.{name}",
                    path.display(),
                    line_of(text, span.start)
                )
            };
            let Some(field) = FIELDS.iter().find(|f| f.file_key == Some(name)) else {
                return Err(ConfigError::new(format!(
                    "{}: {}",
                    at(key.span()),
                    unknown_server_key(name)
                )));
            };
            let (value_text, shown) = scalar(value.get_ref());
            let wrong = |why: String| {
                ConfigError::new(format!("{}: {shown} is invalid: {why}", at(value.span())))
            };
            match &field.kind {
                Kind::Value { set, .. } => set(&mut scratch, &value_text).map_err(wrong)?,
                Kind::Secret { .. } => {
                    if !value.get_ref().is_str() || !is_variable_name(&value_text) {
                        return Err(wrong(format!(
                            "expected the name of an environment variable such as MUSTER_{}",
                            field.var
                        )));
                    }
                }
                // A source has no file key, so the search above never finds one.
                Kind::Source => {}
            }
            server.push(FileEntry {
                var: field.var,
                key: name_of(field),
                line: line_of(text, value.span().start),
                text: value_text,
                shown,
            });
        }
        let file = ConfigFile {
            path: path.to_owned(),
            server,
            channels: tree
                .notify
                .channels
                .into_iter()
                .map(|c| (line_of(text, c.span().start), c.into_inner()))
                .collect(),
            rules: tree
                .notify
                .rules
                .into_iter()
                .map(|r| (line_of(text, r.span().start), r.into_inner()))
                .collect(),
            git_sources: tree
                .git
                .sources
                .into_iter()
                .map(|s| (line_of(text, s.span().start), s.into_inner()))
                .collect(),
            git_rules: tree
                .git
                .rules
                .into_iter()
                .map(|r| (line_of(text, r.span().start), r.into_inner()))
                .collect(),
            llm_providers: tree
                .llm
                .providers
                .into_iter()
                .map(|p| (line_of(text, p.span().start), p.into_inner()))
                .collect(),
            llm_budgets: tree
                .llm
                .budgets
                .into_iter()
                .map(|b| (line_of(text, b.span().start), b.into_inner()))
                .collect(),
            alert_sources: tree
                .alerts
                .sources
                .into_iter()
                .map(|s| (line_of(text, s.span().start), s.into_inner()))
                .collect(),
            actions: tree
                .actions
                .into_iter()
                .map(|a| (line_of(text, a.span().start), a.into_inner()))
                .collect(),
            repair_targets: tree
                .repair
                .as_ref()
                .map(|r| {
                    r.get_ref()
                        .targets
                        .iter()
                        .map(|t| (line_of(text, t.span().start), t.get_ref().clone()))
                        .collect()
                })
                .unwrap_or_default(),
            repair: match tree.repair {
                Some(r) => (line_of(text, r.span().start), r.into_inner()),
                None => (0, RepairSpec::default()),
            },
            schedules: {
                let specs: Vec<(usize, ScheduleSpec)> = tree
                    .schedules
                    .into_iter()
                    .map(|s| (line_of(text, s.span().start), s.into_inner()))
                    .collect();
                schedules::config::resolve_all(&specs).map_err(|(line, why)| {
                    ConfigError::new(format!("{}:{line}: {why}", path.display()))
                })?
            },
            chat_telegram: tree
                .chat
                .telegram
                .map(|t| (line_of(text, t.span().start), t.into_inner())),
            canaries: tree
                .canaries
                .into_iter()
                .map(|c| (line_of(text, c.span().start), c.into_inner()))
                .collect(),
        };
        // Everything but the variables' values is checked now, so `muster config check` and
        // a reload refuse a bad rule or channel as a start would.
        file.notify(None)?;
        file.git(None)?;
        file.llm(None)?;
        file.repair(None)?;
        file.chat(None)?;
        file.canaries()?;
        Ok(file)
    }

    /// `[chat.telegram]` checked, its token read through `env`; with no `env`, everything
    /// but the token's value, and an empty config answered.
    fn chat(&self, env: Option<&Lookup<'_>>) -> Result<ChatConfig, ConfigError> {
        let Some((line, spec)) = &self.chat_telegram else {
            return Ok(ChatConfig::default());
        };
        let at = |why: String| {
            ConfigError::new(format!(
                "{}:{line}: chat.telegram: {why}",
                self.path.display()
            ))
        };
        match env {
            Some(env) => Ok(ChatConfig {
                telegram: Some(TelegramChat::resolve(spec, env).map_err(at)?),
            }),
            None => {
                TelegramChat::check(spec).map_err(at)?;
                Ok(ChatConfig::default())
            }
        }
    }

    /// The `[notify]` section checked, its `*_env` keys read through `env`; with no `env`,
    /// everything but the variables' values (see [`Channel::check`]), and an empty config
    /// answered. An error names the file, the line and the entry.
    fn notify(&self, env: Option<&Lookup<'_>>) -> Result<NotifyConfig, ConfigError> {
        let file = self.path.display();
        let mut channels: Vec<Arc<Channel>> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (index, (line, spec)) in self.channels.iter().enumerate() {
            let at = format!("{file}:{line}: notify.channels[{index}] ({:?})", spec.name);
            if names.contains(&spec.name.as_str()) {
                return Err(ConfigError::new(format!(
                    "{at}: another channel has this name; names must be unique"
                )));
            }
            names.push(&spec.name);
            let checked = match env {
                Some(env) => {
                    Channel::resolve(spec.clone(), env).map(|c| channels.push(Arc::new(c)))
                }
                None => Channel::check(spec.clone()),
            };
            checked.map_err(|why| ConfigError::new(format!("{at}: {why}")))?;
        }
        let mut rules = Vec::new();
        for (index, (line, spec)) in self.rules.iter().enumerate() {
            let rule = Rule::resolve(spec.clone(), &names).map_err(|why| {
                ConfigError::new(format!("{file}:{line}: notify.rules[{index}]: {why}"))
            })?;
            rules.push(rule);
        }
        if env.is_none() {
            return Ok(NotifyConfig::default());
        }
        Ok(NotifyConfig { channels, rules })
    }

    /// The `[git]` section checked, its `*_env` keys read through `env`; with no `env`,
    /// everything but the variables' values, and an empty config answered.
    fn git(&self, env: Option<&Lookup<'_>>) -> Result<GitConfig, ConfigError> {
        let at = |(line, why): (usize, String)| {
            ConfigError::new(format!("{}:{line}: {why}", self.path.display()))
        };
        match env {
            Some(env) => GitConfig::resolve(&self.git_sources, &self.git_rules, env).map_err(at),
            None => {
                gitops::sources::check(&self.git_sources, &self.git_rules).map_err(at)?;
                Ok(GitConfig::default())
            }
        }
    }

    /// The `[llm]` section checked, its `key_env` keys read through `env`; with no `env`,
    /// everything but the variables' values, and an empty config answered.
    fn llm(&self, env: Option<&Lookup<'_>>) -> Result<LlmConfig, ConfigError> {
        let at = |(line, why): (usize, String)| {
            ConfigError::new(format!("{}:{line}: {why}", self.path.display()))
        };
        match env {
            Some(env) => {
                LlmConfig::resolve(&self.llm_providers, &self.llm_budgets, env).map_err(at)
            }
            None => {
                llm::providers::check(&self.llm_providers, &self.llm_budgets).map_err(at)?;
                Ok(LlmConfig::default())
            }
        }
    }

    /// The self-repair sections checked, the sources' tokens read through `env`; with no
    /// `env`, everything but the variables' values, and an empty config answered.
    fn repair(&self, env: Option<&Lookup<'_>>) -> Result<RepairConfig, ConfigError> {
        let at = |(line, why): (usize, String)| {
            ConfigError::new(format!("{}:{line}: {why}", self.path.display()))
        };
        let providers: Vec<&str> = self
            .llm_providers
            .iter()
            .map(|(_, p)| p.name.as_str())
            .collect();
        let entries = RepairEntries {
            sources: &self.alert_sources,
            actions: &self.actions,
            targets: &self.repair_targets,
            defaults: (self.repair.0, &self.repair.1),
        };
        match env {
            Some(env) => RepairConfig::resolve(entries, &providers, env).map_err(at),
            None => {
                repair_config::check(entries, &providers).map_err(at)?;
                Ok(RepairConfig::default())
            }
        }
    }

    /// The `[[canaries]]` entries checked (against the configured notification channels).
    fn canaries(&self) -> Result<Vec<Canary>, ConfigError> {
        let channels: Vec<&str> = self.channels.iter().map(|(_, c)| c.name.as_str()).collect();
        canaries::config::resolve_all(&self.canaries, &channels).map_err(|(line, why)| {
            ConfigError::new(format!("{}:{line}: {why}", self.path.display()))
        })
    }

    fn entry(&self, field: &Field) -> Option<&FileEntry> {
        self.server.iter().find(|e| e.var == field.var)
    }

    fn at(&self, entry: &FileEntry) -> String {
        format!(
            "{}:{}: server.{}",
            self.path.display(),
            entry.line,
            entry.key
        )
    }
}

fn name_of(field: &Field) -> &'static str {
    field.file_key.unwrap_or(field.var)
}

/// Why a `[server]` key is refused, and what to write instead.
fn unknown_server_key(name: &str) -> String {
    if let Some(field) = FIELDS.iter().find(|f| {
        matches!(f.kind, Kind::Secret { .. })
            && f.file_key.and_then(|k| k.strip_suffix("_env")) == Some(name)
    }) {
        let key = name_of(field);
        return format!(
            "keys are never written in the config file (it is often committed or readable by \
             others); keep the key in an environment variable and name it here, e.g. \
             {key} = \"MUSTER_{var}\", or set {var}",
            var = field.var
        );
    }
    if let Some(field) = FIELDS
        .iter()
        .find(|f| f.var.eq_ignore_ascii_case(name) && f.file_key.is_some())
    {
        return format!(
            "unknown key; file keys are snake_case: write {} instead",
            name_of(field)
        );
    }
    let known: Vec<&str> = FIELDS.iter().filter_map(|f| f.file_key).collect();
    format!("unknown key; [server] takes {}", known.join(", "))
}

/// A TOML value as text (what the variable would hold) and as written (for messages).
fn scalar(value: &toml::Value) -> (String, String) {
    match value {
        toml::Value::String(s) => (s.clone(), format!("{s:?}")),
        other => (other.to_string(), other.to_string()),
    }
}

/// The line (from 1) holding byte `pos` of `text`.
fn line_of(text: &str, pos: usize) -> usize {
    let end = pos.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A parse or shape error from the toml crate, as `file:line: field: message`.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let file = path.display();
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return ConfigError::new(format!("{file}: {message}"));
    };
    let line = line_of(text, span.start);
    let key = key_path_at(text, span.start).or_else(|| bare_key_at(text, span));
    ConfigError::new(match key {
        Some(key) if !key.contains('.') && message.starts_with("unknown field") => format!(
            "{file}:{line}: {key}: unknown section or top-level key; server settings go under \
             [server] (notifications under [[notify.channels]] and [[notify.rules]], GitOps under \
             [[git.sources]] and [[git.rules]], language models under [[llm.providers]] and \
             [[llm.budgets]], self-repair under [[alerts.sources]], [[actions]], [repair] and \
             [[repair.targets]], schedules under [[schedules]], canaries under [[canaries]], \
             chat commands under [chat.telegram]), the only sections this version reads"
        ),
        Some(key) => format!("{file}:{line}: {key}: {message}"),
        None => format!("{file}:{line}: {message}"),
    })
}

/// The key a span covers, under the nearest table header above it: for errors (a duplicate
/// key) that leave the key out of the parsed tree.
fn bare_key_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let key = text.get(span.clone())?;
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let header = text.get(..span.start)?.lines().rev().find_map(|line| {
        let inner = line.trim().strip_prefix('[')?;
        let inner = inner.strip_prefix('[').unwrap_or(inner);
        Some(inner.split(']').next()?.trim().to_owned())
    });
    Some(match header {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

/// The dotted path of the innermost key whose name or value covers byte `pos`, so an error
/// the toml crate reports by position names its field.
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};

    fn walk(table: &DeTable<'_>, pos: usize, path: &mut Vec<String>) {
        for (key, value) in table.iter() {
            if key.span().contains(&pos) || value.span().contains(&pos) {
                path.push(key.get_ref().to_string());
                descend(value.get_ref(), pos, path);
                return;
            }
        }
    }

    fn descend(value: &DeValue<'_>, pos: usize, path: &mut Vec<String>) {
        match value {
            DeValue::Table(inner) => walk(inner, pos, path),
            DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if item.span().contains(&pos) {
                        if let Some(last) = path.last_mut() {
                            last.push_str(&format!("[{index}]"));
                        }
                        descend(item.get_ref(), pos, path);
                        return;
                    }
                }
            }
            _ => {}
        }
    }

    // The recoverable parse still yields the keys around a syntax error or a duplicate key.
    let (root, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    walk(root.get_ref(), pos, &mut path);
    (!path.is_empty()).then(|| path.join("."))
}

/// The settings and where each value came from.
struct Resolved {
    settings: Settings,
    /// One per entry of `FIELDS`.
    origins: Vec<Origin>,
    file: Option<(PathBuf, Origin)>,
}

/// The sources of one load: the flags, the environment, and the config file read and checked.
struct Layers<'a, E> {
    sources: &'a Sources<E>,
    /// The file, and whether `--config` or `MUSTER_CONFIG` named it.
    file: Option<(ConfigFile, Origin)>,
}

impl<'a, E: Fn(&str) -> Option<String>> Layers<'a, E> {
    fn open(sources: &'a Sources<E>) -> Result<Self, ConfigError> {
        let mut layers = Layers {
            sources,
            file: None,
        };
        let named = match &sources.file {
            Some(path) => Some((path.clone(), Origin::Flag("--config"))),
            None => layers
                .env("MUSTER_CONFIG")
                .map(|p| (PathBuf::from(p), Origin::Env("MUSTER_CONFIG"))),
        };
        if let Some((path, origin)) = named {
            layers.file = Some((ConfigFile::read(&path)?, origin));
        }
        Ok(layers)
    }

    /// A variable; an empty one counts as unset, as shells and unit files often leave them.
    fn env(&self, name: &str) -> Option<String> {
        (self.sources.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// Sets `field` in `settings` from the highest layer that has it, and says which.
    fn apply(&self, field: &Field, settings: &mut Settings) -> Result<Origin, ConfigError> {
        let from_file = self
            .file
            .as_ref()
            .and_then(|(file, _)| Some((file, file.entry(field)?)));
        Ok(match &field.kind {
            Kind::Value { set, .. } => {
                let flag = field
                    .flag
                    .and_then(|flag| Some((flag.name, (flag.get)(&self.sources.flags)?)));
                if let Some((flag, text)) = flag {
                    set(settings, text).map_err(|why| ConfigError::flag(flag, text, why))?;
                    Origin::Flag(flag)
                } else if let Some(text) = self.env(field.var) {
                    set(settings, &text).map_err(|why| ConfigError::var(field.var, &text, why))?;
                    Origin::Env(field.var)
                } else if let Some((file, entry)) = from_file {
                    // Checked when the file was read; this only repeats that check.
                    set(settings, &entry.text).map_err(|why| {
                        ConfigError::new(format!(
                            "{}: {} is invalid: {why}",
                            file.at(entry),
                            entry.shown
                        ))
                    })?;
                    Origin::File { line: entry.line }
                } else {
                    Origin::Default
                }
            }
            Kind::Secret { slot, .. } => {
                if let Some(key) = self.env(field.var) {
                    *slot(settings) = Some(Secret::new(key));
                    Origin::Env(field.var)
                } else if let Some((file, entry)) = from_file {
                    let var = &entry.text;
                    let key = self.env(var).ok_or_else(|| {
                        ConfigError::new(format!(
                            "{}: names {var}, which is not set (or is empty); set {var} in the \
                             server's environment to the key ({}), or remove {}",
                            file.at(entry),
                            field.var,
                            entry.key
                        ))
                    })?;
                    *slot(settings) = Some(Secret::new(key));
                    Origin::EnvNamedInFile {
                        var: var.clone(),
                        line: entry.line,
                    }
                } else {
                    Origin::Default
                }
            }
            Kind::Source => Origin::Default,
        })
    }
}

fn resolve<E: Fn(&str) -> Option<String>>(sources: &Sources<E>) -> Result<Resolved, ConfigError> {
    let layers = Layers::open(sources)?;
    if let Some(url) = layers.env("DATABASE_URL") {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(ConfigError::new(
                "DATABASE_URL selects PostgreSQL, which this build does not support yet; unset \
                 DATABASE_URL to use SQLite (DB_PATH)",
            ));
        }
        // The value is not echoed: a database URL often carries a password.
        return Err(ConfigError::new(
            "DATABASE_URL is invalid: expected a postgres:// URL, or unset it to use SQLite \
             (DB_PATH)",
        ));
    }
    let mut settings = Settings::new("muster.db");
    let mut origins = Vec::with_capacity(FIELDS.len());
    for field in FIELDS {
        origins.push(layers.apply(field, &mut settings)?);
    }
    if settings.agent_key.is_none() && settings.api_key.is_some() {
        settings.agent_key = settings.api_key.clone();
        if let Some(i) = FIELDS.iter().position(|f| f.var == "AGENT_KEY") {
            origins[i] = Origin::SameAs("API_KEY");
        }
    }
    if let Some((file, _)) = &layers.file {
        let env = |name: &str| layers.env(name);
        settings.notify = file.notify(Some(&env))?;
        settings.git = file.git(Some(&env))?;
        settings.llm = file.llm(Some(&env))?;
        settings.repair = file.repair(Some(&env))?;
        settings.schedules = file.schedules.clone();
        settings.chat = file.chat(Some(&env))?;
        settings.canaries = file.canaries()?;
    }
    settings.check_exposure()?;
    Ok(Resolved {
        settings,
        origins,
        file: layers.file.map(|(file, origin)| (file.path, origin)),
    })
}

/// The database `serve` would open (`--db`, `DB_PATH`, the file's `db_path`, or the default),
/// without the rest of the settings: `muster backup` must work where, say, the keys' variables
/// are not set.
pub fn db_path<E: Fn(&str) -> Option<String>>(
    sources: &Sources<E>,
) -> Result<PathBuf, ConfigError> {
    let layers = Layers::open(sources)?;
    let mut settings = Settings::new("muster.db");
    for field in FIELDS.iter().filter(|f| f.var == "DB_PATH") {
        layers.apply(field, &mut settings)?;
    }
    Ok(settings.db_path)
}

/// A setting as `muster config show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub var: &'static str,
    pub file_key: Option<&'static str>,
    /// The value, keys as `[redacted]`; `None` when unset.
    pub value: Option<String>,
    /// The layer it came from: `default`, `file muster.toml:7`, `env LEASE`, `flag --addr`, …
    pub origin: String,
}

/// The settings after every layer, and how each value got there.
#[derive(Debug, Clone)]
pub struct Effective {
    pub settings: Settings,
    /// One row per setting, `MUSTER_CONFIG` first.
    pub shown: Vec<Shown>,
}

/// Loads like [`Settings::load`] and says where each value came from, for `muster config show`.
pub fn effective<E: Fn(&str) -> Option<String>>(
    sources: &Sources<E>,
) -> Result<Effective, ConfigError> {
    let resolved = resolve(sources)?;
    let file = resolved.file.as_ref().map(|(path, _)| path.as_path());
    let mut shown = vec![Shown {
        var: "MUSTER_CONFIG",
        file_key: None,
        value: file.map(|p| p.display().to_string()),
        origin: resolved
            .file
            .as_ref()
            .map_or(Origin::Default, |(_, origin)| origin.clone())
            .describe(None),
    }];
    for (field, origin) in FIELDS.iter().zip(&resolved.origins) {
        if matches!(field.kind, Kind::Source) {
            continue;
        }
        shown.push(Shown {
            var: field.var,
            file_key: field.file_key,
            value: field.show(&resolved.settings),
            origin: origin.describe(file),
        });
    }
    Ok(Effective {
        settings: resolved.settings,
        shown,
    })
}

/// Checks a config file alone, as `muster config check` does: its syntax, its keys and every
/// value. The environment is not consulted, so a `*_env` key may name a variable that is set
/// only where the server runs.
pub fn check_file(path: &Path) -> Result<(), ConfigError> {
    ConfigFile::read(path).map(drop)
}

/// What a SIGHUP changes: the settings to run with from now on, and what to tell the operator.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub settings: Settings,
    /// The variables whose new values `settings` carries (keys by name only).
    pub changed: Vec<&'static str>,
    /// One sentence per setting that changed but takes effect only after a restart;
    /// `settings` keeps the running value of each.
    pub restart_needed: Vec<String>,
}

/// The settings to use after a reload: `fresh`, except that what is taken once at start
/// (`ADDR`, `DB_PATH` and the other settings marked [`Applies::OnRestart`]) keeps its running
/// value. On an error the caller keeps `current`.
pub fn reload(current: &Settings, fresh: Settings) -> Result<Reloaded, ConfigError> {
    let mut settings = fresh;
    let mut changed = Vec::new();
    let mut restart_needed = Vec::new();
    for field in FIELDS {
        if field.same(current, &settings) {
            continue;
        }
        match (&field.kind, field.applies) {
            (Kind::Value { show, keep, .. }, Applies::OnRestart) => {
                let old = show(current).unwrap_or_else(|| "none".into());
                let new = show(&settings).unwrap_or_else(|| "none".into());
                restart_needed.push(format!(
                    "{} changed from {old} to {new}, which takes effect only after a restart; \
                     still using {old}",
                    field.var
                ));
                keep(&mut settings, current);
            }
            _ => changed.push(field.var),
        }
    }
    if settings.notify != current.notify {
        changed.push("notify");
    }
    if settings.llm != current.llm {
        changed.push("llm");
    }
    if settings.repair != current.repair {
        changed.push("repair");
    }
    if settings.git != current.git {
        changed.push("git");
    }
    if settings.schedules != current.schedules {
        changed.push("schedules");
    }
    if settings.chat != current.chat {
        changed.push("chat");
    }
    if settings.canaries != current.canaries {
        changed.push("canaries");
    }
    // Keeping the running address while the new load dropped the key would leave a
    // network-facing server open: refuse that as a start would.
    settings.check_exposure()?;
    Ok(Reloaded {
        settings,
        changed,
        restart_needed,
    })
}

/// `muster serve --help`'s list of settings, drawn from the same table as loading.
pub fn help_text() -> String {
    let mut out = String::from(
        "Settings, each layer over the one before: defaults, the config file (MUSTER_CONFIG or \
         --config; keys under [server]), the environment, flags. `muster config show` prints \
         the result, `muster config check FILE` checks a file. SIGHUP loads the settings \
         again (the environment is fixed at start, so in practice it re-reads the file); \
         settings marked [restart] keep their running value until a restart.\n",
    );
    for field in FIELDS {
        let mut names = vec![field.var.to_owned()];
        names.extend(field.file_key.map(|k| format!("[server] {k}")));
        names.extend(field.flag.map(|f| f.name.to_owned()));
        let restart = match field.applies {
            Applies::OnRestart if !matches!(field.kind, Kind::Source) => " [restart]",
            _ => "",
        };
        out.push_str(&format!(
            "\n  {}  (default: {}){restart}\n      {}\n",
            names.join(", "),
            field.default,
            field.meaning
        ));
    }
    out
}

/// The README's table of settings, drawn from the same table as loading; a test checks that
/// the README carries it verbatim.
pub fn markdown_table() -> String {
    let code = |s: &str| format!("`{s}`");
    let mut out = String::from(
        "| variable | file key (`[server]`) | flag | default | on SIGHUP | meaning |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for field in FIELDS {
        let default = match field.default {
            "none" => "none".to_owned(),
            other => code(other),
        };
        let on_reload = match (&field.kind, field.applies) {
            (Kind::Source, _) => "—",
            (_, Applies::OnReload) => "reloads",
            (_, Applies::OnRestart) => "restart",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {default} | {on_reload} | {} |\n",
            code(field.var),
            field.file_key.map_or("—".to_owned(), code),
            field.flag.map_or("—".to_owned(), |f| code(f.name)),
            field.meaning
        ));
    }
    out
}

impl Settings {
    /// Defaults for a server on `db_path`, bound to loopback with no keys.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Settings {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            db_path: db_path.into(),
            public_url: None,
            api_key: None,
            agent_key: None,
            log_format: LogFormat::Pretty,
            heartbeat_timeout: Duration::from_secs(90),
            assign_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            unlisted_lease_cap: Duration::from_secs(6 * 3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            default_max_retries: 3,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(600),
            body_limit: 1024 * 1024,
            sweep_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            session_idle: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            log_limit: 16 * 1024 * 1024,
            notify: NotifyConfig::default(),
            git: GitConfig::default(),
            llm: LlmConfig::default(),
            repair: RepairConfig::default(),
            schedules: Vec::new(),
            chat: ChatConfig::default(),
            canaries: Vec::new(),
        }
    }

    /// The `[[canaries]]` entry `name`.
    pub fn canary(&self, name: &str) -> Option<&Canary> {
        self.canaries.iter().find(|c| c.name == name)
    }

    /// The one way settings are built: defaults, then the file (`sources.file`, else
    /// `MUSTER_CONFIG`), then the environment, then flags. An error names the file, line and
    /// field, the variable or the flag at fault, and the form expected.
    pub fn load<E: Fn(&str) -> Option<String>>(
        sources: &Sources<E>,
    ) -> Result<Settings, ConfigError> {
        resolve(sources).map(|resolved| resolved.settings)
    }

    /// Reads the process environment (and the file `MUSTER_CONFIG` names) over the defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Settings::from_env`], with the variables coming from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Settings::load(&Sources {
            file: None,
            env: lookup,
            flags: Overrides::default(),
        })
    }

    /// Loads again from `sources` and merges with `self` as [`reload`] does; what a SIGHUP runs.
    pub fn reload_from<E: Fn(&str) -> Option<String>>(
        &self,
        sources: &Sources<E>,
    ) -> Result<Reloaded, ConfigError> {
        reload(self, Settings::load(sources)?)
    }

    /// Settings that work but are probably not what the operator wants; `serve` logs each at
    /// start and after a reload.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.api_key.is_some() && self.agent_key == self.api_key {
            out.push(
                "AGENT_KEY is not set (or equals API_KEY), so agents must present the admin \
                 key and can do anything an operator can. Give agents a key of their own: set \
                 AGENT_KEY=$(openssl rand -hex 32) in the server's environment (or name its \
                 variable with agent_key_env under [server]) and the same value as \
                 MUSTER_AGENT_KEY on each agent"
                    .to_owned(),
            );
        }
        if self.retry_backoff > self.retry_backoff_max {
            out.push(format!(
                "RETRY_BACKOFF ({}) is longer than RETRY_BACKOFF_MAX ({}), so every retry \
                 waits {}",
                duration_text(self.retry_backoff),
                duration_text(self.retry_backoff_max),
                duration_text(self.retry_backoff_max)
            ));
        }
        let shortest = self
            .heartbeat_timeout
            .min(self.lease)
            .min(self.assign_timeout);
        if self.sweep_interval > shortest {
            out.push(format!(
                "SWEEP_INTERVAL ({}) is longer than the shortest of HEARTBEAT_TIMEOUT, LEASE and \
                 ASSIGN_TIMEOUT ({}), so lapses are noticed up to {} late",
                duration_text(self.sweep_interval),
                duration_text(shortest),
                duration_text(self.sweep_interval)
            ));
        }
        out
    }

    /// Refuses a non-loopback address without a key: the API would be open to the network.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if !self.addr.ip().is_loopback() && self.api_key.is_none() {
            return Err(ConfigError {
                message: format!(
                    "refusing to listen on {} without a key: anyone on the network could \
                     submit tasks. Set API_KEY (and optionally AGENT_KEY for agents), e.g. \
                     API_KEY=$(openssl rand -hex 32), or bind 127.0.0.1",
                    self.addr
                ),
            });
        }
        Ok(())
    }
}

/// A setting that stops the start; the message names the file, line and field, the variable
/// or the flag, and what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }

    fn var(name: &str, value: &str, why: impl std::fmt::Display) -> Self {
        ConfigError {
            message: format!("{name}={value:?} is invalid: {why}"),
        }
    }

    fn flag(name: &str, value: &str, why: impl std::fmt::Display) -> Self {
        ConfigError {
            message: format!("{name} {value:?} is invalid: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = from(&[]).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:8000");
        assert_eq!(s.heartbeat_timeout, Duration::from_secs(90));
        assert_eq!(s.retention, Duration::from_secs(30 * 86400));
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = from(&[("HEARTBEAT_TIMEOUT", "soon")]).unwrap_err();
        assert!(
            err.message.starts_with("HEARTBEAT_TIMEOUT="),
            "{}",
            err.message
        );
        let err = from(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.message.contains("LOG_FORMAT"), "{}", err.message);
        let err = from(&[("ADDR", "nowhere")]).unwrap_err();
        assert!(err.message.contains("ADDR"), "{}", err.message);
    }

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        let s = from(&[("RETENTION", "7d"), ("LEASE", "2m")]).unwrap();
        assert_eq!(s.retention, Duration::from_secs(7 * 86400));
        assert_eq!(s.lease, Duration::from_secs(120));
    }

    #[test]
    fn exposing_the_api_needs_a_key() {
        let err = from(&[("ADDR", "0.0.0.0:8000")]).unwrap_err();
        assert!(err.message.contains("API_KEY"), "{}", err.message);
        assert!(from(&[("ADDR", "0.0.0.0:8000"), ("API_KEY", "k")]).is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let s = from(&[("API_KEY", "hunter2"), ("AGENT_KEY", "agent-secret")]).unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("agent-secret"),
            "{shown}"
        );
        // A key reached through the file's `api_key_env` is just as invisible, in `{:?}` and
        // in what `muster config show` prints.
        let (_dir, path) = write_file("[server]\napi_key_env = \"MY_ADMIN_KEY\"\n");
        let sources = Sources {
            file: Some(path),
            env: env_of(&[("MY_ADMIN_KEY", "hunter3")]),
            flags: Overrides::default(),
        };
        let effective = effective(&sources).unwrap();
        let shown = format!("{effective:?} {:?}", effective.settings);
        assert!(!shown.contains("hunter3"), "{shown}");
        assert_eq!(
            effective.settings.api_key.as_ref().map(Secret::expose),
            Some("hunter3")
        );
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// Writes `text` to `muster.toml` in a fresh directory, kept alive by the returned guard.
    fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load(
        file: Option<&str>,
        vars: &[(&str, &str)],
        flags: Overrides,
    ) -> Result<Settings, ConfigError> {
        let written = file.map(write_file);
        Settings::load(&Sources {
            file: written.as_ref().map(|(_, path)| path.clone()),
            env: env_of(vars),
            flags,
        })
    }

    /// The error a file alone gets, named `muster.toml` as an operator would see it.
    fn file_error(text: &str) -> String {
        match ConfigFile::parse(Path::new("muster.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(err) => err.message,
        }
    }

    fn flags(addr: Option<&str>, db: Option<&str>) -> Overrides {
        Overrides {
            addr: addr.map(str::to_owned),
            db_path: db.map(str::to_owned),
        }
    }

    const NOTIFY: &str = r#"[server]
public_url = "https://muster.example"

[[notify.channels]]
name = "phone"
kind = "ntfy"
url = "https://ntfy.example/homelab"
priority = "high"

[[notify.channels]]
name = "tg"
kind = "telegram"
token_env = "TG_TOKEN"
chat_id = -100123

[[notify.rules]]
on = ["task.failed", "agent.offline"]
to = ["phone", "tg"]
quiet = "2m"
"#;

    #[test]
    fn notify_channels_and_rules_load_with_their_secrets_from_the_environment() {
        let s = load(
            Some(NOTIFY),
            &[("TG_TOKEN", "123:abc-def")],
            Overrides::default(),
        )
        .unwrap();
        let names: Vec<&str> = s.notify.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["phone", "tg"]);
        assert_eq!(s.notify.rules.len(), 1);
        assert_eq!(s.notify.rules[0].quiet, Duration::from_secs(120));
        assert!(
            !format!("{:?}", s.notify).contains("123:abc-def"),
            "a token never prints"
        );

        let err = load(Some(NOTIFY), &[], Overrides::default())
            .unwrap_err()
            .message;
        assert!(
            err.contains("muster.toml:10: notify.channels[1] (\"tg\")") && err.contains("TG_TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_notify_entry_is_refused_with_its_line_whatever_the_environment() {
        let typo = NOTIFY.replace("\"agent.offline\"", "\"agent.ofline\"");
        let err = file_error(&typo);
        assert!(
            err.starts_with("muster.toml:16: notify.rules[0]: on: \"agent.ofline\""),
            "{err}"
        );
        let unknown = NOTIFY.replace("to = [\"phone\", \"tg\"]", "to = [\"pager\"]");
        assert!(file_error(&unknown).contains("no channel is named \"pager\""));
        let twice = format!(
            "{NOTIFY}\n[[notify.channels]]\nname = \"phone\"\nkind = \"ntfy\"\nurl = \"https://n.example/x\"\n"
        );
        assert!(
            file_error(&twice).contains("another channel has this name"),
            "{}",
            file_error(&twice)
        );
        let token = NOTIFY.replace("token_env = \"TG_TOKEN\"", "token = \"123:abc\"");
        let err = file_error(&token);
        assert!(
            err.contains("muster.toml:") && err.contains("token"),
            "{err}"
        );
        assert!(!err.contains("123:abc"), "the value is not echoed: {err}");
        let section = "[notify]\nchanels = []\n";
        assert!(
            file_error(section).contains("chanels"),
            "{}",
            file_error(section)
        );
    }

    const GIT: &str = r#"[[git.sources]]
name = "infra"
forge = "gitea"
secret_env = "INFRA_HOOK_SECRET"

[[git.rules]]
source = "infra"
branch = "main"
paths = ["ansible/playbooks/media/**", "!**/README.md"]
task = { kind = "ansible", capabilities = ["ansible"], payload = { playbook = "media.yml" } }
lock_key = "deploy:{repo}:{playbook}"
"#;

    #[test]
    fn git_sources_and_rules_load_with_their_secrets_and_name_their_line_when_wrong() {
        let secret = "0123456789abcdef0123";
        let s = load(
            Some(GIT),
            &[("INFRA_HOOK_SECRET", secret)],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.git.sources.len(), 1);
        assert_eq!(s.git.sources[0].forge, crate::gitops::forge::Forge::Gitea);
        assert_eq!(s.git.rules[0].name, "infra-1");
        assert!(
            !format!("{:?}", s.git).contains(secret),
            "a secret never prints"
        );

        let err = load(Some(GIT), &[], Overrides::default())
            .unwrap_err()
            .message;
        assert!(
            err.contains("muster.toml:1: git.sources[0] (\"infra\"): INFRA_HOOK_SECRET"),
            "{err}"
        );
        let short = load(
            Some(GIT),
            &[("INFRA_HOOK_SECRET", "short")],
            Overrides::default(),
        )
        .unwrap_err()
        .message;
        assert!(short.contains("too short"), "{short}");
        assert!(
            file_error(&GIT.replace("gitea", "gitee")).contains("forge: unknown forge \"gitee\""),
            "{}",
            file_error(&GIT.replace("gitea", "gitee"))
        );
        let err = file_error(&GIT.replace("source = \"infra\"", "source = \"infar\""));
        assert!(
            err.starts_with("muster.toml:6: git.rules[0]: source \"infar\""),
            "{err}"
        );
        let err = file_error(&GIT.replace("{playbook}", "{playbok}"));
        assert!(
            err.contains("lock_key: {playbok} is not a placeholder"),
            "{err}"
        );
        let err = file_error(&GIT.replace("branch = \"main\"\n", ""));
        assert!(err.contains("branch"), "{err}");
    }

    const CANARIES: &str = r#"[[notify.channels]]
name = "phone"
kind = "ntfy"
url = "https://ntfy.sh/homelab"

[[canaries]]
name = "path"
cron = "*/5 * * * *"
channel = "phone"

[[canaries]]
name = "nas"
cron = "0 * * * *"
timezone = "Europe/Berlin"
task = { capabilities = ["nas"] }
within = "20s"
"#;

    #[test]
    fn canaries_load_and_a_bad_one_names_file_line_and_field() {
        let s = load(Some(CANARIES), &[], Overrides::default()).unwrap();
        assert_eq!(s.canaries.len(), 2);
        assert_eq!(s.canary("path").unwrap().channel.as_deref(), Some("phone"));
        assert_eq!(s.canary("nas").unwrap().within, Duration::from_secs(20));
        for (from, to, expect) in [
            (
                "channel = \"phone\"",
                "channel = \"pager\"",
                "muster.toml:6: canaries[0] (\"path\"): channel: no channel is named \"pager\"",
            ),
            (
                "0 * * * *",
                "0 25 * * *",
                "muster.toml:11: canaries[1] (\"nas\"): cron \"0 25 * * *\" is invalid",
            ),
            (
                "name = \"nas\"",
                "name = \"path\"",
                "muster.toml:11: canaries[1] (\"path\"): another canary has this name",
            ),
            (
                "within = \"20s\"",
                "within = \"later\"",
                "muster.toml:11: canaries[1] (\"nas\"): within \"later\" is invalid",
            ),
        ] {
            let err = file_error(&CANARIES.replace(from, to));
            assert!(err.starts_with(expect), "{to}: {err}");
        }
        let err = file_error(&CANARIES.replace("within", "deadline"));
        assert!(
            err.starts_with("muster.toml:16: canaries.deadline: unknown field `deadline`")
                || err.contains("unknown field `deadline`"),
            "{err}"
        );
        // A reload says the canaries changed.
        let current = load(Some(CANARIES), &[], Overrides::default()).unwrap();
        let fresh = load(
            Some(&CANARIES.replace("20s", "30s")),
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert!(
            reload(&current, fresh)
                .unwrap()
                .changed
                .contains(&"canaries")
        );
    }

    #[test]
    fn a_reload_reports_changed_notification_settings() {
        let current = load(Some(NOTIFY), &[("TG_TOKEN", "1:a")], Overrides::default()).unwrap();
        let fresh = load(
            Some(&NOTIFY.replace("quiet = \"2m\"", "quiet = \"5m\"")),
            &[("TG_TOKEN", "1:a")],
            Overrides::default(),
        )
        .unwrap();
        let reloaded = reload(&current, fresh).unwrap();
        assert_eq!(reloaded.changed, ["notify"]);
        assert_eq!(
            reloaded.settings.notify.rules[0].quiet,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn each_layer_wins_over_the_one_before() {
        let file = "[server]\naddr = \"127.0.0.2:1\"\ndb_path = \"file.db\"\nlease = \"2m\"\n\
                    retention = \"7d\"\n";
        let s = load(Some(file), &[], Overrides::default()).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.2:1");
        assert_eq!(s.db_path, PathBuf::from("file.db"));
        assert_eq!(s.lease, Duration::from_secs(120));
        assert_eq!(s.heartbeat_timeout, Duration::from_secs(90), "default kept");

        let env = [
            ("ADDR", "127.0.0.3:1"),
            ("DB_PATH", "env.db"),
            ("LEASE", "3m"),
        ];
        let s = load(Some(file), &env, Overrides::default()).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.3:1");
        assert_eq!(s.db_path, PathBuf::from("env.db"));
        assert_eq!(s.lease, Duration::from_secs(180));
        assert_eq!(s.retention, Duration::from_secs(7 * 86400), "file kept");

        let s = load(
            Some(file),
            &env,
            flags(Some("127.0.0.4:1"), Some("flag.db")),
        )
        .unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.4:1");
        assert_eq!(s.db_path, PathBuf::from("flag.db"));
        assert_eq!(s.lease, Duration::from_secs(180));
    }

    #[test]
    fn show_says_which_layer_each_value_came_from() {
        let (_dir, path) = write_file("[server]\n\nlease = \"2m\"\naddr = \"127.0.0.2:1\"\n");
        let effective = effective(&Sources {
            file: Some(path.clone()),
            env: env_of(&[("ADDR", "127.0.0.3:1")]),
            flags: flags(None, Some("flag.db")),
        })
        .unwrap();
        let origin = |var: &str| {
            let row = effective.shown.iter().find(|r| r.var == var).unwrap();
            (row.value.clone(), row.origin.clone())
        };
        assert_eq!(
            origin("LEASE"),
            (Some("2m".into()), format!("file {}:3", path.display()))
        );
        assert_eq!(
            origin("ADDR"),
            (Some("127.0.0.3:1".into()), "env ADDR".into())
        );
        assert_eq!(
            origin("DB_PATH"),
            (Some("flag.db".into()), "flag --db".into())
        );
        assert_eq!(origin("RETENTION"), (Some("30d".into()), "default".into()));
        assert_eq!(origin("API_KEY"), (None, "default".into()));
        assert_eq!(
            origin("MUSTER_CONFIG"),
            (Some(path.display().to_string()), "flag --config".into())
        );
    }

    #[test]
    fn muster_config_names_the_file_and_the_flag_wins_over_it() {
        let (_a, by_env) = write_file("[server]\nlease = \"2m\"\n");
        let (_b, by_flag) = write_file("[server]\nlease = \"4m\"\n");
        let vars = [("MUSTER_CONFIG", by_env.to_str().unwrap())];
        let s = Settings::load(&Sources {
            file: None,
            env: env_of(&vars),
            flags: Overrides::default(),
        })
        .unwrap();
        assert_eq!(s.lease, Duration::from_secs(120));
        let s = Settings::load(&Sources {
            file: Some(by_flag),
            env: env_of(&vars),
            flags: Overrides::default(),
        })
        .unwrap();
        assert_eq!(s.lease, Duration::from_secs(240));

        let err = load(
            None,
            &[("MUSTER_CONFIG", "/nonexistent/muster.toml")],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.message
                .starts_with("/nonexistent/muster.toml: cannot read the config file"),
            "{}",
            err.message
        );
    }

    #[test]
    fn file_errors_name_the_file_line_and_field() {
        let err = file_error("# muster\n[server]\nlease_time = \"2m\"\n");
        assert!(
            err.starts_with("muster.toml:3: server.lease_time: unknown key; [server] takes addr, "),
            "{err}"
        );
        let err = file_error("[server]\naddr = \"127.0.0.1:8000\"\n\n\n\n\nlease = \"soon\"\n");
        assert_eq!(
            err,
            "muster.toml:7: server.lease: \"soon\" is invalid: expected a duration such as 90s, \
             5m or 12h"
        );
        let err = file_error("[server]\nheartbeat_timeout = 90\n");
        assert_eq!(
            err,
            "muster.toml:2: server.heartbeat_timeout: 90 is invalid: expected a duration such \
             as 90s, 5m or 12h"
        );
        let err = file_error("[server]\nLEASE = \"60s\"\n");
        assert!(
            err.contains("server.LEASE: unknown key; file keys are snake_case: write lease"),
            "{err}"
        );
        let err = file_error("[server]\nlease = \"60s\"\n\n[pagers]\nurl = \"x\"\n");
        assert!(
            err.starts_with("muster.toml:4: pagers: unknown section"),
            "{err}"
        );
        let err = file_error("addr = \"127.0.0.1:8000\"\n");
        assert!(err.starts_with("muster.toml:1: addr: unknown section or top-level key; server settings go under [server]"), "{err}");
        let err = file_error("[server]\nlease = \"60s\n");
        assert!(err.starts_with("muster.toml:2: "), "{err}");
        let err = file_error("[server]\nlease = \"60s\"\nlease = \"70s\"\n");
        assert_eq!(err, "muster.toml:3: server.lease: duplicate key");
        let err = file_error("server = 3\n");
        assert!(err.starts_with("muster.toml:1: server: "), "{err}");
    }

    #[test]
    fn a_key_written_in_the_file_is_refused_with_the_way_to_name_it() {
        let err = file_error("[server]\napi_key = \"hunter2\"\n");
        assert!(
            err.starts_with(
                "muster.toml:2: server.api_key: keys are never written in the config file"
            ),
            "{err}"
        );
        assert!(err.contains("api_key_env = \"MUSTER_API_KEY\""), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the refusal must not echo the key: {err}"
        );
        let err = file_error("[server]\n\nagent_key = \"s\"\n");
        assert!(
            err.starts_with("muster.toml:3: server.agent_key: keys are never written"),
            "{err}"
        );
        assert!(err.contains("agent_key_env"), "{err}");
        let err = file_error("[server]\napi_key_env = \"not a name\"\n");
        assert!(
            err.contains("server.api_key_env: \"not a name\" is invalid: expected the name of an environment variable"),
            "{err}"
        );
    }

    #[test]
    fn a_key_env_names_the_variable_that_holds_the_key() {
        let file = "[server]\napi_key_env = \"MY_ADMIN_KEY\"\nagent_key_env = \"MY_AGENT_KEY\"\n";
        let s = load(
            Some(file),
            &[("MY_ADMIN_KEY", "admin"), ("MY_AGENT_KEY", "agent")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.api_key, Some(Secret::new("admin")));
        assert_eq!(s.agent_key, Some(Secret::new("agent")));

        // The familiar variable wins over the file, as every other variable does.
        let s = load(
            Some(file),
            &[("API_KEY", "env-admin"), ("MY_AGENT_KEY", "agent")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.api_key, Some(Secret::new("env-admin")));

        // Without an agent key, agents use the admin key.
        let s = load(
            Some("[server]\napi_key_env = \"MY_ADMIN_KEY\"\n"),
            &[("MY_ADMIN_KEY", "admin")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.agent_key, Some(Secret::new("admin")));

        let err = load(
            Some(file),
            &[("MY_AGENT_KEY", "agent")],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.message.contains(
                "muster.toml:2: server.api_key_env: names MY_ADMIN_KEY, which is not set"
            ),
            "{}",
            err.message
        );
        assert!(err.message.contains("API_KEY"), "{}", err.message);
    }

    #[test]
    fn the_database_path_alone_needs_no_keys() {
        let (_dir, path) = write_file("[server]\ndb_path = \"file.db\"\napi_key_env = \"UNSET\"\n");
        let sources = |vars: &[(&str, &str)], db: Option<&str>| Sources {
            file: Some(path.clone()),
            env: env_of(vars),
            flags: flags(None, db),
        };
        assert!(
            Settings::load(&sources(&[], None)).is_err(),
            "UNSET is not set"
        );
        assert_eq!(
            db_path(&sources(&[], None)).unwrap(),
            PathBuf::from("file.db")
        );
        assert_eq!(
            db_path(&sources(&[("DB_PATH", "env.db")], None)).unwrap(),
            PathBuf::from("env.db")
        );
        assert_eq!(
            db_path(&sources(&[("DB_PATH", "env.db")], Some("flag.db"))).unwrap(),
            PathBuf::from("flag.db")
        );
    }

    #[test]
    fn a_weak_value_gets_the_form_expected_with_an_example() {
        for (var, value, expected) in [
            (
                "HEARTBEAT_TIMEOUT",
                "abc",
                "HEARTBEAT_TIMEOUT=\"abc\" is invalid: expected a duration such as 90s, 5m or 12h",
            ),
            (
                "ADDR",
                "localhost:8002",
                "ADDR=\"localhost:8002\" is invalid: expected IP:PORT such as 127.0.0.1:8000 or \
                 0.0.0.0:8000 (a host name is not accepted)",
            ),
            (
                "BODY_LIMIT",
                "1MB",
                "BODY_LIMIT=\"1MB\" is invalid: expected a number of bytes such as 1048576",
            ),
            (
                "MAX_RETRIES",
                "many",
                "MAX_RETRIES=\"many\" is invalid: expected a whole number such as 3",
            ),
            (
                "LEASE",
                "0s",
                "LEASE=\"0s\" is invalid: must be more than zero; expected a duration such as \
                 90s, 5m or 12h",
            ),
        ] {
            assert_eq!(from(&[(var, value)]).unwrap_err().message, expected);
        }
        // The file and the flags say the same after their own prefix.
        let err = file_error("[server]\nbody_limit = \"1MB\"\n");
        assert_eq!(
            err,
            "muster.toml:2: server.body_limit: \"1MB\" is invalid: expected a number of bytes \
             such as 1048576"
        );
        let err = file_error("[server]\naddr = \"localhost:8002\"\n");
        assert!(err.ends_with("expected IP:PORT such as 127.0.0.1:8000 or 0.0.0.0:8000 (a host name is not accepted)"), "{err}");
        let err = load(None, &[], flags(Some("localhost:8002"), None)).unwrap_err();
        assert!(
            err.message
                .starts_with("--addr \"localhost:8002\" is invalid: expected IP:PORT"),
            "{}",
            err.message
        );
    }

    #[test]
    fn public_url_is_checked_and_trimmed() {
        let s = from(&[("PUBLIC_URL", "https://muster.example.com/")]).unwrap();
        let url = s.public_url.unwrap();
        assert_eq!(url.as_str(), "https://muster.example.com");
        assert_eq!(url.authority(), "muster.example.com");
        let url = PublicUrl::parse("http://192.168.1.10:8000/muster/").unwrap();
        assert_eq!(url.as_str(), "http://192.168.1.10:8000/muster");
        assert_eq!(url.authority(), "192.168.1.10:8000");
        assert_eq!(PublicUrl::parse("https://h:443").unwrap().authority(), "h");
        assert_eq!(
            PublicUrl::parse("http://[::1]:8000").unwrap().authority(),
            "[::1]:8000"
        );
        assert_eq!(from(&[]).unwrap().public_url, None);

        for bad in [
            "muster.example.com",
            "ftp://muster.example.com",
            "https://muster.example.com/?next=1",
            "https://muster.example.com/#top",
            "https://admin:pw@muster.example.com",
            "http://",
        ] {
            let err = from(&[("PUBLIC_URL", bad)]).unwrap_err();
            assert!(
                err.message.starts_with(&format!("PUBLIC_URL={bad:?} is invalid: expected http(s)://host[:port][/path] such as https://muster.example.com")),
                "{bad}: {}",
                err.message
            );
        }
        let err = file_error("[server]\npublic_url = \"https://h/?a=b\"\n");
        assert!(
            err.starts_with("muster.toml:2: server.public_url: "),
            "{err}"
        );
        assert!(err.contains("without a query"), "{err}");
    }

    #[test]
    fn a_reload_keeps_what_only_a_restart_can_change() {
        let mut current = Settings::new("old.db");
        current.api_key = Some(Secret::new("k"));
        let mut fresh = current.clone();
        fresh.addr = "127.0.0.1:9000".parse().unwrap();
        fresh.db_path = "new.db".into();
        fresh.lease = Duration::from_secs(120);
        fresh.agent_key = Some(Secret::new("agent"));
        let reloaded = reload(&current, fresh).unwrap();
        assert_eq!(reloaded.settings.addr, current.addr);
        assert_eq!(reloaded.settings.db_path, PathBuf::from("old.db"));
        assert_eq!(reloaded.settings.lease, Duration::from_secs(120));
        assert_eq!(reloaded.settings.agent_key, Some(Secret::new("agent")));
        assert_eq!(reloaded.changed, ["AGENT_KEY", "LEASE"]);
        assert_eq!(
            reloaded.restart_needed.len(),
            2,
            "{:?}",
            reloaded.restart_needed
        );
        assert!(
            reloaded.restart_needed[0].starts_with("ADDR changed from 127.0.0.1:8000 to 127.0.0.1:9000, which takes effect only after a restart"),
            "{:?}",
            reloaded.restart_needed
        );
        assert!(reloaded.restart_needed[1].starts_with("DB_PATH changed from old.db to new.db"));
        assert!(
            !format!("{reloaded:?}").contains("agent\""),
            "keys never print"
        );

        // Nothing changed: nothing to report.
        let same = reload(&current, current.clone()).unwrap();
        assert!(same.changed.is_empty() && same.restart_needed.is_empty());
    }

    #[test]
    fn a_reload_cannot_open_a_network_facing_server() {
        let mut current = Settings::new("m.db");
        current.addr = "0.0.0.0:8000".parse().unwrap();
        current.api_key = Some(Secret::new("k"));
        // The file moved to loopback and dropped the key; the socket stays where it is.
        let fresh = Settings::new("m.db");
        let err = reload(&current, fresh).unwrap_err();
        assert!(
            err.message.contains("refusing to listen on 0.0.0.0:8000"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_reload_re_reads_the_file() {
        let (_dir, path) = write_file("[server]\nlease = \"60s\"\n");
        let sources = Sources {
            file: Some(path.clone()),
            env: env_of(&[]),
            flags: Overrides::default(),
        };
        let current = Settings::load(&sources).unwrap();
        std::fs::write(&path, "[server]\nlease = \"5m\"\naddr = \"127.0.0.1:9\"\n").unwrap();
        let reloaded = current.reload_from(&sources).unwrap();
        assert_eq!(reloaded.settings.lease, Duration::from_secs(300));
        assert_eq!(reloaded.settings.addr, current.addr);
        assert_eq!(reloaded.changed, ["LEASE"]);
        std::fs::write(&path, "[server]\nlease = \"later\"\n").unwrap();
        let err = current.reload_from(&sources).unwrap_err();
        assert!(
            err.message.contains("muster.toml:2: server.lease"),
            "{}",
            err.message
        );
    }

    #[test]
    fn warnings_point_at_an_agent_using_the_admin_key() {
        assert!(from(&[]).unwrap().warnings().is_empty());
        let warnings = from(&[("API_KEY", "k")]).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("AGENT_KEY=$(openssl rand -hex 32)"),
            "{warnings:?}"
        );
        assert!(
            from(&[("API_KEY", "k"), ("AGENT_KEY", "a")])
                .unwrap()
                .warnings()
                .is_empty()
        );
        let warnings = from(&[("RETRY_BACKOFF", "1h")]).unwrap().warnings();
        assert!(
            warnings[0].starts_with("RETRY_BACKOFF (1h) is longer"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let defaults = Settings::new("muster.db");
        for field in FIELDS {
            let Kind::Value { set, show, .. } = &field.kind else {
                continue;
            };
            if field.default == "none" {
                assert_eq!(show(&defaults), None, "{}", field.var);
                continue;
            }
            let mut parsed = Settings::new("elsewhere.db");
            set(&mut parsed, field.default).unwrap();
            assert_eq!(show(&parsed), show(&defaults), "{}", field.var);
        }
    }

    #[test]
    fn every_variable_has_a_snake_case_file_key_and_a_help_entry() {
        let help = help_text();
        for field in FIELDS {
            assert!(help.contains(field.var), "{}", field.var);
            if let (Some(key), Kind::Value { .. }) = (field.file_key, &field.kind) {
                assert_eq!(key, field.var.to_lowercase());
            }
        }
    }

    #[test]
    fn the_readme_carries_the_settings_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's Configuration table differs from config::markdown_table(); paste:\n{table}"
        );
    }

    /// The ```toml blocks of the README's section `title`.
    fn readme_toml_blocks(title: &str) -> Vec<String> {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let section = readme
            .split_once(&format!("\n## {title}\n"))
            .unwrap_or_else(|| panic!("a {title} section"))
            .1
            .split_once("\n## ")
            .unwrap()
            .0
            .to_owned();
        section
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split_once("\n```").unwrap().0.to_owned())
            .collect()
    }

    #[test]
    fn the_readmes_llm_example_loads_with_its_key() {
        let blocks = readme_toml_blocks("LLM providers and budgets");
        assert_eq!(blocks.len(), 1, "the server's example");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.toml");
        std::fs::write(&path, &blocks[0]).unwrap();
        check_file(&path).unwrap_or_else(|e| panic!("{e}\n{}", blocks[0]));
        let env = |name: &str| (name == "GROQ_API_KEY").then(|| "gsk-readme".to_owned());
        let file = ConfigFile::read(&path).unwrap();
        let llm = file.llm(Some(&env)).unwrap();
        assert_eq!(llm.providers.len(), 2);
        let budget = llm.budget("repair").expect("the repair budget");
        assert_eq!(budget.fallback.as_deref(), Some("local"));
        assert_eq!(budget.money_micros, Some(500_000));
    }

    #[test]
    fn the_readmes_gitops_server_example_loads() {
        let blocks = readme_toml_blocks("GitOps in five minutes");
        let server: Vec<&String> = blocks.iter().filter(|b| b.contains("[[git.")).collect();
        assert_eq!(server.len(), 1, "the server's example");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.toml");
        std::fs::write(&path, server[0]).unwrap();
        check_file(&path).unwrap_or_else(|e| panic!("{e}\n{}", server[0]));
    }

    #[test]
    fn the_readmes_schedules_load_and_a_bad_schedule_names_its_line() {
        let blocks = readme_toml_blocks("Schedules and canaries");
        let text = blocks
            .iter()
            .find(|b| b.contains("[[schedules]]"))
            .expect("the schedules' example");
        let file = ConfigFile::parse(Path::new("muster.toml"), text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = file.schedules.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["nightly-backup", "morning-summary"]);
        assert_eq!(file.schedules[0].cron.zone().name(), "Europe/Berlin");

        let bad = text.replace("kind = \"action\"", "kind = \"action\", priority = 99999");
        let err = ConfigFile::parse(Path::new("muster.toml"), &bad)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.starts_with("muster.toml:1: schedules[0] (\"nightly-backup\"): task.priority"),
            "{err}"
        );
        let bad = text.replace("0 3 * * *", "0 25 * * *");
        let err = ConfigFile::parse(Path::new("muster.toml"), &bad)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("cron \"0 25 * * *\" is invalid"), "{err}");
    }

    #[test]
    fn the_readmes_llm_session_example_loads() {
        let blocks = readme_toml_blocks("LLM tasks with MCP tools");
        let server: Vec<&String> = blocks
            .iter()
            .filter(|b| b.contains("[[llm.providers]]"))
            .collect();
        assert_eq!(server.len(), 1, "the server's example");
        let (_dir, path) = write_file(server[0]);
        check_file(&path).unwrap_or_else(|e| panic!("{e}\n{}", server[0]));
        let llm = ConfigFile::read(&path)
            .unwrap()
            .llm(Some(&|_| None))
            .unwrap();
        let local = llm.provider("local").expect("the Ollama provider");
        assert_eq!(local.provider.api, muster_llm::Api::Ollama);
        assert!(local.price.is_none(), "a local model costs nothing");
        assert_eq!(llm.budget("llm").unwrap().tokens, Some(2_000_000));
    }

    #[test]
    fn the_readmes_self_repair_example_loads_with_its_token() {
        let blocks = readme_toml_blocks("Self-repair");
        let server: Vec<&String> = blocks.iter().filter(|b| b.contains("[[alerts.")).collect();
        assert_eq!(server.len(), 1, "the server's example");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.toml");
        std::fs::write(&path, server[0]).unwrap();
        check_file(&path).unwrap_or_else(|e| panic!("{e}\n{}", server[0]));
        let env = |name: &str| (name == "KUMA_TOKEN").then(|| "kuma-readme".to_owned());
        let file = ConfigFile::read(&path).unwrap();
        let repair = file.repair(Some(&env)).unwrap();
        let target = repair.target("jellyfin").expect("the jellyfin target");
        assert_eq!(target.provider.as_deref(), Some("local"));
        assert!(
            target.action("reboot_host").unwrap().risky,
            "one risky action"
        );
        assert!(!target.action("restart_container").unwrap().risky);
        assert_eq!(repair.source("kuma").unwrap().token.expose(), "kuma-readme");
    }

    #[test]
    fn the_readmes_canary_example_loads() {
        let blocks = readme_toml_blocks("Schedules and canaries");
        let canaries: Vec<&String> = blocks
            .iter()
            .filter(|b| b.contains("[[canaries]]"))
            .collect();
        assert_eq!(canaries.len(), 1, "the canary example");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.toml");
        std::fs::write(&path, canaries[0]).unwrap();
        check_file(&path).unwrap_or_else(|e| panic!("{e}\n{}", canaries[0]));
        let file = ConfigFile::read(&path).unwrap();
        let loaded = file.canaries().unwrap();
        assert_eq!(loaded[0].name, "path");
        assert_eq!(loaded[0].channel.as_deref(), Some("canary-topic"));
    }

    #[test]
    fn the_readmes_notification_examples_load() {
        let blocks = readme_toml_blocks("Notifications");
        assert_eq!(blocks.len(), 2, "the ntfy and Telegram examples");
        for block in blocks {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("muster.toml");
            std::fs::write(&path, &block).unwrap();
            check_file(&path).unwrap_or_else(|e| panic!("{e}\n{block}"));
        }
    }

    #[test]
    fn the_readmes_chat_example_loads_with_its_token() {
        let blocks = readme_toml_blocks("Chat");
        assert_eq!(blocks.len(), 1, "the server's example");
        let (_dir, path) = write_file(&blocks[0]);
        check_file(&path).unwrap_or_else(|e| panic!("{e}\n{}", blocks[0]));
        let token = "123456789:AAHreadme_-token";
        let env = |name: &str| (name == "TELEGRAM_BOT_TOKEN").then(|| token.to_owned());
        let chat = ConfigFile::read(&path).unwrap().chat(Some(&env)).unwrap();
        let telegram = chat.telegram.expect("[chat.telegram]");
        assert_eq!(telegram.chats, [123456789, -1001234567890]);
        assert_eq!(telegram.token.expose(), token);
    }

    #[test]
    fn the_chat_table_is_checked_naming_file_line_and_field_and_reloads() {
        let text =
            "[server]\nlease = \"60s\"\n\n[chat.telegram]\ntoken_env = \"BOT\"\nchats = []\n";
        let err = file_error(text);
        assert!(
            err.starts_with("muster.toml:4: chat.telegram: chats is empty"),
            "{err}"
        );
        let err = file_error("[chat.telegram]\ntoken = \"123:abc\"\nchats = [1]\n");
        assert!(
            err.starts_with("muster.toml:2: chat.telegram.token: unknown field"),
            "{err}"
        );
        let token = "123456789:AAHreload_-token";
        let (_dir, path) = write_file("[chat.telegram]\ntoken_env = \"BOT\"\nchats = [1]\n");
        let sources = Sources {
            file: Some(path.clone()),
            env: env_of(&[("BOT", token)]),
            flags: Overrides::default(),
        };
        let current = Settings::load(&sources).unwrap();
        assert!(
            !format!("{current:?}").contains(token),
            "the token never prints"
        );
        std::fs::write(
            &path,
            "[chat.telegram]\ntoken_env = \"BOT\"\nchats = [1, 2]\n",
        )
        .unwrap();
        let reloaded = current.reload_from(&sources).unwrap();
        assert_eq!(reloaded.changed, ["chat"]);
        let telegram = reloaded.settings.chat.telegram.unwrap();
        assert_eq!(telegram.chats, [1, 2]);
        // Unset, the token's variable stops the load, named, its value never shown.
        let sources = Sources {
            env: env_of(&[]),
            ..sources
        };
        let err = Settings::load(&sources).unwrap_err().message;
        assert!(
            err.contains("chat.telegram: BOT (named by token_env) is unset"),
            "{err}"
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        check_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/muster.toml"
        )))
        .unwrap();
    }
}
