//! Push webhooks as Gitea, Forgejo, GitHub and GitLab send them, read without I/O: which
//! [`Forge`], which [`HookEvent`] the headers name, the forge's [`delivery_id`] (the
//! idempotency key), the signature checked over the raw body ([`verify`], before anything is
//! parsed) and the body read into one forge-neutral [`Push`] ([`parse_push`]).
//!
//! The wire facts, and where they were read:
//! - Gitea signs the body with HMAC-SHA256 and sends lowercase hex, no prefix, in
//!   `X-Gitea-Signature`, with `X-Gitea-Event` and `X-Gitea-Delivery` (gitea
//!   `services/webhook/deliver.go`). Forgejo sends the same set as `X-Forgejo-*` and again as
//!   `X-Gitea-*` (forgejo `services/webhook/shared/payloader.go`). With no secret set, both
//!   send the signature header empty, which is read here as missing.
//! - GitHub sends `X-Hub-Signature-256: sha256=<hex>`; the SHA-1 `X-Hub-Signature` is never
//!   read.
//! - GitLab signs nothing: `X-Gitlab-Token` holds the secret itself.
//! - Gitea and Forgejo list at most `FEED_MAX_COMMIT_NUM` commits (5 by default) and give the
//!   true count in `total_commits`; GitLab lists the newest 20 and gives
//!   `total_commits_count`; GitHub lists up to 2048 commits in a webhook (its "20" applies to
//!   timeline events only) and up to 3000 changed files per commit.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::from_hex;

/// A forge that sends push webhooks; named in lowercase in settings (`gitea`, `forgejo`,
/// `github`, `gitlab`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    /// Gitea (`X-Gitea-*` headers).
    Gitea,
    /// Forgejo, Gitea's fork (`X-Forgejo-*`, and Gitea's headers as well).
    Forgejo,
    /// GitHub or GitHub Enterprise Server.
    Github,
    /// GitLab, self-hosted or gitlab.com.
    Gitlab,
}

impl Forge {
    /// Every forge, in the order error messages list them.
    pub const ALL: [Forge; 4] = [Forge::Gitea, Forge::Forgejo, Forge::Github, Forge::Gitlab];

    /// The name settings use: `gitea`, `forgejo`, `github`, `gitlab`.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
        }
    }

    /// The name people use, for messages: `Gitea`, `GitHub`, …
    pub fn title(self) -> &'static str {
        match self {
            Forge::Gitea => "Gitea",
            Forge::Forgejo => "Forgejo",
            Forge::Github => "GitHub",
            Forge::Gitlab => "GitLab",
        }
    }
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// A forge name that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown forge {given:?}: expected one of gitea, forgejo, github, gitlab")]
pub struct UnknownForge {
    /// The name as given.
    pub given: String,
}

impl FromStr for Forge {
    type Err = UnknownForge;

    fn from_str(text: &str) -> Result<Forge, UnknownForge> {
        Forge::ALL
            .into_iter()
            .find(|forge| forge.as_str() == text)
            .ok_or_else(|| UnknownForge {
                given: text.to_owned(),
            })
    }
}

/// What a hook's headers say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// A push of a branch or a tag (GitLab: `Push Hook` or `Tag Push Hook`). Gitea's and
    /// Forgejo's "test delivery" is a push too.
    Push,
    /// GitHub's `ping`, sent once when a webhook is created.
    Ping,
    /// Any other event, by the name the forge gave it (`delete`, `Merge Request Hook`, …).
    Other(String),
    /// No event header at all, or an empty one: `header` is the one this forge sends, so
    /// the refusal can name it.
    Missing { header: &'static str },
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookEvent::Push => f.write_str("push"),
            HookEvent::Ping => f.write_str("ping"),
            HookEvent::Other(name) => write!(f, "{name:?}"),
            HookEvent::Missing { header } => write!(f, "no {header} header"),
        }
    }
}

/// The headers a forge names its event in, the first present one deciding.
fn event_headers(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::Gitea => &["X-Gitea-Event"],
        Forge::Forgejo => &["X-Forgejo-Event", "X-Gitea-Event"],
        Forge::Github => &["X-GitHub-Event"],
        Forge::Gitlab => &["X-Gitlab-Event"],
    }
}

/// Which event the hook's headers name.
pub fn event(forge: Forge, headers: &HeaderMap) -> HookEvent {
    let names = event_headers(forge);
    let Some((_, value)) = first_present(headers, names) else {
        return HookEvent::Missing { header: names[0] };
    };
    let name = String::from_utf8_lossy(value.as_bytes()).into_owned();
    match (forge, name.as_str()) {
        (Forge::Gitlab, "Push Hook" | "Tag Push Hook") => HookEvent::Push,
        (Forge::Gitlab, _) => HookEvent::Other(name),
        (_, "push") => HookEvent::Push,
        (_, "ping") => HookEvent::Ping,
        _ => HookEvent::Other(name),
    }
}

/// The headers a forge puts its delivery id in, the first present one deciding.
///
/// GitLab: `Idempotency-Key` stays the same across retries of one event (recent GitLab
/// versions only). Where it is absent, `X-Gitlab-Webhook-UUID` comes next, although it is new on
/// every attempt (`SecureRandom.uuid` per request in gitlab's `web_hook_service.rb`), and
/// `X-Gitlab-Event-UUID` last: gitlab's `recursion_detection/uuid.rb` reuses it from the
/// request that caused the event when that request came from a webhook, so two different
/// pushes can carry the same one. A key that never repeats costs a duplicate run at worst;
/// a key two events share would drop one of them.
fn delivery_headers(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::Gitea => &["X-Gitea-Delivery"],
        Forge::Forgejo => &["X-Forgejo-Delivery", "X-Gitea-Delivery"],
        Forge::Github => &["X-GitHub-Delivery"],
        Forge::Gitlab => &[
            "Idempotency-Key",
            "X-Gitlab-Webhook-UUID",
            "X-Gitlab-Event-UUID",
        ],
    }
}

/// The forge's id of this delivery (the idempotency key), or `None` when it sent none.
/// GitHub's stays the same when a delivery is sent again; see [`delivery_headers`] for
/// GitLab's.
pub fn delivery_id(forge: Forge, headers: &HeaderMap) -> Option<String> {
    let (_, value) = first_present(headers, delivery_headers(forge))?;
    value.to_str().ok().map(str::to_owned)
}

