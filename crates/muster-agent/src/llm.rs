//! The `llm` executor: a task of kind `llm` is an LLM session, a tool loop whose every model
//! turn is one `POST /api/v1/llm/chat` to the server. So the provider's key stays on the
//! server, the workflow's budget is checked before each turn (a spent budget stops the session
//! before anything is sent), and every turn is in the ledger under the task's workflow.
//!
//! Payload: `{"prompt": …, "system", "provider", "model", "tools", "max_turns", "workflow"}`
//! (all but `prompt` optional; `[llm]` in the agent's config has the defaults). The model's
//! text, each tool call with its arguments and each tool's result go to the task's log as
//! they happen; the last answer is the result (`{"answer", "turns", "tool_calls", …}`) and
//! the tokens and cost of every turn are the task's `usage`. `max_turns` and the session's
//! token cap (`[llm] max_tokens`) end a session that keeps calling tools, as a failure naming
//! which. A cancel or the task's timeout stops the session between turns and kills a running
//! tool; the session's MCP servers are stopped however it ends.

pub mod mcp;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use muster_api::limits::MAX_CHAT_MESSAGES;
use muster_api::{ErrorCode, LlmChatAnswer, LlmChatRequest, LlmMessage, LogStream};
use muster_client::{Client, ClientError, Handler, HandlerError, TaskContext};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Checked, LlmConfig, MAX_SESSION_TURNS};
use crate::process::Launcher;
use tools::{Toolbox, bounded};

/// Most characters of the model's text, a call's arguments or a tool's result in one log
/// line: enough to follow the session, bounded so one answer cannot flood the log.
const MAX_LOG_CHARS: usize = 2_000;

/// Longest prompt a task may give, in characters.
const MAX_PROMPT_CHARS: usize = 100_000;

/// What a task of kind `llm` asks. Other fields are let through (a schedule adds `schedule`
/// and `fire_at`).
#[derive(Debug, Deserialize)]
struct Payload {
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default)]
    max_turns: Option<u32>,
    #[serde(default)]
    workflow: Option<String>,
}

/// One session's plan: the payload checked against `[llm]`, before anything starts.
#[derive(Debug, PartialEq)]
struct Plan {
    prompt: String,
    system: Option<String>,
    provider: String,
    model: Option<String>,
    workflow: String,
    max_turns: u32,
    max_tokens: u64,
    tools: tools::Selection,
}

fn plan(config: &Checked, llm: &LlmConfig, payload: &Value) -> Result<Plan, String> {
    let payload: Payload =
        serde_path_to_error::deserialize(payload).map_err(|e| match e.path().to_string() {
            path if path == "." => format!("payload: {}", e.inner()),
            path => format!("payload.{path}: {}", e.inner()),
        })?;
    if payload.prompt.trim().is_empty() {
        return Err("payload.prompt: must not be empty".into());
    }
    if payload.prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(format!(
            "payload.prompt: must be at most {MAX_PROMPT_CHARS} characters"
        ));
    }
    let provider = payload
        .provider
        .or_else(|| llm.provider.clone())
        .ok_or("payload.provider: missing, and [llm] in the agent's config names no provider")?;
    let max_turns = payload.max_turns.unwrap_or(llm.max_turns);
    if !(1..=MAX_SESSION_TURNS).contains(&max_turns) {
        return Err(format!(
            "payload.max_turns: must be 1 to {MAX_SESSION_TURNS}"
        ));
    }
    let tools = tools::select(config, payload.tools.as_deref())?;
    Ok(Plan {
        prompt: payload.prompt,
        system: payload.system.or_else(|| llm.system.clone()),
        provider,
        model: payload.model,
        workflow: payload.workflow.unwrap_or_else(|| llm.workflow.clone()),
        max_turns,
        max_tokens: llm.max_tokens,
        tools,
    })
}

/// Runs `llm` tasks; see the module's documentation.
pub struct LlmHandler {
    config: Arc<Checked>,
    client: Client,
    launcher: Launcher,
}

impl LlmHandler {
    /// A handler for a config with an `[llm]` section; `None` without one.
    pub fn new(config: Arc<Checked>, client: Client, launcher: Launcher) -> Option<Self> {
        config.config.llm.as_ref()?;
        Some(LlmHandler {
            config,
            client,
            launcher,
        })
    }

    fn llm(&self) -> &LlmConfig {
        self.config.config.llm.as_ref().expect("checked in new")
    }
}

/// What a session has used so far.
#[derive(Debug, Default)]
struct Spent {
    turns: u32,
    tool_calls: u32,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cost: f64,
    provider: String,
    model: String,
}

