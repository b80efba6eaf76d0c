//! The sweeper: marks agents offline when their heartbeats lapse and hands their tasks
//! back, expires unclaimed assignments, lapsed leases and attempts past their timeout, turns
//! the failed-login tallies of minutes that are over into audit records, and prunes finished
//! tasks, delivered outbox rows and audit entries past the retention period. [`sweep_once`] is
//! one step; [`run`] only adds the waiting. It ends when the server shuts down.

use std::sync::Arc;

use muster_api::AgentStatus;

use crate::app::App;
use crate::audit::AuditRecord;
use crate::changes::AgentChange;
use crate::store::{ExpiryRules, Pruned, StoreResult};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub agents_offline: Vec<String>,
    pub tasks_changed: usize,
}

pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.settings().sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<i64> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        if let Err(err) = sweep_once(&app).await {
            tracing::error!(error = %err, "health sweep failed");
        }
        let now = app.now_ms();
        // Retention is coarse: once an hour is plenty.
        if last_prune.is_none_or(|at| now - at >= 3_600_000) {
            last_prune = Some(now);
            match prune_once(&app).await {
                Ok(p) if p != Pruned::default() => {
                    tracing::info!(
                        tasks = p.tasks,
                        log_lines = p.log_lines,
                        outbox_rows = p.outbox_rows,
                        audit_entries = p.audit_entries,
                        notifications = p.notifications,
                        deployments = p.deployments,
                        llm_calls = p.llm_calls,
                        incidents = p.incidents,
                        schedule_firings = p.schedule_firings,
                        canary_runs = p.canary_runs,
                        "pruned past the retention period"
                    )
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "retention pruning failed"),
            }
        }
    }
}

/// One pass over agents and leases at the clock's current time.
pub async fn sweep_once(app: &App) -> StoreResult<Swept> {
    let now = app.now_ms();
    let mut swept = Swept::default();
    let cutoff = now - app.settings().heartbeat_timeout.as_millis() as i64;
    for agent_id in app.registry.lapsed(cutoff) {
        match app.store.agent_offline(&agent_id, now).await {
            Ok(changes) => {
                tracing::warn!(
                    agent_id,
                    tasks = changes.len(),
                    "agent stopped heartbeating; offline"
                );
                swept.tasks_changed += changes.len();
                app.changes.agent(AgentChange::Status {
                    agent_id: agent_id.clone(),
                    status: AgentStatus::Offline,
                });
                for change in changes {
                    app.changes.task(change);
                }
                swept.agents_offline.push(agent_id);
            }
            Err(crate::error::StoreError::NotFound(_)) => app.registry.remove(&agent_id),
            Err(err) => return Err(err),
        }
    }
    let rules = ExpiryRules {
        assign_timeout_ms: app.settings().assign_timeout.as_millis() as i64,
    };
    let changes = app.store.expire(now, rules).await?;
    swept.tasks_changed += changes.len();
    for change in changes {
        app.changes.task(change);
    }
    record_tallies(app, now).await?;
    Ok(swept)
}

/// One audit record per client and minute of failed logins, per source and minute of git
/// hooks refused for their signature, and per chat and minute of messages from chats not
/// allowed, for the minutes over by `until` (at shutdown, `i64::MAX`: the minute in progress
/// too, rather than forget it).
pub(crate) async fn record_tallies(app: &App, until: i64) -> StoreResult<()> {
    let now = app.now_ms();
    let logins = app.sessions.failed_logins.take_closed(until);
    let hooks = app.refused_hooks.take_closed(until);
    let chats = app.ignored_chats.take_closed(until);
    if logins.is_empty() && hooks.is_empty() && chats.is_empty() {
        return Ok(());
    }
    let records = logins
        .iter()
        .map(|t| AuditRecord::logins_failed(now, &t.key, t.minute_ms, t.count))
        .chain(
            hooks
                .iter()
                .map(|t| AuditRecord::hooks_refused(now, &t.key, t.minute_ms, t.count)),
        )
        .chain(
            chats
                .iter()
                .map(|t| AuditRecord::chats_ignored(now, &t.key, t.minute_ms, t.count)),
        )
        .collect();
    if let Err(err) = crate::outbox::record_audit(app, records).await {
        // Counted again at the next sweep rather than lost.
        app.sessions.failed_logins.restore(logins);
        app.refused_hooks.restore(hooks);
        app.ignored_chats.restore(chats);
        return Err(err);
    }
    Ok(())
}

/// Deletes what is older than the retention period, in batches: finished tasks with their
/// logs, delivered outbox rows, finished notifications, deployments whose tasks all ended,
/// LLM calls (folded into the daily sums, which stay), closed incidents, judged canary runs
/// (each canary's last stays), and audit entries (which leave a signed checkpoint behind, so
/// the chain still verifies).
pub async fn prune_once(app: &App) -> StoreResult<Pruned> {
    let now = app.now_ms();
    let cutoff = now - app.settings().retention.as_millis() as i64;
    let mut total = Pruned::default();
    loop {
        let p = app.store.prune(cutoff).await?;
        total.tasks += p.tasks;
        total.log_lines += p.log_lines;
        if p.tasks == 0 || app.shutdown.is_cancelled() {
            break;
        }
    }
    total.outbox_rows += in_batches(app, || app.store.prune_outbox(cutoff)).await?;
    total.notifications += in_batches(app, || app.store.prune_notifications(cutoff)).await?;
    total.deployments += in_batches(app, || app.store.prune_deployments(cutoff)).await?;
    total.llm_calls += in_batches(app, || app.store.prune_llm_calls(cutoff)).await?;
    total.incidents += in_batches(app, || app.store.prune_incidents(cutoff)).await?;
    total.schedule_firings += in_batches(app, || app.store.prune_schedule_firings(cutoff)).await?;
    total.canary_runs += in_batches(app, || app.store.prune_canary_runs(cutoff)).await?;
    total.audit_entries += in_batches(app, || app.store.prune_audit(cutoff, now)).await?;
    Ok(total)
}

/// Runs one batch of pruning after another until one finds nothing or shutdown begins, so no
/// transaction holds the writer long; answers how many went in all.
async fn in_batches<F, Fut>(app: &App, mut batch: F) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n == 0 || app.shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}
