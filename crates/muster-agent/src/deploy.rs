//! The deploy executor: tasks of kind `ansible` and `terraform` run a playbook or a Terraform
//! module from an infrastructure repository, at exactly the commit that was pushed.
//!
//! Payloads (built by the server from a push; see `payload` for every rule):
//! - `ansible`: `{"repo": "owner/name", "clone_url": "https://git.home/owner/name.git",
//!   "sha": "<40 hex>", "playbook": "ansible/playbooks/media.yml", "inventory"?, "limit"?,
//!   "tags"? (a list or a comma string), "extra_vars"? (an object), "check"? (`--check
//!   --diff`), "dir"? (the working directory, where `ansible.cfg` is found)}`. Paths are
//!   relative to the repository's root.
//! - `terraform`: `{"repo", "clone_url", "sha", "dir": "terraform/media", "mode": "plan" |
//!   "apply", "vars"?: {"name": value}}`: `terraform init`, then `plan` or `apply
//!   -auto-approve`, in `dir`.
//!
//! A task runs in four steps: the payload is checked (a refusal fails the task for good, and
//! nothing runs, not even git); the clone URL must be in `deploy.repos`; the commit is checked
//! out into a worktree of the task's own (`checkout`); the program runs there, its output
//! streamed to the task's log and read for a summary (`summary`). The worktree is removed
//! afterwards, whether the program succeeded, failed, timed out or was cancelled.
//!
//! The result: `{"exit_code": 0, "sha", "program": "ansible-playbook" | "terraform", "argv",
//! "summary"}` (and `warnings` when there are any). A program that exits non-zero fails the
//! task with its exit code and last output lines, and is not retried: a playbook or an apply
//! that failed half-way should be looked at before it runs again. What fails before the
//! program runs (git, `terraform init`) changes nothing deployed and is retried while the
//! task's retries last.

mod checkout;
mod payload;
mod summary;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use muster_api::{LogStream, Task};
use muster_client::{Handler, HandlerError, TaskContext};
use serde_json::{Value, json};
use tokio::time::Instant;

pub use checkout::check_clone_url;

use crate::config::DeployConfig;
use crate::process::{self, Exit, Launcher, Program};
use payload::{AnsibleJob, Job, Source, TerraformJob, Want};
use summary::{Recap, Tail, TerraformTotals};

/// Git must never wait for a password on a terminal: an agent has nobody to type it, and the
/// task would hang until its timeout. Credentials come from git's helpers or SSH keys.
const GIT_ENV: &[(&str, &str)] = &[("GIT_TERMINAL_PROMPT", "0")];
/// Terraform's documented switch for output read by a program: no hints about what to type
/// next.
const TERRAFORM_ENV: &[(&str, &str)] = &[("TF_IN_AUTOMATION", "1")];

/// A program the deploy executor runs, and the task kind it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ansible,
    Terraform,
}

impl Tool {
    pub const ALL: [Tool; 2] = [Tool::Ansible, Tool::Terraform];

    /// The task kind, and the capability an agent that runs it registers.
    pub fn kind(self) -> &'static str {
        match self {
            Tool::Ansible => "ansible",
            Tool::Terraform => "terraform",
        }
    }

    /// What the result's `program` says, whatever path the config gives.
    fn name(self) -> &'static str {
        match self {
            Tool::Ansible => "ansible-playbook",
            Tool::Terraform => "terraform",
        }
    }

    /// The configured program, or `None` when the config turns this kind off.
    pub fn program(self, config: &DeployConfig) -> Option<String> {
        match self {
            Tool::Ansible => config.ansible_program(),
            Tool::Terraform => config.terraform_program(),
        }
    }
}

