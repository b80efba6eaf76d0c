//! The `http` executor: calls a URL under one of the allow-listed prefixes and reports the
//! status and body. Redirects are not followed (they could leave the allow-list).
//!
//! Payload: `{"method": "POST", "url": "http://ha.lan:8123/api/services/light/turn_on",
//! "headers": {"authorization": "Bearer …"}, "body": {...}}`.
//!
//! The URL is normalised before it is checked, and the normalised URL is the one called: `%2e`
//! is decoded and dot segments are resolved, so `/api/../secret` and `/api/%2e%2e/secret` are
//! checked as `/secret`. An encoded `/` or `\` in the path is refused outright, since servers
//! disagree on whether it separates segments. Headers that steer the connection or the message
//! framing (hop-by-hop headers, `Host`, `Content-Length`) are the agent's, never the task's.

use std::time::Duration;

use async_trait::async_trait;
use muster_api::LogStream;
use muster_client::{Handler, HandlerError, TaskContext};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use url::Url;

/// Largest response body kept in the result.
const MAX_BODY: usize = 1024 * 1024;

/// Headers a task may not set. The hop-by-hop headers of RFC 9110 §7.6.1 (and `Proxy-*`)
/// steer the connection to the next hop, not the call; `Host` would send the request to
/// another virtual host than the one allowed; `Content-Length` (like `Transfer-Encoding`)
/// frames the body, which the HTTP client does from the body it sends.
const AGENTS_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

pub struct HttpHandler {
    allow: Vec<Url>,
    client: reqwest::Client,
}

/// One call, checked and ready to send.
#[derive(Debug)]
pub struct Call {
    pub method: reqwest::Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Value>,
}

/// Parses an allow-list entry: an absolute http(s) URL without credentials, query or
/// fragment, normalised like the URLs checked against it.
pub fn parse_prefix(prefix: &str) -> Result<Url, String> {
    let url = normalise(prefix)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("names scheme, host, port and path only; no query or fragment".into());
    }
    Ok(url)
}

/// The URL as a server will resolve it: parsed, `%2e` decoded to `.`, dot segments resolved.
/// A path with an encoded `/` or `\` is refused: some servers decode it into a separator
/// (so `/api/..%2fsecret` is `/secret` to them) and some do not, so no check here could
/// agree with every server.
pub fn normalise(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if url.cannot_be_a_base() {
        return Err(format!("{raw:?} is not a URL with a host and a path"));
    }
    let lower = url.path().to_ascii_lowercase();
    for (encoded, what) in [("%2f", "'/'"), ("%5c", "'\\'")] {
        if lower.contains(encoded) {
            return Err(format!(
                "{raw:?} has an encoded {what} ({encoded}) in its path, which servers read \
                 differently; write the path without it"
            ));
        }
    }
    // `.` is unreserved, so `%2e` and `.` are the same character (RFC 3986 §2.3); decoding it
    // lets set_path see every dot segment however it was spelt, and resolve it.
    let decoded = replace_ignoring_case(url.path(), "%2e", ".");
    url.set_path(&decoded);
    Ok(url)
}

fn replace_ignoring_case(text: &str, from: &str, to: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    // ASCII lowercasing keeps every byte offset, so offsets in `lower` are offsets in `text`.
    for (at, _) in lower.match_indices(from) {
        out.push_str(&text[rest..at]);
        out.push_str(to);
        rest = at + from.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// Why a task may not set `name`, or `None` when it may.
fn agents_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower == "host" {
        Some("the agent sets it from the allowed URL")
    } else if lower == "content-length" || lower == "transfer-encoding" {
        Some("the HTTP client frames the body itself")
    } else if AGENTS_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        Some("it is a hop-by-hop header, which steers the connection, not the call")
    } else {
        None
    }
}

impl HttpHandler {
    pub fn new(allow: &[String], timeout: Duration) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|p| parse_prefix(p).map_err(|e| format!("http.allow: {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpHandler { allow, client })
    }

    /// True when the normalised `url` lies under an allowed prefix: the same scheme, host and
    /// port, and a path that continues the prefix's path at a segment boundary. Credentials
    /// in the URL are never allowed.
    pub fn allows(&self, url: &Url) -> bool {
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        self.allow.iter().any(|prefix| {
            prefix.scheme() == url.scheme()
                && prefix.host() == url.host()
                && prefix.port_or_known_default() == url.port_or_known_default()
                && path_under(prefix.path(), url.path())
        })
    }

    /// Checks a task's payload and returns the call to make; an error names the field at
    /// fault, and nothing is sent.
    pub fn prepare(&self, payload: &Value) -> Result<Call, String> {
        let raw = payload
            .get("url")
            .and_then(Value::as_str)
            .ok_or("payload.url: missing")?;
        let url = normalise(raw).map_err(|e| format!("payload.url: {e}"))?;
        if !self.allows(&url) {
            return Err(format!(
                "payload.url: {raw:?} is not under an allowed prefix"
            ));
        }
        let method = payload
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET");
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("payload.method: {method:?} is not an HTTP method"))?;
        let mut headers = HeaderMap::new();
        match payload.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(given)) => {
                for (name, value) in given {
                    if let Some(why) = agents_header(name) {
                        return Err(format!(
                            "payload.headers: {name} may not be set by a task: {why}"
                        ));
                    }
                    let value = value
                        .as_str()
                        .ok_or_else(|| format!("payload.headers.{name}: must be a string"))?;
                    let header = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("payload.headers: {name:?} is not a header name"))?;
                    let value = HeaderValue::from_str(value)
                        .map_err(|_| format!("payload.headers.{name}: not a valid header value"))?;
                    headers.append(header, value);
                }
            }
            Some(_) => return Err("payload.headers: must be an object".into()),
        }
        let body = match payload.get("body") {
            None | Some(Value::Null) => None,
            Some(body) => Some(body.clone()),
        };
        Ok(Call {
            method,
            url,
            headers,
            body,
        })
    }
}

