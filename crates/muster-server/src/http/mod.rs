//! The HTTP edge: the router, the refusal of cross-origin writes and request metrics
//! (authentication is in [`crate::auth`], extraction in [`crate::extract`]). Handlers live in [`agents`], [`tasks`], [`sse`], [`audit`], [`notifications`] and [`canaries`]; the web
//! UI's routes come from [`crate::ui::router`].

mod agents;
pub(crate) mod audit;
mod canaries;
mod deployments;
mod hooks;
mod incidents;
mod llm;
mod notifications;
pub mod openapi;
mod schedules;
mod sse;
pub(crate) mod tasks;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_api::{ErrorCode, Health, TaskState};

use crate::app::AppState;
use crate::error::ApiError;

/// Every route of the v1 contract.
pub fn router(app: AppState) -> Router {
    let limit = app.settings().body_limit;
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
        .route("/api/v1/agents/{id}/undrain", post(agents::undrain))
        .route("/api/v1/agents/{id}/heartbeat", post(agents::heartbeat))
        // A claim is a GET that starts tasks, so it is refused from other sites like a write.
        .route(
            "/api/v1/agents/{id}/tasks/next",
            get(agents::claim).route_layer(middleware::from_fn(refuse_cross_origin)),
        )
        .route(
            "/api/v1/agents/{id}/tasks/claim",
            get(agents::claim_batch).route_layer(middleware::from_fn(refuse_cross_origin)),
        )
        .route("/api/v1/agents/{id}/reports", post(agents::reports))
        .route("/api/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/api/v1/tasks/batch", post(tasks::submit_batch))
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
        .route("/api/v1/audit", get(audit::list))
        .route("/hooks/git/{source}", post(hooks::git_hook))
        .route("/api/v1/gitops/plan", post(deployments::plan))
        .route("/api/v1/deployments", get(deployments::list))
        .route("/api/v1/deployments/{id}", get(deployments::show))
        .route(
            "/api/v1/deployments/{id}/redeploy",
            post(deployments::redeploy),
        )
        .route("/api/v1/llm/usage", get(llm::usage))
        .route("/api/v1/llm/test", post(llm::test))
        .route("/api/v1/llm/chat", post(llm::chat))
        .route("/api/v1/gitops/pauses", get(deployments::pauses))
        .route("/api/v1/gitops/pause", post(deployments::pause))
        .route("/api/v1/gitops/resume", post(deployments::resume))
        .route("/hooks/alerts/{source}", post(incidents::alert_hook))
        .route("/api/v1/incidents", get(incidents::list))
        .route("/api/v1/incidents/{id}", get(incidents::show))
        .route("/api/v1/incidents/{id}/approve", post(incidents::approve))
        .route("/api/v1/incidents/{id}/deny", post(incidents::deny))
        .route("/api/v1/repair", get(incidents::status))
        .route("/api/v1/repair/pause", post(incidents::pause))
        .route("/api/v1/repair/resume", post(incidents::resume))
        .route(
            "/api/v1/schedules",
            get(schedules::list).post(schedules::create),
        )
        .route(
            "/api/v1/schedules/{name}",
            get(schedules::show).delete(schedules::delete),
        )
        .route("/api/v1/schedules/{name}/run", post(schedules::run))
        .route("/api/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/api/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/hooks/canary/{name}", post(canaries::hook))
        .route("/api/v1/canaries", get(canaries::list))
        .route("/api/v1/canaries/{name}/run", post(canaries::run))
        .route("/api/v1/notifications", get(notifications::list))
        .route("/api/v1/notifications/{id}", get(notifications::show))
        .route("/api/v1/notify/channels", get(notifications::channels))
        .route(
            "/api/v1/notify/channels/{name}/test",
            post(notifications::test),
        )
        .merge(crate::ui::router(app.clone()))
        .fallback_service(crate::ui::fallback())
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        // One layer for the three refusals every request passes: each layer boxes a future
        // per request, and these run on the hot path of every agent's claim and report.
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// The refusals every request passes, in order: a `Host` naming another site
/// ([`foreign_host`]), a browser's state change on behalf of another origin
/// ([`cross_origin_refusal`]), and a declared body over the limit
/// ([`declared_oversize`]).
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(refused) = foreign_host(&app, &req) {
        return refused;
    }
    use axum::http::Method;
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && from_another_origin(req.headers())
    {
        return cross_origin_refusal();
    }
    if let Some(refused) = declared_oversize(app.settings().body_limit, &req) {
        return refused;
    }
    next.run(req).await
}

/// Refuses a request whose `Host` names another site, on a server bound to loopback.
///
/// DNS rebinding: a page on `evil.example` whose name the attacker then points at 127.0.0.1
/// is, to the browser, same-origin with its own site, so it may read answers and send
/// anything, with `Host: evil.example:8000`. Only the name can give it away (the port is the
/// one the browser dialled either way), so the check is on the name: `localhost`, an address
/// literal (an attacker cannot make a browser send one for a name it controls), or the host
/// of `PUBLIC_URL` (a reverse proxy's name). Ports are not compared, so an SSH tunnel or a
/// container's port map keeps working.
///
/// A server bound beyond loopback requires a key, and a rebound page holds neither the key
/// nor the UI's cookie (it is bound to the real name), so the check is not needed there, and
/// the names operators use on their networks need not be listed anywhere. A request without
/// `Host` (HTTP/1.0) is no browser's. `/health` answers any name: probes address the server
/// by whatever name reaches it, and health tells nothing and changes nothing.
fn foreign_host(app: &AppState, req: &Request) -> Option<Response> {
    let settings = app.settings();
    if !settings.addr.ip().is_loopback() || req.uri().path() == "/health" {
        return None;
    }
    let host = req.headers().get(axum::http::header::HOST)?;
    let ours = host
        .to_str()
        .is_ok_and(|host| names_this_server(host, settings.public_url.as_ref()));
    (!ours).then(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            "the Host header names another site; use this server's address (127.0.0.1, \
             localhost) or set PUBLIC_URL to the name it is reached by",
        )
        .into_response()
    })
}

