//! Calls to a forge's REST API: setting a commit status on a pushed commit
//! ([`ForgeApi::set_status`]) and listing every file changed between two commits
//! ([`ForgeApi::changed_files`]), for a push whose own list cannot be trusted.
//!
//! The endpoints, per forge:
//! - status: Gitea and Forgejo `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with
//!   `Authorization: token …`; GitHub the same path with `Authorization: Bearer …`; GitLab
//!   `POST {api}/projects/{path, encoded as one segment}/statuses/{sha}` with `PRIVATE-TOKEN`,
//!   the context sent as `name` and a failure as `failed`.
//! - compare: GitHub `GET {api}/repos/{owner}/{repo}/compare/{base}...{head}`, reading
//!   `files[].filename` and, for a rename, `previous_filename`; it lists at most 300 files.
//!   Gitea `GET {api}/repos/{owner}/{repo}/compare/{base}...{head}` answers
//!   `{total_commits, commits}` with each commit's `files[].filename` (gitea
//!   `modules/structs/repo_compare.go`, `routers/api/v1/repo/compare.go`); it lists files per
//!   commit with `--no-renames`, so a rename shows as the old path removed and the new one
//!   added. Forgejo also answers a top-level `files[]`. Both lists are read. GitLab
//!   `GET {api}/projects/{id}/repository/compare?from=&to=` answers `diffs[].old_path` and
//!   `new_path`, and `compare_timeout: true` when it stopped at its diff limits (gitlab
//!   `lib/api/entities/compare.rb`).
//!
//! Every compare is three-dot, from the merge base of `base` and `head`: for a push that
//! rewrote history, files that only the dropped commits touched are not listed.
//!
//! An answer is judged as notifications judge theirs ([`crate::notify::Outcome`]: 2xx
//! delivered, 408/429/5xx and no answer at all worth retrying, honouring `Retry-After`,
//! anything else refused). The token goes only in a header and is blanked out of any text a
//! forge answers with; errors name the forge, the method and the URL's path.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderName, HeaderValue, USER_AGENT};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use super::forge::Forge;
use crate::notify::Outcome;
use crate::notify::channels::{by_status, describe_transport_error, read_answer, redact, start_of};
use crate::secret::Secret;

/// The limit on one call, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a status call's answer is read: it is only kept for the record.
const STATUS_ANSWER_LIMIT: usize = 64 * 1024;
/// How much of a compare's answer is read. GitHub's carries every file's patch, so it can
/// be large; past this the comparison is not read at all.
const COMPARE_ANSWER_LIMIT: usize = 32 * 1024 * 1024;
/// GitHub refuses a longer description.
const GITHUB_DESCRIPTION_LIMIT: usize = 140;
/// GitHub lists at most this many files of a comparison, however many changed.
const GITHUB_COMPARE_FILES_LIMIT: usize = 300;

/// The state of a commit status, in muster's words; [`StatusState::wire`] gives each
/// forge's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    /// The work has not finished.
    Pending,
    /// The work succeeded.
    Success,
    /// The work ran and failed.
    Failure,
    /// The work could not run.
    Error,
}

impl StatusState {
    /// The state as `forge` names it. GitLab has no "error": its nearest is `failed`
    /// (`canceled` would say someone stopped the work).
    pub fn wire(self, forge: Forge) -> &'static str {
        match (self, forge) {
            (StatusState::Pending, _) => "pending",
            (StatusState::Success, _) => "success",
            (StatusState::Failure | StatusState::Error, Forge::Gitlab) => "failed",
            (StatusState::Failure, _) => "failure",
            (StatusState::Error, _) => "error",
        }
    }
}

/// A status to set on one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub state: StatusState,
    /// Where the status links to: the task's page in muster's UI, when `PUBLIC_URL` is set.
    pub target_url: Option<String>,
    /// One line; cut to 140 characters for GitHub.
    pub description: String,
    /// What the status is about, so that muster's statuses replace each other and no one
    /// else's (`muster/deploy`); GitLab calls it `name`.
    pub context: String,
}

/// One forge's API, as configured: where it is and the token to call it with.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgeApi {
    pub forge: Forge,
    /// The API's root: `https://git.home/api/v1` (Gitea, Forgejo), `https://api.github.com`,
    /// `https://gitlab.com/api/v4`.
    pub api_url: String,
    /// Sent only in a header; `None` calls the API anonymously.
    pub token: Option<Secret>,
}

/// What a status call came to: the forge's answer judged, or why no call could be made.
pub type SendResult = Result<Outcome, ApiCallError>;

