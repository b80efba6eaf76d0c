//! The self-repair pages: the incidents, newest first, filtered by state, under the pause
//! switch of self-repair as a whole and of every configured target (with pause and resume
//! buttons); and an incident's page: its facts, the action chosen (with the model's reasoning),
//! the repair task, the Approve and Deny buttons while a risky action waits, its story event by
//! event, and the notifications sent about it. Approvals, denials, pauses and resumes go
//! through [`crate::incidents`], as the API's do, and are audited as the UI operator's.
//!
//! Everything an alert brought (monitor names, messages, labels, links) and everything a model
//! said is hostile text: it is only ever interpolated through maud, which escapes it.

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use muster_api::{
    ChoiceBy, Incident, IncidentEvent, IncidentState, Notification, RepairPause, RepairPauseAnswer,
    RepairStatus, RepairTargetStatus, Task,
};
use serde::Deserialize;

use super::flash;
use super::layout::{self, Live, Section};
use super::{UiError, page_for};
use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::error::{ApiError, StoreError};
use crate::extract::{QueryPairs, record_id};
use crate::incidents;
use crate::sessions::Session;
use crate::store::IncidentFilter;

/// `GET /incidents?state=&open=true`.
pub(super) async fn list(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let state = query.one_of("state", IncidentState::ALL, |s| s.as_str())?;
    let open = state.is_none() && query.parse::<bool>("open")? == Some(true);
    let states: Vec<IncidentState> = match state {
        Some(s) => vec![s],
        None if open => IncidentState::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_closed())
            .collect(),
        None => Vec::new(),
    };
    let shown = incidents::list(
        &app,
        IncidentFilter {
            states,
            target: None,
            limit: incidents::MAX_PAGE,
        },
    )
    .await?;
    let status = incidents::status(&app).await?;
    let taken = flash::take(&headers, &session);
    let filtered = state.is_some() || open;
    let content = html! {
        div.title-row { h1 { "Incidents" } }
        (flash::notice(&taken))
        (pause_panel(&session, &status))
        h2 { "Incidents" }
        nav.filters aria-label="Filter" {
            a href="/incidents" aria-current=[(!filtered).then_some("page")] { "All" }
            a href="/incidents?open=true" aria-current=[open.then_some("page")]
                title="not yet resolved or escalated" { "Not closed" }
            @for s in IncidentState::ALL {
                a href={ "/incidents?state=" (s.as_str()) }
                    aria-current=[(state == Some(*s)).then_some("page")] { (s.as_str()) }
            }
        }
        div #incident-list data-live {
            @if shown.is_empty() {
                p.empty { "No incidents" @if filtered { " match" } "." }
            } @else {
                div.table-scroll {
                    table.incidents {
                        thead { tr {
                            th { "Opened" } th { "State" } th { "Monitor" } th { "Target" }
                            th { "Reason" } th.num { "Alerts" } th.num { "Steps" }
                            th.num title="Repairs its target started in the last hour, and its cap" { "Repairs / h" }
                        } }
                        tbody { @for i in &shown { (row(i)) } }
                    }
                }
                @if shown.len() >= incidents::MAX_PAGE {
                    p.muted { "The newest " (incidents::MAX_PAGE) " are shown." }
                }
            }
        }
    };
    let page = page_for(
        &app,
        &session,
        "Incidents",
        Some(Section::Incidents),
        Live::Incidents,
    );
    Ok(flash::answer(layout::shell(&page, content), &taken))
}

fn row(i: &Incident) -> Markup {
    html! {
        tr data-incident=(i.id) {
            td { (layout::time(i.opened_at)) }
            td { (state_badge(i.state)) }
            td.message { a href={ "/incidents/" (i.id) } { (i.monitor) } }
            td {
                @match &i.target { Some(t) => code { (t) }, None => span.muted { "none" } }
            }
            td.message {
                @match &i.reason { Some(r) => (r), None => span.muted { "—" } }
            }
            td.num { (i.alerts) }
            td.num { (i.steps) " / " (i.max_steps) }
            td.num { (repairs(i)) }
        }
    }
}

