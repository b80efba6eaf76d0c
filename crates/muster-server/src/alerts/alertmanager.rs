//! Alertmanager's webhook, version 4: a group (`status`, `groupKey`, `truncatedAlerts`,
//! `commonLabels`, …) of `alerts`, each with its own `status`, `labels`, `annotations`,
//! `startsAt`, `endsAt` (`0001-01-01T00:00:00Z` while firing) and `fingerprint`. A group is
//! sent again every group and repeat interval, so the same alert arrives many times: the
//! fingerprint keeps them one incident.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    Alert, AlertState, MAX_MESSAGE, MAX_NAME, Received, Unreadable, bounded, labels_of, link,
};

/// Reads Alertmanager's JSON body.
pub fn parse(body: &[u8]) -> Result<Received, Unreadable> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Unreadable(format!("the body is not JSON: {e}")))?;
    let Value::Object(top) = &value else {
        return Err(Unreadable("the body is not a JSON object".into()));
    };
    match top.get("version").and_then(Value::as_str) {
        Some("4") => {}
        Some(other) => {
            return Err(Unreadable(format!(
                "version {other:?} is not the webhook version this reads (\"4\")"
            )));
        }
        None => {
            return Err(Unreadable(
                "version is missing: not an Alertmanager webhook".into(),
            ));
        }
    }
    let alerts = top
        .get("alerts")
        .and_then(Value::as_array)
        .ok_or_else(|| Unreadable("alerts is missing or not a list".into()))?;
    let mut out = Vec::with_capacity(alerts.len());
    for (i, alert) in alerts.iter().enumerate() {
        out.push(read_alert(alert).map_err(|why| Unreadable(format!("alerts[{i}].{why}")))?);
    }
    Ok(Received::Alerts(out))
}

fn read_alert(alert: &Value) -> Result<Alert, String> {
    let state = match alert.get("status").and_then(Value::as_str) {
        Some("firing") => AlertState::Firing,
        Some("resolved") => AlertState::Resolved,
        Some(other) => return Err(format!("status {other:?} is not firing or resolved")),
        None => return Err("status is missing".into()),
    };
    let fingerprint = alert
        .get("fingerprint")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .ok_or("fingerprint is missing")?;
    let labels = labels_of(alert.get("labels"));
    let monitor = labels
        .get("alertname")
        .cloned()
        .ok_or("labels.alertname is missing")?;
    let annotations = labels_of(alert.get("annotations"));
    let message = ["summary", "description", "message"]
        .iter()
        .filter_map(|k| annotations.get(*k))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" — ");
    let time = |field: &str| {
        alert
            .get(field)
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            // Alertmanager's zero time means "not yet".
            .filter(|t| t.timestamp() > 0)
    };
    let at = match state {
        AlertState::Firing => time("startsAt"),
        AlertState::Resolved => time("endsAt").or_else(|| time("startsAt")),
    };
    Ok(Alert {
        key: format!("am:{}", bounded(fingerprint, MAX_NAME)),
        monitor,
        state,
        labels,
        message: bounded(&message, MAX_MESSAGE),
        at,
        url: link(alert.get("generatorURL").and_then(Value::as_str)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(status: &str) -> Value {
        json!({
            "version": "4",
            "groupKey": "{}:{alertname=\"ServiceDown\"}",
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "muster",
            "groupLabels": {"alertname": "ServiceDown"},
            "commonLabels": {"alertname": "ServiceDown", "severity": "critical"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.lan:9093",
            "alerts": [
                {"status": "firing",
                 "labels": {"alertname": "ServiceDown", "instance": "jellyfin:8096", "job": "media"},
                 "annotations": {"summary": "jellyfin is down", "description": "no answer for 2m"},
                 "startsAt": "2026-11-27T21:30:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
                 "generatorURL": "http://prometheus.lan:9090/graph?g0.expr=up", "fingerprint": "3f2a9c1b0d4e5f60"},
                {"status": "resolved",
                 "labels": {"alertname": "ServiceDown", "instance": "sonarr:8989", "job": "media"},
                 "annotations": {"summary": "sonarr is down"},
                 "startsAt": "2026-11-27T21:00:00Z", "endsAt": "2026-11-27T21:20:00Z",
                 "generatorURL": "", "fingerprint": "7b8c9d0e1f2a3b4c"}
            ]
        })
    }

    #[test]
    fn a_group_becomes_one_alert_per_member_keyed_by_fingerprint() {
        let body = group("firing").to_string();
        let Received::Alerts(alerts) = parse(body.as_bytes()).unwrap() else {
            panic!("alerts")
        };
        assert_eq!(alerts.len(), 2);
        let jellyfin = &alerts[0];
        assert_eq!(jellyfin.key, "am:3f2a9c1b0d4e5f60");
        assert_eq!(jellyfin.monitor, "ServiceDown");
        assert_eq!(jellyfin.state, AlertState::Firing);
        assert_eq!(jellyfin.labels["instance"], "jellyfin:8096");
        assert_eq!(jellyfin.message, "jellyfin is down — no answer for 2m");
        assert_eq!(
            jellyfin.at.unwrap().to_rfc3339(),
            "2026-11-27T21:30:00+00:00"
        );
        assert!(
            jellyfin
                .url
                .as_deref()
                .unwrap()
                .starts_with("http://prometheus.lan")
        );
        let sonarr = &alerts[1];
        assert_eq!(sonarr.state, AlertState::Resolved);
        assert_eq!(sonarr.at.unwrap().to_rfc3339(), "2026-11-27T21:20:00+00:00");
        assert_eq!(sonarr.url, None);
    }

    #[test]
    fn other_versions_and_broken_alerts_are_refused_naming_the_field() {
        let refused = |v: Value| parse(v.to_string().as_bytes()).unwrap_err().0;
        let mut v = group("firing");
        v["version"] = json!("3");
        assert!(refused(v).contains("version \"3\""));
        assert!(refused(json!({"alerts": []})).contains("version is missing"));
        let mut v = group("firing");
        v["alerts"][1]["fingerprint"] = json!("");
        assert!(refused(v).starts_with("alerts[1].fingerprint"));
        let mut v = group("firing");
        v["alerts"][0]["labels"] = json!({"instance": "x"});
        assert!(refused(v).starts_with("alerts[0].labels.alertname"));
        let mut v = group("firing");
        v["alerts"][0]["status"] = json!("pending");
        assert!(refused(v).contains("status \"pending\""));
    }

    #[test]
    fn an_empty_group_is_no_alerts() {
        let mut v = group("resolved");
        v["alerts"] = json!([]);
        assert_eq!(
            parse(v.to_string().as_bytes()).unwrap(),
            Received::Alerts(Vec::new())
        );
    }
}
