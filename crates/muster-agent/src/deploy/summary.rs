//! What a deployment's output says, read line by line as it streams: Ansible's `PLAY RECAP`
//! counts per host, Terraform's plan and apply totals, and the last lines of any program, for
//! the error when it fails. Each reader is fed one line at a time and never holds the whole
//! output, which for a large playbook can be long.

use std::collections::{BTreeMap, VecDeque};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Value, json};

/// How many lines of a program's output an error quotes.
const TAIL_LINES: usize = 12;
/// How much of one line an error quotes.
const TAIL_LINE_CHARS: usize = 300;

/// Colour escapes (`ESC [ … m`) a program may print even into a pipe when told to force colour;
/// the summaries match the text without them.
static ESCAPES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").unwrap());
static TF_PLAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Plan: (?:(\d+) to import, )?(\d+) to add, (\d+) to change, (\d+) to destroy\.")
        .unwrap()
});
static TF_APPLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:Apply|Destroy) complete! Resources: (?:(\d+) imported, )?(?:(\d+) added, )?(?:(\d+) changed, )?(\d+) destroyed\.",
    )
    .unwrap()
});

fn plain(line: &str) -> std::borrow::Cow<'_, str> {
    ESCAPES.replace_all(line, "")
}

/// The last lines of a program's output, stdout and stderr in the order they came.
#[derive(Debug, Default)]
pub(super) struct Tail(VecDeque<String>);

impl Tail {
    pub(super) fn push(&mut self, line: &str) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0
            .push_back(plain(line).chars().take(TAIL_LINE_CHARS).collect());
    }

    /// The lines, one per line; empty when the program said nothing.
    pub(super) fn text(&self) -> String {
        Vec::from(self.0.clone()).join("\n")
    }
}

/// The counters of one host in Ansible's recap, in the order Ansible prints them.
const RECAP_COUNTERS: [&str; 7] = [
    "ok",
    "changed",
    "unreachable",
    "failed",
    "skipped",
    "rescued",
    "ignored",
];

/// Reads the `PLAY RECAP` block: after the `PLAY RECAP ***` line, one line per host,
/// `media : ok=5 changed=2 unreachable=0 failed=0 skipped=1 rescued=0 ignored=0`, up to the
/// first line that is not one. A later recap replaces an earlier one.
#[derive(Debug, Default)]
pub(super) struct Recap {
    seen: bool,
    in_block: bool,
    hosts: BTreeMap<String, [u64; 7]>,
}

impl Recap {
    pub(super) fn feed(&mut self, line: &str) {
        let line = plain(line);
        if line.starts_with("PLAY RECAP") {
            self.seen = true;
            self.in_block = true;
            self.hosts.clear();
            return;
        }
        if !self.in_block {
            return;
        }
        match recap_line(&line) {
            Some((host, counts)) => {
                self.hosts.insert(host, counts);
            }
            None => self.in_block = false,
        }
    }

    /// `{"hosts": {name: {ok, changed, …}}, "totals": {ok, changed, …}}`, or null when no
    /// recap was printed (a playbook that failed to parse, another stdout callback).
    pub(super) fn summary(&self) -> Value {
        if !self.seen {
            return Value::Null;
        }
        let counters = |counts: &[u64; 7]| {
            let map: serde_json::Map<String, Value> = RECAP_COUNTERS
                .iter()
                .zip(counts)
                .map(|(name, n)| ((*name).to_owned(), json!(n)))
                .collect();
            Value::Object(map)
        };
        let mut totals = [0u64; 7];
        for counts in self.hosts.values() {
            for (total, n) in totals.iter_mut().zip(counts) {
                *total += n;
            }
        }
        let hosts: serde_json::Map<String, Value> = self
            .hosts
            .iter()
            .map(|(host, counts)| (host.clone(), counters(counts)))
            .collect();
        json!({"hosts": hosts, "totals": counters(&totals)})
    }
}

fn recap_line(line: &str) -> Option<(String, [u64; 7])> {
    let (host, counters) = line.split_once(" : ")?;
    let host = host.trim();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let mut counts = [0u64; 7];
    let mut any = false;
    for pair in counters.split_whitespace() {
        let (name, n) = pair.split_once('=')?;
        let n: u64 = n.parse().ok()?;
        // A counter a later Ansible adds is passed over, not a reason to drop the host.
        if let Some(at) = RECAP_COUNTERS.iter().position(|c| *c == name) {
            counts[at] = n;
            any = true;
        }
    }
    any.then(|| (host.to_owned(), counts))
}

/// Reads Terraform's totals: `Plan: 1 to add, 2 to change, 0 to destroy.` (with `N to
/// import, ` before them since 1.5), `No changes.`, and `Apply complete! Resources: 1 added,
/// 2 changed, 0 destroyed.`
#[derive(Debug, Default)]
pub(super) struct TerraformTotals {
    /// import, add, change, destroy.
    plan: Option<[u64; 4]>,
    /// imported, added, changed, destroyed.
    apply: Option<[u64; 4]>,
}

