//! A deployment's life after the hook, over HTTP: the commit status on a forge that speaks
//! Gitea's status API (down at first), a check before the real run, pauses and resumes,
//! redeploys, and plans of recorded pushes.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use muster_server::config::PublicUrl;
use muster_server::gitops::GitConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::fake_service::{FakeService, Recorded, Reply};
use crate::helpers::{TestApp, eventually, metrics_text, sample};

const SECRET: &str = "0123456789abcdef-hook-secret";
const SHA: &str = "c3d4e5f60718293a4b5c6d7e8f90123456789abc";

/// One Gitea source (its status API at `api_url`, when given) and one rule deploying the
/// web role, checked first when `check_first`.
fn git_config(api_url: Option<&str>, check_first: bool) -> GitConfig {
    let mut source = "name = \"infra\"\nforge = \"gitea\"\nsecret_env = \"HOOK_SECRET\"\n\
                      token_env = \"FORGE_TOKEN\"\n"
        .to_owned();
    if let Some(url) = api_url {
        source.push_str(&format!("api_url = \"{url}\"\n"));
    }
    let rule = format!(
        "name = \"web\"\nsource = \"infra\"\nbranch = \"main\"\npaths = [\"roles/web/**\"]\n\
         task = {{ kind = \"ansible\", capabilities = [\"ansible\"], payload = {{ playbook = \"web.yml\" }} }}\n\
         lock_key = \"deploy:{{repo}}:{{playbook}}\"\ncheck_first = {check_first}"
    );
    GitConfig::resolve(
        &[(1, toml::from_str(&source).unwrap())],
        &[(1, toml::from_str(&rule).unwrap())],
        &|_| Some(SECRET.to_owned()),
    )
    .expect("valid")
}

async fn spawn(api_url: Option<&str>, check_first: bool) -> TestApp {
    let git = git_config(api_url, check_first);
    TestApp::spawn_with(|s| {
        s.git = git;
        s.public_url = Some(PublicUrl::parse("http://muster.example").unwrap());
    })
    .await
}

fn push_body(after: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/forges/gitea/push.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut push: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    push["after"] = Value::String(after.to_owned());
    serde_json::to_vec(&push).unwrap()
}

/// Sends a signed Gitea push; answers the deployment.
async fn push(t: &TestApp, delivery: &str, after: &str) -> Value {
    let body = push_body(after);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = muster_server::secret::hex(&mac.finalize().into_bytes());
    let req = t
        .client
        .post(t.url("/hooks/git/infra"))
        .header("content-type", "application/json")
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Delivery", delivery)
        .header("X-Gitea-Signature", signature)
        .body(body);
    let (status, answer) = TestApp::send(req).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["deployment"].clone()
}

