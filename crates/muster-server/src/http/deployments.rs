//! The GitOps history: `GET /api/v1/deployments` and `GET /api/v1/deployments/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use muster_api::{Deployment, DeploymentList, ErrorCode, GitPlan, PlanRequest};

use crate::app::AppState;
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
    let filter = DeploymentFilter {
        repo: query.get("repo").map(str::to_owned),
        source: query.get("source").map(str::to_owned),
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
    let body = serde_json::to_vec(&req.payload)
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
