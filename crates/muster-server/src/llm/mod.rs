//! The `[llm]` section: the language models muster may call (`[[llm.providers]]`, each a
//! [`muster_llm::Provider`] with its price) and what each workflow may spend
//! (`[[llm.budgets]]`, in [`budgets`]). Pure: checked from the config file and the
//! environment, no I/O. The calls themselves, with their ledger, are the verbs of
//! [`crate::ledger`].

pub mod budgets;
pub mod providers;

pub use budgets::{Budget, BudgetSpec};
pub use providers::{LlmConfig, LlmProvider, ProviderSpec};
