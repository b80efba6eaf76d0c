//! The deploy executor against a real control plane and a real git repository: tasks of kind
//! `ansible` and `terraform` run stand-in programs (shell scripts that record how they were
//! started and talk like the real ones) in a worktree of their own at exactly the pushed
//! commit; refused payloads run nothing, not even git; a cancel or a timeout kills the
//! program; and the worktree is gone when the task ends, however it ends.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use muster_api::{LogStream, SubmitTask, Task, TaskState};
use serde_json::{Value, json};
use support::{Plane, alive, read_pid, start_agent, wait_gone};
use tokio_util::sync::CancellationToken;

/// An origin repository with two commits, the stand-ins, and where the agent works.
struct Fixture {
    /// The origin's clone URL (`file://…`).
    url: String,
    /// The first and the second commit.
    shas: [String; 2],
    /// A third commit, on no branch: the branch was moved back over it, as a force push does.
    dangling: String,
    /// The stand-ins, their exit codes (`exit-ansible`, `exit-init`, `exit-plan`, …) and the
    /// fifos a run blocks on (`block-<sha>`).
    bin: PathBuf,
    /// What each stand-in run recorded, in a directory named by the commit it ran at.
    records: PathBuf,
    workdir: PathBuf,
    /// A file outside the repository that a link in the second commit points at.
    outside: PathBuf,
    _dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=muster test",
            "-c",
            "user.email=test@muster.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    write(path, script);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The part of both stand-ins that records a run: argv one per line, the working directory,
/// the checkout's top and commit. Then, when the test made a fifo for this commit, it says so
/// on stdout and blocks reading it, so a test can act while the program runs.
fn recording(records: &Path, bin: &Path) -> String {
    format!(
        r#"head=$(git rev-parse HEAD)
rec="{records}/$head"
mkdir -p "$rec"
printf '%s\n' "$@" >> "$rec/argv"
pwd -P >> "$rec/cwd"
git rev-parse --show-toplevel > "$rec/top"
if [ -p "{bin}/block-$head" ]; then
  echo "waiting at $head"
  echo $$ > "$rec/pid"
  read line < "{bin}/block-$head"
fi
"#,
        records = records.display(),
        bin = bin.display(),
    )
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // Canonical, so that paths the stand-ins see (git reports real paths) compare equal.
        let root = dir.path().canonicalize().unwrap();
        let origin = root.join("origin");
        std::fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q"]);
        write(
            &origin.join("ansible/playbooks/media.yml"),
            "- hosts: media\n",
        );
        write(
            &origin.join("ansible/inventory/hosts.yml"),
            "all:\n  hosts:\n    media:\n",
        );
        write(
            &origin.join("terraform/media/main.tf"),
            "resource \"terraform_data\" \"x\" {}\n",
        );
        git(&origin, &["add", "-A"]);
        git(&origin, &["commit", "-q", "-m", "one"]);
        let first = git(&origin, &["rev-parse", "HEAD"]);
        write(
            &origin.join("ansible/playbooks/media.yml"),
            "- hosts: media\n  tasks: []\n",
        );
        let outside = root.join("outside.yml");
        write(&outside, "- hosts: all\n");
        std::os::unix::fs::symlink(&outside, origin.join("ansible/playbooks/escape.yml")).unwrap();
        git(&origin, &["add", "-A"]);
        git(&origin, &["commit", "-q", "-m", "two"]);
        let second = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["commit", "-q", "--allow-empty", "-m", "three"]);
        let dangling = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["reset", "-q", "--hard", &second]);

        let bin = root.join("bin");
        let records = root.join("records");
        std::fs::create_dir_all(&records).unwrap();
        let exit = |name: &str| {
            format!(
                "exit \"$(cat '{}/exit-{name}' 2>/dev/null || echo 0)\"",
                bin.display()
            )
        };
        executable(
            &bin.join("ansible-playbook"),
            &format!(
                r#"#!/bin/sh
# A stand-in for ansible-playbook.
{record}
echo "PLAY [media] *******************************************************************"
echo ""
echo "TASK [Gathering Facts] *********************************************************"
echo "ok: [media]"
echo "[WARNING]: a warning on stderr" >&2
echo ""
echo "PLAY RECAP *********************************************************************"
echo "media                      : ok=5    changed=2    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0   "
echo "nas                        : ok=3    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0   "
{exit}
"#,
                record = recording(&records, &bin),
                exit = exit("ansible"),
            ),
        );
        executable(
            &bin.join("terraform"),
            &format!(
                r#"#!/bin/sh
# A stand-in for terraform: one argv line per argument, a line "--" after each call.
{record}
echo "--" >> "$rec/argv"
echo "TF_IN_AUTOMATION=$TF_IN_AUTOMATION" >> "$rec/env"
case "$1" in
  init) echo "Terraform has been successfully initialized!" ;;
  plan) echo "  # terraform_data.x will be created"; echo "Plan: 2 to add, 1 to change, 0 to destroy." ;;
  apply) echo '{{"version": 4}}' > terraform.tfstate; echo "Apply complete! Resources: 2 added, 1 changed, 0 destroyed." ;;
