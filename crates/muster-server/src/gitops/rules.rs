//! `[[git.rules]]`: which pushes deploy what. A rule watches one source's branch (and, if it
//! says so, repository) and a set of path globs; a push that changed a file its globs take
//! yields one task, filled from the rule's template and the push, whatever number of its files
//! changed. Pure: no I/O, no store.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use muster_api::SubmitTask;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The payload keys muster sets from the push on every deployment task, so an executor always
/// knows which tree to check out (the deploy executor's contract); a rule may not set them.
pub const RESERVED_KEYS: [&str; 3] = ["repo", "clone_url", "sha"];

/// The placeholders a push fills, in lock keys and payload strings, besides the rule's own
/// payload values (`{playbook}`).
pub const PUSH_PLACEHOLDERS: [&str; 6] = ["source", "repo", "branch", "sha", "short_sha", "author"];

/// The task kinds of the deploy executor, which can run in check mode.
const CHECKABLE_KINDS: [&str; 2] = ["ansible", "terraform"];

/// `task` in check mode: `ansible` with `check` (`ansible-playbook --check --diff`),
/// `terraform` with `mode = "plan"`; what it would change is in its log, and nothing changes.
pub fn check_variant(task: &SubmitTask) -> SubmitTask {
    let mut check = task.clone();
    if let Value::Object(payload) = &mut check.payload {
        match task.kind.as_str() {
            "terraform" => {
                payload.insert("mode".into(), "plan".into());
            }
            _ => {
                payload.insert("check".into(), true.into());
            }
        }
    }
    check
        .labels
        .insert("deploy_step".to_owned(), "check".to_owned());
    check
}

/// What a rule does with a push whose list of changed files is incomplete (the forge cut it
/// and its compare API could not be asked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Deploy anyway: a deployment run once too often is safer than one missed.
    #[default]
    Run,
    /// Deploy nothing for this rule.
    Skip,
}

pub use muster_api::TaskTemplate;

/// One `[[git.rules]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// How plans, deployments and the audit log name the rule; `<source>-<n>` (its place
    /// among the source's rules, from 1) when unset.
    pub name: Option<String>,
    /// The `[[git.sources]]` entry whose pushes it watches.
    pub source: String,
    /// A glob over the repository's full name (`owner/name`); any repository of the source
    /// when unset.
    pub repo: Option<String>,
    /// A glob over the branch name (`main`, `release/*`). Tag pushes never match.
    pub branch: String,
    /// Globs over the changed paths: `*` stays within a directory, `**` crosses them, and one
    /// starting with `!` excludes what it matches.
    pub paths: Vec<String>,
    pub task: TaskTemplate,
    /// A template (`deploy:{repo}:{playbook}`): tasks with the same key run one at a time, in
    /// push order.
    pub lock_key: Option<String>,
    #[serde(default)]
    pub fallback: Fallback,
    /// Run the task in check mode first (`ansible`: `--check --diff`; `terraform`: `plan`),
    /// and the real run only once the check completed.
    #[serde(default)]
    pub check_first: bool,
}

/// A rule, checked and compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub source: String,
    repo: Option<(String, GlobMatcher)>,
    branch: (String, GlobMatcher),
    include: Globs,
    exclude: Globs,
    pub task: TaskTemplate,
    pub lock_key: Option<String>,
    pub fallback: Fallback,
    pub check_first: bool,
}

/// A rule is equal to another when written the same way (for reloads).
impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.repo.as_ref().map(|r| &r.0) == other.repo.as_ref().map(|r| &r.0)
            && self.branch.0 == other.branch.0
            && self.include.texts == other.include.texts
            && self.exclude.texts == other.exclude.texts
            && self.task == other.task
            && self.lock_key == other.lock_key
            && self.fallback == other.fallback
            && self.check_first == other.check_first
    }
}

#[derive(Debug, Clone)]
struct Globs {
    texts: Vec<String>,
    set: GlobSet,
}

