//! Self-repair's verbs: alerts recorded as incidents; an incident decided (the target's model
//! through the ledger under the `repair` workflow, its answer validated, or the runbook when
//! the model cannot answer), approved or denied, run as an ordinary `action` task, verified
//! (the monitor's recovery alert, or muster's own probe within the target's time limit), tried
//! again or escalated. Every move is one conditional step in the store, with its event in the
//! incident's story and the audit log. The loop that calls these is [`crate::repairer`].

use std::collections::BTreeMap;
use std::time::Duration;

use muster_api::{
    ChoiceBy, ErrorCode, Event, Incident, IncidentState, RepairChoice, RepairPauseAnswer,
    RepairStatus, RepairTargetStatus, SubmitTask,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::alerts::Alert;
use crate::app::App;
use crate::audit::Actor;
use crate::error::ApiError;
use crate::ledger::{self, CallOrder};
use crate::notice;
use crate::operator;
use crate::repair::Target;
use crate::repair::config::{Probe, WORKFLOW};
use crate::repair::decide::{self, Situation, Tried};
use crate::store::{
    AlertIn, AlertRecorded, IncidentFilter, IncidentStep, NotificationFilter, RepairRun, Stepped,
};

use IncidentState::{AwaitingApproval, Deciding, Escalated, Open, Repairing, Resolved, Verifying};

/// Most incidents on one page of the list.
pub const MAX_PAGE: usize = 200;
const HOUR_MS: i64 = 3_600_000;
/// The target's past incidents told to the model.
const RECENT: usize = 3;
/// How long one probe of a target may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Records alerts from `source`, each matched against the targets; wakes the repairer.
pub async fn receive(
    app: &App,
    source: &str,
    alerts: Vec<Alert>,
) -> Result<Vec<AlertRecorded>, ApiError> {
    let settings = app.settings();
    let repair = &settings.repair;
    let orders = alerts
        .into_iter()
        .map(|alert| {
            let target = repair.target_for(&alert);
            AlertIn {
                source: source.to_owned(),
                target: target.map(|t| t.name.clone()),
                max_steps: target.map_or(1, |t| t.max_steps),
                alert,
            }
        })
        .collect();
    let recorded = app.store.record_alerts(orders, app.now_ms()).await?;
    for (id, state) in recorded.iter().filter_map(|r| r.incident) {
        announce(app, id, state);
    }
    app.repairer_wake.notify_one();
    Ok(recorded)
}

/// Tells the event stream (and so the pages) that an incident moved.
fn announce(app: &App, incident_id: Uuid, state: IncidentState) {
    app.changes
        .events
        .publish(Event::Incident { incident_id, state });
}

/// One step in the store, announced.
async fn apply(app: &App, step: IncidentStep) -> Result<Stepped, ApiError> {
    let stepped = app.store.step_incident(step, app.now_ms()).await?;
    announce(app, stepped.incident.id, stepped.incident.state);
    Ok(stepped)
}

/// The incident with its target's cap filled in.
fn with_cap(app: &App, mut incident: Incident) -> Incident {
    if let Some(t) = incident
        .target
        .as_deref()
        .and_then(|t| app.settings().repair.target(t).cloned())
    {
        incident.max_repairs_per_hour = t.max_per_hour;
    }
    incident
}

pub async fn list(app: &App, filter: IncidentFilter) -> Result<Vec<Incident>, ApiError> {
    let incidents = app.store.incidents(filter, app.now_ms()).await?;
    Ok(incidents.into_iter().map(|i| with_cap(app, i)).collect())
}

/// One incident with its story and the notifications sent about it.
pub async fn get(app: &App, id: Uuid) -> Result<Incident, ApiError> {
    let mut incident = app.store.incident(id, app.now_ms()).await?;
    incident.notifications = app
        .store
        .notifications(NotificationFilter {
            subject: Some(format!("incident:{id}")),
            limit: 100,
            ..Default::default()
        })
        .await?
        .notifications;
    Ok(with_cap(app, incident))
}

/// Escalates an incident from whatever open state it is in (`from`), with the reason.
async fn escalate(
    app: &App,
    incident: &Incident,
    from: &[IncidentState],
    kind: &str,
    reason: String,
    data: Value,
) -> Result<Incident, ApiError> {
    let mut step = IncidentStep::new(incident.id, from, Escalated, Actor::System, kind, &reason);
    step.reason = Some(Some(reason));
    step.data = data;
    step.notice = Some(notice::INCIDENT_ESCALATED);
    Ok(apply(app, step).await?.incident)
}

/// Decides an open incident: the model's choice validated, or the runbook's; then runs it,
/// or asks for approval when it is risky. Answers the incident as it then stands.
pub async fn decide(app: &App, incident: Incident) -> Result<Incident, ApiError> {
    let settings = app.settings();
    let target = incident
        .target
        .as_deref()
        .and_then(|t| settings.repair.target(t).cloned());
    let now = app.now_ms();
    // Why nothing may be decided: then the incident escalates without asking anyone.
    let stop = match &target {
        None => Some(format!(
            "target {:?} is no longer configured",
            incident.target.as_deref().unwrap_or("")
        )),
        Some(_) if incident.steps >= incident.max_steps => Some(format!(
            "{} repair steps did not heal it (max_steps = {})",
            incident.steps, incident.max_steps
        )),
        Some(t) => {
            let repairs = app
                .store
                .repairs_since(now - HOUR_MS)
                .await?
                .into_iter()
                .find(|(name, _)| *name == t.name)
                .map_or(0, |(_, n)| n);
            (repairs >= t.max_per_hour).then(|| {
                format!(
                    "target {} started {repairs} repairs in the last hour, its cap \
                     (max_per_hour = {}): nothing was decided or run",
                    t.name, t.max_per_hour
                )
            })
        }
    };
    let Some(target) = target.filter(|_| stop.is_none()) else {
        let reason = stop.unwrap_or_default();
        return escalate(
            app,
            &incident,
            &[Open, Deciding],
            "escalated",
            reason,
            Value::Null,
        )
        .await;
    };
    let step = IncidentStep::new(
        incident.id,
        &[Open, Deciding],
        Deciding,
        Actor::System,
        "deciding",
        match &target.provider {
            Some(p) => format!(
                "asking model provider {p} to choose among {}",
                target.action_names().join(", ")
            ),
            None => "the target has no provider: following its runbook".to_owned(),
        },
    );
    let incident = apply(app, step).await?.incident;
    match choose_and_run(app, &settings, &target, &incident, now).await {
        Err(err) if err.code != ErrorCode::Conflict => {
            // Left in `deciding`, the repairer would ask again every second: a failure here
            // (the store, a task the server refuses) escalates instead, with what it was.
            let reason = format!("deciding failed: {}", err.message);
            escalate(
                app,
                &incident,
                &[Deciding],
                "escalated",
                reason,
                Value::Null,
            )
            .await
        }
        done => done,
    }
}

/// From `deciding`: asks the model (or takes the runbook's step), judges the answer, and runs
/// the choice or asks for its approval.
async fn choose_and_run(
    app: &App,
    settings: &crate::config::Settings,
    target: &Target,
    incident: &Incident,
    now: i64,
) -> Result<Incident, ApiError> {
    let full = app.store.incident(incident.id, now).await?;
    let tried = tried_before(&full);
    let recent = recent_incidents(app, &target.name, full.id).await?;
    let (choice, data) = match &target.provider {
        Some(provider) => match ask_model(app, target, provider, &full, &tried, &recent).await {
            Ok(Asked::Chose(choice, data)) => (choice, data),
            Ok(Asked::Refused(reason, data)) => {
                return escalate(app, &full, &[Deciding], "refused", reason, data).await;
            }
            Err(why) => match decide::from_runbook(target, full.steps as usize, &why) {
                Some(choice) => (choice, json!({"model_error": why})),
                None => {
                    let reason = format!(
                        "the model could not decide ({why}) and the runbook has no step {}",
                        full.steps + 1
                    );
                    return escalate(app, &full, &[Deciding], "escalated", reason, Value::Null)
                        .await;
                }
            },
        },
        None => match decide::from_runbook(target, full.steps as usize, "no provider") {
            Some(choice) => (choice, Value::Null),
            None => {
                let reason = format!("the runbook has no step {}", full.steps + 1);
                return escalate(app, &full, &[Deciding], "escalated", reason, Value::Null).await;
            }
        },
    };
    let mut data = match data {
        Value::Object(map) => Value::Object(map),
        _ => json!({}),
    };
    data["choice"] = json!(choice);
    let said = describe(&choice);
    let mut step = IncidentStep::new(
        full.id,
        &[Deciding],
        Deciding,
        Actor::System,
        "decided",
        match choice.by {
            ChoiceBy::Model => format!("the model chose {said}; it is allow-listed and valid"),
            ChoiceBy::Runbook => format!("the runbook chose {said}"),
        },
    );
    step.data = data;
    step.choice = Some(Some(choice.clone()));
    let decided = apply(app, step).await?.incident;
    if choice.risky {
        let expires = app.now_ms() + settings.repair.approval_expires.as_millis() as i64;
        let mut step = IncidentStep::new(
            decided.id,
            &[Deciding],
            AwaitingApproval,
            Actor::System,
            "approval_requested",
            format!("{said} is risky: it runs only once an operator approves it"),
        );
        step.approval_expires_at = Some(Some(expires));
        step.reason = Some(Some(format!("waiting for approval of {}", choice.action)));
        step.notice = Some(notice::INCIDENT_APPROVAL);
        return Ok(apply(app, step).await?.incident);
    }
    run(
        app,
        &decided,
        target,
        &choice,
        &[Deciding],
        Actor::System,
        "repair_started",
    )
    .await
}

/// `restart_container (container=jellyfin)`.
fn describe(choice: &RepairChoice) -> String {
    if choice.params.is_empty() {
        return choice.action.clone();
    }
    let params: Vec<String> = choice
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{} ({})", choice.action, params.join(", "))
}

/// Repairs this incident tried, from its story, for the model.
fn tried_before(incident: &Incident) -> Vec<Tried> {
    let mut tried: Vec<Tried> = Vec::new();
    for event in &incident.events {
        match event.kind.as_str() {
            "decided" => {
                if let Some(choice) = event
                    .data
                    .get("choice")
                    .and_then(|c| serde_json::from_value::<RepairChoice>(c.clone()).ok())
                {
                    tried.push(Tried {
                        action: choice.action,
                        params: choice.params,
                        outcome: "chosen".into(),
                    });
                }
            }
            "repair_ended" | "not_healed" | "held" => {
                if let Some(last) = tried.last_mut() {
                    last.outcome = event.message.clone();
                }
            }
            _ => {}
        }
    }
    tried
}

/// Incidents of the target the model may learn from: how the last few ended, and why.
async fn recent_incidents(app: &App, target: &str, this: Uuid) -> Result<Vec<String>, ApiError> {
    let filter = IncidentFilter {
        states: Vec::new(),
        target: Some(target.to_owned()),
        limit: RECENT + 1,
    };
    Ok(app
        .store
        .incidents(filter, app.now_ms())
        .await?
        .into_iter()
        .filter(|i| i.id != this)
        .take(RECENT)
        .map(|i| {
            format!(
                "{}: {}{}",
                i.opened_at.format("%Y-%m-%d %H:%M UTC"),
                i.state,
                i.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            )
        })
        .collect())
}

enum Asked {
    Chose(RepairChoice, Value),
    /// The model answered, and its answer was refused: the reason and what it said.
    Refused(String, Value),
}

/// Asks the target's model. `Err` when it could not answer (unreachable, timed out, over
/// budget): the runbook stands in.
async fn ask_model(
    app: &App,
    target: &Target,
    provider: &str,
    incident: &Incident,
    tried: &[Tried],
    recent: &[String],
) -> Result<Asked, String> {
    let request = decide::request(
        target,
        &Situation {
            monitor: &incident.monitor,
            message: &incident.message,
            labels: &incident.labels,
            alerts: incident.alerts,
            tried,
            recent,
        },
    );
    let answered = ledger::call(
        app,
        CallOrder {
            workflow: WORKFLOW.to_owned(),
            provider: provider.to_owned(),
            model: None,
            template: decide::SYSTEM.to_owned(),
            request,
        },
    )
    .await
    .map_err(|e| match e.code {
        ErrorCode::BudgetExceeded => format!("the repair budget is spent: {}", e.message),
        _ => format!("the model did not answer: {}", e.message),
    })?;
    let response = &answered.response;
    let calls: Vec<Value> = response
        .tool_calls
        .iter()
        .map(|c| {
            json!({
                "name": crate::alerts::bounded(&c.name, 200),
                "arguments": match &c.arguments {
                    Ok(v) => crate::alerts::bounded(&v.to_string(), 2_000),
                    Err(bad) => crate::alerts::bounded(&bad.raw, 2_000),
                },
            })
        })
        .collect();
    let data = json!({
        "provider": answered.provider,
        "model": response.model,
        "input_tokens": response.usage.input_tokens,
        "output_tokens": response.usage.output_tokens,
        "cost": answered.cost,
        "fell_back": answered.fell_back,
        "text": crate::alerts::bounded(&response.text, decide::MAX_REASONING),
        "tool_calls": calls,
    });
    Ok(match decide::validate(target, response) {
        Ok(choice) => Asked::Chose(choice, data),
        Err(reason) => Asked::Refused(format!("nothing ran: {reason}"), data),
    })
}

/// The `action` task a choice runs as.
fn repair_task(
    incident: &Incident,
    target: &Target,
    choice: &RepairChoice,
) -> Result<RepairRun, ApiError> {
    let action = target.action(&choice.action).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Conflict,
            format!(
                "action {} is no longer allowed for target {}",
                choice.action, target.name
            ),
        )
    })?;
    let host = target.host.clone().or_else(|| action.host.clone());
    let task = SubmitTask {
        kind: crate::store::REPAIR_TASK_KIND.into(),
        payload: json!({"action": choice.action, "params": choice.params, "host": host}),
        capabilities: vec![action.capability.clone()],
        priority: 10,
        max_retries: Some(0),
        timeout_s: action.timeout_s,
        lock_key: Some(format!("repair:{}", target.name)),
        idempotency_key: Some(format!(
            "incident:{}:step:{}",
            incident.id,
            incident.steps + 1
        )),
        run_after: None,
        labels: BTreeMap::from([
            ("incident".to_owned(), incident.id.to_string()),
            ("repair-target".to_owned(), target.name.clone()),
        ]),
    };
    let task = operator::validate_submit(task, 0)?;
    Ok(RepairRun {
        task,
        target: target.name.clone(),
        action: choice.action.clone(),
        max_per_hour: target.max_per_hour,
        cooldown_ms: target.cooldown.as_millis() as i64,
        verify_within_ms: target.verify.within.as_millis() as i64,
    })
}