/// What the deploy handlers share: the config, how programs start, and one lock per clone.
pub struct Deployer {
    config: DeployConfig,
    launcher: Launcher,
    /// Lives as long as the agent; one entry per clone directory ever used (the allow-list
    /// bounds them).
    repo_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Deployer {
    /// Creates the workdir if need be and removes what a killed agent left in it.
    pub fn new(config: DeployConfig, launcher: Launcher) -> Result<Self, String> {
        std::fs::create_dir_all(&config.workdir).map_err(|e| {
            format!(
                "deploy.workdir: cannot create {}: {e}",
                config.workdir.display()
            )
        })?;
        checkout::sweep_leftovers(&config.workdir);
        Ok(Deployer {
            config,
            launcher,
            repo_locks: Mutex::new(HashMap::new()),
        })
    }

    fn repo_lock(&self, clone: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .expect("repo locks poisoned")
            .entry(clone.to_path_buf())
            .or_default()
            .clone()
    }

    async fn ansible(
        &self,
        steps: &Steps<'_>,
        job: &AnsibleJob,
        tree: &Path,
        program: &str,
    ) -> Result<Deployed, HandlerError> {
        let permanent = HandlerError::Permanent;
        let cwd = job
            .dir
            .resolve(tree, "dir", Want::Dir)
            .await
            .map_err(permanent)?;
        let playbook = job
            .playbook
            .resolve(tree, "playbook", Want::File)
            .await
            .map_err(permanent)?;
        let inventory = match &job.inventory {
            Some(path) => Some(
                path.resolve(tree, "inventory", Want::Either)
                    .await
                    .map_err(permanent)?,
            ),
            None => None,
        };
        let argv = job.argv(program, &playbook, inventory.as_deref());
        let recap = Mutex::new(Recap::default());
        let ran = steps
            .run(&argv, Some(&cwd), &[], &|stream, line| {
                if stream == LogStream::Stdout {
                    recap.lock().expect("recap poisoned").feed(line);
                }
            })
            .await?;
        let summary = recap.into_inner().expect("recap poisoned").summary();
        Ok(Deployed {
            ran,
            argv,
            summary,
            warnings: Vec::new(),
        })
    }

    async fn terraform(
        &self,
        steps: &Steps<'_>,
        job: &TerraformJob,
        tree: &Path,
        program: &str,
    ) -> Result<Deployed, HandlerError> {
        let cwd = job
            .dir
            .resolve(tree, "dir", Want::Dir)
            .await
            .map_err(HandlerError::Permanent)?;
        let init = [program, "init", "-input=false", "-no-color"].map(String::from);
        let ran = steps
            .run(&init, Some(&cwd), TERRAFORM_ENV, &|_, _| {})
            .await?;
        if ran.exit != Exit::Code(0) {
            // Mostly the network (providers, the state backend); init changes nothing.
            return Err(HandlerError::Retryable(ran.failure("terraform init")));
        }
        let argv = job.argv(program);
        let totals = Mutex::new(TerraformTotals::default());
        let ran = steps
            .run(&argv, Some(&cwd), TERRAFORM_ENV, &|stream, line| {
                if stream == LogStream::Stdout {
                    totals.lock().expect("totals poisoned").feed(line);
                }
            })
            .await?;
        let mut warnings = Vec::new();
        if job.mode == payload::Mode::Apply
            && let Some(warning) = self.keep_local_state(&cwd, steps.ctx.task()).await
        {
            tracing::warn!("{warning}");
            steps.ctx.log(LogStream::System, warning.clone());
            warnings.push(warning);
        }
        let summary = totals.into_inner().expect("totals poisoned").summary();
        Ok(Deployed {
            ran,
            argv,
            summary,
            warnings,
        })
    }

    /// An apply without a remote backend writes `terraform.tfstate` into the worktree, which
    /// is removed after the task: the next apply would start from no state and create
    /// everything again. A copy is kept under the workdir, and the task says where.
    async fn keep_local_state(&self, cwd: &Path, task: &Task) -> Option<String> {
        let state = cwd.join("terraform.tfstate");
        if !tokio::fs::try_exists(&state).await.unwrap_or(false) {
            return None;
        }
        let kept = self.config.workdir.join("terraform-state");
        let copy = kept.join(format!("task-{}-{}.tfstate", task.id, task.attempt));
        let copied = async {
            tokio::fs::create_dir_all(&kept).await?;
            tokio::fs::copy(&state, &copy).await
        };
        Some(match copied.await {
            Ok(_) => format!(
                "terraform wrote its state to terraform.tfstate in the worktree, which is removed \
                 after every task; a copy is at {}. Configure a remote backend for this module.",
                copy.display()
            ),
            Err(e) => format!(
                "terraform wrote its state to terraform.tfstate in the worktree, which is removed \
                 after every task, and it could not be copied to {}: {e}. Configure a remote \
                 backend for this module.",
                copy.display()
            ),
        })
    }
}

/// The handler of one task kind; both kinds share one [`Deployer`].
pub struct DeployHandler {
    deployer: Arc<Deployer>,
    tool: Tool,
    program: String,
}

impl DeployHandler {
    /// `None` when the config turns `tool` off.
    pub fn new(deployer: Arc<Deployer>, tool: Tool) -> Option<Self> {
        let program = tool.program(&deployer.config)?;
        Some(DeployHandler {
            deployer,
            tool,
            program,
        })
    }
}

#[async_trait]
impl Handler for DeployHandler {
    async fn run(&self, ctx: &TaskContext) -> Result<Value, HandlerError> {
        let task = ctx.task();
        let request = payload::parse(self.tool, &task.payload).map_err(HandlerError::Permanent)?;
        let deployer = &self.deployer;
        let Source {
            repo,
            clone_url,
            sha,
        } = &request.source;
        if !checkout::allowed(&deployer.config.repos, clone_url) {
            return Err(HandlerError::Permanent(format!(
                "payload.clone_url: {clone_url:?} is not in this agent's deploy.repos ({})",
                deployer.config.repos.join(", ")
            )));
        }
        let limits = [task.timeout_s.map(u64::from), deployer.config.timeout_s];
        let timeout = limits.into_iter().flatten().min().map(Duration::from_secs);
        let steps = Steps {
            ctx,
            launcher: &deployer.launcher,
            git: &deployer.config.git,
            deadline: timeout.map(|t| Instant::now() + t),
        };
        ctx.log(
            LogStream::System,
            format!("{}: {repo} at {sha} from {clone_url}", self.tool.kind()),
        );
        let tree = deployer.checkout(&steps, &request.source, task).await?;
        let deployed = match &request.job {
            Job::Ansible(job) => {
                deployer
                    .ansible(&steps, job, tree.path(), &self.program)
                    .await
            }
            Job::Terraform(job) => {
                deployer
                    .terraform(&steps, job, tree.path(), &self.program)
                    .await
            }
        };
        tree.remove(&steps).await;
        let Deployed {
            ran,
            argv,
            summary,
            warnings,
        } = deployed?;
        if ran.exit != Exit::Code(0) {
            let mut error = ran.failure(self.tool.name());
            for warning in &warnings {
                error.push('\n');
                error.push_str(warning);
            }
            return Err(HandlerError::Permanent(error));
        }
        let mut result = json!({
            "exit_code": 0,
            "sha": sha,
            "program": self.tool.name(),
            "argv": argv,
            "summary": summary,
        });
        if !warnings.is_empty() {
            result["warnings"] = json!(warnings);
        }
        Ok(result)
    }
}

/// What the deploying program did.
struct Deployed {
    ran: Ran,
    argv: Vec<String>,
    summary: Value,
    warnings: Vec<String>,
}

/// Runs one task's programs: their output to the task's log, within the task's deadline,
/// stopped by its cancel.
struct Steps<'a> {
    ctx: &'a TaskContext,
    launcher: &'a Launcher,
    git: &'a str,
    deadline: Option<Instant>,
}

