//! A checkout of the pushed commit for one task: one bare clone per repository under
//! `workdir/clones/`, fetched while holding that repository's lock, and a detached worktree
//! per task under `workdir/worktrees/`, so two deployments of one repository at different
//! commits never share a tree. The worktree is removed when the task ends, however it ends
//! ([`Worktree`]).

use std::path::{Path, PathBuf};

use muster_api::{LogStream, Task};
use muster_client::HandlerError;
use sha2::{Digest, Sha256};

use super::payload::Source;
use super::{Deployer, Steps};
use crate::process::Exit;

/// Longest clone URL taken, in bytes.
const MAX_URL: usize = 2048;

/// Checks how a clone URL (an allow-list entry, or a task's) is written: a URL
/// (`https://…`, `ssh://…`, `file://…`), an scp-like address (`git@host:owner/name.git`) or an
/// absolute path. Refused: what git would read as an option (a leading `-`), a remote helper
/// (`ext::sh -c …` runs a command), `.` and `..` segments, `%`-escapes, `?` and `#` (each a
/// second way to spell a path, which would let a URL under an allowed prefix lead outside
/// it), white space and control characters, and credentials in an http(s) URL (they would
/// stand in the task, its logs and its result; git's credential helper keeps them).
pub fn check_clone_url(url: &str) -> Result<(), String> {
    if url.is_empty() || url.len() > MAX_URL {
        return Err(format!("must be 1 to {MAX_URL} bytes long"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain white space or control characters".into());
    }
    if url.starts_with('-') {
        return Err("must not begin with '-' (git would read it as an option)".into());
    }
    if url.contains("::") {
        return Err("must not name a remote helper (transport::address)".into());
    }
    if let Some(c) = url.chars().find(|c| matches!(c, '%' | '?' | '#' | '\\')) {
        return Err(format!("must not contain {c:?}"));
    }
    if url
        .split(['/', ':'])
        .any(|part| part == "." || part == "..")
    {
        return Err("must not contain '.' or '..' segments".into());
    }
    let scheme_end = url.find("://");
    let scp_like = url
        .find(':')
        .is_some_and(|colon| !url[..colon].contains('/') && scheme_end.is_none());
    if scheme_end.is_none() && !scp_like && !url.starts_with('/') {
        return Err(
            "must be a URL (scheme://…), an scp-like address (host:path) or an absolute path"
                .into(),
        );
    }
    if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err("must not carry credentials; give them to git's credential helper".into());
        }
    }
    Ok(())
}

/// Whether `deploy.repos` allows `url`: an entry ending in `/` allows every URL that begins
/// with it and goes on, any other entry exactly itself. Both sides have passed
/// [`check_clone_url`], so no URL under a prefix can lead back out of it.
pub(super) fn allowed(repos: &[String], url: &str) -> bool {
    repos.iter().any(|entry| {
        if entry.ends_with('/') {
            url.len() > entry.len() && url.starts_with(entry.as_str())
        } else {
            url == entry
        }
    })
}

/// The clone's directory name: the repository's name from the URL, cut to letters, digits,
/// `_`, `-` and `.` (never leading), for the people who look, then 16 hex digits of the URL's
/// SHA-256, which alone keeps two URLs apart. Nothing of the URL reaches the file system
/// unsanitised.
pub(super) fn clone_dir_name(url: &str) -> String {
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let last = last.strip_suffix(".git").unwrap_or(last);
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = name.trim_start_matches('.');
    let name = if name.is_empty() { "repo" } else { name };
    let digest = Sha256::digest(url.as_bytes());
    let id = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"));
    format!("{name}-{id:016x}.git")
}

/// A task's worktree: removed when [`Worktree::remove`] is called, or else when dropped (a
/// handler the runtime gives up on is dropped, and its worktree must not stay). Git's record
/// of it in the clone is pruned by the next checkout of the repository.
pub(super) struct Worktree {
    path: PathBuf,
    armed: bool,
}

