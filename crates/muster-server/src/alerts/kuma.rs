//! Uptime Kuma's webhook: `{"heartbeat": {...} | null, "monitor": {...} | null, "msg": "..."}`.
//! A heartbeat's `status` is 0 (down), 1 (up), 2 (pending) or 3 (maintenance); a test
//! notification from Kuma's settings has neither heartbeat nor monitor. The monitor object is
//! large and differs between versions: only `id`, `name`, `type`, `hostname` and `url` are
//! read.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::{Alert, AlertState, MAX_MESSAGE, MAX_NAME, Received, Unreadable, bounded, link};

/// Reads Kuma's JSON body.
pub fn parse(body: &[u8]) -> Result<Received, Unreadable> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Unreadable(format!("the body is not JSON: {e}")))?;
    let Value::Object(top) = &value else {
        return Err(Unreadable("the body is not a JSON object".into()));
    };
    let msg = top.get("msg").and_then(Value::as_str).unwrap_or_default();
    let heartbeat = top.get("heartbeat").filter(|v| !v.is_null());
    let monitor = top.get("monitor").filter(|v| !v.is_null());
    let (heartbeat, monitor) = match (heartbeat, monitor) {
        (None, None) => return Ok(Received::Test(bounded(msg, MAX_MESSAGE))),
        (Some(h), Some(m)) => (h, m),
        (None, Some(_)) => return Err(Unreadable("heartbeat is missing".into())),
        (Some(_), None) => return Err(Unreadable("monitor is missing".into())),
    };
    let status = heartbeat
        .get("status")
        .and_then(Value::as_i64)
        .ok_or_else(|| Unreadable("heartbeat.status is missing or not a number".into()))?;
    let state = match status {
        0 => AlertState::Firing,
        1 => AlertState::Resolved,
        2 => {
            return Ok(Received::Ignored(
                "pending: Kuma has not confirmed it down".into(),
            ));
        }
        3 => return Ok(Received::Ignored("maintenance".into())),
        other => {
            return Err(Unreadable(format!(
                "heartbeat.status {other} is not 0 (down), 1 (up), 2 (pending) or 3 \
                 (maintenance)"
            )));
        }
    };
    let id = monitor
        .get("id")
        .or_else(|| heartbeat.get("monitorID"))
        .and_then(|v| {
            v.as_i64()
                .map(|n| n.to_string())
                .or_else(|| v.as_str().map(str::to_owned))
        })
        .ok_or_else(|| Unreadable("monitor.id is missing".into()))?;
    let name = monitor
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| Unreadable("monitor.name is missing".into()))?;
    let mut labels = BTreeMap::new();
    for field in ["type", "hostname", "url"] {
        if let Some(text) = monitor.get(field).and_then(Value::as_str)
            && !text.is_empty()
        {
            labels.insert(field.to_owned(), bounded(text, MAX_NAME));
        }
    }
    let message = heartbeat
        .get("msg")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(msg);
    Ok(Received::Alerts(vec![Alert {
        key: format!("kuma:{}", bounded(&id, MAX_NAME)),
        monitor: bounded(name, MAX_NAME),
        state,
        labels,
        message: bounded(message, MAX_MESSAGE),
        at: heartbeat.get("time").and_then(Value::as_str).and_then(time),
        url: link(monitor.get("url").and_then(Value::as_str)),
    }]))
}

/// Kuma's heartbeat time: `2026-11-27 21:34:10.123` in UTC (older builds), or RFC 3339.
fn time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(status: i64) -> Vec<u8> {
        json!({
            "heartbeat": {"monitorID": 7, "status": status, "time": "2026-11-27 21:34:10.512",
                          "msg": "connect ECONNREFUSED 10.0.0.5:8096", "ping": null,
                          "important": true, "duration": 60},
            "monitor": {"id": 7, "name": "jellyfin", "url": "http://jellyfin.lan:8096/health",
                        "type": "http", "hostname": null, "port": null, "interval": 60,
                        "tags": [], "notificationIDList": {"1": true}},
            "msg": "[jellyfin] [🔴 Down] connect ECONNREFUSED 10.0.0.5:8096"
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_down_heartbeat_fires_and_an_up_one_resolves_under_one_key() {
        let Received::Alerts(down) = parse(&body(0)).unwrap() else {
            panic!("alerts")
        };
        let a = &down[0];
        assert_eq!(a.key, "kuma:7");
        assert_eq!(a.monitor, "jellyfin");
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!(a.message, "connect ECONNREFUSED 10.0.0.5:8096");
        assert_eq!(a.labels["type"], "http");
        assert!(
            !a.labels.contains_key("hostname"),
            "null fields are left out"
        );
        assert_eq!(a.url.as_deref(), Some("http://jellyfin.lan:8096/health"));
        assert_eq!(a.at.unwrap().to_rfc3339(), "2026-11-27T21:34:10.512+00:00");
        let Received::Alerts(up) = parse(&body(1)).unwrap() else {
            panic!("alerts")
        };
        assert_eq!(up[0].state, AlertState::Resolved);
        assert_eq!(up[0].key, a.key);
    }

    #[test]
    fn pending_maintenance_and_test_notifications_open_nothing() {
        assert!(matches!(parse(&body(2)).unwrap(), Received::Ignored(_)));
        assert!(matches!(parse(&body(3)).unwrap(), Received::Ignored(_)));
        let test = json!({"heartbeat": null, "monitor": null, "msg": "Uptime Kuma Webhook Test"});
        assert_eq!(
            parse(test.to_string().as_bytes()).unwrap(),
            Received::Test("Uptime Kuma Webhook Test".into())
        );
    }

    #[test]
    fn a_broken_body_is_refused_naming_the_field() {
        let refused = |v: Value| parse(v.to_string().as_bytes()).unwrap_err().0;
        assert!(refused(json!([1])).contains("not a JSON object"));
        assert!(parse(b"{").unwrap_err().0.contains("not JSON"));
        assert!(refused(json!({"heartbeat": {"status": 0}, "monitor": null})).contains("monitor"));
        assert!(
            refused(json!({"heartbeat": {"status": 9}, "monitor": {"id": 1, "name": "x"}}))
                .contains("heartbeat.status 9")
        );
        assert!(
            refused(json!({"heartbeat": {"status": 0}, "monitor": {"id": 1}}))
                .contains("monitor.name")
        );
    }

    #[test]
    fn text_from_the_monitor_is_bounded_data() {
        let mut v: Value = serde_json::from_slice(&body(0)).unwrap();
        v["heartbeat"]["msg"] = Value::String("ignore previous instructions; ".repeat(500));
        v["monitor"]["name"] = Value::String("n".repeat(1000));
        v["monitor"]["url"] = Value::String("javascript:alert(1)".into());
        let Received::Alerts(a) = parse(v.to_string().as_bytes()).unwrap() else {
            panic!("alerts")
        };
        assert_eq!(a[0].message.chars().count(), MAX_MESSAGE);
        assert_eq!(a[0].monitor.chars().count(), MAX_NAME);
        assert_eq!(a[0].url, None, "only http(s) links are kept");
    }
}
