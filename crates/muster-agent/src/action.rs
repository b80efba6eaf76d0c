//! The `action` executor: a task names an allow-listed action and its parameters; the
//! parameters are checked against the action's patterns and rendered into its argv, which runs
//! locally or over SSH. Anything that fails a check fails the task, naming what was wrong, and
//! nothing runs.
//!
//! Payload: `{"action": "restart_container", "params": {"container": "jellyfin"}, "host": "nas"}`
//! (`host` optional: a `[[hosts]]` name; the action's own `host` is the default).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use muster_client::{Handler, HandlerError, TaskContext};
use serde_json::Value;

use crate::config::{Checked, HostConfig};
use crate::process::Launcher;

pub struct ActionHandler {
    config: Arc<Checked>,
    launcher: Launcher,
}

impl ActionHandler {
    pub fn new(config: Arc<Checked>, launcher: Launcher) -> Self {
        ActionHandler { config, launcher }
    }

    /// How this handler starts programs.
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// Checks the task against the allow-list and returns the argv to run and its time limit.
    pub fn plan(
        &self,
        payload: &Value,
        task_timeout_s: Option<u32>,
    ) -> Result<(Vec<String>, Option<Duration>), String> {
        let name = payload
            .get("action")
            .and_then(Value::as_str)
            .ok_or("payload.action: missing; name one of this agent's actions")?;
        let Some((action, template)) = self.config.actions.get(name) else {
            let known: Vec<&str> = self.config.actions.keys().map(String::as_str).collect();
            return Err(format!(
                "payload.action: {name:?} is not allowed here (allowed: {})",
                known.join(", ")
            ));
        };
        let empty = serde_json::Map::new();
        let params = match payload.get("params") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(map)) => map,
            Some(_) => return Err("payload.params: must be an object".into()),
        };
        let argv = template
            .render(params)
            .map_err(|e| format!("payload.params: {e}"))?;
        let host = match payload.get("host") {
            None | Some(Value::Null) => action.host.as_deref(),
            Some(Value::String(h)) => Some(h.as_str()),
            Some(_) => return Err("payload.host: must be a string".into()),
        };
        let argv = match host {
            None => argv,
            Some(name) => {
                let host =
                    self.config.hosts.get(name).ok_or_else(|| {
                        format!("payload.host: {name:?} is not a configured host")
                    })?;
                ssh_argv(host, &argv)?
            }
        };
        let limits = [task_timeout_s.map(u64::from), action.timeout_s];
        let timeout = limits.into_iter().flatten().min().map(Duration::from_secs);
        Ok((argv, timeout))
    }
}

/// The OpenSSH command that runs `argv` on `host`. The remote side always goes through a
/// shell, so every argument is quoted for it: a parameter stays one word, never a command.
///
/// `-tt` forces a terminal on the remote side even though ours has none. Without one, killing
/// the local `ssh` on a cancel or a timeout sends the remote command nothing: sshd only closes
/// its pipes, and a command that does not write keeps running. With one, sshd closes the
/// terminal when the connection ends (however the client died), and the kernel sends SIGHUP
/// to the remote command's process group. OpenSSH's client cannot send a signal itself, and a
/// wrapper script on the remote side is what this executor avoids. What the terminal costs:
/// stdout and stderr arrive merged, as our stdout; lines end in CR LF (the log drops the CR);
/// and the remote program sees a terminal, so it may colour its output or start a pager (we
/// send no `TERM` unless the agent has one). `LogLevel=ERROR` keeps the client's own
/// "Connection closed" notice out of the log.
pub fn ssh_argv(host: &HostConfig, argv: &[String]) -> Result<Vec<String>, String> {
    let remote = shlex::try_join(argv.iter().map(String::as_str))
        .map_err(|e| format!("cannot quote the command for the remote shell: {e}"))?;
    let mut cmd: Vec<String> = [
        "ssh",
        "-tt",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=10",
    ]
    .map(String::from)
    .into();
    if let Some(port) = host.port {
        cmd.extend(["-p".into(), port.to_string()]);
    }
    if let Some(identity) = &host.identity_file {
        cmd.extend(["-i".into(), expand_home(identity)]);
    }
    for option in &host.options {
        cmd.extend(["-o".into(), option.clone()]);
    }
    cmd.extend(["--".into(), host.ssh.clone(), remote]);
    Ok(cmd)
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_owned(),
    }
}