impl Globs {
    fn new(texts: Vec<String>, field: &str) -> Result<Globs, String> {
        let mut builder = GlobSetBuilder::new();
        for text in &texts {
            builder.add(glob(text).map_err(|e| format!("{field}: {e}"))?);
        }
        let set = builder.build().map_err(|e| format!("{field}: {e}"))?;
        Ok(Globs { texts, set })
    }

    /// The first glob (as written) that matches `path`.
    fn first_match(&self, path: &str) -> Option<&str> {
        self.set
            .matches(path)
            .into_iter()
            .min()
            .map(|i| self.texts[i].as_str())
    }
}

/// `*` and `?` stop at `/`; `**` crosses directories.
fn glob(text: &str) -> Result<Glob, String> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("{text:?} is not a valid glob: {}", e.kind()))
}

fn matcher(text: &str, field: &str) -> Result<GlobMatcher, String> {
    glob(text)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{field}: {e}"))
}

/// What a push tells the rules: where it came from and what it changed.
#[derive(Debug, Clone)]
pub struct PushFacts<'a> {
    pub source: &'a str,
    pub repo: &'a str,
    pub clone_url: Option<&'a str>,
    /// `None` for a tag push.
    pub branch: Option<&'a str>,
    pub sha: &'a str,
    pub author: &'a str,
    pub changed: &'a BTreeSet<String>,
    /// False when the forge cut the list of changed files and it could not be completed.
    pub complete: bool,
}

/// A changed file a rule takes, and the glob that took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMatch {
    pub path: String,
    pub glob: String,
}

/// What one rule makes of one push.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RuleOutcome {
    /// It deploys: the files that made it match (empty when it runs by its fallback), those a
    /// negation left out, and the task it submits.
    Matched {
        matched: Vec<FileMatch>,
        excluded: Vec<FileMatch>,
        /// Set when the rule runs because the changed files could not be known.
        fallback: bool,
        #[serde(skip)]
        task: Box<SubmitTask>,
    },
    /// It does not apply, and why (another branch, no file matched).
    Skipped { why: String },
    /// It applies, but the push cannot fill its template safely: nothing runs for it.
    Refused { why: String },
}

