//! Canary runs, the verbs. A run starts on its canary's cron (the [`crate::canary_runner`]
//! loop) or when an operator asks ([`run_now`], audited), and is recorded in flight; [`drive`]
//! then takes it through its legs: it signs the hook request and sends it to the server's own
//! hook route over the network, as a forge or a monitor would reach it, and the route's
//! handler calls [`hooked`] to submit the run's task; it follows the task to the agent's
//! answer, queues the `canary.passed` notification for the canary's channel and follows its
//! delivery. [`crate::canaries::judge`] decides each step from what the store recorded; the
//! verdict is recorded with the notice it sends. [`list`] reads canaries with their runs.
//!
//! A run never waits past its deadline: every wait is bounded by it, and the run is judged
//! from the facts then. A run in flight when the server stops stays in flight, and the next
//! start judges it interrupted ([`take_over`]): its hook key died with the process, and a
//! restart is not a failure of the path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use muster_api::{
    CanaryHook, CanaryHookAnswer, CanaryLeg, CanaryOutcome, CanaryRun, CanaryTrigger, ErrorBody,
    ErrorCode, Event, TaskState,
};
use rand::TryRngCore;
use reqwest::StatusCode;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::app::App;
use crate::audit::{Actor, AuditRecord};
use crate::canaries::Canary;
use crate::canaries::judge::{self, Progress, Step, Verdict};
use crate::clock::to_utc;
use crate::error::{ApiError, StoreError};
use crate::notice::CANARY_PASSED;
use crate::notify::channels::{describe_transport_error, start_of};
use crate::operator;
use crate::store::{CanaryFinish, NewCanaryRun, NewNotification, RunningCanary};

/// Runs the API and the overview show per canary.
pub const RECENT_RUNS: usize = 10;

/// How soon a run looks again at its task or notification when nothing signalled: a
/// notification's delivery and the deadline have no signal of their own.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// How soon a hook request that reached no one is sent again (within the deadline).
const HOOK_RETRY: Duration = Duration::from_secs(1);

/// How long past its deadline a run that cannot be followed is taken up again before it is
/// judged failed.
const GIVE_UP_AFTER_MS: i64 = 60_000;

/// The reason a run in flight at a stop is given at the next start.
const STOPPED: &str = "the server stopped during the run; the next firing runs again";

/// The base URL of the server's own listener: a wildcard bind is reached on loopback.
pub fn own_base(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Where `canary`'s runs send their hook request.
pub fn hook_url(app: &App, canary: &Canary) -> String {
    canary.hook_url(&own_base(app.local_addr))
}

/// 128 random bits, hex: what a run's answer must echo.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    crate::secret::hex(&bytes)
}

/// Records a run of `canary` as in flight from now; a `Conflict` when one is in flight
/// already (overlapping firings of a slow canary do not pile up). An operator's run is
/// audited with it.
pub async fn start(
    app: &App,
    canary: &Canary,
    trigger: CanaryTrigger,
    actor: Option<Actor>,
) -> Result<RunningCanary, ApiError> {
    let now = app.now_ms();
    let id = Uuid::now_v7();
    let run = NewCanaryRun {
        id,
        canary: canary.name.clone(),
        trigger,
        nonce: nonce(),
        fired_at: now,
        deadline: now.saturating_add(canary.within_ms()),
        audit: actor.map(|actor| AuditRecord::canary_run(now, actor, &canary.name, id)),
    };
    let started = app.store.start_canary_run(run).await?;
    announce(app, &started.run);
    Ok(started)
}

/// Tells the event stream (and so the overview) that a run started or ended.
fn announce(app: &App, run: &CanaryRun) {
    app.changes.events.publish(Event::Canary {
        canary: run.canary.clone(),
        run: run.id,
        outcome: run.outcome,
    });
}

/// An operator's "run now": starts a run of canary `name` and wakes the runner to drive it.
pub async fn run_now(app: &App, name: &str, actor: Actor) -> Result<CanaryRun, ApiError> {
    let settings = app.settings();
    let canary = settings
        .canary(name)
        .ok_or_else(|| ApiError::not_found(format!("canary {name:?}")))?;
    let started = start(app, canary, CanaryTrigger::Manual, Some(actor)).await?;
    app.canary_wake.notify_one();
    Ok(started.run)
}

