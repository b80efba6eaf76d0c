//! Commit statuses: a deployment's state as the forge shows it on the pushed commit. The
//! outbox's remote lane calls [`send_commit_status`] for each `commit_status` row; it sends the
//! deployment's state as it is when it runs, so a late retry never puts an old state back.

use muster_api::{Deployment, DeploymentState, TaskState};
use uuid::Uuid;

use crate::app::App;
use crate::error::StoreError;
use crate::gitops::forge_api::{CommitStatus, ForgeApi, StatusState};
use crate::notify::Outcome;

/// What muster's commit statuses are called on the forge, so they replace each other and no
/// one else's.
pub const STATUS_CONTEXT: &str = "muster/deploy";

/// Sends deployment `id`'s state, as it is now, to its forge as the commit's status. `Err` is
/// worth trying again (the forge is down or busy); what cannot succeed by trying again (no
/// status API configured, the deployment pruned, the forge refused the token or the
/// repository) is logged, counted, recorded on the deployment, and `Ok`.
pub async fn send_commit_status(app: &App, id: &str) -> Result<(), String> {
    let Ok(id) = id.parse::<Uuid>() else {
        return Ok(());
    };
    let d = match app.store.deployment(id).await {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(err) => return Err(format!("reading the deployment: {err}")),
    };
    let settings = app.settings();
    let Some(source) = settings.git.source(&d.source) else {
        return Ok(());
    };
    let Some(api_url) = &source.api_url else {
        return Ok(());
    };
    let api = ForgeApi {
        forge: source.forge,
        api_url: api_url.clone(),
        token: source.token.clone(),
    };
    let status = commit_status(&d, settings.public_url.as_ref().map(|u| u.as_str()));
    let client = crate::notify::channels::client();
    let sent = api.set_status(&client, &d.repo, &d.sha, &status).await;
    let metric = |outcome: &str| {
        app.changes
            .metrics
            .commit_statuses
            .with_label_values(&[&d.source, outcome])
            .inc()
    };
    let record =
        |state: Option<String>, error: Option<String>| app.store.set_forge_status(id, state, error);
    match sent {
        Ok(Outcome::Delivered { .. }) => {
            metric("delivered");
            let state = status.state.wire(source.forge).to_owned();
            record(Some(state), None).await.map_err(|e| e.to_string())
        }
        Ok(Outcome::Retry { error, .. }) => {
            metric("retry");
            let _ = record(None, Some(error.clone())).await;
            Err(error)
        }
        Ok(Outcome::Refused { error, .. }) => {
            metric("refused");
            tracing::warn!(deployment = %id, source = %d.source, error, "the forge refused the commit status");
            record(None, Some(error)).await.map_err(|e| e.to_string())
        }
        Err(err) => {
            metric("refused");
            let error = err.to_string();
            tracing::warn!(deployment = %id, source = %d.source, error, "no commit status could be sent");
            record(None, Some(error)).await.map_err(|e| e.to_string())
        }
    }
}

/// A deployment's state as a commit status: the forge's four states, one line that says how
/// far it got, and a link to its page when `PUBLIC_URL` is set.
pub fn commit_status(d: &Deployment, public_url: Option<&str>) -> CommitStatus {
    let failed: Vec<&str> = d
        .rules
        .iter()
        .filter(|r| {
            [r.check_task_state, r.task_state]
                .iter()
                .any(|s| matches!(s, Some(TaskState::Failed | TaskState::Cancelled)))
        })
        .map(|r| r.rule.as_str())
        .collect();
    let deploying = d.rules.iter().filter(|r| r.task.is_some()).count();
    let (state, description) = match d.state {
        DeploymentState::Pending => (
            StatusState::Pending,
            format!("{deploying} to deploy, waiting for an agent"),
        ),
        DeploymentState::Running => (StatusState::Pending, format!("deploying {deploying}")),
        DeploymentState::Paused => (
            StatusState::Pending,
            "paused: waits for a resume".to_owned(),
        ),
        DeploymentState::Succeeded => (StatusState::Success, format!("deployed {deploying}")),
        DeploymentState::Failed => (
            StatusState::Failure,
            format!("failed: {}", failed.join(", ")),
        ),
        DeploymentState::Skipped => (StatusState::Error, "no task could be submitted".to_owned()),
    };
    CommitStatus {
        state,
        target_url: public_url.map(|base| format!("{base}/deployments/{}", d.id)),
        description,
        context: STATUS_CONTEXT.to_owned(),
    }
}
