//! GitOps hooks end to end: a real server with `[[git.sources]]` and `[[git.rules]]`, forges'
//! pushes (the fixtures under `tests/fixtures/forges`) signed as each forge signs, and the
//! deployments they become.

use hmac::{Hmac, KeyInit, Mac};
use muster_server::gitops::GitConfig;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Sha256;

use crate::helpers::{TestApp, metrics_text, sample};

const SECRET: &str = "0123456789abcdef-hook-secret";
const SHA: &str = "c3d4e5f60718293a4b5c6d7e8f90123456789abc";

fn fixture(forge: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/forges/{forge}/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Sources for each forge, all with the same secret, and rules that split the fixtures'
/// changed files between a `web` deployment and a `db` one.
fn git_config() -> GitConfig {
    let mut sources = Vec::new();
    let mut rules = Vec::new();
    for forge in ["gitea", "forgejo", "github", "gitlab"] {
        sources.push((
            1,
            toml::from_str(&format!(
                "name = \"{forge}\"\nforge = \"{forge}\"\nsecret_env = \"HOOK_SECRET\""
            ))
            .unwrap(),
        ));
        for (name, glob, playbook) in [
            ("web", "roles/web/**", "web.yml"),
            ("db", "roles/db/**", "db.yml"),
            ("dns", "roles/dns/**", "dns.yml"),
        ] {
            rules.push((
                1,
                toml::from_str(&format!(
                    "name = \"{name}\"\nsource = \"{forge}\"\nbranch = \"main\"\n\
                     paths = [\"{glob}\", \"hosts/**\", \"!**/README.md\"]\n\
                     task = {{ kind = \"ansible\", capabilities = [\"ansible\"], payload = {{ playbook = \"{playbook}\" }} }}\n\
                     lock_key = \"deploy:{{repo}}:{{playbook}}\""
                ))
                .unwrap(),
            ));
        }
    }
    GitConfig::resolve(&sources, &rules, &|_| Some(SECRET.to_owned())).expect("valid")
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(|s| s.git = git_config()).await
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    muster_server::secret::hex(&mac.finalize().into_bytes())
}

/// The headers `forge` sends with a push: event, delivery id and signature.
fn signed(forge: &str, delivery: &str, body: &[u8], event: &str) -> Vec<(&'static str, String)> {
    match forge {
        "gitea" => vec![
            ("X-Gitea-Event", event.into()),
            ("X-Gitea-Delivery", delivery.into()),
            ("X-Gitea-Signature", hmac_hex(body)),
        ],
        "forgejo" => vec![
            ("X-Forgejo-Event", event.into()),
            ("X-Forgejo-Delivery", delivery.into()),
            ("X-Forgejo-Signature", hmac_hex(body)),
        ],
        "github" => vec![
            ("X-GitHub-Event", event.into()),
            ("X-GitHub-Delivery", delivery.into()),
            ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(body))),
        ],
        "gitlab" => vec![
            (
                "X-Gitlab-Event",
                if event == "push" {
                    "Push Hook".into()
                } else {
                    event.into()
                },
            ),
            ("Idempotency-Key", delivery.into()),
            ("X-Gitlab-Token", SECRET.into()),
        ],
        other => panic!("no forge {other}"),
    }
}

async fn hook(
    t: &TestApp,
    source: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = t
        .client
        .post(t.url(&format!("/hooks/git/{source}")))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    TestApp::send(req).await
}

async fn deployments(t: &TestApp) -> Vec<Value> {
    let (status, body) = t.get("/api/v1/deployments").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deployments"].as_array().unwrap().clone()
}

