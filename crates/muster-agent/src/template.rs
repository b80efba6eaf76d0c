//! Argv templates: `["docker", "restart", "{container}"]` with one pattern per parameter.
//! Rendering checks every value against its whole-value pattern before anything runs; a value
//! only ever fills the argument it stands in, it can never add an argument or a command.
//!
//! A value that would begin an argument with `-` is refused unless the action allows it: a
//! pattern written carelessly (`^[a-z0-9-]+$`) would otherwise let `--help` or
//! `--volumes-from=…` through as an option of the program. Patterns are matched on Unicode
//! (`\d` matches `٣`), so [`unicode_classes`] finds the classes an author most likely meant
//! as ASCII, for a warning at load.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Param(String),
}

/// Whether a parameter's value may begin an argument with `-`, where a program would read it
/// as an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeadingDash {
    #[default]
    Refused,
    Allowed,
}

/// A compiled, checked template.
#[derive(Debug, Clone)]
pub struct ArgvTemplate {
    args: Vec<Vec<Piece>>,
    patterns: BTreeMap<String, Regex>,
    leading_dash: LeadingDash,
}

/// The Unicode-aware shorthand classes a pattern uses (`\d`, `\w`, `\s`, or their negations):
/// each matches far more than ASCII (`\d` matches Arabic-Indic digits, `\w` letters of every
/// script, `\s` a no-break space), which is seldom what an argv pattern means.
pub fn unicode_classes(pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        // The escaped character is consumed either way, so `\\d` is a backslash and a `d`.
        if let Some(class @ ('d' | 'w' | 's' | 'D' | 'W' | 'S')) = chars.next() {
            let class = format!("\\{class}");
            if !found.contains(&class) {
                found.push(class);
            }
        }
    }
    found
}

impl ArgvTemplate {
    pub fn compile(
        argv: &[String],
        params: &BTreeMap<String, String>,
        leading_dash: LeadingDash,
    ) -> Result<Self, String> {
        if argv.is_empty() || argv[0].trim().is_empty() {
            return Err("argv: must name a program".into());
        }
        let mut patterns = BTreeMap::new();
        for (name, pattern) in params {
            // Anchored on both ends whatever the author wrote: a pattern checks the whole value.
            let anchored = format!("^(?:{pattern})$");
            let regex = Regex::new(&anchored)
                .map_err(|e| format!("params.{name}: invalid pattern {pattern:?}: {e}"))?;
            patterns.insert(name.clone(), regex);
        }
        let mut args = Vec::with_capacity(argv.len());
        for (i, arg) in argv.iter().enumerate() {
            let pieces = parse(arg).map_err(|e| format!("argv[{i}]: {e}"))?;
            for piece in &pieces {
                if let Piece::Param(name) = piece {
                    if i == 0 {
                        return Err("argv[0]: the program must be fixed, not a parameter".into());
                    }
                    if !patterns.contains_key(name) {
                        return Err(format!("argv[{i}]: {{{name}}} has no pattern in params"));
                    }
                }
            }
            args.push(pieces);
        }
        Ok(ArgvTemplate {
            args,
            patterns,
            leading_dash,
        })
    }

    /// Fills the template; an error names the parameter at fault and nothing may run.
    pub fn render(&self, params: &serde_json::Map<String, Value>) -> Result<Vec<String>, String> {
        for name in params.keys() {
            if !self.patterns.contains_key(name) {
                return Err(format!("unknown parameter {name:?}"));
            }
        }
        let mut values = BTreeMap::new();
        for (name, pattern) in &self.patterns {
            let Some(value) = params.get(name) else {
                return Err(format!("missing parameter {name:?}"));
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "parameter {name:?} must be a string, number or boolean"
                    ));
                }
            };
            if !pattern.is_match(&text) {
                return Err(format!(
                    "parameter {name:?} = {text:?} does not match its pattern {}",
                    pattern.as_str()
                ));
            }
            values.insert(name.as_str(), text);
        }
        if self.leading_dash == LeadingDash::Refused {
            for pieces in &self.args {
                if let Some((name, value)) = leading_value(pieces, &values)
                    && value.starts_with('-')
                {
                    return Err(format!(
                        "parameter {name:?} = {value:?} would begin an argument with '-', which \
                         the program could read as an option; refused (an action whose \
                         programs expect such values sets allow_leading_dash = true)"
                    ));
                }
            }
        }
        Ok(self
            .args
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(t) => t.as_str(),
                        Piece::Param(name) => values[name.as_str()].as_str(),
                    })
                    .collect()
            })
            .collect())
    }
}

