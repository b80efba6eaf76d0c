//! A deployment task's payload, read and checked before anything runs: every field has its
//! type and its pattern, paths are relative and stay inside the repository, and whatever a
//! program receives becomes exactly one argument. What can only be checked against the files
//! (that a path exists, and stays inside the checkout through symbolic links) is
//! [`RelPath::resolve`], called once the commit is checked out.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Tool;

/// Longest path a payload may name, in bytes.
const MAX_PATH: usize = 1024;
/// Longest `limit` and `tags`, in bytes; a homelab's host patterns are far shorter.
const MAX_PATTERN: usize = 1024;

/// Ansible host patterns as an operator writes them: names, groups, `*` wildcards, `,` and
/// `:` separators, `!` exclusions, `&` intersections and `[0:3]` ranges. Left out on purpose:
/// `~` (a regular expression), `@` (reads a file of host names) and `/`, which name things
/// outside the inventory, and spaces, quotes and `;`, which no pattern needs. The first
/// character may not be `-`, which `ansible-playbook` would read as an option.
static LIMIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_.:,*!&\[\]][A-Za-z0-9_.:,*!&\[\]-]*$").unwrap());
/// One tag: a name of letters, digits, `_`, `.`, `:` and `-`, not beginning with `-`.
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$").unwrap());
/// A Terraform variable name (Terraform itself also allows `-`; no variable of ours needs it).
static VAR_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").unwrap());
static SHA: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[0-9a-f]{40}$").unwrap());

/// Where the work comes from: the repository, its clone URL and the pushed commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) repo: String,
    pub(super) clone_url: String,
    pub(super) sha: String,
}

