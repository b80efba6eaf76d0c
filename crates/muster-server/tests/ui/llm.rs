//! The LLM usage page over plain HTTP: the spend chart and the sums of calls recorded straight
//! into the ledger at the server's clock, budgets with what is left, providers without their
//! keys, the window's bounds, and names escaped.

use muster_api::LlmOutcome;
use muster_server::llm::LlmConfig;
use muster_server::store::LlmCall;
use reqwest::StatusCode;

use crate::helpers::TestApp;
use crate::web::Web;

pub const SECRET: &str = "sk-secret-test";
pub const DAY_MS: i64 = 86_400_000;
const SCRIPT: &str = "<script>alert(1)</script>";

pub const CLOUD: &str = "name = \"cloud\"\napi = \"openai\"\nurl = \"https://llm.example.com/v1\"\n\
                     model = \"gpt-test\"\nkey_env = \"CLOUD_KEY\"\n\
                     price = { input = 1.0, output = 2.0 }";
pub const LOCAL: &str =
    "name = \"local\"\napi = \"ollama\"\nurl = \"http://127.0.0.1:11434\"\nmodel = \"qwen2.5:7b\"";
pub const BUDGET: &str = "workflow = \"repair\"\nperiod = \"day\"\ntokens = 10000\nmoney = 1.0\n\
                      over = \"fallback\"\nfallback = \"local\"\nspike_factor = 4.0";

/// The `[llm]` section of `providers` and `budgets` (TOML of one entry each), every key
/// [`SECRET`].
pub fn llm_config(providers: &[&str], budgets: &[&str]) -> LlmConfig {
    let providers: Vec<(usize, _)> = providers
        .iter()
        .map(|p| (1, toml::from_str(p).expect("provider TOML")))
        .collect();
    let budgets: Vec<(usize, _)> = budgets
        .iter()
        .map(|b| (1, toml::from_str(b).expect("budget TOML")))
        .collect();
    LlmConfig::resolve(&providers, &budgets, &|_| Some(SECRET.into())).expect("valid")
}

/// A call to put in the ledger.
pub struct Call {
    pub workflow: &'static str,
    pub provider: &'static str,
    pub model: &'static str,
    /// Before the server's now.
    pub ago_ms: i64,
    pub tokens: (u64, u64),
    pub cost_micros: i64,
    pub latency_ms: u64,
    pub outcome: LlmOutcome,
}

/// An answered call to `cloud`'s model.
pub const fn ok(
    workflow: &'static str,
    ago_ms: i64,
    tokens: (u64, u64),
    cost_micros: i64,
    latency_ms: u64,
) -> Call {
    Call {
        workflow,
        provider: "cloud",
        model: "gpt-test",
        ago_ms,
        tokens,
        cost_micros,
        latency_ms,
        outcome: LlmOutcome::Ok,
    }
}

/// Records `calls` straight into the ledger, at the server's clock less each one's `ago_ms`.
pub async fn record(t: &TestApp, calls: &[Call]) {
    let now = t.app.now_ms();
    for c in calls {
        let call = LlmCall {
            id: uuid::Uuid::now_v7(),
            at: now - c.ago_ms,
            workflow: c.workflow.into(),
            provider: c.provider.into(),
            model: c.model.into(),
            prompt_hash: "0123456789abcdef".into(),
            input_tokens: c.tokens.0,
            output_tokens: c.tokens.1,
            cached_tokens: 0,
            latency_ms: c.latency_ms,
            cost_micros: c.cost_micros,
            outcome: c.outcome,
            error: (c.outcome != LlmOutcome::Ok).then(|| "timed out".to_owned()),
        };
        t.app
            .store
            .record_llm_call(call, Vec::new())
            .await
            .expect("recorded");
    }
}

/// The part of `page` from `start` to the next `end`.
fn part<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {page}"));
    let to = page[from..].find(end).map_or(page.len(), |i| from + i);
    &page[from..to]
}