impl Spent {
    fn add(&mut self, answer: &LlmChatAnswer) {
        self.turns += 1;
        self.input_tokens += answer.input_tokens;
        self.output_tokens += answer.output_tokens;
        self.cached_input_tokens += answer.cached_input_tokens;
        self.cost += answer.cost;
        self.provider.clone_from(&answer.provider);
        self.model.clone_from(&answer.model);
    }

    fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    fn usage(&self) -> Value {
        json!({
            "provider": self.provider,
            "model": self.model,
            "calls": self.turns,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cost": self.cost,
        })
    }

    /// How far the session got, for an error that ends it.
    fn so_far(&self) -> String {
        format!(
            "{} turns, {} tool calls, {} tokens",
            self.turns,
            self.tool_calls,
            self.tokens()
        )
    }
}

/// Why a session stopped before its answer, besides an error of its own.
enum Stop {
    Cancelled,
    TimedOut(u64),
}

impl Stop {
    fn error(self, spent: &Spent) -> HandlerError {
        match self {
            Stop::Cancelled => {
                HandlerError::Cancelled(format!("the session was stopped after {}", spent.so_far()))
            }
            Stop::TimedOut(s) => HandlerError::Retryable(format!(
                "the session timed out after {s}s ({})",
                spent.so_far()
            )),
        }
    }
}

/// Waits for `work`, unless the task is cancelled or its time is up first (then `work` is
/// dropped: a model call is abandoned, a running tool's process group killed).
async fn unless_stopped<T>(
    ctx: &TaskContext,
    deadline: Option<tokio::time::Instant>,
    timeout_s: u64,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Stop> {
    let time_up = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        done = work => Ok(done),
        _ = ctx.cancellation().cancelled() => Err(Stop::Cancelled),
        _ = time_up => Err(Stop::TimedOut(timeout_s)),
    }
}

/// A refused or failed model call as what happens next: a spent budget or a request the
/// server refuses will not change by retrying; a provider or server that failed may.
fn chat_error(err: ClientError, turn: u32) -> HandlerError {
    let words = format!("turn {turn}: {err}");
    match err.code() {
        Some(ErrorCode::BudgetExceeded) => HandlerError::Permanent(format!(
            "the workflow's budget is spent, so turn {turn} was not sent: {err}"
        )),
        _ if err.is_transient() => HandlerError::Retryable(words),
        Some(ErrorCode::BadGateway) => HandlerError::Retryable(words),
        _ => HandlerError::Permanent(words),
    }
}

/// Each line of `text` as a log line, the whole bounded.
fn log_text(ctx: &TaskContext, text: &str) {
    for line in bounded(text.trim(), MAX_LOG_CHARS).lines() {
        ctx.log(LogStream::Stdout, line);
    }
}

#[async_trait]
impl Handler for LlmHandler {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let task = ctx.task();
        let plan =
            plan(&self.config, self.llm(), &task.payload).map_err(HandlerError::Permanent)?;
        let timeout_s = task.timeout_s.map_or(0, u64::from);
        let deadline = task
            .timeout_s
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s.into()));
        let tool_timeout = Duration::from_secs(self.llm().tool_timeout_s);
        let opened = unless_stopped(
            ctx,
            deadline,
            timeout_s,
            Toolbox::open(ctx, &self.config, &self.launcher, &plan.tools, tool_timeout),
        )
        .await;
        let mut spent = Spent::default();
        let toolbox = match opened {
            Ok(toolbox) => toolbox?,
            Err(stop) => return Err(stop.error(&spent)),
        };
        ctx.log(
            LogStream::System,
            format!(
                "session: provider {}, workflow {}, at most {} turns and {} tokens, tools: {}",
                plan.provider,
                plan.workflow,
                plan.max_turns,
                plan.max_tokens,
                toolbox
                    .specs()
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let outcome = self
            .session(ctx, &plan, &toolbox, &mut spent, deadline, timeout_s)
            .await;
        toolbox.close().await;
        let answer = outcome?;
        ctx.set_usage(spent.usage());
        Ok(json!({
            "answer": answer.text,
            "turns": spent.turns,
            "tool_calls": spent.tool_calls,
            "provider": spent.provider,
            "model": spent.model,
            "stop": answer.stop,
        }))
    }
}

