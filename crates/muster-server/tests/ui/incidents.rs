//! The self-repair pages over plain HTTP, fed by real alerts on the generic webhook: the
//! incident list and an incident's page (its story, the chosen action, the Approve and Deny
//! buttons), the pause switch, their one-time messages, CSRF, escaping, and the audit log
//! naming the UI operator.

use std::sync::Arc;

use muster_server::notify::{Channel, ChannelSpec, NotifyConfig, Rule, RuleSpec};
use muster_server::repair::config::{
    ActionSpec, AlertSourceSpec, RepairConfig, RepairEntries, RepairSpec,
};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::fake_service::FakeService;
use crate::helpers::{TestApp, eventually, secret};
use crate::web::{KEY, Web};

/// The bearer token of the `mon` alert source.
pub(crate) const TOKEN: &str = "mon-token-5d1e7a90c2b4";
/// What the monitor says: markup in it must show as text.
const SCRIPT: &str = "<script>alert(1)</script>";

/// A generic source, a risky action and a target without a provider: its runbook chooses the
/// risky action, so every incident waits for an operator.
const REPAIR: &str = r#"
[[alerts.sources]]
name = "mon"
kind = "generic"
token_env = "MON_TOKEN"

[[actions]]
name = "reboot_host"
params = { host = "^[a-z0-9-]+$" }
capability = "power"
risky = true

[[repair.targets]]
monitor = "nas*"
actions = ["reboot_host"]
params = { host = "nas" }
runbook = ["reboot_host"]
"#;

#[derive(Deserialize)]
struct File {
    alerts: Alerts,
    actions: Vec<ActionSpec>,
    repair: RepairSpec,
}

#[derive(Deserialize)]
struct Alerts {
    sources: Vec<AlertSourceSpec>,
}

/// [`REPAIR`], checked as the server checks its file, the token read from `MON_TOKEN`.
pub(crate) fn repair_config() -> RepairConfig {
    let file: File = toml::from_str(REPAIR).expect("repair TOML");
    let sources: Vec<_> = file.alerts.sources.into_iter().map(|s| (1, s)).collect();
    let actions: Vec<_> = file.actions.into_iter().map(|a| (1, a)).collect();
    let targets: Vec<_> = file
        .repair
        .targets
        .iter()
        .map(|t| (1, t.get_ref().clone()))
        .collect();
    let env = |name: &str| (name == "MON_TOKEN").then(|| TOKEN.to_owned());
    RepairConfig::resolve(
        RepairEntries {
            sources: &sources,
            actions: &actions,
            targets: &targets,
            defaults: (1, &file.repair),
        },
        &[],
        &env,
    )
    .expect("valid")
}

/// A webhook channel every `incident.*` notice goes to, one message each.
fn notify_config(hook: &FakeService) -> NotifyConfig {
    let env = |_: &str| Some("whsec-incidents-0123456789".to_owned());
    let channel: ChannelSpec = toml::from_str(&format!(
        "name = \"hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_env = \"HOOK_SECRET\"",
        hook.url
    ))
    .unwrap();
    let rule: RuleSpec =
        toml::from_str("on = [\"incident.*\"]\nto = [\"hook\"]\nquiet = \"0s\"").unwrap();
    NotifyConfig {
        channels: vec![Arc::new(Channel::resolve(channel, &env).unwrap())],
        rules: vec![Rule::resolve(rule, &["hook"]).unwrap()],
    }
}

/// A server with the key, [`REPAIR`] and the notice channel; the client logged in.
async fn spawn() -> (TestApp, Web, FakeService) {
    let hook = FakeService::start().await;
    let repair = repair_config();
    let notify = notify_config(&hook);
    let t = TestApp::spawn_with(|s| {
        s.api_key = secret(KEY);
        s.repair = repair;
        s.notify = notify;
    })
    .await;
    let mut web = Web::new(&t);
    let login = web.login(KEY).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    (t, web, hook)
}

/// Fires the `nas-ping` monitor through the generic webhook; answers the incident's id once the
/// runbook's risky choice waits for approval.
async fn fire(t: &TestApp) -> String {
    let req = t
        .client
        .post(t.url("/hooks/alerts/mon"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "monitor": "nas-ping",
            "status": "firing",
            "message": format!("{SCRIPT} down"),
            "labels": {"room": "<b>cellar</b>"},
            "url": "https://kuma.example/dashboard/7",
        }));
    let (status, answer) = TestApp::send(req).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "recorded", "{answer}");
    let id = answer["incidents"][0]
        .as_str()
        .expect("an incident")
        .to_owned();
    eventually("the incident waits for approval", || async {
        let incident = incident(t, &id).await;
        (incident["state"] == "awaiting_approval").then_some(())
    })
    .await;
    let (_, list) = t.get("/api/v1/incidents").await;
    assert_eq!(list["incidents"][0]["state"], "awaiting_approval", "{list}");
    id
}

