//! GitOps verbs: a verified push becomes a deployment (its matched rules' tasks submitted in
//! the same transaction as its record), and the deployments' reads. The hook route and the
//! plan preview call these; what a rule makes of a push is decided in [`crate::gitops`].

use std::collections::BTreeSet;
use std::time::Duration;

use muster_api::{Deployment, GitPlan};
use uuid::Uuid;

use crate::app::App;
use crate::error::ApiError;
use crate::gitops::Source;
use crate::gitops::forge::Push;
use crate::gitops::forge_api::ForgeApi;
use crate::gitops::plan::{PushSummary, plan};
use crate::operator;
use crate::store::{DeploymentFilter, NewDeployment};

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
    plan(&app.settings().git, summary).0
}

/// Plans `push` against the rules of its source and, when a rule matched, records the
/// deployment and submits each matched rule's task in one transaction. A rule whose task the
/// server would refuse (a bad capability in the config) is recorded as refused, with why.
pub async fn record_push(app: &App, push: VerifiedPush) -> Result<Recorded, ApiError> {
    let settings = app.settings();
    let (plan, tasks) = plan(&settings.git, &push.summary);
    if plan.nothing_to_do {
        return Ok(Recorded::NothingToDo(plan));
    }
    let mut rules = Vec::with_capacity(plan.rules.len());
    for (mut rule, task) in plan.rules.into_iter().zip(tasks) {
        let task = match task.map(|t| operator::validate_submit(t, settings.default_max_retries)) {
            Some(Ok(task)) => Some(task),
            Some(Err(refused)) => {
                rule.outcome = "refused".into();
                rule.why = Some(format!("the server refuses its task: {}", refused.message));
                None
            }
            None => None,
        };
        rules.push((rule, task));
    }
    let summary = push.summary;
    let recorded = app
        .store
        .record_deployment(
            NewDeployment {
                id: Uuid::now_v7(),
                source: summary.source,
                delivery: push.delivery,
                repo: summary.repo,
                git_ref: summary.git_ref,
                branch: summary.branch,
                before: push.before,
                sha: summary.sha,
                author: summary.author,
                message: push.message,
                changed: summary.changed.into_iter().collect(),
                complete: summary.complete,
                rules,
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
