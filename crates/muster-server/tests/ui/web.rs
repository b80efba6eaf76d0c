//! Plain HTTP as a browser would speak it to the UI: no redirect following, the session cookie
//! carried by hand, forms posted urlencoded, and the CSRF token read out of a page.

use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, redirect};

use crate::helpers::TestApp;

pub const KEY: &str = "ui-test-key-3b1f0c9e7a";

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn set_cookie(&self) -> Option<String> {
        self.headers
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The `muster_session=…` pair of the Set-Cookie header, ready for a Cookie header.
    pub fn session_cookie(&self) -> Option<String> {
        self.set_cookie()
            .and_then(|c| c.split(';').next().map(str::to_owned))
            .filter(|pair| pair.starts_with("muster_session=") && pair.len() > 15)
    }

    /// The `muster_csrf=…` pair a keyless server hands a visitor in place of a session: the
    /// browser sends it back, and the page's CSRF token is derived from it.
    pub fn csrf_cookie(&self) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .find(|pair| pair.starts_with("muster_csrf=") && pair.len() > 12)
            .map(str::to_owned)
    }

    /// The `muster_flash=…` pair a form's redirect sets: the message for the page it leads to.
    pub fn flash_cookie(&self) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .find(|pair| pair.starts_with("muster_flash=") && pair.len() > 13)
            .map(str::to_owned)
    }

    /// The value of the first hidden `csrf` field in the page.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no CSRF field in the page: {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').expect("end of the value") + start;
        self.body[start..end].to_owned()
    }
}

pub struct Web {
    base: String,
    client: reqwest::Client,
    pub cookie: Option<String>,
}

impl Web {
    pub fn new(t: &TestApp) -> Web {
        Web {
            base: t.base.clone(),
            client: reqwest::Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        Self::send_with(req, self.cookie.as_deref()).await
    }

    async fn send_with(req: reqwest::RequestBuilder, cookie: Option<&str>) -> Answer {
        let req = match cookie {
            Some(cookie) => req.header(COOKIE, cookie),
            None => req,
        };
        let resp = req.send().await.expect("request sent");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("body"),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req).await
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .form(fields),
        )
        .await
    }

    /// Follows a form's redirect as a browser would: with the flash cookie the redirect set
    /// beside this client's own.
    pub async fn follow(&self, redirect: &Answer) -> Answer {
        assert_eq!(redirect.status, StatusCode::SEE_OTHER, "{}", redirect.body);
        let cookies: Vec<String> = self
            .cookie
            .iter()
            .cloned()
            .chain(redirect.flash_cookie())
            .collect();
        let req = self
            .client
            .get(format!("{}{}", self.base, redirect.location()));
        let joined = cookies.join("; ");
        Self::send_with(req, (!joined.is_empty()).then_some(joined.as_str())).await
    }

    /// Opens a page without a key configured: the answer's cookie (a session, or the keyless
    /// visitor's CSRF cookie) becomes this client's.
    pub async fn visit(&mut self, path: &str) -> Answer {
        let answer = self.get(path).await;
        if let Some(cookie) = answer.session_cookie().or_else(|| answer.csrf_cookie()) {
            self.cookie = Some(cookie);
        }
        answer
    }

    /// Logs in with `key`; on success the session cookie becomes this client's.
    pub async fn login(&mut self, key: &str) -> Answer {
        let answer = self
            .post_form("/login", &[("key", key), ("next", "/")])
            .await;
        if let Some(cookie) = answer.session_cookie() {
            self.cookie = Some(cookie);
        }
        answer
    }
}