/// Repairs in the last hour against the cap, for an incident that has a target.
fn repairs(i: &Incident) -> Markup {
    html! {
        @if i.target.is_some() {
            (i.repairs_last_hour) " / " (i.max_repairs_per_hour)
        } @else {
            span.muted { "—" }
        }
    }
}

/// The switch of self-repair as a whole and of each configured target; and any pause whose
/// target the config no longer names (it can be resumed, not paused again).
fn pause_panel(session: &Session, status: &RepairStatus) -> Markup {
    let all = status.pauses.iter().find(|p| p.target.is_none());
    let own = |name: &str| {
        status
            .pauses
            .iter()
            .find(|p| p.target.as_deref() == Some(name))
    };
    let orphans: Vec<&RepairPause> = status
        .pauses
        .iter()
        .filter(|p| {
            p.target
                .as_deref()
                .is_some_and(|t| !status.targets.iter().any(|s| s.name == t))
        })
        .collect();
    html! {
        section #repair-pauses data-live {
            h2 { "Self-repair" }
            p.muted {
                "A pause holds repairs: alerts are still recorded as incidents and decided, and "
                "an incident whose repair a pause holds is escalated instead of run."
            }
            div.table-scroll {
                table.pauses {
                    thead { tr {
                        th { "Scope" } th { "Actions" } th { "Decided by" }
                        th.num title="Repairs started in the last hour, and the cap" { "Repairs / h" }
                        th { "State" } th {}
                    } }
                    tbody {
                        tr data-pause="all" {
                            td { strong { "All of self-repair" } }
                            td {} td {} td {}
                            td { (pause_state(all, false)) }
                            td { (pause_button(session, None, all.is_none())) }
                        }
                        @for t in &status.targets {
                            (target_row(session, t, own(&t.name), all.is_some()))
                        }
                        @for p in &orphans {
                            tr data-pause={ "target:" (p.target.as_deref().unwrap_or("")) } {
                                td { code { (p.target.as_deref().unwrap_or("")) } }
                                td colspan="3" { span.muted { "no longer configured" } }
                                td { (pause_state(Some(p), false)) }
                                td { (pause_button(session, p.target.as_deref(), false)) }
                            }
                        }
                    }
                }
            }
            @if status.targets.is_empty() {
                p.empty {
                    "No repair target is configured. Add " code { "[[alerts.sources]]" } ", "
                    code { "[[actions]]" } " and " code { "[[repair.targets]]" } " to the config "
                    "file (see the README's self-repair section) and reload with SIGHUP."
                }
            }
        }
    }
}

fn target_row(
    session: &Session,
    t: &RepairTargetStatus,
    pause: Option<&RepairPause>,
    all_paused: bool,
) -> Markup {
    html! {
        tr data-pause={ "target:" (t.name) } {
            td { code { (t.name) } }
            td { (layout::chips(&t.actions)) }
            td {
                @match &t.provider {
                    Some(p) => { "model " code { (p) } },
                    None => span.muted { "runbook" },
                }
            }
            td.num { (t.repairs_last_hour) " / " (t.max_repairs_per_hour) }
            td { (pause_state(pause, all_paused)) }
            td { (pause_button(session, Some(&t.name), pause.is_none())) }
        }
    }
}

fn pause_state(pause: Option<&RepairPause>, all_paused: bool) -> Markup {
    html! {
        @if let Some(p) = pause {
            span.badge.paused { "paused" }
            span.muted { " since " (layout::time(p.paused_at)) " by " (p.paused_by) }
        } @else if all_paused {
            span.badge.paused { "paused" }
            span.muted { " (all of self-repair is paused)" }
        } @else {
            span.badge.active { "active" }
        }
    }
}

