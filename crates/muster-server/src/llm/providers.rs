//! `[[llm.providers]]`: one endpoint and model each, its key read from `key_env`, and its
//! price per million tokens (none: the calls cost nothing, as a local model's do).

use muster_llm::{Api, Price, Provider};
use serde::Deserialize;
use std::sync::Arc;

use super::budgets::{Budget, BudgetSpec};
use crate::bounds::{entry_name, http_url};
use crate::secret::read_variable;

/// One `[[llm.providers]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    /// `ollama`, `openai` (any OpenAI-compatible endpoint) or `anthropic`.
    pub api: String,
    /// Ollama: `http://host:11434`; OpenAI-compatible: the base before `/chat/completions`;
    /// Anthropic: `https://api.anthropic.com`.
    pub url: String,
    pub model: String,
    /// The variable holding the API key (none for a local Ollama).
    pub key_env: Option<String>,
    /// Per attempt, as a duration (`60s`).
    pub timeout: Option<String>,
    pub max_retries: Option<u32>,
    /// Money per million tokens.
    pub price: Option<PriceSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub input: f64,
    pub output: f64,
    /// Input tokens read from the provider's cache, when it prices them apart.
    pub cached_input: Option<f64>,
}

/// A provider, checked, with its key read. Equal to another when configured the same way,
/// the key included (for reloads: a new key in the environment counts as a change).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmProvider {
    pub provider: Provider,
    pub price: Option<Price>,
}

/// The `[llm]` section, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmConfig {
    pub providers: Vec<Arc<LlmProvider>>,
    pub budgets: Vec<Budget>,
}

impl LlmConfig {
    pub fn provider(&self, name: &str) -> Option<&Arc<LlmProvider>> {
        self.providers.iter().find(|p| p.provider.name == name)
    }

    pub fn budget(&self, workflow: &str) -> Option<&Budget> {
        self.budgets.iter().find(|b| b.workflow == workflow)
    }

    /// Checks every provider and budget, reading the providers' keys through `env`; an error
    /// names the entry, for the caller to prefix with file and line.
    pub fn resolve(
        providers: &[(usize, ProviderSpec)],
        budgets: &[(usize, BudgetSpec)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LlmConfig, (usize, String)> {
        let mut checked: Vec<Arc<LlmProvider>> = Vec::new();
        for (index, (line, spec)) in providers.iter().enumerate() {
            let at = format!("llm.providers[{index}] ({:?})", spec.name);
            if checked.iter().any(|p| p.provider.name == spec.name) {
                return Err((
                    *line,
                    format!("{at}: another provider has this name; names must be unique"),
                ));
            }
            let provider = resolve_provider(spec.clone(), env)
                .map_err(|why| (*line, format!("{at}: {why}")))?;
            checked.push(Arc::new(provider));
        }
        let names: Vec<&str> = checked.iter().map(|p| p.provider.name.as_str()).collect();
        let mut limits: Vec<Budget> = Vec::new();
        for (index, (line, spec)) in budgets.iter().enumerate() {
            let budget = Budget::resolve(spec.clone(), &names)
                .map_err(|why| (*line, format!("llm.budgets[{index}]: {why}")))?;
            if limits.iter().any(|b| b.workflow == budget.workflow) {
                return Err((
                    *line,
                    format!(
                        "llm.budgets[{index}]: workflow {:?} has a budget already; one per \
                         workflow",
                        budget.workflow
                    ),
                ));
            }
            limits.push(budget);
        }
        Ok(LlmConfig {
            providers: checked,
            budgets: limits,
        })
    }
}

fn resolve_provider(
    spec: ProviderSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LlmProvider, String> {
    entry_name(&spec.name)?;
    let api: Api = spec.api.parse()?;
    let parsed = http_url("url", &spec.url)?;
    // A key in the URL would show wherever the URL does (pages, logs): it belongs in key_env.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "url carries a user name or password: put the key in a variable named \
                    by key_env instead"
                .into(),
        );
    }
    if spec.model.trim().is_empty() {
        return Err("model is empty; name the model, e.g. \"qwen2.5:7b\"".into());
    }
    let key = match &spec.key_env {
        Some(var) => Some(read_variable(
            "key_env",
            var,
            "the provider's API key",
            env,
        )?),
        None => None,
    };
    let timeout = match &spec.timeout {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| format!("timeout {text:?} is invalid: {e} (e.g. 60s or 2m)"))?,
        None => Provider::DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err("timeout must be more than 0s".into());
    }
    let price = match spec.price {
        Some(p) => {
            for (field, value) in [
                ("input", Some(p.input)),
                ("output", Some(p.output)),
                ("cached_input", p.cached_input),
            ] {
                if let Some(v) = value
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(format!("price.{field} must be zero or more, not {v}"));
                }
            }
            Some(Price {
                input_per_mtok: p.input,
                output_per_mtok: p.output,
                cached_input_per_mtok: p.cached_input,
            })
        }
        None => None,
    };
    Ok(LlmProvider {
        provider: Provider {
            name: spec.name,
            api,
            url: spec.url.trim_end_matches('/').to_owned(),
            model: spec.model,
            key,
            timeout,
            max_retries: spec.max_retries.unwrap_or(Provider::DEFAULT_MAX_RETRIES),
        },
        price,
    })
}

