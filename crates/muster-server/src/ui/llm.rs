//! The LLM usage page: what each workflow spent per day over a window of days (a stacked bar
//! chart drawn here as SVG, no script), the sums per workflow and per provider and model with
//! p95 latency, every budget with what it has left this period, and the configured providers
//! (never their keys). Budget notices link here.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use chrono::{Days, NaiveDate};
use maud::{Markup, html};
use muster_api::{LatencyRow, UsageGroup, UsageRow};

use super::layout::{self, Live, Section};
use super::{UiError, page_for};
use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::ledger;
use crate::llm::budgets::{self, Period, WhenOver};
use crate::llm::{Budget, LlmProvider};
use crate::sessions::Session;
use crate::store::Spent;

/// The longest window the page sums.
const MAX_DAYS: u32 = 365;
/// The windows offered as links; any other within 1..=365 works in the URL.
const WINDOWS: [u32; 4] = [7, 30, 90, 365];

/// `GET /llm?days=N`.
pub(super) async fn page(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    query: QueryPairs,
) -> Result<Markup, UiError> {
    let days = query
        .parse::<u32>("days")?
        .unwrap_or(ledger::DEFAULT_USAGE_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid("days", format!("must be between 1 and {MAX_DAYS}")).into());
    }
    let by_model = ledger::usage(&app, UsageGroup::Model, days).await?;
    // One window for every read, even when midnight passes between them.
    let since = by_model.since.timestamp_millis();
    let by_day = app.store.llm_usage(UsageGroup::Day, since).await?;
    let by_workflow = app.store.llm_usage(UsageGroup::Workflow, since).await?;
    let window = window_days(by_model.since.date_naive(), days);
    let settings = app.settings();
    let now = app.now_ms();
    let mut budgets = Vec::new();
    for b in &settings.llm.budgets {
        let spent = app
            .store
            .llm_spent(b.workflow.clone(), budgets::period_start(b.period, now))
            .await?;
        budgets.push((b, spent));
    }
    let providers = ledger::providers(&app);

    let content = html! {
        div.title-row { h1 { "LLM usage" } }
        nav.filters aria-label="Window" {
            @for n in WINDOWS {
                a href={ "/llm?days=" (n) } aria-current=[(n == days).then_some("page")] { (n) " days" }
            }
            @if !WINDOWS.contains(&days) { span.muted { (days) " days" } }
            @if let Some(first) = window.first() {
                span.muted { "from " (first) ", UTC days, today included" }
            }
        }
        @if providers.is_empty() {
            p.empty {
                "No LLM provider is configured. Add " code { "[[llm.providers]]" } " (and "
                code { "[[llm.budgets]]" } " to limit what a workflow may spend) to the config "
                "file (see the README's \"LLM providers and budgets\" section) and reload with SIGHUP."
            }
        }
        (spend_chart(&by_day, &window))
        @if !by_workflow.is_empty() {
            h2 { "Per workflow" }
            (workflow_table(&by_workflow))
            h2 { "Per provider and model" }
            (model_table(&by_model.rows, &by_model.latency))
            p.hint {
                "Errors count calls that failed and calls a budget refused. p95 latency is of the "
                "answered calls still kept in full; older calls live on only as daily sums."
            }
        }
        h2 { "Budgets" }
        @if budgets.is_empty() {
            p.muted { "No budgets: no workflow's calls are limited. Add " code { "[[llm.budgets]]" } " to set one." }
        } @else {
            (budget_table(&budgets))
            p.hint { "A day or a month begins at UTC midnight; spent counts from the start of the current one." }
        }
        @if !providers.is_empty() {
            h2 { "Providers" }
            (provider_table(&providers))
        }
    };
    let page = page_for(&app, &session, "LLM usage", Some(Section::Llm), Live::Off);
    Ok(layout::shell(&page, content))
}

/// Each day of the window as `YYYY-MM-DD`, oldest first.
fn window_days(first: NaiveDate, days: u32) -> Vec<String> {
    (0..u64::from(days))
        .filter_map(|n| first.checked_add_days(Days::new(n)))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect()
}

/// A cost from the ledger as [`budgets::money`] writes it.
fn cost(amount: f64) -> String {
    budgets::money((amount * 1e6).round() as i64)
}

fn calls(n: u64) -> String {
    format!("{n} call{}", if n == 1 { "" } else { "s" })
}

// Chart geometry in the SVG's own units; the stylesheet scales it to the page's width.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 28.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;
/// The widest a bar gets, so a short window does not draw slabs.
const MAX_BAR: f64 = 40.0;
/// Series colours: classes `s0`… that the stylesheet fills from its light or dark palette.
const PALETTE: usize = 6;

