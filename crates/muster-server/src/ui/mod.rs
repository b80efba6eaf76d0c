//! The web UI: server-rendered pages (maud), a small stylesheet and script of our own embedded
//! in the binary, sessions with CSRF tokens. Mounted at `/` beside `/api/v1/*`, `/health` and
//! `/metrics`, which it leaves alone.
//!
//! - [`auth`]: login, logout, the session middleware that also checks CSRF tokens, and the
//!   security headers of every UI response.
//! - [`layout`]: the page shell and shared pieces.
//! - [`overview`], [`agents`], [`tasks`], [`submit`], [`deployments`], [`schedules`],
//!   [`incidents`], [`llm`], [`notifications`], [`audit`]: the pages. [`llm`] draws its spend chart as SVG on the
//!   server (no script), reading the ledger through [`crate::ledger`].
//! - [`flash`]: the one-time message a form leaves for the page it redirects to.
//! - [`assets`]: the embedded stylesheet, script and icon under content-hashed names.
//!
//! Pages read through the [`crate::store::Store`] trait and change things only through
//! [`crate::operator`], [`crate::deployments`], [`crate::scheduler`] and [`crate::incidents`],
//! the functions the API handlers call too.
//! Live updates come from the API's own SSE routes, which accept the session cookie for
//! reading (see [`crate::auth::ReaderAuth`]); the script refetches the page and swaps its
//! `data-live` regions when an event concerns it.

mod agents;
mod assets;
mod audit;
mod auth;
mod deployments;
mod flash;
mod incidents;
mod layout;
mod llm;
mod notifications;
mod overview;
mod schedules;
mod submit;
mod tasks;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;

use crate::app::AppState;
use crate::error::ApiError;
use crate::sessions::Session;
use layout::{Page, Section, shell};

/// Every UI route. Pages and forms sit behind the session middleware; the login page and the
/// assets do not.
pub fn router(app: AppState) -> Router<AppState> {
    let behind_session = Router::new()
        .route("/", get(overview::page))
        .route("/agents", get(agents::page))
        .route("/agents/{id}/drain", post(agents::drain))
        .route("/agents/{id}/undrain", post(agents::undrain))
        .route("/agents/{id}/remove", post(agents::remove))
        .route("/tasks", get(tasks::list).post(submit::submit))
        .route("/tasks/new", get(submit::form))
        .route("/tasks/{id}", get(tasks::show))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/retry", post(tasks::retry))
        .route("/deployments", get(deployments::list))
        .route("/deployments/pause", post(deployments::pause))
        .route("/deployments/{id}", get(deployments::show))
        .route("/deployments/{id}/redeploy", post(deployments::redeploy))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::show))
        .route("/schedules/{name}/run", post(schedules::run))
        .route("/schedules/{name}/pause", post(schedules::pause))
        .route("/schedules/{name}/resume", post(schedules::resume))
        .route("/schedules/{name}/delete", post(schedules::delete))
        .route("/incidents", get(incidents::list))
        .route("/incidents/pause", post(incidents::pause))
        .route("/incidents/{id}", get(incidents::show))
        .route("/incidents/{id}/approve", post(incidents::approve))
        .route("/incidents/{id}/deny", post(incidents::deny))
        .route("/llm", get(llm::page))
        .route("/audit", get(audit::page))
        .route("/notifications", get(notifications::page))
        .route(
            "/notifications/channels/{name}/test",
            post(notifications::test),
        )
        .route("/logout", post(auth::logout))
        .route_layer(middleware::from_fn_with_state(app, auth::require_session));
    Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/assets/{file}", get(assets::serve))
        .merge(behind_session)
        .route_layer(middleware::from_fn(auth::security_headers))
}

/// What answers a path nothing else serves, with the UI's security headers: the
/// [`not_found_page`] for a browser, the API's JSON envelope (404 `not_found`) for everyone
/// else. The top-level router in [`crate::http`] sets its own fallback after merging
/// [`router`] (a fallback set here would be replaced), so it is wired there:
/// `.fallback_service(crate::ui::fallback())`.
pub fn fallback() -> Router {
    Router::new()
        .fallback(not_found)
        .layer(middleware::from_fn(auth::security_headers))
}

/// The answer to an unknown path: [`not_found_page`] when the `Accept` header names
/// `text/html` (a browser navigating), else the API's JSON error.
pub async fn not_found(headers: HeaderMap) -> Response {
    let browser = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("text/html"));
    if browser {
        not_found_page()
    } else {
        ApiError::not_found("route").into_response()
    }
}

/// A 404 page in the UI's shell, for a browser that asked for a page nothing serves.
pub fn not_found_page() -> Response {
    let page = Page {
        title: "Not found",
        section: None,
        live: layout::Live::Off,
        session: None,
        login_enabled: false,
    };
    let body = shell(
        &page,
        html! {
            h1 { "Not found" }
            p.notice.error { "Nothing is at this address." }
            p { a href="/" { "Back to the overview" } " · " a href="/tasks" { "Tasks" } " · " a href="/agents" { "Agents" } }
        },
    );
    (StatusCode::NOT_FOUND, body).into_response()
}

/// Percent-encodes text for a path segment or a query value (agent ids may hold spaces).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What every page handler needs for the shell.
fn page_for<'a>(
    app: &AppState,
    session: &'a Session,
    title: &'a str,
    section: Option<Section>,
    live: layout::Live,
) -> Page<'a> {
    Page {
        title,
        section,
        live,
        session: Some(session),
        login_enabled: app.settings().api_key.is_some(),
    }
}

/// An error on a UI route, shown as a page rather than the API's JSON envelope.
#[derive(Debug)]
pub struct UiError(ApiError);

impl From<ApiError> for UiError {
    fn from(err: ApiError) -> Self {
        UiError(err)
    }
}

impl From<crate::error::StoreError> for UiError {
    fn from(err: crate::error::StoreError) -> Self {
        UiError(err.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let title = match status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Not possible now",
            _ => "Something went wrong",
        };
        let page = Page {
            title,
            section: None,
            live: layout::Live::Off,
            session: None,
            login_enabled: false,
        };
        let body = shell(
            &page,
            html! {
                h1 { (title) }
                p.notice.error { (self.0.message) }
                p { a href="/" { "Back to the overview" } }
            },
        );
        (status, body).into_response()
    }
}
