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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

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
        for collector in [
            Box::new(dispatch_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_seconds.clone()),
            Box::new(transitions.clone()),
            Box::new(tasks.clone()),
            Box::new(agents.clone()),
            Box::new(past_lease.clone()),
            Box::new(connections.clone()),
            Box::new(refused_connections.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Metrics {
            registry,
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

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