/// The form that pauses (`pause`) or resumes `target` (none: all of self-repair).
fn pause_button(session: &Session, target: Option<&str>, pause: bool) -> Markup {
    let label = match (pause, target.is_none()) {
        (true, true) => "Pause all",
        (false, true) => "Resume all",
        (true, false) => "Pause",
        (false, false) => "Resume",
    };
    html! {
        form.inline method="post" action="/incidents/pause" {
            (layout::csrf_field(session))
            input type="hidden" name="target" value=(target.unwrap_or(""));
            input type="hidden" name="paused" value=(pause);
            button type="submit" { (label) }
        }
    }
}

/// `GET /incidents/{id}`.
pub(super) async fn show(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = record_id("id", "incident", &id)?;
    let incident = incidents::get(&app, id).await?;
    let task = match incident.task_id {
        Some(task_id) => match app.store.task(task_id).await {
            Ok(task) => Some(task),
            Err(StoreError::NotFound(_)) => None,
            Err(err) => return Err(err.into()),
        },
        None => None,
    };
    let notifications: &[Notification] = &incident.notifications;
    let taken = flash::take(&headers, &session);
    let title = format!("Incident: {}", incident.monitor);
    let content = html! {
        div #incident-head data-live { (head(&incident)) }
        (flash::notice(&taken))
        @if incident.state == IncidentState::AwaitingApproval {
            (approval(&session, &incident))
        }
        div.columns {
            section #incident-facts data-live { (facts(&incident)) }
            section #incident-choice data-live { (choice(&incident, task.as_ref())) }
        }
        section #incident-story data-live { (story(&incident.events)) }
        section #incident-notifications data-live { (notices(notifications)) }
    };
    let page = page_for(
        &app,
        &session,
        &title,
        Some(Section::Incidents),
        Live::Incidents,
    );
    Ok(flash::answer(layout::shell(&page, content), &taken))
}

fn head(i: &Incident) -> Markup {
    html! {
        div.title-row {
            h1 { "Incident: " (i.monitor) " " (state_badge(i.state)) }
        }
        p.task-id { code { (i.id) } }
        @if let Some(reason) = &i.reason {
            p.reason { (reason) }
        }
    }
}

/// The Approve and Deny buttons of a risky action that waits.
fn approval(session: &Session, i: &Incident) -> Markup {
    let action = i
        .choice
        .as_ref()
        .map_or("the action", |c| c.action.as_str());
    html! {
        section #incident-approval .card {
            h2 { "Approval" }
            p {
                "A risky action waits for an operator: " code { (action) }
                @if let Some(c) = &i.choice {
                    @if !c.params.is_empty() {
                        " with "
                        @for (n, (k, v)) in c.params.iter().enumerate() {
                            @if n > 0 { ", " }
                            code { (k) "=" (v) }
                        }
                    }
                }
                "."
                @if let Some(at) = i.approval_expires_at {
                    " Unless approved by " (layout::time(at)) ", it is not run and the incident escalates."
                }
            }
            div.actions {
                (layout::post_button(session, &format!("/incidents/{}/approve", i.id),
                    "Approve", "primary",
                    Some(&format!("Run {action} now?"))))
                form.inline method="post" action={ "/incidents/" (i.id) "/deny" } {
                    (layout::csrf_field(session))
                    label { "Reason "
                        input type="text" name="reason" maxlength="500" placeholder="optional";
                    }
                    button type="submit" class="danger" { "Deny" }
                }
            }
        }
    }
}

