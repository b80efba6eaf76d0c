//! Prometheus metrics. Counters and histograms are updated where things happen; gauges of state
//! (tasks by state, agents by status, tasks past their lease) are set from the store and the
//! registry just before each scrape is rendered.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub dispatch_seconds: prometheus::Histogram,
    pub http_seconds: HistogramVec,
    pub transitions: IntCounterVec,
    pub tasks: IntGaugeVec,
    pub agents: IntGaugeVec,
    pub past_lease: IntGauge,
    /// HTTP connections open now, and those refused at accept for being over the cap.
    pub connections: IntGauge,
    pub refused_connections: IntCounter,
    pub submitted: IntCounter,
    /// Tasks that reached a final state, by outcome (completed, failed, cancelled).
    pub finished: IntCounterVec,
    /// Attempts lost through no fault of their task (agent gone or restarted, lease lapsed).
    pub attempts_lost: IntCounter,
    /// Seconds the oldest queued task has waited; set at scrape time.
    pub oldest_queued_seconds: prometheus::Gauge,
    /// Notifications by channel and what became of them (queued, folded into a digest,
    /// delivered, failed).
    pub notifications: IntCounterVec,
    /// Attempts to send a notification, by channel and outcome (delivered, retry, refused).
    pub notification_attempts: IntCounterVec,
    /// Attempts started, by how: handed over to a waiting long-poll in the assignment's own
    /// update, or claimed by the agent; and claims put back because the long-poll hung up.
    pub starts: IntCounterVec,
    /// Long-polls waiting for work now; set at scrape time.
    pub long_polls: IntGauge,
    /// Git hooks by source and what became of them.
    pub git_hooks: IntCounterVec,
    pub alert_hooks: IntCounterVec,
    pub schedule_firings: IntCounterVec,
    /// Commit statuses sent to forges, by source and what the forge answered.
    pub commit_statuses: IntCounterVec,
    /// LLM calls by workflow, provider, model and outcome (ok, error, refused).
    pub llm_calls: IntCounterVec,
    /// LLM tokens by workflow, model and direction (in, out).
    pub llm_tokens: IntCounterVec,
    /// LLM spend in the price table's currency, by workflow and model.
    pub llm_cost: prometheus::CounterVec,
    /// What each budgeted workflow spent this period, and what is left, by unit (tokens,
    /// money); set at scrape time.
    pub llm_budget_spent: prometheus::GaugeVec,
    pub llm_budget_left: prometheus::GaugeVec,
    /// Chat commands by command (`status`, `tasks`, `approve`, `deny`, `ask`, `help`,
    /// `unknown`) and outcome (ok, refused, failed).
    pub chat_commands: IntCounterVec,
    /// Messages from chats that may not send commands, ignored.
    pub chat_ignored: IntCounter,
    /// Each canary's last judged run: 1 passed, 0 failed; and its end-to-end latency.
    pub canary_success: IntGaugeVec,
    pub canary_latency: prometheus::GaugeVec,
    /// The latency of every passing run, for percentiles over time.
    pub canary_passed_latency: HistogramVec,
    /// Canary runs by canary and outcome (passed, failed, interrupted, skipped).
    pub canary_runs: IntCounterVec,
    /// Requests to the canary hook by canary and outcome.
    pub canary_hooks: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A canary's path crosses a hook, the queue, an agent and maybe a notification service:
