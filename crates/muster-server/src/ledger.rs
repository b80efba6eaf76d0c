//! LLM calls with their ledger: the one way the server talks to a language model. A call is
//! checked against its workflow's budget before anything is sent (over it: refused, or sent to
//! the budget's fallback provider), made through [`muster_llm`], priced from the provider's
//! price table, and recorded, with a `budget.exceeded` or `budget.spike` notice in the same
//! transaction when it crossed one of those lines. Also the reads of the ledger.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use muster_api::{ErrorCode, LlmOutcome, LlmUsage, UsageGroup};
use muster_llm::{ChatRequest, ChatResponse, Client, LlmError};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::App;
use crate::clock::to_utc;
use crate::error::ApiError;
use crate::llm::budgets::{self, DAY_MS, DEFAULT_SPIKE_FACTOR, Period, WhenOver};
use crate::llm::{Budget, LlmProvider};
use crate::notice::{self, Notice};
use crate::store::{LlmCall, Spent};

/// One client for every call: it keeps connections to the providers alive.
static CLIENT: LazyLock<Client> = LazyLock::new(Client::new);

/// Days a usage page sums unless asked.
pub const DEFAULT_USAGE_DAYS: u32 = 30;

/// What a call is for and with what.
#[derive(Debug, Clone)]
pub struct CallOrder {
    /// The ledger's and the budgets' name for what asks (`repair`, `test`, a schedule).
    pub workflow: String,
    /// A `[[llm.providers]]` entry.
    pub provider: String,
    /// Another model of that provider than its configured one; only for a provider without
    /// a price (its price table is its own model's). Not carried over to a budget's fallback.
    pub model: Option<String>,
    /// The prompt's template before it was filled, hashed so calls of one prompt group
    /// together (a change of prompt shows as a new hash).
    pub template: String,
    pub request: ChatRequest,
}

/// A call that was made, and what it came to.
#[derive(Debug, Clone)]
pub struct Answered {
    pub response: ChatResponse,
    /// The provider that answered: the fallback when the budget was spent.
    pub provider: String,
    pub cost: f64,
    /// The budget sent the call to its fallback.
    pub fell_back: bool,
}

/// Hex SHA-256 of a prompt template, cut to 16 characters: enough to tell prompts apart.
pub fn template_hash(template: &str) -> String {
    let digest = Sha256::digest(template.as_bytes());
    crate::secret::hex(&digest)[..16].to_owned()
}

