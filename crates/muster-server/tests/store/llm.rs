//! The LLM ledger against every backend: calls summed by workflow, model and day; what a
//! workflow spent since a time; p95 latency; and retention folding calls into daily sums
//! without changing a total.

use muster_api::{LlmOutcome, UsageGroup};
use muster_server::store::{LlmCall, Spent};

use crate::*;

const DAY: i64 = 86_400_000;
/// A UTC midnight: 2023-11-15.
const MIDNIGHT: i64 = 1_700_006_400_000;

fn call(workflow: &str, model: &str, at: i64, tokens: (u64, u64), cost_micros: i64) -> LlmCall {
    LlmCall {
        id: Uuid::now_v7(),
        at,
        workflow: workflow.into(),
        provider: if model.starts_with("qwen") {
            "local"
        } else {
            "cloud"
        }
        .into(),
        model: model.into(),
        prompt_hash: "abc".into(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        cached_tokens: 0,
        latency_ms: tokens.1,
        cost_micros,
        outcome: LlmOutcome::Ok,
        error: None,
    }
}

async fn record(b: &Backend, calls: Vec<LlmCall>) {
    for c in calls {
        b.store
            .record_llm_call(c, Vec::new())
            .await
            .expect("record");
    }
}

#[tokio::test]
async fn the_ledger_sums_by_workflow_model_and_day_and_folding_keeps_every_total() {
    for b in backends().await {
        let mut failed = call("repair", "llama", MIDNIGHT + DAY + 3, (5, 0), 0);
        failed.outcome = LlmOutcome::Error;
        failed.error = Some("timed out".into());
        record(
            &b,
            vec![
                call("repair", "qwen2.5", MIDNIGHT + 10, (100, 20), 0),
                call("repair", "llama", MIDNIGHT + 20, (1_000, 200), 1_500),
                call("canary", "llama", MIDNIGHT + DAY + 1, (10, 2), 30),
                failed,
                // Before the window.
                call("repair", "llama", MIDNIGHT - 1, (7, 7), 7),
            ],
        )
        .await;
        let check = |b: &Backend| {
            let store = b.store.clone();
            let name = b.name;
            async move {
                let by_workflow = store
                    .llm_usage(UsageGroup::Workflow, MIDNIGHT)
                    .await
                    .expect("usage");
                let sums: Vec<(Option<String>, u64, u64, u64, f64)> = by_workflow
                    .iter()
                    .map(|r| {
                        (
                            r.workflow.clone(),
                            r.calls,
                            r.errors,
                            r.input_tokens + r.output_tokens,
                            r.cost,
                        )
                    })
                    .collect();
                assert_eq!(
                    sums,
                    vec![
                        (Some("canary".into()), 1, 0, 12, 0.00003),
                        (Some("repair".into()), 3, 1, 1_325, 0.0015),
                    ],
                    "[{name}]"
                );
                let by_model = store
                    .llm_usage(UsageGroup::Model, MIDNIGHT)
                    .await
                    .expect("usage");
                assert_eq!(by_model.len(), 2, "[{name}]");
                assert_eq!(by_model[0].provider.as_deref(), Some("cloud"));
                assert_eq!(by_model[0].model.as_deref(), Some("llama"));
                assert_eq!(by_model[0].calls, 3, "[{name}]");
                let by_day = store
                    .llm_usage(UsageGroup::Day, MIDNIGHT)
                    .await
                    .expect("usage");
                let days: Vec<(Option<&str>, Option<&str>, u64)> = by_day
                    .iter()
                    .map(|r| (r.day.as_deref(), r.workflow.as_deref(), r.calls))
                    .collect();
                assert_eq!(
                    days,
                    vec![
                        (Some("2023-11-15"), Some("repair"), 2),
                        (Some("2023-11-16"), Some("canary"), 1),
                        (Some("2023-11-16"), Some("repair"), 1),
                    ],
                    "[{name}]"
                );
                assert_eq!(
                    store
                        .llm_spent("repair".into(), MIDNIGHT)
                        .await
                        .expect("spent"),
                    Spent {
                        calls: 3,
                        tokens: 1_325,
                        cost_micros: 1_500
                    },
                    "[{name}]"
                );
                let daily = store
                    .llm_daily_spend("repair".into(), MIDNIGHT - DAY)
                    .await
                    .expect("daily");
                let daily: Vec<(&str, i64)> = daily
                    .iter()
                    .map(|(d, s)| (d.as_str(), s.cost_micros))
                    .collect();
                assert_eq!(
                    daily,
                    vec![("2023-11-14", 7), ("2023-11-15", 1_500), ("2023-11-16", 0)],
                    "[{name}]"
                );
            }
        };
        check(&b).await;
        let latency = b.store.llm_latency(MIDNIGHT).await.expect("latency");
        assert_eq!(latency.len(), 2, "[{}] {latency:?}", b.name);
        assert_eq!(
            (
                latency[0].model.as_str(),
                latency[0].calls,
                latency[0].p95_ms
            ),
            ("llama", 2, 200),
            "[{}] ok calls only",
            b.name
        );

        // Folding every call into daily sums changes no total.
        let mut folded = 0;
        loop {
            let n = b
                .store
                .prune_llm_calls(MIDNIGHT + 2 * DAY)
                .await
                .expect("prune");
            if n == 0 {
                break;
            }
            folded += n;
        }
        assert_eq!(folded, 5, "[{}]", b.name);
        check(&b).await;
        assert!(
            b.store
                .llm_latency(MIDNIGHT)
                .await
                .expect("latency")
                .is_empty(),
            "[{}] latency needs the calls themselves",
            b.name
        );
        // A day split by the fold still sums once.
        record(&b, vec![call("repair", "llama", MIDNIGHT + 30, (1, 1), 1)]).await;
        let spent = b
            .store
            .llm_spent("repair".into(), MIDNIGHT)
            .await
            .expect("spent");
        assert_eq!(spent.calls, 4, "[{}]", b.name);
        assert_eq!(spent.cost_micros, 1_501, "[{}]", b.name);
    }
}
