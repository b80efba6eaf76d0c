//! Schedules over HTTP: `GET|POST /api/v1/schedules`, `GET|DELETE /api/v1/schedules/{name}`,
//! `POST /api/v1/schedules/{name}/run|pause|resume`. Every change is audited by the verbs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_api::{
    CreateSchedule, Schedule, ScheduleDetail, ScheduleList, SchedulePauseAnswer, ScheduleRun,
};

use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::http::openapi::{AdminKey, Invalid, JsonBody};
use crate::scheduler;

#[utoipa::path(get, path = "/api/v1/schedules", operation_id = "list_schedules", tag = "schedules",
    responses(AdminKey, (status = 200, body = ScheduleList,
        description = "every schedule, the config file's first, each with its last and next firing")))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: scheduler::list(&app).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/schedules", operation_id = "create_schedule", tag = "schedules",
    request_body = CreateSchedule,
    responses(AdminKey, JsonBody, (status = 201, body = Schedule, description = "created; it first fires at its first instant after now"),
              (status = 409, body = muster_api::ErrorBody, description = "a schedule has this name (the config file's too)")))]
/// Creates a schedule kept in the database (audited).
pub(crate) async fn create(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(spec): ApiJson<CreateSchedule>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let schedule = scheduler::create(&app, spec, Actor::operator(Via::Api)).await?;
    Ok((StatusCode::CREATED, Json(schedule)))
}

#[utoipa::path(get, path = "/api/v1/schedules/{name}", operation_id = "show_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(AdminKey, (status = 200, body = ScheduleDetail, description = "the schedule and its latest firings, newest first"),
              (status = 404, body = muster_api::ErrorBody, description = "no such schedule")))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    Ok(Json(scheduler::get(&app, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/schedules/{name}", operation_id = "delete_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(AdminKey, (status = 204, description = "deleted, with its firings; their tasks stay"),
              (status = 404, body = muster_api::ErrorBody, description = "no schedule of this name was created through the API"),
              (status = 409, body = muster_api::ErrorBody, description = "the schedule is the config file's: change it there")))]
/// Deletes a schedule created through the API (audited).
pub(crate) async fn delete(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    scheduler::delete(&app, &name, Actor::operator(Via::Api)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/schedules/{name}/run", operation_id = "run_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(AdminKey, Invalid, (status = 201, body = ScheduleRun, description = "fired now (even while paused): the firing and its task"),
              (status = 404, body = muster_api::ErrorBody, description = "no such schedule")))]
/// Fires a schedule now (audited).
pub(crate) async fn run(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ScheduleRun>), ApiError> {
    let run = scheduler::run_now(&app, &name, Actor::operator(Via::Api)).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

#[utoipa::path(post, path = "/api/v1/schedules/{name}/pause", operation_id = "pause_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(AdminKey, (status = 200, body = SchedulePauseAnswer, description = "paused: its firings are skipped until it is resumed"),
              (status = 404, body = muster_api::ErrorBody, description = "no such schedule")))]
/// Pauses a schedule (audited).
pub(crate) async fn pause(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<Json<SchedulePauseAnswer>, ApiError> {
    Ok(Json(
        scheduler::set_paused(&app, &name, true, Actor::operator(Via::Api)).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/schedules/{name}/resume", operation_id = "resume_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(AdminKey, (status = 200, body = SchedulePauseAnswer, description = "resumed: it fires from its next instant; what came due while paused stays skipped"),
              (status = 404, body = muster_api::ErrorBody, description = "no such schedule")))]
/// Resumes a schedule (audited).
pub(crate) async fn resume(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<Json<SchedulePauseAnswer>, ApiError> {
    Ok(Json(
        scheduler::set_paused(&app, &name, false, Actor::operator(Via::Api)).await?,
    ))
}
