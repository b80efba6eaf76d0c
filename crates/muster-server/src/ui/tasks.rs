//! The task list (filters and cursor paging) and the task page (payload, attempts, result,
//! the assignment's candidate scores, live logs, cancel and retry).

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};
use muster_api::{Assignment, LogLine, Task, TaskState};

use super::auth::see_other;
use super::layout::{self, Live, Section};
use super::{UiError, page_for, percent_encode};
use crate::app::AppState;
use crate::audit::Via;
use crate::extract::{QueryPairs, filter_from_query, task_id};
use crate::operator;
use crate::sessions::Session;

/// Log lines rendered with the page; the script follows on from the last of them.
const FIRST_LOG_LINES: usize = 1000;

/// `GET /tasks?state=&kind=&agent_id=&cursor=`.
pub(super) async fn list(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    query: QueryPairs,
) -> Result<Markup, UiError> {
    let filter = filter_from_query(&query)?;
    let state = filter.state;
    let kind = filter.kind.clone().unwrap_or_default();
    let agent = filter.agent_id.clone().unwrap_or_default();
    let paged = filter.before_seq.is_some();
    let page_of_tasks = app.store.tasks(filter).await?;
    let agents = operator::agents(&app).await?;
    let mut filters = Vec::new();
    if let Some(state) = state {
        filters.push(format!("state={}", state.as_str()));
    }
    if !kind.is_empty() {
        filters.push(format!("kind={}", percent_encode(&kind)));
    }
    if !agent.is_empty() {
        filters.push(format!("agent_id={}", percent_encode(&agent)));
    }
    let filtered_url = |extra: Option<String>| {
        let mut parts = filters.clone();
        parts.extend(extra);
        if parts.is_empty() {
            "/tasks".to_owned()
        } else {
            format!("/tasks?{}", parts.join("&"))
        }
    };
    let content = html! {
        div.title-row {
            h1 { "Tasks" }
            a.button.primary href="/tasks/new" { "Submit a task" }
        }
        form.filters method="get" action="/tasks" {
            label { "State"
                select name="state" {
                    option value="" selected[state.is_none()] { "any" }
                    @for s in TaskState::ALL {
                        option value=(s.as_str()) selected[state == Some(*s)] { (s.as_str()) }
                    }
                }
            }
            label { "Kind" input type="text" name="kind" value=(kind) placeholder="any"; }
            label { "Agent"
                input type="text" name="agent_id" value=(agent) placeholder="any" list="agent-ids";
            }
            datalist #agent-ids { @for a in &agents { option value=(a.agent_id) {} } }
            button type="submit" { "Filter" }
            @if !filters.is_empty() { a href="/tasks" { "Clear" } }
        }
        div #task-list data-live {
            @if page_of_tasks.tasks.is_empty() {
                p.empty { "No tasks" @if !filters.is_empty() { " match these filters" } "." }
            } @else {
                div.table-scroll {
                    table.tasks {
                        thead { tr {
                            th { "Task" } th { "State" } th { "Agent" } th.num { "Attempt" }
                            th.num { "Priority" } th { "Created" } th { "Updated" }
                        } }
                        tbody {
                            @for task in &page_of_tasks.tasks {
                                tr {
                                    td { (layout::task_link(task.id, &task.kind)) }
                                    td { (layout::task_state(task.state)) }
                                    td { @match &task.agent_id { Some(a) => (a), None => span.muted { "—" } } }
                                    td.num { (task.attempt) }
                                    td.num { (task.priority) }
                                    td { (layout::time(task.created_at)) }
                                    td { (layout::time_ago(task.updated_at)) }
                                }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if paged { a href=(filtered_url(None)) { "← Newest" } }
                @if let Some(next) = page_of_tasks.next_before {
                    a href=(filtered_url(Some(format!("cursor={next}")))) { "Older →" }
                }
            }
        }
    };
    let page = page_for(&app, &session, "Tasks", Some(Section::Tasks), Live::Tasks);
    Ok(layout::shell(&page, content))
}

/// `GET /tasks/{id}`.
pub(super) async fn show(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Markup, UiError> {
    let id = task_id(&id)?;
    let task = operator::task(&app, id).await?;
    let lines = app.store.logs(id, 0, FIRST_LOG_LINES).await?;
    let after = lines.last().map_or(0, |l| l.id);
    let title = format!("{} {}", task.kind, layout::short_id(task.id));
    let content = html! {
        div #task-head data-live { (head(&session, &task)) }
        div.columns {
            div {
                div #task-facts data-live { (facts(&task)) }
                section {
                    h2 { "Payload" }
                    (layout::json_block(&task.payload))
                }
            }
            div #task-outcome data-live { (outcome(&task)) }
        }
        section.logs {
            div.title-row {
                h2 { "Logs" }
                span #log-status .muted { @if task.state.is_final() { "" } @else { "following live" } }
            }
            ol #log .log data-follow={ "/api/v1/tasks/" (task.id) "/logs" } data-after=(after) {
                @for line in &lines { (log_line(line)) }
            }
            @if lines.is_empty() {
                p #log-empty .muted { @if task.state.is_final() { "No output." } @else { "No output yet." } }
            }
        }
    };
    let page = page_for(
        &app,
        &session,
        &title,
        Some(Section::Tasks),
        Live::Task(task.id),
    );
    Ok(layout::shell(&page, content))
}

fn head(session: &Session, task: &Task) -> Markup {
    html! {
        div.title-row {
            h1 { (task.kind) " " (layout::task_state(task.state)) }
            div.actions {
                @if !task.state.is_final() && !task.cancel_requested {
                    (layout::post_button(session, &format!("/tasks/{}/cancel", task.id), "Cancel", "danger", None))
                }
                @if matches!(task.state, TaskState::Failed | TaskState::Cancelled) {
                    (layout::post_button(session, &format!("/tasks/{}/retry", task.id), "Retry", "primary", None))
                }
            }
        }
        p.task-id { code { (task.id) } }
        @if let Some(why) = &task.waiting {
            p.notice.waiting { "Waiting: " (why) }
        }
        @if task.cancel_requested && !task.state.is_final() {
            p.notice { "Cancel requested: waiting for " (task.agent_id.as_deref().unwrap_or("the agent")) " to stop it." }
        }
    }
}

fn facts(task: &Task) -> Markup {
    html! {
        dl.facts {
            dt { "Agent" } dd { @match &task.agent_id {
                Some(a) => a href={ "/agents#agent-" (a) } { (a) },
                None => span.muted { "—" },
            } }
            dt { "Attempt" } dd { (task.attempt) " (up to " (task.max_retries) " retries)" }
            dt { "Priority" } dd { (task.priority) }
            dt { "Capabilities" } dd { (layout::chips(&task.capabilities)) }
            dt { "Labels" } dd { (layout::labels(&task.labels)) }
            @if let Some(key) = &task.lock_key { dt { "Lock key" } dd { code { (key) } } }
            @if let Some(key) = &task.idempotency_key { dt { "Idempotency key" } dd { code { (key) } } }
            @if let Some(t) = task.timeout_s { dt { "Timeout" } dd { (t) " s" } }
            @if let Some(at) = task.run_after { dt { "Not before" } dd { (layout::time(at)) } }
            dt { "Created" } dd { (layout::time(task.created_at)) }
            dt { "Updated" } dd { (layout::time(task.updated_at)) }
            dt { "Finished" } dd { (layout::optional_time(task.finished_at)) }
        }
    }
}

fn outcome(task: &Task) -> Markup {
    html! {
        @if let Some(error) = &task.error {
            section { h2 { "Error" } pre.error-text { (error) } }
        }
        @if let Some(result) = &task.result {
            section { h2 { "Result" } (layout::json_block(result)) }
        }
        @if let Some(usage) = &task.usage {
            section { h2 { "Usage" } (layout::json_block(usage)) }
        }
        section {
            h2 { "Attempts" }
            @if task.attempts.is_empty() {
                p.empty { "Not started yet." }
            } @else {
                div.table-scroll {
                    table.attempts {
                        thead { tr { th.num { "#" } th { "Agent" } th { "Outcome" } th { "Started" } th { "Ended" } } }
                        tbody {
                            @for attempt in &task.attempts {
                                tr {
                                    td.num { (attempt.attempt) }
                                    td.agent { (attempt.agent_id) }
                                    td { span class={ "badge outcome-" (attempt.outcome.as_str()) } { (attempt.outcome.as_str()) } }
                                    td { (layout::time(attempt.started_at)) }
                                    td { (layout::optional_time(attempt.ended_at)) }
                                }
                                @if let Some(error) = &attempt.error {
                                    tr.attempt-error { td {} td colspan="4" { (error) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(assignment) = &task.assignment {
            (candidates(assignment))
        }
    }
}

fn candidates(assignment: &Assignment) -> Markup {
    html! {
        section {
            h2 { "Why " (assignment.agent_id) }
            p.muted {
                "Assigned " (layout::time(assignment.assigned_at)) " to the best of "
                (assignment.candidates.len()) " eligible agent"
                @if assignment.candidates.len() != 1 { "s" }
                ": score = 0.4 × (1 − active/10) + 0.2 × (1 − (cpu + mem)/200)."
            }
            div.table-scroll {
                table.candidates {
                    thead { tr { th { "Agent" } th.num { "Score" } th.num { "Active" } th.num { "CPU %" } th.num { "Mem %" } } }
                    tbody {
                        @for c in &assignment.candidates {
                            tr.chosen[c.agent_id == assignment.agent_id] {
                                td { (c.agent_id) }
                                td.num { (format!("{:.3}", c.score)) }
                                td.num { (c.active) }
                                td.num { (format!("{:.0}", c.cpu_percent)) }
                                td.num { (format!("{:.0}", c.memory_percent)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One log line; the script builds the same structure for lines that arrive live.
fn log_line(line: &LogLine) -> Markup {
    html! {
        li class={ "line " (line.stream.as_str()) } data-id=(line.id) {
            (layout::time_of_day(line.ts))
            span.attempt { "#" (line.attempt) }
            span.text { (line.text) }
        }
    }
}

/// `POST /tasks/{id}/cancel`.
pub(super) async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let task = operator::cancel(&app, task_id(&id)?, Via::Ui).await?;
    Ok(see_other(&format!("/tasks/{}", task.id)))
}

/// `POST /tasks/{id}/retry`.
pub(super) async fn retry(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let task = operator::retry(&app, task_id(&id)?, Via::Ui).await?;
    Ok(see_other(&format!("/tasks/{}", task.id)))
}
