//! LLM calls over HTTP: the ledger (`GET /api/v1/llm/usage`), a provider check
//! (`POST /api/v1/llm/test`), and calls for agents (`POST /api/v1/llm/chat`), each under its
//! workflow's budget.

use axum::Json;
use axum::extract::State;
use muster_api::limits::{MAX_CHAT_MESSAGES, MAX_CHAT_TOOLS};
use muster_api::{
    LlmChatAnswer, LlmChatRequest, LlmMessage, LlmTestRequest, LlmTestResult, LlmToolCall,
    LlmUsage, UsageGroup,
};
use muster_llm::{BadArguments, ChatRequest, Message, StopReason, Tool, ToolCall};

use crate::app::AppState;
use crate::auth::{AdminAuth, AgentAuth};
use crate::bounds;
use crate::error::ApiError;
use crate::extract::{ApiJson, QueryPairs};
use crate::http::openapi::{AdminKey, AgentKey, Invalid, JsonBody};
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
    bounds::required_text("prompt", &prompt, MAX_TEST_PROMPT)?;
    let answered = ledger::call(
        &app,
        CallOrder {
            workflow: "test".into(),
            provider: req.provider,
            model: None,
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

/// Longest workflow name, in characters.
const MAX_WORKFLOW: usize = 100;
/// Longest model name, in characters.
const MAX_MODEL: usize = 200;

#[utoipa::path(post, path = "/api/v1/llm/chat", operation_id = "llm_chat", tag = "llm",
    request_body = LlmChatRequest,
    responses(AgentKey, JsonBody, (status = 200, body = LlmChatAnswer, description = "the model answered"),
              (status = 404, body = muster_api::ErrorBody, description = "no provider of that name"),
              (status = 429, body = muster_api::ErrorBody, description = "the workflow's budget is spent (nothing was sent)"),
              (status = 502, body = muster_api::ErrorBody, description = "the provider failed: the error names it")))]
/// One call to a model through the server: the workflow's budget is checked before anything
/// is sent, and the call is in the ledger. `model` picks another model of an unpriced
/// provider. Agents call models this way, so provider keys stay
/// on the server.
pub(crate) async fn chat(
    State(app): State<AppState>,
    _: AgentAuth,
    ApiJson(req): ApiJson<LlmChatRequest>,
) -> Result<Json<LlmChatAnswer>, ApiError> {
    bounds::required_text("workflow", &req.workflow, MAX_WORKFLOW)?;
    if let Some(model) = &req.model {
        bounds::required_text("model", model, MAX_MODEL)?;
    }
    if req.messages.is_empty() || req.messages.len() > MAX_CHAT_MESSAGES {
        return Err(ApiError::invalid(
            "messages",
            format!("must hold 1 to {MAX_CHAT_MESSAGES} messages"),
        ));
    }
    if req.tools.len() > MAX_CHAT_TOOLS {
        return Err(ApiError::invalid(
            "tools",
            format!("must hold at most {MAX_CHAT_TOOLS} tools"),
        ));
    }
    for (i, tool) in req.tools.iter().enumerate() {
        if !tool.parameters.is_object() {
            return Err(ApiError::invalid(
                &format!("tools[{i}].parameters"),
                "must be a JSON Schema object",
            ));
        }
    }
    let template = req
        .template
        .clone()
        .or_else(|| req.system.clone())
        .unwrap_or_default();
    let answered = ledger::call(
        &app,
        CallOrder {
            workflow: req.workflow,
            provider: req.provider,
            model: req.model,
            template,
            request: ChatRequest {
                system: req.system,
                messages: req.messages.into_iter().map(message).collect(),
                tools: req
                    .tools
                    .into_iter()
                    .map(|t| Tool {
                        name: t.name,
                        description: t.description,
                        parameters: t.parameters,
                    })
                    .collect(),
                max_tokens: req.max_tokens,
                temperature: req.temperature,
            },
        },
    )
    .await?;
    let r = answered.response;
    Ok(Json(LlmChatAnswer {
        provider: answered.provider,
        model: r.model,
        text: r.text,
        tool_calls: r.tool_calls.into_iter().map(api_call).collect(),
        stop: match r.stop {
            StopReason::Done => "done".to_owned(),
            StopReason::ToolCalls => "tool_calls".to_owned(),
            StopReason::Length => "length".to_owned(),
            StopReason::Refused => "refused".to_owned(),
            StopReason::Other(other) => other,
        },
        input_tokens: r.usage.input_tokens,
        output_tokens: r.usage.output_tokens,
        cached_input_tokens: r.usage.cached_input_tokens,
        latency_ms: r.latency.as_millis() as u64,
        cost: answered.cost,
        fell_back: answered.fell_back,
    }))
}

fn message(m: LlmMessage) -> Message {
    match m {
        LlmMessage::User { content } => Message::User(content),
        LlmMessage::Assistant {
            content,
            tool_calls,
        } => Message::Assistant {
            text: content,
            tool_calls: tool_calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments: match c.bad_arguments {
                        Some(raw) => Err(BadArguments {
                            raw,
                            error: "not a JSON object".to_owned(),
                        }),
                        None => Ok(c.arguments),
                    },
                })
                .collect(),
        },
        LlmMessage::Tool {
            call_id,
            name,
            content,
            is_error,
        } => Message::ToolResult {
            call_id,
            name,
            content,
            is_error,
        },
    }
}

fn api_call(c: ToolCall) -> LlmToolCall {
    let (arguments, bad_arguments) = match c.arguments {
        Ok(value) => (value, None),
        Err(bad) => (serde_json::Value::Null, Some(bad.raw)),
    };
    LlmToolCall {
        id: c.id,
        name: c.name,
        arguments,
        bad_arguments,
    }
}