fn facts(i: &Incident) -> Markup {
    html! {
        h2 { "Facts" }
        dl.facts {
            dt { "State" } dd { (state_badge(i.state)) }
            dt { "Monitor" } dd {
                (i.monitor)
                @if let Some(url) = i.url.as_deref().filter(|u| is_web_link(u)) {
                    " " a href=(url) rel="noopener noreferrer" target="_blank" { "open the monitor" }
                }
            }
            dt { "Source" } dd { code { (i.source) } }
            dt { "Key" } dd { code { (i.key) } }
            dt { "Target" } dd {
                @match &i.target { Some(t) => code { (t) }, None => span.muted { "none matched" } }
            }
            dt { "Labels" } dd { (layout::labels(&i.labels)) }
            dt { "Alerts" } dd { (i.alerts) }
            dt { "Steps" } dd { (i.steps) " of at most " (i.max_steps) }
            dt { "Repairs in the last hour" } dd {
                @if i.target.is_some() {
                    (i.repairs_last_hour) " of at most " (i.max_repairs_per_hour) " for its target"
                } @else { span.muted { "—" } }
            }
            dt { "Opened" } dd { (layout::time(i.opened_at)) }
            dt { "Updated" } dd { (layout::time(i.updated_at)) }
            @if let Some(at) = i.closed_at { dt { "Closed" } dd { (layout::time(at)) } }
            @if let Some(at) = i.approval_expires_at {
                dt { "Approval expires" } dd { (layout::time(at)) }
            }
            @if let Some(at) = i.due_at { dt { "Looked at next" } dd { (layout::time(at)) } }
        }
        h3 { "First alert" }
        @if i.message.is_empty() {
            p.muted { "(no message)" }
        } @else {
            pre.message { (i.message) }
        }
    }
}