/// The parameter whose value begins this argument, if a parameter does: the first one with a
/// non-empty value before any fixed text.
fn leading_value<'a>(
    pieces: &'a [Piece],
    values: &'a BTreeMap<&str, String>,
) -> Option<(&'a str, &'a str)> {
    for piece in pieces {
        match piece {
            Piece::Text(text) if text.is_empty() => continue,
            Piece::Text(_) => return None,
            Piece::Param(name) => {
                let value = values[name.as_str()].as_str();
                if !value.is_empty() {
                    return Some((name, value));
                }
            }
        }
    }
    None
}

/// Splits `"--name={container}"` into text and parameters; `{{` and `}}` are literal braces.
fn parse(arg: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("{{{name}}} is not a valid parameter name"));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Param(name));
            }
            '}' => return Err("a lone '}' (write '}}' for a literal brace)".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> ArgvTemplate {
        let params = BTreeMap::from([(
            "container".to_owned(),
            "[a-z0-9][a-z0-9_.-]{0,62}".to_owned(),
        )]);
        let argv = ["docker", "restart", "--time={{10}}", "{container}"].map(String::from);
        ArgvTemplate::compile(&argv, &params, LeadingDash::Refused).unwrap()
    }

    fn params(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_each_value_into_its_own_argument() {
        let argv = template()
            .render(&params(json!({"container": "jellyfin"})))
            .unwrap();
        assert_eq!(argv, ["docker", "restart", "--time={10}", "jellyfin"]);
    }

    #[test]
    fn refuses_values_outside_the_pattern_naming_the_parameter() {
        for bad in ["x; touch /tmp/pwned", "", "$(id)", "a b", "jellyfin\nrm"] {
            let err = template()
                .render(&params(json!({"container": bad})))
                .unwrap_err();
            assert!(err.contains("container"), "{bad:?}: {err}");
        }
        let err = template().render(&params(json!({}))).unwrap_err();
        assert!(err.contains("missing parameter \"container\""), "{err}");
        let err = template()
            .render(&params(json!({"container": "a", "extra": "b"})))
            .unwrap_err();
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn a_pattern_without_anchors_still_checks_the_whole_value() {
        let params_cfg = BTreeMap::from([("n".to_owned(), "[0-9]+".to_owned())]);
        let t = ArgvTemplate::compile(
            &["echo".into(), "{n}".into()],
            &params_cfg,
            LeadingDash::Refused,
        )
        .unwrap();
        assert!(t.render(&params(json!({"n": "12; reboot"}))).is_err());
        assert_eq!(t.render(&params(json!({"n": 12}))).unwrap(), ["echo", "12"]);
    }

    #[test]
    fn the_program_cannot_be_a_parameter() {
        let params_cfg = BTreeMap::from([("p".to_owned(), ".*".to_owned())]);
        assert!(ArgvTemplate::compile(&["{p}".into()], &params_cfg, LeadingDash::Allowed).is_err());
    }

    #[test]
    fn a_leading_dash_is_found_however_the_argument_is_built() {
        let params_cfg = BTreeMap::from([
            ("a".to_owned(), "[a-z-]*".to_owned()),
            ("b".to_owned(), "[a-z-]*".to_owned()),
        ]);
        let t = ArgvTemplate::compile(
            &["ls".into(), "{a}{b}".into(), "x{a}".into()],
            &params_cfg,
            LeadingDash::Refused,
        )
        .unwrap();
        // An empty first value leaves the second one at the start of the argument.
        let err = t.render(&params(json!({"a": "", "b": "-la"}))).unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
        assert!(t.render(&params(json!({"a": "-", "b": "x"}))).is_err());
        assert!(t.render(&params(json!({"a": "a-", "b": "-x"}))).is_ok());
    }

    #[test]
    fn unicode_shorthand_classes_are_found() {
        assert_eq!(unicode_classes(r"^\d+\s\w$"), [r"\d", r"\s", r"\w"]);
        assert_eq!(unicode_classes(r"^\D\d$"), [r"\D", r"\d"]);
        assert!(unicode_classes(r"^[0-9]+\\d\.$").is_empty());
        // What the warning is about: `\d` matches digits of other scripts.
        let params_cfg = BTreeMap::from([("n".to_owned(), r"\d+".to_owned())]);
        let t = ArgvTemplate::compile(
            &["echo".into(), "{n}".into()],
            &params_cfg,
            LeadingDash::Refused,
        )
        .unwrap();
        assert!(t.render(&params(json!({"n": "٣"}))).is_ok());
    }
}