/// The hook took a run's signed request: submits the run's task, once (a replay, or a
/// request for a run that ended, is a `Conflict` and submits nothing).
pub async fn hooked(
    app: &App,
    canary: &Canary,
    hook: CanaryHook,
) -> Result<CanaryHookAnswer, ApiError> {
    if hook.canary != canary.name {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "the body is for canary {:?}, not {}",
                crate::notify::cut(&hook.canary, 64),
                canary.name
            ),
        ));
    }
    let task = operator::validate_submit(canary.task_for(hook.run, &hook.nonce), 0)?;
    let submitted = app
        .store
        .canary_hooked(
            hook.run,
            canary.name.clone(),
            hook.nonce,
            task,
            app.now_ms(),
        )
        .await?;
    if let Some(change) = submitted.change {
        app.changes.task(change);
    }
    Ok(CanaryHookAnswer {
        run: hook.run,
        task_id: submitted.task.id,
    })
}

/// The canaries with their runs: the one in flight, the last judged, the newest.
pub async fn list(app: &App) -> Result<Vec<muster_api::Canary>, ApiError> {
    let settings = app.settings();
    let now = to_utc(app.now_ms());
    let mut out = Vec::with_capacity(settings.canaries.len());
    for canary in &settings.canaries {
        let history = app
            .store
            .canary_history(canary.name.clone(), RECENT_RUNS)
            .await?;
        out.push(muster_api::Canary {
            name: canary.name.clone(),
            cron: canary.cron.expression().to_owned(),
            timezone: canary.cron.zone().name().to_owned(),
            kind: canary.task.kind.clone(),
            capabilities: canary.task.capabilities.clone(),
            within_s: canary.within.as_secs(),
            channel: canary.channel.clone(),
            hook_url: hook_url(app, canary),
            next_at: canary.cron.next_after(now),
            running: history
                .recent
                .iter()
                .find(|r| r.outcome == CanaryOutcome::Running)
                .cloned(),
            last: history.last_judged,
            recent: history.recent,
        });
    }
    Ok(out)
}

/// At start: the runs a previous process left in flight are interrupted (their hook key is
/// gone, and a restart is no failure of the path) and their tasks cancelled; the metrics
/// start from each canary's last verdict.
pub async fn take_over(app: &App) -> Result<(), ApiError> {
    let interrupted = app
        .store
        .interrupt_canary_runs(STOPPED.to_owned(), app.now_ms())
        .await?;
    for run in &interrupted.runs {
        tracing::info!(canary = %run.canary, run = %run.id, "canary run interrupted by the last stop");
        app.changes.metrics.canary_run(run);
        announce(app, run);
    }
    for change in interrupted.cancelled {
        app.changes.task(change);
    }
    for canary in &app.settings().canaries {
        let history = app.store.canary_history(canary.name.clone(), 1).await?;
        if let Some(last) = history.last_judged {
            app.changes.metrics.canary_last(&last);
        }
    }
    Ok(())
}

/// What a run's legs recorded, and its verdict.
struct Judged {
    verdict: Verdict,
    answered_at: Option<i64>,
    agent_id: Option<String>,
    delivered_at: Option<i64>,
    /// The run's task, when it had not ended: cancelled with a failure.
    unfinished: Option<Uuid>,
}

impl Judged {
    fn failed(leg: CanaryLeg, reason: String) -> Judged {
        Judged {
            verdict: Verdict::Failed { leg, reason },
            answered_at: None,
            agent_id: None,
            delivered_at: None,
            unfinished: None,
        }
    }
}

/// Drives a run in flight to its verdict and records it. Resumable: a run whose hook
/// already submitted its task goes on from the task. Returns without a verdict when the
/// server stops (the next start interrupts the run) or the store fails (the runner takes
/// the run up again).
pub async fn drive(app: Arc<App>, client: reqwest::Client, running: RunningCanary) {
    let settings = app.settings();
    let Some(canary) = settings.canary(&running.run.canary).cloned() else {
        // A reload dropped the canary while its run was in flight.
        let finish = CanaryFinish {
            id: running.run.id,
            outcome: CanaryOutcome::Interrupted,
            leg: None,
            reason: Some("its canary was removed from the config during the run".into()),
            latency_ms: None,
            answered_at: None,
            agent_id: None,
            delivered_at: None,
            cancel_task: running.run.task_id,
        };
        record(&app, finish).await;
        return;
    };
    drop(settings);
    let judged = tokio::select! {
        judged = legs(&app, &client, &canary, &running) => judged,
        // Nothing is judged while the server stops: its own hook is going away.
        () = app.shutdown.cancelled() => return,
    };
    let judged = match judged {
        Ok(judged) => judged,
        // Well past its deadline, a run that cannot be followed (its task gone, the store
        // failing) is judged rather than taken up again for ever.
        Err(err) if app.now_ms() > running.run.deadline.timestamp_millis() + GIVE_UP_AFTER_MS => {
            Judged::failed(
                CanaryLeg::Task,
                format!("the run could not be followed to its end: {}", err.message),
            )
        }
        Err(err) => {
            tracing::warn!(canary = %canary.name, run = %running.run.id, error = %err.message,
                "a canary run could not go on; it is taken up again");
            return;
        }
    };
    let fired_at = running.run.fired_at.timestamp_millis();
    let (outcome, leg, reason, latency_ms) = match judged.verdict {
        Verdict::Passed { latency_ms } => (CanaryOutcome::Passed, None, None, latency_ms),
        Verdict::Failed { leg, reason } => (
            CanaryOutcome::Failed,
            Some(leg),
            Some(reason),
            (app.now_ms() - fired_at).max(0) as u64,
        ),
    };
    let finish = CanaryFinish {
        id: running.run.id,
        outcome,
        leg,
        reason,
        latency_ms: Some(latency_ms),
        answered_at: judged.answered_at,
        agent_id: judged.agent_id,
        delivered_at: judged.delivered_at,
        cancel_task: judged.unfinished,
    };
    record(&app, finish).await;
}