/// Makes a call as its budget allows and records it in the ledger, whatever came of it.
pub async fn call(app: &App, order: CallOrder) -> Result<Answered, ApiError> {
    let settings = app.settings();
    let llm = &settings.llm;
    let mut provider = llm.provider(&order.provider).cloned().ok_or_else(|| {
        let known: Vec<&str> = llm
            .providers
            .iter()
            .map(|p| p.provider.name.as_str())
            .collect();
        ApiError::not_found(format!(
            "llm provider {:?} (configured: {})",
            order.provider,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })?;
    if let Some(model) = order
        .model
        .as_deref()
        .filter(|m| *m != provider.provider.model)
    {
        if provider.price.is_some() {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "llm provider {:?} is priced for its model {:?}, so {model:?} would be \
                     mispriced in the ledger; configure another [[llm.providers]] entry for it",
                    provider.provider.name, provider.provider.model
                ),
            ));
        }
        Arc::make_mut(&mut provider).provider.model = model.to_owned();
    }
    let now = app.now_ms();
    let budget = llm.budget(&order.workflow).cloned();
    let spent_before = match &budget {
        Some(b) => Some(
            app.store
                .llm_spent(order.workflow.clone(), budgets::period_start(b.period, now))
                .await?,
        ),
        None => None,
    };
    let mut fell_back = false;
    if let (Some(b), Some(spent)) = (&budget, &spent_before)
        && b.exhausted(spent)
    {
        match (b.over, b.fallback.as_deref().and_then(|f| llm.provider(f))) {
            (WhenOver::Fallback, Some(fallback)) => {
                provider = fallback.clone();
                fell_back = true;
            }
            _ => {
                let why = format!(
                    "{} is spent ({} tokens, {} in money so far); the call was not sent",
                    b.describe(),
                    spent.tokens,
                    budgets::money(spent.cost_micros)
                );
                record_unanswered(app, &order, &provider, LlmOutcome::Refused, &why, now, 0)
                    .await?;
                return Err(ApiError::new(ErrorCode::BudgetExceeded, why));
            }
        }
    }
    let started = Instant::now();
    let answer = CLIENT.chat(&provider.provider, &order.request).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let response = match answer {
        Ok(response) => response,
        Err(err) => {
            let why = err.to_string();
            record_unanswered(
                app,
                &order,
                &provider,
                LlmOutcome::Error,
                &why,
                now,
                latency_ms,
            )
            .await?;
            return Err(upstream(err));
        }
    };
    let cost_micros = provider
        .price
        .map(|p| (p.cost(&response.usage) * 1e6).round() as i64)
        .unwrap_or(0);
    let this = Spent {
        calls: 1,
        tokens: response.usage.input_tokens + response.usage.output_tokens,
        cost_micros,
    };
    let mut notices = Vec::new();
    if let (Some(b), Some(before)) = (&budget, &spent_before) {
        let after = add(before, &this);
        if !b.exhausted(before) && b.exhausted(&after) {
            notices.push(exceeded(b, &after, &order.workflow, now));
        }
    }
    notices.extend(spike(app, &order.workflow, budget.as_ref(), &this, now).await?);
    record_call(
        app,
        LlmCall {
            id: Uuid::now_v7(),
            at: now,
            workflow: order.workflow.clone(),
            provider: provider.provider.name.clone(),
            model: response.model.clone(),
            prompt_hash: template_hash(&order.template),
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            cached_tokens: response.usage.cached_input_tokens,
            latency_ms,
            cost_micros,
            outcome: LlmOutcome::Ok,
            error: None,
        },
        notices,
    )
    .await?;
    Ok(Answered {
        provider: provider.provider.name.clone(),
        cost: cost_micros as f64 / 1e6,
        fell_back,
        response,
    })
}

fn add(a: &Spent, b: &Spent) -> Spent {
    Spent {
        calls: a.calls + b.calls,
        tokens: a.tokens + b.tokens,
        cost_micros: a.cost_micros + b.cost_micros,
    }
}

/// A provider's failure as the API says it: the provider's words, 502.
fn upstream(err: LlmError) -> ApiError {
    ApiError::new(ErrorCode::BadGateway, err.to_string())
}

/// Records a call that got no answer: refused by its budget, or failed at the provider.
async fn record_unanswered(
    app: &App,
    order: &CallOrder,
    provider: &LlmProvider,
    outcome: LlmOutcome,
    error: &str,
    at: i64,
    latency_ms: u64,
) -> Result<(), ApiError> {
    record_call(
        app,
        LlmCall {
            id: Uuid::now_v7(),
            at,
            workflow: order.workflow.clone(),
            provider: provider.provider.name.clone(),
            model: provider.provider.model.clone(),
            prompt_hash: template_hash(&order.template),
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            latency_ms,
            cost_micros: 0,
            outcome,
            error: Some(error.to_owned()),
        },
        Vec::new(),
    )
    .await
}

async fn record_call(app: &App, call: LlmCall, notices: Vec<Notice>) -> Result<(), ApiError> {
    let metrics = &app.changes.metrics;
    metrics.llm_call(&call);
    app.store.record_llm_call(call, notices).await?;
    Ok(())
}

fn exceeded(b: &Budget, spent: &Spent, workflow: &str, at: i64) -> Notice {
    Notice::budget(
        notice::BUDGET_EXCEEDED,
        workflow,
        json!({
            "workflow": workflow,
            "limit": b.describe(),
            "tokens": spent.tokens,
            "money": budgets::money(spent.cost_micros),
            "then": match b.over {
                WhenOver::Refuse => "refused until the period ends".to_owned(),
                WhenOver::Fallback => format!(
                    "sent to {} until the period ends",
                    b.fallback.as_deref().unwrap_or("the fallback")
                ),
            },
        }),
        at,
    )
}