/// The cells of a table's row whose header cell is `name`, as text.
fn cells(page: &str, table: &str, name: &str) -> Vec<String> {
    let table = part(page, &format!(r#"<table class="{table}""#), "</table>");
    let row = part(table, &format!(r#"<th scope="row">{name}</th>"#), "</tr>");
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let mut text = String::new();
            let mut in_tag = false;
            for c in cell[cell.find('>').unwrap() + 1..].chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text
        })
        .collect()
}

#[tokio::test]
async fn the_page_charts_spend_per_day_and_workflow_and_sums_it() {
    let llm = llm_config(&[CLOUD, LOCAL], &[BUDGET]);
    let t = TestApp::spawn_with(|s| s.llm = llm).await;
    let mut failed = ok("canary", 0, (0, 0), 0, 9_000);
    failed.provider = "local";
    failed.model = "qwen2.5:7b";
    failed.outcome = LlmOutcome::Error;
    record(
        &t,
        &[
            ok("repair", 0, (1_000, 500), 2_000, 100),
            ok("repair", 0, (2_000, 1_000), 4_000, 300),
            ok("repair", DAY_MS, (500, 100), 700, 200),
            Call {
                provider: "local",
                model: "qwen2.5:7b",
                ..ok("canary", 0, (100, 20), 0, 50)
            },
            failed,
            ok(SCRIPT, 0, (10, 10), 30, 40),
        ],
    )
    .await;
    let mut web = Web::new(&t);
    let page = web.visit("/llm").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(
        body.contains(r#"href="/llm" aria-current="page""#),
        "in the nav"
    );

    // The chart: one segment per day and workflow with calls (today three, yesterday one).
    let chart = part(body, "<svg", "</svg>");
    assert!(chart.contains(r#"role="img""#), "{chart}");
    assert!(chart.contains("aria-label=\"Spend per day and workflow, in money"));
    assert_eq!(chart.matches("<rect").count(), 4, "{chart}");
    assert!(
        chart.contains("· repair: 0.006 (2 calls)</title>"),
        "{chart}"
    );
    assert!(
        chart.contains("· repair: 0.0007 (1 call)</title>"),
        "{chart}"
    );
    assert!(
        chart.contains("· canary: 0.00 (2 calls)</title>"),
        "{chart}"
    );
    let legend = part(body, r#"<ul class="legend">"#, "</ul>");
    for name in ["repair", "canary", "&lt;script&gt;alert(1)&lt;/script&gt;"] {
        assert!(legend.contains(name), "{name} in {legend}");
    }

    // Per workflow: calls, errors, tokens in and out, cost.
    assert_eq!(
        cells(body, "llm-workflows", "repair"),
        ["3", "0", "3500", "1600", "0.0067"]
    );
    assert_eq!(
        cells(body, "llm-workflows", "canary"),
        ["2", "1", "100", "20", "0.00"]
    );
    // Per provider and model, with p95 latency over the answered calls (nearest rank).
    assert_eq!(
        cells(body, "llm-models", "cloud"),
        ["gpt-test", "4", "0", "3510", "1610", "0.00673", "300 ms"]
    );
    assert_eq!(
        cells(body, "llm-models", "local"),
        ["qwen2.5:7b", "2", "1", "100", "20", "0.00", "50 ms"]
    );

    // The budget counts today only: 4500 tokens and 0.006 of 10000 tokens and 1.00.
    let budget = cells(body, "llm-budgets", "repair");
    assert_eq!(budget[0], "day");
    assert_eq!(
        budget[1],
        "the repair budget of 10000 tokens and 1.00 in money a day"
    );
    assert_eq!(budget[2], "4500 tokens, 0.006 (2 calls)");
    assert_eq!(budget[3], "5500 tokens and 0.99");
    assert_eq!(budget[4], "fall back to local");
    assert_eq!(budget[5], "×4");

    // Providers as configured, the key only as "key set".
    let cloud = cells(body, "llm-providers", "cloud");
    assert_eq!(
        cloud,
        [
            "openai",
            "gpt-test",
            "https://llm.example.com/v1",
            "key set",
            "in 1 · out 2"
        ]
    );
    let local = cells(body, "llm-providers", "local");
    assert_eq!(local[3], "no key");
    assert_eq!(local[4], "free / not priced");
    assert!(!body.contains(SECRET), "the key shows");
    assert!(!body.contains(SCRIPT), "a name became markup");

    // Today only: yesterday's segment is gone.
    let today = web.get("/llm?days=1").await;
    assert_eq!(today.status, StatusCode::OK, "{}", today.body);
    let chart = part(&today.body, "<svg", "</svg>");
    assert_eq!(chart.matches("<rect").count(), 3, "{chart}");
    assert_eq!(
        cells(&today.body, "llm-workflows", "repair"),
        ["2", "0", "3000", "1500", "0.006"]
    );
}

#[tokio::test]
async fn a_window_outside_one_to_365_days_is_refused() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    web.visit("/").await;
    for bad in ["0", "366", "-1", "week"] {
        let page = web.get(&format!("/llm?days={bad}")).await;
        assert_eq!(
            page.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            page.body
        );
        assert!(page.body.contains("days:"), "{bad}: {}", page.body);
    }
    for good in ["1", "365", "12"] {
        let page = web.get(&format!("/llm?days={good}")).await;
        assert_eq!(page.status, StatusCode::OK, "{good}: {}", page.body);
    }
}

#[tokio::test]
async fn without_providers_or_calls_the_page_says_what_to_do() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    let page = web.visit("/llm").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("No LLM provider is configured"),
        "{}",
        page.body
    );
    assert!(page.body.contains("LLM providers and budgets"));
    assert!(page.body.contains("No LLM calls in the last 30 days."));
    assert!(!page.body.contains("<svg"));
    assert!(!page.body.contains("llm-workflows"), "no empty tables");

    // Configured, still no calls: the providers show, the chart says there is nothing yet.
    let llm = llm_config(&[LOCAL], &[]);
    let t = TestApp::spawn_with(|s| s.llm = llm).await;
    let mut web = Web::new(&t);
    let page = web.visit("/llm").await;
    assert!(!page.body.contains("No LLM provider is configured"));
    assert!(page.body.contains("No LLM calls in the last 30 days."));
    assert!(page.body.contains("No budgets"), "{}", page.body);
    assert_eq!(cells(&page.body, "llm-providers", "local")[3], "no key");
}

#[tokio::test]
async fn unpriced_calls_are_charted_in_tokens() {
    let llm = llm_config(&[LOCAL], &[]);
    let t = TestApp::spawn_with(|s| s.llm = llm).await;
    record(
        &t,
        &[Call {
            provider: "local",
            model: "qwen2.5:7b",
            ..ok("repair", 0, (120, 30), 0, 80)
        }],
    )
    .await;
    let mut web = Web::new(&t);
    let page = web.visit("/llm").await;
    let chart = part(&page.body, "<svg", "</svg>");
    assert!(chart.contains("in tokens (no call was priced)"), "{chart}");
    assert!(
        chart.contains("· repair: 150 tokens (1 call)</title>"),
        "{chart}"
    );
}
