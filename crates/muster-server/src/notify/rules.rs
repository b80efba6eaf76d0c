//! `[[notify.rules]]`: which events reach which channels, filtered by task kind or label, with
//! what words (minijinja templates over the notice), and how long a group of notices stays
//! quiet after a message (see [`crate::notice::Notice::group`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cut;
use crate::notice::{self, EVENTS, Notice};

/// The quiet period of a rule that does not set one.
pub const DEFAULT_QUIET: Duration = Duration::from_secs(300);

/// Longest title and message a template may produce; longer output is cut with `…`, so a task
/// error of a megabyte cannot become a megabyte message.
const MAX_TITLE: usize = 200;
const MAX_MESSAGE: usize = 2000;

/// One `[[notify.rules]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Event names (`task.failed`), or a family (`agent.*`), or `*`.
    pub on: Vec<String>,
    /// Channel names.
    pub to: Vec<String>,
    /// Only tasks of these kinds (task events only).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only tasks carrying all these labels (task events only).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// After a message, further notices of the same group within this long fold into one
    /// digest with a count ("0s" sends every one).
    pub quiet: Option<String>,
    /// Templates replacing the event's default title and message.
    pub title: Option<String>,
    pub message: Option<String>,
}

/// A rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub on: Vec<String>,
    pub to: Vec<String>,
    pub kinds: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub quiet: Duration,
    pub title: Option<String>,
    pub message: Option<String>,
}

/// A notice in words, for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub title: String,
    pub message: String,
    pub link: Option<String>,
}

impl Rule {
    /// Checks `spec` against the events this build emits and the channels configured. The
    /// error is one sentence naming the field.
    pub fn resolve(spec: RuleSpec, channels: &[&str]) -> Result<Rule, String> {
        if spec.on.is_empty() {
            return Err(format!(
                "on is empty; name the events this rule sends, e.g. on = [\"{}\"]",
                notice::TASK_FAILED
            ));
        }
        for pattern in &spec.on {
            if !EVENTS
                .iter()
                .any(|(event, _)| pattern_matches(pattern, event))
            {
                let known: Vec<&str> = EVENTS.iter().map(|(e, _)| *e).collect();
                return Err(format!(
                    "on: {pattern:?} names no event; the events are {} (or a family such as \
                     \"agent.*\", or \"*\")",
                    known.join(", ")
                ));
            }
        }
        if spec.to.is_empty() {
            return Err("to is empty; name the channels this rule sends to".to_owned());
        }
        for name in &spec.to {
            if !channels.contains(&name.as_str()) {
                return Err(format!(
                    "to: no channel is named {name:?}; the [[notify.channels]] are {}",
                    if channels.is_empty() {
                        "none".to_owned()
                    } else {
                        channels.join(", ")
                    }
                ));
            }
        }
        let task_only = !spec.kinds.is_empty() || !spec.labels.is_empty();
        if task_only && !spec.on.iter().all(|p| p.starts_with("task.")) {
            return Err(
                "kinds and labels filter tasks, so every event in on must be a task event \
                 (task.…); put agent events in a rule of their own"
                    .to_owned(),
            );
        }
        let quiet = match &spec.quiet {
            None => DEFAULT_QUIET,
            Some(text) => humantime::parse_duration(text.trim()).map_err(|_| {
                format!("quiet = {text:?} is invalid: expected a duration such as 0s, 5m or 1h")
            })?,
        };
        for (field, template) in [("title", &spec.title), ("message", &spec.message)] {
            if let Some(source) = template {
                check_template(source).map_err(|why| format!("{field}: {why}"))?;
            }
        }
        Ok(Rule {
            on: spec.on,
            to: spec.to,
            kinds: spec.kinds,
            labels: spec.labels,
            quiet,
            title: spec.title,
            message: spec.message,
        })
    }

    /// Whether `notice` passes this rule's event names and task filters.
    pub fn matches(&self, notice: &Notice) -> bool {
        self.on.iter().any(|p| pattern_matches(p, &notice.event))
            && (self.kinds.is_empty()
                || notice
                    .task_kind()
                    .is_some_and(|kind| self.kinds.iter().any(|k| k == kind)))
            && self
                .labels
                .iter()
                .all(|(name, value)| notice.task_label(name) == Some(value.as_str()))
    }

