//! LLM budgets as pure rules: `[[llm.budgets]]` checked, the period a budget counts over, the
//! verdict before a call (within, or over and what to do), and the two alarms a call can raise
//! (the budget crossed; a spike: today's spend against the median of the seven days before).
//! Days and months are UTC. No I/O: the verbs read what was spent from the ledger.

use chrono::{Datelike, TimeZone, Utc};
use serde::Deserialize;

use crate::store::Spent;

/// How many times the median day a day must spend to be a spike, unless a budget says.
pub const DEFAULT_SPIKE_FACTOR: f64 = 3.0;

/// What a budget counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

/// What happens to a call once the budget is spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenOver {
    /// The call is refused with an error that names the budget.
    #[default]
    Refuse,
    /// The call goes to the budget's `fallback` provider (a local model) instead.
    Fallback,
}

/// One `[[llm.budgets]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// The workflow it limits (`repair`, `canary`, a schedule's name, `test`).
    pub workflow: String,
    pub period: Period,
    /// Tokens in and out, at most, per period.
    pub tokens: Option<u64>,
    /// Money at most, per period, in the price table's currency.
    pub money: Option<f64>,
    #[serde(default)]
    pub over: WhenOver,
    /// The `[[llm.providers]]` entry that takes the calls once the budget is spent
    /// (`over = "fallback"`).
    pub fallback: Option<String>,
    /// A day that spends this many times the median of the seven days before it is a spike.
    pub spike_factor: Option<f64>,
}

/// A budget, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub workflow: String,
    pub period: Period,
    pub tokens: Option<u64>,
    /// Millionths of the currency.
    pub money_micros: Option<i64>,
    pub over: WhenOver,
    pub fallback: Option<String>,
    pub spike_factor: f64,
}

impl Budget {
    /// Checks `spec` against the providers configured; the error is one sentence naming the
    /// field.
    pub fn resolve(spec: BudgetSpec, providers: &[&str]) -> Result<Budget, String> {
        if spec.workflow.trim().is_empty() {
            return Err("workflow is empty; name the workflow it limits, e.g. \"repair\"".into());
        }
        if spec.tokens.is_none() && spec.money.is_none() {
            return Err("set tokens, money or both: a budget with neither limits nothing".into());
        }
        let money_micros = match spec.money {
            Some(m) if !(m.is_finite() && m >= 0.0) => {
                return Err(format!("money must be a sum of zero or more, not {m}"));
            }
            Some(m) => Some((m * 1e6).round() as i64),
            None => None,
        };
        match (spec.over, &spec.fallback) {
            (WhenOver::Fallback, None) => {
                return Err("over = \"fallback\" needs fallback, the provider to use".into());
            }
            (_, Some(name)) if !providers.contains(&name.as_str()) => {
                return Err(format!(
                    "fallback {name:?} is not a [[llm.providers]] entry; configured: {}",
                    if providers.is_empty() {
                        "none".to_owned()
                    } else {
                        providers.join(", ")
                    }
                ));
            }
            _ => {}
        }
        let spike_factor = spec.spike_factor.unwrap_or(DEFAULT_SPIKE_FACTOR);
        if !(spike_factor.is_finite() && spike_factor > 1.0) {
            return Err(format!(
                "spike_factor must be more than 1, not {spike_factor}"
            ));
        }
        Ok(Budget {
            workflow: spec.workflow,
            period: spec.period,
            tokens: spec.tokens,
            money_micros,
            over: spec.over,
            fallback: spec.fallback,
            spike_factor,
        })
    }

    /// Whether `spent` has used the budget up.
    pub fn exhausted(&self, spent: &Spent) -> bool {
        self.tokens.is_some_and(|t| spent.tokens >= t)
            || self.money_micros.is_some_and(|m| spent.cost_micros >= m)
    }

    /// What is left of it, for `/metrics`: tokens and millionths of money (none when not
    /// limited).
    pub fn left(&self, spent: &Spent) -> (Option<u64>, Option<i64>) {
        (
            self.tokens.map(|t| t.saturating_sub(spent.tokens)),
            self.money_micros.map(|m| (m - spent.cost_micros).max(0)),
        )
    }

    /// One line for an error or a notice: `the repair budget of 200000 tokens a day`.
    pub fn describe(&self) -> String {
        let period = match self.period {
            Period::Day => "a day",
            Period::Month => "a month",
        };
        let limits: Vec<String> = [
            self.tokens.map(|t| format!("{t} tokens")),
            self.money_micros
                .map(|m| format!("{:.2} in money", m as f64 / 1e6)),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!(
            "the {} budget of {} {period}",
            self.workflow,
            limits.join(" and ")
        )
    }
}

/// Millionths of money as an operator reads them: cents for sums of a cent or more, else as
/// many decimals as it takes (`0.0007`), so a cheap model's spend never reads as 0.00.
pub fn money(micros: i64) -> String {
    let amount = micros as f64 / 1e6;
    if micros.abs() >= 10_000 || micros == 0 {
        return format!("{amount:.2}");
    }
    let text = format!("{amount:.6}");
    text.trim_end_matches('0').to_owned()
}

/// When the period holding `now_ms` began: UTC midnight, or the first of the month.
pub fn period_start(period: Period, now_ms: i64) -> i64 {
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default()
        .date_naive();
    let first = match period {
        Period::Day => now,
        Period::Month => now.with_day(1).unwrap_or(now),
    };
    first
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0)
}