/// The first of `names` present in `headers` with a non-empty value, and its name.
fn first_present<'h>(
    headers: &'h HeaderMap,
    names: &'static [&'static str],
) -> Option<(&'static str, &'h axum::http::HeaderValue)> {
    names.iter().find_map(|name| {
        headers
            .get(*name)
            .filter(|value| !value.is_empty())
            .map(|value| (*name, value))
    })
}

/// Why a hook's signature was not accepted. No message holds the secret or the expected
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The source has no secret: an unsigned hook cannot be told from anyone's request.
    #[error(
        "this source has no webhook secret, so no hook can be verified: set one here and the same on the forge's webhook"
    )]
    NoSecret,
    /// The signature header is absent or empty.
    #[error(
        "the hook has no {header} header: set a secret on the forge's webhook, the same as this source's"
    )]
    Missing { header: &'static str },
    /// The signature header is not of the form the forge writes.
    #[error("the {header} header is not {}", expected_form(header))]
    Malformed { header: &'static str },
    /// The signature is well formed but does not match the body and the secret.
    #[error(
        "the hook's signature does not match: the secret on the forge's webhook is not this source's, or the body was changed on the way"
    )]
    Mismatch,
}

fn expected_form(header: &str) -> &'static str {
    match header {
        "X-Hub-Signature-256" => "\"sha256=\" followed by 64 hex digits",
        _ => "64 hex digits",
    }
}

/// The headers a forge signs in, the first present one deciding.
fn signature_headers(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::Gitea => &["X-Gitea-Signature"],
        Forge::Forgejo => &["X-Forgejo-Signature", "X-Gitea-Signature"],
        Forge::Github => &["X-Hub-Signature-256"],
        Forge::Gitlab => &["X-Gitlab-Token"],
    }
}

/// Checks the raw `body` against `secret` as `forge` signs it. Call it before anything
/// reads the body. Every comparison takes the same time however much of a guess is right.
pub fn verify(
    forge: Forge,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SignatureError> {
    if secret.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let names = signature_headers(forge);
    let (header, value) =
        first_present(headers, names).ok_or(SignatureError::Missing { header: names[0] })?;
    let matches: bool = match forge {
        Forge::Gitlab => {
            // The token is the secret itself. Comparing digests compares equal lengths, so
            // neither the secret's length nor a shared prefix shows in the timing.
            let given = Sha256::digest(value.as_bytes());
            let expected = Sha256::digest(secret);
            given.as_slice().ct_eq(expected.as_slice()).into()
        }
        Forge::Gitea | Forge::Forgejo | Forge::Github => {
            let malformed = SignatureError::Malformed { header };
            let text = value.to_str().map_err(|_| malformed.clone())?;
            let digits = if forge == Forge::Github {
                text.strip_prefix("sha256=").ok_or(malformed.clone())?
            } else {
                text
            };
            let given = from_hex(digits)
                .filter(|bytes| bytes.len() == 32)
                .ok_or(malformed)?;
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
            mac.update(body);
            mac.finalize().into_bytes().as_slice().ct_eq(&given).into()
        }
    };
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// One push of one ref, whichever forge sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The forge that sent it.
    pub forge: Forge,
    /// The repository's full name, `owner/name` (GitLab: `group/subgroup/project`).
    pub repo: String,
    /// The HTTP(S) clone URL, when the forge sent one.
    pub clone_url: Option<String>,
    /// The repository's web page, when the forge sent one.
    pub html_url: Option<String>,
    /// The ref as sent: `refs/heads/main`, `refs/tags/v1`.
    pub git_ref: String,
    /// The branch, for a `refs/heads/*` ref.
    pub branch: Option<String>,
    /// The tag, for a `refs/tags/*` ref.
    pub tag: Option<String>,
    /// The commit the ref pointed at before (all zeros for a new ref).
    pub before: String,
    /// The commit the ref points at now (all zeros for a deleted ref).
    pub after: String,
    /// The ref is new: `before` is all zeros (or GitHub says `created`).
    pub created: bool,
    /// The ref was deleted: `after` is all zeros (or GitHub says `deleted`, or GitLab's
    /// `checkout_sha` is null).
    pub deleted: bool,
    /// GitHub says the push rewrote history; no other forge says so.
    pub forced: bool,
    /// Who wrote the head commit, or who pushed when there is no head commit.
    pub author: Author,
    /// The head commit's message, `""` when there is none.
    pub message: String,
    /// The commits as listed, in the forge's order.
    pub commits: Vec<Commit>,
    /// Every path added, modified or removed by a listed commit, as sent.
    pub changed: BTreeSet<String>,
    /// `commits` (and so `changed`) cannot be trusted to hold every change: ask the forge's
    /// compare API for `before...after`, or, for a new ref (`before` all zeros, nothing to
    /// compare against), treat every path as changed. See [`parse_push`] for when.
    pub truncated: bool,
    /// The forge's page comparing `before` and `after`, when it sent one.
    pub compare_url: Option<String>,
}

/// A person named in a push.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Author {
    /// The display name (for a pusher with none, the account name).
    pub name: String,
    /// As the forge sent it; GitLab may send `[REDACTED]`.
    pub email: Option<String>,
    /// The forge account, when the forge knows it (GitLab's commit authors have none).
    pub username: Option<String>,
}

/// One commit of a push, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The commit's full id.
    pub id: String,
    /// The whole message, `""` when none was sent.
    pub message: String,
    /// The author's name, `""` when none was sent.
    pub author_name: String,
    /// As the forge wrote it (RFC 3339 in practice), not checked.
    pub timestamp: String,
    /// Paths the commit added, as sent.
    pub added: Vec<String>,
    /// Paths the commit modified, as sent.
    pub modified: Vec<String>,
    /// Paths the commit removed, as sent.
    pub removed: Vec<String>,
}

/// Why a push's body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not JSON at all; the text says where it stopped being JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but a field is missing or of the wrong kind: `field` is its path, such as
    /// `repository.full_name` or `commits[2].added[0]`.
    #[error("field {field}: {problem}")]
    Field { field: String, problem: String },
}