#[tokio::test]
async fn each_forges_signed_push_becomes_one_deployment_with_a_task_per_matched_rule() {
    let t = spawn().await;
    for forge in ["gitea", "forgejo", "github", "gitlab"] {
        let body = fixture(forge, "push");
        let headers = signed(forge, &format!("{forge}-d1"), &body, "push");
        let (status, answer) = hook(&t, forge, headers, body).await;
        assert_eq!(status, StatusCode::CREATED, "[{forge}] {answer}");
        assert_eq!(answer["status"], "deployed");
        let d = &answer["deployment"];
        assert_eq!(d["source"], forge);
        assert_eq!(d["sha"], SHA, "[{forge}]");
        assert_eq!(d["branch"], "main");
        let rules = d["rules"].as_array().unwrap();
        let outcome = |name: &str| {
            rules
                .iter()
                .find(|r| r["rule"] == name)
                .unwrap_or_else(|| panic!("[{forge}] rule {name}: {d}"))
                .clone()
        };
        // web and db each matched their own role and the shared hosts/ file; dns only hosts/.
        let web = outcome("web");
        assert_eq!(web["outcome"], "matched", "[{forge}] {d}");
        let web_files: Vec<&str> = web["matched"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            web_files,
            ["hosts/new.yml", "roles/web/tasks.yml"],
            "[{forge}]"
        );
        assert_eq!(outcome("db")["outcome"], "matched");
        assert_eq!(
            outcome("dns")["outcome"],
            "matched",
            "hosts/ is in every rule"
        );
        // One task per matched rule, whatever number of its files changed.
        let task_id = web["task_id"].as_str().expect("a task");
        let task = t.task(task_id).await;
        assert_eq!(task["kind"], "ansible");
        // GitLab's fixture lives in a subgroup.
        let repo = if forge == "gitlab" {
            "homelab/infra/site"
        } else {
            "homelab/infra"
        };
        assert_eq!(d["repo"], repo);
        assert_eq!(task["lock_key"], format!("deploy:{repo}:web.yml"));
        assert_eq!(task["payload"]["sha"], SHA);
        assert_eq!(task["payload"]["repo"], repo);
        assert_eq!(task["payload"]["playbook"], "web.yml");
    }
    assert_eq!(deployments(&t).await.len(), 4);
}

