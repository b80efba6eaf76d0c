//! How the CLI prints: plain tables for people, the API's JSON for scripts, times in a form a
//! person reads at a glance, and errors as one line on standard error. Text that comes from
//! task data or logs never reaches the terminal raw: control characters are shown as escapes
//! ([`clean`]), so a log line cannot move the cursor, recolour the screen or retitle the window.

use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Table, presets};
use serde::Serialize;

/// `text` with every control character except newline and tab shown as a visible escape
/// (`\x1b`, `\r`, `\u{9b}`), so that text from task data or logs prints as what it is.
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !needs_escape(c) => out.push(c),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Adds a row of cells to `table`, each [`clean`]ed first so that the columns line up with
/// what is printed.
pub(crate) fn add_row(table: &mut Table, cells: Vec<String>) {
    table.add_row(cells.iter().map(|c| clean(c).into_owned()));
}

/// A borderless table with a header row, like `kubectl get` or `docker ps`: easy to read and
/// to `grep`/`awk`. Columns take the width of their content; nothing is cut.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.iter().map(Cell::new));
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// A two-column table of field names and values, for one object.
pub(crate) fn fields(rows: Vec<(&str, String)>) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    for (name, value) in rows {
        add_row(&mut table, vec![format!("{name}:"), value]);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Writes `text` ([`clean`]ed) and a newline to standard output. A closed pipe
/// (`muster task list | head`) surfaces as an error that [`report_error`] turns into a quiet
/// exit, never a panic.
pub(crate) fn emit(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let text = text.to_string();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", clean(&text))?;
    out.flush()?;
    Ok(())
}

/// Prints `value` as one JSON document.
pub(crate) fn emit_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    emit(serde_json::to_string_pretty(value)?)
}

/// Prints `value` as one compact JSON line (for streams of documents).
pub(crate) fn emit_json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    emit(serde_json::to_string(value)?)
}

/// Prints the error, its causes joined on one line, and chooses the exit code.
pub(crate) fn report_error(err: &anyhow::Error) -> ExitCode {
    let reader_left = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if reader_left {
        // Whoever read our output has what they wanted; that is not a failure.
        return ExitCode::SUCCESS;
    }
    note(format_args!("error: {err:#}"));
    ExitCode::FAILURE
}

/// Writes `text` ([`clean`]ed) and a newline to standard error: notes beside the output, such
/// as how a followed task ended.
pub(crate) fn note(text: impl std::fmt::Display) {
    let text = text.to_string();
    // Nothing sensible is left to do when standard error itself is gone.
    let _ = writeln!(std::io::stderr().lock(), "{}", clean(&text));
}

/// `2025-05-01 10:00:03 UTC (5m ago)`.
pub(crate) fn when(ts: DateTime<Utc>) -> String {
    format!("{} ({})", ts.format("%Y-%m-%d %H:%M:%S UTC"), ago(ts))
}

/// An optional time, `-` when absent.
pub(crate) fn when_opt(ts: Option<DateTime<Utc>>) -> String {
    ts.map(when).unwrap_or_else(|| "-".to_owned())
}

/// How long ago `ts` was, in its largest unit: `just now`, `42s ago`, `5m ago`, `3h ago`,
/// `12d ago`; a time still to come reads `in 5m`.
pub(crate) fn ago(ts: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - ts).num_seconds();
    if seconds.abs() < 1 {
        return "just now".to_owned();
    }
    let span = compact_span(seconds.unsigned_abs());
    if seconds > 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A length of time in its largest unit: `42s`, `5m`, `3h`, `12d`.
pub(crate) fn compact_span(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A log line's time: RFC 3339 in UTC with milliseconds, sortable and unambiguous.
pub(crate) fn log_time(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An optional text, `-` when absent or empty.
pub(crate) fn or_dash(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => "-".to_owned(),
    }
}

/// A list joined with commas, `-` when empty.
pub(crate) fn list_or_dash<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels as `k=v,k=v`, `-` when there are none.
pub(crate) fn labels(labels: &muster_api::Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list_or_dash(&pairs)
}

/// A percentage with one decimal, `-` when unknown.
pub(crate) fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_their_largest_unit() {
        let now = Utc::now();
        assert_eq!(ago(now), "just now");
        assert_eq!(ago(now - chrono::Duration::seconds(42)), "42s ago");
        assert_eq!(ago(now - chrono::Duration::minutes(5)), "5m ago");
        assert_eq!(ago(now - chrono::Duration::hours(3)), "3h ago");
        assert_eq!(ago(now - chrono::Duration::days(12)), "12d ago");
        assert!(ago(now + chrono::Duration::minutes(10)).starts_with("in "));
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(clean("plain\ttext\nnext"), "plain\ttext\nnext");
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(clean("50%\rdone\u{7}"), "50%\\rdone\\x07");
        assert_eq!(clean("\u{9b}2J\u{7f}"), "\\u{9b}2J\\x7f");
        assert!(matches!(clean("nothing to do"), Cow::Borrowed(_)));
    }

    #[test]
    fn log_times_are_rfc3339_with_milliseconds() {
        let ts = DateTime::parse_from_rfc3339("2025-05-01T10:00:03.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(log_time(ts), "2025-05-01T10:00:03.123Z");
    }
}