/// Submits the choice's task (unless a pause, the cap or the cooldown holds it).
async fn run(
    app: &App,
    incident: &Incident,
    target: &Target,
    choice: &RepairChoice,
    from: &[IncidentState],
    actor: Actor,
    kind: &str,
) -> Result<Incident, ApiError> {
    let mut repair = repair_task(incident, target, choice)?;
    // The cooldown stops automatic repairs from following each other too closely; an
    // operator's approval is a person's decision, so only a pause and the cap hold it.
    if actor != Actor::System {
        repair.cooldown_ms = 0;
    }
    let message = match &actor {
        Actor::System => format!("running {}", describe(choice)),
        who => format!("approved by {who}: running {}", describe(choice)),
    };
    let mut step = IncidentStep::new(incident.id, from, Repairing, actor, kind, message);
    step.data = json!({"choice": choice});
    step.run = Some(repair);
    step.count_step = true;
    step.approval_expires_at = Some(None);
    step.reason = Some(Some(format!("repairing: {}", choice.action)));
    let stepped = apply(app, step).await?;
    if let Some(change) = stepped.change {
        app.changes.task(change);
    }
    Ok(stepped.incident)
}

/// An operator approves the risky action an incident waits with.
pub async fn approve(app: &App, id: Uuid, actor: Actor) -> Result<Incident, ApiError> {
    let incident = app.store.incident(id, app.now_ms()).await?;
    if incident.state != AwaitingApproval {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "incident {id} is {}: nothing waits for approval",
                incident.state
            ),
        ));
    }
    if incident
        .approval_expires_at
        .is_some_and(|at| at.timestamp_millis() <= app.now_ms())
    {
        expire(app, incident).await?;
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("the approval of incident {id} expired: nothing ran, and it is escalated"),
        ));
    }
    let settings = app.settings();
    let (Some(choice), Some(target)) = (
        incident.choice.clone(),
        incident
            .target
            .as_deref()
            .and_then(|t| settings.repair.target(t).cloned()),
    ) else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("incident {id} has no choice or target to approve"),
        ));
    };
    let incident = run(
        app,
        &incident,
        &target,
        &choice,
        &[AwaitingApproval],
        actor,
        "approved",
    )
    .await
    .map_err(conflict_is_taken)?;
    Ok(with_cap(app, incident))
}

