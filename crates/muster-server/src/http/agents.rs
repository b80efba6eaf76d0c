//! Agent routes: register, heartbeat, the long-poll claims (one task, or a batch), batch
//! reports, and the registry's admin views.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_api::{
    Agent, AgentList, CANCEL_HEADER, ClaimedTasks, DrainAgent, ErrorCode, Heartbeat, HeartbeatAck,
    RegisterAgent, ReportBatch, ReportResults,
};

use crate::app::AppState;
use crate::audit::Via;
use crate::auth::{AdminAuth, AgentAuth};
use crate::error::ApiError;
use crate::extract::{ApiJson, OptionalJson, QueryPairs};
use crate::http::openapi::{AdminKey, AgentKey, Invalid, JsonBody};
use crate::{operator, protocol};

#[utoipa::path(post, path = "/api/v1/agents/register", operation_id = "register_agent", tag = "agents", request_body = RegisterAgent,
    responses(AgentKey, JsonBody,
              (status = 201, body = Agent, description = "registered"),
              (status = 200, body = Agent, description = "re-registered, updated")))]
pub(crate) async fn register(
    State(app): State<AppState>,
    _: AgentAuth,
    ApiJson(reg): ApiJson<RegisterAgent>,
) -> Result<Response, ApiError> {
    let protocol::Registered { agent, created } = protocol::register(&app, reg).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(agent)).into_response())
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/heartbeat", operation_id = "heartbeat", tag = "agents", request_body = Heartbeat,
    params(("id" = String, Path, description = "agent id")),
    responses(AgentKey, JsonBody,
              (status = 200, body = HeartbeatAck),
              (status = 404, body = muster_api::ErrorBody, description = "unknown agent: register again")))]
pub(crate) async fn heartbeat(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
    ApiJson(beat): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    Ok(Json(protocol::heartbeat(&app, &agent_id, beat).await?))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/tasks/next", operation_id = "claim_task", tag = "agents",
    params(("id" = String, Path, description = "agent id"),
           ("wait" = Option<u64>, Query, minimum = 0, maximum = 120,
            description = "seconds to wait for a task (long-poll), 0 to 120 (default 0)")),
    responses(AgentKey, Invalid,
              (status = 200, body = muster_api::Task, description = "the task, now running with a new attempt",
               headers(("x-muster-cancel" = String, description = "comma-separated ids of running tasks to stop"))),
              (status = 204, description = "nothing to do",
               headers(("x-muster-cancel" = String, description = "comma-separated ids of running tasks to stop"))),
              (status = 404, body = muster_api::ErrorBody, description = "unknown agent: register again")))]
pub(crate) async fn claim(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let wait = query.parse::<u64>("wait")?.unwrap_or(0);
    let claim = protocol::claim(&app, &agent_id, wait).await?;
    let mut headers = HeaderMap::new();
    if !claim.cancel.is_empty() {
        let ids: Vec<String> = claim.cancel.iter().map(|id| id.to_string()).collect();
        if let Ok(value) = HeaderValue::from_str(&ids.join(",")) {
            headers.insert(CANCEL_HEADER, value);
        }
    }
    Ok(match claim.task {
        Some(task) => (StatusCode::OK, headers, Json(task)).into_response(),
        None => (StatusCode::NO_CONTENT, headers).into_response(),
    })
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/tasks/claim", operation_id = "claim_batch", tag = "agents",
    params(("id" = String, Path, description = "agent id"),
           ("wait" = Option<u64>, Query, minimum = 0, maximum = 120,
            description = "seconds to wait for a task (long-poll), 0 to 120 (default 0); the answer comes as soon as one is claimed"),
           ("max" = Option<u32>, Query, minimum = 1, maximum = 100,
            description = "most tasks to claim, 1 to 100 (default 1): the agent's free slots")),
    responses(AgentKey, Invalid,
              (status = 200, body = ClaimedTasks, description = "the tasks claimed, each now running with a new attempt \
                (none when nothing came within `wait`), and the running tasks to stop"),
              (status = 404, body = muster_api::ErrorBody, description = "unknown agent: register again")))]
