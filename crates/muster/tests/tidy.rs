//! Repository rules, checked as a test: every Rust file says what it holds in a `//!` line, no
//! test is switched off, and only the places that must start processes do.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace_files() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    assert!(
        files.len() > 10,
        "found too few files under {}",
        root.display()
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    for (path, text) in workspace_files() {
        assert!(
            text.trim_start().starts_with("//!"),
            "{} must open with a `//!` line saying what it holds",
            path.display()
        );
    }
}

#[test]
fn no_test_is_switched_off() {
    let ignore = ["#[", "ignore]"].concat();
    let should_panic = ["#[", "should_panic"].concat();
    for (path, text) in workspace_files() {
        assert!(
            !text.contains(&ignore),
            "{}: a test that never runs guards nothing",
            path.display()
        );
        assert!(
            !text.contains(&should_panic),
            "{}: assert the error instead",
            path.display()
        );
    }
}

/// Whether `code` can start a process, however it spells it: `Command::new`, a path through
/// a `process` module to `Command` (`std::process::Command`, `tokio::process::Command as P`),
/// a glob import of one, or `Command` inside an import group (`use std::process::{Child,
/// Command};`, over several lines or nested in `std::{…}`).
fn starts_a_process(code: &str) -> bool {
    let command = ["Com", "mand"].concat();
    let process = ["process", "::"].concat();
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    let has_word = |text: &str, word: &str| text.split(|c| !is_word_char(c)).any(|w| w == word);
    let new_call = code
        .match_indices(&format!("{command}::new"))
        .any(|(at, _)| !code[..at].ends_with(is_word_char));
    if new_call
        || code.contains(&format!("{process}{command}"))
        || code.contains(&format!("{process}*"))
    {
        return true;
    }
    code.match_indices(&format!("{process}{{"))
        .any(|(at, needle)| {
            // The group runs to its matching brace; groups may nest.
            let group = &code[at + needle.len()..];
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            has_word(&group[..end], &command)
        })
}

#[test]
fn the_process_rule_sees_every_spelling() {
    let spellings = [
        "use std::process::{Child, Command, Stdio};",
        "use std::process::{\n    Child,\n    Command,\n};",
        "use std::{io, process::{Command, Stdio}};",
        "use std::process::{self, Stdio};\nlet c = process::Command::new(\"x\");",
        "use tokio::process::Command;",
        "use std::process::Command as Program;",
        "use std::process::*;",
        "let c = std::process::Command::new(\"x\");",
    ];
    for code in spellings {
        assert!(starts_a_process(code), "missed: {code}");
    }
    let harmless = [
        "use std::process::{ExitCode, Stdio};",
        "enum Command { Serve }\nmatch c { Command::Serve => {} }",
        "use std::process::{ExitCode};\nuse clap::Subcommand;",
    ];
    for code in harmless {
        assert!(!starts_a_process(code), "flagged: {code}");
    }
}

#[test]
fn processes_start_only_where_they_must() {
    // Only the agent's executor module, the supervisor it starts actions through, and the
    // benchmark's server launcher start programs; tests that run the real binary do.
    for (path, text) in workspace_files() {
        let allowed = path.components().any(|c| c.as_os_str() == "tests")
            || path.ends_with("muster-agent/src/process.rs")
            || path.ends_with("muster/src/exec_child.rs")
            || path.ends_with("muster-bench/src/local.rs")
            || path.ends_with("muster-bench/src/figures.rs");
        assert!(
            allowed || !starts_a_process(&text),
            "{} starts a process",
            path.display()
        );
    }
}

/// The top-level module of `crate::…` paths a file of the server names, including inline
/// paths such as `crate::sweeper::run(…)`.
fn crate_modules_named(text: &str) -> Vec<String> {
    let mut named = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        // Skip `muster_server::…`-style paths that merely end in "crate".
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            named.push(name);
        }
    }
    named
}

#[test]
fn the_servers_modules_import_no_cycle() {
    // Each file belongs to its top-level module (`store/sqlite/tasks.rs` to `store`); an edge
    // runs from it to every top-level module it names through `crate::`. A cycle means two
    // parts of the server cannot be understood, or replaced, one without the other.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../muster-server/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for path in files {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Doc comments may name any module; only code counts.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for named in crate_modules_named(&code) {
            if named != module {
                edges.entry(module.clone()).or_default().insert(named);
            }
        }
    }
    assert!(
        edges.contains_key("app"),
        "the scan found no imports: {edges:?}"
    );
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        node: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            panic!("module cycle in muster-server: {}", cycle.join(" -> "));
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = Default::default();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done);
    }
}