impl Rule {
    /// Checks `spec`: a known source, valid globs, placeholders it can fill, no reserved
    /// payload key. `index` is its place among its source's rules (for the default name).
    /// The error is one sentence naming the field.
    pub fn resolve(spec: RuleSpec, sources: &[&str], index: usize) -> Result<Rule, String> {
        if !sources.contains(&spec.source.as_str()) {
            return Err(if sources.is_empty() {
                format!(
                    "source {:?} is not a [[git.sources]] entry (none is configured)",
                    spec.source
                )
            } else {
                format!(
                    "source {:?} is not a [[git.sources]] entry; configured: {}",
                    spec.source,
                    sources.join(", ")
                )
            });
        }
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", spec.source, index + 1));
        if name.trim().is_empty() || name.chars().any(char::is_control) || name.len() > 100 {
            return Err("name must be 1 to 100 characters without control characters".into());
        }
        let repo = match spec.repo {
            Some(text) => Some((text.clone(), matcher(&text, "repo")?)),
            None => None,
        };
        let branch = (spec.branch.clone(), matcher(&spec.branch, "branch")?);
        let (excluded, included): (Vec<String>, Vec<String>) =
            spec.paths.into_iter().partition(|p| p.starts_with('!'));
        if included.is_empty() {
            return Err(
                "paths has no glob that includes files; name at least one, e.g. \
                 paths = [\"ansible/**\"]"
                    .into(),
            );
        }
        let excluded = excluded
            .into_iter()
            .map(|p| p[1..].to_owned())
            .collect::<Vec<_>>();
        let include = Globs::new(included, "paths")?;
        let exclude = Globs::new(excluded, "paths")?;
        if spec.task.kind.trim().is_empty() {
            return Err(
                "task.kind is empty; name the kind of task to run, e.g. \"ansible\"".into(),
            );
        }
        for key in RESERVED_KEYS {
            if spec.task.payload.contains_key(key) {
                return Err(format!(
                    "task.payload.{key} is set by muster from the push; remove it from the rule"
                ));
            }
        }
        if spec.check_first && !CHECKABLE_KINDS.contains(&spec.task.kind.as_str()) {
            return Err(format!(
                "check_first needs a task of kind {}, which have a check mode; this rule's is {:?}",
                CHECKABLE_KINDS.join(" or "),
                spec.task.kind
            ));
        }
        for key in ["check", "mode"] {
            if spec.check_first && spec.task.payload.contains_key(key) {
                return Err(format!(
                    "task.payload.{key} is set by check_first for the check; remove one of them"
                ));
            }
        }
        let own: Vec<&str> = spec
            .task
            .payload
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, _)| k.as_str())
            .collect();
        if let Some(template) = &spec.lock_key {
            check_placeholders(template, &own).map_err(|e| format!("lock_key: {e}"))?;
        }
        for (key, value) in &spec.task.payload {
            check_value_placeholders(value, &own)
                .map_err(|e| format!("task.payload.{key}: {e}"))?;
        }
        Ok(Rule {
            name,
            source: spec.source,
            repo,
            branch,
            include,
            exclude,
            task: spec.task,
            lock_key: spec.lock_key,
            fallback: spec.fallback,
            check_first: spec.check_first,
        })
    }

    /// What this rule makes of `push` (of its own source).
    pub fn plan(&self, push: &PushFacts<'_>) -> RuleOutcome {
        if let Some((text, repo)) = &self.repo
            && !repo.is_match(push.repo)
        {
            return RuleOutcome::Skipped {
                why: format!("repository {} does not match {text}", push.repo),
            };
        }
        let Some(branch) = push.branch else {
            return RuleOutcome::Skipped {
                why: "a tag push; rules deploy branches".into(),
            };
        };
        if !self.branch.1.is_match(branch) {
            return RuleOutcome::Skipped {
                why: format!("branch {branch} does not match {}", self.branch.0),
            };
        }
        let mut matched = Vec::new();
        let mut excluded = Vec::new();
        for path in push.changed {
            let Some(glob) = self.include.first_match(path) else {
                continue;
            };
            match self.exclude.first_match(path) {
                Some(negation) => excluded.push(FileMatch {
                    path: path.clone(),
                    glob: format!("!{negation}"),
                }),
                None => matched.push(FileMatch {
                    path: path.clone(),
                    glob: glob.to_owned(),
                }),
            }
        }
        let fallback = !push.complete && matched.is_empty();
        if fallback && self.fallback == Fallback::Skip {
            return RuleOutcome::Skipped {
                why: "the forge's list of changed files is incomplete and fallback = \"skip\""
                    .into(),
            };
        }
        if matched.is_empty() && !fallback {
            return RuleOutcome::Skipped {
                why: match (push.changed.len(), excluded.len()) {
                    (0, _) => "the push changed no files".into(),
                    (n, 0) => format!("none of the {n} changed files matches its paths"),
                    (n, e) => format!(
                        "none of the {n} changed files matches its paths ({e} excluded by a \
                         negation)"
                    ),
                },
            };
        }
        match self.task(push, branch) {
            Ok(task) => RuleOutcome::Matched {
                matched,
                excluded,
                fallback,
                task: Box::new(task),
            },
            Err(why) => RuleOutcome::Refused { why },
        }
    }

    /// The rule's task for `push`: its template with the placeholders filled, and the push's
    /// repository, clone URL and commit in the payload.
    fn task(&self, push: &PushFacts<'_>, branch: &str) -> Result<SubmitTask, String> {
        let values = self.values(push, branch)?;
        let mut payload = Map::new();
        for (key, value) in &self.task.payload {
            payload.insert(
                key.clone(),
                fill_value(value, &values).map_err(|e| format!("task.payload.{key}: {e}"))?,
            );
        }
        payload.insert("repo".into(), push.repo.into());
        if let Some(url) = push.clone_url {
            payload.insert("clone_url".into(), url.into());
        }
        payload.insert("sha".into(), push.sha.into());
        let lock_key = match &self.lock_key {
            Some(template) => Some(fill(template, &values).map_err(|e| format!("lock_key: {e}"))?),
            None => None,
        };
        Ok(self.task.submit(payload, lock_key, None))
    }

    /// The placeholders' values, each from the push checked against its pattern: text from a
    /// forge is data, and a value that does not look like what it names fills nothing.
    fn values(
        &self,
        push: &PushFacts<'_>,
        branch: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        let patterns = patterns();
        let mut values = BTreeMap::new();
        let checked = [
            ("source", push.source, &patterns.name),
            ("repo", push.repo, &patterns.repo),
            ("branch", branch, &patterns.branch),
            ("sha", push.sha, &patterns.sha),
            ("author", push.author, &patterns.author),
        ];
        for (name, value, pattern) in checked {
            if !pattern.is_match(value) || (name == "branch" && value.contains("..")) {
                return Err(format!(
                    "the push's {name} {value:?} does not match {}",
                    pattern.as_str()
                ));
            }
            values.insert(name.to_owned(), value.to_owned());
        }
        values.insert("short_sha".into(), push.sha.chars().take(8).collect());
        for (key, value) in &self.task.payload {
            if let Value::String(text) = value {
                values.entry(key.clone()).or_insert_with(|| text.clone());
            }
        }
        Ok(values)
    }
}