esac
exit "$(cat '{bin}/exit-'"$1" 2>/dev/null || echo 0)"
"#,
                record = recording(&records, &bin),
                bin = bin.display(),
            ),
        );
        Fixture {
            url: format!("file://{}", origin.display()),
            shas: [first, second],
            dangling,
            bin,
            records,
            workdir: root.join("work"),
            outside,
            _dir: dir,
        }
    }

    fn config(&self) -> String {
        format!(
            r#"
[agent]
id = "deploy-test"
max_concurrency = 2
heartbeat_s = 1

[deploy]
workdir = "{workdir}"
repos = ["{url}"]
ansible_playbook = "{bin}/ansible-playbook"
terraform = "{bin}/terraform"
"#,
            workdir = self.workdir.display(),
            url = self.url,
            bin = self.bin.display(),
        )
    }

    fn ansible(&self, sha: &str, extra: Value) -> Value {
        let mut payload = json!({
            "repo": "homelab/infra",
            "clone_url": self.url,
            "sha": sha,
            "playbook": "ansible/playbooks/media.yml",
        });
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        payload
    }

    fn terraform(&self, sha: &str, mode: &str, vars: Value) -> Value {
        json!({
            "repo": "homelab/infra",
            "clone_url": self.url,
            "sha": sha,
            "dir": "terraform/media",
            "mode": mode,
            "vars": vars,
        })
    }

    /// What the stand-in recorded at `sha`: `argv`, `cwd`, `top`, `pid`, `env`.
    fn record(&self, sha: &str, what: &str) -> String {
        let path = self.records.join(sha).join(what);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the stand-in recorded no {}: {e}", path.display()))
            .trim_end()
            .to_owned()
    }

    /// Every run the stand-ins made, by commit.
    fn runs(&self) -> Vec<String> {
        std::fs::read_dir(&self.records)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The worktrees that exist now.
    fn worktrees(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.workdir.join("worktrees")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn set_exit(&self, name: &str, code: i32) {
        write(&self.bin.join(format!("exit-{name}")), &code.to_string());
    }

    /// Makes a run at `sha` block until [`Fixture::release`].
    fn block(&self, sha: &str) -> PathBuf {
        let fifo = self.bin.join(format!("block-{sha}"));
        let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        fifo
    }

    /// Lets a blocked run go on; the stand-in is already reading, so opening returns at once,
    /// and a stand-in that never reads fails the test at the deadline, not by hanging it.
    async fn release(&self, fifo: PathBuf) {
        let open = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut writer = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            writer.write_all(b"go\n").unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), open)
            .await
            .expect("no stand-in was reading the fifo")
            .unwrap();
    }
}

