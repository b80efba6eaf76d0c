//! The schedules pages: every schedule (the config file's, then those created through the API)
//! with its cron, next and last firing and pause, each with Run now and Pause or Resume
//! buttons; and a schedule's page: its facts, the task each firing submits, and its latest
//! firings with their tasks. Runs, pauses, resumes and deletes go through [`crate::scheduler`],
//! as the API's do, and are audited as the UI operator's.
//!
//! A task template's payload and labels are whatever the config file or an API caller wrote:
//! they are only ever interpolated through maud, which escapes them.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use muster_api::{
    FiringTrigger, Schedule, ScheduleFiring, ScheduleOrigin, SchedulePauseAnswer, ScheduleRun,
};

use super::flash;
use super::layout::{self, Live, Section};
use super::{UiError, page_for, percent_encode};
use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::extract::QueryPairs;
use crate::scheduler;
use crate::sessions::Session;

/// `GET /schedules`.
pub(super) async fn list(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let schedules = scheduler::list(&app).await?;
    let taken = flash::take(&headers, &session);
    let content = html! {
        div.title-row { h1 { "Schedules" } }
        (flash::notice(&taken))
        p.muted {
            "Each firing submits one task. A paused schedule skips its firings; Run now fires "
            "one at once, even while it is paused."
        }
        div #schedule-list data-live {
            @if schedules.is_empty() {
                p.empty {
                    "No schedule yet. Add " code { "[[schedules]]" } " to the config file and "
                    "reload with SIGHUP, or create one with " code { "POST /api/v1/schedules" } "."
                }
            } @else {
                div.table-scroll {
                    table.schedules {
                        thead { tr {
                            th { "Name" } th { "Origin" } th { "Cron" } th { "Task" }
                            th { "Next firing" } th { "Last firing" } th { "State" } th {}
                        } }
                        tbody { @for s in &schedules { (row(&session, s)) } }
                    }
                }
            }
        }
    };
    let page = page_for(
        &app,
        &session,
        "Schedules",
        Some(Section::Schedules),
        Live::Tasks,
    );
    Ok(flash::answer(layout::shell(&page, content), &taken))
}

fn row(session: &Session, s: &Schedule) -> Markup {
    html! {
        tr data-schedule=(s.name) {
            td { a href={ "/schedules/" (percent_encode(&s.name)) } { (s.name) } }
            td { (origin_badge(s.origin)) }
            td { code { (s.cron) } br; span.muted { (s.timezone) } }
            td { code { (s.task.kind) } }
            td { (next_firing(s)) }
            td { (last_firing(s.last.as_ref())) }
            td { (pause_state(s)) }
            td { div.actions { (buttons(session, s, Back::List)) } }
        }
    }
}

fn next_firing(s: &Schedule) -> Markup {
    html! {
        @match (s.paused, s.next_fire_at) {
            (true, _) => span.muted { "none while paused" },
            (false, Some(at)) => (layout::time(at)),
            (false, None) => span.muted { "never again" },
        }
    }
}

fn last_firing(last: Option<&ScheduleFiring>) -> Markup {
    html! {
        @if let Some(f) = last {
            (layout::time(f.fire_at)) " " (trigger_badge(f.trigger)) br;
            (task(f))
        } @else {
            span.muted { "not yet" }
        }
    }
}

/// A firing's task: a link to its page (which has its logs) and its state now.
fn task(f: &ScheduleFiring) -> Markup {
    html! {
        a.task-link href={ "/tasks/" (f.task_id) } title=(f.task_id) {
            "task " code.id { (layout::short_id(f.task_id)) }
        }
        " "
        @match f.task_state {
            Some(state) => (layout::task_state(state)),
            None => span.muted { "(pruned)" },
        }
    }
}

fn pause_state(s: &Schedule) -> Markup {
    html! {
        @if s.paused {
            span.badge.paused { "paused" }
            span.muted {
                @if let Some(at) = s.paused_at { " since " (layout::time(at)) }
                @if let Some(by) = &s.paused_by { " by " (by) }
            }
        } @else {
            span.badge.active { "active" }
        }
    }
}

/// Where a form's redirect leads: the list the button was on, or the schedule's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    List,
    Page,
}

impl Back {
    /// Read from the form's `?back=list`; anything else is the schedule's page, so no form
    /// can send the browser elsewhere.
    fn from_query(query: &QueryPairs) -> Back {
        match query.get("back") {
            Some("list") => Back::List,
            _ => Back::Page,
        }
    }

    fn url(self, name: &str) -> String {
        match self {
            Back::List => "/schedules".to_owned(),
            Back::Page => format!("/schedules/{}", percent_encode(name)),
        }
    }
}

/// Run now, and Pause or Resume.
fn buttons(session: &Session, s: &Schedule, back: Back) -> Markup {
    let base = format!("/schedules/{}", percent_encode(&s.name));
    let query = match back {
        Back::List => "?back=list",
        Back::Page => "",
    };
    html! {
        (layout::post_button(session, &format!("{base}/run{query}"), "Run now", "primary", None))
        @if s.paused {
            (layout::post_button(session, &format!("{base}/resume{query}"), "Resume", "", None))
        } @else {
            (layout::post_button(session, &format!("{base}/pause{query}"), "Pause", "", None))
        }
    }
}

