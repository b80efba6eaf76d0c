//! The audit log end to end: operator actions recorded with who did them and from where, the
//! outbox delivering at least once (again after a crash, never appending twice), pruning that
//! leaves a chain that verifies, failed logins counted per client and minute, and the API.

use std::path::Path;
use std::time::Duration;

use muster_server::audit::{Actor, AuditRecord, Via};
use muster_server::store::sqlite::{SqliteStore, audit_chain, audit_key_path};
use muster_server::store::{OutboxItem, RetryPolicy, Store};
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode, redirect};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, secret};

/// Delivers what is due (the background loop may have been first; either way every row
/// committed so far is in the log when this returns), then reads the whole log.
pub(crate) async fn audit(t: &TestApp) -> Vec<Value> {
    t.audit_entries().await
}

fn actions(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn open_store(db: &Path) -> SqliteStore {
    SqliteStore::open(
        db,
        RetryPolicy {
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
        },
    )
    .expect("store opens")
}

/// Now, as a server started afterwards reads its (not yet advanced) clock. Records from long
/// ago would be pruned by the sweep every server runs at start.
fn system_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A client for the web UI that follows no redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn cancel_and_retry_are_audited_with_the_operator_and_where_they_acted() {
    let t = TestApp::spawn().await;
    let task = t
        .submit(json!({"kind": "deploy", "capabilities": ["nobody-has-this"]}))
        .await;
    let id = task["id"].as_str().unwrap();
    let (status, _) = t
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The delivery loop appends it on its own, woken by the commit.
    let appeared = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, page) = t.get("/api/v1/audit").await;
            if let Some(first) = page["entries"].as_array().and_then(|e| e.first()) {
                break first.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the delivery loop appended the cancel");
    assert_eq!(appeared["seq"], 1);
    assert_eq!(appeared["action"], "task.cancel");
    assert_eq!(appeared["actor"], "operator:api");
    assert_eq!(appeared["subject"], format!("task:{id}"));
    assert_eq!(
        appeared["detail"],
        json!({"from": "queued", "asked_agent": false})
    );
    assert_eq!(appeared["prev_hash"], muster_server::audit::GENESIS);

    let (status, _) = t
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The same verbs from the web UI: the session's page hands out the CSRF token.
    let web = browser();
    let page = web
        .get(t.url(&format!("/tasks/{id}")))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()[SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let body = page.text().await.unwrap();
    let marker = r#"name="csrf" value=""#;
    let start = body.find(marker).expect("a CSRF field") + marker.len();
    let csrf = &body[start..start + body[start..].find('"').unwrap()];
    for verb in ["cancel", "retry"] {
        let answer = web
            .post(t.url(&format!("/tasks/{id}/{verb}")))
            .header(COOKIE, &cookie)
            .form(&[("csrf", csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{verb}");
    }
    // A refused verb changes nothing, so it records nothing.
    let (status, _) = t
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let entries = audit(&t).await;
    let pairs: Vec<(String, String)> = actions(&entries);
    let expected: Vec<(String, String)> = [
        ("task.cancel", "operator:api"),
        ("task.retry", "operator:api"),
        ("task.cancel", "operator:ui"),
        ("task.retry", "operator:ui"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(pairs, expected);
    assert_eq!(entries[1]["detail"]["from"], "cancelled");
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "chained");
        assert_eq!(
            pair[1]["seq"].as_i64(),
            pair[0]["seq"].as_i64().map(|s| s + 1)
        );
    }

    // The Audit page lists them, newest first.
    let page = web
        .get(t.url("/audit"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let body = page.text().await.unwrap();
    let newest = body.find("operator:ui").expect("the UI's entries");
    let oldest = body.find("operator:api").expect("the API's entries");
    assert!(newest < oldest, "newest first");
    assert!(body.contains(r#"href="/audit" aria-current="page""#));
}

#[tokio::test]
async fn an_outbox_row_delivered_again_appends_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("muster.db");
    // A delivery that appended, then crashed before marking its row delivered.
    let store = open_store(&db);
    let record = AuditRecord::config_reloaded(system_now(), json!({"from": "test"}));
    let item = OutboxItem::audit(&record);
    store
        .enqueue(vec![item.clone()], system_now())
        .await
        .unwrap();
    let due = store
        .due_outbox(i64::MAX, 10, muster_server::store::Lane::Local)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, item.id);
    let appended = store
        .append_audit(vec![(item.id, record.clone())])
        .await
        .unwrap();
    assert_eq!(appended, 1);
    store.close().await;

    // After the restart the row is due again and delivered again; the log keeps one entry.
    let t = TestApp::spawn_in(dir, |_| {}).await;
    let entries = audit(&t).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["id"], item.id.to_string());
    assert_eq!(entries[0]["action"], "config.reload");
    assert_eq!(entries[0]["actor"], "system");
    let due = t
        .app
        .store
        .due_outbox(i64::MAX, 10, muster_server::store::Lane::Local)
        .await
        .unwrap();
    assert!(due.is_empty(), "the row is delivered now: {due:?}");
}

#[tokio::test]
async fn undelivered_rows_survive_a_restart_and_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("muster.db");
    let t = TestApp::spawn_in(dir, |_| {}).await;
    let task = t
        .submit(json!({"kind": "deploy", "capabilities": ["nobody-has-this"]}))
        .await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let dir = t.stop().await;

    // The cancel commits with its outbox row, and the process stops before any delivery.
    let store = open_store(&db);
    store
        .cancel(id, Actor::operator(Via::Api), system_now())
        .await
        .unwrap();
    store.close().await;

    let t = TestApp::spawn_in(dir, |_| {}).await;
    let entries = audit(&t).await;
    assert_eq!(
        actions(&entries),
        [("task.cancel".into(), "operator:api".into())]
    );
    assert_eq!(entries[0]["subject"], format!("task:{id}"));
    let dir = t.stop().await;
    let ok = audit_chain(&db).unwrap().verify().expect("verifies");
    assert_eq!(ok.entries, 1);
    drop(dir);
}

#[tokio::test]
async fn pruning_past_the_retention_period_leaves_a_chain_that_verifies() {
    let t = TestApp::spawn_with(|s| s.retention = Duration::from_secs(7 * 86400)).await;
    let cancel = async |t: &TestApp| {
        let task = t
            .submit(json!({"kind": "deploy", "capabilities": ["nobody-has-this"]}))
            .await;
        let id = task["id"].as_str().unwrap().to_owned();
        let (status, _) = t
            .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
    };
    for _ in 0..3 {
        cancel(&t).await;
    }
    assert_eq!(audit(&t).await.len(), 3);
    let db = t.dir.path().join("muster.db");
    assert!(
        !audit_key_path(&db).exists(),
        "the key is made at first need"
    );

    // Within the retention period nothing goes.
    t.advance(Duration::from_secs(6 * 86400));
    let pruned = muster_server::sweeper::prune_once(&t.app).await.unwrap();
    assert_eq!((pruned.audit_entries, pruned.outbox_rows), (0, 0));

    t.advance(Duration::from_secs(2 * 86400));
    for _ in 0..2 {
        cancel(&t).await;
    }
    assert_eq!(audit(&t).await.len(), 5);
    let pruned = muster_server::sweeper::prune_once(&t.app).await.unwrap();
    assert_eq!((pruned.audit_entries, pruned.outbox_rows), (3, 3));

    let entries = audit(&t).await;
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [4, 5], "numbering goes on after the pruned entries");
    let chain = audit_chain(&db).unwrap();
    let checkpoint = chain.checkpoint.clone().expect("a checkpoint");
    assert_eq!((checkpoint.seq, checkpoint.count), (3, 3));
    assert_eq!(entries[0]["prev_hash"], checkpoint.hash);
    let ok = chain
        .verify()
        .expect("the chain verifies from the checkpoint");
    assert_eq!((ok.entries, ok.head_seq), (2, 5));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(audit_key_path(&db)).expect("the key file");
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // New entries chain on from what is left.
    cancel(&t).await;
    assert_eq!(audit(&t).await.len(), 3);
    assert_eq!(audit_chain(&db).unwrap().verify().unwrap().head_seq, 6);
}

#[tokio::test]
async fn a_flood_of_wrong_keys_from_one_client_makes_one_entry_with_the_count() {
    let t = TestApp::spawn_with(|s| s.api_key = secret("audit-test-key-0d9c")).await;
    // Start at the beginning of a minute, so the flood falls in one.
    let into_minute = t.app.now_ms().rem_euclid(60_000);
    t.advance(Duration::from_millis((60_000 - into_minute) as u64));
    let web = browser();
    for n in 0..40 {
        let answer = web
            .post(t.url("/login"))
            .form(&[("key", format!("guess-{n}").as_str()), ("next", "/")])
            .send()
            .await
            .unwrap();
        // Ten wrong keys a minute are judged; the rest are refused unread, and counted too.
        let expected = if n < 10 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(answer.status(), expected, "try {n}");
    }
    t.advance(Duration::from_secs(60));
    let right = web
        .post(t.url("/login"))
        .form(&[("key", "audit-test-key-0d9c"), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);

    // The success is recorded at once; the failures when their minute is over.
    let entries = audit(&t).await;
    assert_eq!(
        actions(&entries),
        [("login.succeeded".into(), "operator:ui".into())]
    );
    assert_eq!(entries[0]["subject"], "client:127.0.0.1");
    t.sweep().await;
    let entries = audit(&t).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let failed = &entries[1];
    assert_eq!(failed["action"], "login.failed");
    assert_eq!(failed["actor"], "system");
    assert_eq!(failed["subject"], "client:127.0.0.1");
    assert_eq!(failed["detail"]["count"], 40);
    t.sweep().await;
    assert_eq!(audit(&t).await.len(), 2, "counted once");
}

#[tokio::test]
async fn failed_logins_of_the_minute_in_progress_are_recorded_at_a_graceful_stop() {
    let key = "audit-stop-key-77c2";
    let t = TestApp::spawn_with(|s| s.api_key = secret(key)).await;
    for _ in 0..3 {
        let answer = browser()
            .post(t.url("/login"))
            .form(&[("key", "wrong")])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let dir = t.stop().await;
    let t = TestApp::spawn_in(dir, |s| s.api_key = secret(key)).await;
    let entries = audit(&t).await;
    assert_eq!(
        actions(&entries),
        [("login.failed".into(), "system".into())]
    );
    assert_eq!(entries[0]["detail"]["count"], 3);
}

#[tokio::test]
async fn the_audit_api_pages_and_needs_the_admin_key() {
    let t = TestApp::spawn_with(|s| s.api_key = secret("audit-api-key-5e1a")).await;
    let records: Vec<AuditRecord> = (0..5)
        .map(|n| AuditRecord::config_reloaded(t.app.now_ms(), json!({"n": n})))
        .collect();
    muster_server::outbox::record_audit(&t.app, records)
        .await
        .unwrap();
    assert_eq!(audit(&t).await.len(), 5);

    let (status, page) = t.get("/api/v1/audit?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["next_after"], 2);
    let (_, page) = t.get("/api/v1/audit?after=2&limit=2").await;
    let seqs: Vec<i64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    let (_, page) = t.get("/api/v1/audit?after=4&limit=2").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], Value::Null);
    assert_eq!(page["entries"][0]["detail"], json!({"n": 4}));

    let (status, body) = t.get("/api/v1/audit?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limit")
    );
    let (status, body) = t.get("/api/v1/audit?after=soon").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("after")
    );

    let anonymous = t
        .client
        .request(Method::GET, t.url("/api/v1/audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");

    let (_, doc) = t.get("/api/v1/openapi.json").await;
    assert!(doc["paths"]["/api/v1/audit"]["get"].is_object());
    assert!(doc["components"]["schemas"]["AuditPage"].is_object());
}

#[tokio::test]
async fn agent_registration_drain_undrain_and_remove_are_audited() {
    let t = TestApp::spawn().await;
    t.register("a1", &["shell"], 1).await;
    let (status, _) = t.post("/api/v1/agents/a1/drain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = t.post("/api/v1/agents/a1/undrain", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = TestApp::send(t.request(Method::DELETE, "/api/v1/agents/a1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let entries = audit(&t).await;
    let seen = actions(&entries);
    for expected in [
        ("agent.register", "agent:a1"),
        ("agent.drain", "operator:api"),
        ("agent.undrain", "operator:api"),
        ("agent.remove", "operator:api"),
    ] {
        assert!(
            seen.iter()
                .any(|(a, who)| a == expected.0 && who == expected.1),
            "{expected:?} missing from {seen:?}"
        );
    }
}