struct Patterns {
    name: Regex,
    repo: Regex,
    branch: Regex,
    sha: Regex,
    author: Regex,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: std::sync::OnceLock<Patterns> = std::sync::OnceLock::new();
    PATTERNS.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("a valid pattern");
        Patterns {
            name: re(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"),
            // owner/name, with GitLab's subgroups.
            repo: re(r"^[A-Za-z0-9_.-]{1,100}(/[A-Za-z0-9_.-]{1,100}){1,8}$"),
            branch: re(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$"),
            // SHA-1, or SHA-256 for repositories that use it.
            sha: re(r"^[0-9a-f]{40}([0-9a-f]{24})?$"),
            author: re(r"^[^\x00-\x1f\x7f{}]{1,100}$"),
        }
    })
}

/// The placeholders of a template: `{name}`; `{{` and `}}` stand for braces.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let after = &rest[i + 1..];
        if rest[i..].starts_with("{{") || rest[i..].starts_with("}}") {
            rest = &after[1..];
            continue;
        }
        if rest.as_bytes()[i] == b'}' {
            return Err(format!("a lone }} in {template:?}; write }}}} for a brace"));
        }
        let Some(end) = after.find('}') else {
            return Err(format!("an unclosed {{ in {template:?}"));
        };
        found.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(found)
}