/// `GET /schedules/{name}`.
pub(super) async fn show(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let detail = scheduler::get(&app, &name).await?;
    let s = &detail.schedule;
    let taken = flash::take(&headers, &session);
    let title = format!("Schedule {}", s.name);
    let content = html! {
        div #schedule-head data-live { (head(&session, s)) }
        (flash::notice(&taken))
        div.columns {
            section #schedule-facts data-live { (facts(s)) }
            section #schedule-task { (template(s)) }
        }
        section #schedule-firings data-live { (firings(s, &detail.firings)) }
    };
    let page = page_for(
        &app,
        &session,
        &title,
        Some(Section::Schedules),
        Live::Tasks,
    );
    Ok(flash::answer(layout::shell(&page, content), &taken))
}

fn head(session: &Session, s: &Schedule) -> Markup {
    html! {
        div.title-row {
            h1 {
                "Schedule " code { (s.name) } " "
                @if s.paused { span.badge.paused { "paused" } } @else { span.badge.active { "active" } }
            }
            div.actions {
                (buttons(session, s, Back::Page))
                @if s.origin == ScheduleOrigin::Api {
                    (layout::post_button(session,
                        &format!("/schedules/{}/delete", percent_encode(&s.name)),
                        "Delete", "danger",
                        Some(&format!("Delete schedule {}? The tasks it submitted stay.", s.name))))
                }
            }
        }
    }
}

fn facts(s: &Schedule) -> Markup {
    html! {
        h2 { "When" }
        dl.facts {
            dt { "Origin" } dd {
                (origin_badge(s.origin)) " "
                span.muted {
                    @match s.origin {
                        ScheduleOrigin::Config => "a [[schedules]] entry of the config file: changed there, and by a reload",
                        ScheduleOrigin::Api => "created through the API",
                    }
                }
            }
            dt { "Cron" } dd { code { (s.cron) } }
            dt { "Time zone" } dd { (s.timezone) }
            dt { "Next firing" } dd {
                (next_firing(s))
                @if let Some(wall) = s.next_fire_at.filter(|_| !s.paused).and_then(|at| in_zone(at, &s.timezone)) {
                    " " span.muted { "(" (wall) ")" }
                }
            }
            dt { "Missed firings" } dd {
                code { (s.missed) } ": "
                span.muted {
                    @if s.missed == "run_once" {
                        "firings missed while the server was down run once when it is back"
                    } @else {
                        "firings missed while the server was down are skipped"
                    }
                }
            }
            dt { "Lock key" } dd {
                @match &s.lock_key {
                    Some(key) => { code { (key) } " " span.muted { "firings run one at a time" } },
                    None => span.muted { "none" },
                }
            }
            dt { "State" } dd { (pause_state(s)) }
            dt { "Last firing" } dd { (last_firing(s.last.as_ref())) }
        }
    }
}

