//! One-time messages across a redirect: a form's handler answers with a redirect that sets a
//! message ([`redirect`]), and the page it leads to shows the message once ([`take`],
//! [`notice`], [`answer`]).
//!
//! The message travels in a short-lived cookie, because a keyless server keeps nothing per
//! visitor. It is signed with the session's CSRF token, which no other site knows, so a cookie
//! planted by another host (a sibling subdomain can set cookies for this one) puts no words
//! of its own on the page; an unsigned or foreign message is ignored.

use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use maud::{Markup, html};
use sha2::Sha256;

use super::auth::{came_over_https, see_other};
use crate::secret::{from_hex, hex};
use crate::sessions::{Session, cookie};

const COOKIE_NAME: &str = "muster_flash";

/// Long enough for the redirect to be followed; a message not shown by then is stale.
const MAX_AGE_S: u32 = 60;

/// Longer messages are cut, so the cookie stays far below the 4 KB browsers keep.
const MAX_CHARS: usize = 600;

fn mac(session: &Session) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(session.csrf.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"muster flash\0");
    mac
}

/// The cookie's value: the signature, a dot, and the message in hex (which needs no quoting
/// in a cookie).
fn seal(session: &Session, message: &str) -> String {
    let message: String = message.chars().take(MAX_CHARS).collect();
    let mut mac = mac(session);
    mac.update(message.as_bytes());
    format!(
        "{}.{}",
        hex(&mac.finalize().into_bytes()),
        hex(message.as_bytes())
    )
}

fn open(session: &Session, value: &str) -> Option<String> {
    let (signature, message) = value.split_once('.')?;
    let message = from_hex(message)?;
    let mut mac = mac(session);
    mac.update(&message);
    mac.verify_slice(&from_hex(signature)?).ok()?;
    String::from_utf8(message).ok()
}

/// A 303 to `to` that leaves `message` for the page there.
pub(super) fn redirect(
    to: &str,
    session: &Session,
    headers: &HeaderMap,
    message: &str,
) -> Response {
    let cookie = format!(
        "{COOKIE_NAME}={}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly; SameSite=Strict{}",
        seal(session, message),
        if came_over_https(headers) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = see_other(to);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// What the request brought: the message left for this session, if any, and whether there
/// was a cookie to clear (a stale or foreign one is cleared too).
#[derive(Debug, Default)]
pub(super) struct Taken {
    pub(super) message: Option<String>,
    present: bool,
}

pub(super) fn take(headers: &HeaderMap, session: &Session) -> Taken {
    match cookie(headers, COOKIE_NAME) {
        Some(value) => Taken {
            message: open(session, &value),
            present: true,
        },
        None => Taken::default(),
    }
}

/// The message as the page shows it, above its content.
pub(super) fn notice(taken: &Taken) -> Markup {
    html! {
        @if let Some(message) = &taken.message {
            p.notice.good.flash role="status" { (message) }
        }
    }
}

/// The page, with the cookie cleared when the request carried one, so a reload does not show
/// the message again.
pub(super) fn answer(page: impl IntoResponse, taken: &Taken) -> Response {
    let mut response = page.into_response();
    if taken.present {
        response.headers_mut().append(
            SET_COOKIE,
            HeaderValue::from_static("muster_flash=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(csrf: &str) -> Session {
        Session {
            id: String::new(),
            csrf: csrf.to_owned(),
        }
    }

    #[test]
    fn a_message_opens_only_for_the_session_that_sealed_it_and_unchanged() {
        let mine = session("a-token");
        let sealed = seal(&mine, "Resumed rule web: 2 held tasks submitted.");
        assert_eq!(
            open(&mine, &sealed).as_deref(),
            Some("Resumed rule web: 2 held tasks submitted.")
        );
        assert_eq!(open(&session("another-token"), &sealed), None);
        let (signature, _) = sealed.split_once('.').unwrap();
        let forged = format!("{signature}.{}", hex(b"Call this number"));
        assert_eq!(open(&mine, &forged), None);
        assert_eq!(open(&mine, "not a sealed message"), None);
    }

    #[test]
    fn a_long_message_is_cut() {
        let mine = session("a-token");
        let sealed = seal(&mine, &"é".repeat(2 * MAX_CHARS));
        assert_eq!(open(&mine, &sealed).unwrap().chars().count(), MAX_CHARS);
        assert!(sealed.len() < 4000);
    }
}