/// The name of a `Host` value or an authority: without the port, and without the brackets
/// of an IPv6 literal.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(name, _)| name)
}

/// Whether a `Host` value names this server (see [`foreign_host`]).
fn names_this_server(host: &str, public_url: Option<&crate::config::PublicUrl>) -> bool {
    let name = host_name(host.trim());
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || public_url.is_some_and(|url| host_name(url.authority()).eq_ignore_ascii_case(name))
}

/// Refuses at once a request whose `Content-Length` is over the body limit. The extractors
/// would refuse it too, but only after waiting for a body that a client may never send (or
/// send slowly, holding a connection and a handler); the length says enough.
fn declared_oversize(limit: usize, req: &Request) -> Option<Response> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    (declared > limit as u64).then(|| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than the server accepts ({limit} bytes)"),
        )
        .into_response()
    })
}

/// A state-changing request a browser sent on behalf of another origin is refused ([`guard`]
/// does it for every write). Without a key (loopback), a page on any site could otherwise post
/// to `127.0.0.1:8000` (drain an agent, cancel a task) from the operator's browser. Reads
/// (GET, HEAD, OPTIONS) pass, except the routes that change state on a GET, which carry
/// [`refuse_cross_origin`] themselves.
fn cross_origin_refusal() -> Response {
    ApiError::new(
        ErrorCode::Forbidden,
        "cross-origin requests may not change anything here",
    )
    .into_response()
}

/// Refuses any request a browser sent on behalf of another origin. Browsers say where a
/// request comes from in `Sec-Fetch-Site` or `Origin`; agents, curl and the CLI send neither
/// and are unaffected.
async fn refuse_cross_origin(req: Request, next: Next) -> Response {
    if from_another_origin(req.headers()) {
        return cross_origin_refusal();
    }
    next.run(req).await
}

fn from_another_origin(headers: &axum::http::HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (header("sec-fetch-site"), header("origin")) {
        (Some(site), _) => !matches!(site, "same-origin" | "none"),
        (None, Some(origin)) => {
            let host = header("host").unwrap_or_default();
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            origin == "null" || !origin_host.eq_ignore_ascii_case(host)
        }
        (None, None) => false,
    }
}

/// Records each request's latency. Every label comes from a closed set, so no client can add
/// series (each costs memory for the life of the process): the method by name when standard,
/// else `other`; the route template (never the raw path, with its ids), else `unmatched`; the
/// status by number when it is one the server answers, else by class.
async fn observe(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    app.changes
        .metrics
        .http_seconds
        .with_label_values(&[method, &route, status_label(response.status())])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The method as a metric label: one of the standard methods, or `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The statuses the server answers, named by number in the metrics.
const ANSWERED: &[(u16, &str)] = &[
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (303, "303"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
];

/// The status as a metric label: its number when the server answers it, else its class.
fn status_label(status: StatusCode) -> &'static str {
    let code = status.as_u16();
    if let Some((_, label)) = ANSWERED.iter().find(|(answered, _)| *answered == code) {
        return label;
    }
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PublicUrl;

    #[test]
    fn host_names_of_this_server() {
        let public = PublicUrl::parse("https://muster.example.com").unwrap();
        for host in [
            "127.0.0.1:8000",
            "127.0.0.1",
            "localhost:8000",
            "LOCALHOST",
            "[::1]:8000",
            "[::1]",
            "10.0.0.5:8000",
            "muster.example.com",
            "muster.example.com:443",
        ] {
            assert!(names_this_server(host, Some(&public)), "{host}");
        }
        for host in [
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8000",
            "muster.example.com.evil.example",
            "",
        ] {
            assert!(!names_this_server(host, Some(&public)), "{host}");
        }
        assert!(!names_this_server("muster.example.com", None));
    }
}

#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations",
    security(()),
    responses(openapi::HealthResponses))]
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

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    security(()),
    responses(openapi::Public,
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.store.stats(app.now_ms()).await?;
    for state in TaskState::ALL {
        let n = stats
            .by_state
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        app.changes
            .metrics
            .tasks
            .with_label_values(&[state.as_str()])
            .set(n as i64);
    }
    let by_status = app.registry.count_by_status();
    for status in muster_api::AgentStatus::ALL {
        let n = by_status.get(status).copied().unwrap_or(0);
        app.changes
            .metrics
            .agents
            .with_label_values(&[status.as_str()])
            .set(n as i64);
    }
    app.changes.metrics.past_lease.set(stats.past_lease as i64);
    crate::ledger::refresh_budget_metrics(&app).await?;
    app.changes
        .metrics
        .long_polls
        .set(app.registry.waiting() as i64);
    let waited_ms = stats
        .oldest_queued_at
        .map_or(0, |at| (app.now_ms() - at).max(0));
    app.changes
        .metrics
        .oldest_queued_seconds
        .set(waited_ms as f64 / 1000.0);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.changes.metrics.render(),
    )
        .into_response())
}