/// A coordinate, short and never NaN (the caller divides only by positive numbers).
fn at(v: f64) -> String {
    format!("{v:.1}")
}

/// The stacked bar chart of `rows` (grouped by day and workflow) over `days`: money when any
/// call in them was priced, else tokens; one colour per workflow, cycling the palette.
pub(super) fn spend_chart(rows: &[UsageRow], days: &[String]) -> Markup {
    let index: BTreeMap<&str, usize> = days
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let workflow = |r: &UsageRow| r.workflow.clone().unwrap_or_default();
    let mut shown: Vec<(usize, &UsageRow)> = rows
        .iter()
        .filter_map(|r| Some((*index.get(r.day.as_deref()?)?, r)))
        .collect();
    let (first, last) = match (days.first(), days.last()) {
        (Some(first), Some(last)) if !shown.is_empty() => (first, last),
        _ => {
            return html! {
                h2 { "Spend per day and workflow" }
                p.empty { "No LLM calls in " (span_of(days.len())) "." }
            };
        }
    };
    let by_money = shown.iter().any(|(_, r)| r.cost > 0.0);
    let value = |r: &UsageRow| {
        if by_money {
            r.cost
        } else {
            (r.input_tokens + r.output_tokens) as f64
        }
    };
    let show = |v: f64| {
        if by_money {
            cost(v)
        } else {
            format!("{} tokens", v.round() as u64)
        }
    };
    let mut workflows: Vec<String> = shown.iter().map(|(_, r)| workflow(r)).collect();
    workflows.sort();
    workflows.dedup();
    let series = |r: &UsageRow| workflows.binary_search(&workflow(r)).unwrap_or(0);
    shown.sort_by_key(|(day, r)| (*day, series(r)));

    let mut totals = vec![0.0; days.len()];
    for (day, r) in &shown {
        totals[*day] += value(r);
    }
    // The first of the busiest days (days is not empty here).
    let mut busiest = 0;
    for (day, total) in totals.iter().enumerate() {
        if *total > totals[busiest] {
            busiest = day;
        }
    }
    let max = totals[busiest];
    let scale = if max > 0.0 { PLOT_H / max } else { 0.0 };
    let slot = PLOT_W / days.len() as f64;
    let bar = (slot * 0.8).min(MAX_BAR);
    let base = TOP + PLOT_H;
    // Each segment's x, y and height, stacked from the axis up in the workflows' order.
    let mut stacked = vec![0.0; days.len()];
    let segments: Vec<(usize, &UsageRow, f64, f64, f64)> = shown
        .iter()
        .map(|&(day, r)| {
            let height = value(r) * scale;
            stacked[day] += height;
            let x = LEFT + slot * day as f64 + (slot - bar) / 2.0;
            (day, r, x, base - stacked[day], height)
        })
        .collect();
    let total_calls: u64 = shown.iter().map(|(_, r)| r.calls).sum();
    let title = if by_money {
        "Spend per day and workflow, in money"
    } else {
        "Spend per day and workflow, in tokens (no call was priced)"
    };
    let summary = format!(
        "{title}, {first} to {last}: {} in {} by {} workflow{}; the most in a day, {}, on {}.",
        show(totals.iter().sum()),
        calls(total_calls),
        workflows.len(),
        if workflows.len() == 1 { "" } else { "s" },
        show(max),
        days[busiest],
    );
    html! {
        figure.chart {
            figcaption { h2 { (title) } }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width=(WIDTH) height=(HEIGHT)
                role="img" aria-label=(summary) xmlns="http://www.w3.org/2000/svg" {
                line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(at(base)) {}
                line.axis x1=(LEFT) y1=(at(base)) x2=(LEFT + PLOT_W) y2=(at(base)) {}
                line.grid x1=(LEFT) y1=(TOP) x2=(LEFT + PLOT_W) y2=(TOP) {}
                text x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" {
                    (if by_money { cost(max) } else { (max.round() as u64).to_string() })
                }
                text x=(LEFT - 6.0) y=(at(base)) text-anchor="end" { "0" }
                text x=(LEFT) y=(HEIGHT - 6.0) text-anchor="start" { (first) }
                @if days.len() > 1 {
                    text x=(LEFT + PLOT_W) y=(HEIGHT - 6.0) text-anchor="end" { (last) }
                }
                @for (day, r, x, y, height) in &segments {
                    rect class={ "seg s" (series(r) % PALETTE) }
                        x=(at(*x)) y=(at(*y)) width=(at(bar)) height=(at(*height)) {
                        title { (days[*day]) " · " (workflow(r)) ": " (show(value(r))) " (" (calls(r.calls)) ")" }
                    }
                }
            }
            ul.legend {
                @for (i, name) in workflows.iter().enumerate() {
                    li { span class={ "swatch s" (i % PALETTE) } {} (name) }
                }
            }
        }
    }
}