/// A fixture, a control plane and the agent of the fixture's config, running.
struct Deploying {
    fx: Fixture,
    plane: Plane,
    stop: CancellationToken,
    agent: tokio::task::JoinHandle<()>,
}

impl Deploying {
    async fn start() -> Deploying {
        let fx = Fixture::new();
        let plane = Plane::start().await;
        let (stop, agent) = start_agent(&plane, &fx.config());
        Deploying {
            fx,
            plane,
            stop,
            agent,
        }
    }

    async fn submit(
        &self,
        kind: &str,
        payload: Value,
        max_retries: u32,
        timeout_s: Option<u32>,
    ) -> Task {
        let task = SubmitTask {
            kind: kind.into(),
            payload,
            capabilities: vec![kind.into()],
            priority: 0,
            max_retries: Some(max_retries),
            timeout_s,
            lock_key: None,
            idempotency_key: None,
            run_after: None,
            labels: Default::default(),
        };
        self.plane.client.submit(&task).await.unwrap().0
    }

    /// Submits a task with `max_retries` and no timeout, and waits until it is final.
    async fn run(&self, kind: &str, payload: Value, max_retries: u32) -> Task {
        let task = self.submit(kind, payload, max_retries, None).await;
        self.plane.wait_final(&task).await
    }

    async fn logs(&self, task: &Task) -> Vec<(LogStream, String)> {
        let page = self.plane.client.logs(task.id, 0, 5000).await.unwrap();
        page.lines.into_iter().map(|l| (l.stream, l.text)).collect()
    }