/// Why a call to a forge's API did not give what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiCallError {
    /// No request could be made from the settings or the arguments; nothing was sent.
    #[error("{forge}: {problem}")]
    Unusable { forge: Forge, problem: String },
    /// The forge answered other than 2xx, or not at all: `outcome` is a `Retry` or a
    /// `Refused`, and its text names the forge, the method, the path and the status.
    #[error("{}", outcome_text(.outcome))]
    Failed { outcome: Outcome },
    /// The forge answered 2xx with something that is not what its API documents.
    #[error("{forge} at GET {path} answered {status}, but {problem}")]
    Unreadable {
        forge: Forge,
        path: String,
        status: u16,
        problem: String,
    },
    /// The forge lists only part of the changed files; whoever asked should treat every
    /// path as changed.
    #[error(
        "{forge} at GET {path} lists only part of the changed files ({listed} listed): treat every path as changed"
    )]
    Incomplete {
        forge: Forge,
        path: String,
        listed: usize,
    },
}

fn outcome_text(outcome: &Outcome) -> &str {
    outcome.recorded().1
}

/// A call as it came back.
struct Called {
    outcome: Outcome,
    body: Vec<u8>,
    /// The whole body arrived, within its limit.
    whole: bool,
}

impl ForgeApi {
    /// Sets `status` on commit `sha` of `repo` (`owner/name`; GitLab: the project's full
    /// path). Use [`crate::notify::channels::client`]: it follows no redirect, which could
    /// carry the token to another server.
    pub async fn set_status(
        &self,
        client: &reqwest::Client,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> SendResult {
        let mut segments = self.repo_segments(repo)?;
        segments.extend(["statuses", sha]);
        let url = self.url(&segments, &[])?;
        let state = status.state.wire(self.forge);
        let mut body = match self.forge {
            Forge::Gitlab => json!({
                "state": state,
                "name": status.context,
                "description": status.description,
            }),
            Forge::Github => json!({
                "state": state,
                "description": crate::notify::cut(&status.description, GITHUB_DESCRIPTION_LIMIT),
                "context": status.context,
            }),
            Forge::Gitea | Forge::Forgejo => json!({
                "state": state,
                "description": status.description,
                "context": status.context,
            }),
        };
        if let (Some(target), Value::Object(fields)) = (&status.target_url, &mut body) {
            fields.insert("target_url".into(), Value::String(target.clone()));
        }
        let request = self.request(client, Method::POST, url.clone())?.json(&body);
        let called = self
            .call(
                request,
                &self.shown(&Method::POST, &url),
                STATUS_ANSWER_LIMIT,
            )
            .await;
        Ok(called.outcome)
    }

    /// Every path that differs between commits `base` and `head` of `repo`, renamed files
    /// under both names, sorted and each once.
    pub async fn changed_files(
        &self,
        client: &reqwest::Client,
        repo: &str,
        base: &str,
        head: &str,
    ) -> Result<Vec<String>, ApiCallError> {
        let mut segments = self.repo_segments(repo)?;
        let range = format!("{base}...{head}");
        let url = match self.forge {
            Forge::Gitlab => {
                segments.extend(["repository", "compare"]);
                self.url(&segments, &[("from", base), ("to", head)])?
            }
            Forge::Gitea | Forge::Forgejo | Forge::Github => {
                segments.extend(["compare", range.as_str()]);
                self.url(&segments, &[])?
            }
        };
        let path = shown_path(&url);
        let request = self.request(client, Method::GET, url.clone())?;
        let called = self
            .call(
                request,
                &self.shown(&Method::GET, &url),
                COMPARE_ANSWER_LIMIT,
            )
            .await;
        let status = match called.outcome {
            Outcome::Delivered { status, .. } => status,
            outcome => return Err(ApiCallError::Failed { outcome }),
        };
        let unreadable = |problem: String| ApiCallError::Unreadable {
            forge: self.forge,
            path: path.clone(),
            status,
            problem,
        };
        if !called.whole {
            return Err(unreadable(format!(
                "its answer was cut short or is larger than {} MiB",
                COMPARE_ANSWER_LIMIT / (1024 * 1024)
            )));
        }
        let incomplete = |listed: usize| ApiCallError::Incomplete {
            forge: self.forge,
            path: path.clone(),
            listed,
        };
        let mut paths = BTreeSet::new();
        match self.forge {
            Forge::Github => {
                let compare: GithubCompare = parse_answer(&called.body).map_err(unreadable)?;
                // An answer without `files` said nothing about them.
                let files = compare.files.ok_or_else(|| incomplete(0))?;
                if files.len() >= GITHUB_COMPARE_FILES_LIMIT {
                    return Err(incomplete(files.len()));
                }
                for file in files {
                    paths.extend(file.previous_filename);
                    paths.insert(file.filename);
                }
            }
            Forge::Gitea | Forge::Forgejo => {
                let compare: GiteaCompare = parse_answer(&called.body).map_err(unreadable)?;
                let listed_whole = compare.files.is_some();
                paths.extend(compare.files.into_iter().flatten().map(|f| f.filename));
                for (index, commit) in compare.commits.into_iter().flatten().enumerate() {
                    match commit.files {
                        Some(files) => paths.extend(files.into_iter().map(|f| f.filename)),
                        // Null when the forge leaves the files out (too old, or asked not to).
                        None if !listed_whole => {
                            return Err(unreadable(format!(
                                "commit {} lists no files",
                                commit.sha.unwrap_or_else(|| format!("[{index}]"))
                            )));
                        }
                        None => {}
                    }
                }
            }
            Forge::Gitlab => {
                let compare: GitlabCompare = parse_answer(&called.body).map_err(unreadable)?;
                if compare.compare_timeout == Some(true) {
                    return Err(incomplete(compare.diffs.len()));
                }
                for diff in compare.diffs {
                    paths.insert(diff.old_path);
                    paths.insert(diff.new_path);
                }
            }
        }
        Ok(paths.into_iter().collect())
    }

    /// The path segments naming `repo`: `repos/{owner}/{name}`, or GitLab's
    /// `projects/{path}` with the path as one segment (its slashes encoded).
    fn repo_segments<'a>(&self, repo: &'a str) -> Result<Vec<&'a str>, ApiCallError> {
        match self.forge {
            Forge::Gitlab if !repo.is_empty() => Ok(vec!["projects", repo]),
            Forge::Gitlab => Err(self.unusable("the project's path is empty".into())),
            Forge::Gitea | Forge::Forgejo | Forge::Github => match repo.split_once('/') {
                Some((owner, name))
                    if !owner.is_empty() && !name.is_empty() && !name.contains('/') =>
                {
                    Ok(vec!["repos", owner, name])
                }
                _ => Err(self.unusable(format!(
                    "the repository {repo:?} is not of the form owner/name"
                ))),
            },
        }
    }

    /// The API's root with `segments` appended, each percent-encoded as one segment, and
    /// `query` added.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, ApiCallError> {
        let mut url = Url::parse(&self.api_url).map_err(|err| {
            self.unusable(format!(
                "the API URL {:?} is not a URL: {err}",
                self.api_url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.unusable(format!(
                "the API URL {:?} is not an http(s) URL",
                self.api_url
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Nor would it be shown: a password there is a secret outside `token`.
            return Err(self.unusable(
                "the API URL holds a user or a password: give the token as the token instead"
                    .into(),
            ));
        }
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| self.unusable("the API URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// A request with this forge's authentication and accepted type.
    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        url: Url,
    ) -> Result<reqwest::RequestBuilder, ApiCallError> {
        let mut request = client
            .request(method, url)
            .timeout(REQUEST_TIMEOUT)
            .header(USER_AGENT, concat!("muster/", env!("CARGO_PKG_VERSION")));
        request = match self.forge {
            Forge::Github => request
                .header(ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            Forge::Gitea | Forge::Forgejo | Forge::Gitlab => {
                request.header(ACCEPT, "application/json")
            }
        };
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let (name, value) = match self.forge {
            Forge::Gitea | Forge::Forgejo => (AUTHORIZATION, format!("token {}", token.expose())),
            Forge::Github => (AUTHORIZATION, format!("Bearer {}", token.expose())),
            Forge::Gitlab => (
                HeaderName::from_static("private-token"),
                token.expose().to_owned(),
            ),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            self.unusable("the token holds characters an HTTP header cannot carry".into())
        })?;
        // Sensitive headers never show in reqwest's or hyper's debug output.
        value.set_sensitive(true);
        Ok(request.header(name, value))
    }

    /// Sends `request` and judges the answer; `shown` names the call in error texts.
    async fn call(&self, request: reqwest::RequestBuilder, shown: &str, limit: usize) -> Called {
        let secrets: Vec<&str> = self.token.iter().map(Secret::expose).collect();
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let error = describe_transport_error(err, shown, REQUEST_TIMEOUT);
                return Called {
                    outcome: Outcome::Retry {
                        status: None,
                        after: None,
                        error: redact(&error, &secrets),
                    },
                    body: Vec::new(),
                    whole: false,
                };
            }
        };
        let answer = read_answer(response, limit).await;
        // Redacted before it is cut, so a token at the cut is not left half shown.
        let text = String::from_utf8_lossy(&answer.body);
        let kept = start_of(&redact(text.trim(), &secrets));
        // A Retry-After date is measured from the wall clock: it is the forge's clock the
        // date was written by, not muster's adjustable one.
        let after = answer
            .retry_after
            .as_deref()
            .and_then(|value| muster_llm::retry_after(value, Utc::now()));
        Called {
            outcome: by_status(shown, answer.status, kept, after),
            body: answer.body,
            whole: answer.whole,
        }
    }

    /// `GitHub at POST /repos/o/r/statuses/abc`: how error texts name a call.
    fn shown(&self, method: &Method, url: &Url) -> String {
        format!("{} at {method} {}", self.forge, shown_path(url))
    }

    fn unusable(&self, problem: String) -> ApiCallError {
        ApiCallError::Unusable {
            forge: self.forge,
            problem,
        }
    }
}

/// The URL's path and query as sent, without the scheme and host (the token is never in
/// either).
fn shown_path(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Reads an answer, naming the path of whatever does not fit.
fn parse_answer<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| format!("its answer is not a comparison ({err})"))
}

#[derive(Deserialize)]
struct GithubCompare {
    files: Option<Vec<GithubFile>>,
}

#[derive(Deserialize)]
struct GithubFile {
    filename: String,
    previous_filename: Option<String>,
}

#[derive(Deserialize)]
struct GiteaCompare {
    /// Forgejo's list of the comparison's files; Gitea sends none.
    files: Option<Vec<GiteaFile>>,
    commits: Option<Vec<GiteaCommit>>,
}

#[derive(Deserialize)]
struct GiteaCommit {
    sha: Option<String>,
    files: Option<Vec<GiteaFile>>,
}

#[derive(Deserialize)]
struct GiteaFile {
    filename: String,
}

#[derive(Deserialize)]
struct GitlabCompare {
    diffs: Vec<GitlabDiff>,
    compare_timeout: Option<bool>,
}

#[derive(Deserialize)]
struct GitlabDiff {
    old_path: String,
    new_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(forge: Forge, api_url: &str) -> ForgeApi {
        ForgeApi {
            forge,
            api_url: api_url.to_owned(),
            token: Some(Secret::new("tok-0123456789")),
        }
    }

    #[test]
    fn states_take_each_forges_names() {
        use StatusState::*;
        let names = |forge| [Pending, Success, Failure, Error].map(|s| s.wire(forge));
        for forge in [Forge::Gitea, Forge::Forgejo, Forge::Github] {
            assert_eq!(names(forge), ["pending", "success", "failure", "error"]);
        }
        assert_eq!(
            names(Forge::Gitlab),
            ["pending", "success", "failed", "failed"]
        );
    }

    #[test]
    fn urls_encode_each_segment_and_query_value() {
        let gitea = api(Forge::Gitea, "https://git.home/api/v1/");
        let url = gitea
            .url(&["repos", "o", "r", "compare", "main...feature/x y"], &[])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://git.home/api/v1/repos/o/r/compare/main...feature%2Fx%20y"
        );
        let gitlab = api(Forge::Gitlab, "https://gitlab.com/api/v4");
        let url = gitlab
            .url(
                &["projects", "group/sub/project", "repository", "compare"],
                &[("from", "a&b"), ("to", "c d")],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://gitlab.com/api/v4/projects/group%2Fsub%2Fproject/repository/compare?from=a%26b&to=c+d"
        );
    }

    #[test]
    fn unusable_settings_and_names_are_refused_before_sending() {
        let github = api(Forge::Github, "https://api.github.com");
        for repo in ["", "owner", "/name", "owner/", "a/b/c"] {
            assert!(
                matches!(
                    github.repo_segments(repo),
                    Err(ApiCallError::Unusable { .. })
                ),
                "{repo:?}"
            );
        }
        assert_eq!(
            api(Forge::Gitlab, "x").repo_segments("a/b/c").unwrap(),
            ["projects", "a/b/c"]
        );
        for url in [
            "not a url",
            "ftp://git.home/api",
            "https://user:pw@git.home/api/v1",
        ] {
            let err = api(Forge::Gitea, url).url(&["repos"], &[]).unwrap_err();
            assert!(matches!(err, ApiCallError::Unusable { .. }), "{url}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
        let bad_token = ForgeApi {
            token: Some(Secret::new("line\nbreak")),
            ..github
        };
        let client = reqwest::Client::new();
        let url = Url::parse("https://api.github.com/").unwrap();
        let err = bad_token
            .request(&client, Method::GET, url)
            .expect_err("a token with a newline is refused");
        assert!(!err.to_string().contains("line"), "{err}");
    }
}
