//! A secret (a key, a token, a webhook URL that grants access) that never prints, and the hex
//! form digests and tokens are written in. A leaf module: settings, notifiers, sessions and
//! the audit log all use it.

/// A secret that never prints: `{:?}` and `{}` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Lowercase hex of `bytes`: how digests, signatures and tokens are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}
