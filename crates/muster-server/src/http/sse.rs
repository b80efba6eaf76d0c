//! Streams: a task's logs (a JSON page, or SSE that follows until the task ends) and the event
//! feed. Each stream is a spawned task writing into a small channel; it ends when the client
//! goes away (the channel closes), when its task ends, or at shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use muster_api::limits::MAX_LOG_PAGE;
use muster_api::{LogPage, TaskState};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::app::AppState;
use crate::auth::ReaderAuth;
use crate::error::ApiError;
use crate::events::Resume;
use crate::extract::{QueryPairs, task_id};
use crate::http::openapi::{AdminKey, Invalid};

const PAGE: usize = 500;

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn sse_response(rx: mpsc::Receiver<SseEvent>) -> Response {
    let stream = ReceiverStream::new(rx);
    let stream = futures::StreamExt::map(stream, Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/logs", operation_id = "read_logs", tag = "tasks",
    security(("bearer" = []), ("session" = [])),
    params(("id" = uuid::Uuid, Path, description = "task id"),
           ("after" = Option<i64>, Query, description = "only lines with a greater id (default 0); \
             the Last-Event-ID header wins over it"),
           ("limit" = Option<usize>, Query, minimum = 1, maximum = 5000,
             description = "page size for JSON, 1 to 5000 (default 1000)"),
           ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "resume after this line id (an SSE \
             client's reconnect sends it)")),
    responses(AdminKey, Invalid,
              (status = 200, description = "JSON page; with Accept: text/event-stream an SSE \
        stream of `line` events (id = line id) that follows live and ends with an `end` event when the task ends",
               content((LogPage = "application/json"), (String = "text/event-stream"))),
              (status = 404, body = muster_api::ErrorBody, description = "no such task")))]
pub(crate) async fn logs(
    State(app): State<AppState>,
    _: ReaderAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let id = task_id(&id)?;
    let header_after = match last_event_id(&headers) {
        None => None,
        Some(raw) => Some(raw.parse::<i64>().map_err(|_| {
            ApiError::invalid("Last-Event-ID", format!("{raw:?} is not a log line id"))
        })?),
    };
    let after = header_after.or(query.parse::<i64>("after")?).unwrap_or(0);
    if !wants_stream(&headers) {
        let limit = query.parse::<usize>("limit")?.unwrap_or(1000);
        if !(1..=MAX_LOG_PAGE).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("must be between 1 and {MAX_LOG_PAGE}"),
            ));
        }
        let lines = app.store.logs(id, after, limit).await?;
        let next_after = if lines.len() == limit {
            lines.last().map(|l| l.id)
        } else {
            None
        };
        return Ok(Json(LogPage { lines, next_after }).into_response());
    }
    // Subscribe before the first read so no line falls between reading and waiting.
    let mut signals = app.changes.events.task_signals();
    app.store.task_state(id).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut after = after;
        loop {
            let lines = match app.store.logs(id, after, PAGE).await {
                Ok(lines) => lines,
                Err(err) => {
                    tracing::warn!(error = %err, "log stream read failed");
                    return;
                }
            };
            let full_page = lines.len() == PAGE;
            for line in lines {
                after = line.id;
                let event = SseEvent::default()
                    .id(line.id.to_string())
                    .event("line")
                    .json_data(&line)
                    .expect("log lines serialise");
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if full_page {
                continue;
            }
            // Lines are written before the report that ends the task, so once the task is
            // final one more read (the loop above, next time round) has them all.
            match app.store.task_state(id).await {
                Ok(state) if state.is_final() => {
                    if let Ok(rest) = app.store.logs(id, after, PAGE).await
                        && !rest.is_empty()
                    {
                        continue;
                    }
                    let _ = tx.send(end_event(state)).await;
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
            if !wait_for_signal(&mut signals, id, &app.shutdown, &tx).await {
                return;
            }
        }
    });
    Ok(sse_response(rx))
}

fn end_event(state: TaskState) -> SseEvent {
    SseEvent::default()
        .event("end")
        .json_data(serde_json::json!({ "state": state }))
        .expect("state serialises")
}

/// Waits until `id` is signalled; false when the stream should end instead.
async fn wait_for_signal(
    signals: &mut broadcast::Receiver<uuid::Uuid>,
    id: uuid::Uuid,
    shutdown: &tokio_util::sync::CancellationToken,
    tx: &mpsc::Sender<SseEvent>,
) -> bool {
    loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Ok(signalled) if signalled == id => return true,
                Ok(_) => {}
                // Missed some signals: ours may be among them, so look again.
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            },
            _ = shutdown.cancelled() => return false,
            _ = tx.closed() => return false,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/events", operation_id = "stream_events", tag = "events",
    security(("bearer" = []), ("session" = [])),
    params(("Last-Event-ID" = Option<String>, Header, nullable = false, description = "resume after this event id; \
             an id the server no longer holds starts with a `resync` event")),
    responses(AdminKey,
              (status = 200, content_type = "text/event-stream", body = muster_api::Event,
        description = "SSE: `task` and `agent` events; resumable with Last-Event-ID, or a `resync` event \
        when that is not possible")))]
pub(crate) async fn events(
    State(app): State<AppState>,
    _: ReaderAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers);
    let (mut live, resume) = app.changes.events.subscribe(last.as_deref());
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let to_sse = |id: Option<&str>, event: &muster_api::Event| {
            let name = match event {
                muster_api::Event::Task { .. } => "task",
                muster_api::Event::Agent { .. } => "agent",
                muster_api::Event::Incident { .. } => "incident",
                muster_api::Event::Canary { .. } => "canary",
                muster_api::Event::Resync => "resync",
            };
            let sse = SseEvent::default()
                .event(name)
                .json_data(event)
                .expect("events serialise");
            match id {
                Some(id) => sse.id(id),
                None => sse,
            }
        };
        match resume {
            Resume::Replay(events) => {
                for e in events {
                    if tx.send(to_sse(Some(&e.id), &e.event)).await.is_err() {
                        return;
                    }
                }
            }
            Resume::Resync => {
                if tx
                    .send(to_sse(None, &muster_api::Event::Resync))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        loop {
            tokio::select! {
                next = live.recv() => match next {
                    Ok(e) => {
                        if tx.send(to_sse(Some(&e.id), &e.event)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The client fell behind the ring: it must reload.
                        if tx.send(to_sse(None, &muster_api::Event::Resync)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = app.shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(sse_response(rx))
}