fn check_placeholders(template: &str, own: &[&str]) -> Result<(), String> {
    for name in placeholders(template)? {
        if !PUSH_PLACEHOLDERS.contains(&name) && !own.contains(&name) {
            return Err(format!(
                "{{{name}}} is not a placeholder; use one of {} or a string value of the \
                 rule's payload",
                PUSH_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
    }
    Ok(())
}

fn check_value_placeholders(value: &Value, own: &[&str]) -> Result<(), String> {
    match value {
        Value::String(text) => check_placeholders(text, own),
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_value_placeholders(v, own)),
        Value::Object(map) => map
            .values()
            .try_for_each(|v| check_value_placeholders(v, own)),
        _ => Ok(()),
    }
}

/// Fills a template checked by [`check_placeholders`].
fn fill(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        if rest[i..].starts_with("{{") || rest[i..].starts_with("}}") {
            out.push(rest.as_bytes()[i] as char);
            rest = &rest[i + 2..];
            continue;
        }
        let after = &rest[i + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("an unclosed {{ in {template:?}"))?;
        let name = &after[..end];
        let value = values
            .get(name)
            .ok_or_else(|| format!("{{{name}}} has no value"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn fill_value(value: &Value, values: &BTreeMap<String, String>) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(fill(text, values)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill_value(v, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), fill_value(v, values)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> RuleSpec {
        toml::from_str(toml_text).expect("a rule")
    }

    fn media() -> Rule {
        Rule::resolve(
            spec(
                r#"
                source = "infra"
                branch = "main"
                paths = ["ansible/playbooks/media/**", "ansible/roles/jellyfin/**", "!**/README.md"]
                task = { kind = "ansible", capabilities = ["ansible"], payload = { playbook = "media.yml", limit = "{branch}" } }
                lock_key = "deploy:{repo}:{playbook}"
                "#,
            ),
            &["infra"],
            0,
        )
        .expect("valid")
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn push<'a>(changed: &'a BTreeSet<String>, branch: Option<&'a str>) -> PushFacts<'a> {
        PushFacts {
            source: "infra",
            repo: "ops/homelab",
            clone_url: Some("https://git.home/ops/homelab.git"),
            branch,
            sha: SHA,
            author: "Ada Lovelace",
            changed,
            complete: true,
        }
    }

    fn files(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_matching_push_yields_one_task_with_its_placeholders_filled() {
        let changed = files(&[
            "ansible/playbooks/media/site.yml",
            "ansible/roles/jellyfin/tasks/main.yml",
            "ansible/roles/jellyfin/README.md",
            "docs/index.md",
        ]);
        let RuleOutcome::Matched {
            matched,
            excluded,
            fallback,
            task,
        } = media().plan(&push(&changed, Some("main")))
        else {
            panic!("matched")
        };
        assert!(!fallback);
        assert_eq!(
            matched,
            vec![
                FileMatch {
                    path: "ansible/playbooks/media/site.yml".into(),
                    glob: "ansible/playbooks/media/**".into()
                },
                FileMatch {
                    path: "ansible/roles/jellyfin/tasks/main.yml".into(),
                    glob: "ansible/roles/jellyfin/**".into()
                },
            ]
        );
        assert_eq!(
            excluded,
            vec![FileMatch {
                path: "ansible/roles/jellyfin/README.md".into(),
                glob: "!**/README.md".into()
            }]
        );
        assert_eq!(task.kind, "ansible");
        assert_eq!(
            task.lock_key.as_deref(),
            Some("deploy:ops/homelab:media.yml")
        );
        assert_eq!(
            task.payload,
            serde_json::json!({
                "playbook": "media.yml", "limit": "main", "repo": "ops/homelab",
                "clone_url": "https://git.home/ops/homelab.git", "sha": SHA
            })
        );
    }

    #[test]
    fn a_star_stays_in_its_directory_and_two_stars_cross() {
        let rule = Rule::resolve(
            spec(
                r#"
                source = "infra"
                branch = "main"
                paths = ["ansible/*.yml"]
                task = { kind = "ansible" }
                "#,
            ),
            &["infra"],
            2,
        )
        .expect("valid");
        assert_eq!(rule.name, "infra-3", "the default name counts from 1");
        let deep = files(&["ansible/playbooks/site.yml"]);
        assert!(matches!(
            rule.plan(&push(&deep, Some("main"))),
            RuleOutcome::Skipped { .. }
        ));
        let top = files(&["ansible/site.yml"]);
        assert!(matches!(
            rule.plan(&push(&top, Some("main"))),
            RuleOutcome::Matched { .. }
        ));
    }

    #[test]
    fn other_branches_tags_and_unmatched_files_skip_with_a_reason() {
        let changed = files(&["ansible/playbooks/media/site.yml"]);
        let why = |outcome| match outcome {
            RuleOutcome::Skipped { why } => why,
            other => panic!("skipped, got {other:?}"),
        };
        assert_eq!(
            why(media().plan(&push(&changed, Some("dev")))),
            "branch dev does not match main"
        );
        assert_eq!(
            why(media().plan(&push(&changed, None))),
            "a tag push; rules deploy branches"
        );
        let readme_only = files(&["ansible/roles/jellyfin/README.md", "docs/x.md"]);
        assert_eq!(
            why(media().plan(&push(&readme_only, Some("main")))),
            "none of the 2 changed files matches its paths (1 excluded by a negation)"
        );
    }

    #[test]
    fn an_incomplete_list_runs_the_fallback_unless_told_to_skip() {
        let none = files(&[]);
        let mut facts = push(&none, Some("main"));
        facts.complete = false;
        assert!(matches!(
            media().plan(&facts),
            RuleOutcome::Matched { fallback: true, .. }
        ));
        let mut skipping = media();
        skipping.fallback = Fallback::Skip;
        assert!(matches!(skipping.plan(&facts), RuleOutcome::Skipped { .. }));
    }

    #[test]
    fn a_push_value_that_does_not_look_like_what_it_names_fills_nothing() {
        let changed = files(&["ansible/playbooks/media/site.yml"]);
        for (branch, author) in [("main", "x{sha}"), ("main", "evil\nline")] {
            let mut facts = push(&changed, Some(branch));
            facts.author = author;
            assert!(
                matches!(media().plan(&facts), RuleOutcome::Refused { .. }),
                "author {author:?}"
            );
        }
        let rule = Rule::resolve(
            spec(
                r#"
                source = "infra"
                branch = "**"
                paths = ["**"]
                task = { kind = "ansible" }
                "#,
            ),
            &["infra"],
            0,
        )
        .expect("valid");
        for branch in ["feature/../../x", "-rf", "a;b", "a b"] {
            let facts = push(&changed, Some(branch));
            assert!(
                matches!(rule.plan(&facts), RuleOutcome::Refused { .. }),
                "branch {branch:?}"
            );
        }
    }

    #[test]
    fn a_bad_rule_is_refused_naming_its_field() {
        let refused = |text: &str| Rule::resolve(spec(text), &["infra"], 0).expect_err("refused");
        let base = |extra: &str| {
            format!(
                "source = \"infra\"\nbranch = \"main\"\n{extra}\ntask = {{ kind = \"ansible\", payload = {{ playbook = \"a.yml\" }} }}\n"
            )
        };
        assert!(refused(&base("paths = [\"!x/**\"]")).starts_with("paths has no glob"));
        assert!(refused(&base("paths = [\"a/[\"]")).starts_with("paths: "));
        assert!(
            refused(&base("paths = [\"**\"]\nlock_key = \"deploy:{nope}\""))
                .starts_with("lock_key: {nope} is not a placeholder")
        );
        assert!(
            refused(&base("paths = [\"**\"]\nlock_key = \"deploy:{repo\"")).contains("unclosed")
        );
        let wrong_source = Rule::resolve(
            spec(
                "source = \"other\"\nbranch = \"main\"\npaths = [\"**\"]\ntask = { kind = \"x\" }",
            ),
            &["infra"],
            0,
        )
        .expect_err("refused");
        assert!(wrong_source.contains("configured: infra"), "{wrong_source}");
        let reserved = Rule::resolve(
            spec(
                "source = \"infra\"\nbranch = \"main\"\npaths = [\"**\"]\ntask = { kind = \"x\", payload = { sha = \"1\" } }",
            ),
            &["infra"],
            0,
        )
        .expect_err("refused");
        assert!(
            reserved.starts_with("task.payload.sha is set by muster"),
            "{reserved}"
        );
    }

    #[test]
    fn braces_can_be_written_and_placeholders_fill_nested_payload_strings() {
        let values: BTreeMap<String, String> =
            [("repo".to_owned(), "ops/homelab".to_owned())].into();
        assert_eq!(
            fill("{{literal}} {repo}", &values).unwrap(),
            "{literal} ops/homelab"
        );
        assert_eq!(
            fill_value(&serde_json::json!({"vars": ["{repo}", 3]}), &values).unwrap(),
            serde_json::json!({"vars": ["ops/homelab", 3]})
        );
    }
}