/// The wall-clock time of `at` in the schedule's zone (`2027-01-11 02:30 CET`), as its cron
/// expression reads; none for a zone this build does not know.
fn in_zone(at: DateTime<Utc>, zone: &str) -> Option<String> {
    let zone: chrono_tz::Tz = zone.parse().ok()?;
    Some(
        at.with_timezone(&zone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
    )
}

fn template(s: &Schedule) -> Markup {
    let t = &s.task;
    html! {
        h2 { "Task" }
        dl.facts {
            dt { "Kind" } dd { code { (t.kind) } }
            dt { "Capabilities" } dd { (layout::chips(&t.capabilities)) }
            dt { "Priority" } dd { (t.priority) }
            dt { "Max retries" } dd {
                @match t.max_retries { Some(n) => (n), None => span.muted { "the server's default" } }
            }
            dt { "Timeout" } dd {
                @match t.timeout_s { Some(s) => { (s) " s" }, None => span.muted { "none" } }
            }
            dt { "Labels" } dd { (layout::labels(&t.labels)) }
        }
        h3 { "Payload" }
        (layout::json_block(&serde_json::Value::Object(t.payload.clone())))
        p.muted {
            "Each firing adds " code { "schedule" } " and " code { "fire_at" }
            " to the payload and the label " code { "schedule=" (s.name) } "."
        }
    }
}

fn firings(s: &Schedule, firings: &[ScheduleFiring]) -> Markup {
    html! {
        h2 { "Firings" }
        @if firings.is_empty() {
            p.empty { "It has not fired yet." }
        } @else {
            div.table-scroll {
                table.firings {
                    thead { tr {
                        th { "Instant" } th { "Trigger" } th { "By" } th { "Task" } th { "Submitted" }
                    } }
                    tbody {
                        @for f in firings {
                            tr data-trigger=(f.trigger.as_str()) {
                                td { (layout::time(f.fire_at)) }
                                td { (trigger_badge(f.trigger)) }
                                td { (f.actor) }
                                td { (task(f)) }
                                td { (layout::time(f.fired_at)) }
                            }
                        }
                    }
                }
            }
            @if firings.len() >= scheduler::RECENT_FIRINGS {
                p.muted {
                    "The newest " (scheduler::RECENT_FIRINGS) " are shown; older firings' tasks are "
                    "among the " a href={ "/tasks?kind=" (percent_encode(&s.task.kind)) } { "tasks of kind " (s.task.kind) }
                    ", labelled " code { "schedule=" (s.name) } "."
                }
            }
        }
    }
}

fn origin_badge(origin: ScheduleOrigin) -> Markup {
    let name = origin.as_str();
    html! { span class={ "badge origin-" (name) } { (name) } }
}

fn trigger_badge(trigger: FiringTrigger) -> Markup {
    let name = trigger.as_str();
    html! { span class={ "badge trigger-" (name) } { (name) } }
}

/// `POST /schedules/{name}/run[?back=list]`: fires it now; back, with the task it submitted.
pub(super) async fn run(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let ran = scheduler::run_now(&app, &name, Actor::operator(Via::Ui)).await?;
    Ok(flash::redirect(
        &Back::from_query(&query).url(&name),
        &session,
        &headers,
        &run_message(&name, &ran),
    ))
}

fn run_message(name: &str, ran: &ScheduleRun) -> String {
    format!(
        "Ran {name} now: task {} ({}) is {}.",
        layout::short_id(ran.task.id),
        ran.task.kind,
        ran.task.state
    )
}

/// `POST /schedules/{name}/pause[?back=list]`.
pub(super) async fn pause(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let answer = scheduler::set_paused(&app, &name, true, Actor::operator(Via::Ui)).await?;
    Ok(paused_redirect(&session, &headers, &query, &answer))
}

/// `POST /schedules/{name}/resume[?back=list]`.
pub(super) async fn resume(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let answer = scheduler::set_paused(&app, &name, false, Actor::operator(Via::Ui)).await?;
    Ok(paused_redirect(&session, &headers, &query, &answer))
}

/// Back where the button was, with what the pause or resume did.
fn paused_redirect(
    session: &Session,
    headers: &HeaderMap,
    query: &QueryPairs,
    answer: &SchedulePauseAnswer,
) -> Response {
    flash::redirect(
        &Back::from_query(query).url(&answer.schedule.name),
        session,
        headers,
        &pause_message(answer),
    )
}

fn pause_message(answer: &SchedulePauseAnswer) -> String {
    let s = &answer.schedule;
    let name = &s.name;
    match (s.paused, answer.changed) {
        (true, true) => format!(
            "Paused {name}: its firings are skipped until it is resumed (Run now still fires it)."
        ),
        (true, false) => format!("{name} was paused already."),
        (false, true) => match s.next_fire_at {
            Some(at) => format!(
                "Resumed {name}: it fires next at {}; what came due while it was paused stays \
                 skipped.",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => format!("Resumed {name}."),
        },
        (false, false) => format!("{name} was not paused."),
    }
}

/// `POST /schedules/{name}/delete`: a schedule created through the API (the config file's are
/// changed there); back to the list.
pub(super) async fn delete(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    scheduler::delete(&app, &name, Actor::operator(Via::Ui)).await?;
    Ok(flash::redirect(
        "/schedules",
        &session,
        &headers,
        &format!("Deleted schedule {name}; the tasks it submitted stay."),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_answer_says_what_changed() {
        let at = DateTime::parse_from_rfc3339("2027-01-11T01:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let answer = |paused: bool, changed: bool| SchedulePauseAnswer {
            schedule: Schedule {
                name: "nightly".into(),
                origin: ScheduleOrigin::Api,
                cron: "30 2 * * *".into(),
                timezone: "Europe/Berlin".into(),
                missed: "skip".into(),
                task: serde_json::from_value(serde_json::json!({"kind": "backup"})).unwrap(),
                lock_key: None,
                paused,
                paused_at: None,
                paused_by: None,
                next_fire_at: (!paused).then_some(at),
                last: None,
            },
            changed,
        };
        assert!(pause_message(&answer(true, true)).starts_with("Paused nightly:"));
        assert_eq!(
            pause_message(&answer(true, false)),
            "nightly was paused already."
        );
        assert_eq!(
            pause_message(&answer(false, true)),
            "Resumed nightly: it fires next at 2027-01-11 01:30:00 UTC; what came due while it \
             was paused stays skipped."
        );
        assert_eq!(
            pause_message(&answer(false, false)),
            "nightly was not paused."
        );
    }

    #[test]
    fn the_next_firing_reads_in_the_schedules_own_zone() {
        let at = DateTime::parse_from_rfc3339("2027-01-11T01:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            in_zone(at, "Europe/Berlin").as_deref(),
            Some("2027-01-11 02:30 CET")
        );
        assert_eq!(in_zone(at, "Mars/Olympus"), None);
    }

    #[test]
    fn a_form_can_only_lead_back_to_the_list_or_the_schedule() {
        assert_eq!(Back::List.url("nightly"), "/schedules");
        assert_eq!(Back::Page.url("a b"), "/schedules/a%20b");
    }
}
