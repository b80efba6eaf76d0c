//! Task routes: submit (one, or a batch), list, show, cancel, retry, and the agent's reports
//! (logs, complete, fail).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_api::{
    AppendLogs, CompleteTask, FailTask, LogsAccepted, SubmitBatch, SubmitResults, SubmitTask, Task,
    TaskList, TaskState,
};

use crate::app::AppState;
use crate::audit::Via;
use crate::auth::{AdminAuth, AgentAuth};
use crate::error::ApiError;
use crate::extract::{ApiJson, QueryPairs, filter_from_query, task_id};
use crate::http::openapi::{AdminKey, AgentKey, Invalid, JsonBody};
use crate::{operator, protocol};

#[utoipa::path(post, path = "/api/v1/tasks", operation_id = "submit_task", tag = "tasks", request_body = SubmitTask,
    responses(AdminKey, JsonBody,
              (status = 201, body = Task, description = "queued"),
              (status = 200, body = Task, description = "the idempotency key named an existing task")))]
pub(crate) async fn submit(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<SubmitTask>,
) -> Result<Response, ApiError> {
    let submitted = operator::submit(&app, req).await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(submitted.task)).into_response())
}

/// [`muster_api::SubmitBatch`] as it arrives: each task is read alone, so one malformed
/// submission is refused by itself (422 in its result) and the rest go on.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubmissions {
    tasks: Vec<serde_json::Value>,
}

#[utoipa::path(post, path = "/api/v1/tasks/batch", operation_id = "submit_batch", tag = "tasks", request_body = SubmitBatch,
    responses(AdminKey, JsonBody,
              (status = 200, body = SubmitResults, description = "one result per task, in order, each with the status \
                the single route would have answered: 201 queued, 200 its idempotency key named an existing task, \
                422 invalid (nothing stored); answered once every stored task is committed")))]
/// Many submissions in one request and one commit, each validated alone.
pub(crate) async fn submit_batch(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(batch): ApiJson<RawSubmissions>,
) -> Result<Json<SubmitResults>, ApiError> {
    let results = operator::submit_many(&app, batch.tasks).await?;
    Ok(Json(SubmitResults { results }))
}

#[utoipa::path(get, path = "/api/v1/tasks", operation_id = "list_tasks", tag = "tasks",
    params(("state" = Option<TaskState>, Query, description = "only tasks in this state"),
           ("kind" = Option<String>, Query, description = "only tasks of this kind"),
           ("agent_id" = Option<String>, Query, description = "only tasks of this agent"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 500, description = "page size, 1 to 500 (default 50)"),
           ("cursor" = Option<i64>, Query, description = "next_cursor of the previous page")),
    responses(AdminKey, Invalid, (status = 200, body = TaskList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
    query: QueryPairs,
) -> Result<Json<TaskList>, ApiError> {
    let page = app.store.tasks(filter_from_query(&query)?).await?;
    Ok(Json(TaskList {
        tasks: page.tasks,
        next_cursor: page.next_before.map(|seq| seq.to_string()),
    }))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", operation_id = "show_task", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "task id")),
    responses(AdminKey, Invalid,
              (status = 200, body = Task, description = "the task with every attempt and, while queued, why it waits"),
              (status = 404, body = muster_api::ErrorBody, description = "no such task")))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(operator::task(&app, task_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", operation_id = "cancel_task", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "task id")),
    responses(AdminKey, Invalid,
              (status = 200, body = Task, description = "cancelled, or (running) the agent was told to stop"),
              (status = 404, body = muster_api::ErrorBody, description = "no such task"),
              (status = 409, body = muster_api::ErrorBody, description = "already finished")))]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(operator::cancel(&app, task_id(&id)?, Via::Api).await?))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", operation_id = "retry_task", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "task id")),
    responses(AdminKey, Invalid,
              (status = 200, body = Task, description = "queued again"),
              (status = 404, body = muster_api::ErrorBody, description = "no such task"),
              (status = 409, body = muster_api::ErrorBody, description = "not failed or cancelled")))]
pub(crate) async fn retry(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(operator::retry(&app, task_id(&id)?, Via::Api).await?))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/logs", operation_id = "append_logs", tag = "tasks", request_body = AppendLogs,
    params(("id" = uuid::Uuid, Path, description = "task id")),
    responses(AgentKey, JsonBody,
              (status = 200, body = LogsAccepted),
              (status = 404, body = muster_api::ErrorBody, description = "no such task"),
              (status = 409, body = muster_api::ErrorBody, description = "the attempt is not current")))]
pub(crate) async fn append_logs(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(id): Path<String>,
    ApiJson(logs): ApiJson<AppendLogs>,
) -> Result<Json<LogsAccepted>, ApiError> {
    let accepted = protocol::append_logs(&app, task_id(&id)?, logs).await?;
    Ok(Json(LogsAccepted { accepted }))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/complete", operation_id = "complete_task", tag = "tasks", request_body = CompleteTask,
    params(("id" = uuid::Uuid, Path, description = "task id")),
    responses(AgentKey, JsonBody,
              (status = 200, body = Task),
              (status = 404, body = muster_api::ErrorBody, description = "no such task"),
              (status = 409, body = muster_api::ErrorBody, description = "the attempt is not current; nothing changed")))]
pub(crate) async fn complete(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CompleteTask>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(protocol::complete(&app, task_id(&id)?, req).await?))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/fail", operation_id = "fail_task", tag = "tasks", request_body = FailTask,
    params(("id" = uuid::Uuid, Path, description = "task id")),
    responses(AgentKey, JsonBody,
              (status = 200, body = Task, description = "queued for a retry, or failed for good"),
              (status = 404, body = muster_api::ErrorBody, description = "no such task"),
              (status = 409, body = muster_api::ErrorBody, description = "the attempt is not current; nothing changed")))]
pub(crate) async fn fail(
    State(app): State<AppState>,
    _: AgentAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<FailTask>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(protocol::fail(&app, task_id(&id)?, req).await?))
}
