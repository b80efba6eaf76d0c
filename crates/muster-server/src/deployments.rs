//! GitOps verbs: a verified push becomes a deployment (its matched rules' tasks submitted in
//! the same transaction as its record), and the deployments' reads. The hook route and the
//! plan preview call these; what a rule makes of a push is decided in [`crate::gitops`].

use std::collections::BTreeSet;
use std::time::Duration;

use muster_api::{Deployment, GitPlan, PauseAnswer, PauseScope, RuleOutcome, SubmitTask};
use uuid::Uuid;

use crate::app::App;
use crate::audit::Actor;
use crate::error::ApiError;
use crate::gitops::Source;
use crate::gitops::forge::Push;
use crate::gitops::forge_api::ForgeApi;
use crate::gitops::plan::{PushSummary, plan};
use crate::operator;
use crate::store::{DeploymentFilter, NewDeployment, PauseOrder};

/// Most deployments on one page of the list.
pub const MAX_PAGE: usize = 200;

/// A push whose signature was verified, parsed.
#[derive(Debug, Clone)]
pub struct VerifiedPush {
    pub summary: PushSummary,
    /// The forge's delivery id: a redelivery answers the first deployment.
    pub delivery: String,
    pub before: String,
    /// The head commit's message.
    pub message: String,
}

/// What a push became.
#[derive(Debug)]
pub enum Recorded {
    /// No rule deploys anything for it: nothing was stored.
    NothingToDo(GitPlan),
    /// A deployment; `created` is false for a redelivery, answered with the first one.
    Deployment {
        deployment: Box<Deployment>,
        created: bool,
    },
}

/// What the rules need of a push: its facts, with a cut list of changed files completed
/// through the forge's compare API when the source can ask it.
pub async fn summarize(source: &Source, push: &Push) -> PushSummary {
    let mut changed = push.changed.clone();
    let complete = !push.truncated || complete_list(source, push, &mut changed).await;
    PushSummary {
        source: source.name.clone(),
        repo: push.repo.clone(),
        clone_url: push.clone_url.clone(),
        git_ref: push.git_ref.clone(),
        branch: push.branch.clone(),
        sha: push.after.clone(),
        author: push.author.name.clone(),
        changed,
        complete,
    }
}

/// What `push` would deploy, and why, without deploying anything.
pub fn preview(app: &App, summary: &PushSummary) -> GitPlan {
    plan(&app.settings().git, summary)
}

/// Plans `push` against the rules of its source and, when a rule matched, records the
/// deployment and submits each matched rule's first task in one transaction (a paused rule's
/// wait). A rule whose task the server would refuse (a bad capability in the config) is
/// recorded as refused, with why.
pub async fn record_push(app: &App, push: VerifiedPush) -> Result<Recorded, ApiError> {
    let settings = app.settings();
    let mut plan = plan(&settings.git, &push.summary);
    if plan.nothing_to_do {
        return Ok(Recorded::NothingToDo(plan));
    }
    for rule in &mut plan.rules {
        let max_retries = settings.default_max_retries;
        let checked = rule
            .task
            .take()
            .map(|t| validated(t, max_retries))
            .transpose();
        let check = rule
            .check_task
            .take()
            .map(|t| validated(t, max_retries))
            .transpose();
        match (checked, check) {
            (Ok(task), Ok(check)) => {
                rule.task = task;
                rule.check_task = check;
            }
            (Err(refused), _) | (_, Err(refused)) => {
                rule.outcome = RuleOutcome::Refused;
                rule.why = Some(format!("the server refuses its task: {}", refused.message));
            }
        }
    }
    let summary = push.summary;
    let statuses = sends_statuses(app, &summary.source);
    let recorded = app
        .store
        .record_deployment(
            NewDeployment {
                id: Uuid::now_v7(),
                source: summary.source,
                delivery: push.delivery,
                repo: summary.repo,
                clone_url: summary.clone_url,
                git_ref: summary.git_ref,
                branch: summary.branch,
                before: push.before,
                sha: summary.sha,
                author: summary.author,
                message: push.message,
                changed: summary.changed.into_iter().collect(),
                complete: summary.complete,
                statuses,
                rules: plan.rules,
            },
            app.now_ms(),
        )
        .await?;
    for change in recorded.changes {
        app.changes.task(change);
    }
    Ok(Recorded::Deployment {
        deployment: Box::new(recorded.deployment),
        created: recorded.created,
    })
}

/// Whether deployments from `source` send commit statuses: it has a status API.
fn sends_statuses(app: &App, source: &str) -> bool {
    app.settings()
        .git
        .source(source)
        .is_some_and(|s| s.api_url.is_some())
}