/// A checked deployment task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) source: Source,
    pub(super) job: Job,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Job {
    Ansible(AnsibleJob),
    Terraform(TerraformJob),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AnsibleJob {
    pub(super) playbook: RelPath,
    pub(super) inventory: Option<RelPath>,
    pub(super) limit: Option<String>,
    /// The tags joined with `,`.
    pub(super) tags: Option<String>,
    /// The extra variables as one JSON object.
    pub(super) extra_vars: Option<String>,
    pub(super) check: bool,
    /// The working directory (where Ansible finds `ansible.cfg`); the repository's root when
    /// empty.
    pub(super) dir: RelPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Mode {
    Plan,
    Apply,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TerraformJob {
    pub(super) dir: RelPath,
    pub(super) mode: Mode,
    /// `(name, value)`, sorted by name.
    pub(super) vars: Vec<(String, String)>,
}

/// A path relative to the repository's root, without `..`, with `.` components dropped: it
/// cannot name anything outside the checkout by its spelling (symbolic links are
/// [`RelPath::resolve`]'s to follow). Empty names the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RelPath(String);

/// What a path must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    File,
    Dir,
    /// A file or a directory (an Ansible inventory may be either).
    Either,
}

// The payloads as they arrive. Unknown fields are refused: a misspelt `limit` would otherwise
// run the playbook on every host.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnsiblePayload {
    repo: String,
    clone_url: String,
    sha: String,
    playbook: String,
    #[serde(default)]
    inventory: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    tags: Option<Tags>,
    #[serde(default)]
    extra_vars: Option<Map<String, Value>>,
    #[serde(default)]
    check: Option<bool>,
    #[serde(default)]
    dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Tags {
    List(Vec<String>),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerraformPayload {
    repo: String,
    clone_url: String,
    sha: String,
    dir: String,
    mode: Mode,
    #[serde(default)]
    vars: Option<Map<String, Value>>,
}

/// Reads and checks a task's payload; an error names the field at fault.
pub(super) fn parse(tool: Tool, payload: &Value) -> Result<Request, String> {
    match tool {
        Tool::Ansible => {
            let p: AnsiblePayload = typed(payload)?;
            let source = source(p.repo, p.clone_url, p.sha)?;
            let job = AnsibleJob {
                playbook: RelPath::parse("playbook", &p.playbook, Want::File)?,
                inventory: p
                    .inventory
                    .map(|i| RelPath::parse("inventory", &i, Want::Either))
                    .transpose()?,
                limit: p.limit.map(|l| limit(&l)).transpose()?,
                tags: p.tags.map(tags).transpose()?.flatten(),
                extra_vars: p
                    .extra_vars
                    .filter(|vars| !vars.is_empty())
                    .map(|vars| Value::Object(vars).to_string()),
                check: p.check.unwrap_or(false),
                dir: RelPath::parse("dir", p.dir.as_deref().unwrap_or(""), Want::Dir)?,
            };
            Ok(Request {
                source,
                job: Job::Ansible(job),
            })
        }
        Tool::Terraform => {
            let p: TerraformPayload = typed(payload)?;
            let source = source(p.repo, p.clone_url, p.sha)?;
            let job = TerraformJob {
                dir: RelPath::parse("dir", &p.dir, Want::Dir)?,
                mode: p.mode,
                vars: p.vars.map(vars).transpose()?.unwrap_or_default(),
            };
            Ok(Request {
                source,
                job: Job::Terraform(job),
            })
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("payload: {}", e.inner())
        } else {
            format!("payload.{path}: {}", e.inner())
        }
    })
}

fn source(repo: String, clone_url: String, sha: String) -> Result<Source, String> {
    if repo.trim().is_empty() || repo.len() > 200 || repo.chars().any(char::is_control) {
        return Err(format!(
            "payload.repo: {repo:?} must be a repository's name (owner/name), without control \
             characters"
        ));
    }
    super::checkout::check_clone_url(&clone_url)
        .map_err(|e| format!("payload.clone_url: {clone_url:?}: {e}"))?;
    if !SHA.is_match(&sha) {
        return Err(format!(
            "payload.sha: {sha:?} must be a full commit id, 40 lowercase hexadecimal digits"
        ));
    }
    Ok(Source {
        repo,
        clone_url,
        sha,
    })
}

fn limit(value: &str) -> Result<String, String> {
    if value.len() > MAX_PATTERN || !LIMIT.is_match(value) {
        return Err(format!(
            "payload.limit: {value:?} must be an Ansible host pattern of letters, digits and \
             _ . : , * ! & [ ] - (not beginning with '-'; no ~regex or @file)"
        ));
    }
    Ok(value.to_owned())
}

/// The tags joined with `,`, or `None` when there are none.
fn tags(tags: Tags) -> Result<Option<String>, String> {
    let list: Vec<String> = match tags {
        Tags::List(list) => list,
        // "a, b" is how people write a list by hand; the spaces are not part of the tags.
        Tags::Text(text) if text.trim().is_empty() => Vec::new(),
        Tags::Text(text) => text.split(',').map(|t| t.trim().to_owned()).collect(),
    };
    for tag in &list {
        if !TAG.is_match(tag) {
            return Err(format!(
                "payload.tags: {tag:?} must be a tag of letters, digits and _ . : - (not \
                 beginning with '-')"
            ));
        }
    }
    let joined = list.join(",");
    if joined.len() > MAX_PATTERN {
        return Err(format!(
            "payload.tags: at most {MAX_PATTERN} characters together"
        ));
    }
    Ok((!list.is_empty()).then_some(joined))
}

/// Each variable as Terraform's `-var name=value` takes it: strings as they are, numbers and
/// booleans as written, lists and objects as JSON, which Terraform reads as the same HCL value.
fn vars(vars: Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    vars.into_iter()
        .map(|(name, value)| {
            if !VAR_NAME.is_match(&name) {
                return Err(format!(
                    "payload.vars: {name:?} is not a variable name (letters, digits and _, \
                     not beginning with a digit)"
                ));
            }
            let text = match value {
                Value::String(s) => s,
                Value::Null => {
                    return Err(format!(
                        "payload.vars.{name}: null is not a value; leave the variable out"
                    ));
                }
                other => other.to_string(),
            };
            if text.contains('\0') {
                return Err(format!("payload.vars.{name}: contains a NUL character"));
            }
            Ok((name, text))
        })
        .collect()
}

impl RelPath {
    /// Checks the spelling of a path named by field `field` of the payload. Only a directory
    /// may be empty (the repository's root).
    fn parse(field: &str, raw: &str, want: Want) -> Result<RelPath, String> {
        let refuse = |why: &str| Err(format!("payload.{field}: {raw:?} {why}"));
        if raw.len() > MAX_PATH {
            return refuse(&format!("is longer than {MAX_PATH} bytes"));
        }
        if raw.chars().any(char::is_control) {
            return refuse("contains a control character");
        }
        if raw.starts_with('/') {
            return refuse("must be relative to the repository's root, not absolute");
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return refuse("must not contain '..'"),
                part => parts.push(part),
            }
        }
        if parts.is_empty() && want != Want::Dir {
            return refuse("must name a file in the repository");
        }
        Ok(RelPath(parts.join("/")))
    }

    /// The path inside the checkout at `tree`, once it is known to exist there as `want`
    /// says and to stay inside the checkout when every symbolic link is followed (a link in
    /// the repository may point anywhere). The path returned is spelt as the payload spelt
    /// it, under `tree`: the program resolves the same links to the same place.
    pub(super) async fn resolve(
        &self,
        tree: &Path,
        field: &str,
        want: Want,
    ) -> Result<PathBuf, String> {
        let joined = if self.0.is_empty() {
            tree.to_path_buf()
        } else {
            tree.join(&self.0)
        };
        let shown = if self.0.is_empty() { "." } else { &self.0 };
        let real = tokio::fs::canonicalize(&joined).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "payload.{field}: {shown:?} does not exist in the repository at this commit"
                )
            } else {
                format!("payload.{field}: {shown:?} cannot be resolved: {e}")
            }
        })?;
        let root = tokio::fs::canonicalize(tree)
            .await
            .map_err(|e| format!("the checkout {} is gone: {e}", tree.display()))?;
        if !real.starts_with(&root) {
            return Err(format!(
                "payload.{field}: {shown:?} leads outside the repository (through a symbolic \
                 link); refused"
            ));
        }
        let kind_ok = match want {
            Want::File => real.is_file(),
            Want::Dir => real.is_dir(),
            Want::Either => real.is_file() || real.is_dir(),
        };
        if !kind_ok {
            let what = match want {
                Want::File => "a file",
                Want::Dir => "a directory",
                Want::Either => "a file or a directory",
            };
            return Err(format!("payload.{field}: {shown:?} is not {what}"));
        }
        Ok(joined)
    }
}