/// An operator denies the risky action: nothing runs, and the incident escalates.
pub async fn deny(
    app: &App,
    id: Uuid,
    actor: Actor,
    why: Option<String>,
) -> Result<Incident, ApiError> {
    let why = why.map(|w| w.trim().to_owned()).filter(|w| !w.is_empty());
    if let Some(w) = &why
        && crate::bounds::longer_than(w, 500)
    {
        return Err(ApiError::invalid(
            "reason",
            "must be at most 500 characters",
        ));
    }
    let incident = app.store.incident(id, app.now_ms()).await?;
    if incident.state != AwaitingApproval {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "incident {id} is {}: nothing waits for approval",
                incident.state
            ),
        ));
    }
    let action = incident
        .choice
        .as_ref()
        .map_or("the action", |c| c.action.as_str());
    let reason = match &why {
        Some(w) => format!("{actor} denied {action}: {w}"),
        None => format!("{actor} denied {action}"),
    };
    let mut step = IncidentStep::new(id, &[AwaitingApproval], Escalated, actor, "denied", &reason);
    step.reason = Some(Some(reason));
    step.notice = Some(notice::INCIDENT_ESCALATED);
    let incident = apply(app, step).await.map_err(conflict_is_taken)?.incident;
    Ok(with_cap(app, incident))
}

