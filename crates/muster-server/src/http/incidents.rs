//! Self-repair over HTTP: the monitors' webhook (`POST /hooks/alerts/{source}`, with the
//! source's bearer token), the incidents (`GET /api/v1/incidents[/{id}]`), approvals
//! (`POST /api/v1/incidents/{id}/approve|deny`) and pauses (`/api/v1/repair…`).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, State};
use axum::http::{HeaderMap, Request, header};
use muster_api::{
    AlertAnswer, DenyRequest, ErrorCode, Incident, IncidentList, IncidentState, RepairPauseAnswer,
    RepairPauseRequest, RepairStatus,
};

use crate::alerts::{self, Received};
use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::auth::{AdminAuth, same_key};
use crate::error::ApiError;
use crate::extract::{ApiJson, OptionalJson, QueryPairs, record_id};
use crate::http::openapi::{AdminKey, Invalid, JsonBody, Public};
use crate::incidents;
use crate::repair::config::AlertKind;
use crate::store::{AlertEffect, IncidentFilter};

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The JSON an alert body holds: the body itself, or (Uptime Kuma's `form-data` content type)
/// its `data` field.
async fn json_of(kind: AlertKind, headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    match media_type(headers).as_str() {
        "application/json" => Ok(body),
        "multipart/form-data" if kind == AlertKind::UptimeKuma => {
            let mut request = Request::new(Body::from(body));
            if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                request
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, ct.clone());
            }
            let bad = |why: String| ApiError::new(ErrorCode::BadRequest, why);
            let mut form = Multipart::from_request(request, &())
                .await
                .map_err(|e| bad(format!("the form cannot be read: {e}")))?;
            while let Some(field) = form
                .next_field()
                .await
                .map_err(|e| bad(format!("the form cannot be read: {e}")))?
            {
                if field.name() == Some("data") {
                    return field
                        .bytes()
                        .await
                        .map_err(|e| bad(format!("the form's data field cannot be read: {e}")));
                }
            }
            Err(bad(
                "the form has no data field (Uptime Kuma sends its JSON there)".into(),
            ))
        }
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            match kind {
                AlertKind::UptimeKuma => {
                    "send the alert as application/json or multipart/form-data (the webhook's \
                     request body setting in Uptime Kuma)"
                }
                _ => "send the alert as application/json",
            },
        )),
    }
}

#[utoipa::path(post, path = "/hooks/alerts/{source}", operation_id = "alert_hook", tag = "repair",
    security(()),
    params(("source" = String, Path, description = "an [[alerts.sources]] entry's name")),
    request_body(content = Object, content_type = "application/json",
        description = "the monitor's webhook body: Uptime Kuma's (also as multipart/form-data, its `data` field), Alertmanager's version 4, or the generic form {monitor, status: firing|resolved, message?, key?, labels?, url?}; sent with `Authorization: Bearer <token>`, the token in the source's token_env"),
    responses(Public,
        (status = 200, body = AlertAnswer, description = "the alerts were recorded (or it was a test, or a state that changes nothing)"),
        (status = 400, body = muster_api::ErrorBody, description = "a body that cannot be read"),
        (status = 401, body = muster_api::ErrorBody, description = "a missing or wrong token: nothing was read or changed"),
        (status = 404, body = muster_api::ErrorBody, description = "no source of that name"),
        (status = 413, body = muster_api::ErrorBody, description = "larger than BODY_LIMIT"),
        (status = 415, body = muster_api::ErrorBody, description = "not JSON (nor Uptime Kuma's form)")))]
/// A monitor's alerts: each opens, folds into or resolves its monitor's incident.
pub(crate) async fn alert_hook(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AlertAnswer>, ApiError> {
    let settings = app.settings();
    let Some(source) = settings.repair.source(&name).cloned() else {
        return Err(ApiError::not_found(format!("alert source {name:?}")));
    };
    let metrics = &app.changes.metrics;
    // The scheme is case-insensitive (RFC 9110 §11.1), as for the API's own keys.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if !presented.is_some_and(|token| same_key(&source.token, token)) {
        metrics.alert_hook(&name, "refused");
        tracing::warn!(source = %name, "refused an alert hook: missing or wrong bearer token");
        app.refused_hooks
            .record(&format!("alerts:{name}"), app.now_ms());
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong token: send Authorization: Bearer <the token in the source's token_env>",
        ));
    }
    let json = json_of(source.kind, &headers, body)
        .await
        .inspect_err(|_| {
            metrics.alert_hook(&name, "invalid");
        })?;
    let parsed = match source.kind {
        AlertKind::UptimeKuma => alerts::kuma::parse(&json),
        AlertKind::Alertmanager => alerts::alertmanager::parse(&json),
        AlertKind::Generic => alerts::generic::parse(&json),
    }
    .map_err(|e| {
        metrics.alert_hook(&name, "invalid");
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the {} alert cannot be read: {e}", source.kind.as_str()),
        )
    })?;
    let alerts = match parsed {
        Received::Test(msg) => {
            metrics.alert_hook(&name, "test");
            return Ok(Json(AlertAnswer {
                status: "test".into(),
                message: format!("source {name} is ready for alerts ({msg})"),
                incidents: Vec::new(),
            }));
        }
        Received::Ignored(why) => {
            metrics.alert_hook(&name, "ignored");
            return Ok(Json(AlertAnswer {
                status: "ignored".into(),
                message: format!("nothing to do: {why}"),
                incidents: Vec::new(),
            }));
        }
        Received::Alerts(alerts) => alerts,
    };
    let recorded = incidents::receive(&app, &name, alerts).await?;
    metrics.alert_hook(&name, "recorded");
    let count = |effect: AlertEffect| recorded.iter().filter(|r| r.effect == effect).count();
    let mut said = Vec::new();
    for (effect, words) in [
        (AlertEffect::Opened, "opened"),
        (AlertEffect::Folded, "folded into an open incident"),
        (AlertEffect::Resolved, "resolved"),
        (AlertEffect::Unmatched, "recovered with no open incident"),
    ] {
        let n = count(effect);
        if n > 0 {
            said.push(format!("{n} {words}"));
        }
    }
    let mut ids: Vec<uuid::Uuid> = recorded
        .iter()
        .filter_map(|r| r.incident.map(|(id, _)| id))
        .collect();
    ids.dedup();
    Ok(Json(AlertAnswer {
        status: "recorded".into(),
        message: said.join(", "),
        incidents: ids,
    }))
}

