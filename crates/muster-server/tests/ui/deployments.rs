//! The deployments pages over plain HTTP, fed by real signed Gitea pushes: the list and a
//! deployment's page, the pause, resume and redeploy buttons (audited as the UI operator's),
//! their one-time messages, CSRF, and escaping.

use hmac::{Hmac, KeyInit, Mac};
use muster_server::gitops::GitConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{TestApp, secret};
use crate::web::{KEY, Web};

pub const SECRET: &str = "0123456789abcdef-hook-secret";
pub const SHA: &str = "c3d4e5f60718293a4b5c6d7e8f90123456789abc";
/// The head commit's message: markup in it must show as text.
const MESSAGE: &str = "db: add the <script>alert(1)</script> role\n\nAnd wire it to web.\n";

/// Deploys the web role: `roles/web/tasks.yml` matches, `hosts/new.yml` is excluded.
pub const WEB: &str = r#"name = "web"
source = "infra"
branch = "main"
paths = ["roles/web/**", "hosts/**", "!hosts/new.yml"]
task = { kind = "ansible", capabilities = ["ansible"], payload = { playbook = "web.yml" } }"#;

/// Deploys the db role, its check first.
pub const DB: &str = r#"name = "db"
source = "infra"
branch = "main"
paths = ["roles/db/**"]
check_first = true
task = { kind = "ansible", capabilities = ["ansible"], payload = { playbook = "db.yml" } }"#;

/// Matches nothing the push changed.
const DNS: &str = r#"name = "dns"
source = "infra"
branch = "main"
paths = ["dns/**"]
task = { kind = "ansible", capabilities = ["ansible"], payload = { playbook = "dns.yml" } }"#;

/// Matches, but its task is one the server refuses (a timeout of 0 s).
const REFUSED: &str = r#"name = "refused"
source = "infra"
branch = "main"
paths = ["roles/web/**"]
task = { kind = "ansible", capabilities = ["ansible"], timeout_s = 0 }"#;

/// One Gitea source, `infra`, and `rules`.
pub fn git_config(rules: &[&str]) -> GitConfig {
    let source = "name = \"infra\"\nforge = \"gitea\"\nsecret_env = \"HOOK_SECRET\"\n";
    let rules: Vec<_> = rules
        .iter()
        .enumerate()
        .map(|(n, rule)| (n + 5, toml::from_str(rule).expect("a rule")))
        .collect();
    GitConfig::resolve(&[(1, toml::from_str(source).unwrap())], &rules, &|_| {
        Some(SECRET.to_owned())
    })
    .expect("valid")
}

async fn spawn(rules: &[&str], key: bool) -> TestApp {
    let git = git_config(rules);
    TestApp::spawn_with(|s| {
        s.git = git;
        if key {
            s.api_key = secret(KEY);
        }
    })
    .await
}

