//! LLM sessions as tasks, end to end: a real `muster serve` (with its ledger and budgets) in
//! front of a fake OpenAI-compatible provider, a real agent runtime with the `llm` executor,
//! and a real MCP server (`muster-test-mcp`, rmcp's server side) started by the session over
//! stdio. The model's turns are scripted; everything else is the real path.

mod support;

use std::path::Path;

use muster_api::{TaskState, UsageGroup};
use muster_server::llm::LlmConfig;
use serde_json::{Value, json};
use support::fake_llm::{FakeLlm, final_answer, tool_calls};
use support::{Plane, read_pid, start_agent, wait_gone};

/// A control plane whose provider `cloud` is `fake`, with `budget` (one `[[llm.budgets]]`
/// entry) when given.
async fn plane(fake: &FakeLlm, budget: Option<&str>) -> Plane {
    let providers = [(1, toml::from_str(&fake.provider_toml()).unwrap())];
    let budgets: Vec<(usize, _)> = budget
        .map(|b| (1, toml::from_str(b).unwrap()))
        .into_iter()
        .collect();
    let llm = LlmConfig::resolve(&providers, &budgets, &|_| None).expect("valid llm config");
    Plane::start_with(|s| s.llm = llm).await
}

/// An agent with the `llm` executor: two actions, and the test MCP server over stdio with
/// four of its six tools allowed (`greet` and `secret` are not). `llm` is added to `[llm]`.
fn agent_config(dir: &Path, llm: &str) -> String {
    format!(
        r#"
[agent]
id = "llm-agent"
heartbeat_s = 1

[llm]
provider = "cloud"
{llm}

[[actions]]
name = "disk_free"
description = "How much room a mount has"
argv = ["echo", "{{mount}} has 42G free"]
params = {{ mount = "^/[a-z]*$" }}
param_descriptions = {{ mount = "a mount point" }}

[[actions]]
name = "touch"
argv = ["touch", "{dir}/{{file}}"]
params = {{ file = "[a-z]+" }}

[[mcp.servers]]
name = "tools"
command = "{server}"
args = ["stdio"]
env = {{ MCP_TEST_PID_FILE = "{dir}/mcp.pid" }}
tools = ["add", "note", "fail", "sleep"]
"#,
        dir = dir.display(),
        server = env!("CARGO_BIN_EXE_muster-test-mcp"),
    )
}

/// The names of the tools a request the provider received offered.
fn offered(request: &Value) -> Vec<&str> {
    request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect()
}