/// Two operators answering at once: the second learns that the first one did.
fn conflict_is_taken(err: ApiError) -> ApiError {
    if err.code == ErrorCode::Conflict {
        ApiError::new(
            ErrorCode::Conflict,
            format!("{} (someone else answered it first)", err.message),
        )
    } else {
        err
    }
}

/// An approval nobody gave in time: nothing runs, the incident escalates.
pub async fn expire(app: &App, incident: Incident) -> Result<Incident, ApiError> {
    let action = incident
        .choice
        .as_ref()
        .map_or("the action", |c| c.action.as_str());
    let reason = format!("nobody approved {action} in time: it was not run");
    escalate(
        app,
        &incident,
        &[AwaitingApproval],
        "approval_expired",
        reason,
        Value::Null,
    )
    .await
}

/// What a probe found.
#[derive(Debug, Clone)]
pub struct Probed {
    pub healthy: bool,
    pub detail: String,
}

/// Probes the target as its `verify` says: an HTTP status or a TCP connect.
pub async fn probe(client: &reqwest::Client, probe: &Probe) -> Option<Probed> {
    match probe {
        Probe::Recovery => None,
        Probe::Http { url, status } => {
            Some(match client.get(url).timeout(PROBE_TIMEOUT).send().await {
                Ok(answer) => {
                    let got = answer.status().as_u16();
                    let healthy = match status {
                        Some(want) => got == *want,
                        None => (200..300).contains(&got),
                    };
                    Probed {
                        healthy,
                        detail: format!("GET {url} answered {got}"),
                    }
                }
                Err(err) => Probed {
                    healthy: false,
                    detail: format!("GET {url} failed: {err}"),
                },
            })
        }
        Probe::Tcp { address } => Some(
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await
            {
                Ok(Ok(_)) => Probed {
                    healthy: true,
                    detail: format!("{address} accepted a connection"),
                },
                Ok(Err(err)) => Probed {
                    healthy: false,
                    detail: format!("{address} refused: {err}"),
                },
                Err(_) => Probed {
                    healthy: false,
                    detail: format!("{address} did not answer within {PROBE_TIMEOUT:?}"),
                },
            },
        ),
    }
}

