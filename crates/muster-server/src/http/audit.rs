//! `GET /api/v1/audit`: the hash-chained audit log, oldest first, in pages after a seq.

use axum::Json;
use axum::extract::State;
use muster_api::limits::MAX_AUDIT_PAGE;
use muster_api::{AuditEntry, AuditPage};

use crate::app::AppState;
use crate::audit::StoredEntry;
use crate::auth::AdminAuth;
use crate::clock::to_utc;
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::http::openapi::{AdminKey, Invalid};

/// The wire form of a stored entry. A detail that is not JSON (only a tampered row's could be)
/// is sent as the string it is, for `muster audit verify` to name.
pub(crate) fn entry(e: StoredEntry) -> AuditEntry {
    let detail = serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::String(e.detail));
    AuditEntry {
        seq: e.seq,
        at: to_utc(e.at),
        actor: e.actor,
        action: e.action,
        subject: e.subject,
        detail,
        id: e.id,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

#[utoipa::path(get, path = "/api/v1/audit", operation_id = "list_audit", tag = "audit",
    params(("after" = Option<i64>, Query, description = "only entries with a greater seq (default 0)"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "page size, 1 to 1000 (default 100)")),
    responses(AdminKey, Invalid, (status = 200, body = AuditPage)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _: AdminAuth,
    query: QueryPairs,
) -> Result<Json<AuditPage>, ApiError> {
    let after = query.parse::<i64>("after")?.unwrap_or(0);
    let limit = query.parse::<usize>("limit")?.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_AUDIT_PAGE}"),
        ));
    }
    let entries = app.store.audit_after(after, limit).await?;
    let next_after = if entries.len() == limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(AuditPage {
        entries: entries.into_iter().map(entry).collect(),
        next_after,
    }))
}
