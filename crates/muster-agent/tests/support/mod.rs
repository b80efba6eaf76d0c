//! Test support: a real control plane on 127.0.0.1:0, an agent runtime from a TOML config
//! running against it, and an OpenSSH server on loopback with generated keys.

#![allow(dead_code, unreachable_pub)]

pub mod fake_llm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use muster_api::{SubmitTask, Task};
use muster_client::Client;
use muster_server::{Server, Settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct Plane {
    pub base: String,
    pub client: Client,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Plane {
    pub async fn start() -> Plane {
        Plane::start_with(|_| {}).await
    }

    /// A control plane with settings `configure` adjusts (GitOps sources and rules, say).
    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path().join("muster.db"));
        settings.sweep_interval = Duration::from_millis(100);
        configure(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::build(settings, listener).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(server.run(async move { signal.cancelled().await }));
        Plane {
            client: Client::new(&base, None).unwrap(),
            base,
            stop,
            _dir: dir,
        }
    }

    pub async fn submit(&self, kind: &str, payload: Value) -> Task {
        self.submit_with(kind, payload, |_| {}).await
    }

    /// Submits a task that `adjust` changes first (a timeout, say).
    pub async fn submit_with(
        &self,
        kind: &str,
        payload: Value,
        adjust: impl FnOnce(&mut SubmitTask),
    ) -> Task {
        let mut task = SubmitTask {
            kind: kind.into(),
            payload,
            capabilities: vec![],
            priority: 0,
            max_retries: Some(0),
            timeout_s: None,
            lock_key: None,
            idempotency_key: None,
            run_after: None,
            labels: Default::default(),
        };
        adjust(&mut task);
        self.client.submit(&task).await.unwrap().0
    }

    /// Polls until the task is final (bounded), then returns it with attempts.
    pub async fn wait_final(&self, task: &Task) -> Task {
        until(|| async {
            let t = self.client.task(task.id).await.unwrap();
            if t.state.is_final() {
                Ok(t)
            } else {
                Err(format!("task {} never finished: {t:?}", task.id))
            }
        })
        .await
    }

    pub async fn wait_state(&self, task: &Task, state: muster_api::TaskState) -> Task {
        until(|| async {
            let t = self.client.task(task.id).await.unwrap();
            if t.state == state {
                Ok(t)
            } else {
                Err(format!("task {} never became {state}: {t:?}", task.id))
            }
        })
        .await
    }

    /// Waits (bounded) until the task's log holds `needle`; returns the log.
    pub async fn wait_log(&self, task: &Task, needle: &str) -> String {
        until(|| async {
            let text = self.log_text(task).await;
            if text.contains(needle) {
                Ok(text)
            } else {
                Err(format!(
                    "task {} never logged {needle:?}; its log:\n{text}",
                    task.id
                ))
            }
        })
        .await
    }

    pub async fn log_text(&self, task: &Task) -> String {
        let page = self.client.logs(task.id, 0, 5000).await.unwrap();
        page.lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the agent of `config` (TOML) against `plane`; stops it when the token is cancelled.
pub fn start_agent(
    plane: &Plane,
    config: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start_agent_with_env(plane, config, &|var| std::env::var(var).ok())
}

/// [`start_agent`] with the environment `env` stands for (the variables the config names).
pub fn start_agent_with_env(
    plane: &Plane,
    config: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let checked = muster_agent::AgentConfig::parse_with_env(config, env).expect("config parses");
    let runtime = muster_agent::runtime(
        checked,
        plane.client.clone(),
        muster_agent::Launcher::Direct,
    )
    .unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let handle = tokio::spawn(async move {
        runtime
            .run(async move { signal.cancelled().await })
            .await
            .expect("agent runs");
    });
    (stop, handle)
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

/// Waits (bounded) until the process is gone; `what` names it in the failure.
pub async fn wait_gone(pid: i32, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} (pid {pid}) is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn read_pid(path: &Path) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the action never wrote {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real sshd on 127.0.0.1 with a generated host key, accepting one generated client key.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
    _dir: tempfile::TempDir,
}

/// Where sshd is: `MUSTER_TEST_SSHD`, else /usr/sbin/sshd. `None` says loudly that SSH tests
/// are skipped (CI sets the variable and installs openssh-server, so there they always run).
pub fn sshd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("MUSTER_TEST_SSHD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("MUSTER_TEST_SSHD").is_some() {
        panic!("MUSTER_TEST_SSHD={} does not exist", path.display());
    }
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "\n*** SKIPPED: no sshd at {} (install openssh-server or set MUSTER_TEST_SSHD) ***\n",
            path.display()
        ),
    );
    None
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

impl Sshd {
    pub fn start(binary: &Path) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PidFile {pid}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(binary)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sshd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            child,
            port,
            identity: d.join("client_key"),
            known_hosts: d.join("known_hosts"),
            user,
            _dir: dir,
        }
    }

    /// A `[[hosts]]` entry for this server.
    pub fn host_config(&self, name: &str) -> String {
        format!(
            "[[hosts]]\nname = \"{name}\"\nssh = \"{user}@127.0.0.1\"\nport = {port}\n\
             identity_file = \"{id}\"\noptions = [\"UserKnownHostsFile={kh}\"]\n",
            user = self.user,
            port = self.port,
            id = self.identity.display(),
            kh = self.known_hosts.display(),
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it answers `Ok` (then returns it), for at most 30 s; past that it fails
/// with the last `Err`, which says what never happened.
pub async fn until<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) => assert!(tokio::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
