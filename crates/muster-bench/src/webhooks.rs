//! `muster bench webhooks`: GitOps push hooks against a `muster serve` child whose config
//! holds one Gitea source and one rule deploying `ansible/**` on `main`. Two figures, each on
//! a fresh server: signed pushes accepted per second (many in flight over keep-alive
//! connections, no agent, so the deployments' tasks wait in the queue), and push → claim (one
//! push at a time while a simulated agent waits in a long-poll for the task it makes).
//! Pushes are built here as Gitea sends them and signed with the source's secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use muster_api::{CompleteTask, HookAnswer, RegisterAgent};
use muster_client::Client;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::BenchError;
use crate::local::LocalServer;
use crate::stats::{Percentiles, nearest_rank};

/// The source's name, and so the hook's path: `/hooks/git/infra`.
const SOURCE: &str = "infra";
const SECRET_ENV: &str = "MUSTER_BENCH_HOOK_SECRET";
/// A fixed secret: the server under test is a throwaway child on loopback.
const SECRET: &str = "muster-bench-hook-secret-0123456789abcdef";
/// Signs the pushes whose refusal is checked.
const WRONG_SECRET: &str = "not-the-source-secret-0123456789abcdef";
const REPO: &str = "homelab/infra";
const PLAYBOOK: &str = "ansible/playbooks/site.yml";
const CAPABILITY: &str = "ansible";
const AGENT: &str = "webhooks-agent";
/// Most error messages a report keeps; the count covers the rest.
const KEPT_ERRORS: usize = 10;

/// The server's settings: one Gitea source and one rule that deploys a playbook when a file
/// under `ansible/` changes on `main`, as the README's GitOps section writes them.
fn config() -> String {
    format!(
        r#"[[git.sources]]
name = "{SOURCE}"
forge = "gitea"
secret_env = "{SECRET_ENV}"

[[git.rules]]
name = "site"
source = "{SOURCE}"
branch = "main"
paths = ["ansible/**"]
task = {{ kind = "ansible", capabilities = ["{CAPABILITY}"], payload = {{ playbook = "{PLAYBOOK}" }} }}
lock_key = "deploy:{{repo}}:{{playbook}}"
"#
    )
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Signed pushes sent for the throughput figure.
    pub pushes: usize,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Pushes with a wrong signature sent after the timed ones; each must get a 401.
    pub wrong_signatures: usize,
    /// Pushes sent one at a time to a waiting agent.
    pub probes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pushes: 2000,
            concurrency: 16,
            wrong_signatures: 20,
            probes: 200,
        }
    }
}

/// What `muster bench webhooks` prints (or emits as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Webhooks {
    pub forge: &'static str,
    pub accept: Accept,
    pub push_to_claim: PushToClaim,
    /// Answers the bench did not expect: a signed push not answered 201, a wrong signature not
    /// answered 401, a push whose task the agent did not get.
    pub errors: usize,
    /// The first few of them, in words.
    pub error_samples: Vec<String>,
}

/// Signed pushes, `concurrency` at a time.
#[derive(Debug, Clone, Serialize)]
pub struct Accept {
    pub pushes: usize,
    pub concurrency: usize,
    /// Pushes answered 201 (a new deployment).
    pub accepted: usize,
    /// First push sent to the last answer.
    pub seconds: f64,
    pub accepted_per_s: f64,
    /// Send → answer of each signed push.
    pub answer: Percentiles,
    pub wrong_signature_sent: usize,
    /// Of those, the ones refused with 401.
    pub wrong_signature_refused: usize,
    /// The server's costs over the signed pushes.
    pub server: HookCosts,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct HookCosts {
    /// Server CPU time (user + system) per accepted push.
    pub cpu_us_per_hook: f64,
    /// `write_bytes` of /proc/PID/io per accepted push, when readable.
    pub disk_write_bytes_per_hook: Option<f64>,
    pub peak_rss_mib: f64,
}

/// Pushes one at a time, while the agent waits.
#[derive(Debug, Clone, Serialize)]
pub struct PushToClaim {
    pub pushes: usize,
    /// Pushes whose task the waiting agent's long-poll returned.
    pub claimed: usize,
    /// From just before the hook's POST to the long-poll's answer with the task.
    pub latency: Tail,
}

/// Nearest-rank percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tail {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Tail {
    fn of(samples: &mut [Duration]) -> Tail {
        samples.sort_unstable();
        Tail {
            count: samples.len(),
            p50_ms: nearest_rank(samples, 0.50),
            p95_ms: nearest_rank(samples, 0.95),
            p99_ms: nearest_rank(samples, 0.99),
            max_ms: nearest_rank(samples, 1.0),
        }
    }
}