/// One UTC day in ms.
pub const DAY_MS: i64 = 86_400_000;

/// Whether today (`today`, after the call) is a spike against `before`: the spend of each of
/// the seven days before today, oldest first, a day without calls counting zero. Money is
/// compared when the workflow has a price, else tokens. With no history (a median of zero)
/// nothing is a spike: there is nothing to compare with.
pub fn is_spike(today: &Spent, before: &[Spent; 7], factor: f64) -> bool {
    let by_money = today.cost_micros > 0 || before.iter().any(|d| d.cost_micros > 0);
    let value = |s: &Spent| {
        if by_money {
            s.cost_micros as f64
        } else {
            s.tokens as f64
        }
    };
    let mut days: Vec<f64> = before.iter().map(value).collect();
    days.sort_by(f64::total_cmp);
    let median = days[3];
    median > 0.0 && value(today) > factor * median
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(tokens: u64, cost_micros: i64) -> Spent {
        Spent {
            calls: 1,
            tokens,
            cost_micros,
        }
    }

    fn spec(text: &str) -> BudgetSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn budgets_check_their_limits_and_fallback() {
        let ok = Budget::resolve(
            spec("workflow = \"repair\"\nperiod = \"day\"\ntokens = 1000\nmoney = 1.5"),
            &[],
        )
        .unwrap();
        assert_eq!(ok.money_micros, Some(1_500_000));
        assert_eq!(ok.spike_factor, DEFAULT_SPIKE_FACTOR);
        assert!(!ok.exhausted(&spent(999, 1_499_999)));
        assert!(ok.exhausted(&spent(1000, 0)));
        assert!(ok.exhausted(&spent(0, 1_500_000)));
        assert_eq!(ok.left(&spent(400, 2_000_000)), (Some(600), Some(0)));
        assert_eq!(
            ok.describe(),
            "the repair budget of 1000 tokens and 1.50 in money a day"
        );
        let refused =
            |text: &str, providers: &[&str]| Budget::resolve(spec(text), providers).unwrap_err();
        assert!(refused("workflow = \"r\"\nperiod = \"day\"", &[]).contains("set tokens"));
        assert!(
            refused(
                "workflow = \"r\"\nperiod = \"day\"\ntokens = 1\nover = \"fallback\"",
                &[]
            )
            .contains("needs fallback")
        );
        assert!(
            refused(
                "workflow = \"r\"\nperiod = \"day\"\ntokens = 1\nover = \"fallback\"\nfallback = \"nope\"",
                &["local"]
            )
            .contains("configured: local")
        );
        assert!(refused("workflow = \"r\"\nperiod = \"day\"\nmoney = -1.0", &[]).contains("money"));
        assert!(
            refused(
                "workflow = \"r\"\nperiod = \"day\"\ntokens = 1\nspike_factor = 0.5",
                &[]
            )
            .contains("spike_factor")
        );
        assert!(toml::from_str::<BudgetSpec>("workflow = \"r\"\nperiod = \"week\"").is_err());
    }

    #[test]
    fn money_reads_in_cents_or_in_as_many_decimals_as_it_takes() {
        assert_eq!(money(1_500_000), "1.50");
        assert_eq!(money(0), "0.00");
        assert_eq!(money(700), "0.0007");
        assert_eq!(money(2_000), "0.002");
        assert_eq!(money(12_345), "0.01");
    }

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-11-27T21:34:10Z
        let now = 1_795_815_250_000;
        assert_eq!(period_start(Period::Day, now), 1_795_737_600_000);
        assert_eq!(period_start(Period::Month, now), 1_793_491_200_000);
        assert_eq!(
            period_start(Period::Day, 1_795_737_600_000),
            1_795_737_600_000
        );
    }

    #[test]
    fn a_day_five_times_the_median_is_a_spike_and_an_ordinary_one_is_not() {
        let week = [
            spent(100, 1_000),
            spent(120, 1_200),
            spent(90, 900),
            spent(110, 1_100),
            spent(100, 1_000),
            spent(0, 0),
            spent(130, 1_300),
        ];
        // Median 1,000 micros.
        assert!(is_spike(&spent(500, 5_000), &week, DEFAULT_SPIKE_FACTOR));
        assert!(!is_spike(&spent(120, 1_100), &week, DEFAULT_SPIKE_FACTOR));
        assert!(
            !is_spike(&spent(500, 5_000), &week, 6.0),
            "the factor decides"
        );
        // Without prices, tokens are compared.
        let tokens_only = week.map(|s| Spent {
            cost_micros: 0,
            ..s
        });
        assert!(is_spike(&spent(500, 0), &tokens_only, DEFAULT_SPIKE_FACTOR));
        assert!(!is_spike(
            &spent(110, 0),
            &tokens_only,
            DEFAULT_SPIKE_FACTOR
        ));
        // No history: nothing to compare with.
        let quiet = [Spent::default(); 7];
        assert!(!is_spike(
            &spent(10_000, 100_000),
            &quiet,
            DEFAULT_SPIKE_FACTOR
        ));
    }
}
