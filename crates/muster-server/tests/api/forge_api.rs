//! What the forge API client puts on the wire, checked against a fake forge on loopback: the
//! method, path, headers and JSON body of a commit status per forge, how each kind of answer
//! is taken (delivered, retry and when, refused), and how each forge's comparison is read
//! into the changed files, renames under both names.

use std::time::Duration;

use muster_server::gitops::forge::Forge;
use muster_server::gitops::forge_api::{ApiCallError, CommitStatus, ForgeApi, StatusState};
use muster_server::notify::Outcome;
use muster_server::notify::channels;
use muster_server::secret::Secret;
use serde_json::{Value, json};

use crate::fake_service::{FakeService, Recorded, Reply};

const TOKEN: &str = "forge-token-0123456789abcdef";
const SHA: &str = "c3d4e5f60718293a4b5c6d7e8f90123456789abc";
const BASE: &str = "9f2c1a7e3b5d4c6a8e0f1b2d3c4e5f6a7b8c9d0e";

/// The API root each forge has under the fake's address, and the repository it is asked
/// about (GitLab's in a subgroup, so its path holds encoded slashes).
fn api(forge: Forge, fake: &FakeService) -> ForgeApi {
    let root = match forge {
        Forge::Gitea | Forge::Forgejo => format!("{}/api/v1", fake.url),
        Forge::Github => fake.url.clone(),
        Forge::Gitlab => format!("{}/api/v4/", fake.url),
    };
    ForgeApi {
        forge,
        api_url: root,
        token: Some(Secret::new(TOKEN)),
    }
}

fn repo(forge: Forge) -> &'static str {
    match forge {
        Forge::Gitlab => "homelab/infra/site",
        _ => "homelab/infra",
    }
}

fn repo_path(forge: Forge) -> &'static str {
    match forge {
        Forge::Gitea | Forge::Forgejo => "/api/v1/repos/homelab/infra",
        Forge::Github => "/repos/homelab/infra",
        Forge::Gitlab => "/api/v4/projects/homelab%2Finfra%2Fsite",
    }
}

fn status(state: StatusState) -> CommitStatus {
    CommitStatus {
        state,
        target_url: Some("https://muster.home.arpa/tasks/0193a5e2?tab=log".to_owned()),
        description: "deploy of homelab/infra@c3d4e5f finished".to_owned(),
        context: "muster/deploy".to_owned(),
    }
}

/// The headers every call carries, each forge's way, and nowhere else the token.
fn assert_authenticated(forge: Forge, request: &Recorded) {
    assert!(
        request
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("muster/")),
        "{forge}: {request:?}"
    );
    match forge {
        Forge::Gitea | Forge::Forgejo => {
            assert_eq!(
                request.header("authorization"),
                Some(&*format!("token {TOKEN}"))
            );
            assert_eq!(request.header("accept"), Some("application/json"));
        }
        Forge::Github => {
            assert_eq!(
                request.header("authorization"),
                Some(&*format!("Bearer {TOKEN}"))
            );
            assert_eq!(
                request.header("accept"),
                Some("application/vnd.github+json")
            );
            assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
        }
        Forge::Gitlab => {
            assert_eq!(request.header("private-token"), Some(TOKEN));
            assert_eq!(request.header("authorization"), None);
            assert_eq!(request.header("accept"), Some("application/json"));
        }
    }
    assert!(!request.path.contains(TOKEN), "{forge}: {}", request.path);
}

