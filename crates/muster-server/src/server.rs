//! Builds the control plane from [`Settings`] and a bound listener, runs it, and shuts it down
//! in order: stop accepting, end streams and long-polls, let requests finish (bounded), stop the
//! loops, then flush and close the store.

use std::sync::Arc;
use std::time::Instant;

use muster_api::{AgentStatus, Event};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::dispatch::{self, DispatchEvent, DispatchState, Dispatcher};
use crate::error::StoreError;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::sqlite::SqliteStore;
use crate::store::{Change, RetryPolicy, Store};
use crate::ui::session::Sessions;

/// Shared state of a running server; handlers receive it as `Arc<App>`.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub registry: Arc<Registry>,
    pub dispatcher: Dispatcher,
    pub events: Arc<EventHub>,
    pub metrics: Metrics,
    /// Web UI sessions (in memory; a restart logs everyone out).
    pub sessions: Sessions,
    /// Cancelled when shutdown begins: streams and long-polls end on it.
    pub shutdown: CancellationToken,
    pub started: Instant,
}

impl App {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Tells the rest of the server about a committed task change.
    pub fn apply(&self, change: Change) {
        if let Some(released) = change.released {
            self.dispatcher.send(DispatchEvent::Released(released));
        }
        if let Some(queued) = change.requeued {
            self.dispatcher.send(DispatchEvent::Queued(queued));
        }
        if let Some(agent) = &change.wake_agent {
            self.registry.wake(agent);
        }
        self.metrics
            .transitions
            .with_label_values(&[change.state.as_str()])
            .inc();
        self.events.signal_task(change.task_id);
        self.events.publish(Event::Task {
            task_id: change.task_id,
            state: change.state,
            agent_id: change.agent_id,
            attempt: change.attempt,
        });
    }

    /// Records an agent's new status everywhere it is kept in memory.
    pub fn agent_status_changed(&self, agent_id: &str, status: AgentStatus) {
        self.registry.set_status(agent_id, status);
        self.events.publish(Event::Agent {
            agent_id: agent_id.to_owned(),
            status: Some(status),
        });
        self.dispatcher.send(DispatchEvent::AgentStatus {
            agent_id: agent_id.to_owned(),
            status,
        });
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
}

/// A built server, bound and ready to [`Server::run`].
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    dispatcher_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the store, rebuilds memory from it and starts the dispatcher. The caller binds the
    /// listener (tests use `127.0.0.1:0`); the server reports the real address.
    pub async fn build(settings: Settings, listener: TcpListener) -> Result<Server, StartError> {
        Self::build_with_clock(settings, listener, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        settings: Settings,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, StartError> {
        let addr = listener.local_addr()?;
        Settings {
            addr,
            ..settings.clone()
        }
        .check_exposure()?;
        let policy = RetryPolicy {
            backoff_base_ms: settings.retry_backoff.as_millis() as i64,
            backoff_max_ms: settings.retry_backoff_max.as_millis() as i64,
        };
        let path = settings.db_path.clone();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SqliteStore::open(&path, policy))
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!("opening the store panicked: {e}"))
                })??,
        );
        let snapshot = store.snapshot().await?;
        let now = clock.now_ms();
        let registry = Arc::new(Registry::default());
        for agent in &snapshot.agents {
            // Agents known before a restart get one heartbeat timeout from now to speak up.
            registry.upsert(&agent.agent_id, agent.status, now, false);
        }
        let mut state = DispatchState::from_snapshot(snapshot);
        let queued = state.load_queued(store.as_ref(), now).await?;
        if queued > 0 {
            tracing::info!(queued, "queue loaded");
        }
        let metrics = Metrics::new();
        let events = Arc::new(EventHub::new(now));
        let (dispatcher, dispatcher_task) = dispatch::spawn(
            state,
            store.clone(),
            registry.clone(),
            clock.clone(),
            metrics.clone(),
            events.clone(),
        );
        let sessions = Sessions::new(settings.session_idle);
        let app = Arc::new(App {
            settings,
            sessions,
            store,
            clock,
            registry,
            dispatcher,
            events,
            metrics,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
        });
        Ok(Server {
            app,
            listener,
            dispatcher_task,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until `signal` completes, then shuts down in order.
    pub async fn run(self, signal: impl std::future::Future<Output = ()> + Send + 'static) {
        let Server {
            app,
            listener,
            dispatcher_task,
        } = self;
        let health = tokio::spawn(crate::health::run(app.clone()));
        let router = crate::http::router(app.clone());
        let shutdown = app.shutdown.clone();
        let begin = shutdown.clone();
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            signal.await;
            tracing::info!("shutting down: finishing in-flight requests");
            begin.cancel();
        });
        let grace = app.settings.shutdown_grace;
        tokio::select! {
            result = serve => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "server error");
                }
            }
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "requests still running after the grace period; stopping");
            }
        }
        health.abort();
        dispatcher_task.abort();
        let _ = health.await;
        let _ = dispatcher_task.await;
        app.store.close().await;
        tracing::info!("stopped");
    }
}