/// Reads a push webhook's body as `forge` writes it. Only the fields needed are read; a
/// path that is not a string is refused, every other unexpected field ignored.
///
/// `truncated` is set when the listed commits may miss changes: never for a deletion
/// (nothing is left to deploy); always for a GitHub forced push (commits dropped from
/// history changed files too, and no commit lists them); for a new ref that lists commits
/// (the forge chose what to list them against); and when the forge lists fewer commits
/// than it counted: Gitea/Forgejo `total_commits` above the list's length (or no count at
/// all, with commits), GitLab `total_commits_count` likewise (or, without a count, a full
/// list of 20), GitHub a full list of 2048 commits or a commit with 3000 changed files. A
/// new ref that lists no commits (a tag, or a branch made at an existing commit) is not
/// truncated: it brings nothing the repository did not already hold.
pub fn parse_push(forge: Forge, body: &[u8]) -> Result<Push, PayloadError> {
    match forge {
        Forge::Gitea | Forge::Forgejo => gitea_push(forge, read(body)?),
        Forge::Github => Ok(github_push(read(body)?)),
        Forge::Gitlab => gitlab_push(read(body)?),
    }
}

/// Deserializes `body`, naming the path of whatever does not fit.
fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, PayloadError> {
    // serde reads a struct from an array too, which would name a field `[0]`: a body that is
    // not an object is refused whole (or as not JSON, if it is not).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(field("(the body)", "is not a JSON object")),
            Err(err) => Err(PayloadError::NotJson(err.to_string())),
        };
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        payload_error(&path, err.into_inner())
    })?;
    deserializer
        .end()
        .map_err(|err| PayloadError::NotJson(err.to_string()))?;
    Ok(value)
}

fn payload_error(path: &str, err: serde_json::Error) -> PayloadError {
    if !err.is_data() {
        return PayloadError::NotJson(err.to_string());
    }
    // The position says little once the field is named, and serde_json puts it last.
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    // serde_json quotes a wrong string value whole; a hostile one must not fill the log.
    let problem = crate::notify::cut(text.strip_suffix(&position).unwrap_or(&text), 300);
    let problem = problem.as_str();
    let missing = problem
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match (missing, path) {
        (Some(name), ".") => field(name, "missing"),
        (Some(name), _) => field(&format!("{path}.{name}"), "missing"),
        (None, ".") => field("(the body)", problem),
        (None, _) => field(path, problem),
    }
}

