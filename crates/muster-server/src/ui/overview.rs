//! The overview: agents and their load, the queue by state, throughput, recent failures, and
//! each canary's last verdict.

use axum::Extension;
use axum::extract::State;
use maud::{Markup, html};
use muster_api::{Agent, AgentStatus, Canary, CanaryOutcome, TaskState};

use super::layout::{self, Live, Section};
use super::{UiError, page_for};
use crate::app::AppState;
use crate::sessions::Session;
use crate::store::TaskFilter;
use crate::{canary_runs, operator};

const MINUTE_MS: i64 = 60 * 1000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
/// Failures listed on the overview; the tasks page has the rest.
const RECENT_FAILURES: usize = 5;

fn count(counts: &[(TaskState, u64)], state: TaskState) -> u64 {
    counts
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

fn figure(label: &str, value: impl std::fmt::Display, href: Option<&str>, class: &str) -> Markup {
    html! {
        div class={ "figure " (class) } {
            @match href {
                Some(href) => a href=(href) { span.value { (value) } span.label { (label) } },
                None => { span.value { (value) } span.label { (label) } },
            }
        }
    }
}

/// `GET /`.
pub(super) async fn page(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
) -> Result<Markup, UiError> {
    let now = app.now_ms();
    let agents = operator::agents(&app).await?;
    let stats = app.store.stats(now).await?;
    let last_minute = app.store.finished_since(now - MINUTE_MS).await?;
    let last_hour = app.store.finished_since(now - HOUR_MS).await?;
    let failures = app
        .store
        .tasks(TaskFilter {
            state: Some(TaskState::Failed),
            limit: RECENT_FAILURES,
            ..TaskFilter::default()
        })
        .await?
        .tasks;
    let canaries = canary_runs::list(&app).await?;
    let agents_with = |status: AgentStatus| agents.iter().filter(|a| a.status == status).count();
    let by_state = |state: TaskState| count(&stats.by_state, state);
    let tasks_in = |state: TaskState| format!("/tasks?state={}", state.as_str());

    let content = html! {
        h1 { "Overview" }
        div #overview-figures data-live {
            section.figures aria-label="Agents" {
                h2 { "Agents" }
                div.figure-row {
                    (figure("online", agents_with(AgentStatus::Online), Some("/agents"), "good"))
                    (figure("draining", agents_with(AgentStatus::Draining), Some("/agents"), "warn"))
                    (figure("offline", agents_with(AgentStatus::Offline), Some("/agents"), "muted-figure"))
                }
            }
            section.figures aria-label="Queue" {
                h2 { "Queue" }
                div.figure-row {
                    @for state in [TaskState::Queued, TaskState::Assigned, TaskState::Running] {
                        (figure(state.as_str(), by_state(state), Some(&tasks_in(state)), ""))
                    }
                }
            }
            section.figures aria-label="Throughput" {
                h2 { "Throughput" }
                div.figure-row {
                    (figure("completed, last minute", count(&last_minute, TaskState::Completed), None, "good"))
                    (figure("completed, last hour", count(&last_hour, TaskState::Completed), None, "good"))
                    (figure("failed, last hour", count(&last_hour, TaskState::Failed),
                        Some(&tasks_in(TaskState::Failed)), "bad"))
                }
            }
        }
        div.columns.wide-first {
            section #overview-agents data-live {
                h2 { "Agents" }
                @if agents.is_empty() {
                    p.empty { "No agent has registered yet. Start one with "
                        code { "muster agent --config agent.toml" } "." }
                } @else {
                    div.table-scroll {
                        table {
                            thead { tr { th { "Agent" } th { "Status" } th { "Load" } th.num { "Tasks" } th { "Last heartbeat" } } }
                            tbody { @for agent in &agents { (agent_row(agent)) } }
                        }
                    }
                }
            }
            section #overview-failures data-live {
                h2 { "Recent failures" }
                @if failures.is_empty() {
                    p.empty { "No failed tasks." }
                } @else {
                    ul.failures {
                        @for task in &failures {
                            li {
                                div.failure-head {
                                    (layout::task_link(task.id, &task.kind))
                                    @if let Some(agent) = &task.agent_id { span.muted { " on " (agent) } }
                                    " " (layout::optional_time(task.finished_at))
                                }
                                @if let Some(error) = &task.error {
                                    div.failure-error { (error) }
                                }
                            }
                        }
                    }
                    p { a href=(tasks_in(TaskState::Failed)) { "All failed tasks →" } }
                }
            }
        }
        @if !canaries.is_empty() {
            section #canaries data-live {
                h2 { "Canaries" }
                div.table-scroll {
                    table {
                        thead { tr { th { "Canary" } th { "Last run" } th.num { "Latency" } th { "When" } th { "Reason" } } }
                        tbody { @for canary in &canaries { (canary_row(canary)) } }
                    }
                }
            }
        }
    };
    let page = page_for(
        &app,
        &session,
        "Overview",
        Some(Section::Overview),
        Live::Everything,
    );
    Ok(layout::shell(&page, content))
}

/// A canary's last verdict (passed or failed, its end-to-end latency, when, and why it
/// failed), and whether a run is in flight.
fn canary_row(canary: &Canary) -> Markup {
    html! {
        tr {
            td { (canary.name) br; span.muted { code { (canary.cron) } " " (canary.timezone) } }
            td {
                @match &canary.last {
                    Some(run) => span class={ "badge outcome-" (run.outcome.as_str()) } { (run.outcome.as_str()) },
                    None => span.muted { "not run yet" },
                }
                @if canary.running.is_some() {
                    " " span class={ "badge outcome-" (CanaryOutcome::Running.as_str()) } { "running" }
                }
            }
            td.num { @if let Some(ms) = canary.last.as_ref().and_then(|r| r.latency_ms) { (ms) " ms" } }
            td { @if let Some(run) = &canary.last { (layout::optional_time(run.finished_at)) } }
            td {
                @if let Some(run) = canary.last.as_ref().filter(|r| r.outcome == CanaryOutcome::Failed) {
                    @if let Some(leg) = run.leg { strong { (leg.as_str()) } ": " }
                    (run.reason.as_deref().unwrap_or_default())
                }
            }
        }
    }
}

fn agent_row(agent: &Agent) -> Markup {
    html! {
        tr {
            td.agent-name { a href={ "/agents#agent-" (agent.agent_id) } { (agent.agent_id) } }
            td { (layout::agent_status(agent.status)) }
            td.loads { (layout::agent_load(agent)) }
            td.num { (agent.active_tasks) " / " (agent.max_concurrency) }
            td { @match agent.last_heartbeat_at {
                Some(at) => (layout::time_ago(at)),
                None => span.muted { "not yet" },
            } }
        }
    }
}
