//! The GitOps history: `GET /api/v1/deployments` and `GET /api/v1/deployments/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use muster_api::{Deployment, DeploymentList};

use crate::app::AppState;
use crate::auth::AdminAuth;
use crate::deployments;
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::http::openapi::{AdminKey, Invalid};
use crate::store::DeploymentFilter;

fn deployment_id(text: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| ApiError::invalid("id", format!("{text:?} is not a deployment id (UUID)")))
}

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
        Some(text) => Some(uuid::Uuid::parse_str(text).map_err(|_| {
            ApiError::invalid("before", format!("{text:?} is not a deployment id (UUID)"))
        })?),
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
    Ok(Json(app.store.deployment(deployment_id(&id)?).await?))
}