fn field(field: &str, problem: &str) -> PayloadError {
    PayloadError::Field {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

/// The repository as Gitea, Forgejo and GitHub describe it.
#[derive(Deserialize)]
struct RepositoryPayload {
    full_name: String,
    clone_url: Option<String>,
    html_url: Option<String>,
}

/// A commit as all four forges list it (GitLab's author has no `username`).
#[derive(Deserialize, Clone)]
struct CommitPayload {
    id: String,
    message: Option<String>,
    author: Option<PersonPayload>,
    timestamp: Option<String>,
    // Go writes an empty list as null, so each list may be null.
    added: Option<Vec<String>>,
    modified: Option<Vec<String>>,
    removed: Option<Vec<String>>,
}

impl CommitPayload {
    fn changed_count(&self) -> usize {
        [&self.added, &self.modified, &self.removed]
            .into_iter()
            .map(|list| list.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

#[derive(Deserialize, Clone)]
struct PersonPayload {
    name: Option<String>,
    email: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct GiteaPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    compare_url: Option<String>,
    commits: Option<Vec<CommitPayload>>,
    total_commits: Option<u64>,
    head_commit: Option<CommitPayload>,
    repository: RepositoryPayload,
    pusher: Option<GiteaUser>,
}

/// A Gitea or Forgejo account (`pusher`).
#[derive(Deserialize)]
struct GiteaUser {
    login: Option<String>,
    full_name: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct GithubPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    created: Option<bool>,
    deleted: Option<bool>,
    forced: Option<bool>,
    compare: Option<String>,
    commits: Option<Vec<CommitPayload>>,
    head_commit: Option<CommitPayload>,
    repository: RepositoryPayload,
    /// `{name, email}`, where `name` is the account's login.
    pusher: Option<PersonPayload>,
    sender: Option<GithubSender>,
}

#[derive(Deserialize)]
struct GithubSender {
    login: Option<String>,
}

#[derive(Deserialize)]
struct GitlabPayload {
    object_kind: Option<String>,
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    /// Absent is not null: only an explicit null says the ref is gone.
    #[serde(default, deserialize_with = "present")]
    checkout_sha: Option<Option<String>>,
    user_name: Option<String>,
    user_username: Option<String>,
    user_email: Option<String>,
    project: GitlabProject,
    commits: Option<Vec<CommitPayload>>,
    total_commits_count: Option<u64>,
}

#[derive(Deserialize)]
struct GitlabProject {
    path_with_namespace: String,
    git_http_url: Option<String>,
    web_url: Option<String>,
}

/// For a field that may be absent or null: `Some(None)` when it is there and null.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// GitLab's newest-20 limit, for a payload without `total_commits_count`.
const GITLAB_LISTED_COMMITS: usize = 20;
/// GitHub's limits on a push webhook's lists.
const GITHUB_LISTED_COMMITS: usize = 2048;
const GITHUB_LISTED_FILES_PER_COMMIT: usize = 3000;

fn gitea_push(forge: Forge, payload: GiteaPayload) -> Result<Push, PayloadError> {
    let commits = payload.commits.unwrap_or_default();
    let listed_short = match payload.total_commits {
        Some(total) => total > commits.len() as u64,
        // Without the count nothing says the list is whole.
        None => !commits.is_empty(),
    };
    let pusher = payload.pusher.map(|user| {
        let login = non_empty(user.login);
        Author {
            name: non_empty(user.full_name)
                .or_else(|| login.clone())
                .unwrap_or_default(),
            email: non_empty(user.email),
            username: login,
        }
    });
    Ok(assemble(Parts {
        forge,
        repo: payload.repository.full_name,
        clone_url: payload.repository.clone_url,
        html_url: payload.repository.html_url,
        git_ref: payload.git_ref,
        before: payload.before,
        after: payload.after,
        said_created: false,
        said_deleted: false,
        forced: false,
        head: payload.head_commit,
        commits,
        listed_short,
        pusher,
        compare_url: payload.compare_url,
    }))
}

fn github_push(payload: GithubPayload) -> Push {
    let commits = payload.commits.unwrap_or_default();
    let listed_short = commits.len() >= GITHUB_LISTED_COMMITS
        || commits
            .iter()
            .any(|c| c.changed_count() >= GITHUB_LISTED_FILES_PER_COMMIT);
    let sender = payload.sender.and_then(|s| non_empty(s.login));
    let pusher = payload.pusher.map(|p| {
        let name = non_empty(p.name);
        Author {
            name: name.clone().unwrap_or_default(),
            email: non_empty(p.email),
            username: sender.or(name),
        }
    });
    assemble(Parts {
        forge: Forge::Github,
        repo: payload.repository.full_name,
        clone_url: payload.repository.clone_url,
        html_url: payload.repository.html_url,
        git_ref: payload.git_ref,
        before: payload.before,
        after: payload.after,
        said_created: payload.created == Some(true),
        said_deleted: payload.deleted == Some(true),
        forced: payload.forced == Some(true),
        head: payload.head_commit,
        commits,
        listed_short,
        pusher,
        compare_url: payload.compare,
    })
}

fn gitlab_push(payload: GitlabPayload) -> Result<Push, PayloadError> {
    if let Some(kind) = &payload.object_kind
        && kind != "push"
        && kind != "tag_push"
    {
        return Err(field(
            "object_kind",
            &format!(
                "is {:?}, not push or tag_push",
                crate::notify::cut(kind, 100)
            ),
        ));
    }
    let commits = payload.commits.unwrap_or_default();
    let listed_short = match payload.total_commits_count {
        Some(total) => total > commits.len() as u64,
        None => commits.len() >= GITLAB_LISTED_COMMITS,
    };
    let user_username = non_empty(payload.user_username);
    let pusher = Author {
        name: non_empty(payload.user_name)
            .or_else(|| user_username.clone())
            .unwrap_or_default(),
        email: non_empty(payload.user_email),
        username: user_username,
    };
    Ok(assemble(Parts {
        forge: Forge::Gitlab,
        repo: payload.project.path_with_namespace,
        clone_url: payload.project.git_http_url,
        html_url: payload.project.web_url,
        git_ref: payload.git_ref,
        before: payload.before,
        after: payload.after,
        said_created: false,
        said_deleted: matches!(payload.checkout_sha, Some(None)),
        forced: false,
        // GitLab names no head commit: the listed commit the ref now points at is it.
        head: None,
        commits,
        listed_short,
        pusher: Some(pusher),
        compare_url: None,
    }))
}

/// What every forge's payload comes down to, before the shared rules apply.
struct Parts {
    forge: Forge,
    repo: String,
    clone_url: Option<String>,
    html_url: Option<String>,
    git_ref: String,
    before: String,
    after: String,
    /// GitHub's own `created` and `deleted`; the others say it only through zeros.
    said_created: bool,
    said_deleted: bool,
    forced: bool,
    head: Option<CommitPayload>,
    commits: Vec<CommitPayload>,
    /// The forge listed fewer commits than the push holds, by its own count or limit.
    listed_short: bool,
    pusher: Option<Author>,
    compare_url: Option<String>,
}

fn assemble(parts: Parts) -> Push {
    let created = parts.said_created || is_zero_id(&parts.before);
    let deleted = parts.said_deleted || is_zero_id(&parts.after);
    let truncated =
        !deleted && (parts.forced || parts.listed_short || (created && !parts.commits.is_empty()));
    let head = parts
        .head
        .or_else(|| parts.commits.iter().find(|c| c.id == parts.after).cloned());
    let head_author = head
        .as_ref()
        .and_then(|c| c.author.clone())
        .and_then(|person| {
            Some(Author {
                name: non_empty(person.name)?,
                email: non_empty(person.email),
                username: non_empty(person.username),
            })
        });
    let author = head_author.or(parts.pusher).unwrap_or_default();
    let message = head.and_then(|c| c.message).unwrap_or_default();
    let commits: Vec<Commit> = parts
        .commits
        .into_iter()
        .map(|c| Commit {
            id: c.id,
            message: c.message.unwrap_or_default(),
            author_name: c.author.and_then(|a| a.name).unwrap_or_default(),
            timestamp: c.timestamp.unwrap_or_default(),
            added: c.added.unwrap_or_default(),
            modified: c.modified.unwrap_or_default(),
            removed: c.removed.unwrap_or_default(),
        })
        .collect();
    let changed = commits
        .iter()
        .flat_map(|c| c.added.iter().chain(&c.modified).chain(&c.removed))
        .cloned()
        .collect();
    Push {
        forge: parts.forge,
        repo: parts.repo,
        clone_url: non_empty(parts.clone_url),
        html_url: non_empty(parts.html_url),
        branch: parts.git_ref.strip_prefix("refs/heads/").map(str::to_owned),
        tag: parts.git_ref.strip_prefix("refs/tags/").map(str::to_owned),
        git_ref: parts.git_ref,
        before: parts.before,
        after: parts.after,
        created,
        deleted,
        forced: parts.forced,
        author,
        message,
        commits,
        changed,
        truncated,
        compare_url: non_empty(parts.compare_url),
    }
}

/// A commit id of zeros only: git's "no commit" (40 for SHA-1, 64 for SHA-256).
fn is_zero_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b == b'0')
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"correct horse battery staple";

    /// A forge, the headers a hook carries, and what is expected of them.
    type Case<T> = (Forge, &'static [(&'static str, &'static str)], T);

    fn fixture(forge: Forge, name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/forges/{}/{name}",
            env!("CARGO_MANIFEST_DIR"),
            forge.as_str()
        );
        std::fs::read(&path).unwrap_or_else(|err| panic!("read {path}: {err}"))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// The signature computed here the plain way, independent of `verify`'s code.
    fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        crate::secret::hex(&mac.finalize().into_bytes())
    }

    fn parse(forge: Forge, name: &str) -> Push {
        parse_push(forge, &fixture(forge, name))
            .unwrap_or_else(|err| panic!("{forge} {name}: {err}"))
    }

    /// A fixture changed through its JSON, for the cases no fixture holds.
    fn parse_edited(forge: Forge, name: &str, edit: impl FnOnce(&mut Value)) -> Push {
        let mut value: Value = serde_json::from_slice(&fixture(forge, name)).unwrap();
        edit(&mut value);
        parse_push(forge, value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn forges_have_names_both_ways() {
        for forge in Forge::ALL {
            assert_eq!(forge.as_str().parse::<Forge>(), Ok(forge));
            let json = serde_json::to_string(&forge).unwrap();
            assert_eq!(json, format!("\"{}\"", forge.as_str()));
        }
        let err = "GitHub".parse::<Forge>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown forge \"GitHub\": expected one of gitea, forgejo, github, gitlab"
        );
        assert_eq!(Forge::Github.to_string(), "GitHub");
    }

    #[test]
    fn a_known_hmac_vector_is_accepted_as_gitea_writes_it() {
        // HMAC-SHA256 of the classic pangram under the key "key", as published widely.
        let body = b"The quick brown fox jumps over the lazy dog";
        let sig = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        let h = headers(&[("X-Gitea-Signature", sig)]);
        assert_eq!(verify(Forge::Gitea, b"key", &h, body), Ok(()));
        assert_eq!(
            verify(Forge::Gitea, b"kez", &h, body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn each_forges_own_signature_is_accepted() {
        for forge in Forge::ALL {
            let body = fixture(forge, "push.json");
            let sig = hmac_hex(SECRET, &body);
            let h = match forge {
                Forge::Gitea => headers(&[("X-Gitea-Signature", &sig)]),
                Forge::Forgejo => {
                    headers(&[("X-Forgejo-Signature", &sig), ("X-Gitea-Signature", &sig)])
                }
                Forge::Github => headers(&[
                    ("X-Hub-Signature-256", &format!("sha256={sig}")),
                    // The SHA-1 header is never read, whatever it holds.
                    ("X-Hub-Signature", "sha1=0000"),
                ]),
                Forge::Gitlab => {
                    headers(&[("X-Gitlab-Token", std::str::from_utf8(SECRET).unwrap())])
                }
            };
            assert_eq!(verify(forge, SECRET, &h, &body), Ok(()), "{forge}");
        }
    }

    #[test]
    fn forgejo_reads_its_own_header_first_then_giteas() {
        let body = b"{}";
        let good = hmac_hex(SECRET, body);
        let bad = hmac_hex(b"another secret", body);
        let only_gitea = headers(&[("X-Gitea-Signature", &good)]);
        assert_eq!(verify(Forge::Forgejo, SECRET, &only_gitea, body), Ok(()));
        // The first present header decides: a good X-Gitea-Signature cannot rescue a bad
        // X-Forgejo-Signature.
        let both = headers(&[("X-Forgejo-Signature", &bad), ("X-Gitea-Signature", &good)]);
        assert_eq!(
            verify(Forge::Forgejo, SECRET, &both, body),
            Err(SignatureError::Mismatch)
        );
        // Gitea never reads Forgejo's header.
        let only_forgejo = headers(&[("X-Forgejo-Signature", &good)]);
        assert_eq!(
            verify(Forge::Gitea, SECRET, &only_forgejo, body),
            Err(SignatureError::Missing {
                header: "X-Gitea-Signature"
            })
        );
    }

    #[test]
    fn a_wrong_signature_or_another_bodys_is_refused() {
        let body = fixture(Forge::Github, "push.json");
        let other_body = fixture(Forge::Github, "tag.json");
        for forge in [Forge::Gitea, Forge::Forgejo, Forge::Github] {
            let header = signature_headers(forge)[0];
            let prefix = if forge == Forge::Github {
                "sha256="
            } else {
                ""
            };
            let wrong_secret = format!("{prefix}{}", hmac_hex(b"not the secret", &body));
            let other = format!("{prefix}{}", hmac_hex(SECRET, &other_body));
            for sig in [wrong_secret, other] {
                let h = headers(&[(header, &sig)]);
                assert_eq!(
                    verify(forge, SECRET, &h, &body),
                    Err(SignatureError::Mismatch),
                    "{forge} {sig}"
                );
            }
            // One byte of the body changed.
            let good = headers(&[(header, &format!("{prefix}{}", hmac_hex(SECRET, &body)))]);
            let mut changed = body.clone();
            changed[10] ^= 1;
            assert_eq!(
                verify(forge, SECRET, &good, &changed),
                Err(SignatureError::Mismatch)
            );
        }
    }

    #[test]
    fn a_missing_or_empty_signature_header_names_the_header() {
        let cases = [
            (Forge::Gitea, "X-Gitea-Signature"),
            (Forge::Forgejo, "X-Forgejo-Signature"),
            (Forge::Github, "X-Hub-Signature-256"),
            (Forge::Gitlab, "X-Gitlab-Token"),
        ];
        for (forge, header) in cases {
            let missing = SignatureError::Missing { header };
            assert_eq!(
                verify(forge, SECRET, &HeaderMap::new(), b"{}"),
                Err(missing.clone())
            );
            // Gitea and Forgejo send the header empty when the webhook has no secret.
            let empty = headers(&[(header, "")]);
            assert_eq!(verify(forge, SECRET, &empty, b"{}"), Err(missing.clone()));
            assert!(missing.to_string().contains(header), "{missing}");
        }
        // GitHub's SHA-1 header is not a stand-in.
        let sha1_only = headers(&[("X-Hub-Signature", "sha1=abcd")]);
        assert_eq!(
            verify(Forge::Github, SECRET, &sha1_only, b"{}"),
            Err(SignatureError::Missing {
                header: "X-Hub-Signature-256"
            })
        );
    }

    #[test]
    fn a_malformed_signature_is_refused_as_malformed() {
        let body = b"{}";
        let sig = hmac_hex(SECRET, body);
        let github = "X-Hub-Signature-256";
        for value in [
            sig.clone(),                      // no prefix
            format!("sha1={sig}"),            // another algorithm's prefix
            format!("sha256={}", &sig[..62]), // too short
            format!("sha256={}zz", &sig[..62]),
        ] {
            let h = headers(&[(github, &value)]);
            assert_eq!(
                verify(Forge::Github, SECRET, &h, body),
                Err(SignatureError::Malformed { header: github }),
                "{value}"
            );
        }
        let gitea = "X-Gitea-Signature";
        for value in [
            format!("sha256={sig}"),
            "not hex at all".to_owned(),
            format!("{sig}00"),
        ] {
            let h = headers(&[(gitea, &value)]);
            assert_eq!(
                verify(Forge::Gitea, SECRET, &h, body),
                Err(SignatureError::Malformed { header: gitea }),
                "{value}"
            );
        }
        let err = SignatureError::Malformed { header: github };
        assert_eq!(
            err.to_string(),
            "the X-Hub-Signature-256 header is not \"sha256=\" followed by 64 hex digits"
        );
        // Upper-case hex is the same bytes.
        let upper = headers(&[(gitea, &sig.to_uppercase())]);
        assert_eq!(verify(Forge::Gitea, SECRET, &upper, body), Ok(()));
    }

    #[test]
    fn a_gitlab_token_must_equal_the_secret() {
        let body = b"{}";
        let secret = std::str::from_utf8(SECRET).unwrap();
        let with = |token: &str| headers(&[("X-Gitlab-Token", token)]);
        assert_eq!(verify(Forge::Gitlab, SECRET, &with(secret), body), Ok(()));
        for token in [
            "correct horse battery stapl",
            "correct horse battery staple ",
            "Correct horse battery staple",
            "x",
        ] {
            assert_eq!(
                verify(Forge::Gitlab, SECRET, &with(token), body),
                Err(SignatureError::Mismatch),
                "{token:?}"
            );
        }
        // An HMAC of the body is not the token.
        let hmac = hmac_hex(SECRET, body);
        assert_eq!(
            verify(Forge::Gitlab, SECRET, &with(&hmac), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn no_secret_verifies_nothing_and_no_message_shows_the_secret() {
        let body = b"{}";
        let h = headers(&[("X-Gitea-Signature", &hmac_hex(b"", body))]);
        assert_eq!(
            verify(Forge::Gitea, b"", &h, body),
            Err(SignatureError::NoSecret)
        );
        let gl = headers(&[("X-Gitlab-Token", "")]);
        assert_eq!(
            verify(Forge::Gitlab, b"", &gl, body),
            Err(SignatureError::NoSecret)
        );

        let expected = hmac_hex(SECRET, body);
        let wrong = headers(&[("X-Gitea-Signature", &hmac_hex(b"other", body))]);
        let err = verify(Forge::Gitea, SECRET, &wrong, body).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains(&expected), "{text}");
        assert!(!text.contains("correct horse"), "{text}");
    }

    #[test]
    fn events_are_read_from_each_forges_header() {
        let cases: [Case<HookEvent>; 12] = [
            (
                Forge::Github,
                &[("X-GitHub-Event", "push")],
                HookEvent::Push,
            ),
            (
                Forge::Github,
                &[("X-GitHub-Event", "ping")],
                HookEvent::Ping,
            ),
            (
                Forge::Github,
                &[("X-GitHub-Event", "pull_request")],
                HookEvent::Other("pull_request".into()),
            ),
            (Forge::Gitea, &[("X-Gitea-Event", "push")], HookEvent::Push),
            (
                Forge::Gitea,
                &[("X-Gitea-Event", "delete")],
                HookEvent::Other("delete".into()),
            ),
            (
                Forge::Forgejo,
                &[("X-Forgejo-Event", "push"), ("X-Gitea-Event", "push")],
                HookEvent::Push,
            ),
            (
                Forge::Forgejo,
                &[("X-Gitea-Event", "push")],
                HookEvent::Push,
            ),
            (
                Forge::Gitlab,
                &[("X-Gitlab-Event", "Push Hook")],
                HookEvent::Push,
            ),
            (
                Forge::Gitlab,
                &[("X-Gitlab-Event", "Tag Push Hook")],
                HookEvent::Push,
            ),
            (
                Forge::Gitlab,
                &[("X-Gitlab-Event", "Merge Request Hook")],
                HookEvent::Other("Merge Request Hook".into()),
            ),
            // GitLab's names are its own: a bare "push" is not one of them.
            (
                Forge::Gitlab,
                &[("X-Gitlab-Event", "push")],
                HookEvent::Other("push".into()),
            ),
            // Another forge's header is not read.
            (
                Forge::Gitea,
                &[("X-GitHub-Event", "push")],
                HookEvent::Missing {
                    header: "X-Gitea-Event",
                },
            ),
        ];
        for (forge, pairs, expected) in cases {
            assert_eq!(event(forge, &headers(pairs)), expected, "{forge} {pairs:?}");
        }
        for forge in Forge::ALL {
            let missing = event(forge, &HeaderMap::new());
            assert_eq!(
                missing,
                HookEvent::Missing {
                    header: event_headers(forge)[0]
                }
            );
            assert!(missing.to_string().starts_with("no X-"), "{missing}");
        }
    }

    #[test]
    fn delivery_ids_come_from_each_forges_header() {
        const ID: &str = "0b1c9a64-6f4e-4c1e-9c55-3f0f2f8a4d11";
        const OTHER: &str = "7d3c1f0e-2222-4c1e-9c55-000000000000";
        let cases: [Case<Option<&str>>; 9] = [
            (Forge::Gitea, &[("X-Gitea-Delivery", ID)], Some(ID)),
            (
                Forge::Forgejo,
                &[("X-Forgejo-Delivery", ID), ("X-Gitea-Delivery", OTHER)],
                Some(ID),
            ),
            (Forge::Forgejo, &[("X-Gitea-Delivery", ID)], Some(ID)),
            (Forge::Github, &[("X-GitHub-Delivery", ID)], Some(ID)),
            (Forge::Github, &[("X-Gitea-Delivery", ID)], None),
            (
                Forge::Gitlab,
                &[
                    ("Idempotency-Key", ID),
                    ("X-Gitlab-Webhook-UUID", OTHER),
                    ("X-Gitlab-Event-UUID", OTHER),
                ],
                Some(ID),
            ),
            (
                Forge::Gitlab,
                &[
                    ("X-Gitlab-Webhook-UUID", ID),
                    ("X-Gitlab-Event-UUID", OTHER),
                ],
                Some(ID),
            ),
            (Forge::Gitlab, &[("X-Gitlab-Event-UUID", ID)], Some(ID)),
            (Forge::Gitlab, &[("Idempotency-Key", "")], None),
        ];
        for (forge, pairs, expected) in cases {
            assert_eq!(
                delivery_id(forge, &headers(pairs)).as_deref(),
                expected,
                "{forge} {pairs:?}"
            );
        }
    }

    #[test]
    fn a_push_lists_its_commits_and_the_union_of_their_paths() {
        let expected_changed = [
            "README.md",
            "hosts/new.yml",
            "old/legacy.conf",
            "roles/db/main.yml",
            "roles/web/tasks.yml",
        ];
        for forge in Forge::ALL {
            let push = parse(forge, "push.json");
            assert_eq!(push.forge, forge);
            assert_eq!(
                push.repo,
                if forge == Forge::Gitlab {
                    "homelab/infra/site"
                } else {
                    "homelab/infra"
                }
            );
            assert_eq!(push.git_ref, "refs/heads/main");
            assert_eq!(push.branch.as_deref(), Some("main"), "{forge}");
            assert_eq!(push.tag, None);
            assert_eq!(push.before, "9f2c1a7e3b5d4c6a8e0f1b2d3c4e5f6a7b8c9d0e");
            assert_eq!(push.after, "c3d4e5f60718293a4b5c6d7e8f90123456789abc");
            assert!(!push.created && !push.deleted && !push.forced, "{forge}");
            assert!(!push.truncated, "{forge}");
            assert_eq!(push.commits.len(), 3, "{forge}");
            assert_eq!(
                push.changed.iter().map(String::as_str).collect::<Vec<_>>(),
                expected_changed,
                "{forge}"
            );
            // The removal is kept apart from the additions and modifications.
            assert_eq!(push.commits[1].removed, ["old/legacy.conf"], "{forge}");
            assert_eq!(push.commits[0].author_name, "Ada Lovelace", "{forge}");
            assert_eq!(
                push.commits[0].timestamp, "2026-11-20T09:14:03+01:00",
                "{forge}"
            );
            // The head commit's author and message.
            assert_eq!(push.author.name, "Grace Hopper", "{forge}");
            assert_eq!(
                push.author.email.as_deref(),
                Some("grace@example.net"),
                "{forge}"
            );
            assert_eq!(push.message, "db: add the database role\n", "{forge}");
            assert!(
                push.clone_url.as_deref().unwrap().ends_with(".git"),
                "{forge}"
            );
            assert!(push.html_url.is_some(), "{forge}");
        }
        assert_eq!(
            parse(Forge::Github, "push.json").compare_url.as_deref(),
            Some("https://github.com/homelab/infra/compare/9f2c1a7e3b5d...c3d4e5f60718")
        );
        assert_eq!(parse(Forge::Gitlab, "push.json").compare_url, None);
        // Only Gitea-style and GitHub commit authors carry a username.
        assert_eq!(
            parse(Forge::Gitea, "push.json").author.username.as_deref(),
            Some("grace")
        );
        assert_eq!(parse(Forge::Gitlab, "push.json").author.username, None);
    }

    #[test]
    fn a_tag_push_names_the_tag_and_lists_nothing_to_compare() {
        for forge in Forge::ALL {
            let push = parse(forge, "tag.json");
            assert_eq!(push.git_ref, "refs/tags/v1.2.0", "{forge}");
            assert_eq!(push.tag.as_deref(), Some("v1.2.0"), "{forge}");
            assert_eq!(push.branch, None, "{forge}");
            assert!(push.created && !push.deleted, "{forge}");
            assert!(
                push.commits.is_empty() && push.changed.is_empty(),
                "{forge}"
            );
            assert!(!push.truncated, "{forge}: a new tag brings no new commits");
            assert_eq!(push.after, "c3d4e5f60718293a4b5c6d7e8f90123456789abc");
            // No head commit in the list: the pusher stands in.
            assert!(!push.author.name.is_empty(), "{forge}");
        }
    }

    #[test]
    fn a_branch_deletion_is_deleted_and_never_truncated() {
        for forge in Forge::ALL {
            let push = parse(forge, "delete.json");
            assert_eq!(push.branch.as_deref(), Some("feature/old-dns"), "{forge}");
            assert!(push.deleted && !push.created, "{forge}");
            assert!(!push.truncated, "{forge}");
            assert!(push.changed.is_empty(), "{forge}");
            assert_eq!(push.message, "", "{forge}");
            // The pusher, since there is no head commit.
            assert_eq!(push.author.username.as_deref(), Some("grace"), "{forge}");
        }
        // GitHub says so in words too, and GitLab by a null checkout_sha: either alone is
        // enough.
        let github = parse_edited(Forge::Github, "delete.json", |v| {
            v["after"] = json!("c3d4e5f60718293a4b5c6d7e8f90123456789abc");
        });
        assert!(github.deleted);
        let gitlab = parse_edited(Forge::Gitlab, "delete.json", |v| {
            v["after"] = json!("c3d4e5f60718293a4b5c6d7e8f90123456789abc");
        });
        assert!(gitlab.deleted);
        // An absent checkout_sha is not a deletion.
        let gitlab = parse_edited(Forge::Gitlab, "push.json", |v| {
            v.as_object_mut().unwrap().remove("checkout_sha");
        });
        assert!(!gitlab.deleted);
    }

    #[test]
    fn truncation_is_detected_by_each_forges_rule() {
        for forge in Forge::ALL {
            let push = parse(forge, "truncated.json");
            assert!(push.truncated, "{forge}");
            assert!(!push.commits.is_empty(), "{forge}");
        }
        let gitea = parse(Forge::Gitea, "truncated.json");
        assert_eq!(gitea.commits.len(), 5);
        let github = parse(Forge::Github, "truncated.json");
        assert!(github.forced, "GitHub's truncated fixture is a forced push");
        let gitlab = parse(Forge::Gitlab, "truncated.json");
        assert_eq!(gitlab.commits.len(), 20);
        // The head commit is found in GitLab's list by id.
        assert_eq!(gitlab.message, "hosts: step 20\n");

        // Gitea without a count cannot vouch for its list; with a count that matches, it can.
        let no_count = parse_edited(Forge::Gitea, "push.json", |v| {
            v.as_object_mut().unwrap().remove("total_commits");
        });
        assert!(no_count.truncated);
        // GitLab without a count: a full list of 20 may be cut, a shorter one is whole.
        let gitlab_full = parse_edited(Forge::Gitlab, "truncated.json", |v| {
            v.as_object_mut().unwrap().remove("total_commits_count");
        });
        assert!(gitlab_full.truncated);
        let gitlab_short = parse_edited(Forge::Gitlab, "push.json", |v| {
            v.as_object_mut().unwrap().remove("total_commits_count");
        });
        assert!(!gitlab_short.truncated);

        // A new branch that lists commits is truncated on every forge.
        for forge in Forge::ALL {
            let created = parse_edited(forge, "push.json", |v| {
                v["before"] = json!("0000000000000000000000000000000000000000");
                if forge == Forge::Github {
                    v["created"] = json!(true);
                }
            });
            assert!(created.created && created.truncated, "{forge}");
        }

        // GitHub: a full list of 2048 commits, or a commit at the 3000-file limit.
        let many = parse_edited(Forge::Github, "push.json", |v| {
            let one = v["commits"][0].clone();
            v["commits"] = Value::Array(vec![one; GITHUB_LISTED_COMMITS]);
        });
        assert!(many.truncated);
        let just_under = parse_edited(Forge::Github, "push.json", |v| {
            let one = v["commits"][0].clone();
            v["commits"] = Value::Array(vec![one; GITHUB_LISTED_COMMITS - 1]);
        });
        assert!(!just_under.truncated);
        let wide = parse_edited(Forge::Github, "push.json", |v| {
            let paths: Vec<Value> = (0..GITHUB_LISTED_FILES_PER_COMMIT)
                .map(|i| json!(format!("f/{i}")))
                .collect();
            v["commits"][2]["added"] = Value::Array(paths);
        });
        assert!(wide.truncated);
    }

    #[test]
    fn malformed_json_says_where() {
        for forge in Forge::ALL {
            let err = parse_push(forge, b"{\"ref\": ").unwrap_err();
            let PayloadError::NotJson(text) = &err else {
                panic!("{forge}: {err:?}");
            };
            assert!(text.contains("line 1 column"), "{text}");
            assert!(err.to_string().starts_with("not JSON: "), "{err}");
            assert!(matches!(
                parse_push(forge, b"").unwrap_err(),
                PayloadError::NotJson(_)
            ));
            let mut trailing = fixture(forge, "push.json");
            trailing.extend_from_slice(b" trailing");
            assert!(matches!(
                parse_push(forge, &trailing).unwrap_err(),
                PayloadError::NotJson(_)
            ));
            // JSON, but not an object.
            for body in [&b"[1, 2]"[..], b"null", b" \"push\""] {
                assert_eq!(
                    parse_push(forge, body).unwrap_err().to_string(),
                    "field (the body): is not a JSON object"
                );
            }
        }
    }

    #[test]
    fn a_missing_or_mistyped_field_is_named_by_its_path() {
        let edited = |forge: Forge, name: &str, edit: &dyn Fn(&mut Value)| {
            let mut value: Value = serde_json::from_slice(&fixture(forge, name)).unwrap();
            edit(&mut value);
            parse_push(forge, value.to_string().as_bytes()).unwrap_err()
        };
        let err = edited(Forge::Gitea, "push.json", &|v| {
            v["repository"].as_object_mut().unwrap().remove("full_name");
        });
        assert_eq!(err.to_string(), "field repository.full_name: missing");
        let err = edited(Forge::Github, "push.json", &|v| {
            v.as_object_mut().unwrap().remove("after");
        });
        assert_eq!(err.to_string(), "field after: missing");
        let err = edited(Forge::Gitlab, "push.json", &|v| {
            v["project"]
                .as_object_mut()
                .unwrap()
                .remove("path_with_namespace");
        });
        assert_eq!(
            err.to_string(),
            "field project.path_with_namespace: missing"
        );
        let err = edited(Forge::Forgejo, "push.json", &|v| {
            v["commits"][2]["added"] = json!(["ok.txt", 7]);
        });
        assert_eq!(
            err,
            PayloadError::Field {
                field: "commits[2].added[1]".into(),
                problem: "invalid type: integer `7`, expected a string".into()
            }
        );
        let err = edited(Forge::Github, "push.json", &|v| {
            v["head_commit"]["removed"] = json!([{"path": "x"}]);
        });
        assert!(
            err.to_string()
                .starts_with("field head_commit.removed[0]: invalid type: map"),
            "{err}"
        );
        let err = edited(Forge::Gitlab, "push.json", &|v| {
            v["object_kind"] = json!("merge_request");
        });
        assert_eq!(
            err.to_string(),
            "field object_kind: is \"merge_request\", not push or tag_push"
        );
    }

    #[test]
    fn hostile_bodies_are_refused_without_a_panic() {
        let bodies: [&[u8]; 8] = [
            b"\xff\xfe\x00",
            b"null",
            b"{\"ref\": null}",
            b"{\"ref\": \"refs/heads/x\", \"before\": 1}",
            b"\"a string\"",
            b"{\"ref\":\"\",\"before\":\"\",\"after\":\"\",\"repository\":{\"full_name\":\"\"},\"project\":{\"path_with_namespace\":\"\"},\"commits\":[{}]}",
            &[b'['; 4096],
            b"{\"ref\":\"r\",\"before\":\"\",\"after\":\"\",\"repository\":{\"full_name\":\"a/b\"},\"project\":{\"path_with_namespace\":\"a/b\"},\"commits\":null,\"head_commit\":null}",
        ];
        // Deep nesting inside an object, where the unread fields are skipped.
        let mut deep = b"{\"x\": ".to_vec();
        deep.extend_from_slice(&[b'['; 100_000]);
        for forge in Forge::ALL {
            for body in bodies.iter().copied().chain([deep.as_slice()]) {
                // Either answer is fine; a panic (or a blown stack) is not.
                let _ = parse_push(forge, body);
            }
            assert!(matches!(
                parse_push(forge, &deep),
                Err(PayloadError::NotJson(_))
            ));
        }
        // The last body is a valid, if empty, push on every forge: a ref that is neither a
        // branch nor a tag, nothing listed.
        for forge in Forge::ALL {
            let push = parse_push(forge, bodies[7]).unwrap();
            assert_eq!((push.branch, push.tag), (None, None));
            assert!(push.changed.is_empty() && !push.created && !push.deleted);
        }
    }
}
