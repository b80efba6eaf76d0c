//! The OpenAPI document, generated from the handlers' annotations and muster-api's types.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "muster", description = "Coordination layer for homelab automation and AI agents."),
    paths(
        super::health,
        super::metrics,
        super::agents::register,
        super::agents::heartbeat,
        super::agents::claim,
        super::agents::list,
        super::agents::show,
        super::agents::drain,
        super::agents::undrain,
        super::agents::remove,
        super::tasks::submit,
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
        serve,
    ),
    components(schemas(muster_api::ErrorBody, muster_api::ErrorCode, muster_api::TaskState,
        muster_api::AttemptOutcome, muster_api::AgentStatus, muster_api::LogStream)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "this document")))]
pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