#[utoipa::path(get, path = "/api/v1/incidents", operation_id = "list_incidents", tag = "repair",
    params(("state" = Option<IncidentState>, Query, description = "only incidents in this state"),
           ("open" = Option<bool>, Query, description = "true: only incidents not yet resolved or escalated"),
           ("target" = Option<String>, Query, description = "only this [[repair.targets]] entry's"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "page size, 1 to 200 (default 50)")),
    responses(AdminKey, Invalid, (status = 200, body = IncidentList)))]
/// Incidents, newest first.
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
    query: QueryPairs,
) -> Result<Json<IncidentList>, ApiError> {
    let mut states: Vec<IncidentState> = query
        .one_of("state", IncidentState::ALL, |s| s.as_str())?
        .into_iter()
        .collect();
    if query.parse::<bool>("open")? == Some(true) && states.is_empty() {
        states = IncidentState::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_closed())
            .collect();
    }
    let limit = query.parse::<usize>("limit")?.unwrap_or(50);
    if !(1..=incidents::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 200"));
    }
    let filter = IncidentFilter {
        states,
        target: query.get("target").map(str::to_owned),
        limit,
    };
    Ok(Json(IncidentList {
        incidents: incidents::list(&app, filter).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/incidents/{id}", operation_id = "show_incident", tag = "repair",
    params(("id" = uuid::Uuid, Path, description = "incident id")),
    responses(AdminKey, Invalid, (status = 200, body = Incident, description = "the incident with its story: alerts, the model's answer and its validation, approvals, the task, the verification, notices"),
              (status = 404, body = muster_api::ErrorBody, description = "no such incident")))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    let id = record_id("id", "incident", &id)?;
    Ok(Json(incidents::get(&app, id).await?))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/approve", operation_id = "approve_incident", tag = "repair",
    params(("id" = uuid::Uuid, Path, description = "incident id")),
    responses(AdminKey, Invalid, (status = 200, body = Incident, description = "approved: the action's task is submitted (unless a pause or the cap holds it)"),
              (status = 404, body = muster_api::ErrorBody, description = "no such incident"),
              (status = 409, body = muster_api::ErrorBody, description = "nothing waits for approval, or the approval expired")))]
/// Approves the risky action an incident waits with (audited).
pub(crate) async fn approve(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    let id = record_id("id", "incident", &id)?;
    let incident = incidents::approve(&app, id, Actor::operator(Via::Api)).await?;
    app.repairer_wake.notify_one();
    Ok(Json(incident))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/deny", operation_id = "deny_incident", tag = "repair",
    params(("id" = uuid::Uuid, Path, description = "incident id")),
    request_body(content = Option<DenyRequest>, description = "optional: why"),
    responses(AdminKey, JsonBody, Invalid, (status = 200, body = Incident, description = "denied: nothing runs, and the incident is escalated"),
              (status = 404, body = muster_api::ErrorBody, description = "no such incident"),
              (status = 409, body = muster_api::ErrorBody, description = "nothing waits for approval")))]
/// Denies the risky action an incident waits with (audited); it escalates.
pub(crate) async fn deny(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<DenyRequest>,
) -> Result<Json<Incident>, ApiError> {
    let id = record_id("id", "incident", &id)?;
    let reason = body.and_then(|b| b.reason);
    Ok(Json(
        incidents::deny(&app, id, Actor::operator(Via::Api), reason).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/repair", operation_id = "repair_status", tag = "repair",
    responses(AdminKey, (status = 200, body = RepairStatus)))]
/// Self-repair's pauses, and each target's repairs in the last hour against its cap.
pub(crate) async fn status(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<Json<RepairStatus>, ApiError> {
    Ok(Json(incidents::status(&app).await?))
}

#[utoipa::path(post, path = "/api/v1/repair/pause", operation_id = "pause_repair", tag = "repair",
    request_body = RepairPauseRequest,
    responses(AdminKey, JsonBody, (status = 200, body = RepairPauseAnswer, description = "paused: incidents are still recorded and decided; nothing runs"),
              (status = 404, body = muster_api::ErrorBody, description = "no target of that name")))]
/// Pauses self-repair, for everything or one target (audited).
pub(crate) async fn pause(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<RepairPauseRequest>,
) -> Result<Json<RepairPauseAnswer>, ApiError> {
    Ok(Json(
        incidents::set_paused(&app, req.target, true, Actor::operator(Via::Api)).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/repair/resume", operation_id = "resume_repair", tag = "repair",
    request_body = RepairPauseRequest,
    responses(AdminKey, JsonBody, (status = 200, body = RepairPauseAnswer, description = "resumed"),
              (status = 404, body = muster_api::ErrorBody, description = "no target of that name")))]
/// Resumes self-repair, for everything or one target (audited).
pub(crate) async fn resume(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<RepairPauseRequest>,
) -> Result<Json<RepairPauseAnswer>, ApiError> {
    Ok(Json(
        incidents::set_paused(&app, req.target, false, Actor::operator(Via::Api)).await?,
    ))
}