    /// Waits (bounded) until the task's log has a line `line` on `stream`, while it runs.
    async fn wait_for_log(&self, task: &Task, stream: LogStream, line: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let logs = self.logs(task).await;
            if logs.iter().any(|(s, t)| *s == stream && t == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never showed {line:?}: {logs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks that every task left its worktree behind it gone, and stops the agent.
    async fn finish(self) {
        let left = self.fx.worktrees();
        assert!(left.is_empty(), "worktrees left: {left:?}");
        self.stop.cancel();
        self.agent.await.unwrap();
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn assert_state(task: &Task, state: TaskState) {
    assert_eq!(task.state, state, "{task:?}");
}

fn error(task: &Task) -> &str {
    task.error.as_deref().unwrap_or_default()
}

#[tokio::test]
async fn an_ansible_task_runs_the_playbook_in_a_worktree_at_the_pushed_commit() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let [first, second] = fx.shas.clone();

    let payload = fx.ansible(
        &second,
        json!({
            "inventory": "ansible/inventory/hosts.yml",
            "limit": "media",
            "tags": "a,b",
            "extra_vars": {"image": "jellyfin:10.9"},
            "dir": "ansible",
        }),
    );
    let task = d.run("ansible", payload, 0).await;
    assert_state(&task, TaskState::Completed);

    // The program ran in the worktree's `ansible` directory, at exactly the pushed commit.
    let top = fx.record(&second, "top");
    assert!(
        Path::new(&top).starts_with(fx.workdir.join("worktrees")),
        "{top} is not one of the agent's worktrees"
    );
    assert_eq!(fx.record(&second, "cwd"), format!("{top}/ansible"));
    assert_eq!(
        lines(&fx.record(&second, "argv")),
        [
            "-i",
            &format!("{top}/ansible/inventory/hosts.yml"),
            "--limit",
            "media",
            "--tags",
            "a,b",
            "--extra-vars",
            r#"{"image":"jellyfin:10.9"}"#,
            &format!("{top}/ansible/playbooks/media.yml"),
        ]
    );
    let result = task.result.as_ref().unwrap();
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["sha"], second.as_str());
    assert_eq!(result["program"], "ansible-playbook");
    let program = fx.bin.join("ansible-playbook").display().to_string();
    assert_eq!(result["argv"][0], program.as_str());
    assert_eq!(
        result["argv"][9],
        format!("{top}/ansible/playbooks/media.yml").as_str()
    );
    assert_eq!(
        result["summary"]["hosts"]["media"],
        json!({"ok": 5, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 1, "rescued": 0, "ignored": 0})
    );
    assert_eq!(result["summary"]["totals"]["ok"], 8);
    assert_eq!(result["summary"]["totals"]["unreachable"], 1);

    // Git's lines and the program's, each on its stream, are the task's log.
    let log = d.logs(&task).await;
    for (stream, line) in [
        (LogStream::Stdout, "ok: [media]"),
        (LogStream::Stderr, "[WARNING]: a warning on stderr"),
        (LogStream::System, "exit code 0"),
    ] {
        assert!(
            log.iter().any(|(s, t)| *s == stream && t == line),
            "{line:?} missing: {log:?}"
        );
    }
    assert!(
        log.iter()
            .any(|(s, t)| *s == LogStream::System && t.contains(" worktree add --detach ")),
        "{log:?}"
    );
    assert!(
        !Path::new(&top).exists(),
        "the worktree {top} is still there"
    );

    // The first commit checks out the first commit, from the same clone.
    let task = d.run("ansible", fx.ansible(&first, json!({})), 0).await;
    assert_state(&task, TaskState::Completed);
    let top = fx.record(&first, "top");
    assert_eq!(
        fx.record(&first, "cwd"),
        top,
        "without dir, the repository's root"
    );
    assert_eq!(
        lines(&fx.record(&first, "argv")),
        [format!("{top}/ansible/playbooks/media.yml")]
    );
    let clones = std::fs::read_dir(fx.workdir.join("clones"))
        .unwrap()
        .count();
    assert_eq!(clones, 1, "one clone serves every commit of the repository");
    d.finish().await;
}

#[tokio::test]
async fn a_commit_on_no_branch_is_fetched_by_its_id_and_a_missing_one_fails() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let task = d
        .run("ansible", fx.ansible(&fx.dangling, json!({})), 0)
        .await;
    assert_state(&task, TaskState::Completed);
    // The stand-in files what it records under the commit its checkout is at.
    let top = fx.record(&fx.dangling, "top");
    assert!(
        Path::new(&top).starts_with(fx.workdir.join("worktrees")),
        "{top}"
    );

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let task = d.run("ansible", fx.ansible(missing, json!({})), 0).await;
    assert_state(&task, TaskState::Failed);
    let expected = format!("commit {missing} is not in {}", fx.url);
    assert!(error(&task).contains(&expected), "{task:?}");
    assert!(!fx.records.join(missing).exists());
    d.finish().await;
}

#[tokio::test]
async fn check_mode_adds_check_and_diff() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let sha = fx.shas[1].clone();
    let payload = fx.ansible(&sha, json!({"check": true, "tags": ["web"]}));
    let task = d.run("ansible", payload, 0).await;
    assert_state(&task, TaskState::Completed);
    let top = fx.record(&sha, "top");
    assert_eq!(
        lines(&fx.record(&sha, "argv")),
        [
            "--tags",
            "web",
            "--check",
            "--diff",
            &format!("{top}/ansible/playbooks/media.yml")
        ]
    );
    d.finish().await;
}

#[tokio::test]
async fn a_failing_playbook_fails_the_task_for_good_with_its_exit_code() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    fx.set_exit("ansible", 2);
    // Retries are allowed; a failed playbook must still not run again by itself.
    let task = d
        .run("ansible", fx.ansible(&fx.shas[1], json!({})), 3)
        .await;
    assert_state(&task, TaskState::Failed);
    assert_eq!(task.attempts.len(), 1, "retried: {:?}", task.attempts);
    let error = error(&task);
    assert!(
        error.contains("ansible-playbook exited with code 2"),
        "{error}"
    );
    assert!(
        error.contains("nas                        : ok=3"),
        "the last lines: {error}"
    );
    d.finish().await;
}

