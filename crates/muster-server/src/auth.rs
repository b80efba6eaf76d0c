//! Who may call what: the admin key, the agent key, and (for the read-only live streams) a web
//! UI session. The extractors here are shared by the API and the UI, so neither imports the
//! other. Keys are compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use muster_api::ErrorCode;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::config::Secret;
use crate::error::ApiError;

/// Proof that the request carries the admin key (or that none is configured).
pub struct AdminAuth;

/// Proof that the request carries the agent key or the admin key (or that none is configured).
pub struct AgentAuth {
    /// The caller holds the admin key, or no key is configured.
    pub admin: bool,
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let s = app.settings();
        authorize(parts, s.api_key.as_ref(), s.agent_key.as_ref(), true).map(|_| AdminAuth)
    }
}

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let s = app.settings();
        authorize(parts, s.api_key.as_ref(), s.agent_key.as_ref(), false)
            .map(|admin| AgentAuth { admin })
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
pub fn same_key(key: &Secret, presented: &str) -> bool {
    key.expose().as_bytes().ct_eq(presented.as_bytes()).into()
}

fn authorize(
    parts: &Parts,
    admin: Option<&Secret>,
    agent: Option<&Secret>,
    needs_admin: bool,
) -> Result<bool, ApiError> {
    let required = if needs_admin {
        admin.is_some()
    } else {
        admin.is_some() || agent.is_some()
    };
    if !required {
        return Ok(true);
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
        (true, _) => Ok(true),
        (false, true) if !needs_admin => Ok(false),
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