#[tokio::test]
async fn a_status_goes_to_each_forges_path_with_its_headers_and_fields() {
    let client = channels::client();
    for forge in Forge::ALL {
        let fake = FakeService::start().await;
        fake.default_reply(Reply::status(201, r#"{"id": 1}"#));
        let outcome = api(forge, &fake)
            .set_status(&client, repo(forge), SHA, &status(StatusState::Failure))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Delivered { status: 201, .. }),
            "{forge}: {outcome:?}"
        );
        let requests = fake.requests();
        assert_eq!(requests.len(), 1, "{forge}");
        let request = &requests[0];
        assert_eq!(request.method, "POST", "{forge}");
        assert_eq!(
            request.path,
            format!("{}/statuses/{SHA}", repo_path(forge)),
            "{forge}"
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_authenticated(forge, request);
        let target = "https://muster.home.arpa/tasks/0193a5e2?tab=log";
        let description = "deploy of homelab/infra@c3d4e5f finished";
        let expected = match forge {
            Forge::Gitlab => json!({
                "state": "failed",
                "name": "muster/deploy",
                "target_url": target,
                "description": description,
            }),
            _ => json!({
                "state": "failure",
                "context": "muster/deploy",
                "target_url": target,
                "description": description,
            }),
        };
        assert_eq!(request.json(), expected, "{forge}");
    }
}

#[tokio::test]
async fn status_states_descriptions_and_a_missing_link_take_each_forges_form() {
    let client = channels::client();
    let fake = FakeService::start().await;
    fake.default_reply(Reply::status(201, "{}"));
    let cases = [
        (Forge::Github, StatusState::Pending, "pending"),
        (Forge::Github, StatusState::Success, "success"),
        (Forge::Github, StatusState::Error, "error"),
        (Forge::Gitea, StatusState::Error, "error"),
        (Forge::Gitlab, StatusState::Pending, "pending"),
        (Forge::Gitlab, StatusState::Success, "success"),
        (Forge::Gitlab, StatusState::Error, "failed"),
    ];
    for (i, (forge, state, wire)) in cases.into_iter().enumerate() {
        let mut status = status(state);
        status.target_url = None;
        api(forge, &fake)
            .set_status(&client, repo(forge), SHA, &status)
            .await
            .unwrap();
        let body = fake.wait_for(i + 1).await[i].json();
        assert_eq!(body["state"], wire, "{forge} {state:?}");
        assert!(body.get("target_url").is_none(), "{forge}: {body}");
    }

    // GitHub refuses a description over 140 characters; the others take it whole.
    let long = "é".repeat(200);
    let mut status = status(StatusState::Success);
    status.description = long.clone();
    let before = fake.requests().len();
    for forge in [Forge::Github, Forge::Gitea] {
        api(forge, &fake)
            .set_status(&client, repo(forge), SHA, &status)
            .await
            .unwrap();
    }
    let requests = fake.wait_for(before + 2).await;
    let github = requests[before].json();
    let github_description = github["description"].as_str().unwrap();
    assert_eq!(github_description.chars().count(), 140);
    assert!(github_description.ends_with('…'));
    assert_eq!(requests[before + 1].json()["description"], long.as_str());
}

#[tokio::test]
async fn status_answers_are_judged_delivered_retry_or_refused() {
    let client = channels::client();
    let fake = FakeService::start().await;
    let forge_api = api(Forge::Gitea, &fake);
    let success = status(StatusState::Success);
    let send = || forge_api.set_status(&client, "homelab/infra", SHA, &success);

    fake.reply_next(Reply::status(201, "{}"));
    assert!(matches!(
        send().await.unwrap(),
        Outcome::Delivered { status: 201, .. }
    ));

    fake.reply_next(Reply::status(500, "database is locked"));
    let outcome = send().await.unwrap();
    assert!(
        matches!(
            &outcome,
            Outcome::Retry { status: Some(500), after: None, error } if error.contains("database is locked")
        ),
        "{outcome:?}"
    );

    fake.reply_next(Reply::status(429, "slow down").with_header("Retry-After", "7"));
    let outcome = send().await.unwrap();
    assert!(
        matches!(outcome, Outcome::Retry { status: Some(429), after: Some(d), .. } if d == Duration::from_secs(7)),
        "{outcome:?}"
    );

    // The forge echoing the token back does not put it in muster's record.
    fake.reply_next(Reply::status(
        401,
        format!(r#"{{"message": "token {TOKEN} is invalid"}}"#),
    ));
    let outcome = send().await.unwrap();
    let Outcome::Refused { status: 401, error } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(!error.contains(TOKEN), "{error}");
    assert!(error.contains("[redacted]"), "{error}");

    fake.reply_next(Reply::status(404, r#"{"message": "Not Found"}"#));
    let outcome = send().await.unwrap();
    let Outcome::Refused { status: 404, error } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        error,
        &format!(
            "Gitea at POST /api/v1/repos/homelab/infra/statuses/{SHA} answered 404: \
             {{\"message\": \"Not Found\"}}"
        )
    );

    // A redirect could carry the token elsewhere: refused, not followed.
    fake.reply_next(Reply::status(302, "").with_header("Location", "http://127.0.0.1:9/"));
    assert!(matches!(
        send().await.unwrap(),
        Outcome::Refused { status: 302, .. }
    ));
    assert_eq!(fake.requests().len(), 6);
}

#[tokio::test]
async fn an_unreachable_forge_is_worth_retrying() {
    // A port that was free a moment ago and is closed now: the connection is refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let forge_api = ForgeApi {
        forge: Forge::Github,
        api_url: format!("http://{address}"),
        token: Some(Secret::new(TOKEN)),
    };
    let outcome = forge_api
        .set_status(
            &channels::client(),
            "homelab/infra",
            SHA,
            &status(StatusState::Pending),
        )
        .await
        .unwrap();
    let Outcome::Retry {
        status: None,
        error,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert!(
        error.starts_with(&format!(
            "could not connect to GitHub at POST /repos/homelab/infra/statuses/{SHA}"
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_call_that_cannot_be_made_sends_nothing() {
    let client = channels::client();
    let fake = FakeService::start().await;
    let err = api(Forge::Github, &fake)
        .set_status(&client, "no-slash", SHA, &status(StatusState::Success))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "GitHub: the repository \"no-slash\" is not of the form owner/name"
    );
    let err = api(Forge::Gitea, &fake)
        .changed_files(&client, "a/b/c", BASE, SHA)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiCallError::Unusable { .. }), "{err}");
    assert!(fake.requests().is_empty());
}

/// Asks `forge` for the files between `BASE` and `SHA`, answering with `answer`, and
/// returns the result with the one request made.
async fn compare(forge: Forge, answer: Reply) -> (Result<Vec<String>, ApiCallError>, Recorded) {
    let fake = FakeService::start().await;
    fake.reply_next(answer);
    let result = api(forge, &fake)
        .changed_files(&channels::client(), repo(forge), BASE, SHA)
        .await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{forge}");
    (result, requests.into_iter().next().unwrap())
}

fn json_reply(value: Value) -> Reply {
    Reply::ok(value.to_string())
}

#[tokio::test]
async fn github_compare_lists_files_and_both_names_of_a_rename() {
    let (files, request) = compare(
        Forge::Github,
        json_reply(json!({
            "status": "ahead",
            "total_commits": 2,
            "commits": [{"sha": SHA}],
            "files": [
                {"filename": "roles/web/tasks.yml", "status": "modified", "patch": "@@ -1 +1 @@"},
                {"filename": "roles/proxy/main.yml", "status": "renamed",
                 "previous_filename": "roles/web/proxy.yml"},
                {"filename": "old/legacy.conf", "status": "removed"},
            ],
        })),
    )
    .await;
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.path,
        format!("/repos/homelab/infra/compare/{BASE}...{SHA}")
    );
    assert_authenticated(Forge::Github, &request);
    assert_eq!(
        files.unwrap(),
        [
            "old/legacy.conf",
            "roles/proxy/main.yml",
            "roles/web/proxy.yml",
            "roles/web/tasks.yml"
        ]
    );
}

#[tokio::test]
async fn gitea_and_forgejo_compare_lists_the_union_of_their_commits_files() {
    // Gitea lists files per commit, a rename as a removal and an addition.
    let gitea_answer = json!({
        "total_commits": 2,
        "commits": [
            {"sha": "a1", "files": [
                {"filename": "hosts/new.yml", "status": "added"},
                {"filename": "README.md", "status": "modified"},
            ]},
            {"sha": "b2", "files": [
                {"filename": "roles/web/proxy.yml", "status": "removed"},
                {"filename": "roles/proxy/main.yml", "status": "added"},
                {"filename": "README.md", "status": "modified"},
            ]},
        ],
    });
    let (files, request) = compare(Forge::Gitea, json_reply(gitea_answer)).await;
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.path,
        format!("/api/v1/repos/homelab/infra/compare/{BASE}...{SHA}")
    );
    assert_authenticated(Forge::Gitea, &request);
    assert_eq!(
        files.unwrap(),
        [
            "README.md",
            "hosts/new.yml",
            "roles/proxy/main.yml",
            "roles/web/proxy.yml"
        ]
    );

    // Forgejo adds the comparison's own list; both are read, and with it a commit may
    // leave its files out.
    let forgejo_answer = json!({
        "total_commits": 2,
        "files": [{"filename": "a.txt", "status": "added"}],
        "commits": [
            {"sha": "a1", "files": [{"filename": "b.txt", "status": "modified"}]},
            {"sha": "b2", "files": null},
        ],
    });
    let (files, request) = compare(Forge::Forgejo, json_reply(forgejo_answer)).await;
    assert_eq!(
        request.path,
        format!("/api/v1/repos/homelab/infra/compare/{BASE}...{SHA}")
    );
    assert_eq!(files.unwrap(), ["a.txt", "b.txt"]);

    // Gitea with a commit whose files are left out cannot say what changed.
    let (result, _) = compare(
        Forge::Gitea,
        json_reply(json!({"total_commits": 1, "commits": [{"sha": "a1", "files": null}]})),
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApiCallError::Unreadable { status: 200, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("commit a1 lists no files"),
        "{err}"
    );
}

#[tokio::test]
async fn gitlab_compare_lists_old_and_new_paths_by_the_encoded_project_path() {
    let (files, request) = compare(
        Forge::Gitlab,
        json_reply(json!({
            "commit": {"id": SHA},
            "commits": [{"id": SHA}],
            "diffs": [
                {"old_path": "roles/web/proxy.yml", "new_path": "roles/proxy/main.yml",
                 "renamed_file": true, "diff": "", "new_file": false, "deleted_file": false},
                {"old_path": "README.md", "new_path": "README.md", "renamed_file": false},
                {"old_path": "old/legacy.conf", "new_path": "old/legacy.conf", "deleted_file": true},
            ],
            "compare_timeout": false,
            "compare_same_ref": false,
        })),
    )
    .await;
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.path,
        format!("/api/v4/projects/homelab%2Finfra%2Fsite/repository/compare?from={BASE}&to={SHA}")
    );
    assert_authenticated(Forge::Gitlab, &request);
    assert_eq!(
        files.unwrap(),
        [
            "README.md",
            "old/legacy.conf",
            "roles/proxy/main.yml",
            "roles/web/proxy.yml"
        ]
    );
}

#[tokio::test]
async fn a_partial_comparison_is_said_to_be_partial() {
    let files: Vec<Value> = (0..300)
        .map(|i| json!({"filename": format!("f/{i}"), "status": "added"}))
        .collect();
    let (result, _) = compare(Forge::Github, json_reply(json!({"files": files}))).await;
    assert!(
        matches!(
            result,
            Err(ApiCallError::Incomplete {
                forge: Forge::Github,
                listed: 300,
                ..
            })
        ),
        "{result:?}"
    );
    let (result, _) = compare(Forge::Github, json_reply(json!({"status": "ahead"}))).await;
    assert!(
        matches!(result, Err(ApiCallError::Incomplete { listed: 0, .. })),
        "{result:?}"
    );

    let (result, _) = compare(
        Forge::Gitlab,
        json_reply(json!({
            "diffs": [{"old_path": "a", "new_path": "a"}],
            "compare_timeout": true,
        })),
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ApiCallError::Incomplete {
                forge: Forge::Gitlab,
                listed: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("treat every path as changed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_or_unreadable_comparison_names_the_forge_path_and_status() {
    let (result, _) = compare(
        Forge::Gitea,
        Reply::status(404, r#"{"message": "GetCompareInfo"}"#),
    )
    .await;
    let err = result.unwrap_err();
    let ApiCallError::Failed {
        outcome: Outcome::Refused { status: 404, .. },
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(
        err.to_string().starts_with(&format!(
            "Gitea at GET /api/v1/repos/homelab/infra/compare/{BASE}...{SHA} answered 404"
        )),
        "{err}"
    );

    let (result, _) = compare(
        Forge::Gitlab,
        Reply::status(503, "maintenance").with_header("Retry-After", "120"),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(ApiCallError::Failed {
                outcome: Outcome::Retry { status: Some(503), after: Some(d), .. }
            }) if d == Duration::from_secs(120)
        ),
        "{result:?}"
    );

    let (result, _) = compare(Forge::Github, Reply::ok("<html>sign in</html>")).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApiCallError::Unreadable { status: 200, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "GitHub at GET /repos/homelab/infra/compare/{BASE}...{SHA} answered 200, but its \
             answer is not a comparison"
        )),
        "{err}"
    );

    let (result, _) = compare(
        Forge::Gitlab,
        json_reply(json!({"diffs": [{"old_path": 1, "new_path": "a"}]})),
    )
    .await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("diffs[0].old_path"), "{err}");
}
