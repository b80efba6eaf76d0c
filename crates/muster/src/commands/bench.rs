//! `muster bench`: the end-to-end load run by default, and one subcommand per other figure.

use std::process::ExitCode;
use std::time::Duration;

use muster_bench::{figures, lifecycle, local::this_binary, webhooks};
use serde::Serialize;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    figure: Option<Figure>,
    /// Benchmark a running server instead of starting one on a temporary SQLite file.
    #[arg(long, env = "MUSTER_URL")]
    url: Option<String>,
    /// The key for `--url` (admin key: the run registers agents and submits tasks).
    #[arg(long, env = "MUSTER_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Simulated agents.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Claim loops (and max_concurrency) per agent.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Tasks to push through submit → claim → complete.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Single tasks measured afterwards with every agent idle and waiting.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// The peer queues' method, so their figures compare: one submit call per task, agents
    /// claim and report one task per call, 200 warm-up tasks, probes 20 ms apart.
    #[arg(long, conflicts_with = "batch")]
    peer_style: bool,
    /// Submit through the bulk route (POST /api/v1/tasks/batch), --batch-size tasks per call.
    #[arg(long)]
    batch: bool,
    /// Tasks per bulk submit call with --batch (the route takes at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch_size: u64,
    /// Print one JSON object instead of the summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Figure {
    /// Time from exec to the first /health 200 on a fresh database (median of --runs).
    Startup {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Resident memory of a started, idle server.
    IdleMemory {
        /// How long it idles before the reading.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
    /// Server CPU share while many agents heartbeat.
    Heartbeats {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Claim latency and memory as the queue of tasks no agent can take grows.
    QueueDepth {
        /// Queue lengths to measure at, in order.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
        levels: Vec<usize>,
        /// Probe tasks per level.
        #[arg(long, default_value_t = 50)]
        probes: usize,
        /// Give every queued task a capability set of its own (the worst case for dispatch),
        /// instead of one set for all.
        #[arg(long)]
        distinct: bool,
    },
    /// GitOps push hooks: signed Gitea pushes accepted per second, and push → claim by a
    /// waiting agent.
    Webhooks {
        /// Signed pushes for the throughput figure.
        #[arg(long, default_value_t = 2000)]
        pushes: usize,
        /// Pushes in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Pushes signed with a wrong secret afterwards, each of which must be refused (401).
        #[arg(long, default_value_t = 20)]
        wrong_signatures: usize,
        /// Pushes sent one at a time to an agent waiting in a long-poll, for push → claim.
        #[arg(long, default_value_t = 200)]
        probes: usize,
    },
}

fn print<T: Serialize>(json: bool, value: &T, line: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    match args.figure {
        None => {
            let mode = match (args.peer_style, args.batch) {
                (true, _) => lifecycle::Mode::PeerStyle,
                (false, true) => lifecycle::Mode::Batch,
                (false, false) => lifecycle::Mode::Default,
            };
            let options = lifecycle::Options {
                url: args.url,
                key: args.key,
                mode,
                batch_size: args.batch_size as usize,
                agents: args.agents,
                slots: args.slots,
                tasks: args.tasks,
                concurrency: args.concurrency,
                probes: args.probes,
                progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let report = lifecycle::run(options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            if report.errors > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Some(Figure::Startup { runs }) => {
            let binary = this_binary()?;
            let s = tokio::task::spawn_blocking(move || figures::startup(&binary, runs)).await??;
            let line = format!(
                "start to first /health 200: median {:.1} ms (min {:.1}, max {:.1}) over {} runs",
                s.median_ms, s.min_ms, s.max_ms, s.runs
            );
            print(json, &s, line)?;
        }
        Some(Figure::IdleMemory { idle }) => {
            let m = figures::idle_memory(&this_binary()?, idle).await?;
            let line = format!(
                "idle RSS: {:.1} MiB (peak {:.1} MiB)",
                m.rss_mib, m.peak_rss_mib
            );
            print(json, &m, line)?;
        }
        Some(Figure::Heartbeats {
            agents,
            interval,
            duration,
        }) => {
            let h = figures::heartbeats(&this_binary()?, agents, interval, duration).await?;
            let line = format!(
                "{} agents heartbeating every {:.0} s: server CPU {:.1}% of one core \
                 ({} beats in {:.0} s, {} errors, RSS {:.1} MiB)",
                h.agents, h.interval_s, h.cpu_percent, h.heartbeats, h.seconds, h.errors, h.rss_mib
            );
            print(json, &h, line)?;
        }
        Some(Figure::QueueDepth {
            levels,
            probes,
            distinct,
        }) => {
            let q = figures::queue_depth(&this_binary()?, &levels, probes, distinct).await?;
            let parts: Vec<String> = q
                .levels
                .iter()
                .map(|l| {
                    format!(
                        "{} queued: claim p50 {:.2} ms p99 {:.2} ms, RSS {:.1} MiB",
                        l.queued, l.submit_to_claim.p50_ms, l.submit_to_claim.p99_ms, l.rss_mib
                    )
                })
                .collect();
            let line = format!(
                "{} (filled at {:.0} tasks/s)",
                parts.join("; "),
                q.fill_tasks_per_s
            );
            print(json, &q, line)?;
        }
        Some(Figure::Webhooks {
            pushes,
            concurrency,
            wrong_signatures,
            probes,
        }) => {
            let options = webhooks::Options {
                pushes,
                concurrency,
                wrong_signatures,
                probes,
            };
            let w = webhooks::run(&this_binary()?, &options).await?;
            if json {
                println!("{}", serde_json::to_string(&w)?);
            } else {
                print!("{w}");
            }
            // Every unexpected answer is a fault of the run: say which, and fail.
            for e in &w.error_samples {
                eprintln!("error: {e}");
            }
            if w.errors > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
