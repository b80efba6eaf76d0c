//! `POST /hooks/git/{source}`: a forge's push webhook. The source's secret verifies the raw
//! body before anything reads it; the forge's delivery id makes a redelivery answer the first
//! deployment. No API key: a forge cannot send one, and the signature is the proof.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use muster_api::{ErrorCode, HookAnswer};

use crate::app::AppState;
use crate::deployments::{self, Recorded, VerifiedPush};
use crate::error::ApiError;
use crate::gitops::forge::{self, HookEvent};
use crate::http::openapi::Public;

fn answer(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
) -> (StatusCode, Json<HookAnswer>) {
    (
        status,
        Json(HookAnswer {
            status: kind.into(),
            message: message.into(),
            deployment: None,
        }),
    )
}

#[utoipa::path(post, path = "/hooks/git/{source}", operation_id = "git_hook", tag = "gitops",
    security(()),
    params(("source" = String, Path, description = "a [[git.sources]] entry's name")),
    request_body(content = Object, content_type = "application/json",
        description = "the forge's push payload, signed as the forge signs (X-Gitea-Signature, X-Forgejo-Signature, X-Hub-Signature-256, X-Gitlab-Token)"),
    responses(Public,
        (status = 201, body = HookAnswer, description = "a new deployment"),
        (status = 200, body = HookAnswer, description = "a redelivery (the first deployment), a ping, or nothing to do"),
        (status = 400, body = muster_api::ErrorBody, description = "not a push, no delivery id, or a payload that cannot be read"),
        (status = 401, body = muster_api::ErrorBody, description = "a missing or wrong signature: nothing was read or changed"),
        (status = 404, body = muster_api::ErrorBody, description = "no source of that name"),
        (status = 413, body = muster_api::ErrorBody, description = "larger than BODY_LIMIT: raise it for forges that send large pushes"),
        (status = 415, body = muster_api::ErrorBody, description = "not sent as JSON")))]
pub(crate) async fn git_hook(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<HookAnswer>), ApiError> {
    let settings = app.settings();
    let Some(source) = settings.git.source(&name).cloned() else {
        return Err(ApiError::not_found(format!("git source {name:?}")));
    };
    let forge = source.forge;
    let metrics = &app.changes.metrics;
    if let Err(refused) = forge::verify(
        source.forge,
        source.secret.expose().as_bytes(),
        &headers,
        &body,
    ) {
        metrics.git_hook(&name, "refused");
        tracing::warn!(source = %name, "refused a git hook: {refused}");
        app.refused_hooks.record(&name, app.now_ms());
        return Err(ApiError::new(ErrorCode::Unauthorized, refused.to_string()));
    }
    // Gitea can send the payload form-encoded, and signs only the JSON inside: take JSON only.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        metrics.git_hook(&name, "invalid");
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the hook as application/json (the webhook's content type on the forge)",
        ));
    }
    match forge::event(forge, &headers) {
        HookEvent::Push => {}
        HookEvent::Ping => {
            metrics.git_hook(&name, "ping");
            return Ok(answer(
                StatusCode::OK,
                "pong",
                format!("source {name} is ready for pushes"),
            ));
        }
        other => {
            metrics.git_hook(&name, "invalid");
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "event {other} is not handled: muster deploys on push events; send only pushes to this hook"
                ),
            ));
        }
    }
    let Some(delivery) = forge::delivery_id(forge, &headers) else {
        metrics.git_hook(&name, "invalid");
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "the hook has no delivery id header: muster needs it to deploy each push once",
        ));
    };
    let push = forge::parse_push(forge, &body).map_err(|e| {
        metrics.git_hook(&name, "invalid");
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the push cannot be read: {e}"),
        )
    })?;
    if push.deleted {
        metrics.git_hook(&name, "nothing_to_do");
        return Ok(answer(
            StatusCode::OK,
            "nothing_to_do",
            format!("{} was deleted: nothing to deploy", push.git_ref),
        ));
    }
    let verified = VerifiedPush {
        summary: deployments::summarize(&source, &push).await,
        delivery,
        before: push.before.clone(),
        message: push.message.clone(),
    };
    Ok(match deployments::record_push(&app, verified).await? {
        Recorded::NothingToDo(plan) => {
            metrics.git_hook(&name, "nothing_to_do");
            let why: Vec<String> = plan
                .rules
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.rule,
                        r.why.as_deref().unwrap_or(r.outcome.as_str())
                    )
                })
                .collect();
            let message = if why.is_empty() {
                format!("nothing to do: no rule watches source {name}")
            } else {
                format!("nothing to do ({})", why.join("; "))
            };
            answer(StatusCode::OK, "nothing_to_do", message)
        }
        Recorded::Deployment {
            deployment,
            created,
        } => {
            metrics.git_hook(&name, if created { "deployed" } else { "duplicate" });
            let (status, kind, message) = if created {
                (
                    StatusCode::CREATED,
                    "deployed",
                    format!("deployment {} created", deployment.id),
                )
            } else {
                (
                    StatusCode::OK,
                    "duplicate",
                    format!("delivery already recorded as deployment {}", deployment.id),
                )
            };
            (
                status,
                Json(HookAnswer {
                    status: kind.into(),
                    message,
                    deployment: Some(*deployment),
                }),
            )
        }
    })
}