/// Records a verdict (with the cancel of a task that had not ended), counts and announces it.
async fn record(app: &App, finish: CanaryFinish) {
    let id = finish.id;
    match app.store.finish_canary_run(finish, app.now_ms()).await {
        Ok(finished) => {
            let run = &finished.run;
            app.changes.metrics.canary_run(run);
            announce(app, run);
            match run.outcome {
                CanaryOutcome::Passed => tracing::info!(canary = %run.canary, run = %run.id,
                    latency_ms = run.latency_ms, "canary passed"),
                _ => tracing::warn!(canary = %run.canary, run = %run.id,
                    outcome = %run.outcome, leg = ?run.leg.map(|l| l.as_str()),
                    reason = run.reason.as_deref().unwrap_or_default(), "canary did not pass"),
            }
            if let Some(change) = finished.cancelled {
                app.changes.task(change);
            }
        }
        // Judged meanwhile (another look at the same run).
        Err(StoreError::Conflict(_)) => {}
        Err(err) => {
            tracing::error!(run = %id, error = %err, "could not record a canary's verdict; it is judged again")
        }
    }
}

/// The run's legs: the hook (unless it was taken before a restart of the drive), then the
/// task and the notification, until [`judge::next`] has a verdict.
async fn legs(
    app: &App,
    client: &reqwest::Client,
    canary: &Canary,
    running: &RunningCanary,
) -> Result<Judged, ApiError> {
    let run = &running.run;
    let fired_at = run.fired_at.timestamp_millis();
    let deadline = run.deadline.timestamp_millis();
    // Subscribed before the task is first read, so its answer cannot fall in between.
    let mut signals = app.changes.events.task_signals();
    let task_id = match run.task_id {
        Some(task) => task,
        None => match send_hook(app, client, canary, running).await? {
            Ok(task) => task,
            Err(reason) => return Ok(Judged::failed(CanaryLeg::Hook, reason)),
        },
    };
    let mut notification_id = run.notification_id;
    loop {
        let now = app.now_ms();
        let mut task = app.store.task(task_id).await?;
        if task.state == TaskState::Queued && now >= deadline {
            // Why it waits is the reason the run fails with.
            task = operator::task(app, task_id).await?;
        }
        let notification = match notification_id {
            Some(id) => Some(app.store.notification(id).await?),
            None => None,
        };
        let step = judge::next(&Progress {
            now,
            fired_at,
            deadline,
            nonce: &running.nonce,
            task: &task,
            channel: canary.channel.is_some(),
            notification: notification.as_ref(),
        });
        match step {
            Step::Done(verdict) => {
                let delivered =
                    notification.filter(|n| n.state == muster_api::NotificationState::Delivered);
                return Ok(Judged {
                    verdict,
                    answered_at: task
                        .finished_at
                        .filter(|_| task.state == TaskState::Completed)
                        .map(|t| t.timestamp_millis()),
                    agent_id: task.agent_id.clone(),
                    delivered_at: delivered
                        .and_then(|n| n.finished_at)
                        .map(|t| t.timestamp_millis()),
                    unfinished: (!task.state.is_final()).then_some(task_id),
                });
            }
            Step::Notify { agent_id } => {
                notification_id = Some(notify(app, canary, run, &task.kind, &agent_id).await?);
            }
            Step::WaitForTask | Step::WaitForDelivery => {
                wait_for(&mut signals, task_id).await;
            }
        }
    }
}