impl Worktree {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the tree, saying so in the task's log, or why it could not.
    pub(super) async fn remove(mut self, steps: &Steps<'_>) {
        self.armed = false;
        match tokio::fs::remove_dir_all(&self.path).await {
            Ok(()) => steps.ctx.log(
                LogStream::System,
                format!("removed the worktree {}", self.path.display()),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let warning = format!("could not remove the worktree {}: {e}", self.path.display());
                tracing::warn!("{warning}");
                steps.ctx.log(LogStream::System, warning);
            }
        }
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        if self.armed {
            // Blocking, but this runs only when a handler is abandoned mid-run.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes what a previous run of the agent left when it was killed mid-task: worktrees, and
/// clones it was still creating. Only entries named as this module names them, so a workdir
/// pointed at the wrong place loses nothing else.
pub(super) fn sweep_leftovers(workdir: &Path) {
    let worktree: fn(&str) -> bool = |name| name.starts_with("task-");
    let half_made: fn(&str) -> bool = |name| name.contains(".init-");
    let leftovers = [
        ("worktrees", "worktree", worktree),
        ("clones", "half-made clone", half_made),
    ];
    for (dir, what, ours) in leftovers {
        let Ok(entries) = std::fs::read_dir(workdir.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if !ours(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a leftover {what}"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover {what}")
                }
            }
        }
    }
}

impl Deployer {
    /// Checks out `source` for `task`: clones or fetches what is missing, then adds the
    /// task's own worktree at the commit. Git failing is worth another attempt (the forge
    /// was away, the network broke): it changed nothing that was deployed.
    pub(super) async fn checkout(
        &self,
        steps: &Steps<'_>,
        source: &Source,
        task: &Task,
    ) -> Result<Worktree, HandlerError> {
        let clones = self.config.workdir.join("clones");
        let worktrees = self.config.workdir.join("worktrees");
        for dir in [&clones, &worktrees] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                HandlerError::Retryable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let bare = clones.join(clone_dir_name(&source.clone_url));
        let lock = self.repo_lock(&bare);
        // One fetch and one `worktree add` at a time per repository: git locks its refs, but
        // two fetches of one clone would fail each other rather than wait.
        let _held = steps
            .until_stopped(
                lock.lock_owned(),
                "waiting for another deployment of this repository",
            )
            .await?;
        if !bare.join("HEAD").exists() {
            self.init(steps, &bare, task).await?;
        }
        let (url, sha) = (source.clone_url.as_str(), source.sha.as_str());
        if !self.has_commit(steps, &bare, sha).await? {
            // Every branch: the pushed commit is a branch's tip, and servers need not send a
            // commit asked for by its id.
            let fetch = [
                "fetch",
                "--no-tags",
                "--prune",
                "--",
                url,
                "+refs/heads/*:refs/heads/*",
            ];
            let fetched = steps.git(&bare, &fetch).await?;
            if fetched.exit != Exit::Code(0) {
                return Err(HandlerError::Retryable(fetched.failure("git fetch")));
            }
            if !self.has_commit(steps, &bare, sha).await? {
                // Pushed over since (or on no branch): ask for it by id, which most servers
                // allow for a commit they still have. Its exit code says less than the
                // check after it.
                steps
                    .git(&bare, &["fetch", "--no-tags", "--", url, sha])
                    .await?;
                if !self.has_commit(steps, &bare, sha).await? {
                    return Err(HandlerError::Retryable(format!(
                        "commit {sha} is not in {url}: it is on no branch there, and the \
                         server would not send it by its id"
                    )));
                }
            }
        }
        // Forget worktrees whose directories are gone (removed after earlier tasks).
        steps.git(&bare, &["worktree", "prune"]).await?;
        let path = worktrees.join(format!("task-{}-{}", task.id, task.attempt));
        if path.exists() {
            let _ = tokio::fs::remove_dir_all(&path).await;
        }
        // Armed before git creates it, so a cancel during the checkout still removes it.
        let tree = Worktree { path, armed: true };
        let tree_arg = tree.path.display().to_string();
        let added = steps
            .git(&bare, &["worktree", "add", "--detach", &tree_arg, sha])
            .await?;
        if added.exit != Exit::Code(0) {
            return Err(HandlerError::Retryable(added.failure("git worktree add")));
        }
        Ok(tree)
    }

    /// Creates the bare clone under a temporary name and renames it into place, so that a
    /// clone is either whole or absent, never half made by a killed `git init`.
    async fn init(&self, steps: &Steps<'_>, bare: &Path, task: &Task) -> Result<(), HandlerError> {
        let making = bare.with_extension(format!("init-{}", task.id));
        let _ = tokio::fs::remove_dir_all(&making).await;
        let argv = [
            steps.git.to_owned(),
            "init".into(),
            "--bare".into(),
            "--quiet".into(),
            making.display().to_string(),
        ];
        let ran = steps.run(&argv, None, super::GIT_ENV, &|_, _| {}).await?;
        if ran.exit != Exit::Code(0) {
            return Err(HandlerError::Retryable(ran.failure("git init")));
        }
        tokio::fs::rename(&making, bare).await.map_err(|e| {
            HandlerError::Retryable(format!(
                "cannot move the new clone into {}: {e}",
                bare.display()
            ))
        })
    }

