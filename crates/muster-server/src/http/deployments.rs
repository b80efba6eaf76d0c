//! GitOps for operators: the history (`GET /api/v1/deployments[/{id}]`), redeploys, plans and
//! pauses.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_api::{
    Deployment, DeploymentList, DeploymentState, ErrorCode, GitPauseList, GitPlan, PauseAnswer,
    PauseRequest, PlanRequest,
};

use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::auth::AdminAuth;
use crate::deployments;
use crate::error::ApiError;
use crate::extract::{ApiJson, QueryPairs, record_id};
use crate::gitops::forge;
use crate::http::openapi::{AdminKey, Invalid, JsonBody};
use crate::store::DeploymentFilter;

#[utoipa::path(get, path = "/api/v1/deployments", operation_id = "list_deployments", tag = "gitops",
    params(("repo" = Option<String>, Query, description = "only this repository (owner/name)"),
           ("source" = Option<String>, Query, description = "only this [[git.sources]] entry"),
           ("rule" = Option<String>, Query, description = "only deployments this [[git.rules]] entry matched"),
           ("state" = Option<muster_api::DeploymentState>, Query, description = "only deployments in this state"),
           ("before" = Option<uuid::Uuid>, Query, description = "only older ones: the id of a page's last deployment"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "page size, 1 to 200 (default 50)")),
    responses(AdminKey, Invalid, (status = 200, body = DeploymentList)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
    query: QueryPairs,
) -> Result<Json<DeploymentList>, ApiError> {
    let before = match query.get("before") {
        Some(text) => Some(record_id("before", "deployment", text)?),
        None => None,
    };
    let state = query.one_of("state", DeploymentState::ALL, |s| s.as_str())?;
    let filter = DeploymentFilter {
        repo: query.get("repo").map(str::to_owned),
        source: query.get("source").map(str::to_owned),
        rule: query.get("rule").map(str::to_owned),
        state,
        limit: query.parse::<usize>("limit")?.unwrap_or(50),
        before,
    };
    Ok(Json(DeploymentList {
        deployments: deployments::list(&app, filter).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}", operation_id = "show_deployment", tag = "gitops",
    params(("id" = uuid::Uuid, Path, description = "deployment id")),
    responses(AdminKey, Invalid, (status = 200, body = Deployment),
              (status = 404, body = muster_api::ErrorBody, description = "no such deployment")))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(
        app.store
            .deployment(record_id("id", "deployment", &id)?)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/gitops/plan", operation_id = "plan_push", tag = "gitops",
    request_body = PlanRequest,
    responses(AdminKey, JsonBody, (status = 200, body = GitPlan, description = "what the push would deploy, rule by rule, and why; nothing is deployed"),
              (status = 404, body = muster_api::ErrorBody, description = "no source of that name")))]
/// What a push would deploy, rule by rule, and why, without deploying anything.
pub(crate) async fn plan(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<PlanRequest>,
) -> Result<Json<GitPlan>, ApiError> {
    let source = app
        .settings()
        .git
        .source(&req.source)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("git source {:?}", req.source)))?;
    let payload = match (req.payload, req.delivery) {
        (Some(payload), None) => payload,
        (None, Some(delivery)) => {
            return Ok(Json(
                deployments::replan(&app, &source.name, &delivery).await?,
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "payload",
                "give either payload (a push as the forge sent it) or delivery (the id of a \
                 push the source recorded), not both or neither",
            ));
        }
    };
    let body = serde_json::to_vec(&payload)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let push = forge::parse_push(source.forge, &body).map_err(|e| {
        ApiError::invalid(
            "payload",
            format!("not a {} push: {e}", source.forge.title()),
        )
    })?;
    let summary = deployments::summarize(&source, &push).await;
    Ok(Json(deployments::preview(&app, &summary)))
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/redeploy", operation_id = "redeploy", tag = "gitops",
    params(("id" = uuid::Uuid, Path, description = "the deployment to run again")),
    responses(AdminKey, Invalid, (status = 201, body = Deployment, description = "the new deployment, its tasks submitted (or held by a pause)"),
              (status = 404, body = muster_api::ErrorBody, description = "no such deployment"),
              (status = 409, body = muster_api::ErrorBody, description = "the deployment submitted no task")))]
/// Runs a past deployment's tasks again, at its commit, as a new deployment (audited).
pub(crate) async fn redeploy(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let id = record_id("id", "deployment", &id)?;
    let deployment = deployments::redeploy(&app, id, Actor::operator(Via::Api)).await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

#[utoipa::path(get, path = "/api/v1/gitops/pauses", operation_id = "list_gitops_pauses", tag = "gitops",
    responses(AdminKey, (status = 200, body = GitPauseList)))]
/// The paused sources and rules.
pub(crate) async fn pauses(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<Json<GitPauseList>, ApiError> {
    Ok(Json(GitPauseList {
        pauses: app.store.gitops_pauses().await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/gitops/pause", operation_id = "pause_gitops", tag = "gitops",
    request_body = PauseRequest,
    responses(AdminKey, JsonBody, (status = 200, body = PauseAnswer, description = "paused: pushes are recorded and planned, their tasks wait"),
              (status = 404, body = muster_api::ErrorBody, description = "no source or rule of that name")))]
/// Pauses a source or rule (audited).
pub(crate) async fn pause(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<PauseRequest>,
) -> Result<Json<PauseAnswer>, ApiError> {
    let answer =
        deployments::set_paused(&app, req.scope, req.name, true, Actor::operator(Via::Api)).await?;
    Ok(Json(answer))
}

#[utoipa::path(post, path = "/api/v1/gitops/resume", operation_id = "resume_gitops", tag = "gitops",
    request_body = PauseRequest,
    responses(AdminKey, JsonBody, (status = 200, body = PauseAnswer, description = "resumed: the tasks it held are submitted, oldest push first")))]
/// Resumes a source or rule (audited) and submits what its pause held.
pub(crate) async fn resume(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<PauseRequest>,
) -> Result<Json<PauseAnswer>, ApiError> {
    let answer =
        deployments::set_paused(&app, req.scope, req.name, false, Actor::operator(Via::Api))
            .await?;
    Ok(Json(answer))
}
