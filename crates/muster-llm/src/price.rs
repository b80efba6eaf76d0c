//! [`Price`]: what a model's tokens cost, and so what one call cost.

use crate::chat::Usage;

/// Money per million tokens, in whatever currency the prices are written in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// The price of input read from the prompt cache; `None` when the provider charges it as
    /// ordinary input.
    pub cached_input_per_mtok: Option<f64>,
}

impl Price {
    /// What `usage` cost. Cached input is part of `input_tokens` ([`Usage`]), so it is priced
    /// once, at the cached rate.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        let cached_price = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        (uncached as f64 * self.input_per_mtok
            + cached as f64 * cached_price
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cached: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn cost_prices_input_and_output_per_million_tokens() {
        let price = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: None,
        };
        assert_eq!(price.cost(&Usage::default()), 0.0);
        assert!(close(price.cost(&usage(1_000_000, 0, 0)), 3.0));
        assert!(close(price.cost(&usage(0, 1_000_000, 0)), 15.0));
        assert!(close(price.cost(&usage(2_000, 500, 0)), 0.0135));
        // Without a cached price, cached input costs what input costs.
        assert!(close(
            price.cost(&usage(2_000, 500, 1_500)),
            price.cost(&usage(2_000, 500, 0))
        ));
    }

    #[test]
    fn cached_input_is_priced_once_at_its_own_rate() {
        let price = Price {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: Some(1.25),
        };
        // 1,000 uncached at 2.5, 3,000 cached at 1.25, 200 output at 10.
        let expected = (1_000.0 * 2.5 + 3_000.0 * 1.25 + 200.0 * 10.0) / 1e6;
        assert!(close(price.cost(&usage(4_000, 200, 3_000)), expected));
        // A provider reporting more cached than input tokens is not charged below zero.
        assert!(close(price.cost(&usage(100, 0, 500)), 100.0 * 1.25 / 1e6));
    }
}