/// Only http(s) links are made clickable (the alert parsers keep no others; this holds even
/// if one ever did).
fn is_web_link(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn params(c: &muster_api::RepairChoice) -> Markup {
    let items: Vec<String> = c.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    layout::chips(&items)
}

fn choice(i: &Incident, task: Option<&Task>) -> Markup {
    html! {
        h2 { "Repair" }
        @if let Some(c) = &i.choice {
            dl.facts {
                dt { "Action" } dd { code { (c.action) } }
                dt { "Parameters" } dd { (params(c)) }
                dt { "Risky" } dd {
                    @if c.risky { span.badge.paused { "risky" } " runs only once approved" }
                    @else { "no" }
                }
                dt { "Chosen by" } dd {
                    @match c.by { ChoiceBy::Model => "the model", ChoiceBy::Runbook => "the runbook" }
                }
            }
            @if let Some(reasoning) = &c.reasoning {
                h3 { @if c.by == ChoiceBy::Model { "The model's reasoning" } @else { "Why" } }
                pre.message.reasoning { (reasoning) }
            }
        } @else {
            p.empty { "No action is chosen." }
        }
        @if let Some(task_id) = i.task_id {
            dl.facts {
                dt { "Repair task" } dd.step {
                    (layout::task_link(task_id, task.map_or("action", |t| t.kind.as_str())))
                    @if let Some(t) = task { " " (layout::task_state(t.state)) }
                    @else { " " span.muted { "(pruned)" } }
                }
            }
        }
    }
}

fn story(events: &[IncidentEvent]) -> Markup {
    html! {
        h2 { "Story" }
        @if events.is_empty() {
            p.empty { "Nothing happened yet." }
        } @else {
            ol.story {
                @for e in events {
                    li data-kind=(e.kind) {
                        div.story-head {
                            (layout::time(e.at)) " "
                            span class={ "badge event-" (e.kind) } { (e.kind) } " "
                            span.muted { (e.actor) }
                        }
                        p.message { (e.message) }
                        @if !e.data.is_null() {
                            details {
                                summary { "Details" }
                                (layout::json_block(&e.data))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn notices(notifications: &[Notification]) -> Markup {
    html! {
        h2 { "Notifications" }
        @if notifications.is_empty() {
            p.empty { "No notification about this incident." }
        } @else {
            div.table-scroll {
                table.notifications {
                    thead { tr { th { "When" } th { "Channel" } th { "Event" } th { "Title" } th { "State" } } }
                    tbody {
                        @for n in notifications {
                            tr {
                                td { (layout::time(n.created_at)) }
                                td { a href={ "/notifications?channel=" (super::percent_encode(&n.channel)) } { (n.channel) } }
                                td { code { (n.event) } }
                                td { (n.title) }
                                td {
                                    span class={ "badge notification-" (n.state.as_str()) } { (n.state.as_str()) }
                                    @if let Some(error) = &n.error { br; span.error-text { (error) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn state_badge(state: IncidentState) -> Markup {
    html! { span class={ "badge incident-" (state.as_str()) } { (state.as_str()) } }
}

/// `POST /incidents/{id}/approve`: back to the incident, with what the approval did.
pub(super) async fn approve(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = record_id("id", "incident", &id)?;
    let incident = incidents::approve(&app, id, Actor::operator(Via::Ui)).await?;
    app.repairer_wake.notify_one();
    Ok(flash::redirect(
        &format!("/incidents/{id}"),
        &session,
        &headers,
        &approved_message(&incident),
    ))
}

fn approved_message(i: &Incident) -> String {
    let action = i
        .choice
        .as_ref()
        .map_or("the action", |c| c.action.as_str());
    let reason = i.reason.as_deref().unwrap_or("");
    match i.state {
        IncidentState::Repairing => format!("Approved {action}: its repair task is submitted."),
        IncidentState::Escalated => format!("Approved, but nothing ran: {reason}"),
        _ => format!("Approved, but held: {reason}"),
    }
}

/// The deny form: why, optionally.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct DenyForm {
    reason: String,
}

/// `POST /incidents/{id}/deny`: back to the incident, escalated.
pub(super) async fn deny(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DenyForm>,
) -> Result<Response, UiError> {
    let id = record_id("id", "incident", &id)?;
    let reason = Some(form.reason).filter(|r| !r.trim().is_empty());
    let incident = incidents::deny(&app, id, Actor::operator(Via::Ui), reason).await?;
    let action = incident
        .choice
        .as_ref()
        .map_or("the action", |c| c.action.as_str());
    Ok(flash::redirect(
        &format!("/incidents/{id}"),
        &session,
        &headers,
        &format!("Denied {action}: nothing ran, and the incident is escalated."),
    ))
}

/// The pause form: which target (empty: all of self-repair), and whether to pause (`true`) or
/// resume it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PauseForm {
    target: String,
    paused: String,
}

/// `POST /incidents/pause`: back to the list, with what the pause or resume did.
pub(super) async fn pause(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<PauseForm>,
) -> Result<Response, UiError> {
    let paused = match form.paused.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(
                ApiError::invalid("paused", format!("{other:?} is not true or false")).into(),
            );
        }
    };
    let target = Some(form.target).filter(|t| !t.trim().is_empty());
    let answer = incidents::set_paused(&app, target, paused, Actor::operator(Via::Ui)).await?;
    Ok(flash::redirect(
        "/incidents",
        &session,
        &headers,
        &pause_message(&answer),
    ))
}

fn pause_message(answer: &RepairPauseAnswer) -> String {
    let (what, subject) = match &answer.target {
        Some(t) => (format!("self-repair of target {t}"), format!("Target {t}")),
        None => ("all of self-repair".to_owned(), "Self-repair".to_owned()),
    };
    match (answer.paused, answer.changed) {
        (true, true) => format!(
            "Paused {what}: alerts are still recorded and decided; no repair runs until it is resumed."
        ),
        (true, false) => format!("{subject} was paused already."),
        (false, true) => format!("Resumed {what}."),
        (false, false) => format!("{subject} was not paused."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_links_are_links() {
        assert!(is_web_link("https://kuma.local/dashboard/3"));
        assert!(is_web_link("HTTP://kuma.local/"));
        assert!(!is_web_link("javascript:alert(1)"));
        assert!(!is_web_link("data:text/html,<script>"));
        assert!(!is_web_link("//evil.example"));
        assert!(!is_web_link("http"));
    }

    #[test]
    fn a_pause_answer_says_what_changed() {
        let answer = |target: Option<&str>, paused, changed| RepairPauseAnswer {
            target: target.map(str::to_owned),
            paused,
            changed,
        };
        assert!(pause_message(&answer(None, true, true)).starts_with("Paused all of self-repair:"));
        assert_eq!(
            pause_message(&answer(Some("nas"), true, false)),
            "Target nas was paused already."
        );
        assert_eq!(
            pause_message(&answer(Some("nas"), false, true)),
            "Resumed self-repair of target nas."
        );
        assert_eq!(
            pause_message(&answer(None, false, false)),
            "Self-repair was not paused."
        );
    }
}