async fn deployment(t: &TestApp, id: &Value) -> Value {
    let (status, d) = t
        .get(&format!("/api/v1/deployments/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    d
}

/// Waits (bounded) for a status request with state `state`.
async fn status_request(fake: &FakeService, state: &str) -> Recorded {
    for n in 1.. {
        let requests = fake.wait_for(n).await;
        if let Some(found) = requests.iter().find(|r| r.json()["state"] == state) {
            return found.clone();
        }
    }
    unreachable!()
}

#[tokio::test]
async fn the_commit_status_goes_pending_then_success_and_a_down_forge_delays_only_the_status() {
    let fake = FakeService::start().await;
    fake.reply_next(Reply::status(503, "down for maintenance"));
    fake.default_reply(Reply::status(201, r#"{"id": 1}"#));
    let api = format!("{}/api/v1", fake.url);
    let t = spawn(Some(&api), false).await;
    t.register("ansible-1", &["ansible"], 1).await;
    let d = push(&t, "s-1", SHA).await;

    // The forge is down: its first status fails, and the deployment goes on regardless.
    let first = fake.wait_for(1).await;
    assert_eq!(
        first[0].path,
        format!("/api/v1/repos/homelab/infra/statuses/{SHA}")
    );
    assert_eq!(
        first[0].header("authorization"),
        Some(format!("token {SECRET}").as_str())
    );
    t.settle().await;
    let task = t.claim("ansible-1", 1).await.expect("the deploy task runs");
    assert_eq!(task["payload"]["playbook"], "web.yml");

    // Its retry comes due after the backoff: pending, with a link to the deployment.
    t.advance(Duration::from_secs(5));
    let pending = fake.wait_for(2).await[1].json();
    assert_eq!(pending["state"], "pending", "the deploy still runs");
    assert_eq!(pending["context"], "muster/deploy");
    assert_eq!(
        pending["target_url"],
        format!(
            "http://muster.example/deployments/{}",
            d["id"].as_str().unwrap()
        )
    );

    let (status, _) = t.complete(&task, json!({"exit_code": 0})).await;
    assert_eq!(status, StatusCode::OK);
    let success = status_request(&fake, "success").await.json();
    assert_eq!(success["description"], "deployed 1");
    let shown = eventually("the forge's success recorded on the deployment", || async {
        let shown = deployment(&t, &d["id"]).await;
        (shown["forge_status"] == "success").then_some(shown)
    })
    .await;
    assert_eq!(shown["state"], "succeeded", "{shown}");
    assert_eq!(shown["forge_status"], "success", "{shown}");
    let metrics = metrics_text(&t).await;
    let count = |outcome: &str| {
        sample(
            &metrics,
            &format!(r#"muster_commit_statuses_total{{outcome="{outcome}",source="infra"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert!(count("retry") >= 1.0, "{metrics}");
    assert!(count("delivered") >= 2.0, "{metrics}");
}

#[tokio::test]
async fn a_forge_that_refuses_the_status_is_recorded_on_the_deployment_and_not_retried() {
    let fake = FakeService::start().await;
    fake.default_reply(Reply::status(401, r#"{"message": "token is invalid"}"#));
    let api = format!("{}/api/v1", fake.url);
    let t = spawn(Some(&api), false).await;
    let d = push(&t, "s-1", SHA).await;
    fake.wait_for(1).await;
    let shown = eventually("the forge's refusal recorded on the deployment", || async {
        let shown = deployment(&t, &d["id"]).await;
        (!shown["forge_status_error"].is_null()).then_some(shown)
    })
    .await;
    let error = shown["forge_status_error"].as_str().unwrap_or_default();
    assert!(error.contains("401"), "{shown}");
    assert!(shown["forge_status"].is_null(), "{shown}");
    // The consumer records the refusal before the loop marks the row delivered; a delivery
    // started in between would send it again (at least once, by design), so wait for the mark.
    eventually("the refused status marked delivered", || async {
        let due = t
            .app
            .store
            .due_outbox(t.app.now_ms(), 10, muster_server::store::Lane::Remote)
            .await
            .expect("the outbox");
        due.is_empty().then_some(())
    })
    .await;
    // Refused: delivered as far as the outbox goes, so a later step sends nothing more.
    t.advance(Duration::from_secs(600));
    muster_server::outbox::deliver_once(&t.app)
        .await
        .expect("deliver");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_check_first_rule_runs_its_check_and_then_the_real_run() {
    let t = spawn(None, true).await;
    t.register("ansible-1", &["ansible"], 1).await;
    let d = push(&t, "c-1", SHA).await;
    let rule = &d["rules"][0];
    assert_eq!(rule["check_task"]["payload"]["check"], true, "{d}");
    assert!(rule["task_id"].is_null(), "the real run waits: {d}");
    t.settle().await;
    let check = t.claim("ansible-1", 1).await.expect("the check runs");
    assert_eq!(check["id"], rule["check_task_id"]);
    assert_eq!(check["payload"]["check"], true);
    assert_eq!(check["labels"]["deploy_step"], "check");
    let (status, _) = t.complete(&check, json!({"exit_code": 0})).await;
    assert_eq!(status, StatusCode::OK);
    t.settle().await;
    let real = t.claim("ansible-1", 1).await.expect("then the real run");
    assert!(real["payload"].get("check").is_none(), "{real}");
    let shown = deployment(&t, &d["id"]).await;
    assert_eq!(shown["rules"][0]["task_id"], real["id"]);
    assert_eq!(shown["state"], "running");
    // The plan shows the check too.
    let (_, plan) = t
        .post(
            "/api/v1/gitops/plan",
            json!({"source": "infra", "delivery": "c-1"}),
        )
        .await;
    assert_eq!(plan["rules"][0]["check_task"]["payload"]["check"], true);
}

#[tokio::test]
async fn a_paused_source_records_pushes_and_runs_them_when_resumed() {
    let t = spawn(None, false).await;
    let (status, answer) = t
        .post(
            "/api/v1/gitops/pause",
            json!({"scope": "source", "name": "infra"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["changed"], true);
    let (status, unknown) = t
        .post(
            "/api/v1/gitops/pause",
            json!({"scope": "rule", "name": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web"),
        "names the rules configured: {unknown}"
    );

    let d = push(&t, "p-1", SHA).await;
    assert_eq!(d["state"], "paused", "{d}");
    assert_eq!(d["rules"][0]["held"], true);
    assert!(d["rules"][0]["task_id"].is_null());
    let (_, pauses) = t.get("/api/v1/gitops/pauses").await;
    assert_eq!(pauses["pauses"][0]["name"], "infra", "{pauses}");

    let (status, answer) = t
        .post(
            "/api/v1/gitops/resume",
            json!({"scope": "source", "name": "infra"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["released_tasks"], 1, "{answer}");
    let shown = deployment(&t, &d["id"]).await;
    assert_eq!(shown["state"], "pending", "{shown}");
    assert!(shown["rules"][0]["task_id"].is_string());

    muster_server::outbox::deliver_once(&t.app)
        .await
        .expect("deliver");
    let (_, audit) = t.get("/api/v1/audit").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == "git-source:infra")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 2, "{audit}");
    assert!(actions.contains(&"gitops.pause") && actions.contains(&"gitops.resume"));
}

#[tokio::test]
async fn a_redeploy_runs_a_past_deployment_again_and_plans_name_recorded_pushes() {
    let t = spawn(None, false).await;
    let d = push(&t, "r-1", SHA).await;
    let id = d["id"].as_str().unwrap();
    let (status, again) = t
        .post(&format!("/api/v1/deployments/{id}/redeploy"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["redeploy_of"], id);
    assert_eq!(again["sha"], SHA);
    assert_ne!(again["rules"][0]["task_id"], d["rules"][0]["task_id"]);
    let (status, _) = t
        .post(
            &format!("/api/v1/deployments/{}/redeploy", uuid::Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = t
        .post("/api/v1/deployments/not-an-id/redeploy", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, plan) = t
        .post(
            "/api/v1/gitops/plan",
            json!({"source": "infra", "delivery": "r-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["rules"][0]["outcome"], "matched");
    assert_eq!(
        plan["rules"][0]["matched"][0]["path"],
        "roles/web/tasks.yml"
    );
    let (status, missing) = t
        .post(
            "/api/v1/gitops/plan",
            json!({"source": "infra", "delivery": "never"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, both) = t
        .post(
            "/api/v1/gitops/plan",
            json!({"source": "infra", "delivery": "r-1", "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{both}");
}
