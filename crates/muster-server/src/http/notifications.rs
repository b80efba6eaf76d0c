//! Notifications: `GET /api/v1/notifications` (each message, its channel, attempts and
//! outcome), the configured channels, and a test message over one of them.

use axum::Json;
use axum::extract::{Path, State};
use muster_api::{Notification, NotificationPage, NotifyChannel, NotifyTestResult};

use crate::app::AppState;
use crate::audit::Via;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::extract::{QueryPairs, notification_filter_from_query, record_id};
use crate::http::openapi::{AdminKey, Invalid};
use crate::operator;

#[utoipa::path(get, path = "/api/v1/notifications", operation_id = "list_notifications", tag = "notifications",
    params(("channel" = Option<String>, Query, description = "only those for this channel"),
           ("subject" = Option<String>, Query, description = "only those about this subject (`task:<id>`, `incident:<id>`)"),
           ("state" = Option<muster_api::NotificationState>, Query, description = "only those in this state"),
           ("before" = Option<i64>, Query, description = "only older ones: a page's next_before"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "page size, 1 to 200 (default 50)")),
    responses(AdminKey, Invalid, (status = 200, body = NotificationPage)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
    query: QueryPairs,
) -> Result<Json<NotificationPage>, ApiError> {
    let filter = notification_filter_from_query(&query)?;
    Ok(Json(app.store.notifications(filter).await?))
}

#[utoipa::path(get, path = "/api/v1/notifications/{id}", operation_id = "show_notification", tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "notification id")),
    responses(AdminKey, Invalid, (status = 200, body = Notification),
              (status = 404, body = muster_api::ErrorBody, description = "no such notification")))]
pub(crate) async fn show(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Notification>, ApiError> {
    let id = record_id("id", "notification", &id)?;
    Ok(Json(app.store.notification(id).await?))
}

#[utoipa::path(get, path = "/api/v1/notify/channels", operation_id = "list_notify_channels", tag = "notifications",
    responses(AdminKey, (status = 200, body = Vec<NotifyChannel>)))]
pub(crate) async fn channels(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Json<Vec<NotifyChannel>> {
    Json(operator::notify_channels(&app))
}

#[utoipa::path(post, path = "/api/v1/notify/channels/{name}/test", operation_id = "test_notify_channel", tag = "notifications",
    params(("name" = String, Path, description = "channel name")),
    responses(AdminKey,
              (status = 200, body = NotifyTestResult, description = "sent; `delivered` says whether the service accepted it"),
              (status = 404, body = muster_api::ErrorBody, description = "no such channel")))]
pub(crate) async fn test(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(name): Path<String>,
) -> Result<Json<NotifyTestResult>, ApiError> {
    Ok(Json(operator::test_channel(&app, &name, Via::Api).await?))
}