    /// The notice in this rule's words (or the event's default words).
    pub fn render(&self, notice: &Notice, public_url: Option<&str>) -> Rendered {
        let link = match (public_url, &notice.path) {
            (Some(base), Some(path)) => Some(format!("{base}{path}")),
            _ => None,
        };
        let context = context(notice, link.as_deref());
        let (default_title, default_message) = defaults(&notice.event);
        let title = self.title.as_deref().unwrap_or(default_title);
        let message = self.message.as_deref().unwrap_or(default_message);
        // A template that fails on this notice (a filter given the wrong type) still sends
        // the default words rather than nothing; the failure shows in the message.
        let render = |source: &str, fallback: &str| match render_str(source, &context) {
            Ok(text) => text,
            Err(err) => {
                let words = render_str(fallback, &context).unwrap_or_else(|_| notice.event.clone());
                format!("{words} (template error: {err})")
            }
        };
        Rendered {
            title: cut(render(title, default_title).trim(), MAX_TITLE),
            message: cut(render(message, default_message).trim(), MAX_MESSAGE),
            link,
        }
    }
}

/// `task.failed` matches `task.failed`, `task.*` and `*`.
fn pattern_matches(pattern: &str, event: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => (prefix.is_empty() || prefix.ends_with('.')) && event.starts_with(prefix),
        None => pattern == event,
    }
}

/// The default title and message of each event.
fn defaults(event: &str) -> (&'static str, &'static str) {
    match event {
        notice::TASK_FAILED => (
            "Task {{ task.kind }} failed",
            "Task {{ task.id }} ({{ task.kind }}) failed on attempt {{ task.attempt }}\
             {% if task.agent %} on agent {{ task.agent }}{% endif %}: {{ task.error }}",
        ),
        notice::AGENT_OFFLINE => (
            "Agent {{ agent.id }} is offline",
            "No heartbeat from agent {{ agent.id }} ({{ agent.hostname }}); its tasks went back \
             to the queue.",
        ),
        notice::AGENT_ONLINE => (
            "Agent {{ agent.id }} is online",
            "{% if agent.first %}New agent {{ agent.id }} ({{ agent.hostname }}) registered.\
             {% else %}Agent {{ agent.id }} ({{ agent.hostname }}) is back.{% endif %}",
        ),
        notice::DEPLOYMENT_FAILED => (
            "Deployment of {{ deployment.repo }} failed",
            "Deployment of {{ deployment.repo }}@{{ deployment.short_sha }} \
             ({{ deployment.branch }}, by {{ deployment.author }}: {{ deployment.message }}) \
             failed:{% for f in deployment.failed %}{% if not loop.first %},{% endif %} \
             {{ f.rule }} ({{ f.error }}){% endfor %}",
        ),
        notice::BUDGET_EXCEEDED => (
            "LLM budget of {{ budget.workflow }} spent",
            "{{ budget.workflow }} spent {{ budget.limit }}: {{ budget.tokens }} tokens, \
             {{ budget.money }} in money so far; its calls are {{ budget.then }}.",
        ),
        notice::BUDGET_SPIKE => (
            "LLM spend spike in {{ budget.workflow }}",
            "{{ budget.workflow }} spent {{ budget.today }} today, over {{ budget.factor }} times \
             the median day of the week before ({{ budget.median }}).",
        ),
        notice::INCIDENT_OPENED => (
            "{{ incident.monitor }} is down",
            "{{ incident.monitor }} is down ({{ incident.message }}).\
             {% if incident.target %} Self-repair target {{ incident.target }} is deciding.\
             {% else %} No repair target matches it.{% endif %}",
        ),
        notice::INCIDENT_APPROVAL => (
            "Approve a repair of {{ incident.monitor }}?",
            "{{ incident.monitor }} is down. The repair chose {{ incident.choice.action }}\
             {% for k, v in incident.choice.params|items %} {{ k }}={{ v }}{% endfor %}, which is \
             risky: approve or deny it{% if link %} at {{ link }}{% else %} on the incident's \
             page{% endif %}.",
        ),
        notice::INCIDENT_RESOLVED => (
            "{{ incident.monitor }} is back",
            "{{ incident.monitor }} is back: {{ incident.reason }}",
        ),
        notice::INCIDENT_ESCALATED => (
            "{{ incident.monitor }} needs you",
            "{{ incident.monitor }} is down and self-repair stopped: {{ incident.reason }}",
        ),
        notice::CANARY_FAILED => (
            "Canary {{ canary.name }} failed",
            "Canary {{ canary.name }} failed at its {{ canary.leg }} leg: {{ canary.reason }}",
        ),
        notice::CANARY_RECOVERED => (
            "Canary {{ canary.name }} passes again",
            "Canary {{ canary.name }} got through again in {{ canary.latency_ms }} ms",
        ),
        _ => ("{{ event }}", "{{ event }} at {{ at }}"),
    }
}

