//! LLM calls through the server against local services speaking the providers' wire formats:
//! the test prompt, the ledger summing what the fakes reported, budgets that refuse or fall
//! back before anything is sent, and the spike rule on an injected clock.

use std::sync::Arc;
use std::time::Duration;

use muster_server::llm::LlmConfig;
use muster_server::notify::{Channel, ChannelSpec, NotifyConfig, Rule, RuleSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_service::{FakeService, Reply};
use crate::helpers::{TestApp, metrics_text, sample};

const KEY: &str = "sk-test-0123456789abcdef";

/// An OpenAI-compatible answer with the usage a provider reports.
fn openai_answer(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Reply {
    Reply::ok(
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test-2026",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        })
        .to_string(),
    )
}

fn ollama_answer(text: &str) -> Reply {
    Reply::ok(
        json!({
            "model": "qwen2.5:7b", "created_at": "2026-11-27T00:00:00Z",
            "message": {"role": "assistant", "content": text},
            "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 4
        })
        .to_string(),
    )
}

/// A priced OpenAI-compatible provider `cloud`, a local Ollama `local`, and `budget` (TOML of
/// one `[[llm.budgets]]` entry) when given.
fn llm_config(cloud: &FakeService, local: &FakeService, budget: Option<&str>) -> LlmConfig {
    let providers = [
        format!(
            "name = \"cloud\"\napi = \"openai\"\nurl = \"{}/v1\"\nmodel = \"gpt-test\"\n\
             key_env = \"CLOUD_KEY\"\nmax_retries = 0\nprice = {{ input = 1.0, output = 2.0 }}",
            cloud.url
        ),
        format!(
            "name = \"local\"\napi = \"ollama\"\nurl = \"{}\"\nmodel = \"qwen2.5:7b\"",
            local.url
        ),
    ];
    let providers: Vec<(usize, _)> = providers
        .iter()
        .map(|p| (1, toml::from_str(p).unwrap()))
        .collect();
    let budgets: Vec<(usize, _)> = budget
        .map(|b| (1, toml::from_str(b).unwrap()))
        .into_iter()
        .collect();
    LlmConfig::resolve(&providers, &budgets, &|_| Some(KEY.to_owned())).expect("valid")
}

/// A webhook channel that every `budget.*` notice goes to, one message each.
fn notify_config(hook: &FakeService) -> NotifyConfig {
    let env = |_: &str| Some("whsec-llm-test-0123456789".to_owned());
    let channel: ChannelSpec = toml::from_str(&format!(
        "name = \"hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_env = \"HOOK_SECRET\"",
        hook.url
    ))
    .unwrap();
    let rule: RuleSpec =
        toml::from_str("on = [\"budget.*\"]\nto = [\"hook\"]\nquiet = \"0s\"").unwrap();
    NotifyConfig {
        channels: vec![Arc::new(Channel::resolve(channel, &env).unwrap())],
        rules: vec![Rule::resolve(rule, &["hook"]).unwrap()],
    }
}

async fn spawn(cloud: &FakeService, local: &FakeService, budget: Option<&str>) -> TestApp {
    let llm = llm_config(cloud, local, budget);
    let hook = FakeService::start().await;
    let notify = notify_config(&hook);
    TestApp::spawn_with(|s| {
        s.llm = llm;
        s.notify = notify;
    })
    .await
}

async fn test_prompt(t: &TestApp, provider: &str) -> (StatusCode, Value) {
    t.post("/api/v1/llm/test", json!({"provider": provider}))
        .await
}

/// The notifications of `event` the notices so far became.
async fn notices(t: &TestApp, event: &str) -> Vec<Value> {
    muster_server::outbox::deliver_once(&t.app)
        .await
        .expect("deliver");
    let (_, page) = t.get("/api/v1/notifications?limit=200").await;
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["event"] == event)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_test_prompt_answers_and_the_ledger_sums_what_the_provider_reported() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    cloud.default_reply(openai_answer("Hello from the cloud!", 1_000, 500));
    local.default_reply(ollama_answer("hello from the basement"));
    let t = spawn(&cloud, &local, None).await;

    let (status, answer) = test_prompt(&t, "cloud").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["answer"], "Hello from the cloud!");
    assert_eq!(answer["provider"], "cloud");
    assert_eq!(answer["model"], "gpt-test-2026");
    assert_eq!(
        (
            answer["input_tokens"].as_u64(),
            answer["output_tokens"].as_u64()
        ),
        (Some(1_000), Some(500))
    );
    // 1,000 tokens in at 1.0 and 500 out at 2.0 per million.
    assert_eq!(answer["cost"], 0.002);
    let sent = cloud.requests();
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent[0].json()["model"], "gpt-test");

    let (status, answer) = test_prompt(&t, "local").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["cost"], 0.0, "no price: free");

    let (_, usage) = t.get("/api/v1/llm/usage").await;
    assert_eq!(usage["group_by"], "workflow");
    let rows = usage["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!(rows[0]["workflow"], "test");
    assert_eq!(rows[0]["calls"], 2);
    assert_eq!(rows[0]["input_tokens"], 1_012);
    assert_eq!(rows[0]["output_tokens"], 504);
    assert_eq!(rows[0]["cost"], 0.002);
    let (_, by_model) = t.get("/api/v1/llm/usage?group_by=model").await;
    let models: Vec<(&str, &str)> = by_model["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["provider"].as_str().unwrap(),
                r["model"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        models,
        [("cloud", "gpt-test-2026"), ("local", "qwen2.5:7b")],
        "{by_model}"
    );
    assert_eq!(by_model["latency"].as_array().unwrap().len(), 2);
    let (status, _) = t.get("/api/v1/llm/usage?group_by=week").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let metrics = metrics_text(&t).await;
    assert_eq!(
        sample(
            &metrics,
            r#"muster_llm_tokens_total{direction="in",model="gpt-test-2026",workflow="test"}"#
        ),
        Some(1_000.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"muster_llm_cost_total{model="gpt-test-2026",workflow="test"}"#
        ),
        Some(0.002)
    );
    assert!(!metrics.contains(KEY));
}

#[tokio::test]
async fn an_unknown_or_failing_provider_is_named_and_the_failure_is_in_the_ledger() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    cloud.default_reply(Reply::status(
        500,
        r#"{"error": {"message": "overloaded"}}"#,
    ));
    let t = spawn(&cloud, &local, None).await;
    let (status, body) = test_prompt(&t, "nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cloud, local"), "{message}");

    let (status, body) = test_prompt(&t, "cloud").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cloud") && message.contains("500"),
        "{message}"
    );
    assert!(!message.contains(KEY), "{message}");
    let (_, usage) = t.get("/api/v1/llm/usage").await;
    assert_eq!(usage["rows"][0]["errors"], 1, "{usage}");
}