/// Unexpected answers, counted, the first few kept.
#[derive(Default)]
struct Errors {
    count: usize,
    samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < KEPT_ERRORS {
            self.samples.push(what);
        }
    }
}

/// A push as Gitea sends it: one commit on `main` that modifies the playbook, `n` making its
/// commit ids unique. `total_commits` matches the list, so the server takes the list as whole
/// and never asks the forge for more.
pub fn gitea_push(n: usize) -> Vec<u8> {
    let before = commit_id(2 * n);
    let after = commit_id(2 * n + 1);
    let author = json!({"name": "Ada Lovelace", "email": "ada@example.net", "username": "ada"});
    let commit = json!({
        "id": after,
        "message": format!("site: tune the playbook ({n})\n"),
        "url": format!("https://git.example.net/{REPO}/commit/{after}"),
        "author": author,
        "committer": author,
        "timestamp": "2026-11-20T09:14:03+01:00",
        "added": [],
        "removed": [],
        "modified": [PLAYBOOK],
    });
    json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "compare_url": format!("https://git.example.net/{REPO}/compare/{before}...{after}"),
        "commits": [commit],
        "total_commits": 1,
        "head_commit": commit,
        "repository": {
            "name": "infra",
            "full_name": REPO,
            "private": true,
            "html_url": format!("https://git.example.net/{REPO}"),
            "clone_url": format!("https://git.example.net/{REPO}.git"),
            "default_branch": "main",
        },
        "pusher": {"login": "ada", "full_name": "Ada Lovelace", "email": "ada@example.net"},
        "sender": {"login": "ada", "full_name": "Ada Lovelace", "email": "ada@example.net"},
    })
    .to_string()
    .into_bytes()
}

/// A 40-hex commit id, never all zeros (git's "no commit").
fn commit_id(n: usize) -> String {
    format!("be{n:038x}")
}

/// Gitea's `X-Gitea-Signature`: the lowercase hex HMAC-SHA256 of the raw body.
pub fn gitea_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One push, signed, ready to send.
struct Signed {
    body: Vec<u8>,
    signature: String,
    delivery: String,
}

impl Signed {
    fn new(n: usize, secret: &str) -> Signed {
        let body = gitea_push(n);
        Signed {
            signature: gitea_signature(secret, &body),
            body,
            delivery: Uuid::now_v7().to_string(),
        }
    }
}

/// The hook's HTTP client: the server's own route, called as a forge calls it.
#[derive(Clone)]
struct Hook {
    http: reqwest::Client,
    url: String,
}

impl Hook {
    fn new(base: &str) -> Result<Hook, BenchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BenchError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Hook {
            http,
            url: format!("{base}/hooks/git/{SOURCE}"),
        })
    }

    /// Sends one push; its status and body, or why it could not be sent.
    async fn send(&self, push: &Signed) -> Result<(StatusCode, String), String> {
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("X-Gitea-Event", "push")
            .header("X-Gitea-Delivery", &push.delivery)
            .header("X-Gitea-Signature", &push.signature)
            .body(push.body.clone())
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = resp.status();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}

fn start(binary: &std::path::Path) -> Result<LocalServer, BenchError> {
    LocalServer::start_with_config(binary, Some(&config()), &[(SECRET_ENV, SECRET)])
}

pub async fn run(binary: &std::path::Path, opts: &Options) -> Result<Webhooks, BenchError> {
    let mut errors = Errors::default();
    let accept = accept(binary, opts, &mut errors).await?;
    let push_to_claim = push_to_claim(binary, opts.probes, &mut errors).await?;
    Ok(Webhooks {
        forge: "gitea",
        accept,
        push_to_claim,
        errors: errors.count,
        error_samples: errors.samples,
    })
}