/// The tool messages of a request the provider received, by call id.
fn tool_results(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_session_calls_an_mcp_tool_and_an_action_then_answers_with_usage_in_the_ledger() {
    let fake = FakeLlm::start().await;
    fake.reply(tool_calls(
        "Let me add first.",
        &[("tools__add", json!({"a": 2, "b": 3}))],
        1000,
        100,
    ));
    fake.reply(tool_calls(
        "Now the disk.",
        &[("disk_free", json!({"mount": "/srv"}))],
        1200,
        50,
    ));
    fake.reply(final_answer("2 + 3 = 5, and /srv has 42G free.", 1400, 20));
    let plane = plane(&fake, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &agent_config(dir.path(), ""));

    let task = plane
        .submit(
            "llm",
            json!({"prompt": "Add 2 and 3, then check /srv.", "system": "Use the tools."}),
        )
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    let result = task.result.clone().unwrap();
    assert_eq!(result["answer"], "2 + 3 = 5, and /srv has 42G free.");
    assert_eq!(result["turns"], 3);
    assert_eq!(result["tool_calls"], 2);
    assert_eq!(result["provider"], "cloud");
    let usage = task.usage.clone().expect("the session's usage");
    assert_eq!(usage["input_tokens"], 3600);
    assert_eq!(usage["output_tokens"], 170);
    assert_eq!(usage["calls"], 3);
    // 3600 tokens in at 1 per million and 170 out at 2 per million.
    let cost = usage["cost"].as_f64().unwrap();
    assert!((cost - 0.00394).abs() < 1e-9, "{usage}");

    // What the model was sent: the tools, the system prompt, and each tool's result.
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        offered(&requests[0]),
        [
            "disk_free",
            "touch",
            "tools__add",
            "tools__note",
            "tools__fail",
            "tools__sleep"
        ]
    );
    assert_eq!(requests[0]["messages"][0]["role"], "system");
    assert_eq!(
        tool_results(&requests[1]),
        [("call_0".to_owned(), "5".to_owned())]
    );
    assert_eq!(
        tool_results(&requests[2])[1],
        ("call_0".to_owned(), "/srv has 42G free\n".to_owned())
    );

    // The operator saw the session as it went.
    let log = plane.log_text(&task).await;
    for line in [
        "Let me add first.",
        r#"→ tools__add {"a":2,"b":3}"#,
        "← tools__add said: 5",
        r#"→ disk_free {"mount":"/srv"}"#,
        "/srv has 42G free",
        "2 + 3 = 5, and /srv has 42G free.",
    ] {
        assert!(log.contains(line), "{line:?} missing from the log:\n{log}");
    }

    // Every turn is in the ledger under the session's workflow.
    let ledger = plane
        .client
        .llm_usage(UsageGroup::Workflow, 1)
        .await
        .unwrap();
    let row = ledger
        .rows
        .iter()
        .find(|r| r.workflow.as_deref() == Some("llm"));
    let row = row.expect("the llm workflow in the ledger");
    assert_eq!(
        (row.calls, row.input_tokens, row.output_tokens),
        (3, 3600, 170)
    );

    // The MCP server was the session's child and ended with it.
    let pid = read_pid(&dir.path().join("mcp.pid")).await;
    wait_gone(pid, "the session's MCP server").await;
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn refused_invalid_and_failing_tool_calls_go_back_to_the_model_and_nothing_runs() {
    let fake = FakeLlm::start().await;
    fake.reply(tool_calls(
        "",
        &[
            ("tools__secret", json!({})),
            ("rm", json!({"path": "/"})),
            ("touch", json!({"file": "x; touch pwned"})),
            ("tools__add", json!("{a: 1")),
            ("tools__add", json!({"a": "one", "b": 2})),
            ("tools__fail", json!({})),
        ],
        500,
        60,
    ));
    fake.reply(final_answer("Nothing worked.", 900, 10));
    let plane = plane(&fake, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &agent_config(dir.path(), ""));

    let task = plane.submit("llm", json!({"prompt": "Try things."})).await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.result.as_ref().unwrap()["tool_calls"], 6);

    let results = tool_results(&fake.requests()[1]);
    let said: Vec<&str> = results
        .iter()
        .map(|(_, content)| content.as_str())
        .collect();
    assert_eq!(said.len(), 6, "{said:?}");
    assert!(
        said[0].contains("\"tools__secret\" is not a tool of this session"),
        "{}",
        said[0]
    );
    assert!(said[1].contains("\"rm\" is not a tool"), "{}", said[1]);
    assert!(
        said[2].contains("\"file\"") && said[2].contains("nothing ran"),
        "{}",
        said[2]
    );
    assert!(said[3].contains("not a JSON object"), "{}", said[3]);
    // The server's own check of its arguments, in its words.
    assert!(said[4].contains("expected i64"), "{}", said[4]);
    assert!(said[5].contains("the disk is on fire"), "{}", said[5]);
    assert!(
        !dir.path().join("x; touch pwned").exists() && !dir.path().join("pwned").exists(),
        "a refused action ran"
    );
    let log = plane.log_text(&task).await;
    assert!(
        log.contains("← tools__fail failed: the disk is on fire"),
        "{log}"
    );
    assert!(log.contains("← tools__add failed:"), "{log}");
    assert!(!log.contains("$ touch"), "a refused action ran:\n{log}");
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn over_budget_a_session_sends_nothing_and_fails_saying_so() {
    let fake = FakeLlm::start().await;
    fake.default_reply(final_answer("Done.", 1000, 500));
    let plane = plane(
        &fake,
        Some("workflow = \"nightly\"\nperiod = \"day\"\ntokens = 100"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &agent_config(dir.path(), ""));
    let payload = json!({"prompt": "Summarise the night.", "workflow": "nightly"});

    // The first session spends the day's budget; the budget is checked before a call.
    let first = plane.submit("llm", payload.clone()).await;
    let first = plane.wait_final(&first).await;
    assert_eq!(first.state, TaskState::Completed, "{first:?}");
    assert_eq!(fake.requests().len(), 1);

    let second = plane.submit("llm", payload).await;
    let second = plane.wait_final(&second).await;
    assert_eq!(second.state, TaskState::Failed, "{second:?}");
    let error = second.error.as_deref().unwrap();
    assert!(
        error.contains("budget") && error.contains("turn 1 was not sent"),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 1, "the provider saw no request");
    assert_eq!(second.attempts.len(), 1, "a spent budget is not retried");
    let pid = read_pid(&dir.path().join("mcp.pid")).await;
    wait_gone(pid, "the refused session's MCP server").await;
    stop.cancel();
    agent.await.unwrap();
}

/// `muster-test-mcp http`: the test MCP server over streamable HTTP on a free loopback port,
/// refusing requests without `token`. Killed when dropped.
struct HttpMcp {
    url: String,
    _child: tokio::process::Child,
}

async fn http_mcp(token: &str) -> HttpMcp {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_muster-test-mcp"))
        .arg("http")
        .env("MCP_TEST_TOKEN", token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the test MCP server starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the test MCP server says where it listens")
        .unwrap()
        .unwrap();
    let url = first.strip_prefix("listening on ").unwrap().to_owned();
    HttpMcp { url, _child: child }
}

#[tokio::test]
async fn over_streamable_http_a_session_keeps_one_mcp_session_and_sends_its_token() {
    let server = http_mcp("s3cret-token").await;
    let fake = FakeLlm::start().await;
    fake.reply(tool_calls(
        "",
        &[("remote__note", json!({"text": "one"}))],
        100,
        10,
    ));
    fake.reply(tool_calls(
        "",
        &[("remote__note", json!({"text": "two"}))],
        200,
        10,
    ));
    fake.reply(final_answer("Two notes.", 300, 5));
    let plane = plane(&fake, None).await;
    let config = format!(
        r#"
[agent]
id = "llm-http"
heartbeat_s = 1

[llm]
provider = "cloud"

[[mcp.servers]]
name = "remote"
url = "{url}"
token_env = "REMOTE_MCP_TOKEN"
tools = ["note", "add"]

[[mcp.servers]]
name = "locked"
url = "{url}"
token_env = "WRONG_MCP_TOKEN"
tools = ["add"]
"#,
        url = server.url
    );
    let env = |var: &str| match var {
        "REMOTE_MCP_TOKEN" => Some("s3cret-token".to_owned()),
        "WRONG_MCP_TOKEN" => Some("not-the-token".to_owned()),
        _ => None,
    };
    let (stop, agent) = support::start_agent_with_env(&plane, &config, &env);

    let task = plane
        .submit(
            "llm",
            json!({"prompt": "Take two notes.", "tools": ["remote"]}),
        )
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.result.as_ref().unwrap()["answer"], "Two notes.");
    assert_eq!(task.usage.as_ref().unwrap()["calls"], 3);
    let requests = fake.requests();
    assert_eq!(offered(&requests[0]), ["remote__note", "remote__add"]);
    // The agent registered its MCP servers (the command center's `mcp_servers`), no token.
    let registered = plane.client.agent("llm-http").await.unwrap().mcp_servers;
    assert_eq!(
        registered[0],
        json!({"name": "remote", "transport": "streamable-http", "tools": ["note", "add"]})
    );
    assert_eq!(registered.len(), 2);
    // The second note found the first: both calls were one MCP session.
    assert_eq!(tool_results(&requests[2])[1].1, "2 notes stored");
    let log = plane.log_text(&task).await;
    assert!(log.contains("← remote__note said: 2 notes stored"), "{log}");
    assert!(
        !log.contains("s3cret-token"),
        "a token is never logged:\n{log}"
    );

    // A server that refuses the agent's token fails the session, naming the server.
    let refused = plane
        .submit("llm", json!({"prompt": "Add.", "tools": ["locked__add"]}))
        .await;
    let refused = plane.wait_final(&refused).await;
    assert_eq!(refused.state, TaskState::Failed, "{refused:?}");
    let error = refused.error.as_deref().unwrap();
    assert!(error.contains("MCP server locked"), "{error}");
    assert_eq!(fake.requests().len(), 3, "no model call without the tools");
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn max_turns_and_the_token_cap_end_a_session_that_never_stops_calling_tools() {
    let fake = FakeLlm::start().await;
    // Every turn calls a tool again and costs 1,500 tokens.
    fake.default_reply(tool_calls(
        "Once more.",
        &[("tools__add", json!({"a": 1, "b": 1}))],
        1400,
        100,
    ));
    let plane = plane(&fake, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &agent_config(dir.path(), "max_tokens = 4000"));

    let looping = plane
        .submit("llm", json!({"prompt": "Loop.", "max_turns": 2}))
        .await;
    let looping = plane.wait_final(&looping).await;
    assert_eq!(looping.state, TaskState::Failed, "{looping:?}");
    let error = looping.error.as_deref().unwrap();
    assert!(
        error.contains("max_turns (2) reached") && error.contains("2 turns"),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 2, "no turn past max_turns");

    // Without a lower max_turns, the token cap ends it: 4,500 tokens after the third turn.
    let costly = plane.submit("llm", json!({"prompt": "Loop."})).await;
    let costly = plane.wait_final(&costly).await;
    assert_eq!(costly.state, TaskState::Failed, "{costly:?}");
    let error = costly.error.as_deref().unwrap();
    assert!(
        error.contains("token cap ([llm] max_tokens = 4000)") && error.contains("4500 tokens"),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 5);
    assert_eq!(costly.attempts.len(), 1, "a session's limit is not retried");
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_cancel_or_the_timeout_mid_session_kills_the_running_tool_and_the_stdio_mcp_server() {
    let fake = FakeLlm::start().await;
    fake.default_reply(tool_calls(
        "Waiting.",
        &[("tools__sleep", json!({"seconds": 300}))],
        100,
        10,
    ));
    let plane = plane(&fake, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &agent_config(dir.path(), ""));
    let pid_file = dir.path().join("mcp.pid");

    let task = plane.submit("llm", json!({"prompt": "Sleep."})).await;
    // The server says so on its stderr, which is in the task's log: the tool runs.
    plane.wait_log(&task, "mcp tools: sleeping 300s").await;
    let pid = read_pid(&pid_file).await;
    assert!(support::alive(pid), "the session's MCP server runs");
    plane.client.cancel(task.id).await.unwrap();
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Cancelled, "{task:?}");
    wait_gone(pid, "the cancelled session's MCP server").await;
    assert_eq!(fake.requests().len(), 1, "no turn after the cancel");

    std::fs::remove_file(&pid_file).unwrap();
    let task = plane
        .submit_with("llm", json!({"prompt": "Sleep."}), |t| {
            t.timeout_s = Some(2)
        })
        .await;
    plane.wait_log(&task, "mcp tools: sleeping 300s").await;
    let pid = read_pid(&pid_file).await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert!(
        task.error.as_deref().unwrap().contains("timed out"),
        "{task:?}"
    );
    wait_gone(pid, "the timed-out session's MCP server").await;
    assert_eq!(fake.requests().len(), 2, "no turn after the timeout");
    stop.cancel();
    agent.await.unwrap();
}

#[tokio::test]
async fn a_provider_that_fails_fails_the_attempt_and_the_session_runs_again() {
    let fake = FakeLlm::start().await;
    fake.reply_status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": {"message": "overloaded"}}),
    );
    fake.reply(final_answer("Fine now.", 10, 2));
    let plane = plane(&fake, None).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, agent) = start_agent(&plane, &agent_config(dir.path(), ""));

    let task = plane
        .submit_with("llm", json!({"prompt": "Hello.", "tools": []}), |t| {
            t.max_retries = Some(1)
        })
        .await;
    let task = plane.wait_final(&task).await;
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.result.as_ref().unwrap()["answer"], "Fine now.");
    assert_eq!(task.attempts.len(), 2, "{task:?}");
    let first = task.attempts[0].error.as_deref().unwrap();
    assert!(first.contains("turn 1") && first.contains("503"), "{first}");
    stop.cancel();
    agent.await.unwrap();
}