#[tokio::test]
async fn refused_payloads_run_nothing_not_even_git() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let sha = fx.shas[1].clone();
    let other = format!("{}-other", fx.url);
    let ansible = |extra: Value| ("ansible", fx.ansible(&sha, extra));
    let cases = [
        (
            ansible(json!({"playbook": "../../etc/passwd"})),
            "payload.playbook",
        ),
        (
            ansible(json!({"playbook": "/etc/passwd"})),
            "payload.playbook",
        ),
        (
            ansible(json!({"inventory": "/etc/ansible/hosts"})),
            "payload.inventory",
        ),
        (ansible(json!({"sha": "not-a-commit"})), "payload.sha"),
        (ansible(json!({"sha": sha.to_uppercase()})), "payload.sha"),
        (
            ansible(json!({"clone_url": other})),
            "is not in this agent's deploy.repos",
        ),
        (ansible(json!({"limit": "media;reboot"})), "payload.limit"),
        (ansible(json!({"limt": "media"})), "unknown field `limt`"),
        (
            ("terraform", fx.terraform(&sha, "destroy", json!({}))),
            "payload.mode",
        ),
        (
            (
                "terraform",
                fx.terraform(&sha, "apply", json!({"a;b": "x"})),
            ),
            "payload.vars",
        ),
    ];
    for ((kind, payload), expected) in cases {
        let task = d.run(kind, payload.clone(), 0).await;
        assert_state(&task, TaskState::Failed);
        assert!(error(&task).contains(expected), "{payload}: {task:?}");
        let log = d.logs(&task).await;
        assert!(
            !log.iter().any(|(_, t)| t.starts_with("$ ")),
            "{payload}: something ran: {log:?}"
        );
    }
    assert!(fx.runs().is_empty(), "a stand-in ran: {:?}", fx.runs());
    assert!(
        !fx.workdir.join("clones").exists(),
        "git ran: a clone was made"
    );
    d.finish().await;
}

#[tokio::test]
async fn a_path_that_leaves_the_checkout_through_a_link_is_refused() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    for (extra, expected) in [
        (
            json!({"playbook": "ansible/playbooks/escape.yml"}),
            "outside the repository",
        ),
        (
            json!({"playbook": "ansible/playbooks/none.yml"}),
            "does not exist",
        ),
        (
            json!({"dir": "terraform/media/main.tf"}),
            "is not a directory",
        ),
    ] {
        let task = d.run("ansible", fx.ansible(&fx.shas[1], extra), 0).await;
        assert_state(&task, TaskState::Failed);
        assert!(error(&task).contains(expected), "{task:?}");
    }
    assert!(fx.outside.exists());
    assert!(fx.runs().is_empty(), "the stand-in ran: {:?}", fx.runs());
    d.finish().await;
}

#[tokio::test]
async fn terraform_plans_and_applies_in_the_module_directory() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let [first, second] = fx.shas.clone();

    let vars = json!({"replicas": 2, "image": "a b"});
    let task = d
        .run("terraform", fx.terraform(&second, "plan", vars), 0)
        .await;
    assert_state(&task, TaskState::Completed);
    let top = fx.record(&second, "top");
    assert_eq!(
        lines(&fx.record(&second, "argv")),
        [
            "init",
            "-input=false",
            "-no-color",
            "--",
            "plan",
            "-input=false",
            "-no-color",
            "-var",
            "image=a b",
            "-var",
            "replicas=2",
            "--",
        ]
    );
    let module = format!("{top}/terraform/media");
    assert_eq!(
        lines(&fx.record(&second, "cwd")),
        [module.as_str(), module.as_str()]
    );
    assert_eq!(lines(&fx.record(&second, "env")), ["TF_IN_AUTOMATION=1"; 2]);
    let result = task.result.as_ref().unwrap();
    assert_eq!(result["program"], "terraform");
    assert_eq!(result["argv"][1], "plan");
    assert_eq!(
        result["summary"],
        json!({"changes": true, "plan": {"import": 0, "add": 2, "change": 1, "destroy": 0}, "apply": null})
    );
    assert!(result.get("warnings").is_none(), "{result}");

    // An apply that leaves its state in the worktree keeps a copy and says where.
    let task = d
        .run("terraform", fx.terraform(&first, "apply", json!({})), 0)
        .await;
    assert_state(&task, TaskState::Completed);
    let calls = fx.record(&first, "argv");
    assert!(
        calls.contains("\napply\n-input=false\n-auto-approve\n-no-color\n--"),
        "{calls}"
    );
    let result = task.result.as_ref().unwrap();
    assert_eq!(
        result["summary"]["apply"],
        json!({"imported": 0, "added": 2, "changed": 1, "destroyed": 0})
    );
    let warning = result["warnings"][0].as_str().unwrap();
    let copy = fx
        .workdir
        .join("terraform-state")
        .join(format!("task-{}-1.tfstate", task.id));
    assert!(warning.contains(&copy.display().to_string()), "{warning}");
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap().trim(),
        r#"{"version": 4}"#
    );
    d.finish().await;
}

