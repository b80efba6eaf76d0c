//! Web UI sessions: random ids from the operating system's CSPRNG, kept in memory with an idle
//! expiry, each with its own CSRF token. Only a login creates one.
//!
//! Without a key there is no login, and no session either: a visitor gets a random value in a
//! cookie, and its CSRF token is an HMAC of that value under a key drawn at start
//! ([`Sessions::visitor`]). Nothing is stored per visitor, so a flood of cookie-less page
//! loads costs no memory and cannot push anyone's session out of the table.
//!
//! Owned by [`crate::App`]; the UI's middleware and the SSE routes look sessions up, login and
//! logout create and end them. Sessions die with the process: a restart logs everyone out,
//! which for one operator's control plane is cheaper than storing them. The lock is held only
//! for map operations, never across an `.await`.
//!
//! Failed logins are counted here too ([`FailedLogins`]), per client and minute, so the audit
//! log gets one entry per client and minute however many wrong keys arrive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use hmac::{Hmac, KeyInit, Mac};
use rand::TryRngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::hex;
use crate::tally::MinuteTally;

/// The cookie that carries the session id.
pub const COOKIE_NAME: &str = "muster_session";

/// The cookie a keyless server gives each visitor: the value its CSRF token is derived from.
pub const CSRF_COOKIE_NAME: &str = "muster_csrf";

/// Sessions kept at most; beyond this the least recently used one is dropped, so repeated
/// logins cannot grow memory without bound.
const MAX_SESSIONS: usize = 256;

/// Whatever the activity, a session ends this long after it began, bounding a stolen cookie.
const MAX_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a request learns about its session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session's id; empty for a keyless visitor, who has no stored session.
    pub id: String,
    /// The token every state-changing form of this session must carry.
    pub csrf: String,
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    created_ms: i64,
    last_seen_ms: i64,
}

