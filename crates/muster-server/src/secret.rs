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

/// The bytes `text` spells in hex (either case), or `None` when it is not hex: how a
/// signature someone else wrote is read.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reads_back_what_it_writes_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(hex(&bytes), "007fabff");
        assert_eq!(from_hex("007fabff").as_deref(), Some(&bytes[..]));
        assert_eq!(from_hex("007FABFF").as_deref(), Some(&bytes[..]));
        assert_eq!(from_hex("").as_deref(), Some(&[][..]));
        assert_eq!(from_hex("abc"), None, "odd length");
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("sha256=ab"), None);
    }
}