/// "today", or "the last N days".
fn span_of(days: usize) -> String {
    if days == 1 {
        "today".to_owned()
    } else {
        format!("the last {days} days")
    }
}

fn workflow_table(rows: &[UsageRow]) -> Markup {
    let sum = |f: fn(&UsageRow) -> u64| rows.iter().map(f).sum::<u64>();
    html! {
        div.table-scroll {
            table.llm-workflows {
                thead { tr {
                    th { "Workflow" } th.num { "Calls" } th.num { "Errors" }
                    th.num { "Tokens in" } th.num { "Tokens out" } th.num { "Cost" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            th scope="row" { (r.workflow.as_deref().unwrap_or("")) }
                            (sums(r))
                        }
                    }
                }
                @if rows.len() > 1 {
                    tfoot { tr {
                        th scope="row" { "All" }
                        td.num { (sum(|r| r.calls)) }
                        td.num { (sum(|r| r.errors)) }
                        td.num { (sum(|r| r.input_tokens)) }
                        td.num { (sum(|r| r.output_tokens)) }
                        td.num { (cost(rows.iter().map(|r| r.cost).sum())) }
                    } }
                }
            }
        }
    }
}

/// A row's calls, errors, tokens in and out, and cost, as cells.
fn sums(r: &UsageRow) -> Markup {
    html! {
        td.num { (r.calls) }
        td.num { @if r.errors > 0 { span.errors { (r.errors) } } @else { "0" } }
        td.num { (r.input_tokens) }
        td.num { (r.output_tokens) }
        td.num { (cost(r.cost)) }
    }
}