async fn incident(t: &TestApp, id: &str) -> Value {
    let (status, incident) = t.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{incident}");
    incident
}

/// The part of `page` from `start` to the next `end`.
pub(crate) fn part<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {page}"));
    let to = page[from..].find(end).map_or(page.len(), |i| from + i);
    &page[from..to]
}

/// The audit entries about `subject`, as (actor, action), oldest first.
pub(crate) async fn audited(t: &TestApp, subject: &str) -> Vec<(String, String)> {
    muster_server::outbox::deliver_once(&t.app)
        .await
        .expect("deliver");
    let (_, audit) = t.get("/api/v1/audit").await;
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == subject)
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_alert_shows_as_an_incident_with_its_story_and_is_approved_from_its_page() {
    let (t, web, _hook) = spawn().await;
    let id = fire(&t).await;
    // The notices about it become notifications.
    muster_server::outbox::deliver_once(&t.app)
        .await
        .expect("deliver");

    let list = web.get("/incidents").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert!(
        list.body
            .contains(r#"href="/incidents" aria-current="page""#),
        "the section is in the navigation: {}",
        list.body
    );
    let row = part(&list.body, &format!(r#"data-incident="{id}""#), "</tr>");
    for shown in [
        "incident-awaiting_approval",
        &format!(r#"href="/incidents/{id}">nas-ping</a>"#),
        "<code>nas</code>",
        "waiting for approval of reboot_host",
        "0 / 2",
        "0 / 3",
    ] {
        assert!(row.contains(shown), "{shown:?} not in {row}");
    }
    let open = web.get("/incidents?open=true").await;
    assert!(open.body.contains(&format!(r#"data-incident="{id}""#)));
    let waiting = web.get("/incidents?state=awaiting_approval").await;
    assert!(waiting.body.contains(&format!(r#"data-incident="{id}""#)));
    let resolved = web.get("/incidents?state=resolved").await;
    assert!(
        !resolved.body.contains(&format!(r#"data-incident="{id}""#)),
        "{}",
        resolved.body
    );
    assert!(resolved.body.contains("No incidents match."));
    let bad = web.get("/incidents?state=burning").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);

    let page = web.get(&format!("/incidents/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    // What the monitor said, as text wherever it shows.
    assert!(!body.contains("<script>alert"), "{body}");
    assert!(!body.contains("<b>cellar"), "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt; down"),
        "{body}"
    );
    assert!(body.contains("room=&lt;b&gt;cellar&lt;/b&gt;"), "{body}");
    let facts = part(body, r#"id="incident-facts""#, "</section>");
    assert!(
        facts.contains(
            r#"<a href="https://kuma.example/dashboard/7" rel="noopener noreferrer" target="_blank">"#
        ),
        "{facts}"
    );
    assert!(facts.contains("<code>mon</code>"), "the source: {facts}");
    assert!(facts.contains("0 of at most 2"), "steps: {facts}");
    assert!(facts.contains("Approval expires"), "{facts}");
    let choice = part(body, r#"id="incident-choice""#, "</section>");
    for shown in [
        "<code>reboot_host</code>",
        "host=nas",
        "risky",
        "the runbook",
        "runbook step 1: no provider",
    ] {
        assert!(choice.contains(shown), "{shown:?} not in {choice}");
    }
    let approval = part(body, r#"id="incident-approval""#, "</section>");
    assert!(
        approval.contains(&format!(r#"action="/incidents/{id}/approve""#)),
        "{approval}"
    );
    assert!(
        approval.contains(&format!(r#"action="/incidents/{id}/deny""#))
            && approval.contains(r#"name="reason""#),
        "{approval}"
    );
    let story = part(body, r#"id="incident-story""#, "</section>");
    let kinds: Vec<&str> = story
        .match_indices(r#"data-kind=""#)
        .map(|(at, m)| {
            let rest = &story[at + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(
        kinds,
        ["opened", "deciding", "decided", "approval_requested"],
        "{story}"
    );
    assert!(
        story.contains("the runbook chose reboot_host (host=nas)"),
        "{story}"
    );
    assert!(story.contains("<details>"), "the data of an event: {story}");
    assert!(
        story.contains("&quot;reboot_host&quot;"),
        "as JSON: {story}"
    );
    let notices = part(body, r#"id="incident-notifications""#, "</section>");
    assert!(notices.contains("incident.approval"), "{notices}");

    // A form without the token changes nothing.
    let refused = web
        .post_form(&format!("/incidents/{id}/approve"), &[])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(incident(&t, &id).await["state"], "awaiting_approval");

    let approved = web
        .post_form(
            &format!("/incidents/{id}/approve"),
            &[("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(approved.location(), format!("/incidents/{id}"));
    let shown = web.follow(&approved).await;
    assert!(
        shown
            .body
            .contains("Approved reboot_host: its repair task is submitted."),
        "{}",
        shown.body
    );
    let after = incident(&t, &id).await;
    assert_eq!(after["state"], "repairing", "{after}");
    let task = after["task_id"].as_str().expect("a repair task");
    assert!(
        shown.body.contains(&format!(r#"href="/tasks/{task}""#)),
        "{}",
        shown.body
    );
    assert!(
        !shown.body.contains(r#"id="incident-approval""#),
        "nothing waits any more"
    );
    let story = part(&shown.body, r#"id="incident-story""#, "</section>");
    assert!(
        story.contains(r#"data-kind="approved""#) && story.contains("operator:ui"),
        "{story}"
    );
    assert_eq!(t.task(task).await["kind"], "action");
    let actions: Vec<(String, String)> = audited(&t, &format!("incident:{id}")).await;
    assert!(
        actions.contains(&("operator:ui".to_owned(), "incident.approved".to_owned())),
        "{actions:?}"
    );
    let audit = web.get("/audit").await;
    assert!(
        audit.body.contains(&format!(r#"href="/incidents/{id}""#)),
        "the audit page links the incident: {}",
        audit.body
    );

    // Approving again is not possible: the page says why.
    let again = web
        .post_form(
            &format!("/incidents/{id}/approve"),
            &[("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(
        again.body.contains("nothing waits for approval"),
        "{}",
        again.body
    );
}

#[tokio::test]
async fn deny_with_a_reason_escalates_the_incident() {
    let (t, web, _hook) = spawn().await;
    let id = fire(&t).await;
    let page = web.get(&format!("/incidents/{id}")).await;
    let csrf = page.csrf();

    let refused = web
        .post_form(&format!("/incidents/{id}/deny"), &[("reason", "no token")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(incident(&t, &id).await["state"], "awaiting_approval");

    let denied = web
        .post_form(
            &format!("/incidents/{id}/deny"),
            &[("csrf", &csrf), ("reason", "backups <b>running</b>")],
        )
        .await;
    let shown = web.follow(&denied).await;
    assert!(
        shown
            .body
            .contains("Denied reboot_host: nothing ran, and the incident is escalated."),
        "{}",
        shown.body
    );
    let after = incident(&t, &id).await;
    assert_eq!(after["state"], "escalated", "{after}");
    assert_eq!(
        after["reason"],
        "operator:ui denied reboot_host: backups <b>running</b>"
    );
    assert!(after["task_id"].is_null(), "nothing ran: {after}");
    assert!(
        shown
            .body
            .contains("denied reboot_host: backups &lt;b&gt;running&lt;/b&gt;"),
        "{}",
        shown.body
    );
    assert!(!shown.body.contains("<b>running"), "{}", shown.body);
    assert!(!shown.body.contains(r#"id="incident-approval""#));
    let list = web.get("/incidents?state=escalated").await;
    assert!(list.body.contains(&format!(r#"data-incident="{id}""#)));
    let open = web.get("/incidents?open=true").await;
    assert!(!open.body.contains(&format!(r#"data-incident="{id}""#)));
    assert!(
        audited(&t, &format!("incident:{id}"))
            .await
            .contains(&("operator:ui".to_owned(), "incident.denied".to_owned()))
    );
}

#[tokio::test]
async fn the_pause_switch_pauses_all_and_a_target_and_is_audited() {
    let (t, web, _hook) = spawn().await;
    let list = web.get("/incidents").await;
    let pauses = part(&list.body, r#"id="repair-pauses""#, "</section>");
    let all = part(pauses, r#"data-pause="all""#, "</tr>");
    assert!(all.contains(r#"class="badge active""#), "{all}");
    assert!(all.contains(">Pause all<"), "{all}");
    let nas = part(pauses, r#"data-pause="target:nas""#, "</tr>");
    assert!(
        nas.contains("reboot_host") && nas.contains("runbook"),
        "{nas}"
    );
    assert!(nas.contains(">Pause<"), "{nas}");
    let csrf = list.csrf();

    // Without the token nothing is paused.
    let refused = web
        .post_form("/incidents/pause", &[("target", ""), ("paused", "true")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let (_, status) = t.get("/api/v1/repair").await;
    assert_eq!(status["paused"], false, "{status}");

    let paused = web
        .post_form(
            "/incidents/pause",
            &[("csrf", &csrf), ("target", ""), ("paused", "true")],
        )
        .await;
    assert_eq!(paused.location(), "/incidents");
    let shown = web.follow(&paused).await;
    assert!(
        shown.body.contains("Paused all of self-repair:"),
        "{}",
        shown.body
    );
    let all = part(&shown.body, r#"data-pause="all""#, "</tr>");
    assert!(
        all.contains(r#"class="badge paused""#) && all.contains("by operator:ui"),
        "{all}"
    );
    assert!(all.contains(">Resume all<"), "{all}");
    let nas = part(&shown.body, r#"data-pause="target:nas""#, "</tr>");
    assert!(
        nas.contains("all of self-repair is paused") && nas.contains(">Pause<"),
        "{nas}"
    );

    let paused = web
        .post_form(
            "/incidents/pause",
            &[("csrf", &csrf), ("target", "nas"), ("paused", "true")],
        )
        .await;
    let shown = web.follow(&paused).await;
    assert!(
        shown.body.contains("Paused self-repair of target nas:"),
        "{}",
        shown.body
    );
    let nas = part(&shown.body, r#"data-pause="target:nas""#, "</tr>");
    assert!(
        nas.contains(r#"class="badge paused""#) && nas.contains("by operator:ui"),
        "{nas}"
    );
    assert!(nas.contains(">Resume<"), "{nas}");
    let (_, status) = t.get("/api/v1/repair").await;
    assert_eq!(status["paused"], true, "{status}");
    assert_eq!(status["targets"][0]["paused"], true, "{status}");

    assert_eq!(
        audited(&t, "repair").await,
        [("operator:ui".to_owned(), "repair.pause".to_owned())]
    );
    assert_eq!(
        audited(&t, "repair-target:nas").await,
        [("operator:ui".to_owned(), "repair.pause".to_owned())]
    );

    // An incident opened under the pause is still recorded and decided; approving it runs
    // nothing, and the message says so.
    let id = fire(&t).await;
    let page = web.get(&format!("/incidents/{id}")).await;
    let approved = web
        .post_form(
            &format!("/incidents/{id}/approve"),
            &[("csrf", &page.csrf())],
        )
        .await;
    let shown = web.follow(&approved).await;
    assert!(
        shown
            .body
            .contains("Approved, but nothing ran: self-repair is paused"),
        "{}",
        shown.body
    );
    let after = incident(&t, &id).await;
    assert_eq!(after["state"], "escalated", "{after}");
    assert!(after["task_id"].is_null(), "{after}");

    // Resumed, and resumed again: the second says so.
    let resumed = web
        .post_form(
            "/incidents/pause",
            &[("csrf", &csrf), ("target", ""), ("paused", "false")],
        )
        .await;
    let shown = web.follow(&resumed).await;
    assert!(
        shown.body.contains("Resumed all of self-repair."),
        "{}",
        shown.body
    );
    let again = web
        .post_form(
            "/incidents/pause",
            &[("csrf", &csrf), ("target", ""), ("paused", "false")],
        )
        .await;
    let shown = web.follow(&again).await;
    assert!(
        shown.body.contains("Self-repair was not paused."),
        "{}",
        shown.body
    );
    let nas = part(&shown.body, r#"data-pause="target:nas""#, "</tr>");
    assert!(
        nas.contains(r#"class="badge paused""#),
        "still paused: {nas}"
    );

    // A target the config does not know, and a word that is not true or false, are refused.
    let unknown = web
        .post_form(
            "/incidents/pause",
            &[("csrf", &csrf), ("target", "nope"), ("paused", "true")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert!(unknown.body.contains("configured: nas"), "{}", unknown.body);
    let bad = web
        .post_form(
            "/incidents/pause",
            &[("csrf", &csrf), ("target", "nas"), ("paused", "maybe")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
}

#[tokio::test]
async fn an_unknown_incident_is_the_not_found_page() {
    let (_t, web, _hook) = spawn().await;
    let unknown = web
        .get(&format!("/incidents/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert!(
        unknown.body.contains("<h1>Not found</h1>"),
        "{}",
        unknown.body
    );
    let malformed = web.get("/incidents/not-an-id").await;
    assert_eq!(
        malformed.status,
        web.get("/tasks/not-an-id").await.status,
        "{}",
        malformed.body
    );
    assert!(
        malformed.body.contains("incident id (UUID)"),
        "{}",
        malformed.body
    );
    let list = web.get("/incidents").await;
    let csrf = list.csrf();
    let approve = web
        .post_form(
            &format!("/incidents/{}/approve", uuid::Uuid::now_v7()),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(approve.status, StatusCode::NOT_FOUND, "{}", approve.body);
}

#[tokio::test]
async fn without_repair_targets_the_page_says_where_to_configure_them() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    let page = web.visit("/incidents").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("No repair target is configured"),
        "{}",
        page.body
    );
    assert!(page.body.contains("No incidents."), "{}", page.body);
}