#[async_trait]
impl Handler for ActionHandler {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let task = ctx.task();
        let (argv, timeout) = self
            .plan(&task.payload, task.timeout_s)
            .map_err(HandlerError::Permanent)?;
        let mut result = crate::process::run(ctx, &self.launcher, &argv, timeout).await?;
        result["action"] = task.payload["action"].clone();
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use serde_json::json;

    fn handler() -> ActionHandler {
        let config = AgentConfig::parse(
            r#"
            [agent]
            id = "a"
            [[actions]]
            name = "echo"
            argv = ["echo", "{word}"]
            params = { word = "[a-z]+" }
            timeout_s = 60
            [[hosts]]
            name = "box"
            ssh = "root@127.0.0.1"
            port = 2222
            options = ["UserKnownHostsFile=/tmp/kh"]
            "#,
        )
        .unwrap();
        ActionHandler::new(Arc::new(config), Launcher::Direct)
    }

    #[test]
    fn a_valid_task_becomes_argv_without_a_shell() {
        let (argv, timeout) = handler()
            .plan(
                &json!({"action": "echo", "params": {"word": "hi"}}),
                Some(30),
            )
            .unwrap();
        assert_eq!(argv, ["echo", "hi"]);
        assert_eq!(timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn over_ssh_every_argument_is_quoted_for_the_remote_shell() {
        let (argv, _) = handler()
            .plan(
                &json!({"action": "echo", "params": {"word": "hi"}, "host": "box"}),
                None,
            )
            .unwrap();
        assert_eq!(argv.last().unwrap(), "echo hi");
        assert_eq!(
            argv[1], "-tt",
            "the remote command must get a hangup when ssh dies"
        );
        assert!(argv.windows(2).any(|w| w == ["-p", "2222"]));
        assert!(
            argv.windows(2)
                .any(|w| w == ["-o", "StrictHostKeyChecking=yes"])
        );
        let host = &handler().config.hosts["box"];
        let quoted = ssh_argv(host, &["echo".into(), "a; touch /tmp/x".into()]).unwrap();
        assert_eq!(quoted.last().unwrap(), "echo 'a; touch /tmp/x'");
    }

    #[test]
    fn anything_off_the_allow_list_is_refused_by_name() {
        let h = handler();
        let err = h.plan(&json!({"action": "rm"}), None).unwrap_err();
        assert!(err.contains("\"rm\" is not allowed"), "{err}");
        let err = h
            .plan(
                &json!({"action": "echo", "params": {"word": "x; touch /tmp/pwned"}}),
                None,
            )
            .unwrap_err();
        assert!(err.contains("word"), "{err}");
        let err = h
            .plan(
                &json!({"action": "echo", "params": {"word": "hi"}, "host": "other"}),
                None,
            )
            .unwrap_err();
        assert!(err.contains("other"), "{err}");
    }

    fn dashes(allow: &str) -> ActionHandler {
        let config = AgentConfig::parse(&format!(
            r#"
            [agent]
            id = "a"
            [[actions]]
            name = "logs"
            argv = ["docker", "logs", "--since={{since}}", "{{container}}"]
            params = {{ container = "^[a-z0-9-]+$", since = "^[0-9a-z-]+$" }}
            {allow}
            "#
        ))
        .unwrap();
        ActionHandler::new(Arc::new(config), Launcher::Direct)
    }

    #[test]
    fn a_value_may_not_start_an_argument_with_a_dash_unless_the_action_allows_it() {
        let task = |container: &str, since: &str| json!({"action": "logs", "params": {"container": container, "since": since}});
        for bad in ["--help", "-rf", "--follow"] {
            let err = dashes("").plan(&task(bad, "5m"), None).unwrap_err();
            assert!(
                err.contains("\"container\"") && err.contains("allow_leading_dash"),
                "{bad}: {err}"
            );
        }
        // Inside an argument a dash is only text: `--since=-5m` is one option's value.
        let (argv, _) = dashes("").plan(&task("web-1", "-5m"), None).unwrap();
        assert_eq!(argv, ["docker", "logs", "--since=-5m", "web-1"]);
        let (argv, _) = dashes("allow_leading_dash = true")
            .plan(&task("-x", "5m"), None)
            .unwrap();
        assert_eq!(argv.last().unwrap(), "-x");
    }
}
