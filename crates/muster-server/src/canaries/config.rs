//! `[[canaries]]` entries as written and checked: a name, a cron expression in a time zone
//! (fired through [`crate::schedules`], missed firings skipped), the task each run submits
//! (kind `canary` unless set), how long the whole path may take (`within`), the notification
//! channel a passing run must reach, and the base URL its hook request goes to (a reverse
//! proxy in front of muster; the server's own address when unset).

use std::collections::BTreeMap;
use std::time::Duration;

use muster_api::SubmitTask;
use muster_api::limits::MAX_KIND_CHARS;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::bounds::{self, entry_name, http_url};
use crate::gitops::rules::TaskTemplate;
use crate::schedules::CronSchedule;

/// The kind of a canary's task unless its entry names another: `muster agent`'s built-in
/// executor answers it.
pub const DEFAULT_KIND: &str = "canary";

/// How long a run may take, end to end, unless its entry says.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(60);

/// One `[[canaries]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    pub name: String,
    /// Five fields, or six with seconds first.
    pub cron: String,
    /// An IANA zone the expression's times are in; UTC when unset.
    pub timezone: Option<String>,
    #[serde(default)]
    pub task: CanaryTaskSpec,
    /// Every leg must be done this long after the firing (default 1m).
    pub within: Option<String>,
    /// A `[[notify.channels]]` entry a passing run's `canary.passed` message must reach.
    pub channel: Option<String>,
    /// The base URL the hook request goes to, e.g. the PUBLIC_URL a reverse proxy serves;
    /// `/hooks/canary/<name>` is appended.
    pub url: Option<String>,
}

/// The task a canary's run submits, as written: a task template whose kind defaults to
/// `canary`, without retries or timeout (the canary's `within` bounds it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryTaskSpec {
    pub kind: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub payload: Map<String, Value>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A canary, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    pub name: String,
    pub cron: CronSchedule,
    pub task: TaskTemplate,
    pub within: Duration,
    pub channel: Option<String>,
    /// The base URL its hook request goes to, without a trailing `/`; none: the server's own
    /// listening address.
    pub url: Option<String>,
}