/// milliseconds when all is well, up to its `within` (a minute by default) when not.
const CANARY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let dispatch_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "muster_dispatch_round_seconds",
                "Time of one dispatch round: plan, persist and wake agents.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "muster_http_request_seconds",
                "HTTP request latency by route, method and status.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route", "status"],
        )
        .expect("valid histogram");
        let transitions = IntCounterVec::new(
            Opts::new(
                "muster_task_transitions_total",
                "Task state changes, by the state entered.",
            ),
            &["state"],
        )
        .expect("valid counter");
        let tasks = IntGaugeVec::new(Opts::new("muster_tasks", "Tasks by state."), &["state"])
            .expect("valid gauge");
        let agents = IntGaugeVec::new(Opts::new("muster_agents", "Agents by status."), &["status"])
            .expect("valid gauge");
        let past_lease = IntGauge::new(
            "muster_tasks_running_past_lease",
            "Running tasks whose lease has lapsed but were not yet rescued; stays 0 when healthy.",
        )
        .expect("valid gauge");
        let connections = IntGauge::new(
            "muster_http_connections",
            "HTTP connections open now (at most MAX_CONNECTIONS).",
        )
        .expect("valid gauge");
        let refused_connections = IntCounter::new(
            "muster_http_connections_refused_total",
            "Connections refused at accept because as many were open as the server serves.",
        )
        .expect("valid counter");
        let submitted = IntCounter::new(
            "muster_tasks_submitted_total",
            "Tasks submitted (an idempotent repeat is not counted again).",
        )
        .expect("valid counter");
        let finished = IntCounterVec::new(
            Opts::new(
                "muster_tasks_finished_total",
                "Tasks that reached a final state, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid counter");
        let attempts_lost = IntCounter::new(
            "muster_task_attempts_lost_total",
            "Attempts lost through no fault of their task: the agent went offline or restarted, \
             or the lease lapsed.",
        )
        .expect("valid counter");
        let oldest_queued_seconds = prometheus::Gauge::new(
            "muster_oldest_queued_task_age_seconds",
            "How long the oldest queued task has waited; 0 with an empty queue.",
        )
        .expect("valid gauge");
        let notifications = IntCounterVec::new(
            Opts::new(
                "muster_notifications_total",
                "Notifications by channel and outcome: queued (a message of its own), folded \
                 (into a quiet period's digest), delivered, failed (refused or given up).",
            ),
            &["channel", "outcome"],
        )
        .expect("valid counter");
        let notification_attempts = IntCounterVec::new(
            Opts::new(
                "muster_notification_attempts_total",
                "Attempts to send a notification, by channel and outcome: delivered, retry \
                 (timeout, connection error, 429, 5xx), refused (another 4xx).",
            ),
            &["channel", "outcome"],
        )
        .expect("valid counter");
        let starts = IntCounterVec::new(
            Opts::new(
                "muster_task_starts_total",
                "Attempts started, by how: handed_over (started in the assignment's own update \
                 for an agent waiting in a long-poll), claimed (by the agent's claim), put_back \
                 (started, but the long-poll had hung up: assigned again, no attempt spent).",
            ),
            &["how"],
        )
        .expect("valid counter");
        let long_polls = IntGauge::new(
            "muster_long_polls_waiting",
            "Agents' long-polls waiting for work now.",
        )
        .expect("valid gauge");
        let git_hooks = IntCounterVec::new(
            Opts::new(
                "muster_git_hooks_total",
                "Git push hooks by source and outcome: deployed, duplicate (a redelivery), \
                 nothing_to_do, ping, refused (a missing or wrong signature: nothing read), \
                 invalid (not a push, or unreadable).",
            ),
            &["source", "outcome"],
        )
        .expect("valid counter");
        let alert_hooks = IntCounterVec::new(
            Opts::new(
                "muster_alert_hooks_total",
                "Monitoring alert hooks by source and outcome: recorded, test, ignored (a state \
                 that changes nothing), refused (a missing or wrong token: nothing read), \
                 invalid (unreadable).",
            ),
            &["source", "outcome"],
        )
        .expect("valid counter");
        let schedule_firings = IntCounterVec::new(
            Opts::new(
                "muster_schedule_firings_total",
                "Schedule firings by schedule and trigger: cron (on time), missed (fired once \
                 on the way back by missed = run_once), run (someone ran it now), skipped \
                 (missed while the server was down and not fired).",
            ),
            &["schedule", "trigger"],
        )
        .expect("valid counter");
        let commit_statuses = IntCounterVec::new(
            Opts::new(
                "muster_commit_statuses_total",
                "Commit statuses sent to forges, by source and outcome: delivered, retry (the \
                 forge was down or busy; tried again later), refused (the forge refused it: \
                 a token or repository to check).",
            ),
            &["source", "outcome"],
        )
        .expect("valid counter");
        let llm_calls = IntCounterVec::new(
            Opts::new(
                "muster_llm_calls_total",
                "LLM calls by workflow, provider, model and outcome: ok, error (the provider \
                 failed), refused (a budget stopped it before it was sent).",
            ),
            &["workflow", "provider", "model", "outcome"],
        )
        .expect("valid counter");
        let llm_tokens = IntCounterVec::new(
            Opts::new(
                "muster_llm_tokens_total",
                "LLM tokens by workflow, model and direction (in, out).",
            ),
            &["workflow", "model", "direction"],
        )
        .expect("valid counter");
        let llm_cost = prometheus::CounterVec::new(
            Opts::new(
                "muster_llm_cost_total",
                "LLM spend in the price table's currency, by workflow and model.",
            ),
            &["workflow", "model"],
        )
        .expect("valid counter");
        let llm_budget_spent = prometheus::GaugeVec::new(
            Opts::new(
                "muster_llm_budget_spent",
                "What each budgeted workflow spent in its current period, by unit (tokens, \
                 money).",
            ),
            &["workflow", "unit"],
        )
        .expect("valid gauge");
        let llm_budget_left = prometheus::GaugeVec::new(
            Opts::new(
                "muster_llm_budget_left",
                "What is left of each workflow's budget in its current period, by unit \
                 (tokens, money); 0 once spent.",
            ),
            &["workflow", "unit"],
        )
        .expect("valid gauge");
        let chat_commands = IntCounterVec::new(
            Opts::new(
                "muster_chat_commands_total",
                "Chat commands from allowed chats, by command (status, tasks, approve, deny, \
                 ask, help, unknown) and outcome: ok, refused (not as written, or the rules \
                 said no: the reply says why), failed (muster could not carry it out).",
            ),
            &["command", "outcome"],
        )
        .expect("valid counter");
        let chat_ignored = IntCounter::new(
            "muster_chat_ignored_total",
            "Messages from chats that may not send commands: ignored, without a reply.",
        )
        .expect("valid counter");
        let canary_success = IntGaugeVec::new(
            Opts::new(
                "muster_canary_success",
                "Each canary's last judged run: 1 when it passed, 0 when it failed.",
            ),
            &["canary"],
        )
        .expect("valid gauge");
        let canary_latency = prometheus::GaugeVec::new(
            Opts::new(
                "muster_canary_latency_seconds",
                "Each canary's last judged run's end-to-end latency: from the firing to its \
                 last leg when it passed, to the verdict when it failed.",
            ),
            &["canary"],
        )
        .expect("valid gauge");
        let canary_passed_latency = HistogramVec::new(
            HistogramOpts::new(
                "muster_canary_passed_latency_seconds",
                "End-to-end latency of every passing canary run.",
            )
            .buckets(CANARY_BUCKETS.to_vec()),
            &["canary"],
        )
        .expect("valid histogram");
        let canary_runs = IntCounterVec::new(
            Opts::new(
                "muster_canary_runs_total",
                "Canary runs by canary and outcome: passed, failed, interrupted (the server \
                 stopped during it), skipped (a firing while a run was in flight).",
            ),
            &["canary", "outcome"],
        )
        .expect("valid counter");
        let canary_hooks = IntCounterVec::new(
            Opts::new(
                "muster_canary_hooks_total",
                "Requests to the canary hook by canary (unknown for a name no canary has) and \
                 outcome: accepted, refused (unsigned, forged or stale: nothing read), \
                 replayed (signed, but no run waits for it), invalid.",
            ),
            &["canary", "outcome"],
        )
        .expect("valid counter");
        for collector in [
            Box::new(dispatch_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_seconds.clone()),
            Box::new(transitions.clone()),
            Box::new(tasks.clone()),
            Box::new(agents.clone()),
            Box::new(past_lease.clone()),
            Box::new(connections.clone()),
            Box::new(refused_connections.clone()),
            Box::new(submitted.clone()),
            Box::new(finished.clone()),
            Box::new(attempts_lost.clone()),
            Box::new(oldest_queued_seconds.clone()),
            Box::new(notifications.clone()),
            Box::new(notification_attempts.clone()),
            Box::new(starts.clone()),
            Box::new(long_polls.clone()),
            Box::new(git_hooks.clone()),
            Box::new(alert_hooks.clone()),
            Box::new(schedule_firings.clone()),
            Box::new(commit_statuses.clone()),
            Box::new(llm_calls.clone()),
            Box::new(llm_tokens.clone()),
            Box::new(llm_cost.clone()),
            Box::new(llm_budget_spent.clone()),
            Box::new(llm_budget_left.clone()),
            Box::new(chat_commands.clone()),
            Box::new(chat_ignored.clone()),
            Box::new(canary_success.clone()),
            Box::new(canary_latency.clone()),
            Box::new(canary_passed_latency.clone()),
            Box::new(canary_runs.clone()),
            Box::new(canary_hooks.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        // The standard process_* metrics (CPU, resident memory, open files, start time).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        Metrics {
            registry,
            submitted,
            finished,
            attempts_lost,
            oldest_queued_seconds,
            notifications,
            notification_attempts,
            starts,
            long_polls,
            git_hooks,
            alert_hooks,
            schedule_firings,
            commit_statuses,
            llm_calls,
            llm_tokens,
            llm_cost,
            llm_budget_spent,
            llm_budget_left,
            chat_commands,
            chat_ignored,
            canary_success,
            canary_latency,
            canary_passed_latency,
            canary_runs,
            canary_hooks,
            dispatch_seconds,
            http_seconds,
            transitions,
            tasks,
            agents,
            past_lease,
            connections,
            refused_connections,
        }
    }

    /// A notification for `channel` was queued, folded, delivered or failed.
    pub fn notification_queued(&self, channel: &str, outcome: &str) {
        self.notifications
            .with_label_values(&[channel, outcome])
            .inc();
    }

    /// `n` attempts started (or put back) `how`.
    pub fn started(&self, how: &str, n: usize) {
        if n > 0 {
            self.starts.with_label_values(&[how]).inc_by(n as u64);
        }
    }

    /// A git hook for `source` ended as `outcome`.
    pub fn git_hook(&self, source: &str, outcome: &str) {
        self.git_hooks.with_label_values(&[source, outcome]).inc();
    }

    pub fn alert_hook(&self, source: &str, outcome: &str) {
        self.alert_hooks.with_label_values(&[source, outcome]).inc();
    }

    /// `count` firings of `schedule` by `trigger` (`cron`, `missed`, `run`, `skipped`).
    pub fn schedule_fired(&self, schedule: &str, trigger: &str, count: u64) {
        self.schedule_firings
            .with_label_values(&[schedule, trigger])
            .inc_by(count);
    }

    /// A chat command ended as `outcome`.
    pub fn chat_command(&self, command: &str, outcome: &str) {
        self.chat_commands
            .with_label_values(&[command, outcome])
            .inc();
    }

    /// A canary run was judged (or interrupted): its canary's gauges show it when it passed or
    /// failed.
    pub fn canary_run(&self, run: &muster_api::CanaryRun) {
        use muster_api::CanaryOutcome;
        let name = run.canary.as_str();
        self.canary_runs
            .with_label_values(&[name, run.outcome.as_str()])
            .inc();
        let seconds = run.latency_ms.unwrap_or(0) as f64 / 1000.0;
        match run.outcome {
            CanaryOutcome::Passed => {
                self.canary_passed_latency
                    .with_label_values(&[name])
                    .observe(seconds);
            }
            CanaryOutcome::Failed => {}
            CanaryOutcome::Running | CanaryOutcome::Interrupted => return,
        }
        self.canary_last(run);
    }

    /// Sets a canary's gauges to a judged run (at start, from the store).
    pub fn canary_last(&self, run: &muster_api::CanaryRun) {
        let passed = run.outcome == muster_api::CanaryOutcome::Passed;
        self.canary_success
            .with_label_values(&[run.canary.as_str()])
            .set(i64::from(passed));
        self.canary_latency
            .with_label_values(&[run.canary.as_str()])
            .set(run.latency_ms.unwrap_or(0) as f64 / 1000.0);
    }

    pub fn canary_hook(&self, canary: &str, outcome: &str) {
        self.canary_hooks
            .with_label_values(&[canary, outcome])
            .inc();
    }

    /// Counts one LLM call of the ledger.
    pub fn llm_call(&self, call: &crate::store::LlmCall) {
        let (workflow, model) = (call.workflow.as_str(), call.model.as_str());
        self.llm_calls
            .with_label_values(&[workflow, &call.provider, model, call.outcome.as_str()])
            .inc();
        self.llm_tokens
            .with_label_values(&[workflow, model, "in"])
            .inc_by(call.input_tokens);
        self.llm_tokens
            .with_label_values(&[workflow, model, "out"])
            .inc_by(call.output_tokens);
        self.llm_cost
            .with_label_values(&[workflow, model])
            .inc_by(call.cost_micros as f64 / 1e6);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