/// One look at an incident being verified: resolved when its probe finds the target healthy;
/// past its time limit, decided again while steps are left, else escalated. Without a probe
/// only the monitor's recovery alert resolves it.
pub async fn verify(
    app: &App,
    client: &reqwest::Client,
    incident: Incident,
) -> Result<Incident, ApiError> {
    let settings = app.settings();
    let target = incident
        .target
        .as_deref()
        .and_then(|t| settings.repair.target(t).cloned());
    let probed = match &target {
        Some(t) => probe(client, &t.verify.probe).await,
        None => None,
    };
    let now = app.now_ms();
    if let Some(p) = probed.as_ref().filter(|p| p.healthy) {
        let reason = format!("verified: {}", p.detail);
        let mut step = IncidentStep::new(
            incident.id,
            &[Verifying],
            Resolved,
            Actor::System,
            "verified",
            &reason,
        );
        step.reason = Some(Some(reason));
        step.data = json!({"probe": p.detail});
        step.notice = Some(notice::INCIDENT_RESOLVED);
        return Ok(apply(app, step).await?.incident);
    }
    let overdue = incident.due_at.is_none_or(|d| d.timestamp_millis() <= now);
    if !overdue {
        return Ok(incident);
    }
    let action = incident
        .choice
        .as_ref()
        .map_or("the repair", |c| c.action.as_str());
    let within = target.as_ref().map_or(String::new(), |t| {
        format!(" within {}", humantime::format_duration(t.verify.within))
    });
    let seen = match &probed {
        Some(p) => format!(" (last probe: {})", p.detail),
        None => " (no recovery alert came)".to_owned(),
    };
    let why = format!("{action} did not heal it{within}{seen}");
    if incident.steps < incident.max_steps {
        let mut step = IncidentStep::new(
            incident.id,
            &[Verifying],
            Open,
            Actor::System,
            "not_healed",
            &why,
        );
        step.reason = Some(Some(why));
        step.due_at = Some(None);
        Ok(apply(app, step).await?.incident)
    } else {
        let reason = format!("{why}; no repair steps left ({} taken)", incident.steps);
        escalate(
            app,
            &incident,
            &[Verifying],
            "not_healed",
            reason,
            Value::Null,
        )
        .await
    }
}

