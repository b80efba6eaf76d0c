//! The page shell (head, navigation, live-update hooks) and the small pieces every page uses:
//! times the browser localises, state badges, JSON blocks and CSRF-carrying buttons.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, html};
use muster_api::{Agent, AgentStatus, TaskState};
use serde_json::Value;
use uuid::Uuid;

use super::assets;
use crate::sessions::Session;

/// The sections in the navigation. A new page adds a variant here and an entry in [`NAV`];
/// the bar wraps on a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Overview,
    Agents,
    Tasks,
    Submit,
    Deployments,
    Schedules,
    Incidents,
    Llm,
    Notifications,
    Audit,
}

const NAV: &[(Section, &str, &str)] = &[
    (Section::Overview, "/", "Overview"),
    (Section::Agents, "/agents", "Agents"),
    (Section::Tasks, "/tasks", "Tasks"),
    (Section::Submit, "/tasks/new", "Submit"),
    (Section::Deployments, "/deployments", "Deployments"),
    (Section::Schedules, "/schedules", "Schedules"),
    (Section::Incidents, "/incidents", "Incidents"),
    (Section::Llm, "/llm", "LLM"),
    (Section::Notifications, "/notifications", "Notifications"),
    (Section::Audit, "/audit", "Audit"),
];

/// Which server events make the page refresh its live regions (elements with `data-live`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Live {
    /// Nothing: a form, or the login page.
    #[default]
    Off,
    /// Task events of every task.
    Tasks,
    /// Task, agent and canary events.
    Everything,
    /// Events of this one task.
    Task(Uuid),
    /// Incident and task events (a repair is a task).
    Incidents,
}

/// What the shell needs to know beyond the page's own content.
pub(super) struct Page<'a> {
    pub(super) title: &'a str,
    pub(super) section: Option<Section>,
    pub(super) live: Live,
    /// The viewer's session; `None` on the login page.
    pub(super) session: Option<&'a Session>,
    /// Whether a key protects the UI (then there is a logout button).
    pub(super) login_enabled: bool,
}

pub(super) fn shell(page: &Page<'_>, content: Markup) -> Markup {
    let (events, task) = match page.live {
        Live::Off => ("", None),
        Live::Tasks => ("task", None),
        Live::Everything => ("task agent canary", None),
        Live::Task(id) => ("task", Some(id.to_string())),
        Live::Incidents => ("task incident", None),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (page.title) " · muster" }
                link rel="stylesheet" href=(assets::STYLESHEET.url());
                link rel="icon" type="image/svg+xml" href=(assets::ICON.url());
                script src=(assets::SCRIPT.url()) defer {}
            }
            body data-events=[(!events.is_empty()).then_some(events)] data-task=[task] {
                header.top {
                    a.brand href="/" { img src=(assets::ICON.url()) alt="" width="22" height="22"; "muster" }
                    @if let Some(session) = page.session {
                        nav aria-label="Main" {
                            @for (section, href, label) in NAV {
                                @if page.section == Some(*section) {
                                    a href=(href) aria-current="page" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                        div.top-end {
                            @if !events.is_empty() {
                                span #live-status .live-status data-state="connecting" title="Live updates" { "live" }
                            }
                            @if page.login_enabled {
                                form.logout method="post" action="/logout" {
                                    (csrf_field(session))
                                    button.link type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

pub(super) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A one-button form that posts to `action` with the session's CSRF token.
pub(super) fn post_button(
    session: &Session,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf_field(session))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A UTC time the script shows in the browser's zone; readable as UTC without the script.
pub(super) fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(SecondsFormat::Millis, true)) {
            (at.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

/// Like [`time`], shown as "12 s ago" and kept current by the script.
pub(super) fn time_ago(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(SecondsFormat::Millis, true)) data-relative {
            (at.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

/// Like [`time`], shown as the time of day only (log lines).
pub(super) fn time_of_day(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(SecondsFormat::Millis, true)) data-format="time" {
            (at.format("%H:%M:%S"))
        }
    }
}

pub(super) fn optional_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

pub(super) fn task_state(state: TaskState) -> Markup {
    html! { span class={ "badge state-" (state.as_str()) } { (state.as_str()) } }
}

pub(super) fn agent_status(status: AgentStatus) -> Markup {
    html! { span class={ "badge status-" (status.as_str()) } { (status.as_str()) } }
}

/// The end of a task id: UUIDv7 ids begin with their timestamp, so tasks submitted together
/// share a prefix but not a suffix.
pub(super) fn short_id(id: Uuid) -> String {
    let text = id.simple().to_string();
    text[text.len() - 8..].to_owned()
}

pub(super) fn task_link(id: Uuid, kind: &str) -> Markup {
    html! {
        a.task-link href={ "/tasks/" (id) } title=(id) {
            span.kind { (kind) } " " code.id { (short_id(id)) }
        }
    }
}

pub(super) fn json_block(value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    html! { pre.json { code { (text) } } }
}

pub(super) fn chips(items: &[String]) -> Markup {
    html! {
        @if items.is_empty() {
            span.muted { "none" }
        } @else {
            ul.chips { @for item in items { li { (item) } } }
        }
    }
}

pub(super) fn labels(labels: &muster_api::Labels) -> Markup {
    html! {
        @if labels.is_empty() {
            span.muted { "none" }
        } @else {
            ul.chips { @for (k, v) in labels { li { (k) "=" (v) } } }
        }
    }
}

/// An agent's CPU and memory load as meters; none for an offline agent, whose last reported
/// load says nothing about now.
pub(super) fn agent_load(agent: &Agent) -> Markup {
    html! {
        @if agent.status == AgentStatus::Offline {
            span.muted.load-offline title="Offline: no current load" { "—" }
        } @else {
            (load("cpu", agent.cpu_percent)) (load("mem", agent.memory_percent))
        }
    }
}

/// A percentage as a meter and a number (a meter needs no inline style, which the page's
/// content security policy forbids).
pub(super) fn load(label: &str, percent: Option<f64>) -> Markup {
    html! {
        @match percent {
            Some(p) => {
                span.load title={ (label) " " (format!("{p:.0}")) "%" } {
                    span.load-label { (label) }
                    meter min="0" max="100" low="70" high="90" optimum="0" value=(format!("{p:.1}")) {}
                    span.load-value { (format!("{p:.0}")) "%" }
                }
            }
            None => span.muted { (label) " —" },
        }
    }
}