#[derive(Debug)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
    idle_ms: i64,
    /// Wrong keys at the login page, counted until their minute is over.
    pub failed_logins: MinuteTally,
    /// The key keyless visitors' CSRF tokens are derived with; drawn at start, so a restart
    /// ends them as it ends sessions.
    visitor_key: [u8; 32],
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Sessions {
            entries: Mutex::new(HashMap::new()),
            idle_ms: idle.as_millis() as i64,
            failed_logins: MinuteTally::default(),
            visitor_key: random_bytes(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().expect("session lock poisoned")
    }

    fn expired(&self, entry: &Entry, now_ms: i64) -> bool {
        now_ms - entry.last_seen_ms > self.idle_ms || now_ms - entry.created_ms > MAX_LIFETIME_MS
    }

    /// Starts a session with a fresh id and CSRF token.
    pub fn create(&self, now_ms: i64) -> Session {
        let session = Session {
            id: random_token(),
            csrf: random_token(),
        };
        let mut entries = self.lock();
        entries.retain(|_, e| !self.expired(e, now_ms));
        if entries.len() >= MAX_SESSIONS
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen_ms)
                .map(|(id, _)| id.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(
            session.id.clone(),
            Entry {
                csrf: session.csrf.clone(),
                created_ms: now_ms,
                last_seen_ms: now_ms,
            },
        );
        session
    }

    /// The live session with this id, its idle time restarted; `None` when unknown or expired.
    pub fn touch(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut entries = self.lock();
        let entry = entries.get_mut(id)?;
        if self.expired(entry, now_ms) {
            entries.remove(id);
            return None;
        }
        entry.last_seen_ms = now_ms;
        Some(Session {
            id: id.to_owned(),
            csrf: entry.csrf.clone(),
        })
    }

    /// The session named by the request's cookie, if it is live.
    pub fn from_headers(&self, headers: &HeaderMap, now_ms: i64) -> Option<Session> {
        self.touch(&session_cookie(headers)?, now_ms)
    }

    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A keyless visitor's stand-in for a session: the CSRF token derived from the value of
    /// its `muster_csrf` cookie, and, when it sent none (or a malformed one), a fresh value
    /// to set as that cookie. Nothing is stored.
    pub fn visitor(&self, headers: &HeaderMap) -> (Session, Option<String>) {
        let (value, fresh) = match cookie(headers, CSRF_COOKIE_NAME).filter(|v| is_token(v)) {
            Some(value) => (value, false),
            None => (random_token(), true),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.visitor_key)
            .expect("HMAC takes a key of any length");
        mac.update(b"muster visitor csrf\0");
        mac.update(value.as_bytes());
        let session = Session {
            id: String::new(),
            csrf: hex(&mac.finalize().into_bytes()),
        };
        (session, fresh.then_some(value))
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Session {
    /// Compares a presented CSRF token with this session's, in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// 256 bits from the operating system's CSPRNG.
fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source works");
    bytes
}

/// 256 bits from the operating system's CSPRNG, hex-encoded.
fn random_token() -> String {
    hex(&random_bytes())
}

/// Whether `value` has the shape of [`random_token`]'s output.
fn is_token(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The session id from the request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE_NAME)
}

/// The value of the cookie `name` from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that hands a session to the browser: not readable by scripts, never
/// sent on a request another site starts, and (behind an https proxy) only over https. No
/// Max-Age: the server's idle expiry decides, and the browser forgets it when it closes.
pub fn set_cookie(session: &Session, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict{}",
        session.id,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that hands a keyless visitor its CSRF cookie, with the session
/// cookie's protections.
pub fn set_visitor_cookie(value: &str, secure: bool) -> String {
    format!(
        "{CSRF_COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * 1000;

    #[test]
    fn a_session_lives_while_used_and_ends_when_idle() {
        let sessions = Sessions::new(Duration::from_secs(12 * 3600));
        let s = sessions.create(0);
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert!(sessions.touch(&s.id, 11 * HOUR).is_some());
        assert!(
            sessions.touch(&s.id, 22 * HOUR).is_some(),
            "use restarts idle time"
        );
        assert!(sessions.touch(&s.id, 35 * HOUR).is_none(), "idle past 12 h");
        assert!(sessions.touch(&s.id, 35 * HOUR).is_none(), "stays gone");
    }

    #[test]
    fn a_session_ends_after_its_lifetime_however_busy() {
        let sessions = Sessions::new(Duration::from_secs(12 * 3600));
        let s = sessions.create(0);
        let mut now = 0;
        while now < MAX_LIFETIME_MS - HOUR {
            now += 6 * HOUR;
            assert!(sessions.touch(&s.id, now).is_some());
        }
        assert!(sessions.touch(&s.id, MAX_LIFETIME_MS + 1).is_none());
    }

    #[test]
    fn logins_cannot_grow_the_table_without_bound() {
        let sessions = Sessions::new(Duration::from_secs(3600));
        let first = sessions.create(0);
        for n in 1..=MAX_SESSIONS as i64 {
            sessions.create(n);
        }
        assert!(sessions.lock().len() <= MAX_SESSIONS);
        assert!(sessions.touch(&first.id, 1000).is_none(), "oldest dropped");
    }

    #[test]
    fn a_visitors_token_follows_from_its_cookie_and_nothing_is_stored() {
        let sessions = Sessions::new(Duration::from_secs(3600));
        let (first, value) = sessions.visitor(&HeaderMap::new());
        let value = value.expect("a fresh cookie value");
        assert!(is_token(&value));
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            format!("a=1; {CSRF_COOKIE_NAME}={value}").parse().unwrap(),
        );
        let (again, fresh) = sessions.visitor(&headers);
        assert_eq!(fresh, None, "the cookie is kept");
        assert_eq!(again.csrf, first.csrf);
        assert!(first.id.is_empty());
        // Another visitor, or another server's key, gives another token.
        let (other, _) = sessions.visitor(&HeaderMap::new());
        assert_ne!(other.csrf, first.csrf);
        let (elsewhere, _) = Sessions::new(Duration::from_secs(3600)).visitor(&headers);
        assert_ne!(elsewhere.csrf, first.csrf);
        // A malformed cookie is replaced, not trusted.
        headers.insert(COOKIE, format!("{CSRF_COOKIE_NAME}=x").parse().unwrap());
        assert!(sessions.visitor(&headers).1.is_some());
        assert!(sessions.is_empty());
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let sessions = Sessions::new(Duration::from_secs(3600));
        let s = sessions.create(0);
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf[..63]));
        assert!(!sessions.create(0).csrf_matches(&s.csrf));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=1; muster_session=abc ; b=2".parse().unwrap());
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc"));
        let s = Session {
            id: "abc".into(),
            csrf: "x".into(),
        };
        let cookie = set_cookie(&s, false);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        assert!(set_cookie(&s, true).ends_with("; Secure"));
    }
}