/// True when `path` is `prefix` or continues it at a segment boundary: `/api` covers `/api`
/// and `/api/x`, never `/apix`.
fn path_under(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let Call {
            method,
            url,
            headers,
            body,
        } = self
            .prepare(&ctx.task().payload)
            .map_err(HandlerError::Permanent)?;
        let mut req = self
            .client
            .request(method.clone(), url.clone())
            .headers(headers);
        req = match body {
            None => req,
            Some(Value::String(text)) => req.body(text),
            Some(body) => req.json(&body),
        };
        ctx.log(LogStream::System, format!("{method} {url}"));
        let send = req.send();
        let resp = tokio::select! {
            resp = send => resp.map_err(|e| HandlerError::Retryable(format!("{method} {url}: {e}")))?,
            _ = ctx.cancellation().cancelled() => return Err(HandlerError::Cancelled("request abandoned".into())),
        };
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HandlerError::Retryable(format!("reading the response: {e}")))?;
        let bytes = &bytes[..bytes.len().min(MAX_BODY)];
        let body = serde_json::from_slice::<Value>(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()));
        ctx.log(LogStream::System, format!("HTTP {}", status.as_u16()));
        let result = json!({"status": status.as_u16(), "body": body});
        if status.is_server_error() {
            Err(HandlerError::Retryable(format!("HTTP {status} from {url}")))
        } else if status.is_client_error() {
            Err(HandlerError::Permanent(format!(
                "HTTP {status} from {url}: {}",
                truncate(&result["body"])
            )))
        } else {
            Ok(result)
        }
    }
}

fn truncate(body: &Value) -> String {
    let text = body.to_string();
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn handler() -> HttpHandler {
        HttpHandler::new(&["http://ha.lan:8123/api/".into()], Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_pass() {
        let h = handler();
        let ok = |u: &str| normalise(u).is_ok_and(|u| h.allows(&u));
        assert!(ok("http://ha.lan:8123/api/services/light/turn_on"));
        assert!(ok("http://HA.lan:8123/api/x/../y"));
        assert!(!ok("http://ha.lan:8123/admin"));
        assert!(!ok("http://ha.lan:8124/api/x"));
        assert!(!ok("https://ha.lan:8123/api/x"));
        assert!(!ok("http://evil.lan/api/"));
        assert!(!ok("http://user:pw@ha.lan:8123/api/x"));
        assert!(!ok("http://ha.lan:8123@evil.lan/api/x"));
        let bare = HttpHandler::new(&["http://h/api".into()], Duration::from_secs(1)).unwrap();
        let ok = |u: &str| normalise(u).is_ok_and(|u| bare.allows(&u));
        assert!(ok("http://h/api") && ok("http://h/api/x"));
        assert!(!ok("http://h/apix"), "a prefix ends at a segment boundary");
    }

    #[test]
    fn paths_are_checked_as_a_server_resolves_them() {
        for (raw, resolved) in [
            ("http://ha.lan:8123/api/../secret", "/secret"),
            ("http://ha.lan:8123/api/%2e%2e/secret", "/secret"),
            ("http://ha.lan:8123/api/.%2E/secret", "/secret"),
            ("http://ha.lan:8123/api/%2E/x", "/api/x"),
            ("http://ha.lan:8123/api/a%2ejson", "/api/a.json"),
        ] {
            assert_eq!(normalise(raw).unwrap().path(), resolved, "{raw}");
        }
        for raw in [
            "http://ha.lan:8123/api/..%2fsecret",
            "http://ha.lan:8123/api/..%2Fsecret",
            "http://ha.lan:8123/api/..%5csecret",
        ] {
            let err = handler().prepare(&json!({ "url": raw })).unwrap_err();
            assert!(err.contains("encoded"), "{raw}: {err}");
        }
    }

    #[test]
    fn the_connection_s_headers_are_the_agent_s() {
        let h = handler();
        let call = |name: &str| {
            h.prepare(&json!({"url": "http://ha.lan:8123/api/x", "headers": {name: "v"}}))
        };
        for name in [
            "Host",
            "HOST",
            "Connection",
            "Keep-Alive",
            "Proxy-Authorization",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Content-Length",
        ] {
            let err = call(name).unwrap_err();
            assert!(err.contains(name), "{name}: {err}");
        }
        let ok = call("Authorization").unwrap();
        assert_eq!(ok.headers["authorization"], "v");
        assert!(call("bad name").unwrap_err().contains("not a header name"));
    }

    #[test]
    fn allow_list_entries_are_checked_at_load() {
        for bad in [
            "ftp://h/",
            "http://u:p@h/api/",
            "http://h/api/?x=1",
            "not a url",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }
}
