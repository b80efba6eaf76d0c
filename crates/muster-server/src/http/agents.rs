//! Agent routes: register, heartbeat, the long-poll claim, and the registry's admin views.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_api::{
    Agent, AgentList, AgentStatus, CANCEL_HEADER, ErrorCode, Event, Heartbeat, HeartbeatAck,
    RegisterAgent,
};

use super::{AdminAuth, AgentAuth, ApiJson, AppState, QueryPairs};
use crate::dispatch::{DispatchEvent, agent_event};
use crate::error::ApiError;
use crate::operator;

/// Longest long-poll a client may ask for, in seconds.
const MAX_WAIT_S: u64 = 120;

fn validate_registration(reg: &RegisterAgent) -> Result<(), ApiError> {
    let id = reg.agent_id.trim();
    if id.is_empty() || id.len() > 200 {
        return Err(ApiError::invalid("agent_id", "must be 1 to 200 characters"));
    }
    if id.contains('/') || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "agent_id",
            "must not contain '/' or control characters",
        ));
    }
    if let Some(n) = reg.max_concurrency
        && !(1..=10_000).contains(&n)
    {
        return Err(ApiError::invalid(
            "max_concurrency",
            "must be between 1 and 10000",
        ));
    }
    if let Some(i) = reg.capabilities.iter().position(|c| c.trim().is_empty()) {
        return Err(ApiError::invalid(
            &format!("capabilities[{i}]"),
            "must not be empty",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents", request_body = RegisterAgent,
    responses((status = 201, body = Agent, description = "registered"),
              (status = 200, body = Agent, description = "re-registered, updated"),
              (status = 422, body = muster_api::ErrorBody)))]
pub(crate) async fn register(
    State(app): State<AppState>,
    _: AgentAuth,
    ApiJson(reg): ApiJson<RegisterAgent>,
) -> Result<Response, ApiError> {
    validate_registration(&reg)?;
    let now = app.now_ms();
    let (mut agent, created) = app.store.register_agent(reg, now).await?;
    app.registry
        .upsert(&agent.agent_id, AgentStatus::Online, now, true);
    // Published before the dispatcher hears of it, so the feed never shows a task assigned to
    // an agent it has not seen register.
    app.events.publish(Event::Agent {
        agent_id: agent.agent_id.clone(),
        status: Some(AgentStatus::Online),
    });
    app.dispatcher.send(agent_event(&agent));
    app.registry.decorate(&mut agent);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(agent)).into_response())
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/heartbeat", tag = "agents", request_body = Heartbeat,
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = HeartbeatAck),
              (status = 404, body = muster_api::ErrorBody, description = "unknown agent: register again")))]
pub(crate) async fn heartbeat(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
    ApiJson(beat): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    for (field, value) in [
        ("cpu_percent", beat.cpu_percent),
        ("memory_percent", beat.memory_percent),
    ] {
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(ApiError::invalid(field, "must be between 0 and 100"));
        }
    }
    let now = app.now_ms();
    let Some(mut status) =
        app.registry
            .heartbeat(&agent_id, now, beat.cpu_percent, beat.memory_percent)
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("agent {agent_id} is not registered; register again"),
        ));
    };
    let lease_until = now + app.settings.lease.as_millis() as i64;
    let cancel = app
        .store
        .heartbeat(&agent_id, beat.running, lease_until)
        .await?;
    if status == AgentStatus::Offline {
        // It was given up on, but it is back: it may take work again (unless it was drained).
        let back = app.registry.status_on_return(&agent_id);
        app.store.set_agent_status(&agent_id, back, now).await?;
        app.agent_status_changed(&agent_id, back);
        status = back;
    }
    app.dispatcher.send(DispatchEvent::AgentLoad {
        agent_id,
        cpu_percent: beat.cpu_percent,
        memory_percent: beat.memory_percent,
    });
    Ok(Json(HeartbeatAck { status, cancel }))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/tasks/next", tag = "agents",
    params(("id" = String, Path, description = "agent id"),
           ("wait" = Option<u64>, Query, description = "seconds to wait for a task (long-poll), at most 120")),
    responses((status = 200, body = muster_api::Task, description = "the task, now running with a new attempt"),
              (status = 204, description = "nothing to do; the x-muster-cancel header may list tasks to stop"),
              (status = 404, body = muster_api::ErrorBody)))]
pub(crate) async fn claim(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let wait = query.parse::<u64>("wait")?.unwrap_or(0);
    if wait > MAX_WAIT_S {
        return Err(ApiError::invalid(
            "wait",
            format!("must be at most {MAX_WAIT_S} seconds"),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let not_registered = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("agent {agent_id} is not registered; register again"),
        )
    };
    let waker = app.registry.waker(&agent_id).ok_or_else(not_registered)?;
    let mut woken = false;
    loop {
        app.registry
            .touch(&agent_id, app.now_ms())
            .ok_or_else(not_registered)?;
        // Enabled before the claim so that an assignment landing in between still wakes us.
        let notified = waker.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = app.now_ms();
        let lease_until = now + app.settings.lease.as_millis() as i64;
        let claimed = app.store.claim(&agent_id, now, lease_until).await?;
        let mut headers = HeaderMap::new();
        if !claimed.cancel.is_empty() {
            let ids: Vec<String> = claimed.cancel.iter().map(|id| id.to_string()).collect();
            if let Ok(value) = HeaderValue::from_str(&ids.join(",")) {
                headers.insert(CANCEL_HEADER, value);
            }
        }
        if let Some(task) = claimed.task {
            app.metrics
                .transitions
                .with_label_values(&["running"])
                .inc();
            app.events.signal_task(task.id);
            app.events.publish(Event::Task {
                task_id: task.id,
                state: task.state,
                agent_id: task.agent_id.clone(),
                attempt: task.attempt,
            });
            return Ok((StatusCode::OK, headers, Json(task)).into_response());
        }
        // A wake-up without a task means a cancel for this agent: answer at once.
        if (woken && !claimed.cancel.is_empty()) || tokio::time::Instant::now() >= deadline {
            return Ok((StatusCode::NO_CONTENT, headers).into_response());
        }
        tokio::select! {
            _ = notified => woken = true,
            _ = tokio::time::sleep_until(deadline) => {}
            _ = app.shutdown.cancelled() => {
                return Ok((StatusCode::NO_CONTENT, headers).into_response());
            }
        }
    }
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, body = AgentList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList {
        agents: operator::agents(&app).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = Agent), (status = 404, body = muster_api::ErrorBody)))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(agent_id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(operator::agent(&app, &agent_id).await?))
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/drain", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = Agent, description = "draining: takes no new tasks until it registers again"),
              (status = 404, body = muster_api::ErrorBody)))]
/// Open to the agent key too: an agent that is shutting down drains itself so that no task is
/// assigned to it while the server still believes it alive.
pub(crate) async fn drain(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(operator::drain(&app, &agent_id).await?))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 204, description = "removed; its tasks went back to the queue"),
              (status = 404, body = muster_api::ErrorBody)))]
pub(crate) async fn remove(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator::remove(&app, &agent_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