/// Figure A: `pushes` signed pushes, `concurrency` at a time, then the wrong signatures.
async fn accept(
    binary: &std::path::Path,
    opts: &Options,
    errors: &mut Errors,
) -> Result<Accept, BenchError> {
    let server = start(binary)?;
    let hook = Hook::new(&server.base)?;
    Client::new(&server.base, None)?.health().await?;
    // Built and signed before the clock: the figure is the server's, not the bench's hashing.
    let pushes: Arc<Vec<Signed>> = Arc::new(
        (0..opts.pushes)
            .map(|n| Signed::new(n + 1, SECRET))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let shared_errors = Arc::new(Mutex::new(Errors::default()));
    let before = server.usage();
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (hook, pushes, next, shared_errors) = (
            hook.clone(),
            pushes.clone(),
            next.clone(),
            shared_errors.clone(),
        );
        senders.push(tokio::spawn(async move {
            let (mut times, mut accepted) = (Vec::new(), 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(push) = pushes.get(n) else { break };
                let sent = Instant::now();
                let answer = hook.send(push).await;
                times.push(sent.elapsed());
                match answer {
                    Ok((StatusCode::CREATED, _)) => accepted += 1,
                    Ok((status, body)) => shared_errors.lock().await.add(format!(
                        "signed push {}: {status} {}",
                        n + 1,
                        cut(&body)
                    )),
                    Err(e) => shared_errors.lock().await.add(e),
                }
            }
            (times, accepted)
        }));
    }
    let (mut times, mut accepted) = (Vec::with_capacity(opts.pushes), 0);
    for s in senders {
        let (t, a) = s
            .await
            .map_err(|e| BenchError::Setup(format!("a sender failed: {e}")))?;
        times.extend(t);
        accepted += a;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = server.usage();
    let mut shared = std::mem::take(&mut *shared_errors.lock().await);
    errors.count += shared.count;
    errors.samples.append(&mut shared.samples);
    errors.samples.truncate(KEPT_ERRORS);

    // A sanity check, not timed: a push signed with another secret is refused.
    let mut refused = 0;
    for n in 0..opts.wrong_signatures {
        let push = Signed::new(opts.pushes + n + 1, WRONG_SECRET);
        match hook.send(&push).await {
            Ok((StatusCode::UNAUTHORIZED, _)) => refused += 1,
            Ok((status, body)) => errors.add(format!(
                "push with a wrong signature: {status} {}, not 401",
                cut(&body)
            )),
            Err(e) => errors.add(e),
        }
    }

    let per_hook = |v: f64| v / accepted.max(1) as f64;
    let disk = match (before.io, after.io) {
        (Some(b), Some(a)) => Some(per_hook(a.write_bytes.saturating_sub(b.write_bytes) as f64)),
        _ => None,
    };
    Ok(Accept {
        pushes: opts.pushes,
        concurrency: opts.concurrency.max(1),
        accepted,
        seconds,
        accepted_per_s: accepted as f64 / seconds.max(1e-9),
        answer: Percentiles::of(&mut times),
        wrong_signature_sent: opts.wrong_signatures,
        wrong_signature_refused: refused,
        server: HookCosts {
            cpu_us_per_hook: per_hook((after.cpu_seconds - before.cpu_seconds) * 1e6),
            disk_write_bytes_per_hook: disk,
            peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
        },
    })
}

/// Figure B: `probes` pushes, one at a time, each while the agent waits in a long-poll; the
/// agent completes each task before the next push, so the rule's lock key never holds one back.
async fn push_to_claim(
    binary: &std::path::Path,
    probes: usize,
    errors: &mut Errors,
) -> Result<PushToClaim, BenchError> {
    let server = start(binary)?;
    let hook = Hook::new(&server.base)?;
    let client = Client::new(&server.base, None)?;
    client
        .register(&RegisterAgent {
            agent_id: AGENT.into(),
            host: "127.0.0.1".into(),
            port: None,
            capabilities: vec![CAPABILITY.into()],
            mcp_servers: vec![],
            max_concurrency: Some(1),
            labels: Default::default(),
            version: None,
            instance_id: None,
            kinds: vec!["ansible".into()],
        })
        .await?;
    let mut samples = Vec::with_capacity(probes);
    for n in 0..probes {
        let push = Signed::new(n + 1, SECRET);
        let waiting = {
            let client = client.clone();
            tokio::spawn(async move {
                let claim = client.next_task(AGENT, Duration::from_secs(10)).await;
                (claim, Instant::now())
            })
        };
        // Let the long-poll reach the server before the push.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let started = Instant::now();
        let answer = hook.send(&push).await;
        let (claim, claimed_at) = waiting
            .await
            .map_err(|e| BenchError::Setup(format!("the agent's long-poll failed: {e}")))?;
        let expected = match answer {
            Ok((StatusCode::CREATED, body)) => serde_json::from_str::<HookAnswer>(&body)
                .ok()
                .and_then(|a| a.deployment)
                .and_then(|d| d.rules.into_iter().find_map(|r| r.task_id)),
            Ok((status, body)) => {
                errors.add(format!("push {}: {status} {}", n + 1, cut(&body)));
                None
            }
            Err(e) => {
                errors.add(e);
                None
            }
        };
        let task = match claim {
            Ok(claim) => claim.task,
            Err(e) => {
                errors.add(format!("the agent's long-poll: {e}"));
                None
            }
        };
        let Some(task) = task else {
            if expected.is_some() {
                errors.add(format!(
                    "push {}: the waiting agent got no task within 10 s",
                    n + 1
                ));
            }
            continue;
        };
        if expected == Some(task.id) {
            samples.push(claimed_at - started);
        } else {
            errors.add(format!(
                "push {}: the agent got task {}, the deployment made {expected:?}",
                n + 1,
                task.id
            ));
        }
        let report = CompleteTask {
            attempt: task.attempt,
            result: json!({"ok": true}),
            usage: None,
        };
        if let Err(e) = client.complete(task.id, &report).await {
            errors.add(format!("completing task {}: {e}", task.id));
        }
    }
    Ok(PushToClaim {
        pushes: probes,
        claimed: samples.len(),
        latency: Tail::of(&mut samples),
    })
}

/// An answer's body, short enough for one line.
fn cut(body: &str) -> String {
    body.chars().take(200).collect()
}

impl std::fmt::Display for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.accept;
        writeln!(
            f,
            "accepted          {:.0} pushes/s ({} of {} signed {} pushes answered 201, {} at a \
             time, {:.2} s)",
            a.accepted_per_s, a.accepted, a.pushes, self.forge, a.concurrency, a.seconds
        )?;
        writeln!(f, "hook answer       {}", a.answer)?;
        writeln!(
            f,
            "wrong signature   {} of {} refused with 401",
            a.wrong_signature_refused, a.wrong_signature_sent
        )?;
        write!(
            f,
            "server per hook   CPU {:.0} µs",
            a.server.cpu_us_per_hook
        )?;
        match a.server.disk_write_bytes_per_hook {
            Some(disk) => write!(f, ", {disk:.0} B written to disk")?,
            None => write!(f, "; disk writes not available")?,
        }
        writeln!(f, "; peak RSS {:.1} MiB", a.server.peak_rss_mib)?;
        let p = &self.push_to_claim;
        let l = &p.latency;
        writeln!(
            f,
            "push → claim      p50 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  max {:.3} ms ({} of {} \
             pushes, one at a time, agent waiting)",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, p.claimed, p.pushes
        )?;
        writeln!(f, "errors            {}", self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_is_a_whole_gitea_push_that_touches_the_playbook() {
        let push: serde_json::Value = serde_json::from_slice(&gitea_push(7)).unwrap();
        assert_eq!(push["ref"], "refs/heads/main");
        assert_eq!(push["repository"]["full_name"], REPO);
        assert_eq!(push["total_commits"], 1);
        assert_eq!(push["commits"][0]["modified"][0], PLAYBOOK);
        assert_eq!(push["head_commit"]["id"], push["after"]);
        for id in [&push["before"], &push["after"]] {
            let id = id.as_str().unwrap();
            assert!(id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(id.bytes().any(|b| b != b'0'));
        }
        assert_ne!(gitea_push(7), gitea_push(8));
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            gitea_signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_config_names_the_secret_variable_and_the_rule() {
        let config = config();
        assert!(config.contains(&format!("secret_env = \"{SECRET_ENV}\"")));
        assert!(config.contains("paths = [\"ansible/**\"]"));
        assert!(
            SECRET.len() >= 16,
            "the server takes secrets of 16 characters and more"
        );
    }
}
