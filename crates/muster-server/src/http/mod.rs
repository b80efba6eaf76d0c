//! The HTTP edge: the router, authentication, request extraction with errors in the API's one
//! envelope, and request metrics. Handlers live in [`agents`], [`tasks`] and [`sse`]; the web
//! UI's routes come from [`crate::ui::router`].

mod agents;
pub mod openapi;
mod sse;
pub(crate) mod tasks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_api::{ErrorCode, Health, TaskState};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::ApiError;
use crate::server::App;

pub type AppState = Arc<App>;

/// Every route of the v1 contract.
pub fn router(app: AppState) -> Router {
    let limit = app.settings.body_limit;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/agents/register", post(agents::register))
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{id}",
            get(agents::show).delete(agents::remove),
        )
        .route("/api/v1/agents/{id}/drain", post(agents::drain))
        .route("/api/v1/agents/{id}/heartbeat", post(agents::heartbeat))
        .route("/api/v1/agents/{id}/tasks/next", get(agents::claim))
        .route("/api/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/api/v1/tasks/{id}", get(tasks::show))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{id}/retry", post(tasks::retry))
        .route("/api/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/api/v1/tasks/{id}/fail", post(tasks::fail))
        .route(
            "/api/v1/tasks/{id}/logs",
            post(tasks::append_logs).get(sse::logs),
        )
        .route("/api/v1/events", get(sse::events))
        .merge(crate::ui::router(app.clone()))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(refuse_cross_origin_writes))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Refuses a state-changing request a browser sent on behalf of another origin. Without a key
/// (loopback), a page on any site could otherwise post to `127.0.0.1:8000` (drain an agent,
/// cancel a task) from the operator's browser. Browsers say where a request comes from in
/// `Sec-Fetch-Site` or `Origin`; agents, curl and the CLI send neither and are unaffected.
async fn refuse_cross_origin_writes(req: Request, next: Next) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let foreign = match (header("sec-fetch-site"), header("origin")) {
        (Some(site), _) => !matches!(site, "same-origin" | "none"),
        (None, Some(origin)) => {
            let host = header("host").unwrap_or_default();
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            origin == "null" || !origin_host.eq_ignore_ascii_case(host)
        }
        (None, None) => false,
    };
    if foreign {
        return ApiError::new(
            ErrorCode::Forbidden,
            "cross-origin requests may not change anything here",
        )
        .into_response();
    }
    next.run(req).await
}

/// Records each request's latency by its route template (not the raw path, which would let
/// ids explode the label set).
async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    app.metrics
        .http_seconds
        .with_label_values(&[&method, &route, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn health(State(app): State<AppState>) -> Response {
    let db_ok = app.store.ping().await.is_ok();
    let body = Health {
        status: if db_ok { "ok" } else { "degraded" }.into(),
        db: if db_ok { "ok" } else { "unavailable" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: app.started.elapsed().as_secs(),
    };
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.store.stats(app.now_ms()).await?;
    for state in TaskState::ALL {
        let n = stats
            .by_state
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        app.metrics
            .tasks
            .with_label_values(&[state.as_str()])
            .set(n as i64);
    }
    let by_status = app.registry.count_by_status();
    for status in muster_api::AgentStatus::ALL {
        let n = by_status.get(status).copied().unwrap_or(0);
        app.metrics
            .agents
            .with_label_values(&[status.as_str()])
            .set(n as i64);
    }
    app.metrics.past_lease.set(stats.past_lease as i64);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// Proof that the request carries the admin key (or that none is configured).
pub struct AdminAuth;

/// Proof that the request carries the agent key or the admin key (or that none is configured).
pub struct AgentAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let s = &app.settings;
        authorize(parts, s.api_key.as_ref(), s.agent_key.as_ref(), true).map(|_| AdminAuth)
    }
}

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let s = &app.settings;
        authorize(parts, s.api_key.as_ref(), s.agent_key.as_ref(), false).map(|_| AgentAuth)
    }
}

/// Proof that the request may read the live streams (the event feed, a task's logs): the
/// admin key, or a web UI session. The browser's `EventSource` cannot send an Authorization
/// header, and the UI must never hold the key, so these two read-only routes also accept the
/// session cookie. Routes that change state never do: there the cookie alone would make them
/// forgeable from another site.
pub struct ReaderAuth;

impl FromRequestParts<AppState> for ReaderAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match AdminAuth::from_request_parts(parts, app).await {
            Ok(AdminAuth) => Ok(ReaderAuth),
            Err(refused) => {
                if app
                    .sessions
                    .from_headers(&parts.headers, app.now_ms())
                    .is_some()
                {
                    Ok(ReaderAuth)
                } else {
                    Err(refused)
                }
            }
        }
    }
}

/// Compares a presented key with the configured one in constant time.
pub(crate) fn same_key(key: &Secret, presented: &str) -> bool {
    key.expose().as_bytes().ct_eq(presented.as_bytes()).into()
}

fn authorize(
    parts: &Parts,
    admin: Option<&Secret>,
    agent: Option<&Secret>,
    needs_admin: bool,
) -> Result<(), ApiError> {
    let required = if needs_admin {
        admin.is_some()
    } else {
        admin.is_some() || agent.is_some()
    };
    if !required {
        return Ok(());
    }
    let presented = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing header Authorization: Bearer <key>",
            )
        })?;
    let is_admin = admin.is_some_and(|k| same_key(k, presented));
    let is_agent = agent.is_some_and(|k| same_key(k, presented));
    match (is_admin, is_agent) {
        (true, _) => Ok(()),
        (false, true) if !needs_admin => Ok(()),
        (false, true) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "the agent key cannot use admin routes; use API_KEY",
        )),
        (false, false) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the key is not valid",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction with errors in the API's envelope

/// `axum::Json` whose rejections are API errors: 400 for malformed JSON, 422 naming the field
/// for a wrong type or value, 413 for an oversize body, 415 for a missing content type.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            // axum prefixes serde's message (which starts with the field's path) with this.
            let detail = text
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&text);
            ApiError::new(ErrorCode::InvalidField, detail)
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            ErrorCode::BadRequest,
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected the header Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the body is larger than the server accepts",
            )
        }
        other => ApiError::new(ErrorCode::BadRequest, other.body_text()),
    }
}

/// The raw query string as pairs; each handler parses its fields so errors name them.
pub struct QueryPairs(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query)?;
        Ok(QueryPairs(pairs.into_iter().collect()))
    }
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    use axum::extract::Query;
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the query string is malformed"))?;
    Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|Query(pairs)| pairs)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
}

impl QueryPairs {
    /// Parses an optional field, naming it when it is invalid.
    pub fn parse<T: std::str::FromStr>(&self, field: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(field).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|e| ApiError::invalid(field, format!("{raw:?} is invalid: {e}"))),
        }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .get(field)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Parses a task id from the path; a malformed one cannot name a task.
pub fn task_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map_err(|_| ApiError::invalid("id", format!("{raw:?} is not a task id (UUID)")))
}
