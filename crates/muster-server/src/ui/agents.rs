//! The agents page: each agent's capabilities, labels, version, load, last heartbeat and
//! current tasks, with drain and remove buttons.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};
use muster_api::{Agent, AgentStatus, Task, TaskState};

use super::auth::see_other;
use super::layout::{self, Live, Section};
use super::{UiError, page_for, percent_encode};
use crate::app::AppState;
use crate::audit::Via;
use crate::operator;
use crate::sessions::Session;
use crate::store::TaskFilter;

/// Active tasks read for the page; an agent runs at most its `max_concurrency`, so this covers
/// any homelab's fleet many times over.
const ACTIVE_LIMIT: usize = 500;

/// Assigned and running tasks by agent.
async fn active_tasks(app: &AppState) -> Result<BTreeMap<String, Vec<Task>>, UiError> {
    let mut by_agent: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for state in [TaskState::Running, TaskState::Assigned] {
        let page = app
            .store
            .tasks(TaskFilter {
                state: Some(state),
                limit: ACTIVE_LIMIT,
                ..TaskFilter::default()
            })
            .await?;
        for task in page.tasks {
            if let Some(agent) = task.agent_id.clone() {
                by_agent.entry(agent).or_default().push(task);
            }
        }
    }
    Ok(by_agent)
}

/// `GET /agents`.
pub(super) async fn page(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
) -> Result<Markup, UiError> {
    let agents = operator::agents(&app).await?;
    let active = active_tasks(&app).await?;
    let content = html! {
        h1 { "Agents" }
        div #agents data-live {
            @if agents.is_empty() {
                p.empty { "No agent has registered yet." }
            } @else {
                div.cards {
                    @for agent in &agents {
                        (card(&session, agent, active.get(&agent.agent_id).map_or(&[][..], Vec::as_slice)))
                    }
                }
            }
        }
    };
    let page = page_for(
        &app,
        &session,
        "Agents",
        Some(Section::Agents),
        Live::Everything,
    );
    Ok(layout::shell(&page, content))
}

fn card(session: &Session, agent: &Agent, tasks: &[Task]) -> Markup {
    let encoded = percent_encode(&agent.agent_id);
    html! {
        article.card.agent #{ "agent-" (agent.agent_id) } data-agent=(agent.agent_id) {
            header.card-head {
                h2 { (agent.agent_id) }
                (layout::agent_status(agent.status))
            }
            dl.facts {
                dt { "Host" } dd { (agent.host) @if let Some(port) = agent.port { ":" (port) } }
                dt { "Version" } dd { (agent.version.as_deref().unwrap_or("—")) }
                dt { "Capabilities" } dd { (layout::chips(&agent.capabilities)) }
                dt { "Labels" } dd { (layout::labels(&agent.labels)) }
                dt { "Load" } dd.loads { (layout::agent_load(agent)) }
                dt { "Tasks" } dd { (agent.active_tasks) " of " (agent.max_concurrency) }
                dt { "Last heartbeat" } dd { @match agent.last_heartbeat_at {
                    Some(at) => (layout::time_ago(at)),
                    None => span.muted { "not since the server started" },
                } }
                dt { "Registered" } dd { (layout::time(agent.registered_at)) }
            }
            @if !tasks.is_empty() {
                h3 { "Current tasks" }
                ul.current-tasks {
                    @for task in tasks {
                        li { (layout::task_link(task.id, &task.kind)) " " (layout::task_state(task.state)) }
                    }
                }
            }
            footer.card-actions {
                @if agent.drained_by.is_some() {
                    (layout::post_button(session, &format!("/agents/{encoded}/undrain"), "Undrain", "", None))
                } @else if agent.status != AgentStatus::Offline {
                    (layout::post_button(session, &format!("/agents/{encoded}/drain"), "Drain", "", None))
                }
                (layout::post_button(session, &format!("/agents/{encoded}/remove"), "Remove", "danger",
                    Some("Remove this agent? Its tasks go back to the queue.")))
                a href={ "/tasks?agent_id=" (encoded) } { "Its tasks" }
            }
        }
    }
}

/// `POST /agents/{id}/drain`.
pub(super) async fn drain(
    State(app): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Response, UiError> {
    operator::drain(&app, &agent_id, Via::Ui).await?;
    Ok(see_other("/agents"))
}

/// `POST /agents/{id}/undrain`.
pub(super) async fn undrain(
    State(app): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Response, UiError> {
    operator::undrain(&app, &agent_id, Via::Ui).await?;
    Ok(see_other("/agents"))
}

/// `POST /agents/{id}/remove`.
pub(super) async fn remove(
    State(app): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Response, UiError> {
    operator::remove(&app, &agent_id, Via::Ui).await?;
    Ok(see_other("/agents"))
}