/// A `budget.spike` notice when this call took today over the spike line (once a day: only
/// the call that crosses it raises one).
async fn spike(
    app: &App,
    workflow: &str,
    budget: Option<&Budget>,
    this: &Spent,
    now: i64,
) -> Result<Option<Notice>, ApiError> {
    let today = budgets::period_start(Period::Day, now);
    let week_ago = today - 7 * DAY_MS;
    let days = app
        .store
        .llm_daily_spend(workflow.to_owned(), week_ago)
        .await?;
    let mut before = [Spent::default(); 7];
    let mut so_far = Spent::default();
    for (day, spent) in days {
        let Some(at) = day_start(&day) else { continue };
        match ((at - week_ago) / DAY_MS) as usize {
            n @ 0..7 => before[n] = spent,
            7 => so_far = spent,
            _ => {}
        }
    }
    let factor = budget.map_or(DEFAULT_SPIKE_FACTOR, |b| b.spike_factor);
    let after = add(&so_far, this);
    if budgets::is_spike(&so_far, &before, factor) || !budgets::is_spike(&after, &before, factor) {
        return Ok(None);
    }
    let mut sorted = before;
    sorted.sort_by_key(|s| (s.cost_micros, s.tokens));
    let by_money = after.cost_micros > 0;
    let show = |s: &Spent| {
        if by_money {
            format!("{} in money", budgets::money(s.cost_micros))
        } else {
            format!("{} tokens", s.tokens)
        }
    };
    Ok(Some(Notice::budget(
        notice::BUDGET_SPIKE,
        workflow,
        json!({
            "workflow": workflow,
            "today": show(&after),
            "median": show(&sorted[3]),
            "factor": factor.to_string(),
        }),
        now,
    )))
}

/// `YYYY-MM-DD` as the ms of its UTC midnight.
fn day_start(day: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// The ledger summed over the last `days` days (today included), with p95 latency per
/// provider and model.
pub async fn usage(app: &App, group: UsageGroup, days: u32) -> Result<LlmUsage, ApiError> {
    if !(1..=3660).contains(&days) {
        return Err(ApiError::invalid("days", "must be between 1 and 3660"));
    }
    let since = budgets::period_start(Period::Day, app.now_ms()) - i64::from(days - 1) * DAY_MS;
    Ok(LlmUsage {
        group_by: group,
        since: to_utc(since),
        rows: app.store.llm_usage(group, since).await?,
        latency: app.store.llm_latency(since).await?,
    })
}

/// The providers, for a page or a check, without their keys.
pub fn providers(app: &App) -> Vec<Arc<LlmProvider>> {
    app.settings().llm.providers.clone()
}

/// Sets the budget gauges from the ledger: what each budgeted workflow spent this period and
/// what is left (for `/metrics`, at scrape time).
pub async fn refresh_budget_metrics(app: &App) -> Result<(), ApiError> {
    let settings = app.settings();
    let now = app.now_ms();
    let metrics = &app.changes.metrics;
    for b in &settings.llm.budgets {
        let spent = app
            .store
            .llm_spent(b.workflow.clone(), budgets::period_start(b.period, now))
            .await?;
        let (tokens_left, money_left) = b.left(&spent);
        let w = b.workflow.as_str();
        metrics
            .llm_budget_spent
            .with_label_values(&[w, "tokens"])
            .set(spent.tokens as f64);
        metrics
            .llm_budget_spent
            .with_label_values(&[w, "money"])
            .set(spent.cost_micros as f64 / 1e6);
        if let Some(t) = tokens_left {
            metrics
                .llm_budget_left
                .with_label_values(&[w, "tokens"])
                .set(t as f64);
        }
        if let Some(m) = money_left {
            metrics
                .llm_budget_left
                .with_label_values(&[w, "money"])
                .set(m as f64 / 1e6);
        }
    }
    Ok(())
}