fn model_table(rows: &[UsageRow], latency: &[LatencyRow]) -> Markup {
    let p95 = |r: &UsageRow| {
        latency
            .iter()
            .find(|l| {
                Some(&l.provider) == r.provider.as_ref() && Some(&l.model) == r.model.as_ref()
            })
            .map(|l| l.p95_ms)
    };
    html! {
        div.table-scroll {
            table.llm-models {
                thead { tr {
                    th { "Provider" } th { "Model" } th.num { "Calls" } th.num { "Errors" }
                    th.num { "Tokens in" } th.num { "Tokens out" } th.num { "Cost" }
                    th.num { "p95 latency" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            th scope="row" { (r.provider.as_deref().unwrap_or("")) }
                            td { code { (r.model.as_deref().unwrap_or("")) } }
                            (sums(r))
                            td.num { @match p95(r) {
                                Some(ms) => { (ms) " ms" },
                                None => span.muted { "—" },
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn budget_table(budgets: &[(&Budget, Spent)]) -> Markup {
    html! {
        div.table-scroll {
            table.llm-budgets {
                thead { tr {
                    th { "Workflow" } th { "Period" } th { "Limit" } th { "Spent this period" }
                    th { "Left" } th { "When over" } th.num { "Spike factor" }
                } }
                tbody {
                    @for (b, spent) in budgets {
                        @let (tokens_left, money_left) = b.left(spent);
                        @let left: Vec<String> = [
                            tokens_left.map(|t| format!("{t} tokens")),
                            money_left.map(budgets::money),
                        ].into_iter().flatten().collect();
                        tr {
                            th scope="row" { (b.workflow) }
                            td { (match b.period { Period::Day => "day", Period::Month => "month" }) }
                            td { (b.describe()) }
                            td { (spent.tokens) " tokens, " (budgets::money(spent.cost_micros))
                                 " (" (calls(spent.calls)) ")" }
                            td {
                                (left.join(" and "))
                                @if b.exhausted(spent) { " " span.badge.outcome-refused { "spent" } }
                            }
                            td { @match (b.over, &b.fallback) {
                                (WhenOver::Fallback, Some(to)) => { "fall back to " code { (to) } },
                                _ => "refuse",
                            } }
                            td.num { "×" (b.spike_factor) }
                        }
                    }
                }
            }
        }
    }
}

fn provider_table(providers: &[std::sync::Arc<LlmProvider>]) -> Markup {
    html! {
        div.table-scroll {
            table.llm-providers {
                thead { tr {
                    th { "Name" } th { "API" } th { "Model" } th { "URL" } th { "Key" }
                    th { "Price per million tokens" }
                } }
                tbody {
                    @for p in providers {
                        tr {
                            th scope="row" { (p.provider.name) }
                            td { (p.provider.api.as_str()) }
                            td { code { (p.provider.model) } }
                            td.url { code { (shown_url(&p.provider.url)) } }
                            td { @if p.provider.key.is_some() { "key set" } @else { span.muted { "no key" } } }
                            td { @match &p.price {
                                Some(price) => {
                                    "in " (price.input_per_mtok) " · out " (price.output_per_mtok)
                                    @if let Some(cached) = price.cached_input_per_mtok {
                                        " · cached in " (cached)
                                    }
                                },
                                None => span.muted { "free / not priced" },
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// A provider's URL without its query, which could carry a token (`?key=`).
fn shown_url(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, workflow: &str, calls: u64, tokens: u64, cost: f64) -> UsageRow {
        UsageRow {
            day: Some(day.into()),
            workflow: Some(workflow.into()),
            provider: None,
            model: None,
            calls,
            errors: 0,
            input_tokens: tokens,
            output_tokens: 0,
            cost,
        }
    }

    fn days() -> Vec<String> {
        window_days(NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(), 3)
    }

    #[test]
    fn the_window_runs_from_its_first_day_through_month_ends() {
        let days = window_days(NaiveDate::from_ymd_opt(2026, 11, 29).unwrap(), 3);
        assert_eq!(days, ["2026-11-29", "2026-11-30", "2026-12-01"]);
    }

    #[test]
    fn the_chart_stacks_a_segment_per_day_and_workflow_in_money() {
        let rows = [
            row("2026-11-25", "repair", 3, 300, 0.0012),
            row("2026-11-27", "canary", 1, 10, 0.0004),
            row("2026-11-27", "repair", 2, 100, 0.0020),
            // Outside the window: left out.
            row("2026-11-20", "old", 9, 9, 9.0),
        ];
        let svg = spend_chart(&rows, &days()).into_string();
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(svg.contains("in money"), "{svg}");
        assert!(svg.contains(r#"role="img""#));
        assert!(
            svg.contains("<title>2026-11-25 · repair: 0.0012 (3 calls)</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>2026-11-27 · canary: 0.0004 (1 call)</title>"),
            "{svg}"
        );
        let legend = &svg[svg.find("<ul class=\"legend\">").expect("a legend")..];
        assert!(
            legend.contains("canary") && legend.contains("repair"),
            "{legend}"
        );
        assert!(!svg.contains("old"), "{svg}");
        // The busiest day fills the plot: its two segments reach the top line.
        assert!(svg.contains(&format!(r#"y="{}""#, at(TOP))), "{svg}");
        assert!(
            svg.contains("2026-11-25") && svg.contains("2026-11-27"),
            "first and last day"
        );
        assert!(
            svg.contains("the most in a day, 0.0024, on 2026-11-27"),
            "{svg}"
        );
        // Series keep the workflows' sorted order: canary s0, repair s1.
        assert!(svg.contains(r#"class="seg s1""#) && svg.contains(r#"class="seg s0""#));
    }

    #[test]
    fn without_prices_the_chart_counts_tokens_and_all_zero_draws_no_nan() {
        let rows = [row("2026-11-26", "repair", 2, 500, 0.0)];
        let svg = spend_chart(&rows, &days()).into_string();
        assert!(svg.contains("in tokens"), "{svg}");
        assert!(svg.contains("repair: 500 tokens (2 calls)"), "{svg}");
        // Refused calls: no tokens, no cost; the segment is there at no height.
        let refused = [row("2026-11-26", "repair", 4, 0, 0.0)];
        let svg = spend_chart(&refused, &days()).into_string();
        assert_eq!(svg.matches("<rect").count(), 1, "{svg}");
        for bad in ["NaN", "inf"] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
    }

    #[test]
    fn with_no_rows_the_chart_says_so_and_names_escape() {
        let empty = spend_chart(&[], &days()).into_string();
        assert!(!empty.contains("<svg"), "{empty}");
        assert!(
            empty.contains("No LLM calls in the last 3 days."),
            "{empty}"
        );
        let rows = [row("2026-11-26", "<b>x</b>", 1, 1, 0.0)];
        let svg = spend_chart(&rows, &days()).into_string();
        assert!(!svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;b&gt;x&lt;/b&gt;"), "{svg}");
    }

    #[test]
    fn the_palette_cycles_past_its_last_colour() {
        let names: Vec<String> = (0..PALETTE + 1).map(|i| format!("w{i}")).collect();
        let rows: Vec<UsageRow> = names
            .iter()
            .map(|n| row("2026-11-27", n, 1, 1, 0.0))
            .collect();
        let svg = spend_chart(&rows, &days()).into_string();
        assert_eq!(svg.matches(r#"class="seg s0""#).count(), 2, "{svg}");
    }
}
