//! Who may see the UI and change things through it.
//!
//! With `API_KEY` set, the login page takes the key (compared in constant time) and hands the
//! browser a session cookie; the key itself is never written into a page, a URL or a cookie.
//! Only a login starts a session. With no key (the server then listens on loopback only) there
//! is no login and no session: each visitor gets a cookie from which its CSRF token is derived
//! ([`crate::sessions::Sessions::visitor`]), so the forms are still protected from other sites
//! the operator's browser visits, and page loads store nothing.
//!
//! Every request that is not GET or HEAD must carry the session's CSRF token as the form field
//! `csrf`; the check sits in the middleware, before any handler, so no form can forget it.
//!
//! Logins are audited: a success as one record, failures counted per client and minute
//! ([`crate::sessions::FailedLogins`]) so that a flood of guesses makes one entry a minute.
//! The same count limits guessing: after [`LOGINS_PER_MINUTE`] wrong keys a client is
//! answered 429 until its minute is over.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::layout::{Page, shell};
use super::percent_encode;
use crate::app::AppState;
use crate::audit::AuditRecord;
use crate::auth::same_key;
use crate::sessions::{self, Session};

/// Behind a TLS-terminating proxy the cookie is marked Secure.
pub(super) fn came_over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A path on this site to return to after logging in; anything else (another host, a
/// protocol-relative URL) becomes the overview, so the login page cannot redirect off-site.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path
        }
        _ => "/",
    }
}

pub(super) fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, location.to_owned())]).into_response()
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// Security headers for every UI response: no inline script or style may run (so injected
/// markup stays inert), no framing, and pages (which hold CSRF tokens) are not cached.
pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Finds the request's session (or, with no key configured, the visitor's stand-in for one)
/// and checks the CSRF token of anything that is not a read. Handlers behind it receive the
/// [`Session`] as an extension.
pub(super) async fn require_session(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let now = app.now_ms();
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    let (session, new_cookie) = match app.sessions.from_headers(req.headers(), now) {
        Some(session) => (session, None),
        // A form needs the token of a session it was rendered in, so a change without a
        // session is refused.
        None if !reading && app.settings().api_key.is_some() => {
            return forbidden("Your session has ended; reload the page and try again.");
        }
        None if app.settings().api_key.is_some() => {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            return see_other(&format!("/login?next={}", percent_encode(&path)));
        }
        None => {
            let (session, fresh) = app.sessions.visitor(req.headers());
            match fresh {
                // A change from a browser without the cookie cannot carry a token of it.
                Some(_) if !reading => {
                    return forbidden("Your session has ended; reload the page and try again.");
                }
                Some(value) => {
                    let cookie =
                        sessions::set_visitor_cookie(&value, came_over_https(req.headers()));
                    (session, Some(cookie))
                }
                None => (session, None),
            }
        }
    };
    let mut req = if reading {
        req
    } else {
        match check_csrf(req, &session, app.settings().body_limit).await {
            Ok(req) => req,
            Err(response) => return response,
        }
    };
    req.extensions_mut().insert(session);
    let response = next.run(req).await;
    match new_cookie {
        Some(cookie) => with_cookie(response, &cookie),
        None => response,
    }
}

/// Reads the form body, refuses it unless its `csrf` field is the session's token, and puts
/// the body back for the handler.
async fn check_csrf(req: Request, session: &Session, limit: usize) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| forbidden("The form could not be read."))?;
    let presented = form_urlencoded_field(&bytes, "csrf");
    if !presented.is_some_and(|token| session.csrf_matches(&token)) {
        return Err(forbidden(
            "This form did not carry this session's security token (it may come from \
             another site, or from before you logged in again). Reload the page and try again.",
        ));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(body)?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn serde_urlencoded_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let uri: axum::http::Uri = format!("/?{text}").parse().ok()?;
    Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .ok()
        .map(|Query(pairs)| pairs)
}

