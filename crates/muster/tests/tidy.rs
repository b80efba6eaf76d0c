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

#[test]
fn processes_start_only_where_they_must() {
    // Only the agent's executor module and the benchmark's server launcher start programs;
    // tests that run the real binary do.
    let needle = ["process::", "Command"].concat();
    for (path, text) in workspace_files() {
        let allowed = path.components().any(|c| c.as_os_str() == "tests")
            || path.ends_with("muster-agent/src/process.rs")
            || path.ends_with("muster-bench/src/local.rs")
            || path.ends_with("muster-bench/src/figures.rs");
        assert!(
            allowed || !text.contains(&needle),
            "{} starts a process",
            path.display()
        );
    }
}
