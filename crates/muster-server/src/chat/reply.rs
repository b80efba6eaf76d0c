//! The chat's replies, written for Telegram's HTML mode: every word that came from outside
//! (a task's kind, an incident's monitor, a model's answer) escaped, markup only around short
//! names, and the whole within Telegram's limits: split into messages of at most 4096 UTF-16
//! units at line breaks, and at most [`MAX_MESSAGES`] of them. Pure.

use chrono::{DateTime, Utc};
use muster_api::{AgentStatus, Incident, IncidentState, Task, TaskState};
use serde_json::Value;

use super::command::COMMANDS;
use crate::notify::telegram::{self, TEXT_LIMIT};
use crate::notify::text::{self, Piece};

/// The most messages one reply is sent as; a longer one (a model's essay, a huge result) is
/// cut, and says where the rest is.
pub const MAX_MESSAGES: usize = 4;

/// A name in bold or code is cut to this many characters, so that one piece of markup (which
/// is never split) always fits in a message.
const NAME_CHARS: usize = 200;

/// A reply being written: escaped text, which may be split anywhere between characters, and
/// short pieces of markup, which are kept whole.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pieces: Vec<Piece>,
}

impl Reply {
    pub fn new() -> Reply {
        Reply::default()
    }

    /// Plain text, escaped.
    pub fn text(&mut self, text: &str) -> &mut Reply {
        self.pieces.extend(telegram::pieces(text));
        self
    }

    /// A line break.
    pub fn line(&mut self) -> &mut Reply {
        self.pieces.push(Piece::new("\n", 1));
        self
    }

    pub fn bold(&mut self, text: &str) -> &mut Reply {
        self.tagged("b", text)
    }

    /// In a monospace font, and copied whole with a tap: for ids.
    pub fn code(&mut self, text: &str) -> &mut Reply {
        self.tagged("code", text)
    }

    fn tagged(&mut self, tag: &str, text: &str) -> &mut Reply {
        let text = crate::notify::cut(text, NAME_CHARS);
        self.pieces.push(Piece::new(
            format!("<{tag}>{}</{tag}>", telegram::escape(&text)),
            telegram::cost(&text),
        ));
        self
    }

    /// The reply as the messages to send, in order: none when it is empty.
    pub fn messages(self) -> Vec<String> {
        // Room for the note that says the reply was cut.
        const NOTE: &str = "\n(cut: the rest is too long for the chat)";
        let room = MAX_MESSAGES * TEXT_LIMIT - TEXT_LIMIT / 2;
        let total: usize = self.pieces.iter().map(|p| p.cost).sum();
        let mut pieces = self.pieces;
        if total > room {
            pieces = text::cap(pieces, room);
            pieces.extend(telegram::pieces(NOTE));
        }
        text::split(pieces, TEXT_LIMIT)
    }
}

/// A task's short id, as the pages show it.
pub fn short_id(id: uuid::Uuid) -> String {
    id.to_string()[..8].to_owned()
}

/// How long ago, in one unit: `12s`, `5m`, `3h`, `2d`.
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - since).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// What `/status` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub agents: Vec<AgentStatus>,
    pub tasks_by_state: Vec<(TaskState, u64)>,
    /// The open incidents, newest first.
    pub open: Vec<Incident>,
    /// Whether self-repair is paused for everything.
    pub repair_paused: bool,
}

pub fn status(status: &Status, now: DateTime<Utc>) -> Reply {
    let agents = |s: AgentStatus| status.agents.iter().filter(|a| **a == s).count();
    let tasks = |s: TaskState| {
        status
            .tasks_by_state
            .iter()
            .find(|(state, _)| *state == s)
            .map_or(0, |(_, n)| *n)
    };
    let mut reply = Reply::new();
    reply.bold("Agents").text(&format!(
        ": {} online, {} draining, {} offline",
        agents(AgentStatus::Online),
        agents(AgentStatus::Draining),
        agents(AgentStatus::Offline)
    ));
    reply.line().bold("Queue").text(&format!(
        ": {} queued, {} assigned, {} running",
        tasks(TaskState::Queued),
        tasks(TaskState::Assigned),
        tasks(TaskState::Running)
    ));
    let waiting: Vec<&Incident> = status
        .open
        .iter()
        .filter(|i| i.state == IncidentState::AwaitingApproval)
        .collect();
    reply.line().bold("Incidents").text(&format!(
        ": {} open, {} awaiting approval",
        status.open.len(),
        waiting.len()
    ));
    if status.repair_paused {
        reply.text(" (self-repair is paused)");
    }
    for incident in waiting {
        reply.line().text("• ").code(&incident.id.to_string());
        reply.text(&format!(" {}", incident.monitor));
        if let Some(choice) = &incident.choice {
            reply.text(&format!(": {}", choice.action));
        }
        if let Some(at) = incident.approval_expires_at {
            reply.text(&format!(" (expires in {})", age(now, at)));
        }
    }
    if status
        .open
        .iter()
        .any(|i| i.state == IncidentState::AwaitingApproval)
    {
        reply
            .line()
            .text("/approve <id> runs it; /deny <id> [reason] refuses it.");
    }
    reply
}

