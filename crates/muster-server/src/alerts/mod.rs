//! Monitoring alerts read without I/O: Uptime Kuma's webhook, Alertmanager's webhook (version
//! 4) and a generic JSON form, each read into [`Alert`]s, the one shape incidents are opened,
//! folded and closed from. Text in an alert (a monitor's name, a message) is data: it is kept
//! as text, bounded, and never read as an instruction.

pub mod alertmanager;
pub mod generic;
pub mod kuma;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// Longest message kept of an alert, in characters: enough for a monitor's error, and a bound
/// on what an alert can put in front of a model.
pub const MAX_MESSAGE: usize = 2_000;
/// Longest name, key or label value kept, in characters.
pub const MAX_NAME: usize = 200;
/// Most labels kept of one alert.
pub const MAX_LABELS: usize = 64;

/// Whether the thing an alert is about is down or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Resolved,
}

/// One alert about one monitored thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// What fires and resolves together: Uptime Kuma's monitor id, Alertmanager's fingerprint,
    /// the generic form's `key` (or its monitor). Alerts of one key fold into one incident.
    pub key: String,
    /// The monitor's name, as `[[repair.targets]]` globs match it (Alertmanager:
    /// `alertname`).
    pub monitor: String,
    pub state: AlertState,
    /// Labels to match targets by: Alertmanager's own; Uptime Kuma's monitor type, host name
    /// and URL.
    pub labels: BTreeMap<String, String>,
    /// What the monitor says (cut to [`MAX_MESSAGE`]).
    pub message: String,
    /// When it started firing or resolved, when the monitor says.
    pub at: Option<DateTime<Utc>>,
    /// A link back to the monitor, when it gives one.
    pub url: Option<String>,
}

/// What a webhook body came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Alerts to act on (Alertmanager sends several in one group).
    Alerts(Vec<Alert>),
    /// A test notification (Uptime Kuma's "Test" button): answered, nothing opened.
    Test(String),
    /// A state that opens and closes nothing (Uptime Kuma's pending and maintenance).
    Ignored(String),
}

/// Why a body was refused; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// `text` cut to `max` characters.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

/// A link back to the monitor, kept only when it is http(s) (never `javascript:` and the
/// like, since pages show it as a link), bounded.
pub(crate) fn link(text: Option<&str>) -> Option<String> {
    text.filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(|u| bounded(u, MAX_NAME))
}

/// A string label map from JSON, bounded; values that are not strings are written as JSON.
pub(crate) fn labels_of(value: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    let Some(serde_json::Value::Object(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .take(MAX_LABELS)
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (bounded(k, MAX_NAME), bounded(&v, MAX_NAME))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("héllo", 2), "hé");
        assert_eq!(bounded("hi", 5), "hi");
        assert_eq!(bounded("", 0), "");
    }

    #[test]
    fn labels_are_strings_and_bounded() {
        let v = serde_json::json!({"a": "x", "n": 3, "long": "y".repeat(500)});
        let labels = labels_of(Some(&v));
        assert_eq!(labels["a"], "x");
        assert_eq!(labels["n"], "3");
        assert_eq!(labels["long"].chars().count(), MAX_NAME);
        assert!(labels_of(Some(&serde_json::json!([1]))).is_empty());
        assert!(labels_of(None).is_empty());
    }
}
