//! Bounds on what clients send: the length and count of every string field of a registration,
//! a heartbeat and a submission, and the characters they may hold. The agent protocol and the
//! operator's verbs check through these, so each field is refused the same way wherever it
//! arrives, with its name (`capabilities[3]: must be at most 200 characters`).
//!
//! The body limit already bounds a request as a whole; these bound what is kept and shown: a
//! capability list is matched on every dispatch round, labels and ids are rendered in pages,
//! and a control character in a kind or lock key would garble a terminal or a log line.
//!
//! The numbers are [`muster_api::limits`], which the OpenAPI document states too. Lengths are
//! counted in characters (Unicode scalar values), as JSON Schema's `maxLength` counts them, so
//! a request the document allows is never refused for its length.

use std::collections::BTreeMap;

use muster_api::SubmitTask;
use muster_api::limits::{
    MAX_CAPABILITIES, MAX_CAPABILITY_CHARS, MAX_KEY_CHARS, MAX_KIND_CHARS, MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS, MAX_LABELS, MAX_MCP_SERVER_BYTES, MAX_MCP_SERVERS, MAX_RETRIES,
};
use serde_json::Value;

use crate::error::ApiError;

fn too_long(field: &str, max: usize) -> ApiError {
    ApiError::invalid(field, format!("must be at most {max} characters"))
}

/// Every field of a submission within its bounds; the error names the first that is not.
/// Operators' submits and the triggers' task templates (checked at load) both go through it.
pub fn submit(req: &SubmitTask) -> Result<(), ApiError> {
    required_text("kind", &req.kind, MAX_KIND_CHARS)?;
    capabilities(&req.capabilities)?;
    if let Some(key) = &req.lock_key {
        required_text("lock_key", key, MAX_KEY_CHARS)?;
    }
    if let Some(key) = &req.idempotency_key {
        required_text("idempotency_key", key, MAX_KEY_CHARS)?;
    }
    labels(&req.labels)?;
    if !(i32::from(i16::MIN)..=i32::from(i16::MAX)).contains(&req.priority) {
        return Err(ApiError::invalid(
            "priority",
            "must be between -32768 and 32767",
        ));
    }
    if req.timeout_s == Some(0) {
        return Err(ApiError::invalid("timeout_s", "must be at least 1"));
    }
    if let Some(n) = req.max_retries
        && n > MAX_RETRIES
    {
        return Err(ApiError::invalid(
            "max_retries",
            format!("must be at most {MAX_RETRIES}"),
        ));
    }
    Ok(())
}

/// Whether `value` has more than `max` characters.
pub fn longer_than(value: &str, max: usize) -> bool {
    // Every character is at least one byte: most strings are decided without counting.
    value.len() > max && value.chars().nth(max).is_some()
}

fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

/// What is wrong with a text value; the field is named only once something is, so a valid
/// request builds no field names (`capabilities[3]`) at all.
enum Fault {
    Empty,
    TooLong(usize),
    Control,
}

fn judge(value: &str, max: usize, required: bool) -> Option<Fault> {
    if required && value.trim().is_empty() {
        return Some(Fault::Empty);
    }
    if longer_than(value, max) {
        return Some(Fault::TooLong(max));
    }
    has_control(value).then_some(Fault::Control)
}

fn refuse(field: &str, fault: Fault) -> ApiError {
    match fault {
        Fault::Empty => ApiError::invalid(field, "must not be empty"),
        Fault::TooLong(max) => too_long(field, max),
        Fault::Control => ApiError::invalid(field, "must not contain control characters"),
    }
}

/// A text field that may be empty: at most `max` bytes, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    judge(value, max, false).map_or(Ok(()), |fault| Err(refuse(field, fault)))
}

/// A text field that must say something: not blank, at most `max` bytes, no control characters.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    judge(value, max, true).map_or(Ok(()), |fault| Err(refuse(field, fault)))
}

/// A list of at most `max` entries.
pub fn count<T>(field: &str, items: &[T], max: usize) -> Result<(), ApiError> {
    if items.len() > max {
        return Err(ApiError::invalid(field, format!("at most {max} entries")));
    }
    Ok(())
}

/// Capabilities: at most [`MAX_CAPABILITIES`], each named and bounded.
pub fn capabilities(capabilities: &[String]) -> Result<(), ApiError> {
    count("capabilities", capabilities, MAX_CAPABILITIES)?;
    for (i, cap) in capabilities.iter().enumerate() {
        if let Some(fault) = judge(cap, MAX_CAPABILITY_CHARS, true) {
            return Err(refuse(&format!("capabilities[{i}]"), fault));
        }
    }
    Ok(())
}

