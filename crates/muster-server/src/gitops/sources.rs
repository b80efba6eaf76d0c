//! `[[git.sources]]`: the forges whose pushes muster takes, each at `POST /hooks/git/{name}`
//! with the secret its hook is signed with, and the `[git]` section checked as a whole.

use std::sync::Arc;

use serde::Deserialize;

use super::forge::Forge;
use super::rules::{Rule, RuleSpec};
use crate::bounds::{entry_name, http_url};
use crate::secret::{Secret, read_variable};

/// The shortest secret a source takes: a guessable one would let anyone deploy.
const MIN_SECRET_CHARS: usize = 16;

/// One `[[git.sources]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Its hook is `POST /hooks/git/{name}`.
    pub name: String,
    /// `gitea`, `forgejo`, `github` or `gitlab`.
    pub forge: String,
    /// The variable holding the hook's secret (GitLab: its secret token).
    pub secret_env: String,
    /// The variable holding an API token, for the forge's compare and commit-status APIs.
    pub token_env: Option<String>,
    /// The forge's API base (`https://git.home/api/v1`, `https://api.github.com`,
    /// `https://gitlab.example/api/v4`).
    pub api_url: Option<String>,
}

/// A source, checked, with its secrets read.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub forge: Forge,
    pub secret: Secret,
    pub token: Option<Secret>,
    pub api_url: Option<String>,
}

/// The `[git]` section, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GitConfig {
    pub sources: Vec<Arc<Source>>,
    pub rules: Vec<Rule>,
}

impl GitConfig {
    pub fn source(&self, name: &str) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The rules watching `source`, in the file's order.
    pub fn rules_of<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.source == source)
    }

    /// Checks every source and rule, reading the sources' variables through `env`; an error
    /// names the entry (`git.sources[1] ("infra")`) for the caller to prefix with file and line.
    pub fn resolve(
        sources: &[(usize, SourceSpec)],
        rules: &[(usize, RuleSpec)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GitConfig, (usize, String)> {
        let mut checked: Vec<Arc<Source>> = Vec::new();
        for (index, (line, spec)) in sources.iter().enumerate() {
            let at = format!("git.sources[{index}] ({:?})", spec.name);
            if checked.iter().any(|s| s.name == spec.name) {
                return Err((
                    *line,
                    format!("{at}: another source has this name; names must be unique"),
                ));
            }
            let source = Source::resolve(spec.clone(), env)
                .map_err(|why| (*line, format!("{at}: {why}")))?;
            checked.push(Arc::new(source));
        }
        let names: Vec<&str> = checked.iter().map(|s| s.name.as_str()).collect();
        let mut compiled: Vec<Rule> = Vec::new();
        for (index, (line, spec)) in rules.iter().enumerate() {
            let place = rules[..index]
                .iter()
                .filter(|(_, r)| r.source == spec.source)
                .count();
            let rule = Rule::resolve(spec.clone(), &names, place)
                .map_err(|why| (*line, format!("git.rules[{index}]: {why}")))?;
            if compiled
                .iter()
                .any(|r| r.source == rule.source && r.name == rule.name)
            {
                return Err((
                    *line,
                    format!(
                        "git.rules[{index}]: another rule of source {:?} is named {:?}; names \
                         must be unique per source",
                        rule.source, rule.name
                    ),
                ));
            }
            compiled.push(rule);
        }
        Ok(GitConfig {
            sources: checked,
            rules: compiled,
        })
    }
}

impl Source {
    /// Checks `spec` and reads the variables it names through `env`. The error is one sentence
    /// naming the field.
    pub fn resolve(
        spec: SourceSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Source, String> {
        entry_name(&spec.name)
            .map_err(|e| format!("{e} (it becomes the path /hooks/git/{{name}})"))?;
        let forge: Forge = spec.forge.parse().map_err(|e| format!("forge: {e}"))?;
        let holds = "the secret the forge signs its hooks with (at least 16 characters, such \
                     as the output of openssl rand -hex 32)";
        let secret = read_variable("secret_env", &spec.secret_env, holds, env)?;
        if secret.chars().count() < MIN_SECRET_CHARS {
            return Err(format!(
                "{} (named by secret_env) is too short: expected {holds}",
                spec.secret_env
            ));
        }
        let token = match &spec.token_env {
            Some(var) => Some(Secret::new(read_variable(
                "token_env",
                var,
                "an API token of the forge, for its compare and commit-status APIs",
                env,
            )?)),
            None => None,
        };
        if let Some(url) = &spec.api_url {
            http_url("api_url", url)?;
        }
        Ok(Source {
            name: spec.name,
            forge,
            secret: Secret::new(secret),
            token,
            api_url: spec.api_url.map(|u| u.trim_end_matches('/').to_owned()),
        })
    }
}

/// Checks everything but the variables' values, which may be set only where the server runs
/// (`muster config check`): each variable stands for a well-formed value.
pub fn check(
    sources: &[(usize, SourceSpec)],
    rules: &[(usize, RuleSpec)],
) -> Result<(), (usize, String)> {
    let stand_in = |_: &str| Some("stand-in-secret-0123456789".to_owned());
    GitConfig::resolve(sources, rules, &stand_in).map(drop)
}
