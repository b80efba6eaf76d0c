//! The server's two error languages: [`StoreError`], which every storage backend speaks, and
//! [`ApiError`], the one type that becomes an HTTP response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_api::{ErrorBody, ErrorCode, ErrorDetail};

/// What a storage operation can report, whatever the backend. Handlers match on these kinds,
/// never on a driver's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// The operation does not apply to the current state (a stale attempt, an illegal transition).
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached or refused to work (disk full, closed, corrupt).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        StoreError::Unavailable(format!("stored JSON is unreadable: {err}"))
    }
}

/// An error answered to an HTTP client: a stable code and a message meant for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, when one is: the UI marks it on the form. Not sent on the
    /// wire, where the message already starts with the field's name.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A 422 naming the field at fault.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(ErrorCode::InvalidField, format!("{field}: {why}"))
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(why) => ApiError::new(ErrorCode::Conflict, why),
            StoreError::Unavailable(why) => {
                // The cause is for the operator's log; the client learns only that it may retry.
                tracing::error!(error = %why, "store unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the store is unavailable; retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}