/// What a template sees: `event`, `at` (RFC 3339), `link` and the notice's own data (`task`
/// or `agent`).
fn context(notice: &Notice, link: Option<&str>) -> Value {
    let at = Utc
        .timestamp_millis_opt(notice.at)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut context = json!({ "event": notice.event, "at": at, "link": link });
    if let (Value::Object(out), Value::Object(data)) = (&mut context, &notice.data) {
        for (key, value) in data {
            out.insert(key.clone(), value.clone());
        }
    }
    context
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // Plain text out: each channel escapes for its own markup.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

fn render_str(source: &str, context: &Value) -> Result<String, minijinja::Error> {
    environment().render_str(source, minijinja::value::Serde(context))
}

/// Compiles `source` and renders it once over sample notices, so a syntax error or an unknown
/// filter stops the start, not the first notification.
fn check_template(source: &str) -> Result<(), String> {
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|e| format!("the template does not parse: {e}"))?;
    let labels = BTreeMap::new();
    let sample = Notice::task_failed(
        notice::FailedTask {
            id: uuid::Uuid::nil(),
            kind: "kind",
            labels: &labels,
            attempt: 1,
            error: "error",
            agent_id: Some("agent"),
        },
        0,
    );
    template
        .render(minijinja::value::Serde(context(
            &sample,
            Some("https://muster.example/ui"),
        )))
        .map(drop)
        .map_err(|e| format!("the template does not render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::FailedTask;

    fn spec(on: &[&str], to: &[&str]) -> RuleSpec {
        RuleSpec {
            on: on.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            kinds: vec![],
            labels: BTreeMap::new(),
            quiet: None,
            title: None,
            message: None,
        }
    }

    fn failed(kind: &str, labels: &[(&str, &str)], error: &str) -> Notice {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Notice::task_failed(
            FailedTask {
                id: uuid::Uuid::nil(),
                kind,
                labels: &labels,
                attempt: 2,
                error,
                agent_id: Some("nas"),
            },
            1_700_000_000_000,
        )
    }

    #[test]
    fn rules_name_known_events_and_configured_channels() {
        let ok = Rule::resolve(spec(&["task.failed", "agent.*"], &["phone"]), &["phone"]);
        assert_eq!(ok.unwrap().quiet, DEFAULT_QUIET);
        let err = Rule::resolve(spec(&["task.failde"], &["phone"]), &["phone"]).unwrap_err();
        assert!(err.contains("\"task.failde\" names no event") && err.contains("agent.offline"));
        let err = Rule::resolve(spec(&["task.failed"], &["pager"]), &["phone"]).unwrap_err();
        assert!(err.contains("no channel is named \"pager\"") && err.contains("phone"));
        assert!(Rule::resolve(spec(&[], &["phone"]), &["phone"]).is_err());
        assert!(Rule::resolve(spec(&["task.failed"], &[]), &["phone"]).is_err());
        assert!(Rule::resolve(spec(&["tas*"], &["phone"]), &["phone"]).is_err());

        let mut filtered = spec(&["agent.offline"], &["phone"]);
        filtered.kinds = vec!["backup".into()];
        let err = Rule::resolve(filtered, &["phone"]).unwrap_err();
        assert!(err.contains("task event"), "{err}");

        let mut bad = spec(&["task.failed"], &["phone"]);
        bad.quiet = Some("soon".into());
        assert!(
            Rule::resolve(bad, &["phone"])
                .unwrap_err()
                .contains("quiet")
        );
        let mut bad = spec(&["task.failed"], &["phone"]);
        bad.title = Some("{{ task.kind ".into());
        let err = Rule::resolve(bad, &["phone"]).unwrap_err();
        assert!(
            err.starts_with("title: the template does not parse"),
            "{err}"
        );
        let mut bad = spec(&["task.failed"], &["phone"]);
        bad.message = Some("{{ task.kind | no_such_filter }}".into());
        assert!(
            Rule::resolve(bad, &["phone"])
                .unwrap_err()
                .starts_with("message:")
        );
    }

    #[test]
    fn rules_filter_tasks_by_kind_and_labels() {
        let mut s = spec(&["task.failed"], &["phone"]);
        s.kinds = vec!["backup".into()];
        s.labels = BTreeMap::from([("env".into(), "prod".into())]);
        let rule = Rule::resolve(s, &["phone"]).unwrap();
        assert!(rule.matches(&failed("backup", &[("env", "prod"), ("x", "y")], "e")));
        assert!(!rule.matches(&failed("backup", &[("env", "dev")], "e")));
        assert!(!rule.matches(&failed("backup", &[], "e")));
        assert!(!rule.matches(&failed("deploy", &[("env", "prod")], "e")));
        let agents = Rule::resolve(spec(&["agent.*"], &["phone"]), &["phone"]).unwrap();
        assert!(agents.matches(&Notice::agent_offline("pi", "pi.lan", 1)));
        assert!(agents.matches(&Notice::agent_online("pi", "pi.lan", true, 1)));
        assert!(!agents.matches(&failed("backup", &[], "e")));
        let all = Rule::resolve(spec(&["*"], &["phone"]), &["phone"]).unwrap();
        assert!(all.matches(&failed("backup", &[], "e")));
    }

    #[test]
    fn notices_render_with_default_words_or_the_rules_templates_and_a_link() {
        let rule = Rule::resolve(spec(&["task.failed"], &["p"]), &["p"]).unwrap();
        let out = rule.render(
            &failed("backup", &[], "disk <full> & *stuck*"),
            Some("https://m.example"),
        );
        assert_eq!(out.title, "Task backup failed");
        assert_eq!(
            out.message,
            "Task 00000000-0000-0000-0000-000000000000 (backup) failed on attempt 2 on agent \
             nas: disk <full> & *stuck*"
        );
        assert_eq!(
            out.link.as_deref(),
            Some("https://m.example/tasks/00000000-0000-0000-0000-000000000000")
        );
        assert_eq!(rule.render(&failed("b", &[], "e"), None).link, None);

        let mut s = spec(&["task.failed"], &["p"]);
        s.title = Some("{{ task.kind | upper }} broke at {{ at }}".into());
        s.message = Some("{{ task.error }} → {{ link }}".into());
        let rule = Rule::resolve(s, &["p"]).unwrap();
        let out = rule.render(&failed("backup", &[], "boom"), Some("https://m"));
        assert_eq!(out.title, "BACKUP broke at 2023-11-14T22:13:20Z");
        assert_eq!(
            out.message,
            "boom → https://m/tasks/00000000-0000-0000-0000-000000000000"
        );

        let online = Rule::resolve(spec(&["agent.*"], &["p"]), &["p"]).unwrap();
        let first = online.render(&Notice::agent_online("pi", "pi.lan", true, 1), None);
        assert_eq!(first.message, "New agent pi (pi.lan) registered.");
        let back = online.render(&Notice::agent_online("pi", "pi.lan", false, 1), None);
        assert_eq!(back.message, "Agent pi (pi.lan) is back.");
    }

    #[test]
    fn a_failed_deployment_names_the_push_and_each_failed_rule() {
        let d: muster_api::Deployment = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001", "source": "infra",
            "delivery": "d-1", "repo": "homelab/infra", "clone_url": null,
            "git_ref": "refs/heads/main", "branch": "main", "before": "0".repeat(40),
            "sha": "c3d4e5f60718293a4b5c6d7e8f90123456789abc", "author": "Ada",
            "message": "media: new port\n\nand a longer body", "changed": [],
            "complete": true, "state": "failed", "created_at": "2026-11-27T00:00:00Z",
            "rules": [], "redeploy_of": null, "forge_status": null,
            "forge_status_error": null
        }))
        .unwrap();
        let failed = vec![
            serde_json::json!({"rule": "media", "step": "check", "error": "exit code 2"}),
            serde_json::json!({"rule": "dns", "step": "run", "error": "cancelled"}),
        ];
        let notice = Notice::deployment_failed(&d, failed, 1);
        let rule = Rule::resolve(spec(&["deployment.*"], &["p"]), &["p"]).unwrap();
        assert!(rule.matches(&notice));
        let out = rule.render(&notice, Some("https://m"));
        assert_eq!(out.title, "Deployment of homelab/infra failed");
        assert_eq!(
            out.message,
            "Deployment of homelab/infra@c3d4e5f6 (main, by Ada: media: new port) failed: \
             media (exit code 2), dns (cancelled)"
        );
        assert_eq!(
            out.link.as_deref(),
            Some("https://m/deployments/00000000-0000-0000-0000-000000000001")
        );
    }

    #[test]
    fn a_huge_error_makes_a_bounded_message() {
        let rule = Rule::resolve(spec(&["task.failed"], &["p"]), &["p"]).unwrap();
        let out = rule.render(&failed("k", &[], &"é".repeat(100_000)), None);
        assert_eq!(out.message.chars().count(), MAX_MESSAGE);
        assert!(out.message.ends_with('…'));
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
    }
}