/// Self-repair's pauses and each target's standing.
pub async fn status(app: &App) -> Result<RepairStatus, ApiError> {
    let settings = app.settings();
    let pauses = app.store.repair_pauses().await?;
    let counts = app.store.repairs_since(app.now_ms() - HOUR_MS).await?;
    let all = pauses.iter().any(|p| p.target.is_none());
    let targets = settings
        .repair
        .targets
        .iter()
        .map(|t| RepairTargetStatus {
            name: t.name.clone(),
            actions: t.action_names().into_iter().map(str::to_owned).collect(),
            provider: t.provider.clone(),
            paused: all || pauses.iter().any(|p| p.target.as_deref() == Some(&t.name)),
            repairs_last_hour: counts
                .iter()
                .find(|(n, _)| *n == t.name)
                .map_or(0, |(_, c)| *c),
            max_repairs_per_hour: t.max_per_hour,
        })
        .collect();
    Ok(RepairStatus {
        paused: all,
        pauses,
        targets,
    })
}

/// Pauses (or resumes) self-repair for everything or one target; audited when it changed.
pub async fn set_paused(
    app: &App,
    target: Option<String>,
    paused: bool,
    actor: Actor,
) -> Result<RepairPauseAnswer, ApiError> {
    let target = target
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    // A pause of a target since removed from the config can still be resumed.
    if let Some(t) = &target
        && paused
        && app.settings().repair.target(t).is_none()
    {
        let known: Vec<String> = app
            .settings()
            .repair
            .targets
            .iter()
            .map(|t| t.name.clone())
            .collect();
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "repair target {t:?} not found (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let now = app.now_ms();
    let changed = if paused {
        app.store.pause_repair(target.clone(), actor, now).await?
    } else {
        app.store.resume_repair(target.clone(), actor, now).await?
    };
    Ok(RepairPauseAnswer {
        target,
        paused,
        changed,
    })
}