/// Sends the Gitea fixture push, signed, under `delivery`; answers the deployment.
pub async fn push(t: &TestApp, delivery: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/forges/gitea/push.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut push: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    push["head_commit"]["message"] = json!(MESSAGE);
    let body = serde_json::to_vec(&push).unwrap();
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

async fn deployment(t: &TestApp, id: &str) -> Value {
    let (status, d) = t.get(&format!("/api/v1/deployments/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    d
}

fn rule<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {d}"))
}

/// The part of `page` from `start` to the next `end`.
fn part<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {page}"));
    let to = page[from..].find(end).map_or(page.len(), |i| from + i);
    &page[from..to]
}

/// The audit entries about `subject`, as (actor, action), oldest first.
async fn audited(t: &TestApp, subject: &str) -> Vec<(String, String)> {
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
async fn the_list_and_a_deployments_page_show_the_push_its_rules_and_their_tasks() {
    let t = spawn(&[WEB, DB, DNS], false).await;
    t.register("ansible-1", &["ansible"], 2).await;
    let d = push(&t, "d-1").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let web_task = rule(&d, "web")["task_id"].as_str().unwrap().to_owned();
    let check = rule(&d, "db")["check_task_id"].as_str().unwrap().to_owned();
    t.settle().await;
    let first = t.claim("ansible-1", 1).await.expect("a task");
    let second = t.claim("ansible-1", 1).await.expect("another");
    let (check_claim, _) = if first["id"] == check.as_str() {
        (first, second)
    } else {
        (second, first)
    };

    let mut web = Web::new(&t);
    let list = web.visit("/deployments").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let row = part(&list.body, r#"id="deployment-list""#, "</tbody>");
    for shown in [
        "homelab/infra",
        ">main<",
        ">c3d4e5f6<",
        "Grace Hopper",
        &format!(r#"href="/deployments/{id}""#),
        "web: running",
        "db: check running",
        "running</span>",
    ] {
        assert!(row.contains(shown), "{shown:?} not in {row}");
    }
    assert!(
        !row.contains("dns"),
        "a skipped rule deploys nothing: {row}"
    );
    // Only the message's first line, as text.
    assert!(
        row.contains("db: add the &lt;script&gt;alert(1)&lt;/script&gt; role"),
        "{row}"
    );
    assert!(!row.contains("And wire it"), "{row}");
    assert!(!list.body.contains("<script>alert"), "{}", list.body);
    assert!(
        list.body
            .contains(r#"href="/deployments" aria-current="page""#),
        "the section is in the navigation"
    );

    // The check completes: its real run is submitted, and runs.
    let (status, _) = t.complete(&check_claim, json!({"exit_code": 0})).await;
    assert_eq!(status, StatusCode::OK);
    t.settle().await;
    let real_claim = t.claim("ansible-1", 1).await.expect("the real run");
    let list = web.get("/deployments").await;
    assert!(list.body.contains("db: running"), "{}", list.body);

    let page = web.get(&format!("/deployments/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains(SHA), "the full sha");
    assert!(body.contains("refs/heads/main"));
    assert!(body.contains("no status API configured"));
    // The whole message, pre-wrapped and escaped.
    let message = part(body, r#"<pre class="message">"#, "</pre>");
    assert!(
        message.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{message}"
    );
    assert!(message.contains("And wire it to web."), "{message}");
    assert!(!body.contains("<script>alert"), "{body}");
    assert!(
        body.contains("<code>roles/db/main.yml</code>"),
        "changed files"
    );

    let web_card = part(body, r#"data-rule="web""#, "</article>");
    assert!(web_card.contains("matched"), "{web_card}");
    assert!(
        web_card.contains("<code>roles/web/tasks.yml</code></td><td><code>roles/web/**</code>"),
        "the file and the glob that matched it: {web_card}"
    );
    assert!(
        web_card.contains("<code>hosts/new.yml</code></td><td><code>!hosts/new.yml</code>"),
        "the excluded file and its negation: {web_card}"
    );
    assert!(
        web_card.contains(&format!(r#"href="/tasks/{web_task}""#)),
        "{web_card}"
    );
    assert!(web_card.contains("state-running"), "{web_card}");

    let db_card = part(body, r#"data-rule="db""#, "</article>");
    assert!(
        db_card.contains(&format!(r#"href="/tasks/{check}""#)),
        "{db_card}"
    );
    assert!(db_card.contains("state-completed"), "{db_card}");
    assert!(
        db_card.contains(r#"class="muted duration""#),
        "an ended task says how long it ran: {db_card}"
    );
    let real = deployment(&t, &id).await;
    let real_run = rule(&real, "db")["task_id"].as_str().unwrap().to_owned();
    assert_eq!(real_claim["id"], real_run.as_str());
    assert!(
        db_card.contains(&format!(r#"href="/tasks/{real_run}""#)),
        "{db_card}"
    );
    assert!(db_card.contains("state-running"), "{db_card}");
    assert!(
        body.contains("1 rule did not apply") && body.contains("dns"),
        "{body}"
    );

    // Filtered by repository.
    let other = web.get("/deployments?repo=homelab%2Fother").await;
    assert!(
        other.body.contains("No deployments of this repository"),
        "{}",
        other.body
    );
    let same = web.get("/deployments?repo=homelab%2Finfra").await;
    assert!(same.body.contains(&format!("/deployments/{id}")));

    // An unknown id is the UI's 404 page, a malformed one is refused as the tasks page does.
    let unknown = web
        .get(&format!("/deployments/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown.body.contains("<h1>Not found</h1>"),
        "{}",
        unknown.body
    );
    let malformed = web.get("/deployments/not-an-id").await;
    assert_eq!(
        malformed.status,
        web.get("/tasks/not-an-id").await.status,
        "{}",
        malformed.body
    );
    assert!(
        malformed.body.contains("not a deployment id"),
        "{}",
        malformed.body
    );
}

#[tokio::test]
async fn pause_and_resume_buttons_hold_and_release_a_rule_and_are_audited() {
    let t = spawn(&[WEB, DB], true).await;
    let mut web = Web::new(&t);
    web.login(KEY).await;
    let list = web.get("/deployments").await;
    let pauses = part(&list.body, r#"id="pauses""#, "</section>");
    for row in ["source:infra", "rule:web", "rule:db"] {
        assert!(
            pauses.contains(&format!(r#"data-pause="{row}""#)),
            "{row}: {pauses}"
        );
    }
    let web_row = part(pauses, r#"data-pause="rule:web""#, "</tr>");
    assert!(
        web_row.contains(r#"name="paused" value="true""#),
        "{web_row}"
    );
    assert!(web_row.contains(">Pause<"), "{web_row}");
    let csrf = list.csrf();

    let paused = web
        .post_form(
            "/deployments/pause",
            &[
                ("csrf", &csrf),
                ("scope", "rule"),
                ("name", "web"),
                ("paused", "true"),
            ],
        )
        .await;
    assert_eq!(paused.location(), "/deployments");
    let shown = web.follow(&paused).await;
    assert!(
        shown
            .body
            .contains("Paused rule web: its pushes are recorded"),
        "{}",
        shown.body
    );
    assert!(
        shown.set_cookie().unwrap_or_default().contains("Max-Age=0"),
        "the message is shown once"
    );
    let web_row = part(&shown.body, r#"data-pause="rule:web""#, "</tr>");
    assert!(
        web_row.contains(r#"class="badge paused""#) && web_row.contains("by operator:ui"),
        "{web_row}"
    );
    assert!(web_row.contains(">Resume<"), "{web_row}");
    let again = web.get("/deployments").await;
    assert!(!again.body.contains("Paused rule web"), "shown once only");

    // A push now is recorded with the web rule held; the db rule's check runs.
    let d = push(&t, "p-1").await;
    let id = d["id"].as_str().unwrap().to_owned();
    assert_eq!(rule(&d, "web")["held"], true, "{d}");
    let list = web.get("/deployments").await;
    assert!(list.body.contains("web: held"), "{}", list.body);
    assert!(list.body.contains("db: check queued"), "{}", list.body);
    let page = web.get(&format!("/deployments/{id}")).await;
    let web_card = part(&page.body, r#"data-rule="web""#, "</article>");
    assert!(web_card.contains("Held by a pause"), "{web_card}");

    let resumed = web
        .post_form(
            "/deployments/pause",
            &[
                ("csrf", &csrf),
                ("scope", "rule"),
                ("name", "web"),
                ("paused", "false"),
            ],
        )
        .await;
    let shown = web.follow(&resumed).await;
    assert!(
        shown
            .body
            .contains("Resumed rule web: 1 held task submitted."),
        "{}",
        shown.body
    );
    let after = deployment(&t, &id).await;
    let task = rule(&after, "web")["task_id"].as_str().expect("submitted");
    assert_eq!(t.task(task).await["state"], "queued");
    let page = web.get(&format!("/deployments/{id}")).await;
    assert!(page.body.contains(&format!(r#"href="/tasks/{task}""#)));

    assert_eq!(
        audited(&t, "git-rule:web").await,
        [
            ("operator:ui".to_owned(), "gitops.pause".to_owned()),
            ("operator:ui".to_owned(), "gitops.resume".to_owned()),
        ]
    );

    // A name the config does not know is refused as the other pages refuse.
    let unknown = web
        .post_form(
            "/deployments/pause",
            &[
                ("csrf", &csrf),
                ("scope", "rule"),
                ("name", "nope"),
                ("paused", "true"),
            ],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert!(unknown.body.contains("web, db"), "{}", unknown.body);
    let bad = web
        .post_form(
            "/deployments/pause",
            &[
                ("csrf", &csrf),
                ("scope", "repo"),
                ("name", "web"),
                ("paused", "true"),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
}

#[tokio::test]
async fn the_redeploy_button_makes_a_new_deployment_and_opens_it() {
    let t = spawn(&[WEB, DB], false).await;
    let d = push(&t, "r-1").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let mut web = Web::new(&t);
    let page = web.visit(&format!("/deployments/{id}")).await;
    assert!(
        page.body
            .contains(&format!(r#"action="/deployments/{id}/redeploy""#)),
        "{}",
        page.body
    );
    let redeployed = web
        .post_form(
            &format!("/deployments/{id}/redeploy"),
            &[("csrf", &page.csrf())],
        )
        .await;
    let new_id = redeployed
        .location()
        .strip_prefix("/deployments/")
        .expect("to the new deployment")
        .to_owned();
    assert_ne!(new_id, id);
    let new = deployment(&t, &new_id).await;
    assert_eq!(new["redeploy_of"], id.as_str());
    assert_eq!(new["sha"], SHA);
    let shown = web.follow(&redeployed).await;
    assert!(
        shown
            .body
            .contains("Redeployed c3d4e5f6 as a new deployment: 2 tasks submitted."),
        "{}",
        shown.body
    );
    let of = part(&shown.body, "Redeploy of", "</dd>");
    assert!(of.contains(&format!(r#"href="/deployments/{id}""#)), "{of}");
    assert_eq!(
        audited(&t, &format!("deployment:{id}")).await,
        [("operator:ui".to_owned(), "deployment.redeploy".to_owned())]
    );
    let audit = web.get("/audit").await;
    assert!(
        audit.body.contains(&format!(r#"href="/deployments/{id}""#)),
        "the audit page links the deployment: {}",
        audit.body
    );
    let list = web.get("/deployments").await;
    assert!(list.body.contains(&format!("/deployments/{new_id}")));

    let unknown = web
        .post_form(
            &format!("/deployments/{}/redeploy", uuid::Uuid::now_v7()),
            &[("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
}

#[tokio::test]
async fn a_deployment_that_submitted_nothing_offers_no_redeploy_and_refuses_one() {
    let t = spawn(&[REFUSED], false).await;
    let d = push(&t, "x-1").await;
    assert_eq!(d["state"], "skipped", "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let mut web = Web::new(&t);
    let page = web.visit(&format!("/deployments/{id}")).await;
    assert!(!page.body.contains("/redeploy"), "{}", page.body);
    let card = part(&page.body, r#"data-rule="refused""#, "</article>");
    assert!(card.contains("the server refuses its task"), "{card}");
    let list = web.get("/deployments").await;
    assert!(list.body.contains("refused: refused"), "{}", list.body);
    let csrf = list.csrf();
    let refused = web
        .post_form(&format!("/deployments/{id}/redeploy"), &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body.contains("nothing to redeploy"),
        "{}",
        refused.body
    );
}

#[tokio::test]
async fn the_deployments_forms_need_the_csrf_token() {
    let t = spawn(&[WEB], true).await;
    let d = push(&t, "c-1").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let mut web = Web::new(&t);
    web.login(KEY).await;
    let redeploy = format!("/deployments/{id}/redeploy");
    let pause = [("scope", "rule"), ("name", "web"), ("paused", "true")];
    for csrf in [None, Some("0123abcd")] {
        let with = |fields: &[(&'static str, &'static str)]| {
            let mut fields = fields.to_vec();
            fields.extend(csrf.map(|c| ("csrf", c)));
            fields
        };
        let paused = web.post_form("/deployments/pause", &with(&pause)).await;
        assert_eq!(paused.status, StatusCode::FORBIDDEN, "{}", paused.body);
        let again = web.post_form(&redeploy, &with(&[])).await;
        assert_eq!(again.status, StatusCode::FORBIDDEN, "{}", again.body);
    }
    let (_, pauses) = t.get("/api/v1/gitops/pauses").await;
    assert_eq!(pauses["pauses"], json!([]), "nothing paused");
    let (_, list) = t.get("/api/v1/deployments").await;
    assert_eq!(
        list["deployments"].as_array().unwrap().len(),
        1,
        "nothing redeployed"
    );
}

#[tokio::test]
async fn without_git_sources_the_page_says_where_to_configure_them() {
    let t = TestApp::spawn().await;
    let mut web = Web::new(&t);
    let page = web.visit("/deployments").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("No GitOps source is configured"),
        "{}",
        page.body
    );
    assert!(page.body.contains("README's GitOps section"));
    assert!(page.body.contains("No deployments."), "{}", page.body);
}

#[tokio::test]
async fn a_planted_flash_cookie_shows_nothing() {
    // Another host of the same site can set cookies for this one; a message it did not get
    // from this server for this session is not shown.
    let t = spawn(&[WEB], false).await;
    let mut web = Web::new(&t);
    web.visit("/deployments").await;
    let planted = format!(
        "muster_flash=00.{}",
        muster_server::secret::hex(b"Call this number")
    );
    let page = web
        .get_with("/deployments", &[("cookie", planted.as_str())])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("Call this number"), "{}", page.body);
    assert!(
        page.set_cookie().unwrap_or_default().contains("Max-Age=0"),
        "and it is cleared"
    );
}