    /// Whether the clone has the commit. Peeling to a commit reads the object, so a full
    /// hex id that is not there is not taken on its spelling; `--quiet` keeps the expected
    /// "not there yet" out of the log as an error.
    async fn has_commit(
        &self,
        steps: &Steps<'_>,
        bare: &Path,
        sha: &str,
    ) -> Result<bool, HandlerError> {
        let object = format!("{sha}^{{commit}}");
        let args = [
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &object,
        ];
        let ran = steps.git(bare, &args).await?;
        Ok(ran.exit == Exit::Code(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_urls_are_urls_scp_addresses_or_absolute_paths() {
        for good in [
            "https://git.home/homelab/infra.git",
            "ssh://git@git.home:2222/homelab/infra.git",
            "git@git.home:homelab/infra.git",
            "file:///srv/git/infra.git",
            "/srv/git/infra.git",
            "https://git.home/homelab/",
        ] {
            assert!(
                check_clone_url(good).is_ok(),
                "{good}: {:?}",
                check_clone_url(good)
            );
        }
        for bad in [
            "",
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x",
            "ext::sh -c touch% /tmp/x",
            "https://git.home/homelab/../other/x.git",
            "https://git.home/homelab/./x.git",
            "git@git.home:../x.git",
            "https://git.home/homelab/%2e%2e/x.git",
            "https://git.home/a b.git",
            "https://git.home/a\n.git",
            "https://user:token@git.home/a.git",
            "https://git.home/a.git?x=1",
            "relative/path.git",
        ] {
            assert!(check_clone_url(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn the_allow_list_takes_exact_urls_and_prefixes_ending_in_a_slash() {
        let repos = [
            "https://git.home/homelab/".to_owned(),
            "https://git.home/solo/infra.git".to_owned(),
        ];
        assert!(allowed(&repos, "https://git.home/homelab/infra.git"));
        assert!(allowed(&repos, "https://git.home/solo/infra.git"));
        assert!(
            !allowed(&repos, "https://git.home/homelab/"),
            "the prefix alone names no repository"
        );
        assert!(!allowed(&repos, "https://git.home/homelabx/infra.git"));
        assert!(!allowed(&repos, "https://git.home/solo/infra.git2"));
        assert!(!allowed(&repos, "https://git.home/solo/infra"));
        assert!(!allowed(&repos, "https://evil.home/homelab/infra.git"));
    }

    #[test]
    fn the_sweep_at_start_removes_only_what_this_module_names() {
        let dir = tempfile::tempdir().unwrap();
        let made = [
            "worktrees/task-0190-1/ansible",
            "worktrees/notes",
            "clones/infra-00.init-0190",
            "clones/infra-00.git",
        ];
        for path in made {
            std::fs::create_dir_all(dir.path().join(path)).unwrap();
        }
        sweep_leftovers(dir.path());
        let exists = |p: &str| dir.path().join(p).exists();
        assert!(!exists("worktrees/task-0190-1") && !exists("clones/infra-00.init-0190"));
        assert!(exists("worktrees/notes") && exists("clones/infra-00.git"));
        sweep_leftovers(&dir.path().join("nothing here"));
    }

    #[test]
    fn clone_directories_are_named_safely_and_apart() {
        let a = clone_dir_name("https://git.home/homelab/infra.git");
        assert!(
            a.starts_with("infra-") && a.ends_with(".git") && a.len() == "infra-".len() + 16 + 4,
            "{a}"
        );
        assert_ne!(a, clone_dir_name("https://git.home/other/infra.git"));
        assert_eq!(a, clone_dir_name("https://git.home/homelab/infra.git"));
        for url in [
            "git@h:..x",
            "/srv/../..",
            "https://h/",
            "git@h:$(id)`x`.git",
            "https://h/.hidden",
        ] {
            let name = clone_dir_name(url);
            assert!(
                !name.starts_with('.') && !name.contains('/') && !name.contains(".."),
                "{url}: {name}"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
                "{url}: {name}"
            );
        }
    }
}
