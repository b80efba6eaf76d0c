//! Request extraction with errors in the API's one envelope: JSON bodies, query strings whose
//! fields are named when invalid, ids in paths, and the task-list filters the API and the UI
//! both read from a query string.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use muster_api::limits::{MAX_NOTIFICATION_PAGE, MAX_TASK_PAGE};
use muster_api::{ErrorCode, NotificationState, TaskState};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::store::{NotificationFilter, TaskFilter};

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

/// An optional JSON body: `None` when the body is empty or JSON `null`, else parsed like
/// [`ApiJson`].
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let has_body = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|len| len.trim() != "0")
            && req.headers().contains_key(axum::http::header::CONTENT_TYPE);
        if !has_body {
            return Ok(OptionalJson(None));
        }
        let ApiJson(value) = ApiJson::<Option<T>>::from_request(req, state).await?;
        Ok(OptionalJson(value))
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

    /// `field` as one of a closed set of names (`all`, each named by `name`); the refusal
    /// lists them.
    pub fn one_of<T: Copy>(
        &self,
        field: &str,
        all: &[T],
        name: fn(T) -> &'static str,
    ) -> Result<Option<T>, ApiError> {
        let Some(raw) = self.get(field) else {
            return Ok(None);
        };
        match all.iter().copied().find(|v| name(*v) == raw) {
            Some(value) => Ok(Some(value)),
            None => {
                let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
                Err(ApiError::invalid(
                    field,
                    format!("{raw:?} is not one of {}", names.join(", ")),
                ))
            }
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
    record_id("id", "task", raw)
}

/// Parses the id of a record (`what`: task, notification, deployment) given as `field`; the
/// refusal names the field and what the id should be.
pub fn record_id(field: &str, what: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    uuid::Uuid::parse_str(raw)
        .map_err(|_| ApiError::invalid(field, format!("{raw:?} is not {article} {what} id (UUID)")))
}

/// Reads the filters and paging of a task list from a query string, naming a field at fault.
pub fn filter_from_query(query: &QueryPairs) -> Result<TaskFilter, ApiError> {
    let state = query.one_of("state", TaskState::ALL, |s| s.as_str())?;
    let limit = query.parse::<usize>("limit")?.unwrap_or(50);
    if !(1..=MAX_TASK_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_TASK_PAGE}"),
        ));
    }
    Ok(TaskFilter {
        state,
        kind: query.get("kind").map(str::to_owned),
        agent_id: query.get("agent_id").map(str::to_owned),
        limit,
        before_seq: query.parse::<i64>("cursor")?,
    })
}

/// Reads the filters and paging of a notification list from a query string.
pub fn notification_filter_from_query(query: &QueryPairs) -> Result<NotificationFilter, ApiError> {
    let state = query.one_of("state", NotificationState::ALL, |s| s.as_str())?;
    let limit = query.parse::<usize>("limit")?.unwrap_or(50);
    if !(1..=MAX_NOTIFICATION_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_NOTIFICATION_PAGE}"),
        ));
    }
    Ok(NotificationFilter {
        channel: query.get("channel").map(str::to_owned),
        subject: query.get("subject").map(str::to_owned),
        state,
        before: query.parse::<i64>("before")?,
        limit,
    })
}