/// `/tasks`: one line per task, newest first.
pub fn tasks(tasks: &[Task], now: DateTime<Utc>) -> Reply {
    let mut reply = Reply::new();
    if tasks.is_empty() {
        reply.text("No tasks yet.");
        return reply;
    }
    reply.bold(&format!("Latest {} tasks", tasks.len()));
    for task in tasks {
        reply.line().code(&short_id(task.id));
        reply.text(&format!(
            " {} · {} · {} ago",
            task.kind,
            task.state,
            age(task.created_at, now)
        ));
    }
    reply
}

/// The list of commands, after a word on what was not understood (`unknown`: the name of a
/// command muster does not know, or empty for plain text).
pub fn help(unknown: Option<&str>) -> Reply {
    let mut reply = Reply::new();
    match unknown {
        Some("") => {
            reply.text("I only take commands.").line();
        }
        Some(name) => {
            reply.text(&format!("I do not know /{name}.")).line();
        }
        None => {}
    }
    reply.bold("Commands");
    for command in COMMANDS {
        reply
            .line()
            .text(command.usage)
            .text(&format!(": {}", command.help));
    }
    reply
}

/// An incident after `/approve` or `/deny`.
pub fn answered(verb: &str, incident: &Incident) -> Reply {
    let mut reply = Reply::new();
    reply
        .text(&format!("{verb}: incident "))
        .code(&short_id(incident.id));
    reply.text(&format!(" ({}) is {}", incident.monitor, incident.state));
    match (&incident.choice, incident.task_id, &incident.reason) {
        (Some(choice), Some(task), _) if incident.state == IncidentState::Repairing => {
            reply
                .text(&format!(": running {} as task ", choice.action))
                .code(&short_id(task));
        }
        (_, _, Some(reason)) => {
            reply.text(&format!(": {reason}"));
        }
        _ => {}
    }
    reply.text(".");
    reply
}

/// `/run`: the schedule fired, and its task.
pub fn ran(schedule: &str, task: &Task) -> Reply {
    let mut reply = Reply::new();
    reply
        .text("Ran ")
        .bold(schedule)
        .text(": task ")
        .code(&short_id(task.id))
        .text(&format!(" ({}) is {}.", task.kind, task.state));
    reply
}

/// A command that could not be carried out, with the server's words on why.
pub fn refused(message: &str) -> Reply {
    let mut reply = Reply::new();
    reply.text(message);
    reply
}

/// `/ask`: the task was submitted, and the answer follows.
pub fn asked(task: &Task, wait: std::time::Duration) -> Reply {
    let mut reply = Reply::new();
    reply
        .text("Asked: task ")
        .code(&short_id(task.id))
        .text(&format!(
            ". The answer comes here when an agent has it (waiting up to {}).",
            humantime::format_duration(wait)
        ));
    reply
}

/// `/ask`: what the task came to. A completed task's `result.answer`, else its
/// `result.text`, else the result as JSON; a failed one's error.
pub fn answer(task: &Task) -> Reply {
    let mut reply = Reply::new();
    match task.state {
        TaskState::Completed => {
            let result = task.result.as_ref().unwrap_or(&Value::Null);
            let text = ["answer", "text"]
                .iter()
                .find_map(|key| result.get(key).and_then(Value::as_str))
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string())
                });
            reply.text(&text);
        }
        state => {
            reply.text("Task ").code(&short_id(task.id));
            reply.text(&format!(" {state}"));
            if let Some(error) = &task.error {
                reply.text(&format!(": {error}"));
            }
        }
    }
    reply
}