#[tokio::test]
async fn terraform_failures_name_the_step_and_only_init_is_retried() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let [first, second] = fx.shas.clone();
    fx.set_exit("plan", 1);
    let task = d
        .run("terraform", fx.terraform(&second, "plan", json!({})), 1)
        .await;
    assert_state(&task, TaskState::Failed);
    assert_eq!(task.attempts.len(), 1, "a failed plan was retried");
    assert!(
        error(&task).contains("terraform exited with code 1"),
        "{task:?}"
    );

    fx.set_exit("init", 1);
    let task = d
        .run("terraform", fx.terraform(&first, "plan", json!({})), 1)
        .await;
    assert_state(&task, TaskState::Failed);
    assert_eq!(
        task.attempts.len(),
        2,
        "a failed init is worth another attempt"
    );
    assert!(
        error(&task).contains("terraform init exited with code 1"),
        "{task:?}"
    );
    assert!(
        !fx.record(&first, "argv").contains("plan"),
        "plan ran after a failed init"
    );
    d.finish().await;
}

#[tokio::test]
async fn cancelling_a_deployment_kills_the_program_and_removes_the_worktree() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let sha = fx.shas[1].clone();
    let _fifo = fx.block(&sha);
    let task = d
        .submit("ansible", fx.ansible(&sha, json!({})), 0, None)
        .await;
    // What the program printed is in the task's log while it still runs.
    d.wait_for_log(&task, LogStream::Stdout, &format!("waiting at {sha}"))
        .await;
    let pid = read_pid(&fx.records.join(&sha).join("pid")).await;
    let top = fx.record(&sha, "top");
    assert!(alive(pid) && Path::new(&top).is_dir());
    d.plane.client.cancel(task.id).await.unwrap();
    let task = d.plane.wait_final(&task).await;
    assert_state(&task, TaskState::Cancelled);
    wait_gone(pid, "the cancelled stand-in").await;
    assert!(
        !Path::new(&top).exists(),
        "the worktree {top} outlived the cancel"
    );
    d.finish().await;
}

#[tokio::test]
async fn a_timed_out_deployment_is_killed_and_its_worktree_removed() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let sha = fx.shas[0].clone();
    let _fifo = fx.block(&sha);
    let payload = fx.terraform(&sha, "plan", json!({}));
    let task = d.submit("terraform", payload, 0, Some(3)).await;
    let pid = read_pid(&fx.records.join(&sha).join("pid")).await;
    let top = fx.record(&sha, "top");
    let task = d.plane.wait_final(&task).await;
    assert_state(&task, TaskState::Failed);
    wait_gone(pid, "the timed-out stand-in").await;
    // The agent reports after it removed the worktree, but the server may time the attempt
    // out first; wait for the removal, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&top).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worktree {top} outlived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.finish().await;
}