impl AnsibleJob {
    /// `program [-i inventory] [--limit L] [--tags T] [--check --diff] [--extra-vars JSON]
    /// playbook`, with the paths already resolved inside the checkout. Every value is one
    /// argument; the paths are absolute, so none can be read as an option.
    pub(super) fn argv(
        &self,
        program: &str,
        playbook: &Path,
        inventory: Option<&Path>,
    ) -> Vec<String> {
        let mut argv = vec![program.to_owned()];
        if let Some(inventory) = inventory {
            argv.extend(["-i".into(), inventory.display().to_string()]);
        }
        if let Some(limit) = &self.limit {
            argv.extend(["--limit".into(), limit.clone()]);
        }
        if let Some(tags) = &self.tags {
            argv.extend(["--tags".into(), tags.clone()]);
        }
        if self.check {
            argv.extend(["--check".into(), "--diff".into()]);
        }
        if let Some(vars) = &self.extra_vars {
            argv.extend(["--extra-vars".into(), vars.clone()]);
        }
        argv.push(playbook.display().to_string());
        argv
    }
}

impl TerraformJob {
    /// `program plan|apply …`, run in the module's directory; each variable is `-var`
    /// followed by `name=value` as one argument.
    pub(super) fn argv(&self, program: &str) -> Vec<String> {
        let mut argv: Vec<String> = match self.mode {
            Mode::Plan => vec![program.into(), "plan".into(), "-input=false".into()],
            Mode::Apply => vec![
                program.into(),
                "apply".into(),
                "-input=false".into(),
                "-auto-approve".into(),
            ],
        };
        argv.push("-no-color".into());
        for (name, value) in &self.vars {
            argv.extend(["-var".into(), format!("{name}={value}")]);
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

    /// `base` with the fields of `extra` added or replaced.
    fn with(mut base: Value, extra: Value) -> Value {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn ansible(extra: Value) -> Result<Request, String> {
        let base = json!({
            "repo": "homelab/infra",
            "clone_url": "https://git.home/homelab/infra.git",
            "sha": SHA1,
            "playbook": "ansible/playbooks/media.yml",
        });
        parse(Tool::Ansible, &with(base, extra))
    }

    /// Asserts that an ansible payload with `field` set to `value` is refused, naming the
    /// field.
    fn refused(field: &str, value: Value) {
        let err = ansible(json!({ field: value.clone() })).unwrap_err();
        assert!(
            err.starts_with(&format!("payload.{field}")),
            "{value}: {err}"
        );
    }

    fn job(request: Request) -> AnsibleJob {
        match request.job {
            Job::Ansible(job) => job,
            Job::Terraform(_) => unreachable!(),
        }
    }

    #[test]
    fn a_full_ansible_payload_becomes_one_argument_per_value() {
        let job = job(ansible(json!({
            "inventory": "ansible/inventory/hosts.yml",
            "limit": "media:&docker,!nas[0:2]",
            "tags": ["a", "b"],
            "extra_vars": {"image": "jellyfin:10.9", "n": 3},
            "check": true,
            "dir": "./ansible/",
        }))
        .unwrap());
        assert_eq!(job.dir, RelPath("ansible".into()));
        let argv = job.argv(
            "ansible-playbook",
            Path::new("/t/ansible/playbooks/media.yml"),
            Some(Path::new("/t/ansible/inventory/hosts.yml")),
        );
        assert_eq!(
            argv,
            [
                "ansible-playbook",
                "-i",
                "/t/ansible/inventory/hosts.yml",
                "--limit",
                "media:&docker,!nas[0:2]",
                "--tags",
                "a,b",
                "--check",
                "--diff",
                "--extra-vars",
                r#"{"image":"jellyfin:10.9","n":3}"#,
                "/t/ansible/playbooks/media.yml",
            ]
        );
        // Left out, each option is absent, not empty.
        let bare = job_argv(json!({}));
        assert_eq!(bare, ["ansible-playbook", "/t/p.yml"]);
    }

    fn job_argv(extra: Value) -> Vec<String> {
        job(ansible(extra).unwrap()).argv("ansible-playbook", Path::new("/t/p.yml"), None)
    }

    #[test]
    fn tags_may_be_a_list_or_a_comma_string() {
        let tags = |t: Value| job(ansible(json!({ "tags": t })).unwrap()).tags;
        assert_eq!(tags(json!("a, b,c")), Some("a,b,c".into()));
        assert_eq!(tags(json!(["x"])), Some("x".into()));
        assert_eq!(tags(json!([])), None);
        assert_eq!(tags(json!("")), None);
        assert_eq!(
            job_argv(json!({"extra_vars": {}})),
            ["ansible-playbook", "/t/p.yml"]
        );
    }

    #[test]
    fn paths_that_could_leave_the_repository_are_refused_by_field() {
        for (field, bad) in [
            ("playbook", "../../etc/passwd"),
            ("playbook", "ansible/../../x.yml"),
            ("playbook", "/etc/passwd"),
            ("playbook", "a\0b"),
            ("playbook", "a\nb"),
            ("playbook", ""),
            ("playbook", "./"),
            ("inventory", "/etc/ansible/hosts"),
            ("inventory", ".."),
            ("dir", "../"),
            ("dir", "/srv"),
        ] {
            refused(field, json!(bad));
        }
        // A directory may be the root; a name that merely contains dots is a name.
        assert!(ansible(json!({"dir": "."})).is_ok());
        assert!(ansible(json!({"playbook": "a/..b/c..yml"})).is_ok());
    }

    #[test]
    fn limit_and_tags_keep_to_their_patterns() {
        for bad in [
            "media;reboot",
            "media nas",
            "-e@/etc/passwd",
            "--help",
            "@retry.txt",
            "~web.*",
            "a/b",
            "$(id)",
            "",
        ] {
            refused("limit", json!(bad));
        }
        for good in [
            "media",
            "all:!nas",
            "web[0:3]",
            "media-01.lan",
            "*.lan&docker",
        ] {
            assert!(ansible(json!({ "limit": good })).is_ok(), "{good}");
        }
        for bad in [
            json!("a;b"),
            json!(["-x"]),
            json!(["a b"]),
            json!(["a", ""]),
            json!(3),
        ] {
            refused("tags", bad);
        }
    }

    #[test]
    fn the_source_is_checked_before_anything_else() {
        for bad in [
            "0123456789ABCDEF0123456789ABCDEF01234567",
            "0123456",
            "main",
            "0123456789abcdef0123456789abcdef0123456g",
        ] {
            refused("sha", json!(bad));
        }
        let err = ansible(json!({"clone_url": "--upload-pack=touch /tmp/x"})).unwrap_err();
        assert!(err.starts_with("payload.clone_url: "), "{err}");
        let err = ansible(json!({"repo": ""})).unwrap_err();
        assert!(err.starts_with("payload.repo: "), "{err}");
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        let err = ansible(json!({"check": "yes"})).unwrap_err();
        assert!(err.starts_with("payload.check: "), "{err}");
        let err = ansible(json!({"limt": "media"})).unwrap_err();
        assert!(err.contains("unknown field `limt`"), "{err}");
        let err = parse(Tool::Ansible, &json!({"repo": "a/b"})).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        let err = ansible(json!({"extra_vars": ["a"]})).unwrap_err();
        assert!(err.starts_with("payload.extra_vars: "), "{err}");
    }

    fn terraform(extra: Value) -> Result<TerraformJob, String> {
        let base = json!({
            "repo": "homelab/infra",
            "clone_url": "https://git.home/homelab/infra.git",
            "sha": SHA1,
            "dir": "terraform/media",
            "mode": "plan",
        });
        let payload = with(base, extra);
        match parse(Tool::Terraform, &payload)?.job {
            Job::Terraform(job) => Ok(job),
            Job::Ansible(_) => unreachable!(),
        }
    }

    #[test]
    fn terraform_runs_plan_or_apply_with_each_variable_one_argument() {
        let plan = terraform(
            json!({"vars": {"replicas": 2, "image": "a b; c", "on": true, "tags": ["x"]}}),
        )
        .unwrap();
        assert_eq!(
            plan.argv("terraform"),
            [
                "terraform",
                "plan",
                "-input=false",
                "-no-color",
                "-var",
                "image=a b; c",
                "-var",
                "on=true",
                "-var",
                "replicas=2",
                "-var",
                r#"tags=["x"]"#,
            ]
        );
        let apply = terraform(json!({"mode": "apply"})).unwrap();
        assert_eq!(
            apply.argv("tf"),
            ["tf", "apply", "-input=false", "-auto-approve", "-no-color"]
        );
    }

    #[test]
    fn terraform_payloads_are_refused_by_field() {
        for (extra, field) in [
            (json!({"mode": "destroy"}), "payload.mode: "),
            (json!({"dir": "../x"}), "payload.dir: "),
            (json!({"vars": {"1x": "a"}}), "payload.vars: "),
            (json!({"vars": {"a-b": "a"}}), "payload.vars: "),
            (json!({"vars": {"a": null}}), "payload.vars.a: "),
            (json!({"vars": {"a": "x\u{0}y"}}), "payload.vars.a: "),
            (
                json!({"playbook": "x.yml"}),
                "payload.playbook: unknown field",
            ),
        ] {
            let err = terraform(extra.clone()).unwrap_err();
            assert!(err.starts_with(field), "{extra}: {err}");
        }
    }

    #[tokio::test]
    async fn resolving_follows_links_and_refuses_what_leaves_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a")).unwrap();
        std::fs::write(tree.join("a/p.yml"), "").unwrap();
        std::fs::write(dir.path().join("outside.yml"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.yml"), tree.join("a/out.yml")).unwrap();
        std::os::unix::fs::symlink("p.yml", tree.join("a/in.yml")).unwrap();
        let ok = resolved(&tree, "a/p.yml", Want::File).await;
        assert_eq!(ok.unwrap(), tree.join("a/p.yml"));
        assert!(resolved(&tree, "a/in.yml", Want::File).await.is_ok());
        for (path, want, expected) in [
            ("a/out.yml", Want::File, "outside the repository"),
            ("a/none.yml", Want::File, "does not exist"),
            ("a", Want::File, "is not a file"),
            ("a/p.yml", Want::Dir, "is not a directory"),
        ] {
            let err = resolved(&tree, path, want).await.unwrap_err();
            assert!(err.contains(expected), "{path}: {err}");
        }
        assert_eq!(resolved(&tree, "", Want::Dir).await.unwrap(), tree);
    }

    async fn resolved(tree: &Path, path: &str, want: Want) -> Result<PathBuf, String> {
        let path = RelPath::parse("field", path, want)?;
        path.resolve(tree, "field", want).await
    }
}
