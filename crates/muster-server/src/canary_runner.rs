//! The canary runner: the loop that fires each canary on its cron and drives every run in
//! flight to its verdict, each in a task of its own, so a slow run holds up only itself. It
//! looks once a second, and when an operator starts a run. Firings go through
//! [`schedules::due`] with missed firings skipped: a canary proves the path now, and the
//! firings of a downtime prove nothing. A firing while the canary's run is still in flight is
//! skipped (and counted), so a slow canary never piles up runs. It stops when the server
//! shuts down; its runs in flight stop with it and are judged interrupted at the next start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_api::CanaryTrigger;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::app::App;
use crate::canary_runs;
use crate::clock::to_utc;
use crate::schedules::{self, Missed};

/// How often the loop looks for due firings and runs to drive when nothing woke it.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(app: Arc<App>) {
    if let Err(err) = canary_runs::take_over(&app).await {
        tracing::error!(error = %err.message, "could not take over the canary runs of the last start");
    }
    let client = crate::notify::channels::client();
    // The instant each canary's firings were last looked at: from the server's start (or a
    // reload that added the canary) on, so the firings of a downtime are skipped.
    let started = to_utc(app.started_ms);
    let mut looked: HashMap<String, DateTime<Utc>> = app
        .settings()
        .canaries
        .iter()
        .map(|c| (c.name.clone(), started))
        .collect();
    let mut driving: HashMap<tokio::task::Id, Uuid> = HashMap::new();
    let mut runs: HashSet<Uuid> = HashSet::new();
    let mut jobs: JoinSet<()> = JoinSet::new();
    loop {
        fire_due(&app, &mut looked).await;
        match app.store.running_canary_runs().await {
            Ok(running) => {
                for run in running {
                    if runs.insert(run.run.id) {
                        let id = run.run.id;
                        let job = jobs.spawn(canary_runs::drive(app.clone(), client.clone(), run));
                        driving.insert(job.id(), id);
                    }
                }
            }
            Err(err) => tracing::error!(error = %err, "looking for canary runs in flight failed"),
        }
        tokio::select! {
            _ = app.canary_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let job = match done {
                    Ok((job, ())) => job,
                    Err(err) => {
                        tracing::error!(error = %err, "a canary run's drive ended abnormally");
                        err.id()
                    }
                };
                // A run its drive left in flight (the store failed) is taken up again.
                if let Some(run) = driving.remove(&job) {
                    runs.remove(&run);
                }
            }
            // Dropping the jobs stops the runs in flight; the next start interrupts them.
            _ = app.shutdown.cancelled() => return,
        }
    }
}

/// Starts a run of each canary whose cron has a firing due since the last look.
async fn fire_due(app: &App, looked: &mut HashMap<String, DateTime<Utc>>) {
    let settings = app.settings();
    let now = to_utc(app.now_ms());
    looked.retain(|name, _| settings.canary(name).is_some());
    for canary in &settings.canaries {
        let last = *looked.entry(canary.name.clone()).or_insert(now);
        looked.insert(canary.name.clone(), now);
        let due = schedules::due(&canary.cron, last, now, Missed::Skip);
        if due.fire.is_empty() {
            continue;
        }
        // Several instants due at once (a per-second cron after a stall) make one run: one
        // may be in flight.
        match canary_runs::start(app, canary, CanaryTrigger::Cron, None).await {
            Ok(_) => {}
            Err(err) if err.code == muster_api::ErrorCode::Conflict => {
                tracing::debug!(canary = %canary.name, "canary firing skipped: its last run is still in flight");
                app.changes
                    .metrics
                    .canary_runs
                    .with_label_values(&[canary.name.as_str(), "skipped"])
                    .inc();
            }
            Err(err) => {
                tracing::error!(canary = %canary.name, error = %err.message, "could not start a canary run")
            }
        }
    }
}