impl Canary {
    /// Checks one entry against the configured notification channels; the error names the
    /// field.
    pub fn resolve(spec: CanarySpec, channels: &[&str]) -> Result<Canary, String> {
        entry_name(&spec.name)?;
        let cron = CronSchedule::parse(&spec.cron, spec.timezone.as_deref())?;
        let within =
            crate::notify::channels::duration("within", spec.within.as_deref(), DEFAULT_WITHIN)?;
        if within < Duration::from_secs(1) {
            return Err(format!(
                "within {:?} is too short: a run needs at least 1s for its hook, task and \
                 message",
                humantime::format_duration(within).to_string()
            ));
        }
        if let Some(channel) = &spec.channel
            && !channels.contains(&channel.as_str())
        {
            return Err(format!(
                "channel: no channel is named {channel:?}; the [[notify.channels]] are {}",
                if channels.is_empty() {
                    "none".to_owned()
                } else {
                    channels.join(", ")
                }
            ));
        }
        let url = match &spec.url {
            None => None,
            Some(text) => {
                let url = http_url("url", text)?;
                if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                    return Err(format!(
                        "url {text:?} must name scheme, host, port and path only (no query, \
                         fragment or credentials): /hooks/canary/{} is appended",
                        spec.name
                    ));
                }
                Some(url.as_str().trim_end_matches('/').to_owned())
            }
        };
        let task = spec.task;
        let kind = task.kind.unwrap_or_else(|| DEFAULT_KIND.to_owned());
        // Checked as a submission would be (with the label each run adds), so a bad kind or
        // capability stops the start instead of failing every run.
        let mut labels = task.labels.clone();
        labels.insert("canary".into(), spec.name.clone());
        bounds::required_text("kind", &kind, MAX_KIND_CHARS)
            .and_then(|()| bounds::capabilities(&task.capabilities))
            .and_then(|()| bounds::labels(&labels))
            .map_err(|e| format!("task.{}", e.message))?;
        if !(i32::from(i16::MIN)..=i32::from(i16::MAX)).contains(&task.priority) {
            return Err("task.priority: must be between -32768 and 32767".into());
        }
        let timeout_s = u32::try_from(within.as_secs().max(1)).unwrap_or(u32::MAX);
        Ok(Canary {
            name: spec.name,
            cron,
            task: TaskTemplate {
                kind,
                capabilities: task.capabilities,
                payload: task.payload,
                priority: task.priority,
                // A canary's task that fails has answered: the run fails, and the next
                // firing tries again. A retry would only hide the failure.
                max_retries: Some(0),
                timeout_s: Some(timeout_s),
                labels: task.labels,
            },
            within,
            channel: spec.channel,
            url,
        })
    }

    /// The task a run submits: the template's payload told which run it is (`canary`, `run`,
    /// and the `nonce` the answer must echo), labelled with the canary, and keyed by the run
    /// so that a repeated hook request can never submit it twice.
    pub fn task_for(&self, run: Uuid, nonce: &str) -> SubmitTask {
        let mut payload = self.task.payload.clone();
        payload.insert("canary".into(), Value::String(self.name.clone()));
        payload.insert("run".into(), Value::String(run.to_string()));
        payload.insert("nonce".into(), Value::String(nonce.to_owned()));
        let mut task = self
            .task
            .submit(payload, None, Some(format!("canary:{run}")));
        task.labels.insert("canary".into(), self.name.clone());
        task
    }

    /// The URL its runs send the hook request to: its `url`, else `own` (the server's own
    /// base URL).
    pub fn hook_url(&self, own: &str) -> String {
        format!(
            "{}/hooks/canary/{}",
            self.url.as_deref().unwrap_or(own),
            self.name
        )
    }

    pub fn within_ms(&self) -> i64 {
        i64::try_from(self.within.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Checks every entry; names must be unique and channels configured. An error names the entry,
/// for the caller to prefix with file and line.
pub fn resolve_all(
    specs: &[(usize, CanarySpec)],
    channels: &[&str],
) -> Result<Vec<Canary>, (usize, String)> {
    let mut out: Vec<Canary> = Vec::new();
    for (index, (line, spec)) in specs.iter().enumerate() {
        let at = |why: String| (*line, format!("canaries[{index}] ({:?}): {why}", spec.name));
        if out.iter().any(|c| c.name == spec.name) {
            return Err(at(
                "another canary has this name; names must be unique".into()
            ));
        }
        out.push(Canary::resolve(spec.clone(), channels).map_err(at)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        canaries: Vec<CanarySpec>,
    }

    const PATH: &str = r#"
[[canaries]]
name = "path"
cron = "*/5 * * * *"
timezone = "Europe/Berlin"
task = { capabilities = ["nas"] }
within = "30s"
channel = "phone"
url = "https://muster.example.com/"
"#;

    fn resolve(text: &str) -> Result<Vec<Canary>, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let specs: Vec<_> = file.canaries.into_iter().map(|s| (3, s)).collect();
        resolve_all(&specs, &["phone"]).map_err(|(line, why)| format!("{line}: {why}"))
    }

    #[test]
    fn an_entry_loads_with_its_defaults_and_its_task_is_keyed_by_the_run() {
        let all = resolve(PATH).unwrap();
        let c = &all[0];
        assert_eq!(c.within, Duration::from_secs(30));
        assert_eq!(c.channel.as_deref(), Some("phone"));
        assert_eq!(
            c.hook_url("http://127.0.0.1:8000"),
            "https://muster.example.com/hooks/canary/path"
        );
        let run = Uuid::now_v7();
        let task = c.task_for(run, "n0nce");
        assert_eq!(task.kind, DEFAULT_KIND);
        assert_eq!(task.capabilities, ["nas"]);
        assert_eq!(task.max_retries, Some(0));
        assert_eq!(task.timeout_s, Some(30));
        assert_eq!(
            task.idempotency_key.as_deref(),
            Some(format!("canary:{run}").as_str())
        );
        assert_eq!(task.payload["nonce"], "n0nce");
        assert_eq!(task.payload["canary"], "path");
        assert_eq!(task.labels["canary"], "path");

        let bare = resolve("[[canaries]]\nname = \"bare\"\ncron = \"* * * * *\"\n").unwrap();
        assert_eq!(bare[0].within, DEFAULT_WITHIN);
        assert_eq!(bare[0].channel, None);
        assert_eq!(
            bare[0].hook_url("http://127.0.0.1:8000"),
            "http://127.0.0.1:8000/hooks/canary/bare"
        );
    }

    #[test]
    fn mistakes_name_the_entry_and_the_field() {
        for (from, to, expect) in [
            (
                "*/5 * * * *",
                "*/5 * * *",
                "canaries[0] (\"path\"): cron \"*/5 * * *\" has 4 fields",
            ),
            (
                "Europe/Berlin",
                "Berlin",
                "timezone \"Berlin\" is not an IANA time zone",
            ),
            ("\"30s\"", "\"soon\"", "within \"soon\" is invalid"),
            ("\"30s\"", "\"500ms\"", "within \"500ms\" is too short"),
            (
                "\"phone\"",
                "\"pager\"",
                "channel: no channel is named \"pager\"; the [[notify.channels]] are phone",
            ),
            (
                "https://muster.example.com/",
                "ftp://muster.example.com/",
                "url \"ftp://muster.example.com/\" is not an http or https URL",
            ),
            (
                "https://muster.example.com/",
                "https://muster.example.com/?x=1",
                "must name scheme, host, port and path only",
            ),
            (
                "name = \"path\"",
                "name = \"a path\"",
                "name \"a path\" is invalid",
            ),
            (
                "capabilities = [\"nas\"]",
                "capabilities = [\"\"]",
                "task.capabilities[0]",
            ),
            (
                "{ capabilities",
                "{ kind = \" \", capabilities",
                "task.kind",
            ),
        ] {
            let err = resolve(&PATH.replace(from, to)).unwrap_err();
            assert!(err.contains(expect), "{to}: {err}");
            assert!(err.starts_with("3: canaries[0]"), "{err}");
        }
        let twice = format!("{PATH}{PATH}");
        assert!(
            resolve(&twice)
                .unwrap_err()
                .contains("canaries[1] (\"path\"): another canary has this name")
        );
        assert!(
            resolve(&PATH.replace("within", "witin"))
                .unwrap_err()
                .contains("unknown field `witin`")
        );
        assert!(
            resolve(&PATH.replace("task = {", "task = { max_retries = 3,"))
                .unwrap_err()
                .contains("unknown field `max_retries`")
        );
    }
}