#[tokio::test]
async fn a_spent_budget_refuses_before_the_call_and_says_so_once() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    cloud.default_reply(openai_answer("hi", 1_000, 500));
    let t = spawn(
        &cloud,
        &local,
        Some("workflow = \"test\"\nperiod = \"day\"\ntokens = 1000"),
    )
    .await;
    let (status, _) = test_prompt(&t, "cloud").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first call is within the budget"
    );
    let exceeded = notices(&t, "budget.exceeded").await;
    assert_eq!(exceeded.len(), 1, "the call that spent it says so");
    let words = exceeded[0]["message"].as_str().unwrap();
    assert!(
        words.contains("test spent the test budget of 1000 tokens a day"),
        "{words}"
    );

    let (status, body) = test_prompt(&t, "cloud").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the test budget of 1000 tokens a day is spent"),
        "{message}"
    );
    assert_eq!(cloud.requests().len(), 1, "the refused call was never sent");
    assert_eq!(notices(&t, "budget.exceeded").await.len(), 1, "said once");
    let (_, usage) = t.get("/api/v1/llm/usage").await;
    assert_eq!(usage["rows"][0]["calls"], 2, "the refusal is in the ledger");
    assert_eq!(usage["rows"][0]["errors"], 1);

    let metrics = metrics_text(&t).await;
    assert_eq!(
        sample(
            &metrics,
            r#"muster_llm_budget_left{unit="tokens",workflow="test"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"muster_llm_budget_spent{unit="tokens",workflow="test"}"#
        ),
        Some(1_500.0)
    );

    // A new day, a new budget.
    t.advance(Duration::from_secs(86_400));
    let (status, _) = test_prompt(&t, "cloud").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_spent_budget_with_a_fallback_sends_the_call_to_the_local_model() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    cloud.default_reply(openai_answer("from the cloud", 1_000, 500));
    local.default_reply(ollama_answer("from the basement"));
    let t = spawn(
        &cloud,
        &local,
        Some(
            "workflow = \"test\"\nperiod = \"month\"\nmoney = 0.001\nover = \"fallback\"\n\
             fallback = \"local\"",
        ),
    )
    .await;
    let (_, first) = test_prompt(&t, "cloud").await;
    assert_eq!(first["provider"], "cloud");
    let (status, second) = test_prompt(&t, "cloud").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["provider"], "local");
    assert_eq!(second["answer"], "from the basement");
    assert_eq!(cloud.requests().len(), 1, "the cloud saw only the first");
    assert_eq!(local.requests().len(), 1);
    assert_eq!(local.requests()[0].path, "/api/chat");
}

