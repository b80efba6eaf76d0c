//! Argv templates: `["docker", "restart", "{container}"]` with one pattern per parameter.
//! Rendering checks every value against its whole-value pattern before anything runs; a value
//! only ever fills the argument it stands in, it can never add an argument or a command.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Param(String),
}

/// A compiled, checked template.
#[derive(Debug, Clone)]
pub struct ArgvTemplate {
    args: Vec<Vec<Piece>>,
    patterns: BTreeMap<String, Regex>,
}

impl ArgvTemplate {
    pub fn compile(argv: &[String], params: &BTreeMap<String, String>) -> Result<Self, String> {
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
        Ok(ArgvTemplate { args, patterns })
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
        ArgvTemplate::compile(&argv, &params).unwrap()
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
        let t = ArgvTemplate::compile(&["echo".into(), "{n}".into()], &params_cfg).unwrap();
        assert!(t.render(&params(json!({"n": "12; reboot"}))).is_err());
        assert_eq!(t.render(&params(json!({"n": 12}))).unwrap(), ["echo", "12"]);
    }

    #[test]
    fn the_program_cannot_be_a_parameter() {
        let params_cfg = BTreeMap::from([("p".to_owned(), ".*".to_owned())]);
        assert!(ArgvTemplate::compile(&["{p}".into()], &params_cfg).is_err());
    }
}
