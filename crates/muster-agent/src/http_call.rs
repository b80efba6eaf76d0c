//! The `http` executor: calls a URL under one of the allow-listed prefixes and reports the
//! status and body. Redirects are not followed (they could leave the allow-list).
//!
//! Payload: `{"method": "POST", "url": "http://ha.lan:8123/api/services/light/turn_on",
//! "headers": {"authorization": "Bearer …"}, "body": {...}}`.

use std::time::Duration;

use async_trait::async_trait;
use muster_api::LogStream;
use muster_client::{Handler, HandlerError, TaskContext};
use reqwest::Url;
use serde_json::{Value, json};

/// Largest response body kept in the result.
const MAX_BODY: usize = 1024 * 1024;

pub struct HttpHandler {
    allow: Vec<Url>,
    client: reqwest::Client,
}

impl HttpHandler {
    pub fn new(allow: &[String], timeout: Duration) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|p| Url::parse(p).map_err(|e| format!("http.allow: {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpHandler { allow, client })
    }

    /// True when `url` lies under an allowed prefix: same scheme, host and port, and a path
    /// that continues the prefix's path. Credentials in the URL are never allowed.
    pub fn allows(&self, url: &Url) -> bool {
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        self.allow.iter().any(|prefix| {
            prefix.scheme() == url.scheme()
                && prefix.host_str() == url.host_str()
                && prefix.port_or_known_default() == url.port_or_known_default()
                && url.path().starts_with(prefix.path())
        })
    }
}

#[async_trait]
impl Handler for HttpHandler {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let payload = &ctx.task().payload;
        let permanent = |m: String| HandlerError::Permanent(m);
        let raw = payload
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| permanent("payload.url: missing".into()))?;
        let url = Url::parse(raw).map_err(|e| permanent(format!("payload.url: {raw:?}: {e}")))?;
        if !self.allows(&url) {
            return Err(permanent(format!(
                "payload.url: {raw:?} is not under an allowed prefix"
            )));
        }
        let method = payload
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET");
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| permanent(format!("payload.method: {method:?} is not an HTTP method")))?;
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(headers) = payload.get("headers") {
            let headers = headers
                .as_object()
                .ok_or_else(|| permanent("payload.headers: must be an object".into()))?;
            for (name, value) in headers {
                let value = value.as_str().ok_or_else(|| {
                    permanent(format!("payload.headers.{name}: must be a string"))
                })?;
                req = req.header(name, value);
            }
        }
        req = match payload.get("body") {
            None | Some(Value::Null) => req,
            Some(Value::String(text)) => req.body(text.clone()),
            Some(body) => req.json(body),
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

    #[test]
    fn only_urls_under_an_allowed_prefix_pass() {
        let h =
            HttpHandler::new(&["http://ha.lan:8123/api/".into()], Duration::from_secs(1)).unwrap();
        let ok = |u: &str| h.allows(&Url::parse(u).unwrap());
        assert!(ok("http://ha.lan:8123/api/services/light/turn_on"));
        assert!(!ok("http://ha.lan:8123/admin"));
        assert!(!ok("http://ha.lan:8124/api/x"));
        assert!(!ok("https://ha.lan:8123/api/x"));
        assert!(!ok("http://evil.lan/api/"));
        assert!(!ok("http://user:pw@ha.lan:8123/api/x"));
        assert!(!ok("http://ha.lan:8123@evil.lan/api/x"));
    }
}
