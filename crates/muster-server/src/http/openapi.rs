//! The OpenAPI document, generated from the handlers' annotations and muster-api's types.
//!
//! It is a contract other tools read (client generators, validators, fuzzers), so it says
//! everything a route can answer. The refusals that come from layers and extractors shared by
//! many routes are written once here, as [`IntoResponses`] types a route lists beside its own
//! answers:
//!
//! - [`AdminKey`] / [`AgentKey`]: the key (401, 403), the `Host` check and cross-site refusal
//!   (403), and 503 (the store unavailable, or the connection cap);
//! - [`JsonBody`]: a JSON body's refusals (400, 413, 415, 422);
//! - [`Invalid`]: 422 for a query parameter or path id that does not parse or is out of range;
//! - [`Public`]: what the keyless routes can still answer (403 for a foreign `Host`, 503).
//!
//! A route's own statuses (404 where it looks an id up, 409 where the lifecycle can refuse, a
//! 403 with its own reason) are listed after these, so they win. `tests/api/edge.rs` checks the
//! invariants (unique operation ids, 401 on every keyed operation, 422 on every JSON body,
//! empty security on the public routes) and `.ci/schemathesis.sh` checks the document against
//! the running server.

use std::collections::BTreeMap;

use axum::Json;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{OneOfBuilder, Schema};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{IntoResponses, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "muster", description = "Coordination layer for homelab automation and AI agents."),
    paths(
        super::health,
        super::metrics,
        super::agents::register,
        super::agents::heartbeat,
        super::agents::claim,
        super::agents::claim_batch,
        super::agents::reports,
        super::agents::list,
        super::agents::show,
        super::agents::drain,
        super::agents::undrain,
        super::agents::remove,
        super::tasks::submit,
        super::tasks::submit_batch,
        super::tasks::list,
        super::tasks::show,
        super::tasks::cancel,
        super::tasks::retry,
        super::tasks::append_logs,
        super::tasks::complete,
        super::tasks::fail,
        super::sse::logs,
        super::sse::events,
        super::audit::list,
        super::hooks::git_hook,
        super::deployments::plan,
        super::deployments::list,
        super::deployments::show,
        super::deployments::redeploy,
        super::deployments::pauses,
        super::deployments::pause,
        super::deployments::resume,
        super::llm::usage,
        super::llm::test,
        super::llm::chat,
        super::incidents::alert_hook,
        super::incidents::list,
        super::incidents::show,
        super::incidents::approve,
        super::incidents::deny,
        super::incidents::status,
        super::incidents::pause,
        super::incidents::resume,
        super::schedules::list,
        super::schedules::create,
        super::schedules::show,
        super::schedules::delete,
        super::schedules::run,
        super::schedules::pause,
        super::schedules::resume,
        super::notifications::list,
        super::notifications::show,
        super::notifications::channels,
        super::notifications::test,
        super::canaries::hook,
        super::canaries::list,
        super::canaries::run,
        serve,
    ),
    components(schemas(muster_api::ErrorBody, muster_api::Health, muster_api::ErrorCode, muster_api::TaskState,
        muster_api::AttemptOutcome, muster_api::AgentStatus, muster_api::LogStream,
        muster_api::NotificationState, muster_api::SendOutcome, muster_api::ReportOutcome,
        muster_api::DeploymentState, muster_api::RuleOutcome, muster_api::PauseScope, muster_api::UsageGroup, muster_api::LlmOutcome,
        muster_api::IncidentState, muster_api::ChoiceBy, muster_api::ScheduleOrigin,
        muster_api::FiringTrigger, muster_api::CanaryOutcome, muster_api::CanaryLeg,
        muster_api::CanaryTrigger)),
    modifiers(&SecuritySchemes),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "API_KEY on every keyed route; AGENT_KEY (default: API_KEY) on the \
                         agent's routes. A server without keys (loopback only) needs none.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::sessions::COOKIE_NAME,
                "A web UI session, accepted only on the two read-only streams (the event \
                 feed and a task's logs), which a browser's EventSource reads without headers.",
            ))),
        );
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "operations",
    security(()),
    responses(Public,
        (status = 200, description = "this document (OpenAPI 3.1)", content_type = "application/json",
            body = Object)))]
pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// An error answered with the envelope `{"error": {"code", "message"}}`.
fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
        .into()
}

fn errors(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|(status, description)| (status.to_string(), error(description)))
        .collect()
}

const UNAUTHORIZED: &str = "unauthorized: no `Authorization: Bearer <key>`, or not a valid key";
const UNAVAILABLE: &str = "unavailable: the store cannot be reached, or the server serves as many \
    connections as it can (answered at accept, then closed); retry later";
/// Refusals that do not depend on the key, shared by every 403 description.
const FOREIGN: &str = "a `Host` that names another site (on a loopback bind: DNS rebinding), or \
    a browser's cross-site request to a route that changes state";

/// A route that needs the admin key (`AdminAuth`), or, for the two read-only streams, the admin
/// key or a UI session (`ReaderAuth`): 401, 403 (the agent key, a foreign `Host`, a cross-site
/// request), 503.
pub(crate) struct AdminKey;

impl IntoResponses for AdminKey {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (401, UNAUTHORIZED),
            (
                403,
                &format!("forbidden: the agent key on an operator's route; {FOREIGN}"),
            ),
            (503, UNAVAILABLE),
        ])
    }
}

/// A route that takes the agent key or the admin key (`AgentAuth`): 401, 403 (a foreign `Host`,
/// a cross-site request), 503.
pub(crate) struct AgentKey;

impl IntoResponses for AgentKey {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (401, UNAUTHORIZED),
            (403, &format!("forbidden: {FOREIGN}")),
            (503, UNAVAILABLE),
        ])
    }
}

const INVALID: &str = "invalid_field: a field, query parameter or path id is invalid or out of \
    range; the message names it (`capabilities[3]: must be at most 200 characters`)";

/// A route that reads a JSON body (`ApiJson`, `OptionalJson`): 400, 413, 415, 422.
pub(crate) struct JsonBody;

impl IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (400, "bad_request: the body is not JSON"),
            (
                413,
                "payload_too_large: the body (or its declared Content-Length) is over BODY_LIMIT",
            ),
            (
                415,
                "unsupported_media_type: a body without `Content-Type: application/json`",
            ),
            (422, INVALID),
        ])
    }
}

/// A route whose query parameters or path id are checked: 422.
pub(crate) struct Invalid;

impl IntoResponses for Invalid {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[(422, INVALID)])
    }
}

/// A route that needs no key (`/metrics`, this document): 403 for a foreign `Host` on a
/// loopback bind, 503.
pub(crate) struct Public;

impl IntoResponses for Public {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (
                403,
                "forbidden: a `Host` that names another site (on a loopback bind: DNS rebinding)",
            ),
            (503, UNAVAILABLE),
        ])
    }
}

/// `GET /health`: 200 with [`muster_api::Health`]; 503 with it too when the store is
/// unavailable, or with the error envelope when the connection cap refuses the connection.
/// It answers any `Host` and needs no key.
pub(crate) struct HealthResponses;

impl IntoResponses for HealthResponses {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let health = || Ref::from_schema_name("Health");
        let ok = ResponseBuilder::new()
            .description("the server and its store are up")
            .content("application/json", Content::new(Some(health())))
            .build();
        let either = OneOfBuilder::new()
            .item(health())
            .item(Ref::from_schema_name("ErrorBody"))
            .build();
        let unavailable = ResponseBuilder::new()
            .description(
                "the store is unavailable (`Health` with `db: unavailable`), or the server \
                 serves as many connections as it can (`ErrorBody`, answered at accept)",
            )
            .content(
                "application/json",
                Content::new(Some(Schema::OneOf(either))),
            )
            .build();
        BTreeMap::from([
            ("200".to_owned(), ok.into()),
            ("503".to_owned(), unavailable.into()),
        ])
    }
}