/// How one program ended, and the last lines it printed.
struct Ran {
    exit: Exit,
    tail: String,
}

impl Ran {
    /// `<what> exited with code N`, with the last lines of output when there were any.
    fn failure(&self, what: &str) -> String {
        let ended = match self.exit {
            Exit::Code(code) => format!("{what} exited with code {code}"),
            Exit::Signal => format!("{what} was killed by a signal"),
        };
        if self.tail.is_empty() {
            format!("{ended} (no output)")
        } else {
            format!("{ended}; last lines:\n{}", self.tail)
        }
    }
}

impl Steps<'_> {
    /// Runs `argv` to its end; `observe` sees every output line as it goes to the log.
    async fn run(
        &self,
        argv: &[String],
        cwd: Option<&Path>,
        env: &[(&str, &str)],
        observe: &(dyn Fn(LogStream, &str) + Sync),
    ) -> Result<Ran, HandlerError> {
        let timeout = match self.deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(timed_out()),
            },
        };
        let tail = Mutex::new(Tail::default());
        let program = Program { argv, cwd, env };
        let exit = process::run_program(
            self.ctx,
            self.launcher,
            program,
            timeout,
            &|stream, line| {
                tail.lock().expect("tail poisoned").push(line);
                observe(stream, line);
            },
        )
        .await?;
        let tail = tail.into_inner().expect("tail poisoned").text();
        Ok(Ran { exit, tail })
    }

    /// Runs `git -C <clone> args…`.
    async fn git(&self, clone: &Path, args: &[&str]) -> Result<Ran, HandlerError> {
        let mut argv = vec![
            self.git.to_owned(),
            "-C".into(),
            clone.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        self.run(&argv, None, GIT_ENV, &|_, _| {}).await
    }

    /// Waits for `wait` unless the task is cancelled or its deadline passes first.
    async fn until_stopped<T>(
        &self,
        wait: impl Future<Output = T>,
        doing: &str,
    ) -> Result<T, HandlerError> {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = wait => Ok(done),
            _ = self.ctx.cancellation().cancelled() => Err(HandlerError::Cancelled(format!("while {doing}"))),
            _ = deadline => Err(timed_out()),
        }
    }
}

fn timed_out() -> HandlerError {
    HandlerError::Retryable("timed out before the deployment finished".into())
}