impl TerraformTotals {
    pub(super) fn feed(&mut self, line: &str) {
        let line = plain(line);
        let number = |m: Option<regex::Match<'_>>| m.map_or(0, |m| m.as_str().parse().unwrap_or(0));
        if line.starts_with("No changes.") {
            self.plan = Some([0; 4]);
        } else if let Some(c) = TF_PLAN.captures(&line) {
            self.plan = Some([1, 2, 3, 4].map(|i| number(c.get(i))));
        } else if let Some(c) = TF_APPLY.captures(&line) {
            self.apply = Some([1, 2, 3, 4].map(|i| number(c.get(i))));
        }
    }

    /// `{"changes": bool, "plan": {import, add, change, destroy}, "apply": {imported, added,
    /// changed, destroyed}}`; a part Terraform did not print is null, and `changes` is null
    /// when it printed neither.
    pub(super) fn summary(&self) -> Value {
        let plan = self
            .plan
            .map(|[import, add, change, destroy]| json!({"import": import, "add": add, "change": change, "destroy": destroy}));
        let apply = self.apply.map(|[imported, added, changed, destroyed]| {
            json!({"imported": imported, "added": added, "changed": changed, "destroyed": destroyed})
        });
        let changes = self
            .apply
            .or(self.plan)
            .map(|counts| counts.iter().any(|n| *n > 0));
        json!({"changes": changes, "plan": plan, "apply": apply})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recap(lines: &str) -> Value {
        let mut recap = Recap::default();
        for line in lines.lines() {
            recap.feed(line);
        }
        recap.summary()
    }

    #[test]
    fn the_play_recap_is_read_per_host_with_totals() {
        let out = "\
PLAY [media] *******************************************************************

TASK [Gathering Facts] *********************************************************
ok: [media]

PLAY RECAP *********************************************************************
media                      : ok=5    changed=2    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0   
\u{1b}[0;33mnas\u{1b}[0m                        : \u{1b}[0;32mok=3\u{1b}[0m    changed=0    unreachable=1    failed=1    skipped=0    rescued=1    ignored=2

Playbook run took 0 days, 0 hours, 0 minutes, 4 seconds
";
        let summary = recap(out);
        assert_eq!(
            summary["hosts"]["media"],
            json!({"ok": 5, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 1, "rescued": 0, "ignored": 0})
        );
        assert_eq!(summary["hosts"]["nas"]["unreachable"], 1);
        assert_eq!(summary["hosts"]["nas"]["ignored"], 2);
        assert_eq!(
            summary["totals"],
            json!({"ok": 8, "changed": 2, "unreachable": 1, "failed": 1, "skipped": 1, "rescued": 1, "ignored": 2})
        );
        assert_eq!(summary["hosts"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn no_recap_is_null_and_lines_after_the_block_are_not_hosts() {
        assert_eq!(
            recap("ERROR! the playbook could not be found\n"),
            Value::Null
        );
        let summary = recap("PLAY RECAP ***\nweb : ok=1 changed=1\nnot a host line\nx : ok=9\n");
        assert_eq!(summary["hosts"].as_object().unwrap().len(), 1);
        assert_eq!(summary["totals"]["changed"], 1);
    }

    fn terraform(lines: &str) -> Value {
        let mut totals = TerraformTotals::default();
        for line in lines.lines() {
            totals.feed(line);
        }
        totals.summary()
    }

    #[test]
    fn terraform_totals_are_read_from_plan_and_apply() {
        let plan = terraform(
            "terraform_data.x will be created\nPlan: 2 to add, 1 to change, 0 to destroy.\n",
        );
        assert_eq!(
            plan,
            json!({"changes": true, "plan": {"import": 0, "add": 2, "change": 1, "destroy": 0}, "apply": null})
        );
        let none = terraform("No changes. Your infrastructure matches the configuration.\n");
        assert_eq!(none["changes"], false);
        assert_eq!(none["plan"]["add"], 0);
        let apply = terraform(
            "Plan: 1 to import, 0 to add, 0 to change, 3 to destroy.\nApply complete! Resources: 1 imported, 0 added, 0 changed, 3 destroyed.\n",
        );
        assert_eq!(apply["plan"]["import"], 1);
        assert_eq!(
            apply["apply"],
            json!({"imported": 1, "added": 0, "changed": 0, "destroyed": 3})
        );
        assert_eq!(apply["changes"], true);
        let unchanged = terraform("Apply complete! Resources: 0 added, 0 changed, 0 destroyed.\n");
        assert_eq!(unchanged["changes"], false);
        assert_eq!(
            terraform("Error: Invalid reference\n"),
            json!({"changes": null, "plan": null, "apply": null})
        );
    }

    #[test]
    fn the_tail_keeps_the_last_lines_without_colour() {
        let mut tail = Tail::default();
        assert_eq!(tail.text(), "");
        for i in 0..20 {
            tail.push(&format!("\u{1b}[31mline {i}\u{1b}[0m"));
        }
        let text = tail.text();
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert!(
            text.starts_with("line 8\n") && text.ends_with("line 19"),
            "{text}"
        );
    }
}
