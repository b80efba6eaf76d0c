//! A push against the rules of its source: what each rule makes of it, in the API's words. The
//! same plan answers `POST /api/v1/gitops/plan` and becomes a deployment's record, so what an
//! operator previews is what a push does.

use std::collections::BTreeSet;

use muster_api::{FileMatch, GitPlan, PlannedRule, RuleOutcome as ApiOutcome, SubmitTask};

use super::rules::{self, PushFacts, RuleOutcome, check_variant};
use super::sources::GitConfig;

/// What one push is, as far as planning goes.
#[derive(Debug, Clone)]
pub struct PushSummary {
    pub source: String,
    pub repo: String,
    pub clone_url: Option<String>,
    pub git_ref: String,
    pub branch: Option<String>,
    pub sha: String,
    pub author: String,
    pub changed: BTreeSet<String>,
    /// False when the forge cut the list of changed files and it could not be completed.
    pub complete: bool,
}

/// The plan of `push`: per rule, what it made of the push and the task it would submit.
pub fn plan(config: &GitConfig, push: &PushSummary) -> GitPlan {
    let facts = PushFacts {
        source: &push.source,
        repo: &push.repo,
        clone_url: push.clone_url.as_deref(),
        branch: push.branch.as_deref(),
        sha: &push.sha,
        author: &push.author,
        changed: &push.changed,
        complete: push.complete,
    };
    let mut planned = Vec::new();
    for rule in config.rules_of(&push.source) {
        let (mut entry, task) = planned_rule(&rule.name, rule.plan(&facts));
        if rule.check_first {
            entry.check_task = task.as_ref().map(check_variant);
        }
        entry.task = task;
        planned.push(entry);
    }
    let nothing_to_do = planned.iter().all(|r| r.task.is_none());
    GitPlan {
        source: push.source.clone(),
        repo: push.repo.clone(),
        git_ref: push.git_ref.clone(),
        branch: push.branch.clone(),
        sha: push.sha.clone(),
        changed: push.changed.iter().cloned().collect(),
        complete: push.complete,
        rules: planned,
        nothing_to_do,
    }
}

fn planned_rule(name: &str, outcome: RuleOutcome) -> (PlannedRule, Option<SubmitTask>) {
    let mut entry = PlannedRule {
        rule: name.to_owned(),
        outcome: ApiOutcome::Skipped,
        why: None,
        matched: Vec::new(),
        excluded: Vec::new(),
        fallback: false,
        kind: None,
        lock_key: None,
        task: None,
        check_task: None,
        held: false,
        check_task_id: None,
        check_task_state: None,
        task_id: None,
        task_state: None,
    };
    let task = match outcome {
        RuleOutcome::Matched {
            matched,
            excluded,
            fallback,
            task,
        } => {
            entry.outcome = ApiOutcome::Matched;
            entry.matched = matched.into_iter().map(api_match).collect();
            entry.excluded = excluded.into_iter().map(api_match).collect();
            entry.fallback = fallback;
            entry.kind = Some(task.kind.clone());
            entry.lock_key = task.lock_key.clone();
            Some(*task)
        }
        RuleOutcome::Skipped { why } => {
            entry.outcome = ApiOutcome::Skipped;
            entry.why = Some(why);
            None
        }
        RuleOutcome::Refused { why } => {
            entry.outcome = ApiOutcome::Refused;
            entry.why = Some(why);
            None
        }
    };
    (entry, task)
}

fn api_match(m: rules::FileMatch) -> FileMatch {
    FileMatch {
        path: m.path,
        glob: m.glob,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitops::sources::SourceSpec;

    fn config() -> GitConfig {
        let source: SourceSpec =
            toml::from_str("name = \"infra\"\nforge = \"gitea\"\nsecret_env = \"S\"").unwrap();
        let rule = |text: &str| (1, toml::from_str(text).unwrap());
        GitConfig::resolve(
            &[(1, source)],
            &[
                rule(
                    "name = \"media\"\nsource = \"infra\"\nbranch = \"main\"\npaths = [\"ansible/media/**\"]\ntask = { kind = \"ansible\", payload = { playbook = \"media.yml\" } }\nlock_key = \"deploy:{repo}:{playbook}\"",
                ),
                rule(
                    "name = \"dns\"\nsource = \"infra\"\nbranch = \"main\"\npaths = [\"ansible/dns/**\"]\ntask = { kind = \"ansible\", payload = { playbook = \"dns.yml\" } }",
                ),
            ],
            &|_| Some("0123456789abcdef0123".into()),
        )
        .unwrap()
    }

    fn push(changed: &[&str], branch: &str) -> PushSummary {
        PushSummary {
            source: "infra".into(),
            repo: "ops/homelab".into(),
            clone_url: None,
            git_ref: format!("refs/heads/{branch}"),
            branch: Some(branch.into()),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            author: "Ada".into(),
            changed: changed.iter().map(|c| (*c).to_owned()).collect(),
            complete: true,
        }
    }

    #[test]
    fn the_plan_names_each_rule_with_the_files_that_matched_it() {
        let plan = plan(&config(), &push(&["ansible/media/site.yml"], "main"));
        assert!(!plan.nothing_to_do);
        assert_eq!(plan.rules.len(), 2);
        assert_eq!(plan.rules[0].rule, "media");
        assert_eq!(plan.rules[0].outcome, ApiOutcome::Matched);
        assert_eq!(plan.rules[0].matched[0].path, "ansible/media/site.yml");
        assert_eq!(plan.rules[0].matched[0].glob, "ansible/media/**");
        assert_eq!(
            plan.rules[0].lock_key.as_deref(),
            Some("deploy:ops/homelab:media.yml")
        );
        assert_eq!(plan.rules[1].outcome, ApiOutcome::Skipped);
        assert!(plan.rules[0].task.is_some() && plan.rules[1].task.is_none());
        assert!(plan.rules[0].check_task.is_none());
    }

    #[test]
    fn a_push_no_rule_watches_is_nothing_to_do() {
        let plan = plan(&config(), &push(&["ansible/media/site.yml"], "dev"));
        assert!(plan.nothing_to_do);
        assert!(plan.rules.iter().all(|r| r.task.is_none()));
        assert_eq!(
            plan.rules[0].why.as_deref(),
            Some("branch dev does not match main")
        );
    }
}