/// `/ask` waited as long as it may.
pub fn gave_up(task: &Task, waited: std::time::Duration) -> Reply {
    let mut reply = Reply::new();
    reply.text("No answer after ");
    reply.text(&humantime::format_duration(waited).to_string());
    reply.text(": task ").code(&short_id(task.id));
    reply.text(&format!(
        " is still {}. I stopped waiting; /tasks shows how it ends.",
        task.state
    ));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
    }

    fn task(kind: &str, state: TaskState, result: Option<Value>) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": "0193a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b",
            "kind": kind, "state": state, "payload": null, "capabilities": [],
            "priority": 0, "max_retries": 0, "timeout_s": null, "lock_key": null,
            "idempotency_key": null, "run_after": null, "labels": {}, "attempt": 1,
            "agent_id": null, "cancel_requested": false,
            "created_at": "2026-11-28T09:55:00Z", "updated_at": "2026-11-28T09:55:00Z",
            "finished_at": null, "result": result, "usage": null,
            "error": if state == TaskState::Failed { Some("exit 1 <oops>") } else { None },
            "assignment": null,
        }))
        .unwrap()
    }

    fn one(reply: Reply) -> String {
        let messages = reply.messages();
        assert_eq!(messages.len(), 1, "{messages:?}");
        messages.into_iter().next().unwrap()
    }

    #[test]
    fn words_from_outside_are_escaped_and_markup_is_kept() {
        let tasks = [task("backup <nightly> & more 🚀", TaskState::Running, None)];
        assert_eq!(
            one(super::tasks(&tasks, now())),
            "<b>Latest 1 tasks</b>\n<code>0193a1b2</code> backup &lt;nightly&gt; &amp; more 🚀 \
             · running · 5m ago"
        );
        let answered = task(
            "llm",
            TaskState::Completed,
            Some(serde_json::json!({"answer": "Use <b>zfs</b> & relax 😌 — Grüße"})),
        );
        assert_eq!(
            one(answer(&answered)),
            "Use &lt;b&gt;zfs&lt;/b&gt; &amp; relax 😌 — Grüße"
        );
        let failed = task("llm", TaskState::Failed, None);
        assert_eq!(
            one(answer(&failed)),
            "Task <code>0193a1b2</code> failed: exit 1 &lt;oops&gt;"
        );
    }

    #[test]
    fn an_answer_falls_back_from_answer_to_text_to_the_json() {
        let text = task(
            "llm",
            TaskState::Completed,
            Some(serde_json::json!({"text": "from text"})),
        );
        assert_eq!(one(answer(&text)), "from text");
        let json = task(
            "llm",
            TaskState::Completed,
            Some(serde_json::json!({"tokens": 3})),
        );
        assert_eq!(one(answer(&json)), "{\n  \"tokens\": 3\n}");
    }

    #[test]
    fn a_long_reply_is_split_within_the_limit_and_a_huge_one_cut() {
        let long = "Zeile mit Ümlaut und 🚀 & <tag>\n".repeat(300);
        let mut reply = Reply::new();
        reply.text(&long);
        let messages = reply.messages();
        assert!(messages.len() > 1 && messages.len() <= MAX_MESSAGES);
        for m in &messages {
            let units = telegram::visible(m).encode_utf16().count();
            assert!(units <= TEXT_LIMIT, "{units}");
            assert!(m.ends_with("&lt;tag&gt;"), "split at a line break");
        }
        let mut huge = Reply::new();
        huge.text(&"x".repeat(100_000));
        let messages = huge.messages();
        assert_eq!(messages.len(), MAX_MESSAGES);
        assert!(messages.last().unwrap().ends_with("too long for the chat)"));
    }

    #[test]
    fn help_lists_every_command_and_says_what_was_not_understood() {
        let text = one(help(Some("reboot")));
        assert!(
            text.starts_with("I do not know /reboot.\n<b>Commands</b>"),
            "{text}"
        );
        for command in COMMANDS {
            assert!(
                text.contains(&telegram::escape(command.usage)),
                "{}",
                command.name
            );
        }
        assert!(one(help(Some(""))).starts_with("I only take commands."));
        assert!(one(help(None)).starts_with("<b>Commands</b>"));
    }

    #[test]
    fn ages_are_one_unit() {
        let at = |secs: i64| age(now() - chrono::Duration::seconds(secs), now());
        assert_eq!(
            [at(5), at(300), at(7200), at(200_000), at(-5)],
            ["5s", "5m", "2h", "2d", "0s"]
        );
    }
}