/// Waits until `task` changes, or [`LOOK_EVERY`].
async fn wait_for(signals: &mut broadcast::Receiver<Uuid>, task: Uuid) {
    let changed = async {
        loop {
            match signals.recv().await {
                Ok(id) if id == task => return,
                Ok(_) => {}
                // Missed some: ours may be among them.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        () = changed => {}
        () = tokio::time::sleep(LOOK_EVERY) => {}
    }
}

/// Sends the run's signed hook request until the hook answers or the deadline passes: the
/// task the hook submitted, or why the hook leg failed. A request that reached no one is
/// sent again (the server may be stopping, which cancels the run's drive; or a proxy in
/// front of it may be restarting).
async fn send_hook(
    app: &App,
    client: &reqwest::Client,
    canary: &Canary,
    running: &RunningCanary,
) -> Result<Result<Uuid, String>, ApiError> {
    let run = &running.run;
    let url = hook_url(app, canary);
    let body = serde_json::to_vec(&CanaryHook {
        canary: canary.name.clone(),
        run: run.id,
        nonce: running.nonce.clone(),
    })
    .expect("a hook body is plain data");
    let deadline = run.deadline.timestamp_millis();
    let mut unreached = format!("no time was left to send it to {url}");
    loop {
        let now = app.now_ms();
        let left = Duration::from_millis((deadline - now).max(0) as u64);
        if left.is_zero() {
            return Ok(Err(format!("the hook could not be reached: {unreached}")));
        }
        let mut request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .timeout(left);
        for (name, value) in app.canary_key.sign(&body, now.div_euclid(1000)) {
            request = request.header(name, value);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(err) if err.is_timeout() && !err.is_connect() => {
                return Ok(Err(format!(
                    "the hook at {url} did not answer within {}",
                    humantime::format_duration(canary.within)
                )));
            }
            Err(err) => {
                unreached = describe_transport_error(err, &format!("the hook at {url}"), left);
                tokio::time::sleep(HOOK_RETRY.min(left)).await;
                continue;
            }
        };
        let status = answer.status();
        if status.is_success() {
            return Ok(match answer.json::<CanaryHookAnswer>().await {
                Ok(taken) => Ok(taken.task_id),
                Err(err) => Err(format!(
                    "the hook at {url} answered {status} without a hook answer: {err}"
                )),
            });
        }
        if status == StatusCode::CONFLICT
            && let Some(task) = app.store.canary_run(run.id).await?.run.task_id
        {
            // A request sent again after an answer lost on the way: the first one was taken.
            return Ok(Ok(task));
        }
        let text = answer.text().await.unwrap_or_default();
        let said = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| start_of(&text));
        return Ok(Err(format!(
            "the hook at {url} refused the request: HTTP {}: {said}",
            status.as_u16()
        )));
    }
}

/// Queues `canary.passed` for the canary's channel: its delivery is the run's last leg.
async fn notify(
    app: &App,
    canary: &Canary,
    run: &CanaryRun,
    kind: &str,
    agent_id: &str,
) -> Result<Uuid, ApiError> {
    let channel = canary
        .channel
        .clone()
        .expect("a run notifies only when its canary has a channel");
    let now = app.now_ms();
    let link = app
        .settings()
        .public_url
        .as_ref()
        .map(|url| format!("{}/#canaries", url.as_str()));
    let notification = NewNotification {
        id: Uuid::now_v7(),
        channel: channel.clone(),
        event: CANARY_PASSED.to_owned(),
        subject: format!("canary:{}", canary.name),
        group: format!("canary:{}", canary.name),
        title: format!("Canary {} got through", canary.name),
        message: format!(
            "Canary {}: muster's hook took the request, agent {agent_id} answered the {kind} \
             task, and this message arrived (run {}).",
            canary.name, run.id
        ),
        link,
        event_at: now,
        quiet_ms: 0,
    };
    let id = notification.id;
    app.store
        .queue_canary_notification(run.id, notification, now)
        .await?;
    app.changes.metrics.notification_queued(&channel, "queued");
    app.messenger_wake.notify_one();
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_reached_on_loopback() {
        for (bound, base) in [
            ("0.0.0.0:8000", "http://127.0.0.1:8000"),
            ("[::]:8000", "http://[::1]:8000"),
            ("10.0.0.5:9000", "http://10.0.0.5:9000"),
            ("127.0.0.1:41234", "http://127.0.0.1:41234"),
        ] {
            assert_eq!(own_base(bound.parse().unwrap()), base);
        }
    }
}