#[tokio::test]
async fn two_deployments_of_one_repository_run_in_separate_worktrees() {
    let d = Deploying::start().await;
    let fx = &d.fx;
    let [first, second] = fx.shas.clone();
    let fifos = [fx.block(&first), fx.block(&second)];
    let a = d
        .submit("ansible", fx.ansible(&first, json!({})), 0, None)
        .await;
    let b = d
        .submit("ansible", fx.ansible(&second, json!({})), 0, None)
        .await;
    // Both run at once, each at its own commit in its own tree.
    read_pid(&fx.records.join(&first).join("pid")).await;
    read_pid(&fx.records.join(&second).join("pid")).await;
    let (top_a, top_b) = (fx.record(&first, "top"), fx.record(&second, "top"));
    assert_ne!(top_a, top_b);
    assert_eq!(git(Path::new(&top_a), &["rev-parse", "HEAD"]), first);
    assert_eq!(git(Path::new(&top_b), &["rev-parse", "HEAD"]), second);
    for fifo in fifos {
        fx.release(fifo).await;
    }
    for task in [a, b] {
        let task = d.plane.wait_final(&task).await;
        assert_state(&task, TaskState::Completed);
    }
    d.finish().await;
}

/// A server whose one Gitea source has a rule deploying the media playbook (checked first
/// when `check_first`), an agent running `fx`'s stand-ins, and a signed push of `fx`'s second
/// commit sent to the hook; answers the hook's answer.
async fn push_through_the_hook(
    fx: &Fixture,
    check_first: bool,
) -> (Plane, CancellationToken, tokio::task::JoinHandle<()>, Value) {
    use hmac::{Hmac, KeyInit, Mac};

    const SECRET: &str = "0123456789abcdef-hook-secret";
    let [first, second] = fx.shas.clone();
    let source =
        toml::from_str("name = \"infra\"\nforge = \"gitea\"\nsecret_env = \"HOOK\"").unwrap();
    let rule = toml::from_str(&format!(
        "name = \"media\"\nsource = \"infra\"\nbranch = \"main\"\n\
         paths = [\"ansible/playbooks/**\"]\n\
         task = {{ kind = \"ansible\", capabilities = [\"ansible\"], payload = {{ playbook = \"ansible/playbooks/media.yml\" }} }}\n\
         lock_key = \"deploy:{{repo}}:{{playbook}}\"\ncheck_first = {check_first}"
    ))
    .unwrap();
    let git = muster_server::gitops::GitConfig::resolve(&[(1, source)], &[(1, rule)], &|_| {
        Some(SECRET.to_owned())
    })
    .unwrap();
    let plane = Plane::start_with(|s| s.git = git).await;
    let (stop, agent) = start_agent(&plane, &fx.config());

    // Gitea's push, as in the server's fixtures, pointed at this repository's two commits.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../muster-server/tests/fixtures/forges/gitea/push.json"
    );
    let mut push: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    push["before"] = json!(first);
    push["after"] = json!(second);
    push["repository"]["clone_url"] = json!(fx.url);
    push["total_commits"] = json!(1);
    let mut commit = push["commits"][0].clone();
    commit["id"] = json!(second);
    commit["added"] = json!([]);
    commit["removed"] = json!([]);
    commit["modified"] = json!(["ansible/playbooks/media.yml"]);
    push["commits"] = json!([commit]);
    push["head_commit"] = commit;
    let body = serde_json::to_vec(&push).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = muster_server::secret::hex(&mac.finalize().into_bytes());

    let answer: Value = reqwest::Client::new()
        .post(format!("{}/hooks/git/infra", plane.base))
        .header("content-type", "application/json")
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Delivery", "e2e-1")
        .header("X-Gitea-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "deployed", "{answer}");
    (plane, stop, agent, answer)
}