/// Checks everything but the variables' values, which may be set only where the server runs.
pub fn check(
    providers: &[(usize, ProviderSpec)],
    budgets: &[(usize, BudgetSpec)],
) -> Result<(), (usize, String)> {
    let stand_in = |_: &str| Some("stand-in-key".to_owned());
    LlmConfig::resolve(providers, budgets, &stand_in).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(providers: &[&str], budgets: &[&str]) -> Result<LlmConfig, String> {
        let providers: Vec<(usize, ProviderSpec)> = providers
            .iter()
            .map(|p| (1, toml::from_str(p).unwrap()))
            .collect();
        let budgets: Vec<(usize, BudgetSpec)> = budgets
            .iter()
            .map(|b| (2, toml::from_str(b).unwrap()))
            .collect();
        LlmConfig::resolve(&providers, &budgets, &|name| {
            (name == "KEY").then(|| "sk-0123".to_owned())
        })
        .map_err(|(line, why)| format!("{line}: {why}"))
    }

    const LOCAL: &str =
        "name = \"local\"\napi = \"ollama\"\nurl = \"http://ai.lan:11434/\"\nmodel = \"qwen\"";

    #[test]
    fn providers_are_checked_and_their_keys_read() {
        let ok = resolve(
            &[
                LOCAL,
                "name = \"cloud\"\napi = \"openai\"\nurl = \"https://api.example/v1\"\nmodel = \"m\"\n\
                 key_env = \"KEY\"\ntimeout = \"30s\"\nprice = { input = 0.5, output = 1.5 }",
            ],
            &["workflow = \"repair\"\nperiod = \"day\"\ntokens = 10\nover = \"fallback\"\nfallback = \"local\""],
        )
        .unwrap();
        let local = ok.provider("local").unwrap();
        assert_eq!(
            local.provider.url, "http://ai.lan:11434",
            "a trailing slash is dropped"
        );
        assert_eq!(local.price, None);
        let cloud = ok.provider("cloud").unwrap();
        assert_eq!(cloud.provider.key.as_deref(), Some("sk-0123"));
        assert_eq!(cloud.provider.timeout, std::time::Duration::from_secs(30));
        assert!(
            !format!("{ok:?}").contains("sk-0123"),
            "the key never prints"
        );
        assert_eq!(
            ok.budget("repair").unwrap().fallback.as_deref(),
            Some("local")
        );
    }

    #[test]
    fn a_bad_provider_or_budget_is_refused_naming_its_entry_and_field() {
        let refused =
            |providers: &[&str], budgets: &[&str]| resolve(providers, budgets).unwrap_err();
        let e = refused(&[&LOCAL.replace("ollama", "gemini")], &[]);
        assert!(
            e.starts_with("1: llm.providers[0] (\"local\"): api \"gemini\""),
            "{e}"
        );
        let e = refused(
            &[&LOCAL.replace("http://ai.lan", "http://me:secret@ai.lan")],
            &[],
        );
        assert!(e.contains("key_env") && !e.contains("secret"), "{e}");
        let e = refused(&[LOCAL, LOCAL], &[]);
        assert!(e.contains("another provider has this name"), "{e}");
        let e = refused(&[&format!("{LOCAL}\nkey_env = \"MISSING\"")], &[]);
        assert!(e.contains("MISSING"), "{e}");
        let e = refused(
            &[&format!(
                "{LOCAL}\nprice = {{ input = -1.0, output = 0.0 }}"
            )],
            &[],
        );
        assert!(e.contains("price.input"), "{e}");
        let e = refused(
            &[LOCAL],
            &[
                "workflow = \"r\"\nperiod = \"day\"\ntokens = 1",
                "workflow = \"r\"\nperiod = \"month\"\ntokens = 2",
            ],
        );
        assert!(
            e.starts_with("2: llm.budgets[1]") && e.contains("has a budget already"),
            "{e}"
        );
    }
}
