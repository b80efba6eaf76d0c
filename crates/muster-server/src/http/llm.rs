//! The LLM ledger over HTTP: `GET /api/v1/llm/usage` and `POST /api/v1/llm/test`.

use axum::Json;
use axum::extract::State;
use muster_api::{LlmTestRequest, LlmTestResult, LlmUsage, UsageGroup};
use muster_llm::{ChatRequest, Message};

use crate::app::AppState;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::extract::{ApiJson, QueryPairs};
use crate::http::openapi::{AdminKey, Invalid, JsonBody};
use crate::ledger::{self, CallOrder, DEFAULT_USAGE_DAYS};

/// The test prompt when none is given: short, so the check costs next to nothing.
const TEST_PROMPT: &str = "Say hello in five words or fewer.";

/// Longest test prompt, in characters.
const MAX_TEST_PROMPT: usize = 4_000;

#[utoipa::path(get, path = "/api/v1/llm/usage", operation_id = "llm_usage", tag = "llm",
    params(("group_by" = Option<UsageGroup>, Query, description = "workflow (default), model, or day (per day and workflow)"),
           ("days" = Option<u32>, Query, minimum = 1, maximum = 3660, description = "the last this many days, today included (default 30)")),
    responses(AdminKey, Invalid, (status = 200, body = LlmUsage)))]
/// The LLM ledger summed: calls, errors, tokens and spend, and p95 latency per model.
pub(crate) async fn usage(
    State(app): State<AppState>,
    _: AdminAuth,
    query: QueryPairs,
) -> Result<Json<LlmUsage>, ApiError> {
    let group = query
        .one_of("group_by", UsageGroup::ALL, |g| g.as_str())?
        .unwrap_or(UsageGroup::Workflow);
    let days = query.parse::<u32>("days")?.unwrap_or(DEFAULT_USAGE_DAYS);
    Ok(Json(ledger::usage(&app, group, days).await?))
}

#[utoipa::path(post, path = "/api/v1/llm/test", operation_id = "llm_test", tag = "llm",
    request_body = LlmTestRequest,
    responses(AdminKey, JsonBody, (status = 200, body = LlmTestResult, description = "the provider answered"),
              (status = 404, body = muster_api::ErrorBody, description = "no provider of that name"),
              (status = 429, body = muster_api::ErrorBody, description = "the test workflow's budget is spent"),
              (status = 502, body = muster_api::ErrorBody, description = "the provider failed: the error names it")))]
/// Sends one short prompt to a provider and answers what it said, the tokens, the latency and
/// the cost (the call is in the ledger under the workflow `test`).
pub(crate) async fn test(
    State(app): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<LlmTestRequest>,
) -> Result<Json<LlmTestResult>, ApiError> {
    let prompt = req.prompt.unwrap_or_else(|| TEST_PROMPT.to_owned());
    if prompt.trim().is_empty() || prompt.chars().count() > MAX_TEST_PROMPT {
        return Err(ApiError::invalid(
            "prompt",
            format!("must be 1 to {MAX_TEST_PROMPT} characters"),
        ));
    }
    let answered = ledger::call(
        &app,
        CallOrder {
            workflow: "test".into(),
            provider: req.provider,
            template: prompt.clone(),
            request: ChatRequest {
                system: None,
                messages: vec![Message::User(prompt)],
                tools: Vec::new(),
                max_tokens: Some(64),
                temperature: None,
            },
        },
    )
    .await?;
    let r = &answered.response;
    Ok(Json(LlmTestResult {
        provider: answered.provider.clone(),
        model: r.model.clone(),
        answer: r.text.clone(),
        input_tokens: r.usage.input_tokens,
        output_tokens: r.usage.output_tokens,
        latency_ms: r.latency.as_millis() as u64,
        cost: answered.cost,
    }))
}