/// A rule's task as the store keeps it: checked as a submit is, capabilities normalised and
/// `max_retries` filled in, so that submitting it later (a check passed, a pause ended, a
/// redeploy) needs no second look.
fn validated(task: SubmitTask, default_max_retries: u32) -> Result<SubmitTask, ApiError> {
    let new = operator::validate_submit(task.clone(), default_max_retries)?;
    Ok(SubmitTask {
        capabilities: new.capabilities,
        max_retries: Some(new.max_retries),
        ..task
    })
}

/// Re-submits deployment `of`'s tasks as a new deployment, audited as `actor`'s.
pub async fn redeploy(app: &App, of: Uuid, actor: Actor) -> Result<Deployment, ApiError> {
    let first = app.store.deployment(of).await?;
    let statuses = sends_statuses(app, &first.source);
    let recorded = app
        .store
        .redeploy(of, Uuid::now_v7(), statuses, actor, app.now_ms())
        .await?;
    for change in recorded.changes {
        app.changes.task(change);
    }
    Ok(recorded.deployment)
}

/// Pauses or resumes a source or rule. A pause names a configured one; a resume takes any
/// paused name, so a pause outlives the removal of its rule no longer than the operator likes.
pub async fn set_paused(
    app: &App,
    scope: PauseScope,
    name: String,
    paused: bool,
    actor: Actor,
) -> Result<PauseAnswer, ApiError> {
    let order = PauseOrder {
        scope,
        name: name.clone(),
        actor,
    };
    let now = app.now_ms();
    if paused {
        let settings = app.settings();
        let known: Vec<&str> = match scope {
            PauseScope::Source => settings
                .git
                .sources
                .iter()
                .map(|s| s.name.as_str())
                .collect(),
            PauseScope::Rule => settings.git.rules.iter().map(|r| r.name.as_str()).collect(),
        };
        if !known.contains(&name.as_str()) {
            return Err(ApiError::not_found(format!(
                "git {} {name:?} (configured: {})",
                scope.as_str(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        let changed = app.store.pause_gitops(order, now).await?;
        return Ok(PauseAnswer {
            scope,
            name,
            paused: true,
            changed,
            released_tasks: 0,
        });
    }
    let resumed = app.store.resume_gitops(order, now).await?;
    let released_tasks = resumed.changes.len();
    for change in resumed.changes {
        app.changes.task(change);
    }
    Ok(PauseAnswer {
        scope,
        name,
        paused: false,
        changed: resumed.changed,
        released_tasks,
    })
}

/// The plan of a push the source recorded (by its delivery id), against today's rules.
pub async fn replan(app: &App, source: &str, delivery: &str) -> Result<GitPlan, ApiError> {
    let d = app
        .store
        .deployment_by_delivery(source.to_owned(), delivery.to_owned())
        .await?;
    let summary = PushSummary {
        source: d.source,
        repo: d.repo,
        clone_url: d.clone_url,
        git_ref: d.git_ref,
        branch: d.branch,
        sha: d.sha,
        author: d.author,
        changed: d.changed.into_iter().collect(),
        complete: d.complete,
    };
    Ok(preview(app, &summary))
}

/// Deployments, newest first.
pub async fn list(app: &App, filter: DeploymentFilter) -> Result<Vec<Deployment>, ApiError> {
    if !(1..=MAX_PAGE).contains(&filter.limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(app.store.deployments(filter).await?)
}

/// How long a hook waits for the forge's compare API: forges give up on a hook after about
/// ten seconds, and a redelivery is answered from the record, so a slow forge only costs the
/// rules their fallback.
const COMPARE_WAIT: Duration = Duration::from_secs(8);

/// Completes a cut list of changed files through the forge's compare API, when the source has
/// an `api_url`; true when the list is now complete.
async fn complete_list(source: &Source, push: &Push, changed: &mut BTreeSet<String>) -> bool {
    let Some(api_url) = &source.api_url else {
        return false;
    };
    // A new branch has no `before` to compare with.
    if push.created {
        return false;
    }
    let api = ForgeApi {
        forge: source.forge,
        api_url: api_url.clone(),
        token: source.token.clone(),
    };
    let client = crate::notify::channels::client();
    let asked = api.changed_files(&client, &push.repo, &push.before, &push.after);
    match tokio::time::timeout(COMPARE_WAIT, asked).await {
        Ok(Ok(files)) => {
            changed.extend(files);
            true
        }
        Ok(Err(err)) => {
            tracing::warn!(source = %source.name, error = %err, "the forge's compare API did not complete a cut list of changed files; rules use their fallback");
            false
        }
        Err(_) => {
            tracing::warn!(source = %source.name, "the forge's compare API did not answer in time; rules use their fallback");
            false
        }
    }
}