/// The batch long-poll: `tasks/next` for up to `max` tasks at once, in one store write.
pub(crate) async fn claim_batch(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
    query: QueryPairs,
) -> Result<Json<ClaimedTasks>, ApiError> {
    let wait = query.parse::<u64>("wait")?.unwrap_or(0);
    let max = protocol::claim_max(query.parse::<u32>("max")?)?;
    Ok(Json(
        protocol::claim_up_to(&app, &agent_id, wait, max).await?,
    ))
}

/// [`muster_api::ReportBatch`] as it arrives: each report is read alone, so one malformed
/// report is refused by itself (422 in its result) and the rest are judged.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReports {
    reports: Vec<serde_json::Value>,
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/reports", operation_id = "report_batch", tag = "agents",
    request_body = ReportBatch,
    params(("id" = String, Path, description = "agent id")),
    responses(AgentKey, JsonBody,
              (status = 200, body = ReportResults, description = "one result per report, in order, each with the \
                status the single route (`complete`, `fail`) would have answered: 200 applied, 404 no such task, \
                409 the attempt is not current, 422 the report is invalid (those change nothing); \
                answered once every applied report is committed"),
              (status = 404, body = muster_api::ErrorBody, description = "unknown agent: register again")))]
/// Many attempts' ends in one request and one commit, each judged alone.
pub(crate) async fn reports(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(agent_id): Path<String>,
    ApiJson(batch): ApiJson<RawReports>,
) -> Result<Json<ReportResults>, ApiError> {
    let results = protocol::report_many(&app, &agent_id, batch.reports).await?;
    Ok(Json(ReportResults { results }))
}

#[utoipa::path(get, path = "/api/v1/agents", operation_id = "list_agents", tag = "agents",
    responses(AdminKey, (status = 200, body = AgentList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList {
        agents: operator::agents(&app).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", operation_id = "show_agent", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses(AdminKey,
              (status = 200, body = Agent),
              (status = 404, body = muster_api::ErrorBody, description = "no such agent")))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(agent_id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(operator::agent(&app, &agent_id).await?))
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/drain", operation_id = "drain_agent", tag = "agents",
    request_body(content = Option<DrainAgent>, description = "an agent draining itself names its current instance_id; an operator sends no body"),
    params(("id" = String, Path, description = "agent id")),
    responses(AgentKey, JsonBody,
              (status = 200, body = Agent, description = "draining: takes no new tasks"),
              (status = 403, body = muster_api::ErrorBody, description = "forbidden: the agent key without the \
                agent's current instance_id; a `Host` that names another site (on a loopback bind), or a \
                browser's cross-site request"),
              (status = 404, body = muster_api::ErrorBody, description = "no such agent"),
              (status = 409, body = muster_api::ErrorBody, description = "instance_id is not the agent's current process")))]
/// An operator's drain (admin key) lasts until undrained. An agent process may drain itself
/// with the agent key by naming its `instance_id`, so that nothing is assigned to it while
/// it leaves; no other holder of the agent key can drain it.
pub(crate) async fn drain(
    State(app): State<AppState>,
    auth: AgentAuth,
    Path(agent_id): Path<String>,
    OptionalJson(body): OptionalJson<DrainAgent>,
) -> Result<Json<Agent>, ApiError> {
    match body.and_then(|b| b.instance_id) {
        Some(instance_id) => Ok(Json(
            protocol::drain_self(&app, &agent_id, instance_id).await?,
        )),
        None if auth.admin => Ok(Json(operator::drain(&app, &agent_id, Via::Api).await?)),
        None => Err(ApiError::new(
            ErrorCode::Forbidden,
            "the agent key may drain only its own current process: send {\"instance_id\": …}; \
             an operator's drain needs API_KEY",
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/undrain", operation_id = "undrain_agent", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses(AdminKey,
              (status = 200, body = Agent, description = "takes tasks again"),
              (status = 404, body = muster_api::ErrorBody, description = "no such agent")))]
pub(crate) async fn undrain(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(agent_id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(operator::undrain(&app, &agent_id, Via::Api).await?))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", operation_id = "remove_agent", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses(AdminKey,
              (status = 204, description = "removed; its tasks went back to the queue"),
              (status = 404, body = muster_api::ErrorBody, description = "no such agent")))]
pub(crate) async fn remove(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    operator::remove(&app, &agent_id, Via::Api).await?;
    Ok(StatusCode::NO_CONTENT)
}
