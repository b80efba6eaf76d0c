//! The audit page: the hash-chained log of operator, agent and system actions, newest first,
//! in pages, with what pruning left (the checkpoint). Verification is `muster audit verify`'s
//! job: it reads the whole chain, which a page view should not.

use axum::Extension;
use axum::extract::State;
use maud::{Markup, html};

use super::layout::{self, Live, Section};
use super::{UiError, page_for};
use crate::app::AppState;
use crate::audit::StoredEntry;
use crate::clock::to_utc;
use crate::error::ApiError;
use crate::extract::QueryPairs;
use crate::sessions::Session;

/// Entries per page.
const PAGE: usize = 50;

/// `GET /audit?before=<seq>`.
pub(super) async fn page(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    query: QueryPairs,
) -> Result<Markup, UiError> {
    let before = query.parse::<i64>("before")?;
    if before.is_some_and(|seq| seq < 1) {
        return Err(ApiError::invalid("before", "must be at least 1").into());
    }
    let mut entries = app.store.audit_before(before, PAGE + 1).await?;
    let older = (entries.len() > PAGE).then(|| {
        entries.truncate(PAGE);
        entries.last().map(|e| e.seq)
    });
    let checkpoint = app.store.audit_checkpoint().await?;
    let content = html! {
        div.title-row {
            h1 { "Audit log" }
        }
        p.muted {
            "Every operator action, agent registration, login and reload, each entry hashed "
            "with the one before it. " code { "muster audit verify" }
            " checks the chain and names the first entry that was changed, removed or reordered."
        }
        @if let Some(cp) = &checkpoint {
            p.muted {
                (cp.count) " older entries (up to seq " (cp.seq) ") were pruned "
                (layout::time(to_utc(cp.at))) "; a signed checkpoint keeps their last hash."
            }
        }
        @if entries.is_empty() {
            p.empty { "Nothing recorded" @if before.is_some() { " before this" } "." }
        } @else {
            div.table-scroll {
                table.audit {
                    thead { tr {
                        th.num { "Seq" } th { "When" } th { "Actor" } th { "Action" }
                        th { "Subject" } th { "Detail" } th { "Hash" }
                    } }
                    tbody {
                        @for entry in &entries { (row(entry)) }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if before.is_some() { a href="/audit" { "← Newest" } }
            @if let Some(Some(seq)) = older {
                a href={ "/audit?before=" (seq) } { "Older →" }
            }
        }
    };
    let page = page_for(&app, &session, "Audit log", Some(Section::Audit), Live::Off);
    Ok(layout::shell(&page, content))
}

fn row(entry: &StoredEntry) -> Markup {
    let record = |prefix: &str| {
        entry
            .subject
            .strip_prefix(prefix)
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
    };
    let (task, deployment, incident) =
        (record("task:"), record("deployment:"), record("incident:"));
    let schedule = entry.subject.strip_prefix("schedule:");
    html! {
        tr {
            td.num { (entry.seq) }
            td { (layout::time(to_utc(entry.at))) }
            td { (entry.actor) }
            td { code { (entry.action) } }
            td {
                @if let Some(id) = task {
                    a href={ "/tasks/" (id) } title=(id) { "task " code.id { (layout::short_id(id)) } }
                } @else if let Some(id) = deployment {
                    a href={ "/deployments/" (id) } title=(id) { "deployment " code.id { (layout::short_id(id)) } }
                } @else if let Some(id) = incident {
                    a href={ "/incidents/" (id) } title=(id) { "incident " code.id { (layout::short_id(id)) } }
                } @else if let Some(name) = schedule {
                    a href={ "/schedules/" (super::percent_encode(name)) } { "schedule " code { (name) } }
                } @else {
                    (entry.subject)
                }
            }
            td { @if entry.detail != "{}" { code { (entry.detail) } } }
            td { code.id title=(entry.hash) { (entry.hash.get(..12).unwrap_or(&entry.hash)) } }
        }
    }
}
