//! The generic alert form, for monitors with neither Kuma's nor Alertmanager's shape:
//! `{"monitor": "jellyfin", "status": "firing" | "resolved", "message"?, "key"?, "labels"?,
//! "url"?}`. `key` defaults to the monitor's name.

use serde::Deserialize;
use serde_json::Value;

use super::{
    Alert, AlertState, MAX_MESSAGE, MAX_NAME, Received, Unreadable, bounded, labels_of, link,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Form {
    monitor: String,
    status: String,
    #[serde(default)]
    message: String,
    key: Option<String>,
    labels: Option<Value>,
    url: Option<String>,
}

/// Reads the generic JSON body.
pub fn parse(body: &[u8]) -> Result<Received, Unreadable> {
    let form: Form = serde_json::from_slice(body).map_err(|e| {
        Unreadable(format!(
            "not the generic alert form ({{\"monitor\", \"status\": \"firing\" | \
             \"resolved\", \"message\"?, \"key\"?, \"labels\"?, \"url\"?}}): {e}"
        ))
    })?;
    if form.monitor.trim().is_empty() {
        return Err(Unreadable("monitor is empty".into()));
    }
    let state = match form.status.as_str() {
        "firing" => AlertState::Firing,
        "resolved" => AlertState::Resolved,
        other => {
            return Err(Unreadable(format!(
                "status {other:?} is not firing or resolved"
            )));
        }
    };
    let monitor = bounded(&form.monitor, MAX_NAME);
    Ok(Received::Alerts(vec![Alert {
        key: format!(
            "generic:{}",
            bounded(form.key.as_deref().unwrap_or(&monitor), MAX_NAME)
        ),
        monitor,
        state,
        labels: labels_of(form.labels.as_ref()),
        message: bounded(&form.message, MAX_MESSAGE),
        at: None,
        url: link(form.url.as_deref()),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_generic_form_fires_and_resolves_by_monitor() {
        let fired = json!({"monitor": "nas", "status": "firing", "message": "disk 98%",
                           "labels": {"host": "nas"}});
        let Received::Alerts(a) = parse(fired.to_string().as_bytes()).unwrap() else {
            panic!("alerts")
        };
        assert_eq!(a[0].key, "generic:nas");
        assert_eq!(a[0].state, AlertState::Firing);
        assert_eq!(a[0].labels["host"], "nas");
        let resolved = json!({"monitor": "nas", "status": "resolved", "key": "disk"});
        let Received::Alerts(b) = parse(resolved.to_string().as_bytes()).unwrap() else {
            panic!("alerts")
        };
        assert_eq!(b[0].key, "generic:disk");
        assert_eq!(b[0].state, AlertState::Resolved);
    }

    #[test]
    fn a_bad_form_is_refused_naming_what_is_wrong() {
        let refused = |v: Value| parse(v.to_string().as_bytes()).unwrap_err().0;
        assert!(refused(json!({"monitor": "x", "status": "down"})).contains("status \"down\""));
        assert!(refused(json!({"monitor": " ", "status": "firing"})).contains("monitor is empty"));
        assert!(refused(json!({"status": "firing"})).contains("monitor"));
        assert!(
            refused(json!({"monitor": "x", "status": "firing", "severity": 1}))
                .contains("severity")
        );
    }
}