#[tokio::test]
async fn a_redelivery_answers_the_first_deployment_and_submits_nothing() {
    let t = spawn().await;
    let body = fixture("github", "push");
    let (status, first) = hook(
        &t,
        "github",
        signed("github", "g-1", &body, "push"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = hook(&t, "github", signed("github", "g-1", &body, "push"), body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["deployment"]["id"], first["deployment"]["id"]);
    let (_, tasks) = t.get("/api/v1/tasks").await;
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len(),
        3,
        "three rules, once"
    );
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(
            &text,
            r#"muster_git_hooks_total{outcome="duplicate",source="github"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_refused_and_changes_nothing() {
    let t = spawn().await;
    let body = fixture("gitea", "push");
    let mut wrong = signed("gitea", "x-1", &body, "push");
    wrong[2].1 = hmac_hex(b"another body");
    let (status, answer) = hook(&t, "gitea", wrong, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{answer}"
    );
    let mut missing = signed("gitea", "x-2", &body, "push");
    missing.pop();
    let (status, answer) = hook(&t, "gitea", missing, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Gitea-Signature"),
        "{answer}"
    );
    let mut token = signed("gitlab", "x-3", &body, "push");
    token[2].1 = "not-the-token-at-all".into();
    let (status, _) = hook(&t, "gitlab", token, fixture("gitlab", "push")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A body changed after signing is refused too.
    let headers = signed("github", "x-4", &body, "push");
    let mut changed = fixture("github", "push");
    changed.push(b' ');
    let (status, _) = hook(&t, "github", headers, changed).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(deployments(&t).await.is_empty(), "nothing recorded");
    let (_, tasks) = t.get("/api/v1/tasks").await;
    assert!(
        tasks["tasks"].as_array().unwrap().is_empty(),
        "nothing submitted"
    );
    let text = metrics_text(&t).await;
    assert_eq!(
        sample(
            &text,
            r#"muster_git_hooks_total{outcome="refused",source="gitea"}"#
        ),
        Some(2.0),
        "{text}"
    );
    // The refusals reach the audit log as one record per source and minute.
    let refused = t.refused_hooks_audited().await;
    assert_eq!(refused.len(), 3, "gitea, gitlab and github: {refused:?}");
    let gitea = refused
        .iter()
        .find(|e| e["subject"] == "source:gitea")
        .unwrap();
    assert_eq!(gitea["detail"]["count"], 2);
}

#[tokio::test]
async fn pings_other_events_unknown_sources_and_unwatched_pushes_are_answered_without_a_deployment()
{
    let t = spawn().await;
    let ping = fixture("github", "ping");
    let (status, answer) = hook(&t, "github", signed("github", "p-1", &ping, "ping"), ping).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "pong");

    let body = fixture("github", "push");
    let (status, answer) = hook(
        &t,
        "github",
        signed("github", "i-1", &body, "issues"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"issues\""),
        "{answer}"
    );

    let (status, _) = hook(&t, "nowhere", signed("github", "n-1", &body, "push"), body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for (forge, name) in [("gitea", "tag"), ("gitea", "delete"), ("gitlab", "tag")] {
        let body = fixture(forge, name);
        let event = if forge == "gitlab" {
            "Tag Push Hook"
        } else {
            "push"
        };
        let (status, answer) = hook(
            &t,
            forge,
            signed(forge, &format!("{forge}-{name}"), &body, event),
            body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "[{forge} {name}] {answer}");
        assert_eq!(
            answer["status"], "nothing_to_do",
            "[{forge} {name}] {answer}"
        );
    }
    assert!(deployments(&t).await.is_empty());
}

#[tokio::test]
async fn a_form_encoded_hook_is_refused_even_when_signed() {
    let t = spawn().await;
    let body = fixture("gitea", "push");
    let mut req = t
        .client
        .post(t.url("/hooks/git/gitea"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone());
    for (name, value) in signed("gitea", "f-1", &body, "push") {
        req = req.header(name, value);
    }
    let (status, answer) = TestApp::send(req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");
    assert!(deployments(&t).await.is_empty());
}

#[tokio::test]
async fn two_pushes_touching_one_playbook_deploy_in_push_order_never_at_once() {
    let t = spawn().await;
    t.register("ansible-1", &["ansible"], 4).await;
    t.register("ansible-2", &["ansible"], 4).await;
    let first = fixture("gitea", "push");
    let (status, a) = hook(&t, "gitea", signed("gitea", "o-1", &first, "push"), first).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let mut second: Value = serde_json::from_slice(&fixture("gitea", "push")).unwrap();
    second["after"] = Value::String("d".repeat(40));
    let second = serde_json::to_vec(&second).unwrap();
    let (status, b) = hook(&t, "gitea", signed("gitea", "o-2", &second, "push"), second).await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let task_of = |d: &Value, rule: &str| {
        d["deployment"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_web, b_web) = (task_of(&a, "web"), task_of(&b, "web"));
    t.settle().await;
    assert_ne!(
        t.task(&a_web).await["state"],
        "queued",
        "the first push's web deploy is out"
    );
    assert_eq!(
        t.task(&b_web).await["state"],
        "queued",
        "the second waits for the first: same lock key"
    );
    let waiting = t.task(&b_web).await["waiting"].clone();
    assert!(
        waiting.as_str().unwrap_or_default().contains("lock"),
        "{waiting}"
    );
    // The first finishes; the second goes next.
    let agent = t.task(&a_web).await["agent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut running = Vec::new();
    while let Some(task) = t.claim(&agent, 0).await {
        running.push(task);
    }
    let web = running
        .iter()
        .find(|r| r["id"] == a_web.as_str())
        .expect("claimed");
    let (status, _) = t.complete(web, serde_json::json!({"exit_code": 0})).await;
    assert_eq!(status, StatusCode::OK);
    t.settle().await;
    assert_ne!(
        t.task(&b_web).await["state"],
        "queued",
        "now the second runs"
    );
}