async fn deployment(plane: &Plane, answer: &Value) -> Value {
    reqwest::Client::new()
        .get(format!(
            "{}/api/v1/deployments/{}",
            plane.base,
            answer["deployment"]["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The whole path: a forge's signed push to `POST /hooks/git/{source}` becomes a deployment
/// whose task a real agent runs at the pushed commit of a real repository.
#[tokio::test]
async fn a_signed_push_through_the_hook_deploys_the_pushed_commit() {
    let fx = Fixture::new();
    let second = fx.shas[1].clone();
    let (plane, stop, agent, answer) = push_through_the_hook(&fx, false).await;
    let rule = &answer["deployment"]["rules"][0];
    assert_eq!(rule["matched"][0]["path"], "ansible/playbooks/media.yml");
    let task_id: uuid::Uuid = rule["task_id"].as_str().unwrap().parse().unwrap();
    let task = plane.client.task(task_id).await.unwrap();
    let task = plane.wait_final(&task).await;
    assert_state(&task, TaskState::Completed);
    let top = fx.record(&second, "top");
    assert_eq!(
        lines(&fx.record(&second, "argv")),
        [format!("{top}/ansible/playbooks/media.yml")],
        "the rule's playbook, at the pushed commit"
    );
    assert_eq!(task.result.as_ref().unwrap()["sha"], second.as_str());
    let deployment = deployment(&plane, &answer).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    stop.cancel();
    agent.await.unwrap();
}

/// `check_first`: the agent runs the playbook with `--check --diff`, and only once that
/// passed, for real; a failing check runs nothing more.
#[tokio::test]
async fn a_check_first_rule_checks_the_pushed_commit_then_deploys_it() {
    let fx = Fixture::new();
    let second = fx.shas[1].clone();
    let (plane, stop, agent, answer) = push_through_the_hook(&fx, true).await;
    let rule = &answer["deployment"]["rules"][0];
    assert!(rule["task_id"].is_null(), "the real run waits: {answer}");
    let check_id: uuid::Uuid = rule["check_task_id"].as_str().unwrap().parse().unwrap();
    let check = plane.client.task(check_id).await.unwrap();
    assert_state(&plane.wait_final(&check).await, TaskState::Completed);
    let mut shown = deployment(&plane, &answer).await;
    let run_id: uuid::Uuid = shown["rules"][0]["task_id"]
        .as_str()
        .expect("the real run is submitted once the check passed")
        .parse()
        .unwrap();
    let run = plane.client.task(run_id).await.unwrap();
    assert_state(&plane.wait_final(&run).await, TaskState::Completed);
    // Each task runs in a worktree of its own, both at the pushed commit.
    let argv = fx.record(&second, "argv");
    let argv = lines(&argv);
    assert_eq!(
        argv.len(),
        4,
        "the check's argv, then the real run's: {argv:?}"
    );
    assert_eq!(argv[..2], ["--check", "--diff"], "{argv:?}");
    for playbook in [argv[2], argv[3]] {
        assert!(
            playbook.ends_with("/ansible/playbooks/media.yml"),
            "{argv:?}"
        );
    }
    assert_ne!(argv[2], argv[3], "two worktrees");
    assert!(argv[3].starts_with(&fx.record(&second, "top")), "{argv:?}");
    shown = deployment(&plane, &answer).await;
    assert_eq!(shown["state"], "succeeded", "{shown}");
    stop.cancel();
    agent.await.unwrap();

    // A check that fails stops the rule.
    let fx = Fixture::new();
    fx.set_exit("ansible", 2);
    let (plane, stop, agent, answer) = push_through_the_hook(&fx, true).await;
    let check_id: uuid::Uuid = answer["deployment"]["rules"][0]["check_task_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let check = plane.client.task(check_id).await.unwrap();
    assert_state(&plane.wait_final(&check).await, TaskState::Failed);
    let shown = deployment(&plane, &answer).await;
    assert_eq!(shown["state"], "failed", "{shown}");
    assert!(shown["rules"][0]["task_id"].is_null(), "{shown}");
    assert_eq!(
        lines(&fx.record(&fx.shas[1], "argv")).len(),
        3,
        "one run only"
    );
    stop.cancel();
    agent.await.unwrap();
}
