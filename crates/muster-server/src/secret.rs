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

/// Whether `name` can name an environment variable (`*_env` fields hold such names).
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads the variable that the config field `field` names. `holds` says what it should hold,
/// for the error when it is unset or empty. Surrounding whitespace is dropped: a value read
/// from a file into the environment often ends with a newline.
pub fn read_variable(
    field: &str,
    var: &str,
    holds: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if !is_variable_name(var) {
        return Err(format!(
            "{field} {var:?} is invalid: expected the name of an environment variable such as \
             MUSTER_NOTIFY_TOKEN"
        ));
    }
    match env(var) {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(format!(
            "{var} (named by {field}) is unset or empty: set it to {holds}"
        )),
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
