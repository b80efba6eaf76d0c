//! Canaries over HTTP: the hook their runs call (`POST /hooks/canary/{name}`, signed by the
//! server itself), the list (`GET /api/v1/canaries`) and "run now"
//! (`POST /api/v1/canaries/{name}/run`).
//!
//! The hook is on the open network like the forges' and monitors' hooks, and is written for
//! whoever else calls it: the body is read only up to a few KiB, the signature is checked
//! over the raw bytes in constant time before anything parses them (and before the name is
//! looked up, so the names of canaries cannot be probed), and a request no run waits for (a
//! replay, or a run that ended) submits nothing. Refusals are counted and tallied per minute
//! for the audit log, as other hooks' are.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use muster_api::{CanaryHook, CanaryHookAnswer, CanaryList, CanaryRun, ErrorCode};

use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::auth::AdminAuth;
use crate::canaries::hook::MAX_BODY;
use crate::canary_runs;
use crate::error::ApiError;
use crate::http::openapi::{AdminKey, Public};

#[utoipa::path(post, path = "/hooks/canary/{name}", operation_id = "canary_hook", tag = "canaries",
    security(()),
    params(("name" = String, Path, description = "a [[canaries]] entry's name")),
    request_body(content = CanaryHook, content_type = "application/json",
        description = "sent by the server's own canary runs only, signed with a key only the server holds (X-Muster-Timestamp, X-Muster-Signature: sha256=<HMAC-SHA256 of timestamp.body>)"),
    responses(Public,
        (status = 201, body = CanaryHookAnswer, description = "the run's task was submitted"),
        (status = 400, body = muster_api::ErrorBody, description = "a signed body that cannot be read"),
        (status = 401, body = muster_api::ErrorBody, description = "unsigned, forged or stale: nothing was read or changed"),
        (status = 404, body = muster_api::ErrorBody, description = "no canary of that name"),
        (status = 409, body = muster_api::ErrorBody, description = "no run waits for this request (a replay, or a run that ended): nothing was submitted"),
        (status = 413, body = muster_api::ErrorBody, description = "larger than 4 KiB")))]
/// A canary run's hook: submits the run's task.
pub(crate) async fn hook(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CanaryHookAnswer>), ApiError> {
    let settings = app.settings();
    let canary = settings.canary(&name);
    // Labels and tally keys only from configured names, so no caller can add series.
    let label = canary.map_or("unknown", |c| c.name.as_str());
    let metrics = &app.changes.metrics;
    let refuse = |outcome: &str| {
        metrics.canary_hook(label, outcome);
        app.refused_hooks
            .record(&format!("canary:{label}"), app.now_ms());
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        refuse("refused");
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("a canary hook's body is at most {MAX_BODY} bytes"),
        ));
    };
    if let Err(refused) = app
        .canary_key
        .verify(&headers, &body, app.now_ms().div_euclid(1000))
    {
        refuse("refused");
        tracing::warn!(canary = %label, "refused a canary hook: {refused}");
        return Err(ApiError::new(ErrorCode::Unauthorized, refused.to_string()));
    }
    let Some(canary) = canary else {
        metrics.canary_hook(label, "invalid");
        return Err(ApiError::not_found(format!("canary {name:?}")));
    };
    let hook: CanaryHook = serde_json::from_slice(&body).map_err(|e| {
        metrics.canary_hook(label, "invalid");
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the canary hook's body cannot be read: {e}"),
        )
    })?;
    match canary_runs::hooked(&app, canary, hook).await {
        Ok(answer) => {
            metrics.canary_hook(label, "accepted");
            Ok((StatusCode::CREATED, Json(answer)))
        }
        Err(err) if err.code == ErrorCode::Conflict => {
            refuse("replayed");
            tracing::warn!(canary = %label, "refused a canary hook: {}", err.message);
            Err(err)
        }
        Err(err) => {
            metrics.canary_hook(label, "invalid");
            Err(err)
        }
    }
}

#[utoipa::path(get, path = "/api/v1/canaries", operation_id = "list_canaries", tag = "canaries",
    responses(AdminKey, (status = 200, body = CanaryList, description = "every [[canaries]] entry with its run in flight, its last verdict and its newest runs")))]
/// The canaries and their runs.
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<Json<CanaryList>, ApiError> {
    Ok(Json(CanaryList {
        canaries: canary_runs::list(&app).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/canaries/{name}/run", operation_id = "run_canary", tag = "canaries",
    params(("name" = String, Path, description = "a [[canaries]] entry's name")),
    responses(AdminKey,
        (status = 202, body = CanaryRun, description = "the run started; GET /api/v1/canaries shows its verdict"),
        (status = 404, body = muster_api::ErrorBody, description = "no canary of that name"),
        (status = 409, body = muster_api::ErrorBody, description = "a run of this canary is in flight")))]
/// Runs a canary now, outside its cron (audited).
pub(crate) async fn run(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<CanaryRun>), ApiError> {
    let run = canary_runs::run_now(&app, &name, Actor::operator(Via::Api)).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}
