//! The repairer: the loop that moves incidents on. It wakes when an alert comes or an
//! operator answers, and once a second; each pass takes the incidents that are due (undecided
//! ones whose wait is over, approvals past their expiry, repairs being verified) and works on
//! each in a task of its own, so a slow model or a hanging probe holds up only its incident.
//! Everything it knows is in the store: after a restart it picks up where the last run was.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_api::IncidentState;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::app::App;
use crate::incidents;

/// How often the loop looks for due incidents when nothing woke it.
const POLL: Duration = Duration::from_secs(1);
/// The least time between two probes of one incident's target.
const PROBE_EVERY: Duration = Duration::from_secs(2);

pub async fn run(app: Arc<App>) {
    let client = crate::notify::channels::client();
    let mut working: HashSet<Uuid> = HashSet::new();
    let mut probed: HashMap<Uuid, Instant> = HashMap::new();
    let mut jobs: JoinSet<Uuid> = JoinSet::new();
    loop {
        match app.store.due_incidents(app.now_ms()).await {
            Ok(due) => {
                probed.retain(|id, _| due.iter().any(|i| i.id == *id));
                for incident in due {
                    let id = incident.id;
                    if working.contains(&id) {
                        continue;
                    }
                    if incident.state == IncidentState::Verifying
                        && probed.get(&id).is_some_and(|at| at.elapsed() < PROBE_EVERY)
                    {
                        continue;
                    }
                    if incident.state == IncidentState::Verifying {
                        probed.insert(id, Instant::now());
                    }
                    working.insert(id);
                    let (app, client) = (app.clone(), client.clone());
                    jobs.spawn(async move {
                        let state = incident.state;
                        let done = match state {
                            IncidentState::Open | IncidentState::Deciding => {
                                incidents::decide(&app, incident).await
                            }
                            IncidentState::AwaitingApproval => {
                                incidents::expire(&app, incident).await
                            }
                            IncidentState::Verifying => {
                                incidents::verify(&app, &client, incident).await
                            }
                            _ => Ok(incident),
                        };
                        if let Err(err) = done {
                            // A conflict is an operator or an alert that moved it first.
                            if err.code != muster_api::ErrorCode::Conflict {
                                tracing::error!(incident = %id, %state, error = %err.message, "working on an incident failed");
                            }
                        }
                        id
                    });
                }
            }
            Err(err) => tracing::error!(error = %err, "looking for due incidents failed"),
        }
        tokio::select! {
            _ = app.repairer_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                if let Ok(id) = done {
                    working.remove(&id);
                }
                // Drain whatever else finished, then look again at once.
                while let Some(Ok(id)) = jobs.try_join_next() {
                    working.remove(&id);
                }
            }
        }
    }
}
