//! The canary hook's credential: the body a run sends to `POST /hooks/canary/{name}` is signed
//! with HMAC-SHA256 under a key drawn from the operating system's CSPRNG when the server
//! starts and never stored or shown, so only this process can make a request the hook takes.
//! The scheme is the one muster's own signed webhooks use (see
//! [`crate::notify::channels::signature`]): `X-Muster-Timestamp` (Unix seconds) and
//! `X-Muster-Signature: sha256=<hex>` over `<timestamp>.<body>`.
//!
//! A key per process means a run cannot outlive a restart, which is how runs are judged anyway
//! (a run in flight at a restart is interrupted). Replays are refused by the run itself: the
//! store takes a run's hook once.

use axum::http::HeaderMap;
use rand::TryRngCore;
use subtle::ConstantTimeEq;

use crate::notify::channels::signature;

/// The largest hook body read: a run's body is well under it, and anything bigger is refused
/// before its signature is computed.
pub const MAX_BODY: usize = 4096;

/// How far a request's timestamp may be from the server's clock.
pub const MAX_SKEW_S: i64 = 300;

pub const TIMESTAMP_HEADER: &str = "x-muster-timestamp";
pub const SIGNATURE_HEADER: &str = "x-muster-signature";

/// The key canary hook requests are signed with; `{:?}` never shows it.
#[derive(Clone)]
pub struct HookKey([u8; 32]);

impl std::fmt::Debug for HookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookKey([redacted])")
    }
}

impl Default for HookKey {
    fn default() -> Self {
        Self::random()
    }
}

/// Why a hook request was refused before anything read its body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers: only muster's own canary runs \
         call this hook"
    )]
    Unsigned,
    #[error("the timestamp is more than 5 minutes from the server's clock")]
    Stale,
    #[error("the signature does not match the body")]
    Forged,
}

impl HookKey {
    /// 256 bits from the operating system's CSPRNG.
    pub fn random() -> HookKey {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random source works");
        HookKey(bytes)
    }

    /// The headers of a request carrying `body`, signed at `now_s` (Unix seconds).
    pub fn sign(&self, body: &[u8], now_s: i64) -> [(&'static str, String); 2] {
        [
            (TIMESTAMP_HEADER, now_s.to_string()),
            (SIGNATURE_HEADER, signature(&self.0, now_s, body)),
        ]
    }

    /// Checks a request's signature over its raw body, in constant time, before anything
    /// parses it.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_s: i64) -> Result<(), Refusal> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(timestamp), Some(given)) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER))
        else {
            return Err(Refusal::Unsigned);
        };
        let timestamp: i64 = timestamp.trim().parse().map_err(|_| Refusal::Forged)?;
        if (now_s - timestamp).abs() > MAX_SKEW_S {
            return Err(Refusal::Stale);
        }
        let expected = signature(&self.0, timestamp, body);
        // Lengths differ only for a malformed header, which says nothing about the key.
        if expected.as_bytes().ct_eq(given.trim().as_bytes()).into() {
            Ok(())
        } else {
            Err(Refusal::Forged)
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(signed: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in signed {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_this_key_over_this_body_at_about_this_time_passes() {
        let key = HookKey::random();
        let body = br#"{"canary":"path","run":"0193","nonce":"n"}"#;
        let signed = key.sign(body, 1_000_000);
        assert_eq!(key.verify(&headers(&signed), body, 1_000_000), Ok(()));
        assert_eq!(key.verify(&headers(&signed), body, 1_000_299), Ok(()));
        assert_eq!(
            key.verify(&headers(&signed), body, 1_000_301),
            Err(Refusal::Stale)
        );
        assert_eq!(
            key.verify(&headers(&signed), b"{\"canary\":\"other\"}", 1_000_000),
            Err(Refusal::Forged)
        );
        let other = HookKey::random().sign(body, 1_000_000);
        assert_eq!(
            key.verify(&headers(&other), body, 1_000_000),
            Err(Refusal::Forged)
        );
        assert_eq!(
            key.verify(&HeaderMap::new(), body, 1_000_000),
            Err(Refusal::Unsigned)
        );
        // The timestamp is signed too: moving it breaks the signature.
        let mut moved = signed.clone();
        moved[0].1 = "1000001".into();
        assert_eq!(
            key.verify(&headers(&moved), body, 1_000_000),
            Err(Refusal::Forged)
        );
        assert_eq!(format!("{key:?}"), "HookKey([redacted])");
    }
}