impl LlmHandler {
    /// The tool loop: turns until the model answers without calling a tool.
    async fn session(
        &self,
        ctx: &TaskContext,
        plan: &Plan,
        toolbox: &Toolbox,
        spent: &mut Spent,
        deadline: Option<tokio::time::Instant>,
        timeout_s: u64,
    ) -> Result<LlmChatAnswer, HandlerError> {
        let mut messages = vec![LlmMessage::User {
            content: plan.prompt.clone(),
        }];
        for turn in 1..=plan.max_turns {
            if messages.len() > MAX_CHAT_MESSAGES {
                return Err(HandlerError::Permanent(format!(
                    "the conversation outgrew {MAX_CHAT_MESSAGES} messages ({})",
                    spent.so_far()
                )));
            }
            let request = LlmChatRequest {
                workflow: plan.workflow.clone(),
                provider: plan.provider.clone(),
                model: plan.model.clone(),
                template: None,
                system: plan.system.clone(),
                messages: messages.clone(),
                tools: toolbox.specs().to_vec(),
                max_tokens: None,
                temperature: None,
            };
            let answer = unless_stopped(ctx, deadline, timeout_s, self.client.llm_chat(&request))
                .await
                .map_err(|stop| stop.error(spent))?
                .map_err(|err| chat_error(err, turn))?;
            spent.add(&answer);
            log_text(ctx, &answer.text);
            if answer.tool_calls.is_empty() {
                return Ok(answer);
            }
            if turn == plan.max_turns {
                return Err(HandlerError::Permanent(format!(
                    "max_turns ({}) reached and the model still calls tools ({})",
                    plan.max_turns,
                    spent.so_far()
                )));
            }
            if spent.tokens() >= plan.max_tokens {
                return Err(HandlerError::Permanent(format!(
                    "the session's token cap ([llm] max_tokens = {}) reached and the model \
                     still calls tools ({})",
                    plan.max_tokens,
                    spent.so_far()
                )));
            }
            messages.push(LlmMessage::Assistant {
                content: answer.text.clone(),
                tool_calls: answer.tool_calls.clone(),
            });
            for call in &answer.tool_calls {
                spent.tool_calls += 1;
                let arguments = call
                    .bad_arguments
                    .clone()
                    .unwrap_or_else(|| call.arguments.to_string());
                ctx.log(
                    LogStream::System,
                    format!("→ {} {}", call.name, bounded(&arguments, MAX_LOG_CHARS)),
                );
                let outcome = unless_stopped(ctx, deadline, timeout_s, toolbox.call(ctx, call))
                    .await
                    .map_err(|stop| stop.error(spent))?
                    .map_err(|cancelled| match cancelled {
                        HandlerError::Cancelled(_) => Stop::Cancelled.error(spent),
                        other => other,
                    })?;
                let said = if outcome.is_error { "failed" } else { "said" };
                ctx.log(
                    LogStream::System,
                    format!(
                        "← {} {said}: {}",
                        call.name,
                        bounded(outcome.text.trim(), MAX_LOG_CHARS)
                    ),
                );
                messages.push(LlmMessage::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: bounded(&outcome.text, tools::MAX_RESULT_CHARS),
                    is_error: outcome.is_error,
                });
            }
        }
        unreachable!("the last turn returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn config(llm: &str) -> Checked {
        AgentConfig::parse(&format!(
            "[agent]\nid = \"a\"\n[llm]\n{llm}\n[[actions]]\nname = \"echo\"\n\
             argv = [\"echo\", \"{{w}}\"]\nparams = {{ w = \"[a-z]+\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_payload_takes_the_configs_defaults() {
        let c = config("provider = \"local\"\nsystem = \"Be brief.\"");
        let llm = c.config.llm.clone().unwrap();
        let p = plan(&c, &llm, &json!({"prompt": "hi", "schedule": "x"})).unwrap();
        assert_eq!(p.provider, "local");
        assert_eq!(p.workflow, "llm");
        assert_eq!(p.system.as_deref(), Some("Be brief."));
        assert_eq!(p.max_turns, 10);
        assert_eq!(p.tools.actions, ["echo"]);
        let p = plan(
            &c,
            &llm,
            &json!({"prompt": "hi", "provider": "cloud", "workflow": "chat", "max_turns": 3,
                    "tools": []}),
        )
        .unwrap();
        assert_eq!(
            (p.provider.as_str(), p.workflow.as_str()),
            ("cloud", "chat")
        );
        assert_eq!(p.max_turns, 3);
        assert!(p.tools.actions.is_empty());
    }

    #[test]
    fn a_bad_payload_names_its_field() {
        let c = config("");
        let llm = c.config.llm.clone().unwrap();
        for (payload, field) in [
            (json!({}), "prompt"),
            (json!({"prompt": " "}), "payload.prompt"),
            (json!({"prompt": "x"}), "payload.provider"),
            (
                json!({"prompt": "x", "provider": "p", "max_turns": 51}),
                "max_turns",
            ),
            (
                json!({"prompt": "x", "provider": "p", "max_turns": "3"}),
                "max_turns",
            ),
            (
                json!({"prompt": "x", "provider": "p", "tools": ["rm"]}),
                "tools[0]",
            ),
        ] {
            let err = plan(&c, &llm, &payload).unwrap_err();
            assert!(err.contains(field), "{payload}: {err}");
        }
    }
}
