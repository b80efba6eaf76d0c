//! Settings: one typed tree read from the environment, with defaults an operator expects.
//! Only the binary reads the environment; tests build [`Settings`] directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret that never prints: `{:?}` and `{}` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Everything `muster serve` is configured by.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub db_path: PathBuf,
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
    /// Finished tasks and their logs are deleted after this.
    pub retention: Duration,
    /// Retries of a task that does not set `max_retries`.
    pub default_max_retries: u32,
    /// First retry delay; each further retry doubles it, up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// How often the health loop looks for lapsed heartbeats, leases and timeouts.
    pub sweep_interval: Duration,
    /// How long in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// A web UI session unused this long ends.
    pub session_idle: Duration,
}

impl Settings {
    /// Defaults for a server on `db_path`, bound to loopback with no keys.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Settings {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            db_path: db_path.into(),
            api_key: None,
            agent_key: None,
            log_format: LogFormat::Pretty,
            heartbeat_timeout: Duration::from_secs(90),
            assign_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            default_max_retries: 3,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(600),
            body_limit: 1024 * 1024,
            sweep_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            session_idle: Duration::from_secs(12 * 3600),
        }
    }

    /// Reads the environment over the defaults. A bad value names its variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Settings::from_env`], with the variables coming from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut s = Settings::new(get("DB_PATH").unwrap_or_else(|| "muster.db".into()));
        if let Some(v) = get("ADDR") {
            s.addr = v.parse().map_err(|e| ConfigError::var("ADDR", &v, e))?;
        }
        if let Some(url) = get("DATABASE_URL") {
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                return Err(ConfigError {
                    message: "DATABASE_URL selects PostgreSQL, which this build does not \
                              support yet; unset DATABASE_URL to use SQLite (DB_PATH)"
                        .into(),
                });
            }
            return Err(ConfigError::var(
                "DATABASE_URL",
                &url,
                "expected a postgres:// URL",
            ));
        }
        s.api_key = get("API_KEY").map(Secret::new);
        s.agent_key = get("AGENT_KEY")
            .map(Secret::new)
            .or_else(|| s.api_key.clone());
        if let Some(v) = get("LOG_FORMAT") {
            s.log_format = match v.as_str() {
                "json" => LogFormat::Json,
                "pretty" => LogFormat::Pretty,
                _ => {
                    return Err(ConfigError::var(
                        "LOG_FORMAT",
                        &v,
                        "expected json or pretty",
                    ));
                }
            };
        }
        let duration = |name: &str, into: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = get(name) {
                let d = humantime::parse_duration(v.trim())
                    .map_err(|e| ConfigError::var(name, &v, e))?;
                if d.is_zero() {
                    return Err(ConfigError::var(name, &v, "must be more than zero"));
                }
                *into = d;
            }
            Ok(())
        };
        duration("HEARTBEAT_TIMEOUT", &mut s.heartbeat_timeout)?;
        duration("ASSIGN_TIMEOUT", &mut s.assign_timeout)?;
        duration("LEASE", &mut s.lease)?;
        duration("RETENTION", &mut s.retention)?;
        duration("RETRY_BACKOFF", &mut s.retry_backoff)?;
        duration("RETRY_BACKOFF_MAX", &mut s.retry_backoff_max)?;
        duration("SWEEP_INTERVAL", &mut s.sweep_interval)?;
        duration("SHUTDOWN_GRACE", &mut s.shutdown_grace)?;
        duration("SESSION_IDLE", &mut s.session_idle)?;
        if let Some(v) = get("MAX_RETRIES") {
            s.default_max_retries = v
                .parse()
                .map_err(|e| ConfigError::var("MAX_RETRIES", &v, e))?;
        }
        if let Some(v) = get("BODY_LIMIT") {
            s.body_limit = v
                .parse()
                .map_err(|e| ConfigError::var("BODY_LIMIT", &v, e))?;
        }
        s.check_exposure()?;
        Ok(s)
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

/// A setting that stops the start; the message names the variable and what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub message: String,
}

impl ConfigError {
    fn var(name: &str, value: &str, why: impl std::fmt::Display) -> Self {
        ConfigError {
            message: format!("{name}={value:?} is invalid: {why}"),
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
    }
}