/// Labels: at most [`MAX_LABELS`], keys named and bounded, values bounded.
pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("at most {MAX_LABELS} entries"),
        ));
    }
    for (key, value) in labels {
        if key.trim().is_empty() {
            return Err(ApiError::invalid("labels", "a key must not be empty"));
        }
        // The key is not echoed: it may be the very thing that is too long.
        if longer_than(key, MAX_LABEL_KEY_CHARS) {
            return Err(ApiError::invalid(
                "labels",
                format!("a key must be at most {MAX_LABEL_KEY_CHARS} characters"),
            ));
        }
        if has_control(key) {
            return Err(ApiError::invalid(
                "labels",
                "a key must not contain control characters",
            ));
        }
        if let Some(fault) = judge(value, MAX_LABEL_VALUE_CHARS, false) {
            return Err(refuse(&format!("labels.{key}"), fault));
        }
    }
    Ok(())
}

/// MCP server descriptions, kept as the agent sent them: at most [`MAX_MCP_SERVERS`], each at
/// most [`MAX_MCP_SERVER_BYTES`] as JSON.
pub fn mcp_servers(servers: &[Value]) -> Result<(), ApiError> {
    count("mcp_servers", servers, MAX_MCP_SERVERS)?;
    for (i, server) in servers.iter().enumerate() {
        if server.to_string().len() > MAX_MCP_SERVER_BYTES {
            return Err(ApiError::invalid(
                &format!("mcp_servers[{i}]"),
                format!("must be at most {MAX_MCP_SERVER_BYTES} bytes as JSON"),
            ));
        }
    }
    Ok(())
}

/// The name of a config entry (a git source, an LLM provider): 1 to 64 ASCII letters, digits,
/// `_`, `.` or `-`, since it becomes a path segment and a metric label.
pub fn entry_name(name: &str) -> Result<(), String> {
    // Names are path segments (`/api/v1/schedules/{name}`): "." and ".." would be folded
    // away by every browser and HTTP client.
    let fits = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.chars().any(|c| c != '.');
    if fits {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} is invalid: expected 1 to 64 letters, digits, _, . or -, not dots \
             alone"
        ))
    }
}

/// An http or https URL from the config file; the error names `field`.
pub fn http_url(field: &str, text: &str) -> Result<url::Url, String> {
    let parsed =
        url::Url::parse(text).map_err(|e| format!("{field} {text:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{field} {text:?} is not an http or https URL"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use muster_api::limits::{REQUIRED_TEXT_PATTERN, TEXT_PATTERN};

    use super::*;

    /// Every character the checks might treat specially: all of the first planes' worth that
    /// hold controls and white space, and some beyond.
    fn characters() -> impl Iterator<Item = char> {
        (0..=0x3100)
            .chain([0xfeff, 0xfffd, 0xffff, 0x1_f600, 0x10_ffff])
            .filter_map(char::from_u32)
    }

    /// The OpenAPI document's patterns accept exactly what these checks accept, character by
    /// character (Rust's regex crate reads the `\uXXXX` escapes as ECMA 262 and Python do).
    #[test]
    fn the_documents_patterns_agree_with_the_checks() {
        let text_pattern = regex::Regex::new(TEXT_PATTERN).unwrap();
        let required_pattern = regex::Regex::new(REQUIRED_TEXT_PATTERN).unwrap();
        for c in characters() {
            for value in [c.to_string(), format!("a{c}b"), format!(" {c} ")] {
                assert_eq!(
                    text_pattern.is_match(&value),
                    text("f", &value, 10).is_ok(),
                    "{value:?}"
                );
                assert_eq!(
                    required_pattern.is_match(&value),
                    required_text("f", &value, 10).is_ok(),
                    "{value:?}"
                );
            }
        }
        assert!(text_pattern.is_match("") && !required_pattern.is_match(""));
        assert!(!text_pattern.is_match("a\n") && !required_pattern.is_match("a\n"));
    }

    fn message(result: Result<(), ApiError>) -> String {
        result.expect_err("refused").message
    }

    #[test]
    fn errors_name_the_field_and_the_bound() {
        let caps: Vec<String> = ["a", "b", "c", &"x".repeat(201)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            message(capabilities(&caps)),
            "capabilities[3]: must be at most 200 characters"
        );
        assert_eq!(
            message(required_text("kind", "a\u{7f}", 200)),
            "kind: must not contain control characters"
        );
        assert_eq!(
            message(required_text("kind", " ", 200)),
            "kind: must not be empty"
        );
        assert!(text("host", "", 255).is_ok());
        let many: BTreeMap<String, String> =
            (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(message(labels(&many)), "labels: at most 50 entries");
        let one = BTreeMap::from([("team".to_owned(), "y".repeat(501))]);
        assert_eq!(
            message(labels(&one)),
            "labels.team: must be at most 500 characters"
        );
        // Characters are counted, as JSON Schema's maxLength counts them, not bytes.
        assert!(required_text("kind", &"é".repeat(200), 200).is_ok());
        assert!(required_text("kind", &"😀".repeat(200), 200).is_ok());
        assert!(required_text("kind", &"é".repeat(201), 200).is_err());
        assert!(!longer_than("", 0) && longer_than("a", 0));
    }
}