fn forbidden(why: &str) -> Response {
    let page = Page {
        title: "Refused",
        section: None,
        live: Default::default(),
        session: None,
        login_enabled: false,
    };
    let body = shell(
        &page,
        html! {
            h1 { "Refused" }
            p { (why) }
            p { a href="/" { "Back to the overview" } }
        },
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let page = Page {
        title: "Log in",
        section: None,
        live: Default::default(),
        session: None,
        login_enabled: true,
    };
    let body = shell(
        &page,
        html! {
            section.login {
                h1 { "Log in" }
                p.muted { "Enter the server's admin key (API_KEY)." }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    @if let Some(error) = error {
                        p.form-error #key-error role="alert" { (error) }
                    }
                    label for="key" { "Admin key" }
                    input #key type="password" name="key" autocomplete="current-password"
                        required autofocus aria-invalid=[error.map(|_| "true")]
                        aria-describedby=[error.map(|_| "key-error")];
                    button.primary type="submit" { "Log in" }
                }
            }
        },
    );
    (status, body).into_response()
}

/// `GET /login`.
pub(super) async fn login_form(
    State(app): State<AppState>,
    Query(query): Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    let next = local_path(query.next.as_deref());
    if app.settings().api_key.is_none()
        || app.sessions.from_headers(&headers, app.now_ms()).is_some()
    {
        return see_other(next);
    }
    login_page(StatusCode::OK, next, None)
}

/// Wrong keys a client may send in one minute; further tries are refused unread until the
/// minute is over.
pub(super) const LOGINS_PER_MINUTE: u64 = 10;

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    key: String,
    next: Option<String>,
}

/// `POST /login`: a right key starts a new session (a fresh id, so an id planted before the
/// login is worthless); a wrong one changes nothing.
///
/// The login form carries no CSRF token: there is no session yet to bind one to, and a forged
/// login could only log the operator in with the one key they already hold.
pub(super) async fn login(
    State(app): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(form.next.as_deref()).to_owned();
    let settings = app.settings();
    let Some(key) = &settings.api_key else {
        return see_other(&next);
    };
    // The address the connection came from; behind a reverse proxy, the proxy's (a forwarded
    // header would let a guesser pick a fresh client for every try).
    let client = peer.map_or_else(
        || "unknown".to_owned(),
        |Extension(ConnectInfo(addr))| addr.ip().to_string(),
    );
    let now = app.now_ms();
    // Checked before the key, so that a guesser cannot learn from the answer whether a try
    // over the limit was right.
    if let Some(wait_s) = app
        .sessions
        .failed_logins
        .retry_after_s(&client, now, LOGINS_PER_MINUTE)
    {
        tracing::warn!(client, "UI login refused: too many wrong keys this minute");
        // Counted with the wrong keys: the audit's tally is of tries that did not log in.
        app.sessions.failed_logins.record(&client, now);
        let mut page = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some(&format!(
                "Too many wrong keys from your address; try again in {wait_s} seconds."
            )),
        );
        page.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait_s));
        return page;
    }
    if !same_key(key, form.key.trim()) {
        tracing::warn!(client, "UI login with a wrong key");
        app.sessions.failed_logins.record(&client, now);
        return login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That key is not valid."),
        );
    }
    let record = AuditRecord::login_succeeded(now, &client);
    // No session without its audit record: every login the UI grants is in the log.
    if let Err(err) = crate::outbox::record_audit(&app, vec![record]).await {
        return super::UiError::from(err).into_response();
    }
    if let Some(old) = sessions::session_cookie(&headers) {
        app.sessions.end(&old);
    }
    let session = app.sessions.create(now);
    with_cookie(
        see_other(&next),
        &sessions::set_cookie(&session, came_over_https(&headers)),
    )
}

/// `POST /logout` (behind the session middleware, so it needs the CSRF token).
pub(super) async fn logout(
    State(app): State<AppState>,
    axum::Extension(session): axum::Extension<Session>,
) -> Response {
    app.sessions.end(&session.id);
    let to = if app.settings().api_key.is_some() {
        "/login"
    } else {
        "/"
    };
    with_cookie(see_other(to), &sessions::clear_cookie())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_returns_only_to_paths_on_this_site() {
        assert_eq!(
            local_path(Some("/tasks?state=failed")),
            "/tasks?state=failed"
        );
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn the_csrf_field_is_read_from_a_form_body() {
        assert_eq!(
            form_urlencoded_field(b"a=1&csrf=abc%20d&b=2", "csrf").as_deref(),
            Some("abc d")
        );
        assert_eq!(form_urlencoded_field(b"a=1", "csrf"), None);
    }
}
