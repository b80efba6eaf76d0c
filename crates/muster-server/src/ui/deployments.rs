//! The GitOps pages: the deployments, newest first, under the pauses of every configured
//! source and rule (with pause and resume buttons); and a deployment's page: its commit, what
//! each rule made of the push, the tasks it submitted with their states, and a redeploy button.
//! Pauses, resumes and redeploys go through [`crate::deployments`], as the API's do, and are
//! audited as the UI operator's.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use muster_api::{
    Deployment, DeploymentState, FileMatch, GitPause, PauseAnswer, PauseScope, PlannedRule,
    RuleOutcome, Task, TaskState,
};
use serde::Deserialize;
use uuid::Uuid;

use super::flash;
use super::layout::{self, Live, Section};
use super::{UiError, page_for, percent_encode};
use crate::app::AppState;
use crate::audit::{Actor, Via};
use crate::deployments;
use crate::error::{ApiError, StoreError};
use crate::extract::{QueryPairs, record_id};
use crate::gitops::GitConfig;
use crate::sessions::Session;
use crate::store::DeploymentFilter;

/// Deployments per page.
const PAGE: usize = 50;

/// `GET /deployments?repo=&before=`.
pub(super) async fn list(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let repo = query
        .get("repo")
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let before = match query.get("before") {
        Some(text) => Some(record_id("before", "deployment", text)?),
        None => None,
    };
    let mut shown = deployments::list(
        &app,
        DeploymentFilter {
            repo: repo.clone(),
            limit: PAGE + 1,
            before,
            ..DeploymentFilter::default()
        },
    )
    .await?;
    let older = if shown.len() > PAGE {
        shown.truncate(PAGE);
        shown.last().map(|d| d.id)
    } else {
        None
    };
    let pauses = app.store.gitops_pauses().await?;
    let settings = app.settings();
    let taken = flash::take(&headers, &session);
    let list_url = |before: Option<Uuid>| {
        let mut parts = Vec::new();
        if let Some(repo) = &repo {
            parts.push(format!("repo={}", percent_encode(repo)));
        }
        if let Some(id) = before {
            parts.push(format!("before={id}"));
        }
        if parts.is_empty() {
            "/deployments".to_owned()
        } else {
            format!("/deployments?{}", parts.join("&"))
        }
    };
    let content = html! {
        div.title-row { h1 { "Deployments" } }
        (flash::notice(&taken))
        (pauses_panel(&session, &settings.git, &pauses))
        h2 { "Pushes" }
        form.filters method="get" action="/deployments" {
            label { "Repository"
                input type="text" name="repo" value=[repo.as_deref()] placeholder="any (owner/name)";
            }
            button type="submit" { "Filter" }
            @if repo.is_some() { a href="/deployments" { "Clear" } }
        }
        div #deployment-list data-live {
            @if shown.is_empty() {
                p.empty {
                    "No deployments" @if repo.is_some() { " of this repository" }
                    @if before.is_some() { " before these" } "."
                }
            } @else {
                div.table-scroll {
                    table.deployments {
                        thead { tr {
                            th { "When" } th { "Repository" } th { "Branch" } th { "Commit" }
                            th { "Author" } th { "Message" } th { "State" } th { "Rules" }
                        } }
                        tbody { @for d in &shown { (row(d)) } }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if before.is_some() { a href=(list_url(None)) { "← Newest" } }
                @if let Some(id) = older { a href=(list_url(Some(id))) { "Older →" } }
            }
        }
    };
    let page = page_for(
        &app,
        &session,
        "Deployments",
        Some(Section::Deployments),
        Live::Tasks,
    );
    Ok(flash::answer(layout::shell(&page, content), &taken))
}

fn row(d: &Deployment) -> Markup {
    let first_line = d.message.lines().next().unwrap_or("").trim();
    html! {
        tr {
            td { (layout::time(d.created_at)) }
            td { a href={ "/deployments?repo=" (percent_encode(&d.repo)) } { (d.repo) } }
            td { code { (d.branch.as_deref().unwrap_or(&d.git_ref)) } }
            td { code.id title=(d.sha) { (short_sha(&d.sha)) } }
            td { (d.author) }
            td.message {
                a href={ "/deployments/" (d.id) } {
                    @if first_line.is_empty() { "(no message)" } @else { (first_line) }
                }
            }
            td { (state_badge(d.state)) }
            td {
                ul.chips.rule-states {
                    @for rule in &d.rules {
                        @if let Some((text, class)) = progress(rule) {
                            li class={ "badge " (class) } { (rule.rule) ": " (text) }
                        }
                    }
                }
            }
        }
    }
}

/// Every configured source and rule, paused or not, with the button that turns it; and any
/// pause whose source or rule the config no longer names, so it can still be resumed.
fn pauses_panel(session: &Session, git: &GitConfig, pauses: &[GitPause]) -> Markup {
    let pause_of =
        |scope: PauseScope, name: &str| pauses.iter().find(|p| p.scope == scope && p.name == name);
    let orphans: Vec<&GitPause> = pauses
        .iter()
        .filter(|p| match p.scope {
            PauseScope::Source => git.source(&p.name).is_none(),
            PauseScope::Rule => !git.rules.iter().any(|r| r.name == p.name),
        })
        .collect();
    html! {
        section #pauses data-live {
            h2 { "Pauses" }
            @if git.sources.is_empty() {
                p.empty {
                    "No GitOps source is configured. Add " code { "[[git.sources]]" } " and "
                    code { "[[git.rules]]" } " to the config file (see the README's GitOps "
                    "section) and reload with SIGHUP."
                }
            } @else {
                p.muted {
                    "A paused source or rule still records its pushes; their tasks wait, and a "
                    "resume submits them, oldest push first."
                }
            }
            @if !git.sources.is_empty() || !orphans.is_empty() {
                div.table-scroll {
                    table.pauses {
                        thead { tr { th { "Scope" } th { "Name" } th { "State" } th {} } }
                        tbody {
                            @for source in &git.sources {
                                (pause_row(session, PauseScope::Source, &source.name, None,
                                    pause_of(PauseScope::Source, &source.name), false))
                            }
                            @for rule in &git.rules {
                                @let source_paused = pause_of(PauseScope::Source, &rule.source).is_some();
                                (pause_row(session, PauseScope::Rule, &rule.name, Some(&rule.source),
                                    pause_of(PauseScope::Rule, &rule.name), source_paused))
                            }
                            @for orphan in &orphans {
                                (pause_row(session, orphan.scope, &orphan.name, None, Some(orphan), false))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn pause_row(
    session: &Session,
    scope: PauseScope,
    name: &str,
    source: Option<&str>,
    pause: Option<&GitPause>,
    source_paused: bool,
) -> Markup {
    let paused = pause.is_some();
    html! {
        tr data-pause={ (scope.as_str()) ":" (name) } {
            td { (scope.as_str()) }
            td {
                code { (name) }
                @if let Some(source) = source { span.muted { " of " (source) } }
            }
            td {
                @if let Some(p) = pause {
                    span.badge.paused { "paused" }
                    span.muted { " since " (layout::time(p.paused_at)) " by " (p.paused_by) }
                } @else {
                    span.badge.active { "active" }
                    @if source_paused { span.muted { " (its source is paused)" } }
                }
            }
            td {
                form.inline method="post" action="/deployments/pause" {
                    (layout::csrf_field(session))
                    input type="hidden" name="scope" value=(scope.as_str());
                    input type="hidden" name="name" value=(name);
                    input type="hidden" name="paused" value=(!paused);
                    button type="submit" { @if paused { "Resume" } @else { "Pause" } }
                }
            }
        }
    }
}

/// `GET /deployments/{id}`.
pub(super) async fn show(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = record_id("id", "deployment", &id)?;
    let d = app.store.deployment(id).await?;
    let tasks = tasks_of(&app, &d).await?;
    let status_api = app
        .settings()
        .git
        .source(&d.source)
        .is_some_and(|s| s.api_url.is_some());
    let taken = flash::take(&headers, &session);
    let title = format!("Deployment {}", short_sha(&d.sha));
    let content = html! {
        div #deployment-head data-live { (head(&session, &d)) }
        (flash::notice(&taken))
        div.columns {
            section #deployment-commit data-live { (commit(&d, status_api)) }
            section {
                h2 { "Changed files" }
                (changed_files(&d))
            }
        }
        section #deployment-rules data-live { (rules(&d, &tasks)) }
    };
    let page = page_for(
        &app,
        &session,
        &title,
        Some(Section::Deployments),
        Live::Tasks,
    );
    Ok(flash::answer(layout::shell(&page, content), &taken))
}

/// The tasks a deployment submitted, as they are now; a task pruned before its deployment is
/// left out (its rule still shows the id and last state).
async fn tasks_of(app: &AppState, d: &Deployment) -> Result<HashMap<Uuid, Task>, UiError> {
    let ids: Vec<Uuid> = d
        .rules
        .iter()
        .flat_map(|r| [r.check_task_id, r.task_id])
        .flatten()
        .collect();
    let mut tasks = HashMap::new();
    for id in ids {
        match app.store.task(id).await {
            Ok(task) => {
                tasks.insert(id, task);
            }
            Err(StoreError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(tasks)
}

fn head(session: &Session, d: &Deployment) -> Markup {
    let redeployable = d.rules.iter().any(|r| r.task.is_some());
    html! {
        div.title-row {
            h1 { "Deployment " code { (short_sha(&d.sha)) } " " (state_badge(d.state)) }
            div.actions {
                @if redeployable {
                    (layout::post_button(session, &format!("/deployments/{}/redeploy", d.id),
                        "Redeploy", "primary",
                        Some(&format!("Run this deployment's tasks again, at commit {}?", short_sha(&d.sha)))))
                }
            }
        }
        p.task-id { code { (d.id) } }
    }
}

fn commit(d: &Deployment, status_api: bool) -> Markup {
    html! {
        h2 { "Commit" }
        dl.facts {
            dt { "Repository" } dd { a href={ "/deployments?repo=" (percent_encode(&d.repo)) } { (d.repo) } }
            dt { "Branch" } dd {
                @if let Some(branch) = &d.branch { code { (branch) } " " }
                span.muted { code { (d.git_ref) } }
            }
            dt { "Commit" } dd { code.sha { (d.sha) } }
            dt { "Author" } dd { (d.author) }
            dt { "Pushed" } dd { (layout::time(d.created_at)) }
            dt { "Source" } dd { (d.source) }
            dt { "Forge status" } dd {
                @match (&d.forge_status, &d.forge_status_error) {
                    (_, Some(error)) => span.error-text { (error) },
                    (Some(status), None) => span class={ "badge forge-" (status) } { (status) },
                    (None, None) if status_api => span.muted { "not sent yet" },
                    (None, None) => span.muted { "no status API configured" },
                }
            }
            @if let Some(of) = d.redeploy_of {
                dt { "Redeploy of" } dd {
                    a href={ "/deployments/" (of) } title=(of) { "deployment " code.id { (layout::short_id(of)) } }
                }
            }
        }
        h3 { "Message" }
        pre.message { (d.message) }
    }
}

fn changed_files(d: &Deployment) -> Markup {
    html! {
        @if !d.complete {
            p.notice { "The forge cut the list: these are the files it sent, not every file the push changed." }
        }
        @if d.changed.is_empty() {
            p.empty { "No file listed." }
        } @else {
            ul.files { @for path in &d.changed { li { code { (path) } } } }
        }
    }
}

fn rules(d: &Deployment, tasks: &HashMap<Uuid, Task>) -> Markup {
    let (applied, skipped): (Vec<&PlannedRule>, Vec<&PlannedRule>) = d
        .rules
        .iter()
        .partition(|r| r.outcome != RuleOutcome::Skipped);
    html! {
        h2 { "Rules" }
        @if applied.is_empty() { p.empty { "No rule applied to this push." } }
        div.rules {
            @for rule in &applied { (rule_card(rule, tasks)) }
        }
        @if !skipped.is_empty() {
            details.more {
                summary { (skipped.len()) @if skipped.len() == 1 { " rule did not apply" } @else { " rules did not apply" } }
                ul.skipped {
                    @for rule in &skipped {
                        li { strong { (rule.rule) } @if let Some(why) = &rule.why { ": " (why) } }
                    }
                }
            }
        }
    }
}

fn rule_card(rule: &PlannedRule, tasks: &HashMap<Uuid, Task>) -> Markup {
    let kind = rule.kind.as_deref().unwrap_or("task");
    let check_failed = matches!(
        rule.check_task_state,
        Some(TaskState::Failed | TaskState::Cancelled)
    );
    let no_check = if rule.held {
        "held by a pause"
    } else {
        "not submitted"
    };
    let no_run = if rule.held {
        "held by a pause"
    } else if check_failed {
        "not run: the check did not complete"
    } else if rule.check_task_id.is_some() {
        "after the check completes"
    } else {
        "not submitted"
    };
    html! {
        article.card.rule data-rule=(rule.rule) {
            header.card-head {
                h3 { (rule.rule) }
                span class={ "badge outcome-" (rule.outcome.as_str()) } { (rule.outcome.as_str()) }
            }
            @if let Some(why) = &rule.why {
                p class=(if rule.outcome == RuleOutcome::Refused { "error-text" } else { "muted" }) { (why) }
            }
            @if rule.held {
                p.notice { "Held by a pause: its tasks wait until its rule or source is resumed." }
            }
            @if rule.fallback {
                p.muted { "It runs because the list of changed files was incomplete (" code { "fallback = \"run\"" } ")." }
            }
            dl.facts {
                @if let Some(kind) = &rule.kind { dt { "Kind" } dd { code { (kind) } } }
                @if let Some(key) = &rule.lock_key { dt { "Lock key" } dd { code { (key) } } }
                @if rule.check_task.is_some() || rule.check_task_id.is_some() {
                    dt { "Check" } dd.step {
                        (step(rule.check_task_id, rule.check_task_state, kind, tasks, no_check))
                    }
                }
                @if rule.outcome == RuleOutcome::Matched {
                    dt { @if rule.check_task.is_some() { "Real run" } @else { "Task" } } dd.step {
                        (step(rule.task_id, rule.task_state, kind, tasks, no_run))
                    }
                }
            }
            @if !rule.matched.is_empty() || !rule.excluded.is_empty() {
                div.table-scroll {
                    table.files {
                        thead { tr { th { "File" } th { "Glob" } th {} } }
                        tbody {
                            @for m in &rule.matched { (file_row(m, "matched")) }
                            @for m in &rule.excluded { (file_row(m, "excluded")) }
                        }
                    }
                }
            }
        }
    }
}

fn file_row(m: &FileMatch, how: &str) -> Markup {
    html! {
        tr class=(how) {
            td { code { (m.path) } }
            td { code { (m.glob) } }
            td { span.muted { (how) } }
        }
    }
}

/// One task of a rule: a link to its page (which has its logs), its state, and how long it
/// ran once it ended; `otherwise` says why there is none.
fn step(
    id: Option<Uuid>,
    recorded: Option<TaskState>,
    kind: &str,
    tasks: &HashMap<Uuid, Task>,
    otherwise: &str,
) -> Markup {
    let Some(id) = id else {
        return html! { span.muted { (otherwise) } };
    };
    let task = tasks.get(&id);
    let state = task.map(|t| t.state).or(recorded);
    html! {
        (layout::task_link(id, kind))
        @if let Some(state) = state { " " (layout::task_state(state)) }
        @if let Some(ran) = task.and_then(ran_for) { " " span.muted.duration { "in " (ran) } }
    }
}

/// How long an ended task took, from its first attempt's start to its end (retries
/// included); `None` while it runs or when it never started.
fn ran_for(task: &Task) -> Option<String> {
    if !task.state.is_final() {
        return None;
    }
    let started = task.attempts.iter().map(|a| a.started_at).min()?;
    let finished = task.finished_at?;
    Some(duration_text((finished - started).num_milliseconds()))
}

fn duration_text(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => "under a second".to_owned(),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// How far a rule of a deployment got, in a word or two, and the badge class that colours
/// it; `None` for a rule that did not apply.
fn progress(rule: &PlannedRule) -> Option<(String, String)> {
    match rule.outcome {
        RuleOutcome::Skipped => None,
        RuleOutcome::Refused => Some(("refused".into(), "outcome-refused".into())),
        RuleOutcome::Matched if rule.held => Some(("held".into(), "paused".into())),
        RuleOutcome::Matched => Some(match (rule.task_state, rule.check_task_state) {
            (Some(state), _) => (state.as_str().into(), format!("state-{state}")),
            (None, Some(check)) => (format!("check {check}"), format!("state-{check}")),
            (None, None) => ("not submitted".into(), String::new()),
        }),
    }
}

fn state_badge(state: DeploymentState) -> Markup {
    html! { span class={ "badge deployment-" (state.as_str()) } { (state.as_str()) } }
}

/// The first 8 hex digits, as forges show a commit.
fn short_sha(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

/// `POST /deployments/{id}/redeploy`: the new deployment's page, with what was submitted.
pub(super) async fn redeploy(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = record_id("id", "deployment", &id)?;
    let new = deployments::redeploy(&app, id, Actor::operator(Via::Ui)).await?;
    let submitted = new
        .rules
        .iter()
        .filter(|r| r.task_id.is_some() || r.check_task_id.is_some())
        .count();
    let held = new.rules.iter().filter(|r| r.held).count();
    let mut message = format!(
        "Redeployed {} as a new deployment: {}",
        short_sha(&new.sha),
        counted(submitted, "task submitted", "tasks submitted")
    );
    if held > 0 {
        message.push_str(&format!(
            ", {} held by a pause",
            counted(held, "rule", "rules")
        ));
    }
    message.push('.');
    Ok(flash::redirect(
        &format!("/deployments/{}", new.id),
        &session,
        &headers,
        &message,
    ))
}

/// The pause form: which source or rule, and whether to pause (`true`) or resume it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PauseForm {
    scope: String,
    name: String,
    paused: String,
}

/// `POST /deployments/pause`: back to the list, with what the pause or resume did.
pub(super) async fn pause(
    State(app): State<AppState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<PauseForm>,
) -> Result<Response, UiError> {
    let scope = PauseScope::parse(&form.scope).ok_or_else(|| {
        ApiError::invalid("scope", format!("{:?} is not source or rule", form.scope))
    })?;
    let paused = match form.paused.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(
                ApiError::invalid("paused", format!("{other:?} is not true or false")).into(),
            );
        }
    };
    let answer =
        deployments::set_paused(&app, scope, form.name, paused, Actor::operator(Via::Ui)).await?;
    Ok(flash::redirect(
        "/deployments",
        &session,
        &headers,
        &pause_message(&answer),
    ))
}

fn pause_message(answer: &PauseAnswer) -> String {
    let scope = answer.scope.as_str();
    let name = &answer.name;
    let subject = match answer.scope {
        PauseScope::Source => "Source",
        PauseScope::Rule => "Rule",
    };
    match (answer.paused, answer.changed) {
        (true, true) => {
            format!(
                "Paused {scope} {name}: its pushes are recorded, and their tasks wait for a resume."
            )
        }
        (true, false) => format!("{subject} {name} was paused already."),
        (false, true) if answer.released_tasks == 0 => {
            format!("Resumed {scope} {name}: it held no tasks.")
        }
        (false, true) => format!(
            "Resumed {scope} {name}: {}.",
            counted(
                answer.released_tasks,
                "held task submitted",
                "held tasks submitted"
            )
        ),
        (false, false) => format!("{subject} {name} was not paused."),
    }
}

fn counted(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_an_operator_would_say_them() {
        assert_eq!(duration_text(400), "under a second");
        assert_eq!(duration_text(42_300), "42 s");
        assert_eq!(duration_text(125_000), "2 min 5 s");
        assert_eq!(duration_text(3_780_000), "1 h 3 min");
    }

    #[test]
    fn a_pause_answer_says_what_changed() {
        let answer = |paused, changed, released_tasks| PauseAnswer {
            scope: PauseScope::Rule,
            name: "web".into(),
            paused,
            changed,
            released_tasks,
        };
        assert_eq!(
            pause_message(&answer(false, true, 2)),
            "Resumed rule web: 2 held tasks submitted."
        );
        assert_eq!(
            pause_message(&answer(false, true, 1)),
            "Resumed rule web: 1 held task submitted."
        );
        assert_eq!(
            pause_message(&answer(true, false, 0)),
            "Rule web was paused already."
        );
        assert!(pause_message(&answer(true, true, 0)).starts_with("Paused rule web:"));
    }
}