#[tokio::test]
async fn a_day_five_times_the_median_raises_a_spike_and_an_ordinary_day_does_not() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    // 300 tokens per ordinary call, priced: 0.0007 per call.
    cloud.default_reply(openai_answer("ok", 100, 100));
    let t = spawn(&cloud, &local, None).await;
    for _ in 0..7 {
        let (status, _) = test_prompt(&t, "cloud").await;
        assert_eq!(status, StatusCode::OK);
        t.advance(Duration::from_secs(86_400));
    }
    // An ordinary day: one call, as every day before.
    test_prompt(&t, "cloud").await;
    assert!(notices(&t, "budget.spike").await.is_empty());
    t.advance(Duration::from_secs(86_400));
    // Five times the median day (the fourth call crosses three times the median).
    for _ in 0..5 {
        test_prompt(&t, "cloud").await;
    }
    let spikes = notices(&t, "budget.spike").await;
    assert_eq!(spikes.len(), 1, "raised once: {spikes:?}");
    let words = spikes[0]["message"].as_str().unwrap();
    assert!(
        words.contains("test spent 0.0012 in money today, over 3 times the median day of the week before (0.0003 in money)"),
        "{words}"
    );
}

#[tokio::test]
async fn an_agents_chat_goes_through_the_server_with_its_tools_and_its_budget() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    cloud.default_reply(Reply::ok(
        json!({
            "id": "c2", "object": "chat.completion", "model": "gpt-test-2026",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "restart_container", "arguments": "{\"container\": \"jellyfin\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "restart_container", "arguments": "{container: jellyfin"}}
                ]}}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}
        })
        .to_string(),
    ));
    let t = spawn(
        &cloud,
        &local,
        Some("workflow = \"repair\"\nperiod = \"day\"\ntokens = 300"),
    )
    .await;
    let chat = json!({
        "workflow": "repair",
        "provider": "cloud",
        "system": "Choose one action.",
        "messages": [{"role": "user", "content": "jellyfin is down"}],
        "tools": [{"name": "restart_container", "description": "Restart a container",
                   "parameters": {"type": "object", "properties": {"container": {"type": "string"}}}}]
    });
    let (status, answer) = t.post("/api/v1/llm/chat", chat.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["stop"], "tool_calls");
    let calls = answer["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{answer}");
    assert_eq!(calls[0]["arguments"]["container"], "jellyfin");
    assert!(calls[0]["bad_arguments"].is_null());
    assert!(calls[1]["arguments"].is_null());
    assert_eq!(calls[1]["bad_arguments"], "{container: jellyfin");
    let sent = cloud.requests()[0].json();
    assert_eq!(sent["tools"][0]["function"]["name"], "restart_container");
    assert_eq!(sent["messages"][0]["role"], "system");

    // The follow-up turn echoes the calls and answers them; the budget is spent by now.
    let mut follow = chat.clone();
    follow["messages"] = json!([
        {"role": "user", "content": "jellyfin is down"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "call_id": "call_a", "name": "restart_container", "content": "restarted"}
    ]);
    let (status, refused) = t.post("/api/v1/llm/chat", follow).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(cloud.requests().len(), 1, "nothing sent over budget");
    let (_, usage) = t.get("/api/v1/llm/usage").await;
    assert_eq!(usage["rows"][0]["workflow"], "repair", "{usage}");
    assert_eq!(usage["rows"][0]["calls"], 2);

    for (bad, field) in [
        (
            json!({"workflow": "repair", "provider": "cloud", "messages": []}),
            "messages",
        ),
        (
            json!({"workflow": " ", "provider": "cloud",
                "messages": [{"role": "user", "content": "x"}]}),
            "workflow",
        ),
        (
            json!({"workflow": "repair", "provider": "cloud",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": "t", "parameters": "string"}]}),
            "tools[0].parameters",
        ),
        (
            json!({"workflow": "repair", "provider": "cloud",
                "messages": [{"role": "robot", "content": "x"}]}),
            "role",
        ),
    ] {
        let (status, body) = t.post("/api/v1/llm/chat", bad).await;
        assert!(status.is_client_error(), "{field}: {status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_eq!(cloud.requests().len(), 1, "a refused request sends nothing");
}

#[tokio::test]
async fn a_chat_may_name_another_model_of_an_unpriced_provider_only() {
    let (cloud, local) = (FakeService::start().await, FakeService::start().await);
    local.default_reply(ollama_answer("hi"));
    let t = spawn(&cloud, &local, None).await;
    let chat = |provider: &str| {
        json!({"workflow": "chat", "provider": provider, "model": "llama3.1:8b",
               "messages": [{"role": "user", "content": "hello"}]})
    };
    let (status, answer) = t.post("/api/v1/llm/chat", chat("local")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(local.requests()[0].json()["model"], "llama3.1:8b");

    // The cloud provider's price table is its own model's: another model would be mispriced.
    let (status, refused) = t.post("/api/v1/llm/chat", chat("cloud")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("model") && message.contains("gpt-test"),
        "{message}"
    );
    assert!(
        cloud.requests().is_empty(),
        "nothing sent for a refused model"
    );
    let mut same = chat("cloud");
    same["model"] = json!("gpt-test");
    cloud.default_reply(openai_answer("hi", 3, 1));
    let (status, answer) = t.post("/api/v1/llm/chat", same).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "its own model may be named: {answer}"
    );
}
